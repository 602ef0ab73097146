//! Chain checks at load: the chain file must be ordered (leaf, then each
//! issuer) and complete up to a trust anchor — the system roots plus the
//! configured `trust_anchors`. Path validation is rustls-webpki's, the same
//! code rustls clients run; the order check is ours, because webpki builds
//! a path from the intermediates in any order while many senders do not.
//!
//! Also the private key file's permissions and owner: a key others can
//! read is a key to replace. Warned about, not refused, since the proxy
//! still serves correctly and `run` must not fail on a working setup.

use std::path::{Path, PathBuf};

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, TrustAnchor, UnixTime};
use tracing::warn;

/// The certificates a served chain must lead to: roots only. An
/// intermediate accepted as an anchor would let a leaf-only chain pass here
/// while every strict sender, which does not have that intermediate,
/// rejects it.
#[derive(Debug, Default)]
pub struct TrustAnchors {
    anchors: Vec<TrustAnchor<'static>>,
    /// Subjects (raw DER) of the anchors, to tell "incomplete" from "untrusted".
    subjects: Vec<Vec<u8>>,
    system: usize,
    configured: usize,
    configured_from: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum AnchorError {
    #[error("cannot read trust anchors {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("trust anchors {}: {detail}", path.display())]
    Invalid { path: PathBuf, detail: String },
}

impl TrustAnchors {
    /// The operating system's roots (as rustls-native-certs finds them) and
    /// every root in `extra`, a PEM file. Expired roots are skipped, as
    /// OpenSSL-based senders would refuse a path ending in one; so are
    /// certificates in `extra` that are not self-signed roots (warned).
    pub fn load(extra: Option<&Path>) -> Result<Self, AnchorError> {
        Self::load_at(extra, crate::tls::load::now_unix())
    }

    fn load_at(extra: Option<&Path>, now: i64) -> Result<Self, AnchorError> {
        let mut t = TrustAnchors::default();
        let native = rustls_native_certs::load_native_certs();
        for e in &native.errors {
            warn!(error = %e, "problem reading the system trust store");
        }
        for c in &native.certs {
            // A system root webpki cannot use is skipped, not fatal.
            if t.add(c, now).is_ok() {
                t.system += 1;
            }
        }
        if t.system == 0 {
            warn!(
                "no system trust anchors found (is the ca-certificates package installed?): only tls.trust_anchors can validate chains"
            );
        }
        if let Some(path) = extra {
            let invalid = |detail: String| AnchorError::Invalid {
                path: path.to_path_buf(),
                detail,
            };
            let pem = std::fs::read(path).map_err(|source| AnchorError::Read {
                path: path.to_path_buf(),
                source,
            })?;
            let mut seen = 0;
            for item in CertificateDer::pem_slice_iter(&pem) {
                let der = item.map_err(|e| invalid(e.to_string()))?;
                seen += 1;
                match t.add(&der, now) {
                    Ok(()) => t.configured += 1,
                    Err(why) => {
                        warn!(file = %path.display(), certificate = seen, "{why}; not used as a trust anchor")
                    }
                }
            }
            if seen == 0 {
                return Err(invalid("no CERTIFICATE in the file".into()));
            }
            if t.configured == 0 {
                return Err(invalid(
                    "no usable root in the file: trust anchors must be self-signed, current CA certificates".into(),
                ));
            }
            t.configured_from = Some(path.to_path_buf());
        }
        Ok(t)
    }

    fn add(&mut self, der: &CertificateDer<'_>, now: i64) -> Result<(), String> {
        use x509_parser::prelude::{FromDer, X509Certificate};
        let (_, cert) =
            X509Certificate::from_der(der).map_err(|e| format!("cannot be parsed: {e}"))?;
        let subject = cert.subject().to_string();
        if cert.subject().as_raw() != cert.issuer().as_raw() {
            return Err(format!(
                "{subject} is not a root (issued by {}): serve intermediates in the chain file instead",
                cert.issuer()
            ));
        }
        if cert.validity().not_after.timestamp() < now {
            return Err(format!(
                "{subject} expired at {}",
                cert.validity().not_after
            ));
        }
        let anchor = webpki::anchor_from_trusted_cert(der)
            .map_err(|e| format!("{subject}: not a usable CA certificate: {e}"))?;
        self.subjects.push(anchor.subject.as_ref().to_vec());
        self.anchors.push(anchor.to_owned());
        Ok(())
    }

    pub fn len(&self) -> usize {
        self.anchors.len()
    }

