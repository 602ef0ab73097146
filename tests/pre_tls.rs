//! The pre-TLS dialogue against the real binary (DESIGN.md §2).

mod support;

use support::*;

#[test]
fn greeting_ehlo_and_simple_commands() {
    let proxy = Proxy::start(ProxyConfig::sink());
    let mut c = Smtp::connect(proxy.addr());
    assert_eq!(c.reply(), "220 mx1.example.test ESMTP starttls-proxy\r\n");
    let ehlo = c.cmd("EHLO client.test", "250-mx1.example.test\r\n");
    assert!(ehlo.ends_with("250 STARTTLS\r\n"), "{ehlo}");
    assert!(ehlo.contains("250-PIPELINING\r\n"), "{ehlo}");
    assert!(
        !ehlo.contains("AUTH"),
        "AUTH must never be offered before TLS: {ehlo}"
    );
    assert_eq!(c.cmd("HELO client.test", "250"), "250 mx1.example.test\r\n");
    assert_eq!(c.cmd("NOOP", "250"), "250 2.0.0 Ok\r\n");
    assert_eq!(c.cmd("RSET", "250"), "250 2.0.0 Ok\r\n");
    c.cmd("HELP", "214 ");
    assert_eq!(
        c.cmd("FROBNICATE", "500"),
        "500 5.5.2 Error: command not recognized\r\n"
    );
    assert_eq!(
        c.cmd("STARTTLS now", "501"),
        "501 5.5.4 Syntax: STARTTLS\r\n"
    );
    assert_eq!(c.cmd("EHLO", "501"), "501 5.5.4 Syntax: EHLO hostname\r\n");
    assert_eq!(c.cmd("QUIT", "221"), "221 2.0.0 Bye\r\n");
    assert!(c.closed());
}

#[test]
fn line_too_long_then_error_limit_closes_with_421() {
    let proxy =
        Proxy::start(ProxyConfig::sink().append("\n[limits]\nline_length = 512\nmax_errors = 3\n"));
    let mut c = Smtp::connect(proxy.addr());
    c.expect("220");
    let long = format!("NOOP {}", "x".repeat(600));
    assert_eq!(c.cmd(&long, "500"), "500 5.5.2 Line too long\r\n");
    // The connection is still in sync: the next command gets its own reply.
    assert_eq!(c.cmd("NOOP", "250"), "250 2.0.0 Ok\r\n");
    c.cmd("BOGUS", "500 5.5.2");
    c.send("BOGUS");
    assert_eq!(c.reply(), "500 5.5.2 Error: command not recognized\r\n");
    assert_eq!(
        c.reply(),
        "421 4.7.0 mx1.example.test Error: too many errors\r\n"
    );
    assert!(c.closed());
}

#[test]
fn required_listener_answers_530_to_transactions() {
    let proxy = Proxy::start(ProxyConfig::with(
        r#"tls = "required""#,
        r#"sink = "{dir}/mail""#,
    ));
    let mut c = Smtp::connect(proxy.addr());
    c.expect("220");
    c.cmd("EHLO client.test", "250-");
    for cmd in [
        "MAIL FROM:<a@sender.test>",
        "RCPT TO:<b@example.test>",
        "DATA",
        "AUTH PLAIN AGEAYg==",
        "VRFY root",
        "ETRN example.test",
        "BDAT 10 LAST",
    ] {
        assert_eq!(
            c.cmd(cmd, "530"),
            "530 5.7.0 Must issue a STARTTLS command first\r\n",
            "{cmd}"
        );
    }
    assert!(proxy.sink_messages().is_empty());
}

#[test]
fn opportunistic_listener_relays_plaintext_transactions() {
    let proxy = Proxy::start(ProxyConfig::sink());
    let mut c = Smtp::connect(proxy.addr());
    c.expect("220");
    c.cmd("EHLO client.test", "250-");
    // MAIL and RCPT pipelined, as PIPELINING allows.
    c.send_raw(b"MAIL FROM:<a@sender.test>\r\nRCPT TO:<b@example.test>\r\n");
    c.expect("250 2.1.0");
    c.expect("250 2.1.5");
    c.cmd("DATA", "354");
    c.send_raw(b"Subject: plain\r\n\r\nno TLS here\r\n.\r\n");
    c.expect("250 2.0.0 Ok: queued as");
    c.cmd("QUIT", "221");
    let msgs = proxy.sink_messages();
    assert_eq!(msgs.len(), 1);
    let m = String::from_utf8_lossy(&msgs[0]);
    assert!(m.ends_with("Subject: plain\r\n\r\nno TLS here\r\n"), "{m}");
    let session = proxy.wait_log("session", 1);
    assert_eq!(session["tls"], "none");
    assert_eq!(session["messages"], 1);
}

#[test]
fn tls_client_hello_before_starttls_is_recognised_and_closed() {
    // Implicit TLS on a STARTTLS port: a real TLS client, no STARTTLS.
    let proxy = Proxy::start(ProxyConfig::sink());
    let (ok, out) = std::process::Command::new("timeout")
        .args([
            "20",
            "openssl",
            "s_client",
            "-connect",
            &proxy.addr().to_string(),
            "-servername",
            "mx1.example.test",
        ])
        .stdin(std::process::Stdio::null())
        .output()
        .map(|o| {
            (
                o.status.success(),
                String::from_utf8_lossy(&o.stdout).into_owned()
                    + &String::from_utf8_lossy(&o.stderr),
            )
        })
        .unwrap();
    assert!(
        !ok,
        "a TLS handshake must not complete before STARTTLS: {out}"
    );
    let ev = proxy.wait_log("TLS ClientHello received before STARTTLS; closing", 1);
    assert_eq!(ev["reason"], "implicit_tls_on_starttls_port");
}
