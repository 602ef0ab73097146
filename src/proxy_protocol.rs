//! Inbound PROXY protocol (v1 or v2) on listeners behind an L4 balancer:
//! the header is read — never a byte more — before the SMTP greeting, and
//! only from the configured trusted networks (anyone else could claim any
//! address). Parsing is the `ppp` crate's.

use std::net::SocketAddr;
use std::time::Duration;

use ipnet::IpNet;
use ppp::{v1, v2};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

/// A listener's inbound PROXY settings.
#[derive(Debug, Clone)]
pub struct InboundProxy {
    /// 1 or 2: the header version the balancer sends.
    pub version: u8,
    pub trusted: Vec<IpNet>,
}

impl InboundProxy {
    pub fn trusts(&self, peer: &SocketAddr) -> bool {
        self.trusted.iter().any(|n| n.contains(&peer.ip()))
    }
}

/// Who the balancer says the client is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Inbound {
    /// The client and the address it connected to.
    Proxied {
        client: SocketAddr,
        local: SocketAddr,
    },
    /// LOCAL / UNKNOWN (the balancer's own health check): use the socket's.
    Local,
}

#[derive(Debug, thiserror::Error)]
pub enum InboundError {
    #[error("no PROXY header within {0:?}")]
    Timeout(Duration),
    #[error("connection closed before the PROXY header was complete")]
    Eof,
    #[error("not a PROXY v{0} header")]
    Invalid(u8),
    #[error("PROXY header too long")]
    TooLong,
    #[error("I/O error reading the PROXY header: {0}")]
    Io(#[from] std::io::Error),
}

/// v1 headers are at most 107 bytes (HAProxy's spec).
const V1_MAX: usize = 107;
/// v2: 16 bytes, then at most this much address and TLV data from us.
const V2_MAX_BODY: usize = 4096;
const V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";

/// Reads and parses exactly one header of the configured version.
pub async fn read_header(
    tcp: &mut TcpStream,
    version: u8,
    timeout: Duration,
) -> Result<Inbound, InboundError> {
    tokio::time::timeout(timeout, read(tcp, version))
        .await
        .map_err(|_| InboundError::Timeout(timeout))?
}

async fn read(tcp: &mut TcpStream, version: u8) -> Result<Inbound, InboundError> {
    let eof = |e: std::io::Error| {
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            InboundError::Eof
        } else {
            e.into()
        }
    };
    if version == 1 {
        // Byte by byte up to CRLF: what follows belongs to SMTP.
        let mut buf = Vec::with_capacity(V1_MAX);
        while !buf.ends_with(b"\r\n") {
            if buf.len() >= V1_MAX {
                return Err(InboundError::TooLong);
            }
            buf.push(tcp.read_u8().await.map_err(eof)?);
        }
        let h = v1::Header::try_from(&buf[..]).map_err(|_| InboundError::Invalid(1))?;
        return Ok(match h.addresses {
            v1::Addresses::Tcp4(a) => Inbound::Proxied {
                client: SocketAddr::new(a.source_address.into(), a.source_port),
                local: SocketAddr::new(a.destination_address.into(), a.destination_port),
            },
            v1::Addresses::Tcp6(a) => Inbound::Proxied {
                client: SocketAddr::new(a.source_address.into(), a.source_port),
                local: SocketAddr::new(a.destination_address.into(), a.destination_port),
            },
            v1::Addresses::Unknown => Inbound::Local,
        });
    }
    let mut head = [0u8; 16];
    tcp.read_exact(&mut head).await.map_err(eof)?;
    if &head[..12] != V2_SIGNATURE {
        return Err(InboundError::Invalid(2));
    }
    let len = u16::from_be_bytes([head[14], head[15]]) as usize;
    if len > V2_MAX_BODY {
        return Err(InboundError::TooLong);
    }
    let mut buf = head.to_vec();
    buf.resize(16 + len, 0);
    tcp.read_exact(&mut buf[16..]).await.map_err(eof)?;
    let h = v2::Header::try_from(&buf[..]).map_err(|_| InboundError::Invalid(2))?;
    if h.command == v2::Command::Local {
        return Ok(Inbound::Local);
    }
    Ok(match h.addresses {
        v2::Addresses::IPv4(a) => Inbound::Proxied {
            client: SocketAddr::new(a.source_address.into(), a.source_port),
            local: SocketAddr::new(a.destination_address.into(), a.destination_port),
        },
        v2::Addresses::IPv6(a) => Inbound::Proxied {
            client: SocketAddr::new(a.source_address.into(), a.source_port),
            local: SocketAddr::new(a.destination_address.into(), a.destination_port),
        },
        v2::Addresses::Unspecified | v2::Addresses::Unix(_) => Inbound::Local,
    })
}
