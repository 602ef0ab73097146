//! Config errors and `check` through the real binary: non-zero exit, and
//! every message names the file, the line and the key.

mod support;

use support::*;

fn write_config(dir: &tempfile::TempDir, text: &str) -> String {
    let path = dir.path().join("bad.toml");
    let text = text
        .replace("{certs}", certs().to_str().unwrap())
        .replace("{dir}", dir.path().to_str().unwrap());
    std::fs::write(&path, text).unwrap();
    path.to_str().unwrap().to_string()
}

/// 1-based line of the first line of `text` containing `needle`.
fn line_of(config: &ProxyConfig, needle: &str) -> usize {
    config
        .text
        .lines()
        .position(|l| l.contains(needle))
        .expect("needle in config")
        + 1
}

fn run_fails_with(config: ProxyConfig, expected: &[&str]) {
    let dir = tempdir();
    let path = write_config(&dir, &config.text);
    for sub in ["run", "check"] {
        let out = run_bin(&[sub, "--config", &path]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success(),
            "{sub} accepted a bad config: {stderr}"
        );
        let want = expected
            .iter()
            .map(|e| e.replace("{path}", &path))
            .collect::<Vec<_>>();
        for w in &want {
            assert!(
                stderr.contains(w.as_str()),
                "{sub}: expected {w:?} in:\n{stderr}"
            );
        }
    }
}

#[test]
fn unknown_key_is_named_with_file_and_line() {
    let config = ProxyConfig::sink().replace("[tls]", "[tls]\nsesion_tickets = 1");
    let line = line_of(&config, "sesion_tickets");
    let want = format!("{{path}}:{line}:1: tls.sesion_tickets: unknown field `sesion_tickets`");
    run_fails_with(config, &[&want]);
}

#[test]
fn bad_duration_is_named_with_file_and_line() {
    let config = ProxyConfig::sink().append("\n[timeouts]\nhandshake = \"30 sec onds\"\n");
    let line = line_of(&config, "30 sec onds");
    let want = format!("{{path}}:{line}:13: timeouts.handshake: invalid duration \"30 sec onds\"");
    run_fails_with(config, &[&want]);
}

#[test]
fn missing_certificate_file_is_named_with_file_line_and_key() {
    let config =
        ProxyConfig::sink().replace("mx.tenant2.test/privkey.pem", "mx.tenant2.test/nope.pem");
    let want = format!(
        "{{path}}:{}:7: certificate[2].key: cannot read ",
        line_of(&config, "nope.pem")
    );
    run_fails_with(
        config,
        &[&want, "mx.tenant2.test/nope.pem: No such file or directory"],
    );
}

#[test]
fn key_not_matching_the_chain_is_refused() {
    let config =
        ProxyConfig::sink().replace("mx.tenant2.test/privkey.pem", "wild.test/privkey.pem");
    let want = format!(
        "{{path}}:{}:7: certificate[2].key: ",
        line_of(&config, "wild.test/privkey.pem")
    );
    run_fails_with(
        config,
        &[
            &want,
            "wild.test/privkey.pem: does not match the leaf certificate in ",
        ],
    );
}

#[test]
fn check_reports_the_quickstart_config() {
    let out = std::process::Command::new(bin())
        .args(["check", "--config", "config/quickstart.toml"])
        .current_dir(repo())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("certificate \"mx1\": RSA, chain check full"),
        "{stdout}"
    );
    assert!(stdout.contains("(2 served)"), "{stdout}");
    assert!(
        stdout.contains(
            "without SNI: certificate \"mx1-ecdsa\" (ECDSA clients), \"mx1\" (RSA-only clients)"
        ) && stdout.contains("SNI any-label.tenant2.test: certificate \"tenant2\""),
        "{stdout}"
    );
    assert!(stdout.contains("0 warning(s), 0 errors"), "{stdout}");
}

#[test]
fn check_warns_when_the_default_certificate_does_not_cover_hostname() {
    let dir = tempdir();
    let text = ProxyConfig::sink()
        .replace(
            "default_certificate = \"mx1\"",
            "default_certificate = \"tenant2\"",
        )
        .text;
    let path = write_config(&dir, &text);
    let out = run_bin(&["check", "--config", &path]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "warnings alone do not fail check: {stdout}"
    );
    assert!(
        stdout.contains(
            "warning: the default certificate \"tenant2\" does not cover hostname mx1.example.test"
        ),
        "{stdout}"
    );
}

