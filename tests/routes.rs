//! `[[route]]` (DESIGN.md §10): the backend chosen from the SNI after the
//! handshake, through the real binary, with a real Postfix as one tenant's
//! backend and the built-in sink as the default. What each backend finally
//! holds, the EHLO each client sees, the `backend` label of the metrics,
//! a pool that is down, and SIGHUP.

mod support;

use std::net::SocketAddr;
use std::process::Command;

use support::*;

const PF_TENANTS: u16 = 14500;
const PF_SIGHUP: u16 = 14501;
/// Nothing listens here: a pool that is down.
const DEAD: u16 = 14502;

/// The standard config (sink "b" as the listener's backend, metrics on)
/// plus backend "t2" on `t2` and `routes`.
fn proxy(t2: &str, routes: &str) -> Proxy {
    Proxy::start(
        ProxyConfig::sink()
            .append("\n[metrics]\nlisten = \"127.0.0.1:0\"\n")
            .append(&format!("\n[[backend]]\nname = \"t2\"\n{t2}\n"))
            .append(routes),
    )
}

fn postfix(port: u16) -> PostfixBackend {
    PostfixBackend::start(port, &[])
}

/// A session to TLS with `sni` (or none: the default certificate's name
/// is verified), then the post-TLS EHLO reply.
fn tls_session(proxy: &Proxy, sni: Option<&str>) -> (Smtp, String) {
    let mut c = Smtp::connect(proxy.addr());
    c.expect("220");
    c.cmd("EHLO client.sender.test", "250");
    c.cmd("STARTTLS", "220");
    let mut c = c.start_tls(sni, "mx1.example.test").unwrap();
    let ehlo = c.cmd("EHLO client.sender.test", "250");
    (c, ehlo)
}

/// Delivers one message whose subject is `subject` over a session with
/// `sni`; returns the post-TLS EHLO reply.
fn deliver(proxy: &Proxy, sni: Option<&str>, subject: &str) -> String {
    let (mut c, ehlo) = tls_session(proxy, sni);
    c.cmd("MAIL FROM:<a@sender.test>", "250");
    c.cmd("RCPT TO:<r@example.test>", "250");
    c.cmd("DATA", "354");
    c.send(&format!("Subject: {subject}\r\n\r\nbody\r\n."));
    c.expect("250");
    c.cmd("QUIT", "221");
    ehlo
}

/// The EHLO reply a server gives a plain client, as the proxy relays it.
fn direct_ehlo(addr: SocketAddr) -> String {
    let mut c = Smtp::connect(addr);
    c.expect("220");
    let r = c.cmd("EHLO client.sender.test", "250");
    c.cmd("QUIT", "221");
    r
}

fn sink_subjects(proxy: &Proxy) -> Vec<String> {
    proxy
        .sink_messages()
        .iter()
        .filter_map(|m| {
            let m = String::from_utf8_lossy(m);
            m.lines()
                .find_map(|l| l.strip_prefix("Subject: ").map(str::to_string))
        })
        .collect()
}

fn has_line(reply: &str, ext: &str) -> bool {
    reply.lines().any(|l| l.get(4..) == Some(ext))
}

/// The extension keywords of an EHLO reply (its first line, the
/// server's name, left out).
fn keywords(reply: &str) -> Vec<String> {
    let mut k: Vec<String> = reply
        .lines()
        .skip(1)
        .filter_map(|l| l.get(4..))
        .map(|l| l.split([' ', '=']).next().unwrap_or_default().to_string())
        .collect();
    k.sort();
    k
}