    /// The same anchors as a rustls root store, for the probe's HTTPS
    /// client (MTA-STS policy fetch), so that it trusts exactly what chain
    /// validation trusts.
    pub fn root_store(&self) -> rustls::RootCertStore {
        rustls::RootCertStore {
            roots: self.anchors.clone(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.anchors.is_empty()
    }

    /// "151 system roots + 1 from /etc/…/ca.pem", for messages and `check`.
    pub fn describe(&self) -> String {
        match &self.configured_from {
            Some(p) => format!(
                "{} system roots + {} from {}",
                self.system,
                self.configured,
                p.display()
            ),
            None => format!("{} system roots", self.system),
        }
    }

    /// The anchors as webpki takes them (the probe verifies presented
    /// chains against the same set `check` and `run` use).
    pub fn webpki_anchors(&self) -> &[TrustAnchor<'static>] {
        &self.anchors
    }

    /// Whether `der` is itself one of the anchors (same subject and key):
    /// a root a server sends along, which senders already have.
    pub fn contains(&self, der: &CertificateDer<'_>) -> bool {
        let Ok(a) = webpki::anchor_from_trusted_cert(der) else {
            return false;
        };
        self.anchors.iter().any(|t| {
            t.subject.as_ref() == a.subject.as_ref()
                && t.subject_public_key_info.as_ref() == a.subject_public_key_info.as_ref()
        })
    }

    /// Whether an anchor has this subject (raw DER of the name, as
    /// x509-parser's `as_raw()` gives it).
    pub fn has_subject(&self, raw: &[u8]) -> bool {
        // TrustAnchor.subject is the DN's content without the outer SEQUENCE.
        self.subjects
            .iter()
            .any(|s| raw.ends_with(s) && raw.len() - s.len() <= 4)
    }
}

/// Names of one certificate in the chain, as parsed at load.
#[derive(Debug, Clone)]
pub struct CertNames {
    pub subject: String,
    pub issuer: String,
    pub subject_raw: Vec<u8>,
    pub issuer_raw: Vec<u8>,
}

/// Why a chain would not be accepted by a strict sender.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChainError {
    #[error(
        "chain misordered: certificate {index} ({subject}) did not issue certificate {prev}, which is issued by {issuer}; put the leaf first, then each issuer in turn",
        prev = index - 1
    )]
    Misordered {
        index: usize,
        subject: String,
        issuer: String,
    },
    #[error(
        "chain ends in a root that is not a trust anchor: {root} (a root in the file is not served and does not make a chain trusted; add it to tls.trust_anchors if this is your private CA)"
    )]
    UntrustedRoot { root: String },
    #[error(
        "chain incomplete: the issuer of the last certificate ({issuer}) is neither in the file nor a trust anchor; \
         an intermediate is missing (cert.pem instead of fullchain.pem?) — or add its CA to trust_anchors"
    )]
    Incomplete { issuer: String },
    #[error("chain does not verify to a trust anchor: {detail}")]
    Untrusted { detail: String },
    #[error(
        "chain misordered: the leaf ({subject}, the certificate of the key) is certificate {index} in the file; put it first, then each issuer in turn"
    )]
    LeafNotFirst { index: usize, subject: String },
    #[error(
        "a certificate in the chain is not valid now (an intermediate expired or not yet valid): {detail}"
    )]
    IntermediateNotValid { detail: String },
    #[error(
        "a certificate on the path may not be used for a TLS server (its extendedKeyUsage lacks serverAuth)"
    )]
    NotForServers,
}

