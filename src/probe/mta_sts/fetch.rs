//! Fetching the policy as a sender does (RFC 8461 §3.3):
//! `GET https://mta-sts.DOMAIN/.well-known/mta-sts.txt` over HTTP/1.1,
//! the server certificate verified for `mta-sts.DOMAIN` (SNI the same)
//! against the system roots plus `--ca`, redirects not followed, status
//! 200 and `Content-Type: text/plain` required, the body at most 64 KiB,
//! the whole exchange under one deadline.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper::header::{CONTENT_LENGTH, CONTENT_TYPE, HOST, LOCATION, USER_AGENT};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use rustls::ClientConfig;
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_rustls::TlsConnector;

use super::policy::{Policy, PolicyError};
use crate::probe::dns::{Dns, DnsError};
use crate::tls::validate::TrustAnchors;

/// The largest policy body read (§3.3 suggests senders limit it; 64 KiB
/// is generous for a file of a few lines).
pub const MAX_BODY: usize = 64 * 1024;
/// The path of the policy (§3.3).
pub const POLICY_PATH: &str = "/.well-known/mta-sts.txt";
/// hyper's read buffer, which bounds the response head: room for the
/// long security headers some CDNs send, still a bound.
const MAX_HEAD: usize = 16 * 1024;

/// A policy as fetched.
#[derive(Debug, Clone)]
pub struct FetchedPolicy {
    pub policy: Policy,
    /// The address the policy came from.
    pub address: SocketAddr,
    /// The body as served.
    pub body: String,
}

/// Why no policy was fetched. Each says what a sender would have seen.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("{0:?} is not a valid policy host name")]
    BadHost(String),
    #[error("resolving the policy host: {0}")]
    Resolve(#[from] DnsError),
    #[error("{0} has no A or AAAA record")]
    NoAddress(String),
    #[error("cannot connect to {host}: {}", attempts.iter().map(|(a, e)| format!("{a}: {e}")).collect::<Vec<_>>().join("; "))]
    Connect {
        host: String,
        attempts: Vec<(SocketAddr, std::io::Error)>,
    },
    #[error("TLS with {host} ({address}) failed: {source}")]
    Tls {
        host: String,
        address: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("HTTP with {host} ({address}) failed: {source}")]
    Http {
        host: String,
        address: SocketAddr,
        #[source]
        source: hyper::Error,
    },
    #[error("no complete answer from {host} within {}", humantime::format_duration(*timeout))]
    Timeout { host: String, timeout: Duration },
    #[error("{url} answered {status}, not 200")]
    Status { url: String, status: u16 },
    #[error(
        "{url} answered {status} redirecting to {}; senders do not follow redirects (RFC 8461 §3.3)",
        location.as_deref().unwrap_or("nowhere")
    )]
    Redirect {
        url: String,
        status: u16,
        location: Option<String>,
    },
    #[error("{url} is served as {}, not text/plain", content_type.as_deref().unwrap_or("(no Content-Type)"))]
    ContentType {
        url: String,
        content_type: Option<String>,
    },
    #[error("{url}: body larger than {MAX_BODY} bytes")]
    TooLarge { url: String },
    #[error("{url}: {error}")]
    Policy {
        url: String,
        #[source]
        error: PolicyError,
    },
}

/// Fetches policies; built once per probe.
#[derive(Clone)]
pub struct PolicyFetcher {
    tls: TlsConnector,
    port: u16,
    timeout: Duration,
}

impl std::fmt::Debug for PolicyFetcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PolicyFetcher")
            .field("port", &self.port)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl PolicyFetcher {
    /// Verifies servers against `anchors` (`TrustAnchors::load(--ca)`);
    /// connects to `port` (443, or `--mta-sts-port`); `timeout` bounds
    /// connect, handshake, request and body together.
    pub fn new(
        anchors: &TrustAnchors,
        port: u16,
        timeout: Duration,
    ) -> Result<Self, rustls::Error> {
        // aws-lc-rs, as everywhere (tls::provider), with its default groups.
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_root_certificates(anchors.root_store())
            .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Self {
            tls: TlsConnector::from(Arc::new(config)),
            port,
            timeout,
        })
    }

    /// The policy of `domain`, from the addresses `dns` gives for
    /// `mta-sts.DOMAIN` (tried in order until one accepts TCP).
    pub async fn fetch(&self, dns: &Dns, domain: &str) -> Result<FetchedPolicy, FetchError> {
        let host = policy_host(domain);
        let addrs = dns.addresses(&host).await?;
        let all = addrs.all();
        if all.is_empty() {
            return Err(match addrs.error() {
                Some(e) => FetchError::Resolve(e.clone()),
                None => FetchError::NoAddress(host),
            });
        }
        self.fetch_from(domain, &all).await
    }

    /// The policy of `domain` from the given addresses, in order.
    pub async fn fetch_from(
        &self,
        domain: &str,
        addrs: &[IpAddr],
    ) -> Result<FetchedPolicy, FetchError> {
        let host = policy_host(domain);
        let deadline = Instant::now() + self.timeout;
        let timed_out = || FetchError::Timeout {
            host: host.clone(),
            timeout: self.timeout,
        };
        tokio::time::timeout_at(deadline, self.fetch_inner(&host, addrs))
            .await
            .unwrap_or_else(|_| Err(timed_out()))
    }

    async fn fetch_inner(&self, host: &str, addrs: &[IpAddr]) -> Result<FetchedPolicy, FetchError> {
        let name = ServerName::try_from(host.to_string())
            .map_err(|_| FetchError::BadHost(host.to_string()))?;
        let (tcp, address) = connect(host, addrs, self.port).await?;
        let tls = self
            .tls
            .connect(name, tcp)
            .await
            .map_err(|source| FetchError::Tls {
                host: host.to_string(),
                address,
                source,
            })?;
        let url = self.url(host);
        let http = |source| FetchError::Http {
            host: host.to_string(),
            address,
            source,
        };
        let body = get(TokioIo::new(tls), &self.host_header(host), &url, http).await?;
        let policy = Policy::parse(&body).map_err(|error| FetchError::Policy {
            url: url.clone(),
            error,
        })?;
        Ok(FetchedPolicy {
            policy,
            address,
            // Parsing succeeded, so the body is UTF-8.
            body: String::from_utf8_lossy(&body).into_owned(),
        })
    }

    fn url(&self, host: &str) -> String {
        match self.port {
            443 => format!("https://{host}{POLICY_PATH}"),
            p => format!("https://{host}:{p}{POLICY_PATH}"),
        }
    }

    fn host_header(&self, host: &str) -> String {
        match self.port {
            443 => host.to_string(),
            p => format!("{host}:{p}"),
        }
    }
}

