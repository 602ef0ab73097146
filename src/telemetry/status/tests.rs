use super::snapshot::Window;
use super::*;

const DAY: i64 = 86_400;

fn model() -> Status {
    let s = Status::new("mx1.example.test", Duration::from_secs(21 * DAY as u64));
    s.set_listeners(vec![ListenerFacts {
        address: "127.0.0.1:25".into(),
        mode: "starttls",
        tls: "opportunistic",
        backend: "postfix".into(),
    }]);
    s.set_backends(vec![
        BackendFacts {
            name: "postfix".into(),
            identity: "proxy-v2",
            servers: Some(vec!["127.0.0.1:10025".into(), "127.0.0.1:10026".into()]),
        },
        BackendFacts {
            name: "sink".into(),
            identity: "none",
            servers: None,
        },
    ]);
    s
}

fn cert(name: &str, default: bool, not_after: i64) -> CertificateFacts {
    CertificateFacts {
        name: name.into(),
        names: vec![format!("{name}.example.test")],
        algorithm: "ECDSA",
        default,
        not_after,
    }
}

#[test]
fn handshakes_count_by_version_sni_and_certificate() {
    let s = model();
    s.set_certificates(vec![cert("mx1", true, i64::MAX / 2)], Duration::ZERO);
    s.handshake("TLSv1.3", "matched", "mx1");
    s.handshake("TLSv1.3", "absent", "mx1");
    s.handshake("TLSv1.2", "unmatched", "mx1");
    // Not a configured certificate: counted in the totals only.
    s.handshake("TLSv1.2", "matched", "gone");
    let snap = s.snapshot();
    for w in [&snap.tls.since_start, &snap.tls.last_hour] {
        assert_eq!(w.handshakes, 4);
        assert_eq!(Window::get(&w.versions, "TLSv1.3"), 2);
        assert_eq!(Window::get(&w.versions, "TLSv1.2"), 2);
        assert_eq!(Window::get(&w.sni, "matched"), 2);
        assert_eq!(Window::get(&w.sni, "unmatched"), 1);
        assert_eq!(Window::get(&w.sni, "absent"), 1);
    }
    assert_eq!(snap.certificates[0].handshakes, 3);
}

#[test]
fn failures_keep_the_clients_highest_offered_version() {
    let s = model();
    s.handshake_failed("protocol_version", "TLSv1.1");
    s.handshake_failed("protocol_version", "TLSv1.1");
    s.handshake_failed("protocol_version", "TLSv1.0");
    s.handshake_failed("timeout", "unknown");
    s.handshake_failed("eof", "not a version");
    let snap = s.snapshot();
    assert_eq!(snap.tls.since_start.failures, 5);
    let f = &snap.handshake_failures[0];
    assert_eq!(
        (f.reason.as_str(), f.since_start, f.last_hour),
        ("protocol_version", 3, 3)
    );
    assert_eq!(
        f.client_max_versions,
        [("TLSv1.0".to_string(), 1), ("TLSv1.1".to_string(), 2)].into()
    );
    let eof = snap
        .handshake_failures
        .iter()
        .find(|f| f.reason == "eof")
        .unwrap();
    assert_eq!(eof.client_max_versions, [("unknown".to_string(), 1)].into());
}

#[test]
fn failure_reasons_are_capped_whatever_arrives() {
    let s = model();
    for i in 0..500 {
        let reason: &'static str = Box::leak(format!("reason-{i}").into_boxed_str());
        s.handshake_failed(reason, "TLSv1.2");
    }
    let snap = s.snapshot();
    assert_eq!(snap.handshake_failures.len(), MAX_REASONS);
    assert_eq!(snap.tls.since_start.failures, 500);
    let other = snap
        .handshake_failures
        .iter()
        .find(|f| f.reason == OVERFLOW)
        .unwrap();
    assert_eq!(other.since_start, 500 - (MAX_REASONS as u64 - 1));
}

