//! The Exim recipes of deploy/exim/, read from there (no copy here), with
//! a real Exim 4.96 (extracted from Debian's exim4-daemon-light by
//! scripts/install-test-deps.sh):
//! - backend.conf: Exim behind the proxy with identity = "none" and
//!   received_header = true (only the port changes), and the open-relay
//!   trap it closes;
//! - backend-tls.conf: the same with STARTTLS on the loopback hop (port
//!   and certificate paths change; the CA is made by the commands of
//!   deploy/postfix/README.md section 5, the proxy's backend is the
//!   recipe's own comment block): Exim writes "with esmtps"; and the
//!   identities this Exim cannot take (xclient, proxy-v2) get the sender a
//!   421, never mail relayed without the identity asked for;
//! - sender.conf: Exim as a strict sender (tests/peers/exim-sender.sh)
//!   verifying the proxy's chain and the MX name; a leaf-only chain or a
//!   certificate for another name leaves the message queued.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use support::*;

const PORT_BACKEND: u16 = 14560;
const PORT_TRAP: u16 = 14561;
const PORT_TLS_HOP: u16 = 14601;
const PORT_NO_XCLIENT: u16 = 14602;
const PORT_NO_PROXY: u16 = 14603;
const PORT_NO_PROXY_SYNC: u16 = 14604;

struct Exim {
    dir: PathBuf,
    port: u16,
    _tmp: tempfile::TempDir,
}

impl Exim {
    fn start(port: u16, main: &str) -> Exim {
        let tmp = tempdir();
        let dir = tmp.path().join("exim");
        let out = Command::new(peer_script("exim-backend.sh"))
            .arg("start")
            .arg(&dir)
            .arg(port.to_string())
            .env("EXIM_MAIN", main)
            .output()
            .expect("tests/peers/exim-backend.sh");
        assert!(
            out.status.success(),
            "exim did not start (scripts/install-test-deps.sh extracts it):\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        Exim {
            dir,
            port,
            _tmp: tmp,
        }
    }

    fn addr(&self) -> std::net::SocketAddr {
        std::net::SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// Runs the queue until the message holding `needle` is in the Maildir.
    fn delivered(&self, needle: &str) -> String {
        wait_for(
            &format!("exim delivery of {needle:?}"),
            Duration::from_secs(20),
            || {
                let _ = Command::new(peer_script("exim-backend.sh"))
                    .arg("deliver")
                    .arg(&self.dir)
                    .output();
                maildir_messages(&self.dir.join("maildir/new"))
                    .into_iter()
                    .map(|m| String::from_utf8_lossy(&m).to_string())
                    .find(|m| m.contains(needle))
            },
        )
    }
}

impl Drop for Exim {
    fn drop(&mut self) {
        let _ = Command::new(peer_script("exim-backend.sh"))
            .arg("stop")
            .arg(&self.dir)
            .output();
    }
}

/// deploy/exim/backend.conf with its port moved to `port`.
fn recipe(port: u16) -> String {
    let text = std::fs::read_to_string(repo().join("deploy/exim/backend.conf")).unwrap();
    assert!(text.contains("daemon_smtp_ports = 10025\n"), "{text}");
    text.replace(
        "daemon_smtp_ports = 10025",
        &format!("daemon_smtp_ports = {port}"),
    )
}

fn proxy_for(exim: &Exim) -> Proxy {
    let addr = exim.addr();
    let config = ProxyConfig::servers(&[addr]).replace(
        &format!("servers = [\"{addr}\"]"),
        &format!("servers = [\"{addr}\"]\nidentity = \"none\"\nreceived_header = true"),
    );
    let proxy = Proxy::start(config);
    let probe = proxy.wait_log("backend health: first probe done", 1);
    assert_eq!(probe["up"], 1, "{}", proxy.all_logs());
    proxy
}

#[test]
fn exim_backend_recipe_delivers_with_the_proxy_header_and_relays_nothing() {
    let exim = Exim::start(PORT_BACKEND, &recipe(PORT_BACKEND));
    let proxy = proxy_for(&exim);
    let reply = foreign_rcpt_reply(&proxy);
    assert!(
        reply.starts_with("550"),
        "relaying through the recipe: {reply}"
    );

    let subject = format!("exim-recipe-{}", std::process::id());
    swaks(
        &proxy,
        &[
            "--local-interface",
            "127.0.0.5",
            "--ehlo",
            "client.sender.test",
        ],
        &subject,
    );
    let msg = exim.delivered(&subject);
    // Exim saw the proxy; the proxy's Received: line names the client and TLS.
    assert!(msg.contains("[127.0.0.1]"), "{msg}");
    assert!(msg.contains("127.0.0.5"), "no proxy Received: line:\n{msg}");
    assert!(msg.contains("TLS"), "no TLS facts:\n{msg}");
}

/// What the recipe's relay_from_hosts line prevents: with Debian's
/// default (127.0.0.1 and ::1 always added), everyone relays via the proxy.
#[test]
fn exim_with_debians_relay_from_hosts_is_an_open_relay_behind_the_proxy() {
    let text = recipe(PORT_TRAP);
    let trap = text.replace(
        "hostlist relay_from_hosts = :",
        "hostlist relay_from_hosts = 127.0.0.1 : ::::1",
    );
    assert_ne!(trap, text);
    let exim = Exim::start(PORT_TRAP, &trap);
    let proxy = proxy_for(&exim);
    let reply = foreign_rcpt_reply(&proxy);
    assert!(reply.starts_with("250"), "expected the open relay: {reply}");
}

// === Exim as a strict sender (deploy/exim/sender.conf) ===

/// deploy/exim/sender.conf aimed at the proxy: its route to `mx` on
/// `port`, and the demo CA as the trust anchors.
fn sender_recipe(port: u16, mx: &str) -> String {
    let text = std::fs::read_to_string(repo().join("deploy/exim/sender.conf")).unwrap();
    let route = "route_list = * mx1.example.test::25 byname";
    let ca = "tls_verify_certificates = /etc/ssl/certs/ca-certificates.crt";
    for line in [route, ca, "hosts_require_tls = *", "tls_verify_hosts = *"] {
        assert!(text.contains(&format!("  {line}\n")), "{line}:\n{text}");
    }
    text.replace(route, &format!("route_list = * {mx}::{port} byname"))
        .replace(
            ca,
            &format!(
                "tls_verify_certificates = {}",
                certs().join("ca.pem").display()
            ),
        )
}

/// One message for rcpt@example.test from the recipe's Exim, through
/// the proxy on `port` reached as the MX `mx`: (exit code, what
/// tests/peers/exim-sender.sh printed, its log lines included).
fn exim_send(port: u16, mx: &str) -> (i32, String) {
    let tmp = tempdir();
    let out = Command::new(peer_script("exim-sender.sh"))
        .arg("send")
        .arg(tmp.path().join("sender"))
        .arg(mx)
        .env("EXIM_SENDER", sender_recipe(port, mx))
        .output()
        .expect("tests/peers/exim-sender.sh");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let code = out.status.code().unwrap_or(-1);
    assert!(code != 3, "exim-sender.sh could not run: {text}");
    (code, text)
}

/// The sender's log lines for the delivery attempt ("=>" or "==").
fn attempt_line<'a>(out: &'a str, mark: &str) -> &'a str {
    out.lines()
        .find(|l| l.contains(&format!(" {mark} rcpt@example.test ")))
        .unwrap_or_else(|| panic!("no {mark} line:\n{out}"))
}

