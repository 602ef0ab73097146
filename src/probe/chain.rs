//! Judging a presented chain, after the handshake: order, completeness,
//! roots sent along, the path to the trust anchors (rustls-webpki, with
//! the same [`TrustAnchors`] `check` and `run` use), the name connected to
//! (webpki's name check of the leaf; never the banner), validity dates,
//! key type and size, and the leaf's SHA-256.
//!
//! Pure: the chain, the name, the anchors and the time go in, a
//! [`ChainReport`] comes out.

use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use x509_parser::oid_registry::{
    OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY, OID_NIST_EC_P384, OID_NIST_EC_P521,
    OID_PKCS1_RSAENCRYPTION, OID_SIG_ED25519,
};
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::tls::validate::TrustAnchors;

/// One certificate as presented.
#[derive(Debug, Clone)]
pub struct CertInfo {
    pub subject: String,
    pub issuer: String,
    /// SAN DNS names (only the leaf's matter).
    pub names: Vec<String>,
    subject_raw: Vec<u8>,
    issuer_raw: Vec<u8>,
    /// Seconds since the epoch.
    pub not_before: i64,
    pub not_after: i64,
    /// "RSA 2048", "ECDSA P-256", "Ed25519".
    pub key: String,
    /// Subject and issuer are the same name: a root.
    pub self_signed: bool,
    /// SHA-256 of the DER, lowercase hex.
    pub sha256: String,
}

/// Are the certificates in leaf → issuer order?
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Order {
    Ordered,
    /// Certificate `index` (0-based) is not the issuer of the one before,
    /// although that one's issuer is elsewhere in the chain.
    Misordered {
        index: usize,
    },
}

/// Does the chain lead to a trust anchor?
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Trust {
    Verified,
    /// No intermediate sent: the leaf's issuer is neither in the chain nor
    /// a trust anchor.
    Incomplete {
        missing_issuer: String,
    },
    /// Verification failed for another reason (an unknown root, a bad
    /// signature, a CA certificate not allowed to issue…).
    Untrusted {
        detail: String,
    },
    /// The path is fine but an intermediate on it is not valid now.
    IntermediateNotValid {
        detail: String,
    },
    /// Not judged: the leaf is not valid now, and at the last instant it
    /// was, a CA certificate on the path was not (renewed intermediates).
    /// The leaf's dates are the finding then.
    NotJudged {
        detail: String,
    },
}

/// The leaf's validity now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Validity {
    Valid,
    Expired,
    NotYetValid,
}

/// Everything judged about one presented chain.
#[derive(Debug, Clone)]
pub struct ChainReport {
    /// Leaf first, as presented. Empty when the server sent none, or one
    /// that cannot be parsed (`trust` says which).
    pub certs: Vec<CertInfo>,
    pub order: Order,
    pub trust: Trust,
    pub validity: Validity,
    /// Indexes (> 0) of roots sent along: self-signed, or a trust anchor.
    pub roots_included: Vec<usize>,
    /// webpki's name check of the leaf for the name connected to; `None`
    /// when that is an address (nobody validates MX addresses).
    pub name_covered: Option<bool>,
    /// Whole days from now to the leaf's notAfter (negative once expired).
    pub days_left: i64,
}

impl ChainReport {
    pub fn leaf(&self) -> Option<&CertInfo> {
        self.certs.first()
    }

    /// Verifies now: path to an anchor and every date.
    pub fn verified(&self) -> bool {
        self.trust == Trust::Verified && self.validity == Validity::Valid
    }
}

