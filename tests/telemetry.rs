//! The `[metrics]` endpoint: `/metrics`, `/healthz`, `/ready`, and the
//! backend health probe that feeds `/ready`, `backend_up`, the greeting and
//! the pre-TLS EHLO.

mod support;

use std::net::SocketAddr;

use support::*;

const METRICS: &str = "\n[metrics]\nlisten = \"127.0.0.1:0\"\n";

fn send_one_message(c: &mut Smtp) {
    c.cmd("EHLO client.test", "250");
    c.cmd("MAIL FROM:<a@sender.test>", "250");
    c.cmd("RCPT TO:<b@example.test>", "250");
    c.cmd("DATA", "354");
    c.send_raw(b"Subject: counted\r\n\r\nbody\r\n.\r\n");
    c.expect("250");
    c.cmd("QUIT", "221");
}

/// A free loopback address (bound, then released).
fn free_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

#[test]
fn metrics_count_connections_handshakes_sessions_and_messages() {
    let proxy = Proxy::start(ProxyConfig::sink().append(METRICS));
    let listener = proxy.addr().to_string();
    let mut c = tls_session(&proxy);
    send_one_message(&mut c);
    proxy.wait_log("session", 1);

    let (status, body) = proxy.http_get("/metrics");
    assert_eq!(status, 200);
    let get = |series: &str| metric_value(&body, series);
    assert_eq!(
        get(&format!(
            "starttls_proxy_build_info{{version=\"{}\"}}",
            env!("CARGO_PKG_VERSION")
        )),
        Some(1.0),
        "{body}"
    );
    assert_eq!(
        get(&format!(
            "starttls_proxy_connections_total{{listener=\"{listener}\"}}"
        )),
        Some(1.0),
        "{body}"
    );
    assert_eq!(
        get("starttls_proxy_sessions_total{tls=\"starttls\",backend=\"b\"}"),
        Some(1.0)
    );
    let handshake = proxy.wait_log("tls handshake", 1);
    assert_eq!(
        get(&format!(
            "starttls_proxy_tls_handshakes_total{{version=\"{}\",cipher=\"{}\",sni=\"matched\",certificate=\"{}\"}}",
            handshake["version"].as_str().unwrap(),
            handshake["cipher"].as_str().unwrap(),
            handshake["certificate"].as_str().unwrap(),
        )),
        Some(1.0),
        "{body}"
    );
    assert_eq!(
        get("starttls_proxy_tls_handshake_duration_seconds_count"),
        Some(1.0),
        "{body}"
    );
    assert_eq!(
        get("starttls_proxy_messages_relayed_total{backend=\"b\"}"),
        Some(1.0)
    );
    let up = get("starttls_proxy_bytes_relayed_total{direction=\"client_to_backend\"}").unwrap();
    let down = get("starttls_proxy_bytes_relayed_total{direction=\"backend_to_client\"}").unwrap();
    let session = proxy.wait_log("session", 1);
    assert_eq!(up, session["bytes_in"].as_f64().unwrap());
    assert_eq!(down, session["bytes_out"].as_f64().unwrap());
    // The connection is over: nothing active.
    wait_for("connections_active back to 0", TIMEOUT, || {
        (proxy.metric("starttls_proxy_connections_active") == Some(0.0)).then_some(())
    });
    // Every configured certificate has its expiry.
    for name in ["mx1", "mx1-ecdsa", "tenant2", "wild"] {
        let not_after = get(&format!(
            "starttls_proxy_certificate_not_after_timestamp_seconds{{certificate=\"{name}\"}}"
        ))
        .unwrap_or_else(|| panic!("no not_after for {name}: {body}"));
        assert!(not_after > 1.7e9, "{name}: {not_after}");
    }
    assert!(body.contains("# TYPE starttls_proxy_tls_handshake_duration_seconds histogram"));
}

#[test]
fn healthz_and_ready_follow_the_backend_health() {
    // The backend's address is known but nothing listens there yet.
    let addr = free_addr();
    let proxy = Proxy::start(
        ProxyConfig::servers(&[addr])
            .replace(
                &format!("servers = [\"{addr}\"]"),
                &format!("servers = [\"{addr}\"]\nhealth_interval = \"1s\""),
            )
            .append(METRICS),
    );
    assert_eq!(proxy.http_get("/healthz"), (200, "ok\n".to_string()));
    let (status, body) = proxy.http_get("/ready");
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("backend b: no server up"), "{body}");
    let series = format!("starttls_proxy_backend_up{{backend=\"b\",server=\"{addr}\"}}");
    assert_eq!(proxy.metric(&series), Some(0.0));
    assert!(
        proxy
            .metric(&format!(
                "starttls_proxy_backend_connect_failures_total{{backend=\"b\",server=\"{addr}\"}}"
            ))
            .is_some_and(|n| n >= 1.0)
    );
    // Every server down: 421 at once.
    let mut c = Smtp::connect(proxy.addr());
    c.expect("421 4.4.1");

    // The backend comes back: the next probe sees it.
    let _backend = FakeBackend::start_on(addr, FakeBehaviour::Normal);
    proxy.wait_log("backend server up", 1);
    assert_eq!(proxy.metric(&series), Some(1.0));
    assert_eq!(proxy.http_get("/ready"), (200, "ready\n".to_string()));
    let mut c = Smtp::connect(proxy.addr());
    c.expect("220 mx1.example.test");

    assert_eq!(proxy.http_get("/nothing").0, 404);
}