#[test]
fn strict_exim_sender_delivers_through_the_proxy_with_the_certificate_verified() {
    let proxy = Proxy::start(ProxyConfig::sink());
    let (code, out) = exim_send(proxy.port(), "mx1.example.test");
    assert_eq!(code, 0, "the strict Exim must deliver:\n{out}");
    let delivered = attempt_line(&out, "=>");
    for fact in [
        "H=mx1.example.test [127.0.0.1]",
        " X=TLS1.3:",
        " CV=yes",
        " DN=\"CN=mx1.example.test\"",
    ] {
        assert!(delivered.contains(fact), "{fact:?} not in {delivered}");
    }
    assert!(out.contains("queued: 0"), "{out}");
    // What the backend finally holds: the message, relayed by the proxy.
    let held = proxy.sink_messages();
    assert_eq!(held.len(), 1, "{out}");
    let msg = String::from_utf8_lossy(&held[0]);
    assert!(msg.contains("Subject: exim-sender TLS check"), "{msg}");
    assert!(msg.contains("To: rcpt@example.test"), "{msg}");
    // tls_sni = $host: the proxy chose by the MX name.
    let hs = proxy.wait_log("tls handshake", 1);
    assert_eq!(hs["sni"], "mx1.example.test", "{hs}");
    assert_eq!(hs["sni_match"], "matched", "{hs}");
}

#[test]
fn strict_exim_sender_defers_when_the_intermediate_is_missing() {
    let proxy = Proxy::start(ProxyConfig::sink().without_mx1_intermediate());
    let (code, out) = exim_send(proxy.port(), "mx1.example.test");
    assert_eq!(code, 1, "a strict Exim must defer:\n{out}");
    let deferred = attempt_line(&out, "==");
    assert!(
        deferred.ends_with("TLS session: (certificate verification failed): certificate invalid"),
        "{deferred}"
    );
    assert!(
        out.contains("queued: 1"),
        "the message must stay queued: {out}"
    );
    assert!(proxy.sink_messages().is_empty());
}

