//! The probe's DNS: MX, A/AAAA, PTR, TXT and TLSA lookups, each answer
//! with the AD bit of the response (DESIGN.md §7, the first step of the
//! playbook: resolve).
//!
//! Every query is sent by us, one question per message, through the name
//! server pool of hickory-resolver (UDP, then TCP when the answer is
//! truncated or UDP fails), to `--nameserver` or to the servers of the
//! system configuration (`/etc/resolv.conf`). Not through
//! `hickory_resolver::Resolver`, for three reasons:
//! - its `Lookup` keeps the records, not the header, so the AD bit (is the
//!   answer DNSSEC-validated by the resolver?) is lost, and DANE needs it
//!   (RFC 7672 §2.2);
//! - it answers some names itself, without asking the server (RFC 6761):
//!   `localhost.` and everything under `127.in-addr.arpa.` and the `::1`
//!   reverse name get `localhost.`/127.0.0.1/::1 synthesised by its
//!   `CachingClient`, so a PTR record for 127.0.0.2 served by a test's
//!   dnsmasq (or a split-horizon server) would never be seen;
//! - it caches, and a probe wants what the server says now.
//!
//! Queries ask for the AD bit (RFC 6840 §5.7) and use EDNS(0) with a 1232
//! byte payload. No search domains: every name is absolute. Records are
//! taken from the answer section by type, so a CNAME chain the resolver
//! followed is transparent. Each query has one deadline, UDP and TCP
//! fallback included. hickory's pool sends one UDP datagram per request
//! and waits for its answer until the deadline, so a lost datagram (or a
//! server that dropped it) would cost the whole budget: like stub
//! resolvers do, the query is sent again, after 1 s and then after twice
//! the previous interval, each time with a new id and source port, and the
//! first attempt to finish decides (RFC 1035 §4.2.1, RFC 1536 §1).

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use tokio::task::JoinSet;
use tokio::time::Instant;

use hickory_resolver::config::{
    NameServerConfig, NameServerConfigGroup, ResolverOpts, ServerOrderingStrategy,
};
use hickory_resolver::name_server::{NameServerPool, TokioConnectionProvider};
use hickory_resolver::proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_resolver::proto::rr::{Name, RData, RecordType};
use hickory_resolver::proto::xfer::DnsResponse;
use hickory_resolver::proto::xfer::{
    DnsHandle, DnsRequest, DnsRequestOptions, FirstAnswer, Protocol,
};
use hickory_resolver::proto::{ProtoError, ProtoErrorKind};

use super::dane::TlsaRecord;

/// The EDNS(0) UDP payload we announce (the DNS flag day 2020 value).
const EDNS_PAYLOAD: u16 = 1232;
/// At most this many PTR names are forward-checked.
const MAX_PTR_NAMES: usize = 8;
/// An unanswered query is sent again after this long (or after a third of
/// the timeout, if that is shorter), then after twice the previous wait.
const RETRANSMIT_AFTER: Duration = Duration::from_secs(1);

/// What a server answered for one name and type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer<T> {
    /// At least one record of the type asked for. `authenticated`: the
    /// response had the AD bit, i.e. the resolver says it validated it
    /// with DNSSEC; worth as much as the path to that resolver.
    Records {
        records: Vec<T>,
        authenticated: bool,
    },
    /// The name exists, without records of this type (NOERROR, no answer).
    NoData,
    /// The name does not exist (NXDOMAIN).
    NxDomain,
}

impl<T> Answer<T> {
    /// The records, empty for `NoData` and `NxDomain`.
    pub fn records(&self) -> &[T] {
        match self {
            Self::Records { records, .. } => records,
            Self::NoData | Self::NxDomain => &[],
        }
    }

    /// Whether the answer carried the AD bit (false when there is none).
    pub fn authenticated(&self) -> bool {
        matches!(
            self,
            Self::Records {
                authenticated: true,
                ..
            }
        )
    }

    fn map<U>(self, f: impl FnMut(T) -> Option<U>) -> Answer<U> {
        match self {
            Self::Records {
                records,
                authenticated,
            } => {
                let records: Vec<U> = records.into_iter().filter_map(f).collect();
                if records.is_empty() {
                    Answer::NoData
                } else {
                    Answer::Records {
                        records,
                        authenticated,
                    }
                }
            }
            Self::NoData => Answer::NoData,
            Self::NxDomain => Answer::NxDomain,
        }
    }
}

