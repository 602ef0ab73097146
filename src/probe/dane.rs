//! DANE for SMTP (RFC 7672): do the TLSA records of an MX host match the
//! chain it serves? Pure functions over records and certificates (the
//! "judge" step of DESIGN.md §7), plus the TLSA data an operator should
//! publish for a certificate or key (`check --dns`, rotation advice).
//!
//! Usable records for SMTP are DANE-EE(3), matched against the leaf, and
//! DANE-TA(2), matched against a certificate above the leaf in the served
//! chain that the leaf's path verifies to. PKIX-TA(0) and PKIX-EE(1) are
//! not applicable to SMTP (RFC 7672 §3.1.3): senders treat them as
//! unusable, and so do we. A trust anchor absent from the chain (a bare
//! `2 1 0` key) is not matched: RFC 7671 §5.2.2 asks servers to send it.

use std::fmt;
use std::path::{Path, PathBuf};

use aws_lc_rs::digest;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use x509_parser::prelude::{FromDer, X509Certificate};

/// One TLSA record (RFC 6698 §2.1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsaRecord {
    pub usage: u8,
    pub selector: u8,
    pub matching_type: u8,
    pub data: Vec<u8>,
}

impl fmt::Display for TlsaRecord {
    /// Presentation form: `3 1 1 0a1b…` (lowercase hex).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {} {} {}",
            self.usage,
            self.selector,
            self.matching_type,
            hex(&self.data)
        )
    }
}

impl TlsaRecord {
    /// The zone file line publishing this record for `host`:`port`, as in
    /// "publish `_25._tcp.mx1.example.test. IN TLSA 3 1 1 …` before rotating".
    pub fn zone_line(&self, host: &str, port: u16) -> String {
        format!("{}. IN TLSA {self}", tlsa_owner(host, port))
    }
}

/// `_PORT._tcp.HOST`, the owner name of an MX host's TLSA records.
pub fn tlsa_owner(host: &str, port: u16) -> String {
    format!("_{port}._tcp.{}", host.trim_end_matches('.'))
}

/// How one record fared against the chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecordResult {
    /// Matched the certificate at this index of the chain (0 = leaf).
    Matched { certificate: usize },
    /// Usable, and no certificate it may match has this association data.
    NotMatched,
    /// DANE-TA: certificate `certificate` has the data, but the leaf does
    /// not verify up to it (`detail` says why), so it vouches for nothing.
    TrustAnchorOffPath { certificate: usize, detail: String },
    /// Senders ignore this record.
    Unusable(Unusable),
}

/// Why a record is unusable for SMTP (RFC 7672 §2.2, §3.1.3).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Unusable {
    #[error("usage {0} (PKIX-TA/PKIX-EE) is not applicable to SMTP (RFC 7672 §3.1.3)")]
    PkixUsage(u8),
    #[error("usage {0} is not defined")]
    UnknownUsage(u8),
    #[error("selector {0} is not defined")]
    UnknownSelector(u8),
    #[error("matching type {0} is not defined")]
    UnknownMatchingType(u8),
    #[error(
        "matching type {matching_type} needs {expected} bytes of data, the record has {actual}"
    )]
    BadLength {
        matching_type: u8,
        expected: usize,
        actual: usize,
    },
}

/// One record and its result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordMatch {
    pub record: TlsaRecord,
    pub result: RecordResult,
}

/// The outcome for a TLSA record set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// No TLSA records: DANE does not apply.
    NoRecords,
    /// At least one usable record matches: a DANE sender accepts the chain.
    Match,
    /// Usable records exist and none matches: a DANE sender refuses to
    /// deliver (`dane_mismatch`).
    NoMatch,
    /// Records exist, all unusable: senders fall back to unauthenticated
    /// TLS (RFC 7672 §2.2).
    OnlyUnusable,
}

impl Verdict {
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::NoRecords => "no_records",
            Self::Match => "match",
            Self::NoMatch => "no_match",
            Self::OnlyUnusable => "only_unusable",
        }
    }
}

/// Every record's result and the verdict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DaneReport {
    pub records: Vec<RecordMatch>,
    pub verdict: Verdict,
}

