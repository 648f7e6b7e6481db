//! The connect-time half of the endpoint rules: a store's host name is resolved here, and a
//! connection to any address artgc never contacts is refused. The plan checks the endpoint as
//! written; a tenant's DNS name, ExternalName Service or wildcard record can still point at a
//! metadata service, a link-local agent or artgc's own pod, so the addresses are checked too.

use std::net::IpAddr;

use artgc_core::policy::forbidden_address;
use aws_smithy_runtime_api::client::dns::{DnsFuture, ResolveDns, ResolveDnsError};

/// Resolves with the system resolver, then refuses forbidden addresses (loopback only where the
/// connection allows it). A dotted name is looked up as absolute (a trailing dot), so the
/// pod's own search path cannot turn the name that was checked into another.
#[derive(Debug, Clone)]
pub struct CheckedResolver {
    pub loopback: bool,
    /// artgc's own pod addresses, refused like loopback.
    pub own: Vec<IpAddr>,
}

impl ResolveDns for CheckedResolver {
    fn resolve_dns<'a>(&'a self, name: &'a str) -> DnsFuture<'a> {
        DnsFuture::new(async move {
            let addrs = resolve_checked(name, self.loopback).await?;
            match addrs.iter().find(|a| self.own.contains(&a.to_canonical())) {
                Some(a) => Err(ResolveDnsError::new(format!(
                    "{name} resolves to {a}, artgc's own pod address; artgc never connects to it"
                ))),
                None => Ok(addrs),
            }
        })
    }
}

async fn resolve_checked(name: &str, loopback: bool) -> Result<Vec<IpAddr>, ResolveDnsError> {
    let lookup = match name.contains('.') && !name.ends_with('.') {
        true => format!("{name}."),
        false => name.to_string(),
    };
    let addrs: Vec<IpAddr> = tokio::net::lookup_host((lookup.as_str(), 0))
        .await
        .map_err(ResolveDnsError::new)?
        .map(|a| a.ip())
        .collect();
    check(name, addrs, loopback)
}

/// The rule, apart from the lookup: every address must be allowed, not just one (a client
/// may try any of them).
fn check(name: &str, addrs: Vec<IpAddr>, loopback: bool) -> Result<Vec<IpAddr>, ResolveDnsError> {
    if let Some(bad) = addrs.iter().find(|ip| forbidden_address(**ip, loopback)) {
        return Err(ResolveDnsError::new(format!(
            "{name} resolves to {bad}, a link-local, metadata, unspecified or loopback address; artgc never connects to it"
        )));
    }
    Ok(addrs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_name_resolving_to_a_forbidden_address_is_refused() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        for (addrs, loopback, ok) in [
            (vec![ip("10.1.2.3")], false, true),
            (vec![ip("10.1.2.3"), ip("169.254.169.254")], false, false),
            (vec![ip("::ffff:169.254.169.254")], true, false),
            (vec![ip("fd00:ec2::23")], true, false),
            (vec![ip("127.0.0.1")], false, false),
            (vec![ip("127.0.0.1")], true, true),
            (vec![ip("::1")], false, false),
            (vec![ip("0.0.0.0")], true, false),
        ] {
            assert_eq!(
                check("store.example", addrs.clone(), loopback).is_ok(),
                ok,
                "{addrs:?} loopback={loopback}"
            );
        }
    }

    #[tokio::test]
    async fn localhost_resolves_and_is_refused_without_leave() {
        assert!(resolve_checked("localhost", false).await.is_err());
        let ok = resolve_checked("localhost", true)
            .await
            .expect("localhost resolves");
        assert!(ok.iter().all(IpAddr::is_loopback));
    }
}
