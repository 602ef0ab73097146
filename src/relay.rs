//! The SMTP-aware relay between a client and a backend.
//!
//! Commands go to the backend in order, and every command that expects a
//! reply is queued, so each backend reply is matched with its command
//! (PIPELINING): EHLO replies are filtered, a 354 switches the client side
//! to message content, the 250 after the content counts a message. Content
//! streams through in bounded pieces, never a whole message in memory.
//!
//! Nothing lost: every reply the client sees about a message is the
//! backend's own. When the backend fails — closed, reset, silent past the
//! timeout, or not speaking SMTP — the client gets `421 4.x.x` and the
//! connection closes, so the sender keeps the message and retries.

use std::collections::VecDeque;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;
use tracing::{debug, warn};

use crate::backend::BackendConn;
use crate::smtp::codec::{Line, LineCodec};
use crate::smtp::command::Command;
use crate::smtp::data::DataScanner;
use crate::smtp::ehlo;
use crate::smtp::reply::{self, BackendReply, Reply};

/// Settings for one relayed session.
#[derive(Debug, Clone)]
pub struct RelaySettings {
    pub hostname: String,
    pub line_limit: usize,
    /// Idle limit for the client between commands, and for the backend's
    /// answer to a command.
    pub command_timeout: Duration,
    /// The whole session ends here.
    pub session_deadline: Instant,
    /// The client is in TLS (a second STARTTLS gets 554).
    pub tls: bool,
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
        }
    }
}

/// What a relayed session did.
#[derive(Debug, Clone, Copy)]
pub struct RelayStats {
    pub end: RelayEnd,
    /// Messages the backend accepted (its own 250 after the content).
    pub messages: u64,
    /// Client → backend bytes.
    pub bytes_in: u64,
    /// Backend → client bytes.
    pub bytes_out: u64,
}

/// What the next backend reply answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    /// A HELO/EHLO the proxy replayed itself: the reply is not passed on.
    Replayed,
    Ehlo,
    DataGo,
    /// The end of DATA content, or a `BDAT … LAST` chunk.
    MessageEnd,
    Quit,
    Other,
    /// A reply the proxy gives itself, in its turn.
    Local(Reply),
}

/// Where the client side is.
#[derive(Debug)]
enum Mode {
    Command,
    /// DATA sent; the next client bytes wait for the backend's 354.
    AwaitDataGo,
    Data(DataScanner),
    /// `remaining` bytes of a BDAT chunk still to pass through.
    Bdat {
        remaining: u64,
    },
}

/// Upper bound on commands in flight; the client is not read past it.
const MAX_IN_FLIGHT: usize = 128;
const READ_BUF: usize = 16 * 1024;

