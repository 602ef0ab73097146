//! The pre-TLS dialogue (DESIGN.md §2): the proxy is the SMTP server until
//! the client says STARTTLS, or — on an opportunistic listener — starts a
//! transaction in plaintext.
//!
//! No I/O: each line goes in, an [`Action`] comes out. The session task
//! writes replies, performs the handshake and owns the socket.

use super::codec::Line;
use super::command::{Command, Verb};
use super::ehlo;
use super::reply::{self, Reply};
use crate::config::TlsPolicy;

/// What the session must do next.
#[derive(Debug, PartialEq, Eq)]
pub enum Action {
    /// Write this reply and keep reading commands.
    Reply(String),
    /// Write this reply, then close the connection.
    Close(String),
    /// Write this reply and drop the next `bytes` bytes unread: a BDAT
    /// chunk the client was not offered CHUNKING for.
    Discard { reply: String, bytes: u64 },
    /// Write `220 2.0.0 Ready to start TLS`, discard everything the client
    /// sent after the STARTTLS line, and hand the socket to TLS.
    StartTls,
    /// Opportunistic listener: a transaction began without TLS. Connect to
    /// the backend, replay the client's HELO/EHLO (if any), forward `line`,
    /// and relay in plaintext from there on.
    Relay {
        helo: Option<Vec<u8>>,
        line: Vec<u8>,
    },
}

/// Pre-TLS state: what greeting the client gave, how many errors it made.
#[derive(Debug)]
pub struct PreTlsDialogue {
    hostname: String,
    policy: TlsPolicy,
    max_errors: u32,
    errors: u32,
    /// The client's last accepted HELO/EHLO line, replayed for a plaintext relay.
    helo: Option<Vec<u8>>,
    /// Extensions for the EHLO reply (the backend's, as last probed);
    /// `None`: the built-in safe set.
    extensions: Option<std::sync::Arc<Vec<String>>>,
    /// A TLS policy rule refused the last MAIL (DESIGN.md §9): RCPT, DATA
    /// and BDAT are answered here, never relayed, until the next MAIL,
    /// RSET or HELO/EHLO.
    mail_refused: bool,
}

impl PreTlsDialogue {
    pub fn new(hostname: &str, policy: TlsPolicy, max_errors: u32) -> Self {
        Self {
            hostname: hostname.to_string(),
            policy,
            max_errors,
            errors: 0,
            helo: None,
            extensions: None,
            mail_refused: false,
        }
    }

    /// Offers these extensions (already filtered to the pre-TLS safe set)
    /// instead of the built-in ones.
    pub fn with_extensions(mut self, extensions: Option<std::sync::Arc<Vec<String>>>) -> Self {
        self.extensions = extensions;
        self
    }

    /// The 220 greeting.
    pub fn greeting(&self) -> String {
        reply::GREETING.render(&self.hostname)
    }

    /// The name the client gave in HELO/EHLO (for logs).
    pub fn helo_name(&self) -> Option<String> {
        let line = self.helo.as_ref()?;
        match Command::parse(line) {
            Command::Ehlo(n) | Command::Helo(n) => Some(n),
            _ => None,
        }
    }

    pub fn errors(&self) -> u32 {
        self.errors
    }

    /// The last MAIL was refused by the TLS policy and no MAIL, RSET or
    /// HELO/EHLO came since: a relay starting now starts outside a
    /// transaction.
    pub fn mail_refused(&self) -> bool {
        self.mail_refused
    }

    /// The session asked the TLS policy about the MAIL this dialogue
    /// wanted relayed, and an `enforce` rule refused it with `r`: the
    /// client gets `r`, the dialogue goes on (the client may still
    /// STARTTLS), and the transaction commands that follow are answered
    /// here. Returns the reply to write. A policy refusal is not a client
    /// error (`max_errors`).
    pub fn refuse_mail(&mut self, r: Reply) -> String {
        self.mail_refused = true;
        r.render(&self.hostname)
    }

