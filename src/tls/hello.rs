//! The client's ClientHello, read before rustls sees it, for telemetry
//! (DESIGN.md §6): what every client offers — refused ones included, which
//! rustls does not report — and why a handshake failed.
//!
//! The records are parsed with tls-parser. The bytes read here are handed
//! to rustls unchanged (see [`Replay`]): the only copy is of the
//! ClientHello itself. This module never refuses a client: a ClientHello
//! that tls-parser cannot read still goes to rustls, which decides.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tls_parser::{
    SNIType, TlsExtension, TlsMessage, TlsMessageHandshake, TlsVersion, parse_tls_extensions,
    parse_tls_message_handshake, parse_tls_raw_record,
};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Enough for any ClientHello seen in practice (post-quantum key shares
/// included); beyond it the inspection stops and rustls takes over.
pub const MAX_HELLO_BYTES: usize = 32 * 1024;

const RECORD_HANDSHAKE: u8 = 0x16;
const HANDSHAKE_CLIENT_HELLO: u8 = 0x01;

/// A protocol version as clients offer it: the `version` label of
/// `tls_client_max_version_total`, a fixed set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Version {
    Unknown,
    Ssl3,
    Tls10,
    Tls11,
    Tls12,
    Tls13,
}

impl Version {
    pub fn from_wire(v: u16) -> Self {
        match v {
            0x0300 => Self::Ssl3,
            0x0301 => Self::Tls10,
            0x0302 => Self::Tls11,
            0x0303 => Self::Tls12,
            0x0304 => Self::Tls13,
            _ => Self::Unknown,
        }
    }

    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Unknown => "unknown",
            Self::Ssl3 => "SSLv3",
            Self::Tls10 => "TLSv1.0",
            Self::Tls11 => "TLSv1.1",
            Self::Tls12 => "TLSv1.2",
            Self::Tls13 => "TLSv1.3",
        }
    }
}

/// What a ClientHello offered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientHelloSummary {
    /// The highest version offered: the `supported_versions` extension
    /// (GREASE ignored), else the legacy version field.
    pub max_version: Version,
    pub legacy_version: u16,
    /// The SNI host name if it is a syntactically valid DNS name
    /// (lowercased, at most 253 bytes); anything else is not kept.
    pub sni: Option<String>,
    /// An SNI extension was present (even one not kept above).
    pub sni_present: bool,
    pub cipher_suites: usize,
    /// Entries of `signature_algorithms`; `None` when the extension is absent.
    pub signature_schemes: Option<usize>,
}

/// How far the bytes read so far go towards a whole ClientHello.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    /// Read more.
    NeedMore,
    /// The first `n` bytes are the records carrying the whole ClientHello.
    Complete(usize),
    /// Not a TLS handshake record: plain text, or anything but TLS.
    NotTls,
    /// Too large or malformed to inspect; rustls decides.
    GiveUp,
}

/// A ClientHello spans one record, rarely a few: more than this many
/// records is not a client worth inspecting.
const MAX_HELLO_RECORDS: usize = 16;

/// Looks at the records in `buf` (the start of the stream). Cheap to call
/// after every read: it walks record headers only (at most
/// [`MAX_HELLO_RECORDS`]) and copies nothing; a buffer at the size cap, an
/// empty handshake record (RFC 8446 §5.1 forbids them) or too many records
/// end the inspection.
pub fn progress(buf: &[u8]) -> Progress {
    if buf.is_empty() {
        return Progress::NeedMore;
    }
    if buf[0] != RECORD_HANDSHAKE {
        return Progress::NotTls;
    }
    // The handshake message's type and 3-byte length, then how many of its
    // bytes the complete records hold.
    let mut head: Vec<u8> = Vec::with_capacity(4);
    let mut fragment_bytes = 0usize;
    let mut at = 0usize;
    for _ in 0..MAX_HELLO_RECORDS {
        let Some(header) = buf.get(at..at + 5) else {
            return need_more(buf);
        };
        if header[0] != RECORD_HANDSHAKE || header[1] != 0x03 {
            return Progress::GiveUp;
        }
        let len = usize::from(u16::from_be_bytes([header[3], header[4]]));
        if len == 0 || len > usize::from(tls_parser::MAX_RECORD_LEN) {
            return Progress::GiveUp;
        }
        let Some(fragment) = buf.get(at + 5..at + 5 + len) else {
            return need_more(buf);
        };
        at += 5 + len;
        if head.len() < 4 {
            let take = (4 - head.len()).min(fragment.len());
            head.extend_from_slice(&fragment[..take]);
        }
        fragment_bytes += len;
        if head.len() == 4 {
            if head[0] != HANDSHAKE_CLIENT_HELLO {
                return Progress::GiveUp;
            }
            let message_len = u32::from_be_bytes([0, head[1], head[2], head[3]]) as usize;
            if 4 + message_len > MAX_HELLO_BYTES {
                return Progress::GiveUp;
            }
            if fragment_bytes >= 4 + message_len {
                return Progress::Complete(at);
            }
        }
    }
    Progress::GiveUp
}

