//! `starttls-proxy check`: the config and every certificate, checked by the
//! same code `run` uses (`nginx -t`, `postfix check`), reported for a human
//! or, with `--json`, for a script. Exit 0 when `run` would start (warnings
//! allowed), 1 on errors.
//!
//! It answers what a Postfix admin otherwise learns from deferrals: is the
//! chain complete (fullchain, not cert.pem) and current, does the default
//! certificate cover the MX name, which certificate a sender gets with and
//! without SNI. It lists the TLS policy rules and what each matches.
//!
//! `check --dns` (`check/dns.rs`) adds what only DNS can tell: do the
//! proxy's names resolve to something that serves a good chain, and do
//! the published TLSA records match the keys on disk.

mod dns;

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use rustls::SignatureScheme;
use serde_json::{Value, json};

use super::CheckArgs;
use crate::config::{Config, PolicyMode, Require, TlsRule};
use crate::policy::{self, Stage, TlsState};
use crate::probe::own::OwnReport;
use crate::tls::CertStore;
use crate::tls::load::{LoadContext, fmt_time, load_certificate, now_unix};
use crate::tls::store::covers;

/// Signature schemes of a typical ECDSA-capable and an RSA-only client.
pub(crate) const ECDSA_CLIENT: &[SignatureScheme] = &[
    SignatureScheme::ECDSA_NISTP256_SHA256,
    SignatureScheme::RSA_PSS_SHA256,
];
pub(crate) const RSA_CLIENT: &[SignatureScheme] = &[
    SignatureScheme::RSA_PSS_SHA256,
    SignatureScheme::RSA_PKCS1_SHA256,
];

pub fn main(path: &Path, args: &CheckArgs) -> ExitCode {
    let (mut report, loaded) = build(path);
    // Only with --dns, and only once the config and certificates load.
    let own = match (args.dns, loaded) {
        (true, Some((config, store))) => dns::check(&config, &store, args, &mut report),
        _ => None,
    };
    // Output errors (a closed pipe) are not worth a panic.
    let mut out = std::io::stdout().lock();
    let failed = report["errors"].as_array().is_some_and(|e| !e.is_empty());
    if args.json {
        let _ = writeln!(
            out,
            "{}",
            serde_json::to_string_pretty(&report).unwrap_or_default()
        );
    } else if let Some(own) = &own {
        print_text(&mut out, &report, Some(own));
    } else if failed {
        print_text(&mut std::io::stderr().lock(), &report, None);
    } else {
        print_text(&mut out, &report, None);
    }
    if failed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}

/// The report's shape, whatever failed: scripts can rely on every key.
fn report(path: &Path) -> Value {
    json!({
        "config": path.display().to_string(),
        "hostname": null,
        "trust_anchors": null,
        "errors": [],
        "warnings": [],
        "certificates": [],
        "sni": [],
        "no_sni": null,
        "tls_policy": [],
        "routes": [],
    })
}

fn push(v: &mut Value, key: &str, item: Value) {
    if let Some(a) = v[key].as_array_mut() {
        a.push(item);
    }
}

