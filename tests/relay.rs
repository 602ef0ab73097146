//! The relay after TLS: backend failures become 4xx, never 5xx or 250.

mod support;

use std::net::SocketAddr;

use support::*;

/// Port 1 on loopback: nothing listens there, connections are refused.
fn refused() -> SocketAddr {
    "127.0.0.1:1".parse().unwrap()
}

#[test]
fn every_server_down_at_the_health_probe_means_421_at_the_greeting() {
    let proxy = Proxy::start(ProxyConfig::servers(&[refused()]));
    let probe = proxy.wait_log("backend health: first probe done", 1);
    assert_eq!(probe["up"], 0);
    let mut c = Smtp::connect(proxy.addr());
    let r = c.reply();
    assert!(r.starts_with("421 4.4.1 mx1.example.test"), "{r}");
    assert!(c.closed());
    assert_eq!(proxy.wait_log("session", 1)["outcome"], "backend_down");
}

/// A backend that passed its health probe and broke afterwards: the proxy
/// finds out in the session, and the client still gets a 4xx.
fn probed_then(behaviour: Option<FakeBehaviour>) -> (FakeBackend, Proxy) {
    let b = FakeBackend::start(FakeBehaviour::Normal);
    let proxy = Proxy::start(ProxyConfig::servers(&[b.addr]));
    assert_eq!(
        proxy.wait_log("backend health: first probe done", 1)["up"],
        1
    );
    match behaviour {
        Some(x) => b.set_behaviour(x),
        None => b.stop(),
    }
    (b, proxy)
}

#[test]
fn backend_refusing_connections_gives_421() {
    let (_b, proxy) = probed_then(None);
    let mut c = tls_session(&proxy);
    c.send("EHLO client.test");
    let r = c.reply();
    assert!(r.starts_with("421 4.4.1 mx1.example.test"), "{r}");
    assert!(c.closed());
    let s = proxy.wait_log("session", 1);
    assert_eq!(s["outcome"], "backend_unavailable");
}

#[test]
fn backend_down_in_plaintext_relay_gives_421() {
    let (_b, proxy) = probed_then(None);
    let mut c = Smtp::connect(proxy.addr());
    c.expect("220");
    c.cmd("EHLO client.test", "250");
    c.send("MAIL FROM:<a@sender.test>");
    c.expect("421 4.4.1");
}

#[test]
fn failover_to_the_next_server() {
    let closing = FakeBackend::start(FakeBehaviour::Normal);
    let refusing_greeting = FakeBackend::start(FakeBehaviour::Normal);
    let good = FakeBackend::start(FakeBehaviour::Normal);
    let proxy = Proxy::start(ProxyConfig::servers(&[
        closing.addr,
        refusing_greeting.addr,
        good.addr,
        refused(),
    ]));
    // The first two broke after their probe: tried in order, then the good one.
    closing.set_behaviour(FakeBehaviour::CloseAtOnce);
    refusing_greeting.set_behaviour(FakeBehaviour::Greeting("554 5.3.2 not now"));
    let mut c = tls_session(&proxy);
    let ehlo = c.cmd("EHLO client.test", "250-fake.backend.test");
    assert!(!ehlo.contains("STARTTLS"), "{ehlo}");
    c.cmd("QUIT", "221");
    assert_eq!(good.transcript(), "EHLO client.test\r\nQUIT\r\n");
    let s = proxy.wait_log("session", 1);
    assert_eq!(s["server"], good.addr.to_string());
    let tried: Vec<String> = proxy
        .logs_with("backend server failed, trying the next")
        .iter()
        .map(|l| l["error"].as_str().unwrap_or_default().to_string())
        .collect();
    assert_eq!(tried.len(), 2, "{tried:?}");
    assert!(tried[0].starts_with(&closing.addr.to_string()), "{tried:?}");
    assert!(tried[1].contains("554 5.3.2 not now"), "{tried:?}");
}

#[test]
fn a_server_down_at_the_probe_is_tried_last() {
    let good = FakeBackend::start(FakeBehaviour::Normal);
    let proxy = Proxy::start(ProxyConfig::servers(&[refused(), good.addr]));
    assert_eq!(
        proxy.wait_log("backend health: first probe done", 1)["up"],
        1
    );
    let mut c = tls_session(&proxy);
    c.cmd("EHLO client.test", "250-fake.backend.test");
    c.cmd("QUIT", "221");
    assert_eq!(
        proxy.wait_log("session", 1)["server"],
        good.addr.to_string()
    );
    assert!(
        proxy
            .logs_with("backend server failed, trying the next")
            .is_empty(),
        "the refused server was not tried first"
    );
}

