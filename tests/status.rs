//! The status page (issue #15): `/status` as a real browser shows it after
//! real traffic, `/status.json` against its documented shape and against
//! `/metrics`, and `starttls-proxy status` with its exit codes.

mod support;

use std::collections::BTreeMap;
use std::io::Read;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::Value;
use support::*;

const METRICS: &str = "\n[metrics]\nlisten = \"127.0.0.1:0\"\n";
const EVIL: &str = "<script>alert(1)</script>";

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// A backend pool probed every second (so "down" shows up fast).
fn servers_probed_every_second(addr: SocketAddr) -> ProxyConfig {
    ProxyConfig::servers(&[addr]).replace(
        &format!("servers = [\"{addr}\"]"),
        &format!("servers = [\"{addr}\"]\nhealth_interval = \"1s\""),
    )
}

/// A `[[certificate]]` expiring in `days` days, written to `dir`.
fn certificate_expiring_in(dir: &Path, name: &str, days: i64) -> String {
    let l = pki::leaf_valid(
        &[&format!("{name}.example.test")],
        (2020, 1, 1),
        ymd(unix_now() + days * 86_400 + 3600),
    );
    let d = dir.join(name);
    l.write_to(&d);
    format!(
        "\n[[certificate]]\nname = \"{name}\"\nchain = \"{}\"\nkey = \"{}\"\n",
        d.join("fullchain.pem").display(),
        d.join("privkey.pem").display()
    )
}

/// Civil date of a Unix time (Howard Hinnant's algorithm).
fn ymd(t: i64) -> (i32, u8, u8) {
    let z = t.div_euclid(86_400) + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y as i32, m as u8, d as u8)
}

/// notAfter of the first certificate in a PEM file, read independently of
/// the proxy (x509-parser).
fn not_after_of(chain: &Path) -> i64 {
    let pem = std::fs::read(chain).unwrap();
    let (_, pem) = x509_parser::pem::parse_x509_pem(&pem).unwrap();
    pem.parse_x509().unwrap().validity().not_after.timestamp()
}

/// The chain file of each `[[certificate]]` in a config text.
fn chains(config: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut name = None;
    for l in config.lines() {
        if let Some(v) = l.strip_prefix("name = \"") {
            name = Some(v.trim_end_matches('"').to_string());
        }
        if let Some(v) = l.strip_prefix("chain = \"") {
            let path = v
                .trim_end_matches('"')
                .replace("{certs}", certs().to_str().unwrap());
            out.push((name.take().unwrap(), path));
        }
    }
    out
}

// === the browser ===

/// The DOM of `url` as Debian's chromium renders it, headless, in a
/// private profile. (Scripts stay on: `--dump-dom` needs them to
/// serialise. The page has none, and its CSP forbids any.)
fn chromium_dom(url: &str) -> String {
    let profile = tempfile::tempdir().unwrap();
    let mut cmd = Command::new("chromium");
    cmd.args([
        "--headless",
        "--disable-gpu",
        "--no-first-run",
        "--no-default-browser-check",
        "--disable-background-networking",
        "--disable-component-update",
        "--dump-dom",
    ])
    .arg(format!("--user-data-dir={}", profile.path().display()));
    if is_root() {
        // Chromium refuses to run its sandbox as root.
        cmd.arg("--no-sandbox");
    }
    let mut child = cmd
        .arg(url)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("chromium (Debian's chromium package, installed by scripts/install-test-deps.sh)");
    let mut stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        stdout.read_to_string(&mut s).map(|_| s)
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("chromium did not finish within 60 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut err = String::new();
    let _ = child.stderr.take().unwrap().read_to_string(&mut err);
    let dom = reader.join().unwrap().unwrap();
    assert!(
        status.success() && dom.contains("</html>"),
        "chromium: {status}\n{err}\n{dom}"
    );
    dom
}

fn is_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self")
        .map(|m| m.uid() == 0)
        .unwrap_or(false)
}