#[test]
fn strict_exim_sender_defers_on_a_name_mismatch() {
    // The proxy's certificates do not cover mx9.other.test: the default
    // one (mx1.example.test) is served, and its chain verifies (the same
    // proxy reached as mx1.example.test delivers: only the name fails).
    let proxy = Proxy::start(ProxyConfig::sink());
    let (code, out) = exim_send(proxy.port(), "mx9.other.test");
    assert_eq!(code, 1, "a strict Exim must defer:\n{out}");
    let deferred = attempt_line(&out, "==");
    // GnuTLS's verdict on the name carries no detail, unlike the chain's
    // ("certificate invalid").
    assert!(
        deferred.contains("H=mx9.other.test [127.0.0.1]")
            && deferred.ends_with("TLS session: (certificate verification failed)"),
        "{deferred}"
    );
    assert!(out.contains("queued: 1"), "{out}");
    assert!(proxy.sink_messages().is_empty());

    let (code, out) = exim_send(proxy.port(), "mx1.example.test");
    assert_eq!(code, 0, "{out}");
    assert_eq!(proxy.sink_messages().len(), 1);
}

// === TLS on the proxy→Exim hop (deploy/exim/backend-tls.conf) ===

const HOP_CA: &str = "/etc/exim4/backend-ca";

fn tls_recipe_text() -> String {
    std::fs::read_to_string(repo().join("deploy/exim/backend-tls.conf")).unwrap()
}

