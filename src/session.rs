//! One client connection, from greeting to close.
//!
//! Pre-TLS the proxy is the SMTP server (`smtp::dialogue` decides, this
//! task does the I/O). On STARTTLS the bytes the client sent after the
//! command are discarded and the raw TCP stream goes to TLS; after the
//! handshake the session is relayed to the listener's backend. On an
//! opportunistic listener a transaction begun in plaintext is relayed in
//! plaintext. Every step ends in an SMTP reply and one log line.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::{info, warn};

use crate::backend::route::SharedRoutes;
use crate::backend::{Backend, ClientIdentity, TlsFacts};
use crate::config::{BareNewline, Limits, ListenerMode, Timeouts, TlsPolicy};
use crate::policy::{Facts, SharedPolicy, Stage, TlsState, Verdict};
use crate::relay::{ReceivedSettings, RelayPolicy, RelaySettings, RelayStats, relay};
use crate::smtp::codec::LineCodec;
use crate::smtp::command::{Command, Verb, path_domain};
use crate::smtp::dialogue::{Action, PreTlsDialogue};
use crate::smtp::reply;
use crate::telemetry::metrics::{self, Rejection};
use crate::tls::TlsTerminator;
use crate::tls::hello::{self, Progress, Replay};

/// What every session of one listener shares.
#[derive(Debug)]
pub struct ListenerContext {
    pub hostname: String,
    pub address: SocketAddr,
    /// `address` as the `listener` label of metrics, made once.
    pub label: Arc<str>,
    pub mode: ListenerMode,
    pub tls_policy: TlsPolicy,
    /// The listener's own backend: no SNI, or no route for it.
    pub backend: Arc<Backend>,
    /// Every configured backend, indexed as `[[route]]`s name them.
    pub backends: Arc<[Arc<Backend>]>,
    /// `[[route]]`s (DESIGN.md §10), swapped by SIGHUP.
    pub routes: SharedRoutes,
    pub tls: TlsTerminator,
    pub limits: Limits,
    pub timeouts: Timeouts,
    /// Behind an L4 balancer: its PROXY header comes first.
    pub proxy_protocol: Option<crate::proxy_protocol::InboundProxy>,
    /// Connection pressure (stress mode), from the connection table.
    pub stress: watch::Receiver<bool>,
    /// `[[tls_policy]]` rules (DESIGN.md §9), swapped by SIGHUP.
    pub policy: SharedPolicy,
}

impl ListenerContext {
    /// The pool a session goes to after its handshake: the route for its
    /// SNI, else the listener's own.
    pub fn route(&self, sni: Option<&str>) -> Arc<Backend> {
        self.routes
            .load()
            .choose(sni)
            .and_then(|i| self.backends.get(i))
            .unwrap_or(&self.backend)
            .clone()
    }

    /// Every pool a session of this listener may reach (its own first,
    /// then the routes' targets), for the pre-TLS greeting and EHLO.
    fn reachable(&self) -> Vec<Arc<Backend>> {
        let mut out = vec![self.backend.clone()];
        for i in self.routes.load().targets() {
            if let Some(b) = self.backends.get(i)
                && !out.iter().any(|o| Arc::ptr_eq(o, b))
            {
                out.push(b.clone());
            }
        }
        out
    }

    fn under_stress(&self) -> bool {
        *self.stress.borrow()
    }

    /// The idle timeout between commands, shortened under stress.
    pub fn command_timeout(&self) -> Duration {
        if self.under_stress() {
            self.timeouts.command.min(self.timeouts.stress)
        } else {
            self.timeouts.command
        }
    }

    /// The handshake timeout, shortened under stress.
    pub fn handshake_timeout(&self) -> Duration {
        if self.under_stress() {
            self.timeouts.handshake.min(self.timeouts.stress)
        } else {
            self.timeouts.handshake
        }
    }
}

/// How the session used TLS (the `sessions_total{tls}` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SessionTls {
    Starttls,
    Implicit,
    None,
}

impl SessionTls {
    fn as_str(&self) -> &'static str {
        match self {
            Self::Starttls => "starttls",
            Self::Implicit => "implicit",
            Self::None => "none",
        }
    }
}

