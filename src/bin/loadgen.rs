//! `starttls-loadgen`: the load generator of benches/compare.sh (issue #11).
//!
//! It drives a STARTTLS SMTP server on loopback (starttls-proxy, nginx's
//! mail proxy, stunnel, Postfix smtpd) the way a sending MTA does, with
//! tokio and rustls (aws-lc-rs, as the proxy), and prints one JSON object on
//! stdout:
//!
//! - `handshake`: connect, 220, EHLO, STARTTLS, a full handshake (no
//!   resumption), EHLO inside TLS, QUIT; latency is connect → the EHLO
//!   reply inside TLS.
//! - `message`: sessions that STARTTLS once (or stay plaintext with
//!   `--plain`, to reach a backend directly) and send `--messages` messages
//!   of `--size` bytes each; latency is MAIL FROM → the reply to the final dot.
//! - `idle`: opens `--sessions` STARTTLS sessions, reports on stderr (and
//!   `--ready-file`) when all are established, holds them `--hold` seconds,
//!   then QUITs each.
//!
//! Errors are counted by kind and never abort a run; the exit code is
//! non-zero only for usage errors (2). Targets must be loopback addresses
//! and every run is bounded in time and count.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::{Args, Parser, Subcommand, ValueEnum};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime, pem::PemObject};
use rustls::{DigitallySignedStruct, SignatureScheme};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// Longest reply line accepted from the server.
const MAX_LINE: u64 = 4096;
/// Most lines in one multi-line reply.
const MAX_REPLY_LINES: usize = 100;
/// Upper bounds that keep every run finite.
const MAX_DURATION_S: f64 = 3600.0;
const MAX_CONCURRENCY: usize = 50_000;

// === Command line ===

#[derive(Parser, Debug)]
#[command(
    name = "starttls-loadgen",
    about = "STARTTLS SMTP load generator (loopback only); prints one JSON object"
)]
struct Cli {
    #[command(subcommand)]
    mode: Mode,
}

#[derive(Subcommand, Debug)]
enum Mode {
    /// Full STARTTLS handshakes in a loop (connect … EHLO inside TLS, QUIT).
    Handshake {
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        bounds: Bounds,
    },
    /// Sessions that STARTTLS once and then send messages.
    Message {
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        bounds: Bounds,
        /// Message size in bytes (headers included, final dot excluded).
        #[arg(long, default_value_t = 4096)]
        size: usize,
        /// Messages per session before QUIT and a new session.
        #[arg(long, default_value_t = 100)]
        messages: u64,
        /// No STARTTLS: plaintext sessions (a backend reached directly).
        #[arg(long)]
        plain: bool,
    },
    /// Hold many established STARTTLS sessions open.
    Idle {
        #[command(flatten)]
        common: Common,
        /// Sessions to open and hold.
        #[arg(long, default_value_t = 1000)]
        sessions: usize,
        /// Seconds to hold them once all are established.
        #[arg(long, default_value_t = 10.0)]
        hold: f64,
        /// Created (with the JSON status line) when all are established.
        #[arg(long)]
        ready_file: Option<PathBuf>,
    },
}

#[derive(Args, Debug, Clone)]
struct Common {
    /// Server address; must be a loopback address.
    #[arg(long)]
    target: SocketAddr,
    /// TLS version to offer.
    #[arg(long, value_enum, default_value_t = TlsVersion::Any)]
    tls: TlsVersion,
    /// Server name sent as SNI and checked against the certificate.
    #[arg(long)]
    sni: Option<String>,
    /// Check the name given by --sni but do not send SNI.
    #[arg(long)]
    no_sni: bool,
    /// Trust anchors (PEM) for verifying the server's chain.
    #[arg(long, conflicts_with = "insecure")]
    ca: Option<PathBuf>,
    /// Skip chain and name checks (handshake signatures are still verified).
    #[arg(long)]
    insecure: bool,
    /// Restrict the signature schemes offered (steers an RSA+ECDSA server).
    #[arg(long, value_enum, default_value_t = SigAlgs::Any)]
    sigalgs: SigAlgs,
    /// Concurrent connections.
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// Per-step timeout in seconds (connect, each reply, the handshake).
    #[arg(long, default_value_t = 10.0)]
    timeout: f64,
    /// Runtime worker threads (default: the CPUs this process may use).
    #[arg(long)]
    threads: Option<usize>,
    /// Name sent with EHLO.
    #[arg(long, default_value = "loadgen.test")]
    ehlo: String,
    /// Offer the hybrid post-quantum group X25519MLKEM768 first (off by
    /// default: the peers compared against cannot negotiate it, and a
    /// comparison must ask every server for the same work).
    #[arg(long)]
    post_quantum: bool,
}

