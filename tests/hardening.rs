//! Limits that hold after TLS, bytes never forwarded unchecked, and
//! shutdown at every step (issue #10), against the real binary.

mod support;

use std::io::Write;
use std::time::{Duration, Instant};

use support::*;

fn sigterm(proxy: &Proxy) {
    let st = std::process::Command::new("kill")
        .args(["-TERM", &proxy.pid().to_string()])
        .status()
        .unwrap();
    assert!(st.success());
}

const SHUTTING_DOWN: &str = "421 4.3.2 mx1.example.test Service shutting down, try again later\r\n";

#[test]
fn local_errors_after_tls_count_towards_max_errors() {
    let b = FakeBackend::start(FakeBehaviour::Normal);
    let proxy =
        Proxy::start(ProxyConfig::servers(&[b.addr]).append("\n[limits]\nmax_errors = 3\n"));
    let mut c = tls_session(&proxy);
    c.cmd("EHLO client.test", "250");
    c.cmd("STARTTLS", "554 5.5.1");
    c.cmd("NOOP", "250");
    c.cmd("XCLIENT ADDR=192.0.2.66", "550 5.7.0");
    c.send_raw(b"NOOP\x0b\r\n");
    assert_eq!(
        c.reply(),
        "500 5.5.2 Error: control character in command\r\n"
    );
    assert_eq!(
        c.reply(),
        "421 4.7.0 mx1.example.test Error: too many errors\r\n"
    );
    assert!(c.closed());
    assert_eq!(proxy.wait_log("session", 1)["outcome"], "refused");
    assert!(!b.transcript().contains("XCLIENT"), "{}", b.transcript());
}

/// A client dripping one byte at a time keeps making progress, so only
/// the content deadline cuts it; the backend gets no terminator and
/// keeps nothing.
#[test]
fn a_dripping_client_is_cut_by_the_data_timeout() {
    let b = FakeBackend::start(FakeBehaviour::Normal);
    let proxy = Proxy::start(
        ProxyConfig::servers(&[b.addr]).append("\n[timeouts]\ndata = \"2s\"\ncommand = \"5m\"\n"),
    );
    let mut c = tls_session(&proxy);
    c.cmd("EHLO client.test", "250");
    c.cmd("MAIL FROM:<a@sender.test>", "250");
    c.cmd("RCPT TO:<b@example.test>", "250");
    c.cmd("DATA", "354");
    let start = Instant::now();
    let mut tcp_side = c;
    // The client's pace, not a synchronisation: 5 bytes a second.
    let reply = loop {
        tcp_side.send_raw(b"x");
        std::thread::sleep(Duration::from_millis(200));
        if start.elapsed() > Duration::from_secs(2) {
            break tcp_side.reply();
        }
    };
    assert_eq!(
        reply,
        "421 4.4.2 mx1.example.test Error: timeout exceeded\r\n"
    );
    let elapsed = start.elapsed();
    assert!(elapsed < Duration::from_secs(6), "{elapsed:?}");
    wait_for("the backend connection to close", TIMEOUT, || {
        proxy.find_log("session")
    });
    let t = b.transcript();
    let content = &t[t.find("DATA\r\n").unwrap() + 6..];
    assert!(content.starts_with("xxx"), "{t:?}");
    assert!(
        !content.contains('.'),
        "a terminator reached the backend: {t:?}"
    );
}

#[test]
fn bdat_to_a_backend_without_chunking_never_reaches_it() {
    let b = FakeBackend::start(FakeBehaviour::Normal);
    let proxy = Proxy::start(ProxyConfig::servers(&[b.addr]));
    let mut c = tls_session(&proxy);
    let ehlo = c.cmd("EHLO client.test", "250");
    assert!(!ehlo.contains("CHUNKING"), "{ehlo}");
    c.cmd("MAIL FROM:<a@sender.test>", "250");
    c.cmd("RCPT TO:<b@example.test>", "250");
    let chunk = b"XCLIENT ADDR=192.0.2.66\r\nMAIL FROM:<evil@attacker.test>\r\nRCPT TO:<x@example.test>\r\n";
    c.send_raw(format!("BDAT {} LAST\r\n", chunk.len()).as_bytes());
    c.send_raw(chunk);
    assert_eq!(c.reply(), "502 5.5.1 Error: BDAT without CHUNKING\r\n");
    // In step again: the next command is the client's, answered by the backend.
    assert_eq!(c.cmd("NOOP", "250"), "250 2.0.0 Ok (backend noop)\r\n");
    c.cmd("QUIT", "221");
    let t = b.transcript();
    assert!(!t.contains("BDAT"), "{t:?}");
    assert!(!t.contains("XCLIENT"), "{t:?}");
    assert!(!t.contains("attacker"), "{t:?}");
}