#[test]
fn sessions_messages_and_listener_counters() {
    let s = model();
    s.session("starttls");
    s.session("none");
    s.session("bogus");
    s.message_relayed();
    s.connection_accepted("127.0.0.1:25");
    s.connection_accepted("10.0.0.1:25");
    s.smuggling_attempt("127.0.0.1:25");
    s.starttls_injection("127.0.0.1:25");
    s.connection_rejected("max_connections");
    let snap = s.snapshot();
    let w = &snap.tls.since_start;
    assert_eq!(Window::get(&w.sessions, "starttls"), 1);
    assert_eq!(Window::get(&w.sessions, "none"), 1);
    assert_eq!(w.sessions.values().sum::<u64>(), 2);
    assert_eq!(
        (
            w.messages_relayed,
            w.smuggling_attempts,
            w.starttls_injections
        ),
        (1, 1, 1)
    );
    let l = &snap.listeners[0];
    assert_eq!(
        (l.connections, l.smuggling_attempts, l.starttls_injections),
        (1, 1, 1)
    );
    assert_eq!(
        snap.connections_rejected,
        [("max_connections".to_string(), 1)].into()
    );
}

#[test]
fn certificates_in_the_warning_window_are_warnings() {
    let s = model();
    let now = unix_now();
    s.set_certificates(
        vec![
            cert("fresh", true, now + 90 * DAY + 60),
            cert("soon", false, now + 5 * DAY + 60),
            cert("gone", false, now - DAY),
        ],
        Duration::from_secs(21 * DAY as u64),
    );
    let snap = s.snapshot();
    let c: Vec<_> = snap
        .certificates
        .iter()
        .map(|c| {
            (
                c.name.as_str(),
                c.days_left,
                c.expiring,
                c.expired,
                c.default,
            )
        })
        .collect();
    assert_eq!(
        c,
        [
            ("fresh", 90, false, false, true),
            ("soon", 5, true, false, false),
            ("gone", -1, true, true, false)
        ]
    );
    assert!(!snap.ok);
    assert_eq!(
        snap.warnings,
        [
            "certificate soon expires in 5 days (warning at 21)",
            "certificate gone has expired"
        ]
    );
}

#[test]
fn a_reload_keeps_a_certificates_history_and_records_results() {
    let s = model();
    s.set_certificates(vec![cert("mx1", true, 1)], Duration::ZERO);
    s.handshake("TLSv1.3", "matched", "mx1");
    s.certificate_reload("mx1", "unchanged");
    assert_eq!(s.snapshot().certificates[0].last_reload, None);
    s.certificate_reload("mx1", "failure");
    s.certificate_reload("mx1", "success");
    s.certificate_not_after("mx1", 2_000_000_000);
    s.set_certificates(
        vec![cert("new", false, 1), cert("mx1", true, 2_000_000_000)],
        Duration::ZERO,
    );
    let snap = s.snapshot();
    let mx1 = &snap.certificates[1];
    assert_eq!(
        (mx1.handshakes, mx1.reloads_success, mx1.reloads_failure),
        (1, 1, 1)
    );
    assert_eq!(
        mx1.last_reload.as_ref().map(|r| r.result.as_str()),
        Some("success")
    );
    assert_eq!(mx1.not_after, 2_000_000_000);
    assert_eq!(snap.certificates[0].handshakes, 0);
}