/// The whole report as JSON (the text output is printed from it), and
/// the config and certificate store when everything loaded.
fn build(path: &Path) -> (Value, Option<(Config, CertStore)>) {
    let mut r = report(path);
    let config = match Config::load(path) {
        Ok(c) => c,
        Err(errors) => {
            r["errors"] = json!(errors.0.iter().map(|e| e.to_string()).collect::<Vec<_>>());
            return (r, None);
        }
    };
    r["hostname"] = json!(config.hostname);
    r["tls_policy"] = json!(
        config
            .tls_policy
            .iter()
            .map(describe_rule)
            .collect::<Vec<_>>()
    );
    for rule in &config.tls_policy {
        if let Some(w) = policy_warning(rule) {
            push(&mut r, "warnings", json!(w));
        }
    }
    // TLS to the backends, built as `run` builds it (tls_ca read, tls_name
    // parsed); tls_verify = false is worth a warning.
    for b in &config.backends {
        let Some(t) = &b.tls else { continue };
        if let Err(e) = crate::backend::tls::BackendTls::new(t) {
            push(
                &mut r,
                "errors",
                json!(format!(
                    "{}: backend {:?}: {e}",
                    config.path.display(),
                    b.name
                )),
            );
        }
        if !t.verify {
            push(
                &mut r,
                "warnings",
                json!(format!(
                    "backend {:?}: tls_verify = false: the backend's certificate is not verified",
                    b.name
                )),
            );
        }
    }
    let anchors = match CertStore::load_anchors(&config) {
        Ok(a) => a,
        Err(errors) => {
            r["errors"] = json!(errors.0.iter().map(|e| e.to_string()).collect::<Vec<_>>());
            return (r, None);
        }
    };
    r["trust_anchors"] = json!(anchors.describe());
    let now = now_unix();
    let cx = LoadContext {
        anchors: &anchors,
        now,
        expiry_warning: config.tls.expiry_warning,
    };
    // Every certificate on its own: one bad file does not hide the others.
    let mut loaded = Vec::new();
    for c in &config.certificates {
        match load_certificate(c, &cx) {
            Ok(l) => {
                for w in &l.warnings {
                    push(
                        &mut r,
                        "warnings",
                        json!(format!("certificate {:?}: {w}", c.name)),
                    );
                }
                push(
                    &mut r,
                    "certificates",
                    json!({
                        "name": l.name,
                        "algorithm": l.algorithm.as_str(),
                        "names": l.names,
                        "chain": l.chain,
                        "issuer": l.issuer,
                        "serial": l.serial,
                        "not_after": fmt_time(l.not_after),
                        "days_left": (l.not_after - now) / 86_400,
                        "chain_check": l.chain_check.as_str(),
                        "root_dropped": l.root_dropped,
                        "warnings": l.warnings,
                        "errors": [],
                    }),
                );
                loaded.push(Arc::new(l));
            }
            Err(e) => {
                let msg = e.to_config_error(&config.path, c).to_string();
                push(&mut r, "errors", json!(msg));
                push(
                    &mut r,
                    "certificates",
                    json!({ "name": c.name, "chain_check": c.chain_check.as_str(), "warnings": [], "errors": [msg] }),
                );
            }
        }
    }
    if loaded.len() != config.certificates.len() {
        return (r, None);
    }
    let store = match CertStore::new(loaded, config.tls.default_certificate) {
        Ok(s) => s,
        Err(e) => {
            push(
                &mut r,
                "errors",
                json!(format!("{}: certificate: {e}", config.path.display())),
            );
            return (r, None);
        }
    };

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
    for n in names {
        // For a wildcard, what a name under it gets.
        let probe = n
            .strip_prefix("*.")
            .map_or_else(|| n.to_string(), |p| format!("any-label.{p}"));
        push(
            &mut r,
            "sni",
            json!({ "name": probe, "certificate": served(Some(&probe)) }),
        );
    }
    r["no_sni"] = served(None);
    check_routes(&mut r, &config, &store);

    // A sender without SNI that checks the MX name: both kinds of client.
    let mut uncovered: Vec<String> = Vec::new();
    for schemes in [ECDSA_CLIENT, RSA_CLIENT] {
        let d = store.select(None, schemes);
        if !covers(&d.cert.names, &config.hostname) && !uncovered.contains(&d.cert.name) {
            uncovered.push(d.cert.name.clone());
        }
    }
    for name in uncovered {
        push(
            &mut r,
            "warnings",
            json!(format!(
                "the default certificate {name:?} does not cover hostname {} (senders without SNI that check the name will fail)",
                config.hostname
            )),
        );
    }
    (r, Some((config, store)))
}

/// `[[route]]`s: what each sends where, and the warnings of
/// [`route_warnings`].
fn check_routes(r: &mut Value, config: &Config, store: &CertStore) {
    for route in &config.routes {
        let backend = config
            .backends
            .get(route.backend)
            .map_or("", |b| b.name.as_str());
        push(r, "routes", json!({ "sni": route.sni, "backend": backend }));
    }
    for w in route_warnings(config, store) {
        push(r, "warnings", json!(w));
    }
}

/// A routed name no certificate covers (file, line, key): its senders
/// would get the default certificate, which names another host. A
/// wildcard route needs the same wildcard on a certificate. `run` logs
/// these at start, `check` reports them.
pub fn route_warnings(config: &Config, store: &CertStore) -> Vec<String> {
    let mut out = Vec::new();
    for route in &config.routes {
        let backend = config
            .backends
            .get(route.backend)
            .map_or("", |b| b.name.as_str());
        for (j, name) in route.sni.iter().enumerate() {
            let covered = store
                .certificates()
                .iter()
                .any(|c| match name.strip_prefix("*.") {
                    Some(_) => c.names.iter().any(|n| n == name),
                    None => covers(&c.names, name),
                });
            if !covered {
                let w = crate::config::ConfigError::new(
                    &config.path,
                    route.sni_at,
                    format!("{}.sni[{j}]", route.key_path),
                    format!(
                        "{name:?} is routed to {backend:?} but no certificate covers it (its senders get the default certificate)"
                    ),
                );
                out.push(w.to_string());
            }
        }
    }
    out
}

/// One `[[tls_policy]]` rule: what it matches, where it is asked, and
/// what an enforced refusal answers.
fn describe_rule(rule: &TlsRule) -> Value {
    // An empty list: the key is not given, anything matches.
    let list = |v: &[String]| json!(v);
    let domains = |v: &[crate::config::DomainPattern]| {
        v.iter()
            .map(|p| match p {
                crate::config::DomainPattern::Exact(d) => d.clone(),
                crate::config::DomainPattern::Subdomains(d) => format!("any subdomain of {d}"),
            })
            .collect::<Vec<_>>()
    };
    let clients: Vec<String> = rule.clients.iter().map(|n| n.to_string()).collect();
    let mut refusals = vec![format!(
        "{} (plaintext)",
        policy::refusal_reply(rule.reply, TlsState::None).0
    )];
    if rule.require == Require::Tls13 {
        refusals.push(format!(
            "{} (TLS 1.2)",
            policy::refusal_reply(rule.reply, TlsState::Tls12).0
        ));
    }
    json!({
        "name": rule.name,
        "mode": rule.mode.as_str(),
        "require": rule.require.as_str(),
        "reply": rule.reply.as_str(),
        "asked_at": match Stage::of(rule) { Stage::Mail => "MAIL FROM", Stage::Rcpt => "each RCPT TO" },
        "clients": list(&clients),
        "helo": list(&domains(&rule.helo)),
        "senders": list(&domains(&rule.senders)),
        "recipients": list(&domains(&rule.recipients)),
        "refusal": refusals,
    })
}