#[test]
fn plaintext_bdat_without_chunking_offered_starts_no_relay() {
    let b = FakeBackend::start(FakeBehaviour::Normal);
    let proxy = Proxy::start(ProxyConfig::servers(&[b.addr]));
    let mut c = Smtp::connect(proxy.addr());
    c.expect("220");
    let ehlo = c.cmd("EHLO client.test", "250");
    assert!(!ehlo.contains("CHUNKING"), "{ehlo}");
    let chunk = b"MAIL FROM:<evil@attacker.test>\r\n";
    c.send_raw(format!("BDAT {} LAST\r\n", chunk.len()).as_bytes());
    c.send_raw(chunk);
    assert_eq!(c.reply(), "502 5.5.1 Error: BDAT without CHUNKING\r\n");
    // The chunk was not read as a MAIL command (which would start a relay).
    c.cmd("NOOP", "250 2.0.0 Ok");
    c.cmd("QUIT", "221");
    assert_eq!(b.sessions(), 0);
}

/// After a 334 the client's line is an AUTH continuation: relayed as is,
/// whatever it reads like (`DATA` and `STARTTLS` are valid base64).
#[test]
fn auth_continuation_lines_are_data_not_commands() {
    let b = ScriptedBackend::start(
        "220 scripted.test ESMTP",
        &[
            (
                "EHLO",
                "250-scripted.test\r\n250-AUTH LOGIN\r\n250 8BITMIME",
            ),
            ("AUTH LOGIN", "334 VXNlcm5hbWU6"),
            ("DATA", "334 UGFzc3dvcmQ6"),
            ("STARTTLS", "235 2.7.0 Authentication successful"),
            ("NOOP", "250 2.0.0 scripted noop"),
        ],
    );
    let proxy = Proxy::start(ProxyConfig::servers(&[b.addr]));
    let mut c = tls_session(&proxy);
    c.cmd("EHLO client.test", "250");
    assert_eq!(c.cmd("AUTH LOGIN", "334"), "334 VXNlcm5hbWU6\r\n");
    assert_eq!(c.cmd("DATA", "334"), "334 UGFzc3dvcmQ6\r\n");
    assert_eq!(
        c.cmd("STARTTLS", "235"),
        "235 2.7.0 Authentication successful\r\n"
    );
    assert_eq!(c.cmd("NOOP", "250"), "250 2.0.0 scripted noop\r\n");
    c.cmd("QUIT", "221");
    let session = b
        .transcripts()
        .into_iter()
        .find(|t| t.contains("AUTH LOGIN"))
        .unwrap();
    assert!(
        session.ends_with("AUTH LOGIN\r\nDATA\r\nSTARTTLS\r\nNOOP\r\nQUIT\r\n"),
        "{session:?}"
    );
}

/// Per-IP limits count an IPv6 /64 as one client: addresses from one
/// site, given by a trusted balancer's PROXY headers.
#[test]
fn ipv6_clients_of_one_prefix_share_the_per_ip_limit() {
    let proxy = Proxy::start(
        ProxyConfig::with(
            "proxy_protocol = { version = 1, trusted = [\"127.0.0.0/8\"] }",
            "sink = \"{dir}/mail\"",
        )
        .append("\n[limits]\nmax_connections_per_ip = 50\n"),
    );
    let header = |host: &str| format!("PROXY TCP6 {host} 2001:db8::25 40000 25");
    let mut held = Vec::new();
    for i in 1..=50 {
        let mut c = Smtp::connect_proxied(proxy.addr(), &header(&format!("2001:db8:5:6::{i:x}")));
        c.expect("220");
        held.push(c);
    }
    let mut c51 = Smtp::connect_proxied(proxy.addr(), &header("2001:db8:5:6:ffff::1"));
    assert_eq!(
        c51.reply(),
        "421 4.7.0 mx1.example.test Error: too many connections from your address\r\n"
    );
    let mut other_site = Smtp::connect_proxied(proxy.addr(), &header("2001:db8:5:7::1"));
    other_site.expect("220");
    held[0].cmd("QUIT", "221");
}

