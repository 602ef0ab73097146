//! The probe's TLS client: one rustls handshake at a chosen version, with
//! or without SNI. Its certificate verifier accepts any chain and only
//! records what it saw (the handshake signature is still checked, so the
//! server proved it holds the key); whether the chain is any good is
//! judged afterwards by `chain.rs`, never inside the handshake, so that a
//! bad chain is reported in full instead of aborting the handshake.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{WebPkiSupportedAlgorithms, verify_tls12_signature, verify_tls13_signature};
use rustls::{ClientConfig, DigitallySignedStruct, SignatureScheme};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use crate::tls::hello::Version;

/// The versions the probe asks for one at a time (TLS 1.0/1.1 are
/// `legacy.rs`'s: rustls cannot speak them).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Requested {
    Tls13,
    Tls12,
}

impl Requested {
    pub const ALL: [Requested; 2] = [Requested::Tls13, Requested::Tls12];

    pub fn as_str(&self) -> &'static str {
        self.version().as_str()
    }

    pub fn version(&self) -> Version {
        match self {
            Self::Tls13 => Version::Tls13,
            Self::Tls12 => Version::Tls12,
        }
    }

    fn rustls(&self) -> &'static rustls::SupportedProtocolVersion {
        match self {
            Self::Tls13 => &rustls::version::TLS13,
            Self::Tls12 => &rustls::version::TLS12,
        }
    }
}

/// What a completed handshake showed.
#[derive(Debug, Clone)]
pub struct TlsFacts {
    pub version: Version,
    /// rustls's name of the suite, e.g. `TLS13_AES_256_GCM_SHA384`.
    pub cipher: String,
    /// e.g. `X25519MLKEM768`, `X25519`.
    pub kx_group: Option<String>,
    /// The scheme the server signed the handshake with, e.g. `ECDSA_NISTP256_SHA256`.
    pub signature_scheme: Option<String>,
    /// The chain exactly as presented, in the server's order.
    pub chain: Vec<CertificateDer<'static>>,
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("TLS handshake failed")]
    Tls(#[source] rustls::Error),
    #[error("I/O error during the TLS handshake")]
    Io(#[source] std::io::Error),
    #[error("no TLS handshake within {0:?}")]
    Timeout(Duration),
    #[error("cannot build the TLS client")]
    Config(#[source] rustls::Error),
}

/// Handshakes on `io` (right after the server's 220 to STARTTLS). `name`
/// is sent as SNI when `sni` is true; without SNI it is only the name
/// rustls is given, never checked. Bounded by `timeout`.
pub async fn handshake<S>(
    io: S,
    name: ServerName<'static>,
    sni: bool,
    version: Requested,
    timeout: Duration,
) -> Result<(TlsStream<S>, TlsFacts), TlsError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let provider = Arc::new(crate::tls::provider::client_provider());
    let recorder = Arc::new(Recorder {
        algs: provider.signature_verification_algorithms,
        scheme: OnceLock::new(),
    });
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[version.rustls()])
        .map_err(TlsError::Config)?
        .dangerous()
        .with_custom_certificate_verifier(recorder.clone())
        .with_no_client_auth();
    config.enable_sni = sni;
    // No resumption: every handshake must show the full chain.
    config.resumption = rustls::client::Resumption::disabled();
    let connect = TlsConnector::from(Arc::new(config)).connect(name, io);
    let stream = match tokio::time::timeout(timeout, connect).await {
        Err(_) => return Err(TlsError::Timeout(timeout)),
        Ok(Err(e)) => return Err(classify(e)),
        Ok(Ok(s)) => s,
    };
    let conn = stream.get_ref().1;
    let facts = TlsFacts {
        version: conn
            .protocol_version()
            .map_or(Version::Unknown, |v| Version::from_wire(u16::from(v))),
        cipher: conn
            .negotiated_cipher_suite()
            .and_then(|s| s.suite().as_str())
            .unwrap_or("unknown")
            .to_string(),
        kx_group: conn
            .negotiated_key_exchange_group()
            .and_then(|g| g.name().as_str())
            .map(str::to_string),
        signature_scheme: recorder
            .scheme
            .get()
            .map(|s| s.as_str().unwrap_or("unknown").to_string()),
        chain: conn
            .peer_certificates()
            .map(<[_]>::to_vec)
            .unwrap_or_default(),
    };
    Ok((stream, facts))
}

/// tokio-rustls reports rustls errors inside an `io::Error`.
fn classify(e: std::io::Error) -> TlsError {
    if !e.get_ref().is_some_and(|i| i.is::<rustls::Error>()) {
        return TlsError::Io(e);
    }
    let kind = e.kind();
    match e.into_inner().map(|i| i.downcast::<rustls::Error>()) {
        Some(Ok(tls)) => TlsError::Tls(*tls),
        Some(Err(other)) => TlsError::Io(std::io::Error::new(kind, other)),
        None => TlsError::Io(kind.into()),
    }
}

/// Accepts any certificate; checks and records the handshake signature.
#[derive(Debug)]
struct Recorder {
    algs: WebPkiSupportedAlgorithms,
    scheme: OnceLock<SignatureScheme>,
}

impl ServerCertVerifier for Recorder {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        // Judged afterwards from the recorded chain (chain.rs).
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let _ = self.scheme.set(dss.scheme);
        verify_tls12_signature(message, cert, dss, &self.algs)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let _ = self.scheme.set(dss.scheme);
        verify_tls13_signature(message, cert, dss, &self.algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algs.supported_schemes()
    }
}
