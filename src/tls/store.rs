//! The certificate store: an immutable snapshot a handshake picks from.
//!
//! Lookup is a hash map, not a scan: exact SAN name, then the one-label
//! wildcard (`*.example.test` for `a.example.test`, never for
//! `a.b.example.test`), then the configured default certificate — never
//! "whichever loaded first". A name may have an ECDSA and an RSA
//! certificate; ECDSA goes to clients whose signature schemes allow it.

use std::collections::HashMap;
use std::sync::Arc;

use rustls::SignatureScheme;

use super::load::{KeyAlgorithm, LoadContext, LoadedCert, load_certificate, now_unix};
use super::validate::TrustAnchors;
use crate::config::{Config, ConfigError, ConfigErrors};

/// How the client's SNI related to the store (a metric label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SniMatch {
    Matched,
    Unmatched,
    Absent,
}

impl SniMatch {
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Matched => "matched",
            Self::Unmatched => "unmatched",
            Self::Absent => "absent",
        }
    }
}

/// Certificates serving one name, preferred first (ECDSA/Ed25519 before RSA).
#[derive(Debug, Clone, Default)]
struct Slot(Vec<usize>);

#[derive(Debug)]
pub struct CertStore {
    certs: Vec<Arc<LoadedCert>>,
    exact: HashMap<String, Slot>,
    /// Keyed by the parent domain: `*.example.test` → `example.test`.
    wildcard: HashMap<String, Slot>,
    default: Slot,
}

/// The store's answer for one ClientHello.
#[derive(Debug, Clone)]
pub struct Selection {
    pub cert: Arc<LoadedCert>,
    pub sni: SniMatch,
}

/// Longest SNI we look up (a DNS name is at most 253 octets).
const MAX_SNI: usize = 253;

impl CertStore {
    /// Builds a store from loaded certificates; `default` indexes `certs`.
    ///
    /// Two certificates of the same key type for the same name are refused:
    /// which one a client gets must be a decision, not load order.
    pub fn new(certs: Vec<Arc<LoadedCert>>, default: usize) -> Result<Self, String> {
        let mut exact: HashMap<String, Slot> = HashMap::new();
        let mut wildcard: HashMap<String, Slot> = HashMap::new();
        for (i, c) in certs.iter().enumerate() {
            for name in &c.names {
                let (map, key) = match name.strip_prefix("*.") {
                    Some(parent) => (&mut wildcard, parent.to_string()),
                    None => (&mut exact, name.clone()),
                };
                let slot = map.entry(key).or_default();
                if slot.0.contains(&i) {
                    continue;
                }
                if let Some(&j) = slot.0.iter().find(|&&j| certs[j].algorithm == c.algorithm) {
                    return Err(format!(
                        "{name} is covered by two {} certificates, {:?} and {:?}: give each name at most one certificate per key type",
                        c.algorithm.as_str(),
                        certs[j].name,
                        c.name
                    ));
                }
                slot.0.push(i);
                slot.0
                    .sort_by_key(|&j| certs[j].algorithm == KeyAlgorithm::Rsa);
            }
        }
        let Some(default_cert) = certs.get(default) else {
            return Err("default certificate index out of range".to_string());
        };
        // The default slot: the default certificate, and a certificate of
        // another key type only if it covers every name the default does (a
        // true ECDSA/RSA twin) — never one that merely shares a name.
        let mut default_slot = vec![default];
        for (i, c) in certs.iter().enumerate() {
            let twin = i != default
                && c.algorithm != default_cert.algorithm
                && default_cert.names.iter().all(|n| c.names.contains(n))
                && !default_slot
                    .iter()
                    .any(|&j| certs[j].algorithm == c.algorithm);
            if twin {
                default_slot.push(i);
            }
        }
        default_slot.sort_by_key(|&j| certs[j].algorithm == KeyAlgorithm::Rsa);
        let default_slot = Slot(default_slot);
        Ok(Self {
            certs,
            exact,
            wildcard,
            default: default_slot,
        })
    }

