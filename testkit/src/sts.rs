//! A small STS double for the service-account identity, and a sink that counts connections.
//!
//! Why a double and not a real STS: the only real STS installable here (moto's server) issues
//! credentials that no S3 test server of ours would accept, and it does not check a web identity
//! token's subject against a role's trust policy, which is the check that matters: it decides
//! whether a namespace's service account may take a role. This double does exactly that, with
//! roles whose credentials the S3 test server accepts:
//! - `AssumeRoleWithWebIdentity`: the token's `sub` must be one the role trusts and its `aud` the
//!   expected audience; the signature is not checked (the testkit API server does not sign).
//! - `AssumeRole`: signed with a role's issued key, which the target role must trust.
//!
//! Both answer in STS's XML, with STS's error shape (`AccessDenied`, 403) otherwise.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response};
use serde_json::Value;

/// A role the double can hand out.
#[derive(Debug, Clone)]
pub struct StsRole {
    pub arn: String,
    /// Credentials issued for it (make the S3 test server accept them).
    pub access_key: String,
    pub secret_key: String,
    /// Web identity subjects it trusts, e.g. `system:serviceaccount:team-a:gc`.
    pub trusted_subjects: Vec<String>,
    /// Roles whose sessions may assume it.
    pub trusted_roles: Vec<String>,
}

/// One call as the double judged it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StsCall {
    pub action: String,
    pub role: String,
    /// The token's subject, or the calling role for AssumeRole.
    pub caller: String,
    pub granted: bool,
}

struct StsState {
    audience: String,
    roles: HashMap<String, StsRole>,
    calls: Vec<StsCall>,
}

/// A running STS double. Dropping it stops it.
pub struct StsServer {
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    state: Arc<Mutex<StsState>>,
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl StsServer {
    pub async fn start(audience: &str, roles: Vec<StsRole>) -> Self {
        let (listener, addr) = crate::http::bind_loopback().await;
        let state = Arc::new(Mutex::new(StsState {
            audience: audience.to_string(),
            roles: roles.into_iter().map(|r| (r.arn.clone(), r)).collect(),
            calls: Vec::new(),
        }));
        let st = state.clone();
        let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
            let st = st.clone();
            async move { Ok::<_, Infallible>(handle(req, st).await) }
        });
        let stop = crate::http::serve(listener, svc, None);
        Self {
            url: format!("http://{addr}"),
            state,
            _stop: stop,
        }
    }

    pub fn calls(&self) -> Vec<StsCall> {
        self.state.lock().unwrap().calls.clone()
    }
}

fn form(body: &[u8]) -> HashMap<String, String> {
    let decode = |s: &str| {
        let bytes = s.as_bytes();
        let mut out = Vec::with_capacity(bytes.len());
        let mut i = 0;
        while i < bytes.len() {
            match bytes[i] {
                b'+' => out.push(b' '),
                b'%' if i + 2 < bytes.len() => {
                    let hex = std::str::from_utf8(&bytes[i + 1..i + 3])
                        .ok()
                        .and_then(|h| u8::from_str_radix(h, 16).ok());
                    match hex {
                        Some(b) => {
                            out.push(b);
                            i += 2;
                        }
                        None => out.push(b'%'),
                    }
                }
                b => out.push(b),
            }
            i += 1;
        }
        String::from_utf8_lossy(&out).into_owned()
    };
    String::from_utf8_lossy(body)
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (decode(k), decode(v)))
        .collect()
}

fn claims(token: &str) -> Option<Value> {
    use base64::Engine;
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    serde_json::from_slice(&bytes).ok()
}

fn xml(status: u16, body: String) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("content-type", "text/xml")
        .body(Full::new(Bytes::from(body)))
        .expect("response")
}

fn denied(message: &str) -> Response<Full<Bytes>> {
    xml(
        403,
        format!(
            "<ErrorResponse xmlns=\"https://sts.amazonaws.com/doc/2011-06-15/\"><Error><Type>Sender</Type><Code>AccessDenied</Code><Message>{message}</Message></Error><RequestId>testkit</RequestId></ErrorResponse>"
        ),
    )
}