/// One backend down among others (one tenant's MTA): still ready, the
/// down one named, so that replicas sharing the backends stay in the
/// balancer for everyone else; every backend down: not ready.
#[test]
fn ready_stays_up_while_another_backend_serves() {
    let up = FakeBackend::start(FakeBehaviour::Normal);
    let down = free_addr();
    let proxy = Proxy::start(
        ProxyConfig::servers(&[up.addr])
            .replace(
                &format!("servers = [\"{}\"]", up.addr),
                &format!("servers = [\"{}\"]\nhealth_interval = \"1s\"", up.addr),
            )
            .append(&format!(
                "\n[[backend]]\nname = \"tenant2\"\nservers = [\"{down}\"]\nhealth_interval = \"1s\"\n"
            ))
            .append(METRICS),
    );
    let body = wait_for("the degraded ready", TIMEOUT, || {
        let (status, body) = proxy.http_get("/ready");
        (status == 200 && body.contains("degraded")).then_some(body)
    });
    assert_eq!(body, "ready, degraded: backend tenant2: no server up\n");

    // The last serving backend goes: now nothing can be relayed.
    up.stop();
    let body = wait_for("not ready", TIMEOUT, || {
        let (status, body) = proxy.http_get("/ready");
        (status == 503).then_some(body)
    });
    assert!(body.contains("backend b: no server up"), "{body}");
    assert!(body.contains("backend tenant2: no server up"), "{body}");
}

#[test]
fn the_pre_tls_ehlo_offers_the_backends_extensions_as_probed() {
    let b = FakeBackend::start(FakeBehaviour::Normal);
    let proxy = Proxy::start(ProxyConfig::servers(&[b.addr]));
    let mut c = Smtp::connect(proxy.addr());
    c.expect("220");
    // The fake backend offers PIPELINING, STARTTLS, AUTH and 8BITMIME: AUTH
    // is never offered before TLS, STARTTLS is the proxy's own, and
    // ENHANCEDSTATUSCODES (in the built-in set) is not claimed for a backend
    // that lacks it.
    assert_eq!(
        c.cmd("EHLO client.test", "250"),
        "250-mx1.example.test\r\n250-PIPELINING\r\n250-8BITMIME\r\n250 STARTTLS\r\n"
    );
}

#[test]
fn the_probe_speaks_for_the_proxy_itself() {
    let v1 = FakeBackend::start(FakeBehaviour::Normal);
    let v2 = FakeBackend::start(FakeBehaviour::Normal);
    let config = ProxyConfig::servers(&[v1.addr])
        .replace(
            &format!("servers = [\"{}\"]", v1.addr),
            &format!("servers = [\"{}\"]\nidentity = \"proxy-v1\"", v1.addr),
        )
        .append(&format!(
            "\n[[backend]]\nname = \"b2\"\nservers = [\"{}\"]\nidentity = \"proxy-v2\"\n",
            v2.addr
        ));
    let _proxy = Proxy::start(config);
    // v1: the probe connection's own addresses (Postfix refuses UNKNOWN).
    let probes = v1.probes();
    let first = probes.first().expect("a probe of the v1 backend");
    let port = v1.addr.port();
    assert!(
        first.starts_with("PROXY TCP4 127.0.0.1 127.0.0.1 ")
            && first.contains(&format!(" {port}\r\nEHLO mx1.example.test\r\nQUIT\r\n")),
        "{probes:?}"
    );
    // v2: the 12-byte signature, version 2 + LOCAL (0x20), no addresses.
    let probes = v2.probes();
    let first = probes.first().expect("a probe of the v2 backend");
    let sig = "\r\n\r\n\0\r\nQUIT\n";
    assert!(first.starts_with(sig), "{first:?}");
    assert_eq!(
        &first.as_bytes()[12..16],
        &[0x20, 0x00, 0x00, 0x00],
        "{first:?}"
    );
    assert!(first.ends_with("EHLO mx1.example.test\r\nQUIT\r\n"));
    assert!(v1.transcript().is_empty() && v2.transcript().is_empty());
}