    /// Decides what to do with one line from the client.
    pub fn on_line(&mut self, line: Line) -> Action {
        let line = match line {
            Line::TooLong => return self.error(reply::LINE_TOO_LONG),
            Line::Complete(l) => l,
        };
        match Command::parse(&line) {
            Command::Ehlo(name) if name.is_empty() => self.error(reply::EHLO_SYNTAX),
            Command::Helo(name) if name.is_empty() => self.error(reply::HELO_SYNTAX),
            Command::Ehlo(_) => {
                self.mail_refused = false;
                self.helo = Some(line);
                Action::Reply(ehlo::pre_tls_reply(
                    &self.hostname,
                    self.extensions.as_deref().map(Vec::as_slice),
                    true,
                ))
            }
            Command::Helo(_) => {
                self.mail_refused = false;
                self.helo = Some(line);
                Action::Reply(reply::HELO_OK.render(&self.hostname))
            }
            Command::StartTls { has_args: true } => self.error(reply::STARTTLS_SYNTAX),
            Command::StartTls { has_args: false } => Action::StartTls,
            Command::Rset => {
                self.mail_refused = false;
                self.reply(reply::OK)
            }
            Command::Noop => self.reply(reply::OK),
            Command::Help => self.reply(reply::HELP),
            Command::Quit => Action::Close(reply::BYE.render(&self.hostname)),
            Command::Auth => self.error(reply::AUTH_NEEDS_TLS),
            Command::Xclient => self.error(reply::XCLIENT_DENIED),
            Command::BadCharacters => self.error(reply::BAD_CHARACTERS),
            Command::Bdat(b)
                if self.policy == TlsPolicy::Opportunistic && !self.chunking_offered() =>
            {
                let reply = self.error(reply::BDAT_NOT_OFFERED);
                match (reply, b) {
                    (Action::Reply(reply), Some(b)) => Action::Discard {
                        reply,
                        bytes: b.size,
                    },
                    (other, _) => other,
                }
            }
            Command::Transaction(Verb::Rcpt) if self.mail_refused => self.reply(reply::NEED_MAIL),
            Command::Data if self.mail_refused => self.reply(reply::NEED_RCPT),
            Command::Bdat(Some(b)) if self.mail_refused => Action::Discard {
                reply: reply::NEED_RCPT.render(&self.hostname),
                bytes: b.size,
            },
            Command::Bdat(None) if self.mail_refused => self.error(reply::BDAT_SYNTAX),
            Command::Data | Command::Bdat(_) | Command::Transaction(_) => match self.policy {
                TlsPolicy::Required => self.error(reply::MUST_ISSUE_STARTTLS),
                TlsPolicy::Opportunistic => Action::Relay {
                    helo: self.helo.clone(),
                    line,
                },
            },
            Command::Unknown => self.error(reply::UNKNOWN_COMMAND),
        }
    }

    /// The client's EHLO was answered with CHUNKING (a plaintext BDAT may
    /// then start a relay; otherwise its chunk would be read as commands).
    fn chunking_offered(&self) -> bool {
        let ehlo = self
            .helo
            .as_ref()
            .is_some_and(|l| matches!(Command::parse(l), Command::Ehlo(_)));
        ehlo && self
            .extensions
            .as_ref()
            .is_some_and(|e| e.iter().any(|x| x.eq_ignore_ascii_case("CHUNKING")))
    }

    fn reply(&self, r: Reply) -> Action {
        Action::Reply(r.render(&self.hostname))
    }

