//! The SMTP-aware relay between a client and a backend.
//!
//! Commands go to the backend in order, and every command that expects a
//! reply is queued, so each backend reply is matched with its command
//! (PIPELINING): EHLO replies are filtered, a 354 switches the client side
//! to message content, the 250 after the content counts a message. Content
//! streams through in bounded pieces, never a whole message in memory.
//!
//! TLS policy (DESIGN.md §9) is asked at MAIL FROM and RCPT TO: a refused
//! command is answered here, in its turn among the replies in flight, and
//! never reaches the backend; neither do the RCPT and DATA that follow a
//! refused MAIL (`smtp::transaction`).
//!
//! Nothing lost: every reply the client sees about a message is the
//! backend's own. When the backend fails — closed, reset, silent past the
//! timeout, or not speaking SMTP — the client gets `421 4.x.x` and the
//! connection closes, so the sender keeps the message and retries.

use crate::telemetry::metrics::{self, Direction};
use std::collections::VecDeque;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::{debug, warn};

use crate::backend::BackendConn;
use crate::config::BareNewline;
use crate::policy::{Facts, SharedPolicy, Stage, TlsState, Verdict};
use crate::smtp::codec::{Line, LineCodec};
use crate::smtp::command::{Command, Verb, path_domain};
use crate::smtp::data::{DataScanner, Violation};
use crate::smtp::reply::{self, BackendReply, Reply};
use crate::smtp::transaction::{self, Transaction};
use crate::smtp::{ehlo, received};

/// Settings for one relayed session.
#[derive(Debug, Clone)]
pub struct RelaySettings {
    pub hostname: String,
    pub line_limit: usize,
    /// Local error replies allowed before `421` and close.
    pub max_errors: u32,
    /// How a bare LF is taken, in commands and content.
    pub bare_newline: BareNewline,
    /// The listener's address (the smuggling counter's label).
    pub listener: std::sync::Arc<str>,
    /// Idle limit for the client between commands, and for the backend's
    /// answer to a command.
    pub command_timeout: Duration,
    /// Connection pressure and the client idle timeout that applies under it.
    pub stress: Option<(tokio::sync::watch::Receiver<bool>, Duration)>,
    /// Message content must be complete this long after the 354 or the
    /// first BDAT (a client dripping bytes holds no slot for the session
    /// cap); the stress timeout, when shorter, under pressure.
    pub data_timeout: Duration,
    /// The whole session ends here.
    pub session_deadline: Instant,
    /// The client is in TLS (a second STARTTLS gets 554).
    pub tls: bool,
    /// After shutdown begins, how long a transaction may still finish.
    pub shutdown_grace: Duration,
    /// Prepend a `Received:` trace header to every message.
    pub received: Option<ReceivedSettings>,
    /// What TLS policy rules are asked with.
    pub policy: RelayPolicy,
    /// The backend the session was routed to (the metrics' `backend` label).
    pub backend: std::sync::Arc<str>,
    /// The hop to the backend is TLS: REQUIRETLS may pass (DESIGN.md §10).
    pub backend_tls: bool,
}

/// The TLS policy of a relayed session and the facts it is asked with
/// besides the commands themselves.
#[derive(Debug, Clone)]
pub struct RelayPolicy {
    pub rules: SharedPolicy,
    /// The client (the PROXY header's, behind a trusted balancer).
    pub peer: std::net::SocketAddr,
    pub tls: TlsState,
    /// The HELO/EHLO name given before STARTTLS: the one rules see until
    /// the client says another.
    pub helo_pre_tls: Option<String>,
    /// The first command of the client input is a MAIL the session
    /// already asked the policy about (plaintext relay): not asked twice.
    pub first_mail_asked: bool,
    /// The pre-TLS dialogue refused the client's last MAIL (a plaintext
    /// relay started by another command): the relay starts outside a
    /// transaction, the RCPT and DATA that follow are answered here.
    pub mail_refused: bool,
}

/// What the proxy's `Received:` header records besides the HELO name.
#[derive(Debug, Clone)]
pub struct ReceivedSettings {
    pub client: std::net::IpAddr,
    pub tls: Option<crate::backend::TlsFacts>,
}

/// How a relayed session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RelayEnd {
    /// The client said QUIT and the backend answered.
    Quit,
    /// The client closed the connection.
    ClientClosed,
    /// The backend closed, failed or sent garbage: the client got 421.
    BackendLost,
    /// The backend sent 421 itself (passed on).
    BackendClosed,
    /// Idle or session time limit: the client got 421.
    Timeout,
    /// The client's connection failed.
    ClientError,
    /// The proxy is stopping: the client got 421.
    Shutdown,
    /// Too many local errors, or a bare LF / false end of data under
    /// `bare_newline = "strict"`: the client got 421 or 521.
    Refused,
}

impl RelayEnd {
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Quit => "quit",
            Self::ClientClosed => "client_closed",
            Self::BackendLost => "backend_lost",
            Self::BackendClosed => "backend_closed",
            Self::Timeout => "timeout",
            Self::ClientError => "client_error",
            Self::Shutdown => "shutdown",
            Self::Refused => "refused",
        }
    }
}

/// What a relayed session did.
#[derive(Debug, Clone)]
pub struct RelayStats {
    pub end: RelayEnd,
    /// Messages the backend accepted (its own 250 after the content).
    pub messages: u64,
    /// Client → backend bytes.
    pub bytes_in: u64,
    /// Backend → client bytes.
    pub bytes_out: u64,
    /// The client's last HELO/EHLO name in the relay.
    pub helo: Option<String>,
    /// Messages that held a false end of data (smuggling attempts).
    pub smuggling: u64,
}

