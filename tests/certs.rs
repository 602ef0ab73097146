//! Certificate validation at load, through `check` and `run` of the real
//! binary: each failure is refused with a message naming the file.

mod support;

use std::path::{Path, PathBuf};

use support::pki;
use support::*;

/// A config whose only certificate is `chain` + `key`.
fn one_cert_config(dir: &Path, chain: &Path, key: &Path, extra: &str) -> PathBuf {
    let text = format!(
        r#"hostname = "mx1.example.test"

[[listener]]
address = "127.0.0.1:0"
backend = "b"

[tls]
trust_anchors = "{ca}"

[[certificate]]
name = "c"
chain = "{chain}"
key = "{key}"
{extra}

[[backend]]
name = "b"
sink = "{dir}/mail"
"#,
        ca = certs().join("ca.pem").display(),
        chain = chain.display(),
        key = key.display(),
        dir = dir.display(),
    );
    let path = dir.join("proxy.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// Writes `chain_pem` and `key_pem` to files and returns the check output.
fn check_with(
    chain_pem: &str,
    key_pem: &str,
    extra: &str,
) -> (bool, String, PathBuf, tempfile::TempDir) {
    let dir = tempdir();
    let chain = dir.path().join("chain.pem");
    let key = dir.path().join("key.pem");
    std::fs::write(&chain, chain_pem).unwrap();
    pki::write_key_atomic(&key, key_pem.as_bytes());
    let config = one_cert_config(dir.path(), &chain, &key, extra);
    let out = run_bin(&["check", "--config", config.to_str().unwrap()]);
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text, chain, dir)
}

fn read(p: &str) -> String {
    std::fs::read_to_string(certs().join(p)).unwrap()
}

fn refused(chain_pem: &str, key_pem: &str, expected: &str) {
    let (ok, text, chain, _dir) = check_with(chain_pem, key_pem, "");
    assert!(!ok, "accepted:\n{text}");
    assert!(
        text.contains(&format!("certificate[0].chain: {}: ", chain.display())),
        "file not named:\n{text}"
    );
    assert!(text.contains(expected), "expected {expected:?} in:\n{text}");
}

#[test]
fn missing_intermediate_is_refused() {
    refused(
        &read("mx1.example.test/leaf-only.pem"),
        &read("mx1.example.test/privkey.pem"),
        "chain incomplete",
    );
}

#[test]
fn leaf_after_its_intermediate_is_refused() {
    let chain = read("intermediate.pem") + &read("mx1.example.test/leaf-only.pem");
    refused(
        &chain,
        &read("mx1.example.test/privkey.pem"),
        "chain misordered: the leaf (CN=mx1.example.test",
    );
}

#[test]
fn intermediates_in_the_wrong_order_are_refused() {
    let l = pki::leaf_under_sub_ca(&["mx1.example.test"]);
    // leaf, then the demo intermediate, then the sub-CA: the leaf's issuer
    // is not next.
    let blocks: Vec<&str> = l
        .intermediates_pem
        .split_inclusive("-----END CERTIFICATE-----\n")
        .collect();
    let chain = format!("{}{}{}", l.leaf_pem, blocks[1], blocks[0]);
    refused(
        &chain,
        &l.key_pem,
        "chain misordered: certificate 1 (O=starttls-proxy demo",
    );
}

#[test]
fn expired_leaf_is_refused() {
    let l = pki::leaf_valid(&["mx1.example.test"], (2020, 1, 1), (2021, 1, 1));
    refused(
        &l.fullchain(),
        &l.key_pem,
        "leaf certificate expired at 2021-01-01",
    );
}

#[test]
fn not_yet_valid_leaf_is_refused() {
    let l = pki::leaf_valid(&["mx1.example.test"], (2090, 1, 1), (2099, 1, 1));
    refused(
        &l.fullchain(),
        &l.key_pem,
        "leaf certificate not valid before 2090-01-01",
    );
}

#[test]
fn self_signed_is_refused_unless_dane_ee() {
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["mx1.example.test".to_string()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    // A single self-signed certificate is the leaf, not a root to drop.
    refused(&cert.pem(), &key.serialize_pem(), "chain incomplete");
    let (ok, text, _, _dir) = check_with(
        &cert.pem(),
        &key.serialize_pem(),
        "chain_check = \"dane-ee\"",
    );
    assert!(ok, "{text}");
    assert!(text.contains("chain check dane-ee"), "{text}");
}

#[test]
fn key_mismatch_names_the_key_file() {
    let (ok, text, _, dir) = check_with(
        &read("mx1.example.test/fullchain.pem"),
        &read("mx.tenant2.test/privkey.pem"),
        "",
    );
    assert!(!ok);
    let key = dir.path().join("key.pem");
    assert!(
        text.contains(&format!(
            "certificate[0].key: {}: does not match the leaf",
            key.display()
        )),
        "{text}"
    );
}

#[test]
fn root_in_the_file_is_dropped_and_not_served() {
    let chain = read("mx1.example.test/fullchain.pem") + &read("ca.pem");
    let (ok, text, _, _dir) = check_with(&chain, &read("mx1.example.test/privkey.pem"), "");
    assert!(ok, "{text}");
    assert!(
        text.contains("(2 served; the root in the file is not served)"),
        "{text}"
    );
    assert!(
        text.contains("warning: certificate \"c\": the chain file ends with its root certificate"),
        "{text}"
    );

    // And on the wire: leaf + intermediate only.
    let dir = tempdir();
    std::fs::write(dir.path().join("chain.pem"), &chain).unwrap();
    let config = ProxyConfig::sink().replace(
        "{certs}/mx1.example.test/fullchain.pem",
        dir.path().join("chain.pem").to_str().unwrap(),
    );
    let proxy = Proxy::start(config);
    let (_, out) = s_client(
        proxy.addr(),
        &[
            "-servername",
            "mx1.example.test",
            "-showcerts",
            "-sigalgs",
            "rsa_pss_rsae_sha256",
        ],
    );
    assert_eq!(chain_subjects(&out).len(), 2, "{out}");
}

#[test]
fn expiring_soon_is_a_warning_not_an_error() {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let soon = time_ymd(now + 5 * 86_400);
    let l = pki::leaf_valid(&["mx1.example.test"], (2020, 1, 1), soon);
    let (ok, text, _, _dir) = check_with(&l.fullchain(), &l.key_pem, "");
    assert!(ok, "{text}");
    assert!(
        text.contains("warning: certificate \"c\": the leaf expires in 4 days")
            || text.contains("warning: certificate \"c\": the leaf expires in 5 days"),
        "{text}"
    );
}

#[test]
fn check_json_reports_certificates_and_errors() {
    let out = std::process::Command::new(bin())
        .args(["check", "--json", "--config", "config/quickstart.toml"])
        .current_dir(repo())
        .output()
        .unwrap();
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["errors"].as_array().unwrap().len(), 0);
    assert_eq!(v["certificates"][0]["name"], "mx1");
    assert_eq!(v["certificates"][0]["chain"].as_array().unwrap().len(), 2);
    assert_eq!(v["no_sni"]["rsa_clients"], "mx1");
    assert_eq!(v["no_sni"]["ecdsa_clients"], "mx1-ecdsa");

    let (_, _, _, dir) = check_with(
        &read("mx1.example.test/leaf-only.pem"),
        &read("mx1.example.test/privkey.pem"),
        "",
    );
    let out = run_bin(&[
        "check",
        "--json",
        "--config",
        dir.path().join("proxy.toml").to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        v["errors"][0]
            .as_str()
            .unwrap()
            .contains("chain incomplete"),
        "{v}"
    );
}

#[test]
fn run_refuses_to_start_on_an_invalid_certificate() {
    let dir = tempdir();
    let chain = certs().join("mx1.example.test/leaf-only.pem");
    let key = certs().join("mx1.example.test/privkey.pem");
    let config = one_cert_config(dir.path(), &chain, &key, "");
    let out = run_bin(&["run", "--config", config.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("certificate[0].chain: ") && stderr.contains("chain incomplete"),
        "{stderr}"
    );
}

/// (year, month, day) of a Unix time, for rcgen.
fn time_ymd(t: i64) -> (i32, u8, u8) {
    let days = t.div_euclid(86_400);
    // Civil-from-days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    ((if m <= 2 { y + 1 } else { y }) as i32, m as u8, d as u8)
}

#[test]
fn p384_and_ed25519_keys_load_and_serve() {
    for (alg, label, sigalg) in [
        (
            &rcgen::PKCS_ECDSA_P384_SHA384,
            "ECDSA",
            "ecdsa_secp384r1_sha384",
        ),
        (&rcgen::PKCS_ED25519, "Ed25519", "ed25519"),
    ] {
        let l = pki::leaf_alg(&["alg.example.test"], alg);
        let (ok, text, _, dir) = check_with(&l.fullchain(), &l.key_pem, "");
        assert!(ok, "{label}: {text}");
        assert!(
            text.contains(&format!("certificate \"c\": {label}, chain check full")),
            "{text}"
        );
        let text = std::fs::read_to_string(dir.path().join("proxy.toml")).unwrap();
        let proxy = Proxy::start(ProxyConfig {
            text: text + "\n[log]\nformat = \"json\"\n",
        });
        let ca = certs().join("ca.pem");
        let (ok, out) = s_client(
            proxy.addr(),
            &[
                "-servername",
                "alg.example.test",
                "-sigalgs",
                sigalg,
                "-CAfile",
                ca.to_str().unwrap(),
                "-verify_hostname",
                "alg.example.test",
                "-verify_return_error",
            ],
        );
        assert!(
            ok && out.contains("Verify return code: 0 (ok)"),
            "{label}: {out}"
        );
    }
}

/// Like `check_with`, with a `trust_anchors` file of our choosing.
fn check_with_anchors(
    chain_pem: &str,
    key_pem: &str,
    anchors_pem: &str,
) -> (bool, String, tempfile::TempDir) {
    let (_, _, _, dir) = check_with(chain_pem, key_pem, "");
    let anchors = dir.path().join("anchors.pem");
    std::fs::write(&anchors, anchors_pem).unwrap();
    let config = dir.path().join("proxy.toml");
    let text = std::fs::read_to_string(&config).unwrap().replace(
        certs().join("ca.pem").to_str().unwrap(),
        anchors.to_str().unwrap(),
    );
    std::fs::write(&config, text).unwrap();
    let out = run_bin(&["check", "--config", config.to_str().unwrap()]);
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text, dir)
}

#[test]
fn an_intermediate_in_trust_anchors_does_not_make_a_leaf_only_chain_pass() {
    // A CA bundle with intermediate and root, as admins often configure:
    // strict senders do not have the intermediate, so neither do we.
    let bundle = read("intermediate.pem") + &read("ca.pem");
    let (ok, text, _dir) = check_with_anchors(
        &read("mx1.example.test/leaf-only.pem"),
        &read("mx1.example.test/privkey.pem"),
        &bundle,
    );
    assert!(!ok, "{text}");
    assert!(text.contains("chain incomplete"), "{text}");
}

#[test]
fn a_trust_anchors_file_without_a_root_is_a_config_error() {
    let (ok, text, dir) = check_with_anchors(
        &read("mx1.example.test/fullchain.pem"),
        &read("mx1.example.test/privkey.pem"),
        &read("intermediate.pem"),
    );
    assert!(!ok, "{text}");
    let anchors = dir.path().join("anchors.pem");
    assert!(
        text.contains(&format!(
            ":8:17: tls.trust_anchors: trust anchors {}: no usable root",
            anchors.display()
        )),
        "{text}"
    );
}

#[test]
fn an_expired_intermediate_is_refused() {
    let (issuer, pem) = pki::intermediate_valid((2020, 1, 1), (2021, 1, 1));
    let l = pki::leaf_by(
        &issuer,
        &pem,
        &["mx1.example.test"],
        vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth],
    );
    refused(
        &l.fullchain(),
        &l.key_pem,
        "a certificate in the chain is not valid now",
    );
}

#[test]
fn an_intermediate_expiring_before_the_leaf_is_warned_about() {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let (issuer, pem) = pki::intermediate_valid((2020, 1, 1), time_ymd(now + 10 * 86_400));
    let l = pki::leaf_by(
        &issuer,
        &pem,
        &["mx1.example.test"],
        vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth],
    );
    let (ok, text, _, _dir) = check_with(&l.fullchain(), &l.key_pem, "");
    assert!(ok, "{text}");
    assert!(text.contains("warning: certificate \"c\": certificate 1 in the chain (CN=starttls-proxy test Intermediate 2) expires in"), "{text}");
}

