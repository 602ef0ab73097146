//! TLS to the backend (`[[backend]] tls`, DESIGN.md §10).
//!
//! Against a real Postfix with its own certificate from the test PKI:
//! Postfix logs the TLS of the hop and writes `with ESMTPS`, the second
//! session resumes, a certificate that does not verify is a backend
//! failure (421), never a plaintext relay, and the PROXY header (before
//! STARTTLS) and XCLIENT (inside TLS) each name the real client.
//!
//! Against a scripted STARTTLS backend (tests/support/starttls_backend.rs,
//! for what no real MTA does on demand): a server that does not offer
//! STARTTLS, refuses it (454), or sends bytes after its 220 (the STARTTLS
//! command-injection class, server side: with the 220, or in place of
//! its handshake) is a backend failure — 421 to
//! the sender, nothing of a transaction in plaintext, the reason logged,
//! the failure counted; a pool fails over from a server whose
//! certificate does not verify (or that stopped offering STARTTLS) to
//! the next; `tls_verify = false` warns at start and delivers; and
//! without `tls_name` the server's IP address is verified against the
//! certificate's IP SANs.
//!
//! REQUIRETLS (RFC 8689) is passed on only over a TLS hop.

mod support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use support::pki;
use support::starttls_backend::{
    StartTls, StartTlsBackend, is_transaction, server_config, server_config_pem,
};
use support::*;

const PF_STARTTLS: u16 = 14510;
const PF_IMPLICIT: u16 = 14511;
const PF_BAD_NAME: u16 = 14512;
const PF_BAD_CA: u16 = 14513;
const PF_PROXY: u16 = 14514;
const PF_XCLIENT: u16 = 14515;

/// A leaf for backend.example.test from the demo intermediate, written to
/// `dir`: (chain, key).
fn backend_cert(dir: &Path) -> (PathBuf, PathBuf) {
    let leaf = pki::leaf(&["backend.example.test"]);
    leaf.write_to(dir);
    (dir.join("fullchain.pem"), dir.join("privkey.pem"))
}

fn postfix_tls(port: u16, dir: &Path, postconf: &str) -> PostfixBackend {
    let (chain, key) = backend_cert(dir);
    PostfixBackend::start(
        port,
        &[
            ("TLS_CERT", chain.to_str().unwrap()),
            ("TLS_KEY", key.to_str().unwrap()),
            ("TRANSCRIPT", "1"),
            ("POSTCONF", postconf),
        ],
    )
}

/// Delivers one message over STARTTLS (SNI `sni`); returns the last reply.
fn deliver(proxy: &Proxy, sni: &str, subject: &str) -> String {
    deliver_on(Smtp::connect(proxy.addr()), sni, subject)
}

/// `deliver` on a connection already open (e.g. after a PROXY header).
fn deliver_on(mut c: Smtp, sni: &str, subject: &str) -> String {
    c.expect("220");
    c.cmd("EHLO client.sender.test", "250");
    c.cmd("STARTTLS", "220");
    let mut c = c.start_tls(Some(sni), sni).unwrap();
    c.send("EHLO client.sender.test");
    let ehlo = c.reply();
    if !ehlo.starts_with("250") {
        return ehlo;
    }
    c.cmd("MAIL FROM:<a@sender.test>", "250");
    c.cmd("RCPT TO:<r@example.test>", "250");
    c.cmd("DATA", "354");
    c.send(&format!("Subject: {subject}\r\n\r\nbody\r\n."));
    let r = c.expect("250");
    c.cmd("QUIT", "221");
    r
}

fn maillog(pf: &PostfixBackend) -> String {
    std::fs::read_to_string(pf.dir.join("log/maillog")).unwrap_or_default()
}

fn tls_backend(pf: &PostfixBackend, mode: &str, extra: &str) -> String {
    format!(
        "servers = [\"{}\"]\ntls = \"{mode}\"\ntls_ca = \"{{certs}}/ca.pem\"\n{extra}\n",
        pf.addr()
    )
}

