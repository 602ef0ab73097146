//! `starttls-proxy check`: the config and every certificate, checked by the
//! same code `run` uses (`nginx -t`, `postfix check`), reported for a human
//! or, with `--json`, for a script. Exit 0 when `run` would start (warnings
//! allowed), 1 on errors.
//!
//! It answers what a Postfix admin otherwise learns from deferrals: is the
//! chain complete (fullchain, not cert.pem) and current, does the default
//! certificate cover the MX name, which certificate a sender gets with and
//! without SNI.

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

use rustls::SignatureScheme;
use serde_json::{Value, json};

use crate::config::{Config, ConfigErrors};
use crate::tls::CertStore;
use crate::tls::load::{fmt_time, now_unix};
use crate::tls::store::covers;

/// Signature schemes of a typical ECDSA-capable and an RSA-only client.
const ECDSA_CLIENT: &[SignatureScheme] = &[
    SignatureScheme::ECDSA_NISTP256_SHA256,
    SignatureScheme::RSA_PSS_SHA256,
];
const RSA_CLIENT: &[SignatureScheme] = &[
    SignatureScheme::RSA_PSS_SHA256,
    SignatureScheme::RSA_PKCS1_SHA256,
];

pub fn main(path: &Path, json: bool) -> ExitCode {
    let report = build(path);
    // Output errors (a closed pipe) are not worth a panic.
    let mut out = std::io::stdout().lock();
    let failed = report["errors"].as_array().is_some_and(|e| !e.is_empty());
    if json {
        let _ = writeln!(
            out,
            "{}",
            serde_json::to_string_pretty(&report).unwrap_or_default()
        );
    } else if failed {
        print_text(&mut std::io::stderr().lock(), &report);
    } else {
        print_text(&mut out, &report);
    }
    if failed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}

fn errors_json(path: &Path, errors: &ConfigErrors) -> Value {
    json!({
        "config": path.display().to_string(),
        "errors": errors.0.iter().map(|e| e.to_string()).collect::<Vec<_>>(),
        "warnings": [],
        "certificates": [],
    })
}

/// The whole report as JSON; the text output is printed from it.
fn build(path: &Path) -> Value {
    let config = match Config::load(path) {
        Ok(c) => c,
        Err(e) => return errors_json(path, &e),
    };
    let store = match CertStore::load_anchors(&config).and_then(|a| CertStore::load(&config, &a)) {
        Ok(s) => s,
        Err(e) => return errors_json(path, &e),
    };
    let now = now_unix();
    let mut warnings: Vec<String> = Vec::new();
    let certificates: Vec<Value> = store
        .certificates()
        .iter()
        .map(|c| {
            for w in &c.warnings {
                warnings.push(format!("certificate {:?}: {w}", c.name));
            }
            json!({
                "name": c.name,
                "algorithm": c.algorithm.as_str(),
                "names": c.names,
                "chain": c.chain,
                "issuer": c.issuer,
                "serial": c.serial,
                "not_after": fmt_time(c.not_after),
                "days_left": (c.not_after - now) / 86_400,
                "chain_check": c.chain_check.as_str(),
                "root_dropped": c.root_dropped,
                "warnings": c.warnings,
            })
        })
        .collect();

    let served = |sni: Option<&str>| {
        json!({
            "ecdsa_clients": store.select(sni, ECDSA_CLIENT).cert.name,
            "rsa_clients": store.select(sni, RSA_CLIENT).cert.name,
        })
    };
    let mut names: Vec<&String> = store
        .certificates()
        .iter()
        .flat_map(|c| c.names.iter())
        .collect();
    names.sort();
    names.dedup();
    let sni: Vec<Value> = names
        .iter()
        .map(|n| {
            // For a wildcard, what a name under it gets.
            let probe = n
                .strip_prefix("*.")
                .map_or_else(|| n.to_string(), |p| format!("any-label.{p}"));
            json!({ "name": probe, "certificate": served(Some(&probe)) })
        })
        .collect();

    let default = store.select(None, RSA_CLIENT);
    if !covers(&default.cert.names, &config.hostname) {
        warnings.push(format!(
            "the default certificate {:?} does not cover hostname {} (senders without SNI that check the name will fail)",
            default.cert.name, config.hostname
        ));
    }
    json!({
        "config": path.display().to_string(),
        "hostname": config.hostname,
        "errors": [],
        "warnings": warnings,
        "certificates": certificates,
        "sni": sni,
        "no_sni": served(None),
    })
}

fn print_text(out: &mut impl Write, r: &Value) {
    let s = |v: &Value| v.as_str().unwrap_or_default().to_string();
    let errors = r["errors"].as_array().cloned().unwrap_or_default();
    if !errors.is_empty() {
        for e in &errors {
            let _ = writeln!(out, "error: {}", s(e));
        }
        let _ = writeln!(out, "{}: {} error(s)", s(&r["config"]), errors.len());
        return;
    }
    let _ = writeln!(out, "config {}: ok", s(&r["config"]));
    let _ = writeln!(out, "hostname {}", s(&r["hostname"]));
    for c in r["certificates"].as_array().into_iter().flatten() {
        let list = |v: &Value| {
            v.as_array()
                .into_iter()
                .flatten()
                .map(s)
                .collect::<Vec<_>>()
        };
        let chain = list(&c["chain"]);
        let _ = writeln!(
            out,
            "certificate {:?}: {}, chain check {}",
            s(&c["name"]),
            s(&c["algorithm"]),
            s(&c["chain_check"])
        );
        let _ = writeln!(out, "  names      {}", list(&c["names"]).join(", "));
        let _ = writeln!(
            out,
            "  chain      {} ({} served{})",
            chain.join(" <- "),
            chain.len(),
            if c["root_dropped"] == true {
                "; the root in the file is not served"
            } else {
                ""
            }
        );
        let _ = writeln!(out, "  issuer     {}", s(&c["issuer"]));
        let _ = writeln!(out, "  serial     {}", s(&c["serial"]));
        let _ = writeln!(
            out,
            "  not after  {} ({} days left)",
            s(&c["not_after"]),
            c["days_left"]
        );
    }
    let served = |v: &Value| {
        let (e, r) = (s(&v["ecdsa_clients"]), s(&v["rsa_clients"]));
        if e == r {
            format!("{e:?}")
        } else {
            format!("{e:?} (ECDSA clients), {r:?} (RSA-only clients)")
        }
    };
    for n in r["sni"].as_array().into_iter().flatten() {
        let _ = writeln!(
            out,
            "SNI {}: certificate {}",
            s(&n["name"]),
            served(&n["certificate"])
        );
    }
    let _ = writeln!(out, "without SNI: certificate {}", served(&r["no_sni"]));
    let warnings = r["warnings"].as_array().cloned().unwrap_or_default();
    for w in &warnings {
        let _ = writeln!(out, "warning: {}", s(w));
    }
    let _ = writeln!(out, "{} warning(s), 0 errors", warnings.len());
}