    /// Loads every certificate of `config`, reporting all failures.
    pub fn load(config: &Config, anchors: &TrustAnchors) -> Result<Self, ConfigErrors> {
        let cx = LoadContext {
            anchors,
            now: now_unix(),
            expiry_warning: config.tls.expiry_warning,
        };
        let mut loaded = Vec::new();
        let mut errors = Vec::new();
        for c in &config.certificates {
            match load_certificate(c, &cx) {
                Ok(l) => loaded.push(Arc::new(l)),
                Err(e) => errors.push(e.to_config_error(&config.path, c)),
            }
        }
        if !errors.is_empty() {
            return Err(ConfigErrors(errors));
        }
        Self::new(loaded, config.tls.default_certificate).map_err(|msg| {
            let c = config.default_certificate();
            ConfigErrors(vec![ConfigError::new(
                &config.path,
                c.chain_at,
                "certificate",
                msg,
            )])
        })
    }

    /// The system roots plus `tls.trust_anchors`, as a config error when the
    /// configured file is unusable.
    pub fn load_anchors(config: &Config) -> Result<TrustAnchors, ConfigErrors> {
        TrustAnchors::load(config.tls.trust_anchors.as_deref()).map_err(|e| {
            ConfigErrors(vec![ConfigError::new(
                &config.path,
                config.tls.trust_anchors_at,
                "tls.trust_anchors",
                e.to_string(),
            )])
        })
    }

    pub fn certificates(&self) -> &[Arc<LoadedCert>] {
        &self.certs
    }

    /// Chooses the certificate for a ClientHello's SNI and signature schemes.
    pub fn select(&self, sni: Option<&str>, schemes: &[SignatureScheme]) -> Selection {
        let (slot, sni) = match sni.map(normalise_sni) {
            None => (&self.default, SniMatch::Absent),
            Some(None) => (&self.default, SniMatch::Unmatched),
            Some(Some(name)) => match self.lookup(&name) {
                Some(slot) => (slot, SniMatch::Matched),
                None => (&self.default, SniMatch::Unmatched),
            },
        };
        let pick = slot
            .0
            .iter()
            .copied()
            .find(|&i| self.certs[i].key.key.choose_scheme(schemes).is_some())
            .or_else(|| slot.0.last().copied())
            .unwrap_or(0);
        Selection {
            cert: self.certs[pick].clone(),
            sni,
        }
    }

    fn lookup(&self, name: &str) -> Option<&Slot> {
        if let Some(slot) = self.exact.get(name) {
            return Some(slot);
        }
        let (_, parent) = name.split_once('.')?;
        self.wildcard.get(parent)
    }
}

/// Lowercase, without a trailing dot; `None` if not a plausible DNS name.
fn normalise_sni(sni: &str) -> Option<String> {
    let s = sni.strip_suffix('.').unwrap_or(sni);
    if s.is_empty()
        || s.len() > MAX_SNI
        || !s
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
    {
        return None;
    }
    Some(s.to_ascii_lowercase())
}