/// The hop's CA and certificate in `dir` (deploy/postfix/README.md section
/// 5), the key readable by Exim as the recipe says.
fn hop_ca(dir: &Path) {
    backend_hop_ca(dir);
    let text = tls_recipe_text();
    assert!(
        text.contains("chgrp Debian-exim backend.key && chmod 640 backend.key"),
        "{text}"
    );
    let out = Command::new("sh")
        .current_dir(dir)
        .args([
            "-c",
            "chgrp Debian-exim backend.key && chmod 640 backend.key",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
}

/// backend-tls.conf's settings with the port and the certificate paths
/// moved.
fn tls_recipe(port: u16, ca: &Path) -> String {
    let text = tls_recipe_text();
    assert!(text.contains("daemon_smtp_ports = 10025\n"), "{text}");
    assert!(
        text.contains(&format!("tls_privatekey = {HOP_CA}/backend.key\n")),
        "{text}"
    );
    text.replace(
        "daemon_smtp_ports = 10025",
        &format!("daemon_smtp_ports = {port}"),
    )
    .replace(HOP_CA, ca.to_str().unwrap())
}

/// The proxy's `[[backend]]` of the recipe's "Proxy side" comment (its
/// header line is the harness's), with the port and the CA moved and
/// `identity` set.
fn tls_recipe_backend(port: u16, ca: &Path, identity: &str) -> String {
    let text = tls_recipe_text();
    let body: Vec<String> = text
        .lines()
        .skip_while(|l| *l != "# Proxy side:")
        .skip(1)
        .take_while(|l| l.starts_with("#   "))
        .map(|l| l["#   ".len()..].to_string())
        .filter(|l| l != "[[backend]]")
        .collect();
    let body = body.join("\n");
    for key in ["tls = \"starttls\"", "identity = \"none\"", "tls_name = "] {
        assert!(body.contains(key), "{key} not in {body}");
    }
    body.replace("127.0.0.1:10025", &format!("127.0.0.1:{port}"))
        .replace(HOP_CA, ca.to_str().unwrap())
        .replace("identity = \"none\"", &format!("identity = \"{identity}\""))
}

/// Exim's main log; Exim writes it from its start ("daemon started"), so
/// a missing one is a broken harness, never an Exim that logged nothing.
fn mainlog(exim: &Exim) -> String {
    let path = exim.dir.join("log/mainlog");
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn exim_tls_hop_recipe_delivers_with_esmtps() {
    let tmp = tempdir();
    let ca = tmp.path().join("backend-ca");
    hop_ca(&ca);
    let exim = Exim::start(PORT_TLS_HOP, &tls_recipe(PORT_TLS_HOP, &ca));
    let proxy = Proxy::start(ProxyConfig::standard(&tls_recipe_backend(
        PORT_TLS_HOP,
        &ca,
        "none",
    )));
    let probe = proxy.wait_log("backend health: first probe done", 1);
    assert_eq!(probe["up"], 1, "{}", proxy.all_logs());

    let subject = format!("exim-tls-hop-{}", std::process::id());
    swaks(&proxy, &["--local-interface", "127.0.0.5"], &subject);
    let msg = exim.delivered(&subject);
    // Exim's Received line: the hop was TLS ("with esmtps  (TLS1.3) tls
    // <cipher>", two spaces as Exim 4.96 writes it).
    let exim_received = msg
        .lines()
        .find(|l| l.contains("by exim.backend.test with "))
        .unwrap_or_default();
    assert!(
        exim_received.contains(" with esmtps ") && exim_received.contains("(TLS1.3) tls "),
        "{msg}"
    );
    // The proxy's Received line still names the client.
    assert!(msg.contains("127.0.0.5"), "{msg}");
    let log = mainlog(&exim);
    assert!(
        log.lines()
            .any(|l| l.contains(" <= sender@sender.test H=") && l.contains(" X=TLS1.3:")),
        "no TLS cipher in Exim's <= line:\n{log}"
    );
    let s = proxy.wait_log("session", 1);
    assert_eq!(s["backend_tls"], "TLSv1.3", "{s}");
}

/// The TLS-hop Exim (plus `extra` main-section lines) behind a proxy
/// whose backend asks for an identity it cannot take: the health probe
/// marks it down with `why`, a client of a listener with only that
/// backend is greeted with 421, and a client routed to it after TLS (the
/// proxy then connects whatever the probe said) gets 421 at its EHLO, the
/// connect failing with `why` too. Exim receives no message.
fn identity_exim_cannot_take(port: u16, extra: &str, identity: &str, why: &str) -> Exim {
    let tmp = tempdir();
    let ca = tmp.path().join("backend-ca");
    hop_ca(&ca);
    // Every connection logged: the check below that Exim received nothing
    // must see that the proxy did talk to it.
    let exim = Exim::start(
        port,
        &format!(
            "{}\n{extra}\nlog_selector = +smtp_connection",
            tls_recipe(port, &ca)
        ),
    );
    let backend = tls_recipe_backend(port, &ca, identity);

    let alone = Proxy::start(ProxyConfig::standard(&backend));
    let probe = alone.wait_log("backend health: first probe done", 1);
    assert_eq!(probe["up"], 0, "{}", alone.all_logs());
    let down = alone.wait_log("backend server down (health probe failed)", 1);
    let error = down["error"].as_str().unwrap();
    assert!(error.contains(why), "{error}");
    let mut c = Smtp::connect(alone.addr());
    let greeting = c.reply();
    assert!(greeting.starts_with("421 "), "{greeting}");

    let routed = Proxy::start(
        ProxyConfig::sink()
            .append(&format!("\n[[backend]]\nname = \"exim\"\n{backend}\n"))
            .append("\n[[route]]\nsni = [\"mx.tenant2.test\"]\nbackend = \"exim\"\n"),
    );
    let mut c = tls_session_as(&routed, "mx.tenant2.test");
    c.send("EHLO client.sender.test");
    let reply = c.reply();
    assert!(
        reply.starts_with("421 4."),
        "the sender must get a 4xx and retry: {reply}"
    );
    let failed = routed.wait_log("no backend server available", 1);
    let error = failed["error"].as_str().unwrap();
    assert!(error.contains(why), "{error}");
    let log = mainlog(&exim);
    assert!(log.contains(" daemon started"), "{log}");
    assert!(
        log.contains("SMTP connection from [127.0.0.1]"),
        "the proxy never connected to Exim:\n{log}"
    );
    assert!(!log.contains(" <= "), "Exim received a message:\n{log}");
    exim
}

#[test]
fn exim_without_xclient_gets_no_session_and_the_sender_421() {
    identity_exim_cannot_take(
        PORT_NO_XCLIENT,
        "",
        "xclient",
        "does not offer XCLIENT to the proxy",
    );
}

/// Exim 4.96 offers PIPECONNECT to everyone by default, so it takes the
/// PROXY v2 header, sent before its banner, for early commands: it
/// greets, then answers the header's lines (`500 unrecognized command`
/// twice, `501 NUL characters are not allowed`, and `221` to the `QUIT`
/// inside the v2 signature) and closes.
#[test]
fn exim_without_proxy_support_gets_no_session_and_the_sender_421() {
    identity_exim_cannot_take(
        PORT_NO_PROXY,
        "",
        "proxy-v2",
        "does not accept the PROXY header",
    );
}

/// Without PIPECONNECT Exim refuses a client that speaks before its
/// banner: `554 SMTP synchronization error`. After a PROXY header that is
/// no verdict on the client to pass on (a 5xx would bounce the sender's
/// mail) but a server that does not take the header.
#[test]
fn exim_refusing_early_input_is_a_backend_failure_not_a_verdict_on_the_client() {
    let exim = identity_exim_cannot_take(
        PORT_NO_PROXY_SYNC,
        "pipelining_connect_advertise_hosts =",
        "proxy-v2",
        "does not accept the PROXY header",
    );
    let log = mainlog(&exim);
    assert!(
        log.contains("synchronization error (input sent without waiting for greeting)"),
        "{log}"
    );
}