#[test]
fn a_server_down_is_a_warning_with_its_error_until_it_comes_back() {
    let s = model();
    let snap = s.snapshot();
    assert!(snap.ok, "not probed yet is no warning");
    assert_eq!(snap.backends[0].servers[0].state, "unknown");
    assert!(snap.backends[1].up, "the sink is always up");

    s.backend_probe(
        "postfix",
        "127.0.0.1:10025",
        Some("connect: connection refused"),
    );
    s.backend_probe("postfix", "127.0.0.1:10026", None);
    s.backend_connect_failed("postfix", "127.0.0.1:10025");
    s.backend_probe("postfix", "10.9.9.9:25", None);
    let snap = s.snapshot();
    let b = &snap.backends[0];
    assert!(b.up, "one server up");
    assert_eq!(b.servers[0].state, "down");
    assert_eq!(
        b.servers[0].error.as_deref(),
        Some("connect: connection refused")
    );
    assert_eq!(b.servers[0].connect_failures, 1);
    assert_eq!(b.servers.len(), 2);
    assert_eq!(
        snap.warnings,
        ["backend postfix server 127.0.0.1:10025 down: connect: connection refused"]
    );

    s.backend_probe("postfix", "127.0.0.1:10025", None);
    let snap = s.snapshot();
    assert!(snap.ok);
    assert_eq!(snap.backends[0].servers[0].error, None);
}

#[test]
fn policy_rules_show_at_zero_and_count_by_result() {
    let s = model();
    assert!(s.snapshot().tls_policy.is_empty());
    s.policy_rules(["partners", "all"]);
    s.policy_evaluation("partners", "would_refuse");
    s.policy_evaluation("partners", "satisfied");
    s.policy_evaluation("partners", "nonsense");
    s.policy_evaluation("late", "refused");
    let p = s.snapshot().tls_policy;
    let rows: Vec<_> = p
        .iter()
        .map(|r| (r.rule.as_str(), r.satisfied, r.would_refuse, r.refused))
        .collect();
    assert_eq!(
        rows,
        [("partners", 1, 1, 0), ("all", 0, 0, 0), ("late", 0, 0, 1)]
    );
    for i in 0..1000 {
        s.policy_evaluation(&format!("r{i}"), "refused");
    }
    assert_eq!(s.snapshot().tls_policy.len(), MAX_POLICY_RULES);
}

#[test]
fn the_last_hour_forgets_what_is_older() {
    let s = model();
    s.handshake("TLSv1.3", "matched", "mx1");
    s.session("starttls");
    s.handshake_failed("timeout", "unknown");
    let now = unix_now();
    // The same model seen 30 minutes and 61 minutes on.
    let later = s.snapshot_at(now + 1800, 30);
    assert_eq!(later.tls.last_hour.handshakes, 1);
    assert_eq!(later.handshake_failures[0].last_hour, 1);
    let much_later = s.snapshot_at(now + 3660, 61);
    assert_eq!(much_later.tls.since_start.handshakes, 1);
    assert_eq!(much_later.tls.last_hour.handshakes, 0);
    assert_eq!(much_later.tls.last_hour.sessions.values().sum::<u64>(), 0);
    assert_eq!(much_later.handshake_failures[0].since_start, 1);
    assert_eq!(much_later.handshake_failures[0].last_hour, 0);
}

#[test]
fn the_json_round_trips_and_is_judged_the_same() {
    let s = model();
    s.backend_probe(
        "postfix",
        "127.0.0.1:10025",
        Some("connect: connection refused"),
    );
    s.set_certificates(
        vec![cert("soon", true, unix_now() + DAY)],
        Duration::from_secs(7 * DAY as u64),
    );
    let snap = s.snapshot();
    let json = serde_json::to_string(&snap).unwrap();
    let back: Snapshot = serde_json::from_str(&json).unwrap();
    assert_eq!(back.compute_warnings(), snap.warnings);
    assert_eq!(back.warnings.len(), 2);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    for key in [
        "format",
        "version",
        "hostname",
        "now",
        "started_at",
        "uptime_seconds",
        "expiry_warning_days",
        "ok",
        "warnings",
        "config_reload",
        "listeners",
        "certificates",
        "tls",
        "handshake_failures",
        "connections_rejected",
        "backends",
        "tls_policy",
    ] {
        assert!(v.get(key).is_some(), "{key} missing: {json}");
    }
}
