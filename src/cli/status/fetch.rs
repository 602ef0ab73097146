//! One `GET /status.json` over HTTP/1.1 (hyper's client connection API, no
//! other HTTP crate), with one deadline for resolving, connecting, asking
//! and reading, and a bound on the answer's size.

use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper::header::{HOST, USER_AGENT};
use hyper::{Request, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// A status of thousands of certificates is a few MiB; more is not one.
const MAX_BODY: usize = 16 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("--url {url:?}: {why}")]
    BadUrl { url: String, why: &'static str },
    #[error("cannot start the async runtime: {0}")]
    Runtime(#[source] std::io::Error),
    #[error("{url}: cannot resolve {host}: {source}")]
    Resolve {
        url: String,
        host: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{url}: cannot connect to {addr}: {source} (is the proxy running, with [metrics] listen on that address?)"
    )]
    Connect {
        url: String,
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{url}: no complete answer within {timeout:?}")]
    Timeout { url: String, timeout: Duration },
    #[error("{url}: HTTP: {source}")]
    Http {
        url: String,
        #[source]
        source: hyper::Error,
    },
    #[error("{url}: answered {status} (a proxy without the status page, or not starttls-proxy?)")]
    Status { url: String, status: StatusCode },
    #[error("{url}: answer larger than {} MiB", MAX_BODY / 1024 / 1024)]
    TooLarge { url: String },
    #[error("{url}: not a status document: {source}")]
    Json {
        url: String,
        #[source]
        source: serde_json::Error,
    },
}

/// `http://HOST[:PORT][/PREFIX]`, pointing at `/PREFIX/status.json`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusUrl {
    /// Without brackets for IPv6.
    pub host: String,
    pub port: u16,
    /// Ends with `/status.json`.
    pub path: String,
}

impl StatusUrl {
    /// Accepts the base address, or the page or JSON URL itself.
    pub fn parse(url: &str) -> Result<Self, FetchError> {
        let bad = |why| FetchError::BadUrl {
            url: url.to_string(),
            why,
        };
        let rest = match url.split_once("://") {
            Some((scheme, rest)) if scheme.eq_ignore_ascii_case("http") => rest,
            Some((scheme, _)) if scheme.eq_ignore_ascii_case("https") => {
                return Err(bad(
                    "https is not spoken: the endpoint is plain HTTP on loopback (use an SSH tunnel, docs/status.md)",
                ));
            }
            Some(_) => return Err(bad("only http:// URLs")),
            None => url,
        };
        let (authority, path) = match rest.find(['/', '?', '#']) {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        if path.contains(['?', '#']) {
            return Err(bad("no query or fragment, please"));
        }
        let (host, port) = split_host_port(authority).ok_or_else(|| bad("expected HOST[:PORT]"))?;
        let prefix = path
            .trim_end_matches('/')
            .trim_end_matches("/status.json")
            .trim_end_matches("/status")
            .trim_end_matches('/');
        Ok(Self {
            host,
            port,
            path: format!("{prefix}/status.json"),
        })
    }

    fn host_header(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

impl fmt::Display for StatusUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "http://{}{}", self.host_header(), self.path)
    }
}

/// `host`, `host:port`, `[v6]`, `[v6]:port`; port 80 when absent.
fn split_host_port(authority: &str) -> Option<(String, u16)> {
    if authority.contains('@') {
        return None;
    }
    let (host, port) = if let Some(rest) = authority.strip_prefix('[') {
        let (host, after) = rest.split_once(']')?;
        match after {
            "" => (host, None),
            p => (host, Some(p.strip_prefix(':')?)),
        }
    } else {
        match authority.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        }
    };
    let port = match port {
        Some(p) => p.parse().ok().filter(|p| *p != 0)?,
        None => 80,
    };
    (!host.is_empty()).then(|| (host.to_string(), port))
}