#[test]
fn starttls_to_postfix_shows_esmtps_and_the_second_session_resumes() {
    let tmp = tempdir();
    let pf = postfix_tls(PF_STARTTLS, tmp.path(), "");
    let p = Proxy::start(ProxyConfig::standard(&tls_backend(
        &pf,
        "starttls",
        "tls_name = \"backend.example.test\"",
    )));
    let start = p.wait_log("backend tls", 1);
    assert_eq!(start["tls"], "starttls");

    deliver(&p, "mx1.example.test", "first-over-tls");
    deliver(&p, "mx1.example.test", "second-over-tls");
    deliver(&p, "mx1.example.test", "third-over-tls");
    deliver(&p, "mx1.example.test", "fourth-over-tls");
    let first = pf.delivered("Subject: first-over-tls");
    pf.delivered("Subject: second-over-tls");
    assert!(
        first.contains("with ESMTPS"),
        "the backend's Received line: {first}"
    );
    wait_for("Postfix logs the TLS hop", TIMEOUT, || {
        maillog(&pf)
            .lines()
            .any(|l| {
                l.contains("TLS connection established from ")
                    && l.contains("[127.0.0.1]: TLSv1.3 with cipher")
            })
            .then_some(())
    });

    p.wait_log("session", 4);
    let sessions: Vec<_> = p
        .logs_with("session")
        .into_iter()
        .filter(|s| s["messages"] == 1)
        .collect();
    assert_eq!(sessions.len(), 4);
    for s in &sessions {
        assert_eq!(s["backend_tls"], "TLSv1.3", "{s}");
    }
    // The pool's client config keeps its session cache across sessions:
    // the second handshake with the server (the first session's, after
    // the health probe's full one) is a resumption, as rustls reports its
    // HandshakeKind. Postfix (OpenSSL) gives no usable new ticket on a
    // resumed TLS 1.3 handshake: the next is full again, so at least
    // every other one resumes (docs/routes.md, backend TLS).
    let kinds: Vec<(bool, bool)> = p
        .logs_with("backend tls handshake")
        .iter()
        .map(|h| (h["probe"] == true, h["resumed"] == true))
        .collect();
    assert_eq!(kinds[..2], [(true, false), (false, true)], "{kinds:?}");
    assert_eq!(sessions[0]["backend_tls_resumed"], true, "{sessions:?}");
    let resumed = sessions
        .iter()
        .filter(|s| s["backend_tls_resumed"] == true)
        .count();
    assert!(resumed >= 2, "{kinds:?}");
}

#[test]
fn implicit_tls_to_postfix_in_wrapper_mode() {
    let tmp = tempdir();
    let pf = postfix_tls(PF_IMPLICIT, tmp.path(), "smtpd_tls_wrappermode = yes");
    let p = Proxy::start(ProxyConfig::standard(&tls_backend(
        &pf,
        "implicit",
        "tls_name = \"backend.example.test\"",
    )));
    deliver(&p, "mx1.example.test", "implicit-hop");
    let m = pf.delivered("Subject: implicit-hop");
    assert!(m.contains("with ESMTPS"), "{m}");
    let s = p.wait_log("session", 1);
    assert_eq!(s["backend_tls"], "TLSv1.3", "{s}");
}

/// A tenant whose backend presents a certificate that does not verify:
/// its sessions get 421 after the handshake, nothing reaches that backend
/// in plaintext, and the default tenant (the sink) still delivers.
fn refused_backend(pf: &PostfixBackend, extra: &str, why: &str) {
    let p = Proxy::start(
        ProxyConfig::sink()
            .append(&format!("\n[[backend]]\nname = \"t2\"\n{extra}\n"))
            .append("\n[[route]]\nsni = [\"mx.tenant2.test\"]\nbackend = \"t2\"\n"),
    );
    let r = deliver(&p, "mx.tenant2.test", "must-not-arrive");
    assert_eq!(
        r.trim_end(),
        "421 4.4.1 mx1.example.test Service temporarily unavailable, try again later"
    );
    let failed = p.wait_log("no backend server available", 1);
    let error = failed["error"].as_str().unwrap();
    assert!(
        error.contains("TLS handshake") && error.contains(why),
        "{error}"
    );

    deliver(&p, "mx1.example.test", "default-tenant");
    assert_eq!(p.sink_messages().len(), 1);
    // The proxy's last words to that backend were STARTTLS: no MAIL, no
    // message, in plaintext or otherwise.
    pf.wait_command("STARTTLS");
    assert!(
        !pf.commands().iter().any(|c| c.contains("MAIL FROM")),
        "{:?}",
        pf.commands()
    );
    assert!(pf.messages().is_empty());
}

