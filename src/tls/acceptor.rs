//! The TLS handshake after `220 Ready to start TLS` (or at once on an
//! implicit-TLS listener): read the ClientHello, pick the certificate from
//! one store snapshot, finish the handshake — all under one deadline.

use std::io;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use rustls::server::{Acceptor, ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{ProtocolVersion, ServerConfig};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tokio_rustls::LazyConfigAcceptor;
use tokio_rustls::server::TlsStream;

use super::hello::{self, ClientHelloSummary, Progress, Replay, Version, alert_label};
use super::provider;
use super::store::{CertStore, Selection, SniMatch};
use crate::config::MinVersion;
use crate::telemetry::metrics;

/// What one successful handshake was, for the log line and metrics.
#[derive(Debug, Clone)]
pub struct HandshakeInfo {
    /// The SNI as validated by rustls (DNS characters only), lowercased.
    pub sni: Option<String>,
    pub sni_match: SniMatch,
    /// `[[certificate]] name` served.
    pub certificate: String,
    /// Serial of the leaf served (to follow a rotation in the logs).
    pub serial: String,
    pub version: &'static str,
    pub cipher: &'static str,
    /// Key exchange group (e.g. X25519), `none` on resumption.
    pub group: &'static str,
    pub duration: Duration,
}

/// Why a handshake failed: the cause, and what the client had offered.
#[derive(Debug, thiserror::Error)]
#[error("{error}")]
pub struct HandshakeFailure {
    #[source]
    pub error: HandshakeError,
    /// The client's ClientHello, when one was read and parsed.
    pub hello: Option<ClientHelloSummary>,
    /// The configured floor, to tell a version mismatch from the rest.
    min_version: MinVersion,
}

impl HandshakeFailure {
    /// A label from the fixed set of DESIGN.md §6 (the metric's `reason`).
    pub fn reason(&self) -> &'static str {
        let floor = match self.min_version {
            MinVersion::Tls12 => Version::Tls12,
            MinVersion::Tls13 => Version::Tls13,
        };
        let below_floor = self
            .hello
            .as_ref()
            .is_some_and(|h| h.max_version != Version::Unknown && h.max_version < floor);
        match &self.error {
            HandshakeError::Timeout(_) => "timeout",
            HandshakeError::Eof => "eof",
            HandshakeError::Reset => "reset",
            HandshakeError::NotTls => "not_tls",
            HandshakeError::Io(_) => "other:io",
            // Whatever rustls tripped over first, a client whose best is
            // below our floor failed because of the version.
            HandshakeError::Tls(_) if below_floor => "protocol_version",
            HandshakeError::Tls(e) => tls_reason(e, self.hello.is_some()),
        }
    }

    /// The highest version the client offered, for the log line.
    pub fn offered(&self) -> &'static str {
        self.hello
            .as_ref()
            .map_or("unknown", |h| h.max_version.as_str())
    }
}

fn tls_reason(e: &rustls::Error, hello_parsed: bool) -> &'static str {
    use rustls::{Error as E, PeerIncompatible as P};
    match e {
        E::AlertReceived(a) => alert_label(u8::from(*a)),
        // Nothing to agree on: cipher suite, key exchange (a TLS 1.2
        // client with RSA key exchange only) or signature scheme.
        E::PeerIncompatible(
            P::NoCipherSuitesInCommon | P::NoKxGroupsInCommon | P::NoSignatureSchemesInCommon,
        ) => "no_shared_cipher",
        E::PeerIncompatible(
            P::ServerDoesNotSupportTls12Or13
            | P::SupportedVersionsExtensionRequired
            | P::Tls12NotOffered
            | P::Tls12NotOfferedOrEnabled,
        ) => "protocol_version",
        E::PeerIncompatible(_) => "other:peer_incompatible",
        // Records that looked like TLS but were not a ClientHello either
        // we or rustls could read.
        E::InvalidMessage(_) if !hello_parsed => "not_tls",
        E::InvalidMessage(_) => "other:invalid_message",
        E::InappropriateMessage { .. } | E::InappropriateHandshakeMessage { .. } => {
            "other:inappropriate_message"
        }
        E::PeerMisbehaved(_) => "other:peer_misbehaved",
        E::InvalidCertificate(_) => "other:invalid_certificate",
        E::General(_) => "other:general",
        _ => "other:tls",
    }
}