/// An `enforce` rule for every client, whatever it sends: what RFC 3207
/// §4 warns a public MX against. Staging it in report mode is the way.
fn policy_warning(rule: &TlsRule) -> Option<String> {
    let everyone = rule.clients.iter().any(|n| n.prefix_len() == 0);
    let narrowed = !rule.helo.is_empty() || !rule.senders.is_empty() || !rule.recipients.is_empty();
    (rule.mode == PolicyMode::Enforce && everyone && !narrowed).then(|| {
        format!(
            "tls_policy {:?} enforces {} for every client: senders that cannot STARTTLS are refused (RFC 3207 §4 advises against this on a public MX; run it in mode = \"report\" first and watch would_refuse)",
            rule.name,
            rule.require.as_str()
        )
    })
}

fn print_rules(out: &mut impl Write, r: &Value) {
    let s = |v: &Value| v.as_str().unwrap_or_default().to_string();
    let rules = r["tls_policy"].as_array().cloned().unwrap_or_default();
    if rules.is_empty() {
        let _ = writeln!(out, "tls policy: no rules");
    }
    for rule in &rules {
        let list = |v: &Value| {
            let items = v
                .as_array()
                .into_iter()
                .flatten()
                .map(s)
                .collect::<Vec<_>>();
            if items.is_empty() {
                "any".to_string()
            } else {
                items.join(", ")
            }
        };
        let _ = writeln!(
            out,
            "tls policy {:?}: {}, require {}, asked at {}",
            s(&rule["name"]),
            s(&rule["mode"]),
            s(&rule["require"]),
            s(&rule["asked_at"])
        );
        for key in ["clients", "helo", "senders", "recipients"] {
            let _ = writeln!(out, "  {key:<11}{}", list(&rule[key]));
        }
        let refusal = rule["refusal"]
            .as_array()
            .into_iter()
            .flatten()
            .map(s)
            .collect::<Vec<_>>()
            .join("; ");
        let label = if rule["mode"] == "report" {
            "would answer (report mode: counted and logged as would_refuse, the session goes on)"
        } else {
            "answers"
        };
        let _ = writeln!(out, "  {label}: {refusal}");
    }
}

/// The report for a person. Without `own` (no --dns) errors mean the
/// config did not load, and only they are printed; with it, errors come
/// from DNS and follow the rest.
fn print_text(out: &mut impl Write, r: &Value, own: Option<&OwnReport>) {
    let s = |v: &Value| v.as_str().unwrap_or_default().to_string();
    let errors = r["errors"].as_array().cloned().unwrap_or_default();
    if own.is_none() && !errors.is_empty() {
        for e in &errors {
            let _ = writeln!(out, "error: {}", s(e));
        }
        let _ = writeln!(out, "{}: {} error(s)", s(&r["config"]), errors.len());
        return;
    }
    let _ = writeln!(out, "config {}: ok", s(&r["config"]));
    let _ = writeln!(out, "hostname {}", s(&r["hostname"]));
    let _ = writeln!(out, "trust anchors: {}", s(&r["trust_anchors"]));
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
    for route in r["routes"].as_array().into_iter().flatten() {
        let names: Vec<String> = route["sni"]
            .as_array()
            .into_iter()
            .flatten()
            .map(s)
            .collect();
        let _ = writeln!(
            out,
            "route {} -> backend {:?}",
            names.join(", "),
            s(&route["backend"])
        );
    }
    for n in r["sni"].as_array().into_iter().flatten() {
        let _ = writeln!(
            out,
            "SNI {}: certificate {}",
            s(&n["name"]),
            served(&n["certificate"])
        );
    }
    let _ = writeln!(out, "without SNI: certificate {}", served(&r["no_sni"]));
    print_rules(out, r);
    if let Some(own) = own {
        let _ = dns::print_text(out, own);
    }
    let warnings = r["warnings"].as_array().cloned().unwrap_or_default();
    for w in &warnings {
        let _ = writeln!(out, "warning: {}", s(w));
    }
    for e in &errors {
        let _ = writeln!(out, "error: {}", s(e));
    }
    let _ = writeln!(
        out,
        "{} warning(s), {} error{}",
        warnings.len(),
        errors.len(),
        if errors.len() == 1 { "" } else { "s" }
    );
}