/// Judges `chain` as presented for `name` at `now` (seconds since the epoch).
pub fn analyze(
    chain: &[CertificateDer<'_>],
    name: &ServerName<'_>,
    anchors: &TrustAnchors,
    now: i64,
) -> ChainReport {
    let parsed: Result<Vec<CertInfo>, String> = chain
        .iter()
        .enumerate()
        .map(|(i, der)| {
            cert_info(der).map_err(|e| {
                format!(
                    "certificate {} of {} cannot be parsed: {e}",
                    i + 1,
                    chain.len()
                )
            })
        })
        .collect();
    let (certs, leaf_der) = match (parsed, chain.first()) {
        (Ok(certs), Some(der)) if !certs.is_empty() => (certs, der),
        (Err(e), _) => return unjudged(e),
        _ => return unjudged("the server presented no certificate".into()),
    };
    let leaf = &certs[0];
    let validity = if now > leaf.not_after {
        Validity::Expired
    } else if now < leaf.not_before {
        Validity::NotYetValid
    } else {
        Validity::Valid
    };
    let (trust, name_covered) = match webpki::EndEntityCert::try_from(leaf_der) {
        Ok(ee) => (
            trust(&ee, chain, &certs, anchors, now, leaf),
            covers(&ee, name),
        ),
        Err(e) => (
            Trust::Untrusted {
                detail: format!("the leaf is not a certificate webpki can use: {e}"),
            },
            None,
        ),
    };
    ChainReport {
        order: order(&certs),
        roots_included: roots_included(chain, &certs, anchors),
        days_left: (leaf.not_after - now).div_euclid(86_400),
        certs,
        trust,
        validity,
        name_covered,
    }
}

/// A chain with nothing to judge: no certificate, or one that cannot be
/// parsed (senders refuse it as well).
fn unjudged(detail: String) -> ChainReport {
    ChainReport {
        certs: Vec::new(),
        order: Order::Ordered,
        trust: Trust::Untrusted { detail },
        validity: Validity::Expired,
        roots_included: Vec::new(),
        name_covered: None,
        days_left: 0,
    }
}

/// Indexes after the leaf of self-signed certificates or trust anchors.
fn roots_included(
    chain: &[CertificateDer<'_>],
    certs: &[CertInfo],
    anchors: &TrustAnchors,
) -> Vec<usize> {
    (1..chain.len().min(certs.len()))
        .filter(|&i| certs[i].self_signed || anchors.contains(&chain[i]))
        .collect()
}

fn covers(ee: &webpki::EndEntityCert<'_>, name: &ServerName<'_>) -> Option<bool> {
    match name {
        ServerName::DnsName(_) => Some(ee.verify_is_valid_for_subject_name(name).is_ok()),
        _ => None,
    }
}

fn verify(
    ee: &webpki::EndEntityCert<'_>,
    chain: &[CertificateDer<'_>],
    anchors: &TrustAnchors,
    at: i64,
) -> Result<(), webpki::Error> {
    let time = UnixTime::since_unix_epoch(std::time::Duration::from_secs(
        u64::try_from(at).unwrap_or(0),
    ));
    ee.verify_for_usage(
        webpki::ALL_VERIFICATION_ALGS,
        anchors.webpki_anchors(),
        &chain[1..],
        time,
        webpki::KeyUsage::server_auth(),
        None,
        None,
    )
    .map(|_| ())
}

/// The path to an anchor, judged apart from the leaf's dates: an expired
/// leaf on a good path is `expired`, not also `untrusted`. webpki checks
/// the leaf's dates before it builds a path, so for a leaf not valid now
/// the path is checked at the nearest instant the leaf was (or will be)
/// valid.
fn trust(
    ee: &webpki::EndEntityCert<'_>,
    chain: &[CertificateDer<'_>],
    certs: &[CertInfo],
    anchors: &TrustAnchors,
    now: i64,
    leaf: &CertInfo,
) -> Trust {
    let at = now.clamp(leaf.not_before, leaf.not_after);
    match verify(ee, chain, anchors, at) {
        Ok(()) => Trust::Verified,
        Err(webpki::Error::UnknownIssuer) => unknown_issuer(certs, anchors),
        Err(e @ (webpki::Error::CertExpired { .. } | webpki::Error::CertNotValidYet { .. }))
            if at != now =>
        {
            Trust::NotJudged {
                detail: format!(
                    "at the leaf's last valid instant a CA certificate was not valid ({e})"
                ),
            }
        }
        Err(e @ (webpki::Error::CertExpired { .. } | webpki::Error::CertNotValidYet { .. })) => {
            Trust::IntermediateNotValid {
                detail: e.to_string(),
            }
        }
        Err(e) => Trust::Untrusted {
            detail: e.to_string(),
        },
    }
}

/// webpki found no path. Missing intermediate, or an unknown root? Follow
/// the issuers from the leaf inside the chain to the top certificate: if
/// that is the leaf itself (nothing above it was sent) and its issuer is
/// no anchor, an intermediate is missing. If the top is a root, that root
/// is not trusted. If it is an intermediate whose issuer is unknown, it
/// could be either; reported as untrusted, with both possibilities.
fn unknown_issuer(certs: &[CertInfo], anchors: &TrustAnchors) -> Trust {
    let mut top = 0;
    for _ in 0..certs.len() {
        let cur = &certs[top];
        if cur.self_signed {
            break;
        }
        match certs
            .iter()
            .position(|c| c.subject_raw == cur.issuer_raw && !std::ptr::eq(c, cur))
        {
            Some(next) => top = next,
            None => break,
        }
    }
    let t = &certs[top];
    if t.self_signed {
        Trust::Untrusted {
            detail: format!(
                "the chain ends in a root that is not a trust anchor: {}",
                t.subject
            ),
        }
    } else if top == 0 && !anchors.has_subject(&t.issuer_raw) {
        Trust::Incomplete {
            missing_issuer: t.issuer.clone(),
        }
    } else {
        Trust::Untrusted {
            detail: format!(
                "the chain ends at {}, issued by {}, which is not a trust anchor (an unknown CA, or one more missing intermediate)",
                t.subject, t.issuer
            ),
        }
    }
}

/// Misordered when a certificate is followed by one that did not issue it
/// while its issuer is elsewhere in the chain. (An issuer missing from
/// the chain altogether is incompleteness, judged by the path check.)
fn order(certs: &[CertInfo]) -> Order {
    for i in 0..certs.len().saturating_sub(1) {
        if certs[i].self_signed || certs[i].issuer_raw == certs[i + 1].subject_raw {
            if certs[i].self_signed && i + 1 < certs.len() {
                // Nothing comes after a root in a chain.
                return Order::Misordered { index: i + 1 };
            }
            continue;
        }
        let elsewhere = certs
            .iter()
            .enumerate()
            .any(|(j, c)| j != i && j != i + 1 && c.subject_raw == certs[i].issuer_raw);
        if elsewhere {
            return Order::Misordered { index: i + 1 };
        }
    }
    Order::Ordered
}

fn cert_info(der: &CertificateDer<'_>) -> Result<CertInfo, String> {
    let (_, c) = X509Certificate::from_der(der).map_err(|e| e.to_string())?;
    Ok(CertInfo {
        subject: c.subject().to_string(),
        issuer: c.issuer().to_string(),
        names: crate::tls::load::san_dns_names(&c),
        subject_raw: c.subject().as_raw().to_vec(),
        issuer_raw: c.issuer().as_raw().to_vec(),
        not_before: c.validity().not_before.timestamp(),
        not_after: c.validity().not_after.timestamp(),
        key: key_description(&c),
        self_signed: c.subject().as_raw() == c.issuer().as_raw(),
        sha256: hex(&crate::tls::provider::sha256(der)),
    })
}

/// "RSA 2048", "ECDSA P-256", "Ed25519", or the algorithm's OID.
fn key_description(c: &X509Certificate<'_>) -> String {
    let spki = c.public_key();
    let alg = &spki.algorithm.algorithm;
    if *alg == OID_PKCS1_RSAENCRYPTION {
        match spki.parsed() {
            Ok(x509_parser::public_key::PublicKey::RSA(k)) => format!("RSA {}", bits(k.modulus)),
            _ => "RSA (unreadable key)".into(),
        }
    } else if *alg == OID_KEY_TYPE_EC_PUBLIC_KEY {
        let curve = spki
            .algorithm
            .parameters
            .as_ref()
            .and_then(|p| p.as_oid().ok());
        match curve {
            Some(o) if o == OID_EC_P256 => "ECDSA P-256".into(),
            Some(o) if o == OID_NIST_EC_P384 => "ECDSA P-384".into(),
            Some(o) if o == OID_NIST_EC_P521 => "ECDSA P-521".into(),
            Some(o) => format!("ECDSA {o}"),
            None => "ECDSA (unnamed curve)".into(),
        }
    } else if *alg == OID_SIG_ED25519 {
        "Ed25519".into()
    } else {
        alg.to_id_string()
    }
}

/// Bit length of a big-endian unsigned integer (leading zeros ignored).
fn bits(n: &[u8]) -> usize {
    match n.iter().position(|&b| b != 0) {
        Some(i) => (n.len() - i - 1) * 8 + (8 - n[i].leading_zeros() as usize),
        None => 0,
    }
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(subject: &str, issuer: &str) -> CertInfo {
        CertInfo {
            subject: subject.into(),
            issuer: issuer.into(),
            names: Vec::new(),
            subject_raw: subject.as_bytes().to_vec(),
            issuer_raw: issuer.as_bytes().to_vec(),
            not_before: 0,
            not_after: 1,
            key: String::new(),
            self_signed: subject == issuer,
            sha256: String::new(),
        }
    }

    #[test]
    fn leaf_then_each_issuer_is_ordered() {
        let c = [info("leaf", "int"), info("int", "root")];
        assert_eq!(order(&c), Order::Ordered);
        let c = [
            info("leaf", "int"),
            info("int", "root"),
            info("root", "root"),
        ];
        assert_eq!(order(&c), Order::Ordered);
    }

    #[test]
    fn swapped_intermediates_are_misordered() {
        let c = [info("leaf", "sub"), info("int", "root"), info("sub", "int")];
        assert_eq!(order(&c), Order::Misordered { index: 1 });
    }

    #[test]
    fn a_root_before_the_intermediate_is_misordered() {
        let c = [
            info("leaf", "int"),
            info("root", "root"),
            info("int", "root"),
        ];
        assert_eq!(order(&c), Order::Misordered { index: 1 });
    }

    #[test]
    fn a_missing_issuer_is_not_misorder() {
        // leaf, then an unrelated root: incomplete (the path check says so).
        let c = [info("leaf", "int"), info("root", "root")];
        assert_eq!(order(&c), Order::Ordered);
        assert_eq!(order(&[info("leaf", "int")]), Order::Ordered);
    }

    #[test]
    fn missing_intermediate_versus_unknown_root() {
        let none = TrustAnchors::default();
        assert_eq!(
            unknown_issuer(&[info("leaf", "int")], &none),
            Trust::Incomplete {
                missing_issuer: "int".into()
            }
        );
        assert!(matches!(
            unknown_issuer(&[info("leaf", "int"), info("int", "root")], &none),
            Trust::Untrusted { detail } if detail.contains("ends at int, issued by root")
        ));
        assert!(matches!(
            unknown_issuer(&[info("leaf", "int"), info("int", "root"), info("root", "root")], &none),
            Trust::Untrusted { detail } if detail.contains("root that is not a trust anchor: root")
        ));
    }

    #[test]
    fn bit_lengths() {
        assert_eq!(bits(&[0x00, 0x80, 0, 0]), 24);
        assert_eq!(bits(&[0x01, 0xff]), 9);
        assert_eq!(bits(&[0; 3]), 0);
        let mut rsa2048 = vec![0u8];
        rsa2048.extend([0xc5; 256]);
        assert_eq!(bits(&rsa2048), 2048);
    }
}
