//! The crypto provider, named in this one place: aws-lc-rs.
//!
//! Chosen over ring by measurement (`benches/handshake.rs`, and the numbers
//! in the commit that switched): its RSA signing is several times faster on
//! x86-64, and it has ML-KEM, so the hybrid post-quantum group
//! X25519MLKEM768 can be offered (DESIGN.md §2). Everything in `src/` that
//! needs a provider (handshakes, key loading, hashing) asks here.

use std::sync::Arc;

use rustls::ServerConfig;
use rustls::crypto::aws_lc_rs::{self, kx_group};
use rustls::crypto::{CryptoProvider, SupportedKxGroup};
use rustls::server::ResolvesServerCert;
use rustls::sign::SigningKey;
use rustls_pki_types::PrivateKeyDer;

use crate::config::MinVersion;

/// Seeds aws-lc's random generator now. Its first use in a process
/// gathers entropy from CPU jitter (its tree DRBG): about 420 million
/// instructions under callgrind, a tenth of a second or more, which would
/// otherwise land in the first sender's handshake after every start.
pub fn warm_up_random() -> Result<(), rustls::crypto::GetRandomFailed> {
    let mut seed = [0u8; 32];
    aws_lc_rs::default_provider().secure_random.fill(&mut seed)
}

/// The key exchange groups offered, in order of preference (DESIGN.md §2):
/// the hybrid X25519MLKEM768 first unless `post_quantum` is off, then
/// X25519, P-256, P-384. rustls follows the client's order among the groups
/// both sides have; a client that lists the hybrid group first gets it.
pub fn kx_groups(post_quantum: bool) -> Vec<&'static dyn SupportedKxGroup> {
    let classic = [kx_group::X25519, kx_group::SECP256R1, kx_group::SECP384R1];
    let hybrid = post_quantum.then_some(kx_group::X25519MLKEM768);
    hybrid.into_iter().chain(classic).collect()
}

/// The cipher suites, in the server's order of preference: aws-lc-rs's
/// set, AES-128-GCM first (as Go's crypto/tls and BoringSSL order them),
/// then AES-256-GCM, then ChaCha20-Poly1305. The suite decides the hash of
/// the handshake (transcript, key schedule, TLS 1.2 PRF): SHA-256 for
/// AES-128, SHA-384 for AES-256. On AMD CPUs aws-lc computes SHA-384 with
/// its generic code (it takes the AVX path on Intel only) but SHA-256 with
/// the SHA extensions: perf showed SHA-512 rounds at 9 % of the proxy's
/// CPU per ECDSA handshake when the client's AES-256 preference was
/// followed (docs/benchmarks.md). AES-128-GCM is in every current
/// recommendation for TLS 1.2 and 1.3.
pub fn cipher_suites() -> Vec<rustls::SupportedCipherSuite> {
    use aws_lc_rs::cipher_suite::*;
    vec![
        TLS13_AES_128_GCM_SHA256,
        TLS13_AES_256_GCM_SHA384,
        TLS13_CHACHA20_POLY1305_SHA256,
        TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
        TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
        TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
        TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
        TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
        TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
    ]
}

/// The provider the proxy terminates TLS with: the cipher suites of
/// [`cipher_suites`], aws-lc-rs's signature algorithms, the key exchange
/// groups of [`kx_groups`].
pub fn server_provider(post_quantum: bool) -> CryptoProvider {
    CryptoProvider {
        cipher_suites: cipher_suites(),
        kx_groups: kx_groups(post_quantum),
        ..aws_lc_rs::default_provider()
    }
}

/// The server config every handshake starts from, before its certificate
/// is chosen (`resolver` decides that). `provider` is a parameter so that
/// benches can compare providers with everything else equal; the proxy
/// passes [`server_provider`]. TLS 1.3 tickets are sent only when
/// `session_tickets > 0`: Microsoft's senders abort STARTTLS against
/// servers that send them (DESIGN.md §2).
pub fn server_config(
    provider: Arc<CryptoProvider>,
    min_version: MinVersion,
    session_tickets: u32,
    resolver: Arc<dyn ResolvesServerCert>,
) -> Result<ServerConfig, rustls::Error> {
    let versions: &[&'static rustls::SupportedProtocolVersion] = match min_version {
        MinVersion::Tls12 => &[&rustls::version::TLS13, &rustls::version::TLS12],
        MinVersion::Tls13 => &[&rustls::version::TLS13],
    };
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)?
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    // The server's suite order decides (see `cipher_suites`), not the
    // client's: OpenSSL and rustls clients list AES-256 first.
    config.ignore_client_order = true;
    config.send_tls13_tickets = session_tickets as usize;
    if session_tickets > 0 {
        config.ticketer = aws_lc_rs::Ticketer::new()?;
    }
    Ok(config)
}

/// The provider the probe connects with (`src/probe/tls.rs`): every
/// cipher suite, signature scheme and key exchange group aws-lc-rs has, so
/// that whatever a server can do with a modern client, the probe sees.
pub fn client_provider() -> CryptoProvider {
    aws_lc_rs::default_provider()
}

/// A private key as rustls signs with it (ECDSA, Ed25519 or RSA).
pub fn signing_key(key: &PrivateKeyDer<'_>) -> Result<Arc<dyn SigningKey>, rustls::Error> {
    aws_lc_rs::sign::any_supported_type(key)
}

/// SHA-256 from the provider, so that no hash crate is needed (certificate
/// change detection).
pub fn sha256(data: &[u8]) -> Vec<u8> {
    use rustls::SupportedCipherSuite;
    let hash = match aws_lc_rs::cipher_suite::TLS13_AES_128_GCM_SHA256 {
        SupportedCipherSuite::Tls13(s) => s.common.hash_provider,
        SupportedCipherSuite::Tls12(s) => s.common.hash_provider,
    };
    hash.hash(data).as_ref().to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::NamedGroup;

    fn names(post_quantum: bool) -> Vec<NamedGroup> {
        kx_groups(post_quantum).iter().map(|g| g.name()).collect()
    }

    #[test]
    fn hybrid_group_first_then_classic() {
        assert_eq!(
            names(true),
            [
                NamedGroup::X25519MLKEM768,
                NamedGroup::X25519,
                NamedGroup::secp256r1,
                NamedGroup::secp384r1
            ]
        );
    }

    #[test]
    fn post_quantum_off_drops_only_the_hybrid_group() {
        assert_eq!(
            names(false),
            [
                NamedGroup::X25519,
                NamedGroup::secp256r1,
                NamedGroup::secp384r1
            ]
        );
    }

    #[test]
    fn same_suites_as_aws_lc_only_reordered() {
        let mut ours: Vec<_> = cipher_suites().iter().map(|s| s.suite()).collect();
        let mut theirs: Vec<_> = aws_lc_rs::default_provider()
            .cipher_suites
            .iter()
            .map(|s| s.suite())
            .collect();
        assert_eq!(
            ours[0],
            rustls::CipherSuite::TLS13_AES_128_GCM_SHA256,
            "AES-128-GCM (SHA-256) is preferred"
        );
        ours.sort_by_key(|s| u16::from(*s));
        theirs.sort_by_key(|s| u16::from(*s));
        assert_eq!(ours, theirs);
    }

    #[test]
    fn the_group_name_logged_is_the_iana_name() {
        // src/session.rs logs `NamedGroup::as_str()`; docs/telemetry.md
        // lists these values.
        assert_eq!(NamedGroup::X25519MLKEM768.as_str(), Some("X25519MLKEM768"));
        assert_eq!(NamedGroup::X25519.as_str(), Some("X25519"));
    }
}
