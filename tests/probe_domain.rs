//! `starttls-proxy probe --domain` and `check --dns` through the real
//! binary, against a whole zone on loopback: an authoritative dnsmasq
//! (MX, A/AAAA, PTR, TLSA and TXT records), the proxy as the MX hosts on
//! distinct 127.0.0.x addresses and on ::1 (every MX shares one
//! `--smtp-port`; IPv6 has only ::1, so the MX hosts share it), and a real
//! HTTPS server (tokio-rustls + hyper) serving the MTA-STS policy on
//! 127.0.0.1, reached through `--mta-sts-port`. Every finding comes from a
//! real broken zone, endpoint or policy, and is asserted in the JSON and
//! the exit code. Needs root and scripts/install-test-deps.sh (dnsmasq,
//! openssl); a missing peer fails.

mod support;

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use support::https::{HttpsServer, Reply};
use support::*;

const ZONES: &[&str] = &["example.test", "127.in-addr.arpa", "ip6.arpa"];
const GOOD_POLICY: &str =
    "version: STSv1\nmode: enforce\nmx: mx1.example.test\nmx: mx2.example.test\nmax_age: 86400\n";

// === running the probe ===

/// One run of the binary with `--json`.
struct Run {
    code: i32,
    json: Value,
    elapsed: Duration,
}