/// The cause of a failed handshake.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    #[error("no complete handshake within {0:?}")]
    Timeout(Duration),
    #[error("connection closed during handshake")]
    Eof,
    #[error("connection reset during handshake")]
    Reset,
    #[error("not a TLS handshake")]
    NotTls,
    #[error("TLS error: {0}")]
    Tls(#[source] rustls::Error),
    #[error("I/O error during handshake: {0}")]
    Io(#[source] io::Error),
}

impl HandshakeError {
    fn from_io(e: io::Error) -> Self {
        let kind = e.kind();
        match kind {
            io::ErrorKind::UnexpectedEof => return Self::Eof,
            io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe => return Self::Reset,
            _ => {}
        }
        // tokio-rustls wraps the rustls error that ended the handshake.
        if !e.get_ref().is_some_and(|inner| inner.is::<rustls::Error>()) {
            return Self::Io(e);
        }
        match e
            .into_inner()
            .map(|inner| inner.downcast::<rustls::Error>())
        {
            Some(Ok(tls)) => Self::Tls(*tls),
            Some(Err(other)) => Self::Io(io::Error::new(kind, other)),
            None => Self::Io(io::Error::from(kind)),
        }
    }
}

/// Terminates TLS with certificates from the current store snapshot.
/// Clones share the state: a reload swaps the store (or the TLS settings)
/// for every listener at once; handshakes in progress keep what they took.
#[derive(Clone)]
pub struct TlsTerminator {
    base: Arc<ArcSwap<ServerConfig>>,
    store: Arc<ArcSwap<CertStore>>,
    /// The settings `base` was built from, to rebuild only on a change.
    settings: Arc<ArcSwap<TlsSettings>>,
}

/// The `[tls]` keys the base config is built from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct TlsSettings {
    min_version: MinVersion,
    session_tickets: u32,
    post_quantum: bool,
}

impl std::fmt::Debug for TlsTerminator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsTerminator").finish_non_exhaustive()
    }
}

/// The base config has no certificate: each handshake gets a copy whose
/// resolver returns the one certificate chosen for it.
#[derive(Debug)]
struct NoCertificate;

impl ResolvesServerCert for NoCertificate {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        None
    }
}

/// Chooses this handshake's certificate from one store snapshot and keeps
/// the decision for the log line. rustls calls it with the signature
/// schemes already narrowed to what the negotiated version and cipher suite
/// allow (a TLS 1.2 client offering only ECDHE-RSA suites must get RSA even
/// if it lists ECDSA schemes), which the early ClientHello does not do.
#[derive(Debug)]
struct ChooseOnce {
    store: Arc<CertStore>,
    chosen: OnceLock<Selection>,
}

impl ResolvesServerCert for ChooseOnce {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let selection = self
            .store
            .select(hello.server_name(), hello.signature_schemes());
        let key = selection.cert.key.clone();
        let _ = self.chosen.set(selection);
        Some(key)
    }
}

impl TlsTerminator {
    pub fn new(
        store: CertStore,
        min_version: MinVersion,
        session_tickets: u32,
        post_quantum: bool,
    ) -> Result<Self, rustls::Error> {
        let settings = TlsSettings {
            min_version,
            session_tickets,
            post_quantum,
        };
        let base = Self::base_config(settings)?;
        Ok(Self {
            base: Arc::new(ArcSwap::from_pointee(base)),
            store: Arc::new(ArcSwap::from_pointee(store)),
            settings: Arc::new(ArcSwap::from_pointee(settings)),
        })
    }

    fn base_config(settings: TlsSettings) -> Result<ServerConfig, rustls::Error> {
        provider::server_config(
            Arc::new(provider::server_provider(settings.post_quantum)),
            settings.min_version,
            settings.session_tickets,
            Arc::new(NoCertificate),
        )
    }

    /// The current certificate store.
    pub fn store(&self) -> Arc<CertStore> {
        self.store.load_full()
    }

    /// New handshakes use `store` from now on.
    pub fn swap_store(&self, store: CertStore) {
        self.store.store(Arc::new(store));
    }

