//! Inbound PROXY protocol behind an L4 balancer: the header is honoured
//! only from trusted networks, and the client it names is the one the
//! limits, the logs and the backend see.

mod support;

use std::io::{Read, Write};
use std::process::Command;

use support::*;

/// A proxy whose listener expects a PROXY header of `version` from
/// `trusted`, relaying to a fake backend told the client by PROXY v1.
fn start(version: u8, trusted: &str, extra: &str) -> (Proxy, FakeBackend) {
    let b = FakeBackend::start(FakeBehaviour::Normal);
    let config = ProxyConfig::with(
        &format!("proxy_protocol = {{ version = {version}, trusted = [{trusted}] }}"),
        &format!("servers = [\"{}\"]\nidentity = \"proxy-v1\"", b.addr),
    )
    .append(extra);
    (Proxy::start(config), b)
}

fn swaks(proxy: &Proxy, proxy_args: &[&str]) -> (bool, String) {
    let out = Command::new("swaks")
        .args([
            "-s",
            &proxy.addr().ip().to_string(),
            "-p",
            &proxy.port().to_string(),
            "--tls",
        ])
        .args([
            "--to",
            "rcpt@example.test",
            "--from",
            "a@sender.test",
            "--timeout",
            "20",
        ])
        .args(proxy_args)
        .output()
        .expect("swaks");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[test]
fn v2_header_from_a_trusted_balancer_names_the_client() {
    let (proxy, backend) = start(2, "\"127.0.0.0/8\"", "");
    let (ok, t) = swaks(
        &proxy,
        &[
            "--proxy-version",
            "2",
            "--proxy-family",
            "AF_INET",
            "--proxy-source",
            "203.0.113.7",
            "--proxy-source-port",
            "40000",
            "--proxy-dest",
            "198.51.100.25",
            "--proxy-dest-port",
            "25",
        ],
    );
    assert!(ok, "{t}");
    assert!(
        backend
            .transcript()
            .starts_with("PROXY TCP4 203.0.113.7 198.51.100.25 40000 25\r\n"),
        "{}",
        backend.transcript()
    );
    assert_eq!(
        proxy.wait_log("tls handshake", 1)["peer"],
        "203.0.113.7:40000"
    );
}

#[test]
fn v1_header_with_an_ipv6_client() {
    let (proxy, backend) = start(1, "\"127.0.0.1\"", "");
    let (ok, t) = swaks(
        &proxy,
        &[
            "--proxy-version",
            "1",
            "--proxy-family",
            "TCP6",
            "--proxy-source",
            "2001:db8::5",
            "--proxy-source-port",
            "40001",
            "--proxy-dest",
            "2001:db8::25",
            "--proxy-dest-port",
            "25",
        ],
    );
    assert!(ok, "{t}");
    assert!(
        backend
            .transcript()
            .starts_with("PROXY TCP6 2001:db8::5 2001:db8::25 40001 25\r\n"),
        "{}",
        backend.transcript()
    );
}

#[test]
fn a_peer_outside_the_trusted_networks_is_refused() {
    let (proxy, backend) = start(2, "\"10.0.0.0/8\"", "");
    let mut tcp = std::net::TcpStream::connect(proxy.addr()).unwrap();
    tcp.set_read_timeout(Some(TIMEOUT)).unwrap();
    let mut buf = [0u8; 64];
    assert!(
        matches!(tcp.read(&mut buf), Ok(0) | Err(_)),
        "no greeting for an untrusted peer"
    );
    let ev = proxy.wait_log(
        "connection rejected: not a trusted balancer on a PROXY protocol listener",
        1,
    );
    assert_eq!(ev["reason"], "proxy_untrusted");
    assert!(backend.transcript().is_empty());
}

#[test]
fn a_trusted_peer_without_a_header_is_refused() {
    let (proxy, _backend) = start(2, "\"127.0.0.0/8\"", "");
    let mut tcp = std::net::TcpStream::connect(proxy.addr()).unwrap();
    tcp.set_read_timeout(Some(TIMEOUT)).unwrap();
    tcp.write_all(b"EHLO client.test\r\nQUIT\r\n").unwrap();
    let mut buf = [0u8; 64];
    assert!(matches!(tcp.read(&mut buf), Ok(0) | Err(_)));
    let ev = proxy.wait_log("connection rejected: bad PROXY header", 1);
    assert_eq!(ev["reason"], "proxy_invalid");
}

#[test]
fn the_per_ip_limit_counts_the_proxied_clients() {
    let (proxy, _backend) = start(
        1,
        "\"127.0.0.0/8\"",
        "\n[limits]\nmax_connections_per_ip = 1\n",
    );
    let connect = |src: &str| {
        let mut tcp = std::net::TcpStream::connect(proxy.addr()).unwrap();
        tcp.set_read_timeout(Some(TIMEOUT)).unwrap();
        tcp.write_all(format!("PROXY TCP4 {src} 198.51.100.25 40000 25\r\n").as_bytes())
            .unwrap();
        let mut buf = [0u8; 128];
        let n = tcp.read(&mut buf).unwrap();
        (tcp, String::from_utf8_lossy(&buf[..n]).into_owned())
    };
    // Two clients behind the same balancer: both admitted.
    let (_a, ga) = connect("203.0.113.1");
    let (_b, gb) = connect("203.0.113.2");
    assert!(
        ga.starts_with("220 ") && gb.starts_with("220 "),
        "{ga} {gb}"
    );
    // The same client twice: the second is over its limit.
    let (_c, gc) = connect("203.0.113.1");
    assert!(gc.starts_with("421 4.7.0"), "{gc}");
}

#[test]
fn a_bad_trusted_network_is_a_config_error() {
    let dir = tempdir();
    let text = ProxyConfig::with(
        "proxy_protocol = { version = 2, trusted = [\"10.0.0.0/33\"] }",
        "sink = \"{dir}/mail\"",
    )
    .text
    .replace("{certs}", certs().to_str().unwrap())
    .replace("{dir}", dir.path().to_str().unwrap());
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, text).unwrap();
    let out = run_bin(&["check", "--config", path.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains(":6:18: listener[0].proxy_protocol.trusted: \"10.0.0.0/33\" is not an address or network"), "{stderr}");
}