/// What the next backend reply answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    /// A HELO/EHLO the proxy replayed itself: the reply is not passed on.
    Replayed,
    Ehlo,
    DataGo,
    /// A MAIL sent to the backend (its id in the transaction).
    Mail(u64),
    /// The end of DATA content, or a `BDAT … LAST` chunk.
    MessageEnd,
    /// `AUTH` or one of its continuation lines: a 334 means the client's
    /// next line is a continuation, never a command.
    Auth,
    Quit,
    Other,
    /// A reply the proxy gives itself, in its turn.
    Local(Reply),
    /// The proxy's last reply, in its turn; then the session ends.
    LocalClose(Reply),
}

/// Where the client side is.
#[derive(Debug)]
enum Mode {
    Command,
    /// DATA sent; the next client bytes wait for the backend's 354.
    AwaitDataGo,
    Data(DataScanner),
    /// The backend answered 334: the next line is an AUTH continuation.
    AuthLine,
    /// `remaining` bytes of a BDAT chunk still to pass through.
    Bdat {
        remaining: u64,
        last: bool,
    },
}

/// Upper bound on commands in flight; the client is not read past it.
const MAX_IN_FLIGHT: usize = 128;
/// One read, into a buffer on the stack of the poll: no session keeps a
/// read buffer while its peer is silent.
const READ_BUF: usize = 16 * 1024;
/// At most this much is read in one go while more is ready (`read_into`).
/// Measured at 8 × 1 MiB (server CPU per MiB, medians of 8 alternated
/// runs): 16 KiB (no batching) 1.44 ms, 32 KiB 1.26 ms, 64 KiB 1.48 ms;
/// 64 KiB writes meet a full loopback window more often. A session in
/// the middle of content holds about twice this (read and send buffers).
const READ_BATCH: usize = 32 * 1024;
/// Send buffers larger than this are freed once empty at a command boundary.
const IDLE_BUF: usize = 4 * 1024;
/// RFC 5321 §4.5.3.2.6: a server may take 10 minutes to answer the end of
/// the content (filters, milters). Giving up earlier could leave the backend
/// to queue a message the sender then sends again.
const MESSAGE_END_TIMEOUT: Duration = Duration::from_secs(600);
/// Bound on the last writes of a session (closing reply, TLS close_notify).
const CLOSE_TIMEOUT: Duration = Duration::from_secs(10);

/// A client stream whose last reply can leave together with its close.
/// Over TLS, the reply to QUIT and the close_notify alert are queued in
/// rustls and go out in one write, instead of a write each (one syscall
/// and one loopback segment less per session: issue #11).
pub trait Closing: AsyncRead + AsyncWrite + Unpin {
    /// Queues the start of `last` (and, when all of it fits, the closing
    /// signal) without writing; returns how many bytes were queued. The
    /// caller writes the rest, then shuts the stream down, which flushes.
    fn queue_last(&mut self, last: &[u8]) -> usize {
        let _ = last;
        0
    }

    /// Holds what is written from now on until the stream is shut down,
    /// so that the last reply and the TCP FIN leave in one segment (one
    /// wake-up of the client less per session). Best effort: a socket
    /// that refuses it sends them apart, as before.
    fn hold_until_shutdown(&self) {}
}

impl Closing for tokio::net::TcpStream {
    fn hold_until_shutdown(&self) {
        // TCP_CORK: the kernel sends the held bytes with the FIN that
        // `shutdown` (or, if it never comes, `close`) queues behind them.
        // Linux only; elsewhere they go apart, as before.
        #[cfg(any(target_os = "linux", target_os = "android"))]
        let _ = rustix::net::sockopt::set_tcp_cork(self, true);
    }
}

impl<IO: Closing> Closing for crate::tls::hello::Replay<IO> {
    fn hold_until_shutdown(&self) {
        self.get_ref().hold_until_shutdown();
    }
}

impl<IO: Closing> Closing for tokio_rustls::server::TlsStream<IO> {
    fn queue_last(&mut self, last: &[u8]) -> usize {
        use std::io::Write;
        let conn = self.get_mut().1;
        let queued = conn.writer().write(last).unwrap_or(0);
        if queued == last.len() {
            conn.send_close_notify();
        }
        queued
    }

    fn hold_until_shutdown(&self) {
        self.get_ref().0.hold_until_shutdown();
    }
}

impl<C: Closing + ?Sized> Closing for Box<C> {
    fn queue_last(&mut self, last: &[u8]) -> usize {
        (**self).queue_last(last)
    }

    fn hold_until_shutdown(&self) {
        (**self).hold_until_shutdown();
    }
}

/// Relays until either side ends. `client_input` is what the client sent
/// that is already read (plaintext relay: the command that started it);
/// `replay_helo` is sent to the backend first and its reply swallowed.
/// When `shutdown` turns true the session ends at the next command
/// boundary with `421`, or when `settings.shutdown_grace` is over.
pub async fn relay<C>(
    client: C,
    client_input: Vec<u8>,
    replay_helo: Option<Vec<u8>>,
    backend: BackendConn,
    settings: &RelaySettings,
    mut shutdown: watch::Receiver<bool>,
) -> RelayStats
where
    C: Closing,
{
    let mut r = Relay {
        settings,
        codec: LineCodec::new(settings.line_limit),
        parser: backend.parser,
        in_flight: VecDeque::new(),
        mode: Mode::Command,
        stats: RelayStats {
            end: RelayEnd::ClientClosed,
            messages: 0,
            bytes_in: 0,
            bytes_out: 0,
            helo: None,
            smuggling: 0,
        },
        to_backend: Vec::new(),
        to_client: Vec::new(),
        server: backend.server,
        progress: 0,
        replies: 0,
        trace_due: false,
        errors: 0,
        closing: false,
        chunking: false,
        content_since: None,
        txn: Transaction::default(),
        first_mail_asked: settings.policy.first_mail_asked,
    };
    if settings.policy.mail_refused {
        r.txn.mail_refused();
    }
    r.codec.push(&client_input);
    if let Some(mut helo) = replay_helo {
        if let Command::Ehlo(name) | Command::Helo(name) = Command::parse(&helo) {
            r.stats.helo = Some(name);
        }
        helo.extend_from_slice(b"\r\n");
        r.to_backend.extend_from_slice(&helo);
        r.in_flight.push_back(Expect::Replayed);
    }
    let (mut cr, mut cw) = tokio::io::split(client);
    let (mut br, mut bw) = tokio::io::split(backend.io);
    let end = r
        .run(&mut cr, &mut cw, &mut br, &mut bw, &mut shutdown)
        .await;
    // What is still queued for the client (the reply to QUIT) leaves with
    // the close.
    let mut client = cr.unsplit(cw);
    let last = std::mem::take(&mut r.to_client);
    client.hold_until_shutdown();
    let queued = client.queue_last(&last);
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, async {
        client.write_all(&last[queued..]).await?;
        client.shutdown().await
    })
    .await;
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, bw.shutdown()).await;
    r.stats.end = end;
    r.stats
}

