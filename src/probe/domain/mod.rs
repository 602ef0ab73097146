//! `probe --domain DOMAIN`: the whole playbook for a domain (DESIGN.md §7),
//! in the order a postmaster runs it:
//!
//! 1. where mail for the domain goes: its MX hosts (or the implicit MX,
//!    or a null MX, or no domain at all);
//! 2. at once: each MX host's A, AAAA and TLSA records, then every address
//!    probed (with and without SNI, TLS 1.3 and 1.2, legacy) while its PTR
//!    is looked up; beside all of that, MTA-STS discovery (record and
//!    policy) and the TLS-RPT record;
//! 3. judge (`judge`): the endpoint findings, then DANE, MTA-STS,
//!    TLS-RPT and PTR findings, and notes for what is worth knowing but
//!    not a fault;
//! 4. report: the endpoint report plus the domain's sections (`render`).
//!
//! Every DNS query has the per-step timeout and runs concurrently with
//! the others, so a domain with several MX hosts costs about one lookup,
//! one endpoint probe and one policy fetch, whichever is longest.

pub mod judge;
pub mod render;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use rustls_pki_types::{DnsName, ServerName};

use super::dane::{DaneReport, TlsaRecord};
use super::dns::{Addresses, Answer, Dns, DnsError, MxAnswer, PtrName};
use super::mta_sts::{self, Discovery, PolicyFetcher};
use super::tlsrpt::{self, TlsRptError, TlsRptRecord};
use super::{Endpoint, EndpointReport, Report, Settings, Timeouts, concurrently, findings};

/// What `--domain` needs besides the endpoint settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DomainOptions {
    /// `--nameserver`: every query goes there.
    pub nameserver: Option<SocketAddr>,
    /// MX hosts are probed on this port (`--smtp-port`), and their TLSA
    /// records looked up at `_PORT._tcp.MX`.
    pub smtp_port: u16,
    /// The policy is fetched from `mta-sts.DOMAIN` on this port.
    pub mta_sts_port: u16,
}

