//! The Exim recipe of deploy/exim/backend.conf, read from there (no copy
//! here), configuring a real Exim 4.96 (extracted from Debian's
//! exim4-daemon-light by scripts/install-test-deps.sh) behind the proxy
//! with identity = "none" and received_header = true. Only the port
//! changes. Not covered yet: Exim as a strict sender.

mod support;

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use support::*;

const PORT_BACKEND: u16 = 14560;
const PORT_TRAP: u16 = 14561;

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

fn foreign_rcpt_reply(proxy: &Proxy) -> String {
    let mut c = tls_session(proxy);
    c.cmd("EHLO client.test", "250");
    c.cmd("MAIL FROM:<spammer@evil.test>", "250");
    c.send("RCPT TO:<victim@elsewhere.test>");
    let reply = c.reply();
    c.send("QUIT");
    reply
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
    let out = Command::new("swaks")
        .args(["-s", "127.0.0.1", "-p", &proxy.port().to_string(), "--tls"])
        .args([
            "--local-interface",
            "127.0.0.5",
            "--ehlo",
            "client.sender.test",
        ])
        .args(["--from", "sender@sender.test", "--to", "rcpt@example.test"])
        .args([
            "--header",
            &format!("Subject: {subject}"),
            "--timeout",
            "20",
        ])
        .output()
        .expect("swaks");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
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