/// The body of a 200 answer to `GET url`, all within `timeout`.
pub async fn get(url: &StatusUrl, timeout: Duration) -> Result<Vec<u8>, FetchError> {
    match tokio::time::timeout(timeout, exchange(url)).await {
        Ok(r) => r,
        Err(_) => Err(FetchError::Timeout {
            url: url.to_string(),
            timeout,
        }),
    }
}

async fn exchange(url: &StatusUrl) -> Result<Vec<u8>, FetchError> {
    let tcp = connect(url).await?;
    let http = |source| FetchError::Http {
        url: url.to_string(),
        source,
    };
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(TokioIo::new(tcp))
            .await
            .map_err(http)?;
    let request = Request::get(url.path.as_str())
        .header(HOST, url.host_header())
        .header(
            USER_AGENT,
            concat!("starttls-proxy-status/", env!("CARGO_PKG_VERSION")),
        )
        .body(Empty::new())
        .map_err(|_| FetchError::BadUrl {
            url: url.to_string(),
            why: "not a valid request target",
        })?;
    let ask = async {
        let response = sender.send_request(request).await.map_err(http)?;
        if response.status() != StatusCode::OK {
            return Err(FetchError::Status {
                url: url.to_string(),
                status: response.status(),
            });
        }
        read_body(response.into_body(), url).await
    };
    tokio::pin!(conn);
    tokio::pin!(ask);
    // The connection is driven here, not spawned: it ends with this call.
    tokio::select! {
        biased;
        r = &mut ask => r,
        c = &mut conn => {
            c.map_err(http)?;
            ask.await
        }
    }
}

async fn connect(url: &StatusUrl) -> Result<TcpStream, FetchError> {
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host((url.host.as_str(), url.port))
        .await
        .map_err(|source| FetchError::Resolve {
            url: url.to_string(),
            host: url.host.clone(),
            source,
        })?
        .collect();
    let mut last = None;
    for addr in &addrs {
        match TcpStream::connect(addr).await {
            Ok(s) => return Ok(s),
            Err(e) => last = Some((addr, e)),
        }
    }
    let (addr, source) = match last {
        Some((a, e)) => (a.to_string(), e),
        None => (
            url.host.clone(),
            std::io::Error::new(std::io::ErrorKind::NotFound, "no address"),
        ),
    };
    Err(FetchError::Connect {
        url: url.to_string(),
        addr,
        source,
    })
}

async fn read_body(
    mut body: hyper::body::Incoming,
    url: &StatusUrl,
) -> Result<Vec<u8>, FetchError> {
    let mut out = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|source| FetchError::Http {
            url: url.to_string(),
            source,
        })?;
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

    fn parse(s: &str) -> (String, u16, String) {
        let u = StatusUrl::parse(s).unwrap();
        (u.host, u.port, u.path)
    }

    #[test]
    fn urls_point_at_the_json() {
        let want = ("127.0.0.1".to_string(), 9125, "/status.json".to_string());
        for s in [
            "http://127.0.0.1:9125",
            "http://127.0.0.1:9125/",
            "http://127.0.0.1:9125/status",
            "http://127.0.0.1:9125/status.json",
            "127.0.0.1:9125",
            "HTTP://127.0.0.1:9125/status/",
        ] {
            assert_eq!(parse(s), want, "{s}");
        }
        assert_eq!(
            parse("http://[::1]:9125/stp/"),
            ("::1".into(), 9125, "/stp/status.json".into())
        );
        assert_eq!(
            parse("http://mx1.internal"),
            ("mx1.internal".into(), 80, "/status.json".into())
        );
        assert_eq!(
            StatusUrl::parse("http://[::1]:9125").unwrap().to_string(),
            "http://[::1]:9125/status.json"
        );
    }

    #[test]
    fn urls_refused() {
        for s in [
            "https://127.0.0.1:9125",
            "ftp://x",
            "http://",
            "http://:9125",
            "http://host:port",
            "http://host:0",
            "http://user@host:1",
            "http://[::1:9125",
            "http://host:1/status?x=1",
        ] {
            assert!(StatusUrl::parse(s).is_err(), "{s}");
        }
    }
}