/// A lookup that got no usable answer: the server failed, refused, did
/// not answer in time, or the name could not be asked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DnsError {
    #[error("{name:?} is not a valid DNS name: {detail}")]
    InvalidName { name: String, detail: String },
    #[error("{query}: no answer within {}", humantime::format_duration(*timeout))]
    Timeout { query: String, timeout: Duration },
    #[error("{query}: the server answered {rcode}")]
    Rcode { query: String, rcode: String },
    #[error("{query}: {detail}")]
    Failed { query: String, detail: String },
    #[error("cannot use the system's DNS configuration: {detail}")]
    SystemConfig { detail: String },
}

/// One MX target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MxHost {
    pub preference: u16,
    /// Lowercase, without the trailing dot.
    pub host: String,
}

/// The MX answer of a domain, read as a sender reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MxAnswer {
    /// Targets by preference, lowest first (ties by name, for stable
    /// output). `null_mx_too`: a "." target was published beside them,
    /// which RFC 7505 §3 forbids; it is not among `hosts`.
    Hosts {
        hosts: Vec<MxHost>,
        authenticated: bool,
        null_mx_too: bool,
    },
    /// RFC 7505 null MX (a single MX whose exchange is "."): the domain
    /// accepts no mail.
    NullMx { authenticated: bool },
    /// The domain exists and has no MX: senders use its own A/AAAA
    /// (RFC 5321 §5.1, the implicit MX).
    NoMx,
    /// The domain does not exist.
    NxDomain,
}

/// A and AAAA of one host, asked concurrently; each may fail alone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Addresses {
    pub v4: Result<Answer<Ipv4Addr>, DnsError>,
    pub v6: Result<Answer<Ipv6Addr>, DnsError>,
}

impl Addresses {
    /// Every address found, IPv4 first.
    pub fn all(&self) -> Vec<IpAddr> {
        let v4 = self.v4.iter().flat_map(|a| a.records().iter().copied());
        let v6 = self.v6.iter().flat_map(|a| a.records().iter().copied());
        v4.map(IpAddr::V4).chain(v6.map(IpAddr::V6)).collect()
    }

    /// The first failure, if either lookup failed.
    pub fn error(&self) -> Option<&DnsError> {
        self.v4.as_ref().err().or(self.v6.as_ref().err())
    }
}

/// One name of a PTR answer and whether it leads back to the address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PtrName {
    /// Lowercase, without the trailing dot.
    pub name: String,
    pub forward: Forward,
}

/// Forward confirmation of a PTR name: the A (for an IPv4 address) or
/// AAAA (IPv6) records of the name include the address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Forward {
    Confirmed,
    /// The name resolves, but not to the address (or not at all).
    NotConfirmed,
    /// The forward lookup failed.
    Failed(DnsError),
    /// Not checked: beyond the first names of the answer.
    NotChecked,
}

/// The probe's resolver; cheap to clone.
#[derive(Clone)]
pub struct Dns {
    pool: NameServerPool<TokioConnectionProvider>,
    timeout: Duration,
    servers: Vec<SocketAddr>,
}

