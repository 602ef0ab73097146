//! The Postfix recipes of deploy/postfix/, read from there (no copy here):
//! each identity mode's master.cf service entry and the main.cf snippet
//! configure a real private Postfix behind the proxy, and mail goes
//! through. Only the port of the entry is changed (10025 → a test port).
//! Section 4 of master.cf.snippet, the commented TLS-on-the-loopback-hop
//! service, is loaded uncommented (port and certificate paths changed),
//! with the CA and certificate made by the commands of README.md section 5
//! and the proxy's backend from that section's toml block.
//! Needs root and scripts/install-test-deps.sh; a missing peer fails.

mod support;

use std::net::SocketAddr;
use std::process::Command;

use support::*;

const PORT_PROXY_V2: u16 = 14550;
const PORT_XCLIENT: u16 = 14551;
const PORT_NONE: u16 = 14552;
const PORT_NONE_TRAP: u16 = 14553;
const PORT_TLS_HOP: u16 = 14600;

fn recipe(file: &str) -> String {
    std::fs::read_to_string(repo().join("deploy/postfix").join(file)).unwrap()
}

/// The service entry of `file` that listens on 127.0.0.1:10025 (its first
/// line and the indented `-o` lines after it), moved to `port`.
fn service_entry(file: &str, port: u16) -> String {
    let text = recipe(file);
    let mut lines = text
        .lines()
        .skip_while(|l| !l.starts_with("127.0.0.1:10025 "));
    let first = lines
        .next()
        .unwrap_or_else(|| panic!("{file}: no 127.0.0.1:10025 service"));
    let mut entry = vec![first.replacen("127.0.0.1:10025", &format!("127.0.0.1:{port}"), 1)];
    entry.extend(
        lines
            .take_while(|l| l.starts_with(' ') || l.starts_with('\t'))
            .map(str::to_string),
    );
    assert!(entry.len() > 1, "{file}: no -o lines: {entry:?}");
    entry.join("\n")
}

/// The `name = value` lines of main.cf.snippet, for postconf -e.
fn main_cf() -> String {
    let text = recipe("main.cf.snippet");
    let settings: Vec<&str> = text
        .lines()
        .filter(|l| !l.trim_start().starts_with('#') && l.contains(" = "))
        .collect();
    assert!(
        settings.contains(&"smtpd_forbid_bare_newline = normalize"),
        "{settings:?}"
    );
    settings.join("\n")
}

/// A Postfix configured by the recipe: `entry` in master.cf, main.cf
/// snippet applied, plus `extra` main.cf lines of the test's own.
fn postfix(port: u16, entry: &str, env: &[(&str, &str)], extra: &str) -> PostfixBackend {
    let postconf = format!("{}\n{extra}", main_cf());
    let mut all = vec![("MASTER_CF", entry), ("POSTCONF", postconf.as_str())];
    all.extend_from_slice(env);
    let b = PostfixBackend::start(port, &all);
    let out = Command::new("postconf")
        .args(["-c", b.dir.join("etc").to_str().unwrap(), "-P"])
        .output()
        .unwrap();
    let services = String::from_utf8_lossy(&out.stdout);
    assert!(
        services.contains(&format!(
            "127.0.0.1:{port}/inet/syslog_name = postfix/proxied"
        )),
        "the recipe's entry is not the service on {port}:\n{services}"
    );
    b
}

fn proxy_for(backend: SocketAddr, identity: &str, more_backend: &str, more: &str) -> Proxy {
    let config = ProxyConfig::servers(&[backend])
        .replace(
            &format!("servers = [\"{backend}\"]"),
            &format!("servers = [\"{backend}\"]\nidentity = \"{identity}\"\n{more_backend}"),
        )
        .append(more);
    let proxy = Proxy::start(config);
    let probe = proxy.wait_log("backend health: first probe done", 1);
    assert_eq!(probe["up"], 1, "{}", proxy.all_logs());
    proxy
}