/// A SIGTERM while the proxy is still connecting to the backend (here:
/// the XCLIENT name lookup, against a DNS server that never answers)
/// ends with 421 at the grace, not a reset when the process exits.
#[test]
fn sigterm_while_connecting_to_the_backend_gives_421() {
    let silent_dns = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let b = ScriptedBackend::start(
        "220 scripted.test ESMTP",
        &[(
            "EHLO",
            "250-scripted.test\r\n250-XCLIENT NAME ADDR PORT PROTO HELO\r\n250 8BITMIME",
        )],
    );
    // Behind a balancer, so the client has a routable address (resolvers
    // answer loopback PTR queries themselves).
    let proxy = Proxy::start(
        ProxyConfig::with(
            "proxy_protocol = { version = 1, trusted = [\"127.0.0.0/8\"] }",
            &format!("servers = [\"{}\"]\nidentity = \"xclient\"", b.addr),
        )
        .append(&format!(
            "\n[dns]\nnameservers = [\"{}\"]\n[timeouts]\nshutdown_grace = \"1s\"\n",
            silent_dns.local_addr().unwrap()
        )),
    );
    let mut c = Smtp::connect_proxied(proxy.addr(), "PROXY TCP4 203.0.113.9 127.0.0.1 40000 25");
    c.expect("220");
    c.cmd("EHLO client.test", "250");
    c.cmd("STARTTLS", "220");
    let mut c = c
        .start_tls(Some("mx1.example.test"), "mx1.example.test")
        .unwrap();
    // The proxy looks the client's name up right after the handshake.
    let mut buf = [0u8; 512];
    silent_dns.set_read_timeout(Some(TIMEOUT)).unwrap();
    silent_dns.recv_from(&mut buf).expect("the PTR query");
    let start = Instant::now();
    sigterm(&proxy);
    assert_eq!(c.reply(), SHUTTING_DOWN);
    assert!(
        start.elapsed() < Duration::from_secs(4),
        "{:?}",
        start.elapsed()
    );
    assert!(
        !b.transcripts().iter().any(|t| t.contains("XCLIENT")),
        "{:?}",
        b.transcripts()
    );
}