impl Run {
    fn findings(&self) -> Vec<Value> {
        self.json["findings"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// The distinct finding codes, sorted.
    fn codes(&self) -> Vec<String> {
        let mut v: Vec<String> = self.findings().iter().map(|f| s(&f["code"])).collect();
        v.sort();
        v.dedup();
        v
    }

    fn all(&self, code: &str) -> Vec<Value> {
        self.findings()
            .into_iter()
            .filter(|f| f["code"] == code)
            .collect()
    }

    fn finding(&self, code: &str) -> Value {
        self.all(code)
            .into_iter()
            .next()
            .unwrap_or_else(|| panic!("no {code} finding in {:#}", self.json))
    }

    fn blockers(&self) -> Vec<String> {
        self.json["mta_sts_blockers"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|b| s(&b["code"]))
            .collect()
    }
}

fn s(v: &Value) -> String {
    v.as_str().unwrap_or_default().to_string()
}

/// Runs `starttls-proxy ARGS… --json` (bounded by timeout(1)).
fn run_json(args: &[&str]) -> Run {
    let t = Instant::now();
    let out = Command::new("timeout")
        .arg("120")
        .arg(bin())
        .args(args)
        .arg("--json")
        .env_remove("RUST_LOG")
        .output()
        .expect("run the binary");
    let elapsed = t.elapsed();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let json = serde_json::from_str(&stdout).unwrap_or_else(|e| {
        panic!(
            "output is not JSON ({e}): {stdout}\nstderr: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    Run {
        code: out.status.code().unwrap_or(-1),
        json,
        elapsed,
    }
}

/// `probe --domain DOMAIN` against the test zone, the demo CA trusted.
fn probe_domain(domain: &str, dns: &DnsServer, site: &Site, web_port: u16, more: &[&str]) -> Run {
    let (ns, smtp, web) = (
        dns.addr.to_string(),
        site.port.to_string(),
        web_port.to_string(),
    );
    let ca = certs().join("ca.pem");
    let mut args = vec![
        "probe",
        "--domain",
        domain,
        "--nameserver",
        &ns,
        "--ca",
        ca.to_str().unwrap(),
        "--smtp-port",
        &smtp,
        "--mta-sts-port",
        &web,
    ];
    args.extend(more);
    run_json(&args)
}

// === the zone ===

fn hex(data: &[u8]) -> String {
    data.iter().map(|b| format!("{b:02x}")).collect()
}

/// A TXT record as a dnsmasq `--dns-rr` option (its `--txt-record` cuts
/// strings at commas; see tests/probe_dns.rs).
fn txt_rr(name: &str, text: &str) -> String {
    let mut rdata = vec![text.len() as u8];
    rdata.extend(text.bytes());
    format!("--dns-rr={name},16,{}", hex(&rdata))
}

/// `_PORT._tcp.HOST IN TLSA 3 1 1 <hex>` as a dnsmasq option.
fn tlsa_rr(host: &str, port: u16, sha256_hex: &str) -> String {
    format!("--dns-rr=_{port}._tcp.{host},52,030101{sha256_hex}")
}

/// The SHA-256 of the certificate's SubjectPublicKeyInfo, computed by
/// openssl (an implementation independent of the probe's).
fn openssl_spki_sha256(cert_pem: &str) -> String {
    let pubkey = pipe(
        &["openssl", "x509", "-noout", "-pubkey"],
        cert_pem.as_bytes(),
    );
    let der = pipe(&["openssl", "pkey", "-pubin", "-outform", "DER"], &pubkey);
    hex(&pipe(&["openssl", "dgst", "-sha256", "-binary"], &der))
}

fn pipe(argv: &[&str], input: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut child = Command::new(argv[0])
        .args(&argv[1..])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("openssl (scripts/install-test-deps.sh installs it)");
    child.stdin.take().unwrap().write_all(input).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{argv:?} failed");
    out.stdout
}

/// example.test: mx1 (10) at 127.0.0.2 and ::1, mx2 (20) at 127.0.0.3
/// and ::1, each with TLSA 3 1 1 `spki` on `port`; mta-sts.example.test
/// at 127.0.0.1, the _mta-sts and _smtp._tls records. dnsmasq answers
/// PTR for each --host-record: 127.0.0.2 → mx1, 127.0.0.3 → mx2, ::1 →
/// mx1 (the first).
fn good_zone(port: u16, spki: &str) -> Vec<String> {
    vec![
        "--mx-host=example.test,mx1.example.test,10".into(),
        "--mx-host=example.test,mx2.example.test,20".into(),
        "--host-record=mx1.example.test,127.0.0.2,::1".into(),
        "--host-record=mx2.example.test,127.0.0.3,::1".into(),
        tlsa_rr("mx1.example.test", port, spki),
        tlsa_rr("mx2.example.test", port, spki),
        "--host-record=mta-sts.example.test,127.0.0.1".into(),
        txt_rr("_mta-sts.example.test", "v=STSv1; id=20240101T000000;"),
        txt_rr(
            "_smtp._tls.example.test",
            "v=TLSRPTv1; rua=mailto:tlsrpt@example.test",
        ),
    ]
}

fn serve_zone(records: &[String]) -> DnsServer {
    let refs: Vec<&str> = records.iter().map(String::as_str).collect();
    DnsServer::with_zones(ZONES, &refs)
}

/// `records` without those starting with `prefix`.
fn without(records: Vec<String>, prefix: &str) -> Vec<String> {
    let n = records.len();
    let kept: Vec<String> = records
        .into_iter()
        .filter(|r| !r.starts_with(prefix))
        .collect();
    assert!(kept.len() < n, "no record starts with {prefix:?}");
    kept
}

// === the MX hosts ===

/// A proxy config on `listen` with one certificate from `dir`
/// (fullchain.pem, privkey.pem) and the sink backend.
fn mx_config(listen: &str, dir: &Path) -> ProxyConfig {
    ProxyConfig {
        text: format!(
            r#"hostname = "mx1.example.test"

[[listener]]
address = "{listen}"
backend = "b"
tls = "opportunistic"

[tls]
trust_anchors = "{{certs}}/ca.pem"

[[certificate]]
name = "mx"
chain = "{}"
key = "{}"

[[backend]]
name = "b"
sink = "{{dir}}/mail"

[log]
format = "json"
level = "info"
"#,
            dir.join("fullchain.pem").display(),
            dir.join("privkey.pem").display()
        ),
    }
}

/// Proxies on the given loopback addresses, all on one port (the first
/// binds port 0, the others take its port).
struct Site {
    port: u16,
    _proxies: Vec<Proxy>,
}

impl Site {
    /// `(listen IP, certificate dir)` for each proxy, IPv4 first.
    fn start(hosts: &[(&str, &Path)]) -> Site {
        let ((first_ip, first_dir), rest) = hosts.split_first().expect("one host at least");
        let first = Proxy::start(mx_config(&format!("{first_ip}:0"), first_dir));
        let port = first.port();
        let mut proxies = vec![first];
        for (ip, dir) in rest {
            let addr = SocketAddr::new(ip.parse().unwrap(), port);
            let p = Proxy::start(mx_config(&addr.to_string(), dir));
            assert_eq!(p.port(), port);
            proxies.push(p);
        }
        Site {
            port,
            _proxies: proxies,
        }
    }
}

/// A certificate for `names` from the demo CA, written to a directory of
/// its own.
struct Cert {
    leaf: pki::Leaf,
    dir: tempfile::TempDir,
}

impl Cert {
    fn new(names: &[&str]) -> Cert {
        let leaf = pki::leaf(names);
        let dir = tempdir();
        leaf.write_to(dir.path());
        Cert { leaf, dir }
    }

    fn dir(&self) -> &Path {
        self.dir.path()
    }

    fn spki_sha256(&self) -> String {
        openssl_spki_sha256(&self.leaf.leaf_pem)
    }
}

/// The good domain's MX hosts: mx1 at 127.0.0.2, mx2 at 127.0.0.3, both
/// at ::1, one certificate for both names.
fn good_site(cert: &Cert) -> Site {
    Site::start(&[
        ("127.0.0.2", cert.dir()),
        ("127.0.0.3", cert.dir()),
        ("::1", cert.dir()),
    ])
}

// === the MTA-STS policy server ===

/// The HTTPS server of tests/support/https.rs on a runtime of its own, so
/// that the tests stay plain blocking code.
struct PolicyServer {
    server: Option<HttpsServer>,
    runtime: tokio::runtime::Runtime,
}

impl PolicyServer {
    /// Serves `reply` as mta-sts.example.test (a certificate from the
    /// demo CA) on 127.0.0.1.
    fn start(reply: Reply) -> PolicyServer {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let leaf = pki::leaf(&["mta-sts.example.test"]);
        let server = runtime.block_on(HttpsServer::start(&leaf.fullchain(), &leaf.key_pem, reply));
        PolicyServer {
            server: Some(server),
            runtime,
        }
    }

    fn port(&self) -> u16 {
        self.server.as_ref().unwrap().addr.port()
    }

    fn requests(&self) -> usize {
        self.server.as_ref().unwrap().seen().len()
    }
}

impl Drop for PolicyServer {
    fn drop(&mut self) {
        // The server's task is aborted inside its runtime.
        let _guard = self.runtime.enter();
        self.server.take();
    }
}

/// A port on 127.0.0.1 with nothing listening (bound, then released).
fn closed_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

// === probe --domain ===

#[test]
fn a_good_domain_has_no_findings_and_is_ready_for_mta_sts() {
    let cert = Cert::new(&["mx1.example.test", "mx2.example.test"]);
    let site = good_site(&cert);
    let dns = serve_zone(&good_zone(site.port, &cert.spki_sha256()));
    let web = PolicyServer::start(Reply::policy(GOOD_POLICY));
    let run = probe_domain("example.test", &dns, &site, web.port(), &[]);

    assert_eq!(run.findings(), Vec::<Value>::new(), "{:#}", run.json);
    assert_eq!(run.code, 0);
    assert_eq!(run.json["mta_sts_ready"], true);
    assert_eq!(run.json["target"], "example.test");
    assert_eq!(run.json["domain"], "example.test");
    let p = site.port;

    // The MX hosts by preference, each with both families.
    let hosts: Vec<(String, Value, Value)> = run.json["mx_hosts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| {
            (
                s(&h["host"]),
                h["preference"].clone(),
                h["addresses"].clone(),
            )
        })
        .collect();
    assert_eq!(
        hosts,
        [
            (
                "mx1.example.test".into(),
                Value::from(10),
                serde_json::json!(["127.0.0.2", "::1"])
            ),
            (
                "mx2.example.test".into(),
                Value::from(20),
                serde_json::json!(["127.0.0.3", "::1"])
            ),
        ]
    );
    assert_eq!(run.json["mx"]["answer"], "hosts");

    // Every address of every MX, with and without SNI, at 1.3 and 1.2.
    let rows = run.json["endpoints"].as_array().unwrap();
    assert_eq!(rows.len(), 16, "{rows:#?}");
    for (mx, addr) in [
        ("mx1.example.test", format!("127.0.0.2:{p}")),
        ("mx1.example.test", format!("[::1]:{p}")),
        ("mx2.example.test", format!("127.0.0.3:{p}")),
        ("mx2.example.test", format!("[::1]:{p}")),
    ] {
        let mine: Vec<&Value> = rows
            .iter()
            .filter(|r| r["mx"] == mx && r["address"] == addr)
            .collect();
        assert_eq!(mine.len(), 4, "{mx} {addr}");
        assert!(mine.iter().all(|r| r["verified"] == true), "{mine:#?}");
        assert_eq!(mine[0]["sni"], mx);
    }

    // One certificate, served by both MX on every address.
    let certs = run.json["certificates"].as_array().unwrap();
    assert_eq!(certs.len(), 1, "{certs:#?}");
    let served: Vec<String> = certs[0]["served"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|x| x["sni"] == true)
        .map(|x| format!("{} {}", s(&x["mx"]), s(&x["address"])))
        .collect();
    assert_eq!(served.len(), 4, "{served:?}");

    // DANE: the published 3 1 1 matches everywhere; dnsmasq sets no AD bit.
    for d in run.json["dane"].as_array().unwrap() {
        assert_eq!(d["owner"], format!("_{p}._tcp.{}", s(&d["mx"])));
        assert_eq!(d["authenticated"], false);
        assert_eq!(
            d["records"],
            serde_json::json!([format!("3 1 1 {}", cert.spki_sha256())])
        );
        let verdicts: Vec<String> = d["endpoints"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| s(&e["verdict"]))
            .collect();
        assert_eq!(verdicts, ["match", "match"], "{d:#}");
    }

    // MTA-STS and TLS-RPT as published; the policy fetched once.
    let sts = &run.json["mta_sts"];
    assert_eq!(sts["id"], "20240101T000000");
    assert_eq!(sts["policy"]["mode"], "enforce");
    assert_eq!(
        sts["policy"]["mx"],
        serde_json::json!(["mx1.example.test", "mx2.example.test"])
    );
    assert_eq!(sts["policy"]["max_age"], 86400);
    assert_eq!(sts["uncovered"], serde_json::json!([]));
    assert_eq!(web.requests(), 1);
    assert_eq!(
        run.json["tlsrpt"]["record"]["rua"],
        serde_json::json!(["mailto:tlsrpt@example.test"])
    );

    // PTR: every address names an MX host and resolves back.
    for p in run.json["ptr"].as_array().unwrap() {
        let names = p["names"].as_array().unwrap();
        assert_eq!(names.len(), 1, "{p:#}");
        assert_eq!(names[0]["forward"], "confirmed", "{p:#}");
    }
}

#[test]
fn a_key_rotation_without_a_new_tlsa_record_is_dane_mismatch() {
    // The zone still publishes the old key; the MX hosts serve a new one.
    let old = Cert::new(&["mx1.example.test", "mx2.example.test"]);
    let new = Cert::new(&["mx1.example.test", "mx2.example.test"]);
    let site = good_site(&new);
    let dns = serve_zone(&good_zone(site.port, &old.spki_sha256()));
    let web = PolicyServer::start(Reply::policy(GOOD_POLICY));
    let run = probe_domain("example.test", &dns, &site, web.port(), &[]);

    assert_eq!(run.codes(), ["dane_mismatch"], "{:#}", run.json);
    assert_eq!(run.code, 2);
    let p = site.port;
    let found = run.all("dane_mismatch");
    assert_eq!(found.len(), 2, "one per MX: {found:#?}");
    for (f, mx) in found.iter().zip(["mx1.example.test", "mx2.example.test"]) {
        assert_eq!(f["mx"], mx);
        assert_eq!(f["severity"], "error");
        // Both addresses serve the new key: one finding for the name.
        assert!(f["address"].is_null(), "{f:#}");
        let zone_line = format!("_{p}._tcp.{mx}. IN TLSA 3 1 1 {}", new.spki_sha256());
        assert!(s(&f["fix"]).contains(&zone_line), "{f:#}");
        assert!(s(&f["fix"]).contains("keep the old one"), "{f:#}");
        assert!(s(&f["message"]).contains(&old.spki_sha256()), "{f:#}");
    }
    for d in run.json["dane"].as_array().unwrap() {
        for e in d["endpoints"].as_array().unwrap() {
            assert_eq!(e["verdict"], "no_match");
            assert_eq!(e["served_3_1_1"], format!("3 1 1 {}", new.spki_sha256()));
        }
    }
    // DANE senders refuse; MTA-STS senders do not look at TLSA.
    assert_eq!(run.json["mta_sts_ready"], true);
}

#[test]
fn a_policy_missing_an_mx_is_mta_sts_mx_not_covered() {
    let cert = Cert::new(&["mx1.example.test", "mx2.example.test"]);
    let site = good_site(&cert);
    let dns = serve_zone(&good_zone(site.port, &cert.spki_sha256()));
    let web = PolicyServer::start(Reply::policy(
        "version: STSv1\nmode: enforce\nmx: mx1.example.test\nmax_age: 86400\n",
    ));
    let run = probe_domain("example.test", &dns, &site, web.port(), &[]);

    assert_eq!(run.codes(), ["mta_sts_mx_not_covered"], "{:#}", run.json);
    assert_eq!(run.code, 2);
    let f = run.finding("mta_sts_mx_not_covered");
    assert_eq!(f["mx"], "mx2.example.test");
    assert!(
        s(&f["fix"]).starts_with("add `mx: mx2.example.test` to https://mta-sts.example.test/"),
        "{f:#}"
    );
    assert_eq!(
        run.json["mta_sts"]["uncovered"],
        serde_json::json!(["mx2.example.test"])
    );
    assert_eq!(run.json["mta_sts_ready"], false);
    assert_eq!(run.blockers(), ["mta_sts_mx_not_covered"]);
}

#[test]
fn an_unreachable_or_malformed_policy_is_mta_sts_policy_invalid() {
    let cert = Cert::new(&["mx1.example.test", "mx2.example.test"]);
    let site = good_site(&cert);
    let dns = serve_zone(&good_zone(site.port, &cert.spki_sha256()));

    // Nothing listens on the policy port.
    let run = probe_domain("example.test", &dns, &site, closed_port(), &[]);
    assert_eq!(run.codes(), ["mta_sts_policy_invalid"], "{:#}", run.json);
    assert_eq!(run.code, 2);
    let f = run.finding("mta_sts_policy_invalid");
    assert!(s(&f["message"]).contains("cannot connect"), "{f:#}");
    assert!(
        s(&f["fix"]).contains("https://mta-sts.example.test/.well-known/mta-sts.txt"),
        "{f:#}"
    );
    assert!(f["mx"].is_null() && f["address"].is_null());
    assert_eq!(run.json["mta_sts_ready"], false);
    assert_eq!(run.blockers(), ["mta_sts_policy_invalid"]);

    // A policy with a bad line.
    let web = PolicyServer::start(Reply::policy(
        "version: STSv1\nmode: enforce\nmx mx1.example.test\nmax_age: 86400\n",
    ));
    let run = probe_domain("example.test", &dns, &site, web.port(), &[]);
    assert_eq!(run.codes(), ["mta_sts_policy_invalid"], "{:#}", run.json);
    assert_eq!(run.code, 2);
    let f = run.finding("mta_sts_policy_invalid");
    assert!(s(&f["message"]).contains("policy line 3"), "{f:#}");
    assert!(s(&run.json["mta_sts"]["policy_error"]).contains("line 3"));
    assert_eq!(run.json["mta_sts_ready"], false);
}

#[test]
fn no_tls_rpt_record_is_only_a_warning() {
    let cert = Cert::new(&["mx1.example.test", "mx2.example.test"]);
    let site = good_site(&cert);
    let zone = without(
        good_zone(site.port, &cert.spki_sha256()),
        "--dns-rr=_smtp._tls.",
    );
    let dns = serve_zone(&zone);
    let web = PolicyServer::start(Reply::policy(GOOD_POLICY));
    let run = probe_domain("example.test", &dns, &site, web.port(), &[]);

    assert_eq!(run.codes(), ["tlsrpt_missing"], "{:#}", run.json);
    assert_eq!(run.code, 1);
    let f = run.finding("tlsrpt_missing");
    assert_eq!(f["severity"], "warning");
    assert_eq!(
        f["fix"],
        "publish `_smtp._tls.example.test. IN TXT \"v=TLSRPTv1; rua=mailto:tlsrpt@example.test\"`"
    );
    assert_eq!(run.json["mta_sts_ready"], true);

    // A malformed record is said to be malformed, with the same code.
    let zone = without(
        good_zone(site.port, &cert.spki_sha256()),
        "--dns-rr=_smtp._tls.",
    );
    let mut zone = zone;
    zone.push(txt_rr("_smtp._tls.example.test", "v=TLSRPTv1; rua=ftp://x"));
    let dns = serve_zone(&zone);
    let run = probe_domain("example.test", &dns, &site, web.port(), &[]);
    assert_eq!(run.codes(), ["tlsrpt_missing"], "{:#}", run.json);
    assert!(
        s(&run.finding("tlsrpt_missing")["message"]).contains("malformed"),
        "{:#}",
        run.json
    );
}

#[test]
fn a_ptr_naming_another_host_is_information_only() {
    let cert = Cert::new(&["mx1.example.test", "mx2.example.test"]);
    let site = good_site(&cert);
    let mut zone = good_zone(site.port, &cert.spki_sha256());
    // Replaces the PTR dnsmasq derives from mx2's --host-record.
    zone.push("--ptr-record=3.0.0.127.in-addr.arpa,other.example.test".into());
    let dns = serve_zone(&zone);
    let web = PolicyServer::start(Reply::policy(GOOD_POLICY));
    let run = probe_domain("example.test", &dns, &site, web.port(), &[]);

    assert_eq!(run.codes(), ["ptr_mismatch"], "{:#}", run.json);
    assert_eq!(run.code, 0, "info never changes the exit code");
    assert_eq!(run.json["mta_sts_ready"], true);
    let f = run.finding("ptr_mismatch");
    assert_eq!(f["severity"], "info");
    assert_eq!(f["mx"], "mx2.example.test");
    assert_eq!(f["address"], format!("127.0.0.3:{}", site.port));
    let message = s(&f["message"]);
    assert!(
        message.contains("other.example.test (does not resolve back)"),
        "{message}"
    );
    assert!(
        message.contains("the EHLO name mx1.example.test"),
        "{message}"
    );
    let ptr = run.json["ptr"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["address"] == "127.0.0.3")
        .cloned()
        .unwrap();
    assert_eq!(ptr["names"][0]["name"], "other.example.test");
    assert_eq!(ptr["names"][0]["forward"], "not_confirmed");
}

#[test]
fn an_mx_with_a_certificate_for_another_name_blocks_mta_sts() {
    // mx2's IPv4 proxy serves a certificate for mx1 only.
    let both = Cert::new(&["mx1.example.test", "mx2.example.test"]);
    let mx1_only = Cert::new(&["mx1.example.test"]);
    let site = Site::start(&[
        ("127.0.0.2", both.dir()),
        ("127.0.0.3", mx1_only.dir()),
        ("::1", both.dir()),
    ]);
    // No TLSA: this test is about the certificate alone.
    let zone = without(
        good_zone(site.port, &both.spki_sha256()),
        &format!("--dns-rr=_{}._tcp.", site.port),
    );
    let dns = serve_zone(&zone);
    let web = PolicyServer::start(Reply::policy(GOOD_POLICY));
    let run = probe_domain("example.test", &dns, &site, web.port(), &[]);

    assert_eq!(
        run.codes(),
        ["ipv4_ipv6_mismatch", "name_mismatch"],
        "{:#}",
        run.json
    );
    assert_eq!(run.code, 2);
    let f = run.finding("name_mismatch");
    assert_eq!(f["mx"], "mx2.example.test");
    assert_eq!(f["address"], format!("127.0.0.3:{}", site.port));
    assert_eq!(run.json["mta_sts_ready"], false);
    // Blocked by the name; the IPv4/IPv6 difference alone would not be.
    let blockers = run.json["mta_sts_blockers"].as_array().unwrap();
    assert!(!blockers.is_empty());
    for b in blockers {
        assert_eq!(b["code"], "name_mismatch", "{blockers:#?}");
        assert_eq!(b["mx"], "mx2.example.test");
        assert_eq!(b["address"], format!("127.0.0.3:{}", site.port));
    }
}

#[test]
fn a_null_mx_is_an_error_and_no_mx_means_the_domain_itself() {
    let cert = Cert::new(&["example.test"]);
    let site = Site::start(&[("127.0.0.2", cert.dir())]);
    let dns = serve_zone(&[
        // MX 0 ".": preference 0, the root name.
        "--dns-rr=nomail.example.test,15,000000".into(),
        "--host-record=example.test,127.0.0.2".into(),
        "--host-record=mta-sts.example.test,127.0.0.1".into(),
        txt_rr("_mta-sts.example.test", "v=STSv1; id=1;"),
        txt_rr(
            "_smtp._tls.example.test",
            "v=TLSRPTv1; rua=mailto:r@example.test",
        ),
    ]);
    let web = PolicyServer::start(Reply::policy(
        "version: STSv1\nmode: enforce\nmx: example.test\nmax_age: 86400\n",
    ));

    let run = probe_domain("nomail.example.test", &dns, &site, web.port(), &[]);
    assert_eq!(run.codes(), ["unreachable"], "{:#}", run.json);
    assert_eq!(run.code, 2);
    assert!(
        s(&run.finding("unreachable")["message"]).contains("null MX"),
        "{:#}",
        run.json
    );
    assert_eq!(run.json["mx"]["answer"], "null_mx");
    assert_eq!(run.json["endpoints"], serde_json::json!([]));

    // No MX: the domain's own address is the MX (RFC 5321 §5.1).
    let run = probe_domain("example.test", &dns, &site, web.port(), &[]);
    assert_eq!(run.findings(), Vec::<Value>::new(), "{:#}", run.json);
    assert_eq!(run.code, 0);
    assert_eq!(run.json["mx"]["answer"], "implicit");
    let host = &run.json["mx_hosts"][0];
    assert_eq!(host["host"], "example.test");
    assert_eq!(host["implicit"], true);
    assert!(host["preference"].is_null());
    let rows = run.json["endpoints"].as_array().unwrap();
    assert_eq!(rows.len(), 4);
    assert!(
        rows.iter()
            .all(|r| r["mx"] == "example.test" && r["verified"] == true)
    );
    assert!(
        run.json["notes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|n| s(n).contains("implicit MX")),
        "{:#}",
        run.json
    );
}

/// Four MX hosts, each at its own 127.0.0.x and at ::1, where a listener
/// accepts and never greets (the kernel completes the handshake; nobody
/// calls accept). With `--timeout 1`, each of the four MX endpoints at
/// ::1 costs a 1 s greeting timeout: a probe that took the endpoints one
/// after the other would need at least 4 s for them alone, before any DNS
/// lookup, handshake or policy fetch. Concurrent, the whole run costs one
/// timeout plus the rest; 3 s leaves 2 s for the rest on a busy machine.
#[test]
fn a_black_holed_address_costs_one_timeout_for_four_mx_hosts() {
    let names = [
        "mx1.example.test",
        "mx2.example.test",
        "mx3.example.test",
        "mx4.example.test",
    ];
    let cert = Cert::new(&names);
    let site = Site::start(&[
        ("127.0.0.2", cert.dir()),
        ("127.0.0.3", cert.dir()),
        ("127.0.0.4", cert.dir()),
        ("127.0.0.5", cert.dir()),
    ]);
    let hole =
        TcpListener::bind(SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, site.port))).unwrap();
    let mut zone: Vec<String> = Vec::new();
    for (i, mx) in names.iter().enumerate() {
        zone.push(format!("--mx-host=example.test,{mx},{}", 10 * (i + 1)));
        zone.push(format!("--host-record={mx},127.0.0.{},::1", i + 2));
    }
    zone.extend([
        "--host-record=mta-sts.example.test,127.0.0.1".to_string(),
        txt_rr("_mta-sts.example.test", "v=STSv1; id=1;"),
        txt_rr(
            "_smtp._tls.example.test",
            "v=TLSRPTv1; rua=mailto:r@example.test",
        ),
    ]);
    let dns = serve_zone(&zone);
    let web = PolicyServer::start(Reply::policy(
        "version: STSv1\nmode: enforce\nmx: *.example.test\nmax_age: 86400\n",
    ));
    let run = probe_domain("example.test", &dns, &site, web.port(), &["--timeout", "1"]);

    assert!(
        run.elapsed < Duration::from_secs(3),
        "took {:?}: the MX endpoints were not probed concurrently",
        run.elapsed
    );
    let dead: Vec<(String, String)> = run
        .all("unreachable")
        .iter()
        .map(|f| (s(&f["mx"]), s(&f["address"])))
        .collect();
    let expected: Vec<(String, String)> = names
        .iter()
        .map(|mx| (mx.to_string(), format!("[::1]:{}", site.port)))
        .collect();
    assert_eq!(dead, expected, "{:#}", run.json);
    // Everything else was probed in full all the same.
    let good: Vec<&Value> = run.json["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| s(&r["address"]).starts_with("127.0.0."))
        .collect();
    assert_eq!(good.len(), 16);
    assert!(good.iter().all(|r| r["verified"] == true), "{good:#?}");
    assert_eq!(run.json["mta_sts"]["policy"]["mode"], "enforce");
    drop(hole);
}

#[test]
fn the_human_report_has_the_domain_sections_and_no_colour_in_a_pipe() {
    let cert = Cert::new(&["mx1.example.test", "mx2.example.test"]);
    let site = good_site(&cert);
    let zone = without(
        good_zone(site.port, &cert.spki_sha256()),
        "--dns-rr=_smtp._tls.",
    );
    let dns = serve_zone(&zone);
    let web = PolicyServer::start(Reply::policy(GOOD_POLICY));
    let out = Command::new(bin())
        .args(["probe", "--domain", "example.test", "--nameserver"])
        .arg(dns.addr.to_string())
        .arg("--ca")
        .arg(certs().join("ca.pem"))
        .args(["--smtp-port", &site.port.to_string()])
        .args(["--mta-sts-port", &web.port().to_string()])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    for needle in [
        "probe --domain example.test",
        "MX of example.test",
        "10  mx1.example.test  127.0.0.2, ::1",
        "certificates served:",
        "DANE (TLSA):",
        "PTR:",
        "MTA-STS: id 20240101T000000; policy from 127.0.0.1:",
        "TLS-RPT: no record",
        "tlsrpt_missing",
        "fix: publish `_smtp._tls.example.test.",
        "MTA-STS enforce: ready",
    ] {
        assert!(text.contains(needle), "{needle:?} not in:\n{text}");
    }
    assert!(!text.contains('\x1b'), "colour codes in a pipe: {text:?}");
}

// === check --dns ===

/// `check --dns` of the proxy's config: the certificate's name resolves to
/// the running proxy, its TLSA record is in the zone.
fn check_dns(config: &Path, dns: &DnsServer, port: u16) -> Run {
    let ca = certs().join("ca.pem");
    run_json(&[
        "check",
        "--config",
        config.to_str().unwrap(),
        "--dns",
        "--nameserver",
        &dns.addr.to_string(),
        "--ca",
        ca.to_str().unwrap(),
        "--smtp-port",
        &port.to_string(),
        "--timeout",
        "5",
    ])
}

#[test]
fn check_dns_compares_published_tlsa_with_the_key_on_disk() {
    let cert = Cert::new(&["mx1.example.test"]);
    let proxy = Proxy::start(mx_config("127.0.0.2:0", cert.dir()));
    let port = proxy.port();
    let config: PathBuf = proxy.dir.path().join("proxy.toml");
    let dns = serve_zone(&[
        "--host-record=mx1.example.test,127.0.0.2".into(),
        tlsa_rr("mx1.example.test", port, &cert.spki_sha256()),
    ]);

    let run = check_dns(&config, &dns, port);
    assert_eq!(run.code, 0, "{:#}", run.json);
    assert_eq!(run.json["errors"], serde_json::json!([]));
    let d = &run.json["dns"];
    assert_eq!(d["port"], port);
    assert_eq!(d["names"][0]["name"], "mx1.example.test");
    assert_eq!(d["names"][0]["addresses"], serde_json::json!(["127.0.0.2"]));
    assert_eq!(d["tlsa"][0]["certificate"], "mx");
    assert_eq!(d["tlsa"][0]["verdict"], "match");
    // The running proxy was probed on its port, and passed.
    let rows = d["endpoints"].as_array().unwrap();
    assert_eq!(rows.len(), 4, "{rows:#?}");
    assert!(rows.iter().all(|r| r["verified"] == true), "{rows:#?}");

    // A new key and chain on disk, the TLSA record unchanged.
    let next = pki::leaf(&["mx1.example.test"]);
    next.write_to(cert.dir());
    let run = check_dns(&config, &dns, port);
    assert_eq!(run.code, 1, "{:#}", run.json);
    let errors: Vec<String> = run.json["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(s)
        .collect();
    assert_eq!(errors.len(), 1, "{errors:#?}");
    let e = &errors[0];
    assert!(e.starts_with("dane_mismatch mx1.example.test: "), "{e}");
    assert!(e.contains("certificate \"mx\" on disk"), "{e}");
    let new_spki = openssl_spki_sha256(&next.leaf_pem);
    let zone_line = format!("_{port}._tcp.mx1.example.test. IN TLSA 3 1 1 {new_spki}");
    assert!(e.contains(&zone_line), "{e}");
    assert!(e.contains("before the proxy loads the new key"), "{e}");
    assert_eq!(run.json["dns"]["tlsa"][0]["verdict"], "no_match");
    assert_eq!(run.json["dns"]["tlsa"][0]["publish"], zone_line);

    // Plain check stays offline and passes: the files themselves are fine.
    let out = run_bin(&["check", "--config", config.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stdout).contains("0 errors"));
}

#[test]
fn check_dns_options_require_dns() {
    let out = run_bin(&[
        "check",
        "--config",
        "config/quickstart.toml",
        "--nameserver",
        "127.0.0.1",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--dns"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
