//! PEM chain and key files → a served certificate, checked at load so that
//! a handshake can never fail for want of a usable certificate.
//!
//! Checked here: files readable and PEM; key usable by rustls and matching
//! the leaf; leaf currently valid; at least one SAN DNS name (CN ignored, as
//! modern clients do). A self-signed root at the end of the chain file is
//! dropped from what is served. Path validation to a trust anchor comes with
//! the certificate validation work (issue #4).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use rustls::SignatureAlgorithm;
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};
use zeroize::Zeroizing;

use super::validate::{CertNames, ChainError, TrustAnchors, check_chain, key_file_warnings};
use crate::config::{CertificateConfig, ChainCheck, ConfigError};

/// A certificate ready to serve.
#[derive(Debug)]
pub struct LoadedCert {
    /// The `[[certificate]] name` from the config.
    pub name: String,
    /// SAN DNS names of the leaf, lowercased (`*.example.test` for wildcards).
    pub names: Vec<String>,
    pub key: Arc<CertifiedKey>,
    pub algorithm: KeyAlgorithm,
    pub subject: String,
    pub issuer: String,
    pub serial: String,
    /// Seconds since the epoch.
    pub not_before: i64,
    pub not_after: i64,
    /// A root was present at the end of the file and is not served.
    pub root_dropped: bool,
    /// Subjects of what is served, leaf first.
    pub chain: Vec<String>,
    pub chain_check: ChainCheck,
    /// Problems that do not stop serving (expiring soon, root dropped).
    pub warnings: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyAlgorithm {
    Ecdsa,
    Rsa,
    Ed25519,
}

impl KeyAlgorithm {
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Ecdsa => "ECDSA",
            Self::Rsa => "RSA",
            Self::Ed25519 => "Ed25519",
        }
    }
}

/// Why a certificate cannot be served. Each names the file at fault.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: not a PEM certificate chain: {detail}", path.display())]
    ChainPem { path: PathBuf, detail: String },
    #[error("{}: no CERTIFICATE in the file", path.display())]
    NoCertificates { path: PathBuf },
    #[error("{}: no private key in the file (or not PEM): {detail}", path.display())]
    KeyPem { path: PathBuf, detail: String },
    #[error("{}: key type not supported: {source}", path.display())]
    KeyUnsupported {
        path: PathBuf,
        #[source]
        source: rustls::Error,
    },
    #[error("{}: certificate {index} cannot be parsed: {detail}", path.display())]
    Parse {
        path: PathBuf,
        index: usize,
        detail: String,
    },
    #[error("{}: does not match the leaf certificate in {}", key.display(), chain.display())]
    KeyMismatch { chain: PathBuf, key: PathBuf },
    #[error("{}: leaf certificate expired at {}", path.display(), fmt_time(*not_after))]
    Expired { path: PathBuf, not_after: i64 },
    #[error("{}: leaf certificate not valid before {}", path.display(), fmt_time(*not_before))]
    NotYetValid { path: PathBuf, not_before: i64 },
    #[error("{}: {source}", path.display())]
    Chain {
        path: PathBuf,
        #[source]
        source: ChainError,
    },
    #[error("{}: leaf certificate has no subjectAltName DNS names (CN is not used)", path.display())]
    NoDnsNames { path: PathBuf },
}

impl CertError {
    /// Whether the key file (rather than the chain file) is at fault.
    pub fn is_key_error(&self) -> bool {
        matches!(
            self,
            Self::KeyPem { .. } | Self::KeyUnsupported { .. } | Self::KeyMismatch { .. }
        )
    }

    /// As a config error pointing at the offending key of `[[certificate]]`.
    pub fn to_config_error(&self, config_path: &Path, c: &CertificateConfig) -> ConfigError {
        let key_error = match self {
            Self::Read { path, .. } => path == &c.key,
            other => other.is_key_error(),
        };
        if key_error {
            ConfigError::new(
                config_path,
                c.key_at,
                format!("{}.key", c.key_path),
                self.to_string(),
            )
        } else {
            ConfigError::new(
                config_path,
                c.chain_at,
                format!("{}.chain", c.key_path),
                self.to_string(),
            )
        }
    }
}

pub fn fmt_time(t: i64) -> String {
    u64::try_from(t)
        .ok()
        .map(|s| {
            humantime::format_rfc3339_seconds(UNIX_EPOCH + std::time::Duration::from_secs(s))
                .to_string()
        })
        .unwrap_or_else(|| format!("{t} (seconds since 1970)"))
}

