//! `identity = "xclient"`: the backend learns the client's address, port,
//! HELO and forward-confirmed name, every value xtext-encoded; the name
//! comes from a real DNS server (dnsmasq on loopback). The clients arrive
//! through a PROXY-protocol listener with addresses of 203.0.113.0/24
//! (TEST-NET-3), because resolvers answer loopback PTR queries as
//! `localhost` without asking DNS.

mod support;

use std::net::SocketAddr;
use std::process::Command;

use support::*;

/// 203.0.113.5 has a PTR that confirms; .6's PTR names a host whose
/// address is another (a liar); .7 has no PTR at all.
fn dns() -> DnsServer {
    DnsServer::start(&[
        "--host-record=client5.sender.test,203.0.113.5",
        "--ptr-record=6.113.0.203.in-addr.arpa,liar.sender.test",
        "--host-record=liar.sender.test,203.0.113.99",
    ])
}

fn xclient_config(backend: SocketAddr, dns: &DnsServer) -> ProxyConfig {
    ProxyConfig::servers(&[backend])
        .replace(
            "tls = \"opportunistic\"",
            "tls = \"opportunistic\"\nproxy_protocol = { version = 1, trusted = [\"127.0.0.0/8\"] }",
        )
        .replace(
            &format!("servers = [\"{backend}\"]"),
            &format!("servers = [\"{backend}\"]\nidentity = \"xclient\""),
        )
        .append(&format!("\n[dns]\nnameservers = [\"{}\"]\n", dns.addr))
}

/// A TLS session from `from`, one MAIL, QUIT; returns the XCLIENT line the
/// backend got.
fn xclient_line_for(from: &str) -> String {
    let dns = dns();
    let b = FakeBackend::start(FakeBehaviour::Normal);
    let proxy = Proxy::start(xclient_config(b.addr, &dns));
    let mut c = Smtp::connect_proxied(
        proxy.addr(),
        &format!("PROXY TCP4 {from} 127.0.0.1 40000 25"),
    );
    c.expect("220");
    c.cmd("EHLO odd+helo.client.test", "250");
    c.cmd("STARTTLS", "220");
    let mut c = c
        .start_tls(Some("mx1.example.test"), "mx1.example.test")
        .expect("handshake");
    let ehlo = c.cmd("EHLO odd+helo.client.test", "250");
    assert!(
        !ehlo.contains("XCLIENT"),
        "XCLIENT is never offered to clients: {ehlo}"
    );
    c.cmd("MAIL FROM:<a@sender.test>", "250");
    c.cmd("QUIT", "221");
    let t = b.transcript();
    let mut lines = t.lines();
    assert_eq!(lines.next(), Some("EHLO mx1.example.test"), "{t}");
    let line = lines.next().unwrap_or_default().to_string();
    assert_eq!(
        lines.next(),
        Some("EHLO odd+helo.client.test"),
        "the client's EHLO follows the XCLIENT: {t}"
    );
    line
}

#[test]
fn a_forward_confirmed_name_is_passed_on() {
    let line = xclient_line_for("203.0.113.5");
    assert_eq!(
        line,
        "XCLIENT ADDR=203.0.113.5 PORT=40000 PROTO=ESMTP HELO=odd+2Bhelo.client.test NAME=client5.sender.test"
    );
}

#[test]
fn a_ptr_that_does_not_confirm_is_unavailable() {
    let line = xclient_line_for("203.0.113.6");
    assert!(line.starts_with("XCLIENT ADDR=203.0.113.6 "), "{line}");
    assert!(line.ends_with(" NAME=[UNAVAILABLE]"), "{line}");
    assert!(!line.contains("liar"), "{line}");
}

#[test]
fn no_ptr_is_unavailable() {
    let line = xclient_line_for("203.0.113.7");
    assert!(line.ends_with(" NAME=[UNAVAILABLE]"), "{line}");
}

#[test]
fn a_backend_that_does_not_offer_xclient_is_down_for_an_xclient_pool() {
    let dns = dns();
    // Postfix without smtpd_authorized_xclient_hosts for us: no XCLIENT.
    let postfix = PostfixBackend::start(14131, &[("XCLIENT_HOSTS", "192.0.2.1")]);
    let proxy = Proxy::start(xclient_config(postfix.addr(), &dns));
    let probe = proxy.wait_log("backend server down (health probe failed)", 1);
    assert!(
        probe["error"]
            .as_str()
            .unwrap_or_default()
            .contains("does not offer XCLIENT"),
        "{probe}"
    );
    let mut c = Smtp::connect_proxied(proxy.addr(), "PROXY TCP4 203.0.113.5 127.0.0.1 40000 25");
    c.expect("421 4.4.1");
}

/// Real Postfix with smtpd_authorized_xclient_hosts: swaks (as if behind a
/// balancer, client 203.0.113.5) through the proxy; Postfix's Received
/// header names the client by its verified name and address.
#[test]
fn postfix_accepts_xclient_and_sees_the_client() {
    let dns = dns();
    let postfix = PostfixBackend::start(14132, &[]);
    let proxy = Proxy::start(xclient_config(postfix.addr(), &dns));
    assert_eq!(
        proxy.wait_log("backend health: first probe done", 1)["up"],
        1
    );
    let subject = format!("xclient-{}", std::process::id());
    let out = Command::new("swaks")
        .args(["-s", "127.0.0.1", "-p", &proxy.port().to_string()])
        .args(["--tls", "--proxy-version", "1", "--proxy-family", "TCP4"])
        .args([
            "--proxy-source",
            "203.0.113.5",
            "--proxy-source-port",
            "40000",
        ])
        .args(["--proxy-dest", "198.51.100.25", "--proxy-dest-port", "25"])
        .args(["--ehlo", "client5.sender.test"])
        .args(["--from", "sender@sender.test", "--to", "rcpt@example.test"])
        .args([
            "--header",
            &format!("Subject: {subject}"),
            "--timeout",
            "20",
        ])
        .output()
        .expect("swaks");
    let transcript = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{transcript}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let msg = postfix.delivered(&subject);
    assert!(
        msg.contains("from client5.sender.test (client5.sender.test [203.0.113.5])"),
        "Postfix did not take the XCLIENT identity:\n{msg}"
    );
}