/// Checks order and the path to a trust anchor. `chain` is what will be
/// served (root already dropped); `names` the parsed names of each entry.
pub fn check_chain(
    chain: &[CertificateDer<'static>],
    names: &[CertNames],
    dropped_root: Option<&CertNames>,
    anchors: &TrustAnchors,
    now: UnixTime,
) -> Result<(), ChainError> {
    for i in 1..names.len().min(chain.len()) {
        if names[i - 1].issuer_raw != names[i].subject_raw {
            return Err(ChainError::Misordered {
                index: i,
                subject: names[i].subject.clone(),
                issuer: names[i - 1].issuer.clone(),
            });
        }
    }
    let Some(leaf) = chain.first() else {
        return Err(ChainError::Untrusted {
            detail: "empty chain".into(),
        });
    };
    let ee = webpki::EndEntityCert::try_from(leaf).map_err(|e| ChainError::Untrusted {
        detail: format!("leaf: {e}"),
    })?;
    let res = ee.verify_for_usage(
        webpki::ALL_VERIFICATION_ALGS,
        &anchors.anchors,
        &chain[1..],
        now,
        webpki::KeyUsage::server_auth(),
        None,
        None,
    );
    match res {
        Ok(_) => Ok(()),
        Err(webpki::Error::UnknownIssuer) => {
            let last = names.last();
            match last {
                // The file's own root was dropped and is no anchor: a
                // private CA not configured, not a missing intermediate.
                Some(l) if dropped_root.is_some_and(|r| r.subject_raw == l.issuer_raw) => {
                    Err(ChainError::UntrustedRoot {
                        root: l.issuer.clone(),
                    })
                }
                Some(l) if !anchors.has_subject(&l.issuer_raw) => Err(ChainError::Incomplete {
                    issuer: l.issuer.clone(),
                }),
                _ => Err(ChainError::Untrusted {
                    detail: "the issuer is a trust anchor by name but no signature path verifies"
                        .into(),
                }),
            }
        }
        Err(e @ (webpki::Error::CertExpired { .. } | webpki::Error::CertNotValidYet { .. })) => {
            Err(ChainError::IntermediateNotValid {
                detail: e.to_string(),
            })
        }
        #[allow(deprecated)]
        Err(webpki::Error::RequiredEkuNotFound | webpki::Error::RequiredEkuNotFoundContext(_)) => {
            Err(ChainError::NotForServers)
        }
        Err(e) => Err(ChainError::Untrusted {
            detail: e.to_string(),
        }),
    }
}

// === private key files ===

/// Warnings about who can read a private key file: group or others given
/// any access (mode & 0o077), or an owner other than the user the proxy
/// runs as. Each names the file and the command that fixes it.
#[cfg(unix)]
pub fn key_file_warnings(path: &Path, meta: &std::fs::Metadata) -> Vec<String> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let mut out = Vec::new();
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 {
        out.push(format!(
            "private key file {} has mode {mode:04o}: {}; fix: chmod 600 {}",
            path.display(),
            access_by_others(mode),
            path.display()
        ));
    }
    if let Some(euid) = effective_uid()
        && meta.uid() != euid
    {
        let user = user_name(euid).unwrap_or_else(|| euid.to_string());
        out.push(format!(
                "private key file {} is owned by uid {}, not by the user the proxy runs as ({user}, uid {euid}); fix: chown {user} {}",
                path.display(),
                meta.uid(),
                path.display()
            ));
    }
    out
}

#[cfg(not(unix))]
pub fn key_file_warnings(_path: &Path, _meta: &std::fs::Metadata) -> Vec<String> {
    Vec::new()
}

/// "readable by group and others", "writable by others"…: what mode's
/// group and other bits allow, read first since that is what leaks a key.
#[cfg(unix)]
fn access_by_others(mode: u32) -> String {
    let mut parts = Vec::new();
    for (bit, what) in [(0o4, "readable"), (0o2, "writable"), (0o1, "executable")] {
        let who: Vec<&str> = [("group", 3), ("others", 0)]
            .into_iter()
            .filter(|(_, shift)| mode >> shift & bit != 0)
            .map(|(who, _)| who)
            .collect();
        if !who.is_empty() {
            parts.push(format!("{what} by {}", who.join(" and ")));
        }
    }
    parts.join(", ")
}

/// The effective uid of this process: from `/proc/self/status` (Linux),
/// else as the owner of a file created for the purpose. `None` if neither
/// works; the owner check is then skipped.
#[cfg(unix)]
fn effective_uid() -> Option<u32> {
    static EUID: std::sync::OnceLock<Option<u32>> = std::sync::OnceLock::new();
    *EUID.get_or_init(|| euid_from_proc().or_else(euid_from_new_file))
}

#[cfg(unix)]
fn euid_from_proc() -> Option<u32> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    // "Uid:\treal\teffective\tsaved\tfilesystem"
    let line = status.lines().find(|l| l.starts_with("Uid:"))?;
    line.split_whitespace().nth(2)?.parse().ok()
}

#[cfg(unix)]
fn euid_from_new_file() -> Option<u32> {
    use std::os::unix::fs::MetadataExt;
    let path = std::env::temp_dir().join(format!(".starttls-proxy-uid-{}", std::process::id()));
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&path)
        .ok()?;
    let uid = file.metadata().ok().map(|m| m.uid());
    let _ = std::fs::remove_file(&path);
    uid
}

/// The login name of `uid` from /etc/passwd, for the `chown` advice.
#[cfg(unix)]
fn user_name(uid: u32) -> Option<String> {
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|l| {
        let mut f = l.split(':');
        let name = f.next()?;
        let id: u32 = f.nth(1)?.parse().ok()?;
        (id == uid && !name.is_empty()).then(|| name.to_string())
    })
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;

    #[test]
    fn access_by_others_says_which_class_can_do_what() {
        assert_eq!(access_by_others(0o644), "readable by group and others");
        assert_eq!(access_by_others(0o640), "readable by group");
        assert_eq!(access_by_others(0o604), "readable by others");
        assert_eq!(access_by_others(0o622), "writable by group and others");
        assert_eq!(
            access_by_others(0o675),
            "readable by group and others, writable by group, executable by group and others"
        );
    }

    #[test]
    fn effective_uid_agrees_with_a_new_files_owner() {
        assert_eq!(euid_from_proc(), euid_from_new_file());
    }
}
