//! The probe's report, rendered twice: `--json` (the DESIGN.md §7 shape,
//! plus extra fields) and a table for people (colour only on a terminal),
//! findings with their fixes last.

use std::io::{self, Write};

use serde_json::{Value, json};

use super::domain::{self, DomainFacts};
use super::endpoint::{EndpointReport, Handshake};
use super::findings::{self, Finding, Severity};
use super::legacy::LegacyReply;
use super::{describe, smtp::printable};

/// Everything a probe run found.
#[derive(Debug)]
pub struct Report {
    /// What was probed, as given (`mx1.example.com:25`, a domain…).
    pub target: String,
    pub endpoints: Vec<EndpointReport>,
    /// Ranked (call [`findings::rank`] again after appending).
    pub findings: Vec<Finding>,
    /// With `--domain`: the MX hosts, DANE, PTR, MTA-STS and TLS-RPT.
    pub domain: Option<DomainFacts>,
}

impl Report {
    pub fn new(target: String, endpoints: Vec<EndpointReport>, mut found: Vec<Finding>) -> Self {
        findings::rank(&mut found);
        Report {
            target,
            endpoints,
            findings: found,
            domain: None,
        }
    }

    /// The report of `probe --domain`.
    pub fn with_domain(mut self, facts: DomainFacts) -> Self {
        self.domain = Some(facts);
        self
    }

    /// 0 nothing found, 1 warnings only, 2 any error.
    pub fn exit_code(&self) -> u8 {
        findings::exit_code(&self.findings)
    }

    /// Ready for an MTA-STS `enforce` policy: nothing in the findings
    /// that an enforcing sender would defer on.
    pub fn mta_sts_ready(&self) -> bool {
        findings::mta_sts_blockers(&self.findings).is_empty()
    }

    pub fn to_json(&self) -> Value {
        let rows: Vec<Value> = self.endpoints.iter().flat_map(endpoint_rows).collect();
        let addresses: Vec<Value> = self.endpoints.iter().map(address_json).collect();
        let blockers: Vec<Value> = findings::mta_sts_blockers(&self.findings)
            .iter()
            .map(|f| json!({ "code": f.code.as_str(), "mx": f.mx, "address": f.address }))
            .collect();
        let mut v = json!({
            "target": self.target,
            "endpoints": rows,
            "addresses": addresses,
            "findings": self.findings.iter().map(finding_json).collect::<Vec<_>>(),
            "mta_sts_ready": self.mta_sts_ready(),
            "mta_sts_blockers": blockers,
            "exit_code": self.exit_code(),
        });
        if let (Some(d), Some(fields)) = (&self.domain, v.as_object_mut()) {
            fields.extend(domain::render::json_fields(d, &self.endpoints));
        }
        v
    }

    /// The human report: a table of handshakes, a line per address on
    /// legacy TLS, the domain's sections (with `--domain`), then the
    /// findings with fixes and the MTA-STS verdict.
    pub fn write_text(&self, out: &mut impl Write, colour: bool) -> io::Result<()> {
        match &self.domain {
            Some(_) => writeln!(out, "probe --domain {}", self.target)?,
            None => writeln!(out, "probe {}", self.target)?,
        }
        self.write_endpoints(out, colour)?;
        if let Some(d) = &self.domain {
            domain::render::write_text(out, d, &self.endpoints)?;
        }
        writeln!(out)?;
        self.write_findings(out, colour)?;
        self.write_verdict(out, colour)
    }

    /// The table of handshakes and a line per address on legacy TLS (or
    /// why nothing was tried there).
    pub fn write_endpoints(&self, out: &mut impl Write, colour: bool) -> io::Result<()> {
        let paint = Paint(colour);
        let header = [
            "MX", "ADDRESS", "SNI", "ASKED", "STARTTLS", "GOT", "CIPHER", "CHAIN", "VERIFIED",
            "NAME", "DAYS",
        ];
        let mut rows: Vec<Vec<Cell>> = Vec::new();
        for r in &self.endpoints {
            rows.extend(text_rows(r));
        }
        if !rows.is_empty() {
            writeln!(out)?;
            table(out, &header, &rows, paint)?;
        }
        let notes: Vec<String> = self.endpoints.iter().filter_map(address_note).collect();
        if !notes.is_empty() {
            writeln!(out)?;
            for n in notes {
                writeln!(out, "{n}")?;
            }
        }
        Ok(())
    }

