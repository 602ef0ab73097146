//! TLS policy rules (DESIGN.md §9, issue #13) with real clients (swaks,
//! openssl s_client, a rustls client) in front of a real Postfix backend
//! that logs every command it reads (TRANSCRIPT=1): report rules count and
//! log while mail flows; enforce rules answer 530/450 at the right command,
//! which never reaches the backend; the client stays free to STARTTLS.

mod support;

use std::io::Write;
use std::net::SocketAddr;
use std::process::{Command, Stdio};

use support::*;

/// Fixed loopback ports of this file's Postfix backends (Postfix cannot
/// bind port 0 and tell us), one per test so that they run in parallel.
const PF_CLIENT: u16 = 14400;
const PF_HELO: u16 = 14401;
const PF_SENDER: u16 = 14402;
const PF_RECIPIENT: u16 = 14403;
const PF_TLS13: u16 = 14404;
const PF_IPV6: u16 = 14405;
const PF_PROXY: u16 = 14406;
const PF_SIGHUP: u16 = 14407;
const PF_PIPELINED_PLAIN: u16 = 14408;
const PF_PIPELINED_TLS: u16 = 14409;
const PF_NESTED_MAIL: u16 = 14410;

const METRICS: &str = "\n[metrics]\nlisten = \"127.0.0.1:0\"\n";

fn postfix(port: u16) -> PostfixBackend {
    PostfixBackend::start(port, &[("TRANSCRIPT", "1")])
}

/// A proxy in front of `backend` with `rules` (TOML) and the listener
/// settings `listener`.
fn proxy(backend: &PostfixBackend, listener: &str, rules: &str) -> Proxy {
    let config = ProxyConfig::with(listener, &format!("servers = [\"{}\"]", backend.addr()))
        .append(METRICS)
        .append(rules);
    Proxy::start(config)
}

/// One `[[tls_policy]]` rule.
fn rule(name: &str, matches: &str, require: &str, mode: &str, extra: &str) -> String {
    format!(
        "\n[[tls_policy]]\nname = \"{name}\"\n{matches}\nrequire = \"{require}\"\nmode = \"{mode}\"\n{extra}\n"
    )
}

/// `tls_policy_evaluations_total{policy, result}`; the status page
/// (`/status.json`, docs/status.md) must show the same count.
fn evaluations(proxy: &Proxy, policy: &str, result: &str) -> f64 {
    let series = format!(
        "starttls_proxy_tls_policy_evaluations_total{{policy=\"{policy}\",result=\"{result}\"}}"
    );
    let n = proxy
        .metric(&series)
        .unwrap_or_else(|| panic!("no series {series}"));
    let (code, body) = proxy.http_get("/status.json");
    assert_eq!(code, 200, "{body}");
    let status: serde_json::Value = serde_json::from_str(&body).unwrap();
    let row = status["tls_policy"]
        .as_array()
        .and_then(|rules| rules.iter().find(|r| r["rule"] == policy))
        .unwrap_or_else(|| panic!("rule {policy} not on the status page: {body}"));
    assert_eq!(
        row[result].as_f64(),
        Some(n),
        "status page vs /metrics: {row}"
    );
    n
}

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

/// A message as swaks sends it.
struct Swaks<'a> {
    ehlo: &'a str,
    from: &'a str,
    to: &'a str,
    tls: bool,
    extra: Vec<&'a str>,
}

impl<'a> Swaks<'a> {
    fn new(from: &'a str, to: &'a str) -> Self {
        Swaks {
            ehlo: "client.sender.test",
            from,
            to,
            tls: false,
            extra: Vec::new(),
        }
    }

    fn ehlo(mut self, ehlo: &'a str) -> Self {
        self.ehlo = ehlo;
        self
    }

    fn tls(mut self) -> Self {
        self.tls = true;
        self
    }

    fn args(mut self, args: &[&'a str]) -> Self {
        self.extra.extend_from_slice(args);
        self
    }

    /// Sends to `addr`: (swaks succeeded, transcript, the unique subject).
    fn send(&self, addr: SocketAddr) -> (bool, String, String) {
        let subject = unique("policy");
        let mut cmd = Command::new("swaks");
        cmd.args(["-s", &addr.ip().to_string(), "-p", &addr.port().to_string()])
            .args(["--ehlo", self.ehlo, "--from", self.from, "--to", self.to])
            .args([
                "--header",
                &format!("Subject: {subject}"),
                "--timeout",
                "20",
            ])
            .args(&self.extra);
        if self.tls {
            cmd.arg("--tls");
        }
        let out = cmd
            .output()
            .expect("swaks (installed by scripts/install-test-deps.sh)");
        let transcript = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), transcript, subject)
    }
}