#[test]
fn proxy_v2_recipe_postfix_sees_the_real_client() {
    let entry = service_entry("master.cf.snippet", PORT_PROXY_V2);
    assert!(
        entry.contains("smtpd_upstream_proxy_protocol=haproxy"),
        "{entry}"
    );
    let b = postfix(PORT_PROXY_V2, &entry, &[], "");
    let proxy = proxy_for(b.addr(), "proxy-v2", "", "");
    let subject = format!("recipe-v2-{}", std::process::id());
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
    let msg = b.delivered(&subject);
    assert!(
        msg.contains("[127.0.0.5]"),
        "Postfix did not see the client:\n{msg}"
    );
}

#[test]
fn xclient_recipe_authorises_only_the_proxy_and_postfix_sees_the_client() {
    let dns = DnsServer::start(&["--host-record=client5.sender.test,203.0.113.5"]);
    let entry = service_entry("master.cf.xclient", PORT_XCLIENT);
    // main.cf authorises nobody: the recipe's -o line must do it.
    let b = postfix(PORT_XCLIENT, &entry, &[("XCLIENT_HOSTS", "192.0.2.1")], "");
    let proxy = proxy_for(
        b.addr(),
        "xclient",
        "",
        &format!("\n[dns]\nnameservers = [\"{}\"]\n", dns.addr),
    );
    let subject = format!("recipe-xclient-{}", std::process::id());
    swaks(
        &proxy,
        &[
            "--local-interface",
            "127.0.0.5",
            "--ehlo",
            "client5.sender.test",
        ],
        &subject,
    );
    let msg = b.delivered(&subject);
    assert!(
        msg.contains("from client5.sender.test (unknown [127.0.0.5])"),
        "Postfix did not take the XCLIENT identity:\n{msg}"
    );
    assert!(!msg.contains("localhost [127.0.0.1]"), "{msg}");
}

/// Only example.test is local: anything else is relaying.
const LOCAL_ONLY: &str = "virtual_mailbox_domains = example.test";

#[test]
fn none_recipe_is_no_open_relay_and_delivers_local_mail_with_the_proxy_header() {
    let entry = service_entry("master.cf.none", PORT_NONE);
    assert!(!entry.contains("proxy_protocol"), "{entry}");
    let b = postfix(PORT_NONE, &entry, &[], LOCAL_ONLY);
    let proxy = proxy_for(b.addr(), "none", "received_header = true", "");
    let reply = foreign_rcpt_reply(&proxy);
    assert!(
        reply.starts_with("454 4.7.1") && reply.contains("Relay access denied"),
        "relaying through the none recipe: {reply}"
    );
    let subject = format!("recipe-none-{}", std::process::id());
    swaks(&proxy, &["--local-interface", "127.0.0.5"], &subject);
    let msg = b.delivered(&subject);
    // Postfix saw the proxy; the proxy's own Received: line has the client.
    assert!(msg.contains("[127.0.0.1]"), "{msg}");
    assert!(msg.contains("127.0.0.5"), "no proxy Received: line:\n{msg}");
}

/// The trap the recipe closes is real: the same entry without
/// `-o mynetworks=` relays for anyone.
#[test]
fn none_recipe_without_its_mynetworks_line_is_an_open_relay() {
    let entry = service_entry("master.cf.none", PORT_NONE_TRAP);
    let trap: Vec<&str> = entry
        .lines()
        .filter(|l| l.trim() != "-o mynetworks=")
        .collect();
    assert_eq!(trap.len() + 1, entry.lines().count(), "{entry}");
    let b = postfix(PORT_NONE_TRAP, &trap.join("\n"), &[], LOCAL_ONLY);
    let proxy = proxy_for(b.addr(), "none", "", "");
    let reply = foreign_rcpt_reply(&proxy);
    assert!(reply.starts_with("250"), "expected the open relay: {reply}");
}