pub fn now_unix() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// What a load checks against besides the files themselves.
#[derive(Debug)]
pub struct LoadContext<'a> {
    pub anchors: &'a TrustAnchors,
    /// Seconds since the epoch.
    pub now: i64,
    /// Warn when the leaf expires within this window.
    pub expiry_warning: std::time::Duration,
}

/// What is known of a file as read, without its contents: metadata for
/// the logs, and a SHA-256 digest, which alone says whether the contents
/// changed (a rewrite keeping size and mtime is still a change; a touch
/// or a swap to identical bytes is not).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileStamp {
    pub len: u64,
    pub modified: Option<SystemTime>,
    pub dev: u64,
    pub ino: u64,
    /// The inode's change time (seconds, nanoseconds): every write,
    /// truncate, chmod or utimes sets it, and nothing can set it back.
    pub changed: (i64, i64),
    pub digest: Vec<u8>,
}

impl FileStamp {
    fn new(meta: &std::fs::Metadata, contents: &[u8]) -> Self {
        let (dev, ino, changed) = identity(meta);
        Self {
            len: meta.len(),
            modified: meta.modified().ok(),
            dev,
            ino,
            changed,
            digest: sha256(contents),
        }
    }

    pub fn same_contents(&self, other: &Self) -> bool {
        self.len == other.len && self.digest == other.digest
    }

    /// Whether `meta` (of the path now) is the very file this stamp was
    /// taken of, untouched since: same inode, size, mtime and change time.
    /// A poll that finds this needs not read the file; anything else (a
    /// rename over it, a symlink swap, a write in place even keeping size
    /// and mtime) differs, and the contents decide.
    pub fn same_file(&self, meta: &std::fs::Metadata) -> bool {
        let (dev, ino, changed) = identity(meta);
        self.dev == dev
            && self.ino == ino
            && self.changed == changed
            && self.len == meta.len()
            && self.modified == meta.modified().ok()
    }
}

/// Device, inode and change time of a file (zeros where the platform has
/// none: then `same_file` is never sure, and polls read).
fn identity(meta: &std::fs::Metadata) -> (u64, u64, (i64, i64)) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        (meta.dev(), meta.ino(), (meta.ctime(), meta.ctime_nsec()))
    }
    #[cfg(not(unix))]
    {
        let _ = meta;
        (0, 0, (0, 0))
    }
}

/// The stamps of both files of a certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertStamps {
    pub chain: FileStamp,
    pub key: FileStamp,
}

impl CertStamps {
    pub fn same_contents(&self, other: &Self) -> bool {
        self.chain.same_contents(&other.chain) && self.key.same_contents(&other.key)
    }

    /// Both paths still lead to the files these stamps were taken of,
    /// untouched (two `stat`s, no read): see [`FileStamp::same_file`].
    pub fn same_files(&self, c: &CertificateConfig) -> bool {
        let same = |stamp: &FileStamp, path: &Path| {
            std::fs::metadata(path).is_ok_and(|m| stamp.same_file(&m))
        };
        same(&self.chain, &c.chain) && same(&self.key, &c.key)
    }
}

/// SHA-256 for change detection.
fn sha256(data: &[u8]) -> Vec<u8> {
    super::provider::sha256(data)
}

/// Both files of a `[[certificate]]` as read. The key's PEM text lives in
/// a buffer zeroed when this is dropped: nothing keeps it after parsing.
pub struct CertFiles {
    pub chain: Vec<u8>,
    pub key: Zeroizing<Vec<u8>>,
    /// The key file's metadata (of the file read, not of the path now).
    pub key_meta: std::fs::Metadata,
    pub stamps: CertStamps,
}

impl std::fmt::Debug for CertFiles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertFiles")
            .field("stamps", &self.stamps)
            .finish_non_exhaustive()
    }
}

/// Reads a file into a buffer zeroed on drop, sized from the open file's
/// metadata so that it is not reallocated (leaving copies) on the way.
fn read_file(path: &Path) -> Result<(Zeroizing<Vec<u8>>, std::fs::Metadata), CertError> {
    use std::io::Read;
    let err = |source| CertError::Read {
        path: path.to_path_buf(),
        source,
    };
    let mut file = std::fs::File::open(path).map_err(err)?;
    let meta = file.metadata().map_err(err)?;
    let capacity = usize::try_from(meta.len()).unwrap_or(0).saturating_add(1);
    let mut buf = Zeroizing::new(Vec::with_capacity(capacity));
    file.read_to_end(&mut buf).map_err(err)?;
    Ok((buf, meta))
}