fn need_more(buf: &[u8]) -> Progress {
    if buf.len() >= MAX_HELLO_BYTES {
        Progress::GiveUp
    } else {
        Progress::NeedMore
    }
}

/// Parses the records of one whole ClientHello (see [`progress`]).
pub fn parse(records: &[u8]) -> Option<ClientHelloSummary> {
    let mut message: Vec<u8> = Vec::new();
    let mut rest = records;
    while !rest.is_empty() {
        let (after, record) = parse_tls_raw_record(rest).ok()?;
        message.extend_from_slice(record.data);
        rest = after;
    }
    let (_, msg) = parse_tls_message_handshake(&message).ok()?;
    let TlsMessage::Handshake(TlsMessageHandshake::ClientHello(hello)) = msg else {
        return None;
    };
    let legacy = hello.version.0;
    let mut summary = ClientHelloSummary {
        max_version: Version::from_wire(legacy),
        legacy_version: legacy,
        sni: None,
        sni_present: false,
        cipher_suites: hello.ciphers.iter().filter(|c| !is_grease(c.0)).count(),
        signature_schemes: None,
    };
    let extensions = match hello.ext {
        Some(e) => parse_tls_extensions(e).ok()?.1,
        None => Vec::new(),
    };
    for ext in extensions {
        match ext {
            TlsExtension::SupportedVersions(versions) => {
                let offered = versions
                    .iter()
                    .filter(|v: &&TlsVersion| !is_grease(v.0))
                    .map(|v| Version::from_wire(v.0))
                    .filter(|v| *v != Version::Unknown)
                    .max();
                if let Some(v) = offered {
                    summary.max_version = v;
                }
            }
            TlsExtension::SNI(names) => {
                summary.sni_present = true;
                summary.sni = names
                    .iter()
                    .find(|(kind, _)| *kind == SNIType::HostName)
                    .and_then(|(_, name)| dns_name(name));
            }
            TlsExtension::SignatureAlgorithms(schemes) => {
                summary.signature_schemes =
                    Some(schemes.iter().filter(|s| !is_grease(**s)).count());
            }
            _ => {}
        }
    }
    Some(summary)
}

/// RFC 8701 GREASE values: 0x?A?A with both bytes equal.
fn is_grease(v: u16) -> bool {
    v & 0x0f0f == 0x0a0a && (v >> 8) == (v & 0xff)
}

/// A host name fit for a log line: LDH labels, at most 253 bytes.
fn dns_name(raw: &[u8]) -> Option<String> {
    let name = std::str::from_utf8(raw).ok()?.trim_end_matches('.');
    let ok = !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        });
    ok.then(|| name.to_ascii_lowercase())
}

/// `alert_received:<name>` for an alert the client sent: a fixed set.
pub fn alert_label(code: u8) -> &'static str {
    match code {
        0 => "alert_received:close_notify",
        10 => "alert_received:unexpected_message",
        20 => "alert_received:bad_record_mac",
        22 => "alert_received:record_overflow",
        40 => "alert_received:handshake_failure",
        42 => "alert_received:bad_certificate",
        43 => "alert_received:unsupported_certificate",
        44 => "alert_received:certificate_revoked",
        45 => "alert_received:certificate_expired",
        46 => "alert_received:certificate_unknown",
        47 => "alert_received:illegal_parameter",
        48 => "alert_received:unknown_ca",
        49 => "alert_received:access_denied",
        50 => "alert_received:decode_error",
        51 => "alert_received:decrypt_error",
        70 => "alert_received:protocol_version",
        71 => "alert_received:insufficient_security",
        80 => "alert_received:internal_error",
        86 => "alert_received:inappropriate_fallback",
        90 => "alert_received:user_canceled",
        109 => "alert_received:missing_extension",
        110 => "alert_received:unsupported_extension",
        112 => "alert_received:unrecognized_name",
        116 => "alert_received:certificate_required",
        120 => "alert_received:no_application_protocol",
        _ => "alert_received:other",
    }
}

