//! A host name's addresses, both families (A and AAAA, asked at once),
//! with hickory-resolver: to `--nameserver` when given (split-horizon
//! checks, loopback tests), else to the system's resolvers. The deeper DNS
//! work (MX, TLSA, TXT, the AD bit) is `dns.rs`'s.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use hickory_resolver::config::{NameServerConfig, ResolveHosts, ResolverConfig, ResolverOpts};
use hickory_resolver::name_server::TokioConnectionProvider;
use hickory_resolver::proto::xfer::Protocol;
use hickory_resolver::{ResolveError, TokioResolver};

#[derive(Debug, thiserror::Error)]
pub enum ResolveFailure {
    #[error("cannot set up the DNS resolver")]
    Setup(#[source] ResolveError),
    #[error("{name} has no A or AAAA record")]
    NoAddresses { name: String },
    #[error("DNS lookup of {name} failed")]
    Lookup {
        name: String,
        #[source]
        source: ResolveError,
    },
    #[error("no DNS answer for {name} within {after:?}")]
    Timeout { name: String, after: Duration },
}

/// A resolver asking `nameserver` (UDP, then TCP) or the system's.
pub fn resolver(
    nameserver: Option<SocketAddr>,
    per_query: Duration,
) -> Result<TokioResolver, ResolveFailure> {
    let mut opts = ResolverOpts::default();
    opts.timeout = per_query;
    opts.attempts = 2;
    let builder = match nameserver {
        Some(ns) => {
            // A chosen server is the only source of truth: no hosts file.
            opts.use_hosts_file = ResolveHosts::Never;
            let mut config = ResolverConfig::new();
            config.add_name_server(NameServerConfig::new(ns, Protocol::Udp));
            config.add_name_server(NameServerConfig::new(ns, Protocol::Tcp));
            TokioResolver::builder_with_config(config, TokioConnectionProvider::default())
        }
        None => TokioResolver::builder_tokio().map_err(ResolveFailure::Setup)?,
    };
    Ok(builder.with_options(opts).build())
}

/// IPv4 addresses first, then IPv6, each in the order DNS gave them. An
/// error only when neither family has an address.
pub async fn addresses(
    name: &str,
    nameserver: Option<SocketAddr>,
    per_query: Duration,
) -> Result<Vec<IpAddr>, ResolveFailure> {
    let r = resolver(nameserver, per_query)?;
    // Absolute: no search domains appended.
    let fqdn = format!("{}.", name.trim_end_matches('.'));
    let both = async { tokio::join!(r.ipv4_lookup(fqdn.as_str()), r.ipv6_lookup(fqdn.as_str())) };
    // hickory bounds each query; this bounds the whole (two attempts each).
    let limit = per_query * 3;
    let (v4, v6) =
        tokio::time::timeout(limit, both)
            .await
            .map_err(|_| ResolveFailure::Timeout {
                name: name.to_string(),
                after: limit,
            })?;
    let mut out: Vec<IpAddr> = Vec::new();
    let mut failure = None;
    match v4 {
        Ok(l) => out.extend(l.iter().map(|a| IpAddr::V4(a.0))),
        Err(e) if e.is_no_records_found() => {}
        Err(e) => failure = Some(e),
    }
    match v6 {
        Ok(l) => out.extend(l.iter().map(|a| IpAddr::V6(a.0))),
        Err(e) if e.is_no_records_found() => {}
        Err(e) => failure = failure.or(Some(e)),
    }
    match (out.is_empty(), failure) {
        (false, _) => Ok(out),
        (true, Some(source)) => Err(ResolveFailure::Lookup {
            name: name.to_string(),
            source,
        }),
        (true, None) => Err(ResolveFailure::NoAddresses {
            name: name.to_string(),
        }),
    }
}