/// What the plaintext part of a session ended in.
enum Plaintext {
    /// The session is over (QUIT, an error, a timeout, shutdown); logged.
    Closed,
    /// `220 Ready to start TLS` sent: the handshake comes next.
    StartTls {
        tcp: TcpStream,
        helo: Option<String>,
    },
    /// A transaction begun in plaintext on an opportunistic listener: it is
    /// relayed in plaintext, starting with what the client already sent.
    Relay { tcp: TcpStream, said: Said },
}

/// What the client said before the relay starts.
#[derive(Debug, Default)]
struct Said {
    /// Read and not yet handled (a plaintext relay: the command that
    /// started it, and what followed).
    input: Vec<u8>,
    /// The HELO/EHLO line to replay to the backend (plaintext relay).
    replay_helo: Option<Vec<u8>>,
    /// The HELO/EHLO name given before TLS.
    helo_name: Option<String>,
    /// `input` starts with a MAIL the TLS policy has passed already.
    mail_asked: bool,
    /// The TLS policy refused the last MAIL before the relay started.
    mail_refused: bool,
}

/// Runs one connection to its end.
///
/// The task is sized for its largest phase, and an idle session spends
/// its life in the relay: the plaintext dialogue returns (its codec and
/// state dropped) before the handshake, and the handshake (rustls's
/// acceptor, the ClientHello buffer) runs in an allocation of its own,
/// freed when it ends (docs/memory.md).
pub async fn run(
    ctx: Arc<ListenerContext>,
    tcp: TcpStream,
    peer: SocketAddr,
    local: SocketAddr,
    mut shutdown: watch::Receiver<bool>,
) {
    let _ = tcp.set_nodelay(true);
    let session_deadline = Instant::now() + ctx.timeouts.session;
    // Built where a phase needs it, not held across the others.
    let who = |tls| ClientIdentity {
        client: peer,
        local,
        tls,
        helo: None,
    };
    let (tcp, helo, kind) = match ctx.mode {
        ListenerMode::Implicit => (tcp, None, SessionTls::Implicit),
        ListenerMode::Starttls => {
            match pre_tls(&ctx, tcp, peer, &mut shutdown, session_deadline).await {
                Plaintext::Closed => return,
                Plaintext::StartTls { tcp, helo } => (tcp, helo, SessionTls::Starttls),
                Plaintext::Relay { tcp, said } => {
                    relay_to_backend(
                        &ctx,
                        tcp,
                        who(None),
                        said,
                        SessionTls::None,
                        session_deadline,
                        shutdown,
                    )
                    .await;
                    return;
                }
            }
        }
    };
    let Some((stream, facts)) = Box::pin(handshake(&ctx, &ctx.tls, tcp, peer, &shutdown)).await
    else {
        return;
    };
    let said = Said {
        helo_name: helo,
        ..Said::default()
    };
    relay_to_backend(
        &ctx,
        stream,
        who(Some(facts)),
        said,
        kind,
        session_deadline,
        shutdown,
    )
    .await;
}