#[derive(Args, Debug)]
struct Bounds {
    /// Run for this many seconds (default 10 when --count is not given).
    #[arg(long)]
    duration: Option<f64>,
    /// Stop after this many handshakes (handshake) or messages (message).
    #[arg(long)]
    count: Option<u64>,
    /// Start at most this many handshakes or messages per second, evenly
    /// spaced (default: as fast as the connections go). Latency at a fixed
    /// load below saturation, without queueing in it.
    #[arg(long)]
    rate: Option<f64>,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq)]
enum TlsVersion {
    #[value(name = "1.2")]
    V12,
    #[value(name = "1.3")]
    V13,
    Any,
}

impl TlsVersion {
    fn as_str(self) -> &'static str {
        match self {
            Self::V12 => "1.2",
            Self::V13 => "1.3",
            Self::Any => "any",
        }
    }
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq)]
enum SigAlgs {
    Rsa,
    Ecdsa,
    Any,
}

impl SigAlgs {
    fn as_str(self) -> &'static str {
        match self {
            Self::Rsa => "rsa",
            Self::Ecdsa => "ecdsa",
            Self::Any => "any",
        }
    }

    fn allows(self, s: SignatureScheme) -> bool {
        use SignatureScheme as S;
        match self {
            Self::Any => true,
            Self::Rsa => matches!(
                s,
                S::RSA_PSS_SHA256
                    | S::RSA_PSS_SHA384
                    | S::RSA_PSS_SHA512
                    | S::RSA_PKCS1_SHA256
                    | S::RSA_PKCS1_SHA384
                    | S::RSA_PKCS1_SHA512
            ),
            Self::Ecdsa => matches!(
                s,
                S::ECDSA_NISTP256_SHA256 | S::ECDSA_NISTP384_SHA384 | S::ECDSA_NISTP521_SHA512
            ),
        }
    }
}

// === Errors ===

/// Why one session failed; `as_str` is its key in `errors_by_kind`.
#[derive(Debug, Clone, Copy)]
enum Failure {
    Connect,
    Timeout,
    Io,
    Eof,
    BadReply,
    Greeting,
    Ehlo,
    StartTls,
    Tls,
    Transaction,
}

impl Failure {
    fn as_str(self) -> &'static str {
        match self {
            Self::Connect => "connect",
            Self::Timeout => "timeout",
            Self::Io => "io",
            Self::Eof => "eof",
            Self::BadReply => "bad_reply",
            Self::Greeting => "greeting",
            Self::Ehlo => "ehlo",
            Self::StartTls => "starttls",
            Self::Tls => "tls",
            Self::Transaction => "transaction",
        }
    }
}

impl From<std::io::Error> for Failure {
    fn from(e: std::io::Error) -> Self {
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            Self::Eof
        } else {
            Self::Io
        }
    }
}

// === Shared run state ===

/// Counters and samples of one run, shared by all workers.
#[derive(Default)]
struct Tally {
    completed: AtomicU64,
    sessions: AtomicU64,
    bytes: AtomicU64,
    errors: Mutex<BTreeMap<&'static str, u64>>,
    latencies_us: Mutex<Vec<u64>>,
    /// Handshake signature schemes the servers used (seen by the verifier).
    server_schemes: Mutex<BTreeMap<String, u64>>,
    /// Negotiated "version suite" pairs.
    negotiated: Mutex<BTreeMap<String, u64>>,
}

impl Tally {
    fn error(&self, f: Failure) {
        if let Ok(mut m) = self.errors.lock() {
            *m.entry(f.as_str()).or_default() += 1;
        }
    }