#[test]
fn a_leaf_without_server_auth_is_refused() {
    let (issuer, pem) = pki::demo_intermediate();
    let l = pki::leaf_by(
        &issuer,
        &pem,
        &["mx1.example.test"],
        vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth],
    );
    refused(&l.fullchain(), &l.key_pem, "lacks serverAuth");
}

#[test]
fn a_leaf_without_dns_names_is_refused() {
    let (issuer, pem) = pki::demo_intermediate();
    let l = pki::leaf_by(
        &issuer,
        &pem,
        &[],
        vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth],
    );
    refused(
        &l.fullchain(),
        &l.key_pem,
        "no subjectAltName DNS names (CN is not used)",
    );
}

#[test]
fn a_root_in_the_file_that_is_not_an_anchor_is_named_as_such() {
    // No trust_anchors: the demo root appended to the file is dropped and,
    // not being a system root, leaves the chain untrusted.
    let dir = tempdir();
    let chain = dir.path().join("chain.pem");
    std::fs::write(
        &chain,
        read("mx1.example.test/fullchain.pem") + &read("ca.pem"),
    )
    .unwrap();
    let config = one_cert_config(
        dir.path(),
        &chain,
        &certs().join("mx1.example.test/privkey.pem"),
        "",
    );
    let text = std::fs::read_to_string(&config).unwrap();
    let text = text.replace(
        &format!("trust_anchors = \"{}\"\n", certs().join("ca.pem").display()),
        "",
    );
    std::fs::write(&config, text).unwrap();
    let out = run_bin(&["check", "--config", config.to_str().unwrap()]);
    let text = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success());
    assert!(
        text.contains("chain ends in a root that is not a trust anchor: O=starttls-proxy demo"),
        "{text}"
    );
}

