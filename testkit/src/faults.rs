//! A fault-injecting HTTP proxy in front of a real S3 server: passes requests through unchanged
//! (the Host header too, so SigV4 signatures stay valid) except those matching a rule, which get
//! an S3 error response instead. Every request is logged for assertions.

use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

/// Fail the next `times` requests with this method whose query string contains `query`.
#[derive(Debug, Clone)]
pub struct FaultRule {
    pub method: &'static str,
    pub query: &'static str,
    pub status: u16,
    pub code: &'static str,
    pub times: usize,
    /// Instead of failing the request, answer a DeleteObjects with `200 OK` and an `<Error>`
    /// with `code` for every key it names; nothing is forwarded or deleted.
    pub per_key: bool,
    /// Instead of failing the request, answer a listing with an empty page that says there is
    /// more (a store whose listing never ends).
    pub endless_list: bool,
}

impl FaultRule {
    /// Fails the next `times` DeleteObjects requests with `status` and `code`.
    pub fn batch_delete(status: u16, code: &'static str, times: usize) -> Self {
        Self {
            method: "POST",
            query: "delete",
            status,
            code,
            times,
            per_key: false,
            endless_list: false,
        }
    }

    /// Answers the next `times` ListObjectsV2 requests with an empty, truncated page.
    pub fn endless_listing(times: usize) -> Self {
        Self {
            method: "GET",
            query: "list-type=2",
            status: 200,
            code: "",
            times,
            per_key: false,
            endless_list: true,
        }
    }

    /// Fails the next `times` requests of `method` with `status` and `code`.
    pub fn status(method: &'static str, status: u16, code: &'static str, times: usize) -> Self {
        Self {
            method,
            query: "",
            status,
            code,
            times,
            per_key: false,
            endless_list: false,
        }
    }

    /// Reports every key of the next `times` DeleteObjects requests as failed with `code`.
    pub fn per_key_delete(code: &'static str, times: usize) -> Self {
        Self {
            per_key: true,
            ..Self::batch_delete(200, code, times)
        }
    }
}

/// One request seen by the proxy: method, path and query, and whether it was failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeenRequest {
    pub method: String,
    pub path_and_query: String,
    /// Header names (lower case) and values.
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
    pub injected: bool,
}

#[derive(Default)]
struct State {
    rules: Vec<FaultRule>,
    log: Vec<SeenRequest>,
    /// Added to every request before it is answered (a slow store, a long round trip).
    latency: std::time::Duration,
    /// DeleteObjects requests being served now, and the most at once.
    deletes_in_flight: usize,
    peak_deletes_in_flight: usize,
    /// The region the buckets live in: a request signed for another is answered as AWS does,
    /// `301 PermanentRedirect` with `x-amz-bucket-region`.
    bucket_region: Option<String>,
}

pub struct FaultProxy {
    /// `host:port` to point clients at instead of the upstream.
    pub endpoint: String,
    state: Arc<Mutex<State>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

impl FaultProxy {
    /// Starts a proxy on a loopback port forwarding to `upstream` (`host:port`, plain HTTP).
    pub async fn start(upstream: &str) -> Self {
        let (listener, endpoint) = crate::http::bind_loopback().await;
        let state = Arc::new(Mutex::new(State::default()));
        let client: Client<HttpConnector, Full<Bytes>> =
            Client::builder(TokioExecutor::new()).build_http();
        let upstream = upstream.to_string();
        let st = state.clone();
        let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
            let (st, client, upstream) = (st.clone(), client.clone(), upstream.clone());
            async move { Ok::<_, Infallible>(handle(req, &st, &client, &upstream).await) }
        });
        let stop = crate::http::serve(listener, svc, None);
        Self {
            endpoint,
            state,
            stop: Some(stop),
        }
    }

    pub fn add_rule(&self, rule: FaultRule) {
        self.state.lock().unwrap().rules.push(rule);
    }

    /// Delays every request by `latency` from now on.
    pub fn set_latency(&self, latency: std::time::Duration) {
        self.state.lock().unwrap().latency = latency;
    }

    /// Puts every bucket in `region`, as AWS answers a client that signs for another.
    pub fn set_bucket_region(&self, region: &str) {
        self.state.lock().unwrap().bucket_region = Some(region.to_string());
    }

    pub fn log(&self) -> Vec<SeenRequest> {
        self.state.lock().unwrap().log.clone()
    }

    /// The most DeleteObjects requests it served at once.
    pub fn peak_deletes_in_flight(&self) -> usize {
        self.state.lock().unwrap().peak_deletes_in_flight
    }
}