/// The cells of `<tr id="{id}">`: (class, text) each, text with tags
/// stripped and entities decoded.
fn row(dom: &str, id: &str) -> Vec<(String, String)> {
    let open = format!("<tr id=\"{id}\">");
    let start = dom
        .find(&open)
        .unwrap_or_else(|| panic!("no row {id:?} in the page:\n{dom}"));
    let end = start + dom[start..].find("</tr>").unwrap();
    dom[start + open.len()..end]
        .split("<td")
        .skip(1)
        .map(|cell| {
            let (attrs, rest) = cell.split_once('>').unwrap();
            let class = attrs
                .split("class=\"")
                .nth(1)
                .and_then(|c| c.split('"').next())
                .unwrap_or_default()
                .to_string();
            (class, text_of(rest))
        })
        .collect()
}

/// The text of `<section id="{id}">`.
fn section(dom: &str, id: &str) -> String {
    let start = dom
        .find(&format!("<section id=\"{id}\">"))
        .unwrap_or_else(|| panic!("no section {id:?}:\n{dom}"));
    let end = start + dom[start..].find("</section>").unwrap();
    text_of(&dom[start..end])
}

fn texts(cells: &[(String, String)]) -> Vec<&str> {
    cells.iter().map(|(_, t)| t.as_str()).collect()
}

/// Text content: tags dropped, the few entities the page uses decoded.
fn text_of(html: &str) -> String {
    let mut out = String::new();
    let mut in_tag = false;
    for c in html.chars() {
        match c {
            '<' => in_tag = true,
            '>' => in_tag = false,
            c if !in_tag => out.push(c),
            _ => {}
        }
    }
    out.replace("&nbsp;", " ")
        .replace('\u{a0}', " ")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&amp;", "&")
        .trim()
        .to_string()
}

/// The status line and headers of `GET path`, header names lowercased.
fn response_head(addr: SocketAddr, path: &str) -> String {
    use std::io::Write;
    let mut tcp = std::net::TcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(TIMEOUT)).unwrap();
    write!(
        tcp,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = String::new();
    tcp.read_to_string(&mut raw).unwrap();
    let head = raw.split_once("\r\n\r\n").unwrap().0;
    head.lines()
        .map(|l| match l.split_once(':') {
            Some((k, v)) => format!("{}:{v}\r\n", k.to_ascii_lowercase()),
            None => format!("{l}\r\n"),
        })
        .collect()
}

// === traffic ===