#[test]
fn rejected_connections_are_counted_by_reason() {
    let proxy = Proxy::start(
        ProxyConfig::sink()
            .append("\n[limits]\nmax_connections_per_ip = 1\n")
            .append(METRICS),
    );
    let mut first = Smtp::connect(proxy.addr());
    first.expect("220");
    let mut second = Smtp::connect(proxy.addr());
    second.expect("421");
    assert_eq!(
        proxy
            .metric("starttls_proxy_connections_rejected_total{reason=\"max_connections_per_ip\"}"),
        Some(1.0)
    );
    assert_eq!(proxy.metric("starttls_proxy_connections_active"), Some(1.0));
}

/// Series in an exposition (sample lines).
fn series(exposition: &str) -> Vec<String> {
    exposition
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| l.rsplit_once(' ').map(|(name, _)| name.to_string()))
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect()
}

#[test]
fn a_thousand_random_sni_values_add_no_series() {
    let proxy = Proxy::start(ProxyConfig::sink().append(METRICS));
    let config = std::sync::Arc::new(accept_any_certificate_config());
    let handshake = |i: usize| {
        let mut c = Smtp::connect(proxy.addr());
        c.expect("220");
        c.cmd("EHLO client.test", "250");
        c.cmd("STARTTLS", "220");
        // Distinct, random-looking names nobody configured.
        let sni = format!(
            "r{:x}.attacker{}.invalid",
            i.wrapping_mul(0x9e37_79b9),
            i % 7
        );
        let mut c = c.start_tls_shared(config.clone(), &sni).expect("handshake");
        c.cmd("QUIT", "221");
    };
    handshake(usize::MAX);
    proxy.wait_log("session", 1);
    let before = series(&proxy.http_get("/metrics").1);
    std::thread::scope(|s| {
        for t in 0..4 {
            let handshake = &handshake;
            s.spawn(move || {
                for i in 0..250 {
                    handshake(t * 1000 + i);
                }
            });
        }
    });
    proxy.wait_log("session", 1001);
    let (_, after_text) = proxy.http_get("/metrics");
    let after = series(&after_text);
    assert_eq!(before, after, "series appeared or vanished");
    assert!(
        !after_text.contains("attacker"),
        "a client's SNI became a label"
    );
    let handshakes: f64 = after_text
        .lines()
        .filter(|l| l.starts_with("starttls_proxy_tls_handshakes_total{"))
        .filter(|l| l.contains("sni=\"unmatched\""))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum();
    assert_eq!(handshakes, 1001.0);
}

/// `promtool check metrics` on a live exposition with every kind of series
/// present (handshakes, a failure, a relayed message, a rejected
/// connection, a TLS policy evaluation).
#[test]
fn the_exposition_passes_promtool() {
    let proxy = Proxy::start(ProxyConfig::sink().append(METRICS).append(
        "\n[[tls_policy]]\nname = \"loopback\"\nclients = [\"127.0.0.0/8\"]\nrequire = \"tls\"\nmode = \"report\"\n",
    ));
    let mut c = tls_session(&proxy);
    send_one_message(&mut c);
    let (ok, _) = s_client(proxy.addr(), &["-tls1", "-cipher", "DEFAULT@SECLEVEL=0"]);
    assert!(!ok);
    proxy.wait_log("tls handshake failed", 1);
    let (_, body) = proxy.http_get("/metrics");
    let mut child = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect(
            "promtool (Debian's prometheus package, installed by scripts/install-test-deps.sh)",
        );
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(body.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{report}\n{body}");
    // promtool passes lint problems with exit 0 but prints them.
    assert!(report.trim().is_empty(), "promtool lint: {report}\n{body}");
    assert_eq!(
        metric_value(
            &body,
            "starttls_proxy_tls_policy_evaluations_total{policy=\"loopback\",result=\"satisfied\"}"
        ),
        Some(1.0),
        "{body}"
    );
    for name in [
        "starttls_proxy_tls_handshake_failures_total",
        "starttls_proxy_tls_client_max_version_total",
        "starttls_proxy_messages_relayed_total",
        "starttls_proxy_certificate_reloads_total",
        "starttls_proxy_tls_policy_evaluations_total",
    ] {
        assert!(
            body.contains(&format!("# TYPE {name} counter")),
            "{name}: {body}"
        );
    }
}

/// The alert rules and their unit tests (deploy/monitoring) with promtool.
#[test]
fn the_alert_rules_pass_promtool() {
    let dir = repo().join("deploy/monitoring");
    for args in [
        ["check", "rules", "alerts.yml"],
        ["test", "rules", "alerts.test.yml"],
    ] {
        let out = std::process::Command::new("promtool")
            .args(args)
            .current_dir(&dir)
            .output()
            .expect(
                "promtool (Debian's prometheus package, installed by scripts/install-test-deps.sh)",
            );
        assert!(
            out.status.success(),
            "promtool {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
