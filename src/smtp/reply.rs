//! Reply texts the proxy sends itself, and the parser for backend replies.
//!
//! Code and enhanced status code travel together in one constant; texts
//! containing `{host}` are rendered with the configured hostname.

/// A reply the proxy sends itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reply(pub &'static str);

pub const GREETING: Reply = Reply("220 {host} ESMTP starttls-proxy");
pub const READY_TO_START_TLS: Reply = Reply("220 2.0.0 Ready to start TLS");
pub const OK: Reply = Reply("250 2.0.0 Ok");
pub const HELO_OK: Reply = Reply("250 {host}");
pub const HELP: Reply = Reply("214 2.0.0 Commands: EHLO HELO STARTTLS NOOP RSET QUIT HELP");
pub const BYE: Reply = Reply("221 2.0.0 Bye");
pub const EHLO_SYNTAX: Reply = Reply("501 5.5.4 Syntax: EHLO hostname");
pub const HELO_SYNTAX: Reply = Reply("501 5.5.4 Syntax: HELO hostname");
pub const STARTTLS_SYNTAX: Reply = Reply("501 5.5.4 Syntax: STARTTLS");
pub const MUST_ISSUE_STARTTLS: Reply = Reply("530 5.7.0 Must issue a STARTTLS command first");
pub const UNKNOWN_COMMAND: Reply = Reply("500 5.5.2 Error: command not recognized");
pub const LINE_TOO_LONG: Reply = Reply("500 5.5.2 Line too long");
pub const TOO_MANY_ERRORS: Reply = Reply("421 4.7.0 {host} Error: too many errors");
pub const TLS_ALREADY_ACTIVE: Reply = Reply("554 5.5.1 Error: TLS already active");
pub const STARTTLS_NOT_NOW: Reply =
    Reply("554 5.5.1 Error: STARTTLS is not possible once a plaintext transaction has begun");
pub const BAD_CHARACTERS: Reply = Reply("500 5.5.2 Error: control character in command");
pub const XCLIENT_DENIED: Reply = Reply("550 5.7.0 Error: insufficient authorization");
/// TLS policy (DESIGN.md §9): an `enforce` rule refused a plaintext
/// MAIL or RCPT; with `reply = "temporary"` the sender queues instead.
pub const MUST_ISSUE_STARTTLS_TEMPORARY: Reply =
    Reply("450 4.7.0 Must issue a STARTTLS command first");
/// TLS policy: a `require = "tls1.3"` rule refused a TLS 1.2 session.
pub const MUST_USE_TLS13: Reply = Reply("530 5.7.0 Must use TLS 1.3");
pub const MUST_USE_TLS13_TEMPORARY: Reply = Reply("450 4.7.0 Must use TLS 1.3");
/// After a MAIL the proxy refused itself (Postfix's words): the pipelined
/// RCPT and DATA that follow never reach the backend.
pub const NEED_MAIL: Reply = Reply("503 5.5.1 Error: need MAIL command");
pub const NEED_RCPT: Reply = Reply("503 5.5.1 Error: need RCPT command");
/// DATA after every recipient of the transaction was refused by the proxy.
pub const NO_VALID_RECIPIENTS: Reply = Reply("554 5.5.1 Error: no valid recipients");
pub const AUTH_NEEDS_TLS: Reply = Reply("530 5.7.0 Must issue a STARTTLS command first");
pub const BDAT_SYNTAX: Reply = Reply("501 5.5.4 Syntax: BDAT size [LAST]");
pub const BDAT_NOT_OFFERED: Reply = Reply("502 5.5.1 Error: BDAT without CHUNKING");
/// `limits.bare_newline = "strict"` (Postfix's words).
pub const BARE_LF: Reply = Reply("521 5.5.2 {host} Error: bare <LF> received");
pub const FALSE_END: Reply =
    Reply("521 5.5.2 {host} Error: end-of-data sequence not bounded by <CR><LF> received");