/// Relays until either side ends. `client_input` is what the client sent
/// that is already read (plaintext relay: the command that started it);
/// `replay_helo` is sent to the backend first and its reply swallowed.
pub async fn relay<C>(
    client: C,
    client_input: Vec<u8>,
    replay_helo: Option<Vec<u8>>,
    backend: BackendConn,
    settings: &RelaySettings,
) -> RelayStats
where
    C: AsyncRead + AsyncWrite + Unpin,
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
        },
        to_backend: Vec::with_capacity(READ_BUF + 64),
        to_client: Vec::with_capacity(1024),
        server: backend.server,
        progress: 0,
    };
    r.codec.push(&client_input);
    if let Some(mut helo) = replay_helo {
        helo.extend_from_slice(b"\r\n");
        r.to_backend.extend_from_slice(&helo);
        r.in_flight.push_back(Expect::Replayed);
    }
    let (mut cr, mut cw) = tokio::io::split(client);
    let (mut br, mut bw) = tokio::io::split(backend.io);
    let end = r.run(&mut cr, &mut cw, &mut br, &mut bw).await;
    let _ = bw.shutdown().await;
    let _ = cw.shutdown().await;
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
    ) -> RelayEnd
    where
        CR: AsyncRead + Unpin,
        CW: AsyncWrite + Unpin,
        BR: AsyncRead + Unpin,
        BW: AsyncWrite + Unpin,
    {
        let mut cbuf = vec![0u8; READ_BUF];
        let mut bbuf = vec![0u8; READ_BUF];
        let mut idle_deadline = Instant::now() + self.settings.command_timeout;
        loop {
            // Work through everything already received, in order. The
            // idle clock restarts on progress (a command line, or message
            // content), not on any byte: dribbling half a line is idle.
            let progress = self.progress;
            let step = self.client_input();
            if self.progress != progress {
                idle_deadline = Instant::now() + self.settings.command_timeout;
            }
            if let Err(end) = self.flush(cw, bw).await {
                return end;
            }
            if let Err(end) = step {
                return end;
            }
            let step = self.backend_input();
            if let Err(end) = self.flush(cw, bw).await {
                return end;
            }
            if let Err(end) = step {
                return end;
            }

            let read_client =
                !matches!(self.mode, Mode::AwaitDataGo) && self.in_flight.len() < MAX_IN_FLIGHT;
            tokio::select! {
                res = cr.read(&mut cbuf), if read_client => match res {
                    Ok(0) => return RelayEnd::ClientClosed,
                    Ok(n) => self.codec.push(&cbuf[..n]),
                    Err(e) => {
                        debug!(error = %e, "client read failed");
                        return RelayEnd::ClientError;
                    }
                },
                res = br.read(&mut bbuf) => match res {
                    Ok(0) => {
                        warn!(server = %self.server, "backend closed the connection");
                        return self.fail(cw, reply::BACKEND_LOST, RelayEnd::BackendLost).await;
                    }
                    Ok(n) => {
                        self.parser.push(&bbuf[..n]);
                        idle_deadline = Instant::now() + self.settings.command_timeout;
                    }
                    Err(e) => {
                        warn!(server = %self.server, error = %e, "backend read failed");
                        return self.fail(cw, reply::BACKEND_LOST, RelayEnd::BackendLost).await;
                    }
                },
                () = tokio::time::sleep_until(idle_deadline) => {
                    if self.in_flight.is_empty() {
                        debug!("client idle past the command timeout");
                        return self.fail(cw, reply::TIMEOUT, RelayEnd::Timeout).await;
                    }
                    warn!(server = %self.server, "backend did not answer within the command timeout");
                    return self.fail(cw, reply::BACKEND_LOST, RelayEnd::BackendLost).await;
                }
                () = tokio::time::sleep_until(self.settings.session_deadline) => {
                    return self.fail(cw, reply::TIMEOUT, RelayEnd::Timeout).await;
                }
            }
        }
    }

    /// Sends a final 421 (or other closing reply) to the client.
    async fn fail<CW: AsyncWrite + Unpin>(
        &mut self,
        cw: &mut CW,
        r: Reply,
        end: RelayEnd,
    ) -> RelayEnd {
        let text = r.render(&self.settings.hostname);
        let _ = cw.write_all(text.as_bytes()).await;
        let _ = cw.flush().await;
        end
    }

    /// Writes what is queued for each side.
    async fn flush<CW: AsyncWrite + Unpin, BW: AsyncWrite + Unpin>(
        &mut self,
        cw: &mut CW,
        bw: &mut BW,
    ) -> Step {
        if !self.to_backend.is_empty() {
            let res = async {
                bw.write_all(&self.to_backend).await?;
                bw.flush().await
            }
            .await;
            if let Err(e) = res {
                warn!(server = %self.server, error = %e, "backend write failed");
                self.to_client.extend_from_slice(
                    reply::BACKEND_LOST
                        .render(&self.settings.hostname)
                        .as_bytes(),
                );
                let _ = write_client(cw, &self.to_client).await;
                return Err(RelayEnd::BackendLost);
            }
            self.stats.bytes_in += self.to_backend.len() as u64;
            self.to_backend.clear();
        }
        if !self.to_client.is_empty() {
            if write_client(cw, &self.to_client).await.is_err() {
                return Err(RelayEnd::ClientError);
            }
            self.stats.bytes_out += self.to_client.len() as u64;
            self.to_client.clear();
        }
        Ok(())
    }

    /// Consumes buffered client bytes as far as the mode allows.
    fn client_input(&mut self) -> Step {
        loop {
            match &mut self.mode {
                Mode::AwaitDataGo => return Ok(()),
                Mode::Data(scanner) => {
                    let buf = self.codec.buffer();
                    if buf.is_empty() {
                        return Ok(());
                    }
                    let s = scanner.scan(buf, &mut self.to_backend);
                    self.codec.consume(s.consumed);
                    self.progress += 1;
                    if !s.ended {
                        return Ok(());
                    }
                    self.in_flight.push_back(Expect::MessageEnd);
                    self.mode = Mode::Command;
                }
                Mode::Bdat { remaining } => {
                    let buf = self.codec.buffer();
                    let n = (*remaining).min(buf.len() as u64) as usize;
                    self.to_backend.extend_from_slice(&buf[..n]);
                    self.codec.consume(n);
                    self.progress += 1;
                    *remaining -= n as u64;
                    if *remaining > 0 {
                        return Ok(());
                    }
                    self.mode = Mode::Command;
                }
                Mode::Command => {
                    if self.in_flight.len() >= MAX_IN_FLIGHT {
                        return Ok(());
                    }
                    let Some(line) = self.codec.next_line() else {
                        return Ok(());
                    };
                    self.progress += 1;
                    self.command(line);
                }
            }
            self.local_replies();
        }
    }

    fn command(&mut self, line: Line) {
        let line = match line {
            Line::TooLong => {
                self.in_flight
                    .push_back(Expect::Local(reply::LINE_TOO_LONG));
                return;
            }
            Line::Complete(l) => l,
        };
        let expect = match Command::parse(&line) {
            Command::StartTls { .. } if self.settings.tls => {
                Expect::Local(reply::TLS_ALREADY_ACTIVE)
            }
            Command::StartTls { .. } => Expect::Local(reply::STARTTLS_NOT_NOW),
            Command::Bdat(None) => Expect::Local(reply::BDAT_SYNTAX),
            Command::BadCharacters => Expect::Local(reply::BAD_CHARACTERS),
            Command::Xclient => Expect::Local(reply::XCLIENT_DENIED),
            Command::Auth if !self.settings.tls => Expect::Local(reply::AUTH_NEEDS_TLS),
            Command::Ehlo(_) => Expect::Ehlo,
            Command::Quit => Expect::Quit,
            Command::Data => {
                self.mode = Mode::AwaitDataGo;
                Expect::DataGo
            }
            Command::Bdat(Some(b)) => {
                self.mode = Mode::Bdat { remaining: b.size };
                if b.last {
                    Expect::MessageEnd
                } else {
                    Expect::Other
                }
            }
            _ => Expect::Other,
        };
        if !matches!(expect, Expect::Local(_)) {
            self.to_backend.extend_from_slice(&line);
            self.to_backend.extend_from_slice(b"\r\n");
        }
        self.in_flight.push_back(expect);
    }

    /// Emits the proxy's own replies that have come to the front.
    fn local_replies(&mut self) {
        while let Some(Expect::Local(r)) = self.in_flight.front() {
            self.to_client
                .extend_from_slice(r.render(&self.settings.hostname).as_bytes());
            self.in_flight.pop_front();
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
            self.local_replies();
        }
    }

    fn on_reply(&mut self, reply: BackendReply) -> Step {
        let expect = self.in_flight.pop_front();
        match expect {
            Some(Expect::Replayed) => {
                if !reply.is_positive() {
                    warn!(server = %self.server, reply = %reply.first_line_text(), "backend refused the replayed HELO/EHLO");
                }
                return Ok(());
            }
            Some(Expect::Ehlo) => {
                self.to_client
                    .extend_from_slice(&ehlo::filter_backend_reply(&reply, self.settings.tls));
            }
            Some(Expect::DataGo) => {
                self.mode = if reply.code == 354 {
                    Mode::Data(DataScanner::default())
                } else {
                    Mode::Command
                };
                self.to_client.extend_from_slice(&reply.to_bytes());
            }
            Some(Expect::MessageEnd) => {
                if reply.is_positive() {
                    self.stats.messages += 1;
                }
                self.to_client.extend_from_slice(&reply.to_bytes());
            }
            Some(Expect::Quit) => {
                self.to_client.extend_from_slice(&reply.to_bytes());
                return Err(RelayEnd::Quit);
            }
            Some(Expect::Other) | None => {
                if expect.is_none() {
                    debug!(server = %self.server, reply = %reply.first_line_text(), "unsolicited backend reply");
                }
                self.to_client.extend_from_slice(&reply.to_bytes());
            }
            Some(Expect::Local(_)) => {
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

async fn write_client<CW: AsyncWrite + Unpin>(cw: &mut CW, data: &[u8]) -> std::io::Result<()> {
    cw.write_all(data).await?;
    cw.flush().await
}
