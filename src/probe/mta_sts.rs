//! MTA-STS (RFC 8461), as a sender discovers it: the `_mta-sts.DOMAIN`
//! TXT record (§3.1, here), the policy fetched over verified HTTPS from
//! `mta-sts.DOMAIN` (§3.3, [`fetch`]), parsed strictly (§3.2, [`policy`]),
//! and whether its `mx` patterns cover each MX host (§4.1, [`covers`]).
//!
//! Everything returns values: a record or policy, or an error that says
//! exactly what is wrong, for the probe to turn into findings.

pub mod fetch;
pub mod policy;

pub use fetch::{FetchError, FetchedPolicy, PolicyFetcher};
pub use policy::{Mode, MxPattern, Policy, PolicyError, PolicyProblem, covers};

use super::dns::{Answer, Dns, DnsError};
use super::tagged::{self, TagError};

const VERSION: &str = "v=STSv1";

/// A valid `_mta-sts` TXT record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StsRecord {
    /// The policy id (1 to 32 letters and digits); a change tells senders
    /// to fetch the policy again.
    pub id: String,
    /// Fields other than `id`, in order.
    pub extensions: Vec<(String, String)>,
}

/// Why the `_mta-sts` TXT records give no policy id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    #[error("{0}")]
    Dns(#[from] DnsError),
    #[error(
        "no TXT record at _mta-sts starts with \"v=STSv1\" (case-sensitive), so senders see no MTA-STS; found: {}",
        quoted(found)
    )]
    NoStsv1 { found: Vec<String> },
    #[error(
        "{count} TXT records at _mta-sts start with \"v=STSv1\"; RFC 8461 §3.1 requires exactly one, so senders ignore them all"
    )]
    Multiple { count: usize },
    #[error("TXT record {record:?}: {problem}")]
    Syntax { record: String, problem: TagError },
    #[error("TXT record {record:?} has no id field")]
    MissingId { record: String },
    #[error("TXT record {record:?}: id {id:?} must be 1 to 32 letters and digits")]
    BadId { record: String, id: String },
    #[error("TXT record {record:?} has more than one id field")]
    DuplicateId { record: String },
    #[error("TXT record {record:?}: field {name:?} has an invalid value {value:?}")]
    BadExtension {
        record: String,
        name: String,
        value: String,
    },
}

