//! `starttls-proxy probe`: the client side of the STARTTLS diagnosis
//! playbook (DESIGN.md §7), against any SMTP server.
//!
//! The flow, one module a step: resolve the name (`dns`); for every
//! address, connect and inspect (`endpoint`: the SMTP dialogue of `smtp`,
//! rustls handshakes of `tls` with and without SNI at TLS 1.3 and 1.2, the
//! hand-built TLS 1.0/1.1 ClientHello of `legacy`), all addresses and all
//! handshakes concurrently; judge what was recorded (`chain`, then
//! `findings`); render (`report`). It reuses `tls/` validation (the same
//! trust anchors as `check`) and never the listener.
//!
//! The DNS half: lookups with the AD bit (`dns`), DANE matching (`dane`),
//! MTA-STS discovery and policy (`mta_sts`) and TLS-RPT (`tlsrpt`); they
//! return structured values, findings are made from them here.
//!
//! `domain` runs the whole playbook for `probe --domain` (MX hosts, their
//! endpoints, DANE, MTA-STS, TLS-RPT, PTR) and `own` the proxy's side of
//! it for `check --dns`. Both build on [`probe_endpoints`], which takes
//! any list of (name, address) endpoints, e.g. every address of every MX;
//! findings from other sources are appended before [`findings::rank`],
//! and they count in the exit code and the MTA-STS verdict like the
//! others.

pub mod chain;
pub mod dane;
pub mod dns;
pub mod domain;
pub mod endpoint;
pub mod findings;
pub mod legacy;
pub mod mta_sts;
pub mod own;
pub mod report;
pub mod smtp;
mod tagged;
pub mod tls;
pub mod tlsrpt;

use std::error::Error;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use rustls_pki_types::{DnsName, ServerName};
use tokio::task::JoinSet;

use crate::tls::validate::TrustAnchors;
pub use endpoint::{EndpointReport, SessionError};
pub use findings::{Code, Finding, Severity};
pub use report::Report;

/// Per-step limits. Every network wait of the probe is bounded by one of
/// these; a whole endpoint costs at most a handful of them, and endpoints
/// run concurrently.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// TCP connect.
    pub connect: Duration,
    /// Each SMTP reply (the whole reply, however slowly it trickles in).
    pub reply: Duration,
    /// A TLS handshake, or the answer to the legacy ClientHello.
    pub handshake: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            connect: Duration::from_secs(5),
            reply: Duration::from_secs(10),
            handshake: Duration::from_secs(10),
        }
    }
}

impl Timeouts {
    /// `--timeout`: the same limit for every step.
    pub fn uniform(d: Duration) -> Self {
        Timeouts {
            connect: d,
            reply: d,
            handshake: d,
        }
    }
}

/// What every endpoint probe shares.
#[derive(Debug)]
pub struct Settings {
    pub timeouts: Timeouts,
    /// System roots plus `--ca`: what "verified" means.
    pub anchors: TrustAnchors,
    /// Seconds since the epoch, fixed at the start so that every chain is
    /// judged at the same instant.
    pub now: i64,
}

/// One thing to connect to: the name connected to (validated against the
/// certificate and sent as SNI; an address when the target was one) and
/// one of its addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub mx: ServerName<'static>,
    pub address: SocketAddr,
}

impl Endpoint {
    /// The name as reported (`mx1.example.com`, or the address).
    pub fn mx_str(&self) -> String {
        self.mx.to_str().into_owned()
    }

    /// The DNS name, when the target was a name.
    pub fn dns_name(&self) -> Option<&str> {
        match &self.mx {
            ServerName::DnsName(n) => Some(n.as_ref()),
            _ => None,
        }
    }
}