/// The SMTP dialogue before TLS, up to STARTTLS, a plaintext
/// transaction or the end of the session.
async fn pre_tls(
    ctx: &ListenerContext,
    mut tcp: TcpStream,
    peer: SocketAddr,
    shutdown: &mut watch::Receiver<bool>,
    session_deadline: Instant,
) -> Plaintext {
    let host = ctx.hostname.as_str();
    let pools = ctx.reachable();
    if pools.iter().all(|b| b.health().all_down()) {
        // No server of any pool a session could reach answered its last
        // probe: a session could only end in 421 later; say it now,
        // before the client sends anything.
        metrics::connection_rejected(Rejection::BackendDown);
        let _ = write(
            ctx,
            &mut tcp,
            reply::BACKEND_UNAVAILABLE.render(host).as_bytes(),
        )
        .await;
        info!(%peer, tls = "none", outcome = "backend_down", messages = 0u64, "session");
        return Plaintext::Closed;
    }
    // The route is known only after the handshake: offer what every
    // pool takes (DESIGN.md §10).
    let views: Vec<_> = pools.iter().map(|b| b.health().extensions()).collect();
    drop(pools);
    let mut dialogue = PreTlsDialogue::new(host, ctx.tls_policy, ctx.limits.max_errors)
        .with_extensions(crate::backend::health::common_extensions(&views));
    let mut codec = LineCodec::new(ctx.limits.line_length);
    // A read error after some bytes, for the next read (`read_into`).
    let mut deferred = None;
    if write(ctx, &mut tcp, dialogue.greeting().as_bytes())
        .await
        .is_err()
    {
        return Plaintext::Closed;
    }
    // The command timeout runs from the last complete line, not the last
    // byte: a client dribbling one byte at a time is still idle.
    let mut last_line = Instant::now();
    let mut stress = ctx.stress.clone();
    loop {
        while let Some(line) = codec.next_line() {
            last_line = Instant::now();
            if codec.last_line_bare_lf() && ctx.limits.bare_newline == BareNewline::Strict {
                let _ = write(ctx, &mut tcp, reply::BARE_LF.render(host).as_bytes()).await;
                log_plain_end(peer, &dialogue, "bare_newline");
                return Plaintext::Closed;
            }
            match dialogue.on_line(line) {
                Action::Reply(r) => {
                    if write(ctx, &mut tcp, r.as_bytes()).await.is_err() {
                        return Plaintext::Closed;
                    }
                }
                Action::Discard { reply, bytes } => {
                    codec.skip(bytes);
                    if write(ctx, &mut tcp, reply.as_bytes()).await.is_err() {
                        return Plaintext::Closed;
                    }
                }
                Action::Close(r) => {
                    let _ = write(ctx, &mut tcp, r.as_bytes()).await;
                    log_plain_end(
                        peer,
                        &dialogue,
                        if r.starts_with("221") {
                            "quit"
                        } else {
                            "too_many_errors"
                        },
                    );
                    return Plaintext::Closed;
                }
                Action::StartTls => {
                    if write(
                        ctx,
                        &mut tcp,
                        reply::READY_TO_START_TLS.render(host).as_bytes(),
                    )
                    .await
                    .is_err()
                    {
                        return Plaintext::Closed;
                    }
                    // Bytes that arrived with or after STARTTLS were sent
                    // before the handshake: never read them as commands
                    // (CVE-2011-0411 class).
                    let discarded = codec.take_buffered();
                    if !discarded.is_empty() {
                        metrics::starttls_injection(&ctx.label);
                        warn!(%peer, discarded = discarded.len(), "dropped bytes pipelined after STARTTLS");
                    }
                    return Plaintext::StartTls {
                        tcp,
                        helo: dialogue.helo_name(),
                    };
                }
                Action::Relay { helo, line } => {
                    let mail = matches!(Command::parse(&line), Command::Transaction(Verb::Mail));
                    if mail
                        && let Verdict::Refuse(r) = ask_at_plain_mail(ctx, peer, &dialogue, &line)
                    {
                        // Answered here: no backend connection, and the
                        // client may still STARTTLS (DESIGN.md §9).
                        let r = dialogue.refuse_mail(r);
                        if write(ctx, &mut tcp, r.as_bytes()).await.is_err() {
                            return Plaintext::Closed;
                        }
                        continue;
                    }
                    let mut input = line;
                    input.extend_from_slice(b"\r\n");
                    input.extend_from_slice(&codec.take_buffered());
                    let said = Said {
                        input,
                        replay_helo: helo,
                        helo_name: dialogue.helo_name(),
                        mail_asked: mail,
                        mail_refused: dialogue.mail_refused(),
                    };
                    return Plaintext::Relay { tcp, said };
                }
            }
        }
        // Recomputed on every pass: entering stress mode shortens the wait
        // of clients already idle (slowloris), see the branch below.
        let deadline = (last_line + ctx.command_timeout()).min(session_deadline);
        tokio::select! {
            Ok(()) = stress.changed() => continue,
            res = tokio::time::timeout_at(deadline, crate::relay::read_into(&mut tcp, &mut deferred, |data| codec.push(data))) => match res {
                Err(_) => {
                    let _ = write(ctx, &mut tcp, reply::TIMEOUT.render(host).as_bytes()).await;
                    log_plain_end(peer, &dialogue, "timeout");
                    return Plaintext::Closed;
                }
                Ok(Ok(0)) | Ok(Err(_)) => {
                    log_plain_end(peer, &dialogue, "client_closed");
                    return Plaintext::Closed;
                }
                Ok(Ok(_)) => {
                    if looks_like_tls(codec.buffer()) {
                        // A client speaking implicit TLS to a STARTTLS port: no
                        // SMTP reply can reach it, so close at once.
                        let reason = "implicit_tls_on_starttls_port";
                        let offered = match hello::progress(codec.buffer()) {
                            Progress::Complete(n) => hello::parse(&codec.buffer()[..n]),
                            _ => None,
                        }
                        .map(|h| h.max_version);
                        if let Some(v) = offered {
                            metrics::client_max_version(v.as_str());
                        }
                        let offered = offered.map_or("unknown", |v| v.as_str());
                        metrics::handshake_failed(reason, offered);
                        warn!(%peer, reason, client_max_version = offered, "TLS ClientHello received before STARTTLS; closing");
                        log_plain_end(peer, &dialogue, "implicit_tls_on_starttls_port");
                        return Plaintext::Closed;
                    }
                }
            },
            _ = shutdown.changed() => {
                let _ = write(ctx, &mut tcp, reply::SHUTTING_DOWN.render(host).as_bytes()).await;
                log_plain_end(peer, &dialogue, "shutdown");
                return Plaintext::Closed;
            }
        }
    }
}

