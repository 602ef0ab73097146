//! The Debian package, built with `cargo deb` and installed on this
//! machine with dpkg (the tests run as root; CI too): the user, the state
//! directory, the man page, the unit, the conffile; `check` passes on the
//! shipped config, the proxy starts from it as the service user (no
//! systemd here: started directly, as the unit's ExecStart would), `dpkg
//! -r` keeps the edited config, `dpkg --purge` removes it.
//!
//! The package holds the test build of the binary (`--no-build --profile
//! dev`: CI builds no release binary; a release is `cargo deb`). Needs
//! cargo-deb from scripts/install-test-deps.sh.

mod support;

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use support::*;

const CONF: &str = "/etc/starttls-proxy/starttls-proxy.toml";

fn run(cmd: &mut Command) -> Output {
    cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"))
}

fn ok(cmd: &mut Command) -> String {
    let out = run(cmd);
    assert!(
        out.status.success(),
        "{cmd:?}: {:?}\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).to_string()
}

#[test]
fn the_committed_conffile_is_the_production_example_as_packaged_config_sh_derives_it() {
    let derived = ok(&mut Command::new(
        repo().join("deploy/debian/packaged-config.sh"),
    ));
    let committed =
        std::fs::read_to_string(repo().join("deploy/debian/starttls-proxy.toml")).unwrap();
    assert!(
        derived == committed,
        "deploy/debian/starttls-proxy.toml is stale: deploy/debian/packaged-config.sh > deploy/debian/starttls-proxy.toml"
    );
    // Nowhere near an MTA's ports.
    assert!(committed.contains("address = \"127.0.0.1:2525\""));
    assert!(!committed.contains("address = \"[::]:25\""));
}

fn dpkg_status() -> String {
    let out = run(Command::new("dpkg-query").args(["-W", "-f=${Status}", "starttls-proxy"]));
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// The shipped config, unedited, run as the service user: ready, and the
/// greeting on 127.0.0.1:2525.
fn starts_as_the_service_user() {
    // setpriv execs (runuser would fork, and killing it would leave the
    // proxy running).
    let mut child = Command::new("setpriv")
        .args([
            "--reuid=starttls-proxy",
            "--regid=starttls-proxy",
            "--clear-groups",
            "/usr/bin/starttls-proxy",
            "run",
            "--config",
            CONF,
        ])
        .current_dir("/var/lib/starttls-proxy")
        .env_remove("STARTTLS_PROXY_ALLOW_ROOT")
        .env_remove("RUST_LOG")
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let greeting = wait_for(
        "the packaged proxy's greeting",
        Duration::from_secs(20),
        || {
            let mut c = std::net::TcpStream::connect("127.0.0.1:2525").ok()?;
            c.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
            let mut buf = [0u8; 256];
            let n = std::io::Read::read(&mut c, &mut buf).ok()?;
            Some(String::from_utf8_lossy(&buf[..n]).to_string())
        },
    );
    let _ = child.kill();
    let _ = child.wait();
    // The shipped config's backend (Postfix on 127.0.0.1:10025) is not
    // there, so the proxy says 421 as DESIGN §2 wants; either way it is
    // the packaged proxy, with the packaged hostname, serving.
    assert!(
        greeting.starts_with("220 mx1.example.net ESMTP")
            || greeting.starts_with("421 4.4.1 mx1.example.net "),
        "{greeting}"
    );
}

#[test]
fn installs_checks_starts_and_uninstalls_keeping_the_config() {
    assert!(
        rustix::process::geteuid().is_root(),
        "dpkg -i needs root (scripts/test.sh runs as root)"
    );
    let dir = tempdir();
    let deb = build_deb(dir.path());
    let _ = run(Command::new("dpkg").args(["--purge", "starttls-proxy"]));

    ok(Command::new("dpkg").arg("-i").arg(&deb));
    assert_eq!(dpkg_status(), "install ok installed");
    let conffiles =
        ok(Command::new("dpkg-query").args(["-W", "-f=${Conffiles}", "starttls-proxy"]));
    assert!(conffiles.contains(CONF), "{conffiles}");
    let user = ok(Command::new("getent").args(["passwd", "starttls-proxy"]));
    assert!(
        user.contains(":/var/lib/starttls-proxy:/usr/sbin/nologin"),
        "{user}"
    );
    let home = ok(Command::new("stat").args(["-c", "%U %a", "/var/lib/starttls-proxy"]));
    assert_eq!(home.trim(), "starttls-proxy 750");
    for f in [
        "/usr/bin/starttls-proxy",
        "/usr/share/man/man1/starttls-proxy.1.gz",
        "/usr/lib/systemd/system/starttls-proxy.service",
    ] {
        assert!(Path::new(f).exists(), "{f} not installed");
    }
    // The installed unit, as is, with its real binary path.
    let verify = run(Command::new("systemd-analyze")
        .args(["verify", "/usr/lib/systemd/system/starttls-proxy.service"]));
    assert!(
        verify.status.success() && verify.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&verify.stderr)
    );

    // check passes on the shipped config, as root and as the service user
    // (who must be able to read its keys); only warnings, no errors.
    ok(Command::new("/usr/bin/starttls-proxy").args(["check", "--config", CONF]));
    ok(Command::new("runuser").args([
        "-u",
        "starttls-proxy",
        "--",
        "/usr/bin/starttls-proxy",
        "check",
        "--config",
        CONF,
    ]));
    starts_as_the_service_user();

    // An operator's edit survives dpkg -r.
    let mut text = std::fs::read_to_string(CONF).unwrap();
    text.push_str("# edited by the operator\n");
    std::fs::write(CONF, &text).unwrap();
    ok(Command::new("dpkg").args(["-r", "starttls-proxy"]));
    assert_eq!(dpkg_status(), "deinstall ok config-files");
    assert!(!Path::new("/usr/bin/starttls-proxy").exists());
    assert_eq!(std::fs::read_to_string(CONF).unwrap(), text);

    ok(Command::new("dpkg").args(["--purge", "starttls-proxy"]));
    assert!(!Path::new(CONF).exists());
    assert!(!Path::new("/var/lib/starttls-proxy").exists());
}