/// Why the probe of a domain could not start (a usage or setup error).
#[derive(Debug, thiserror::Error)]
pub enum DomainError {
    #[error("{0:?} is not a domain name")]
    BadDomain(String),
    #[error("DNS: {0}")]
    Dns(#[from] DnsError),
    #[error("cannot set up the MTA-STS policy fetch")]
    Fetcher(#[source] rustls::Error),
}

/// How mail for the domain is routed: the MX step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Routing {
    /// MX hosts, by preference. `null_mx_too`: a "." beside them.
    Mx {
        authenticated: bool,
        null_mx_too: bool,
    },
    /// No MX: senders use the domain's own A/AAAA (RFC 5321 §5.1).
    Implicit,
    /// RFC 7505: the domain accepts no mail.
    NullMx {
        authenticated: bool,
    },
    NxDomain,
    Failed(DnsError),
}

/// One MX host and what DNS says about it.
#[derive(Debug, Clone)]
pub struct MxHostFacts {
    /// `None` for the implicit MX.
    pub preference: Option<u16>,
    /// Lowercase, without the trailing dot.
    pub host: String,
    pub addresses: Result<Addresses, DnsError>,
    /// At `_PORT._tcp.HOST`.
    pub tlsa: Result<Answer<TlsaRecord>, DnsError>,
}

impl MxHostFacts {
    /// Every address found, IPv4 first.
    pub fn ips(&self) -> Vec<IpAddr> {
        self.addresses
            .as_ref()
            .map(Addresses::all)
            .unwrap_or_default()
    }
}

/// The PTR answer for one address of the MX hosts.
#[derive(Debug, Clone)]
pub struct PtrFacts {
    pub ip: IpAddr,
    pub answer: Result<Answer<PtrName>, DnsError>,
}

/// The TLSA records of an MX host against one chain it served with SNI
/// (DANE senders send SNI, RFC 7672 §8.1).
#[derive(Debug, Clone)]
pub struct DaneCheck {
    pub mx: String,
    pub address: SocketAddr,
    pub report: DaneReport,
    /// The `3 1 1` record of the served leaf: what to publish.
    pub served: Option<TlsaRecord>,
}

/// Everything the domain's DNS, DANE, MTA-STS and TLS-RPT showed; the
/// endpoints themselves are in [`Report::endpoints`].
#[derive(Debug)]
pub struct DomainFacts {
    /// Lowercase, without the trailing dot.
    pub domain: String,
    /// The SMTP port probed (and of the TLSA owner names).
    pub port: u16,
    pub routing: Routing,
    pub hosts: Vec<MxHostFacts>,
    pub ptr: Vec<PtrFacts>,
    pub dane: Vec<DaneCheck>,
    /// `None` when there was no MX host to probe.
    pub mta_sts: Option<Discovery>,
    pub tlsrpt: Option<Result<Option<TlsRptRecord>, TlsRptError>>,
    /// What is worth knowing and is no finding.
    pub notes: Vec<String>,
}

impl DomainFacts {
    /// The MX host names, in preference order.
    pub fn host_names(&self) -> Vec<String> {
        self.hosts.iter().map(|h| h.host.clone()).collect()
    }
}

/// `probe --domain DOMAIN`.
pub async fn probe_domain(
    domain: &str,
    opts: &DomainOptions,
    settings: Arc<Settings>,
) -> Result<Report, DomainError> {
    let domain = domain_name(domain)?;
    let dns = Dns::new(opts.nameserver, settings.timeouts.reply)?;
    let fetcher = PolicyFetcher::new(
        &settings.anchors,
        opts.mta_sts_port,
        policy_deadline(&settings.timeouts),
    )
    .map_err(DomainError::Fetcher)?;

    // 1. Where mail for the domain goes.
    let (routing, targets) = route(&dns, &domain).await;
    let mut facts = DomainFacts {
        domain,
        port: opts.smtp_port,
        routing,
        hosts: Vec::new(),
        ptr: Vec::new(),
        dane: Vec::new(),
        mta_sts: None,
        tlsrpt: None,
        notes: Vec::new(),
    };
    if targets.is_empty() {
        return Ok(judge_and_report(facts, Vec::new(), settings.now));
    }

    // 2. Everything else at once.
    let (probed, discovery, tlsrpt) = tokio::join!(
        probe_mx_hosts(&dns, targets, opts.smtp_port, settings.clone()),
        mta_sts::discover(&dns, &fetcher, &facts.domain),
        tlsrpt::lookup(&dns, &facts.domain),
    );
    facts.hosts = probed.hosts;
    facts.ptr = probed.ptr;
    facts.mta_sts = Some(discovery);
    facts.tlsrpt = Some(tlsrpt);

    // 3 and 4.
    Ok(judge_and_report(facts, probed.endpoints, settings.now))
}

/// One deadline for the whole policy fetch (connect, TLS, request, body).
fn policy_deadline(t: &Timeouts) -> Duration {
    t.connect + t.handshake
}

/// Lowercase, no trailing dot, a DNS name that does not look like an
/// address.
fn domain_name(text: &str) -> Result<String, DomainError> {
    let name = text.trim_end_matches('.').to_ascii_lowercase();
    let bad = || DomainError::BadDomain(text.to_string());
    if name.is_empty() || name.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        return Err(bad());
    }
    DnsName::try_from(name.as_str()).map_err(|_| bad())?;
    Ok(name)
}

/// An MX host as the name to connect to; `None` if it is not a host name.
pub fn server_name(host: &str) -> Option<ServerName<'static>> {
    DnsName::try_from(host.to_string())
        .ok()
        .map(ServerName::DnsName)
}

/// Step 1: the MX answer as a sender reads it, and the hosts to probe
/// (preference, name).
async fn route(dns: &Dns, domain: &str) -> (Routing, Vec<(Option<u16>, String)>) {
    match dns.mx(domain).await {
        Ok(MxAnswer::Hosts {
            hosts,
            authenticated,
            null_mx_too,
        }) => (
            Routing::Mx {
                authenticated,
                null_mx_too,
            },
            hosts
                .into_iter()
                .map(|h| (Some(h.preference), h.host))
                .collect(),
        ),
        Ok(MxAnswer::NoMx) => (Routing::Implicit, vec![(None, domain.to_string())]),
        Ok(MxAnswer::NullMx { authenticated }) => (Routing::NullMx { authenticated }, Vec::new()),
        Ok(MxAnswer::NxDomain) => (Routing::NxDomain, Vec::new()),
        Err(e) => (Routing::Failed(e), Vec::new()),
    }
}