/// Reads both files of a `[[certificate]]`.
pub fn read_files(c: &CertificateConfig) -> Result<CertFiles, CertError> {
    let (mut chain, chain_meta) = read_file(&c.chain)?;
    let (key, key_meta) = read_file(&c.key)?;
    let stamps = CertStamps {
        chain: FileStamp::new(&chain_meta, &chain),
        key: FileStamp::new(&key_meta, &key),
    };
    Ok(CertFiles {
        // Public: moved out, not copied, of the zeroing buffer.
        chain: std::mem::take(&mut *chain),
        key,
        key_meta,
        stamps,
    })
}

/// Loads and checks one `[[certificate]]`.
pub fn load_certificate(
    c: &CertificateConfig,
    cx: &LoadContext<'_>,
) -> Result<LoadedCert, CertError> {
    load_files(c, &read_files(c)?, cx)
}

/// Checks one `[[certificate]]` from its files as read, so that a reloader
/// can record exactly what it validated; warns about the key file's
/// permissions and owner.
pub fn load_files(
    c: &CertificateConfig,
    files: &CertFiles,
    cx: &LoadContext<'_>,
) -> Result<LoadedCert, CertError> {
    let mut loaded = load_from_pem(c, &files.chain, &files.key, cx)?;
    loaded
        .warnings
        .extend(key_file_warnings(&c.key, &files.key_meta));
    Ok(loaded)
}

