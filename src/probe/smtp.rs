//! The probe's SMTP client, up to STARTTLS: greeting, EHLO, STARTTLS, and
//! a polite QUIT. Every reply is read under one deadline and parsed by the
//! proxy's own bounded [`ReplyParser`], so a hostile or stuck server costs
//! at most one timeout and a bounded buffer.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::{Instant, timeout_at};

use crate::smtp::reply::{BackendReply, ReplyError, ReplyParser};

/// Why an SMTP exchange did not get the reply it waited for.
#[derive(Debug, thiserror::Error)]
pub enum SmtpError {
    #[error("no complete reply to {waiting_for} within {after:?}")]
    Timeout {
        waiting_for: &'static str,
        after: Duration,
    },
    #[error("the server closed the connection instead of replying to {waiting_for}")]
    Closed { waiting_for: &'static str },
    #[error("I/O error waiting for the reply to {waiting_for}")]
    Io {
        waiting_for: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("bad reply to {waiting_for}")]
    Malformed {
        waiting_for: &'static str,
        #[source]
        source: ReplyError,
    },
    #[error("{waiting_for} answered {reply:?}")]
    Rejected {
        waiting_for: &'static str,
        reply: String,
    },
    #[error(
        "the server sent {0} bytes after its 220 to STARTTLS, before the handshake (they would be read as TLS)"
    )]
    DataAfterStartTls(usize),
}

/// The longest the probe waits for the answer to its QUIT: politeness,
/// not a measurement.
pub const QUIT_TIMEOUT: Duration = Duration::from_secs(2);

/// One reply, as the probe keeps it: the code and each line's text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub code: u16,
    /// Each line after `NNN-`/`NNN `, made printable (see [`printable`]).
    pub lines: Vec<String>,
}

impl Reply {
    fn from_backend(r: &BackendReply) -> Self {
        Reply {
            code: r.code,
            lines: r.texts().iter().map(|t| printable(t)).collect(),
        }
    }

    /// The first word of the first line: the name the server gives itself
    /// in its greeting and in its EHLO reply.
    pub fn server_name(&self) -> Option<&str> {
        self.lines.first()?.split_whitespace().next()
    }

    /// Whether an EHLO reply announces `keyword` (lines after the first).
    pub fn has_extension(&self, keyword: &str) -> bool {
        self.lines.iter().skip(1).any(|l| {
            l.split_whitespace()
                .next()
                .is_some_and(|k| k.eq_ignore_ascii_case(keyword))
        })
    }

    /// `250 first line` for messages (the first line only).
    pub fn summary(&self) -> String {
        format!(
            "{} {}",
            self.code,
            self.lines.first().map(String::as_str).unwrap_or("")
        )
    }
}