/// Whether a certificate with these SAN names is valid for `host`
/// (exact, or a one-label wildcard).
pub fn covers(names: &[String], host: &str) -> bool {
    let host = host.to_ascii_lowercase();
    names.iter().any(|n| match n.strip_prefix("*.") {
        Some(parent) => host.split_once('.').is_some_and(|(_, p)| p == parent),
        None => *n == host,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::sign::CertifiedKey;
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};

    fn key(dir: &str) -> Arc<CertifiedKey> {
        let base = format!("{}/certs.example/{dir}", env!("CARGO_MANIFEST_DIR"));
        let key = PrivateKeyDer::from_pem_file(format!("{base}/privkey.pem")).unwrap();
        let key = crate::tls::provider::signing_key(&key).unwrap();
        let chain: Vec<CertificateDer<'static>> =
            CertificateDer::pem_file_iter(format!("{base}/fullchain.pem"))
                .unwrap()
                .map(Result::unwrap)
                .collect();
        Arc::new(CertifiedKey::new(chain, key))
    }

    fn cert(name: &str, names: &[&str], algorithm: KeyAlgorithm) -> Arc<LoadedCert> {
        let dir = if algorithm == KeyAlgorithm::Ecdsa {
            "mx1.example.test/ecdsa"
        } else {
            "mx1.example.test"
        };
        Arc::new(LoadedCert {
            name: name.into(),
            names: names.iter().map(|n| n.to_string()).collect(),
            key: key(dir),
            algorithm,
            subject: String::new(),
            issuer: String::new(),
            serial: String::new(),
            not_before: 0,
            not_after: 0,
            root_dropped: false,
            chain: Vec::new(),
            chain_check: crate::config::ChainCheck::Full,
            warnings: Vec::new(),
        })
    }

    const ECDSA_OK: &[SignatureScheme] = &[
        SignatureScheme::ECDSA_NISTP256_SHA256,
        SignatureScheme::RSA_PSS_SHA256,
    ];
    const RSA_ONLY: &[SignatureScheme] = &[
        SignatureScheme::RSA_PSS_SHA256,
        SignatureScheme::RSA_PKCS1_SHA256,
    ];

    fn store() -> CertStore {
        CertStore::new(
            vec![
                cert("mx1", &["mx1.example.test"], KeyAlgorithm::Rsa),
                cert("mx1-ecdsa", &["mx1.example.test"], KeyAlgorithm::Ecdsa),
                cert(
                    "tenant",
                    &["mx.tenant.test", "*.tenant.test"],
                    KeyAlgorithm::Rsa,
                ),
                cert("special", &["special.tenant.test"], KeyAlgorithm::Rsa),
            ],
            0,
        )
        .unwrap()
    }

    fn pick(
        s: &CertStore,
        sni: Option<&str>,
        schemes: &[SignatureScheme],
    ) -> (String, &'static str) {
        let sel = s.select(sni, schemes);
        (sel.cert.name.clone(), sel.sni.as_str())
    }

    #[test]
    fn exact_then_wildcard_then_default() {
        let s = store();
        assert_eq!(
            pick(&s, Some("mx.tenant.test"), RSA_ONLY),
            ("tenant".into(), "matched")
        );
        assert_eq!(
            pick(&s, Some("special.tenant.test"), RSA_ONLY),
            ("special".into(), "matched")
        );
        assert_eq!(
            pick(&s, Some("other.tenant.test"), RSA_ONLY),
            ("tenant".into(), "matched")
        );
        assert_eq!(
            pick(&s, Some("a.b.tenant.test"), RSA_ONLY),
            ("mx1".into(), "unmatched")
        );
        assert_eq!(
            pick(&s, Some("tenant.test"), RSA_ONLY),
            ("mx1".into(), "unmatched")
        );
        assert_eq!(pick(&s, None, RSA_ONLY), ("mx1".into(), "absent"));
    }

    #[test]
    fn ecdsa_when_the_client_allows_it() {
        let s = store();
        assert_eq!(pick(&s, Some("mx1.example.test"), ECDSA_OK).0, "mx1-ecdsa");
        assert_eq!(pick(&s, Some("mx1.example.test"), RSA_ONLY).0, "mx1");
        // The default slot holds both too.
        assert_eq!(pick(&s, None, ECDSA_OK).0, "mx1-ecdsa");
        assert_eq!(pick(&s, Some("unknown.test"), RSA_ONLY).0, "mx1");
    }

    #[test]
    fn sni_is_normalised_and_bounded() {
        let s = store();
        assert_eq!(
            pick(&s, Some("MX.Tenant.TEST."), RSA_ONLY),
            ("tenant".into(), "matched")
        );
        let long = format!("{}.tenant.test", "a".repeat(300));
        assert_eq!(pick(&s, Some(&long), RSA_ONLY), ("mx1".into(), "unmatched"));
        assert_eq!(
            pick(&s, Some("mx.tenant.test\u{0}"), RSA_ONLY),
            ("mx1".into(), "unmatched")
        );
    }

    #[test]
    fn two_certificates_of_one_type_for_a_name_are_refused() {
        let e = CertStore::new(
            vec![
                cert("a", &["mx.test.example"], KeyAlgorithm::Rsa),
                cert("b", &["mx.test.example"], KeyAlgorithm::Rsa),
            ],
            0,
        )
        .unwrap_err();
        assert!(e.contains("\"a\" and \"b\""), "{e}");
    }

    #[test]
    fn coverage() {
        let names = vec!["mx.a.test".to_string(), "*.b.test".to_string()];
        assert!(covers(&names, "MX.a.test"));
        assert!(covers(&names, "x.b.test"));
        assert!(!covers(&names, "x.y.b.test"));
        assert!(!covers(&names, "b.test"));
    }
}