    fn latencies(&self, samples: &[u64]) {
        if let Ok(mut v) = self.latencies_us.lock() {
            v.extend_from_slice(samples);
        }
    }

    fn count(map: &Mutex<BTreeMap<String, u64>>, key: String) {
        if let Ok(mut m) = map.lock() {
            *m.entry(key).or_default() += 1;
        }
    }
}

/// When workers stop: a deadline and/or a count of operations.
struct Budget {
    deadline: Instant,
    count: Option<u64>,
    issued: AtomicU64,
    /// `--rate`: the interval between starts, and when the next may start.
    pace: Option<(Duration, std::sync::Mutex<Instant>)>,
}

impl Budget {
    fn new(deadline: Instant, count: Option<u64>, rate: Option<f64>) -> Budget {
        Budget {
            deadline,
            count,
            issued: AtomicU64::new(0),
            pace: rate.map(|r| {
                (
                    Duration::from_secs_f64(1.0 / r),
                    std::sync::Mutex::new(Instant::now()),
                )
            }),
        }
    }

    /// Whether anything may still be claimed.
    fn open(&self) -> bool {
        Instant::now() < self.deadline
            && self
                .count
                .is_none_or(|n| self.issued.load(Ordering::Relaxed) < n)
    }

    /// Claims one operation; false once the count or the deadline is
    /// reached. Under `--rate`, waits for the next start slot: slots are
    /// one interval apart and never in the past, so a stretch in which
    /// nothing was ready (sessions still connecting) is not made up for
    /// with a burst.
    async fn claim(&self) -> bool {
        if Instant::now() >= self.deadline {
            return false;
        }
        if self
            .count
            .is_some_and(|n| self.issued.fetch_add(1, Ordering::Relaxed) >= n)
        {
            return false;
        }
        if let Some((interval, next)) = &self.pace {
            let slot = match next.lock() {
                Ok(mut next) => {
                    let slot = (*next).max(Instant::now());
                    *next = slot + *interval;
                    slot
                }
                Err(_) => return false,
            };
            if slot >= self.deadline {
                return false;
            }
            tokio::time::sleep_until(slot.into()).await;
        }
        true
    }
}

// === TLS client configuration ===

/// Verifies as asked (chain and name, or only signatures) and offers only
/// the signature schemes `--sigalgs` allows; records what servers used.
#[derive(Debug)]
struct Verifier {
    chain: Option<Arc<rustls::client::WebPkiServerVerifier>>,
    provider: Arc<CryptoProvider>,
    sigalgs: SigAlgs,
    seen: Arc<Mutex<BTreeMap<String, u64>>>,
}

impl Verifier {
    fn record(&self, scheme: SignatureScheme) {
        if let Ok(mut m) = self.seen.lock() {
            *m.entry(format!("{scheme:?}")).or_default() += 1;
        }
    }
}

impl ServerCertVerifier for Verifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match &self.chain {
            Some(v) => v.verify_server_cert(end_entity, intermediates, server_name, ocsp, now),
            None => Ok(ServerCertVerified::assertion()),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.record(dss.scheme);
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.record(dss.scheme);
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
            .into_iter()
            .filter(|s| self.sigalgs.allows(*s))
            .collect()
    }
}