/// The TLS policy on a MAIL sent before STARTTLS, before any relay starts.
fn ask_at_plain_mail(
    ctx: &ListenerContext,
    peer: SocketAddr,
    dialogue: &PreTlsDialogue,
    line: &[u8],
) -> Verdict {
    let rules = ctx.policy.load();
    if rules.is_empty() {
        return Verdict::Pass;
    }
    let sender = path_domain(line);
    let helo = dialogue.helo_name();
    rules.evaluate(
        Stage::Mail,
        &Facts {
            peer,
            helo: helo.as_deref(),
            tls: TlsState::None,
            senders: &[sender.as_deref()],
            recipient: None,
        },
    )
}

fn log_plain_end(peer: SocketAddr, dialogue: &PreTlsDialogue, outcome: &'static str) {
    info!(
        %peer,
        helo = dialogue.helo_name().map(sanitize).as_deref().unwrap_or("none"),
        tls = "none",
        messages = 0u64,
        errors = dialogue.errors(),
        outcome,
        "session"
    );
}

/// Resolves `grace` after shutdown begins: the end of what a session may
/// still finish.
async fn grace_over(shutdown: &watch::Receiver<bool>, grace: Duration) {
    let mut shutdown = shutdown.clone();
    if shutdown.wait_for(|stopping| *stopping).await.is_err() {
        // No sender: nobody will ever ask this session to stop.
        std::future::pending::<()>().await;
    }
    tokio::time::sleep(grace).await;
}

async fn handshake<IO>(
    ctx: &ListenerContext,
    tls: &TlsTerminator,
    io: IO,
    peer: SocketAddr,
    shutdown: &watch::Receiver<bool>,
) -> Option<(Box<tokio_rustls::server::TlsStream<Replay<IO>>>, TlsFacts)>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    // A handshake under way when shutdown begins may finish within the
    // grace (the client then gets 421 inside TLS); one still stalled at
    // its end is closed, never left for the runtime to abort.
    let result = tokio::select! {
        r = tls.accept(io, ctx.handshake_timeout()) => r,
        () = grace_over(shutdown, ctx.timeouts.shutdown_grace) => {
            info!(%peer, tls = "none", outcome = "shutdown", messages = 0u64, "session: shutdown grace over during the TLS handshake");
            return None;
        }
    };
    match result {
        Ok((stream, info)) => {
            info!(
                %peer,
                sni = info.sni.as_deref().unwrap_or("none"),
                sni_match = info.sni_match.as_str(),
                certificate = %info.certificate,
                serial = %info.serial,
                version = info.version,
                cipher = info.cipher,
                group = info.group,
                duration_ms = duration_ms(info.duration),
                "tls handshake"
            );
            metrics::handshake(
                info.version,
                info.cipher,
                info.sni_match.as_str(),
                &info.certificate,
                info.duration,
            );
            let facts = TlsFacts {
                version: info.version,
                cipher: info.cipher,
                sni: info.sni,
            };
            // Boxed: the session's futures pass it on by pointer, not as
            // a copy of rustls's connection state in each of them.
            Some((Box::new(stream), facts))
        }
        Err(e) => {
            let reason = e.reason();
            metrics::handshake_failed(reason, e.offered());
            let sni = e.hello.as_ref().map(|h| match (&h.sni, h.sni_present) {
                (Some(name), _) => name.as_str(),
                (None, true) => "invalid",
                (None, false) => "none",
            });
            warn!(
                %peer,
                reason,
                client_max_version = e.offered(),
                sni = sni.unwrap_or("unknown"),
                error = %e,
                "tls handshake failed"
            );
            None
        }
    }
}