/// Server text is untrusted: control characters become `?` and it is cut
/// at 200 characters before it reaches a terminal or a report.
pub fn printable(text: &str) -> String {
    text.chars()
        .take(200)
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

/// The EHLO argument: an address literal of our own end of the
/// connection (RFC 5321 §4.1.3), always syntactically valid, and true.
pub fn ehlo_name(local: SocketAddr) -> String {
    match local {
        SocketAddr::V4(a) => format!("[{}]", a.ip()),
        SocketAddr::V6(a) => format!("[IPv6:{}]", a.ip()),
    }
}

/// An SMTP connection before TLS.
#[derive(Debug)]
pub struct SmtpClient<S> {
    io: S,
    parser: ReplyParser,
    reply_timeout: Duration,
}

impl<S: AsyncRead + AsyncWrite + Unpin> SmtpClient<S> {
    pub fn new(io: S, reply_timeout: Duration) -> Self {
        SmtpClient {
            io,
            parser: ReplyParser::default(),
            reply_timeout,
        }
    }

    /// The next whole reply, within one reply timeout however the server
    /// spreads its bytes.
    pub async fn reply(&mut self, waiting_for: &'static str) -> Result<Reply, SmtpError> {
        let deadline = Instant::now() + self.reply_timeout;
        let mut chunk = [0u8; 4096];
        loop {
            match self.parser.next_reply() {
                Some(Ok(r)) => return Ok(Reply::from_backend(&r)),
                Some(Err(source)) => {
                    return Err(SmtpError::Malformed {
                        waiting_for,
                        source,
                    });
                }
                None => {}
            }
            let n = match timeout_at(deadline, self.io.read(&mut chunk)).await {
                Err(_) => {
                    return Err(SmtpError::Timeout {
                        waiting_for,
                        after: self.reply_timeout,
                    });
                }
                Ok(Err(source)) => {
                    return Err(SmtpError::Io {
                        waiting_for,
                        source,
                    });
                }
                Ok(Ok(0)) => return Err(SmtpError::Closed { waiting_for }),
                Ok(Ok(n)) => n,
            };
            self.parser.push(&chunk[..n]);
        }
    }

    /// Sends `line` (CRLF added) and reads its reply; a reply outside
    /// 2xx/3xx is an error naming the command.
    pub async fn command(&mut self, line: &str, what: &'static str) -> Result<Reply, SmtpError> {
        let deadline = Instant::now() + self.reply_timeout;
        let write = async {
            self.io.write_all(format!("{line}\r\n").as_bytes()).await?;
            self.io.flush().await
        };
        match timeout_at(deadline, write).await {
            Err(_) => {
                return Err(SmtpError::Timeout {
                    waiting_for: what,
                    after: self.reply_timeout,
                });
            }
            Ok(Err(source)) => {
                return Err(SmtpError::Io {
                    waiting_for: what,
                    source,
                });
            }
            Ok(Ok(())) => {}
        }
        positive(self.reply(what).await?, what)
    }

    /// The greeting and the EHLO reply; an error unless both are positive.
    pub async fn greet(&mut self, ehlo_name: &str) -> Result<(Reply, Reply), SmtpError> {
        let greeting = positive(self.reply("the greeting").await?, "the greeting")?;
        let ehlo = self.command(&format!("EHLO {ehlo_name}"), "EHLO").await?;
        Ok((greeting, ehlo))
    }

    /// `STARTTLS`, expecting 220, and the socket to handshake on. Bytes
    /// the server sent after its 220 are an error, never handed to TLS.
    pub async fn start_tls(mut self) -> Result<S, SmtpError> {
        let reply = self.command("STARTTLS", "STARTTLS").await?;
        if reply.code != 220 {
            return Err(SmtpError::Rejected {
                waiting_for: "STARTTLS",
                reply: reply.summary(),
            });
        }
        match self.parser.buffered() {
            0 => Ok(self.io),
            n => Err(SmtpError::DataAfterStartTls(n)),
        }
    }

    /// `QUIT` and its reply, bounded by [`QUIT_TIMEOUT`] at most; the
    /// outcome does not matter to the probe.
    pub async fn quit(mut self) {
        self.reply_timeout = self.reply_timeout.min(QUIT_TIMEOUT);
        let _ = self.command("QUIT", "QUIT").await;
        let _ = self.io.shutdown().await;
    }
}

fn positive(reply: Reply, what: &'static str) -> Result<Reply, SmtpError> {
    if (200..400).contains(&reply.code) {
        Ok(reply)
    } else {
        Err(SmtpError::Rejected {
            waiting_for: what,
            reply: reply.summary(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::duplex;

    fn client(script: &'static [u8]) -> SmtpClient<tokio::io::DuplexStream> {
        let (a, mut b) = duplex(64 * 1024);
        tokio::spawn(async move {
            let _ = b.write_all(script).await;
            // Keep the server end open (read and discard what the client says).
            let mut sink = Vec::new();
            let _ = b.read_to_end(&mut sink).await;
        });
        SmtpClient::new(a, Duration::from_millis(500))
    }

    #[tokio::test]
    async fn multi_line_ehlo_reply_and_starttls_extension() {
        let mut c = client(
            b"220 mx.test ESMTP\r\n250-mx.test hello\r\n250-PIPELINING\r\n250-starttls\r\n250 8BITMIME\r\n",
        );
        let (g, e) = c.greet("[127.0.0.1]").await.unwrap();
        assert_eq!(g.server_name(), Some("mx.test"));
        assert_eq!(e.server_name(), Some("mx.test"));
        assert!(e.has_extension("STARTTLS"));
        assert!(!e.has_extension("CHUNKING"));
    }

    #[tokio::test]
    async fn a_silent_server_costs_one_timeout() {
        let mut c = client(b"220-mx.test still ");
        let t = std::time::Instant::now();
        let err = c.reply("the greeting").await.unwrap_err();
        assert!(matches!(err, SmtpError::Timeout { .. }), "{err}");
        assert!(t.elapsed() < Duration::from_secs(2));
    }

    #[tokio::test]
    async fn bytes_after_the_starttls_220_are_refused() {
        let mut c = client(b"220 mx.test\r\n250 mx.test\r\n220 go ahead\r\nINJECTED");
        c.greet("[127.0.0.1]").await.unwrap();
        // The 220 and the injected bytes may arrive in one read or two.
        match c.start_tls().await {
            Err(SmtpError::DataAfterStartTls(n)) => assert!(n > 0),
            Ok(_) => panic!("injected bytes not noticed (they arrived later?)"),
            Err(e) => panic!("{e}"),
        }
    }

    #[tokio::test]
    async fn a_refused_greeting_is_an_error_with_its_text() {
        let mut c = client(b"554 5.3.2 go away\x07\r\n");
        let err = c.greet("[127.0.0.1]").await.unwrap_err();
        assert_eq!(
            err.to_string(),
            "the greeting answered \"554 5.3.2 go away?\""
        );
    }

    #[test]
    fn ehlo_names_are_address_literals() {
        assert_eq!(ehlo_name("127.0.0.1:25".parse().unwrap()), "[127.0.0.1]");
        assert_eq!(ehlo_name("[::1]:25".parse().unwrap()), "[IPv6:::1]");
    }
}