/// Checks one `[[certificate]]` from the bytes of its files. The parsed
/// key is zeroed when dropped, as is what the caller holds of `key_pem`.
pub fn load_from_pem(
    c: &CertificateConfig,
    chain_pem: &[u8],
    key_pem: &[u8],
    cx: &LoadContext<'_>,
) -> Result<LoadedCert, CertError> {
    let mut chain: Vec<CertificateDer<'static>> = Vec::new();
    for item in CertificateDer::pem_slice_iter(chain_pem) {
        let der = item.map_err(|e| CertError::ChainPem {
            path: c.chain.clone(),
            detail: e.to_string(),
        })?;
        chain.push(der);
    }
    if chain.is_empty() {
        return Err(CertError::NoCertificates {
            path: c.chain.clone(),
        });
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem)
        .map(Zeroizing::new)
        .map_err(|e| CertError::KeyPem {
            path: c.key.clone(),
            detail: e.to_string(),
        })?;

    let mut parsed: Vec<CertNames> = Vec::with_capacity(chain.len());
    let mut spkis: Vec<Vec<u8>> = Vec::with_capacity(chain.len());
    let mut not_afters: Vec<i64> = Vec::with_capacity(chain.len());
    let mut leaf_facts = None;
    for (index, der) in chain.iter().enumerate() {
        let (_, cert) = X509Certificate::from_der(der).map_err(|e| CertError::Parse {
            path: c.chain.clone(),
            index,
            detail: e.to_string(),
        })?;
        parsed.push(CertNames {
            subject: cert.subject().to_string(),
            issuer: cert.issuer().to_string(),
            subject_raw: cert.subject().as_raw().to_vec(),
            issuer_raw: cert.issuer().as_raw().to_vec(),
        });
        spkis.push(cert.public_key().raw.to_vec());
        not_afters.push(cert.validity().not_after.timestamp());
        if index == 0 {
            leaf_facts = Some((
                cert.raw_serial_as_string(),
                cert.validity().not_before.timestamp(),
                cert.validity().not_after.timestamp(),
                san_dns_names(&cert),
            ));
        }
    }
    let Some((serial, not_before, not_after, names)) = leaf_facts else {
        return Err(CertError::NoCertificates {
            path: c.chain.clone(),
        });
    };
    let signing_key =
        super::provider::signing_key(&key).map_err(|source| CertError::KeyUnsupported {
            path: c.key.clone(),
            source,
        })?;
    let algorithm = match signing_key.algorithm() {
        SignatureAlgorithm::ECDSA => KeyAlgorithm::Ecdsa,
        SignatureAlgorithm::ED25519 => KeyAlgorithm::Ed25519,
        _ => KeyAlgorithm::Rsa,
    };
    // The key belongs to a later certificate: the leaf is not first, the
    // most common misordering (intermediate pasted above the leaf).
    if let Some(spki) = signing_key.public_key() {
        let spki = spki.as_ref();
        if spkis.first().is_some_and(|s| s != spki)
            && let Some(k) = spkis.iter().position(|s| s == spki)
        {
            return Err(CertError::Chain {
                path: c.chain.clone(),
                source: ChainError::LeafNotFirst {
                    index: k,
                    subject: parsed[k].subject.clone(),
                },
            });
        }
    }
    // A self-signed certificate at the end of a longer chain is the root:
    // clients have it or not, sending it only costs bytes (DESIGN.md §3).
    // (Only if it issued the certificate before it: an unrelated root
    // appended by mistake is a misordered chain, reported as such.)
    let n = parsed.len();
    let root_dropped = n > 1
        && parsed[n - 1].subject_raw == parsed[n - 1].issuer_raw
        && parsed[n - 2].issuer_raw == parsed[n - 1].subject_raw;
    let dropped_root = if root_dropped {
        chain.pop();
        not_afters.pop();
        parsed.pop()
    } else {
        None
    };

    if not_after < cx.now {
        return Err(CertError::Expired {
            path: c.chain.clone(),
            not_after,
        });
    }
    if not_before > cx.now {
        return Err(CertError::NotYetValid {
            path: c.chain.clone(),
            not_before,
        });
    }
    if names.is_empty() {
        return Err(CertError::NoDnsNames {
            path: c.chain.clone(),
        });
    }

    let key = CertifiedKey::new(chain, signing_key);
    if let Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)) =
        key.keys_match()
    {
        return Err(CertError::KeyMismatch {
            chain: c.chain.clone(),
            key: c.key.clone(),
        });
    }

    if c.chain_check == ChainCheck::Full {
        let now = UnixTime::since_unix_epoch(std::time::Duration::from_secs(
            u64::try_from(cx.now).unwrap_or(0),
        ));
        check_chain(&key.cert, &parsed, dropped_root.as_ref(), cx.anchors, now).map_err(
            |source| CertError::Chain {
                path: c.chain.clone(),
                source,
            },
        )?;
    }

    let mut warnings = Vec::new();
    // The chain is as good as its first certificate to expire: an
    // intermediate running out before the leaf is the stale-chain case.
    let window = cx.expiry_warning.as_secs() as i64;
    for (i, &t) in not_afters.iter().enumerate() {
        let who = if i == 0 {
            "the leaf".to_string()
        } else {
            format!("certificate {i} in the chain ({})", parsed[i].subject)
        };
        if t < cx.now {
            // Only possible off the verified path (e.g. an old cross-sign):
            // strict or old TLS stacks fail on it.
            warnings.push(format!(
                "{who} expired at {}; remove it from the chain file",
                fmt_time(t)
            ));
        } else if t - cx.now < window {
            warnings.push(format!(
                "{who} expires in {} days ({})",
                (t - cx.now) / 86_400,
                fmt_time(t)
            ));
        }
    }
    if root_dropped {
        warnings.push(
            "the chain file ends with its root certificate; the root is not served".to_string(),
        );
    }
    let (subject, issuer) = (parsed[0].subject.clone(), parsed[0].issuer.clone());
    Ok(LoadedCert {
        name: c.name.clone(),
        names,
        key: Arc::new(key),
        algorithm,
        subject,
        issuer,
        serial,
        not_before,
        not_after,
        root_dropped,
        chain: parsed.into_iter().map(|n| n.subject).collect(),
        chain_check: c.chain_check,
        warnings,
    })
}

/// The SAN DNS names of a certificate, lowercased, sorted, without duplicates.
pub fn san_dns_names(cert: &X509Certificate<'_>) -> Vec<String> {
    let Ok(Some(san)) = cert.subject_alternative_name() else {
        return Vec::new();
    };
    let mut names: Vec<String> = san
        .value
        .general_names
        .iter()
        .filter_map(|n| match n {
            GeneralName::DNSName(d) => Some(d.trim_end_matches('.').to_ascii_lowercase()),
            _ => None,
        })
        .collect();
    names.sort();
    names.dedup();
    names
}