/// Section 4 of master.cf.snippet: the commented service after "# 4.",
/// uncommented, on `port`, with its certificate paths in `ca_dir`.
fn tls_hop_entry(port: u16, ca_dir: &std::path::Path) -> String {
    let text = recipe("master.cf.snippet");
    let section = text
        .split("\n# 4. ")
        .nth(1)
        .expect("master.cf.snippet has a section 4");
    let lines: Vec<&str> = section
        .lines()
        .skip_while(|l| !l.starts_with("#127.0.0.1:10025 "))
        .take_while(|l| l.starts_with("#127.0.0.1:10025 ") || l.starts_with("#  -o "))
        .collect();
    assert!(
        lines.len() > 1,
        "section 4 has no commented service: {section}"
    );
    let from = "/etc/postfix/backend-ca";
    let entry = lines
        .iter()
        .map(|l| l[1..].to_string())
        .collect::<Vec<_>>()
        .join("\n");
    assert!(
        entry.contains(&format!("smtpd_tls_chain_files={from}/")),
        "{entry}"
    );
    entry
        .replacen("127.0.0.1:10025", &format!("127.0.0.1:{port}"), 1)
        .replace(from, ca_dir.to_str().unwrap())
}

/// The toml block of README.md section 5: the body of the proxy's
/// `[[backend]]` (its header and name are the harness's), on `port`, with
/// the CA in `ca_dir`.
fn tls_hop_backend(port: u16, ca_dir: &std::path::Path) -> String {
    let text = recipe("README.md");
    let section = text.split("\n## 5. ").nth(1).expect("README.md section 5");
    let block = section
        .split("```toml\n")
        .nth(1)
        .and_then(|b| b.split("\n```").next())
        .expect("section 5 has a toml block");
    let body: Vec<&str> = block
        .lines()
        .filter(|l| *l != "[[backend]]" && !l.starts_with("name = "))
        .collect();
    assert_eq!(body.len() + 2, block.lines().count(), "{block}");
    let body = body.join("\n");
    assert!(body.contains("servers = [\"127.0.0.1:10025\"]"), "{body}");
    body.replace("127.0.0.1:10025", &format!("127.0.0.1:{port}"))
        .replace("/etc/postfix/backend-ca", ca_dir.to_str().unwrap())
}

#[test]
fn tls_hop_recipe_postfix_logs_the_proxys_tls_and_writes_esmtps() {
    let tmp = tempdir();
    let ca_dir = tmp.path().join("backend-ca");
    backend_hop_ca(&ca_dir);
    let entry = tls_hop_entry(PORT_TLS_HOP, &ca_dir);
    let b = postfix(PORT_TLS_HOP, &entry, &[], "");
    let backend = tls_hop_backend(PORT_TLS_HOP, &ca_dir);
    assert!(backend.contains("tls = \"starttls\""), "{backend}");
    let proxy = Proxy::start(ProxyConfig::standard(&backend));
    let probe = proxy.wait_log("backend health: first probe done", 1);
    assert_eq!(probe["up"], 1, "{}", proxy.all_logs());

    let subject = format!("recipe-tls-hop-{}", std::process::id());
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
    let msg = b.delivered(&subject);
    // Postfix's own Received line: the real client (the PROXY header
    // came first), and the hop was TLS.
    assert!(
        msg.contains("[127.0.0.5])") && msg.contains("(Postfix) with ESMTPS id"),
        "{msg}"
    );
    let log = std::fs::read_to_string(b.dir.join("log/maillog")).unwrap();
    assert!(
        log.lines().any(|l| l.contains("postfix/proxied/smtpd[")
            && l.contains("TLS connection established from")
            && l.contains("[127.0.0.5]")),
        "no TLS in Postfix's log:\n{log}"
    );
    let s = proxy.wait_log("session", 1);
    assert_ne!(s["backend_tls"], "none", "{s}");
}