/// A stream that first yields bytes already read from `inner` (the
/// ClientHello), then reads `inner`; writes go straight to `inner`.
#[derive(Debug)]
pub struct Replay<IO> {
    prefix: Vec<u8>,
    pos: usize,
    inner: IO,
}

impl<IO> Replay<IO> {
    pub fn new(prefix: Vec<u8>, inner: IO) -> Self {
        Self {
            prefix,
            pos: 0,
            inner,
        }
    }

    pub fn get_ref(&self) -> &IO {
        &self.inner
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Replay<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.pos < this.prefix.len() {
            let n = buf.remaining().min(this.prefix.len() - this.pos);
            buf.put_slice(&this.prefix[this.pos..this.pos + n]);
            this.pos += n;
            if this.pos == this.prefix.len() {
                // Replayed: give the memory back for the session's lifetime.
                this.prefix = Vec::new();
                this.pos = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Replay<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// File, SNI, legacy version, highest version, cipher suites,
    /// signature schemes.
    type Expected = (
        &'static str,
        Option<&'static str>,
        u16,
        Version,
        usize,
        Option<usize>,
    );

    /// Real ClientHellos captured by tests/fixtures/clienthello/capture.sh;
    /// the expected facts were decoded independently by its decode.py.
    #[test]
    fn captured_client_hellos() {
        use Version::*;
        let sni = Some("mx1.example.test");
        #[rustfmt::skip]
        let cases: &[Expected] = &[
            ("openssl-default", sni, 0x0303, Tls13, 31, Some(20)),
            ("openssl-tls1_2", sni, 0x0303, Tls12, 28, Some(20)),
            ("openssl-tls1_1", sni, 0x0302, Tls11, 9, None),
            ("openssl-tls1_0", sni, 0x0301, Tls10, 9, None),
            ("openssl-nosni", None, 0x0303, Tls13, 31, Some(20)),
            ("openssl-fragmented", sni, 0x0303, Tls13, 93, Some(23)),
            ("openssl110-default", sni, 0x0303, Tls12, 28, Some(15)),
            ("openssl111-default", sni, 0x0303, Tls13, 31, Some(23)),
            ("openssl111-tls1_2", sni, 0x0303, Tls12, 28, Some(23)),
            ("python-default", sni, 0x0303, Tls13, 31, Some(20)),
            ("python-tls1_2", sni, 0x0303, Tls12, 28, Some(20)),
            ("go-default", sni, 0x0303, Tls13, 19, Some(12)),
            ("gnutls-default", sni, 0x0303, Tls13, 29, Some(16)),
            ("gnutls-tls1_0", sni, 0x0301, Tls10, 8, None),
        ];
        let dir =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/clienthello");
        for (file, sni, legacy, max, suites, sigs) in cases {
            let bytes = std::fs::read(dir.join(format!("{file}.bin"))).unwrap();
            // Complete exactly at the last byte, whatever the reads' sizes.
            for cut in 0..bytes.len() {
                assert_ne!(
                    progress(&bytes[..cut]),
                    Progress::Complete(cut),
                    "{file} at {cut}"
                );
            }
            assert_eq!(progress(&bytes), Progress::Complete(bytes.len()), "{file}");
            let mut with_more = bytes.clone();
            with_more.extend_from_slice(b"\x14\x03\x03\x00\x01\x01");
            assert_eq!(
                progress(&with_more),
                Progress::Complete(bytes.len()),
                "{file}"
            );
            let s = parse(&bytes).unwrap_or_else(|| panic!("{file} did not parse"));
            assert_eq!(s.sni.as_deref(), *sni, "{file}");
            assert_eq!(s.sni_present, sni.is_some(), "{file}");
            assert_eq!(s.legacy_version, *legacy, "{file}");
            assert_eq!(s.max_version, *max, "{file}");
            assert_eq!(s.cipher_suites, *suites, "{file}");
            assert_eq!(s.signature_schemes, *sigs, "{file}");
        }
    }

    /// rustls's own ClientHello, generated here (rustls is the client the
    /// tests use, and a real sender's MTA may be built on it).
    #[test]
    fn rustls_client_hello() {
        let roots = rustls::RootCertStore::empty();
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let name = rustls::pki_types::ServerName::try_from("MX.Tenant2.test").unwrap();
        let mut conn = rustls::ClientConnection::new(std::sync::Arc::new(config), name).unwrap();
        let mut bytes = Vec::new();
        conn.write_tls(&mut bytes).unwrap();
        assert_eq!(progress(&bytes), Progress::Complete(bytes.len()));
        let s = parse(&bytes).unwrap();
        assert_eq!(s.max_version, Version::Tls13);
        assert_eq!(s.legacy_version, 0x0303);
        assert_eq!(s.sni.as_deref(), Some("mx.tenant2.test"));
        assert!(s.cipher_suites >= 5, "{s:?}");
        assert!(s.signature_schemes.is_some_and(|n| n >= 5), "{s:?}");
    }

    /// A post-quantum ClientHello carries a 1,216-byte X25519MLKEM768 key
    /// share: still one record, read whole and parsed.
    #[test]
    fn post_quantum_client_hello() {
        let roots = rustls::RootCertStore::empty();
        let provider = std::sync::Arc::new(crate::tls::provider::server_provider(true));
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let name = rustls::pki_types::ServerName::try_from("mx1.example.test").unwrap();
        let mut conn = rustls::ClientConnection::new(std::sync::Arc::new(config), name).unwrap();
        let mut bytes = Vec::new();
        conn.write_tls(&mut bytes).unwrap();
        assert!(bytes.len() > 1216, "{} bytes", bytes.len());
        assert_eq!(progress(&bytes), Progress::Complete(bytes.len()));
        let s = parse(&bytes).unwrap();
        assert_eq!(s.max_version, Version::Tls13);
        assert_eq!(s.sni.as_deref(), Some("mx1.example.test"));
    }

    #[test]
    fn grease_values_are_recognised() {
        assert!(is_grease(0x0a0a));
        assert!(is_grease(0xfafa));
        assert!(!is_grease(0x0a1a));
        assert!(!is_grease(0x0304));
    }

    #[test]
    fn sni_must_be_a_dns_name() {
        assert_eq!(
            dns_name(b"MX1.Example.TEST"),
            Some("mx1.example.test".into())
        );
        assert_eq!(
            dns_name(b"mx1.example.test."),
            Some("mx1.example.test".into())
        );
        assert_eq!(dns_name(b"bad name"), None);
        assert_eq!(dns_name(b"a..b"), None);
        assert_eq!(dns_name(b"evil\"}\n"), None);
        assert_eq!(dns_name(&[b'a'; 300]), None);
    }

    #[test]
    fn plain_text_is_not_tls_and_nothing_is_need_more() {
        assert_eq!(progress(b""), Progress::NeedMore);
        assert_eq!(progress(b"EHLO x\r\n"), Progress::NotTls);
        assert_eq!(progress(&[0x16, 0x03]), Progress::NeedMore);
        // A handshake record carrying something other than a ClientHello.
        assert_eq!(
            progress(&[0x16, 0x03, 0x01, 0x00, 0x04, 0x02, 0x00, 0x00, 0x00]),
            Progress::GiveUp
        );
        // A ClientHello claiming more than the cap.
        assert_eq!(
            progress(&[0x16, 0x03, 0x01, 0x00, 0x04, 0x01, 0x01, 0x00, 0x00]),
            Progress::GiveUp
        );
    }

    /// A client feeding records that never complete a ClientHello cannot
    /// make the proxy buffer or parse without bound.
    #[test]
    fn endless_records_are_given_up_on() {
        // Empty handshake records (forbidden).
        let empty: Vec<u8> = [0x16, 0x03, 0x01, 0x00, 0x00].repeat(10_000);
        assert_eq!(progress(&empty), Progress::GiveUp);
        // A ClientHello header promising 100 bytes, then one-byte records.
        let mut dribble = vec![0x16, 0x03, 0x01, 0x00, 0x04, 0x01, 0x00, 0x00, 0x64];
        for _ in 0..100 {
            dribble.extend_from_slice(&[0x16, 0x03, 0x01, 0x00, 0x01, 0x00]);
        }
        assert_eq!(progress(&dribble), Progress::GiveUp);
        // Whatever the records, a buffer at the cap ends the inspection.
        let mut big = vec![0x16, 0x03, 0x01, 0x40, 0x00];
        big.resize(MAX_HELLO_BYTES, 0);
        assert_eq!(progress(&big), Progress::GiveUp);
    }
}