#[test]
fn a_5xx_greeting_from_the_only_backend_is_a_4xx_for_the_client() {
    let (_b, proxy) = probed_then(Some(FakeBehaviour::Greeting("554 5.7.1 go away")));
    let mut c = tls_session(&proxy);
    c.send("EHLO client.test");
    let r = c.reply();
    assert!(
        r.starts_with("421 4."),
        "never a 5xx for a backend fault: {r}"
    );
}

#[test]
fn backend_dropping_mid_data_gives_421_not_250() {
    let b = FakeBackend::start(FakeBehaviour::DropInData);
    let proxy = Proxy::start(ProxyConfig::servers(&[b.addr]));
    let mut c = tls_session(&proxy);
    c.cmd("EHLO client.test", "250");
    c.cmd("MAIL FROM:<a@sender.test>", "250");
    c.cmd("RCPT TO:<b@example.test>", "250");
    c.cmd("DATA", "354");
    c.send_raw(b"Subject: lost\r\n\r\nbody\r\n.\r\n");
    let r = c.reply();
    assert!(r.starts_with("421 4.4.2 mx1.example.test"), "{r}");
    assert!(c.closed());
    let s = proxy.wait_log("session", 1);
    assert_eq!(s["outcome"], "backend_lost");
    assert_eq!(s["messages"], 0);
}

/// The backend goes away while content is still being written to it: the
/// client gets one 421, once (the reply is not queued again for the
/// close), and nothing else.
#[test]
fn a_backend_write_failure_mid_content_gives_one_421() {
    use std::io::{Read, Write};
    let b = FakeBackend::start(FakeBehaviour::DropInData);
    let proxy = Proxy::start(ProxyConfig::servers(&[b.addr]));
    let c = plaintext_in_data(&proxy);
    let mut tcp = c.into_tcp();
    tcp.set_write_timeout(Some(std::time::Duration::from_secs(5)))
        .unwrap();
    let line = format!("{}\r\n", "x".repeat(76));
    let block = line.repeat(64 * 1024 / line.len());
    // Until the proxy stops reading (it has given up on the backend).
    for _ in 0..256 {
        if tcp.write_all(block.as_bytes()).is_err() {
            break;
        }
    }
    let _ = tcp.shutdown(std::net::Shutdown::Write);
    tcp.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tcp.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
    let got = String::from_utf8_lossy(&got);
    assert_eq!(got.matches("421 ").count(), 1, "{got:?}");
    assert!(got.starts_with("421 4.4.2 mx1.example.test"), "{got:?}");
    let s = proxy.wait_log("session", 1);
    assert_eq!(s["outcome"], "backend_lost");
    assert_eq!(s["messages"], 0);
}

#[test]
fn pipelined_transaction_replies_stay_in_order() {
    let b = FakeBackend::start(FakeBehaviour::Normal);
    let proxy = Proxy::start(ProxyConfig::servers(&[b.addr]));
    let mut c = tls_session(&proxy);
    c.cmd("EHLO client.test", "250");
    // Backend replies and the proxy's own (554 for STARTTLS, 500 for a
    // control character) interleaved in one pipelined burst.
    c.send_raw(b"NOOP\r\nSTARTTLS\r\nMAIL FROM:<a@sender.test>\r\nRCPT TO:<reject@example.test>\r\nNOOP\x0b\r\nRCPT TO:<c@example.test>\r\nDATA\r\n");
    assert_eq!(c.reply(), "250 2.0.0 Ok (backend noop)\r\n");
    assert_eq!(c.reply(), "554 5.5.1 Error: TLS already active\r\n");
    assert_eq!(c.reply(), "250 2.1.0 Sender ok\r\n");
    assert_eq!(c.reply(), "550 5.1.1 No such user\r\n");
    assert_eq!(
        c.reply(),
        "500 5.5.2 Error: control character in command\r\n"
    );
    assert_eq!(c.reply(), "250 2.1.5 Recipient ok\r\n");
    c.expect("354");
    // Bare LF line ends are normalised: the backend sees CRLF only. A lone
    // dot between bare LFs ends nothing (SMTP smuggling): it reaches the
    // backend stuffed, as content, and only the real CRLF.CRLF ends.
    c.send_raw(b"Subject: x\n\nline\n.\nQUIT\r\n.\r\nQUIT\r\n");
    c.expect("250 2.0.0 Ok: queued as FAKE");
    c.expect("221");
    let t = b.transcript();
    assert!(
        t.ends_with("DATA\r\nSubject: x\r\n\r\nline\r\n..\r\nQUIT\r\n.\r\nQUIT\r\n"),
        "{t:?}"
    );
    let log = proxy.wait_log("session", 1);
    assert_eq!(log["messages"], 1);
    assert_eq!(log["smuggling_attempts"], 1);
}

