//! `starttls-proxy probe HOST[:PORT]` against real endpoints on loopback:
//! the proxy itself (good and broken configs, on 127.0.0.1 and ::1), real
//! Postfix where the proxy refuses to serve the broken case, and listeners
//! that never answer; names come from a real dnsmasq (`--nameserver`).
//! Every finding is produced by a real broken endpoint and asserted in the
//! JSON and the exit code; openssl s_client cross-checks what the probe
//! saw. Needs root and scripts/install-test-deps.sh; a missing peer fails.

mod support;

use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;
use support::*;

/// Fixed loopback ports for the Postfix peers of this file (Postfix cannot
/// bind port 0 and tell us); one per test so they run in parallel.
const PF_LEAF_ONLY: u16 = 14260;
const PF_MISORDERED: u16 = 14261;
const PF_ROOT_INCLUDED: u16 = 14262;
const PF_LEGACY: u16 = 14263;
const PF_EXPIRED: u16 = 14264;
const PF_GOOD: u16 = 14265;
const PF_NO_STARTTLS: u16 = 14266;

// === helpers ===

/// One run of `probe … --json`.
struct Run {
    code: i32,
    json: Value,
    elapsed: Duration,
}

impl Run {
    fn codes(&self) -> Vec<String> {
        let mut v: Vec<String> = self.findings().iter().map(|f| s(&f["code"])).collect();
        v.sort();
        v.dedup();
        v
    }