/// A SIGTERM in the middle of a TLS handshake: the handshake finishes in
/// the grace and the client gets 421 inside TLS.
#[test]
fn sigterm_mid_handshake_gives_421_inside_tls() {
    let mut proxy =
        Proxy::start(ProxyConfig::sink().append("\n[timeouts]\nshutdown_grace = \"5s\"\n"));
    let mut c = Smtp::connect(proxy.addr());
    c.expect("220");
    c.cmd("EHLO client.test", "250");
    c.cmd("STARTTLS", "220");
    let mut tcp = c.into_tcp();
    let name = rustls::pki_types::ServerName::try_from("mx1.example.test").unwrap();
    let config = std::sync::Arc::new(client_config(&[&rustls::version::TLS13]));
    let mut tls = rustls::ClientConnection::new(config, name).unwrap();
    // ClientHello out, the server's whole flight in: only the client's
    // Finished is missing.
    tls.write_tls(&mut tcp).unwrap();
    while tls.is_handshaking() && !tls.wants_write() {
        tls.read_tls(&mut tcp).unwrap();
        tls.process_new_packets().unwrap();
    }
    sigterm(&proxy);
    wait_for("the proxy to start draining", TIMEOUT, || {
        proxy.find_log("shutting down: no new connections, draining sessions")
    });
    while tls.wants_write() {
        tls.write_tls(&mut tcp).unwrap();
    }
    let mut stream = rustls::Stream::new(&mut tls, &mut tcp);
    let mut got = String::new();
    let mut buf = [0u8; 512];
    while !got.ends_with("\r\n") {
        let n = std::io::Read::read(&mut stream, &mut buf).unwrap();
        assert!(n > 0, "closed before a reply: {got:?}");
        got.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    assert_eq!(got, SHUTTING_DOWN);
    let _ = stream.flush();
    wait_for("proxy exit", TIMEOUT, || (!proxy.alive()).then_some(()));
}

/// `bare_newline = "strict"`: a command line ending in a bare LF gets
/// 521 and a close, before TLS and after; "normal" takes it (as Postfix).
#[test]
fn strict_refuses_bare_lf_in_commands_before_and_after_tls() {
    let strict = ProxyConfig::sink().append("\n[limits]\nbare_newline = \"strict\"\n");
    let proxy = Proxy::start(strict);
    let mut c = Smtp::connect(proxy.addr());
    c.expect("220");
    c.send_raw(b"NOOP\n");
    assert_eq!(
        c.reply(),
        "521 5.5.2 mx1.example.test Error: bare <LF> received\r\n"
    );
    assert!(c.closed());
    let mut c = tls_session(&proxy);
    c.cmd("EHLO client.test", "250");
    c.send_raw(b"RSET\n");
    assert_eq!(
        c.reply(),
        "521 5.5.2 mx1.example.test Error: bare <LF> received\r\n"
    );
    assert!(c.closed());

    let normal = Proxy::start(ProxyConfig::sink());
    let mut c = Smtp::connect(normal.addr());
    c.expect("220");
    c.send_raw(b"NOOP\n");
    c.expect("250");
}

/// The session line names the HELO said last (inside TLS) and, when it
/// differs, the one said before STARTTLS.
#[test]
fn the_session_log_names_the_helo_said_inside_tls() {
    let proxy = Proxy::start(ProxyConfig::sink());
    let mut c = Smtp::connect(proxy.addr());
    c.expect("220");
    c.cmd("EHLO before.client.test", "250");
    c.cmd("STARTTLS", "220");
    let mut c = c
        .start_tls(Some("mx1.example.test"), "mx1.example.test")
        .unwrap();
    c.cmd("EHLO after.client.test", "250");
    c.cmd("QUIT", "221");
    let log = proxy.wait_log("session", 1);
    assert_eq!(log["helo"], "after.client.test");
    assert_eq!(log["helo_pre_tls"], "before.client.test");

    let mut c = tls_session(&proxy);
    c.cmd("EHLO client.test", "250");
    c.cmd("QUIT", "221");
    let log = proxy.wait_log("session", 2);
    assert_eq!(log["helo"], "client.test");
    assert!(log.get("helo_pre_tls").is_none(), "{log}");
}

/// Bytes pipelined after STARTTLS are discarded and counted; a 421
/// greeting while every backend is down is counted as a rejection.
#[test]
fn starttls_injection_and_backend_down_greetings_are_counted() {
    let b = FakeBackend::start(FakeBehaviour::Normal);
    let servers = format!("servers = [\"{}\"]", b.addr);
    let proxy = Proxy::start(
        ProxyConfig::servers(&[b.addr])
            .replace(&servers, &format!("{servers}\nhealth_interval = \"1s\""))
            .append("\n[metrics]\nlisten = \"127.0.0.1:0\"\n"),
    );
    let mut c = Smtp::connect(proxy.addr());
    c.expect("220");
    c.cmd("EHLO client.test", "250");
    c.send_raw(b"STARTTLS\r\nMAIL FROM:<injected@attacker.test>\r\n");
    c.expect("220 2.0.0");
    let mut c = c
        .start_tls(Some("mx1.example.test"), "mx1.example.test")
        .unwrap();
    c.cmd("EHLO client.test", "250");
    c.cmd("QUIT", "221");
    let series = format!(
        "starttls_proxy_starttls_injection_total{{listener=\"{}\"}}",
        proxy.addr()
    );
    assert_eq!(proxy.metric(&series), Some(1.0));
    assert!(!b.transcript().contains("injected"), "{}", b.transcript());

    b.stop();
    wait_for("the 421 greeting", TIMEOUT, || {
        let mut c = Smtp::connect(proxy.addr());
        c.reply().starts_with("421 4.4.1").then_some(())
    });
    let rejected = "starttls_proxy_connections_rejected_total{reason=\"backend_down\"}";
    assert!(proxy.metric(rejected).unwrap_or(0.0) >= 1.0);
}

/// Connections from a trusted balancer that have not sent their PROXY
/// header yet hold slots of max_connections: a balancer cannot open more.
#[test]
fn connections_still_sending_their_proxy_header_count_against_max_connections() {
    let proxy = Proxy::start(
        ProxyConfig::with(
            "proxy_protocol = { version = 1, trusted = [\"127.0.0.0/8\"] }",
            "sink = \"{dir}/mail\"",
        )
        .append("\n[limits]\nmax_connections = 2\n"),
    );
    let mut pending: Vec<std::net::TcpStream> = (0..2)
        .map(|_| std::net::TcpStream::connect(proxy.addr()).unwrap())
        .collect();
    // Both are counted once accepted: poll until a third is turned away.
    let mut third = wait_for("the third connection to be refused", TIMEOUT, || {
        let mut c =
            Smtp::connect_proxied(proxy.addr(), "PROXY TCP4 198.51.100.3 192.0.2.25 40000 25");
        let r = c.reply();
        r.starts_with("421").then_some(r)
    });
    assert_eq!(
        third,
        "421 4.7.0 mx1.example.test Error: too many connections\r\n"
    );
    third.clear();
    // A pending one that sends its header is served in its slot.
    pending[0]
        .write_all(b"PROXY TCP4 198.51.100.1 192.0.2.25 40000 25\r\n")
        .unwrap();
    let mut first = std::io::BufReader::new(pending.remove(0));
    let mut greeting = String::new();
    std::io::BufRead::read_line(&mut first, &mut greeting).unwrap();
    assert!(greeting.starts_with("220 "), "{greeting}");
}