#[test]
fn bdat_chunks_pass_through() {
    let proxy = Proxy::start(ProxyConfig::sink());
    let mut c = tls_session(&proxy);
    let ehlo = c.cmd("EHLO client.test", "250");
    assert!(ehlo.contains("CHUNKING"), "{ehlo}");
    c.cmd("MAIL FROM:<a@sender.test>", "250");
    c.cmd("RCPT TO:<b@example.test>", "250");
    let part1 = b"Subject: chunks\r\n\r\n.not stuffed in BDAT\r\n";
    let part2 = b"end\r\n";
    c.send_raw(format!("BDAT {}\r\n", part1.len()).as_bytes());
    c.send_raw(part1);
    c.expect("250");
    c.send_raw(format!("BDAT {} LAST\r\n", part2.len()).as_bytes());
    c.send_raw(part2);
    c.expect("250 2.0.0 Ok: queued");
    let m = proxy.sink_messages();
    assert!(
        m[0].ends_with(b"Subject: chunks\r\n\r\n.not stuffed in BDAT\r\nend\r\n"),
        "{:?}",
        String::from_utf8_lossy(&m[0])
    );
}

#[test]
fn bdat_chunks_are_opaque_bytes() {
    let proxy = Proxy::start(ProxyConfig::sink());
    let mut c = tls_session(&proxy);
    c.cmd("EHLO client.test", "250");
    c.cmd("MAIL FROM:<a@sender.test>", "250");
    c.cmd("RCPT TO:<b@example.test>", "250");
    // Content that looks like an end of DATA and like commands: inside a
    // chunk it is data, byte for byte, and nothing answers it.
    let chunk = b"x\r\n.\r\nSTARTTLS\r\nQUIT\r\n";
    c.send_raw(format!("BDAT {} LAST\r\n", chunk.len()).as_bytes());
    c.send_raw(chunk);
    c.send("NOOP");
    c.expect("250 2.0.0 Ok: queued as");
    assert_eq!(
        c.reply(),
        "250 2.0.0 Ok\r\n",
        "exactly one reply per command, the next is NOOP's"
    );
    let m = proxy.sink_messages();
    assert!(
        m[0].ends_with(chunk),
        "{:?}",
        String::from_utf8_lossy(&m[0])
    );
}

#[test]
fn control_characters_never_reach_the_backend() {
    let b = FakeBackend::start(FakeBehaviour::Normal);
    let proxy = Proxy::start(ProxyConfig::servers(&[b.addr]));
    let mut c = tls_session(&proxy);
    c.cmd("EHLO client.test", "250");
    for line in [
        &b"DATA\x0b\r\n"[..],
        b"BDAT 5\x0cLAST\r\n",
        b"MAIL FROM:<a\x00@b>\r\n",
    ] {
        c.send_raw(line);
        assert_eq!(
            c.reply(),
            "500 5.5.2 Error: control character in command\r\n"
        );
    }
    c.cmd("QUIT", "221");
    assert_eq!(b.transcript(), "EHLO client.test\r\nQUIT\r\n");
}

#[test]
fn client_xclient_is_refused_and_never_forwarded() {
    let b = FakeBackend::start(FakeBehaviour::Normal);
    let proxy = Proxy::start(ProxyConfig::servers(&[b.addr]));
    // Before TLS: refused locally, no plaintext relay started.
    let mut c = Smtp::connect(proxy.addr());
    c.expect("220");
    c.cmd("EHLO client.test", "250");
    assert_eq!(
        c.cmd("XCLIENT ADDR=192.0.2.7 LOGIN=postmaster", "550"),
        "550 5.7.0 Error: insufficient authorization\r\n"
    );
    c.cmd("STARTTLS", "220");
    let mut c = c
        .start_tls(Some("mx1.example.test"), "mx1.example.test")
        .unwrap();
    c.cmd("EHLO client.test", "250");
    assert_eq!(
        c.cmd("XFORWARD ADDR=192.0.2.7", "550"),
        "550 5.7.0 Error: insufficient authorization\r\n"
    );
    c.cmd("QUIT", "221");
    assert!(!b.transcript().contains("192.0.2.7"), "{}", b.transcript());
}