    /// Every finding with its fix, ranked.
    pub fn write_findings(&self, out: &mut impl Write, colour: bool) -> io::Result<()> {
        let paint = Paint(colour);
        if self.findings.is_empty() {
            return writeln!(out, "{}", paint.green("no findings"));
        }
        writeln!(out, "findings ({}):", self.findings.len())?;
        for f in &self.findings {
            let sev = format!("{:<7}", f.severity.as_str());
            let sev = match f.severity {
                Severity::Error => paint.red(&sev),
                Severity::Warning => paint.yellow(&sev),
                Severity::Info => sev,
            };
            writeln!(out, "  {sev} {}  {}", f.code.as_str(), clean(&f.message))?;
            writeln!(out, "          fix: {}", clean(&f.fix))?;
        }
        Ok(())
    }

    /// `MTA-STS enforce: ready`, or what blocks it.
    fn write_verdict(&self, out: &mut impl Write, colour: bool) -> io::Result<()> {
        let paint = Paint(colour);
        let blockers: Vec<String> = findings::mta_sts_blockers(&self.findings)
            .iter()
            .map(|f| {
                let place: Vec<&str> = [f.mx.as_deref(), f.address.as_deref()]
                    .into_iter()
                    .flatten()
                    .collect();
                match place.as_slice() {
                    [] => f.code.as_str().to_string(),
                    p => format!("{} ({})", f.code.as_str(), p.join(" ")),
                }
            })
            .collect();
        if blockers.is_empty() {
            writeln!(out, "MTA-STS enforce: {}", paint.green("ready"))
        } else {
            writeln!(
                out,
                "MTA-STS enforce: {} {}",
                paint.red("blocked by"),
                clean(&blockers.join(", "))
            )
        }
    }
}

