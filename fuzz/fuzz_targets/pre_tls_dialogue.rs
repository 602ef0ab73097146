//! The pre-TLS dialogue driven by arbitrary client lines, as the session
//! drives it: bytes through a `LineCodec`, each line to `on_line`, until an
//! action ends the dialogue (Close, StartTls, Relay).
//!
//! Input: byte 0 picks the policy (bit 0), max_errors (bits 1..4, 1..=8)
//! and the hostname (bits 4..6); byte 1 the line limit; the rest is what
//! the client sends.
//!
//! Invariants (src/smtp/dialogue.rs, DESIGN.md §2):
//! - the greeting and every Reply/Close text is one or more well-formed SMTP
//!   replies: CRLF-terminated lines `NNN-text`/`NNN text` of printable
//!   ASCII, codes 200..=599, one code per reply, the last line with ' ';
//!   Reply is exactly one reply; nothing the client sent is echoed;
//! - AUTH is never advertised, and AUTH/XCLIENT never start a relay;
//! - tls=required: a transaction command (MAIL, RCPT, DATA, BDAT, VRFY,
//!   EXPN, ETRN, BURL) gets 530, never 2xx, never a relay;
//!   tls=opportunistic: it gets `Relay` with the line as received and the
//!   last accepted HELO/EHLO line;
//! - STARTTLS (no arguments) is the only way to `StartTls`, QUIT the only
//!   `Close` besides too-many-errors, and 221 is only ever QUIT's answer;
//! - every 4xx/5xx answer counts one error (`errors()`), 2xx ones do not;
//!   the answer that brings the count to max_errors is a Close with that
//!   error reply followed by `421 4.7.0 <host> Error: too many errors`, and
//!   no Close of that kind comes earlier.

#![no_main]

mod common;

use libfuzzer_sys::fuzz_target;
use starttls_proxy::config::TlsPolicy;
use starttls_proxy::smtp::codec::{Line, LineCodec};
use starttls_proxy::smtp::command::Command;
use starttls_proxy::smtp::dialogue::{Action, PreTlsDialogue};
use starttls_proxy::smtp::ehlo;
use starttls_proxy::smtp::reply::{self, Reply};

const HOSTS: [&str; 4] = ["mx.example.test", "a.b", "mail-1.example.org", "x.y.z"];

/// Every reply the pre-TLS dialogue may give (besides the EHLO reply).
const STOCK: &[Reply] = &[
    reply::OK,
    reply::HELO_OK,
    reply::HELP,
    reply::BYE,
    reply::EHLO_SYNTAX,
    reply::HELO_SYNTAX,
    reply::STARTTLS_SYNTAX,
    reply::MUST_ISSUE_STARTTLS,
    reply::UNKNOWN_COMMAND,
    reply::LINE_TOO_LONG,
    reply::BAD_CHARACTERS,
    reply::XCLIENT_DENIED,
    reply::AUTH_NEEDS_TLS,
    reply::BDAT_NOT_OFFERED,
];

/// Parses `text` as consecutive SMTP replies; returns each reply's code.
fn replies(text: &str) -> Vec<u16> {
    assert!(
        text.ends_with("\r\n"),
        "reply text does not end with CRLF: {text:?}"
    );
    let mut codes = Vec::new();
    let mut current: Option<u16> = None;
    for line in text[..text.len() - 2].split("\r\n") {
        assert!(
            line.bytes().all(|b| (0x20..0x7f).contains(&b)),
            "not printable ASCII (bare CR/LF, control, 8-bit): {line:?}"
        );
        let b = line.as_bytes();
        assert!(
            b.len() >= 3 && b[..3].iter().all(u8::is_ascii_digit),
            "no code: {line:?}"
        );
        let code: u16 = line[..3].parse().unwrap();
        assert!((200..=599).contains(&code), "code {code}: {line:?}");
        if let Some(c) = current {
            assert_eq!(c, code, "one reply, two codes: {text:?}");
        }
        // "AUTH" is never advertised (an EHLO keyword is the text after the code).
        let keyword = line
            .get(4..)
            .unwrap_or("")
            .split([' ', '='])
            .next()
            .unwrap_or("");
        assert!(
            !keyword.eq_ignore_ascii_case("AUTH"),
            "AUTH advertised: {text:?}"
        );
        match b.get(3) {
            Some(b'-') => current = Some(code),
            None | Some(b' ') => {
                codes.push(code);
                current = None;
            }
            Some(_) => panic!("code not followed by ' ' or '-': {line:?}"),
        }
    }
    assert_eq!(
        current, None,
        "multi-line reply without a last line: {text:?}"
    );
    codes
}