#[test]
fn each_tenant_lands_in_its_own_backend_with_its_own_ehlo() {
    // Postfix without DSN, which the sink offers: the pre-TLS EHLO below
    // then shows an intersection, not either pool's own list.
    let pf = PostfixBackend::start(
        PF_TENANTS,
        &[(
            "POSTCONF",
            "smtpd_discard_ehlo_keywords = silent-discard, dsn",
        )],
    );
    let p = proxy(
        &format!("servers = [\"{}\"]", pf.addr()),
        r#"
[[route]]
sni = ["mx.tenant2.test", "*.wild.test"]
backend = "t2"
"#,
    );

    // A routed name no certificate covers is warned about at start, with
    // file, line and key; the one here is covered (*.wild.test). The
    // routes were loaded (and logged) before the proxy was ready, so
    // their absence is not a log not yet read.
    let routes = p.logs_with("route");
    assert!(
        routes.iter().any(|r| r["backend"] == "t2"),
        "{}",
        p.all_logs()
    );
    assert!(!p.all_logs().contains("is routed to"), "{}", p.all_logs());

    // The EHLO replies of the two pools, as the proxy relays them after
    // TLS, filtered as always (XCLIENT and XFORWARD are the proxy's, never
    // the client's; they are not the last line here, so no marker
    // changes).
    let postfix_ehlo: String = direct_ehlo(pf.addr())
        .split_inclusive("\r\n")
        .filter(|l| !l[4..].starts_with("XCLIENT") && !l[4..].starts_with("XFORWARD"))
        .collect();

    // Before TLS: what both pools take, and nothing more. Postfix offers
    // SIZE and the sink does not; the sink offers DSN and Postfix does
    // not (discarded above): neither may be offered.
    let mut c = Smtp::connect(p.addr());
    c.expect("220");
    let pre = c.cmd("EHLO client.sender.test", "250");
    c.cmd("QUIT", "221");
    p.wait_log("session", 1);
    assert!(has_line(&pre, "PIPELINING"), "{pre}");
    assert!(has_line(&pre, "STARTTLS"), "{pre}");
    assert!(postfix_ehlo.contains("-SIZE "), "{postfix_ehlo}");
    assert!(!has_line(&postfix_ehlo, "DSN"), "{postfix_ehlo}");
    assert!(!pre.contains("SIZE"), "{pre}");
    assert!(!has_line(&pre, "DSN"), "{pre}");

    let t2 = deliver(&p, Some("mx.tenant2.test"), "for-tenant2");
    p.wait_log("session", 2);
    let wild = deliver(&p, Some("host.wild.test"), "for-wild");
    p.wait_log("session", 3);
    let mx1 = deliver(&p, Some("mx1.example.test"), "for-mx1");
    p.wait_log("session", 4);
    let nosni = deliver(&p, None, "no-sni");
    // Each session's line is logged after its QUIT's 221: waited for one
    // by one, so they are in the order of the sessions.
    p.wait_log("session", 5);

    // After TLS: exactly the chosen backend's own EHLO reply.
    assert!(has_line(&postfix_ehlo, "VRFY"), "{postfix_ehlo}");
    assert_eq!(t2, postfix_ehlo);
    assert_eq!(wild, postfix_ehlo);
    assert_eq!(mx1, nosni);
    assert!(mx1.starts_with("250-mx1.example.test\r\n"), "{mx1}");
    assert!(!has_line(&mx1, "VRFY") && !mx1.contains("SIZE"), "{mx1}");
    assert!(has_line(&mx1, "DSN"), "{mx1}");

    // The pre-TLS extensions are exactly those both pools offer.
    let sink_keys = keywords(&mx1);
    let postfix_keys = keywords(&postfix_ehlo);
    let mut both: Vec<String> = sink_keys
        .iter()
        .filter(|k| postfix_keys.contains(k))
        .cloned()
        .collect();
    both.push("STARTTLS".to_string());
    both.sort();
    assert_eq!(keywords(&pre), both, "{pre}\n{mx1}\n{postfix_ehlo}");

    // What each backend holds.
    pf.delivered("Subject: for-tenant2");
    pf.delivered("Subject: for-wild");
    let at_postfix: Vec<String> = pf
        .messages()
        .iter()
        .map(|m| String::from_utf8_lossy(m).to_string())
        .collect();
    assert_eq!(at_postfix.len(), 2, "{at_postfix:?}");
    let mut sink = sink_subjects(&p);
    sink.sort();
    assert_eq!(sink, ["for-mx1", "no-sni"]);

    // Logs and metrics carry the route.
    let sessions = p.logs_with("session");
    assert_eq!(sessions.len(), 5, "{sessions:?}");
    assert_eq!(sessions[0]["messages"], 0, "{sessions:?}");
    let routed: Vec<&str> = sessions
        .iter()
        .filter(|s| s["messages"] == 1)
        .map(|s| s["backend"].as_str().unwrap())
        .collect();
    assert_eq!(routed, ["t2", "t2", "b", "b"], "{sessions:?}");
    assert_eq!(
        p.metric(r#"starttls_proxy_sessions_total{tls="starttls",backend="t2"}"#),
        Some(2.0)
    );
    assert_eq!(
        p.metric(r#"starttls_proxy_sessions_total{tls="starttls",backend="b"}"#),
        Some(2.0)
    );
    assert_eq!(
        p.metric(r#"starttls_proxy_messages_relayed_total{backend="t2"}"#),
        Some(2.0)
    );
    assert_eq!(
        p.metric(r#"starttls_proxy_messages_relayed_total{backend="b"}"#),
        Some(2.0)
    );
}

#[test]
fn a_route_to_a_pool_that_is_down_gets_421_while_the_other_tenant_delivers() {
    let p = proxy(
        &format!("servers = [\"127.0.0.1:{DEAD}\"]\nhealth_interval = \"1s\""),
        r#"
[[route]]
sni = ["mx.tenant2.test", "mx.nocert.test"]
backend = "t2"
"#,
    );
    // In the JSON log line, after the file and line.
    let warning = r#"proxy.toml:"#;
    let logs = p.all_logs();
    assert!(
        logs.lines().any(|l| l.contains(warning)
            && l.contains(r#"route[0].sni[1]: \"mx.nocert.test\" is routed to \"t2\" but no certificate covers it"#)
            && l.contains(r#""level":"WARN""#)),
        "{logs}"
    );
    // The default pool is up: the greeting is 220 for everyone.
    let mut c = Smtp::connect(p.addr());
    c.expect("220");
    c.cmd("EHLO client.sender.test", "250");
    c.cmd("STARTTLS", "220");
    let mut c = c
        .start_tls(Some("mx.tenant2.test"), "mx.tenant2.test")
        .unwrap();
    c.send("EHLO client.sender.test");
    let r = c.reply();
    assert_eq!(
        r.trim_end(),
        "421 4.4.1 mx1.example.test Service temporarily unavailable, try again later"
    );
    assert!(c.closed());

    deliver(&p, Some("mx1.example.test"), "other-tenant");
    assert_eq!(sink_subjects(&p), ["other-tenant"]);
    let down = p.wait_log("no backend server available", 1);
    assert_eq!(down["backend"], "t2");
    assert_eq!(
        p.metric(r#"starttls_proxy_backend_up{backend="t2",server="127.0.0.1:14502"}"#),
        Some(0.0)
    );
}

#[test]
fn sighup_moves_a_name_to_another_backend_for_new_sessions() {
    let pf = postfix(PF_SIGHUP);
    let p = proxy(
        &format!("servers = [\"{}\"]", pf.addr()),
        r#"
[[route]]
sni = ["mx.tenant2.test"]
backend = "t2"
"#,
    );
    deliver(&p, Some("mx.tenant2.test"), "before-reload");
    pf.delivered("Subject: before-reload");

    // A session routed before the reload keeps its backend.
    let (mut open, ehlo) = tls_session(&p, Some("mx.tenant2.test"));
    assert!(has_line(&ehlo, "VRFY"), "{ehlo}");

    let path = p.dir.path().join("proxy.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    let moved = text.replace(
        "sni = [\"mx.tenant2.test\"]\nbackend = \"t2\"",
        "sni = [\"mx.tenant2.test\"]\nbackend = \"b\"",
    );
    assert_ne!(moved, text);
    std::fs::write(&path, moved).unwrap();
    let st = Command::new("kill")
        .args(["-HUP", &p.pid().to_string()])
        .status()
        .unwrap();
    assert!(st.success());
    p.wait_log("routes loaded", 2);
    assert_eq!(p.logs_with("route")[1]["backend"], "b");

    deliver(&p, Some("mx.tenant2.test"), "after-reload");
    assert_eq!(sink_subjects(&p), ["after-reload"]);

    open.cmd("MAIL FROM:<a@sender.test>", "250");
    open.cmd("RCPT TO:<r@example.test>", "250");
    open.cmd("DATA", "354");
    open.send("Subject: open-across-reload\r\n\r\nbody\r\n.");
    open.expect("250");
    open.cmd("QUIT", "221");
    pf.delivered("Subject: open-across-reload");
    assert_eq!(sink_subjects(&p), ["after-reload"]);
}
