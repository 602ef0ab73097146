//! `starttls-proxy check`: the config and every certificate, checked by the
//! same code `run` uses, reported for a human. Exit 0 when `run` would
//! start, 1 on errors.

use std::process::ExitCode;

use rustls::SignatureScheme;

use crate::config::Config;
use crate::tls::CertStore;
use crate::tls::load::{fmt_time, now_unix};

pub fn main(path: &std::path::Path) -> ExitCode {
    let config = match Config::load(path) {
        Ok(c) => c,
        Err(errors) => {
            for e in &errors.0 {
                eprintln!("error: {e}");
            }
            eprintln!("{}: {} error(s)", path.display(), errors.0.len());
            return ExitCode::from(1);
        }
    };
    let store = match CertStore::load(&config) {
        Ok(s) => s,
        Err(errors) => {
            for e in &errors.0 {
                eprintln!("error: {e}");
            }
            eprintln!("{}: {} error(s)", path.display(), errors.0.len());
            return ExitCode::from(1);
        }
    };
    let mut warnings = 0;
    println!("config {}: ok", path.display());
    println!("hostname {}", config.hostname);
    for c in store.certificates() {
        let days = (c.not_after - now_unix()) / 86_400;
        println!(
            "certificate {:?}: {} {} names [{}], chain of {} (leaf + {} intermediate(s)), issuer {}, not after {} ({} days left){}",
            c.name,
            c.algorithm.as_str(),
            c.subject,
            c.names.join(", "),
            c.key.cert.len(),
            c.key.cert.len().saturating_sub(1),
            c.issuer,
            fmt_time(c.not_after),
            days,
            if c.root_dropped {
                "; root in the file is not served"
            } else {
                ""
            }
        );
    }
    // What a client gets, for every configured name and without SNI; ECDSA
    // where the client offers ECDSA signature schemes, RSA otherwise.
    let ecdsa_client = [
        SignatureScheme::ECDSA_NISTP256_SHA256,
        SignatureScheme::RSA_PSS_SHA256,
    ];
    let rsa_client = [
        SignatureScheme::RSA_PSS_SHA256,
        SignatureScheme::RSA_PKCS1_SHA256,
    ];
    let served = |sni: Option<&str>| {
        let e = store.select(sni, &ecdsa_client).cert.name.clone();
        let r = store.select(sni, &rsa_client).cert.name.clone();
        if e == r {
            format!("{e:?}")
        } else {
            format!("{e:?} (ECDSA clients), {r:?} (RSA-only clients)")
        }
    };
    let mut names: Vec<&String> = store
        .certificates()
        .iter()
        .flat_map(|c| c.names.iter())
        .collect();
    names.sort();
    names.dedup();
    for n in names {
        let example = n.strip_prefix("*.").map(|p| format!("any-label.{p}"));
        println!(
            "SNI {}: certificate {}",
            example.as_deref().unwrap_or(n),
            served(Some(example.as_deref().unwrap_or(n)))
        );
    }
    println!("without SNI: certificate {}", served(None));
    let default = store.select(None, &rsa_client);
    if !crate::tls::store::covers(&default.cert.names, &config.hostname) {
        warnings += 1;
        println!(
            "warning: the default certificate {:?} does not cover hostname {} (senders without SNI that check the name will fail)",
            default.cert.name, config.hostname
        );
    }
    println!("{} warning(s), 0 errors", warnings);
    ExitCode::SUCCESS
}
