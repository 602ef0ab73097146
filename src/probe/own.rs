//! `check --dns`: the proxy's own names as senders see them through DNS.
//! The caller (`cli/check.rs`) says which names the proxy answers for and
//! which configured certificate a sender asking for each name gets; this
//! module looks the names up, probes the addresses that resolve with the
//! endpoint prober, and compares every published TLSA set with the
//! certificate and key files on disk: what the proxy serves after its
//! next (re)load. A TLSA set that the certificate on disk does not match
//! is `dane_mismatch`, with the record to publish for the key on disk.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use rustls_pki_types::{CertificateDer, UnixTime};

use super::dane::{self, DaneReport, TlsaRecord, Verdict};
use super::dns::{Addresses, Answer, Dns, DnsError};
use super::domain::server_name;
use super::{Code, Endpoint, Finding, Report, Settings, concurrently, findings, probe_endpoints};

/// A configured certificate, as loaded from disk.
#[derive(Debug, Clone)]
pub struct OwnCertificate {
    /// `[[certificate]] name`.
    pub name: String,
    /// The chain as it will be served, leaf first.
    pub chain: Vec<CertificateDer<'static>>,
    /// The files it came from.
    pub chain_path: PathBuf,
    pub key_path: PathBuf,
    /// `chain_check = "dane-ee"`: only TLSA vouches for it.
    pub dane_only: bool,
}

/// A name the proxy answers for, and the certificates (indexes into the
/// certificate list) a sender asking for it gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnName {
    pub name: String,
    pub certificates: Vec<usize>,
}

/// What DNS says about one name.
#[derive(Debug, Clone)]
pub struct NameFacts {
    pub name: String,
    pub addresses: Result<Addresses, DnsError>,
    pub tlsa: Result<Answer<TlsaRecord>, DnsError>,
}

/// One certificate on disk against the TLSA records of one name.
#[derive(Debug, Clone)]
pub struct TlsaCheck {
    pub name: String,
    /// Index into the certificate list.
    pub certificate: usize,
    /// Its `[[certificate]] name`.
    pub certificate_name: String,
    pub report: DaneReport,
    /// The `3 1 1` record of the key file on disk (what to publish).
    pub publish: Option<TlsaRecord>,
}

/// Everything `check --dns` found.
#[derive(Debug)]
pub struct OwnReport {
    pub port: u16,
    pub names: Vec<NameFacts>,
    pub tlsa: Vec<TlsaCheck>,
    /// The endpoints probed and every finding, ranked.
    pub probe: Report,
}

/// Looks every name up (A, AAAA and TLSA at `_PORT._tcp.NAME`, all at
/// once), probes the addresses of those that resolve on `port`, and
/// judges TLSA against the certificates on disk.
pub async fn check(
    names: &[OwnName],
    certificates: &[OwnCertificate],
    port: u16,
    nameserver: Option<SocketAddr>,
    settings: Arc<Settings>,
) -> Result<OwnReport, DnsError> {
    let dns = Dns::new(nameserver, settings.timeouts.reply)?;
    let facts = lookup(&dns, names, port).await;
    let endpoints: Vec<Endpoint> = facts
        .iter()
        .filter_map(|f| {
            let ips = f.addresses.as_ref().ok()?.all();
            Some((server_name(&f.name)?, ips))
        })
        .flat_map(|(mx, ips)| {
            ips.into_iter().map(move |ip| Endpoint {
                mx: mx.clone(),
                address: SocketAddr::new(ip, port),
            })
        })
        .collect();
    let reports = probe_endpoints(endpoints, settings.clone()).await;
    let tlsa = tlsa_checks(names, &facts, certificates, settings.now);
    let mut found = findings::from_endpoints(&reports);
    found.extend(tlsa_findings(&tlsa, names, &facts, certificates, port));
    Ok(OwnReport {
        port,
        names: facts,
        tlsa,
        probe: Report::new("check --dns".into(), reports, found),
    })
}

async fn lookup(dns: &Dns, names: &[OwnName], port: u16) -> Vec<NameFacts> {
    let lookups = names.iter().map(|n| {
        let (dns, name) = (dns.clone(), n.name.clone());
        async move { tokio::join!(dns.addresses(&name), dns.tlsa(&name, port)) }
    });
    let answers = concurrently(lookups).await;
    names
        .iter()
        .zip(answers)
        .map(|(n, answer)| {
            let failed = || DnsError::Failed {
                query: n.name.clone(),
                detail: "the lookup task failed".into(),
            };
            let (addresses, tlsa) = answer.unwrap_or_else(|| (Err(failed()), Err(failed())));
            NameFacts {
                name: n.name.clone(),
                addresses,
                tlsa,
            }
        })
        .collect()
}