#[test]
fn a_certificate_for_another_name_is_a_backend_failure_never_plaintext() {
    let tmp = tempdir();
    let pf = postfix_tls(PF_BAD_NAME, tmp.path(), "");
    refused_backend(
        &pf,
        &tls_backend(&pf, "starttls", "tls_name = \"other.example.test\""),
        "not valid for name \"other.example.test\"",
    );
}

#[test]
fn a_certificate_from_an_unknown_ca_is_a_backend_failure_never_plaintext() {
    let tmp = tempdir();
    let pf = postfix_tls(PF_BAD_CA, tmp.path(), "");
    // The system roots do not have the demo CA.
    refused_backend(
        &pf,
        &format!(
            "servers = [\"{}\"]\ntls = \"starttls\"\ntls_name = \"backend.example.test\"\n",
            pf.addr()
        ),
        "UnknownIssuer",
    );
}

/// The order on the wire: PROXY header first, then STARTTLS, then XCLIENT
/// (inside TLS). Postfix accepts both: the header before its greeting
/// (`smtpd_upstream_proxy_protocol`), XCLIENT after the TLS handshake.
/// The client comes through a PROXY-protocol listener as 203.0.113.7, so
/// the address Postfix records can only come from the proxy's PROXY v2
/// header (the proxy itself connects from 127.0.0.1).
#[test]
fn postfix_takes_a_proxy_header_before_starttls() {
    let tmp = tempdir();
    let (chain, key) = backend_cert(tmp.path());
    let pf = PostfixBackend::start(
        PF_PROXY,
        &[
            ("TLS_CERT", chain.to_str().unwrap()),
            ("TLS_KEY", key.to_str().unwrap()),
            ("PROXY", "1"),
        ],
    );
    let p = Proxy::start(ProxyConfig::with(
        r#"proxy_protocol = { version = 1, trusted = ["127.0.0.0/8"] }"#,
        &tls_backend(
            &pf,
            "starttls",
            "tls_name = \"backend.example.test\"\nidentity = \"proxy-v2\"",
        ),
    ));
    let c = Smtp::connect_proxied(p.addr(), "PROXY TCP4 203.0.113.7 127.0.0.1 40000 25");
    deliver_on(c, "mx1.example.test", "proxy-then-tls");
    let m = pf.delivered("Subject: proxy-then-tls");
    // No reverse lookup in the test Postfix (smtpd_peername_lookup = no):
    // the name is "unknown", the address the one the header carried.
    assert!(
        m.contains("Received: from client.sender.test (unknown [203.0.113.7])"),
        "{m}"
    );
    assert!(m.contains("with ESMTPS"), "{m}");
    assert!(
        maillog(&pf).contains("connect from unknown[203.0.113.7]"),
        "{}",
        maillog(&pf)
    );
}

#[test]
fn postfix_takes_xclient_after_starttls() {
    let tmp = tempdir();
    let pf = postfix_tls(PF_XCLIENT, tmp.path(), "");
    let p = Proxy::start(ProxyConfig::standard(&tls_backend(
        &pf,
        "starttls",
        "tls_name = \"backend.example.test\"\nidentity = \"xclient\"",
    )));
    deliver(&p, "mx1.example.test", "tls-then-xclient");
    let m = pf.delivered("Subject: tls-then-xclient");
    assert!(m.contains("with ESMTPS"), "{m}");
    // XCLIENT came inside TLS: smtpd logged it after STARTTLS.
    let commands = pf.commands();
    let starttls = commands.iter().position(|c| c == "STARTTLS");
    let xclient = commands.iter().position(|c| c.starts_with("XCLIENT"));
    assert!(
        matches!((starttls, xclient), (Some(s), Some(x)) if s < x),
        "{commands:?}"
    );
}

