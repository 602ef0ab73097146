//! Step 4 of `--domain`: the domain's sections of the report, as JSON
//! fields beside DESIGN.md §7's (`domain`, `mx`, `mx_hosts`,
//! `certificates`, `dane`, `ptr`, `mta_sts`, `tlsrpt`, `notes`) and as
//! text between the endpoint table and the findings.

use std::collections::BTreeMap;
use std::io::{self, Write};

use serde_json::{Map, Value, json};

use super::judge::forward_text;
use super::{DaneCheck, DomainFacts, MxHostFacts, PtrFacts, Routing};
use crate::probe::dane::{self, RecordResult, Verdict};
use crate::probe::dns::{Answer, DnsError};
use crate::probe::mta_sts::{Discovery, FetchedPolicy};
use crate::probe::report::{clean, fmt_date};
use crate::probe::tlsrpt::{TlsRptError, TlsRptRecord};
use crate::probe::{EndpointReport, describe};

// === JSON ===

/// The extra fields of `--json` for a domain.
pub fn json_fields(f: &DomainFacts, endpoints: &[EndpointReport]) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("domain".into(), json!(f.domain));
    m.insert("mx".into(), routing_json(&f.routing));
    m.insert(
        "mx_hosts".into(),
        f.hosts.iter().map(host_json).collect::<Vec<_>>().into(),
    );
    m.insert(
        "certificates".into(),
        certificates(endpoints)
            .iter()
            .map(Served::to_json)
            .collect::<Vec<_>>()
            .into(),
    );
    m.insert(
        "dane".into(),
        f.hosts
            .iter()
            .map(|h| dane_json(h, f))
            .collect::<Vec<_>>()
            .into(),
    );
    m.insert(
        "ptr".into(),
        f.ptr.iter().map(ptr_json).collect::<Vec<_>>().into(),
    );
    m.insert("mta_sts".into(), mta_sts_json(f.mta_sts.as_ref(), f));
    m.insert("tlsrpt".into(), tlsrpt_json(f.tlsrpt.as_ref()));
    m.insert("notes".into(), json!(f.notes));
    m
}

fn routing_json(r: &Routing) -> Value {
    let (answer, authenticated, error) = match r {
        Routing::Mx { authenticated, .. } => ("hosts", Some(*authenticated), None),
        Routing::Implicit => ("implicit", None, None),
        Routing::NullMx { authenticated } => ("null_mx", Some(*authenticated), None),
        Routing::NxDomain => ("nxdomain", None, None),
        Routing::Failed(e) => ("failed", None, Some(e.to_string())),
    };
    let null_mx_too = matches!(
        r,
        Routing::Mx {
            null_mx_too: true,
            ..
        }
    );
    json!({
        "answer": answer, "authenticated": authenticated,
        "null_mx_too": null_mx_too, "error": error,
    })
}

fn host_json(h: &MxHostFacts) -> Value {
    let error = match &h.addresses {
        Err(e) => Some(e.to_string()),
        Ok(a) => a.error().map(DnsError::to_string),
    };
    json!({
        "host": h.host,
        "preference": h.preference,
        "implicit": h.preference.is_none(),
        "addresses": h.ips().iter().map(ToString::to_string).collect::<Vec<_>>(),
        "error": error,
    })
}

fn dane_json(h: &MxHostFacts, f: &DomainFacts) -> Value {
    let owner = dane::tlsa_owner(&h.host, f.port);
    let (records, authenticated, error) = match &h.tlsa {
        Ok(a) => (
            a.records().iter().map(ToString::to_string).collect(),
            a.authenticated(),
            None,
        ),
        Err(e) => (Vec::new(), false, Some(e.to_string())),
    };
    let checks: Vec<Value> = f
        .dane
        .iter()
        .filter(|c| c.mx == h.host)
        .map(|c| {
            json!({
                "address": c.address.to_string(),
                "verdict": c.report.verdict.as_str(),
                "results": c.report.records.iter().map(|r| json!({
                    "record": r.record.to_string(), "result": result_text(&r.result),
                })).collect::<Vec<_>>(),
                "served_3_1_1": c.served.as_ref().map(ToString::to_string),
            })
        })
        .collect();
    json!({
        "mx": h.host, "owner": owner, "records": records,
        "authenticated": authenticated, "error": error, "endpoints": checks,
    })
}

