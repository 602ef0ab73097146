//! CI smoke test of `starttls-loadgen` (issue #11): about a second of each
//! of handshake and message mode against the proxy with its built-in sink,
//! checking that the JSON report is complete and consistent. Benchmarks
//! themselves are benches/compare.sh, never a timed test.

mod support;

use std::process::Command;

use serde_json::Value;
use support::{Proxy, ProxyConfig, certs};

fn loadgen(proxy: &Proxy, args: &[&str]) -> Value {
    let out = Command::new(env!("CARGO_BIN_EXE_starttls-loadgen"))
        .args(args)
        .arg("--target")
        .arg(proxy.addr().to_string())
        .arg("--ca")
        .arg(certs().join("ca.pem"))
        .args(["--sni", "mx1.example.test", "--timeout", "5"])
        .output()
        .expect("run starttls-loadgen");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "loadgen {args:?} exited {}: {stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("not JSON ({e}): {stdout}"))
}

/// Fields every mode reports, and their consistency.
fn check_common(r: &Value, mode: &str) -> u64 {
    assert_eq!(r["mode"], mode, "{r}");
    let completed = r["completed"].as_u64().expect("completed");
    assert!(completed > 0, "nothing completed: {r}");
    assert_eq!(r["errors"], 0, "errors: {r}");
    assert!(
        r["errors_by_kind"]
            .as_object()
            .expect("errors_by_kind")
            .is_empty()
    );
    let elapsed = r["elapsed_s"].as_f64().expect("elapsed_s");
    assert!(elapsed > 0.0 && elapsed < 10.0, "elapsed_s {elapsed}");
    let rate = r["rate_per_s"].as_f64().expect("rate_per_s");
    let expect = completed as f64 / elapsed;
    assert!(
        (rate - expect).abs() <= expect * 0.01,
        "rate {rate} vs completed/elapsed {expect}"
    );
    let lat = &r["latency_ms"];
    let (p50, p90, p99) = (
        lat["p50"].as_f64().expect("p50"),
        lat["p90"].as_f64().expect("p90"),
        lat["p99"].as_f64().expect("p99"),
    );
    assert!(0.0 < p50 && p50 <= p90 && p90 <= p99, "percentiles {lat}");
    assert!(r["parameters"].is_object(), "{r}");
    completed
}

#[test]
fn handshake_and_message_modes_report_consistent_json() {
    let proxy = Proxy::start(ProxyConfig::sink());

    for (tls, sigalgs, scheme) in [
        ("1.3", "ecdsa", "ECDSA_NISTP256_SHA256"),
        ("1.2", "rsa", "RSA_PSS_SHA512"),
    ] {
        let r = loadgen(
            &proxy,
            &[
                "handshake",
                "--tls",
                tls,
                "--sigalgs",
                sigalgs,
                "--concurrency",
                "4",
                "--duration",
                "0.6",
            ],
        );
        let completed = check_common(&r, "handshake");
        assert_eq!(r["parameters"]["tls"], tls);
        // Every handshake used the key type asked for, at the version asked for.
        assert_eq!(r["server_signature_schemes"][scheme], completed, "{r}");
        let version = if tls == "1.3" { "TLSv1_3" } else { "TLSv1_2" };
        let negotiated = r["negotiated"].as_object().expect("negotiated");
        assert!(negotiated.keys().all(|k| k.starts_with(version)), "{r}");
    }

    let r = loadgen(
        &proxy,
        &[
            "message",
            "--concurrency",
            "2",
            "--size",
            "4096",
            "--messages",
            "5",
            "--duration",
            "0.8",
        ],
    );
    let completed = check_common(&r, "message");
    assert_eq!(r["bytes"], completed * 4096, "{r}");
    assert!(r["sessions"].as_u64().expect("sessions") >= completed.div_ceil(5));
    assert!(r["mib_per_s"].as_f64().expect("mib_per_s") > 0.0);
    // The sink holds every message the generator counted (and no more).
    let stored = support::wait_for("sink files", support::TIMEOUT, || {
        let n = proxy.sink_messages().len() as u64;
        (n >= completed).then_some(n)
    });
    assert_eq!(stored, completed);
}

#[test]
fn rate_limits_the_offered_load() {
    // 40 messages/s for 0.5 s on 4 connections: at most 20 start (slots
    // 25 ms apart from the first ready session on; never made up for);
    // unpaced, 4 connections to the sink do hundreds in that time.
    let proxy = Proxy::start(ProxyConfig::sink());
    let r = loadgen(
        &proxy,
        &[
            "message",
            "--concurrency",
            "4",
            "--rate",
            "40",
            "--duration",
            "0.5",
        ],
    );
    let completed = check_common(&r, "message");
    assert_eq!(r["parameters"]["rate_limit"], 40.0, "{r}");
    assert!(
        (1..=20).contains(&completed),
        "{completed} messages at 40/s for 0.5 s: {r}"
    );
}

#[test]
fn refuses_targets_off_loopback_and_bad_arguments() {
    for args in [
        &["handshake", "--target", "192.0.2.1:25", "--insecure"][..],
        &["handshake", "--target", "127.0.0.1:25"][..], // neither --ca nor --insecure
        &[
            "message",
            "--target",
            "127.0.0.1:25",
            "--insecure",
            "--size",
            "10",
        ][..],
        &[
            "message",
            "--target",
            "127.0.0.1:25",
            "--insecure",
            "--rate",
            "0",
        ][..],
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_starttls-loadgen"))
            .args(args)
            .output()
            .expect("run starttls-loadgen");
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(out.stdout.is_empty(), "{args:?}");
    }
}
