//! Test harness: the real `starttls-proxy` binary on loopback, an SMTP
//! client with a real rustls handshake, openssl s_client, swaks, a
//! scripted backend, helpers for the private Postfix peers in
//! tests/peers/ (the Exim ones are driven from tests/exim_recipes.rs),
//! and the loopback hop's CA made by the commands of
//! deploy/postfix/README.md.
#![allow(dead_code)]

pub mod https;
pub mod pki;
pub mod starttls_backend;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rustls::pki_types::{CertificateDer, ServerName, pem::PemObject};

pub const TIMEOUT: Duration = Duration::from_secs(20);

pub fn repo() -> PathBuf {
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    demo_keys_0600(&repo);
    repo
}

/// git checks the demo keys out 0644 (it keeps no modes but +x); the proxy
/// warns about keys others can read, as it should for real ones.
fn demo_keys_0600(repo: &Path) {
    use std::os::unix::fs::PermissionsExt;
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        for k in [
            "mx1.example.test/privkey.pem",
            "mx1.example.test/ecdsa/privkey.pem",
            "mx.tenant2.test/privkey.pem",
            "wild.test/privkey.pem",
        ] {
            let _ = std::fs::set_permissions(
                repo.join("certs.example").join(k),
                std::fs::Permissions::from_mode(0o600),
            );
        }
    });
}

pub fn certs() -> PathBuf {
    repo().join("certs.example")
}