/// Probes every endpoint concurrently; reports come back in the order of
/// `endpoints`.
pub async fn probe_endpoints(
    endpoints: Vec<Endpoint>,
    settings: Arc<Settings>,
) -> Vec<EndpointReport> {
    let probes = endpoints.iter().cloned().map(|ep| {
        let s = settings.clone();
        endpoint::probe_endpoint(ep, s)
    });
    let done = concurrently(probes).await;
    endpoints
        .into_iter()
        .zip(done)
        .map(|(ep, r)| r.unwrap_or_else(|| EndpointReport::failed(ep, SessionError::Internal)))
        .collect()
}

/// Runs every future at once (each its own task), results in input order;
/// `None` for a task that panicked.
pub(crate) async fn concurrently<F, T>(futures: impl IntoIterator<Item = F>) -> Vec<Option<T>>
where
    F: Future<Output = T> + Send + 'static,
    T: Send + 'static,
{
    let mut set = JoinSet::new();
    let mut count = 0;
    for (i, f) in futures.into_iter().enumerate() {
        set.spawn(async move { (i, f.await) });
        count += 1;
    }
    let mut done: Vec<Option<T>> = (0..count).map(|_| None).collect();
    while let Some(joined) = set.join_next().await {
        if let Ok((i, value)) = joined
            && let Some(slot) = done.get_mut(i)
        {
            *slot = Some(value);
        }
    }
    done
}

/// `HOST[:PORT]` as given on the command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub host: ServerName<'static>,
    pub port: u16,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TargetError {
    #[error(
        "{0:?} is not HOST[:PORT] (a host name, an IPv4 address, or an IPv6 address in brackets)"
    )]
    Syntax(String),
    #[error("{0:?}: the port must be a number from 1 to 65535")]
    Port(String),
}

impl Target {
    /// `mx.example.com`, `mx.example.com:2525`, `192.0.2.1:25`,
    /// `[2001:db8::1]:25`, `2001:db8::1` (no port without brackets).
    pub fn parse(s: &str, default_port: u16) -> Result<Self, TargetError> {
        let syntax = || TargetError::Syntax(s.to_string());
        let port = |p: &str| match p.parse::<u16>() {
            Ok(n) if n > 0 => Ok(n),
            _ => Err(TargetError::Port(s.to_string())),
        };
        if let Some(rest) = s.strip_prefix('[') {
            let (ip, after) = rest.split_once(']').ok_or_else(syntax)?;
            let ip: std::net::Ipv6Addr = ip.parse().map_err(|_| syntax())?;
            let p = match after {
                "" => default_port,
                _ => port(after.strip_prefix(':').ok_or_else(syntax)?)?,
            };
            return Ok(Target {
                host: ServerName::IpAddress(IpAddr::V6(ip).into()),
                port: p,
            });
        }
        if let Ok(ip) = s.parse::<IpAddr>() {
            return Ok(Target {
                host: ServerName::IpAddress(ip.into()),
                port: default_port,
            });
        }
        let (host, p) = match s.rsplit_once(':') {
            Some((h, p)) => (h, port(p)?),
            None => (s, default_port),
        };
        if let Ok(ip) = host.parse::<std::net::Ipv4Addr>() {
            return Ok(Target {
                host: ServerName::IpAddress(IpAddr::V4(ip).into()),
                port: p,
            });
        }
        let name = host.trim_end_matches('.').to_ascii_lowercase();
        // DnsName accepts all-numeric labels; a name must not look like a
        // (malformed) address.
        if name.is_empty() || name.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
            return Err(syntax());
        }
        let name = DnsName::try_from(name).map_err(|_| syntax())?;
        Ok(Target {
            host: ServerName::DnsName(name),
            port: p,
        })
    }
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.host {
            ServerName::IpAddress(rustls_pki_types::IpAddr::V6(_)) => {
                write!(f, "[{}]:{}", self.host.to_str(), self.port)
            }
            h => write!(f, "{}:{}", h.to_str(), self.port),
        }
    }
}