#[test]
fn no_auth_in_a_plaintext_relay_but_after_tls() {
    let b = FakeBackend::start(FakeBehaviour::Normal);
    let proxy = Proxy::start(ProxyConfig::servers(&[b.addr]));
    let mut c = Smtp::connect(proxy.addr());
    c.expect("220");
    c.cmd("EHLO client.test", "250");
    c.cmd("MAIL FROM:<a@sender.test>", "250 2.1.0");
    c.cmd("RSET", "250");
    let ehlo = c.cmd("EHLO client.test", "250");
    assert!(
        !ehlo.contains("AUTH") && !ehlo.contains("STARTTLS"),
        "{ehlo}"
    );
    assert_eq!(
        c.cmd("AUTH PLAIN AGEAYg==", "530"),
        "530 5.7.0 Must issue a STARTTLS command first\r\n"
    );
    c.cmd("QUIT", "221");
    assert!(!b.transcript().contains("AUTH"), "{}", b.transcript());

    let mut c = tls_session(&proxy);
    let ehlo = c.cmd("EHLO client.test", "250");
    assert!(
        ehlo.contains("250-AUTH PLAIN LOGIN"),
        "after TLS the backend's AUTH is offered: {ehlo}"
    );
}

#[test]
fn backend_refusing_the_replayed_ehlo_gives_421_not_its_5xx() {
    let (b, proxy) = probed_then(Some(FakeBehaviour::RefuseEhlo));
    let mut c = Smtp::connect(proxy.addr());
    c.expect("220");
    c.cmd("EHLO client.test", "250");
    c.send("MAIL FROM:<a@sender.test>");
    let r = c.reply();
    assert!(r.starts_with("421 4.4.1"), "{r}");
    assert!(!b.transcript().contains("MAIL"), "{}", b.transcript());
}

#[test]
fn a_reply_to_nothing_closes_with_421_instead_of_answering_the_next_command() {
    let b = FakeBackend::start(FakeBehaviour::DoubleEhlo);
    let proxy = Proxy::start(ProxyConfig::servers(&[b.addr]));
    let mut c = tls_session(&proxy);
    c.send("EHLO client.test");
    assert_eq!(c.reply(), "250 fake.backend.test\r\n");
    let r = c.reply();
    assert!(r.starts_with("421 4.5.0"), "{r}");
}

#[test]
fn replies_still_reach_a_client_that_half_closed() {
    let b = FakeBackend::start(FakeBehaviour::Normal);
    let proxy = Proxy::start(ProxyConfig::servers(&[b.addr]));
    let mut c = Smtp::connect(proxy.addr());
    c.expect("220");
    c.cmd("EHLO client.test", "250");
    c.send_raw(b"MAIL FROM:<a@sender.test>\r\nRCPT TO:<b@example.test>\r\nQUIT\r\n");
    c.shutdown_write();
    assert_eq!(c.reply(), "250 2.1.0 Sender ok\r\n");
    assert_eq!(c.reply(), "250 2.1.5 Recipient ok\r\n");
    assert_eq!(c.reply(), "221 2.0.0 Bye\r\n");
}

/// A plaintext session (the opportunistic relay) that has had its 354.
fn plaintext_in_data(proxy: &Proxy) -> Smtp {
    let mut c = Smtp::connect(proxy.addr());
    c.expect("220");
    c.cmd("EHLO client.test", "250");
    c.cmd("MAIL FROM:<a@sender.test>", "250");
    c.cmd("RCPT TO:<b@example.test>", "250");
    c.cmd("DATA", "354");
    c
}

/// A client that half-closes in the middle of its content can never end
/// the message: the session ends at once, and the backend connection goes
/// without a terminator (it keeps nothing), instead of both being held
/// until the command timeout.
#[test]
fn a_client_closing_mid_content_ends_the_session_at_once() {
    let b = FakeBackend::start(FakeBehaviour::Normal);
    let proxy = Proxy::start(
        ProxyConfig::servers(&[b.addr])
            .append("\n[timeouts]\ncommand = \"120s\"\ndata = \"120s\"\n"),
    );
    let mut c = plaintext_in_data(&proxy);
    c.send_raw(b"Subject: cut\r\n\r\nhalf a mess");
    let start = std::time::Instant::now();
    c.shutdown_write();
    let session = proxy.wait_log("session", 1);
    assert!(
        start.elapsed() < std::time::Duration::from_secs(10),
        "the session lasted {:?} after the client closed",
        start.elapsed()
    );
    assert_eq!(session["outcome"], "client_closed");
    assert_eq!(session["messages"], 0);
    let t = b.transcript();
    assert!(t.contains("half a mess"), "{t:?}");
    assert!(
        !t.contains("\r\n.\r\n"),
        "a terminator reached the backend: {t:?}"
    );
}