const METRICS: &str = "\n[metrics]\nlisten = \"127.0.0.1:0\"\n";

/// `xclient_config` for a pool of several servers, with metrics.
fn xclient_pool_config(servers: &[SocketAddr], dns: &DnsServer) -> ProxyConfig {
    let list: Vec<String> = servers.iter().map(|a| format!("\"{a}\"")).collect();
    let line = format!("servers = [{}]", list.join(", "));
    ProxyConfig::servers(servers)
        .replace(
            "tls = \"opportunistic\"",
            "tls = \"opportunistic\"\nproxy_protocol = { version = 1, trusted = [\"127.0.0.0/8\"] }",
        )
        .replace(&line, &format!("{line}\nidentity = \"xclient\""))
        .append(&format!("\n[dns]\nnameservers = [\"{}\"]\n", dns.addr))
        .append(METRICS)
}

/// What a Postfix ≥ 3.8 with smtpd_authorized_xclient_hosts announces.
const EHLO_WITH_XCLIENT: &str = "250-scripted.test\r\n250-PIPELINING\r\n250-XCLIENT NAME ADDR PORT PROTO HELO LOGIN DESTADDR DESTPORT\r\n250 8BITMIME";

/// The backend, told who the client is, refuses it at XCLIENT: the client
/// gets that reply whole, and no other server is tried.
#[test]
fn a_5xx_reply_to_xclient_is_relayed_as_is_without_failover() {
    let dns = dns();
    let refusing = ScriptedBackend::start(
        "220 scripted.test ESMTP",
        &[
            ("EHLO", EHLO_WITH_XCLIENT),
            (
                "XCLIENT",
                "550-5.7.1 Client host rejected: [203.0.113.5] is listed\r\n550 5.7.1 see https://rbl.example.test",
            ),
        ],
    );
    let second = FakeBackend::start(FakeBehaviour::Normal);
    let proxy = Proxy::start(xclient_pool_config(&[refusing.addr, second.addr], &dns));
    assert_eq!(
        proxy.wait_log("backend health: first probe done", 1)["up"],
        2
    );
    let mut c = Smtp::connect_proxied(proxy.addr(), "PROXY TCP4 203.0.113.5 127.0.0.1 40000 25");
    c.expect("220");
    c.cmd("EHLO client5.sender.test", "250");
    c.cmd("STARTTLS", "220");
    let mut c = c
        .start_tls(Some("mx1.example.test"), "mx1.example.test")
        .expect("handshake");
    c.send("EHLO client5.sender.test");
    assert_eq!(
        c.reply(),
        "550-5.7.1 Client host rejected: [203.0.113.5] is listed\r\n550 5.7.1 see https://rbl.example.test\r\n"
    );
    assert!(c.closed());
    let s = proxy.wait_log("session", 1);
    assert_eq!(s["outcome"], "backend_refused_client", "{s}");
    assert_eq!(second.sessions(), 0, "failed over: {}", second.transcript());
    let failures = proxy.metric(&format!(
        "starttls_proxy_backend_connect_failures_total{{backend=\"b\",server=\"{}\"}}",
        refusing.addr
    ));
    assert_eq!(failures.unwrap_or(0.0), 0.0);
    let session = &refusing.transcripts()[1];
    assert!(
        session.contains("\r\nXCLIENT ADDR=203.0.113.5 PORT=40000 "),
        "{session}"
    );
}

/// A client that said HELO is `PROTO=SMTP`; DESTADDR and DESTPORT name
/// the address it connected to (here: the balancer's PROXY header's).
#[test]
fn xclient_says_smtp_after_helo_and_names_the_destination() {
    let dns = dns();
    let b = ScriptedBackend::start(
        "220 scripted.test ESMTP",
        &[
            ("EHLO", EHLO_WITH_XCLIENT),
            ("XCLIENT", "220 scripted.test ESMTP"),
        ],
    );
    let proxy = Proxy::start(xclient_pool_config(&[b.addr], &dns));
    let mut c = Smtp::connect_proxied(
        proxy.addr(),
        "PROXY TCP4 203.0.113.5 198.51.100.25 40000 25",
    );
    c.expect("220");
    c.cmd("HELO client5.sender.test", "250");
    c.cmd("MAIL FROM:<a@sender.test>", "250");
    c.cmd("QUIT", "221");
    proxy.wait_log("session", 1);
    let session = b.transcripts()[1].clone();
    let xclient = session
        .lines()
        .find(|l| l.starts_with("XCLIENT"))
        .unwrap_or_default();
    assert_eq!(
        xclient,
        "XCLIENT ADDR=203.0.113.5 PORT=40000 PROTO=SMTP HELO=client5.sender.test NAME=client5.sender.test DESTADDR=198.51.100.25 DESTPORT=25",
        "{session}"
    );
    assert!(
        session.contains("\r\nHELO client5.sender.test\r\nMAIL FROM:<a@sender.test>\r\n"),
        "the client's HELO follows: {session}"
    );
}