struct Relay<'a> {
    settings: &'a RelaySettings,
    codec: LineCodec,
    parser: crate::smtp::reply::ReplyParser,
    in_flight: VecDeque<Expect>,
    mode: Mode,
    stats: RelayStats,
    to_backend: Vec<u8>,
    to_client: Vec<u8>,
    server: String,
    /// Counts command lines and content pieces taken from the client.
    progress: u64,
    /// Counts backend replies handled.
    replies: u64,
    /// A trace header is still due for the current transaction.
    trace_due: bool,
    /// Local error replies so far (`limits.max_errors`).
    errors: u32,
    /// A closing reply is queued: no further client command is read.
    closing: bool,
    /// The backend's latest EHLO reply listed CHUNKING: BDAT may go to it.
    chunking: bool,
    /// When the current message's content began (354 or first BDAT).
    content_since: Option<Instant>,
    /// The backend's transaction as far as known (TLS policy).
    txn: Transaction,
    /// See [`RelayPolicy::first_mail_asked`]; cleared by the first command.
    first_mail_asked: bool,
}

/// A step's verdict: go on, or end the session this way.
type Step = Result<(), RelayEnd>;

impl Relay<'_> {
    async fn run<CR, CW, BR, BW>(
        &mut self,
        cr: &mut CR,
        cw: &mut CW,
        br: &mut BR,
        bw: &mut BW,
        shutdown: &mut watch::Receiver<bool>,
    ) -> RelayEnd
    where
        CR: AsyncRead + Unpin,
        CW: AsyncWrite + Unpin,
        BR: AsyncRead + Unpin,
        BW: AsyncWrite + Unpin,
    {
        // The idle clock restarts on progress (a command line, a piece of
        // content, a backend reply), not on any byte: dribbling half a
        // line is idle.
        let mut last_activity = Instant::now();
        let mut client_eof = false;
        // A read error that came after some bytes, for the next read.
        let (mut client_deferred, mut backend_deferred) = (None, None);
        // Set when shutdown begins: the session ends at the next command
        // boundary, and at this instant whatever it is doing.
        let mut drain_deadline: Option<Instant> = None;
        loop {
            // Work through everything already received until nothing moves:
            // a backend reply can unblock buffered client input (354, or
            // the reply to a replayed EHLO) and the other way round.
            loop {
                let before = (self.progress, self.replies);
                let step = self.client_input();
                if self.progress != before.0 {
                    last_activity = Instant::now();
                }
                if let Err(end) = self.flush(cw, bw).await {
                    return end;
                }
                if let Err(end) = step {
                    return end;
                }
                let step = self.backend_input();
                if let Err(RelayEnd::Quit) = step {
                    // The reply to QUIT goes out with the close (`relay`).
                    return RelayEnd::Quit;
                }
                if let Err(end) = self.flush(cw, bw).await {
                    return end;
                }
                if let Err(end) = step {
                    return end;
                }
                if (self.progress, self.replies) == before {
                    break;
                }
            }

            let at_boundary = self.in_flight.is_empty() && matches!(self.mode, Mode::Command);
            if at_boundary {
                self.release_buffers();
            }
            if at_boundary && client_eof {
                return RelayEnd::ClientClosed;
            }
            if drain_deadline.is_none() && *shutdown.borrow() {
                drain_deadline = Some(Instant::now() + self.settings.shutdown_grace);
            }
            if drain_deadline.is_some() && at_boundary {
                return self
                    .fail(cw, reply::SHUTTING_DOWN, RelayEnd::Shutdown)
                    .await;
            }

            let idle_limit = match self.in_flight.front() {
                Some(Expect::MessageEnd) if self.client_owes_nothing() => {
                    self.settings.command_timeout.max(MESSAGE_END_TIMEOUT)
                }
                // Waiting for the client (nothing owed by the backend):
                // shorter under connection pressure.
                _ if self.in_flight.is_empty() => match &self.settings.stress {
                    Some((on, short)) if *on.borrow() => self.settings.command_timeout.min(*short),
                    _ => self.settings.command_timeout,
                },
                _ => self.settings.command_timeout,
            };
            let idle_deadline = last_activity + idle_limit;
            let read_client = !client_eof
                && !matches!(self.mode, Mode::AwaitDataGo)
                && !self.awaiting_reply()
                && !self.closing
                && self.in_flight.len() < MAX_IN_FLIGHT;
            // One timer for the four deadlines (idle, session, content,
            // drain): a timer is part of an idle session's state, and
            // which deadline passed is known from which one is earliest.
            let content_deadline = self.content_deadline();
            let wake = [content_deadline, drain_deadline]
                .into_iter()
                .flatten()
                .fold(
                    idle_deadline.min(self.settings.session_deadline),
                    Instant::min,
                );
            tokio::select! {
                res = read_into(cr, &mut client_deferred, |data| self.codec.push(data)), if read_client => match res {
                    // The client may half-close after pipelining its last
                    // commands: their replies are still owed to it.
                    Ok(0) if self.in_flight.is_empty() => return RelayEnd::ClientClosed,
                    Ok(0) => client_eof = true,
                    Ok(_) => {}
                    Err(e) => {
                        debug!(error = %e, "client read failed");
                        return RelayEnd::ClientError;
                    }
                },
                res = read_into(br, &mut backend_deferred, |data| self.parser.push(data)) => match res {
                    Ok(0) => {
                        warn!(server = %self.server, "backend closed the connection");
                        return self.fail(cw, reply::BACKEND_LOST, RelayEnd::BackendLost).await;
                    }
                    Ok(_) => last_activity = Instant::now(),
                    Err(e) => {
                        warn!(server = %self.server, error = %e, "backend read failed");
                        return self.fail(cw, reply::BACKEND_LOST, RelayEnd::BackendLost).await;
                    }
                },
                () = tokio::time::sleep_until(wake) => {
                    if drain_deadline == Some(wake) {
                        return self.fail(cw, reply::SHUTTING_DOWN, RelayEnd::Shutdown).await;
                    }
                    if content_deadline == Some(wake) {
                        // The backend connection is dropped without a
                        // terminator: it keeps nothing of the message.
                        debug!("message content not complete within the data timeout");
                        return self.fail(cw, reply::TIMEOUT, RelayEnd::Timeout).await;
                    }
                    if wake == self.settings.session_deadline {
                        return self.fail(cw, reply::TIMEOUT, RelayEnd::Timeout).await;
                    }
                    if self.in_flight.is_empty() || !self.client_owes_nothing() {
                        debug!("client idle past the command timeout");
                        return self.fail(cw, reply::TIMEOUT, RelayEnd::Timeout).await;
                    }
                    warn!(server = %self.server, timeout = ?idle_limit, "backend did not answer in time");
                    return self.fail(cw, reply::BACKEND_LOST, RelayEnd::BackendLost).await;
                }
                _ = shutdown.changed(), if drain_deadline.is_none() => {}
            }
        }
    }

    /// A reply decides how the client's next line is read: the replayed
    /// or the client's EHLO (is BDAT allowed?), AUTH (a continuation?).
    /// Clients wait for these replies anyway (RFC 2920, RFC 4954).
    fn awaiting_reply(&self) -> bool {
        self.in_flight
            .iter()
            .any(|e| matches!(e, Expect::Replayed | Expect::Ehlo | Expect::Auth))
    }

    /// Gives back what a burst of content or replies made the buffers grow
    /// to: a session waiting for its next command holds next to nothing.
    fn release_buffers(&mut self) {
        self.codec.release_if_empty();
        self.parser.release_if_empty();
        for buf in [&mut self.to_backend, &mut self.to_client] {
            if buf.is_empty() && buf.capacity() > IDLE_BUF {
                *buf = Vec::new();
            }
        }
    }

    /// When the content of the message under way must be complete.
    fn content_deadline(&self) -> Option<Instant> {
        let since = self.content_since?;
        let limit = match &self.settings.stress {
            Some((on, short)) if *on.borrow() => self.settings.data_timeout.min(*short),
            _ => self.settings.data_timeout,
        };
        Some(since + limit)
    }

    /// The client is not in the middle of sending content.
    fn client_owes_nothing(&self) -> bool {
        !matches!(self.mode, Mode::Data(_) | Mode::Bdat { .. })
    }

    /// Sends a final 421 (or other closing reply) to the client.
    async fn fail<CW: AsyncWrite + Unpin>(
        &mut self,
        cw: &mut CW,
        r: Reply,
        end: RelayEnd,
    ) -> RelayEnd {
        let text = r.render(&self.settings.hostname);
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, write_client(cw, text.as_bytes())).await;
        end
    }

    /// Writes what is queued for each side, each write bounded by the
    /// command timeout: a peer that stops reading cannot hold the session.
    async fn flush<CW: AsyncWrite + Unpin, BW: AsyncWrite + Unpin>(
        &mut self,
        cw: &mut CW,
        bw: &mut BW,
    ) -> Step {
        let limit = self.settings.command_timeout;
        if !self.to_backend.is_empty() {
            let res = tokio::time::timeout(limit, async {
                bw.write_all(&self.to_backend).await?;
                bw.flush().await
            })
            .await;
            let failure = match res {
                Ok(Ok(())) => None,
                Ok(Err(e)) => Some(e.to_string()),
                Err(_) => Some(format!("not accepting data for {limit:?}")),
            };
            if let Some(error) = failure {
                warn!(server = %self.server, %error, "backend write failed");
                // Queued after the replies already due; `relay` writes
                // them all with the close (written here too, they went
                // out twice).
                self.to_client.extend_from_slice(
                    reply::BACKEND_LOST
                        .render(&self.settings.hostname)
                        .as_bytes(),
                );
                return Err(RelayEnd::BackendLost);
            }
            self.stats.bytes_in += self.to_backend.len() as u64;
            metrics::bytes_relayed(Direction::ClientToBackend, self.to_backend.len() as u64);
            self.to_backend.clear();
        }
        if !self.to_client.is_empty() {
            match tokio::time::timeout(limit, write_client(cw, &self.to_client)).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return Err(RelayEnd::ClientError),
                Err(_) => {
                    debug!("client stopped reading");
                    return Err(RelayEnd::Timeout);
                }
            }
            self.stats.bytes_out += self.to_client.len() as u64;
            metrics::bytes_relayed(Direction::BackendToClient, self.to_client.len() as u64);
            self.to_client.clear();
        }
        Ok(())
    }

    /// Consumes buffered client bytes as far as the mode allows.
    fn client_input(&mut self) -> Step {
        loop {
            match &mut self.mode {
                Mode::AwaitDataGo => return Ok(()),
                Mode::Data(_) => {
                    if !self.content()? {
                        return Ok(());
                    }
                }
                Mode::Bdat { remaining, last } => {
                    let buf = self.codec.buffer();
                    if *remaining > 0 && buf.is_empty() {
                        return Ok(());
                    }
                    let n = (*remaining).min(buf.len() as u64) as usize;
                    self.to_backend.extend_from_slice(&buf[..n]);
                    self.codec.consume(n);
                    self.progress += 1;
                    *remaining -= n as u64;
                    if *remaining > 0 {
                        return Ok(());
                    }
                    if *last {
                        self.content_since = None;
                    }
                    self.mode = Mode::Command;
                }
                Mode::AuthLine => {
                    let Some(line) = self.codec.next_line() else {
                        return Ok(());
                    };
                    self.progress += 1;
                    self.auth_line(line);
                }
                Mode::Command => {
                    // Nothing goes to the backend before the replies that
                    // decide how to read it, nor past the in-flight bound.
                    if self.awaiting_reply()
                        || self.closing
                        || self.in_flight.len() >= MAX_IN_FLIGHT
                    {
                        return Ok(());
                    }
                    let Some(line) = self.codec.next_line() else {
                        return Ok(());
                    };
                    self.progress += 1;
                    if self.codec.last_line_bare_lf()
                        && self.settings.bare_newline == BareNewline::Strict
                    {
                        self.close_with(reply::BARE_LF);
                    } else {
                        self.command(line);
                    }
                }
            }
            self.local_replies()?;
        }
    }

    /// Message content through the scanner. `Ok(true)`: the end of data
    /// was found (go on reading commands); `Ok(false)`: wait for more.
    fn content(&mut self) -> Result<bool, RelayEnd> {
        let Mode::Data(scanner) = &mut self.mode else {
            return Ok(false);
        };
        let buf = self.codec.buffer();
        if buf.is_empty() {
            return Ok(false);
        }
        let s = scanner.scan(buf, &mut self.to_backend);
        let suspicious = scanner.suspicious();
        self.codec.consume(s.consumed);
        self.progress += 1;
        if let Some(why) = s.refused {
            // Strict: the backend gets no terminator (it drops the partial
            // message when the connection goes), the client a 521.
            self.to_backend.clear();
            if why == Violation::FalseEnd {
                self.smuggling_attempt(1);
            }
            warn!(server = %self.server, violation = ?why, "message refused: bare_newline = strict");
            let r = match why {
                Violation::BareLf => reply::BARE_LF,
                Violation::FalseEnd => reply::FALSE_END,
            };
            self.to_client
                .extend_from_slice(r.render(&self.settings.hostname).as_bytes());
            return Err(RelayEnd::Refused);
        }
        if !s.ended {
            return Ok(false);
        }
        if suspicious > 0 {
            self.smuggling_attempt(suspicious);
        }
        self.content_since = None;
        self.in_flight.push_back(Expect::MessageEnd);
        self.mode = Mode::Command;
        // Whatever the backend answers, the transaction is over.
        self.txn.reset();
        Ok(true)
    }

    /// A message held `lines` false ends of data: logged and counted once.
    fn smuggling_attempt(&mut self, lines: u32) {
        self.stats.smuggling += 1;
        metrics::smuggling_attempt(&self.settings.listener);
        warn!(
            server = %self.server,
            lines,
            "SMTP smuggling attempt: lone dot not bounded by CRLF, sent on as content"
        );
    }

    /// The client's answer to a 334: relayed as is, never parsed as a
    /// command (a base64 line may read `DATA` or `QUIT`). A line the
    /// backend could split otherwise cancels the exchange instead.
    fn auth_line(&mut self, line: Line) {
        self.mode = Mode::Command;
        match line {
            Line::Complete(l) if !l.iter().any(|&b| b < 0x20 || b == 0x7f) => {
                self.to_backend.extend_from_slice(&l);
            }
            _ => self.to_backend.push(b'*'),
        }
        self.to_backend.extend_from_slice(b"\r\n");
        self.in_flight.push_back(Expect::Auth);
    }

    /// Queues a local error reply; past `max_errors`, also 421 and close.
    fn local_error(&mut self, r: Reply) {
        self.errors += 1;
        self.in_flight.push_back(Expect::Local(r));
        if self.errors >= self.settings.max_errors {
            self.close_with(reply::TOO_MANY_ERRORS);
        }
    }

    /// Queues a last reply after what is in flight; nothing more is read.
    fn close_with(&mut self, r: Reply) {
        self.closing = true;
        self.in_flight.push_back(Expect::LocalClose(r));
    }

    fn command(&mut self, line: Line) {
        let first_mail_asked = std::mem::take(&mut self.first_mail_asked);
        let line = match line {
            Line::TooLong => return self.local_error(reply::LINE_TOO_LONG),
            Line::Complete(l) => l,
        };
        let expect = match Command::parse(&line) {
            Command::StartTls { .. } if self.settings.tls => {
                return self.local_error(reply::TLS_ALREADY_ACTIVE);
            }
            Command::StartTls { .. } => return self.local_error(reply::STARTTLS_NOT_NOW),
            // Where its chunk ends is unknown: nothing after it can be read
            // as a command.
            Command::Bdat(None) => return self.close_with(reply::BDAT_SYNTAX),
            Command::BadCharacters => return self.local_error(reply::BAD_CHARACTERS),
            Command::Xclient => return self.local_error(reply::XCLIENT_DENIED),
            Command::Auth if !self.settings.tls => return self.local_error(reply::AUTH_NEEDS_TLS),
            Command::Auth => Expect::Auth,
            Command::Ehlo(ref name) => {
                self.stats.helo = Some(name.clone());
                self.txn.reset();
                Expect::Ehlo
            }
            Command::Helo(ref name) => {
                self.stats.helo = Some(name.clone());
                self.chunking = false;
                self.txn.reset();
                Expect::Other
            }
            Command::Transaction(Verb::Mail) => match self.mail(&line, first_mail_asked) {
                Some(expect) => expect,
                None => return,
            },
            Command::Transaction(Verb::Rcpt) => match self.rcpt(&line) {
                Some(expect) => expect,
                None => return,
            },
            Command::Rset => {
                self.content_since = None;
                self.txn.reset();
                Expect::Other
            }
            Command::Quit => Expect::Quit,
            Command::Data => {
                if let Some(r) = self.txn.local_reply(transaction::Step::Data) {
                    return self.local_reply(r);
                }
                self.mode = Mode::AwaitDataGo;
                Expect::DataGo
            }
            Command::Bdat(Some(b)) if !self.chunking => {
                // The backend would read the chunk as commands: it never
                // sees a byte of it.
                self.codec.skip(b.size);
                return self.local_error(reply::BDAT_NOT_OFFERED);
            }
            Command::Bdat(Some(b)) => {
                if let Some(r) = self.txn.local_reply(transaction::Step::Data) {
                    // Not a byte of the chunk reaches the backend either.
                    self.codec.skip(b.size);
                    return self.local_reply(r);
                }
                return self.bdat(b);
            }
            _ => Expect::Other,
        };
        self.to_backend.extend_from_slice(&line);
        self.to_backend.extend_from_slice(b"\r\n");
        self.in_flight.push_back(expect);
    }

    /// MAIL FROM, asked of the TLS policy unless the session has asked
    /// already; `None` when refused here (the reply is queued in its turn).
    fn mail(&mut self, line: &[u8], asked: bool) -> Option<Expect> {
        let sender = path_domain(line);
        if !asked && let Some(r) = self.ask_policy(Stage::Mail, &[sender.as_deref()], None) {
            self.txn.mail_refused();
            self.local_reply(r);
            return None;
        }
        self.trace_due = self.settings.received.is_some();
        Some(Expect::Mail(self.txn.mail_sent(sender)))
    }

    /// RCPT TO: answered here after a refused MAIL, or when a rule refuses
    /// it; `None` then.
    fn rcpt(&mut self, line: &[u8]) -> Option<Expect> {
        if let Some(r) = self.txn.local_reply(transaction::Step::Rcpt) {
            self.local_reply(r);
            return None;
        }
        if let Some(r) = self.ask_at_rcpt(line) {
            self.txn.rcpt_refused();
            self.local_reply(r);
            return None;
        }
        self.txn.rcpt_sent();
        Some(Expect::Other)
    }

    /// Asks the TLS policy about a RCPT, with every sender the backend's
    /// transaction may have.
    fn ask_at_rcpt(&self, line: &[u8]) -> Option<Reply> {
        if self.settings.policy.rules.load().is_empty() {
            return None;
        }
        let recipient = path_domain(line);
        let senders: Vec<Option<&str>> = self.txn.senders().collect();
        self.ask_policy(Stage::Rcpt, &senders, recipient.as_deref())
    }

    /// Asks the TLS policy about a MAIL or RCPT; `Some(reply)` when an
    /// `enforce` rule refuses it.
    fn ask_policy(
        &self,
        stage: Stage,
        senders: &[Option<&str>],
        recipient: Option<&str>,
    ) -> Option<Reply> {
        let p = &self.settings.policy;
        let rules = p.rules.load();
        if rules.is_empty() {
            return None;
        }
        let facts = Facts {
            peer: p.peer,
            helo: self.stats.helo.as_deref().or(p.helo_pre_tls.as_deref()),
            tls: p.tls,
            senders,
            recipient,
        };
        match rules.evaluate(stage, &facts) {
            Verdict::Pass => None,
            Verdict::Refuse(r) => Some(r),
        }
    }

    /// Queues a reply of the proxy's own that is no client error (a
    /// policy refusal, and the 503/554 that follow it), in its turn.
    fn local_reply(&mut self, r: Reply) {
        self.in_flight.push_back(Expect::Local(r));
    }

    /// A BDAT chunk for a backend that announced CHUNKING.
    fn bdat(&mut self, b: crate::smtp::command::Bdat) {
        if b.last {
            // Whatever the backend answers, the transaction ends here.
            self.txn.reset();
        }
        self.mode = Mode::Bdat {
            remaining: b.size,
            last: b.last,
        };
        self.content_since.get_or_insert_with(Instant::now);
        let expect = if b.last {
            Expect::MessageEnd
        } else {
            Expect::Other
        };
        // The first chunk of a message carries the trace header: the chunk
        // is announced that much larger.
        let trace = if self.trace_due {
            self.trace_due = false;
            self.trace()
        } else {
            String::new()
        };
        let last = if b.last { " LAST" } else { "" };
        self.to_backend.extend_from_slice(
            format!("BDAT {}{last}\r\n", b.size + trace.len() as u64).as_bytes(),
        );
        self.to_backend.extend_from_slice(trace.as_bytes());
        self.in_flight.push_back(expect);
    }

    /// The `Received:` header for the message starting now.
    fn trace(&self) -> String {
        let Some(r) = &self.settings.received else {
            return String::new();
        };
        received::header(&received::Trace {
            helo: self.stats.helo.as_deref(),
            client: r.client,
            hostname: &self.settings.hostname,
            tls: r
                .tls
                .as_ref()
                .map(|t| (t.version, t.cipher, t.sni.as_deref())),
            now: crate::tls::load::now_unix(),
        })
    }

    /// Emits the proxy's own replies that have come to the front; after a
    /// closing one the session ends.
    fn local_replies(&mut self) -> Step {
        loop {
            let (r, end) = match self.in_flight.front() {
                Some(Expect::Local(r)) => (*r, false),
                Some(Expect::LocalClose(r)) => (*r, true),
                _ => return Ok(()),
            };
            self.to_client
                .extend_from_slice(r.render(&self.settings.hostname).as_bytes());
            self.in_flight.pop_front();
            if end {
                return Err(RelayEnd::Refused);
            }
        }
    }

    /// Matches complete backend replies with the commands in flight.
    fn backend_input(&mut self) -> Step {
        loop {
            let reply = match self.parser.next_reply() {
                None => return Ok(()),
                Some(Ok(r)) => r,
                Some(Err(e)) => {
                    warn!(server = %self.server, error = %e, "backend sent something that is not an SMTP reply");
                    self.to_client.extend_from_slice(
                        reply::BACKEND_PROTOCOL
                            .render(&self.settings.hostname)
                            .as_bytes(),
                    );
                    return Err(RelayEnd::BackendLost);
                }
            };
            self.on_reply(reply)?;
            self.local_replies()?;
        }
    }

    fn on_reply(&mut self, reply: BackendReply) -> Step {
        self.replies += 1;
        let expect = self.in_flight.pop_front();
        match expect {
            Some(Expect::Replayed) => {
                if reply.is_positive() {
                    self.chunking = ehlo::offers(&reply, b"CHUNKING");
                    return Ok(());
                }
                // The client was told its EHLO was fine; going on would earn
                // it the backend's "503 send HELO/EHLO first", a 5xx the
                // proxy caused. A 4xx makes the sender retry instead.
                warn!(server = %self.server, reply = %reply.first_line_text(), "backend refused the replayed HELO/EHLO");
                self.to_client.extend_from_slice(
                    reply::BACKEND_UNAVAILABLE
                        .render(&self.settings.hostname)
                        .as_bytes(),
                );
                return Err(RelayEnd::BackendLost);
            }
            Some(Expect::Ehlo) => {
                self.chunking = ehlo::offers(&reply, b"CHUNKING");
                self.to_client
                    .extend_from_slice(&ehlo::filter_backend_reply(
                        &reply,
                        self.settings.tls,
                        self.settings.backend_tls,
                    ));
            }
            Some(Expect::DataGo) => {
                self.mode = if reply.code == 354 {
                    if self.trace_due {
                        self.trace_due = false;
                        let trace = self.trace();
                        self.to_backend.extend_from_slice(trace.as_bytes());
                    }
                    self.content_since = Some(Instant::now());
                    Mode::Data(DataScanner::new(self.settings.bare_newline))
                } else {
                    Mode::Command
                };
                self.to_client.extend_from_slice(&reply.to_bytes());
            }
            Some(Expect::Mail(id)) => {
                self.txn.mail_reply(id, reply.is_positive());
                self.to_client.extend_from_slice(&reply.to_bytes());
            }
            Some(Expect::MessageEnd) => {
                if reply.is_positive() {
                    self.stats.messages += 1;
                    metrics::message_relayed(&self.settings.backend);
                }
                self.to_client.extend_from_slice(&reply.to_bytes());
            }
            Some(Expect::Quit) => {
                self.to_client.extend_from_slice(&reply.to_bytes());
                return Err(RelayEnd::Quit);
            }
            None if reply.code == 421 => {
                // A backend closing on its own (idle timeout, shutdown).
                self.to_client.extend_from_slice(&reply.to_bytes());
            }
            None => {
                // A reply to nothing: passing it on would answer the
                // client's next command with it.
                warn!(server = %self.server, reply = %reply.first_line_text(), "unsolicited backend reply");
                self.to_client.extend_from_slice(
                    reply::BACKEND_PROTOCOL
                        .render(&self.settings.hostname)
                        .as_bytes(),
                );
                return Err(RelayEnd::BackendLost);
            }
            Some(Expect::Other) => {
                self.to_client.extend_from_slice(&reply.to_bytes());
            }
            Some(Expect::Auth) => {
                if reply.code == 334 {
                    self.mode = Mode::AuthLine;
                }
                self.to_client.extend_from_slice(&reply.to_bytes());
            }
            Some(Expect::Local(_) | Expect::LocalClose(_)) => {
                // local_replies() always drains these first; keep order anyway.
                self.to_client.extend_from_slice(&reply.to_bytes());
            }
        }
        if reply.code == 421 {
            return Err(RelayEnd::BackendClosed);
        }
        Ok(())
    }
}

