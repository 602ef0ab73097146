//! deploy/systemd/starttls-proxy.service as shipped: `systemd-analyze
//! verify` passes, `systemd-analyze security --offline=true` rates it 2.0
//! or lower, and the settings the docs promise are there. systemd itself
//! does not run here (nor in CI): the analysis works on the file.

mod support;

use std::process::Command;

use support::*;

fn unit_text() -> String {
    std::fs::read_to_string(repo().join("deploy/systemd/starttls-proxy.service")).unwrap()
}

/// The unit with its binary path pointed at the test build: `verify`
/// checks that every Exec command exists, and /usr/bin/starttls-proxy is
/// there only once the package is installed (tests/deb_package.rs).
fn unit_for_verify(dir: &tempfile::TempDir) -> std::path::PathBuf {
    let text = unit_text();
    assert!(text.contains("/usr/bin/starttls-proxy "), "{text}");
    let path = dir.path().join("starttls-proxy.service");
    std::fs::write(
        &path,
        text.replace("/usr/bin/starttls-proxy ", &format!("{} ", bin())),
    )
    .unwrap();
    path
}

fn analyze(args: &[&str], unit: &std::path::Path) -> std::process::Output {
    Command::new("systemd-analyze")
        .args(args)
        .arg(unit)
        .output()
        .expect("systemd-analyze (package systemd, scripts/install-test-deps.sh)")
}

#[test]
fn systemd_analyze_verify_passes_without_a_warning() {
    let dir = tempdir();
    let unit = unit_for_verify(&dir);
    let out = analyze(&["verify"], &unit);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.trim().is_empty() && out.stdout.is_empty(),
        "verify warned: {stderr}"
    );
}

/// "Overall exposure level for starttls-proxy.service: 1.4 OK" -> 1.4
fn exposure(stdout: &str) -> f64 {
    let line = stdout
        .lines()
        .find(|l| l.contains("Overall exposure level"))
        .unwrap_or_else(|| panic!("no overall level in:\n{stdout}"));
    let after = line.rsplit(':').next().unwrap().trim();
    after.split_whitespace().next().unwrap().parse().unwrap()
}

#[test]
fn systemd_analyze_security_rates_it_ok_two_or_lower() {
    let dir = tempdir();
    let unit = unit_for_verify(&dir);
    // --threshold is in tenths: systemd exits non-zero above 2.0.
    let out = analyze(
        &["security", "--offline=true", "--no-pager", "--threshold=20"],
        &unit,
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let level = exposure(&stdout);
    assert!(level <= 2.0, "exposure {level}:\n{stdout}");
    assert!(
        stdout.contains(" OK") || stdout.contains("SAFE"),
        "{stdout}"
    );
}

/// `Key=value` lines of the unit (comments dropped), in order.
fn settings(text: &str) -> Vec<(String, String)> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#') && !l.starts_with('['))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn one(settings: &[(String, String)], key: &str) -> String {
    let all: Vec<_> = settings.iter().filter(|(k, _)| k == key).collect();
    assert_eq!(all.len(), 1, "{key}: {all:?}");
    all[0].1.clone()
}

#[test]
fn runs_unprivileged_with_one_capability_and_reloads_with_sighup() {
    let s = settings(&unit_text());
    assert_eq!(one(&s, "User"), "starttls-proxy");
    assert_eq!(one(&s, "AmbientCapabilities"), "CAP_NET_BIND_SERVICE");
    assert_eq!(one(&s, "CapabilityBoundingSet"), "CAP_NET_BIND_SERVICE");
    assert_eq!(one(&s, "NoNewPrivileges"), "yes");
    assert_eq!(one(&s, "ExecReload"), "/bin/kill -HUP $MAINPID");
    // `run` without --allow-root: the proxy's own refusal backs up User=.
    let start = one(&s, "ExecStart");
    assert!(
        start.starts_with(
            "/usr/bin/starttls-proxy run --config /etc/starttls-proxy/starttls-proxy.toml"
        ),
        "{start}"
    );
    assert!(!start.contains("allow-root"), "{start}");
    assert_eq!(one(&s, "StateDirectory"), "starttls-proxy");
}

#[test]
fn stop_timeout_outlasts_the_shipped_shutdown_grace() {
    let s = settings(&unit_text());
    let stop = humantime::parse_duration(&one(&s, "TimeoutStopSec")).unwrap();
    let config = std::fs::read_to_string(repo().join("config/production.example.toml")).unwrap();
    let grace: toml::Value = toml::from_str(&config).unwrap();
    let grace = grace["timeouts"]["shutdown_grace"].as_str().unwrap();
    let grace = humantime::parse_duration(grace).unwrap();
    assert!(
        stop > grace,
        "TimeoutStopSec {stop:?} <= shutdown_grace {grace:?}"
    );
}