fn tls_config(
    c: &Common,
    seen: Arc<Mutex<BTreeMap<String, u64>>>,
) -> Result<rustls::ClientConfig, String> {
    // aws-lc-rs, as the proxy: a faster client leaves more of its core to
    // load generation.
    let mut provider = rustls::crypto::aws_lc_rs::default_provider();
    if !c.post_quantum {
        provider.kx_groups = vec![
            rustls::crypto::aws_lc_rs::kx_group::X25519,
            rustls::crypto::aws_lc_rs::kx_group::SECP256R1,
        ];
    }
    let provider = Arc::new(provider);
    let chain = match &c.ca {
        Some(path) => {
            let mut roots = rustls::RootCertStore::empty();
            let certs = CertificateDer::pem_file_iter(path)
                .map_err(|e| format!("--ca {}: {e}", path.display()))?;
            for cert in certs {
                let cert = cert.map_err(|e| format!("--ca {}: {e}", path.display()))?;
                roots
                    .add(cert)
                    .map_err(|e| format!("--ca {}: {e}", path.display()))?;
            }
            let v = rustls::client::WebPkiServerVerifier::builder_with_provider(
                Arc::new(roots),
                provider.clone(),
            )
            .build()
            .map_err(|e| format!("--ca {}: {e}", path.display()))?;
            Some(v)
        }
        None if c.insecure => None,
        None => return Err("give --ca FILE or --insecure".into()),
    };
    let versions: &[&'static rustls::SupportedProtocolVersion] = match c.tls {
        TlsVersion::V12 => &[&rustls::version::TLS12],
        TlsVersion::V13 => &[&rustls::version::TLS13],
        TlsVersion::Any => rustls::DEFAULT_VERSIONS,
    };
    let verifier = Verifier {
        chain,
        provider: provider.clone(),
        sigalgs: c.sigalgs,
        seen,
    };
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .map_err(|e| format!("--tls {}: {e}", c.tls.as_str()))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    // Every handshake is a full one: no tickets, no session IDs.
    config.resumption = rustls::client::Resumption::disabled();
    config.enable_sni = !c.no_sni && c.sni.is_some();
    Ok(config)
}

// === SMTP over any stream ===

/// One SMTP connection, plaintext or inside TLS.
struct Smtp<S> {
    io: BufReader<S>,
    timeout: Duration,
    line: Vec<u8>,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Smtp<S> {
    fn new(io: S, timeout: Duration) -> Self {
        Self {
            io: BufReader::with_capacity(16 * 1024, io),
            timeout,
            line: Vec::with_capacity(512),
        }
    }

    /// Reads one (multi-line) reply and returns its code.
    async fn reply(&mut self) -> Result<u16, Failure> {
        tokio::time::timeout(self.timeout, self.reply_inner())
            .await
            .map_err(|_| Failure::Timeout)?
    }

    async fn reply_inner(&mut self) -> Result<u16, Failure> {
        for _ in 0..MAX_REPLY_LINES {
            self.line.clear();
            let n = (&mut self.io)
                .take(MAX_LINE)
                .read_until(b'\n', &mut self.line)
                .await?;
            if n == 0 {
                return Err(Failure::Eof);
            }
            let l = &self.line;
            if l.len() < 4 || !l[..3].iter().all(u8::is_ascii_digit) {
                return Err(Failure::BadReply);
            }
            let code =
                u16::from(l[0] - b'0') * 100 + u16::from(l[1] - b'0') * 10 + u16::from(l[2] - b'0');
            match l[3] {
                b'-' => continue,
                b' ' | b'\r' | b'\n' => return Ok(code),
                _ => return Err(Failure::BadReply),
            }
        }
        Err(Failure::BadReply)
    }

    async fn send(&mut self, data: &[u8]) -> Result<(), Failure> {
        let io = self.io.get_mut();
        tokio::time::timeout(self.timeout, async {
            io.write_all(data).await?;
            io.flush().await
        })
        .await
        .map_err(|_| Failure::Timeout)?
        .map_err(Failure::from)
    }

    /// Sends a command and expects a reply of class `class` (2, 3…).
    async fn cmd(&mut self, line: &[u8], class: u16, fail: Failure) -> Result<(), Failure> {
        self.send(line).await?;
        let code = self.reply().await?;
        if code / 100 == class {
            Ok(())
        } else {
            Err(fail)
        }
    }

    /// QUIT and read 221; a server that closes instead is fine too.
    async fn quit(&mut self) {
        if self.send(b"QUIT\r\n").await.is_ok() {
            let _ = self.reply().await;
        }
        let _ = self.io.get_mut().shutdown().await;
    }

    /// One transaction: MAIL, RCPT, DATA, content, dot.
    async fn transaction(&mut self, content: &[u8]) -> Result<(), Failure> {
        self.cmd(
            b"MAIL FROM:<loadgen@loadgen.test>\r\n",
            2,
            Failure::Transaction,
        )
        .await?;
        self.cmd(b"RCPT TO:<sink@example.test>\r\n", 2, Failure::Transaction)
            .await?;
        self.cmd(b"DATA\r\n", 3, Failure::Transaction).await?;
        self.cmd(content, 2, Failure::Transaction).await
    }
}

/// What every session needs, shared.
struct Ctx {
    target: SocketAddr,
    timeout: Duration,
    ehlo: Vec<u8>,
    connector: tokio_rustls::TlsConnector,
    server_name: ServerName<'static>,
    tally: Tally,
}

type TlsSmtp = Smtp<tokio_rustls::client::TlsStream<TcpStream>>;

impl Ctx {
    async fn connect(&self) -> Result<Smtp<TcpStream>, Failure> {
        let tcp = tokio::time::timeout(self.timeout, TcpStream::connect(self.target))
            .await
            .map_err(|_| Failure::Timeout)?
            .map_err(|_| Failure::Connect)?;
        let _ = tcp.set_nodelay(true);
        let mut s = Smtp::new(tcp, self.timeout);
        if s.reply().await? != 220 {
            return Err(Failure::Greeting);
        }
        s.cmd(&self.ehlo, 2, Failure::Ehlo).await?;
        Ok(s)
    }

