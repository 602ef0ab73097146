//! Backends: the MTAs behind the proxy, tried in order, or the built-in sink.
//!
//! `Backend::connect` returns a connection whose greeting has been read and
//! found positive; anything else (refused, timeout, a 4xx/5xx greeting,
//! garbage) moves on to the next server, and when none is left the session
//! answers the client with a 4xx — never a 5xx (DESIGN.md §2, nothing lost).
//!
//! One exception: a pool that tells the backend who the client is (PROXY
//! header, XCLIENT) gets the backend's verdict on that client. A 5xx
//! greeting after the PROXY header, or a 5xx reply to XCLIENT, is that
//! verdict (postscreen, `smtpd_client_restrictions`): it is
//! [`BackendError::ClientRefused`], relayed to the client as is, and is no
//! failure of the server — no failover, not counted. Except a greeting
//! that refuses the header itself as early input (Exim's `554 SMTP
//! synchronization error`): that server takes no PROXY header, a failure.

pub mod health;
pub mod identity;
pub mod route;
pub mod sink;
pub mod tls;
pub mod xclient;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tracing::{debug, info, warn};

use crate::config::{BackendConfig, BackendTarget, BackendTlsMode, Identity};
use crate::smtp::reply::{BackendReply, ReplyParser};
use crate::telemetry::metrics;
pub use health::{Health, ServerState};
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
    /// The TLS of the hop (`[[backend]] tls`), `None` for plaintext.
    pub tls: Option<tls::TlsHop>,
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
    #[error("{server}: EHLO refused: {text}")]
    EhloRefused { server: String, text: String },
    #[error("{server}: no EHLO reply within {timeout:?}")]
    EhloTimeout { server: String, timeout: Duration },
    #[error("{server}: write: {source}")]
    Write {
        server: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{server}: does not offer XCLIENT to the proxy (Postfix: smtpd_authorized_xclient_hosts)"
    )]
    XclientNotOffered { server: String },
    #[error("{server}: XCLIENT refused: {text}")]
    XclientRefused { server: String, text: String },
    #[error("{server}: TLS handshake: {source}")]
    Tls {
        server: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{server}: no TLS handshake within {timeout:?}")]
    TlsTimeout { server: String, timeout: Duration },
    #[error(
        "{server}: does not offer STARTTLS (the pool has tls = \"starttls\"; never relayed in plaintext)"
    )]
    StartTlsNotOffered { server: String },
    #[error("{server}: STARTTLS refused: {text}")]
    StartTlsRefused { server: String, text: String },
    #[error(
        "{server}: sent bytes after its 220 to STARTTLS (refused: they would be read as if inside TLS)"
    )]
    StartTlsInjection { server: String },
    #[error("backend {backend:?} has no server")]
    NoServers { backend: String },
    /// The backend, knowing who the client is, refused it with a 5xx: its
    /// answer for the client, not a failure of the server.
    #[error("{server}: refused the client: {}", .reply.first_line_text())]
    ClientRefused { server: String, reply: BackendReply },
    /// A PROXY pool's server acts as if the header were an SMTP command.
    #[error(
        "{server}: {detail}: the backend probably does not accept the PROXY header \
         (Postfix: smtpd_upstream_proxy_protocol = haproxy for that smtpd in master.cf, \
         or in main.cf; Exim: hosts_proxy)"
    )]
    ProxyHeaderRejected { server: String, detail: String },
}

