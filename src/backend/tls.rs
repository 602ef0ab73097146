//! TLS to the backend (DESIGN.md §10): `tls = "starttls"` (plaintext
//! greeting, EHLO, STARTTLS, handshake) or `"implicit"` (handshake first),
//! always after the PROXY header and before XCLIENT.
//!
//! One rustls `ClientConfig` per pool, kept for the process's life, so
//! its session cache lets every handshake after the first resume (the
//! health probe's handshakes fill it too). A handshake failure is a
//! failure of that server: the pool fails over, the client gets 421 when
//! none is left, and the hop never falls back to plaintext.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use tokio_rustls::TlsConnector;

use super::{BackendError, BackendIo};
use crate::config::{BackendTlsConfig, BackendTlsMode};

/// A pool's TLS settings, ready to connect.
pub struct BackendTls {
    pub mode: BackendTlsMode,
    connector: TlsConnector,
    /// `tls_name`; `None`: each server's IP address, as
    /// `ServerName::IpAddress` (verified against the certificate's IP SANs).
    name: Option<ServerName<'static>>,
    pub verify: bool,
}

impl std::fmt::Debug for BackendTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BackendTls")
            .field("mode", &self.mode)
            .field("name", &self.name)
            .field("verify", &self.verify)
            .finish_non_exhaustive()
    }
}

/// What a completed handshake with a backend server was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TlsHop {
    pub version: &'static str,
    /// An abbreviated handshake (session resumption).
    pub resumed: bool,
}

impl BackendTls {
    /// Builds the pool's client config: roots from `tls_ca` or the system.
    pub fn new(config: &BackendTlsConfig) -> std::io::Result<Self> {
        let invalid = |m: String| std::io::Error::new(std::io::ErrorKind::InvalidData, m);
        let provider = Arc::new(crate::tls::provider::client_provider());
        let builder = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| invalid(format!("TLS versions: {e}")))?;
        let client = if config.verify {
            let roots = match &config.ca {
                Some(path) => roots_from(path)?,
                None => crate::tls::validate::TrustAnchors::load(None)
                    .map_err(|e| invalid(e.to_string()))?
                    .root_store(),
            };
            builder.with_root_certificates(roots).with_no_client_auth()
        } else {
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(NoVerification(provider)))
                .with_no_client_auth()
        };
        let name = match &config.name {
            None => None,
            Some(n) => Some(
                ServerName::try_from(n.clone())
                    .map_err(|e| invalid(format!("tls_name {n:?}: {e}")))?,
            ),
        };
        Ok(Self {
            mode: config.mode,
            connector: TlsConnector::from(Arc::new(client)),
            name,
            verify: config.verify,
        })
    }

    /// The handshake over `io`, bounded by `timeout`.
    pub async fn handshake(
        &self,
        io: Box<dyn BackendIo>,
        addr: SocketAddr,
        timeout: Duration,
    ) -> Result<(Box<dyn BackendIo>, TlsHop), BackendError> {
        let server = addr.to_string();
        let name = self
            .name
            .clone()
            .unwrap_or_else(|| ServerName::IpAddress(addr.ip().into()));
        let stream = match tokio::time::timeout(timeout, self.connector.connect(name, io)).await {
            Err(_) => return Err(BackendError::TlsTimeout { server, timeout }),
            Ok(Err(source)) => return Err(BackendError::Tls { server, source }),
            Ok(Ok(s)) => s,
        };
        let conn = stream.get_ref().1;
        let hop = TlsHop {
            version: match conn.protocol_version() {
                Some(rustls::ProtocolVersion::TLSv1_3) => "TLSv1.3",
                Some(rustls::ProtocolVersion::TLSv1_2) => "TLSv1.2",
                _ => "unknown",
            },
            resumed: conn.handshake_kind() == Some(rustls::HandshakeKind::Resumed),
        };
        Ok((Box::new(stream), hop))
    }
}

/// Every certificate in the PEM file `tls_ca`, as trust anchors.
fn roots_from(path: &Path) -> std::io::Result<RootCertStore> {
    let invalid = |m: String| std::io::Error::new(std::io::ErrorKind::InvalidData, m);
    let mut roots = RootCertStore::empty();
    let certs = CertificateDer::pem_file_iter(path).map_err(|e| {
        // A relative path is the working directory's, which under systemd
        // is not where the config file is: say so.
        let note = crate::config::relative_note(path).unwrap_or_default();
        invalid(format!("tls_ca {}: {e}{note}", path.display()))
    })?;
    for c in certs {
        let c = c.map_err(|e| invalid(format!("tls_ca {}: {e}", path.display())))?;
        roots
            .add(c)
            .map_err(|e| invalid(format!("tls_ca {}: {e}", path.display())))?;
    }
    if roots.is_empty() {
        return Err(invalid(format!(
            "tls_ca {}: no certificate in the file",
            path.display()
        )));
    }
    Ok(roots)
}

/// `tls_verify = false`: any certificate for any name (the handshake's
/// signatures are still checked, so the key holder is who we talk to).
#[derive(Debug)]
struct NoVerification(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for NoVerification {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
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
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
