//! `ReplyParser` (backend replies) fed arbitrary bytes in arbitrary chunks.
//!
//! Input: bytes 0..4 and 4..8 choose two ways of cutting the stream (see
//! `common::chunks`), the rest is the stream. The parse of each cut is
//! compared with the parse of the whole stream in one push.
//!
//! Invariants (src/smtp/reply.rs), up to and including the first error
//! (after an error the relay drops the backend, and `TooLong` repeats
//! forever by design, so the harness stops there):
//! - never panics;
//! - the sequence of replies/errors does not depend on the cuts;
//! - an `Ok` reply has a code in 200..=599, 1..=MAX_REPLY_LINES lines, each
//!   `NNN-text\r\n` except the last, `NNN text\r\n` or `NNN\r\n`, with one
//!   LF per line, and its code is the last line's;
//! - all lines of one reply carry the same code (RFC 5321 §4.2.1);
//! - bytes are neither lost nor invented: the replies, concatenated, are
//!   the start of the stream with each bare LF made CRLF.
//!
//! Set FUZZ_REPLY_ALLOW_MIXED_CODES=1 to skip the same-code check (to fuzz
//! the rest while a known finding about it stands).

#![no_main]

mod common;

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use starttls_proxy::smtp::reply::{
    BackendReply, MAX_REPLY_LINE, MAX_REPLY_LINES, ReplyError, ReplyParser,
};

fn check_mixed_codes() -> bool {
    static CHECK: OnceLock<bool> = OnceLock::new();
    *CHECK.get_or_init(|| std::env::var_os("FUZZ_REPLY_ALLOW_MIXED_CODES").is_none_or(|v| v != "1"))
}

fn parse(chunks: &[&[u8]]) -> Vec<Result<BackendReply, ReplyError>> {
    let mut p = ReplyParser::default();
    let mut out = Vec::new();
    for chunk in chunks {
        p.push(chunk);
        while let Some(r) = p.next_reply() {
            let err = r.is_err();
            out.push(r);
            if err {
                return out;
            }
        }
    }
    out
}

fn line_code(line: &[u8]) -> u16 {
    assert!(line.len() >= 5, "reply line too short: {line:?}");
    let d = &line[..3];
    assert!(
        d.iter().all(u8::is_ascii_digit),
        "no 3-digit code: {line:?}"
    );
    assert!(
        (b'2'..=b'5').contains(&d[0]),
        "code outside 2xx..5xx: {line:?}"
    );
    d.iter().fold(0, |a, c| a * 10 + u16::from(c - b'0'))
}

fn check_reply(r: &BackendReply) {
    assert!((200..=599).contains(&r.code), "code {}", r.code);
    assert!(!r.lines.is_empty() && r.lines.len() <= MAX_REPLY_LINES);
    assert_eq!(r.is_positive(), (200..400).contains(&r.code));
    let last = r.lines.len() - 1;
    for (i, line) in r.lines.iter().enumerate() {
        assert!(line.ends_with(b"\r\n"), "line without CRLF: {line:?}");
        assert_eq!(line.iter().filter(|&&b| b == b'\n').count(), 1, "{line:?}");
        assert!(line.len() <= MAX_REPLY_LINE + 1);
        let code = line_code(line);
        if i < last {
            assert_eq!(line[3], b'-', "continuation line without '-': {line:?}");
        } else {
            assert!(
                line.len() == 5 || line[3] == b' ',
                "bad last line: {line:?}"
            );
            assert_eq!(code, r.code, "reply code is not the last line's");
        }
        if check_mixed_codes() {
            assert_eq!(
                code,
                r.code,
                "one reply, different codes: {:?}",
                String::from_utf8_lossy(&r.to_bytes())
            );
        }
    }
    assert_eq!(r.to_bytes(), r.lines.concat());
}

fuzz_target!(|input: &[u8]| {
    let (h, data) = common::header::<8>(input);
    let whole = parse(&[data]);

    let mut emitted = Vec::new();
    for r in &whole {
        if let Ok(r) = r {
            check_reply(r);
            emitted.extend_from_slice(&r.to_bytes());
        }
    }
    let normalised = common::normalise_bare_lf(data);
    assert!(
        normalised.starts_with(&emitted),
        "replies are not the start of the (normalised) stream"
    );

    for sizes in [&h[..4], &h[4..]] {
        let cut = parse(&common::chunks(sizes, data));
        assert_eq!(cut, whole, "result depends on the cuts {sizes:?}");
    }
});