fn result_text(r: &RecordResult) -> String {
    match r {
        RecordResult::Matched { certificate: 0 } => "matched the leaf".into(),
        RecordResult::Matched { certificate } => format!("matched certificate {certificate}"),
        RecordResult::NotMatched => "no match".into(),
        RecordResult::TrustAnchorOffPath { detail, .. } => format!("no match: {detail}"),
        RecordResult::Unusable(u) => format!("unusable: {u}"),
    }
}

fn ptr_json(p: &PtrFacts) -> Value {
    let (names, authenticated, error) = match &p.answer {
        Ok(a) => (
            a.records()
                .iter()
                .map(|n| json!({ "name": n.name, "forward": forward_json(&n.forward) }))
                .collect(),
            a.authenticated(),
            None,
        ),
        Err(e) => (Vec::new(), false, Some(e.to_string())),
    };
    json!({
        "address": p.ip.to_string(), "names": names,
        "authenticated": authenticated, "error": error,
    })
}

fn forward_json(f: &crate::probe::dns::Forward) -> &'static str {
    use crate::probe::dns::Forward;
    match f {
        Forward::Confirmed => "confirmed",
        Forward::NotConfirmed => "not_confirmed",
        Forward::Failed(_) => "failed",
        Forward::NotChecked => "not_checked",
    }
}

fn mta_sts_json(d: Option<&Discovery>, f: &DomainFacts) -> Value {
    let Some(d) = d else { return Value::Null };
    let (id, record_error) = match &d.record {
        Ok(r) => (r.as_ref().map(|r| r.id.clone()), None),
        Err(e) => (None, Some(e.to_string())),
    };
    let published = !matches!(d.record, Ok(None));
    let policy = match &d.policy {
        Some(Ok(p)) => policy_json(p),
        _ => Value::Null,
    };
    let policy_error = match &d.policy {
        Some(Err(e)) => Some(describe(e)),
        _ => None,
    };
    let hosts = f.host_names();
    json!({
        "published": published, "id": id, "record_error": record_error,
        "policy": policy, "policy_error": policy_error,
        "uncovered": d.uncovered(&hosts),
    })
}

fn policy_json(p: &FetchedPolicy) -> Value {
    json!({
        "mode": p.policy.mode.as_str(),
        "mx": p.policy.mx.iter().map(ToString::to_string).collect::<Vec<_>>(),
        "max_age": p.policy.max_age,
        "extensions": p.policy.extensions.iter().map(|(k, v)| json!([k, v])).collect::<Vec<_>>(),
        "fetched_from": p.address.to_string(),
    })
}

fn tlsrpt_json(r: Option<&Result<Option<TlsRptRecord>, TlsRptError>>) -> Value {
    match r {
        None => Value::Null,
        Some(Ok(rec)) => json!({
            "record": rec.as_ref().map(|r| json!({
                "rua": r.rua.iter().map(|u| u.as_str().to_string()).collect::<Vec<_>>(),
            })),
            "error": null,
        }),
        Some(Err(e)) => json!({ "record": null, "error": e.to_string() }),
    }
}

// === Which MX serve which certificate ===

/// One leaf and where it was served.
struct Served {
    sha256: String,
    subject: String,
    names: Vec<String>,
    not_after: i64,
    /// (MX, address, with SNI), in probe order, without repeats.
    at: Vec<(String, String, bool)>,
}

impl Served {
    fn to_json(&self) -> Value {
        json!({
            "sha256": self.sha256, "subject": self.subject, "names": self.names,
            "not_after": crate::tls::load::fmt_time(self.not_after),
            "served": self.at.iter().map(|(mx, address, sni)| json!({
                "mx": mx, "address": address, "sni": sni,
            })).collect::<Vec<_>>(),
        })
    }
}

