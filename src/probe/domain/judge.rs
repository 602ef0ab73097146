//! Step 3 of `--domain`: findings from what DNS, DANE, MTA-STS, TLS-RPT
//! and PTR showed, and notes for what is worth knowing and is no fault.
//! Pure functions over the facts and the endpoint reports; the endpoint
//! findings themselves are `findings::from_endpoints`.
//!
//! Findings about the domain as a whole (its MX answer, its MTA-STS and
//! TLS-RPT records) have no `mx` and no `address`.

use std::collections::BTreeMap;
use std::time::Duration;

use rustls_pki_types::{CertificateDer, UnixTime};

use super::{DaneCheck, DomainFacts, MxHostFacts, PtrFacts, Routing, server_name};
use crate::probe::dane::{self, RecordResult, Verdict};
use crate::probe::dns::{Answer, Forward, PtrName};
use crate::probe::findings::{self, Code, Finding};
use crate::probe::mta_sts::{FetchError, Mode, Policy, RecordError};
use crate::probe::tlsrpt::TlsRptError;
use crate::probe::{EndpointReport, describe};

/// A null MX, a domain that does not exist, or an MX lookup that failed:
/// nothing can be delivered, so nothing else was probed.
pub fn routing(facts: &DomainFacts) -> Vec<Finding> {
    let d = &facts.domain;
    let (message, fix) = match &facts.routing {
        Routing::Mx { .. } | Routing::Implicit => return Vec::new(),
        Routing::NullMx { .. } => (
            format!(
                "{d} publishes a null MX (MX 0 \".\", RFC 7505): it accepts no mail, so there is nothing to probe"
            ),
            format!(
                "nothing to fix if {d} should receive no mail; otherwise replace the null MX with the MX hosts"
            ),
        ),
        Routing::NxDomain => (
            format!("{d} does not exist (NXDOMAIN)"),
            format!("check the spelling, or publish {d} with MX records"),
        ),
        Routing::Failed(e) => (
            format!("the MX lookup of {d} failed ({e}); senders defer mail until it answers"),
            format!("make the name servers of {d} answer MX queries"),
        ),
    };
    vec![Finding::new(Code::Unreachable, None, None, message, fix)]
}

/// `unreachable` for an MX host with no address to connect to.
pub fn addresses(hosts: &[MxHostFacts]) -> Vec<Finding> {
    hosts
        .iter()
        .filter_map(|h| {
            let why = match &h.addresses {
                Err(e) => e.to_string(),
                Ok(a) if a.all().is_empty() => match a.error() {
                    Some(e) => e.to_string(),
                    None => format!("{} has no A or AAAA record", h.host),
                },
                Ok(_) if server_name(&h.host).is_none() => {
                    format!("{:?} is not a host name", h.host)
                }
                Ok(_) => return None,
            };
            Some(findings::unresolvable(&h.host, &why))
        })
        .collect()
}

// === DANE ===