    /// An error reply; past the limit, followed by 421 and close.
    fn error(&mut self, r: Reply) -> Action {
        self.errors += 1;
        let text = r.render(&self.hostname);
        if self.errors >= self.max_errors {
            Action::Close(text + &reply::TOO_MANY_ERRORS.render(&self.hostname))
        } else {
            Action::Reply(text)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(policy: TlsPolicy) -> PreTlsDialogue {
        PreTlsDialogue::new("mx.test", policy, 3)
    }

    fn cmd(d: &mut PreTlsDialogue, line: &str) -> Action {
        d.on_line(Line::Complete(line.as_bytes().to_vec()))
    }

    fn reply_of(a: Action) -> String {
        match a {
            Action::Reply(r) | Action::Close(r) => r,
            other => panic!("not a reply: {other:?}"),
        }
    }

    #[test]
    fn transcript_opportunistic() {
        let mut s = d(TlsPolicy::Opportunistic);
        assert_eq!(s.greeting(), "220 mx.test ESMTP starttls-proxy\r\n");
        assert!(reply_of(cmd(&mut s, "EHLO c.test")).ends_with("250 STARTTLS\r\n"));
        assert_eq!(reply_of(cmd(&mut s, "NOOP")), "250 2.0.0 Ok\r\n");
        assert_eq!(reply_of(cmd(&mut s, "RSET")), "250 2.0.0 Ok\r\n");
        assert!(reply_of(cmd(&mut s, "HELP")).starts_with("214 "));
        assert_eq!(
            cmd(&mut s, "MAIL FROM:<a@b.test>"),
            Action::Relay {
                helo: Some(b"EHLO c.test".to_vec()),
                line: b"MAIL FROM:<a@b.test>".to_vec()
            }
        );
        assert_eq!(s.helo_name().as_deref(), Some("c.test"));
    }

    #[test]
    fn required_refuses_transactions() {
        let mut s = d(TlsPolicy::Required);
        for c in [
            "MAIL FROM:<a@b>",
            "RCPT TO:<a@b>",
            "DATA",
            "AUTH PLAIN x",
            "VRFY a",
            "BDAT 1 LAST",
        ] {
            let mut s2 = d(TlsPolicy::Required);
            assert_eq!(
                reply_of(cmd(&mut s2, c)),
                "530 5.7.0 Must issue a STARTTLS command first\r\n",
                "{c}"
            );
        }
        assert_eq!(cmd(&mut s, "STARTTLS"), Action::StartTls);
    }

    #[test]
    fn auth_and_xclient_never_start_a_plaintext_relay() {
        let mut s = d(TlsPolicy::Opportunistic);
        assert_eq!(
            reply_of(cmd(&mut s, "AUTH PLAIN AGEAYg==")),
            "530 5.7.0 Must issue a STARTTLS command first\r\n"
        );
        assert_eq!(
            reply_of(cmd(&mut s, "XCLIENT ADDR=192.0.2.7 LOGIN=postmaster")),
            "550 5.7.0 Error: insufficient authorization\r\n"
        );
    }

    #[test]
    fn starttls_with_arguments_is_501() {
        let mut s = d(TlsPolicy::Required);
        assert_eq!(
            reply_of(cmd(&mut s, "STARTTLS x")),
            "501 5.5.4 Syntax: STARTTLS\r\n"
        );
    }

    #[test]
    fn errors_then_421() {
        let mut s = d(TlsPolicy::Required);
        assert!(matches!(cmd(&mut s, "FOO"), Action::Reply(r) if r.starts_with("500 5.5.2")));
        assert!(
            matches!(s.on_line(Line::TooLong), Action::Reply(r) if r == "500 5.5.2 Line too long\r\n")
        );
        match cmd(&mut s, "EHLO") {
            Action::Close(r) => {
                assert!(r.starts_with("501 5.5.4"));
                assert!(r.ends_with("421 4.7.0 mx.test Error: too many errors\r\n"));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn bdat_only_after_chunking_was_offered() {
        let mut s = d(TlsPolicy::Opportunistic);
        assert_eq!(
            cmd(&mut s, "BDAT 12 LAST"),
            Action::Discard {
                reply: "502 5.5.1 Error: BDAT without CHUNKING\r\n".into(),
                bytes: 12
            }
        );
        cmd(&mut s, "EHLO c.test");
        assert!(matches!(
            cmd(&mut s, "BDAT 3"),
            Action::Discard { bytes: 3, .. }
        ));
        let mut s = d(TlsPolicy::Opportunistic)
            .with_extensions(Some(std::sync::Arc::new(vec!["CHUNKING".to_string()])));
        assert!(
            matches!(cmd(&mut s, "BDAT 3"), Action::Discard { .. }),
            "no EHLO yet"
        );
        assert!(reply_of(cmd(&mut s, "EHLO c.test")).contains("250-CHUNKING\r\n"));
        assert!(matches!(cmd(&mut s, "BDAT 3 LAST"), Action::Relay { .. }));
    }

    #[test]
    fn after_a_refused_mail_rcpt_data_and_bdat_are_answered_here() {
        let mut s = d(TlsPolicy::Opportunistic)
            .with_extensions(Some(std::sync::Arc::new(vec!["CHUNKING".to_string()])));
        cmd(&mut s, "EHLO c.test");
        assert!(matches!(
            cmd(&mut s, "MAIL FROM:<a@b.test>"),
            Action::Relay { .. }
        ));
        assert_eq!(
            s.refuse_mail(reply::MUST_ISSUE_STARTTLS),
            "530 5.7.0 Must issue a STARTTLS command first\r\n"
        );
        assert_eq!(
            reply_of(cmd(&mut s, "RCPT TO:<x@y.test>")),
            "503 5.5.1 Error: need MAIL command\r\n"
        );
        assert_eq!(
            reply_of(cmd(&mut s, "DATA")),
            "503 5.5.1 Error: need RCPT command\r\n"
        );
        assert_eq!(
            cmd(&mut s, "BDAT 7 LAST"),
            Action::Discard {
                reply: "503 5.5.1 Error: need RCPT command\r\n".into(),
                bytes: 7
            }
        );
        assert_eq!(s.errors(), 0, "a policy refusal is not a client error");
        // VRFY is no transaction command: relayed as before.
        assert!(matches!(cmd(&mut s, "VRFY x"), Action::Relay { .. }));
        for reset in ["RSET", "EHLO c.test", "HELO c.test"] {
            s.refuse_mail(reply::MUST_ISSUE_STARTTLS);
            cmd(&mut s, reset);
            assert!(
                matches!(cmd(&mut s, "RCPT TO:<x@y.test>"), Action::Relay { .. }),
                "{reset}"
            );
        }
        assert_eq!(cmd(&mut s, "STARTTLS"), Action::StartTls);
    }

    #[test]
    fn quit_closes() {
        let mut s = d(TlsPolicy::Opportunistic);
        assert_eq!(
            cmd(&mut s, "quit"),
            Action::Close("221 2.0.0 Bye\r\n".into())
        );
    }

    #[test]
    fn helo_answers_hostname() {
        let mut s = d(TlsPolicy::Opportunistic);
        assert_eq!(reply_of(cmd(&mut s, "HELO c.test")), "250 mx.test\r\n");
    }
}
