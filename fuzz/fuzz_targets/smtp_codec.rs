//! `LineCodec` fed arbitrary bytes cut at arbitrary points.
//!
//! Input: byte 0 picks the line limit, bytes 1..5 the read sizes (see
//! `common::chunks`), the rest is the stream.
//!
//! The codec's contract (src/smtp/codec.rs), asserted against a reference
//! model that looks at the whole stream at once:
//! - a line ends at LF; CRLF or bare LF, the terminator is not returned
//!   (only one CR is stripped: `a\r\r\n` is the line `a\r`);
//! - a line whose bytes *including its terminator* fit in `limit` is
//!   `Complete`; a longer one is consumed up to its LF and reported exactly
//!   once as `TooLong`;
//! - an over-long line with no LF yet is dropped as it arrives, and the
//!   buffer stays under `limit` after every `next_line() == None`;
//! - nothing is lost or invented: lines + terminators, the lines reported
//!   `TooLong`, and `buffer()` account for every input byte, in order;
//! - hence the result does not depend on where the stream was cut;
//! - `take_buffered` returns exactly `buffer()` and forgets an over-long
//!   line in progress.

#![no_main]

mod common;

use libfuzzer_sys::fuzz_target;
use starttls_proxy::smtp::codec::{Line, LineCodec};

/// What the codec must produce for the whole stream.
struct Expected {
    lines: Vec<Line>,
    /// Bytes after the last LF: kept in the buffer, or dropped when they
    /// already reach the limit (an over-long line in progress).
    tail_kept: Vec<u8>,
}

fn reference(data: &[u8], limit: usize) -> Expected {
    let mut lines = Vec::new();
    let mut start = 0;
    while let Some(lf) = data[start..].iter().position(|&b| b == b'\n') {
        let with_lf = &data[start..start + lf + 1];
        if with_lf.len() > limit {
            lines.push(Line::TooLong);
        } else {
            let mut l = &with_lf[..with_lf.len() - 1];
            if let Some(s) = l.strip_suffix(b"\r") {
                l = s;
            }
            lines.push(Line::Complete(l.to_vec()));
        }
        start += lf + 1;
    }
    let tail = &data[start..];
    let tail_kept = if tail.len() >= limit {
        Vec::new()
    } else {
        tail.to_vec()
    };
    Expected { lines, tail_kept }
}

fn drain(codec: &mut LineCodec, limit: usize, got: &mut Vec<Line>) {
    while let Some(line) = codec.next_line() {
        if let Line::Complete(l) = &line {
            assert!(!l.contains(&b'\n'), "a returned line holds an LF: {l:?}");
            // The limit counts the terminator: at least one byte (LF).
            assert!(
                l.len() < limit,
                "Complete line of {} bytes with limit {limit}",
                l.len()
            );
        }
        got.push(line);
    }
    assert!(
        codec.buffered_len() < limit,
        "buffer holds {} bytes after next_line() == None, limit {limit}",
        codec.buffered_len()
    );
    assert_eq!(codec.buffered_len(), codec.buffer().len());
}

fuzz_target!(|input: &[u8]| {
    let (h, data) = common::header::<5>(input);
    // Small limits reach TooLong with small inputs; 512 is the smallest the
    // config accepts and 4096 its default.
    let limit = match h[0] {
        0..=199 => 1 + usize::from(h[0] % 40),
        200..=227 => 512,
        _ => 4096,
    };

    let mut codec = LineCodec::new(limit);
    let mut got = Vec::new();
    for chunk in common::chunks(&h[1..], data) {
        codec.push(chunk);
        drain(&mut codec, limit, &mut got);
    }

    let want = reference(data, limit);
    assert_eq!(
        got, want.lines,
        "lines differ from the reference (limit {limit})"
    );
    assert_eq!(
        codec.buffer(),
        &want.tail_kept[..],
        "buffer is not the unterminated tail (limit {limit})"
    );

    // Accounting, stated directly: each Complete line is the stream's next
    // bytes followed by LF or CRLF; each TooLong covers more than `limit`
    // bytes up to an LF; what is left is the buffer (or dropped, as above).
    let mut pos = 0;
    for line in &got {
        let lf = pos
            + data[pos..]
                .iter()
                .position(|&b| b == b'\n')
                .expect("a line without LF");
        match line {
            Line::Complete(l) => {
                let term = lf + 1 - pos - l.len();
                assert!(term == 1 || term == 2, "terminator of {term} bytes");
                assert_eq!(&data[pos..pos + l.len()], &l[..]);
                assert_eq!(&data[pos + l.len()..=lf], &b"\r\n"[2 - term..]);
            }
            Line::TooLong => assert!(lf + 1 - pos > limit),
        }
        pos = lf + 1;
    }
    let rest = &data[pos..];
    assert!(!rest.contains(&b'\n'));
    assert!(codec.buffer() == rest || (codec.buffer().is_empty() && rest.len() >= limit));

    // take_buffered hands over the buffer and resets the codec: a short
    // line that follows is a line again, even after an over-long one.
    let taken = codec.take_buffered();
    assert_eq!(taken, want.tail_kept);
    assert_eq!(codec.buffered_len(), 0);
    assert_eq!(codec.next_line(), None);
    if limit >= 6 {
        codec.push(b"NOOP\r\n");
        assert_eq!(codec.next_line(), Some(Line::Complete(b"NOOP".to_vec())));
        assert_eq!(codec.next_line(), None);
    }

    // `consume` drops at most what is buffered.
    codec.push(data);
    let before = codec.buffered_len();
    let n = usize::from(h[0]);
    codec.consume(n);
    assert_eq!(codec.buffered_len(), before - n.min(before));
    assert_eq!(codec.buffer(), &data[n.min(data.len())..]);
});