/// REQUIRETLS (RFC 8689) promises TLS on every hop: a backend offering it
/// over a plaintext hop is not passed on, before TLS or after. Both EHLO
/// replies are compared whole, and each is shown to be built from this
/// backend's own EHLO (its extensions before TLS, as the health probe saw
/// them; its name and extensions after), so the missing REQUIRETLS is the
/// proxy's doing, not an EHLO that never came from the backend.
#[test]
fn requiretls_is_not_passed_on_over_a_plaintext_hop() {
    let b = ScriptedBackend::start(
        "220 backend.test ESMTP",
        &[(
            "EHLO",
            "250-backend.test\r\n250-PIPELINING\r\n250-REQUIRETLS\r\n250-SIZE 12345\r\n250 8BITMIME",
        )],
    );
    let p = Proxy::start(ProxyConfig::servers(&[b.addr]));
    let mut c = Smtp::connect(p.addr());
    c.expect("220");
    let pre = c.cmd("EHLO client.sender.test", "250");
    // SIZE 12345 is this backend's: the pre-TLS list is the probe's.
    assert_eq!(
        pre,
        "250-mx1.example.test\r\n250-PIPELINING\r\n250-SIZE 12345\r\n250-8BITMIME\r\n250 STARTTLS\r\n"
    );
    c.cmd("STARTTLS", "220");
    let mut c = c
        .start_tls(Some("mx1.example.test"), "mx1.example.test")
        .unwrap();
    let post = c.cmd("EHLO client.sender.test", "250");
    assert_eq!(
        post,
        "250-backend.test\r\n250-PIPELINING\r\n250-SIZE 12345\r\n250 8BITMIME\r\n"
    );
    // The session's own connection asked the backend, in plaintext, and
    // was offered REQUIRETLS there.
    let sessions: Vec<String> = b
        .transcripts()
        .into_iter()
        .filter(|t| t.contains("EHLO client.sender.test"))
        .collect();
    assert_eq!(sessions.len(), 1, "{sessions:?}");
}

/// A backend speaking implicit TLS (a rustls server with a certificate for
/// backend.example.test from the test PKI) whose EHLO offers REQUIRETLS.
fn tls_backend_offering_requiretls() -> std::net::SocketAddr {
    use std::io::{BufRead, BufReader, Write};
    let leaf = pki::leaf(&["backend.example.test"]);
    let chain: Vec<rustls_pki_types::CertificateDer<'static>> =
        rustls_pki_types::pem::PemObject::pem_slice_iter(leaf.fullchain().as_bytes())
            .map(Result::unwrap)
            .collect();
    let key: rustls_pki_types::PrivateKeyDer<'static> =
        rustls_pki_types::pem::PemObject::from_pem_slice(leaf.key_pem.as_bytes()).unwrap();
    let config = std::sync::Arc::new(
        rustls::ServerConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .unwrap(),
    );
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for tcp in l.incoming().map_while(Result::ok) {
            let config = config.clone();
            std::thread::spawn(move || {
                let conn = rustls::ServerConnection::new(config).unwrap();
                let mut tls = BufReader::new(rustls::StreamOwned::new(conn, tcp));
                let _ = tls.get_mut().write_all(b"220 backend.test ESMTP\r\n");
                let mut line = String::new();
                while matches!(tls.read_line(&mut line), Ok(n) if n > 0) {
                    let upper = line.to_ascii_uppercase();
                    let reply: &[u8] = if upper.starts_with("EHLO") {
                        b"250-backend.test\r\n250-REQUIRETLS\r\n250 8BITMIME\r\n"
                    } else if upper.starts_with("QUIT") {
                        b"221 2.0.0 Bye\r\n"
                    } else {
                        b"250 2.0.0 Ok\r\n"
                    };
                    if tls.get_mut().write_all(reply).is_err() || upper.starts_with("QUIT") {
                        return;
                    }
                    line.clear();
                }
            });
        }
    });
    addr
}

#[test]
fn requiretls_is_passed_on_when_client_and_hop_are_tls() {
    let addr = tls_backend_offering_requiretls();
    let p = Proxy::start(ProxyConfig::standard(&format!(
        "servers = [\"{addr}\"]\ntls = \"implicit\"\ntls_ca = \"{{certs}}/ca.pem\"\ntls_name = \"backend.example.test\"\n"
    )));
    let mut c = Smtp::connect(p.addr());
    c.expect("220");
    let pre = c.cmd("EHLO client.sender.test", "250");
    assert!(!pre.contains("REQUIRETLS"), "never before TLS: {pre}");
    c.cmd("STARTTLS", "220");
    let mut c = c
        .start_tls(Some("mx1.example.test"), "mx1.example.test")
        .unwrap();
    let post = c.cmd("EHLO client.sender.test", "250");
    assert_eq!(
        post,
        "250-backend.test\r\n250-REQUIRETLS\r\n250 8BITMIME\r\n"
    );
}