/// A STARTTLS session up to a handshake with the given versions and SNI
/// (verifying `mx1.example.test` when there is none), then QUIT.
fn handshake(
    proxy: &Proxy,
    versions: &[&'static rustls::SupportedProtocolVersion],
    sni: Option<&str>,
) {
    let mut c = Smtp::connect(proxy.addr());
    c.expect("220");
    c.cmd("EHLO client.test", "250");
    c.cmd("STARTTLS", "220");
    let mut c = c
        .start_tls_with(sni, "mx1.example.test", versions)
        .expect("handshake");
    c.cmd("EHLO client.test", "250");
    c.cmd("QUIT", "221");
}

/// A handshake with an SNI no certificate covers (the default one is
/// served, so the client must not verify the name).
fn handshake_unknown_sni(proxy: &Proxy) {
    let mut c = Smtp::connect(proxy.addr());
    c.expect("220");
    c.cmd("EHLO client.test", "250");
    c.cmd("STARTTLS", "220");
    let config = std::sync::Arc::new(accept_any_certificate_config());
    let mut c = c
        .start_tls_shared(config, "nobody.unknown.test")
        .expect("handshake");
    c.cmd("EHLO client.test", "250");
    c.cmd("QUIT", "221");
}

/// A client whose HELO and SNI are markup: a plaintext session relayed to
/// the backend, and a handshake with `<script>` as its SNI (rustls refuses
/// it: not a host name).
fn hostile_clients(proxy: &Proxy) {
    let mut c = Smtp::connect(proxy.addr());
    c.expect("220");
    c.cmd(&format!("EHLO {EVIL}"), "250");
    c.cmd("MAIL FROM:<a@sender.test>", "250");
    c.cmd("QUIT", "221");
    let (ok, out) = s_client(proxy.addr(), &["-tls1_3", "-servername", EVIL]);
    assert!(!ok, "{out}");
}

// === tests ===

/// TLS 1.3 and 1.2 clients, no SNI, an unknown SNI, a refused TLS 1.1
/// client, a certificate inside the warning window, the backend taken
/// down: what a browser shows of it.
#[test]
fn a_browser_shows_the_traffic_the_failures_the_certificates_and_the_backend() {
    let backend = FakeBackend::start(FakeBehaviour::Normal);
    let dir = tempfile::tempdir().unwrap();
    let config = servers_probed_every_second(backend.addr)
        .append(&certificate_expiring_in(dir.path(), "soon", 5))
        .append(METRICS);
    let expected_certs = chains(&config.text);
    let proxy = Proxy::start(config);
    browser_test_traffic(&proxy);
    backend.stop();
    proxy.wait_log("backend server down (health probe failed)", 1);

    let url = format!("http://{}/status", proxy.metrics_addr());
    let before = unix_now();
    let dom = chromium_dom(&url);
    let after = unix_now();
    let (status, raw) = proxy.http_get("/status");
    assert_eq!(status, 200);

    assert_for_phones_and_without_scripts(&proxy, &dom, &raw);
    assert_tls_rows(&dom);
    assert_backend_down(&dom, backend.addr);
    assert_days_left(&dom, &expected_certs, before, after);

    // Nothing of the <script> clients, in the DOM or in the raw HTML: not
    // as markup, not as escaped text.
    for page in [&dom, &raw] {
        for needle in ["<script", "&lt;script", "alert(1)"] {
            assert!(!page.contains(needle), "{needle:?} on the page:\n{page}");
        }
    }
    // The SNI is never written raw to a log (DESIGN §2): rustls's own log
    // lines quoted it ("Illegal SNI hostname received") until its
    // `logging` feature was turned off. The HELO is logged, sanitised, in
    // its own field; nothing else may carry the <script> text.
    let logs = proxy.all_logs();
    for line in logs.lines().filter(|l| l.contains("<script")) {
        let v: Value = serde_json::from_str(line).unwrap();
        for (field, value) in v.as_object().unwrap() {
            if !field.starts_with("helo") {
                assert!(
                    !value.to_string().contains("<script"),
                    "raw <script> in log field {field}: {line}"
                );
            }
        }
    }
    assert!(!logs.contains("Illegal SNI"), "{logs}");
    assert!(
        proxy
            .logs_with("tls handshake failed")
            .iter()
            .any(|l| l["sni"] == "invalid"),
        "{logs}"
    );
}

/// Four TLS 1.3 handshakes (two with SNI, one without, one with an SNI no
/// certificate covers), one TLS 1.2, a refused TLS 1.1 client, and the
/// `<script>` clients; returns when every session is over.
fn browser_test_traffic(proxy: &Proxy) {
    let tls13: &[&'static rustls::SupportedProtocolVersion] = &[&rustls::version::TLS13];
    let tls12: &[&'static rustls::SupportedProtocolVersion] = &[&rustls::version::TLS12];
    handshake(proxy, tls13, Some("mx1.example.test"));
    handshake(proxy, tls13, Some("mx1.example.test"));
    handshake(proxy, tls12, Some("mx1.example.test"));
    handshake(proxy, tls13, None);
    handshake_unknown_sni(proxy);
    let (ok, out) = s_client(
        proxy.addr(),
        &[
            "-servername",
            "mx1.example.test",
            "-tls1_1",
            "-cipher",
            "DEFAULT@SECLEVEL=0",
        ],
    );
    assert!(!ok, "{out}");
    hostile_clients(proxy);
    proxy.wait_log("tls handshake", 5);
    proxy.wait_log("tls handshake failed", 2);
    wait_for("every session over", TIMEOUT, || {
        (proxy.metric("starttls_proxy_connections_active") == Some(0.0)).then_some(())
    });
}

/// A viewport for phones; no script (and a CSP that would refuse one);
/// `?refresh=N` bounded.
fn assert_for_phones_and_without_scripts(proxy: &Proxy, dom: &str, raw: &str) {
    assert!(
        dom.contains("<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">")
    );
    assert!(!raw.contains("<script") && !raw.contains("javascript:"));
    let head = response_head(proxy.metrics_addr(), "/status?refresh=30");
    assert!(
        head.contains("content-type: text/html; charset=utf-8\r\n"),
        "{head}"
    );
    assert!(
        head.contains("content-security-policy: default-src 'none'; style-src 'unsafe-inline';"),
        "{head}"
    );
    let (_, refreshing) = proxy.http_get("/status?refresh=1");
    assert!(refreshing.contains("<meta http-equiv=\"refresh\" content=\"5\">"));
}

/// Versions and their counts, the SNI split, the refused TLS 1.1 client,
/// the plaintext session, since start and in the last hour.
fn assert_tls_rows(dom: &str) {
    // 4 TLS 1.3, 1 TLS 1.2.
    assert_eq!(
        texts(&row(dom, "version-TLSv1.3")),
        ["TLSv1.3", "4", "80 %", "4", "80 %"]
    );
    assert_eq!(
        texts(&row(dom, "version-TLSv1.2")),
        ["TLSv1.2", "1", "20 %", "1", "20 %"]
    );
    // The SNI split.
    assert_eq!(texts(&row(dom, "sni-matched"))[..2], ["matched", "3"]);
    assert_eq!(texts(&row(dom, "sni-unmatched"))[..2], ["unmatched", "1"]);
    assert_eq!(texts(&row(dom, "sni-absent"))[..2], ["absent", "1"]);
    // The refused TLS 1.1 client: reason and what it offered.
    assert_eq!(
        texts(&row(dom, "failure-protocol_version")),
        ["protocol_version", "1", "1", "TLSv1.1 × 1"]
    );
    assert_eq!(texts(&row(dom, "offered-TLSv1.1"))[..2], ["TLSv1.1", "1"]);
    // Plaintext: the HELO-<script> client's session.
    assert_eq!(texts(&row(dom, "session-none"))[..2], ["plaintext", "1"]);
}

/// The backend, down, with the probe's error, in red; and in the warnings.
fn assert_backend_down(dom: &str, addr: SocketAddr) {
    let server = row(dom, &format!("server-b-{addr}"));
    assert_eq!(texts(&server)[1..3], [addr.to_string().as_str(), "down"]);
    assert_eq!(server[2].0, "bad");
    assert_eq!(
        server[5],
        ("bad".to_string(), "connect: connection refused".to_string())
    );
    let warnings = section(dom, "warnings");
    assert!(
        warnings.contains(&format!(
            "backend b server {addr} down: connect: connection refused"
        )),
        "{warnings}"
    );
}

/// Each certificate's days left, from its own file; the one inside the
/// warning window in amber and among the warnings.
fn assert_days_left(dom: &str, expected: &[(String, String)], before: i64, after: i64) {
    let warnings = section(dom, "warnings");
    assert_eq!(expected.len(), 5);
    for (name, chain) in expected {
        let not_after = not_after_of(Path::new(chain));
        let cells = row(dom, &format!("certificate-{name}"));
        let shown: i64 = cells[4].1.parse().unwrap();
        let days = |now: i64| (not_after - now).div_euclid(86_400);
        assert!(
            shown == days(before) || shown == days(after),
            "{name}: page says {shown} days, file says {}",
            days(before)
        );
        let expected_class = if name == "soon" { "n warn" } else { "n" };
        assert_eq!(cells[4].0, expected_class, "{name}");
    }
    assert!(texts(&row(dom, "certificate-mx1"))[0].contains("(default)"));
    assert!(
        warnings.contains("certificate soon expires in"),
        "{warnings}"
    );
}

// === /status.json ===

/// Objects whose keys are data (reasons, versions seen), not fields.
const MAPS: &[&str] = &[
    "connections_rejected",
    "handshake_failures[].client_max_versions",
];
/// Fields documented as possibly `null`.
const NULLABLE: &[&str] = &[
    "config_reload",
    "certificates[].last_reload",
    "backends[].servers[].last_probe_at",
    "backends[].servers[].state_since",
    "backends[].servers[].error",
];

/// The JSON example of docs/status.md.
fn documented_example() -> Value {
    let doc = std::fs::read_to_string(repo().join("docs/status.md")).unwrap();
    let start = doc
        .find("```json\n")
        .expect("a ```json block in docs/status.md")
        + 8;
    let end = start + doc[start..].find("```").unwrap();
    serde_json::from_str(&doc[start..end]).expect("docs/status.md: the example is valid JSON")
}

/// Checks that `live` has the documented shape: the same fields at every
/// level (none missing, none undocumented), of the same JSON types.
fn same_shape(path: &str, doc: &Value, live: &Value, problems: &mut Vec<String>) {
    let kind = |v: &Value| match v {
        Value::Null => "null",
        Value::Bool(_) => "bool",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    };
    if live.is_null() && NULLABLE.contains(&path) {
        return;
    }
    if kind(doc) != kind(live) {
        problems.push(format!(
            "{path}: documented {}, got {}",
            kind(doc),
            kind(live)
        ));
        return;
    }
    match (doc, live) {
        (Value::Object(d), Value::Object(l)) if MAPS.contains(&path) => {
            for (k, v) in l {
                if !v.is_u64() {
                    problems.push(format!("{path}.{k}: not a count"));
                }
            }
            let _ = d;
        }
        (Value::Object(d), Value::Object(l)) => {
            for k in d.keys().filter(|k| !l.contains_key(*k)) {
                problems.push(format!("{path}.{k}: documented, missing"));
            }
            for (k, v) in l {
                let sub = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                match d.get(k) {
                    Some(dv) => same_shape(&sub, dv, v, problems),
                    None => problems.push(format!("{sub}: not documented")),
                }
            }
        }
        (Value::Array(d), Value::Array(l)) => {
            if let Some(first) = d.first() {
                for v in l {
                    same_shape(&format!("{path}[]"), first, v, problems);
                }
            }
        }
        _ => {}
    }
}

/// The sum of every sample of `name` whose labels include all of `labels`.
fn metric_sum(exposition: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    exposition
        .lines()
        .filter(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
        .filter(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum()
}

fn counts(map: &Value) -> BTreeMap<String, u64> {
    serde_json::from_value(map.clone()).unwrap()
}

#[test]
fn the_json_has_the_documented_shape_and_the_numbers_of_metrics() {
    let backend = FakeBackend::start(FakeBehaviour::Normal);
    let down = FakeBackend::start(FakeBehaviour::Normal);
    let config = servers_probed_every_second(backend.addr)
        .append(&format!(
            "\n[[backend]]\nname = \"gone\"\nservers = [\"{}\"]\nhealth_interval = \"1s\"\n",
            down.addr
        ))
        .append("\n[limits]\nmax_connections_per_ip = 3\n")
        .append(METRICS);
    let proxy = Proxy::start(config);
    down.stop();
    proxy.wait_log("backend server down (health probe failed)", 1);
    json_test_traffic(&proxy);

    let (status, json) = proxy.http_get("/status.json");
    assert_eq!(status, 200, "{json}");
    let (_, metrics) = proxy.http_get("/metrics");
    let live: Value = serde_json::from_str(&json).unwrap();

    let mut problems = Vec::new();
    same_shape("", &documented_example(), &live, &mut problems);
    assert!(problems.is_empty(), "{problems:#?}\n{json}");

    assert_counts_like_metrics(&live, &metrics);
    assert_facts_like_metrics(&live, &metrics);
    let all = &live["tls"]["since_start"];
    assert_eq!(
        (&all["handshakes"], &all["messages_relayed"]),
        (&4.into(), &1.into())
    );
    let protocol = live["handshake_failures"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["reason"] == "protocol_version")
        .unwrap();
    assert_eq!(
        protocol["client_max_versions"],
        serde_json::json!({"TLSv1.0": 1, "TLSv1.1": 1})
    );
    assert_eq!(live["connections_rejected"]["max_connections_per_ip"], 1);
    assert_eq!(live["backends"][1]["servers"][0]["state"], "down");
    assert_eq!(live["ok"], false);

    // The <script> clients left nothing.
    assert!(
        !json.contains("script") && !json.contains("alert"),
        "{json}"
    );
}

/// A message over TLS 1.3, TLS 1.2 without SNI, TLS 1.3 to tenant2 and to
/// an unknown name, TLS 1.0 and 1.1 refused, the `<script>` clients, one
/// connection over the per-IP limit; returns when every session is over.
fn json_test_traffic(proxy: &Proxy) {
    let tls12: &[&'static rustls::SupportedProtocolVersion] = &[&rustls::version::TLS12];
    let tls13: &[&'static rustls::SupportedProtocolVersion] = &[&rustls::version::TLS13];
    let mut c = tls_session(proxy);
    c.cmd("EHLO client.test", "250");
    c.cmd("MAIL FROM:<a@sender.test>", "250");
    c.cmd("RCPT TO:<b@example.test>", "250");
    c.cmd("DATA", "354");
    c.send_raw(b"Subject: counted\r\n\r\nbody\r\n.\r\n");
    c.expect("250");
    c.cmd("QUIT", "221");
    handshake(proxy, tls12, None);
    handshake(proxy, tls13, Some("mx.tenant2.test"));
    handshake_unknown_sni(proxy);
    for flag in ["-tls1", "-tls1_1"] {
        let (ok, out) = s_client(proxy.addr(), &[flag, "-cipher", "DEFAULT@SECLEVEL=0"]);
        assert!(!ok, "{out}");
    }
    hostile_clients(proxy);
    let idle = || {
        wait_for("every session over", TIMEOUT, || {
            (proxy.metric("starttls_proxy_connections_active") == Some(0.0)).then_some(())
        })
    };
    idle();
    // More than 3 at once from one address.
    let held: Vec<Smtp> = (0..3)
        .map(|_| {
            let mut c = Smtp::connect(proxy.addr());
            c.expect("220");
            c
        })
        .collect();
    let mut refused = Smtp::connect(proxy.addr());
    refused.expect("421");
    drop((held, refused));
    proxy.wait_log("tls handshake", 4);
    proxy.wait_log("tls handshake failed", 3);
    idle();
}

/// Every since-start count equals the Prometheus counter of the same run,
/// summed over the other labels.
fn assert_counts_like_metrics(live: &Value, metrics: &str) {
    let m = |name: &str, labels: &[(&str, &str)]| metric_sum(metrics, name, labels) as u64;
    let all = &live["tls"]["since_start"];
    let by_label = [
        ("versions", "starttls_proxy_tls_handshakes_total", "version"),
        ("sni", "starttls_proxy_tls_handshakes_total", "sni"),
        (
            "client_max_versions",
            "starttls_proxy_tls_client_max_version_total",
            "version",
        ),
        ("sessions", "starttls_proxy_sessions_total", "tls"),
    ];
    for (field, metric, label) in by_label {
        for (k, n) in counts(&all[field]) {
            assert_eq!(n, m(metric, &[(label, &k)]), "{field} {k}");
        }
    }
    for (field, metric) in [
        ("handshakes", "starttls_proxy_tls_handshakes_total"),
        ("failures", "starttls_proxy_tls_handshake_failures_total"),
        ("messages_relayed", "starttls_proxy_messages_relayed_total"),
    ] {
        assert_eq!(all[field], m(metric, &[]), "{field}");
    }
    for f in live["handshake_failures"].as_array().unwrap() {
        let reason = f["reason"].as_str().unwrap();
        let metric = "starttls_proxy_tls_handshake_failures_total";
        assert_eq!(
            f["since_start"],
            m(metric, &[("reason", reason)]),
            "{reason}"
        );
    }
    for (reason, n) in counts(&live["connections_rejected"]) {
        let metric = "starttls_proxy_connections_rejected_total";
        assert_eq!(n, m(metric, &[("reason", &reason)]), "{reason}");
    }
}

/// Listeners, certificates and backend servers: the same numbers as their
/// series.
fn assert_facts_like_metrics(live: &Value, metrics: &str) {
    let m = |name: &str, labels: &[(&str, &str)]| metric_sum(metrics, name, labels) as u64;
    for l in live["listeners"].as_array().unwrap() {
        let address = l["address"].as_str().unwrap();
        let metric = "starttls_proxy_connections_total";
        assert_eq!(
            l["connections"],
            m(metric, &[("listener", address)]),
            "{address}"
        );
    }
    for c in live["certificates"].as_array().unwrap() {
        let name = c["name"].as_str().unwrap();
        let label = [("certificate", name)];
        let not_after = "starttls_proxy_certificate_not_after_timestamp_seconds";
        assert_eq!(c["not_after"], m(not_after, &label), "{name}");
        let handshakes = "starttls_proxy_tls_handshakes_total";
        assert_eq!(c["handshakes"], m(handshakes, &label), "{name}");
    }
    for b in live["backends"].as_array().unwrap() {
        let name = b["name"].as_str().unwrap();
        for s in b["servers"].as_array().unwrap() {
            let server = s["address"].as_str().unwrap();
            let labels = [("backend", name), ("server", server)];
            let up = m("starttls_proxy_backend_up", &labels);
            assert_eq!(s["state"] == "up", up == 1, "{name} {server}: {s}");
            let failures = "starttls_proxy_backend_connect_failures_total";
            assert_eq!(
                s["connect_failures"],
                m(failures, &labels),
                "{name} {server}"
            );
        }
    }
}

// === starttls-proxy status ===

fn status_cli(metrics: SocketAddr) -> (i32, String, String) {
    let out = run_bin(&[
        "status",
        "--url",
        &format!("http://{metrics}"),
        "--timeout",
        "10",
    ]);
    (
        out.status.code().expect("exit code"),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn status_exits_zero_when_all_is_well() {
    let backend = FakeBackend::start(FakeBehaviour::Normal);
    let proxy = Proxy::start(servers_probed_every_second(backend.addr).append(METRICS));
    proxy.wait_log("backend server up", 1);
    let mut c = tls_session(&proxy);
    c.cmd("QUIT", "221");
    proxy.wait_log("tls handshake", 1);
    let (code, out, err) = status_cli(proxy.metrics_addr());
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.starts_with("starttls-proxy on mx1.example.test: version "),
        "{out}"
    );
    assert!(
        out.contains("\nOK  no certificate within 21 days of expiry, no backend server down\n"),
        "{out}"
    );
    // A table per section; piped, so no colour.
    for title in [
        "\nListeners\n",
        "\nCertificates (warning window 21 days)\n",
        "\nVersion negotiated\n",
        "\nSNI\n",
        "\nHandshake failures\n",
        "\nSessions\n",
        "\nBackends\n",
        "\nTLS policy\n  no rules\n",
        "\nSMTP smuggling",
    ] {
        assert!(out.contains(title), "{title:?}: {out}");
    }
    assert!(!out.contains('\x1b'), "{out}");
    let server = out
        .lines()
        .find(|l| l.contains(&backend.addr.to_string()))
        .unwrap_or_else(|| panic!("{out}"));
    assert_eq!(server.split_whitespace().nth(2), Some("up"), "{server}");
    let version = out
        .lines()
        .find(|l| l.trim_start().starts_with("TLSv1.3"))
        .unwrap();
    assert_eq!(version.split_whitespace().nth(1), Some("1"), "{version}");

    // --json: the document as served, same verdict.
    let out = run_bin(&[
        "status",
        "--json",
        "--url",
        &format!("http://{}/status", proxy.metrics_addr()),
    ]);
    assert_eq!(out.status.code(), Some(0));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["ok"], true);
}

#[test]
fn status_exits_one_with_a_certificate_inside_the_warning_window() {
    let dir = tempfile::tempdir().unwrap();
    let proxy = Proxy::start(
        ProxyConfig::sink()
            .append(&certificate_expiring_in(dir.path(), "soon", 5))
            .append(METRICS),
    );
    let (code, out, err) = status_cli(proxy.metrics_addr());
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        out.contains("WARNING  certificate soon expires in 4 days (warning at 21)")
            || out.contains("WARNING  certificate soon expires in 5 days (warning at 21)"),
        "{out}"
    );
    assert!(!out.contains("\nOK "), "{out}");
}

#[test]
fn status_exits_one_with_a_backend_down() {
    let backend = FakeBackend::start(FakeBehaviour::Normal);
    let proxy = Proxy::start(servers_probed_every_second(backend.addr).append(METRICS));
    proxy.wait_log("backend server up", 1);
    assert_eq!(status_cli(proxy.metrics_addr()).0, 0);
    backend.stop();
    proxy.wait_log("backend server down (health probe failed)", 1);
    let (code, out, err) = status_cli(proxy.metrics_addr());
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        out.contains(&format!(
            "WARNING  backend b server {} down: connect: connection refused",
            backend.addr
        )),
        "{out}"
    );
}

#[test]
fn status_exits_two_without_an_answer() {
    // Nothing listens there (bound, then released).
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let (code, out, err) = status_cli(addr);
    assert_eq!(code, 2, "{out}{err}");
    assert!(err.contains("cannot connect to"), "{err}");
    assert!(out.is_empty());

    // An endpoint that answers, but not with a status document.
    let proxy = Proxy::start(ProxyConfig::sink().append(METRICS));
    let out = run_bin(&[
        "status",
        "--url",
        &format!("http://{}/nothing/", proxy.metrics_addr()),
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("answered 404"));
    let out = run_bin(&["status", "--url", "https://127.0.0.1:9125"]);
    assert_eq!(out.status.code(), Some(2));
}

// === reloads ===

fn hup(proxy: &Proxy) {
    let st = Command::new("kill")
        .args(["-HUP", &proxy.pid().to_string()])
        .status()
        .unwrap();
    assert!(st.success());
}

fn status_json(proxy: &Proxy) -> Value {
    let (status, body) = proxy.http_get("/status.json");
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

fn certificate<'a>(status: &'a Value, name: &str) -> &'a Value {
    status["certificates"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no certificate {name}: {status}"))
}

/// A rotation on disk, a refused config, a config adding a certificate:
/// each shows, with the certificate's new expiry equal to the gauge's.
#[test]
fn reloads_show_with_their_result() {
    let tmp = tempfile::tempdir().unwrap();
    let rot = tmp.path().join("rot");
    pki::leaf(&["rot.example.test"]).write_to(&rot);
    let cert = |name: &str, dir: &Path| {
        format!(
            "\n[[certificate]]\nname = \"{name}\"\nchain = \"{}\"\nkey = \"{}\"\n",
            dir.join("fullchain.pem").display(),
            dir.join("privkey.pem").display()
        )
    };
    let proxy = Proxy::start(
        ProxyConfig::sink()
            .append(&cert("rot", &rot))
            .append(METRICS),
    );
    let s = status_json(&proxy);
    assert_eq!(certificate(&s, "rot")["last_reload"], Value::Null);
    assert_eq!(s["config_reload"], Value::Null);

    // Rotated on disk: picked up by the watcher.
    let next = pki::leaf_valid(&["rot.example.test"], (2020, 1, 1), (2098, 1, 1));
    next.write_to(&rot);
    proxy.wait_log("certificate reloaded", 1);
    let s = status_json(&proxy);
    let c = certificate(&s, "rot");
    assert_eq!(c["last_reload"]["result"], "success", "{c}");
    assert_eq!(c["reloads_success"], 1);
    assert_eq!(c["not_after"], not_after_of(&rot.join("fullchain.pem")));

    // SIGHUP with a broken config: refused, shown as a failure.
    let path = proxy.dir.path().join("proxy.toml");
    let good = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, good.replace("[tls]", "[tls]\nbogus = 1")).unwrap();
    hup(&proxy);
    proxy.wait_log(
        "config reload failed; still running on the previous config and certificates",
        1,
    );
    let s = status_json(&proxy);
    assert_eq!(s["config_reload"]["result"], "failure", "{s}");

    // SIGHUP adding a certificate: listed, with the expiry /metrics has.
    let extra = tmp.path().join("extra");
    pki::leaf_valid(&["new.example.test"], (2020, 1, 1), (2097, 6, 1)).write_to(&extra);
    std::fs::write(&path, format!("{good}{}", cert("extra", &extra))).unwrap();
    hup(&proxy);
    proxy.wait_log("config reloaded", 1);
    let s = status_json(&proxy);
    assert_eq!(s["config_reload"]["result"], "success", "{s}");
    let c = certificate(&s, "extra");
    assert_eq!(c["not_after"], not_after_of(&extra.join("fullchain.pem")));
    assert_eq!(
        proxy.metric(
            "starttls_proxy_certificate_not_after_timestamp_seconds{certificate=\"extra\"}"
        ),
        Some(not_after_of(&extra.join("fullchain.pem")) as f64)
    );
    // The rotated certificate keeps its history across the reload.
    assert_eq!(certificate(&s, "rot")["reloads_success"], 1);
}