/// `mta-sts.DOMAIN`, lowercase, without a trailing dot.
pub fn policy_host(domain: &str) -> String {
    format!(
        "mta-sts.{}",
        domain.trim_end_matches('.').to_ascii_lowercase()
    )
}

async fn connect(
    host: &str,
    addrs: &[IpAddr],
    port: u16,
) -> Result<(TcpStream, SocketAddr), FetchError> {
    let mut attempts = Vec::new();
    for ip in addrs {
        let addr = SocketAddr::new(*ip, port);
        match TcpStream::connect(addr).await {
            Ok(s) => return Ok((s, addr)),
            Err(e) => attempts.push((addr, e)),
        }
    }
    Err(FetchError::Connect {
        host: host.to_string(),
        attempts,
    })
}

/// One GET on a fresh connection: the checked body, or why not. The
/// connection is driven in this task and dropped with it.
async fn get<IO>(
    io: IO,
    host_header: &str,
    url: &str,
    http: impl Fn(hyper::Error) -> FetchError,
) -> Result<Vec<u8>, FetchError>
where
    IO: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::Builder::new()
        .max_buf_size(MAX_HEAD)
        .handshake::<_, Empty<Bytes>>(io)
        .await
        .map_err(&http)?;
    let request = Request::get(POLICY_PATH)
        .header(HOST, host_header)
        .header(
            USER_AGENT,
            concat!("starttls-proxy-probe/", env!("CARGO_PKG_VERSION")),
        )
        .body(Empty::new());
    let request = match request {
        Ok(r) => r,
        // Only a host header with characters HTTP forbids gets here, and
        // ServerName has already refused those.
        Err(_) => return Err(FetchError::BadHost(host_header.to_string())),
    };
    let exchange = async {
        let response = sender.send_request(request).await.map_err(&http)?;
        check_head(&response, url)?;
        read_body(response.into_body(), url, &http).await
    };
    tokio::pin!(exchange);
    tokio::pin!(conn);
    tokio::select! {
        biased;
        r = &mut exchange => r,
        c = &mut conn => {
            // The server closed; what it sent is still to be read.
            c.map_err(&http)?;
            exchange.await
        }
    }
}

/// Status 200 and text/plain, before any body is read.
fn check_head<B>(response: &Response<B>, url: &str) -> Result<(), FetchError> {
    let status = response.status();
    if status.is_redirection() {
        return Err(FetchError::Redirect {
            url: url.to_string(),
            status: status.as_u16(),
            location: response
                .headers()
                .get(LOCATION)
                .map(|l| String::from_utf8_lossy(l.as_bytes()).into_owned()),
        });
    }
    if status != StatusCode::OK {
        return Err(FetchError::Status {
            url: url.to_string(),
            status: status.as_u16(),
        });
    }
    let content_type = response
        .headers()
        .get(CONTENT_TYPE)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
    if !content_type.as_deref().is_some_and(is_text_plain) {
        return Err(FetchError::ContentType {
            url: url.to_string(),
            content_type,
        });
    }
    let declared = response
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_BODY as u64) {
        return Err(FetchError::TooLarge {
            url: url.to_string(),
        });
    }
    Ok(())
}

/// `text/plain`, parameters (`; charset=utf-8`) allowed, case ignored.
fn is_text_plain(value: &str) -> bool {
    let media = value.split(';').next().unwrap_or_default();
    media.trim().eq_ignore_ascii_case("text/plain")
}

async fn read_body(
    mut body: hyper::body::Incoming,
    url: &str,
    http: impl Fn(hyper::Error) -> FetchError,
) -> Result<Vec<u8>, FetchError> {
    let mut out = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(&http)?;
        if let Some(data) = frame.data_ref() {
            if out.len() + data.len() > MAX_BODY {
                return Err(FetchError::TooLarge {
                    url: url.to_string(),
                });
            }
            out.extend_from_slice(data);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn media_type_text_plain_with_or_without_parameters() {
        assert!(is_text_plain("text/plain"));
        assert!(is_text_plain("Text/Plain; charset=utf-8"));
        assert!(is_text_plain(" text/plain ;charset=us-ascii"));
        assert!(!is_text_plain("text/html"));
        assert!(!is_text_plain("text/plainx"));
        assert!(!is_text_plain(""));
    }

    #[test]
    fn host_and_url() {
        assert_eq!(policy_host("Example.TEST."), "mta-sts.example.test");
    }
}