/// What step 2 found at the MX hosts.
struct Probed {
    hosts: Vec<MxHostFacts>,
    endpoints: Vec<EndpointReport>,
    ptr: Vec<PtrFacts>,
}

/// Step 2 for the MX hosts: their DNS records, all at once; then every
/// address probed while the PTR records are looked up.
async fn probe_mx_hosts(
    dns: &Dns,
    targets: Vec<(Option<u16>, String)>,
    port: u16,
    settings: Arc<Settings>,
) -> Probed {
    let hosts = lookup_hosts(dns, targets, port).await;
    let endpoints: Vec<Endpoint> = hosts
        .iter()
        .filter_map(|h| Some((server_name(&h.host)?, h.ips())))
        .flat_map(|(name, ips)| {
            ips.into_iter().map(move |ip| Endpoint {
                mx: name.clone(),
                address: SocketAddr::new(ip, port),
            })
        })
        .collect();
    let mut ips: Vec<IpAddr> = endpoints.iter().map(|e| e.address.ip()).collect();
    ips.sort();
    ips.dedup();
    let (endpoints, ptr) = tokio::join!(
        super::probe_endpoints(endpoints, settings),
        lookup_ptrs(dns, ips)
    );
    Probed {
        hosts,
        endpoints,
        ptr,
    }
}

/// A and AAAA (together) and TLSA of every MX host, all at once.
async fn lookup_hosts(
    dns: &Dns,
    targets: Vec<(Option<u16>, String)>,
    port: u16,
) -> Vec<MxHostFacts> {
    let lookups = targets.iter().map(|(_, host)| {
        let (dns, host) = (dns.clone(), host.clone());
        async move { tokio::join!(dns.addresses(&host), dns.tlsa(&host, port)) }
    });
    let answers = concurrently(lookups).await;
    targets
        .into_iter()
        .zip(answers)
        .map(|((preference, host), answer)| {
            let (addresses, tlsa) =
                answer.unwrap_or_else(|| (Err(task_failed(&host)), Err(task_failed(&host))));
            MxHostFacts {
                preference,
                host,
                addresses,
                tlsa,
            }
        })
        .collect()
}

/// The PTR of every address, each forward-confirmed, all at once.
async fn lookup_ptrs(dns: &Dns, ips: Vec<IpAddr>) -> Vec<PtrFacts> {
    let lookups = ips.iter().map(|&ip| {
        let dns = dns.clone();
        async move { dns.ptr(ip).await }
    });
    let answers = concurrently(lookups).await;
    ips.into_iter()
        .zip(answers)
        .map(|(ip, answer)| PtrFacts {
            ip,
            answer: answer.unwrap_or_else(|| Err(task_failed(&ip.to_string()))),
        })
        .collect()
}

fn task_failed(what: &str) -> DnsError {
    DnsError::Failed {
        query: what.to_string(),
        detail: "the lookup task failed".into(),
    }
}

/// Steps 3 and 4: every finding, ranked, and the report.
fn judge_and_report(mut facts: DomainFacts, endpoints: Vec<EndpointReport>, now: i64) -> Report {
    facts.dane = judge::dane_checks(&facts.hosts, &endpoints, now);
    let mut found = findings::from_endpoints(&endpoints);
    found.extend(judge::routing(&facts));
    found.extend(judge::addresses(&facts.hosts));
    found.extend(judge::dane(&facts));
    found.extend(judge::mta_sts(&facts));
    found.extend(judge::tlsrpt(&facts));
    found.extend(judge::ptr(&facts.ptr, &endpoints));
    facts.notes = judge::notes(&facts);
    Report::new(facts.domain.clone(), endpoints, found).with_domain(facts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn domain_names_are_normalised_and_addresses_refused() {
        assert_eq!(domain_name("Example.TEST.").unwrap(), "example.test");
        for bad in ["", ".", "192.0.2.1", "a b", "x..y"] {
            assert!(domain_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn the_policy_fetch_gets_a_connect_and_a_handshake() {
        let t = Timeouts::uniform(Duration::from_secs(1));
        assert_eq!(policy_deadline(&t), Duration::from_secs(2));
    }
}