    /// Applies TLS settings; returns whether anything changed.
    pub fn apply_settings(
        &self,
        min_version: MinVersion,
        session_tickets: u32,
        post_quantum: bool,
    ) -> Result<bool, rustls::Error> {
        let settings = TlsSettings {
            min_version,
            session_tickets,
            post_quantum,
        };
        if **self.settings.load() == settings {
            return Ok(false);
        }
        let base = Self::base_config(settings)?;
        self.base.store(Arc::new(base));
        self.settings.store(Arc::new(settings));
        Ok(true)
    }

    /// Runs the server side of a handshake on `io`, bounded by `timeout`.
    /// The ClientHello is read and inspected first (for telemetry), then
    /// replayed to rustls.
    pub async fn accept<IO>(
        &self,
        mut io: IO,
        timeout: Duration,
    ) -> Result<(TlsStream<Replay<IO>>, HandshakeInfo), HandshakeFailure>
    where
        IO: AsyncRead + AsyncWrite + Unpin,
    {
        let started = Instant::now();
        let deadline = tokio::time::Instant::now() + timeout;
        let min_version = self.settings.load().min_version;
        let fail = |error, hello| HandshakeFailure {
            error,
            hello,
            min_version,
        };
        let mut buf: Vec<u8> = Vec::with_capacity(2048);
        let hello = loop {
            match hello::progress(&buf) {
                Progress::Complete(n) => break hello::parse(&buf[..n]),
                Progress::GiveUp => break None,
                Progress::NotTls => return Err(fail(HandshakeError::NotTls, None)),
                Progress::NeedMore => {}
            }
            match tokio::time::timeout_at(deadline, io.read_buf(&mut buf)).await {
                Err(_) => return Err(fail(HandshakeError::Timeout(timeout), None)),
                Ok(Ok(0)) => return Err(fail(HandshakeError::Eof, None)),
                Ok(Ok(_)) => {}
                Ok(Err(e)) => return Err(fail(HandshakeError::from_io(e), None)),
            }
        };
        if let Some(h) = &hello {
            metrics::client_max_version(h.max_version.as_str());
        }
        let io = Replay::new(buf, io);
        let start = match tokio::time::timeout_at(
            deadline,
            LazyConfigAcceptor::new(Acceptor::default(), io),
        )
        .await
        {
            Err(_) => return Err(fail(HandshakeError::Timeout(timeout), hello)),
            Ok(Err(e)) => return Err(fail(HandshakeError::from_io(e), hello)),
            Ok(Ok(s)) => s,
        };

        let sni = start
            .client_hello()
            .server_name()
            .map(str::to_ascii_lowercase);
        let chooser = Arc::new(ChooseOnce {
            store: self.store.load_full(),
            chosen: OnceLock::new(),
        });
        let mut config = (**self.base.load()).clone();
        config.cert_resolver = chooser.clone();
        let stream =
            match tokio::time::timeout_at(deadline, start.into_stream(Arc::new(config))).await {
                Err(_) => return Err(fail(HandshakeError::Timeout(timeout), hello)),
                Ok(Err(e)) => return Err(fail(HandshakeError::from_io(e), hello)),
                Ok(Ok(s)) => s,
            };

        let (_, conn) = stream.get_ref();
        let version = match conn.protocol_version() {
            Some(ProtocolVersion::TLSv1_3) => "TLSv1.3",
            Some(ProtocolVersion::TLSv1_2) => "TLSv1.2",
            _ => "unknown",
        };
        let cipher = conn
            .negotiated_cipher_suite()
            .and_then(|s| s.suite().as_str())
            .unwrap_or("unknown");
        let group = conn
            .negotiated_key_exchange_group()
            .and_then(|g| g.name().as_str())
            .unwrap_or("none");
        let (sni_match, certificate, serial) = match chooser.chosen.get() {
            Some(s) => (s.sni, s.cert.name.clone(), s.cert.serial.clone()),
            // Resumption (tickets on) asks no resolver: classify the SNI the
            // same way; the certificate is the one of the earlier session.
            None => (
                chooser.store.select(sni.as_deref(), &[]).sni,
                "resumed".to_string(),
                String::new(),
            ),
        };
        let info = HandshakeInfo {
            sni,
            sni_match,
            certificate,
            serial,
            version,
            cipher,
            group,
            duration: started.elapsed(),
        };
        Ok((stream, info))
    }
}
