//! Backends: the MTAs behind the proxy, tried in order, or the built-in sink.
//!
//! `Backend::connect` returns a connection whose greeting has been read and
//! found positive; anything else (refused, timeout, a 4xx/5xx greeting,
//! garbage) moves on to the next server, and when none is left the session
//! answers the client with a 4xx — never a 5xx (DESIGN.md §2, nothing lost).

pub mod identity;
pub mod sink;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tracing::warn;

use crate::config::{BackendConfig, BackendTarget, Identity};
use crate::smtp::reply::{BackendReply, ReplyParser};
pub use identity::{ClientIdentity, TlsFacts};

/// A byte stream to a backend (TCP, or the in-process sink).
pub trait BackendIo: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> BackendIo for T {}

/// An open backend connection, greeting consumed.
pub struct BackendConn {
    pub io: Box<dyn BackendIo>,
    /// `ip:port`, or `sink` (for logs).
    pub server: String,
    /// Holds any bytes the backend sent after its greeting.
    pub parser: ReplyParser,
}

impl std::fmt::Debug for BackendConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BackendConn")
            .field("server", &self.server)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("{server}: connect: {source}")]
    Connect {
        server: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{server}: no connection within {timeout:?}")]
    ConnectTimeout { server: String, timeout: Duration },
    #[error("{server}: no greeting within {timeout:?}")]
    GreetingTimeout { server: String, timeout: Duration },
    #[error("{server}: closed before greeting")]
    GreetingEof { server: String },
    #[error("{server}: greeting refused: {text}")]
    GreetingRefused { server: String, text: String },
    #[error("{server}: invalid greeting: {detail}")]
    GreetingInvalid { server: String, detail: String },
    #[error("{server}: read: {source}")]
    Read {
        server: String,
        #[source]
        source: std::io::Error,
    },
    #[error("backend {backend:?} has no server")]
    NoServers { backend: String },
}

#[derive(Debug)]
enum Target {
    Servers(Vec<SocketAddr>),
    Sink(Arc<sink::Sink>),
}

/// One `[[backend]]`, ready to connect.
#[derive(Debug)]
pub struct Backend {
    pub name: String,
    target: Target,
    identity: Identity,
    connect_timeout: Duration,
    /// Prepend the proxy's `Received:` header to messages.
    pub received_header: bool,
}

impl Backend {
    /// Prepares a backend; for a sink, creates its Maildir.
    pub fn new(
        config: &BackendConfig,
        hostname: &str,
        connect_timeout: Duration,
    ) -> std::io::Result<Self> {
        let target = match &config.target {
            BackendTarget::Servers(s) => Target::Servers(s.clone()),
            BackendTarget::Sink(dir) => Target::Sink(Arc::new(sink::Sink::open(dir, hostname)?)),
        };
        Ok(Self {
            name: config.name.clone(),
            target,
            identity: config.identity,
            connect_timeout,
            received_header: config.received_header,
        })
    }

    /// Connects to the first server that greets positively, telling it who
    /// the client is as configured.
    pub async fn connect(&self, client: &ClientIdentity) -> Result<BackendConn, BackendError> {
        let servers = match &self.target {
            Target::Sink(s) => return Ok(s.connect()),
            Target::Servers(s) => s,
        };
        let mut last = BackendError::NoServers {
            backend: self.name.clone(),
        };
        for addr in servers {
            match self.connect_one(*addr, client).await {
                Ok(c) => return Ok(c),
                Err(e) => {
                    warn!(backend = %self.name, error = %e, "backend server failed, trying the next");
                    last = e;
                }
            }
        }
        Err(last)
    }

    async fn connect_one(
        &self,
        addr: SocketAddr,
        client: &ClientIdentity,
    ) -> Result<BackendConn, BackendError> {
        let server = addr.to_string();
        let timeout = self.connect_timeout;
        let tcp = match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
            Err(_) => return Err(BackendError::ConnectTimeout { server, timeout }),
            Ok(Err(source)) => return Err(BackendError::Connect { server, source }),
            Ok(Ok(tcp)) => tcp,
        };
        let _ = tcp.set_nodelay(true);
        let mut io: Box<dyn BackendIo> = Box::new(tcp);
        if let Some(header) = identity::proxy_header(self.identity, client) {
            let sent = tokio::time::timeout(timeout, async {
                io.write_all(&header).await?;
                io.flush().await
            })
            .await;
            match sent {
                Ok(Ok(())) => {}
                Ok(Err(source)) => return Err(BackendError::Connect { server, source }),
                Err(_) => return Err(BackendError::ConnectTimeout { server, timeout }),
            }
        }
        let mut parser = ReplyParser::default();
        let greeting = tokio::time::timeout(timeout, read_reply(&mut io, &mut parser, &server))
            .await
            .map_err(|_| BackendError::GreetingTimeout {
                server: server.clone(),
                timeout,
            })??;
        if greeting.code != 220 {
            return Err(BackendError::GreetingRefused {
                server,
                text: greeting.first_line_text(),
            });
        }
        Ok(BackendConn { io, server, parser })
    }
}

/// Reads one complete reply.
pub async fn read_reply(
    io: &mut Box<dyn BackendIo>,
    parser: &mut ReplyParser,
    server: &str,
) -> Result<BackendReply, BackendError> {
    let mut buf = [0u8; 4096];
    loop {
        match parser.next_reply() {
            Some(Ok(r)) => return Ok(r),
            Some(Err(e)) => {
                return Err(BackendError::GreetingInvalid {
                    server: server.to_string(),
                    detail: e.to_string(),
                });
            }
            None => {}
        }
        let n = io
            .read(&mut buf)
            .await
            .map_err(|source| BackendError::Read {
                server: server.to_string(),
                source,
            })?;
        if n == 0 {
            return Err(BackendError::GreetingEof {
                server: server.to_string(),
            });
        }
        parser.push(&buf[..n]);
    }
}