impl BackendError {
    /// What went wrong, for the status page: fixed words, the configured
    /// timeouts and the OS error's kind, never text the server sent (the
    /// log line has the whole error).
    pub fn summary(&self) -> String {
        match self {
            Self::Connect { source, .. } => format!("connect: {}", source.kind()),
            Self::ConnectTimeout { timeout, .. } => format!("no connection within {timeout:?}"),
            Self::GreetingTimeout { timeout, .. } => format!("no greeting within {timeout:?}"),
            Self::GreetingEof { .. } => "closed before greeting".into(),
            Self::GreetingRefused { .. } => "greeting refused".into(),
            Self::GreetingInvalid { .. } => "invalid greeting".into(),
            Self::Read { source, .. } => format!("read: {}", source.kind()),
            Self::EhloRefused { .. } => "EHLO refused".into(),
            Self::EhloTimeout { timeout, .. } => format!("no EHLO reply within {timeout:?}"),
            Self::Write { source, .. } => format!("write: {}", source.kind()),
            Self::XclientNotOffered { .. } => "does not offer XCLIENT to the proxy".into(),
            Self::XclientRefused { .. } => "XCLIENT refused".into(),
            Self::Tls { source, .. } => match source.get_ref() {
                Some(inner) => format!("TLS handshake: {}", tls_error_kind(inner)),
                None => format!("TLS handshake: {}", source.kind()),
            },
            Self::TlsTimeout { timeout, .. } => format!("no TLS handshake within {timeout:?}"),
            Self::StartTlsNotOffered { .. } => "does not offer STARTTLS".into(),
            Self::StartTlsRefused { .. } => "STARTTLS refused".into(),
            Self::StartTlsInjection { .. } => "bytes after the STARTTLS 220".into(),
            Self::NoServers { .. } => "no server".into(),
            Self::ClientRefused { .. } => "refused the client".into(),
            Self::ProxyHeaderRejected { .. } => "probably does not accept the PROXY header".into(),
        }
    }
}