fn quoted(v: &[String]) -> String {
    v.iter()
        .map(|s| format!("{s:?}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The `_mta-sts.DOMAIN` record: `None` when there is no TXT record at all
/// (the domain has no MTA-STS), else the one STSv1 record or what is wrong.
pub async fn lookup_record(dns: &Dns, domain: &str) -> Result<Option<StsRecord>, RecordError> {
    let name = format!("_mta-sts.{}", domain.trim_end_matches('.'));
    match dns.txt(&name).await? {
        Answer::NxDomain | Answer::NoData => Ok(None),
        Answer::Records { records, .. } => select_record(&records).map(Some),
    }
}

/// What a domain publishes for MTA-STS: the TXT record and, when there is
/// any TXT record at `_mta-sts` (valid or not, so that a broken record
/// does not hide a broken policy), the policy.
#[derive(Debug)]
pub struct Discovery {
    pub record: Result<Option<StsRecord>, RecordError>,
    /// `None` when the record lookup found nothing or failed.
    pub policy: Option<Result<FetchedPolicy, FetchError>>,
}

impl Discovery {
    /// The MX hosts of `mx_hosts` that a fetched policy's patterns miss
    /// (`mta_sts_mx_not_covered`); empty without a policy.
    pub fn uncovered<'a>(&self, mx_hosts: &'a [String]) -> Vec<&'a str> {
        match &self.policy {
            Some(Ok(p)) => mx_hosts
                .iter()
                .filter(|h| !p.policy.covers(h))
                .map(String::as_str)
                .collect(),
            _ => Vec::new(),
        }
    }
}

/// Looks up the record of `domain` and fetches its policy (see
/// [`Discovery`]).
pub async fn discover(dns: &Dns, fetcher: &PolicyFetcher, domain: &str) -> Discovery {
    let record = lookup_record(dns, domain).await;
    let published = match &record {
        Ok(r) => r.is_some(),
        Err(RecordError::Dns(_)) => false,
        Err(_) => true,
    };
    let policy = if published {
        Some(fetcher.fetch(dns, domain).await)
    } else {
        None
    };
    Discovery { record, policy }
}

/// Of the TXT strings at `_mta-sts`, the one STSv1 record (§3.1: others
/// are discarded; not exactly one means no policy).
pub fn select_record(txts: &[String]) -> Result<StsRecord, RecordError> {
    let sts: Vec<&String> = txts
        .iter()
        .filter(|t| tagged::has_version(t, VERSION))
        .collect();
    match sts.as_slice() {
        [] => Err(RecordError::NoStsv1 {
            found: txts.to_vec(),
        }),
        [one] => parse_record(one),
        many => Err(RecordError::Multiple { count: many.len() }),
    }
}

/// One TXT record: `v=STSv1; id=…;` plus extensions (§3.1).
pub fn parse_record(text: &str) -> Result<StsRecord, RecordError> {
    let record = || text.to_string();
    let fields = tagged::fields(text, VERSION).map_err(|problem| RecordError::Syntax {
        record: record(),
        problem,
    })?;
    let mut id = None;
    let mut extensions = Vec::new();
    for f in fields {
        if f.name == "id" {
            if id.is_some() {
                return Err(RecordError::DuplicateId { record: record() });
            }
            if f.value.len() > 32 || !f.value.bytes().all(|b| b.is_ascii_alphanumeric()) {
                return Err(RecordError::BadId {
                    record: record(),
                    id: f.value.to_string(),
                });
            }
            id = Some(f.value.to_string());
        } else if tagged::is_ext_value(f.value) {
            extensions.push((f.name.to_string(), f.value.to_string()));
        } else {
            return Err(RecordError::BadExtension {
                record: record(),
                name: f.name.to_string(),
                value: f.value.to_string(),
            });
        }
    }
    let id = id.ok_or_else(|| RecordError::MissingId { record: record() })?;
    Ok(StsRecord { id, extensions })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rfc_example_record() {
        // RFC 8461 §3.1.
        let r = parse_record("v=STSv1; id=20160831085700Z;").unwrap();
        assert_eq!(r.id, "20160831085700Z");
        assert!(r.extensions.is_empty());
        let r = parse_record("v=STSv1;id=abc;ext=1").unwrap();
        assert_eq!(r.extensions, [("ext".to_string(), "1".to_string())]);
    }

    #[test]
    fn exactly_one_stsv1_record_among_the_txt_records() {
        let txt = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let r = select_record(&txt(&["something else", "v=STSv1; id=1"])).unwrap();
        assert_eq!(r.id, "1");
        assert_eq!(
            select_record(&txt(&["v=STSv1; id=1", "v=STSv1; id=2"])),
            Err(RecordError::Multiple { count: 2 })
        );
        assert_eq!(
            select_record(&txt(&["v=STSV1; id=1"])),
            Err(RecordError::NoStsv1 {
                found: txt(&["v=STSV1; id=1"])
            })
        );
    }

    #[test]
    fn each_malformed_record_is_named() {
        let rec = |s: &str| s.to_string();
        assert_eq!(
            parse_record("v=STSv1;"),
            Err(RecordError::MissingId {
                record: rec("v=STSv1;")
            })
        );
        assert_eq!(
            parse_record("v=STSv1; id=a-b"),
            Err(RecordError::BadId {
                record: rec("v=STSv1; id=a-b"),
                id: "a-b".into()
            })
        );
        let long = format!("v=STSv1; id={}", "a".repeat(33));
        assert!(matches!(
            parse_record(&long),
            Err(RecordError::BadId { .. })
        ));
        assert!(parse_record(&format!("v=STSv1; id={}", "a".repeat(32))).is_ok());
        assert_eq!(
            parse_record("v=STSv1; id=1; id=2"),
            Err(RecordError::DuplicateId {
                record: rec("v=STSv1; id=1; id=2")
            })
        );
        assert!(matches!(
            parse_record("v=STSv1; id=1;; x=1"),
            Err(RecordError::Syntax {
                problem: TagError::EmptyField { position: 2 },
                ..
            })
        ));
        assert!(matches!(
            parse_record("v=STSv1; id=1; x=a b"),
            Err(RecordError::BadExtension { .. })
        ));
        assert!(matches!(
            parse_record("v=STSv1 id=1"),
            Err(RecordError::Syntax {
                problem: TagError::AfterVersion { .. },
                ..
            })
        ));
    }

    #[test]
    fn messages_say_what_is_wrong() {
        assert_eq!(
            RecordError::Multiple { count: 2 }.to_string(),
            "2 TXT records at _mta-sts start with \"v=STSv1\"; RFC 8461 §3.1 requires exactly one, so senders ignore them all"
        );
        assert_eq!(
            parse_record("v=STSv1; id=a-b").unwrap_err().to_string(),
            "TXT record \"v=STSv1; id=a-b\": id \"a-b\" must be 1 to 32 letters and digits"
        );
    }
}