    fn findings(&self) -> Vec<Value> {
        self.json["findings"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    fn finding(&self, code: &str) -> Value {
        self.findings()
            .into_iter()
            .find(|f| f["code"] == code)
            .unwrap_or_else(|| panic!("no {code} finding in {:#}", self.json))
    }

    fn rows(&self) -> Vec<Value> {
        self.json["endpoints"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    fn rows_at(&self, address: &str) -> Vec<Value> {
        self.rows()
            .into_iter()
            .filter(|r| r["address"] == address)
            .collect()
    }

    fn address(&self, address: &str) -> Value {
        self.json["addresses"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|a| a["address"] == address)
            .cloned()
            .unwrap_or_else(|| panic!("no address {address} in {:#}", self.json))
    }
}

fn s(v: &Value) -> String {
    v.as_str().unwrap_or_default().to_string()
}

fn run_probe(args: &[&str]) -> Run {
    let t = Instant::now();
    let out = Command::new("timeout")
        .arg("120")
        .arg(bin())
        .arg("probe")
        .args(args)
        .arg("--json")
        .env_remove("RUST_LOG")
        .output()
        .expect("run the probe");
    let elapsed = t.elapsed();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let json = serde_json::from_str(&stdout).unwrap_or_else(|e| {
        panic!(
            "probe output is not JSON ({e}): {stdout}\nstderr: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    Run {
        code: out.status.code().unwrap_or(-1),
        json,
        elapsed,
    }
}

/// `probe NAME:PORT --nameserver DNS [--ca demo root] [more]`.
fn probe_name(dns: &DnsServer, target: &str, ca: bool, more: &[&str]) -> Run {
    let ns = dns.addr.to_string();
    let ca_path = certs().join("ca.pem");
    let mut args = vec![target, "--nameserver", &ns];
    if ca {
        args.extend(["--ca", ca_path.to_str().unwrap()]);
    }
    args.extend(more);
    run_probe(&args)
}

/// dnsmasq answering for example.test from `--host-record`s.
fn dns(records: &[&str]) -> DnsServer {
    let records: Vec<String> = records
        .iter()
        .map(|r| format!("--host-record={r}"))
        .collect();
    let refs: Vec<&str> = records.iter().map(String::as_str).collect();
    DnsServer::with_zones(&["example.test"], &refs)
}

/// The proxy on 127.0.0.1 and a twin on [::1] at the same port (two
/// processes: one config has one port for both only by binding [::]).
fn proxy_pair(v4: ProxyConfig, v6: ProxyConfig) -> (Proxy, Proxy) {
    let a = Proxy::start(v4);
    let port = a.port();
    let b = Proxy::start(v6.replace("127.0.0.1:0", &format!("[::1]:{port}")));
    assert_eq!(b.port(), port);
    (a, b)
}

/// The ECDSA mx1 certificate (the one an ECDSA-capable client such as the
/// probe gets) replaced by `dir`'s fullchain.pem and privkey.pem.
fn with_ecdsa_cert(config: ProxyConfig, dir: &Path) -> ProxyConfig {
    config
        .replace(
            "{certs}/mx1.example.test/ecdsa/fullchain.pem",
            dir.join("fullchain.pem").to_str().unwrap(),
        )
        .replace(
            "{certs}/mx1.example.test/ecdsa/privkey.pem",
            dir.join("privkey.pem").to_str().unwrap(),
        )
}

/// A real Postfix on 127.0.0.1:`port` offering STARTTLS with `chain`
/// (PEM, leaf first) and `key`; TLS 1.2+ only unless `legacy`.
fn postfix(port: u16, chain: &Path, key: &Path, legacy: bool) -> PostfixBackend {
    let protocols = if legacy {
        // TLS 1.0/1.1 on, and OpenSSL 3's security level 0, which they need
        // where the system default level refuses them.
        "smtpd_tls_protocols = >=TLSv1\nsmtpd_tls_mandatory_protocols = >=TLSv1\ntls_medium_cipherlist = DEFAULT:@SECLEVEL=0"
    } else {
        "smtpd_tls_protocols = >=TLSv1.2\nsmtpd_tls_mandatory_protocols = >=TLSv1.2"
    };
    PostfixBackend::start(
        port,
        &[
            ("TLS_CERT", chain.to_str().unwrap()),
            ("TLS_KEY", key.to_str().unwrap()),
            ("POSTCONF", protocols),
        ],
    )
}

fn mx1_file(name: &str) -> std::path::PathBuf {
    certs().join("mx1.example.test").join(name)
}

/// Concatenated PEM files, written into `dir` as `name`.
fn pem_file(dir: &Path, name: &str, parts: &[&Path]) -> std::path::PathBuf {
    let text: String = parts
        .iter()
        .map(|p| std::fs::read_to_string(p).unwrap())
        .collect();
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

/// The CN of an x509-parser subject ("O=…, CN=name" → "name").
fn cn(subject: &str) -> String {
    subject
        .split(", ")
        .find_map(|p| p.strip_prefix("CN="))
        .unwrap_or(subject)
        .to_string()
}

/// The CN of each " N s:" line openssl printed.
fn s_client_cns(out: &str) -> Vec<String> {
    chain_subjects(out)
        .iter()
        .map(|l| {
            l.split(", ")
                .find_map(|p| {
                    p.trim()
                        .strip_prefix("CN = ")
                        .or(p.trim().strip_prefix("CN="))
                })
                .unwrap_or(l)
                .to_string()
        })
        .collect()
}

// === the proxy as the endpoint ===

#[test]
fn a_good_proxy_on_both_families_has_no_findings() {
    let (v4, _v6) = proxy_pair(ProxyConfig::sink(), ProxyConfig::sink());
    let dns = dns(&["mx1.example.test,127.0.0.1,::1"]);
    let target = format!("mx1.example.test:{}", v4.port());
    let run = probe_name(&dns, &target, true, &[]);
    assert_eq!(run.code, 0, "{:#}", run.json);
    assert_eq!(run.json["target"], target);
    assert_eq!(run.findings(), Vec::<Value>::new());
    assert_eq!(run.json["mta_sts_ready"], true);
    let mut shas = Vec::new();
    for addr in [
        format!("127.0.0.1:{}", v4.port()),
        format!("[::1]:{}", v4.port()),
    ] {
        let rows = run.rows_at(&addr);
        assert_eq!(rows.len(), 4, "{addr}: {rows:#?}");
        let variants: Vec<(Value, String)> = rows
            .iter()
            .map(|r| (r["sni"].clone(), s(&r["version"])))
            .collect();
        assert_eq!(
            variants,
            [
                (Value::from("mx1.example.test"), "TLSv1.3".into()),
                (Value::from("mx1.example.test"), "TLSv1.2".into()),
                (Value::Null, "TLSv1.3".into()),
                (Value::Null, "TLSv1.2".into()),
            ]
        );
        for r in &rows {
            assert_eq!(r["mx"], "mx1.example.test");
            assert_eq!(r["starttls"], true);
            assert_eq!(r["verified"], true, "{r:#}");
            assert_eq!(r["name_covered"], true);
            assert_eq!(r["chain_length"], 2);
            assert_eq!(r["key"], "ECDSA P-256");
            shas.push(s(&r["sha256"]));
        }
        let a = run.address(&addr);
        assert_eq!(a["ehlo_name"], "mx1.example.test");
        assert_eq!(a["legacy_tls"]["accepted"], false, "{a:#}");
    }
    // The leaf served is the demo ECDSA certificate, on every row.
    shas.dedup();
    assert_eq!(shas.len(), 1);
    let der = rustls::pki_types::CertificateDer::pem_file_iter(mx1_file("ecdsa/fullchain.pem"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap();
    assert_eq!(shas[0], hex_sha256(&der));
}

fn hex_sha256(der: &[u8]) -> String {
    starttls_proxy::probe::chain::hex(&starttls_proxy::tls::provider::sha256(der))
}

use rustls::pki_types::pem::PemObject;

#[test]
fn a_wrong_default_certificate_is_a_no_sni_warning() {
    let proxy = Proxy::start(ProxyConfig::sink().replace(
        r#"default_certificate = "mx1""#,
        r#"default_certificate = "tenant2""#,
    ));
    let dns = dns(&["mx1.example.test,127.0.0.1"]);
    let run = probe_name(
        &dns,
        &format!("mx1.example.test:{}", proxy.port()),
        true,
        &[],
    );
    assert_eq!(run.codes(), ["nosni_name_mismatch"], "{:#}", run.json);
    assert_eq!(run.code, 1);
    let f = run.finding("nosni_name_mismatch");
    assert_eq!(f["severity"], "warning");
    assert_eq!(f["address"], format!("127.0.0.1:{}", proxy.port()));
    assert_eq!(
        f["fix"],
        "make the default certificate cover the primary MX name"
    );
    assert!(s(&f["message"]).contains("mx.tenant2.test"), "{f:#}");
    for r in run.rows() {
        let with_sni = !r["sni"].is_null();
        assert_eq!(r["name_covered"], with_sni, "{r:#}");
        assert_eq!(r["verified"], true);
    }
    // Readiness for MTA-STS counts senders without SNI too.
    assert_eq!(run.json["mta_sts_ready"], false);
}

#[test]
fn a_name_the_certificate_does_not_cover_is_name_mismatch() {
    let proxy = Proxy::start(ProxyConfig::sink());
    let dns = dns(&["mx9.example.test,127.0.0.1"]);
    let run = probe_name(
        &dns,
        &format!("mx9.example.test:{}", proxy.port()),
        true,
        &[],
    );
    // The same default certificate answers with and without SNI: one error,
    // not a second warning for the same certificate.
    assert_eq!(run.codes(), ["name_mismatch"], "{:#}", run.json);
    assert_eq!(run.code, 2);
    let f = run.finding("name_mismatch");
    assert_eq!(f["severity"], "error");
    assert_eq!(f["mx"], "mx9.example.test");
    assert_eq!(f["fix"], "put mx9.example.test in the certificate's SAN");
    assert!(s(&f["message"]).contains("mx1.example.test"), "{f:#}");
    assert!(run.rows().iter().all(|r| r["name_covered"] == false));
}

#[test]
fn without_the_private_root_the_chain_is_untrusted() {
    let proxy = Proxy::start(ProxyConfig::sink());
    let dns = dns(&["mx1.example.test,127.0.0.1"]);
    let run = probe_name(
        &dns,
        &format!("mx1.example.test:{}", proxy.port()),
        false,
        &[],
    );
    // Complete and ordered, from an unknown root: untrusted, not incomplete.
    assert_eq!(run.codes(), ["untrusted"], "{:#}", run.json);
    assert_eq!(run.code, 2);
    assert!(
        s(&run.finding("untrusted")["message"]).contains("starttls-proxy demo Intermediate CA"),
        "{:#}",
        run.json
    );
    for r in run.rows() {
        assert_eq!(r["verified"], false);
        assert_eq!(r["name_covered"], true);
    }
}

#[test]
fn a_certificate_expiring_within_21_days_is_a_warning() {
    let end = time::OffsetDateTime::now_utc() + time::Duration::days(10);
    let leaf = pki::leaf_valid(
        &["mx1.example.test", "mail.example.test"],
        (2020, 1, 1),
        (end.year(), u8::from(end.month()), end.day()),
    );
    let dir = tempdir();
    leaf.write_to(dir.path());
    let proxy = Proxy::start(with_ecdsa_cert(ProxyConfig::sink(), dir.path()));
    let dns = dns(&["mx1.example.test,127.0.0.1"]);
    let run = probe_name(
        &dns,
        &format!("mx1.example.test:{}", proxy.port()),
        true,
        &[],
    );
    assert_eq!(run.codes(), ["expiring_soon"], "{:#}", run.json);
    assert_eq!(run.code, 1);
    let row = &run.rows()[0];
    assert_eq!(row["verified"], true);
    let days = row["days_left"].as_i64().unwrap();
    assert!((9..=10).contains(&days), "{row:#}");
    assert!(s(&run.finding("expiring_soon")["message"]).contains(&format!("in {days} days")));
}

#[test]
fn ipv4_and_ipv6_serving_different_certificates_is_an_error() {
    let other = pki::leaf(&["mx1.example.test"]);
    let dir = tempdir();
    other.write_to(dir.path());
    let (v4, _v6) = proxy_pair(
        ProxyConfig::sink(),
        with_ecdsa_cert(ProxyConfig::sink(), dir.path()),
    );
    let dns = dns(&["mx1.example.test,127.0.0.1,::1"]);
    let run = probe_name(&dns, &format!("mx1.example.test:{}", v4.port()), true, &[]);
    // Each certificate on its own is fine.
    assert_eq!(run.codes(), ["ipv4_ipv6_mismatch"], "{:#}", run.json);
    assert_eq!(run.code, 2);
    let f = run.finding("ipv4_ipv6_mismatch");
    assert_eq!(f["mx"], "mx1.example.test");
    let msg = s(&f["message"]);
    assert!(
        msg.contains("127.0.0.1:") && msg.contains("[::1]:"),
        "{msg}"
    );
    let sha = |addr: String| s(&run.rows_at(&addr)[0]["sha256"]);
    let (a, b) = (
        sha(format!("127.0.0.1:{}", v4.port())),
        sha(format!("[::1]:{}", v4.port())),
    );
    assert_ne!(a, b);
    let der = rustls::pki_types::CertificateDer::from_pem_slice(other.leaf_pem.as_bytes()).unwrap();
    assert_eq!(b, hex_sha256(&der));
}

#[test]
fn an_address_with_nothing_listening_is_unreachable() {
    let v6 = Proxy::start(ProxyConfig::sink().replace("127.0.0.1:0", "[::1]:0"));
    let dns = dns(&["mx1.example.test,127.0.0.9,::1"]);
    let run = probe_name(&dns, &format!("mx1.example.test:{}", v6.port()), true, &[]);
    assert_eq!(run.codes(), ["unreachable"], "{:#}", run.json);
    assert_eq!(run.code, 2);
    let dead = format!("127.0.0.9:{}", v6.port());
    let f = run.finding("unreachable");
    assert_eq!(f["address"], dead);
    assert!(s(&f["message"]).contains("no TCP connection"), "{f:#}");
    let rows = run.rows_at(&dead);
    assert_eq!(rows.len(), 4);
    assert!(
        rows.iter()
            .all(|r| r["starttls"].is_null() && !r["error"].is_null())
    );
    // The other address is probed all the same.
    let good = run.rows_at(&format!("[::1]:{}", v6.port()));
    assert!(good.iter().all(|r| r["verified"] == true), "{good:#?}");
}

#[test]
fn a_name_without_addresses_is_unreachable() {
    let dns = dns(&["mx1.example.test,127.0.0.1"]);
    let run = probe_name(&dns, "nothing.example.test:25", true, &[]);
    assert_eq!(run.codes(), ["unreachable"], "{:#}", run.json);
    assert_eq!(run.code, 2);
    assert!(run.finding("unreachable")["address"].is_null());
}

/// Four addresses of one name accept TCP and never greet (the kernel
/// completes the handshake; nobody calls accept). With a 1 s step timeout
/// a serial probe needs at least 4 s for them alone; concurrent, about 1.
#[test]
fn silent_addresses_cost_one_timeout_together_not_one_each() {
    let (v4, _v6) = proxy_pair(ProxyConfig::sink(), ProxyConfig::sink());
    let port = v4.port();
    let holes: Vec<TcpListener> = (2..=5)
        .map(|i| TcpListener::bind(SocketAddr::from(([127, 0, 0, i], port))).unwrap())
        .collect();
    let dns = dns(&[
        "mx1.example.test,127.0.0.1,::1",
        "mx1.example.test,127.0.0.2",
        "mx1.example.test,127.0.0.3",
        "mx1.example.test,127.0.0.4",
        "mx1.example.test,127.0.0.5",
    ]);
    let run = probe_name(
        &dns,
        &format!("mx1.example.test:{port}"),
        true,
        &["--timeout", "1"],
    );
    assert!(
        run.elapsed < Duration::from_millis(2500),
        "took {:?}: addresses were not probed concurrently",
        run.elapsed
    );
    let dead: Vec<Value> = run
        .findings()
        .into_iter()
        .filter(|f| f["code"] == "unreachable")
        .map(|f| f["address"].clone())
        .collect();
    assert_eq!(dead.len(), 4, "{:#}", run.json);
    for i in 2..=5 {
        assert!(dead.contains(&Value::from(format!("127.0.0.{i}:{port}"))));
        assert!(
            s(&run.address(&format!("127.0.0.{i}:{port}"))["error"]).contains("greeting"),
            "{:#}",
            run.json
        );
    }
    assert_eq!(run.codes(), ["unreachable"]);
    assert_eq!(run.code, 2);
    for addr in [format!("127.0.0.1:{port}"), format!("[::1]:{port}")] {
        let rows = run.rows_at(&addr);
        assert_eq!(rows.len(), 4);
        assert!(rows.iter().all(|r| r["verified"] == true), "{rows:#?}");
    }
    drop(holes);
}

// === real Postfix where the proxy refuses the broken case ===

#[test]
fn postfix_without_starttls_is_starttls_not_offered() {
    let pf = PostfixBackend::start(PF_NO_STARTTLS, &[]);
    // An address target: no name, no SNI, two rows.
    let run = run_probe(&[&pf.addr().to_string()]);
    assert_eq!(run.codes(), ["starttls_not_offered"], "{:#}", run.json);
    assert_eq!(run.code, 2);
    let rows = run.rows();
    assert_eq!(rows.len(), 2);
    assert!(
        rows.iter()
            .all(|r| r["starttls"] == false && r["sni"].is_null())
    );
    assert_eq!(
        run.address(&pf.addr().to_string())["ehlo_name"],
        "backend.example.test"
    );
}

#[test]
fn postfix_serving_the_leaf_alone_is_chain_incomplete() {
    let pf = postfix(
        PF_LEAF_ONLY,
        &mx1_file("leaf-only.pem"),
        &mx1_file("privkey.pem"),
        false,
    );
    let dns = dns(&["mx1.example.test,127.0.0.1"]);
    let run = probe_name(&dns, &format!("mx1.example.test:{}", pf.port), true, &[]);
    assert_eq!(run.codes(), ["chain_incomplete"], "{:#}", run.json);
    assert_eq!(run.code, 2);
    let f = run.finding("chain_incomplete");
    assert_eq!(f["fix"], "serve fullchain.pem, not cert.pem");
    assert!(s(&f["message"]).contains("starttls-proxy demo Intermediate CA"));
    assert!(
        run.rows()
            .iter()
            .all(|r| r["chain_length"] == 1 && r["verified"] == false)
    );
    // Cross-check: openssl sees one certificate too.
    let (_, out) = s_client(
        pf.addr(),
        &["-servername", "mx1.example.test", "-showcerts"],
    );
    assert_eq!(s_client_cns(&out), ["mx1.example.test"], "{out}");
}

#[test]
fn postfix_with_the_root_before_the_intermediate_is_misordered() {
    let dir = tempdir();
    let chain = pem_file(
        dir.path(),
        "chain.pem",
        &[
            &mx1_file("leaf-only.pem"),
            &certs().join("ca.pem"),
            &certs().join("intermediate.pem"),
        ],
    );
    let pf = postfix(PF_MISORDERED, &chain, &mx1_file("privkey.pem"), false);
    let dns = dns(&["mx1.example.test,127.0.0.1"]);
    let run = probe_name(&dns, &format!("mx1.example.test:{}", pf.port), true, &[]);
    // A path still exists (webpki reorders), so it verifies: misordered
    // and root included, not untrusted.
    assert_eq!(
        run.codes(),
        ["chain_misordered", "root_included"],
        "{:#}",
        run.json
    );
    assert_eq!(run.code, 2);
    assert_eq!(run.finding("chain_misordered")["severity"], "error");
    let row = &run.rows()[0];
    assert_eq!(row["verified"], true);
    let ours: Vec<String> = row["chain"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| cn(&s(&c["subject"])))
        .collect();
    assert_eq!(
        ours,
        [
            "mx1.example.test",
            "starttls-proxy demo Root CA",
            "starttls-proxy demo Intermediate CA"
        ]
    );
    // Cross-check: openssl receives the same chain in the same order.
    let (_, out) = s_client(
        pf.addr(),
        &["-servername", "mx1.example.test", "-showcerts"],
    );
    assert_eq!(s_client_cns(&out), ours, "{out}");
}

#[test]
fn postfix_sending_the_root_is_root_included() {
    let dir = tempdir();
    let chain = pem_file(
        dir.path(),
        "chain.pem",
        &[&mx1_file("fullchain.pem"), &certs().join("ca.pem")],
    );
    let pf = postfix(PF_ROOT_INCLUDED, &chain, &mx1_file("privkey.pem"), false);
    let dns = dns(&["mx1.example.test,127.0.0.1"]);
    let run = probe_name(&dns, &format!("mx1.example.test:{}", pf.port), true, &[]);
    assert_eq!(run.codes(), ["root_included"], "{:#}", run.json);
    assert_eq!(run.code, 1);
    let f = run.finding("root_included");
    assert_eq!(f["severity"], "warning");
    assert_eq!(f["fix"], "remove the root from the chain file");
    assert!(
        run.rows()
            .iter()
            .all(|r| r["chain_length"] == 3 && r["verified"] == true)
    );
}

#[test]
fn postfix_with_tls_1_0_enabled_is_legacy_tls_accepted() {
    let pf = postfix(
        PF_LEGACY,
        &mx1_file("fullchain.pem"),
        &mx1_file("privkey.pem"),
        true,
    );
    let dns = dns(&["mx1.example.test,127.0.0.1"]);
    let run = probe_name(&dns, &format!("mx1.example.test:{}", pf.port), true, &[]);
    assert_eq!(run.codes(), ["legacy_tls_accepted"], "{:#}", run.json);
    assert_eq!(run.code, 1);
    let addr = pf.addr().to_string();
    let legacy = &run.address(&addr)["legacy_tls"];
    assert_eq!(legacy["accepted"], true);
    assert_eq!(legacy["version"], "TLSv1.1");
    assert_eq!(
        run.finding("legacy_tls_accepted")["fix"],
        "set smtpd_tls_protocols = >=TLSv1.2 and smtpd_tls_mandatory_protocols = >=TLSv1.2"
    );
    // Cross-check: a real TLS 1.1 client completes the handshake.
    let (ok, out) = s_client(pf.addr(), &["-tls1_1", "-cipher", "DEFAULT:@SECLEVEL=0"]);
    assert!(ok && out.contains("Protocol  : TLSv1.1"), "{out}");
}

#[test]
fn the_proxy_refuses_legacy_tls_as_openssl_finds_too() {
    let proxy = Proxy::start(ProxyConfig::sink());
    let run = run_probe(&[
        &proxy.addr().to_string(),
        "--ca",
        certs().join("ca.pem").to_str().unwrap(),
    ]);
    assert_eq!(run.codes(), Vec::<String>::new(), "{:#}", run.json);
    assert_eq!(run.code, 0);
    let legacy = &run.address(&proxy.addr().to_string())["legacy_tls"];
    assert_eq!(legacy["accepted"], false);
    // rustls refuses a TLS 1.1 hello with handshake_failure; openssl's
    // TLS 1.1 client gets the same alert.
    assert_eq!(legacy["reply"], "alert handshake_failure", "{legacy:#}");
    let (ok, out) = s_client(proxy.addr(), &["-tls1_1", "-cipher", "DEFAULT:@SECLEVEL=0"]);
    assert!(!ok && out.contains("alert handshake failure"), "{out}");
    // Address targets: no SNI, and no name to judge.
    assert!(
        run.rows()
            .iter()
            .all(|r| r["sni"].is_null() && r["name_covered"].is_null())
    );
}

#[test]
fn postfix_serving_an_expired_certificate_is_expired_not_untrusted() {
    // Expired two days ago: the demo intermediate was valid then, so the
    // path itself can be judged (and is fine).
    let end = time::OffsetDateTime::now_utc() - time::Duration::days(2);
    let leaf = pki::leaf_valid(
        &["mx1.example.test"],
        (2020, 1, 1),
        (end.year(), u8::from(end.month()), end.day()),
    );
    let dir = tempdir();
    leaf.write_to(dir.path());
    let pf = postfix(
        PF_EXPIRED,
        &dir.path().join("fullchain.pem"),
        &dir.path().join("privkey.pem"),
        false,
    );
    let dns = dns(&["mx1.example.test,127.0.0.1"]);
    let run = probe_name(&dns, &format!("mx1.example.test:{}", pf.port), true, &[]);
    assert_eq!(run.codes(), ["expired"], "{:#}", run.json);
    assert_eq!(run.code, 2);
    let date = format!(
        "{:04}-{:02}-{:02}",
        end.year(),
        u8::from(end.month()),
        end.day()
    );
    assert!(
        s(&run.finding("expired")["message"]).contains(&format!("expired on {date}")),
        "{:#}",
        run.json
    );
    let row = &run.rows()[0];
    assert_eq!(row["verified"], false);
    assert_eq!(row["trust"], "verified", "the path itself is fine: {row:#}");
    let days = row["days_left"].as_i64().unwrap();
    assert!((-3..=-2).contains(&days), "{row:#}");
}

#[test]
fn postfix_as_a_third_party_mta_with_a_good_chain_passes() {
    let pf = postfix(
        PF_GOOD,
        &mx1_file("fullchain.pem"),
        &mx1_file("privkey.pem"),
        false,
    );
    let dns = dns(&["mx1.example.test,127.0.0.1"]);
    let run = probe_name(&dns, &format!("mx1.example.test:{}", pf.port), true, &[]);
    assert_eq!(run.codes(), Vec::<String>::new(), "{:#}", run.json);
    assert_eq!(run.code, 0);
    assert_eq!(run.json["mta_sts_ready"], true);
    let rows = run.rows();
    assert_eq!(rows.len(), 4);
    for r in &rows {
        assert_eq!(r["verified"], true);
        assert_eq!(r["name_covered"], true);
        assert_eq!(r["key"], "RSA 2048");
        assert_eq!(r["version"], r["requested"]);
    }
    // Cross-check: openssl negotiates the same suite at TLS 1.2.
    let (ok, out) = s_client(pf.addr(), &["-tls1_2", "-servername", "mx1.example.test"]);
    assert!(ok, "{out}");
    let tls12 = rows.iter().find(|r| r["version"] == "TLSv1.2").unwrap();
    assert_eq!(tls12["cipher"], "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384");
    assert!(
        out.contains("Cipher is ECDHE-RSA-AES256-GCM-SHA384"),
        "{out}"
    );
    let legacy = &run.address(&pf.addr().to_string())["legacy_tls"];
    assert_eq!(legacy["accepted"], false, "{legacy:#}");
}

// === the command line ===

#[test]
fn the_human_report_has_the_table_and_the_fixes_and_no_colour_in_a_pipe() {
    let proxy = Proxy::start(ProxyConfig::sink());
    let out = run_bin(&["probe", &proxy.addr().to_string()]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(2), "{text}");
    assert!(text.contains("ADDRESS"), "{text}");
    assert!(text.contains(&format!("127.0.0.1:{}", proxy.port())));
    assert!(text.contains("TLSv1.3") && text.contains("TLSv1.2"));
    assert!(text.contains("untrusted"));
    assert!(text.contains("fix: use a certificate from a CA senders trust"));
    assert!(!text.contains('\x1b'), "colour codes in a pipe: {text:?}");
}

#[test]
fn usage_errors_exit_2_with_a_message() {
    for (args, needle) in [
        (&["probe"][..], "HOST[:PORT]"),
        (&["probe", "a b"][..], "is not HOST[:PORT]"),
        (&["probe", "mx.example.test:0"][..], "port"),
        (
            &["probe", "--domain", "192.0.2.1"][..],
            "is not a domain name",
        ),
        (
            &["probe", "mx.example.test", "--timeout", "0"][..],
            "seconds",
        ),
        (
            &["probe", "mx.example.test", "--ca", "/nonexistent.pem"][..],
            "/nonexistent.pem",
        ),
    ] {
        let out = run_bin(args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(needle), "{args:?}: {err}");
    }
}