async fn relay_to_backend<C>(
    ctx: &ListenerContext,
    mut client: C,
    mut who: ClientIdentity,
    said: Said,
    tls: SessionTls,
    session_deadline: Instant,
    shutdown: watch::Receiver<bool>,
) where
    C: crate::relay::Closing,
{
    let started = std::time::Instant::now();
    let peer = who.client;
    let pool = ctx.route(who.tls.as_ref().and_then(|t| t.sni.as_deref()));
    let route: Arc<str> = Arc::from(pool.name.as_str());
    metrics::session(tls.as_str(), &route);
    let Said {
        input,
        replay_helo,
        helo_name,
        mail_asked,
        mail_refused,
    } = said;
    who.helo = helo_name.clone();
    // Boxed: the connect (with the XCLIENT name lookup) and its replies are
    // over before the relay starts, and need not be part of the state an
    // idle session keeps.
    let Some(backend) = Box::pin(open_backend(
        ctx,
        &pool,
        &mut client,
        &who,
        replay_helo.as_deref(),
        tls,
        &shutdown,
    ))
    .await
    else {
        return;
    };
    let server = backend.server.clone();
    let backend_tls = backend.tls;
    let mut settings = RelaySettings {
        hostname: ctx.hostname.clone(),
        line_limit: ctx.limits.line_length,
        max_errors: ctx.limits.max_errors,
        bare_newline: ctx.limits.bare_newline,
        listener: ctx.label.clone(),
        command_timeout: ctx.timeouts.command,
        stress: Some((ctx.stress.clone(), ctx.timeouts.stress)),
        data_timeout: ctx.timeouts.data,
        session_deadline,
        tls: tls != SessionTls::None,
        shutdown_grace: ctx.timeouts.shutdown_grace,
        received: pool.received_header.then(|| ReceivedSettings {
            client: who.client.ip(),
            tls: who.tls.clone(),
        }),
        policy: RelayPolicy {
            rules: ctx.policy.clone(),
            peer,
            tls: who
                .tls
                .as_ref()
                .map_or(TlsState::None, |t| TlsState::of_version(t.version)),
            // Held here for the session's life, not twice.
            helo_pre_tls: helo_name,
            first_mail_asked: mail_asked,
            mail_refused,
        },
        backend: route,
        backend_tls: backend_tls.is_some(),
    };
    // Not held for the session's life: the task keeps only what the
    // relay uses.
    drop(who);
    let stats: RelayStats = relay(client, input, replay_helo, backend, &settings, shutdown).await;
    // The name said last (after TLS, the client's second EHLO), and the
    // pre-TLS one too when it differs.
    let helo_pre_tls = settings
        .policy
        .helo_pre_tls
        .take()
        .filter(|pre| stats.helo.as_ref().is_some_and(|last| last != pre));
    let helo = stats.helo.clone().or_else(|| helo_pre_tls.clone());
    info!(
        %peer,
        helo = helo.map(sanitize).as_deref().unwrap_or("none"),
        helo_pre_tls = helo_pre_tls.map(sanitize).as_deref(),
        tls = tls.as_str(),
        backend = %pool.name,
        server = %server,
        backend_tls = backend_tls.map_or("none", |h| h.version),
        backend_tls_resumed = backend_tls.map(|h| h.resumed),
        messages = stats.messages,
        smuggling_attempts = stats.smuggling,
        bytes_in = stats.bytes_in,
        bytes_out = stats.bytes_out,
        outcome = stats.end.as_str(),
        duration_ms = duration_ms(started.elapsed()),
        "session"
    );
}

