//! `DataScanner` (the end of DATA content) over arbitrary chunks.
//!
//! Input: bytes 0..4 and 4..8 choose two ways of cutting the stream (see
//! `common::chunks`), the rest is what the client sends after `354`.
//!
//! What src/smtp/data.rs promises, and what is asserted:
//! - normalisation: a bare LF becomes CRLF, nothing else changes (a bare
//!   CR stays, dot-stuffing stays): the output is exactly the consumed
//!   input with a CR put before each LF that had none — so the output
//!   never holds an LF without a CR before it (a bare CR may remain);
//! - the end is the first `CRLF . CRLF` of the *output* (with a CRLF
//!   assumed before the content, so `.CRLF` at the very start ends it too),
//!   which is where the backend, reading the same output, ends the
//!   message: `ended` iff the output ends so, and no earlier prefix does;
//!   without `ended`, the whole input is consumed and the output holds no
//!   terminator at all (no message can be smuggled past the proxy);
//! - `consumed` never exceeds the chunk, and equals it unless `ended`;
//! - none of this depends on how the input was cut into reads.

#![no_main]

mod common;

use libfuzzer_sys::fuzz_target;
use starttls_proxy::smtp::data::DataScanner;

/// Output, total input consumed, and whether the end was found.
fn scan(chunks: &[&[u8]]) -> (Vec<u8>, usize, bool) {
    let mut s = DataScanner::default();
    let mut out = Vec::new();
    let mut total = 0;
    for chunk in chunks {
        let before = out.len();
        let r = s.scan(chunk, &mut out);
        assert!(r.consumed <= chunk.len());
        // Each consumed byte is emitted, plus at most one CR per LF.
        let lfs = chunk[..r.consumed].iter().filter(|&&b| b == b'\n').count();
        let emitted = out.len() - before;
        assert!(emitted >= r.consumed && emitted <= r.consumed + lfs);
        total += r.consumed;
        if r.ended {
            return (out, total, true);
        }
        assert_eq!(r.consumed, chunk.len(), "stopped early without an end");
    }
    (out, total, false)
}

/// Whether `out` (content so far) ends with the DATA terminator.
fn ends_message(out: &[u8]) -> bool {
    out == b".\r\n" || out.ends_with(b"\r\n.\r\n")
}

fuzz_target!(|input: &[u8]| {
    let (h, data) = common::header::<8>(input);
    let (out, consumed, ended) = scan(&[data]);

    // Normalisation, and nothing else.
    assert_eq!(out, common::normalise_bare_lf(&data[..consumed]));
    for (i, &b) in out.iter().enumerate() {
        assert!(
            b != b'\n' || (i > 0 && out[i - 1] == b'\r'),
            "bare LF at {i}"
        );
    }

    // The end is where the backend finds it, and only there.
    assert_eq!(
        ended,
        ends_message(&out),
        "ended={ended} but output {out:?}"
    );
    for n in 0..out.len() {
        assert!(!ends_message(&out[..n]), "terminator at {n} before the end");
    }
    if !ended {
        assert_eq!(consumed, data.len());
    }

    for sizes in [&h[..4], &h[4..]] {
        let cut = scan(&common::chunks(sizes, data));
        assert_eq!(
            cut,
            (out.clone(), consumed, ended),
            "result depends on the cuts {sizes:?}"
        );
    }
});