/// Matches `records` against `chain` (as served, leaf first), now.
pub fn check(records: &[TlsaRecord], chain: &[CertificateDer<'_>]) -> DaneReport {
    check_at(records, chain, UnixTime::now())
}

/// [`check`] at a given time (DANE-TA paths check validity dates).
pub fn check_at(records: &[TlsaRecord], chain: &[CertificateDer<'_>], now: UnixTime) -> DaneReport {
    let records: Vec<RecordMatch> = records
        .iter()
        .map(|r| RecordMatch {
            record: r.clone(),
            result: check_record(r, chain, now),
        })
        .collect();
    let verdict = verdict(&records);
    DaneReport { records, verdict }
}

fn verdict(records: &[RecordMatch]) -> Verdict {
    if records.is_empty() {
        Verdict::NoRecords
    } else if records
        .iter()
        .any(|r| matches!(r.result, RecordResult::Matched { .. }))
    {
        Verdict::Match
    } else if records
        .iter()
        .all(|r| matches!(r.result, RecordResult::Unusable(_)))
    {
        Verdict::OnlyUnusable
    } else {
        Verdict::NoMatch
    }
}

fn check_record(r: &TlsaRecord, chain: &[CertificateDer<'_>], now: UnixTime) -> RecordResult {
    if let Err(why) = usable(r) {
        return RecordResult::Unusable(why);
    }
    let matches = |i: &usize| {
        association(&chain[*i], r.selector, r.matching_type).is_some_and(|a| a == r.data)
    };
    if r.usage == 3 {
        return match chain.first() {
            Some(_) if matches(&0) => RecordResult::Matched { certificate: 0 },
            _ => RecordResult::NotMatched,
        };
    }
    // DANE-TA: a certificate above the leaf, which the leaf chains up to.
    let mut off_path = None;
    for i in (1..chain.len()).filter(matches) {
        match ta_path(chain, i, now) {
            Ok(()) => return RecordResult::Matched { certificate: i },
            Err(detail) => {
                off_path.get_or_insert(RecordResult::TrustAnchorOffPath {
                    certificate: i,
                    detail,
                });
            }
        }
    }
    off_path.unwrap_or(RecordResult::NotMatched)
}

fn usable(r: &TlsaRecord) -> Result<(), Unusable> {
    match r.usage {
        0 | 1 => return Err(Unusable::PkixUsage(r.usage)),
        2 | 3 => {}
        u => return Err(Unusable::UnknownUsage(u)),
    }
    if r.selector > 1 {
        return Err(Unusable::UnknownSelector(r.selector));
    }
    let expected = match r.matching_type {
        0 => return Ok(()),
        1 => 32,
        2 => 64,
        m => return Err(Unusable::UnknownMatchingType(m)),
    };
    if r.data.len() != expected {
        return Err(Unusable::BadLength {
            matching_type: r.matching_type,
            expected,
            actual: r.data.len(),
        });
    }
    Ok(())
}

/// The association data of `cert` for a usable selector and matching
/// type; `None` when the certificate cannot be parsed (selector 1).
fn association(cert: &[u8], selector: u8, matching_type: u8) -> Option<Vec<u8>> {
    let selected = match selector {
        0 => cert.to_vec(),
        _ => spki(cert)?,
    };
    Some(match matching_type {
        1 => digest::digest(&digest::SHA256, &selected).as_ref().to_vec(),
        2 => digest::digest(&digest::SHA512, &selected).as_ref().to_vec(),
        _ => selected,
    })
}

/// The DER SubjectPublicKeyInfo of a certificate.
fn spki(cert: &[u8]) -> Option<Vec<u8>> {
    let (_, c) = X509Certificate::from_der(cert).ok()?;
    Some(c.public_key().raw.to_vec())
}

/// Does the leaf verify up to `chain[ta]` taken as the trust anchor, with
/// the certificates between them as intermediates?
fn ta_path(chain: &[CertificateDer<'_>], ta: usize, now: UnixTime) -> Result<(), String> {
    let anchor = webpki::anchor_from_trusted_cert(&chain[ta])
        .map_err(|e| format!("certificate {ta} is not usable as a trust anchor: {e}"))?;
    let leaf = webpki::EndEntityCert::try_from(&chain[0]).map_err(|e| format!("leaf: {e}"))?;
    leaf.verify_for_usage(
        webpki::ALL_VERIFICATION_ALGS,
        &[anchor],
        &chain[1..ta],
        now,
        webpki::KeyUsage::server_auth(),
        None,
        None,
    )
    .map(|_| ())
    .map_err(|e| format!("the leaf does not verify up to certificate {ta}: {e}"))
}

// === TLSA data to publish ===

/// Why TLSA data could not be computed.
#[derive(Debug, thiserror::Error)]
pub enum TlsaDataError {
    #[error("certificate cannot be parsed: {0}")]
    Certificate(String),
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: no private key in the file ({detail})", path.display())]
    NoKey { path: PathBuf, detail: String },
    #[error("{}: {detail}", path.display())]
    Key { path: PathBuf, detail: String },
}

/// The `3 1 1` record (DANE-EE, SPKI, SHA-256) for a certificate.
pub fn tlsa_311_for_cert(cert: &CertificateDer<'_>) -> Result<TlsaRecord, TlsaDataError> {
    let (_, c) =
        X509Certificate::from_der(cert).map_err(|e| TlsaDataError::Certificate(e.to_string()))?;
    Ok(tlsa_311_for_spki(c.public_key().raw))
}

/// The `3 1 1` record for the public half of a PEM private key file: what
/// to publish before a rotation to that key (RFC 7671 §8.1).
pub fn tlsa_311_for_key_file(path: &Path) -> Result<TlsaRecord, TlsaDataError> {
    let pem = std::fs::read(path).map_err(|source| TlsaDataError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let key = PrivateKeyDer::from_pem_slice(&pem).map_err(|e| TlsaDataError::NoKey {
        path: path.to_path_buf(),
        detail: e.to_string(),
    })?;
    let key_error = |detail: String| TlsaDataError::Key {
        path: path.to_path_buf(),
        detail,
    };
    let signing = crate::tls::provider::signing_key(&key)
        .map_err(|e| key_error(format!("unsupported private key: {e}")))?;
    let spki = signing
        .public_key()
        .ok_or_else(|| key_error("the provider cannot derive this key's public key".into()))?;
    Ok(tlsa_311_for_spki(spki.as_ref()))
}

fn tlsa_311_for_spki(spki: &[u8]) -> TlsaRecord {
    TlsaRecord {
        usage: 3,
        selector: 1,
        matching_type: 1,
        data: digest::digest(&digest::SHA256, spki).as_ref().to_vec(),
    }
}

fn hex(data: &[u8]) -> String {
    use std::fmt::Write;
    data.iter()
        .fold(String::with_capacity(data.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(usage: u8, selector: u8, matching_type: u8, data: Vec<u8>) -> TlsaRecord {
        TlsaRecord {
            usage,
            selector,
            matching_type,
            data,
        }
    }

    #[test]
    fn presentation_form_and_owner_name() {
        let r = rec(3, 1, 1, vec![0x0a, 0xff]);
        assert_eq!(r.to_string(), "3 1 1 0aff");
        assert_eq!(
            r.zone_line("mx1.example.test.", 25),
            "_25._tcp.mx1.example.test. IN TLSA 3 1 1 0aff"
        );
    }

    #[test]
    fn each_unusable_form_is_named() {
        let cases = [
            (rec(0, 0, 1, vec![0; 32]), Unusable::PkixUsage(0)),
            (rec(1, 1, 1, vec![0; 32]), Unusable::PkixUsage(1)),
            (rec(4, 1, 1, vec![0; 32]), Unusable::UnknownUsage(4)),
            (rec(3, 2, 1, vec![0; 32]), Unusable::UnknownSelector(2)),
            (rec(3, 1, 3, vec![0; 32]), Unusable::UnknownMatchingType(3)),
            (
                rec(3, 1, 1, vec![0; 31]),
                Unusable::BadLength {
                    matching_type: 1,
                    expected: 32,
                    actual: 31,
                },
            ),
            (
                rec(2, 0, 2, vec![0; 32]),
                Unusable::BadLength {
                    matching_type: 2,
                    expected: 64,
                    actual: 32,
                },
            ),
        ];
        for (r, why) in cases {
            assert_eq!(usable(&r), Err(why), "{r}");
        }
        assert_eq!(usable(&rec(3, 0, 0, vec![1, 2, 3])), Ok(()));
    }

    #[test]
    fn verdicts() {
        let m = |result| RecordMatch {
            record: rec(3, 1, 1, vec![0; 32]),
            result,
        };
        let unusable = || m(RecordResult::Unusable(Unusable::PkixUsage(1)));
        assert_eq!(verdict(&[]), Verdict::NoRecords);
        assert_eq!(verdict(&[unusable()]), Verdict::OnlyUnusable);
        assert_eq!(
            verdict(&[unusable(), m(RecordResult::NotMatched)]),
            Verdict::NoMatch
        );
        assert_eq!(
            verdict(&[
                m(RecordResult::NotMatched),
                m(RecordResult::Matched { certificate: 0 })
            ]),
            Verdict::Match
        );
        let off = m(RecordResult::TrustAnchorOffPath {
            certificate: 1,
            detail: String::new(),
        });
        assert_eq!(verdict(&[off]), Verdict::NoMatch);
    }

    #[test]
    fn garbage_certificates_match_nothing_and_do_not_panic() {
        let chain = [CertificateDer::from(vec![0x30, 0x03, 0x02, 0x01])];
        let records = [
            rec(3, 1, 1, vec![0; 32]),
            rec(2, 1, 1, vec![0; 32]),
            rec(3, 0, 0, vec![0x30, 0x03, 0x02, 0x01]),
        ];
        let report = check(&records, &chain);
        assert_eq!(report.records[0].result, RecordResult::NotMatched);
        assert_eq!(report.records[1].result, RecordResult::NotMatched);
        // Exact match of the full "certificate" needs no parsing.
        assert_eq!(
            report.records[2].result,
            RecordResult::Matched { certificate: 0 }
        );
        assert_eq!(check(&records, &[]).verdict, Verdict::NoMatch);
    }

    #[test]
    fn sha256_of_known_input() {
        // RFC 6234 test vector "abc".
        assert_eq!(
            hex(digest::digest(&digest::SHA256, b"abc").as_ref()),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
