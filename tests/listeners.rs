//! Listener kinds and TLS settings: IPv4 and IPv6 side by side, implicit
//! TLS (port 465 style), TLS 1.3 session tickets off by default.

mod support;

use std::sync::Arc;

use support::*;

#[test]
fn ipv4_and_ipv6_listeners_and_an_implicit_tls_listener() {
    let config = ProxyConfig::sink().append(
        r#"
[[listener]]
address = "[::1]:0"
backend = "b"

[[listener]]
address = "127.0.0.1:0"
mode = "implicit"
backend = "b"
"#,
    );
    let proxy = Proxy::start(config);
    assert_eq!(proxy.addrs.len(), 3);
    assert!(proxy.addrs[1].is_ipv6(), "{:?}", proxy.addrs);

    let mut c = Smtp::connect(proxy.addrs[1]);
    c.expect("220 mx1.example.test");
    c.cmd("STARTTLS", "220");
    let mut c = c
        .start_tls(Some("mx1.example.test"), "mx1.example.test")
        .unwrap();
    c.cmd("EHLO v6.client.test", "250-");
    c.cmd("QUIT", "221");

    // Implicit TLS: the handshake comes first, then the backend's session.
    let tcp = std::net::TcpStream::connect(proxy.addrs[2]).unwrap();
    tcp.set_read_timeout(Some(TIMEOUT)).unwrap();
    let config = client_config(&[&rustls::version::TLS13]);
    let conn =
        rustls::ClientConnection::new(Arc::new(config), "mx1.example.test".try_into().unwrap())
            .unwrap();
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    use std::io::{Read, Write};
    // The greeting comes inside TLS, before the client says anything.
    let mut buf = [0u8; 512];
    let n = tls.read(&mut buf).unwrap();
    assert_eq!(
        String::from_utf8_lossy(&buf[..n]),
        "220 mx1.example.test ESMTP starttls-proxy\r\n"
    );
    tls.write_all(b"EHLO implicit.client.test\r\n").unwrap();
    let n = tls.read(&mut buf).unwrap();
    let reply = String::from_utf8_lossy(&buf[..n]);
    assert!(reply.starts_with("250-mx1.example.test"), "{reply}");
    assert!(!reply.contains("STARTTLS"), "{reply}");
    tls.write_all(b"QUIT\r\n").unwrap();
    let n = tls.read(&mut buf).unwrap();
    assert!(
        buf[..n].starts_with(b"221"),
        "{:?}",
        String::from_utf8_lossy(&buf[..n])
    );
    proxy.wait_log("session", 2);
    let kinds: Vec<String> = proxy
        .logs_with("session")
        .iter()
        .map(|s| s["tls"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(kinds, ["starttls", "implicit"]);
}

/// Connects twice with one client config; whether the second resumed.
fn second_handshake_resumes(proxy: &Proxy) -> bool {
    let config = Arc::new(client_config(&[&rustls::version::TLS13]));
    let mut kinds = Vec::new();
    for _ in 0..2 {
        let mut c = Smtp::connect(proxy.addr());
        c.expect("220");
        c.cmd("STARTTLS", "220");
        let mut c = c
            .start_tls_shared(config.clone(), "mx1.example.test")
            .unwrap();
        // Reading a reply also processes any NewSessionTicket sent after the handshake.
        c.cmd("EHLO client.test", "250");
        kinds.push(c.resumed);
        c.cmd("QUIT", "221");
    }
    assert!(!kinds[0]);
    kinds[1]
}

#[test]
fn no_tls13_session_tickets_by_default() {
    let proxy = Proxy::start(ProxyConfig::sink());
    assert!(
        !second_handshake_resumes(&proxy),
        "session_tickets = 0 must send no tickets"
    );
}

#[test]
fn session_tickets_when_configured() {
    let proxy = Proxy::start(ProxyConfig::sink().replace("[tls]", "[tls]\nsession_tickets = 2"));
    assert!(
        second_handshake_resumes(&proxy),
        "session_tickets = 2 should allow resumption"
    );
}

#[test]
fn swaks_delivers_over_implicit_tls() {
    let proxy = Proxy::start(ProxyConfig::with(
        r#"mode = "implicit""#,
        r#"sink = "{dir}/mail""#,
    ));
    let out = std::process::Command::new("swaks")
        .args([
            "-s",
            &proxy.addr().ip().to_string(),
            "-p",
            &proxy.port().to_string(),
            "--tlsc",
        ])
        .args(["--tls-verify", "--tls-ca-path"])
        .arg(certs().join("ca.pem"))
        .args([
            "--tls-sni",
            "mx1.example.test",
            "--to",
            "rcpt@example.test",
            "--timeout",
            "20",
        ])
        .output()
        .expect("swaks (installed by scripts/install-test-deps.sh)");
    let t = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{t}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(t.contains("<~  220 mx1.example.test ESMTP"), "{t}");
    assert_eq!(proxy.sink_messages().len(), 1);
}