/// `probe HOST[:PORT]`: resolve the name (A and AAAA at once, through
/// [`dns::Dns`], to `nameserver` when given), probe every address, judge.
pub async fn probe_host(
    target: &Target,
    nameserver: Option<SocketAddr>,
    settings: Arc<Settings>,
) -> Report {
    let addresses = match &target.host {
        ServerName::IpAddress(ip) => Ok(vec![IpAddr::from(*ip)]),
        ServerName::DnsName(name) => {
            host_addresses(name.as_ref(), nameserver, settings.timeouts.reply).await
        }
        _ => Ok(Vec::new()),
    };
    let addresses = match addresses {
        Ok(a) => a,
        Err(why) => {
            let mx = target.host.to_str().into_owned();
            let finding = findings::unresolvable(&mx, &why);
            return Report::new(target.to_string(), Vec::new(), vec![finding]);
        }
    };
    let endpoints = addresses
        .into_iter()
        .map(|ip| Endpoint {
            mx: target.host.clone(),
            address: SocketAddr::new(ip, target.port),
        })
        .collect();
    let reports = probe_endpoints(endpoints, settings).await;
    let found = findings::from_endpoints(&reports);
    Report::new(target.to_string(), reports, found)
}

/// A host's addresses, IPv4 first; why there are none otherwise (a failed
/// lookup is said as such, never as "no records").
async fn host_addresses(
    name: &str,
    nameserver: Option<SocketAddr>,
    per_query: Duration,
) -> Result<Vec<IpAddr>, String> {
    let dns = dns::Dns::new(nameserver, per_query).map_err(|e| e.to_string())?;
    let found = dns.addresses(name).await.map_err(|e| e.to_string())?;
    let all = found.all();
    match (all.is_empty(), found.error()) {
        (false, _) => Ok(all),
        (true, Some(e)) => Err(e.to_string()),
        (true, None) => Err(format!("{name} has no A or AAAA record")),
    }
}

/// An error and its causes on one line: "TLS handshake failed: received
/// fatal alert: ProtocolVersion".
pub fn describe(e: &(dyn Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let text = c.to_string();
        if !s.ends_with(&text) {
            s.push_str(": ");
            s.push_str(&text);
        }
        cur = c.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> Result<(String, u16), TargetError> {
        Target::parse(s, 25).map(|t| (t.host.to_str().into_owned(), t.port))
    }

    #[test]
    fn targets() {
        assert_eq!(t("MX1.Example.test."), Ok(("mx1.example.test".into(), 25)));
        assert_eq!(
            t("mx1.example.test:2525"),
            Ok(("mx1.example.test".into(), 2525))
        );
        assert_eq!(t("127.0.0.1"), Ok(("127.0.0.1".into(), 25)));
        assert_eq!(t("127.0.0.1:587"), Ok(("127.0.0.1".into(), 587)));
        assert_eq!(t("[::1]:2525"), Ok(("::1".into(), 2525)));
        assert_eq!(t("[::1]"), Ok(("::1".into(), 25)));
        assert_eq!(t("2001:db8::1"), Ok(("2001:db8::1".into(), 25)));
        assert!(matches!(t("mx:0"), Err(TargetError::Port(_))));
        assert!(matches!(t("mx:smtp"), Err(TargetError::Port(_))));
        assert!(matches!(t("[::1"), Err(TargetError::Syntax(_))));
        assert!(matches!(t("[::1]x"), Err(TargetError::Syntax(_))));
        assert!(matches!(t("a b"), Err(TargetError::Syntax(_))));
        assert!(matches!(t("999.1.1.1"), Err(TargetError::Syntax(_))));
        assert!(matches!(t(""), Err(TargetError::Syntax(_))));
    }

    #[test]
    fn targets_display_as_host_port() {
        assert_eq!(Target::parse("[::1]", 25).unwrap().to_string(), "[::1]:25");
        assert_eq!(
            Target::parse("mx.test:2525", 25).unwrap().to_string(),
            "mx.test:2525"
        );
    }
}