pub const TIMEOUT: Reply = Reply("421 4.4.2 {host} Error: timeout exceeded");
pub const TOO_MANY_CONNECTIONS: Reply = Reply("421 4.7.0 {host} Error: too many connections");
pub const TOO_MANY_CONNECTIONS_FROM_IP: Reply =
    Reply("421 4.7.0 {host} Error: too many connections from your address");
pub const SHUTTING_DOWN: Reply = Reply("421 4.3.2 {host} Service shutting down, try again later");
pub const BACKEND_UNAVAILABLE: Reply =
    Reply("421 4.4.1 {host} Service temporarily unavailable, try again later");
pub const BACKEND_LOST: Reply =
    Reply("421 4.4.2 {host} Error: lost connection to the mail server, try again later");
pub const BACKEND_PROTOCOL: Reply =
    Reply("421 4.5.0 {host} Error: mail server protocol error, try again later");

impl Reply {
    /// The reply as sent: text with `{host}` filled in, then CRLF.
    pub fn render(&self, host: &str) -> String {
        let mut s = self.0.replace("{host}", host);
        s.push_str("\r\n");
        s
    }

    pub fn code(&self) -> u16 {
        self.0.get(..3).and_then(|c| c.parse().ok()).unwrap_or(0)
    }
}

/// One complete reply from the backend: every line as received, CRLF included.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendReply {
    pub code: u16,
    pub lines: Vec<Vec<u8>>,
}

impl BackendReply {
    /// Each line's text (after `250-`/`250 `), without the line end.
    pub fn texts(&self) -> Vec<String> {
        self.lines
            .iter()
            .map(|l| {
                let text = l.get(4..).unwrap_or_default();
                let text = text.strip_suffix(b"\r\n").unwrap_or(text);
                String::from_utf8_lossy(text).into_owned()
            })
            .collect()
    }

    pub fn is_positive(&self) -> bool {
        (200..400).contains(&self.code)
    }

    /// The reply's bytes, ready to send on.
    pub fn to_bytes(&self) -> Vec<u8> {
        self.lines.concat()
    }

    /// Text after the code of the first line, for logs.
    pub fn first_line_text(&self) -> String {
        let l = self.lines.first().map(Vec::as_slice).unwrap_or_default();
        String::from_utf8_lossy(l)
            .trim_end()
            .chars()
            .take(200)
            .collect()
    }
}

/// Why the backend's bytes are not an SMTP reply.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReplyError {
    #[error("reply line is not `NNN text`")]
    Malformed,
    #[error("reply line longer than {0} bytes")]
    TooLong(usize),
    #[error("reply has more than {0} lines")]
    TooManyLines(usize),
}

/// Reassembles multi-line replies from the backend's byte stream.
#[derive(Debug, Default)]
pub struct ReplyParser {
    buf: Vec<u8>,
    lines: Vec<Vec<u8>>,
}

/// RFC 5321 allows 512 octets; real servers send longer texts.
pub const MAX_REPLY_LINE: usize = 16 * 1024;
pub const MAX_REPLY_LINES: usize = 1000;