/// Every certificate served for a name with TLSA records, against them.
fn tlsa_checks(
    names: &[OwnName],
    facts: &[NameFacts],
    certificates: &[OwnCertificate],
    now: i64,
) -> Vec<TlsaCheck> {
    let at = UnixTime::since_unix_epoch(Duration::from_secs(u64::try_from(now).unwrap_or(0)));
    let mut out = Vec::new();
    for (n, f) in names.iter().zip(facts) {
        let Ok(Answer::Records { records, .. }) = &f.tlsa else {
            continue;
        };
        for &i in &n.certificates {
            let Some(c) = certificates.get(i) else {
                continue;
            };
            out.push(TlsaCheck {
                name: n.name.clone(),
                certificate: i,
                certificate_name: c.name.clone(),
                report: dane::check_at(records, &c.chain, at),
                publish: dane::tlsa_311_for_key_file(&c.key_path).ok().or_else(|| {
                    c.chain
                        .first()
                        .and_then(|l| dane::tlsa_311_for_cert(l).ok())
                }),
            });
        }
    }
    out
}

/// `dane_mismatch` for every certificate on disk that a published TLSA
/// set does not match, and for a `dane-ee` certificate whose name has no
/// TLSA records at all (nothing then vouches for it).
fn tlsa_findings(
    checks: &[TlsaCheck],
    names: &[OwnName],
    facts: &[NameFacts],
    certificates: &[OwnCertificate],
    port: u16,
) -> Vec<Finding> {
    let mut out: Vec<Finding> = checks
        .iter()
        .filter(|c| c.report.verdict == Verdict::NoMatch)
        .filter_map(|c| Some(mismatch(c, certificates.get(c.certificate)?, port)))
        .collect();
    for (n, f) in names.iter().zip(facts) {
        // A failed lookup says nothing about whether records exist.
        if !matches!(f.tlsa, Ok(Answer::NoData | Answer::NxDomain)) {
            continue;
        }
        for cert in n
            .certificates
            .iter()
            .filter_map(|&i| certificates.get(i))
            .filter(|c| c.dane_only)
        {
            out.push(unvouched(cert, &n.name, port));
        }
    }
    out
}

fn mismatch(c: &TlsaCheck, cert: &OwnCertificate, port: u16) -> Finding {
    let published: Vec<String> = c
        .report
        .records
        .iter()
        .map(|r| r.record.to_string())
        .collect();
    Finding::new(
        Code::DaneMismatch,
        Some(c.name.clone()),
        None,
        format!(
            "certificate {:?} on disk ({}) matches none of the TLSA records at {} (published: {}); DANE senders that get it refuse to deliver",
            cert.name,
            cert.chain_path.display(),
            dane::tlsa_owner(&c.name, port),
            published.join("; ")
        ),
        publish_fix(c.publish.as_ref(), &c.name, port),
    )
}

fn unvouched(cert: &OwnCertificate, name: &str, port: u16) -> Finding {
    let publish = dane::tlsa_311_for_key_file(&cert.key_path).ok();
    Finding::new(
        Code::DaneMismatch,
        Some(name.to_string()),
        None,
        format!(
            "certificate {:?} has chain_check = \"dane-ee\", but {} has no TLSA records: nothing vouches for it",
            cert.name,
            dane::tlsa_owner(name, port)
        ),
        publish_fix(publish.as_ref(), name, port),
    )
}

fn publish_fix(record: Option<&TlsaRecord>, name: &str, port: u16) -> String {
    match record {
        Some(r) => format!(
            "publish `{}` (the key on disk) before the proxy loads the new key, and keep the old record until the old key is gone",
            r.zone_line(name, port)
        ),
        None => format!(
            "publish a TLSA record at {} for the key on disk",
            dane::tlsa_owner(name, port)
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(tlsa: Result<Answer<TlsaRecord>, DnsError>) -> NameFacts {
        NameFacts {
            name: "mx1.example.test".into(),
            addresses: Ok(Addresses {
                v4: Ok(Answer::NoData),
                v6: Ok(Answer::NoData),
            }),
            tlsa,
        }
    }

    fn cert(dane_only: bool) -> OwnCertificate {
        OwnCertificate {
            name: "mx1".into(),
            chain: Vec::new(),
            chain_path: "/nonexistent/fullchain.pem".into(),
            key_path: "/nonexistent/privkey.pem".into(),
            dane_only,
        }
    }

    #[test]
    fn a_dane_ee_certificate_without_tlsa_is_vouched_for_by_nothing() {
        let names = [OwnName {
            name: "mx1.example.test".into(),
            certificates: vec![0],
        }];
        let found = tlsa_findings(&[], &names, &[facts(Ok(Answer::NoData))], &[cert(true)], 25);
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].code, Code::DaneMismatch);
        assert!(found[0].message.contains("dane-ee"), "{}", found[0].message);
        assert_eq!(
            found[0].fix,
            "publish a TLSA record at _25._tcp.mx1.example.test for the key on disk"
        );
        // A full-chain certificate needs no TLSA; a failed lookup proves nothing.
        assert!(
            tlsa_findings(
                &[],
                &names,
                &[facts(Ok(Answer::NoData))],
                &[cert(false)],
                25
            )
            .is_empty()
        );
        let failed = Err(DnsError::Timeout {
            query: "TLSA _25._tcp.mx1.example.test.".into(),
            timeout: Duration::from_secs(1),
        });
        assert!(tlsa_findings(&[], &names, &[facts(failed)], &[cert(true)], 25).is_empty());
    }
}