// === Misbehaving STARTTLS servers (scripted) ===

const UNAVAILABLE: &str =
    "421 4.4.1 mx1.example.test Service temporarily unavailable, try again later";

/// The `[[backend]]` body for `servers` with `tls = "starttls"`, the demo
/// CA, `tls_name` unless `None`, and no second health probe during the
/// test (so that every counted failure after the first is a session's).
fn starttls_pool(servers: &[SocketAddr], name: Option<&str>) -> String {
    let list: Vec<String> = servers.iter().map(|a| format!("\"{a}\"")).collect();
    let name = name.map_or(String::new(), |n| format!("tls_name = \"{n}\"\n"));
    format!(
        "servers = [{}]\ntls = \"starttls\"\ntls_ca = \"{{certs}}/ca.pem\"\n{name}health_interval = \"1h\"\n",
        list.join(", ")
    )
}

/// The proxy's default backend is the sink; SNI mx.tenant2.test routes to
/// the pool "t2" (`t2`: its body). The listener's greeting stays 220 when
/// t2 is down, so a session routed there really tries t2's servers.
fn tenant_proxy(t2: &str) -> Proxy {
    Proxy::start(
        ProxyConfig::sink()
            .append(&format!("\n[[backend]]\nname = \"t2\"\n{t2}\n"))
            .append("\n[[route]]\nsni = [\"mx.tenant2.test\"]\nbackend = \"t2\"\n")
            .append("\n[metrics]\nlisten = \"127.0.0.1:0\"\n"),
    )
}

/// `backend_connect_failures_total` of one server (0 when not rendered).
fn failures(p: &Proxy, backend: &str, server: SocketAddr) -> f64 {
    p.metric(&format!(
        "starttls_proxy_backend_connect_failures_total{{backend=\"{backend}\",server=\"{server}\"}}"
    ))
    .unwrap_or(0.0)
}

fn backend_cert_config() -> std::sync::Arc<rustls::ServerConfig> {
    server_config(&pki::leaf(&["backend.example.test"]))
}

/// A `tls = "starttls"` server that breaks the STARTTLS step as `b` says.
/// The session gets 421 to its EHLO inside TLS and then the end of the
/// connection (no 250 for anything); the server saw, in plaintext, only
/// `plain` on each connection (the health probe's and the session's: no
/// MAIL, RCPT or DATA) and nothing inside TLS; the session's failure is
/// logged with `why` and counted in backend_connect_failures_total.
fn starttls_step_fails(b: StartTls, plain: &[&str], why: &str) {
    let fake = StartTlsBackend::start(b);
    let p = tenant_proxy(&starttls_pool(&[fake.addr], Some("backend.example.test")));
    // The health probe met the server first (Proxy::start waits for it).
    let after_probe = failures(&p, "t2", fake.addr);

    let mut c = tls_session_as(&p, "mx.tenant2.test");
    c.send("EHLO client.sender.test");
    assert_eq!(c.reply().trim_end(), UNAVAILABLE);
    assert!(c.replies_until_close().is_empty());

    let probe = p.wait_log("backend server down (health probe failed)", 1);
    let probe_error = probe["error"].as_str().unwrap();
    assert!(probe_error.contains(why), "{probe_error}");
    assert_eq!(after_probe, 1.0);

    let failed = p.wait_log("no backend server available", 1);
    assert_eq!(failed["backend"], "t2", "{failed}");
    let error = failed["error"].as_str().unwrap();
    assert!(error.contains(&fake.addr.to_string()), "{error}");
    assert!(error.contains(why), "{error}");
    let session = p.wait_log("session", 1);
    assert_eq!(session["outcome"], "backend_unavailable", "{session}");
    assert_eq!(failures(&p, "t2", fake.addr), 2.0, "{}", p.all_logs());

    let connections = fake.connections();
    assert_eq!(connections.len(), 2, "probe and session: {connections:?}");
    for conn in &connections {
        assert_eq!(conn.plain, plain, "{connections:?}");
        assert!(conn.tls.is_empty(), "{connections:?}");
        assert!(!conn.plain.iter().any(|l| is_transaction(l)));
    }
}