/// Builds the .deb into `dir` with cargo-deb (scripts/install-test-deps.sh)
/// from the test build of the binary (`--no-build --profile dev`: CI
/// builds no release binary; a release is `cargo deb`); returns its path.
pub fn build_deb(dir: &Path) -> PathBuf {
    let out = Command::new("cargo")
        .args(["deb", "--no-build", "--profile", "dev", "--fast", "-o"])
        .arg(dir)
        .current_dir(repo())
        .output()
        .expect("cargo deb (scripts/install-test-deps.sh installs cargo-deb)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "cargo deb: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let path = PathBuf::from(stdout.lines().last().unwrap_or_default().trim());
    assert!(path.exists(), "cargo deb printed {stdout:?}");
    path
}

/// Polls `f` until it returns `Some`, or panics after `timeout`.
pub fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

// === Config ===

/// A config for the proxy under test; `{certs}` and `{dir}` are filled in.
pub struct ProxyConfig {
    pub text: String,
}

impl ProxyConfig {
    /// One opportunistic STARTTLS listener on 127.0.0.1:0, the demo
    /// certificates (mx1 RSA+ECDSA default, tenant2, wild), and `backend`
    /// as the body of the one `[[backend]]` named "b".
    pub fn standard(backend: &str) -> Self {
        Self::with(r#"tls = "opportunistic""#, backend)
    }

    pub fn with(listener_extra: &str, backend: &str) -> Self {
        let text = format!(
            r#"hostname = "mx1.example.test"

[[listener]]
address = "127.0.0.1:0"
backend = "b"
{listener_extra}

[tls]
default_certificate = "mx1"
trust_anchors = "{{certs}}/ca.pem"

[[certificate]]
name = "mx1"
chain = "{{certs}}/mx1.example.test/fullchain.pem"
key = "{{certs}}/mx1.example.test/privkey.pem"

[[certificate]]
name = "mx1-ecdsa"
chain = "{{certs}}/mx1.example.test/ecdsa/fullchain.pem"
key = "{{certs}}/mx1.example.test/ecdsa/privkey.pem"

[[certificate]]
name = "tenant2"
chain = "{{certs}}/mx.tenant2.test/fullchain.pem"
key = "{{certs}}/mx.tenant2.test/privkey.pem"

[[certificate]]
name = "wild"
chain = "{{certs}}/wild.test/fullchain.pem"
key = "{{certs}}/wild.test/privkey.pem"

[[backend]]
name = "b"
{backend}

[log]
format = "json"
level = "debug"
"#
        );
        Self { text }
    }

    pub fn sink() -> Self {
        Self::standard(r#"sink = "{dir}/mail""#)
    }

    pub fn servers(addrs: &[SocketAddr]) -> Self {
        let list: Vec<String> = addrs.iter().map(|a| format!("\"{a}\"")).collect();
        Self::standard(&format!("servers = [{}]", list.join(", ")))
    }

    /// A deliberately broken config: mx1's certificates (RSA and ECDSA)
    /// served without their intermediate. `chain_check = "dane-ee"` skips
    /// the path check that would refuse this at load (tests/certs.rs), so
    /// that real strict senders can be shown to refuse it.
    pub fn without_mx1_intermediate(self) -> Self {
        self.replace(
            "mx1.example.test/fullchain.pem\"",
            "mx1.example.test/leaf-only.pem\"\nchain_check = \"dane-ee\"",
        )
        .replace(
            "mx1.example.test/ecdsa/fullchain.pem\"",
            "mx1.example.test/ecdsa/leaf-only.pem\"\nchain_check = \"dane-ee\"",
        )
    }

    pub fn replace(mut self, from: &str, to: &str) -> Self {
        assert!(self.text.contains(from), "config has no {from:?}");
        self.text = self.text.replace(from, to);
        self
    }

    pub fn append(mut self, extra: &str) -> Self {
        self.text.push_str(extra);
        self
    }
}

// === Proxy ===

/// The proxy binary running on a config in its own temporary directory.
pub struct Proxy {
    child: Child,
    pub dir: tempfile::TempDir,
    pub addrs: Vec<SocketAddr>,
    logs: Arc<Mutex<Vec<serde_json::Value>>>,
}

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_starttls-proxy")
}

/// The proxy binary as every test runs it: tests (and CI) run as root, and
/// `run` refuses root without `--allow-root`, so the harness allows it here,
/// once, through the flag's environment variable (tests/refuse_root.rs runs
/// the binary without it). `RUST_LOG` is removed so `[log] level` rules.
pub fn proxy_command() -> Command {
    let mut c = Command::new(bin());
    c.env("STARTTLS_PROXY_ALLOW_ROOT", "true")
        .env_remove("RUST_LOG");
    c
}

/// A temporary directory every user can enter (Postfix daemons run as other users).
pub fn tempdir() -> tempfile::TempDir {
    let d = tempfile::Builder::new()
        .prefix("stp")
        .tempdir_in("/tmp")
        .expect("tempdir");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    d
}

impl Proxy {
    pub fn start(config: ProxyConfig) -> Proxy {
        let dir = tempdir();
        let text = config
            .text
            .replace("{certs}", certs().to_str().unwrap())
            .replace("{dir}", dir.path().to_str().unwrap());
        let path = dir.path().join("proxy.toml");
        std::fs::write(&path, &text).unwrap();
        let mut child = proxy_command()
            .args(["run", "--config"])
            .arg(&path)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn proxy");
        let stderr = child.stderr.take().unwrap();
        let logs: Arc<Mutex<Vec<serde_json::Value>>> = Arc::default();
        let raw_lines: Arc<Mutex<Vec<String>>> = Arc::default();
        {
            let logs = logs.clone();
            let raw_lines = raw_lines.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    match serde_json::from_str(&line) {
                        Ok(v) => logs.lock().unwrap().push(v),
                        Err(_) => raw_lines.lock().unwrap().push(line),
                    }
                }
            });
        }
        let mut proxy = Proxy {
            child,
            dir,
            addrs: Vec::new(),
            logs,
        };
        let deadline = Instant::now() + TIMEOUT;
        loop {
            if proxy.find_log("starttls-proxy ready").is_some() {
                break;
            }
            if let Ok(Some(status)) = proxy.child.try_wait() {
                panic!(
                    "proxy exited with {status}: {:?}",
                    raw_lines.lock().unwrap()
                );
            }
            assert!(
                Instant::now() < deadline,
                "proxy did not start: {:?}",
                raw_lines.lock().unwrap()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        // Sessions depend on the first health probe (421 greeting when
        // every server is down): wait for it, for deterministic tests.
        let probed_backends = text
            .lines()
            .filter(|l| l.starts_with("servers = ["))
            .count();
        while proxy.logs_with("backend health: first probe done").len() < probed_backends {
            assert!(
                Instant::now() < deadline,
                "no first health probe: {}",
                proxy.all_logs()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        proxy.addrs = proxy
            .logs_with("listener bound")
            .iter()
            .map(|v| v["address"].as_str().unwrap().parse().unwrap())
            .collect();
        proxy
    }

    /// The `[metrics] listen` address as bound.
    pub fn metrics_addr(&self) -> SocketAddr {
        self.wait_log("metrics endpoint bound", 1)["address"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap()
    }

    /// `GET path` on the metrics endpoint: status code and body.
    pub fn http_get(&self, path: &str) -> (u16, String) {
        http_get(self.metrics_addr(), path)
    }

    /// The value of one series in `/metrics` (`name{labels}` exactly as
    /// rendered, labels in the exporter's order), if present.
    pub fn metric(&self, series: &str) -> Option<f64> {
        let (status, body) = self.http_get("/metrics");
        assert_eq!(status, 200, "{body}");
        metric_value(&body, series)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addrs[0]
    }

    pub fn port(&self) -> u16 {
        self.addr().port()
    }

    /// Every JSON log event whose message is `message`.
    pub fn logs_with(&self, message: &str) -> Vec<serde_json::Value> {
        self.logs
            .lock()
            .unwrap()
            .iter()
            .filter(|v| v["message"] == message)
            .cloned()
            .collect()
    }

    pub fn find_log(&self, message: &str) -> Option<serde_json::Value> {
        self.logs_with(message).into_iter().next()
    }

    /// Waits for the `n`-th (1-based) event with this message.
    pub fn wait_log(&self, message: &str, n: usize) -> serde_json::Value {
        wait_for(&format!("log {message:?} #{n}"), TIMEOUT, || {
            self.logs_with(message).get(n - 1).cloned()
        })
    }

    pub fn all_logs(&self) -> String {
        self.logs
            .lock()
            .unwrap()
            .iter()
            .map(|v| v.to_string())
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Files the sink stored (config from `ProxyConfig::sink`).
    pub fn sink_messages(&self) -> Vec<Vec<u8>> {
        let dir = self.dir.path().join("mail/new");
        let mut files: Vec<_> = std::fs::read_dir(dir)
            .map(|d| d.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        files.sort();
        files.iter().map(|p| std::fs::read(p).unwrap()).collect()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs the binary with arguments and waits (for `check` and config errors).
pub fn run_bin(args: &[&str]) -> Output {
    proxy_command().args(args).output().expect("run binary")
}

// === SMTP client ===

pub trait Stream: Read + Write + Send {}
impl<T: Read + Write + Send> Stream for T {}

/// A line-oriented SMTP client over TCP or TLS.
pub struct Smtp {
    r: BufReader<Box<dyn Stream>>,
    pub tls_version: Option<rustls::ProtocolVersion>,
    pub peer_certs: Vec<CertificateDer<'static>>,
    /// The TLS handshake resumed an earlier session.
    pub resumed: bool,
    /// A handle on the TCP socket of a plaintext session.
    tcp: Option<TcpStream>,
}

impl Smtp {
    pub fn connect(addr: SocketAddr) -> Smtp {
        Self::from_tcp(TcpStream::connect(addr).expect("connect to proxy"))
    }

    /// Connects to a PROXY-protocol listener as a balancer would: the v1
    /// `header` line (CRLF added) goes first, naming the client.
    pub fn connect_proxied(addr: SocketAddr, header: &str) -> Smtp {
        let mut tcp = TcpStream::connect(addr).expect("connect to proxy");
        tcp.write_all(format!("{header}\r\n").as_bytes()).unwrap();
        Self::from_tcp(tcp)
    }

    fn from_tcp(tcp: TcpStream) -> Smtp {
        tcp.set_read_timeout(Some(TIMEOUT)).unwrap();
        Smtp {
            tcp: Some(tcp.try_clone().unwrap()),
            r: BufReader::new(Box::new(tcp)),
            tls_version: None,
            peer_certs: Vec::new(),
            resumed: false,
        }
    }

    pub fn send(&mut self, line: &str) {
        self.send_raw(format!("{line}\r\n").as_bytes());
    }

    /// The plain TCP socket (nothing may be buffered unread).
    pub fn into_tcp(self) -> TcpStream {
        assert!(self.r.buffer().is_empty());
        self.tcp.expect("a plain TCP session")
    }

    /// Half-closes a plain TCP connection (no more commands).
    pub fn shutdown_write(&mut self) {
        self.r.get_mut().flush().unwrap();
        let tcp = self
            .tcp
            .as_ref()
            .expect("half-close needs a plain TCP session");
        tcp.shutdown(std::net::Shutdown::Write).unwrap();
    }

    pub fn send_raw(&mut self, data: &[u8]) {
        let w = self.r.get_mut();
        w.write_all(data).unwrap();
        w.flush().unwrap();
    }

    /// One complete (possibly multi-line) reply, CRLFs included.
    pub fn reply(&mut self) -> String {
        self.try_reply()
            .expect("connection closed while waiting for a reply")
    }

    /// `None` when the server closed the connection.
    pub fn try_reply(&mut self) -> Option<String> {
        let mut all = String::new();
        loop {
            let mut line = String::new();
            match self.r.read_line(&mut line) {
                Ok(0) => {
                    return if all.is_empty() {
                        None
                    } else {
                        panic!("partial reply: {all:?}")
                    };
                }
                Ok(_) => {}
                Err(e) => panic!("read failed: {e} (so far {all:?})"),
            }
            all.push_str(&line);
            if line.len() < 4 || line.as_bytes()[3] == b' ' || line.trim_end().len() == 3 {
                return Some(all);
            }
        }
    }

    pub fn expect(&mut self, prefix: &str) -> String {
        let r = self.reply();
        assert!(r.starts_with(prefix), "expected {prefix:?}, got {r:?}");
        r
    }

    pub fn cmd(&mut self, line: &str, prefix: &str) -> String {
        self.send(line);
        self.expect(prefix)
    }

    /// Every reply until the server closes the connection. A reset or a
    /// TLS stream cut without close_notify also ends it (a server that
    /// closes with our pipelined commands unread resets): the replies read
    /// before are kept.
    pub fn replies_until_close(&mut self) -> Vec<String> {
        let mut replies = Vec::new();
        let mut partial = String::new();
        loop {
            let mut line = String::new();
            match self.r.read_line(&mut line) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::ConnectionReset
                            | std::io::ErrorKind::UnexpectedEof
                            | std::io::ErrorKind::BrokenPipe
                    ) =>
                {
                    break;
                }
                Err(e) => panic!("read failed: {e} (so far {replies:?} {partial:?})"),
            }
            partial.push_str(&line);
            if line.len() < 4 || line.as_bytes()[3] == b' ' || line.trim_end().len() == 3 {
                replies.push(std::mem::take(&mut partial));
            }
        }
        assert!(
            partial.is_empty(),
            "partial reply {partial:?} after {replies:?}"
        );
        replies
    }

    /// True when the server has closed the connection (EOF, or a reset
    /// because our last command crossed its close) within the timeout.
    pub fn closed(&mut self) -> bool {
        let mut b = [0u8; 1];
        match self.r.read(&mut b) {
            Ok(0) => true,
            Ok(_) => false,
            Err(e) => matches!(
                e.kind(),
                std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::UnexpectedEof
            ),
        }
    }

    /// Handshakes over the same TCP connection. `sni`: name to send and
    /// verify; `verify_name` without `sni`: verify that name, send no SNI.
    pub fn start_tls(self, sni: Option<&str>, verify_name: &str) -> Result<Smtp, rustls::Error> {
        self.start_tls_with(
            sni,
            verify_name,
            &[&rustls::version::TLS13, &rustls::version::TLS12],
        )
    }

    pub fn start_tls_with(
        self,
        sni: Option<&str>,
        verify_name: &str,
        versions: &[&'static rustls::SupportedProtocolVersion],
    ) -> Result<Smtp, rustls::Error> {
        let mut config = client_config(versions);
        config.enable_sni = sni.is_some();
        self.start_tls_shared(Arc::new(config), sni.unwrap_or(verify_name))
    }

    /// Handshakes with a given client config (shared, e.g. for resumption).
    pub fn start_tls_shared(
        self,
        config: Arc<rustls::ClientConfig>,
        name: &str,
    ) -> Result<Smtp, rustls::Error> {
        assert!(
            self.r.buffer().is_empty(),
            "bytes buffered before the handshake"
        );
        let mut inner = self.r.into_inner();
        let name = ServerName::try_from(name.to_string()).unwrap();
        let mut conn = rustls::ClientConnection::new(config, name)?;
        while conn.is_handshaking() {
            if let Err(e) = conn.complete_io(&mut inner) {
                if let Some(inner) = e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
                    return Err(inner.clone());
                }
                return Err(rustls::Error::General(e.to_string()));
            }
        }
        let tls_version = conn.protocol_version();
        let resumed = conn.handshake_kind() == Some(rustls::HandshakeKind::Resumed);
        let peer_certs = conn
            .peer_certificates()
            .map(|c| c.to_vec())
            .unwrap_or_default();
        let stream = rustls::StreamOwned::new(conn, inner);
        Ok(Smtp {
            r: BufReader::new(Box::new(stream)),
            tls_version,
            peer_certs,
            resumed,
            tcp: None,
        })
    }
}

/// A rustls client trusting only the demo root.
/// A client session up to TLS: greeting, EHLO, STARTTLS, a verified
/// handshake with SNI mx1.example.test. The client must EHLO again.
pub fn tls_session(proxy: &Proxy) -> Smtp {
    tls_session_as(proxy, "mx1.example.test")
}

/// `tls_session` with SNI `name`, the certificate verified for it.
pub fn tls_session_as(proxy: &Proxy, name: &str) -> Smtp {
    let mut c = Smtp::connect(proxy.addr());
    c.expect("220");
    c.cmd("EHLO client.test", "250");
    c.cmd("STARTTLS", "220");
    c.start_tls(Some(name), name).expect("handshake")
}

/// A TLS session through the proxy from 127.0.0.1 with RCPT to a foreign
/// domain (the open-relay check); returns the backend's reply to the RCPT.
pub fn foreign_rcpt_reply(proxy: &Proxy) -> String {
    let mut c = tls_session(proxy);
    c.cmd("EHLO client.test", "250");
    c.cmd("MAIL FROM:<spammer@evil.test>", "250");
    c.send("RCPT TO:<victim@elsewhere.test>");
    let reply = c.reply();
    c.send("QUIT");
    reply
}

/// swaks from `sender@sender.test` to `rcpt@example.test` over STARTTLS
/// through the proxy, with `Subject: subject` and swaks options `extra`;
/// panics unless swaks succeeds. Returns swaks's transcript.
pub fn swaks(proxy: &Proxy, extra: &[&str], subject: &str) -> String {
    let out = Command::new("swaks")
        .args(["-s", "127.0.0.1", "-p", &proxy.port().to_string(), "--tls"])
        .args(extra)
        .args(["--from", "sender@sender.test", "--to", "rcpt@example.test"])
        .args([
            "--header",
            &format!("Subject: {subject}"),
            "--timeout",
            "20",
        ])
        .output()
        .expect("swaks (installed by scripts/install-test-deps.sh)");
    let t = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{t}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    t
}

/// A client that accepts any certificate: for tests that send SNI values
/// no certificate covers (cardinality), never for checking what is served.
pub fn accept_any_certificate_config() -> rustls::ClientConfig {
    #[derive(Debug)]
    struct AcceptAny(Arc<rustls::crypto::CryptoProvider>);
    impl rustls::client::danger::ServerCertVerifier for AcceptAny {
        fn verify_server_cert(
            &self,
            _: &CertificateDer<'_>,
            _: &[CertificateDer<'_>],
            _: &ServerName<'_>,
            _: &[u8],
            _: rustls::pki_types::UnixTime,
        ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
            Ok(rustls::client::danger::ServerCertVerified::assertion())
        }
        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls12_signature(
                message,
                cert,
                dss,
                &self.0.signature_verification_algorithms,
            )
        }
        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls13_signature(
                message,
                cert,
                dss,
                &self.0.signature_verification_algorithms,
            )
        }
        fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
            self.0.signature_verification_algorithms.supported_schemes()
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAny(provider)))
        .with_no_client_auth()
}

pub fn client_config(
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> rustls::ClientConfig {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(certs().join("ca.pem")).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_protocol_versions(versions)
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth()
}

/// A client trusting only the demo root, with the crypto provider given
/// (e.g. aws-lc-rs with chosen key exchange groups, or ring).
pub fn client_config_with_provider(
    provider: rustls::crypto::CryptoProvider,
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> rustls::ClientConfig {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(certs().join("ca.pem")).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    rustls::ClientConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(versions)
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth()
}

/// Greeting, EHLO, STARTTLS and a verified handshake (SNI
/// mx1.example.test) with `config`; returns the client's connection and
/// socket, for what the client negotiated.
pub fn starttls_handshake(
    proxy: &Proxy,
    config: rustls::ClientConfig,
) -> (rustls::ClientConnection, TcpStream) {
    let mut c = Smtp::connect(proxy.addr());
    c.expect("220");
    c.cmd("EHLO client.test", "250");
    c.cmd("STARTTLS", "220");
    let mut tcp = c.into_tcp();
    let name = ServerName::try_from("mx1.example.test").unwrap();
    let mut conn = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
    while conn.is_handshaking() {
        conn.complete_io(&mut tcp).expect("handshake");
    }
    (conn, tcp)
}

/// The subject CN of a DER certificate (for assertions).
pub fn subject_of(der: &[u8]) -> String {
    // Good enough for the demo PKI: find the printable CN value.
    let text = Command::new("openssl")
        .args([
            "x509",
            "-inform",
            "DER",
            "-noout",
            "-subject",
            "-nameopt",
            "multiline",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            c.stdin.take().unwrap().write_all(der)?;
            c.wait_with_output()
        })
        .expect("openssl x509");
    let out = String::from_utf8_lossy(&text.stdout).into_owned();
    out.lines()
        .find_map(|l| {
            l.trim()
                .strip_prefix("commonName")
                .map(|v| v.trim_start_matches([' ', '=']).trim().to_string())
        })
        .unwrap_or(out)
}

// === openssl s_client ===

/// `openssl s_client -starttls smtp` against `addr` with extra arguments;
/// stdin closed, so it quits after the handshake.
pub fn s_client(addr: SocketAddr, args: &[&str]) -> (bool, String) {
    let out = Command::new("timeout")
        .arg("20")
        .args([
            "openssl",
            "s_client",
            "-starttls",
            "smtp",
            "-connect",
            &addr.to_string(),
        ])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("openssl s_client (install openssl: scripts/install-test-deps.sh)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// The ` N s:` subject lines of the chain openssl printed.
pub fn chain_subjects(s_client_output: &str) -> Vec<String> {
    s_client_output
        .lines()
        .filter_map(|l| {
            let l = l.trim_start();
            let (n, rest) = l.split_once(' ')?;
            n.parse::<u32>().ok()?;
            rest.strip_prefix("s:").map(str::to_string)
        })
        .collect()
}

// === Scripted backend ===

/// A fake backend MTA speaking exact bytes: greets, records every byte,
/// answers each command line from a script (default: 250).
///
/// The proxy's health probe connects too (EHLO with the proxy's hostname,
/// `mx1.example.test`, then QUIT): those connections are kept apart from
/// the client sessions, which [`FakeBackend::transcript`] returns.
pub struct FakeBackend {
    pub addr: SocketAddr,
    /// Every connection's bytes, in the order the connections came.
    connections: Arc<Mutex<Vec<Recorded>>>,
    behaviour: Arc<Mutex<FakeBehaviour>>,
    stopped: Arc<std::sync::atomic::AtomicBool>,
}

/// The bytes one connection sent.
type Recorded = Arc<Mutex<Vec<u8>>>;

/// The EHLO line of the proxy's health probe (the test configs' hostname).
pub const PROBE_EHLO: &str = "EHLO mx1.example.test\r\n";

fn is_probe(transcript: &[u8]) -> bool {
    // After an optional PROXY header (v2 binary or v1 line), the probe's EHLO.
    const V2_SIGNATURE: &[u8] = b"\r\n\r\n\0\r\nQUIT\n";
    let rest = if transcript.starts_with(V2_SIGNATURE) && transcript.len() >= 16 {
        let len = u16::from_be_bytes([transcript[14], transcript[15]]) as usize;
        transcript.get(16 + len..).unwrap_or_default()
    } else if transcript.starts_with(b"PROXY ") {
        let end = transcript
            .iter()
            .position(|b| *b == b'\n')
            .map_or(0, |i| i + 1);
        &transcript[end..]
    } else {
        transcript
    };
    // A session of an XCLIENT pool starts the same way, then says XCLIENT.
    rest.strip_prefix(PROBE_EHLO.as_bytes())
        .is_some_and(|after| after.is_empty() || after.starts_with(b"QUIT"))
}

#[derive(Clone, Copy)]
pub enum FakeBehaviour {
    /// Greet with 220 and answer like a small MTA.
    Normal,
    /// Accept and close at once.
    CloseAtOnce,
    /// Greet with this reply and then close.
    Greeting(&'static str),
    /// Normal until the message content starts, then close.
    DropInData,
    /// Answers EHLO with 554.
    RefuseEhlo,
    /// Answers EHLO twice (a reply to nothing follows).
    DoubleEhlo,
    /// Answers the end of the content with 451.
    TempFailAtDataEnd,
    /// Answers MAIL with 421 and closes.
    Closes421AtMail,
    /// Never answers MAIL (but keeps the connection).
    StallsAtMail,
    /// Resets the connection (RST) when MAIL arrives.
    ResetsAtMail,
}

impl FakeBackend {
    pub fn start(behaviour: FakeBehaviour) -> FakeBackend {
        Self::start_on("127.0.0.1:0".parse().unwrap(), behaviour)
    }

    /// On a given address (a backend coming back where it was).
    pub fn start_on(addr: SocketAddr, behaviour: FakeBehaviour) -> FakeBackend {
        let l = TcpListener::bind(addr).unwrap();
        let addr = l.local_addr().unwrap();
        let stopped = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stop_flag = stopped.clone();
        let connections: Arc<Mutex<Vec<Recorded>>> = Arc::default();
        let behaviour = Arc::new(Mutex::new(behaviour));
        let (conns, current) = (connections.clone(), behaviour.clone());
        std::thread::spawn(move || {
            for conn in l.incoming() {
                let Ok(conn) = conn else { return };
                if stop_flag.load(std::sync::atomic::Ordering::SeqCst) {
                    return; // drops the listener: connections are refused from now on
                }
                let rec: Arc<Mutex<Vec<u8>>> = Arc::default();
                conns.lock().unwrap().push(rec.clone());
                let b = *current.lock().unwrap();
                std::thread::spawn(move || fake_session(conn, b, rec));
            }
        });
        FakeBackend {
            addr,
            connections,
            behaviour,
            stopped,
        }
    }

    /// Stops listening (the backend went away after its health probe);
    /// returns once connections are refused.
    pub fn stop(&self) {
        self.stopped
            .store(true, std::sync::atomic::Ordering::SeqCst);
        // Wakes the accept loop, which sees the flag and drops the listener.
        let _ = TcpStream::connect(self.addr);
        wait_for("the fake backend to stop listening", TIMEOUT, || {
            TcpStream::connect(self.addr).is_err().then_some(())
        });
    }

    /// Connections accepted from now on behave like this (a backend that
    /// passed its health probe and broke afterwards).
    pub fn set_behaviour(&self, b: FakeBehaviour) {
        *self.behaviour.lock().unwrap() = b;
    }

    /// What the client sessions sent, connection after connection.
    pub fn transcript(&self) -> String {
        self.transcripts(false).concat()
    }

    /// What each health probe sent.
    pub fn probes(&self) -> Vec<String> {
        self.transcripts(true)
    }

    fn transcripts(&self, probes: bool) -> Vec<String> {
        self.connections
            .lock()
            .unwrap()
            .iter()
            .map(|c| c.lock().unwrap().clone())
            .filter(|t| is_probe(t) == probes)
            .map(|t| String::from_utf8_lossy(&t).into_owned())
            .collect()
    }
}

fn fake_session(mut conn: TcpStream, behaviour: FakeBehaviour, rec: Arc<Mutex<Vec<u8>>>) {
    match behaviour {
        FakeBehaviour::CloseAtOnce => return,
        FakeBehaviour::Greeting(g) => {
            let _ = conn.write_all(format!("{g}\r\n").as_bytes());
            return;
        }
        _ => {}
    }
    let _ = conn.write_all(b"220 fake.backend.test ESMTP\r\n");
    let mut r = BufReader::new(conn.try_clone().unwrap());
    let mut in_data = false;
    let mut first_line = true;
    loop {
        let mut line = Vec::new();
        match r.read_until(b'\n', &mut line) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        rec.lock().unwrap().extend_from_slice(&line);
        if first_line && line == b"\r\n" {
            // A PROXY v2 header: the rest of the signature, version and
            // command, family, length, then the addresses and TLVs. Binary,
            // recorded as is, never answered.
            let mut head = [0u8; 14];
            if r.read_exact(&mut head).is_err() {
                return;
            }
            let len = u16::from_be_bytes([head[12], head[13]]) as usize;
            let mut rest = vec![0u8; len];
            if r.read_exact(&mut rest).is_err() {
                return;
            }
            let mut rec = rec.lock().unwrap();
            rec.extend_from_slice(&head);
            rec.extend_from_slice(&rest);
            first_line = false;
            continue;
        }
        first_line = false;
        if in_data {
            if line == b".\r\n" {
                in_data = false;
                let reply: &[u8] = if matches!(behaviour, FakeBehaviour::TempFailAtDataEnd) {
                    b"451 4.3.0 Error: queue file write error\r\n"
                } else {
                    b"250 2.0.0 Ok: queued as FAKE\r\n"
                };
                let _ = conn.write_all(reply);
            }
            continue;
        }
        let upper = String::from_utf8_lossy(&line).to_ascii_uppercase();
        // A PROXY v1 header gets no reply (as in Postfix with
        // smtpd_upstream_proxy_protocol); it is recorded like the rest.
        if upper.starts_with("PROXY ") {
            continue;
        }
        let reply: &[u8] = if upper.starts_with("EHLO")
            && matches!(behaviour, FakeBehaviour::RefuseEhlo)
        {
            b"554 5.7.1 not you\r\n"
        } else if upper.starts_with("EHLO") && matches!(behaviour, FakeBehaviour::DoubleEhlo) {
            b"250 fake.backend.test\r\n250 again\r\n"
        } else if upper.starts_with("EHLO") {
            b"250-fake.backend.test\r\n250-PIPELINING\r\n250-STARTTLS\r\n250-AUTH PLAIN LOGIN\r\n250-XCLIENT NAME ADDR PORT PROTO HELO\r\n250 8BITMIME\r\n"
        } else if upper.starts_with("MAIL") && matches!(behaviour, FakeBehaviour::Closes421AtMail) {
            let _ = conn.write_all(b"421 4.3.2 Service shutting down\r\n");
            return;
        } else if upper.starts_with("MAIL") && matches!(behaviour, FakeBehaviour::StallsAtMail) {
            let mut rest = Vec::new();
            let _ = r.read_to_end(&mut rest);
            return;
        } else if upper.starts_with("MAIL") && matches!(behaviour, FakeBehaviour::ResetsAtMail) {
            let _ = socket2_linger_zero(&conn);
            return;
        } else if upper.starts_with("MAIL") {
            b"250 2.1.0 Sender ok\r\n"
        } else if upper.starts_with("RCPT") && upper.contains("REJECT") {
            b"550 5.1.1 No such user\r\n"
        } else if upper.starts_with("RCPT") {
            b"250 2.1.5 Recipient ok\r\n"
        } else if upper.starts_with("NOOP") {
            b"250 2.0.0 Ok (backend noop)\r\n"
        } else if upper.starts_with("DATA") {
            if matches!(behaviour, FakeBehaviour::DropInData) {
                let _ = conn.write_all(b"354 go ahead\r\n");
                let mut first = [0u8; 1];
                let _ = r.read(&mut first);
                return;
            }
            in_data = true;
            b"354 go ahead\r\n"
        } else if upper.starts_with("XCLIENT") {
            // As Postfix: a new session, greeted anew.
            b"220 fake.backend.test ESMTP\r\n"
        } else if upper.starts_with("QUIT") {
            let _ = conn.write_all(b"221 2.0.0 Bye\r\n");
            return;
        } else {
            b"250 2.0.0 Ok\r\n"
        };
        let _ = conn.write_all(reply);
    }
}

/// Makes the next close of `conn` send RST instead of FIN.
fn socket2_linger_zero(conn: &TcpStream) -> std::io::Result<()> {
    socket2::SockRef::from(conn).set_linger(Some(Duration::ZERO))
}

// === Postfix peers (tests/peers) ===

pub fn peer_script(name: &str) -> PathBuf {
    repo().join("tests/peers").join(name)
}

/// A private Postfix backend on 127.0.0.1:port, stopped on drop.
pub struct PostfixBackend {
    pub dir: PathBuf,
    pub port: u16,
    _tmp: tempfile::TempDir,
}

impl PostfixBackend {
    pub fn start(port: u16, env: &[(&str, &str)]) -> PostfixBackend {
        let tmp = tempdir();
        let dir = tmp.path().join("backend");
        let out = Command::new(peer_script("postfix-backend.sh"))
            .arg("start")
            .arg(&dir)
            .arg(port.to_string())
            .envs(env.iter().copied())
            .output()
            .expect("run tests/peers/postfix-backend.sh (Postfix is installed by scripts/install-test-deps.sh)");
        assert!(
            out.status.success(),
            "postfix backend did not start (a missing peer is a failure, see scripts/install-test-deps.sh):\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        PostfixBackend {
            dir,
            port,
            _tmp: tmp,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// Every message delivered so far (files in the Maildir's new/), in
    /// file-name order.
    pub fn messages(&self) -> Vec<Vec<u8>> {
        maildir_messages(&self.dir.join("maildir/new"))
    }

    /// Every command line smtpd read from a client, in log order (needs
    /// `TRANSCRIPT=1` at start): what the backend saw, health probes
    /// included. Postfix logs asynchronously: wait for a later command
    /// before asserting that an earlier one is absent.
    pub fn commands(&self) -> Vec<String> {
        let log = std::fs::read_to_string(self.dir.join("log/maillog")).unwrap_or_default();
        log.lines()
            .filter(|l| l.contains("/smtpd["))
            .filter_map(|l| l.split_once("]: < ").map(|(_, rest)| rest))
            .filter_map(|rest| rest.split_once("]: ").map(|(_, cmd)| cmd.to_string()))
            .collect()
    }

    /// Waits until smtpd has logged a command containing `needle`.
    pub fn wait_command(&self, needle: &str) {
        wait_for(&format!("backend command {needle:?}"), TIMEOUT, || {
            self.commands()
                .iter()
                .any(|c| c.contains(needle))
                .then_some(())
        });
    }

    /// The delivered message containing `needle`, polling until it appears.
    pub fn delivered(&self, needle: &str) -> String {
        let dir = self.dir.join("maildir/new");
        wait_for(
            &format!("delivery of {needle:?} in {}", dir.display()),
            TIMEOUT,
            || {
                std::fs::read_dir(&dir).ok()?.flatten().find_map(|e| {
                    let m = std::fs::read_to_string(e.path()).ok()?;
                    m.contains(needle).then_some(m)
                })
            },
        )
    }
}

impl Drop for PostfixBackend {
    fn drop(&mut self) {
        let _ = Command::new(peer_script("postfix-backend.sh"))
            .arg("stop")
            .arg(&self.dir)
            .output();
    }
}

/// The raw files of a Maildir's `new/` (none when it does not exist yet).
pub fn maildir_messages(new: &Path) -> Vec<Vec<u8>> {
    let mut files: Vec<_> = std::fs::read_dir(new)
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    files.sort();
    // A file may go between listing and reading only if someone else
    // moves it; nobody does here.
    files.iter().filter_map(|p| std::fs::read(p).ok()).collect()
}

/// The local CA of the loopback hop, made in `dir` by the commands of
/// deploy/postfix/README.md section 5 as written there (its fenced `sh`
/// block), with only their directory, /etc/postfix/backend-ca, changed to
/// `dir`: `ca.pem`, and `backend.pem` + `backend.key` for backend.internal.
pub fn backend_hop_ca(dir: &Path) {
    let readme = std::fs::read_to_string(repo().join("deploy/postfix/README.md")).unwrap();
    let section = readme
        .split("\n## 5. ")
        .nth(1)
        .expect("deploy/postfix/README.md has a section 5");
    let block = section
        .split("```sh\n")
        .nth(1)
        .and_then(|b| b.split("\n```").next())
        .expect("section 5 has a fenced sh block");
    let from = "/etc/postfix/backend-ca";
    assert!(block.contains(from), "{block}");
    let script = block.replace(from, dir.to_str().unwrap());
    let out = Command::new("bash")
        .args(["-euo", "pipefail", "-c", &script])
        .output()
        .expect("bash");
    assert!(
        out.status.success(),
        "the commands of deploy/postfix/README.md section 5 failed:\n{script}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for f in ["ca.pem", "backend.pem", "backend.key"] {
        assert!(dir.join(f).is_file(), "section 5 made no {f}");
    }
}

/// The strict Postfix sender: (exit code, output).
pub fn postfix_send(port: u16, match_name: &str, sni: Option<&str>) -> (i32, String) {
    let tmp = tempdir();
    let mut cmd = Command::new(peer_script("postfix-sender.sh"));
    cmd.arg("send")
        .arg(tmp.path().join("sender"))
        .arg(port.to_string())
        .arg(certs().join("ca.pem"))
        .arg(match_name);
    if let Some(s) = sni {
        cmd.arg(s);
    }
    let out = cmd.output().expect("run tests/peers/postfix-sender.sh");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

/// `Path` helper for readability in tests.
pub fn p(s: &str) -> &Path {
    Path::new(s)
}

// === HTTP (the metrics endpoint) ===

/// A plain HTTP/1.1 GET with `Connection: close`: status code and body.
pub fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut tcp = TcpStream::connect(addr).expect("connect to the metrics endpoint");
    tcp.set_read_timeout(Some(TIMEOUT)).unwrap();
    write!(
        tcp,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = String::new();
    tcp.read_to_string(&mut raw).expect("HTTP response");
    let (head, body) = raw.split_once("\r\n\r\n").expect("HTTP head");
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("HTTP status");
    (status, body.to_string())
}

/// The value of `series` (name and labels exactly as rendered) in a
/// Prometheus text exposition.
pub fn metric_value(exposition: &str, series: &str) -> Option<f64> {
    exposition.lines().find_map(|l| {
        let (name, value) = l.rsplit_once(' ')?;
        (name == series).then(|| value.parse().ok())?
    })
}

// === DNS (dnsmasq on loopback) ===

/// A private dnsmasq on 127.0.0.1:port answering only from its arguments
/// (`--host-record`, `--ptr-record`, …): authoritative-like for
/// `sender.test` and `113.0.203.in-addr.arpa` (NXDOMAIN for the rest of
/// them). Clients with those addresses come through a PROXY-protocol
/// listener: loopback addresses would not do, since resolvers answer
/// their reverse lookups as `localhost` themselves (RFC 6761).
pub struct DnsServer {
    child: Child,
    pub addr: SocketAddr,
}

/// Where each `DnsServer` publishes its nonce (a TXT record), outside
/// every zone the tests use (RFC 2606 `.invalid`).
const READY_NAME: &str = "dnsserver-ready.invalid";

impl DnsServer {
    pub fn start(records: &[&str]) -> DnsServer {
        Self::with_zones(&["sender.test", "113.0.203.in-addr.arpa"], records)
    }

    /// A dnsmasq answering for `zones` only from `records`, which are
    /// dnsmasq options: `--host-record=mx1.example.test,127.0.0.2,::1`,
    /// `--mx-host=example.test,mx1.example.test,10`,
    /// `--txt-record=_mta-sts.example.test,v=STSv1; id=1`,
    /// `--dns-rr=_25._tcp.mx1.example.test,52,030101<hex>` (TLSA),
    /// `--ptr-record=…`. Names in `zones` without a record are NXDOMAIN.
    pub fn with_zones(zones: &[&str], records: &[&str]) -> DnsServer {
        // The port is found free and released before dnsmasq binds it, so
        // another test may take it in between: dnsmasq then exits with
        // "Address already in use", and it is started again on another.
        for _ in 0..5 {
            if let Some(server) = Self::try_start(zones, records) {
                return server;
            }
        }
        panic!("dnsmasq found its port taken five times in a row");
    }

    /// A port free for both UDP and TCP on 127.0.0.1 (dnsmasq binds both).
    fn free_port() -> u16 {
        loop {
            let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
            let port = udp.local_addr().unwrap().port();
            if TcpListener::bind(("127.0.0.1", port)).is_ok() {
                return port;
            }
        }
    }

    /// `None` when the port was taken in the meantime.
    fn try_start(zones: &[&str], records: &[&str]) -> Option<DnsServer> {
        static STARTED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let port = Self::free_port();
        // Unique to this dnsmasq: the readiness answer must carry it.
        let n = STARTED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let nonce = format!("{}-{port}-{n}", std::process::id());
        let mut child = Command::new("dnsmasq")
            .args([
                "--keep-in-foreground",
                "--no-resolv",
                "--no-hosts",
                "--no-poll",
                "--conf-file=/dev/null",
                "--pid-file=",
                "--user=root",
                "--log-facility=-",
                "--listen-address=127.0.0.1",
                "--bind-interfaces",
            ])
            .args(zones.iter().map(|z| format!("--local=/{z}/")))
            .arg(format!("--port={port}"))
            .arg(format!("--txt-record={READY_NAME},{nonce}"))
            .args(records)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("dnsmasq (Debian's dnsmasq-base, installed by scripts/install-test-deps.sh)");
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        // Ready once it answers a DNS query over UDP, as the tests ask
        // theirs, with its own nonce: a TCP connection is accepted by the
        // kernel as soon as dnsmasq listens, before it serves anything,
        // and any answer may come from another dnsmasq. Two tests can be
        // handed the same free port, and dnsmasq binds UDP with
        // SO_REUSEADDR, so the second one shares the first one's UDP port
        // until its TCP bind fails and it exits ("in use", below). dnsmasq
        // binds UDP, then TCP, then serves: its own answer means both
        // sockets are its own. The query is sent again after each wait
        // without answer: one sent before the socket was bound is lost.
        let probe = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        probe
            .set_read_timeout(Some(Duration::from_millis(20)))
            .unwrap();
        let id = port.to_be_bytes();
        let query = Self::readiness_query(id);
        let deadline = Instant::now() + TIMEOUT;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                let mut err = String::new();
                if let Some(mut e) = child.stderr.take() {
                    let _ = e.read_to_string(&mut err);
                }
                if err.contains("in use") {
                    return None;
                }
                panic!("dnsmasq exited with {status}: {err}");
            }
            assert!(
                Instant::now() < deadline,
                "dnsmasq did not answer a query within {TIMEOUT:?}"
            );
            probe.send_to(&query, addr).unwrap();
            let mut buf = [0u8; 512];
            // Not connected: a query sent too early is lost silently, and
            // the read times out instead of failing at once.
            while let Ok((n, from)) = probe.recv_from(&mut buf) {
                // The response (QR set) to this query, with the nonce.
                let answer = &buf[..n];
                if from == addr
                    && n >= 12
                    && answer[..2] == id
                    && answer[2] & 0x80 != 0
                    && answer.windows(nonce.len()).any(|w| w == nonce.as_bytes())
                {
                    return Some(DnsServer { child, addr });
                }
            }
        }
    }

    /// A DNS query (id `id`, one question: TXT of `READY_NAME`, class IN),
    /// which dnsmasq answers with the nonce it was given.
    fn readiness_query(id: [u8; 2]) -> Vec<u8> {
        let mut q = id.to_vec();
        // RD; one question, no other records.
        q.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
        for label in READY_NAME.split('.') {
            q.push(label.len() as u8);
            q.extend_from_slice(label.as_bytes());
        }
        // Root label, QTYPE TXT (16), QCLASS IN (1).
        q.extend_from_slice(&[0, 0, 16, 0, 1]);
        q
    }
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// === Backends from a script ===

impl FakeBackend {
    /// How many client sessions (connections other than health probes)
    /// the backend accepted, including ones that sent nothing yet.
    pub fn sessions(&self) -> usize {
        self.transcripts(false).len()
    }
}

/// A backend whose replies are a script: it greets with `greeting`, then
/// answers each line received with the reply of the first `(prefix,
/// reply)` whose prefix starts the line (ASCII case ignored; `""` matches
/// any line), else `250 2.0.0 Ok`. Replies may be multi-line (`\r\n`
/// between lines; the last CRLF is added). `QUIT` gets 221 and a close
/// unless the script says otherwise. Each connection's lines are kept.
pub struct ScriptedBackend {
    pub addr: SocketAddr,
    connections: Arc<Mutex<Vec<Recorded>>>,
}

pub type Script = &'static [(&'static str, &'static str)];

impl ScriptedBackend {
    pub fn start(greeting: &'static str, script: Script) -> ScriptedBackend {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let connections: Arc<Mutex<Vec<Recorded>>> = Arc::default();
        let conns = connections.clone();
        std::thread::spawn(move || {
            for conn in l.incoming() {
                let Ok(conn) = conn else { return };
                let rec: Recorded = Arc::default();
                conns.lock().unwrap().push(rec.clone());
                std::thread::spawn(move || scripted_session(conn, greeting, script, rec));
            }
        });
        ScriptedBackend { addr, connections }
    }

    /// Every connection's bytes (probes included), in accept order.
    pub fn transcripts(&self) -> Vec<String> {
        self.connections
            .lock()
            .unwrap()
            .iter()
            .map(|c| String::from_utf8_lossy(&c.lock().unwrap()).into_owned())
            .collect()
    }
}

fn scripted_session(mut conn: TcpStream, greeting: &str, script: Script, rec: Recorded) {
    let _ = conn.write_all(format!("{greeting}\r\n").as_bytes());
    let mut r = BufReader::new(conn.try_clone().unwrap());
    loop {
        let mut line = Vec::new();
        match r.read_until(b'\n', &mut line) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        rec.lock().unwrap().extend_from_slice(&line);
        let starts = |prefix: &str| {
            line.len() >= prefix.len()
                && line[..prefix.len()].eq_ignore_ascii_case(prefix.as_bytes())
        };
        let reply = match script.iter().find(|(prefix, _)| starts(prefix)) {
            Some((_, reply)) => *reply,
            None if starts("QUIT") => {
                let _ = conn.write_all(b"221 2.0.0 Bye\r\n");
                return;
            }
            None => "250 2.0.0 Ok",
        };
        if conn.write_all(format!("{reply}\r\n").as_bytes()).is_err() {
            return;
        }
    }
}
