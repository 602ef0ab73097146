//! STARTTLS with real clients: certificate choice by SNI, full chains,
//! versions, and the STARTTLS command-injection defence.

mod support;

use support::*;

fn ca() -> String {
    certs().join("ca.pem").to_str().unwrap().to_string()
}

/// openssl with SNI `sni` (or none) verifying the chain and `verify_name`.
fn strict(proxy: &Proxy, sni: Option<&str>, verify_name: &str, extra: &[&str]) -> String {
    let ca = ca();
    let mut args = vec![
        "-CAfile",
        &ca,
        "-verify_hostname",
        verify_name,
        "-verify_return_error",
        "-showcerts",
    ];
    match sni {
        Some(s) => args.extend(["-servername", s]),
        None => args.push("-noservername"),
    }
    args.extend_from_slice(extra);
    let (ok, out) = s_client(proxy.addr(), &args);
    assert!(
        ok,
        "openssl failed (sni {sni:?}, name {verify_name}):\n{out}"
    );
    assert!(out.contains("Verify return code: 0 (ok)"), "{out}");
    out
}

const INTERMEDIATE: &str = "starttls-proxy demo Intermediate CA";

#[test]
fn sni_chooses_the_certificate_and_the_chain_is_leaf_plus_intermediate() {
    let proxy = Proxy::start(ProxyConfig::sink());
    // (SNI sent, name the client checks, CN expected)
    let cases = [
        (
            Some("mx1.example.test"),
            "mx1.example.test",
            "mx1.example.test",
        ),
        (
            Some("mail.example.test"),
            "mail.example.test",
            "mx1.example.test",
        ),
        (
            Some("mx.tenant2.test"),
            "mx.tenant2.test",
            "mx.tenant2.test",
        ),
        // one-label wildcard of tenant2's certificate
        (
            Some("other.tenant2.test"),
            "other.tenant2.test",
            "mx.tenant2.test",
        ),
        (Some("a.wild.test"), "a.wild.test", "*.wild.test"),
        // unknown name and no SNI: the configured default, mx1
        (
            Some("unknown.example.org"),
            "mx1.example.test",
            "mx1.example.test",
        ),
        (None, "mx1.example.test", "mx1.example.test"),
    ];
    for (sni, name, cn) in cases {
        let out = strict(
            &proxy,
            sni,
            name,
            &["-sigalgs", "RSA-PSS+SHA256:rsa_pkcs1_sha256"],
        );
        let chain = chain_subjects(&out);
        assert_eq!(
            chain.len(),
            2,
            "leaf + intermediate, never the root ({sni:?}): {chain:?}"
        );
        assert!(
            chain[0].ends_with(&format!("CN = {cn}")),
            "{sni:?}: {chain:?}"
        );
        assert!(
            chain[1].ends_with(&format!("CN = {INTERMEDIATE}")),
            "{sni:?}: {chain:?}"
        );
    }
    // Two labels below a wildcard do not match it: default certificate.
    let (_, out) = s_client(proxy.addr(), &["-servername", "a.b.wild.test"]);
    assert!(
        chain_subjects(&out)[0].ends_with("CN = mx1.example.test"),
        "{out}"
    );

    // Seven verified handshakes and the a.b.wild.test one.
    proxy.wait_log("tls handshake", 8);
    let hs = proxy.logs_with("tls handshake");
    let sni_of = |i: usize| {
        (
            hs[i]["sni"].as_str().unwrap().to_string(),
            hs[i]["sni_match"].as_str().unwrap().to_string(),
        )
    };
    assert_eq!(sni_of(0), ("mx1.example.test".into(), "matched".into()));
    assert_eq!(
        sni_of(5),
        ("unknown.example.org".into(), "unmatched".into())
    );
    assert_eq!(sni_of(6), ("none".into(), "absent".into()));
    assert_eq!(hs[2]["certificate"], "tenant2");
}