    /// Connect … STARTTLS, handshake, EHLO inside TLS.
    async fn establish(&self) -> Result<TlsSmtp, Failure> {
        let mut s = self.connect().await?;
        s.cmd(b"STARTTLS\r\n", 2, Failure::StartTls).await?;
        // Nothing may follow the 220 before the handshake (DESIGN §2).
        if !s.io.buffer().is_empty() {
            return Err(Failure::StartTls);
        }
        let tcp = s.io.into_inner();
        let tls = tokio::time::timeout(
            self.timeout,
            self.connector.connect(self.server_name.clone(), tcp),
        )
        .await
        .map_err(|_| Failure::Timeout)?
        .map_err(|_| Failure::Tls)?;
        {
            let (_, conn) = tls.get_ref();
            let version = conn
                .protocol_version()
                .map(|v| format!("{v:?}"))
                .unwrap_or_default();
            let suite = conn
                .negotiated_cipher_suite()
                .map(|s| format!("{:?}", s.suite()))
                .unwrap_or_default();
            Tally::count(&self.tally.negotiated, format!("{version} {suite}"));
        }
        let mut s = Smtp::new(tls, self.timeout);
        s.cmd(&self.ehlo, 2, Failure::Ehlo).await?;
        Ok(s)
    }
}

// === Modes ===

async fn handshake_worker(ctx: Arc<Ctx>, budget: Arc<Budget>) {
    let mut lat = Vec::new();
    while budget.claim().await {
        let start = Instant::now();
        match ctx.establish().await {
            Ok(mut s) => {
                lat.push(micros(start.elapsed()));
                ctx.tally.completed.fetch_add(1, Ordering::Relaxed);
                s.quit().await;
            }
            Err(f) => ctx.tally.error(f),
        }
    }
    ctx.tally.latencies(&lat);
}

struct MessageJob {
    /// The message and its final dot.
    content: Arc<[u8]>,
    /// The message's size without the final dot.
    size: u64,
    per_session: u64,
    plain: bool,
}

/// A message session, plaintext (`--plain`) or after STARTTLS.
enum Session {
    Plain(Smtp<TcpStream>),
    Tls(Box<TlsSmtp>),
}

async fn message_worker(ctx: Arc<Ctx>, budget: Arc<Budget>, job: Arc<MessageJob>) {
    let mut lat = Vec::new();
    // A session is set up first, then each message claims its turn: under
    // `--rate` a slot is not spent waiting for a handshake.
    while budget.open() {
        let session = if job.plain {
            ctx.connect().await.map(Session::Plain)
        } else {
            ctx.establish().await.map(|s| Session::Tls(Box::new(s)))
        };
        let more = match session {
            Ok(Session::Plain(s)) => session_messages(&ctx, &budget, &job, s, &mut lat).await,
            Ok(Session::Tls(s)) => session_messages(&ctx, &budget, &job, *s, &mut lat).await,
            Err(f) => {
                ctx.tally.error(f);
                // A failed session uses up a turn: a dead target cannot
                // make a --count run spin until its time is up.
                budget.claim().await
            }
        };
        if !more {
            break;
        }
    }
    ctx.tally.latencies(&lat);
}

/// Sends messages on one session while the budget allows; returns whether
/// the budget still allows more (a new session, after QUIT or an error).
async fn session_messages<S: AsyncRead + AsyncWrite + Unpin>(
    ctx: &Ctx,
    budget: &Budget,
    job: &MessageJob,
    mut s: Smtp<S>,
    lat: &mut Vec<u64>,
) -> bool {
    ctx.tally.sessions.fetch_add(1, Ordering::Relaxed);
    for _ in 0..job.per_session {
        if !budget.claim().await {
            s.quit().await;
            return false;
        }
        let start = Instant::now();
        match s.transaction(&job.content).await {
            Ok(()) => {
                lat.push(micros(start.elapsed()));
                ctx.tally.completed.fetch_add(1, Ordering::Relaxed);
                ctx.tally.bytes.fetch_add(job.size, Ordering::Relaxed);
            }
            Err(f) => {
                ctx.tally.error(f);
                return true;
            }
        }
    }
    s.quit().await;
    true
}

/// A message of `size` bytes: a few headers, then lines of 76 characters.
fn message_content(size: usize) -> Arc<[u8]> {
    let mut m = Vec::with_capacity(size + 80);
    m.extend_from_slice(
        b"From: <loadgen@loadgen.test>\r\nTo: <sink@example.test>\r\nSubject: loadgen\r\n\r\n",
    );
    let alphabet = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
    let mut k = 0usize;
    while m.len() + 2 < size {
        let n = (size - m.len() - 2).min(76);
        for _ in 0..n {
            m.push(alphabet[k % alphabet.len()]);
            k += 7;
        }
        m.extend_from_slice(b"\r\n");
    }
    m.extend_from_slice(b".\r\n");
    m.into()
}

async fn idle(
    ctx: Arc<Ctx>,
    sessions: usize,
    concurrency: usize,
    hold: Duration,
    ready_file: Option<PathBuf>,
) -> (f64, u64) {
    let gate = Arc::new(tokio::sync::Semaphore::new(concurrency));
    let (release_tx, release_rx) = tokio::sync::watch::channel(false);
    let (done_tx, mut done_rx) = tokio::sync::mpsc::channel::<bool>(sessions.max(1));
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..sessions {
        let ctx = ctx.clone();
        let gate = gate.clone();
        let mut release = release_rx.clone();
        let done = done_tx.clone();
        tasks.spawn(async move {
            // Latency counts from the permit, not from the wait for it.
            let established = match gate.acquire().await {
                Ok(_permit) => {
                    let t0 = Instant::now();
                    ctx.establish().await.map(|s| (s, t0.elapsed()))
                }
                Err(_) => Err(Failure::Io),
            };
            match established {
                Ok((mut s, took)) => {
                    ctx.tally.latencies(&[micros(took)]);
                    let _ = done.send(true).await;
                    let _ = release.wait_for(|r| *r).await;
                    s.quit().await;
                    ctx.tally.completed.fetch_add(1, Ordering::Relaxed);
                }
                Err(f) => {
                    ctx.tally.error(f);
                    let _ = done.send(false).await;
                }
            }
        });
    }
    drop(done_tx);
    let mut established = 0u64;
    let mut failed = 0u64;
    while established + failed < sessions as u64 {
        match done_rx.recv().await {
            Some(true) => established += 1,
            Some(false) => failed += 1,
            None => break,
        }
    }
    let established_s = start.elapsed().as_secs_f64();
    let status = json!({
        "event": "established",
        "established": established,
        "failed": failed,
        "elapsed_s": established_s,
    });
    eprintln!("{status}");
    if let Some(path) = ready_file
        && let Err(e) = std::fs::write(&path, format!("{status}\n"))
    {
        eprintln!("starttls-loadgen: cannot write {}: {e}", path.display());
    }
    tokio::time::sleep(hold).await;
    let _ = release_tx.send(true);
    while tasks.join_next().await.is_some() {}
    (established_s, established)
}

// === Report ===

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

fn percentiles(mut v: Vec<u64>) -> Value {
    if v.is_empty() {
        return json!({ "p50": null, "p90": null, "p99": null, "max": null });
    }
    v.sort_unstable();
    let at = |q: f64| {
        let i = ((v.len() as f64 * q).ceil() as usize).clamp(1, v.len()) - 1;
        v[i] as f64 / 1000.0
    };
    json!({ "p50": at(0.50), "p90": at(0.90), "p99": at(0.99), "max": at(1.0) })
}

fn report(mode: &str, parameters: Value, tally: &Tally, elapsed: Duration) -> Value {
    let completed = tally.completed.load(Ordering::Relaxed);
    let errors = tally.errors.lock().map(|m| m.clone()).unwrap_or_default();
    let elapsed_s = elapsed.as_secs_f64();
    let latencies = tally
        .latencies_us
        .lock()
        .map(|v| v.clone())
        .unwrap_or_default();
    let rate = if elapsed_s > 0.0 {
        completed as f64 / elapsed_s
    } else {
        0.0
    };
    json!({
        "mode": mode,
        "parameters": parameters,
        "completed": completed,
        "errors": errors.values().sum::<u64>(),
        "errors_by_kind": errors,
        "elapsed_s": elapsed_s,
        "rate_per_s": rate,
        "latency_ms": percentiles(latencies),
        "negotiated": tally.negotiated.lock().map(|m| m.clone()).unwrap_or_default(),
        "server_signature_schemes": tally.server_schemes.lock().map(|m| m.clone()).unwrap_or_default(),
    })
}

// === main ===

fn usage(msg: &str) -> ExitCode {
    eprintln!("starttls-loadgen: {msg}");
    ExitCode::from(2)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let common = match &cli.mode {
        Mode::Handshake { common, .. }
        | Mode::Message { common, .. }
        | Mode::Idle { common, .. } => common,
    };
    if !common.target.ip().is_loopback() {
        return usage("--target must be a loopback address (benchmarks stay on this machine)");
    }
    if common.concurrency == 0 || common.concurrency > MAX_CONCURRENCY {
        return usage(&format!("--concurrency must be 1..={MAX_CONCURRENCY}"));
    }
    if !(common.timeout > 0.0 && common.timeout <= 600.0) {
        return usage("--timeout must be in (0, 600] seconds");
    }
    if let Mode::Handshake { bounds, .. } | Mode::Message { bounds, .. } = &cli.mode
        && let Some(d) = bounds.duration
        && !(d > 0.0 && d <= MAX_DURATION_S)
    {
        return usage(&format!(
            "--duration must be in (0, {MAX_DURATION_S}] seconds"
        ));
    }
    if let Mode::Handshake { bounds, .. } | Mode::Message { bounds, .. } = &cli.mode
        && let Some(r) = bounds.rate
        && !(r > 0.0 && r <= 1_000_000.0)
    {
        return usage("--rate must be in (0, 1000000] per second");
    }
    match &cli.mode {
        Mode::Message { size, messages, .. } => {
            if *size < 100 || *size > 512 * 1024 * 1024 {
                return usage("--size must be 100 bytes .. 512 MiB");
            }
            if *messages == 0 {
                return usage("--messages must be at least 1");
            }
        }
        Mode::Idle { sessions, hold, .. } => {
            if *sessions == 0 || *sessions > 1_000_000 {
                return usage("--sessions must be 1..=1000000");
            }
            if !(*hold >= 0.0 && *hold <= MAX_DURATION_S) {
                return usage(&format!("--hold must be in [0, {MAX_DURATION_S}] seconds"));
            }
        }
        Mode::Handshake { .. } => {}
    }
    let plain = matches!(cli.mode, Mode::Message { plain: true, .. });
    let tally = Tally::default();
    let seen = Arc::new(Mutex::new(BTreeMap::new()));
    let config = if plain && common.ca.is_none() && !common.insecure {
        // No TLS is used: any config will do.
        match tls_config(
            &Common {
                insecure: true,
                ..common.clone()
            },
            seen.clone(),
        ) {
            Ok(c) => c,
            Err(e) => return usage(&e),
        }
    } else {
        match tls_config(common, seen.clone()) {
            Ok(c) => c,
            Err(e) => return usage(&e),
        }
    };
    let server_name = match &common.sni {
        Some(name) => match ServerName::try_from(name.clone()) {
            Ok(n) => n,
            Err(e) => return usage(&format!("--sni {name}: {e}")),
        },
        None => ServerName::IpAddress(common.target.ip().into()),
    };
    let ctx = Arc::new(Ctx {
        target: common.target,
        timeout: Duration::from_secs_f64(common.timeout),
        ehlo: format!("EHLO {}\r\n", common.ehlo).into_bytes(),
        connector: tokio_rustls::TlsConnector::from(Arc::new(config)),
        server_name,
        tally,
    });
    let threads = common
        .threads
        .or_else(|| std::thread::available_parallelism().ok().map(|n| n.get()))
        .unwrap_or(1)
        .max(1);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => return usage(&format!("cannot start the runtime: {e}")),
    };
    let mut params = json!({
        "target": common.target.to_string(),
        "tls": common.tls.as_str(),
        "sni": common.sni,
        "sigalgs": common.sigalgs.as_str(),
        "verify": if common.ca.is_some() { "chain" } else { "none" },
        "concurrency": common.concurrency,
        "threads": threads,
    });
    let started = Instant::now();
    let (mode, elapsed) = runtime.block_on(async {
        match &cli.mode {
            Mode::Handshake { bounds, .. } | Mode::Message { bounds, .. } => {
                let duration = bounds.duration.unwrap_or(if bounds.count.is_some() {
                    MAX_DURATION_S
                } else {
                    10.0
                });
                params["duration_s"] = json!(bounds.duration);
                params["count"] = json!(bounds.count);
                params["rate_limit"] = json!(bounds.rate);
                let budget = Arc::new(Budget::new(
                    started + Duration::from_secs_f64(duration),
                    bounds.count,
                    bounds.rate,
                ));
                let mut set = tokio::task::JoinSet::new();
                let mode = if let Mode::Message {
                    size,
                    messages,
                    plain,
                    ..
                } = &cli.mode
                {
                    params["size"] = json!(size);
                    params["messages_per_session"] = json!(messages);
                    params["plain"] = json!(plain);
                    let job = Arc::new(MessageJob {
                        content: message_content(*size),
                        size: *size as u64,
                        per_session: *messages,
                        plain: *plain,
                    });
                    for _ in 0..common.concurrency {
                        set.spawn(message_worker(ctx.clone(), budget.clone(), job.clone()));
                    }
                    "message"
                } else {
                    for _ in 0..common.concurrency {
                        set.spawn(handshake_worker(ctx.clone(), budget.clone()));
                    }
                    "handshake"
                };
                while set.join_next().await.is_some() {}
                (mode, started.elapsed())
            }
            Mode::Idle {
                sessions,
                hold,
                ready_file,
                ..
            } => {
                params["sessions"] = json!(sessions);
                params["hold_s"] = json!(hold);
                let (established_s, established) = idle(
                    ctx.clone(),
                    *sessions,
                    common.concurrency,
                    Duration::from_secs_f64(*hold),
                    ready_file.clone(),
                )
                .await;
                params["established_s"] = json!(established_s);
                params["established"] = json!(established);
                ("idle", started.elapsed())
            }
        }
    });
    if let Ok(s) = seen.lock()
        && let Ok(mut t) = ctx.tally.server_schemes.lock()
    {
        *t = s.clone();
    }
    let mut out = report(mode, params, &ctx.tally, elapsed);
    if mode == "message" {
        let bytes = ctx.tally.bytes.load(Ordering::Relaxed);
        let secs = elapsed.as_secs_f64().max(f64::MIN_POSITIVE);
        out["sessions"] = json!(ctx.tally.sessions.load(Ordering::Relaxed));
        out["bytes"] = json!(bytes);
        out["mib_per_s"] = json!(bytes as f64 / (1024.0 * 1024.0) / secs);
    }
    println!("{out}");
    ExitCode::SUCCESS
}