/// Reads from `r` into a stack buffer and hands the bytes to `received`;
/// `Ok(0)` at end of stream. While a read fills the buffer it reads again,
/// up to [`READ_BATCH`], as long as more is there at once: a burst of
/// content then goes on to the backend in fewer, larger writes (each write
/// is one trip through the TCP stack, on loopback the receiver's too).
/// An error after some bytes is kept in `deferred` and returned by the
/// next call (a TCP socket reports a reset once), so the bytes before it
/// are handled first; an end of stream after bytes is met again anyway.
pub(crate) async fn read_into<R: AsyncRead + Unpin>(
    r: &mut R,
    deferred: &mut Option<std::io::Error>,
    mut received: impl FnMut(&[u8]),
) -> std::io::Result<usize> {
    use std::task::Poll;
    if let Some(e) = deferred.take() {
        return Err(e);
    }
    std::future::poll_fn(|cx| {
        let mut total = 0;
        loop {
            let mut stack = [std::mem::MaybeUninit::<u8>::uninit(); READ_BUF];
            let mut buf = tokio::io::ReadBuf::uninit(&mut stack);
            match std::pin::Pin::new(&mut *r).poll_read(cx, &mut buf) {
                Poll::Ready(Ok(())) => {
                    let n = buf.filled().len();
                    if n > 0 {
                        received(buf.filled());
                        total += n;
                    }
                    if n < READ_BUF || total >= READ_BATCH {
                        return Poll::Ready(Ok(total));
                    }
                }
                Poll::Ready(Err(e)) if total == 0 => return Poll::Ready(Err(e)),
                Poll::Ready(Err(e)) => {
                    *deferred = Some(e);
                    return Poll::Ready(Ok(total));
                }
                Poll::Pending if total == 0 => return Poll::Pending,
                Poll::Pending => return Poll::Ready(Ok(total)),
            }
        }
    })
    .await
}