async fn handle(
    req: Request<Incoming>,
    state: &Mutex<State>,
    client: &Client<HttpConnector, Full<Bytes>>,
    upstream: &str,
) -> Response<Full<Bytes>> {
    let is_delete = req.method() == hyper::Method::POST
        && req.uri().query().is_some_and(|q| {
            q.split('&')
                .any(|p| p == "delete" || p.starts_with("delete="))
        });
    if is_delete {
        let mut st = state.lock().unwrap();
        st.deletes_in_flight += 1;
        st.peak_deletes_in_flight = st.peak_deletes_in_flight.max(st.deletes_in_flight);
    }
    let response = forward(req, state, client, upstream).await;
    if is_delete {
        state.lock().unwrap().deletes_in_flight -= 1;
    }
    response
}

async fn forward(
    req: Request<Incoming>,
    state: &Mutex<State>,
    client: &Client<HttpConnector, Full<Bytes>>,
    upstream: &str,
) -> Response<Full<Bytes>> {
    let method = req.method().as_str().to_string();
    let pq = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_default();
    let query = req.uri().query().unwrap_or_default().to_string();
    let (mut parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let headers = parts
        .headers
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_string(),
                v.to_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    let (latency, bucket_region) = {
        let st = state.lock().unwrap();
        (st.latency, st.bucket_region.clone())
    };
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    // The region of the SigV4 credential scope: `Credential=AK/date/region/s3/aws4_request`.
    let signed_region = parts
        .headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|a| a.split("Credential=").nth(1))
        .and_then(|c| c.split('/').nth(2))
        .map(str::to_string);
    let redirect = bucket_region.filter(|r| signed_region.as_deref() != Some(r.as_str()));
    let fault = {
        let mut st = state.lock().unwrap();
        let hit = match redirect {
            Some(_) => None,
            None => st
                .rules
                .iter_mut()
                .find(|r| r.times > 0 && r.method == method && query.contains(r.query)),
        };
        let fault = hit.map(|r| {
            r.times -= 1;
            r.clone()
        });
        st.log.push(SeenRequest {
            method: method.clone(),
            path_and_query: pq.clone(),
            headers,
            body: body.clone(),
            injected: fault.is_some() || redirect.is_some(),
        });
        fault
    };
    if let Some(region) = redirect {
        let body = match method.as_str() {
            "HEAD" => String::new(),
            _ => "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>PermanentRedirect</Code><Message>The bucket you are attempting to access must be addressed using the specified endpoint.</Message></Error>".to_string(),
        };
        return Response::builder()
            .status(301)
            .header("x-amz-bucket-region", region)
            .header("content-type", "application/xml")
            .body(Full::new(Bytes::from(body)))
            .unwrap();
    }
    if let Some(rule) = fault {
        let body = if rule.endless_list {
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?><ListBucketResult><Name>b</Name><Prefix></Prefix><KeyCount>0</KeyCount><MaxKeys>1000</MaxKeys><IsTruncated>true</IsTruncated><NextContinuationToken>again</NextContinuationToken></ListBucketResult>".to_string()
        } else if rule.per_key {
            let text = String::from_utf8_lossy(&body);
            let errors: String = text
                .split("<Key>")
                .skip(1)
                .filter_map(|rest| rest.split_once("</Key>").map(|(k, _)| k))
                .map(|k| {
                    format!(
                        "<Error><Key>{k}</Key><Code>{}</Code><Message>injected</Message></Error>",
                        rule.code
                    )
                })
                .collect();
            format!(
                "<?xml version=\"1.0\" encoding=\"UTF-8\"?><DeleteResult>{errors}</DeleteResult>"
            )
        } else {
            format!(
                "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>{}</Code><Message>injected by the test proxy</Message></Error>",
                rule.code
            )
        };
        return Response::builder()
            .status(rule.status)
            .header("content-type", "application/xml")
            .body(Full::new(Bytes::from(body)))
            .unwrap();
    }
    parts.uri = format!("http://{upstream}{pq}").parse().expect("uri");
    match client
        .request(Request::from_parts(parts, Full::new(body)))
        .await
    {
        Ok(resp) => {
            let (parts, body) = resp.into_parts();
            let body = body
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            Response::from_parts(parts, Full::new(body))
        }
        Err(e) => Response::builder()
            .status(502)
            .body(Full::new(Bytes::from(e.to_string())))
            .unwrap(),
    }
}
