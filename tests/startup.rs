//! Start-up through the real binary when an address is taken: the error
//! names the address and the config key, the exit code is 2, and nothing
//! panics (the background tasks must not exist yet, or must be stopped,
//! when the runtime shuts down). Repeated because the panic this guards
//! against was a race that showed up in about 6 runs out of 10.

mod support;

use std::process::Output;

use support::*;

const RUNS: usize = 20;

fn write_config(dir: &tempfile::TempDir, config: &ProxyConfig) -> String {
    let path = dir.path().join("proxy.toml");
    let text = config
        .text
        .replace("{certs}", certs().to_str().unwrap())
        .replace("{dir}", dir.path().to_str().unwrap());
    std::fs::write(&path, text).unwrap();
    path.to_str().unwrap().to_string()
}

/// Runs `args` `RUNS` times; each run must exit 2, print every `expected`
/// and never panic.
fn every_run_fails_cleanly(args: &[&str], expected: &[String]) {
    for run in 1..=RUNS {
        let out: Output = run_bin(args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            out.status.code(),
            Some(2),
            "run {run}: exit status {:?}:\n{stderr}",
            out.status
        );
        assert!(
            !stderr.contains("panicked"),
            "run {run} panicked:\n{stderr}"
        );
        for e in expected {
            assert!(
                stderr.contains(e.as_str()),
                "run {run}: no {e:?} in:\n{stderr}"
            );
        }
    }
}

/// A second listener on `address`, after the standard one (port 0).
fn second_listener(address: &str) -> String {
    format!("\n[[listener]]\naddress = \"{address}\"\nmode = \"starttls\"\nbackend = \"b\"\n")
}

#[test]
fn taken_listener_address_exits_2_naming_address_and_key_without_panic() {
    let holder = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = holder.local_addr().unwrap().to_string();
    let dir = tempdir();
    let path = write_config(&dir, &ProxyConfig::sink().append(&second_listener(&taken)));
    every_run_fails_cleanly(
        &["run", "--config", &path],
        &[format!(
            "{path}: listener[1].address: cannot bind {taken}: Address already in use"
        )],
    );
    // Nothing was served: the free listener of the same config never
    // reported itself bound, so no session could have been accepted.
    let out = run_bin(&["run", "--config", &path]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("listener bound"), "{stderr}");
    assert!(!stderr.contains("starttls-proxy ready"), "{stderr}");
}

#[test]
fn taken_metrics_address_exits_2_naming_address_and_key_without_panic() {
    let holder = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = holder.local_addr().unwrap().to_string();
    let dir = tempdir();
    let config = ProxyConfig::sink().append(&format!("\n[metrics]\nlisten = \"{taken}\"\n"));
    let path = write_config(&dir, &config);
    every_run_fails_cleanly(
        &["run", "--config", &path],
        &[format!("{path}: metrics.listen: cannot bind {taken}")],
    );
}

#[test]
fn every_taken_address_is_reported_not_only_the_first() {
    let a = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let b = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let (a, b) = (
        a.local_addr().unwrap().to_string(),
        b.local_addr().unwrap().to_string(),
    );
    let dir = tempdir();
    let config = ProxyConfig::sink()
        .replace("address = \"127.0.0.1:0\"", &format!("address = \"{a}\""))
        .append(&format!("\n[metrics]\nlisten = \"{b}\"\n"));
    let path = write_config(&dir, &config);
    let out = run_bin(&["run", "--config", &path]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(&format!("listener[0].address: cannot bind {a}")),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!("metrics.listen: cannot bind {b}")),
        "{stderr}"
    );
}
