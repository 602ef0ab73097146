//! Does a server still accept TLS 1.0 or 1.1? rustls cannot offer them,
//! so after STARTTLS the probe sends a minimal ClientHello built here by
//! hand (record version 1.0, client_version 1.1, classic ECDHE and RSA CBC
//! suites, SNI, supported groups, point formats) and reads only the first
//! record of the reply: a ServerHello at 1.0 or 1.1 means the server would
//! go on with it (accepted); an alert or a close means refused. The probe
//! never completes such a handshake.

use crate::tls::hello::Version;

/// TLS_ECDHE_RSA_WITH_AES_128/256_CBC_SHA, TLS_ECDHE_ECDSA_WITH_AES_128/256_CBC_SHA,
/// TLS_RSA_WITH_AES_128/256_CBC_SHA, TLS_RSA_WITH_3DES_EDE_CBC_SHA, and the
/// renegotiation SCSV (RFC 5746), as old clients sent them.
pub const CIPHER_SUITES: [u16; 8] = [
    0xc013, 0xc014, 0xc009, 0xc00a, 0x002f, 0x0035, 0x000a, 0x00ff,
];

/// x25519, secp256r1, secp384r1.
const GROUPS: [u16; 3] = [0x001d, 0x0017, 0x0018];

/// The highest version offered: a server that has 1.1 answers 1.1, one that
/// has only 1.0 answers 1.0; either is "accepted".
pub const CLIENT_VERSION: u16 = 0x0302;

/// Enough of the reply to decide: a record header and the start of its body.
pub const REPLY_BYTES_NEEDED: usize = 11;

/// The ClientHello record. `sni`: a DNS name to send (never an address).
pub fn client_hello(sni: Option<&str>, random: [u8; 32]) -> Vec<u8> {
    let mut ext = Vec::new();
    if let Some(name) = sni {
        let name = name.as_bytes();
        let mut list = vec![0u8]; // host_name
        put_u16(&mut list, name.len());
        list.extend_from_slice(name);
        extension(&mut ext, 0x0000, &with_u16_len(&list));
    }
    let mut groups = Vec::new();
    for g in GROUPS {
        groups.extend_from_slice(&g.to_be_bytes());
    }
    extension(&mut ext, 0x000a, &with_u16_len(&groups));
    extension(&mut ext, 0x000b, &[1, 0]); // ec_point_formats: uncompressed

    let mut body = Vec::new();
    body.extend_from_slice(&CLIENT_VERSION.to_be_bytes());
    body.extend_from_slice(&random);
    body.push(0); // no session id
    let mut suites = Vec::new();
    for s in CIPHER_SUITES {
        suites.extend_from_slice(&s.to_be_bytes());
    }
    body.extend_from_slice(&with_u16_len(&suites));
    body.extend_from_slice(&[1, 0]); // compression: null only
    body.extend_from_slice(&with_u16_len(&ext));

    let mut handshake = vec![0x01]; // client_hello
    handshake.extend_from_slice(&u24(body.len()));
    handshake.extend_from_slice(&body);

    let mut record = vec![0x16, 0x03, 0x01];
    put_u16(&mut record, handshake.len());
    record.extend_from_slice(&handshake);
    record
}

fn put_u16(out: &mut Vec<u8>, n: usize) {
    // Every length here is of a few hundred bytes at most.
    out.extend_from_slice(&(n as u16).to_be_bytes());
}

fn u24(n: usize) -> [u8; 3] {
    let b = (n as u32).to_be_bytes();
    [b[1], b[2], b[3]]
}

fn with_u16_len(data: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(data.len() + 2);
    put_u16(&mut v, data.len());
    v.extend_from_slice(data);
    v
}

fn extension(out: &mut Vec<u8>, kind: u16, data: &[u8]) {
    out.extend_from_slice(&kind.to_be_bytes());
    out.extend_from_slice(&with_u16_len(data));
}

/// What the server's first record said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LegacyReply {
    /// A ServerHello at TLS 1.0 or 1.1.
    Accepted(Version),
    Refused(Refusal),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// An alert record: its description (e.g. 70 protocol_version).
    Alert(u8),
    /// A ServerHello at another version (a server that ignores what the
    /// client offered; it cannot complete with a 1.1 client).
    OtherVersion(Version),
    /// A handshake record that is not a ServerHello.
    UnexpectedHandshake(u8),
    /// Not a TLS record at all (e.g. an SMTP error line).
    NotTls(u8),
    /// The connection closed before a whole answer.
    Closed,
    /// No answer within the timeout.
    Timeout,
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Alert(d) => write!(
                f,
                "alert {}",
                crate::tls::hello::alert_label(*d).trim_start_matches("alert_received:")
            ),
            Self::OtherVersion(v) => write!(f, "ServerHello at {} (not 1.0 or 1.1)", v.as_str()),
            Self::UnexpectedHandshake(t) => {
                write!(f, "handshake message {t} instead of ServerHello")
            }
            Self::NotTls(b) => write!(f, "not a TLS record (first byte 0x{b:02x})"),
            Self::Closed => f.write_str("connection closed"),
            Self::Timeout => f.write_str("no reply"),
        }
    }
}