impl fmt::Debug for Dns {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Dns")
            .field("servers", &self.servers)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl Dns {
    /// Every query to `nameserver` when given (`--nameserver IP:PORT`),
    /// else to the servers of the system configuration. `timeout` bounds
    /// each query, the TCP fallback included.
    pub fn new(nameserver: Option<SocketAddr>, timeout: Duration) -> Result<Self, DnsError> {
        let servers = match nameserver {
            Some(s) => vec![s],
            None => system_servers()?,
        };
        let mut group = NameServerConfigGroup::new();
        for s in &servers {
            group.push(NameServerConfig::new(*s, Protocol::Udp));
            group.push(NameServerConfig::new(*s, Protocol::Tcp));
        }
        let mut opts = ResolverOpts::default();
        opts.timeout = timeout;
        opts.try_tcp_on_error = true;
        opts.server_ordering_strategy = ServerOrderingStrategy::UserProvidedOrder;
        Ok(Self {
            pool: NameServerPool::from_config(group, opts, TokioConnectionProvider::default()),
            timeout,
            servers,
        })
    }

    /// The servers asked, for reports.
    pub fn servers(&self) -> &[SocketAddr] {
        &self.servers
    }

    /// The MX targets of `domain`, by preference.
    pub async fn mx(&self, domain: &str) -> Result<MxAnswer, DnsError> {
        let answer = self.query(&fqdn(domain)?, RecordType::MX).await?;
        Ok(mx_answer(answer))
    }

    /// The A and AAAA records of `host`, asked at the same time.
    pub async fn addresses(&self, host: &str) -> Result<Addresses, DnsError> {
        let n = fqdn(host)?;
        let (v4, v6) = tokio::join!(
            self.query(&n, RecordType::A),
            self.query(&n, RecordType::AAAA)
        );
        Ok(Addresses {
            v4: v4.map(|a| {
                a.map(|r| match r {
                    RData::A(a) => Some(a.0),
                    _ => None,
                })
            }),
            v6: v6.map(|a| {
                a.map(|r| match r {
                    RData::AAAA(a) => Some(a.0),
                    _ => None,
                })
            }),
        })
    }

    /// The PTR names of `ip`, each forward-confirmed (the first
    /// `MAX_PTR_NAMES`; the rest are `NotChecked`).
    pub async fn ptr(&self, ip: IpAddr) -> Result<Answer<PtrName>, DnsError> {
        let answer = self.query(&Name::from(ip), RecordType::PTR).await?;
        let names = answer.map(|r| match r {
            RData::PTR(p) => Some(host_text(&p.0)),
            _ => None,
        });
        let Answer::Records {
            records,
            authenticated,
        } = names
        else {
            return Ok(match names {
                Answer::NxDomain => Answer::NxDomain,
                _ => Answer::NoData,
            });
        };
        let mut out = Vec::with_capacity(records.len());
        for (i, n) in records.into_iter().enumerate() {
            let forward = if i < MAX_PTR_NAMES {
                self.confirm(&n, ip).await
            } else {
                Forward::NotChecked
            };
            out.push(PtrName { name: n, forward });
        }
        Ok(Answer::Records {
            records: out,
            authenticated,
        })
    }

    async fn confirm(&self, host: &str, ip: IpAddr) -> Forward {
        let n = match fqdn(host) {
            Ok(n) => n,
            Err(e) => return Forward::Failed(e),
        };
        let rtype = match ip {
            IpAddr::V4(_) => RecordType::A,
            IpAddr::V6(_) => RecordType::AAAA,
        };
        match self.query(&n, rtype).await {
            Ok(a) => {
                let found = a.records().iter().any(|r| match (r, ip) {
                    (RData::A(a), IpAddr::V4(v4)) => a.0 == v4,
                    (RData::AAAA(a), IpAddr::V6(v6)) => a.0 == v6,
                    _ => false,
                });
                if found {
                    Forward::Confirmed
                } else {
                    Forward::NotConfirmed
                }
            }
            Err(e) => Forward::Failed(e),
        }
    }

    /// The TXT records of `name`, each one's strings joined without
    /// separator (RFC 7208 §3.3, RFC 8461 §3.1, RFC 8460 §3). Bytes that
    /// are not UTF-8 become U+FFFD, which every record syntax then refuses.
    pub async fn txt(&self, name: &str) -> Result<Answer<String>, DnsError> {
        let answer = self.query(&fqdn(name)?, RecordType::TXT).await?;
        Ok(answer.map(|r| match r {
            RData::TXT(t) => Some(String::from_utf8_lossy(&t.txt_data().concat()).into_owned()),
            _ => None,
        }))
    }

    /// The TLSA records at `_PORT._tcp.HOST` (RFC 6698 §3, RFC 7672 §2.2).
    pub async fn tlsa(&self, host: &str, port: u16) -> Result<Answer<TlsaRecord>, DnsError> {
        let owner = super::dane::tlsa_owner(host, port);
        let answer = self.query(&fqdn(&owner)?, RecordType::TLSA).await?;
        Ok(answer.map(|r| match r {
            RData::TLSA(t) => Some(TlsaRecord {
                usage: t.cert_usage().into(),
                selector: t.selector().into(),
                matching_type: t.matching().into(),
                data: t.cert_data().to_vec(),
            }),
            _ => None,
        }))
    }

    /// One question, one deadline; the answer section's records of
    /// `rtype`, or why there are none.
    async fn query(&self, name: &Name, rtype: RecordType) -> Result<Answer<RData>, DnsError> {
        let what = format!("{rtype} {name}");
        let response = match self.exchange(name, rtype).await {
            None => {
                return Err(DnsError::Timeout {
                    query: what,
                    timeout: self.timeout,
                });
            }
            Some(Err(detail)) => {
                return Err(DnsError::Failed {
                    query: what,
                    detail,
                });
            }
            Some(Ok(Err(e))) => return negative(e.kind(), what),
            Some(Ok(Ok(r))) => r,
        };
        let records: Vec<RData> = response
            .answers()
            .iter()
            .filter(|r| r.record_type() == rtype)
            .map(|r| r.data().clone())
            .collect();
        Ok(match (records.is_empty(), response.response_code()) {
            (false, _) => Answer::Records {
                records,
                authenticated: response.authentic_data(),
            },
            (true, ResponseCode::NXDomain) => Answer::NxDomain,
            (true, ResponseCode::NoError) => Answer::NoData,
            (true, code) => {
                return Err(DnsError::Rcode {
                    query: what,
                    rcode: code.to_string(),
                });
            }
        })
    }

    /// Sends the query through the pool, again after each retransmission
    /// interval while none has finished, until the deadline: the result of
    /// the first attempt to finish, `None` when none did in time, or
    /// `Some(Err)` when an attempt's task died (it is not expected to).
    /// The attempts still running are dropped with the `JoinSet`.
    async fn exchange(
        &self,
        name: &Name,
        rtype: RecordType,
    ) -> Option<Result<Result<DnsResponse, ProtoError>, String>> {
        let start = Instant::now();
        let deadline = start + self.timeout;
        let mut wait = retransmit_after(self.timeout);
        let mut next = start;
        let mut attempts = JoinSet::new();
        loop {
            let now = Instant::now();
            if next < deadline && now >= next {
                attempts.spawn(self.pool.send(request(name, rtype)).first_answer());
                // From this send: a stalled runtime does not send a burst.
                next = now + wait;
                wait = wait.saturating_mul(2);
            }
            tokio::select! {
                done = attempts.join_next() => return match done {
                    Some(Ok(result)) => Some(Ok(result)),
                    Some(Err(e)) => Some(Err(e.to_string())),
                    None => None,
                },
                () = tokio::time::sleep_until(next.min(deadline)) => {
                    if Instant::now() >= deadline {
                        return None;
                    }
                }
            }
        }
    }
}

/// The first wait before a query is sent again: `RETRANSMIT_AFTER`, or a
/// third of `timeout` when that is shorter, so that even a short budget
/// has room for a retransmission (never less than a millisecond).
fn retransmit_after(timeout: Duration) -> Duration {
    RETRANSMIT_AFTER
        .min(timeout / 3)
        .max(Duration::from_millis(1))
}

/// A recursive query for `name`/`rtype` asking for the AD bit.
fn request(name: &Name, rtype: RecordType) -> DnsRequest {
    let mut m = Message::new();
    m.add_query(Query::query(name.clone(), rtype))
        .set_message_type(MessageType::Query)
        .set_op_code(OpCode::Query)
        .set_recursion_desired(true)
        .set_authentic_data(true);
    m.extensions_mut()
        .get_or_insert_with(Edns::new)
        .set_max_payload(EDNS_PAYLOAD)
        .set_version(0);
    // The UDP and TCP streams give every message a random id.
    DnsRequest::new(m, DnsRequestOptions::default())
}

/// hickory's pool turns negative answers into errors: NXDOMAIN and an
/// empty NOERROR back into answers, the rest into `DnsError`.
fn negative(kind: &ProtoErrorKind, query: String) -> Result<Answer<RData>, DnsError> {
    match kind {
        ProtoErrorKind::NoRecordsFound {
            response_code: ResponseCode::NXDomain,
            ..
        } => Ok(Answer::NxDomain),
        ProtoErrorKind::NoRecordsFound {
            response_code: ResponseCode::NoError,
            ..
        } => Ok(Answer::NoData),
        ProtoErrorKind::NoRecordsFound { response_code, .. } => Err(DnsError::Rcode {
            query,
            rcode: response_code.to_string(),
        }),
        other => Err(DnsError::Failed {
            query,
            detail: other.to_string(),
        }),
    }
}

fn mx_answer(answer: Answer<RData>) -> MxAnswer {
    let (records, authenticated) = match answer {
        Answer::Records {
            records,
            authenticated,
        } => (records, authenticated),
        Answer::NoData => return MxAnswer::NoMx,
        Answer::NxDomain => return MxAnswer::NxDomain,
    };
    let mut null = false;
    let mut hosts: Vec<MxHost> = Vec::new();
    for r in records {
        let RData::MX(mx) = r else { continue };
        if mx.exchange().is_root() {
            null = true;
        } else {
            hosts.push(MxHost {
                preference: mx.preference(),
                host: host_text(mx.exchange()),
            });
        }
    }
    if hosts.is_empty() && null {
        return MxAnswer::NullMx { authenticated };
    }
    hosts.sort_by(|a, b| (a.preference, &a.host).cmp(&(b.preference, &b.host)));
    hosts.dedup();
    MxAnswer::Hosts {
        hosts,
        authenticated,
        null_mx_too: null,
    }
}

/// `text` as an absolute name (no search list); IDNs become A-labels.
fn fqdn(text: &str) -> Result<Name, DnsError> {
    let mut n = Name::from_utf8(text).map_err(|e| DnsError::InvalidName {
        name: text.to_string(),
        detail: e.to_string(),
    })?;
    n.set_fqdn(true);
    Ok(n)
}

/// A name as the probe prints and compares it: lowercase ASCII, no
/// trailing dot.
fn host_text(n: &Name) -> String {
    let s = n.to_ascii().to_ascii_lowercase();
    match s.strip_suffix('.') {
        Some(t) => t.to_string(),
        None => s,
    }
}

fn system_servers() -> Result<Vec<SocketAddr>, DnsError> {
    let (config, _) =
        hickory_resolver::system_conf::read_system_conf().map_err(|e| DnsError::SystemConfig {
            detail: e.to_string(),
        })?;
    let mut servers: Vec<SocketAddr> = Vec::new();
    for ns in config.name_servers() {
        if !servers.contains(&ns.socket_addr) {
            servers.push(ns.socket_addr);
        }
    }
    if servers.is_empty() {
        return Err(DnsError::SystemConfig {
            detail: "no nameserver in /etc/resolv.conf".into(),
        });
    }
    Ok(servers)
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_resolver::proto::rr::rdata::MX;

    fn mx(pref: u16, host: &str) -> RData {
        RData::MX(MX::new(pref, Name::from_ascii(host).unwrap()))
    }

    #[test]
    fn mx_targets_sorted_by_preference_then_name() {
        let answer = Answer::Records {
            records: vec![
                mx(20, "MX2.example.test."),
                mx(10, "mx1.example.test."),
                mx(10, "a.example.test."),
            ],
            authenticated: false,
        };
        let MxAnswer::Hosts { hosts, .. } = mx_answer(answer) else {
            panic!("hosts expected")
        };
        let order: Vec<_> = hosts
            .iter()
            .map(|h| (h.preference, h.host.as_str()))
            .collect();
        assert_eq!(
            order,
            [
                (10, "a.example.test"),
                (10, "mx1.example.test"),
                (20, "mx2.example.test")
            ]
        );
    }

    #[test]
    fn a_lone_dot_is_a_null_mx_and_beside_others_is_flagged() {
        let null = Answer::Records {
            records: vec![mx(0, ".")],
            authenticated: true,
        };
        assert_eq!(
            mx_answer(null),
            MxAnswer::NullMx {
                authenticated: true
            }
        );
        let mixed = Answer::Records {
            records: vec![mx(0, "."), mx(10, "mx1.example.test.")],
            authenticated: false,
        };
        let MxAnswer::Hosts {
            hosts, null_mx_too, ..
        } = mx_answer(mixed)
        else {
            panic!("hosts expected")
        };
        assert!(null_mx_too);
        assert_eq!(hosts.len(), 1);
    }

    #[test]
    fn negative_answers_are_answers_and_failures_are_errors() {
        use hickory_resolver::proto::op::Query;
        let nx = |code| ProtoErrorKind::NoRecordsFound {
            query: Box::new(Query::new()),
            soa: None,
            ns: None,
            negative_ttl: None,
            response_code: code,
            trusted: true,
            authorities: None,
        };
        assert_eq!(
            negative(&nx(ResponseCode::NXDomain), "q".into()),
            Ok(Answer::NxDomain)
        );
        assert_eq!(
            negative(&nx(ResponseCode::NoError), "q".into()),
            Ok(Answer::NoData)
        );
        assert_eq!(
            negative(&nx(ResponseCode::ServFail), "MX x.test.".into()),
            Err(DnsError::Rcode {
                query: "MX x.test.".into(),
                rcode: "Server Failure".into()
            })
        );
    }

    #[test]
    fn a_query_is_resent_after_a_second_or_a_third_of_a_shorter_budget() {
        assert_eq!(retransmit_after(Duration::from_secs(3)), RETRANSMIT_AFTER);
        assert_eq!(retransmit_after(Duration::from_secs(30)), RETRANSMIT_AFTER);
        assert_eq!(
            retransmit_after(Duration::from_millis(600)),
            Duration::from_millis(200)
        );
        assert_eq!(retransmit_after(Duration::ZERO), Duration::from_millis(1));
    }

    #[test]
    fn names_are_absolute_and_printed_without_the_dot() {
        let n = fqdn("Mx1.Example.Test").unwrap();
        assert!(n.is_fqdn());
        assert_eq!(host_text(&n), "mx1.example.test");
        assert!(matches!(fqdn("a..b"), Err(DnsError::InvalidName { .. })));
    }
}
