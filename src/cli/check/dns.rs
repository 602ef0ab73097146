//! `check --dns`: which names and certificates to look at (from the config
//! and the certificate store `check` built), the run of
//! `probe::own::check`, and its part of the report: a `dns` object in the
//! JSON, findings among the errors and warnings, a section of text.

use std::io::{self, Write};
use std::sync::Arc;

use serde_json::{Value, json};

use super::{ECDSA_CLIENT, RSA_CLIENT, push};
use crate::cli::CheckArgs;
use crate::config::{ChainCheck, Config, ListenerMode};
use crate::probe::dns::Answer;
use crate::probe::own::{self, NameFacts, OwnCertificate, OwnName, OwnReport};
use crate::probe::{Finding, Settings, Severity, Timeouts, describe};
use crate::tls::CertStore;
use crate::tls::load::now_unix;
use crate::tls::validate::TrustAnchors;

/// Runs the DNS checks and adds them to `r`; `None` when they could not
/// run (the reason is among the errors).
pub fn check(
    config: &Config,
    store: &CertStore,
    args: &CheckArgs,
    r: &mut Value,
) -> Option<OwnReport> {
    let certificates = own_certificates(config, store);
    match run(config, store, &certificates, args) {
        Ok(own) => {
            record(r, &own);
            Some(own)
        }
        Err(message) => {
            push(r, "errors", json!(format!("--dns: {message}")));
            None
        }
    }
}

fn run(
    config: &Config,
    store: &CertStore,
    certificates: &[OwnCertificate],
    args: &CheckArgs,
) -> Result<OwnReport, String> {
    let names = own_names(config, store, certificates);
    let anchors = TrustAnchors::load(args.ca.as_deref()).map_err(|e| describe(&e))?;
    let settings = Arc::new(Settings {
        timeouts: args
            .timeout
            .map_or_else(Timeouts::default, Timeouts::uniform),
        anchors,
        now: now_unix(),
    });
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the async runtime: {e}"))?;
    let port = port(config, args);
    runtime
        .block_on(own::check(
            &names,
            certificates,
            port,
            args.nameserver,
            settings,
        ))
        .map_err(|e| e.to_string())
}

/// `--smtp-port`, else the first STARTTLS listener's port, else 25.
fn port(config: &Config, args: &CheckArgs) -> u16 {
    args.smtp_port
        .or_else(|| {
            config
                .listeners
                .iter()
                .find(|l| l.mode == ListenerMode::Starttls && l.address.port() != 0)
                .map(|l| l.address.port())
        })
        .unwrap_or(25)
}

/// Every loaded certificate with the files it came from.
fn own_certificates(config: &Config, store: &CertStore) -> Vec<OwnCertificate> {
    store
        .certificates()
        .iter()
        .filter_map(|loaded| {
            let c = config.certificates.iter().find(|c| c.name == loaded.name)?;
            Some(OwnCertificate {
                name: loaded.name.clone(),
                chain: loaded.key.cert.clone(),
                chain_path: c.chain.clone(),
                key_path: c.key.clone(),
                dane_only: c.chain_check == ChainCheck::DaneEe,
            })
        })
        .collect()
}

/// The hostname, then every certificate name (wildcards cannot be looked
/// up), each with the certificates ECDSA and RSA-only senders asking for
/// it get.
fn own_names(config: &Config, store: &CertStore, certs: &[OwnCertificate]) -> Vec<OwnName> {
    let mut names = vec![config.hostname.trim_end_matches('.').to_ascii_lowercase()];
    for c in store.certificates() {
        for n in &c.names {
            if !n.starts_with("*.") && !names.contains(n) {
                names.push(n.clone());
            }
        }
    }
    names
        .into_iter()
        .map(|name| {
            let mut served = Vec::new();
            for schemes in [ECDSA_CLIENT, RSA_CLIENT] {
                let chosen = store.select(Some(&name), schemes);
                if let Some(i) = certs.iter().position(|c| c.name == chosen.cert.name)
                    && !served.contains(&i)
                {
                    served.push(i);
                }
            }
            OwnName {
                name,
                certificates: served,
            }
        })
        .collect()
}

/// The `dns` object, and each finding as an error, a warning or a note.
fn record(r: &mut Value, own: &OwnReport) {
    let probe = own.probe.to_json();
    r["dns"] = json!({
        "port": own.port,
        "names": own.names.iter().map(name_json).collect::<Vec<_>>(),
        "tlsa": own.tlsa.iter().map(|c| json!({
            "name": c.name,
            "certificate": c.certificate_name,
            "verdict": c.report.verdict.as_str(),
            "publish": c.publish.as_ref().map(|p| p.zone_line(&c.name, own.port)),
        })).collect::<Vec<_>>(),
        "endpoints": probe["endpoints"],
        "addresses": probe["addresses"],
        "findings": probe["findings"],
    });
    for f in &own.probe.findings {
        let key = match f.severity {
            Severity::Error => "errors",
            Severity::Warning => "warnings",
            Severity::Info => "notes",
        };
        if r.get(key).is_none() {
            r[key] = json!([]);
        }
        push(r, key, json!(finding_line(f)));
    }
}

fn name_json(n: &NameFacts) -> Value {
    let (addresses, error) = match &n.addresses {
        Ok(a) => (
            a.all().iter().map(ToString::to_string).collect::<Vec<_>>(),
            a.error().map(ToString::to_string),
        ),
        Err(e) => (Vec::new(), Some(e.to_string())),
    };
    let (tlsa, authenticated, tlsa_error) = match &n.tlsa {
        Ok(a) => (
            a.records().iter().map(ToString::to_string).collect(),
            a.authenticated(),
            None,
        ),
        Err(e) => (Vec::new(), false, Some(e.to_string())),
    };
    json!({
        "name": n.name, "addresses": addresses, "error": error,
        "tlsa": tlsa, "tlsa_authenticated": authenticated, "tlsa_error": tlsa_error,
    })
}

/// `dane_mismatch mx1.example.test: … (fix: …)`.
fn finding_line(f: &Finding) -> String {
    let place: Vec<&str> = [f.mx.as_deref(), f.address.as_deref()]
        .into_iter()
        .flatten()
        .collect();
    format!(
        "{} {}: {} (fix: {})",
        f.code.as_str(),
        place.join(" "),
        f.message,
        f.fix
    )
}

/// The DNS section of the text report: each name, each TLSA comparison,
/// the endpoint table.
pub fn print_text(out: &mut impl Write, own: &OwnReport) -> io::Result<()> {
    writeln!(out)?;
    writeln!(
        out,
        "DNS (port {}, TLSA at _{}._tcp.NAME):",
        own.port, own.port
    )?;
    for n in &own.names {
        let addresses = match &n.addresses {
            Err(e) => format!("lookup failed: {e}"),
            Ok(a) if a.all().is_empty() => "no A/AAAA record, not probed".into(),
            Ok(a) => a
                .all()
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", "),
        };
        let tlsa = match &n.tlsa {
            Err(e) => format!("TLSA lookup failed: {e}"),
            Ok(Answer::Records { records, .. }) => format!(
                "TLSA {}",
                records
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join("; ")
            ),
            Ok(_) => "no TLSA".into(),
        };
        writeln!(out, "  {}: {addresses}; {tlsa}", n.name)?;
    }
    for c in &own.tlsa {
        writeln!(
            out,
            "  TLSA at {} against certificate {:?} on disk: {}",
            c.name,
            c.certificate_name,
            c.report.verdict.as_str()
        )?;
    }
    own.probe.write_endpoints(out, false)?;
    writeln!(out)
}