#[test]
fn ecdsa_to_clients_that_allow_it_rsa_to_the_rest() {
    let proxy = Proxy::start(ProxyConfig::sink());
    let ca = ca();
    let (ok, out) = s_client(
        proxy.addr(),
        &[
            "-servername",
            "mx1.example.test",
            "-CAfile",
            &ca,
            "-verify_return_error",
        ],
    );
    assert!(ok && out.contains("Peer signature type: ECDSA"), "{out}");
    let (ok, out) = s_client(
        proxy.addr(),
        &[
            "-servername",
            "mx1.example.test",
            "-CAfile",
            &ca,
            "-verify_return_error",
            "-sigalgs",
            "rsa_pss_rsae_sha256:rsa_pkcs1_sha256",
        ],
    );
    assert!(ok && out.contains("Peer signature type: RSA"), "{out}");
    proxy.wait_log("tls handshake", 2);
    let hs = proxy.logs_with("tls handshake");
    assert_eq!(hs[0]["certificate"], "mx1-ecdsa");
    assert_eq!(hs[1]["certificate"], "mx1");
}

#[test]
fn tls_1_2_and_1_3_succeed_and_1_1_is_refused_without_harm() {
    let proxy = Proxy::start(ProxyConfig::sink());
    let out = strict(
        &proxy,
        Some("mx1.example.test"),
        "mx1.example.test",
        &["-tls1_2"],
    );
    assert!(
        out.contains("Protocol  : TLSv1.2") || out.contains("Protocol: TLSv1.2"),
        "{out}"
    );
    let out = strict(
        &proxy,
        Some("mx1.example.test"),
        "mx1.example.test",
        &["-tls1_3"],
    );
    assert!(out.contains("TLSv1.3"), "{out}");

    for old in ["-tls1_1", "-tls1"] {
        let (ok, out) = s_client(
            proxy.addr(),
            &[
                "-servername",
                "mx1.example.test",
                old,
                "-cipher",
                "DEFAULT@SECLEVEL=0",
            ],
        );
        assert!(!ok, "{old} must be refused:\n{out}");
        assert!(
            out.contains("protocol version") || out.contains("alert"),
            "{old}: {out}"
        );
    }
    // The client may see the alert before the proxy's log line is out.
    proxy.wait_log("tls handshake failed", 2);
    let failures = proxy.logs_with("tls handshake failed");
    assert_eq!(failures.len(), 2, "{}", proxy.all_logs());
    assert_eq!(failures[0]["reason"], "protocol_version", "{}", failures[0]);

    // Still serving, in both versions, with a real rustls client too.
    let mut c = Smtp::connect(proxy.addr());
    c.expect("220");
    c.cmd("EHLO client.test", "250");
    c.cmd("STARTTLS", "220 2.0.0");
    let mut c = c
        .start_tls_with(
            Some("mx1.example.test"),
            "mx1.example.test",
            &[&rustls::version::TLS12],
        )
        .unwrap();
    assert_eq!(c.tls_version, Some(rustls::ProtocolVersion::TLSv1_2));
    c.cmd("EHLO client.test", "250");
}

#[test]
fn min_version_1_3_refuses_1_2() {
    let proxy = Proxy::start(ProxyConfig::sink().replace("[tls]", "[tls]\nmin_version = \"1.3\""));
    let (ok, out) = s_client(proxy.addr(), &["-tls1_2"]);
    assert!(!ok, "{out}");
    strict(
        &proxy,
        Some("mx1.example.test"),
        "mx1.example.test",
        &["-tls1_3"],
    );
}

#[test]
fn commands_pipelined_after_starttls_are_discarded() {
    let backend = FakeBackend::start(FakeBehaviour::Normal);
    let proxy = Proxy::start(ProxyConfig::servers(&[backend.addr]));
    let mut c = Smtp::connect(proxy.addr());
    c.expect("220");
    c.cmd("EHLO client.test", "250");
    c.send_raw(b"STARTTLS\r\nNOOP\r\nMAIL FROM:<x@evil.test>\r\n");
    c.expect("220 2.0.0 Ready to start TLS");
    let mut c = c
        .start_tls(Some("mx1.example.test"), "mx1.example.test")
        .expect("handshake");
    // The first reply inside TLS belongs to our EHLO, not to the injected NOOP.
    let ehlo = c.cmd("EHLO client.test", "250-");
    assert!(
        !ehlo.contains("STARTTLS"),
        "STARTTLS must be removed after TLS: {ehlo}"
    );
    assert_eq!(c.cmd("NOOP", "250"), "250 2.0.0 Ok (backend noop)\r\n");
    c.cmd("QUIT", "221");
    let t = backend.transcript();
    assert!(
        !t.contains("evil.test"),
        "injected command reached the backend: {t}"
    );
    assert_eq!(t, "EHLO client.test\r\nNOOP\r\nQUIT\r\n");
    let ev = proxy.wait_log("dropped bytes pipelined after STARTTLS", 1);
    assert_eq!(
        ev["discarded"],
        b"NOOP\r\nMAIL FROM:<x@evil.test>\r\n".len()
    );
}