/// Messages quote certificate names, which are the server's text: no
/// control characters reach the terminal (length is kept, unlike
/// [`printable`], which is for raw server replies).
pub(crate) fn clean(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

/// "2026-05-01" from seconds since the epoch.
pub fn fmt_date(t: i64) -> String {
    let s = crate::tls::load::fmt_time(t);
    s.get(..10).map_or(s.clone(), str::to_string)
}

fn finding_json(f: &Finding) -> Value {
    json!({
        "code": f.code.as_str(),
        "severity": f.severity.as_str(),
        "mx": f.mx,
        "address": f.address,
        "message": f.message,
        "fix": f.fix,
    })
}

/// One row per handshake variant; an endpoint where none was tried (no
/// connection, no STARTTLS) still has its rows, with the reason.
fn endpoint_rows(r: &EndpointReport) -> Vec<Value> {
    let mx = r.endpoint.mx_str();
    let address = r.endpoint.address.to_string();
    let starttls = r.dialogue.as_ref().ok().map(|d| d.starttls);
    let not_tried = match &r.dialogue {
        Err(e) => Some(describe(e)),
        Ok(d) if !d.starttls => Some("STARTTLS not offered".to_string()),
        Ok(_) => None,
    };
    if let Some(why) = not_tried {
        return EndpointReport::variants(&r.endpoint)
            .into_iter()
            .map(|(sni, requested)| {
                json!({
                    "mx": mx, "address": address, "sni": sni,
                    "requested": requested.as_str(), "version": null,
                    "starttls": starttls, "chain_length": null, "verified": null,
                    "name_covered": null, "not_after": null, "sha256": null,
                    "error": why,
                })
            })
            .collect();
    }
    r.handshakes
        .iter()
        .map(|h| handshake_row(&mx, &address, starttls, h))
        .collect()
}

fn handshake_row(mx: &str, address: &str, starttls: Option<bool>, h: &Handshake) -> Value {
    let mut row = json!({
        "mx": mx, "address": address, "sni": h.sni,
        "requested": h.requested.as_str(), "starttls": starttls,
    });
    let fields = match &h.outcome {
        Err(e) => json!({
            "version": null, "chain_length": null, "verified": null, "name_covered": null,
            "not_after": null, "sha256": null, "error": describe(e),
        }),
        Ok(s) => {
            let c = &s.chain;
            let leaf = c.leaf();
            json!({
                "version": s.facts.version.as_str(),
                "cipher": s.facts.cipher,
                "kx_group": s.facts.kx_group,
                "signature_scheme": s.facts.signature_scheme,
                "chain_length": s.facts.chain.len(),
                "chain": c.certs.iter().map(|x| json!({
                    "subject": x.subject, "issuer": x.issuer, "key": x.key,
                    "not_after": crate::tls::load::fmt_time(x.not_after), "sha256": x.sha256,
                })).collect::<Vec<_>>(),
                "verified": c.verified(),
                "trust": trust_text(c),
                "name_covered": c.name_covered,
                "names": leaf.map(|l| l.names.clone()),
                "key": leaf.map(|l| l.key.clone()),
                "not_after": leaf.map(|l| crate::tls::load::fmt_time(l.not_after)),
                "days_left": leaf.map(|_| c.days_left),
                "sha256": leaf.map(|l| l.sha256.clone()),
                "error": null,
            })
        }
    };
    if let (Some(row), Value::Object(extra)) = (row.as_object_mut(), fields) {
        row.extend(extra);
    }
    row
}

fn trust_text(c: &super::chain::ChainReport) -> String {
    use super::chain::Trust;
    match &c.trust {
        Trust::Verified => "verified".into(),
        Trust::Incomplete { missing_issuer } => format!("incomplete: {missing_issuer} missing"),
        Trust::Untrusted { detail } => format!("untrusted: {detail}"),
        Trust::IntermediateNotValid { detail } => format!("intermediate not valid: {detail}"),
        Trust::NotJudged { detail } => format!("not judged: {detail}"),
    }
}

/// Per address: who answered, and legacy TLS.
fn address_json(r: &EndpointReport) -> Value {
    let (greeting, ehlo, starttls, error) = match &r.dialogue {
        Ok(d) => (
            d.greeting.server_name().map(str::to_string),
            d.ehlo.server_name().map(str::to_string),
            Some(d.starttls),
            None,
        ),
        Err(e) => (None, None, None, Some(describe(e))),
    };
    let legacy = r.legacy.as_ref().map(|l| match l {
        Ok(LegacyReply::Accepted(v)) => json!({ "accepted": true, "version": v.as_str() }),
        Ok(LegacyReply::Refused(why)) => json!({ "accepted": false, "reply": why.to_string() }),
        Err(e) => json!({ "accepted": null, "error": describe(e) }),
    });
    json!({
        "mx": r.endpoint.mx_str(),
        "address": r.endpoint.address.to_string(),
        "greeting_name": greeting,
        "ehlo_name": ehlo,
        "starttls": starttls,
        "legacy_tls": legacy,
        "error": error,
    })
}

fn address_note(r: &EndpointReport) -> Option<String> {
    // Several names may share an address (MX hosts of one domain).
    let addr = match r.endpoint.dns_name() {
        Some(name) => format!("{name} {}", r.endpoint.address),
        None => r.endpoint.address.to_string(),
    };
    match (&r.dialogue, &r.legacy) {
        (Err(e), _) => Some(format!("{addr}: {}", clean(&describe(e)))),
        (Ok(d), _) if !d.starttls => Some(format!(
            "{addr}: {} — STARTTLS not offered",
            d.ehlo.summary()
        )),
        (_, Some(Ok(LegacyReply::Accepted(v)))) => {
            Some(format!("{addr}: TLS 1.0/1.1: accepted ({})", v.as_str()))
        }
        (_, Some(Ok(LegacyReply::Refused(why)))) => {
            Some(format!("{addr}: TLS 1.0/1.1: refused ({why})"))
        }
        (_, Some(Err(e))) => Some(format!(
            "{addr}: TLS 1.0/1.1: not tested: {}",
            clean(&describe(e))
        )),
        _ => None,
    }
}

/// A table cell and whether it is good, bad or neutral (for colour).
#[derive(Debug, Clone)]
struct Cell(String, Tone);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tone {
    Plain,
    Good,
    Bad,
}

fn yes_no(v: Option<bool>) -> Cell {
    match v {
        Some(true) => Cell("yes".into(), Tone::Good),
        Some(false) => Cell("no".into(), Tone::Bad),
        None => Cell("-".into(), Tone::Plain),
    }
}

fn plain(s: impl Into<String>) -> Cell {
    Cell(s.into(), Tone::Plain)
}

fn text_rows(r: &EndpointReport) -> Vec<Vec<Cell>> {
    let mx = r.endpoint.mx_str();
    let addr = r.endpoint.address.to_string();
    let starttls = yes_no(r.dialogue.as_ref().ok().map(|d| d.starttls));
    if r.handshakes.is_empty() {
        let why = match &r.dialogue {
            Err(e) if e.is_unreachable() => "unreachable",
            Err(_) => "no SMTP session",
            Ok(_) => "no STARTTLS",
        };
        let mut row = vec![plain(mx), plain(addr), plain("-"), plain("-"), starttls];
        row.push(Cell(why.into(), Tone::Bad));
        row.extend((0..5).map(|_| plain("-")));
        return vec![row];
    }
    r.handshakes
        .iter()
        .map(|h| {
            let mut row = vec![
                plain(mx.clone()),
                plain(addr.clone()),
                plain(h.sni.as_deref().unwrap_or("-")),
                plain(h.requested.as_str().trim_start_matches("TLSv")),
                starttls.clone(),
            ];
            match &h.outcome {
                Err(_) => {
                    row.push(Cell("failed".into(), Tone::Bad));
                    row.extend((0..5).map(|_| plain("-")));
                }
                Ok(s) => {
                    let c = &s.chain;
                    row.push(plain(s.facts.version.as_str()));
                    row.push(plain(s.facts.cipher.clone()));
                    row.push(plain(s.facts.chain.len().to_string()));
                    row.push(yes_no(Some(c.verified())));
                    row.push(yes_no(c.name_covered));
                    row.push(Cell(
                        c.days_left.to_string(),
                        if c.days_left < 21 {
                            Tone::Bad
                        } else {
                            Tone::Plain
                        },
                    ));
                }
            }
            row
        })
        .collect()
}

fn table(
    out: &mut impl Write,
    header: &[&str],
    rows: &[Vec<Cell>],
    paint: Paint,
) -> io::Result<()> {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, c) in widths.iter_mut().zip(row) {
            *w = (*w).max(c.0.chars().count());
        }
    }
    let head: Vec<String> = header
        .iter()
        .zip(&widths)
        .map(|(h, w)| format!("{h:<w$}"))
        .collect();
    writeln!(out, "{}", head.join("  ").trim_end())?;
    for row in rows {
        let cells: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(c, w)| {
                let padded = format!("{:<w$}", printable(&c.0));
                match c.1 {
                    Tone::Plain => padded,
                    Tone::Good => paint.green(&padded),
                    Tone::Bad => paint.red(&padded),
                }
            })
            .collect();
        writeln!(out, "{}", cells.join("  ").trim_end())?;
    }
    Ok(())
}

/// ANSI colour, or nothing (not a terminal).
#[derive(Debug, Clone, Copy)]
struct Paint(bool);

impl Paint {
    fn wrap(&self, code: &str, s: &str) -> String {
        if self.0 {
            format!("\x1b[{code}m{s}\x1b[0m")
        } else {
            s.to_string()
        }
    }
    fn red(&self, s: &str) -> String {
        self.wrap("31", s)
    }
    fn yellow(&self, s: &str) -> String {
        self.wrap("33", s)
    }
    fn green(&self, s: &str) -> String {
        self.wrap("32", s)
    }
}