/// Downgrade by omission: the EHLO reply has no STARTTLS (as a MITM
/// stripping it would make it). No plaintext relay, no STARTTLS either.
#[test]
fn a_backend_not_offering_starttls_is_a_failure_never_plaintext() {
    starttls_step_fails(
        StartTls::NotOffered,
        &["EHLO mx1.example.test"],
        "does not offer STARTTLS",
    );
}

#[test]
fn a_backend_refusing_starttls_is_a_failure_never_plaintext() {
    starttls_step_fails(
        StartTls::Refused("454 4.7.0 TLS not available due to local problem"),
        &["EHLO mx1.example.test", "STARTTLS"],
        "STARTTLS refused: 454 4.7.0 TLS not available due to local problem",
    );
}

/// The server-side STARTTLS injection (CVE-2011-0411 class): bytes after
/// the 220, in the same write, would be read as the first reply inside
/// TLS. The scripted server then completes a real handshake, so a proxy
/// that ignored the bytes would relay (and show the injected 250).
#[test]
fn bytes_after_the_starttls_220_are_a_failure_never_a_reply_inside_tls() {
    starttls_step_fails(
        StartTls::Injects(
            b"220 2.0.0 go ahead\r\n250 injected\r\n",
            backend_cert_config(),
        ),
        &["EHLO mx1.example.test", "STARTTLS"],
        "sent bytes after its 220 to STARTTLS",
    );
}

/// The same bytes sent once the proxy's handshake has begun (its
/// ClientHello is on the wire): they reach the TLS layer, where they are
/// no TLS record, and fail the handshake; never read as a reply.
#[test]
fn bytes_in_place_of_the_server_handshake_fail_it_never_a_reply() {
    starttls_step_fails(
        StartTls::InjectsInHandshake(b"250 injected\r\n", backend_cert_config()),
        &["EHLO mx1.example.test", "STARTTLS"],
        "TLS handshake: received corrupt message of type InvalidContentType",
    );
}

/// A pool of two: the first server passed its health probe, then breaks
/// its TLS as `bad` says. The session fails over to the second and is
/// delivered there, inside TLS; the first is counted as a failure once
/// (the session's), the second not at all.
fn fails_over_after(bad: StartTls, why: &str) {
    let first = StartTlsBackend::start(StartTls::Good(backend_cert_config()));
    let second = StartTlsBackend::start(StartTls::Good(backend_cert_config()));
    let p = Proxy::start(
        ProxyConfig::standard(&starttls_pool(
            &[first.addr, second.addr],
            Some("backend.example.test"),
        ))
        .append("\n[metrics]\nlisten = \"127.0.0.1:0\"\n"),
    );
    assert_eq!(failures(&p, "b", first.addr), 0.0);
    first.set_behaviour(bad);

    let r = deliver(&p, "mx1.example.test", "failed-over");
    assert!(r.starts_with("250 "), "{r}");
    let tls = second.tls_lines();
    assert!(tls.iter().any(|l| l == "Subject: failed-over"), "{tls:?}");
    assert!(
        tls.iter().any(|l| l == "MAIL FROM:<a@sender.test>"),
        "{tls:?}"
    );
    for conn in first.connections() {
        let all = conn.plain.iter().chain(&conn.tls);
        assert!(!all.clone().any(|l| is_transaction(l)), "{conn:?}");
    }
    assert!(second.plaintext_lines().iter().all(|l| !is_transaction(l)));

    let failed = p.wait_log("backend server failed, trying the next", 1);
    let error = failed["error"].as_str().unwrap();
    assert!(error.contains(&first.addr.to_string()), "{error}");
    assert!(error.contains(why), "{error}");
    let session = p.wait_log("session", 1);
    assert_eq!(session["messages"], 1, "{session}");
    assert_eq!(session["backend_tls"], "TLSv1.3", "{session}");
    assert_eq!(failures(&p, "b", first.addr), 1.0);
    assert_eq!(failures(&p, "b", second.addr), 0.0);
}

#[test]
fn a_pool_fails_over_from_a_certificate_that_does_not_verify() {
    fails_over_after(
        StartTls::Good(server_config(&pki::leaf(&["other.example.test"]))),
        "not valid for name \"backend.example.test\"",
    );
}

#[test]
fn a_pool_fails_over_from_a_server_that_stopped_offering_starttls() {
    fails_over_after(StartTls::NotOffered, "does not offer STARTTLS");
}