#[test]
fn unbindable_listener_fails_start_naming_the_key() {
    let holder = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = holder.local_addr().unwrap().to_string();
    let dir = tempdir();
    let path = write_config(
        &dir,
        &ProxyConfig::sink().replace("127.0.0.1:0", &taken).text,
    );
    let out = run_bin(&["run", "--config", &path]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains(&format!("listener[0].address: cannot bind {taken}")),
        "{stderr}"
    );
}

#[test]
fn unbindable_metrics_endpoint_fails_start_and_log_format_flag_wins() {
    let holder = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = holder.local_addr().unwrap().to_string();
    let dir = tempdir();
    let config = ProxyConfig::sink()
        .replace("format = \"json\"", "format = \"text\"")
        .append(&format!("\n[metrics]\nlisten = \"{taken}\"\n"));
    let path = write_config(&dir, &config.text);
    let out = run_bin(&["run", "--log-format", "json", "--config", &path]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(&format!("metrics.listen: cannot bind {taken}")),
        "{stderr}"
    );
    // The log lines are JSON although the config says text.
    let logged: serde_json::Value = stderr
        .lines()
        .find(|l| l.contains("cannot bind the metrics endpoint"))
        .and_then(|l| serde_json::from_str(l).ok())
        .unwrap_or_else(|| panic!("no JSON log line: {stderr}"));
    assert_eq!(logged["address"], taken);
}

#[test]
fn log_format_is_an_option_of_run_only() {
    let out = run_bin(&["check", "--help"]);
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{help}");
    assert!(help.contains("--json"), "not check's help: {help}");
    assert!(
        !help.contains("--log-format"),
        "check offers --log-format:\n{help}"
    );
    for args in [&["run", "--help"][..], &["--help"]] {
        let out = run_bin(args);
        let help = String::from_utf8_lossy(&out.stdout);
        assert!(help.contains("--log-format"), "{args:?}:\n{help}");
    }
    // Given to `check` anyway (before the subcommand name): refused, not ignored.
    let dir = tempdir();
    let path = write_config(&dir, &ProxyConfig::sink().text);
    let out = run_bin(&["--log-format", "json", "check", "--config", &path]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("--log-format applies to `run` only"),
        "{stderr}"
    );
}