/// The reply swaks printed right after sending `command`.
fn reply_to<'t>(transcript: &'t str, command: &str) -> &'t str {
    let mut lines = transcript.lines();
    lines
        .find(|l| l.starts_with(" -> ") && l[4..].starts_with(command))
        .unwrap_or_else(|| panic!("swaks did not send {command:?}:\n{transcript}"));
    lines
        .find(|l| l.starts_with("<"))
        .unwrap_or_else(|| panic!("no reply to {command:?}:\n{transcript}"))
}

/// The `tls policy` log lines so far.
fn policy_logs(proxy: &Proxy) -> Vec<serde_json::Value> {
    proxy.logs_with("tls policy")
}

/// No command the backend logged contains `needle`. Postfix logs
/// asynchronously: call after waiting for a later command.
fn backend_never_saw(backend: &PostfixBackend, needle: &str) {
    let seen: Vec<String> = backend
        .commands()
        .into_iter()
        .filter(|c| c.contains(needle))
        .collect();
    assert!(seen.is_empty(), "the backend saw {seen:?}");
}

// === one rule per kind of match, in report and in enforce mode ===

#[test]
fn client_network_rule_reports_then_enforces() {
    let backend = postfix(PF_CLIENT);
    let loopback = |mode| rule("loopback", r#"clients = ["127.0.0.0/8"]"#, "tls", mode, "");

    // Report: the plaintext message is delivered, counted and logged.
    let p = proxy(&backend, "", &loopback("report"));
    assert_eq!(evaluations(&p, "loopback", "would_refuse"), 0.0);
    let (ok, t, subject) = Swaks::new("plain@sender.test", "r@example.test").send(p.addr());
    assert!(ok, "{t}");
    backend.delivered(&subject);
    assert_eq!(evaluations(&p, "loopback", "would_refuse"), 1.0);
    assert_eq!(evaluations(&p, "loopback", "refused"), 0.0);
    let line = p.wait_log("tls policy", 1);
    assert_eq!(line["level"], "INFO");
    assert_eq!(line["policy"], "loopback");
    assert_eq!(line["result"], "would_refuse");
    assert_eq!(line["mode"], "report");
    assert_eq!(line["require"], "tls");
    assert_eq!(line["stage"], "mail_from");
    assert_eq!(line["tls"], "none");
    assert_eq!(line["helo"], "client.sender.test");
    assert_eq!(line["sender"], "sender.test");
    assert_eq!(line["reply"], 530);
    assert!(
        line["peer"].as_str().unwrap().starts_with("127.0.0.1:"),
        "{line}"
    );
    // Over TLS the rule is satisfied: counted, no log line.
    let (ok, t, subject) = Swaks::new("tls@sender.test", "r@example.test")
        .tls()
        .send(p.addr());
    assert!(ok, "{t}");
    backend.delivered(&subject);
    assert_eq!(evaluations(&p, "loopback", "satisfied"), 1.0);
    assert_eq!(policy_logs(&p).len(), 1);
    drop(p);

    // Enforce: 530 at MAIL FROM, nothing at the backend, then TLS delivers.
    let p = proxy(&backend, "", &loopback("enforce"));
    let (ok, t, _) = Swaks::new("refused@sender.test", "r@example.test").send(p.addr());
    assert!(!ok, "{t}");
    assert_eq!(
        reply_to(&t, "MAIL FROM:<refused@sender.test>"),
        "<** 530 5.7.0 Must issue a STARTTLS command first"
    );
    assert_eq!(evaluations(&p, "loopback", "refused"), 1.0);
    let line = p.wait_log("tls policy", 1);
    assert_eq!(
        (&line["result"], &line["mode"]),
        (&"refused".into(), &"enforce".into())
    );
    // The session never connected to the backend: its log line names no server.
    let session = p.wait_log("session", 1);
    assert_eq!(session["tls"], "none");
    assert!(session.get("server").is_none(), "{session}");
    let (ok, t, subject) = Swaks::new("after@sender.test", "r@example.test")
        .tls()
        .send(p.addr());
    assert!(ok, "{t}");
    backend.delivered(&subject);
    assert_eq!(evaluations(&p, "loopback", "satisfied"), 1.0);
    backend.wait_command("MAIL FROM:<after@sender.test>");
    backend_never_saw(&backend, "refused@sender.test");
    assert_eq!(backend.messages().len(), 3);
}

#[test]
fn helo_rule_reports_then_enforces() {
    let backend = postfix(PF_HELO);
    let bank = |mode| rule("bank-helo", r#"helo = [".bank.example"]"#, "tls", mode, "");

    let p = proxy(&backend, "", &bank("report"));
    let (ok, t, subject) = Swaks::new("a@sender.test", "r@example.test")
        .ehlo("MX1.Bank.Example")
        .send(p.addr());
    assert!(ok, "{t}");
    backend.delivered(&subject);
    assert_eq!(evaluations(&p, "bank-helo", "would_refuse"), 1.0);
    assert_eq!(p.wait_log("tls policy", 1)["helo"], "MX1.Bank.Example");
    // Another HELO does not match: not counted at all.
    let (ok, t, subject) = Swaks::new("a@sender.test", "r@example.test")
        .ehlo("bank.example")
        .send(p.addr());
    assert!(ok, "{t}");
    backend.delivered(&subject);
    assert_eq!(evaluations(&p, "bank-helo", "would_refuse"), 1.0);
    assert_eq!(evaluations(&p, "bank-helo", "satisfied"), 0.0);
    drop(p);

    let p = proxy(&backend, "", &bank("enforce"));
    let (ok, t, _) = Swaks::new("refused-helo@sender.test", "r@example.test")
        .ehlo("mx1.bank.example")
        .send(p.addr());
    assert!(!ok, "{t}");
    assert_eq!(
        reply_to(&t, "MAIL FROM:"),
        "<** 530 5.7.0 Must issue a STARTTLS command first"
    );
    assert_eq!(evaluations(&p, "bank-helo", "refused"), 1.0);
    let (ok, t, subject) = Swaks::new("tls-helo@sender.test", "r@example.test")
        .ehlo("mx1.bank.example")
        .tls()
        .send(p.addr());
    assert!(ok, "{t}");
    backend.delivered(&subject);
    assert_eq!(evaluations(&p, "bank-helo", "satisfied"), 1.0);
    backend.wait_command("MAIL FROM:<tls-helo@sender.test>");
    backend_never_saw(&backend, "refused-helo@");
}

#[test]
fn sender_rule_reports_then_enforces_with_a_temporary_reply() {
    let backend = postfix(PF_SENDER);
    let bank = |mode, extra| {
        rule(
            "bank-senders",
            r#"senders = ["bank.example"]"#,
            "tls",
            mode,
            extra,
        )
    };

    let p = proxy(&backend, "", &bank("report", "reply = \"temporary\""));
    let (ok, t, subject) = Swaks::new("pay@Bank.Example", "r@example.test").send(p.addr());
    assert!(ok, "{t}");
    backend.delivered(&subject);
    assert_eq!(evaluations(&p, "bank-senders", "would_refuse"), 1.0);
    let line = p.wait_log("tls policy", 1);
    assert_eq!(line["sender"], "bank.example");
    assert_eq!(line["reply"], 450, "what enforce would answer");
    // A subdomain is not the domain ("bank.example", not ".bank.example").
    let (ok, t, subject) = Swaks::new("x@mail.bank.example", "r@example.test").send(p.addr());
    assert!(ok, "{t}");
    backend.delivered(&subject);
    assert_eq!(evaluations(&p, "bank-senders", "would_refuse"), 1.0);
    drop(p);

    // A soft start: 450, so that the sender queues and retries.
    let p = proxy(&backend, "", &bank("enforce", "reply = \"temporary\""));
    let (ok, t, _) = Swaks::new("held@bank.example", "r@example.test").send(p.addr());
    assert!(!ok, "{t}");
    assert_eq!(
        reply_to(&t, "MAIL FROM:<held@bank.example>"),
        "<** 450 4.7.0 Must issue a STARTTLS command first"
    );
    assert_eq!(evaluations(&p, "bank-senders", "refused"), 1.0);
    let (ok, t, subject) = Swaks::new("ok@bank.example", "r@example.test")
        .tls()
        .send(p.addr());
    assert!(ok, "{t}");
    backend.delivered(&subject);
    backend.wait_command("MAIL FROM:<ok@bank.example>");
    backend_never_saw(&backend, "held@bank.example");
}

#[test]
fn recipient_rule_reports_then_enforces_per_recipient() {
    let backend = postfix(PF_RECIPIENT);
    let legal = |mode| {
        rule(
            "legal",
            r#"recipients = ["legal.example.test"]"#,
            "tls",
            mode,
            "",
        )
    };
    let to = "boss@legal.example.test,clerk@other.test";

    let p = proxy(&backend, "", &legal("report"));
    let (ok, t, subject) = Swaks::new("a@sender.test", to).send(p.addr());
    assert!(ok, "{t}");
    wait_for("two deliveries", TIMEOUT, || {
        (backend
            .messages()
            .iter()
            .filter(|m| String::from_utf8_lossy(m).contains(&subject))
            .count()
            == 2)
            .then_some(())
    });
    assert_eq!(
        evaluations(&p, "legal", "would_refuse"),
        1.0,
        "only the matching recipient"
    );
    let line = p.wait_log("tls policy", 1);
    assert_eq!(line["stage"], "rcpt_to");
    assert_eq!(line["recipient"], "legal.example.test");
    assert_eq!(line["sender"], "sender.test");
    drop(p);

    // Enforce: that RCPT gets 530, the other recipient still gets the message.
    let p = proxy(&backend, "", &legal("enforce"));
    let (ok, t, subject) = Swaks::new("b@sender.test", to).send(p.addr());
    assert!(ok, "{t}");
    assert_eq!(
        reply_to(&t, "RCPT TO:<boss@legal.example.test>"),
        "<** 530 5.7.0 Must issue a STARTTLS command first"
    );
    assert_eq!(
        reply_to(&t, "RCPT TO:<clerk@other.test>"),
        "<-  250 2.1.5 Ok"
    );
    let msg = backend.delivered(&subject);
    assert!(msg.contains("Delivered-To: clerk@other.test"), "{msg}");
    assert_eq!(evaluations(&p, "legal", "refused"), 1.0);
    backend.wait_command("MAIL FROM:<b@sender.test>");
    backend.wait_command("RCPT TO:<clerk@other.test>");
    let boss = backend
        .commands()
        .into_iter()
        .filter(|c| c.contains("boss@legal.example.test"))
        .count();
    assert_eq!(boss, 1, "only the report run's RCPT reached the backend");
    // Over TLS both recipients are delivered.
    let (ok, t, subject) = Swaks::new("c@sender.test", to).tls().send(p.addr());
    assert!(ok, "{t}");
    wait_for("two deliveries over TLS", TIMEOUT, || {
        (backend
            .messages()
            .iter()
            .filter(|m| String::from_utf8_lossy(m).contains(&subject))
            .count()
            == 2)
            .then_some(())
    });
    assert_eq!(evaluations(&p, "legal", "satisfied"), 1.0);
    assert_eq!(
        backend
            .messages()
            .iter()
            .filter(|m| String::from_utf8_lossy(m).contains("Delivered-To: boss@legal.example.test"))
            .count(),
        2,
        "report run and TLS run, not the enforced plaintext one"
    );
}

// === TLS version, IPv6, PROXY headers, SIGHUP ===

/// `openssl s_client -starttls smtp` with a version flag, sending `lines`
/// once the handshake is done; everything the server said after it.
fn openssl_session(addr: SocketAddr, version: &str, lines: &str) -> String {
    let mut child = Command::new("timeout")
        .arg("20")
        .args(["openssl", "s_client", "-starttls", "smtp", "-connect"])
        .arg(addr.to_string())
        .args([
            version,
            "-crlf",
            "-quiet",
            "-servername",
            "mx1.example.test",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("openssl");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(lines.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn a_tls13_rule_refuses_tls12_and_passes_tls13() {
    let backend = postfix(PF_TLS13);
    let p = proxy(
        &backend,
        "",
        &rule(
            "modern",
            r#"clients = ["127.0.0.0/8"]"#,
            "tls1.3",
            "enforce",
            "",
        ),
    );
    let commands = |from: &str| {
        format!("EHLO client.sender.test\nMAIL FROM:<{from}>\nRCPT TO:<r@example.test>\nQUIT\n")
    };
    let old = openssl_session(p.addr(), "-tls1_2", &commands("old@sender.test"));
    assert!(
        old.contains("530 5.7.0 Must use TLS 1.3\r\n503 5.5.1 Error: need MAIL command\r\n221"),
        "{old}"
    );
    let line = p.wait_log("tls policy", 1);
    assert_eq!(
        (&line["tls"], &line["result"]),
        (&"TLSv1.2".into(), &"refused".into())
    );
    assert_eq!(evaluations(&p, "modern", "refused"), 1.0);

    let new = openssl_session(p.addr(), "-tls1_3", &commands("new@sender.test"));
    assert!(new.contains("250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n221"), "{new}");
    assert_eq!(evaluations(&p, "modern", "satisfied"), 1.0);
    // Plaintext is refused too, with the STARTTLS reply.
    let (ok, t, _) = Swaks::new("plain@sender.test", "r@example.test").send(p.addr());
    assert!(!ok);
    assert_eq!(
        reply_to(&t, "MAIL FROM:"),
        "<** 530 5.7.0 Must issue a STARTTLS command first"
    );
    backend.wait_command("RCPT TO:<r@example.test>");
    backend_never_saw(&backend, "old@sender.test");
}

#[test]
fn ipv6_networks_match_and_a_refused_client_may_starttls_in_the_same_session() {
    let backend = postfix(PF_IPV6);
    let rules = rule(
        "v6-loopback",
        r#"clients = ["::1/128"]"#,
        "tls",
        "enforce",
        "",
    ) + &rule(
        "v6-doc",
        r#"clients = ["2001:db8::/32", "127.0.0.0/8"]"#,
        "tls",
        "report",
        "",
    );
    let config = ProxyConfig::with("", &format!("servers = [\"{}\"]", backend.addr()))
        .replace("address = \"127.0.0.1:0\"", "address = \"[::1]:0\"")
        .append(METRICS)
        .append(&rules);
    let p = Proxy::start(config);
    assert!(p.addr().is_ipv6());
    let mut c = Smtp::connect(p.addr());
    c.expect("220");
    c.cmd("EHLO client.sender.test", "250");
    c.cmd(
        "MAIL FROM:<v6@sender.test>",
        "530 5.7.0 Must issue a STARTTLS command first",
    );
    let line = p.wait_log("tls policy", 1);
    assert!(
        line["peer"].as_str().unwrap().starts_with("[::1]:"),
        "{line}"
    );
    assert_eq!(line["policy"], "v6-loopback");
    assert_eq!(evaluations(&p, "v6-loopback", "refused"), 1.0);
    // ::1 is in neither of the other rule's networks.
    assert_eq!(evaluations(&p, "v6-doc", "would_refuse"), 0.0);
    // The session is still in the pre-TLS dialogue: STARTTLS, then deliver.
    c.cmd("STARTTLS", "220 2.0.0");
    let mut c = c
        .start_tls(Some("mx1.example.test"), "mx1.example.test")
        .unwrap();
    c.cmd("EHLO client.sender.test", "250");
    c.cmd("MAIL FROM:<v6@sender.test>", "250");
    c.cmd("RCPT TO:<r@example.test>", "250");
    c.cmd("DATA", "354");
    let subject = unique("v6");
    c.send_raw(format!("Subject: {subject}\r\n\r\nhello\r\n.\r\n").as_bytes());
    c.expect("250 2.0.0 Ok: queued");
    c.cmd("QUIT", "221");
    backend.delivered(&subject);
    assert_eq!(evaluations(&p, "v6-loopback", "satisfied"), 1.0);
    assert_eq!(policy_logs(&p).len(), 1);
}

#[test]
fn an_inbound_proxy_v2_header_gives_the_address_rules_match() {
    let backend = postfix(PF_PROXY);
    let p = proxy(
        &backend,
        "proxy_protocol = { version = 2, trusted = [\"127.0.0.0/8\"] }",
        &rule(
            "documentation-nets",
            r#"clients = ["203.0.113.0/24", "2001:db8::/32"]"#,
            "tls",
            "enforce",
            "",
        ),
    );
    let via = |family: &'static str, source: &'static str| {
        let dest = if family == "AF_INET6" {
            "2001:db8::25"
        } else {
            "198.51.100.25"
        };
        vec![
            "--proxy-version",
            "2",
            "--proxy-family",
            family,
            "--proxy-source",
            source,
            "--proxy-source-port",
            "40000",
            "--proxy-dest",
            dest,
            "--proxy-dest-port",
            "25",
        ]
    };
    // The TCP peer is 127.0.0.1, outside the rule: only the header can match.
    for (family, source) in [("AF_INET", "203.0.113.7"), ("AF_INET6", "2001:db8::5")] {
        let (ok, t, _) = Swaks::new("proxied@sender.test", "r@example.test")
            .args(&via(family, source))
            .send(p.addr());
        assert!(!ok, "{t}");
        assert_eq!(
            reply_to(&t, "MAIL FROM:"),
            "<** 530 5.7.0 Must issue a STARTTLS command first"
        );
    }
    let peers: Vec<String> = policy_logs(&p)
        .iter()
        .map(|l| l["peer"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(peers, ["203.0.113.7:40000", "[2001:db8::5]:40000"]);
    assert_eq!(evaluations(&p, "documentation-nets", "refused"), 2.0);
    // Another client behind the same balancer is not matched.
    let (ok, t, subject) = Swaks::new("other@sender.test", "r@example.test")
        .args(&via("AF_INET", "198.51.100.9"))
        .send(p.addr());
    assert!(ok, "{t}");
    backend.delivered(&subject);
    assert_eq!(evaluations(&p, "documentation-nets", "refused"), 2.0);
    backend.wait_command("MAIL FROM:<other@sender.test>");
    backend_never_saw(&backend, "proxied@sender.test");
}

#[test]
fn sighup_promotes_a_rule_for_new_commands_without_dropping_sessions() {
    let backend = postfix(PF_SIGHUP);
    let p = proxy(
        &backend,
        "",
        &rule(
            "staged",
            r#"clients = ["127.0.0.0/8"]"#,
            "tls",
            "report",
            "",
        ),
    );
    let (ok, t, subject) = Swaks::new("before@sender.test", "r@example.test").send(p.addr());
    assert!(ok, "{t}");
    backend.delivered(&subject);
    assert_eq!(evaluations(&p, "staged", "would_refuse"), 1.0);

    // A session open across the reload.
    let mut open = Smtp::connect(p.addr());
    open.expect("220");
    open.cmd("EHLO client.sender.test", "250");

    let path = p.dir.path().join("proxy.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(
        &path,
        text.replace(
            "mode = \"report\"",
            "mode = \"enforce\"\nreply = \"temporary\"",
        ),
    )
    .unwrap();
    let st = Command::new("kill")
        .args(["-HUP", &p.pid().to_string()])
        .status()
        .unwrap();
    assert!(st.success());
    p.wait_log("tls policy loaded", 2);
    assert_eq!(p.logs_with("tls policy rule")[1]["mode"], "enforce");

    let (ok, t, _) = Swaks::new("after@sender.test", "r@example.test").send(p.addr());
    assert!(!ok, "{t}");
    assert_eq!(
        reply_to(&t, "MAIL FROM:"),
        "<** 450 4.7.0 Must issue a STARTTLS command first"
    );
    assert_eq!(evaluations(&p, "staged", "refused"), 1.0);
    // The session from before the reload is still there; its next MAIL
    // is asked under the rules in force now.
    open.cmd("NOOP", "250");
    open.cmd("MAIL FROM:<open@sender.test>", "450 4.7.0");
    open.cmd("QUIT", "221");
    assert_eq!(evaluations(&p, "staged", "refused"), 2.0);
    assert_eq!(evaluations(&p, "staged", "would_refuse"), 1.0);
}

// === pipelining: replies in order, nothing of a refused transaction at the backend ===

#[test]
fn a_plaintext_client_refused_at_mail_gets_its_pipelined_replies_in_order_then_starttls() {
    let backend = postfix(PF_PIPELINED_PLAIN);
    let p = proxy(
        &backend,
        "",
        &rule(
            "loopback",
            r#"clients = ["127.0.0.0/8"]"#,
            "tls",
            "enforce",
            "",
        ),
    );
    // swaks pipelining: MAIL, RCPT and DATA in one write.
    let (ok, t, _) = Swaks::new("piped@sender.test", "r@example.test")
        .args(&["--pipeline"])
        .send(p.addr());
    assert!(!ok, "{t}");
    assert!(t.contains("<** 530 5.7.0 Must issue a STARTTLS command first\n<** 503 5.5.1 Error: need MAIL command\n<** 503 5.5.1 Error: need RCPT command"), "{t}");

    // The same, byte for byte, then STARTTLS in the same session.
    let mut c = Smtp::connect(p.addr());
    c.expect("220");
    c.cmd("EHLO client.sender.test", "250");
    c.send_raw(
        b"MAIL FROM:<raw@sender.test>\r\nRCPT TO:<r@example.test>\r\nDATA\r\nBDAT 5 LAST\r\nhello",
    );
    assert_eq!(
        c.reply(),
        "530 5.7.0 Must issue a STARTTLS command first\r\n"
    );
    assert_eq!(c.reply(), "503 5.5.1 Error: need MAIL command\r\n");
    assert_eq!(c.reply(), "503 5.5.1 Error: need RCPT command\r\n");
    assert_eq!(c.reply(), "503 5.5.1 Error: need RCPT command\r\n");
    c.cmd("NOOP", "250");
    c.cmd("STARTTLS", "220 2.0.0");
    let mut c = c
        .start_tls(Some("mx1.example.test"), "mx1.example.test")
        .unwrap();
    c.cmd("EHLO client.sender.test", "250");
    c.send_raw(b"MAIL FROM:<raw@sender.test>\r\nRCPT TO:<r@example.test>\r\nDATA\r\n");
    c.expect("250 2.1.0");
    c.expect("250 2.1.5");
    c.expect("354");
    let subject = unique("pipelined");
    c.send_raw(format!("Subject: {subject}\r\n\r\nhello\r\n.\r\nQUIT\r\n").as_bytes());
    c.expect("250 2.0.0 Ok: queued");
    c.expect("221");
    backend.delivered(&subject);
    assert_eq!(evaluations(&p, "loopback", "refused"), 2.0);
    assert_eq!(evaluations(&p, "loopback", "satisfied"), 1.0);

    // A VRFY after the refused MAIL starts a plaintext relay: the RCPT and
    // DATA behind it still belong to no transaction, and stay here.
    let mut c = Smtp::connect(p.addr());
    c.expect("220");
    c.cmd("EHLO client.sender.test", "250");
    c.cmd("MAIL FROM:<vrfy@sender.test>", "530 5.7.0");
    c.send_raw(b"VRFY postmaster\r\nRCPT TO:<after-vrfy@example.test>\r\nDATA\r\nQUIT\r\n");
    let vrfy = c.reply();
    assert!(!vrfy.starts_with("503"), "{vrfy}");
    assert_eq!(c.reply(), "503 5.5.1 Error: need MAIL command\r\n");
    assert_eq!(c.reply(), "503 5.5.1 Error: need RCPT command\r\n");
    c.expect("221");
    assert_eq!(p.wait_log("session", 3)["tls"], "none");

    backend.wait_command("VRFY postmaster");
    backend.wait_command("MAIL FROM:<raw@sender.test>");
    backend_never_saw(&backend, "piped@sender.test");
    backend_never_saw(&backend, "vrfy@sender.test");
    backend_never_saw(&backend, "after-vrfy");
    let data = backend
        .commands()
        .iter()
        .filter(|c| *c == "DATA" || c.starts_with("BDAT"))
        .count();
    assert_eq!(data, 1, "{:?}", backend.commands());
}

#[test]
fn inside_tls_refusals_keep_their_turn_among_backend_replies() {
    let backend = postfix(PF_PIPELINED_TLS);
    let rules = rule(
        "new-senders",
        r#"senders = ["refused.test"]"#,
        "tls1.3",
        "enforce",
        "",
    ) + &rule(
        "legal",
        r#"recipients = ["legal.example.test"]"#,
        "tls1.3",
        "enforce",
        "",
    );
    let p = proxy(&backend, "", &rules);
    let mut c = Smtp::connect(p.addr());
    c.expect("220");
    c.cmd("EHLO client.sender.test", "250");
    c.cmd("STARTTLS", "220");
    let mut c = c
        .start_tls_with(
            Some("mx1.example.test"),
            "mx1.example.test",
            &[&rustls::version::TLS12],
        )
        .unwrap();
    c.cmd("EHLO client.sender.test", "250");

    // A refused MAIL: neither it nor its RCPT and DATA reach the backend.
    c.send_raw(
        b"MAIL FROM:<a@refused.test>\r\nRCPT TO:<after-refused-mail@example.test>\r\nDATA\r\n",
    );
    assert_eq!(c.reply(), "530 5.7.0 Must use TLS 1.3\r\n");
    assert_eq!(c.reply(), "503 5.5.1 Error: need MAIL command\r\n");
    assert_eq!(c.reply(), "503 5.5.1 Error: need RCPT command\r\n");

    // A refused RCPT between two the backend answers.
    c.send_raw(b"MAIL FROM:<b@ok.test>\r\nRCPT TO:<x@legal.example.test>\r\nRCPT TO:<y@example.test>\r\nDATA\r\n");
    assert_eq!(c.reply(), "250 2.1.0 Ok\r\n");
    assert_eq!(c.reply(), "530 5.7.0 Must use TLS 1.3\r\n");
    assert_eq!(c.reply(), "250 2.1.5 Ok\r\n");
    c.expect("354");
    let subject = unique("in-tls");
    c.send_raw(format!("Subject: {subject}\r\n\r\nhello\r\n.\r\n").as_bytes());
    c.expect("250 2.0.0 Ok: queued");

    // Every recipient refused here: DATA never starts a message.
    c.send_raw(b"MAIL FROM:<c@ok.test>\r\nRCPT TO:<z@legal.example.test>\r\nDATA\r\nRSET\r\n");
    assert_eq!(c.reply(), "250 2.1.0 Ok\r\n");
    assert_eq!(c.reply(), "530 5.7.0 Must use TLS 1.3\r\n");
    assert_eq!(c.reply(), "554 5.5.1 Error: no valid recipients\r\n");
    c.expect("250");
    c.cmd("QUIT", "221");

    let msg = backend.delivered(&subject);
    assert!(msg.contains("Delivered-To: y@example.test"), "{msg}");
    assert_eq!(evaluations(&p, "new-senders", "refused"), 1.0);
    assert_eq!(evaluations(&p, "legal", "refused"), 2.0);
    backend.wait_command("RSET");
    let seen = backend.commands();
    for never in ["refused.test", "after-refused-mail", "legal.example.test"] {
        assert!(
            !seen.iter().any(|c| c.contains(never)),
            "{never} in {seen:?}"
        );
    }
    assert_eq!(seen.iter().filter(|c| *c == "DATA").count(), 1, "{seen:?}");
    assert_eq!(backend.messages().len(), 1);
}

#[test]
fn a_second_mail_cannot_move_the_sender_a_recipient_rule_sees() {
    let backend = postfix(PF_NESTED_MAIL);
    let p = proxy(
        &backend,
        "",
        &rule(
            "bank-to-legal",
            "senders = [\"bank.example\"]\nrecipients = [\"legal.example.test\"]",
            "tls",
            "enforce",
            "",
        ),
    );
    let mut c = Smtp::connect(p.addr());
    c.expect("220");
    c.cmd("EHLO client.sender.test", "250");
    // One command at a time: the backend keeps the first sender and
    // refuses the nested MAIL; the rule must still see bank.example.
    c.cmd("MAIL FROM:<a@bank.example>", "250");
    c.cmd(
        "MAIL FROM:<a@other.test>",
        "503 5.5.1 Error: nested MAIL command",
    );
    c.cmd("RCPT TO:<boss@legal.example.test>", "530 5.7.0");
    c.cmd("RSET", "250");
    // Pipelined, before the backend's replies: either may be the sender.
    c.send_raw(b"MAIL FROM:<a@bank.example>\r\nMAIL FROM:<a@other.test>\r\nRCPT TO:<boss2@legal.example.test>\r\nRCPT TO:<clerk@legal.example.test>\r\n");
    c.expect("250");
    c.expect("503");
    c.expect("530 5.7.0");
    c.expect("530 5.7.0");
    // Without the bank as sender, the rule does not match.
    c.cmd("RSET", "250");
    c.cmd("MAIL FROM:<a@other.test>", "250");
    c.cmd("RCPT TO:<ok@legal.example.test>", "250");
    c.cmd("QUIT", "221");
    assert_eq!(evaluations(&p, "bank-to-legal", "refused"), 3.0);
    backend.wait_command("RCPT TO:<ok@legal.example.test>");
    backend_never_saw(&backend, "boss");
    backend_never_saw(&backend, "clerk@");
}