/// Every leaf served, with and without SNI, by SHA-256.
fn certificates(endpoints: &[EndpointReport]) -> Vec<Served> {
    let mut by_sha: BTreeMap<String, Served> = BTreeMap::new();
    for r in endpoints {
        for h in &r.handshakes {
            let Some(leaf) = h.outcome.as_ref().ok().and_then(|s| s.chain.leaf()) else {
                continue;
            };
            let place = (
                r.endpoint.mx_str(),
                r.endpoint.address.to_string(),
                h.sni.is_some(),
            );
            let entry = by_sha.entry(leaf.sha256.clone()).or_insert_with(|| Served {
                sha256: leaf.sha256.clone(),
                subject: leaf.subject.clone(),
                names: leaf.names.clone(),
                not_after: leaf.not_after,
                at: Vec::new(),
            });
            if !entry.at.contains(&place) {
                entry.at.push(place);
            }
        }
    }
    by_sha.into_values().collect()
}

// === text ===

/// The domain's sections of the human report.
pub fn write_text(
    out: &mut impl Write,
    f: &DomainFacts,
    endpoints: &[EndpointReport],
) -> io::Result<()> {
    write_routing(out, f)?;
    write_certificates(out, endpoints)?;
    write_dane(out, f)?;
    write_ptr(out, &f.ptr)?;
    write_policies(out, f)?;
    if !f.notes.is_empty() {
        writeln!(out)?;
        writeln!(out, "notes:")?;
        for n in &f.notes {
            writeln!(out, "  - {}", clean(n))?;
        }
    }
    Ok(())
}

fn write_routing(out: &mut impl Write, f: &DomainFacts) -> io::Result<()> {
    writeln!(out)?;
    let ad = |a: bool| {
        if a {
            "DNSSEC-authenticated"
        } else {
            "no AD bit"
        }
    };
    match &f.routing {
        Routing::Mx { authenticated, .. } => {
            writeln!(out, "MX of {} ({}):", f.domain, ad(*authenticated))?
        }
        Routing::Implicit => writeln!(out, "MX of {}: none, the domain itself:", f.domain)?,
        Routing::NullMx { .. } => return writeln!(out, "MX of {}: null MX", f.domain),
        Routing::NxDomain => return writeln!(out, "MX of {}: NXDOMAIN", f.domain),
        Routing::Failed(e) => return writeln!(out, "MX of {}: lookup failed: {e}", f.domain),
    }
    for h in &f.hosts {
        let pref = h.preference.map_or("-".to_string(), |p| p.to_string());
        let ips: Vec<String> = h.ips().iter().map(ToString::to_string).collect();
        let addrs = match (&h.addresses, ips.is_empty()) {
            (Err(e), _) => format!("lookup failed: {e}"),
            (Ok(_), true) => "no address".into(),
            (Ok(_), false) => ips.join(", "),
        };
        writeln!(out, "  {pref:>5}  {}  {}", h.host, clean(&addrs))?;
    }
    Ok(())
}

fn write_certificates(out: &mut impl Write, endpoints: &[EndpointReport]) -> io::Result<()> {
    let served = certificates(endpoints);
    if served.is_empty() {
        return Ok(());
    }
    writeln!(out)?;
    writeln!(out, "certificates served:")?;
    for c in &served {
        writeln!(
            out,
            "  {}  sha256 {}  names {}  until {}",
            clean(&c.subject),
            c.sha256.get(..16).unwrap_or(&c.sha256),
            clean(&c.names.join(", ")),
            fmt_date(c.not_after)
        )?;
        for (mx, places) in places_by_mx(&c.at) {
            writeln!(out, "    {mx}: {}", places.join(", "))?;
        }
    }
    Ok(())
}