#[test]
fn second_starttls_inside_tls_gets_554() {
    let proxy = Proxy::start(ProxyConfig::sink());
    let mut c = Smtp::connect(proxy.addr());
    c.expect("220");
    c.cmd("STARTTLS", "220");
    let mut c = c.start_tls(None, "mx1.example.test").unwrap();
    c.cmd("EHLO client.test", "250");
    assert_eq!(
        c.cmd("STARTTLS", "554"),
        "554 5.5.1 Error: TLS already active\r\n"
    );
    c.cmd("NOOP", "250");
}

#[test]
fn smtplib_message_is_stored_byte_for_byte() {
    let proxy = Proxy::start(ProxyConfig::sink());
    let script = repo().join("tests/clients/smtplib_send.py");
    let out = std::process::Command::new("python3")
        .arg(&script)
        .args([
            &proxy.addr().ip().to_string(),
            &proxy.port().to_string(),
            "mx1.example.test",
            &ca(),
        ])
        .output()
        .expect("python3");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("TLSv1.3"), "{stdout}");
    let sent = std::fs::read(
        stdout
            .lines()
            .find_map(|l| l.strip_prefix("sent-file "))
            .unwrap(),
    )
    .unwrap();
    let stored = proxy.sink_messages();
    assert_eq!(stored.len(), 1);
    let header = b"Return-Path: <sender@client.test>\r\nDelivered-To: rcpt@example.test\r\n";
    assert!(
        stored[0].starts_with(header),
        "{:?}",
        String::from_utf8_lossy(&stored[0])
    );
    assert_eq!(
        &stored[0][header.len()..],
        &sent[..],
        "stored content differs from what was sent"
    );
}

#[test]
fn tls12_client_with_only_rsa_suites_gets_the_rsa_certificate() {
    // It lists ECDSA signature schemes (OpenSSL's default) but only ECDHE-RSA
    // cipher suites: only the RSA certificate can complete this handshake.
    let proxy = Proxy::start(ProxyConfig::sink());
    let out = strict(
        &proxy,
        Some("mx1.example.test"),
        "mx1.example.test",
        &[
            "-tls1_2",
            "-cipher",
            "ECDHE-RSA-AES128-GCM-SHA256:ECDHE-RSA-AES256-GCM-SHA384",
        ],
    );
    assert!(out.contains("Peer signature type: RSA"), "{out}");
    assert_eq!(proxy.wait_log("tls handshake", 1)["certificate"], "mx1");
}

#[test]
fn server_order_prefers_aes128_over_the_clients_aes256() {
    // OpenSSL lists TLS_AES_256_GCM_SHA384 first for TLS 1.3 and the
    // AES-256 suites first for TLS 1.2; the proxy's own order (AES-128-GCM,
    // SHA-256 handshake hash: src/tls/provider.rs) decides.
    let proxy = Proxy::start(ProxyConfig::sink());
    let out = strict(&proxy, Some("mx1.example.test"), "mx1.example.test", &[]);
    assert!(out.contains("Cipher is TLS_AES_128_GCM_SHA256"), "{out}");
    let out = strict(
        &proxy,
        Some("mx1.example.test"),
        "mx1.example.test",
        &[
            "-tls1_2",
            "-cipher",
            "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256",
        ],
    );
    assert!(out.contains("Cipher is ECDHE-"), "{out}");
    assert!(out.contains("-AES128-GCM-SHA256"), "{out}");
    assert_eq!(
        proxy.wait_log("tls handshake", 2)["cipher"],
        "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256"
    );

    // A client that offers only AES-256 still gets it.
    let out = strict(
        &proxy,
        Some("mx1.example.test"),
        "mx1.example.test",
        &["-ciphersuites", "TLS_AES_256_GCM_SHA384"],
    );
    assert!(out.contains("Cipher is TLS_AES_256_GCM_SHA384"), "{out}");
}
