//! SMTP TLS Reporting (RFC 8460 §3): the `_smtp._tls.DOMAIN` TXT record
//! that tells senders where to report TLS failures, e.g.
//! `v=TLSRPTv1; rua=mailto:tlsrpt@example.com,https://r.example.com/v1`.
//! Without one, a domain enforcing MTA-STS or DANE learns of delivery
//! failures only from complaints (`tlsrpt_missing`).

use super::dns::{Answer, Dns, DnsError};
use super::tagged::{self, TagError};

const VERSION: &str = "v=TLSRPTv1";

/// A valid `_smtp._tls` record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsRptRecord {
    /// Where reports go, in the record's order.
    pub rua: Vec<ReportUri>,
    /// Fields other than `rua`, in order.
    pub extensions: Vec<(String, String)>,
}

/// One reporting address; the URI as published.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReportUri {
    Mailto(String),
    Https(String),
}

impl ReportUri {
    pub fn as_str(&self) -> &str {
        match self {
            Self::Mailto(u) | Self::Https(u) => u,
        }
    }
}

/// Why the `_smtp._tls` TXT records give no reporting address.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TlsRptError {
    #[error("{0}")]
    Dns(#[from] DnsError),
    #[error(
        "no TXT record at _smtp._tls starts with \"v=TLSRPTv1\" (case-sensitive); found: {}",
        found.iter().map(|s| format!("{s:?}")).collect::<Vec<_>>().join(", ")
    )]
    NoTlsRptv1 { found: Vec<String> },
    #[error(
        "{count} TXT records at _smtp._tls start with \"v=TLSRPTv1\"; RFC 8460 §3 requires exactly one, so senders report nowhere"
    )]
    Multiple { count: usize },
    #[error("TXT record {record:?}: {problem}")]
    Syntax { record: String, problem: TagError },
    #[error("TXT record {record:?} has no rua field")]
    MissingRua { record: String },
    #[error("TXT record {record:?} has more than one rua field")]
    DuplicateRua { record: String },
    #[error("TXT record {record:?}: rua {uri:?} {why}")]
    BadUri {
        record: String,
        uri: String,
        why: String,
    },
    #[error("TXT record {record:?}: field {name:?} has an invalid value {value:?}")]
    BadExtension {
        record: String,
        name: String,
        value: String,
    },
}

/// The `_smtp._tls.DOMAIN` record: `None` when there is no TXT record at
/// all, else the one TLSRPTv1 record or what is wrong.
pub async fn lookup(dns: &Dns, domain: &str) -> Result<Option<TlsRptRecord>, TlsRptError> {
    let name = format!("_smtp._tls.{}", domain.trim_end_matches('.'));
    match dns.txt(&name).await? {
        Answer::NxDomain | Answer::NoData => Ok(None),
        Answer::Records { records, .. } => select_record(&records).map(Some),
    }
}

/// Of the TXT strings at `_smtp._tls`, the one TLSRPTv1 record (others
/// are discarded; not exactly one means no reporting).
pub fn select_record(txts: &[String]) -> Result<TlsRptRecord, TlsRptError> {
    let ours: Vec<&String> = txts
        .iter()
        .filter(|t| tagged::has_version(t, VERSION))
        .collect();
    match ours.as_slice() {
        [] => Err(TlsRptError::NoTlsRptv1 {
            found: txts.to_vec(),
        }),
        [one] => parse_record(one),
        many => Err(TlsRptError::Multiple { count: many.len() }),
    }
}

/// One TXT record: `v=TLSRPTv1; rua=URI[,URI…]` plus extensions.
pub fn parse_record(text: &str) -> Result<TlsRptRecord, TlsRptError> {
    let record = || text.to_string();
    let fields = tagged::fields(text, VERSION).map_err(|problem| TlsRptError::Syntax {
        record: record(),
        problem,
    })?;
    let mut rua = None;
    let mut extensions = Vec::new();
    for f in fields {
        if f.name == "rua" {
            if rua.is_some() {
                return Err(TlsRptError::DuplicateRua { record: record() });
            }
            let uris = f
                .value
                .split(',')
                .map(|u| {
                    report_uri(u.trim_matches([' ', '\t'])).map_err(|why| TlsRptError::BadUri {
                        record: record(),
                        uri: u.to_string(),
                        why,
                    })
                })
                .collect::<Result<Vec<_>, _>>()?;
            rua = Some(uris);
        } else if tagged::is_ext_value(f.value) {
            extensions.push((f.name.to_string(), f.value.to_string()));
        } else {
            return Err(TlsRptError::BadExtension {
                record: record(),
                name: f.name.to_string(),
                value: f.value.to_string(),
            });
        }
    }
    let rua = rua.ok_or_else(|| TlsRptError::MissingRua { record: record() })?;
    Ok(TlsRptRecord { rua, extensions })
}