#[test]
fn proxy_v1_header_precedes_everything_the_backend_reads() {
    let b = FakeBackend::start(FakeBehaviour::Normal);
    let config = ProxyConfig::servers(&[b.addr]).replace(
        &format!("servers = [\"{}\"]", b.addr),
        &format!("servers = [\"{}\"]\nidentity = \"proxy-v1\"", b.addr),
    );
    let proxy = Proxy::start(config);
    let mut c = Smtp::connect(proxy.addr());
    c.expect("220");
    c.cmd("EHLO client.test", "250");
    c.cmd("MAIL FROM:<a@sender.test>", "250");
    c.cmd("QUIT", "221");
    let t = b.transcript();
    let first = t.lines().next().unwrap();
    assert!(
        first.starts_with("PROXY TCP4 127.0.0.1 127.0.0.1 "),
        "{t:?}"
    );
    assert!(first.ends_with(&format!(" {}", proxy.port())), "{t:?}");
    assert!(
        t.ends_with("EHLO client.test\r\nMAIL FROM:<a@sender.test>\r\nQUIT\r\n"),
        "{t:?}"
    );
}

/// The sink's stored message without its Return-Path/Delivered-To lines.
fn stored_body(proxy: &Proxy) -> String {
    let m = proxy.sink_messages();
    let text = String::from_utf8_lossy(m.last().expect("a stored message")).into_owned();
    text.split_once("Delivered-To: b@example.test\r\n")
        .expect("sink header")
        .1
        .to_string()
}

#[test]
fn received_header_records_the_tls_facts_for_data_and_bdat() {
    let proxy = Proxy::start(ProxyConfig::standard(
        "sink = \"{dir}/mail\"\nreceived_header = true",
    ));
    let mut c = tls_session(&proxy);
    c.cmd("EHLO client.test", "250");
    c.cmd("MAIL FROM:<a@sender.test>", "250");
    c.cmd("RCPT TO:<b@example.test>", "250");
    c.cmd("DATA", "354");
    c.send_raw(b"Subject: traced\r\n\r\nbody\r\n.\r\n");
    c.expect("250 2.0.0 Ok: queued");
    let body = stored_body(&proxy);
    let (trace, rest) = body.split_once(";\r\n\t").unwrap();
    assert_eq!(
        trace,
        "Received: from client.test ([127.0.0.1])\r\n\tby mx1.example.test (starttls-proxy) with ESMTPS\r\n\t(using TLSv1.3 with cipher TLS13_AES_128_GCM_SHA256, SNI mx1.example.test)"
    );
    let (_date, original) = rest.split_once("\r\n").unwrap();
    assert_eq!(original, "Subject: traced\r\n\r\nbody\r\n");

    // BDAT: the first chunk is announced larger by the header's length.
    c.cmd("MAIL FROM:<a@sender.test>", "250");
    c.cmd("RCPT TO:<b@example.test>", "250");
    let chunk = b"Subject: chunked\r\n\r\nbody\r\n";
    c.send_raw(format!("BDAT {} LAST\r\n", chunk.len()).as_bytes());
    c.send_raw(chunk);
    c.expect("250 2.0.0 Ok: queued");
    let body = stored_body(&proxy);
    assert!(
        body.starts_with("Received: from client.test ([127.0.0.1])\r\n"),
        "{body}"
    );
    assert!(
        body.ends_with("+0000\r\nSubject: chunked\r\n\r\nbody\r\n"),
        "{body}"
    );
}

#[test]
fn received_header_in_a_plaintext_relay_says_esmtp() {
    let proxy = Proxy::start(ProxyConfig::standard(
        "sink = \"{dir}/mail\"\nreceived_header = true",
    ));
    let mut c = Smtp::connect(proxy.addr());
    c.expect("220");
    c.cmd("EHLO plain.client.test", "250");
    c.cmd("MAIL FROM:<a@sender.test>", "250");
    c.cmd("RCPT TO:<b@example.test>", "250");
    c.cmd("DATA", "354");
    c.send_raw(b"Subject: plain\r\n\r\nx\r\n.\r\n");
    c.expect("250 2.0.0 Ok: queued");
    let body = stored_body(&proxy);
    assert!(body.starts_with("Received: from plain.client.test ([127.0.0.1])\r\n\tby mx1.example.test (starttls-proxy) with ESMTP;\r\n\t"), "{body}");
}

