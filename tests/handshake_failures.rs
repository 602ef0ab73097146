//! Every handshake failure reason of DESIGN.md §6, produced by a real
//! client, read back from the JSON log and from /metrics.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};

use support::*;

fn proxy() -> Proxy {
    Proxy::start(
        ProxyConfig::sink()
            .append("\n[metrics]\nlisten = \"127.0.0.1:0\"\n")
            .append("\n[timeouts]\nhandshake = \"1s\"\n"),
    )
}

/// Plain SMTP up to `220 Ready to start TLS`.
fn after_starttls(proxy: &Proxy) -> TcpStream {
    let mut c = Smtp::connect(proxy.addr());
    c.expect("220");
    c.cmd("EHLO client.test", "250");
    c.cmd("STARTTLS", "220 2.0.0");
    c.into_tcp()
}

fn failures(proxy: &Proxy, reason: &str) -> f64 {
    proxy
        .metric(&format!(
            "starttls_proxy_tls_handshake_failures_total{{reason=\"{reason}\"}}"
        ))
        .unwrap_or(0.0)
}

fn offered(proxy: &Proxy, version: &str) -> f64 {
    proxy
        .metric(&format!(
            "starttls_proxy_tls_client_max_version_total{{version=\"{version}\"}}"
        ))
        .unwrap_or(0.0)
}

/// The n-th "tls handshake failed" log line (1-based), once it is out.
fn failure_log(proxy: &Proxy, n: usize) -> serde_json::Value {
    proxy.wait_log("tls handshake failed", n);
    proxy.logs_with("tls handshake failed")[n - 1].clone()
}

#[test]
fn clients_offering_only_tls_1_0_or_1_1_fail_with_protocol_version() {
    let proxy = proxy();
    for (n, (flag, version)) in [("-tls1", "TLSv1.0"), ("-tls1_1", "TLSv1.1")]
        .into_iter()
        .enumerate()
    {
        let (ok, out) = s_client(
            proxy.addr(),
            &[
                "-servername",
                "mx1.example.test",
                flag,
                "-cipher",
                "DEFAULT@SECLEVEL=0",
            ],
        );
        assert!(!ok, "{out}");
        let log = failure_log(&proxy, n + 1);
        assert_eq!(log["reason"], "protocol_version", "{log}");
        assert_eq!(log["client_max_version"], version, "{log}");
        assert_eq!(log["sni"], "mx1.example.test", "{log}");
        assert_eq!(offered(&proxy, version), 1.0);
    }
    assert_eq!(failures(&proxy, "protocol_version"), 2.0);
}

#[test]
fn a_client_without_a_shared_cipher_fails_with_no_shared_cipher() {
    let proxy = proxy();
    // TLS 1.2 with RSA key exchange only (rustls does ECDHE only), then with
    // ECDHE but CBC suites only (rustls does AEAD only).
    for (n, ciphers) in [
        "AES128-SHA:AES256-SHA",
        "ECDHE-RSA-AES128-SHA:ECDHE-ECDSA-AES256-SHA",
    ]
    .into_iter()
    .enumerate()
    {
        let (ok, out) = s_client(proxy.addr(), &["-tls1_2", "-cipher", ciphers]);
        assert!(!ok, "{out}");
        let log = failure_log(&proxy, n + 1);
        assert_eq!(log["reason"], "no_shared_cipher", "{ciphers}: {log}");
        assert_eq!(log["client_max_version"], "TLSv1.2", "{log}");
        assert_eq!(log["sni"], "none", "{log}");
    }
    assert_eq!(failures(&proxy, "no_shared_cipher"), 2.0);
    assert_eq!(offered(&proxy, "TLSv1.2"), 2.0);
}

#[test]
fn a_client_that_does_not_trust_our_chain_fails_with_unknown_ca() {
    let proxy = proxy();
    // Python's ssl verifies against the system roots, which do not include
    // the demo CA: it aborts with an unknown_ca alert.
    let script = r#"
import smtplib, ssl, sys
s = smtplib.SMTP("127.0.0.1", int(sys.argv[1]), timeout=20)
s.ehlo("client.test")
try:
    s.starttls(context=ssl.create_default_context())
except ssl.SSLCertVerificationError as e:
    print("verify failed:", e.verify_message)
    sys.exit(0)
sys.exit("handshake unexpectedly succeeded")
"#;
    let out = Command::new("python3")
        .args(["-c", script, &proxy.port().to_string()])
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let log = failure_log(&proxy, 1);
    assert_eq!(log["reason"], "alert_received:unknown_ca", "{log}");
    assert_eq!(log["client_max_version"], "TLSv1.3", "{log}");
    assert_eq!(failures(&proxy, "alert_received:unknown_ca"), 1.0);
}

#[test]
fn a_client_that_stalls_fails_with_timeout_and_one_that_leaves_with_eof() {
    let proxy = proxy();
    let stalled = after_starttls(&proxy);
    let log = failure_log(&proxy, 1);
    assert_eq!(log["reason"], "timeout", "{log}");
    assert_eq!(log["client_max_version"], "unknown", "{log}");
    drop(stalled);

    let left = after_starttls(&proxy);
    drop(left);
    let log = failure_log(&proxy, 2);
    assert_eq!(log["reason"], "eof", "{log}");
    assert_eq!(failures(&proxy, "timeout"), 1.0);
    assert_eq!(failures(&proxy, "eof"), 1.0);
}

#[test]
fn garbage_after_starttls_fails_with_not_tls() {
    let proxy = proxy();
    let mut tcp = after_starttls(&proxy);
    tcp.write_all(b"MAIL FROM:<a@b.test>\r\n").unwrap();
    let mut rest = Vec::new();
    let _ = tcp.read_to_end(&mut rest);
    let log = failure_log(&proxy, 1);
    assert_eq!(log["reason"], "not_tls", "{log}");
    assert_eq!(failures(&proxy, "not_tls"), 1.0);
}

#[test]
fn a_client_hello_before_starttls_is_counted() {
    let proxy = proxy();
    // s_client without -starttls: implicit TLS against a STARTTLS port.
    let out = Command::new("timeout")
        .args(["20", "openssl", "s_client", "-connect"])
        .arg(proxy.addr().to_string())
        .args(["-servername", "mx1.example.test"])
        .stdin(Stdio::null())
        .output()
        .expect("openssl");
    assert!(!out.status.success());
    let ev = proxy.wait_log("TLS ClientHello received before STARTTLS; closing", 1);
    assert_eq!(ev["client_max_version"], "TLSv1.3", "{ev}");
    assert_eq!(failures(&proxy, "implicit_tls_on_starttls_port"), 1.0);
    assert_eq!(offered(&proxy, "TLSv1.3"), 1.0);
}

#[test]
fn a_successful_handshake_logs_the_group_and_counts_the_offer() {
    let proxy = proxy();
    let (ok, out) = s_client(
        proxy.addr(),
        &["-servername", "mx.tenant2.test", "-groups", "X25519"],
    );
    assert!(ok || out.contains("CONNECTED"), "{out}");
    let log = proxy.wait_log("tls handshake", 1);
    assert_eq!(log["group"], "X25519", "{log}");
    assert_eq!(log["certificate"], "tenant2", "{log}");
    assert_eq!(offered(&proxy, "TLSv1.3"), 1.0);
    assert_eq!(failures(&proxy, "eof"), 0.0);
}