async fn write_client<CW: AsyncWrite + Unpin>(cw: &mut CW, data: &[u8]) -> std::io::Result<()> {
    cw.write_all(data).await?;
    cw.flush().await
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::VecDeque;
    use std::pin::Pin;
    use std::task::{Context, Poll};

    /// A stream that gives, poll by poll, what its script says.
    struct Script(VecDeque<Poll<std::io::Result<Vec<u8>>>>);

    impl AsyncRead for Script {
        fn poll_read(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &mut tokio::io::ReadBuf<'_>,
        ) -> Poll<std::io::Result<()>> {
            match self.0.pop_front() {
                Some(Poll::Ready(Ok(data))) => {
                    buf.put_slice(&data);
                    Poll::Ready(Ok(()))
                }
                Some(Poll::Ready(Err(e))) => Poll::Ready(Err(e)),
                Some(Poll::Pending) | None => Poll::Pending,
            }
        }
    }

    fn full(b: u8) -> Poll<std::io::Result<Vec<u8>>> {
        Poll::Ready(Ok(vec![b; READ_BUF]))
    }

    /// One call of `read_into`, polled once: the bytes handed over and
    /// its result (None: pending). `deferred` carries over between calls.
    fn read_once(
        s: &mut Script,
        deferred: &mut Option<std::io::Error>,
    ) -> (Vec<u8>, Option<std::io::Result<usize>>) {
        let mut got = Vec::new();
        let res = {
            let mut fut = std::pin::pin!(read_into(s, deferred, |d| got.extend_from_slice(d)));
            let mut cx = Context::from_waker(std::task::Waker::noop());
            match fut.as_mut().poll(&mut cx) {
                Poll::Ready(r) => Some(r),
                Poll::Pending => None,
            }
        };
        (got, res)
    }

    #[test]
    fn full_reads_are_batched_until_the_stream_has_no_more() {
        let mut d = None;
        let tail = || Poll::Ready(Ok(b"xy".to_vec()));
        let mut s = Script(VecDeque::from([full(b'a'), tail(), Poll::Pending, tail()]));
        let (got, res) = read_once(&mut s, &mut d);
        assert_eq!(res.map(|r| r.unwrap()), Some(READ_BUF + 2));
        assert_eq!(&got[READ_BUF - 1..], b"axy");
        let (got, res) = read_once(&mut s, &mut d);
        assert_eq!((got.len(), res.is_none()), (0, true), "pending");
        let (got, res) = read_once(&mut s, &mut d);
        assert_eq!((got, res.map(|r| r.unwrap())), (b"xy".to_vec(), Some(2)));
    }

    #[test]
    fn a_short_read_or_the_batch_limit_ends_a_batch() {
        let mut d = None;
        let short = Poll::Ready(Ok(b"QUIT\r\n".to_vec()));
        let mut s = Script(VecDeque::from([short, full(b'x')]));
        assert_eq!(read_once(&mut s, &mut d).1.map(|r| r.unwrap()), Some(6));
        let mut s = Script((0..READ_BATCH / READ_BUF + 1).map(|_| full(b'x')).collect());
        assert_eq!(
            read_once(&mut s, &mut d).1.map(|r| r.unwrap()),
            Some(READ_BATCH)
        );
        assert_eq!(s.0.len(), 1, "read past the batch limit");
    }

    /// The end of the stream, or an error, after bytes: the bytes first,
    /// then the end or the error on its own, the error even from a stream
    /// that reports it only once (as a TCP socket reports a reset).
    #[test]
    fn the_end_or_an_error_after_bytes_comes_separately() {
        let mut d = None;
        let eof = || Poll::Ready(Ok(Vec::new()));
        let mut s = Script(VecDeque::from([full(b'a'), eof(), eof()]));
        assert_eq!(
            read_once(&mut s, &mut d).1.map(|r| r.unwrap()),
            Some(READ_BUF)
        );
        assert_eq!(read_once(&mut s, &mut d).1.map(|r| r.unwrap()), Some(0));
        let reset = || Poll::Ready(Err(std::io::ErrorKind::ConnectionReset.into()));
        let mut s = Script(VecDeque::from([full(b'a'), reset(), full(b'b')]));
        assert_eq!(
            read_once(&mut s, &mut d).1.map(|r| r.unwrap()),
            Some(READ_BUF)
        );
        let (got, res) = read_once(&mut s, &mut d);
        assert!(got.is_empty());
        assert_eq!(
            res.map(|r| r.unwrap_err().kind()),
            Some(std::io::ErrorKind::ConnectionReset)
        );
        assert_eq!(
            read_once(&mut s, &mut d).0,
            vec![b'b'; READ_BUF],
            "in order"
        );
        let mut s = Script(VecDeque::from([Poll::Pending]));
        assert!(read_once(&mut s, &mut d).1.is_none());
    }
}