/// Each MX host's TLSA records against every distinct chain each of its
/// addresses served with SNI. Hosts without records are not checked.
pub fn dane_checks(
    hosts: &[MxHostFacts],
    endpoints: &[EndpointReport],
    now: i64,
) -> Vec<DaneCheck> {
    let at = UnixTime::since_unix_epoch(Duration::from_secs(u64::try_from(now).unwrap_or(0)));
    let mut out = Vec::new();
    for h in hosts {
        let Ok(Answer::Records { records, .. }) = &h.tlsa else {
            continue;
        };
        for r in endpoints
            .iter()
            .filter(|r| r.endpoint.dns_name() == Some(h.host.as_str()))
        {
            let mut seen: Vec<&[CertificateDer<'static>]> = Vec::new();
            let chains = r
                .handshakes
                .iter()
                .filter(|x| x.sni.is_some())
                .filter_map(|x| x.outcome.as_ref().ok())
                .map(|s| s.facts.chain.as_slice());
            for chain in chains {
                if seen.contains(&chain) {
                    continue;
                }
                seen.push(chain);
                out.push(DaneCheck {
                    mx: h.host.clone(),
                    address: r.endpoint.address,
                    report: dane::check_at(records, chain, at),
                    served: chain.first().and_then(|c| dane::tlsa_311_for_cert(c).ok()),
                });
            }
        }
    }
    out
}

/// `dane_mismatch`: one finding per MX host and served key, naming every
/// address that serves it.
pub fn dane(facts: &DomainFacts) -> Vec<Finding> {
    let mut groups: BTreeMap<(&str, String), Vec<&DaneCheck>> = BTreeMap::new();
    for c in facts
        .dane
        .iter()
        .filter(|c| c.report.verdict == Verdict::NoMatch)
    {
        let key = c
            .served
            .as_ref()
            .map(ToString::to_string)
            .unwrap_or_default();
        groups.entry((c.mx.as_str(), key)).or_default().push(c);
    }
    groups
        .into_iter()
        .filter_map(|((mx, _), checks)| dane_mismatch(mx, facts.port, &checks))
        .collect()
}

fn dane_mismatch(mx: &str, port: u16, checks: &[&DaneCheck]) -> Option<Finding> {
    let first = checks.first()?;
    let addresses: Vec<String> = checks.iter().map(|c| c.address.to_string()).collect();
    let published: Vec<String> = first
        .report
        .records
        .iter()
        .map(|r| r.record.to_string())
        .collect();
    let owner = dane::tlsa_owner(mx, port);
    let message = format!(
        "no TLSA record at {owner} matches the chain served at {} (published: {}); DANE senders will not deliver to {mx}",
        addresses.join(", "),
        published.join("; ")
    );
    let fix = match &first.served {
        Some(r) => format!(
            "publish `{}` (the served key); on the next rotation publish the new key's record first and keep the old one until the old key is gone",
            r.zone_line(mx, port)
        ),
        None => format!("publish TLSA records at {owner} that match the served certificate"),
    };
    let address = match addresses.as_slice() {
        [one] => Some(one.clone()),
        _ => None,
    };
    Some(Finding::new(
        Code::DaneMismatch,
        Some(mx.to_string()),
        address,
        message,
        fix,
    ))
}

// === MTA-STS and TLS-RPT ===

/// `mta_sts_policy_invalid` (a record present, its policy unusable, or
/// the record itself broken) and `mta_sts_mx_not_covered`.
pub fn mta_sts(facts: &DomainFacts) -> Vec<Finding> {
    let Some(d) = &facts.mta_sts else {
        return Vec::new();
    };
    let domain = &facts.domain;
    let mut out = Vec::new();
    if let Err(e) = &d.record
        && !matches!(e, RecordError::Dns(_))
    {
        out.push(Finding::new(
            Code::MtaStsPolicyInvalid,
            None,
            None,
            format!("the _mta-sts.{domain} record is unusable, so senders ignore it: {e}"),
            format!(
                "publish exactly one `_mta-sts.{domain}. IN TXT \"v=STSv1; id=20250101T000000;\"` (a new id each time the policy changes)"
            ),
        ));
    }
    match &d.policy {
        None => {}
        Some(Err(e)) => out.push(Finding::new(
            Code::MtaStsPolicyInvalid,
            None,
            None,
            format!(
                "the MTA-STS policy of {domain} cannot be used: {}",
                describe(e)
            ),
            fetch_fix(domain, e),
        )),
        // Mode none withdraws the policy: nothing to cover.
        Some(Ok(p)) if p.policy.mode == Mode::None => {}
        Some(Ok(p)) => {
            let hosts = facts.host_names();
            for mx in d.uncovered(&hosts) {
                out.push(not_covered(domain, &p.policy, mx));
            }
        }
    }
    out
}

fn not_covered(domain: &str, policy: &Policy, mx: &str) -> Finding {
    let patterns: Vec<String> = policy.mx.iter().map(ToString::to_string).collect();
    let consequence = match policy.mode {
        Mode::Enforce => format!("enforcing senders will not deliver to {mx}"),
        _ => format!("senders report every delivery to {mx} as a failure"),
    };
    Finding::new(
        Code::MtaStsMxNotCovered,
        Some(mx.to_string()),
        None,
        format!(
            "the MTA-STS policy of {domain} (mode {}) lists mx {}, which does not cover {mx}; {consequence}",
            policy.mode.as_str(),
            patterns.join(", ")
        ),
        format!(
            "add `mx: {mx}` to https://mta-sts.{domain}/.well-known/mta-sts.txt and change the id in the _mta-sts.{domain} TXT record"
        ),
    )
}

/// The fix for each way the policy fetch fails.
fn fetch_fix(domain: &str, e: &FetchError) -> String {
    let url = format!("https://mta-sts.{domain}/.well-known/mta-sts.txt");
    match e {
        FetchError::BadHost(_) | FetchError::Resolve(_) | FetchError::NoAddress(_) => {
            format!("publish A/AAAA records for mta-sts.{domain} and serve the policy at {url}")
        }
        FetchError::Connect { .. } | FetchError::Timeout { .. } | FetchError::Http { .. } => {
            format!("serve the policy at {url} (HTTPS on port 443, reachable from the Internet)")
        }
        FetchError::Tls { .. } => format!(
            "serve mta-sts.{domain} with a certificate for that name from a CA senders trust, with its full chain"
        ),
        FetchError::Status { .. } | FetchError::Redirect { .. } => {
            format!(
                "serve the policy itself at {url} with status 200 (senders follow no redirects)"
            )
        }
        FetchError::ContentType { .. } => "serve the policy as Content-Type: text/plain".into(),
        FetchError::TooLarge { .. } => "serve only the policy: a few lines of text".into(),
        FetchError::Policy { error, .. } => format!(
            "correct the policy ({error}): version: STSv1, mode, one mx line per MX pattern, max_age, one \"name: value\" per line"
        ),
    }
}

/// `tlsrpt_missing`: no record, a malformed one, or a failed lookup
/// (each said as such): senders report TLS failures to nobody.
pub fn tlsrpt(facts: &DomainFacts) -> Vec<Finding> {
    let domain = &facts.domain;
    let message = match &facts.tlsrpt {
        None | Some(Ok(Some(_))) => return Vec::new(),
        Some(Ok(None)) => format!(
            "{domain} publishes no TLS-RPT record (_smtp._tls.{domain} TXT): senders report TLS failures to nobody"
        ),
        Some(Err(TlsRptError::Dns(e))) => {
            format!("the TLS-RPT lookup of _smtp._tls.{domain} failed: {e}")
        }
        Some(Err(e)) => {
            format!("the TLS-RPT record of {domain} is malformed, so senders ignore it: {e}")
        }
    };
    vec![Finding::new(
        Code::TlsrptMissing,
        None,
        None,
        message,
        format!("publish `_smtp._tls.{domain}. IN TXT \"v=TLSRPTv1; rua=mailto:tlsrpt@{domain}\"`"),
    )]
}

// === PTR ===

/// `ptr_mismatch` (info) for every endpoint whose address has no PTR
/// name that is forward-confirmed and names the MX host or the server's
/// EHLO name.
pub fn ptr(ptrs: &[PtrFacts], endpoints: &[EndpointReport]) -> Vec<Finding> {
    let mut out = Vec::new();
    for r in endpoints {
        let ip = r.endpoint.address.ip();
        let Some(p) = ptrs.iter().find(|p| p.ip == ip) else {
            continue;
        };
        let mx = r.endpoint.mx_str();
        let ehlo = ehlo_name(r);
        if let Some(problem) = ptr_problem(p, &mx, ehlo.as_deref()) {
            out.push(Finding::new(
                Code::PtrMismatch,
                Some(mx.clone()),
                Some(r.endpoint.address.to_string()),
                format!(
                    "{problem}; not a TLS fault, but receivers that check reverse DNS defer mail from this host, which often looks like a TLS problem"
                ),
                format!(
                    "set the PTR of {ip} to {mx} (whoever runs the address does it) and keep {mx} resolving back to {ip}"
                ),
            ));
        }
    }
    out
}

/// The name the server gives itself: its EHLO reply's, else its greeting's.
fn ehlo_name(r: &EndpointReport) -> Option<String> {
    let d = r.dialogue.as_ref().ok()?;
    d.ehlo
        .server_name()
        .or(d.greeting.server_name())
        .map(|n| n.trim_end_matches('.').to_ascii_lowercase())
}

fn ptr_problem(p: &PtrFacts, mx: &str, ehlo: Option<&str>) -> Option<String> {
    let names = match &p.answer {
        Err(e) => return Some(format!("the PTR lookup of {} failed: {e}", p.ip)),
        Ok(Answer::Records { records, .. }) => records,
        Ok(_) => return Some(format!("{} has no PTR record", p.ip)),
    };
    let good = |n: &PtrName| {
        n.forward == Forward::Confirmed && (n.name == mx || Some(n.name.as_str()) == ehlo)
    };
    if names.iter().any(good) {
        return None;
    }
    let listed: Vec<String> = names
        .iter()
        .map(|n| format!("{} ({})", n.name, forward_text(&n.forward)))
        .collect();
    let wanted = match ehlo {
        Some(e) if e != mx => format!("{mx} or the EHLO name {e}"),
        _ => mx.to_string(),
    };
    Some(format!(
        "the PTR of {} is {}; no forward-confirmed PTR names {wanted}",
        p.ip,
        listed.join(", ")
    ))
}

/// Forward confirmation in words.
pub fn forward_text(f: &Forward) -> String {
    match f {
        Forward::Confirmed => "forward-confirmed".into(),
        Forward::NotConfirmed => "does not resolve back".into(),
        Forward::Failed(e) => format!("forward lookup failed: {e}"),
        Forward::NotChecked => "not checked".into(),
    }
}

// === notes ===

/// What is worth knowing and is no finding: how mail is routed, partial
/// DNS failures, TLSA records without the AD bit, no MTA-STS or a policy
/// not in enforce mode.
pub fn notes(facts: &DomainFacts) -> Vec<String> {
    let mut out = routing_notes(facts);
    for h in &facts.hosts {
        out.extend(host_notes(h, facts));
    }
    out.extend(mta_sts_notes(facts));
    out
}

fn routing_notes(facts: &DomainFacts) -> Vec<String> {
    let d = &facts.domain;
    match &facts.routing {
        Routing::Implicit => vec![format!(
            "{d} has no MX record: senders deliver to the A/AAAA of {d} itself (the implicit MX, RFC 5321 §5.1)"
        )],
        Routing::Mx {
            null_mx_too: true, ..
        } => vec![format!(
            "{d} publishes a null MX (\".\") beside its MX hosts, which RFC 7505 §3 forbids; senders may take either"
        )],
        _ => Vec::new(),
    }
}

fn host_notes(h: &MxHostFacts, facts: &DomainFacts) -> Vec<String> {
    let mut out = Vec::new();
    let host = &h.host;
    if let Ok(a) = &h.addresses
        && !a.all().is_empty()
        && let Some(e) = a.error()
    {
        out.push(format!(
            "a lookup for {host} failed ({e}); only the addresses found were probed"
        ));
    }
    let owner = dane::tlsa_owner(host, facts.port);
    match &h.tlsa {
        Err(e) => out.push(format!(
            "the TLSA lookup at {owner} failed ({e}); if the zone is DNSSEC-signed, DANE senders defer mail to {host} while it fails (RFC 7672 §2.2)"
        )),
        Ok(Answer::Records {
            authenticated: false,
            ..
        }) => out.push(format!(
            "the TLSA records at {owner} came without the AD bit: DANE senders use only DNSSEC-validated records (is the zone signed, and does the resolver validate?)"
        )),
        Ok(_) => {}
    }
    let unusable = facts
        .dane
        .iter()
        .find(|c| c.mx == *host && c.report.verdict == Verdict::OnlyUnusable);
    if let Some(c) = unusable {
        let why: Vec<String> = c
            .report
            .records
            .iter()
            .filter_map(|r| match &r.result {
                RecordResult::Unusable(u) => Some(format!("{}: {u}", r.record)),
                _ => None,
            })
            .collect();
        out.push(format!(
            "every TLSA record at {owner} is unusable for SMTP, so DANE senders fall back to unauthenticated TLS: {}",
            why.join("; ")
        ));
    }
    out
}

fn mta_sts_notes(facts: &DomainFacts) -> Vec<String> {
    let d = &facts.domain;
    let Some(disc) = &facts.mta_sts else {
        return Vec::new();
    };
    match (&disc.record, &disc.policy) {
        (Ok(None), _) => vec![format!(
            "{d} publishes no MTA-STS record (_mta-sts.{d} TXT): mta_sts_ready says whether its MX hosts would pass an enforce policy"
        )],
        (Err(RecordError::Dns(e)), _) => vec![format!(
            "the _mta-sts.{d} lookup failed ({e}): senders without a cached policy see no MTA-STS"
        )],
        (_, Some(Ok(p))) if p.policy.mode == Mode::Testing => vec![format!(
            "the MTA-STS policy of {d} is in testing mode: senders report failures and deliver anyway; switch to enforce once mta_sts_ready is true"
        )],
        (_, Some(Ok(p))) if p.policy.mode == Mode::None => vec![format!(
            "the MTA-STS policy of {d} is in mode none (withdrawn): its mx patterns were not checked"
        )],
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::probe::dns::Forward;

    fn ptr_of(names: &[(&str, Forward)]) -> PtrFacts {
        PtrFacts {
            ip: "192.0.2.1".parse().unwrap(),
            answer: Ok(Answer::Records {
                records: names
                    .iter()
                    .map(|(n, f)| PtrName {
                        name: n.to_string(),
                        forward: f.clone(),
                    })
                    .collect(),
                authenticated: false,
            }),
        }
    }

    #[test]
    fn a_confirmed_ptr_naming_the_mx_or_the_ehlo_name_is_fine() {
        let mx = ptr_of(&[("mx1.example.test", Forward::Confirmed)]);
        assert_eq!(ptr_problem(&mx, "mx1.example.test", None), None);
        assert_eq!(
            ptr_problem(&mx, "mx2.example.test", Some("mx1.example.test")),
            None
        );
    }

    #[test]
    fn an_unconfirmed_or_other_ptr_is_named_with_its_confirmation() {
        let other = ptr_of(&[("other.example.test", Forward::Confirmed)]);
        assert_eq!(
            ptr_problem(&other, "mx1.example.test", Some("mx1.example.test")).unwrap(),
            "the PTR of 192.0.2.1 is other.example.test (forward-confirmed); no forward-confirmed PTR names mx1.example.test"
        );
        let liar = ptr_of(&[("mx1.example.test", Forward::NotConfirmed)]);
        assert_eq!(
            ptr_problem(&liar, "mx1.example.test", Some("smtp.example.test")).unwrap(),
            "the PTR of 192.0.2.1 is mx1.example.test (does not resolve back); no forward-confirmed PTR names mx1.example.test or the EHLO name smtp.example.test"
        );
        let none = PtrFacts {
            ip: "192.0.2.1".parse().unwrap(),
            answer: Ok(Answer::NxDomain),
        };
        assert_eq!(
            ptr_problem(&none, "mx1.example.test", None).unwrap(),
            "192.0.2.1 has no PTR record"
        );
    }
}
