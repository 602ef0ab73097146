//! `run` refuses root unless `--allow-root` (or STARTTLS_PROXY_ALLOW_ROOT)
//! is given; `check` runs as root without it. The tests run as root (CI
//! does), and say so when they do not: as another user nothing is refused.

mod support;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use support::*;

fn assert_root() {
    assert!(
        rustix::process::geteuid().is_root(),
        "these tests must run as root (scripts/test.sh does): the refusal is only observable as root"
    );
}

fn sink_config(dir: &tempfile::TempDir) -> String {
    let path = dir.path().join("proxy.toml");
    let text = ProxyConfig::sink()
        .text
        .replace("{certs}", certs().to_str().unwrap())
        .replace("{dir}", dir.path().to_str().unwrap());
    std::fs::write(&path, text).unwrap();
    path.to_str().unwrap().to_string()
}

/// The binary without the harness's allowance.
fn bare(args: &[&str]) -> Command {
    let mut c = Command::new(bin());
    c.args(args)
        .env_remove("STARTTLS_PROXY_ALLOW_ROOT")
        .env_remove("RUST_LOG");
    c
}

#[test]
fn run_as_root_without_the_flag_exits_2_with_a_clear_error_and_binds_nothing() {
    assert_root();
    let dir = tempdir();
    let path = sink_config(&dir);
    // Explicit `run`, and `run` as the default command.
    for args in [&["run", "--config", &path][..], &["--config", &path]] {
        let out = bare(args).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(
            stderr.contains("refusing to run as root"),
            "{args:?}: {stderr}"
        );
        assert!(stderr.contains("--allow-root"), "{args:?}: {stderr}");
        assert!(!stderr.contains("listener bound"), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
    }
    // A false environment value allows nothing.
    let out = bare(&["run", "--config", &path])
        .env("STARTTLS_PROXY_ALLOW_ROOT", "false")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}

/// Starts `cmd` and waits for the proxy's ready line; kills it after.
fn starts_and_gets_ready(mut cmd: Command, what: &str) {
    let mut child = cmd.stderr(Stdio::piped()).spawn().unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let mut seen = Vec::new();
    let ready = loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) if line.contains("starttls-proxy ready") => break true,
            Ok(line) => seen.push(line),
            Err(_) => break false,
        }
    };
    let _ = child.kill();
    let _ = child.wait();
    assert!(ready, "{what}: never ready:\n{}", seen.join("\n"));
    assert!(
        !seen.iter().any(|l| l.contains("refusing")),
        "{what}: {seen:?}"
    );
}

#[test]
fn allow_root_flag_or_environment_lets_it_run() {
    assert_root();
    let dir = tempdir();
    let path = sink_config(&dir);
    starts_and_gets_ready(
        bare(&["run", "--allow-root", "--config", &path]),
        "run --allow-root",
    );
    starts_and_gets_ready(
        bare(&["--allow-root", "run", "--config", &path]),
        "--allow-root before run",
    );
    let mut env = bare(&["run", "--config", &path]);
    env.env("STARTTLS_PROXY_ALLOW_ROOT", "1");
    starts_and_gets_ready(env, "STARTTLS_PROXY_ALLOW_ROOT=1");
}

#[test]
fn check_and_help_run_as_root_without_the_flag() {
    assert_root();
    let dir = tempdir();
    let path = sink_config(&dir);
    let out = bare(&["check", "--config", &path]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!String::from_utf8_lossy(&out.stderr).contains("refusing"));
    let out = bare(&["run", "--help"]).output().unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(help.contains("--allow-root"), "{help}");
    assert!(help.contains("STARTTLS_PROXY_ALLOW_ROOT"), "{help}");
}