/// A rustls error as fixed words (the status page shows no peer text).
fn tls_error_kind(e: &(dyn std::error::Error + Send + Sync + 'static)) -> &'static str {
    match e.downcast_ref::<rustls::Error>() {
        Some(rustls::Error::InvalidCertificate(c)) => match c {
            rustls::CertificateError::UnknownIssuer => "certificate from an unknown CA",
            rustls::CertificateError::NotValidForName
            | rustls::CertificateError::NotValidForNameContext { .. } => {
                "certificate not valid for the name"
            }
            rustls::CertificateError::Expired | rustls::CertificateError::ExpiredContext { .. } => {
                "certificate expired"
            }
            _ => "invalid certificate",
        },
        Some(rustls::Error::AlertReceived(_)) => "alert received",
        Some(_) => "protocol error",
        None => "I/O error",
    }
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
    /// The proxy's name, for the probe's EHLO.
    hostname: String,
    health: Health,
    health_interval: Duration,
    /// For `identity = "xclient"`: the client's forward-confirmed name.
    dns: Option<xclient::Dns>,
    /// `tls = "starttls" | "implicit"`: the pool's client config.
    tls: Option<tls::BackendTls>,
}

impl Backend {
    /// Prepares a backend; for a sink, creates its Maildir.
    pub fn new(
        config: &BackendConfig,
        hostname: &str,
        connect_timeout: Duration,
        dns: Option<xclient::Dns>,
    ) -> std::io::Result<Self> {
        let (target, health) = match &config.target {
            BackendTarget::Servers(s) => (Target::Servers(s.clone()), Health::new(s)),
            BackendTarget::Sink(dir) => {
                let sink = sink::Sink::open(dir, hostname, config.sink_fsync)?;
                // No probe for the sink: the pre-TLS EHLO offers what the
                // sink's own EHLO does, as a probe would have seen it.
                let health = Health::always_up();
                health.set_extensions(Some(sink.ehlo_texts()));
                (Target::Sink(Arc::new(sink)), health)
            }
        };
        Ok(Self {
            name: config.name.clone(),
            target,
            identity: config.identity,
            connect_timeout,
            received_header: config.received_header,
            hostname: hostname.to_string(),
            health,
            health_interval: config.health_interval,
            dns,
            tls: config.tls.as_ref().map(tls::BackendTls::new).transpose()?,
        })
    }

    pub fn health(&self) -> &Health {
        &self.health
    }

    /// The servers, in configured order; `None` for the built-in sink.
    pub fn servers(&self) -> Option<&[SocketAddr]> {
        match &self.target {
            Target::Servers(s) => Some(s),
            Target::Sink(_) => None,
        }
    }

    pub fn identity(&self) -> Identity {
        self.identity
    }

    /// The pool's TLS to its servers, if any.
    pub fn tls(&self) -> Option<&tls::BackendTls> {
        self.tls.as_ref()
    }

    fn sends_proxy_header(&self) -> bool {
        matches!(self.identity, Identity::ProxyV1 | Identity::ProxyV2)
    }

    /// Probes every server now and then every `health_interval`, forever.
    /// The sink needs no probe.
    pub async fn probe_loop(self: Arc<Self>) {
        let Target::Servers(servers) = &self.target else {
            return;
        };
        let mut tick = tokio::time::interval(self.health_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut first = true;
        loop {
            tick.tick().await;
            let mut extensions = None;
            for addr in servers {
                let server = addr.to_string();
                let result = self.probe(*addr).await;
                let up = result.is_ok();
                let before = self.health.set(*addr, up);
                let error = result.as_ref().err().map(BackendError::summary);
                metrics::backend_probe(&self.name, &server, error.as_deref());
                match result {
                    Ok(lines) => {
                        if before != ServerState::Up {
                            info!(backend = %self.name, server = %server, "backend server up");
                        }
                        if extensions.is_none() {
                            extensions = Some(lines);
                        }
                    }
                    Err(e) => {
                        if before != ServerState::Down {
                            warn!(backend = %self.name, server = %server, error = %e, "backend server down (health probe failed)");
                        }
                    }
                }
            }
            if extensions.is_some() {
                self.health.set_extensions(extensions);
            }
            if self.health.all_down() {
                warn!(backend = %self.name, "every server of the backend is down: new clients get 421 until one answers");
            }
            if first {
                first = false;
                let up = servers
                    .iter()
                    .filter(|a| self.health.state(**a) == ServerState::Up)
                    .count();
                info!(backend = %self.name, up, down = servers.len() - up, "backend health: first probe done");
            }
        }
    }

    /// One probe: connect (PROXY LOCAL/UNKNOWN header for PROXY pools),
    /// greeting, EHLO, QUIT. Returns the EHLO reply's texts.
    async fn probe(&self, addr: SocketAddr) -> Result<Vec<String>, BackendError> {
        let timeout = self
            .connect_timeout
            .min(self.health_interval.max(Duration::from_secs(1)));
        let mut conn = self.connect_one(addr, Header::Probe, timeout).await?;
        let server = conn.server.clone();
        let ehlo = format!("EHLO {}\r\n", self.hostname);
        let exchange = async {
            conn.io
                .write_all(ehlo.as_bytes())
                .await
                .map_err(|source| BackendError::Write {
                    server: server.clone(),
                    source,
                })?;
            let reply = read_reply(&mut conn.io, &mut conn.parser, &server).await?;
            let _ = conn.io.write_all(b"QUIT\r\n").await;
            let _ = read_reply(&mut conn.io, &mut conn.parser, &server).await;
            Ok::<_, BackendError>(reply)
        };
        let reply = tokio::time::timeout(timeout, exchange)
            .await
            .map_err(|_| BackendError::EhloTimeout {
                server: server.clone(),
                timeout,
            })??;
        if reply.code != 250 {
            let text = reply.first_line_text();
            if self.sends_proxy_header() && looks_unrecognized(&reply) {
                return Err(BackendError::ProxyHeaderRejected {
                    server,
                    detail: format!("EHLO refused: {text}"),
                });
            }
            return Err(BackendError::EhloRefused { server, text });
        }
        let texts = reply.texts();
        if self.identity == Identity::Xclient && xclient::announced(&texts).is_none() {
            return Err(BackendError::XclientNotOffered { server });
        }
        Ok(texts)
    }

    /// Connects to the first server that greets positively, telling it who
    /// the client is as configured. `proto`: how the client greeted (for
    /// XCLIENT).
    pub async fn connect(
        &self,
        client: &ClientIdentity,
        proto: xclient::Proto,
    ) -> Result<BackendConn, BackendError> {
        let servers = match &self.target {
            Target::Sink(s) => return Ok(s.connect()),
            Target::Servers(s) => s,
        };
        let mut last = BackendError::NoServers {
            backend: self.name.clone(),
        };
        // XCLIENT NAME: looked up once per session, under its own bound,
        // not once per server inside the backend timeouts.
        let name = match (&self.dns, self.identity) {
            (Some(dns), Identity::Xclient) => dns.client_name(client.client.ip()).await,
            _ => xclient::ClientName::Unavailable,
        };
        let order = self.health.connect_order();
        for addr in order.iter().filter(|a| servers.contains(a)) {
            let header = Header::Client(client, &name, proto);
            match self.connect_one(*addr, header, self.connect_timeout).await {
                Ok(c) => return Ok(c),
                Err(e @ BackendError::ClientRefused { .. }) => {
                    info!(backend = %self.name, error = %e, "backend server refused the client: its reply goes to the client, no failover");
                    return Err(e);
                }
                Err(e) => {
                    warn!(backend = %self.name, error = %e, "backend server failed, trying the next");
                    last = e;
                }
            }
        }
        Err(last)
    }

    /// Connects to one server and reads its greeting; a failure is counted
    /// (the backend's verdict on a client is not a failure).
    async fn connect_one(
        &self,
        addr: SocketAddr,
        header: Header<'_>,
        timeout: Duration,
    ) -> Result<BackendConn, BackendError> {
        let result = self.try_connect_one(addr, header, timeout).await;
        if matches!(&result, Err(e) if !matches!(e, BackendError::ClientRefused { .. })) {
            metrics::backend_connect_failed(&self.name, &addr.to_string());
        }
        result
    }

    /// The steps in wire order: TCP and the PROXY header, implicit TLS,
    /// the greeting, STARTTLS, XCLIENT (DESIGN.md §10).
    async fn try_connect_one(
        &self,
        addr: SocketAddr,
        header: Header<'_>,
        timeout: Duration,
    ) -> Result<BackendConn, BackendError> {
        let server = addr.to_string();
        let (io, header_sent) = self.open(addr, header, timeout).await?;
        let mut parser = ReplyParser::default();
        let phase = BackendTlsMode::Implicit;
        let (mut io, implicit) = self
            .tls_phase(phase, io, &mut parser, addr, timeout)
            .await?;
        self.greeting(&mut io, &mut parser, &server, header, header_sent, timeout)
            .await?;
        let phase = BackendTlsMode::Starttls;
        let (mut io, starttls) = self
            .tls_phase(phase, io, &mut parser, addr, timeout)
            .await?;
        let hop = implicit.or(starttls);
        if let Some(h) = hop {
            debug!(backend = %self.name, server = %server, version = h.version, resumed = h.resumed, probe = matches!(header, Header::Probe), "backend tls handshake");
        }
        if let (Identity::Xclient, Header::Client(client, name, proto)) = (self.identity, header) {
            let facts = xclient::XclientFacts {
                client: client.client,
                local: client.local,
                proto,
                helo: client.helo.as_deref(),
                name,
            };
            tokio::time::timeout(
                timeout,
                self.send_xclient(&mut io, &mut parser, &server, &facts),
            )
            .await
            .map_err(|_| BackendError::EhloTimeout {
                server: server.clone(),
                timeout,
            })??;
        }
        Ok(BackendConn {
            io,
            server,
            parser,
            tls: hop,
        })
    }

    /// Reads the greeting; anything but 220 fails (after a PROXY header,
    /// a close is that header refused).
    async fn greeting(
        &self,
        io: &mut Box<dyn BackendIo>,
        parser: &mut ReplyParser,
        server: &str,
        header: Header<'_>,
        header_sent: bool,
        timeout: Duration,
    ) -> Result<(), BackendError> {
        let greeting = tokio::time::timeout(timeout, read_reply(io, parser, server))
            .await
            .map_err(|_| BackendError::GreetingTimeout {
                server: server.to_string(),
                timeout,
            })?;
        let greeting = match greeting {
            Err(BackendError::GreetingEof { server }) if header_sent => {
                return Err(BackendError::ProxyHeaderRejected {
                    server,
                    detail: "closed right after the PROXY header".to_string(),
                });
            }
            other => other?,
        };
        if greeting.code != 220 {
            return Err(self.greeting_refused(server.to_string(), greeting, header, header_sent));
        }
        Ok(())
    }

    /// TLS at this point of the exchange, if the pool's `tls` says so:
    /// `Implicit` right after connecting, `Starttls` after the greeting
    /// (EHLO, STARTTLS, its 220, then the handshake).
    async fn tls_phase(
        &self,
        phase: BackendTlsMode,
        mut io: Box<dyn BackendIo>,
        parser: &mut ReplyParser,
        addr: SocketAddr,
        timeout: Duration,
    ) -> Result<(Box<dyn BackendIo>, Option<tls::TlsHop>), BackendError> {
        let Some(tls) = self.tls.as_ref().filter(|t| t.mode == phase) else {
            return Ok((io, None));
        };
        if phase == BackendTlsMode::Starttls {
            let server = addr.to_string();
            tokio::time::timeout(timeout, self.start_tls(&mut io, parser, &server))
                .await
                .map_err(|_| BackendError::EhloTimeout { server, timeout })??;
        }
        let (io, hop) = tls.handshake(io, addr, timeout).await?;
        Ok((io, Some(hop)))
    }

    /// Connects, and writes the PROXY header if the pool sends one
    /// (returned `true` then).
    async fn open(
        &self,
        addr: SocketAddr,
        header: Header<'_>,
        timeout: Duration,
    ) -> Result<(Box<dyn BackendIo>, bool), BackendError> {
        let server = addr.to_string();
        let tcp = match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
            Err(_) => return Err(BackendError::ConnectTimeout { server, timeout }),
            Ok(Err(source)) => return Err(BackendError::Connect { server, source }),
            Ok(Ok(tcp)) => tcp,
        };
        let _ = tcp.set_nodelay(true);
        let bytes = match header {
            Header::Client(c, _, _) => identity::proxy_header(self.identity, c),
            Header::Probe => {
                let local = tcp.local_addr().map_err(|source| BackendError::Connect {
                    server: server.clone(),
                    source,
                })?;
                identity::probe_header(self.identity, local, addr)
            }
        };
        let mut io: Box<dyn BackendIo> = Box::new(tcp);
        let Some(bytes) = bytes else {
            return Ok((io, false));
        };
        let sent = tokio::time::timeout(timeout, async {
            io.write_all(&bytes).await?;
            io.flush().await
        })
        .await;
        match sent {
            Ok(Ok(())) => Ok((io, true)),
            Ok(Err(source)) => Err(BackendError::Connect { server, source }),
            Err(_) => Err(BackendError::ConnectTimeout { server, timeout }),
        }
    }

    /// The error for a greeting other than 220. After a PROXY header with
    /// the client's address, a 5xx is the backend's verdict on the client,
    /// unless it says the header itself was refused (see
    /// [`refuses_early_input`]). (An XCLIENT pool's first greeting is still
    /// about the proxy: the backend learns who the client is only later.)
    fn greeting_refused(
        &self,
        server: String,
        greeting: BackendReply,
        header: Header<'_>,
        header_sent: bool,
    ) -> BackendError {
        if header_sent && refuses_early_input(&greeting) {
            return BackendError::ProxyHeaderRejected {
                server,
                detail: format!("greeting refused: {}", greeting.first_line_text()),
            };
        }
        let client_known = matches!(header, Header::Client(..))
            && matches!(self.identity, Identity::ProxyV1 | Identity::ProxyV2);
        if client_known && (500..600).contains(&greeting.code) {
            BackendError::ClientRefused {
                server,
                reply: greeting,
            }
        } else {
            BackendError::GreetingRefused {
                server,
                text: greeting.first_line_text(),
            }
        }
    }

    /// `tls = "starttls"`: EHLO, STARTTLS, its 220; the handshake follows.
    /// A server that does not offer STARTTLS, or refuses it, fails: the
    /// hop is never plaintext once the pool has `tls` set.
    async fn start_tls(
        &self,
        io: &mut Box<dyn BackendIo>,
        parser: &mut ReplyParser,
        server: &str,
    ) -> Result<(), BackendError> {
        let write_err = |source| BackendError::Write {
            server: server.to_string(),
            source,
        };
        io.write_all(format!("EHLO {}\r\n", self.hostname).as_bytes())
            .await
            .map_err(write_err)?;
        let ehlo = read_reply(io, parser, server).await?;
        if ehlo.code != 250 {
            let text = ehlo.first_line_text();
            if self.sends_proxy_header() && looks_unrecognized(&ehlo) {
                // What a server that took the header for commands
                // answered to its first line (Exim 4.96 light).
                return Err(BackendError::ProxyHeaderRejected {
                    server: server.to_string(),
                    detail: format!("EHLO refused: {text}"),
                });
            }
            return Err(BackendError::EhloRefused {
                server: server.to_string(),
                text,
            });
        }
        if !crate::smtp::ehlo::offers(&ehlo, b"STARTTLS") {
            return Err(BackendError::StartTlsNotOffered {
                server: server.to_string(),
            });
        }
        io.write_all(b"STARTTLS\r\n").await.map_err(write_err)?;
        let reply = read_reply(io, parser, server).await?;
        if reply.code != 220 {
            return Err(BackendError::StartTlsRefused {
                server: server.to_string(),
                text: reply.first_line_text(),
            });
        }
        if parser.buffered() > 0 {
            return Err(BackendError::StartTlsInjection {
                server: server.to_string(),
            });
        }
        Ok(())
    }

    /// EHLO, then XCLIENT with what the backend announced; its new 220
    /// greeting is consumed like the first. A 5xx instead is the backend's
    /// verdict on the client.
    async fn send_xclient(
        &self,
        io: &mut Box<dyn BackendIo>,
        parser: &mut ReplyParser,
        server: &str,
        facts: &xclient::XclientFacts<'_>,
    ) -> Result<(), BackendError> {
        let write_err = |source| BackendError::Write {
            server: server.to_string(),
            source,
        };
        io.write_all(format!("EHLO {}\r\n", self.hostname).as_bytes())
            .await
            .map_err(write_err)?;
        let ehlo = read_reply(io, parser, server).await?;
        if ehlo.code != 250 {
            return Err(BackendError::EhloRefused {
                server: server.to_string(),
                text: ehlo.first_line_text(),
            });
        }
        let announced =
            xclient::announced(&ehlo.texts()).ok_or_else(|| BackendError::XclientNotOffered {
                server: server.to_string(),
            })?;
        io.write_all(xclient::command(facts, &announced).as_bytes())
            .await
            .map_err(write_err)?;
        let reply = read_reply(io, parser, server).await?;
        match reply.code {
            220 => Ok(()),
            500..=599 => Err(BackendError::ClientRefused {
                server: server.to_string(),
                reply,
            }),
            _ => Err(BackendError::XclientRefused {
                server: server.to_string(),
                text: reply.first_line_text(),
            }),
        }
    }
}

/// What the PROXY header (if the pool sends one) says.
#[derive(Debug, Clone, Copy)]
enum Header<'a> {
    /// The client's identity (and, for XCLIENT, its looked-up name and
    /// how it greeted).
    Client(&'a ClientIdentity, &'a xclient::ClientName, xclient::Proto),
    /// A health probe: the proxy itself.
    Probe,
}

/// Exim's greeting to a client that spoke first (`smtp_enforce_sync`,
/// where PIPECONNECT is not offered: `pipelining_connect_advertise_hosts`):
/// `554 SMTP synchronization error`, and the connection closes. After a PROXY header it means the server read the header as
/// early input: it takes no PROXY header from the proxy (Exim without
/// `hosts_proxy`, or Debian's exim4-daemon-light, built without it). A
/// failure of the server (421 to the client, failover), not a verdict
/// on the client to relay: the sender would bounce its mail on it.
fn refuses_early_input(reply: &BackendReply) -> bool {
    reply.code == 554
        && reply
            .first_line_text()
            .to_ascii_lowercase()
            .contains("synchronization error")
}

/// A 5xx that says the command was not understood: what an MTA not
/// expecting a PROXY header answers to it (Postfix: `500 5.5.2 Error:
/// command not recognized`), and then to the EHLO that follows.
/// Also Exim's `554 SMTP synchronization error`, which it may send in
/// answer to the proxy's EHLO rather than as its greeting when the header
/// arrived just after it greeted (a race seen with Exim 4.96 light).
fn looks_unrecognized(reply: &BackendReply) -> bool {
    let text = reply.first_line_text().to_ascii_lowercase();
    refuses_early_input(reply)
        || ((500..600).contains(&reply.code)
            && (matches!(reply.code, 500 | 502)
                || text.contains("unrecognized")
                || text.contains("not recognized")))
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