#[test]
fn log_format_works_with_run_implied_or_named_first() {
    let holder = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = holder.local_addr().unwrap().to_string();
    let dir = tempdir();
    let config = ProxyConfig::sink()
        .replace("format = \"json\"", "format = \"text\"")
        .replace("127.0.0.1:0", &taken);
    let path = write_config(&dir, &config.text);
    for args in [
        &["--log-format", "json", "--config", &path][..],
        &["--log-format", "json", "run", "--config", &path],
    ] {
        let out = run_bin(args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        let line = stderr
            .lines()
            .find(|l| l.contains("cannot bind listener"))
            .unwrap_or_else(|| panic!("{args:?}: no log line: {stderr}"));
        assert!(
            serde_json::from_str::<serde_json::Value>(line).is_ok(),
            "{args:?}: not JSON: {line}"
        );
    }
}

/// Runs the binary with `args` from the directory `cwd`.
fn run_bin_in(cwd: &std::path::Path, args: &[&str]) -> std::process::Output {
    proxy_command()
        .args(args)
        .current_dir(cwd)
        .output()
        .unwrap()
}

#[test]
fn missing_relative_path_says_it_is_relative_to_the_working_directory() {
    let dir = tempdir();
    let cwd = tempdir();
    let cwd_path = std::fs::canonicalize(cwd.path()).unwrap();
    // The key is beside the config file, the chain nowhere.
    std::fs::create_dir(dir.path().join("keys")).unwrap();
    std::fs::copy(
        certs().join("mx.tenant2.test/privkey.pem"),
        dir.path().join("keys/tenant2.pem"),
    )
    .unwrap();
    let config = ProxyConfig::sink()
        .replace("{certs}/mx.tenant2.test/privkey.pem", "keys/tenant2.pem")
        .replace("{certs}/wild.test/fullchain.pem", "certs/wild.pem");
    let path = write_config(&dir, &config.text);
    let key_line = line_of(&config, "keys/tenant2.pem");
    let chain_line = line_of(&config, "certs/wild.pem");
    for sub in ["run", "check"] {
        let out = run_bin_in(&cwd_path, &[sub, "--config", &path]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{sub}: {stderr}");
        let relative = format!(
            "(relative to the working directory {}, not to the config file's directory",
            cwd_path.display()
        );
        let key = format!(
            "{path}:{key_line}:7: certificate[2].key: cannot read keys/tenant2.pem: No such file or directory (os error 2) {relative}: did you mean {}?)",
            dir.path().join("keys/tenant2.pem").display()
        );
        let chain = format!(
            "{path}:{chain_line}:9: certificate[3].chain: cannot read certs/wild.pem: No such file or directory (os error 2) {relative}: use an absolute path)"
        );
        assert!(
            stderr.contains(&key),
            "{sub}: expected {key:?} in:\n{stderr}"
        );
        assert!(
            stderr.contains(&chain),
            "{sub}: expected {chain:?} in:\n{stderr}"
        );
    }
    // The same relative path from the directory it is relative to loads.
    let out = run_bin_in(dir.path(), &["check", "--config", &path]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("keys/tenant2.pem"), "{stderr}");
}

#[test]
fn relative_sink_that_cannot_be_created_says_what_it_is_relative_to() {
    let dir = tempdir();
    let cwd = tempdir();
    let cwd_path = std::fs::canonicalize(cwd.path()).unwrap();
    // A file where the Maildir's directory should go.
    std::fs::write(cwd_path.join("mail"), "not a directory").unwrap();
    let config = ProxyConfig::sink().replace("{dir}/mail", "mail");
    let path = write_config(&dir, &config.text);
    let out = run_bin_in(&cwd_path, &["run", "--config", &path]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    let want = format!(
        "(relative to the working directory {}, not to the config file's directory: use an absolute path)",
        cwd_path.display()
    );
    assert!(
        stderr.contains("backend \"b\": sink Maildir mail/tmp"),
        "{stderr}"
    );
    assert!(stderr.contains(&want), "expected {want:?} in:\n{stderr}");
}

#[test]
fn relative_backend_tls_ca_that_cannot_be_read_says_what_it_is_relative_to() {
    let dir = tempdir();
    let cwd = tempdir();
    let cwd_path = std::fs::canonicalize(cwd.path()).unwrap();
    // The CA sits beside the config file; the proxy runs elsewhere.
    std::fs::copy(certs().join("ca.pem"), dir.path().join("hop-ca.pem")).unwrap();
    let config = ProxyConfig::servers(&["127.0.0.1:10025".parse().unwrap()]).replace(
        "servers = [",
        "tls = \"starttls\"\ntls_ca = \"hop-ca.pem\"\nservers = [",
    );
    let path = write_config(&dir, &config.text);
    let want = format!(
        "(relative to the working directory {}, not to the config file's directory: use an absolute path)",
        cwd_path.display()
    );
    for sub in ["run", "check"] {
        let out = run_bin_in(&cwd_path, &[sub, "--config", &path]);
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(!out.status.success(), "{sub}: {text}");
        assert!(text.contains("tls_ca hop-ca.pem"), "{sub}: {text}");
        assert!(text.contains(&want), "{sub}: expected {want:?} in:\n{text}");
    }
    // From the config file's directory the same relative path loads.
    let out = run_bin_in(dir.path(), &["check", "--config", &path]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

const TLS_RULES: &str = r#"
[[tls_policy]]
name = "partners"
clients = ["192.0.2.0/24", "2001:db8::/48"]
helo = [".bank.example"]
require = "tls"
mode = "report"

[[tls_policy]]
name = "legal"
senders = ["bank.example"]
recipients = ["legal.example.test"]
require = "tls1.3"
mode = "enforce"
reply = "temporary"
"#;

#[test]
fn a_bad_tls_policy_cidr_or_key_is_named_with_file_line_and_key() {
    let config =
        ProxyConfig::sink().append(&TLS_RULES.replace("\"2001:db8::/48\"", "\"2001:db8::/48x\""));
    let line = line_of(&config, "2001:db8::/48x");
    let cidr = format!(
        "{{path}}:{line}:28: tls_policy[0].clients[1]: \"2001:db8::/48x\" is not an address or network"
    );
    run_fails_with(config, &[&cidr]);
    let config = ProxyConfig::sink().append(&TLS_RULES.replace("reply = ", "replies = "));
    let line = line_of(&config, "replies = ");
    let key = format!("{{path}}:{line}:1: tls_policy[1].replies: unknown field `replies`");
    run_fails_with(config, &[&key]);
}

#[test]
fn check_prints_each_tls_policy_rule_and_what_it_matches() {
    let dir = tempdir();
    let path = write_config(&dir, &ProxyConfig::sink().append(TLS_RULES).text);
    let out = run_bin(&["check", "--config", &path]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let want = "\
tls policy \"partners\": report, require tls, asked at MAIL FROM
  clients    192.0.2.0/24, 2001:db8::/48
  helo       any subdomain of bank.example
  senders    any
  recipients any
  would answer (report mode: counted and logged as would_refuse, the session goes on): 530 5.7.0 Must issue a STARTTLS command first (plaintext)
tls policy \"legal\": enforce, require tls1.3, asked at each RCPT TO
  clients    any
  helo       any
  senders    bank.example
  recipients legal.example.test
  answers: 450 4.7.0 Must issue a STARTTLS command first (plaintext); 450 4.7.0 Must use TLS 1.3 (TLS 1.2)
";
    assert!(stdout.contains(want), "{stdout}");
    let out = run_bin(&["check", "--json", "--config", &path]);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let legal = &report["tls_policy"][1];
    assert_eq!(legal["name"], "legal");
    assert_eq!(legal["asked_at"], "each RCPT TO");
    assert_eq!(legal["clients"], serde_json::json!([]));
    assert_eq!(
        legal["recipients"],
        serde_json::json!(["legal.example.test"])
    );
    // No rules: said so, and an empty list for scripts.
    let path = write_config(&dir, &ProxyConfig::sink().text);
    let out = run_bin(&["check", "--config", &path]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("tls policy: no rules"));
    let out = run_bin(&["check", "--json", "--config", &path]);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["tls_policy"], serde_json::json!([]));
}

#[test]
fn check_warns_about_an_enforced_rule_for_every_client() {
    let dir = tempdir();
    let rule = "\n[[tls_policy]]\nname = \"all\"\nclients = [\"0.0.0.0/0\", \"::/0\"]\nrequire = \"tls\"\nmode = \"enforce\"\n";
    let path = write_config(&dir, &ProxyConfig::sink().append(rule).text);
    let out = run_bin(&["check", "--config", &path]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "a warning, not an error: {stdout}");
    assert!(
        stdout.contains("warning: tls_policy \"all\" enforces tls for every client"),
        "{stdout}"
    );
    // Staged in report mode: no warning.
    let path = write_config(
        &dir,
        &ProxyConfig::sink()
            .append(&rule.replace("enforce", "report"))
            .text,
    );
    let out = run_bin(&["check", "--config", &path]);
    assert!(!String::from_utf8_lossy(&out.stdout).contains("tls_policy \"all\""));
}

// === [[route]] ===

const SECOND_BACKEND: &str = "\n[[backend]]\nname = \"t2\"\nsink = \"{dir}/t2\"\n";

#[test]
fn a_route_to_an_unknown_backend_is_named_with_file_and_line() {
    let config = ProxyConfig::sink()
        .append(SECOND_BACKEND)
        .append("\n[[route]]\nsni = [\"mx.tenant2.test\"]\nbackend = \"t3\"\n");
    let line = line_of(&config, "backend = \"t3\"");
    let want = format!(
        "{{path}}:{line}:11: route[0].backend: no [[backend]] named \"t3\" (known: \"b\", \"t2\")"
    );
    run_fails_with(config, &[&want]);
}

#[test]
fn a_name_routed_twice_and_a_bad_name_are_named_with_file_and_line() {
    let config = ProxyConfig::sink().append(SECOND_BACKEND).append(
        "\n[[route]]\nsni = [\"mx.tenant2.test\"]\nbackend = \"t2\"\n\n[[route]]\nsni = [\"*.wild.test\", \"MX.tenant2.test.\"]\nbackend = \"b\"\n\n[[route]]\nsni = [\"a.*.test\"]\nbackend = \"b\"\n",
    );
    let twice = line_of(&config, "MX.tenant2.test.");
    let bad = line_of(&config, "a.*.test");
    run_fails_with(
        config,
        &[
            &format!(
                "{{path}}:{twice}:23: route[1].sni[1]: \"mx.tenant2.test\" is already routed by route[0].sni[0]"
            ),
            &format!("{{path}}:{bad}:8: route[2].sni[0]: \"a.*.test\": give a host name"),
        ],
    );
}

#[test]
fn check_shows_routes_and_warns_about_a_routed_name_no_certificate_covers() {
    let dir = tempdir();
    let config = ProxyConfig::sink().append(SECOND_BACKEND).append(
        "\n[[route]]\nsni = [\"mx.tenant2.test\", \"*.wild.test\", \"mx.nocert.test\"]\nbackend = \"t2\"\n",
    );
    let line = line_of(&config, "mx.nocert.test");
    let path = write_config(&dir, &config.text);
    let out = run_bin(&["check", "--config", &path]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "a warning, not an error: {stdout}");
    assert!(
        stdout.contains("route mx.tenant2.test, *.wild.test, mx.nocert.test -> backend \"t2\""),
        "{stdout}"
    );
    let want = format!(
        "warning: {path}:{line}:7: route[0].sni[2]: \"mx.nocert.test\" is routed to \"t2\" but no certificate covers it"
    );
    assert!(stdout.contains(&want), "{want}\n{stdout}");
    assert!(
        !stdout.contains("sni[0]") && !stdout.contains("sni[1]"),
        "{stdout}"
    );
    let out = run_bin(&["check", "--json", "--config", &path]);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        report["routes"],
        serde_json::json!([{"sni": ["mx.tenant2.test", "*.wild.test", "mx.nocert.test"], "backend": "t2"}])
    );
}

// === [[backend]] tls ===

#[test]
fn backend_tls_keys_without_tls_or_on_the_sink_are_named_with_file_and_line() {
    let config = ProxyConfig::servers(&["127.0.0.1:10025".parse().unwrap()])
        .append("\n[[backend]]\nname = \"t2\"\nservers = [\"127.0.0.1:10026\"]\ntls_name = \"backend.example.test\"\n")
        .append("\n[[backend]]\nname = \"t3\"\nsink = \"{dir}/t3\"\ntls = \"starttls\"\n")
        .append("\n[[backend]]\nname = \"t4\"\nservers = [\"127.0.0.1:10027\"]\ntls = \"implicit\"\ntls_verify = false\ntls_ca = \"{certs}/ca.pem\"\n");
    let name = line_of(&config, "tls_name =");
    let sink = line_of(&config, "tls = \"starttls\"");
    let ca = line_of(&config, "tls_ca =");
    run_fails_with(
        config,
        &[
            &format!(
                "{{path}}:{name}:12: backend[1].tls_name: only with tls = \"starttls\" or \"implicit\""
            ),
            &format!("{{path}}:{sink}:7: backend[2].tls: the built-in sink has no TLS"),
            &format!("{{path}}:{ca}:10: backend[3].tls_ca: tls_verify = false verifies nothing"),
        ],
    );
}

#[test]
fn an_unknown_backend_tls_mode_is_named_with_file_and_line() {
    let config = ProxyConfig::servers(&["127.0.0.1:10025".parse().unwrap()])
        .replace("servers = [", "tls = \"required\"\nservers = [");
    let line = line_of(&config, "tls = \"required\"");
    run_fails_with(
        config,
        &[&format!(
            "{{path}}:{line}:7: backend[0].tls: unknown variant `required`"
        )],
    );
}

#[test]
fn check_reads_the_backend_tls_ca_as_run_does() {
    let config = ProxyConfig::servers(&["127.0.0.1:10025".parse().unwrap()]).replace(
        "servers = [",
        "tls = \"starttls\"\ntls_ca = \"{dir}/missing-ca.pem\"\nservers = [",
    );
    run_fails_with(config, &["backend \"b\": tls_ca ", "missing-ca.pem"]);
    // tls_verify = false: a warning, not an error.
    let dir = tempdir();
    let config = ProxyConfig::servers(&["127.0.0.1:10025".parse().unwrap()]).replace(
        "servers = [",
        "tls = \"implicit\"\ntls_verify = false\nservers = [",
    );
    let path = write_config(&dir, &config.text);
    let out = run_bin(&["check", "--config", &path]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(
        stdout.contains("warning: backend \"b\": tls_verify = false"),
        "{stdout}"
    );
}
