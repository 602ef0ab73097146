//! The hybrid post-quantum key exchange X25519MLKEM768 (DESIGN.md §2):
//! negotiated with clients that offer it, X25519 for those that do not,
//! dropped by `[tls] post_quantum = false`; the handshake log line's
//! `group` says which.

mod support;

use std::path::Path;

use rustls::NamedGroup;
use rustls::crypto::{CryptoProvider, SupportedKxGroup, aws_lc_rs, ring};
use starttls_proxy::config::Config;
use support::*;

const BOTH: &[&rustls::SupportedProtocolVersion] =
    &[&rustls::version::TLS13, &rustls::version::TLS12];

/// aws-lc-rs offering exactly `groups`, in this order.
fn aws_lc(groups: &[&'static dyn SupportedKxGroup]) -> CryptoProvider {
    CryptoProvider {
        kx_groups: groups.to_vec(),
        ..aws_lc_rs::default_provider()
    }
}

/// What the client negotiated, and what the proxy logged for the `n`-th
/// handshake.
fn negotiate(proxy: &Proxy, n: usize, config: rustls::ClientConfig) -> (NamedGroup, String) {
    let (conn, _tcp) = starttls_handshake(proxy, config);
    let client = conn
        .negotiated_key_exchange_group()
        .expect("a full handshake has a group")
        .name();
    let log = proxy.wait_log("tls handshake", n);
    let logged = log["group"].as_str().unwrap_or_default().to_string();
    (client, logged)
}

#[test]
fn a_client_offering_x25519mlkem768_negotiates_it() {
    let proxy = Proxy::start(ProxyConfig::sink());
    // As Go 1.24 and OpenSSL 3.5 senders do: the hybrid group first, with
    // an X25519 share beside it.
    let client = aws_lc(&[
        aws_lc_rs::kx_group::X25519MLKEM768,
        aws_lc_rs::kx_group::X25519,
    ]);
    let (group, logged) = negotiate(&proxy, 1, client_config_with_provider(client, BOTH));
    assert_eq!(group, NamedGroup::X25519MLKEM768);
    assert_eq!(logged, "X25519MLKEM768");

    // rustls's own default with aws-lc-rs offers it too.
    let (group, logged) = negotiate(
        &proxy,
        2,
        client_config_with_provider(aws_lc_rs::default_provider(), BOTH),
    );
    assert_eq!(group, NamedGroup::X25519MLKEM768);
    assert_eq!(logged, "X25519MLKEM768");
}

#[test]
fn a_client_without_the_hybrid_group_gets_x25519() {
    let proxy = Proxy::start(ProxyConfig::sink());
    // ring has no ML-KEM: X25519, P-256, P-384.
    let (group, logged) = negotiate(
        &proxy,
        1,
        client_config_with_provider(ring::default_provider(), BOTH),
    );
    assert_eq!(group, NamedGroup::X25519);
    assert_eq!(logged, "X25519");

    let only_x25519 = aws_lc(&[aws_lc_rs::kx_group::X25519]);
    let (group, logged) = negotiate(&proxy, 2, client_config_with_provider(only_x25519, BOTH));
    assert_eq!(group, NamedGroup::X25519);
    assert_eq!(logged, "X25519");

    // The hybrid group is TLS 1.3 only: offered over TLS 1.2, X25519.
    let tls12 = aws_lc(&[
        aws_lc_rs::kx_group::X25519MLKEM768,
        aws_lc_rs::kx_group::X25519,
    ]);
    let (group, logged) = negotiate(
        &proxy,
        3,
        client_config_with_provider(tls12, &[&rustls::version::TLS12]),
    );
    assert_eq!(group, NamedGroup::X25519);
    assert_eq!(logged, "X25519");
}

#[test]
fn post_quantum_false_gives_x25519_to_a_client_offering_both() {
    let proxy = Proxy::start(ProxyConfig::sink().replace("[tls]", "[tls]\npost_quantum = false"));
    let client = aws_lc(&[
        aws_lc_rs::kx_group::X25519MLKEM768,
        aws_lc_rs::kx_group::X25519,
    ]);
    let (group, logged) = negotiate(&proxy, 1, client_config_with_provider(client, BOTH));
    assert_eq!(group, NamedGroup::X25519);
    assert_eq!(logged, "X25519");

    // A client with only the hybrid group has nothing in common with it.
    let only_hybrid = aws_lc(&[aws_lc_rs::kx_group::X25519MLKEM768]);
    let config = client_config_with_provider(only_hybrid, BOTH);
    let mut c = Smtp::connect(proxy.addr());
    c.expect("220");
    c.cmd("EHLO client.test", "250");
    c.cmd("STARTTLS", "220");
    let err = c
        .start_tls_shared(std::sync::Arc::new(config), "mx1.example.test")
        .err()
        .expect("no group in common");
    assert!(
        matches!(
            err,
            rustls::Error::AlertReceived(rustls::AlertDescription::HandshakeFailure)
        ),
        "{err:?}"
    );
}

/// A reload (SIGHUP) that turns `post_quantum` off applies to the next
/// handshake, as `min_version` and `session_tickets` do.
#[test]
fn turning_post_quantum_off_applies_on_reload() {
    let proxy = Proxy::start(ProxyConfig::sink());
    let both = || {
        client_config_with_provider(
            aws_lc(&[
                aws_lc_rs::kx_group::X25519MLKEM768,
                aws_lc_rs::kx_group::X25519,
            ]),
            BOTH,
        )
    };
    assert_eq!(negotiate(&proxy, 1, both()).0, NamedGroup::X25519MLKEM768);

    let path = proxy.dir.path().join("proxy.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, text.replace("[tls]", "[tls]\npost_quantum = false")).unwrap();
    let st = std::process::Command::new("kill")
        .args(["-HUP", &proxy.pid().to_string()])
        .status()
        .unwrap();
    assert!(st.success());
    proxy.wait_log("TLS settings applied", 1);
    assert_eq!(
        negotiate(&proxy, 2, both()),
        (NamedGroup::X25519, "X25519".to_string())
    );
}

/// OpenSSL 3.0 (Debian 12) has no ML-KEM: its default groups still meet.
#[test]
fn openssl_3_0_s_client_completes_with_x25519() {
    let proxy = Proxy::start(ProxyConfig::sink());
    let ca = certs().join("ca.pem");
    let (ok, out) = s_client(
        proxy.addr(),
        &[
            "-servername",
            "mx1.example.test",
            "-CAfile",
            ca.to_str().unwrap(),
            "-verify_return_error",
        ],
    );
    assert!(ok, "{out}");
    assert!(out.contains("Verify return code: 0 (ok)"), "{out}");
    let log = proxy.wait_log("tls handshake", 1);
    assert_eq!(log["group"], "X25519", "{log}");
    assert_eq!(log["version"], "TLSv1.3", "{log}");
}

// === the config key ===

fn parse(tls_extra: &str) -> Result<Config, String> {
    let text = std::fs::read_to_string(repo().join("config/quickstart.toml"))
        .unwrap()
        .replace("[tls]\n", &format!("[tls]\n{tls_extra}\n"));
    Config::parse(Path::new("pq.toml"), &text).map_err(|e| e.to_string())
}

#[test]
fn post_quantum_defaults_to_true_and_can_be_turned_off() {
    assert!(parse("").unwrap().tls.post_quantum);
    assert!(parse("post_quantum = true").unwrap().tls.post_quantum);
    assert!(!parse("post_quantum = false").unwrap().tls.post_quantum);
}

#[test]
fn post_quantum_of_the_wrong_type_names_file_line_and_key() {
    let e = parse("post_quantum = \"yes\"").unwrap_err();
    let line = std::fs::read_to_string(repo().join("config/quickstart.toml"))
        .unwrap()
        .lines()
        .position(|l| l == "[tls]")
        .unwrap()
        + 2;
    assert!(
        e.starts_with(&format!(
            "pq.toml:{line}:16: tls.post_quantum: invalid type"
        )),
        "{e}"
    );
}