/// Where one leaf was served, per MX: each address once, marked when it
/// served the leaf only with or only without SNI.
fn places_by_mx(at: &[(String, String, bool)]) -> BTreeMap<&str, Vec<String>> {
    // MX → [(address, with SNI, without SNI)].
    let mut seen: BTreeMap<&str, Vec<(&str, bool, bool)>> = BTreeMap::new();
    for (mx, address, sni) in at {
        let list = seen.entry(mx.as_str()).or_default();
        let i = match list.iter().position(|(a, _, _)| a == address) {
            Some(i) => i,
            None => {
                list.push((address.as_str(), false, false));
                list.len() - 1
            }
        };
        if let Some(entry) = list.get_mut(i) {
            if *sni {
                entry.1 = true;
            } else {
                entry.2 = true;
            }
        }
    }
    seen.into_iter()
        .map(|(mx, list)| {
            let places = list
                .iter()
                .map(|(a, sni, no_sni)| match (sni, no_sni) {
                    (true, false) => format!("{a} (with SNI only)"),
                    (false, true) => format!("{a} (without SNI only)"),
                    _ => a.to_string(),
                })
                .collect();
            (mx, places)
        })
        .collect()
}

fn write_dane(out: &mut impl Write, f: &DomainFacts) -> io::Result<()> {
    if f.hosts.is_empty() {
        return Ok(());
    }
    writeln!(out)?;
    writeln!(out, "DANE (TLSA):")?;
    for h in &f.hosts {
        let owner = dane::tlsa_owner(&h.host, f.port);
        match &h.tlsa {
            Err(e) => writeln!(out, "  {owner}: lookup failed: {e}")?,
            Ok(Answer::Records {
                records,
                authenticated,
            }) => {
                let list: Vec<String> = records.iter().map(ToString::to_string).collect();
                let ad = if *authenticated { "AD" } else { "no AD bit" };
                writeln!(out, "  {owner} ({ad}): {}", list.join("; "))?;
                for c in f.dane.iter().filter(|c| c.mx == h.host) {
                    writeln!(out, "    {}: {}", c.address, dane_line(c))?;
                }
            }
            Ok(_) => writeln!(out, "  {owner}: no records")?,
        }
    }
    Ok(())
}

fn dane_line(c: &DaneCheck) -> String {
    match (&c.report.verdict, &c.served) {
        (Verdict::NoMatch, Some(r)) => format!("no_match (the served key is {r})"),
        (v, _) => v.as_str().to_string(),
    }
}

fn write_ptr(out: &mut impl Write, ptrs: &[PtrFacts]) -> io::Result<()> {
    if ptrs.is_empty() {
        return Ok(());
    }
    writeln!(out)?;
    writeln!(out, "PTR:")?;
    let width = ptrs
        .iter()
        .map(|p| p.ip.to_string().len())
        .max()
        .unwrap_or(0);
    for p in ptrs {
        let text = match &p.answer {
            Err(e) => format!("lookup failed: {e}"),
            Ok(Answer::Records { records, .. }) => records
                .iter()
                .map(|n| format!("{} ({})", n.name, forward_text(&n.forward)))
                .collect::<Vec<_>>()
                .join(", "),
            Ok(_) => "no PTR record".into(),
        };
        writeln!(out, "  {:<width$}  {}", p.ip.to_string(), clean(&text))?;
    }
    Ok(())
}

fn write_policies(out: &mut impl Write, f: &DomainFacts) -> io::Result<()> {
    let Some(d) = &f.mta_sts else {
        return Ok(());
    };
    writeln!(out)?;
    let record = match &d.record {
        Ok(None) => "no record".to_string(),
        Ok(Some(r)) => format!("id {}", r.id),
        Err(e) => format!("record unusable: {e}"),
    };
    let policy = match &d.policy {
        None => String::new(),
        Some(Ok(p)) => format!(
            "; policy from {}: mode {}, max_age {}, mx {}",
            p.address,
            p.policy.mode.as_str(),
            p.policy.max_age,
            p.policy
                .mx
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        ),
        Some(Err(e)) => format!("; policy: {}", describe(e)),
    };
    writeln!(out, "MTA-STS: {}", clean(&format!("{record}{policy}")))?;
    let tlsrpt = match &f.tlsrpt {
        None | Some(Ok(None)) => "no record".to_string(),
        Some(Ok(Some(r))) => format!(
            "rua {}",
            r.rua
                .iter()
                .map(|u| u.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ),
        Some(Err(e)) => e.to_string(),
    };
    writeln!(out, "TLS-RPT: {}", clean(&tlsrpt))
}