fuzz_target!(|input: &[u8]| {
    let (h, data) = common::header::<2>(input);
    let policy = if h[0] & 1 == 0 {
        TlsPolicy::Opportunistic
    } else {
        TlsPolicy::Required
    };
    let max_errors = 1 + u32::from((h[0] >> 1) & 7);
    let host = HOSTS[usize::from(h[0] >> 4) & 3];
    let limit = match h[1] {
        0..=127 => 16 + usize::from(h[1]),
        128..=191 => 512,
        _ => 4096,
    };

    let mut d = PreTlsDialogue::new(host, policy, max_errors);
    assert_eq!(replies(&d.greeting()), [220]);
    assert_eq!(d.errors(), 0);
    assert_eq!(d.helo_name(), None);

    let stock: Vec<String> = STOCK
        .iter()
        .map(|r| r.render(host))
        .chain([ehlo::pre_tls_reply(host, None, true)])
        .collect();
    let too_many = format!("421 4.7.0 {host} Error: too many errors\r\n");
    let mut codec = LineCodec::new(limit);
    codec.push(data);
    let mut errors = 0u32;
    let mut helo: Option<Vec<u8>> = None;

    while let Some(line) = codec.next_line() {
        let cmd = match &line {
            Line::Complete(l) => Some(Command::parse(l)),
            Line::TooLong => None,
        };
        let raw = match &line {
            Line::Complete(l) => Some(l.clone()),
            Line::TooLong => None,
        };
        let is_transaction = matches!(
            cmd,
            Some(Command::Data | Command::Bdat(_) | Command::Transaction(_))
        );
        let action = d.on_line(line);

        let (text, close) = match &action {
            Action::Reply(t) => (t, false),
            Action::Discard { reply, bytes } => {
                // Without CHUNKING offered (this dialogue has no probed
                // extensions), the chunk is dropped unread, never commands.
                match &cmd {
                    Some(Command::Bdat(Some(b))) => assert_eq!(b.size, *bytes),
                    other => panic!("discard after {other:?}"),
                }
                assert_eq!(policy, TlsPolicy::Opportunistic);
                codec.skip(*bytes);
                (reply, false)
            }
            Action::Close(t) => (t, true),
            Action::StartTls => {
                assert_eq!(cmd, Some(Command::StartTls { has_args: false }));
                assert_eq!(d.errors(), errors);
                return;
            }
            Action::Relay { helo: h, line: l } => {
                assert_eq!(policy, TlsPolicy::Opportunistic, "relay on tls=required");
                assert!(is_transaction, "relay started by {cmd:?}");
                assert_eq!(Some(l), raw.as_ref(), "relayed line is not the client's");
                assert_eq!(h, &helo, "replayed HELO/EHLO is not the last accepted one");
                assert_eq!(d.errors(), errors);
                return;
            }
        };

        let codes = replies(text);
        let first = codes[0];
        if first >= 400 {
            errors += 1;
        }
        assert_eq!(d.errors(), errors, "error count after {cmd:?} -> {text:?}");
        assert!(errors <= max_errors);

        if errors == max_errors && first >= 400 {
            assert!(
                close,
                "error {errors} of {max_errors} did not close: {text:?}"
            );
            assert_eq!(codes.len(), 2, "{text:?}");
            assert!(text.ends_with(&too_many), "{text:?}");
        } else {
            assert_eq!(codes.len(), 1, "{text:?}");
            assert_eq!(
                close,
                cmd == Some(Command::Quit),
                "Close without QUIT: {text:?}"
            );
        }
        assert_eq!(first == 221, cmd == Some(Command::Quit), "221 vs {cmd:?}");

        match &cmd {
            Some(Command::Auth) => assert_eq!(first, 530),
            Some(Command::Xclient) => assert_eq!(first, 550),
            Some(Command::Bdat(_)) if policy == TlsPolicy::Opportunistic => {
                assert_eq!(first, 502, "BDAT without CHUNKING offered answered {text:?}");
            }
            Some(_) if is_transaction => {
                assert_eq!(
                    policy,
                    TlsPolicy::Required,
                    "{cmd:?} answered without relay"
                );
                assert_eq!(first, 530, "transaction before TLS answered {text:?}");
            }
            Some(Command::Ehlo(n)) | Some(Command::Helo(n)) if !n.is_empty() => {
                assert_eq!(first, 250);
                helo = raw.clone();
                assert_eq!(d.helo_name().as_ref(), Some(n));
                if matches!(cmd, Some(Command::Ehlo(_))) {
                    assert!(text.ends_with("250 STARTTLS\r\n"), "{text:?}");
                }
            }
            Some(Command::BadCharacters | Command::Unknown) | None => {
                assert!(first >= 500, "{cmd:?} answered {text:?}");
            }
            _ => {}
        }
        // Nothing from the client comes back (its EHLO name, its verb…):
        // every reply is one the proxy has in stock.
        let own = text
            .strip_suffix(too_many.as_str())
            .filter(|t| !t.is_empty())
            .unwrap_or(text);
        assert!(
            stock.iter().any(|s| s == own),
            "not a stock reply: {text:?}"
        );
        if close {
            return;
        }
    }
});
