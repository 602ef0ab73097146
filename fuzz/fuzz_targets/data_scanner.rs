//! `DataScanner` (the end of DATA content) over arbitrary chunks, in both
//! `bare_newline` modes.
//!
//! Input: byte 0 chooses the mode (even: normal, odd: strict), bytes 1..5
//! and 5..9 two ways of cutting the stream (see `common::chunks`), the rest
//! is what the client sends after `354`.
//!
//! What src/smtp/data.rs promises (DESIGN.md §2, "Message boundaries"), and
//! what is asserted:
//! - only the raw `<CR><LF>.<CR><LF>` (or `.<CR><LF>` at the very start)
//!   ends the content: `ended` exactly there, `consumed` up to its end;
//! - the output never holds an LF without a CR before it;
//! - no output line before the end is, with NUL and CR removed, a lone dot
//!   (what a backend that drops NULs, or one that reads the output as CRLF
//!   lines, would take for the end);
//! - strict: a bare LF before the end refuses; a refused output holds no
//!   terminator;
//! - none of this depends on how the input was cut into reads.

#![no_main]

mod common;

use libfuzzer_sys::fuzz_target;
use starttls_proxy::config::BareNewline;
use starttls_proxy::smtp::data::{DataScanner, Violation};

/// Output, input consumed, ended, refused.
fn scan(mode: BareNewline, chunks: &[&[u8]]) -> (Vec<u8>, usize, bool, Option<Violation>) {
    let mut s = DataScanner::new(mode);
    let mut out = Vec::new();
    let mut total = 0;
    for chunk in chunks {
        let r = s.scan(chunk, &mut out);
        assert!(r.consumed <= chunk.len());
        total += r.consumed;
        if r.ended || r.refused.is_some() {
            return (out, total, r.ended, r.refused);
        }
        assert_eq!(r.consumed, chunk.len(), "stopped early without an end");
    }
    (out, total, false, None)
}

/// Where the raw terminator ends, if anywhere.
fn raw_end(input: &[u8]) -> Option<usize> {
    if input.starts_with(b".\r\n") {
        return Some(3);
    }
    input.windows(5).position(|w| w == b"\r\n.\r\n").map(|i| i + 5)
}

fuzz_target!(|input: &[u8]| {
    let (h, data) = common::header::<9>(input);
    let mode = if h[0] % 2 == 0 {
        BareNewline::Normal
    } else {
        BareNewline::Strict
    };
    let (out, consumed, ended, refused) = scan(mode, &[data]);
    let end = raw_end(data);

    for (i, &b) in out.iter().enumerate() {
        assert!(b != b'\n' || (i > 0 && out[i - 1] == b'\r'), "bare LF at {i}");
    }
    match refused {
        None => {
            assert_eq!(ended, end.is_some(), "ended={ended} but raw end {end:?}");
            assert_eq!(consumed, end.unwrap_or(data.len()));
        }
        Some(_) => {
            assert_eq!(mode, BareNewline::Strict);
            assert!(!ended);
            assert!(out != b".\r\n" && !out.ends_with(b"\r\n.\r\n"));
        }
    }
    if mode == BareNewline::Strict {
        let upto = end.unwrap_or(data.len());
        let bare_lf = data[..upto]
            .iter()
            .enumerate()
            .any(|(i, &b)| b == b'\n' && (i == 0 || data[i - 1] != b'\r'));
        if bare_lf {
            assert!(refused.is_some(), "strict let a bare LF through");
        }
    }
    // Complete lines only: a line still open (no LF yet) ends nothing, and
    // the scanner may yet add to it.
    let body = if ended { &out[..out.len() - 3] } else { &out[..] };
    let complete = body.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    for line in body[..complete].split(|&b| b == b'\n') {
        let shown: Vec<u8> = line.iter().copied().filter(|&b| b != 0 && b != b'\r').collect();
        assert_ne!(shown, b".", "a false end reaches the backend: {out:?}");
    }

    for sizes in [&h[1..5], &h[5..]] {
        let cut = scan(mode, &common::chunks(sizes, data));
        assert_eq!(
            cut,
            (out.clone(), consumed, ended, refused),
            "result depends on the cuts {sizes:?}"
        );
    }
});
