//! Interop with real Postfix: as the backend behind the proxy, and as a
//! strict sender that verifies our chain and name. Needs root and the
//! packages from scripts/install-test-deps.sh; a missing peer fails the test.

mod support;

use std::process::Command;

use support::pki;
use support::*;

/// Fixed loopback ports for the Postfix backends of this file (Postfix
/// cannot bind port 0 and tell us); one per test so they run in parallel.
const BACKEND_SWAKS: u16 = 14125;

fn unique(tag: &str) -> String {
    format!(
        "{tag}-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    )
}

#[test]
fn swaks_over_starttls_delivers_into_postfix() {
    let backend = PostfixBackend::start(BACKEND_SWAKS, &[]);
    let proxy = Proxy::start(ProxyConfig::servers(&[backend.addr()]));
    assert_eq!(
        proxy.wait_log("backend health: first probe done", 1)["up"],
        1
    );
    let subject = unique("swaks-interop");
    let ca = certs().join("ca.pem");
    let transcript = swaks(
        &proxy,
        &[
            "--tls-verify",
            "--tls-ca-path",
            &ca.to_string_lossy(),
            "--tls-sni",
            "mx1.example.test",
            "--ehlo",
            "client.sender.test",
        ],
        &subject,
    );
    assert!(transcript.contains("TLS started"), "{transcript}");
    // The 250 the client saw is Postfix's own.
    assert!(
        transcript.contains("<~  250 2.0.0 Ok: queued as"),
        "{transcript}"
    );
    // Before TLS the proxy offers Postfix's own extensions as probed
    // (SIZE with Postfix's limit), never AUTH.
    let before_tls = transcript.split("TLS started").next().unwrap();
    assert!(before_tls.contains("250-SIZE "), "{before_tls}");
    assert!(!before_tls.contains("AUTH"), "{before_tls}");
    // STARTTLS is not offered inside TLS.
    let after_tls = transcript.split("TLS started").nth(1).unwrap();
    assert!(
        !after_tls.contains("250-STARTTLS") && !after_tls.contains("250 STARTTLS"),
        "{after_tls}"
    );
    let msg = backend.delivered(&subject);
    assert!(msg.contains("Delivered-To: rcpt@example.test"), "{msg}");
    assert!(msg.contains("by backend.example.test (Postfix)"), "{msg}");
    let session = proxy.wait_log("session", 1);
    assert_eq!(session["tls"], "starttls");
    assert_eq!(session["messages"], 1);
}

#[test]
fn strict_postfix_sender_accepts_our_chain_and_name() {
    let proxy = Proxy::start(ProxyConfig::sink());
    // With SNI, and without: the default certificate covers the MX name.
    for sni in [Some("mx1.example.test"), None] {
        let (code, out) = postfix_send(proxy.port(), "mx1.example.test", sni);
        assert_eq!(code, 0, "strict sender must deliver (sni {sni:?}):\n{out}");
        assert!(out.contains("Verified TLS connection established"), "{out}");
    }
    // A tenant's MX name with its SNI gets the tenant's certificate.
    let (code, out) = postfix_send(proxy.port(), "mx.tenant2.test", Some("mx.tenant2.test"));
    assert_eq!(code, 0, "{out}");
    assert_eq!(proxy.sink_messages().len(), 3);
}

#[test]
fn strict_postfix_sender_defers_when_the_intermediate_is_missing() {
    // The leaf without its intermediate: a real strict sender must refuse it.
    let proxy = Proxy::start(ProxyConfig::sink().without_mx1_intermediate());
    let (code, out) = postfix_send(proxy.port(), "mx1.example.test", Some("mx1.example.test"));
    assert_eq!(
        code, 1,
        "a strict sender must defer on an incomplete chain:\n{out}"
    );
    assert!(out.contains("deferred"), "{out}");
    assert!(
        out.contains("untrusted issuer") || out.contains("unable to get local issuer"),
        "{out}"
    );
    assert!(proxy.sink_messages().is_empty());
}

#[test]
fn strict_postfix_sender_defers_on_a_name_mismatch() {
    let proxy = Proxy::start(ProxyConfig::sink());
    let (code, out) = postfix_send(proxy.port(), "mx9.other.test", None);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("hostname mismatch") || out.contains("Server certificate not verified"),
        "{out}"
    );
}

#[test]
fn strict_postfix_sender_still_delivers_after_a_rotation() {
    let tmp = tempdir();
    let dir = tmp.path().join("rot");
    pki::leaf(&["rot.example.test"]).write_to(&dir);
    let extra = format!(
        "[[certificate]]\nname = \"rot\"\nchain = \"{}\"\nkey = \"{}\"\n\n[[backend]]",
        dir.join("fullchain.pem").display(),
        dir.join("privkey.pem").display()
    );
    let mut config = ProxyConfig::sink();
    config.text =
        config.text.replacen("[[backend]]", &extra, 1) + "\n[reload]\ndebounce = \"100ms\"\n";
    let mut proxy = Proxy::start(config);
    let pid = proxy.pid();

    let next = pki::leaf(&["rot.example.test"]);
    next.write_to(&dir);
    proxy.wait_log("certificate reloaded", 1);
    let (code, out) = postfix_send(proxy.port(), "rot.example.test", Some("rot.example.test"));
    assert_eq!(code, 0, "strict sender after rotation:\n{out}");
    assert!(proxy.alive() && proxy.pid() == pid, "no restart");
    // The sender saw the new certificate: the handshake log names it.
    proxy.wait_log("tls handshake", 1);
    let hs = proxy.logs_with("tls handshake");
    assert_eq!(hs.last().unwrap()["certificate"], "rot");
    assert_eq!(hs.last().unwrap()["serial"], next.serial);
}

/// swaks from 127.0.0.5 over STARTTLS through the proxy into a Postfix
/// that requires a PROXY header: the message's Received line must name the
/// real client, not the proxy.
fn proxied_identity_reaches_postfix(identity: &str, port: u16) {
    let backend = PostfixBackend::start(port, &[("PROXY", "1")]);
    let config = ProxyConfig::servers(&[backend.addr()]).replace(
        &format!("servers = [\"{}\"]", backend.addr()),
        &format!(
            "servers = [\"{}\"]\nidentity = \"{identity}\"",
            backend.addr()
        ),
    );
    let proxy = Proxy::start(config);
    // The health probe (PROXY v2 LOCAL / v1 with its own addresses, EHLO, QUIT) is
    // accepted by a Postfix that requires PROXY headers.
    let probe = proxy.wait_log("backend health: first probe done", 1);
    assert_eq!(probe["up"], 1, "{}", proxy.all_logs());
    let subject = unique(identity);
    let out = Command::new("swaks")
        .args([
            "-s",
            &proxy.addr().ip().to_string(),
            "-p",
            &proxy.port().to_string(),
        ])
        .args([
            "--local-interface",
            "127.0.0.5",
            "--tls",
            "--ehlo",
            "client.sender.test",
        ])
        .args(["--from", "sender@sender.test", "--to", "rcpt@example.test"])
        .args([
            "--header",
            &format!("Subject: {subject}"),
            "--timeout",
            "20",
        ])
        .output()
        .expect("swaks");
    let t = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{t}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let msg = backend.delivered(&subject);
    assert!(
        msg.contains("[127.0.0.5]"),
        "Postfix did not see the real client:\n{msg}"
    );
}

#[test]
fn proxy_v2_identity_reaches_postfix() {
    proxied_identity_reaches_postfix("proxy-v2", 14126);
}

#[test]
fn proxy_v1_identity_reaches_postfix() {
    proxied_identity_reaches_postfix("proxy-v1", 14127);
}