/// Connects to the listener's backend for a session that is about to be
/// relayed; `None` when the session ends here (the client got its reply,
/// and the session its log line).
async fn open_backend<C>(
    ctx: &ListenerContext,
    pool: &Backend,
    client: &mut C,
    who: &ClientIdentity,
    replay_helo: Option<&[u8]>,
    tls: SessionTls,
    shutdown: &watch::Receiver<bool>,
) -> Option<crate::backend::BackendConn>
where
    C: AsyncRead + AsyncWrite + Unpin,
{
    let peer = who.client;
    let shutting_down = || {
        info!(%peer, tls = tls.as_str(), outcome = "shutdown", messages = 0u64, "session");
        reply::SHUTTING_DOWN.render(&ctx.hostname)
    };
    if *shutdown.borrow() {
        // Begun during the drain (a handshake that finished late): no new
        // backend work, the client retries elsewhere or later.
        let _ = write(ctx, client, shutting_down().as_bytes()).await;
        return None;
    }
    // The connect, the XCLIENT name lookup and the backend greeting all
    // end with the grace: the client gets 421, not a reset.
    let proto = crate::backend::xclient::Proto::of_greeting(replay_helo);
    let connected = tokio::select! {
        r = pool.connect(who, proto) => r,
        () = grace_over(shutdown, ctx.timeouts.shutdown_grace) => {
            let _ = write(ctx, client, shutting_down().as_bytes()).await;
            return None;
        }
    };
    let backend = match connected {
        Ok(b) => b,
        Err(crate::backend::BackendError::ClientRefused { server, reply }) => {
            // The backend's verdict on this client (it knows who it is):
            // the client gets it as is, and the session ends.
            let _ = write(ctx, client, &reply.to_bytes()).await;
            info!(%peer, tls = tls.as_str(), backend = %pool.name, server = %server, code = reply.code, outcome = "backend_refused_client", messages = 0u64, "session");
            return None;
        }
        Err(e) => {
            warn!(%peer, backend = %pool.name, error = %e, "no backend server available");
            let _ = write(
                ctx,
                client,
                reply::BACKEND_UNAVAILABLE.render(&ctx.hostname).as_bytes(),
            )
            .await;
            info!(%peer, tls = tls.as_str(), backend = %pool.name, outcome = "backend_unavailable", messages = 0u64, "session");
            return None;
        }
    };
    // Implicit TLS: the client waits for a greeting inside TLS, sent once
    // the backend is known to be there (else the 421 above greets).
    if tls == SessionTls::Implicit
        && write(
            ctx,
            client,
            reply::GREETING.render(&ctx.hostname).as_bytes(),
        )
        .await
        .is_err()
    {
        return None;
    }
    Some(backend)
}

/// Writes to the client, bounded by the command timeout: a client that
/// stops reading cannot hold its connection slot.
async fn write<W: AsyncWrite + Unpin>(
    ctx: &ListenerContext,
    w: &mut W,
    data: &[u8],
) -> std::io::Result<()> {
    let io = async {
        w.write_all(data).await?;
        w.flush().await
    };
    match tokio::time::timeout(ctx.command_timeout(), io).await {
        Ok(res) => res,
        Err(_) => Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "client not reading",
        )),
    }
}

fn duration_ms(d: Duration) -> u64 {
    d.as_millis().min(u128::from(u64::MAX)) as u64
}

/// A TLS handshake record header: content type 22, major version 3.
fn looks_like_tls(buf: &[u8]) -> bool {
    buf.len() >= 3 && buf[0] == 0x16 && buf[1] == 0x03 && buf[2] <= 0x04
}

/// Client-supplied text made safe for a log line: printable ASCII only,
/// bounded length.
pub fn sanitize(s: String) -> String {
    crate::telemetry::sanitize(&s)
}