#[test]
fn check_json_keeps_its_shape_and_reports_every_certificate_when_one_fails() {
    let dir = tempdir();
    let config = ProxyConfig::sink()
        .replace(
            "{certs}/mx.tenant2.test/fullchain.pem",
            "{certs}/mx.tenant2.test/leaf-only.pem",
        )
        .text
        .replace("{certs}", certs().to_str().unwrap())
        .replace("{dir}", dir.path().to_str().unwrap());
    let path = dir.path().join("proxy.toml");
    std::fs::write(&path, config).unwrap();
    let out = run_bin(&["check", "--json", "--config", path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    for key in [
        "config",
        "hostname",
        "trust_anchors",
        "errors",
        "warnings",
        "certificates",
        "sni",
        "no_sni",
    ] {
        assert!(v.get(key).is_some(), "missing {key}: {v}");
    }
    let certs = v["certificates"].as_array().unwrap();
    assert_eq!(certs.len(), 4, "{v}");
    let tenant = certs.iter().find(|c| c["name"] == "tenant2").unwrap();
    assert!(
        tenant["errors"][0]
            .as_str()
            .unwrap()
            .contains("chain incomplete"),
        "{tenant}"
    );
    let mx1 = certs.iter().find(|c| c["name"] == "mx1").unwrap();
    assert_eq!(mx1["errors"].as_array().unwrap().len(), 0);
    assert_eq!(mx1["chain"].as_array().unwrap().len(), 2);
}

#[test]
fn a_certificate_sharing_one_name_is_not_the_default_certificates_twin() {
    // Default mx1 (RSA); an ECDSA certificate shares mx1's first name but
    // not hostname: ECDSA clients without SNI get it.
    let (issuer, pem) = pki::demo_intermediate();
    let other = pki::leaf_by(
        &issuer,
        &pem,
        &["mail.example.test"],
        vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth],
    );
    let dir = tempdir();
    other.write_to(&dir.path().join("other"));
    let text = format!(
        r#"hostname = "mx1.example.test"

[[listener]]
address = "127.0.0.1:0"
backend = "b"

[tls]
default_certificate = "mx1"
trust_anchors = "{certs}/ca.pem"

[[certificate]]
name = "mx1"
chain = "{certs}/mx1.example.test/fullchain.pem"
key = "{certs}/mx1.example.test/privkey.pem"

[[certificate]]
name = "other"
chain = "{d}/other/fullchain.pem"
key = "{d}/other/privkey.pem"

[[backend]]
name = "b"
sink = "{d}/mail"
"#,
        certs = certs().display(),
        d = dir.path().display()
    );
    let path = dir.path().join("proxy.toml");
    std::fs::write(&path, text).unwrap();
    let out = run_bin(&["check", "--config", path.to_str().unwrap()]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    // Sharing one name does not make it mx1's twin: no-SNI clients of both
    // kinds get mx1, which covers hostname.
    assert!(
        stdout.contains("without SNI: certificate \"mx1\"\n"),
        "{stdout}"
    );
    assert!(!stdout.contains("does not cover hostname"), "{stdout}");
}

// === private key files: mode and owner ===

fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// A current leaf in `dir` (key 0600) and a config for it.
fn key_case(dir: &Path) -> (PathBuf, PathBuf) {
    let l = pki::leaf(&["mx1.example.test"]);
    l.write_to(&dir.join("c"));
    let key = dir.join("c/privkey.pem");
    let config = one_cert_config(dir, &dir.join("c/fullchain.pem"), &key, "");
    (config, key)
}

fn check_text(config: &Path) -> (bool, String) {
    let out = run_bin(&["check", "--config", config.to_str().unwrap()]);
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

fn check_json(config: &Path) -> serde_json::Value {
    let out = run_bin(&["check", "--json", "--config", config.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn strings(v: &serde_json::Value) -> Vec<String> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap().to_string())
        .collect()
}

#[test]
fn a_key_readable_by_group_and_others_is_warned_by_check_naming_the_file() {
    let dir = tempdir();
    let (config, key) = key_case(dir.path());
    set_mode(&key, 0o644);
    let warning = format!(
        "private key file {k} has mode 0644: readable by group and others; fix: chmod 600 {k}",
        k = key.display()
    );
    let (ok, text) = check_text(&config);
    assert!(ok, "a warning, not an error: {text}");
    assert!(
        text.contains(&format!("warning: certificate \"c\": {warning}\n")),
        "{text}"
    );
    assert!(text.contains("1 warning(s), 0 errors"), "{text}");
    let v = check_json(&config);
    assert_eq!(
        strings(&v["warnings"]),
        [format!("certificate \"c\": {warning}")],
        "{v}"
    );
    assert_eq!(strings(&v["certificates"][0]["warnings"]), [warning], "{v}");

    // Others only: says so.
    set_mode(&key, 0o604);
    let (_, text) = check_text(&config);
    assert!(
        text.contains("has mode 0604: readable by others; fix: chmod 600"),
        "{text}"
    );

    // The fix silences it.
    set_mode(&key, 0o600);
    let (ok, text) = check_text(&config);
    assert!(ok && !text.contains("private key file"), "{text}");
    assert!(text.contains("0 warning(s), 0 errors"), "{text}");
    let v = check_json(&config);
    assert_eq!(v["warnings"], serde_json::json!([]), "{v}");
    assert_eq!(
        v["certificates"][0]["warnings"],
        serde_json::json!([]),
        "{v}"
    );
}

#[test]
fn a_key_owned_by_another_user_is_warned_by_check() {
    // The tests run as root (uid 0), who can chown.
    let dir = tempdir();
    let (config, key) = key_case(dir.path());
    std::os::unix::fs::chown(&key, Some(65534), None).unwrap();
    let (ok, text) = check_text(&config);
    assert!(ok, "{text}");
    assert!(
        text.contains(&format!(
            "warning: certificate \"c\": private key file {k} is owned by uid 65534, not by the user the proxy runs as (root, uid 0); fix: chown root {k}\n",
            k = key.display()
        )),
        "{text}"
    );
    assert!(!text.contains("chmod"), "mode 0600 is fine: {text}");
    let v = check_json(&config);
    let w = strings(&v["warnings"]);
    assert!(
        w.len() == 1 && w[0].contains("is owned by uid 65534"),
        "{v}"
    );

    std::os::unix::fs::chown(&key, Some(0), None).unwrap();
    let (_, text) = check_text(&config);
    assert!(!text.contains("private key file"), "{text}");
}

#[test]
fn run_logs_the_key_warning_at_start_up() {
    let dir = tempdir();
    let (config, key) = key_case(dir.path());
    set_mode(&key, 0o640);
    let text = std::fs::read_to_string(&config).unwrap();
    let proxy = Proxy::start(ProxyConfig {
        text: text + "\n[log]\nformat = \"json\"\n",
    });
    let ev = proxy.wait_log(
        &format!(
            "private key file {k} has mode 0640: readable by group; fix: chmod 600 {k}",
            k = key.display()
        ),
        1,
    );
    assert_eq!(ev["level"], "WARN", "{ev}");
    assert_eq!(ev["certificate"], "c", "{ev}");
}