/// A TLS session to a fake backend with `behaviour`, up to RCPT.
fn session_with(behaviour: FakeBehaviour, extra: &str) -> (Proxy, Smtp) {
    let b = FakeBackend::start(behaviour);
    let proxy = Proxy::start(ProxyConfig::servers(&[b.addr]).append(extra));
    let mut c = tls_session(&proxy);
    c.cmd("EHLO client.test", "250");
    (proxy, c)
}

#[test]
fn backend_451_at_end_of_data_reaches_the_client_as_is() {
    let (proxy, mut c) = session_with(FakeBehaviour::TempFailAtDataEnd, "");
    c.cmd("MAIL FROM:<a@sender.test>", "250");
    c.cmd("RCPT TO:<b@example.test>", "250");
    c.cmd("DATA", "354");
    c.send_raw(b"Subject: x\r\n\r\ny\r\n.\r\n");
    assert_eq!(c.reply(), "451 4.3.0 Error: queue file write error\r\n");
    // The session goes on, and nothing was counted as accepted.
    c.cmd("QUIT", "221");
    assert_eq!(proxy.wait_log("session", 1)["messages"], 0);
}

#[test]
fn backend_421_is_passed_on_and_the_session_ends() {
    let (proxy, mut c) = session_with(FakeBehaviour::Closes421AtMail, "");
    c.send("MAIL FROM:<a@sender.test>");
    assert_eq!(c.reply(), "421 4.3.2 Service shutting down\r\n");
    assert!(c.closed());
    assert_eq!(proxy.wait_log("session", 1)["outcome"], "backend_closed");
}

#[test]
fn backend_reset_mid_session_gives_421() {
    let (_proxy, mut c) = session_with(FakeBehaviour::ResetsAtMail, "");
    c.send("MAIL FROM:<a@sender.test>");
    let r = c.reply();
    assert!(r.starts_with("421 4.4.2 mx1.example.test"), "{r}");
}

#[test]
fn a_stalled_backend_gives_421_after_the_command_timeout() {
    let (proxy, mut c) = session_with(
        FakeBehaviour::StallsAtMail,
        "\n[timeouts]\ncommand = \"1s\"\n",
    );
    let start = std::time::Instant::now();
    c.send("MAIL FROM:<a@sender.test>");
    let r = c.reply();
    assert!(r.starts_with("421 4.4.2 mx1.example.test"), "{r}");
    assert!(start.elapsed() >= std::time::Duration::from_millis(900));
    assert_eq!(proxy.wait_log("session", 1)["outcome"], "backend_lost");
}

/// Peak resident memory of a process, in KiB.
fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        .unwrap()
}