/// A `mailto:` or `https:` URI (the two schemes of RFC 8460 §3), in URI
/// characters, with `!` percent-encoded as the RFC asks.
fn report_uri(uri: &str) -> Result<ReportUri, String> {
    if uri.is_empty() {
        return Err("is empty (a stray comma?)".into());
    }
    if let Some(c) = uri.chars().find(|c| !is_uri_char(*c)) {
        return Err(format!("contains {c:?}, which a URI cannot"));
    }
    if uri.contains('!') {
        return Err("contains \"!\", which must be percent-encoded as %21".into());
    }
    let (scheme, rest) = uri
        .split_once(':')
        .ok_or_else(|| "has no scheme (mailto: or https:)".to_string())?;
    if scheme.eq_ignore_ascii_case("mailto") {
        let addr = rest.split('?').next().unwrap_or_default();
        match addr.split_once('@') {
            Some((local, domain))
                if !local.is_empty()
                    && domain.contains('.')
                    && domain
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.') =>
            {
                Ok(ReportUri::Mailto(uri.to_string()))
            }
            _ => Err("is not a mailto: URI with an address (mailto:user@example.com)".into()),
        }
    } else if scheme.eq_ignore_ascii_case("https") {
        let host = rest
            .strip_prefix("//")
            .map(|r| r.split(['/', '?', '#']).next().unwrap_or_default());
        match host {
            Some(h) if !h.is_empty() => Ok(ReportUri::Https(uri.to_string())),
            _ => Err("is not an https: URI with a host (https://reports.example.com/v1)".into()),
        }
    } else {
        Err(format!(
            "has scheme {scheme:?}; reports go only to mailto: or https:"
        ))
    }
}

/// RFC 3986's unreserved, reserved and "%" characters.
fn is_uri_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || "-._~:/?#[]@!$&'()*+,;=%".contains(c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rfc_examples() {
        // RFC 8460 §3.
        let r = parse_record("v=TLSRPTv1;rua=mailto:reports@example.com").unwrap();
        assert_eq!(
            r.rua,
            [ReportUri::Mailto("mailto:reports@example.com".into())]
        );
        let r = parse_record("v=TLSRPTv1; rua=https://reporting.example.com/v1/tlsrpt").unwrap();
        assert_eq!(
            r.rua,
            [ReportUri::Https(
                "https://reporting.example.com/v1/tlsrpt".into()
            )]
        );
        let r =
            parse_record("v=TLSRPTv1; rua=mailto:a@example.com , https://r.example.com/v1; x=1;")
                .unwrap();
        assert_eq!(r.rua.len(), 2);
        assert_eq!(r.extensions, [("x".to_string(), "1".to_string())]);
    }

    #[test]
    fn exactly_one_tlsrptv1_record() {
        let txt = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert!(select_record(&txt(&["v=spf1 -all", "v=TLSRPTv1; rua=mailto:a@b.test"])).is_ok());
        assert_eq!(
            select_record(&txt(&[
                "v=TLSRPTv1; rua=mailto:a@b.test",
                "v=TLSRPTv1; rua=mailto:c@b.test"
            ])),
            Err(TlsRptError::Multiple { count: 2 })
        );
        assert!(matches!(
            select_record(&txt(&["v=TLSRPTv2; rua=mailto:a@b.test"])),
            Err(TlsRptError::NoTlsRptv1 { .. })
        ));
    }

    #[test]
    fn each_malformation_is_named() {
        let bad_uri = |rec: &str| match parse_record(rec) {
            Err(TlsRptError::BadUri { uri, why, .. }) => (uri, why),
            other => panic!("{rec}: {other:?}"),
        };
        assert_eq!(
            bad_uri("v=TLSRPTv1; rua=http://r.example.com/").1,
            "has scheme \"http\"; reports go only to mailto: or https:"
        );
        assert_eq!(
            bad_uri("v=TLSRPTv1; rua=mailto:a@b.test,").1,
            "is empty (a stray comma?)"
        );
        assert!(
            bad_uri("v=TLSRPTv1; rua=mailto:reports")
                .1
                .contains("address")
        );
        assert!(bad_uri("v=TLSRPTv1; rua=https:///v1").1.contains("host"));
        assert!(
            bad_uri("v=TLSRPTv1; rua=mailto:a!b@c.test")
                .1
                .contains("%21")
        );
        assert!(
            bad_uri("v=TLSRPTv1; rua=reports@example.com")
                .1
                .contains("scheme")
        );
        assert!(
            bad_uri("v=TLSRPTv1; rua=mailto:a b@c.test")
                .1
                .contains("' '")
        );
        assert_eq!(
            parse_record("v=TLSRPTv1;"),
            Err(TlsRptError::MissingRua {
                record: "v=TLSRPTv1;".into()
            })
        );
        assert!(matches!(
            parse_record("v=TLSRPTv1; rua=mailto:a@b.test; rua=mailto:c@b.test"),
            Err(TlsRptError::DuplicateRua { .. })
        ));
        assert!(matches!(
            parse_record("v=TLSRPTv1 rua=mailto:a@b.test"),
            Err(TlsRptError::Syntax {
                problem: TagError::AfterVersion { .. },
                ..
            })
        ));
        assert!(matches!(
            parse_record("v=TLSRPTv1; rua=mailto:a@b.test; x="),
            Err(TlsRptError::Syntax {
                problem: TagError::EmptyValue { .. },
                ..
            })
        ));
    }
}