/// Decides from the first bytes of the reply, or `None` while fewer than
/// needed have arrived. Reads nothing past the first record's first bytes.
pub fn parse_reply(buf: &[u8]) -> Option<LegacyReply> {
    let first = *buf.first()?;
    match first {
        0x16 => {
            // type(1) version(2) length(2) | msg_type(1) length(3) server_version(2)
            let msg_type = *buf.get(5)?;
            if msg_type != 0x02 {
                return Some(LegacyReply::Refused(Refusal::UnexpectedHandshake(msg_type)));
            }
            let v = u16::from_be_bytes([*buf.get(9)?, *buf.get(10)?]);
            Some(match Version::from_wire(v) {
                v @ (Version::Tls10 | Version::Tls11) => LegacyReply::Accepted(v),
                other => LegacyReply::Refused(Refusal::OtherVersion(other)),
            })
        }
        // type(1) version(2) length(2) | level(1) description(1)
        0x15 => Some(LegacyReply::Refused(Refusal::Alert(*buf.get(6)?))),
        other => Some(LegacyReply::Refused(Refusal::NotTls(other))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tls_parser::{
        TlsExtension, TlsMessage, TlsMessageHandshake, parse_tls_extensions, parse_tls_plaintext,
    };

    #[test]
    fn the_hello_is_a_valid_tls_1_1_client_hello_as_tls_parser_reads_it() {
        let bytes = client_hello(Some("mx1.example.test"), [7; 32]);
        assert_eq!(&bytes[..3], &[0x16, 0x03, 0x01]);
        let (rest, plaintext) = parse_tls_plaintext(&bytes).unwrap();
        assert!(rest.is_empty());
        let [TlsMessage::Handshake(TlsMessageHandshake::ClientHello(ch))] = &plaintext.msg[..]
        else {
            panic!("not one ClientHello: {:?}", plaintext.msg)
        };
        assert_eq!(u16::from(ch.version), 0x0302);
        assert_eq!(ch.random, &[7; 32]);
        let suites: Vec<u16> = ch.ciphers.iter().map(|c| c.0).collect();
        assert_eq!(suites, CIPHER_SUITES);
        let (_, exts) = parse_tls_extensions(ch.ext.unwrap()).unwrap();
        assert!(exts.iter().any(|e| matches!(e,
            TlsExtension::SNI(names) if names.len() == 1 && names[0].1 == b"mx1.example.test")));
        assert!(
            exts.iter()
                .any(|e| matches!(e, TlsExtension::EllipticCurves(g) if g.len() == 3))
        );
        assert!(
            exts.iter()
                .any(|e| matches!(e, TlsExtension::EcPointFormats(f) if f == &[0]))
        );
    }

    #[test]
    fn without_sni_there_is_no_server_name_extension() {
        let bytes = client_hello(None, [0; 32]);
        let (_, plaintext) = parse_tls_plaintext(&bytes).unwrap();
        let TlsMessage::Handshake(TlsMessageHandshake::ClientHello(ch)) = &plaintext.msg[0] else {
            panic!()
        };
        let (_, exts) = parse_tls_extensions(ch.ext.unwrap()).unwrap();
        assert!(!exts.iter().any(|e| matches!(e, TlsExtension::SNI(_))));
    }

    /// The start of a ServerHello record at `version`.
    fn server_hello(version: [u8; 2]) -> Vec<u8> {
        let mut v = vec![0x16, 0x03, 0x01, 0x00, 0x51, 0x02, 0x00, 0x00, 0x4d];
        v.extend_from_slice(&version);
        v.extend_from_slice(&[0xaa; 32]);
        v
    }

    #[test]
    fn server_hello_at_1_0_or_1_1_is_accepted() {
        assert_eq!(
            parse_reply(&server_hello([3, 1])),
            Some(LegacyReply::Accepted(Version::Tls10))
        );
        assert_eq!(
            parse_reply(&server_hello([3, 2])),
            Some(LegacyReply::Accepted(Version::Tls11))
        );
        assert_eq!(
            parse_reply(&server_hello([3, 3])),
            Some(LegacyReply::Refused(Refusal::OtherVersion(Version::Tls12)))
        );
    }

    #[test]
    fn an_alert_is_a_refusal_naming_it() {
        let alert = [0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 70];
        let r = parse_reply(&alert);
        assert_eq!(r, Some(LegacyReply::Refused(Refusal::Alert(70))));
        let Some(LegacyReply::Refused(why)) = r else {
            unreachable!()
        };
        assert_eq!(why.to_string(), "alert protocol_version");
    }

    #[test]
    fn every_prefix_short_of_a_decision_asks_for_more() {
        let hello = server_hello([3, 1]);
        for n in 0..REPLY_BYTES_NEEDED {
            assert_eq!(parse_reply(&hello[..n]), None, "prefix of {n} bytes");
        }
        let alert = [0x15, 0x03, 0x01, 0x00, 0x02, 0x02, 40];
        for n in 0..alert.len() {
            assert_eq!(parse_reply(&alert[..n]), None, "prefix of {n} bytes");
        }
    }

    #[test]
    fn smtp_text_instead_of_tls_is_refused() {
        assert_eq!(
            parse_reply(b"454 4.7.0 TLS not available\r\n"),
            Some(LegacyReply::Refused(Refusal::NotTls(b'4')))
        );
    }
}