#[test]
fn a_50_mib_message_streams_with_bounded_memory() {
    let proxy = Proxy::start(ProxyConfig::sink());
    let mut c = plaintext_in_data(&proxy);
    let before = peak_rss_kib(proxy.pid());
    let line = format!("{}\r\n", "x".repeat(76));
    let block = line.repeat(64 * 1024 / line.len());
    let mut sent = 0usize;
    while sent < 50 << 20 {
        c.send_raw(block.as_bytes());
        sent += block.len();
    }
    c.send_raw(b".\r\n");
    c.expect("250 2.0.0 Ok: queued");
    let growth = peak_rss_kib(proxy.pid()).saturating_sub(before);
    println!("50 MiB relayed; peak RSS grew by {growth} KiB");
    assert!(
        growth < 16 * 1024,
        "peak RSS grew by {growth} KiB for a 50 MiB message"
    );
    let stored = std::fs::read_dir(proxy.dir.path().join("mail/new"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap();
    assert!(stored.metadata().unwrap().len() >= sent as u64);
}

// === A backend's verdict on one client ===

const METRICS: &str = "\n[metrics]\nlisten = \"127.0.0.1:0\"\n";

/// A `proxy-v2` pool of `servers`, probed once (at start) only, with
/// metrics.
fn proxy_v2_pool(servers: &[SocketAddr]) -> Proxy {
    let list: Vec<String> = servers.iter().map(|a| format!("\"{a}\"")).collect();
    let line = format!("servers = [{}]", list.join(", "));
    let proxy = Proxy::start(
        ProxyConfig::servers(servers)
            .replace(
                &line,
                &format!("{line}\nidentity = \"proxy-v2\"\nhealth_interval = \"1h\""),
            )
            .append(METRICS),
    );
    assert_eq!(
        proxy.wait_log("backend health: first probe done", 1)["up"],
        servers.len() as u64
    );
    proxy
}

fn connect_failures(proxy: &Proxy, server: SocketAddr) -> f64 {
    proxy
        .metric(&format!(
            "starttls_proxy_backend_connect_failures_total{{backend=\"b\",server=\"{server}\"}}"
        ))
        .unwrap_or(0.0)
}

/// Postscreen or smtpd_client_restrictions refusing the real client (the
/// PROXY header named it): the client gets the backend's own 554, and it
/// is no failure of the server.
#[test]
fn a_5xx_greeting_on_a_proxy_v2_pool_is_relayed_as_is_without_failover() {
    let refusing = FakeBackend::start(FakeBehaviour::Normal);
    let second = FakeBackend::start(FakeBehaviour::Normal);
    let proxy = proxy_v2_pool(&[refusing.addr, second.addr]);
    refusing.set_behaviour(FakeBehaviour::Greeting("554 5.7.1 you are not welcome"));
    let mut c = tls_session(&proxy);
    c.send("EHLO client.test");
    assert_eq!(c.reply(), "554 5.7.1 you are not welcome\r\n");
    assert!(c.closed());
    let s = proxy.wait_log("session", 1);
    assert_eq!(s["outcome"], "backend_refused_client", "{s}");
    assert_eq!(s["server"], refusing.addr.to_string(), "{s}");
    assert_eq!(refusing.sessions(), 1);
    assert_eq!(second.sessions(), 0, "failed over: {}", second.transcript());
    assert_eq!(connect_failures(&proxy, refusing.addr), 0.0);
    assert_eq!(connect_failures(&proxy, second.addr), 0.0);
    assert!(
        proxy
            .logs_with("backend server failed, trying the next")
            .is_empty()
    );
}

/// The same verdict in a plaintext relay: the client's MAIL gets it.
#[test]
fn a_multi_line_5xx_greeting_reaches_a_plaintext_client_whole() {
    let refusing = FakeBackend::start(FakeBehaviour::Normal);
    let second = FakeBackend::start(FakeBehaviour::Normal);
    let proxy = proxy_v2_pool(&[refusing.addr, second.addr]);
    refusing.set_behaviour(FakeBehaviour::Greeting(
        "554-5.7.1 Service unavailable; client [127.0.0.1] blocked\r\n554 5.7.1 see https://rbl.example.test",
    ));
    let mut c = Smtp::connect(proxy.addr());
    c.expect("220 mx1.example.test");
    c.cmd("EHLO client.test", "250");
    c.send("MAIL FROM:<a@sender.test>");
    assert_eq!(
        c.reply(),
        "554-5.7.1 Service unavailable; client [127.0.0.1] blocked\r\n554 5.7.1 see https://rbl.example.test\r\n"
    );
    assert!(c.closed());
    assert_eq!(
        proxy.wait_log("session", 1)["outcome"],
        "backend_refused_client"
    );
    assert_eq!(second.sessions(), 0);
}

/// A 4xx greeting is the server's trouble, not a verdict: failover, and
/// it counts as a failure.
#[test]
fn a_4xx_greeting_on_a_proxy_v2_pool_still_fails_over() {
    let busy = FakeBackend::start(FakeBehaviour::Normal);
    let good = FakeBackend::start(FakeBehaviour::Normal);
    let proxy = proxy_v2_pool(&[busy.addr, good.addr]);
    busy.set_behaviour(FakeBehaviour::Greeting("421 4.7.0 too busy, try later"));
    let mut c = tls_session(&proxy);
    c.cmd("EHLO client.test", "250-fake.backend.test");
    c.cmd("QUIT", "221");
    let s = proxy.wait_log("session", 1);
    assert_eq!(s["server"], good.addr.to_string(), "{s}");
    assert_eq!(good.sessions(), 1);
    assert_eq!(connect_failures(&proxy, busy.addr), 1.0);
    assert_eq!(
        proxy
            .logs_with("backend server failed, trying the next")
            .len(),
        1
    );
}

// === A backend that does not expect the PROXY header ===

/// Postfix without `smtpd_upstream_proxy_protocol`: the header is a
/// command it does not know. The probe's log line says what to set.
#[test]
fn a_backend_not_expecting_the_proxy_header_is_named_as_such() {
    let b = ScriptedBackend::start(
        "220 backend.test ESMTP Postfix",
        &[("", "500 5.5.2 Error: command not recognized")],
    );
    let proxy = Proxy::start(ProxyConfig::servers(&[b.addr]).replace(
        &format!("servers = [\"{}\"]", b.addr),
        &format!("servers = [\"{}\"]\nidentity = \"proxy-v1\"", b.addr),
    ));
    let down = proxy.wait_log("backend server down (health probe failed)", 1);
    let error = down["error"].as_str().unwrap_or_default();
    assert!(error.contains("PROXY header"), "{down}");
    assert!(
        error.contains("smtpd_upstream_proxy_protocol = haproxy"),
        "{down}"
    );
    assert!(error.contains("hosts_proxy"), "{down}");
    assert!(error.contains("500 5.5.2"), "{down}");
    assert!(
        b.transcripts()[0].starts_with("PROXY TCP4 "),
        "{:?}",
        b.transcripts()
    );
}

/// The same backend on a pool without PROXY headers: a refused EHLO is
/// just that, no PROXY hint.
#[test]
fn a_refused_probe_ehlo_without_proxy_headers_gives_no_proxy_hint() {
    let b = ScriptedBackend::start(
        "220 backend.test ESMTP",
        &[("EHLO", "500 5.5.2 Error: command not recognized")],
    );
    let proxy = Proxy::start(ProxyConfig::servers(&[b.addr]));
    let down = proxy.wait_log("backend server down (health probe failed)", 1);
    let error = down["error"].as_str().unwrap_or_default();
    assert!(error.contains("EHLO refused: 500 5.5.2"), "{down}");
    assert!(!error.contains("PROXY"), "{down}");
}

// === The sink, pre-TLS ===

/// A plaintext SMTPUTF8 sender sees SMTPUTF8 offered and delivers to the
/// sink.
#[test]
fn a_plaintext_smtputf8_sender_delivers_to_the_sink() {
    let proxy = Proxy::start(ProxyConfig::sink());
    let mut c = Smtp::connect(proxy.addr());
    c.expect("220 mx1.example.test");
    let ehlo = c.cmd("EHLO client.test", "250-mx1.example.test");
    assert!(ehlo.contains("250-SMTPUTF8\r\n"), "{ehlo}");
    assert!(ehlo.ends_with("250 STARTTLS\r\n"), "{ehlo}");
    assert!(!ehlo.contains("AUTH"), "{ehlo}");
    c.cmd("MAIL FROM:<ü@example.test> SMTPUTF8", "250");
    c.cmd("RCPT TO:<rcpt@example.test>", "250");
    c.cmd("DATA", "354");
    c.send("Subject: grüße\r\n\r\nHallo.\r\n.");
    c.expect("250 2.0.0 Ok: queued");
    c.cmd("QUIT", "221");
    let messages = proxy.sink_messages();
    assert_eq!(messages.len(), 1);
    let m = String::from_utf8(messages[0].clone()).unwrap();
    assert!(m.starts_with("Return-Path: <ü@example.test>\r\n"), "{m}");
    assert!(m.contains("Subject: grüße\r\n"), "{m}");
}

#[test]
fn reply_to_quit_then_a_clean_tls_close() {
    // The reply to QUIT and the close_notify alert leave in one write
    // (src/relay.rs, `Closing`): the reply must come first and whole, and
    // the close must be TLS's own (close_notify), not just TCP's FIN.
    use std::io::{Read, Write};
    let proxy = Proxy::start(ProxyConfig::sink());
    let (mut conn, mut tcp) = starttls_handshake(&proxy, accept_any_certificate_config());
    let mut tls = rustls::Stream::new(&mut conn, &mut tcp);
    tls.write_all(b"EHLO client.test\r\nQUIT\r\n").unwrap();
    let mut all = Vec::new();
    let end = loop {
        let mut buf = [0u8; 4096];
        match tls.read(&mut buf) {
            Ok(0) => break Ok(()),
            Ok(n) => all.extend_from_slice(&buf[..n]),
            Err(e) => break Err(e),
        }
    };
    let text = String::from_utf8_lossy(&all);
    assert!(text.starts_with("250-"), "{text}");
    assert!(text.ends_with("\r\n221 2.0.0 Bye\r\n"), "{text}");
    assert!(end.is_ok(), "no close_notify after the 221: {end:?}");
    assert_eq!(proxy.wait_log("session", 1)["outcome"], "quit");
}