impl ReplyParser {
    pub fn push(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// Frees the buffers if nothing is pending and they grew past a
    /// small reply (a long EHLO answer, a burst of pipelined replies).
    pub fn release_if_empty(&mut self) {
        if self.buf.is_empty() && self.lines.is_empty() {
            if self.buf.capacity() > 1024 {
                self.buf = Vec::new();
            }
            if self.lines.capacity() > 16 {
                self.lines = Vec::new();
            }
        }
    }

    /// Bytes received but not yet part of a returned reply. After the
    /// `220` to STARTTLS this must be zero: anything else was sent before
    /// the handshake and must not be read as TLS.
    pub fn buffered(&self) -> usize {
        self.buf.len() + self.lines.iter().map(Vec::len).sum::<usize>()
    }

    /// The next complete reply, if any.
    pub fn next_reply(&mut self) -> Option<Result<BackendReply, ReplyError>> {
        loop {
            let Some(lf) = self.buf.iter().position(|&b| b == b'\n') else {
                if self.buf.len() > MAX_REPLY_LINE {
                    return Some(Err(ReplyError::TooLong(MAX_REPLY_LINE)));
                }
                return None;
            };
            if lf + 1 > MAX_REPLY_LINE {
                return Some(Err(ReplyError::TooLong(MAX_REPLY_LINE)));
            }
            let mut line: Vec<u8> = self.buf.drain(..=lf).collect();
            if !line.ends_with(b"\r\n") {
                // Normalise a bare LF so the client always gets CRLF.
                line.pop();
                line.extend_from_slice(b"\r\n");
            }
            let Some((code, last)) = parse_reply_line(&line) else {
                return Some(Err(ReplyError::Malformed));
            };
            // RFC 5321 §4.2.1: every line of a reply carries the same code.
            // A reply whose lines disagree ("250-ok" then "354 go") would
            // mean one thing to the relay and another to the client.
            if self
                .lines
                .first()
                .and_then(|first| parse_reply_line(first))
                .is_some_and(|(first, _)| first != code)
            {
                return Some(Err(ReplyError::Malformed));
            }
            self.lines.push(line);
            if self.lines.len() > MAX_REPLY_LINES {
                return Some(Err(ReplyError::TooManyLines(MAX_REPLY_LINES)));
            }
            if last {
                let lines = std::mem::take(&mut self.lines);
                return Some(Ok(BackendReply { code, lines }));
            }
        }
    }
}

/// `NNN text` / `NNN-text` / `NNN`: the code, and whether this is the last line.
fn parse_reply_line(line: &[u8]) -> Option<(u16, bool)> {
    let body = line.strip_suffix(b"\r\n")?;
    let digits = body.get(..3)?;
    if !digits.iter().all(u8::is_ascii_digit) || !(b'2'..=b'5').contains(&digits[0]) {
        return None;
    }
    let code = digits
        .iter()
        .fold(0u16, |acc, d| acc * 10 + u16::from(d - b'0'));
    match body.get(3) {
        None | Some(b' ') => Some((code, true)),
        Some(b'-') => Some((code, false)),
        Some(_) => None,
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn lines_of_one_reply_must_share_the_code() {
        // Found by the smtp_reply fuzz target.
        let mut p = super::ReplyParser::default();
        p.push(b"250-ok\r\n354 go ahead\r\n");
        assert!(matches!(
            p.next_reply(),
            Some(Err(super::ReplyError::Malformed))
        ));
    }

    use super::*;

    #[test]
    fn render_fills_host() {
        assert_eq!(
            TOO_MANY_ERRORS.render("mx.test"),
            "421 4.7.0 mx.test Error: too many errors\r\n"
        );
        assert_eq!(TOO_MANY_ERRORS.code(), 421);
    }

    #[test]
    fn multiline_reply_on_every_split() {
        let input = b"250-mx.test\r\n250-PIPELINING\r\n250 8BITMIME\r\n354 go\r\n";
        for split in 0..=input.len() {
            let mut p = ReplyParser::default();
            let mut got = Vec::new();
            p.push(&input[..split]);
            while let Some(r) = p.next_reply() {
                got.push(r.unwrap());
            }
            p.push(&input[split..]);
            while let Some(r) = p.next_reply() {
                got.push(r.unwrap());
            }
            assert_eq!(got.len(), 2, "split {split}");
            assert_eq!(got[0].code, 250);
            assert_eq!(got[0].lines.len(), 3);
            assert_eq!(got[1].code, 354);
        }
    }

    #[test]
    fn garbage_is_an_error() {
        let mut p = ReplyParser::default();
        p.push(b"HTTP/1.1 400 Bad\r\n");
        assert_eq!(p.next_reply(), Some(Err(ReplyError::Malformed)));
        let mut p = ReplyParser::default();
        p.push(&vec![b'2'; MAX_REPLY_LINE + 10]);
        assert_eq!(
            p.next_reply(),
            Some(Err(ReplyError::TooLong(MAX_REPLY_LINE)))
        );
    }

    #[test]
    fn bare_lf_is_normalised() {
        let mut p = ReplyParser::default();
        p.push(b"220 hi\n");
        assert_eq!(
            p.next_reply().unwrap().unwrap().lines,
            vec![b"220 hi\r\n".to_vec()]
        );
    }
}