fn granted(action: &str, role: &StsRole) -> Response<Full<Bytes>> {
    let expires = jiff::Timestamp::now() + jiff::SignedDuration::from_hours(1);
    let expires = expires.strftime("%Y-%m-%dT%H:%M:%SZ");
    xml(
        200,
        format!(
            "<{action}Response xmlns=\"https://sts.amazonaws.com/doc/2011-06-15/\"><{action}Result><Credentials><AccessKeyId>{}</AccessKeyId><SecretAccessKey>{}</SecretAccessKey><SessionToken>session-{}</SessionToken><Expiration>{expires}</Expiration></Credentials><AssumedRoleUser><Arn>{}</Arn><AssumedRoleId>AROA:testkit</AssumedRoleId></AssumedRoleUser></{action}Result><ResponseMetadata><RequestId>testkit</RequestId></ResponseMetadata></{action}Response>",
            role.access_key, role.secret_key, role.access_key, role.arn
        ),
    )
}

async fn handle(req: Request<Incoming>, st: Arc<Mutex<StsState>>) -> Response<Full<Bytes>> {
    let auth = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let body = match req.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => return denied("unreadable body"),
    };
    let f = form(&body);
    let action = f.get("Action").cloned().unwrap_or_default();
    let role_arn = f.get("RoleArn").cloned().unwrap_or_default();
    let mut s = st.lock().unwrap();
    let role = s.roles.get(&role_arn).cloned();
    let (caller, ok) = match action.as_str() {
        "AssumeRoleWithWebIdentity" => {
            let c = f.get("WebIdentityToken").and_then(|t| claims(t));
            let sub = c
                .as_ref()
                .and_then(|c| c["sub"].as_str())
                .unwrap_or_default()
                .to_string();
            let aud_ok = c.as_ref().is_some_and(|c| match &c["aud"] {
                Value::String(a) => *a == s.audience,
                Value::Array(a) => a.iter().any(|x| x == s.audience.as_str()),
                _ => false,
            });
            let ok = aud_ok
                && role
                    .as_ref()
                    .is_some_and(|r| r.trusted_subjects.contains(&sub));
            (sub, ok)
        }
        "AssumeRole" => {
            // `Credential=AKID/date/region/sts/aws4_request`: the calling role's issued key.
            let key = auth
                .split("Credential=")
                .nth(1)
                .and_then(|c| c.split('/').next())
                .unwrap_or_default();
            let from = s
                .roles
                .values()
                .find(|r| r.access_key == key)
                .map(|r| r.arn.clone())
                .unwrap_or_default();
            let ok = !from.is_empty()
                && role
                    .as_ref()
                    .is_some_and(|r| r.trusted_roles.contains(&from));
            (from, ok)
        }
        _ => (String::new(), false),
    };
    s.calls.push(StsCall {
        action: action.clone(),
        role: role_arn.clone(),
        caller: caller.clone(),
        granted: ok,
    });
    match (ok, role) {
        (true, Some(r)) => granted(&action, &r),
        _ => denied(&format!("{caller} may not {action} {role_arn}")),
    }
}

/// An endpoint that must never be contacted: it counts connections and answers none.
pub struct Sink {
    /// `127.0.0.1:PORT`.
    pub endpoint: String,
    connections: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Sink {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Sink {
    pub async fn start() -> Self {
        let (listener, endpoint) = crate::http::bind_loopback().await;
        let connections = Arc::new(AtomicUsize::new(0));
        let n = connections.clone();
        let task = tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                n.fetch_add(1, Ordering::SeqCst);
                drop(socket);
            }
        });
        Self {
            endpoint,
            connections,
            task,
        }
    }

    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn forms_decode() {
        let f = super::form(b"Action=AssumeRole&RoleArn=arn%3Aaws%3Aiam%3A%3A1%3Arole%2Fx&A=b+c");
        assert_eq!(f["RoleArn"], "arn:aws:iam::1:role/x");
        assert_eq!(f["A"], "b c");
    }
}