/// `tls_verify = false`: `run` warns at start, and a self-signed
/// certificate for another name (which the same proxy without
/// `tls_verify = false` refuses) carries the session.
#[test]
fn tls_verify_false_warns_at_start_and_delivers_to_an_unverifiable_certificate() {
    let self_signed = rcgen::generate_simple_self_signed(vec!["nobody.invalid".into()]).unwrap();
    let config = server_config_pem(
        &self_signed.cert.pem(),
        &self_signed.signing_key.serialize_pem(),
    );
    let fake = StartTlsBackend::start(StartTls::Good(config));
    let servers = format!("servers = [\"{}\"]\ntls = \"starttls\"\n", fake.addr);

    // Verified (the default), the certificate does not pass.
    let verified = Proxy::start(ProxyConfig::standard(&servers));
    let down = verified.wait_log("backend server down (health probe failed)", 1);
    assert!(
        down["error"].as_str().unwrap().contains("TLS handshake"),
        "{down}"
    );
    drop(verified);

    let p = Proxy::start(ProxyConfig::standard(&format!(
        "{servers}tls_verify = false\n"
    )));
    let warning = p
        .logs_with("backend tls: tls_verify = false: the backend's certificate is NOT verified (anyone on the path can impersonate it)");
    assert_eq!(warning.len(), 1, "{}", p.all_logs());
    assert_eq!(warning[0]["level"], "WARN", "{}", warning[0]);
    assert_eq!(warning[0]["backend"], "b", "{}", warning[0]);
    assert_eq!(warning[0]["tls"], "starttls", "{}", warning[0]);
    assert!(p.logs_with("backend tls").is_empty(), "no 'verified' line");

    let r = deliver(&p, "mx1.example.test", "unverified-hop");
    assert!(r.starts_with("250 "), "{r}");
    let tls = fake.tls_lines();
    assert!(
        tls.iter().any(|l| l == "Subject: unverified-hop"),
        "{tls:?}"
    );
    assert!(fake.plaintext_lines().iter().all(|l| !is_transaction(l)));
    let s = p.wait_log("session", 1);
    assert_eq!(s["backend_tls"], "TLSv1.3", "{s}");
}

/// Without `tls_name` the name verified is the server's IP address from
/// `servers`, as rustls verifies a `ServerName::IpAddress`: against the
/// certificate's IP SANs (a DNS SAN or a CN of "127.0.0.1" would not do).
/// Pool "b" presents a leaf with the IP SAN 127.0.0.1 and delivers; pool
/// "t2" presents one with only a DNS name and gets 421.
#[test]
fn without_tls_name_the_server_ip_is_verified_against_an_ip_san() {
    let with_ip = StartTlsBackend::start(StartTls::Good(server_config(&pki::leaf(&[
        "backend.example.test",
        "127.0.0.1",
    ]))));
    let without_ip = StartTlsBackend::start(StartTls::Good(backend_cert_config()));
    let p = Proxy::start(
        ProxyConfig::standard(&starttls_pool(&[with_ip.addr], None))
            .append(&format!(
                "\n[[backend]]\nname = \"t2\"\n{}\n",
                starttls_pool(&[without_ip.addr], None)
            ))
            .append("\n[[route]]\nsni = [\"mx.tenant2.test\"]\nbackend = \"t2\"\n"),
    );
    let start = p.logs_with("backend tls");
    assert_eq!(start.len(), 2, "{start:?}");
    assert!(
        start.iter().all(|l| l["name"] == "the server's address"),
        "{start:?}"
    );

    let r = deliver(&p, "mx1.example.test", "ip-san");
    assert!(r.starts_with("250 "), "{r}");
    assert!(with_ip.tls_lines().iter().any(|l| l == "Subject: ip-san"));

    let r = deliver(&p, "mx.tenant2.test", "no-ip-san");
    assert_eq!(r.trim_end(), UNAVAILABLE);
    let failed = p.wait_log("no backend server available", 1);
    let error = failed["error"].as_str().unwrap();
    assert!(
        error.contains("not valid for name") && error.contains("127.0.0.1"),
        "{error}"
    );
    assert!(without_ip.tls_lines().is_empty());
    assert!(
        without_ip
            .plaintext_lines()
            .iter()
            .all(|l| !is_transaction(l))
    );
}
