//! Property tests for the byte-level SMTP pieces the relay trusts: how a
//! stream is cut into reads must never change what comes out.

use proptest::prelude::*;
use starttls_proxy::smtp::codec::{Line, LineCodec};
use starttls_proxy::smtp::data::DataScanner;

/// Dot-stuffs `lines` into CRLF DATA content followed by the terminator.
fn stuffed(lines: &[Vec<u8>]) -> Vec<u8> {
    let mut out = Vec::new();
    for l in lines {
        if l.first() == Some(&b'.') {
            out.push(b'.');
        }
        out.extend_from_slice(l);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b".\r\n");
    out
}

fn line() -> impl Strategy<Value = Vec<u8>> {
    // Any bytes but CR and LF, often starting with a dot.
    prop::collection::vec(
        prop_oneof![
            Just(b'.'),
            any::<u8>().prop_filter("no CR/LF", |b| *b != b'\r' && *b != b'\n')
        ],
        0..40,
    )
}

proptest! {
    #[test]
    fn data_end_is_found_exactly_whatever_the_reads(
        lines in prop::collection::vec(line(), 0..30),
        cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..8),
    ) {
        let content = stuffed(&lines);
        let mut input = content.clone();
        input.extend_from_slice(b"QUIT\r\n");
        let mut points: Vec<usize> = cuts.iter().map(|i| i.index(input.len() + 1)).collect();
        points.push(0);
        points.push(input.len());
        points.sort();
        let mut scanner = DataScanner::default();
        let mut out = Vec::new();
        let mut consumed = 0;
        let mut ended = false;
        for w in points.windows(2) {
            let piece = &input[w[0].max(consumed)..w[1].max(consumed)];
            if ended || piece.is_empty() { continue; }
            let r = scanner.scan(piece, &mut out);
            consumed += r.consumed;
            ended = r.ended;
        }
        prop_assert!(ended);
        prop_assert_eq!(consumed, content.len());
        prop_assert_eq!(out, content);
    }

    #[test]
    fn lines_do_not_depend_on_the_reads(
        lines in prop::collection::vec(prop::collection::vec(32u8..127, 0..60), 0..20),
        cut in any::<prop::sample::Index>(),
    ) {
        let mut input = Vec::new();
        for l in &lines {
            input.extend_from_slice(l);
            input.extend_from_slice(b"\r\n");
        }
        let at = cut.index(input.len() + 1);
        let mut codec = LineCodec::new(128);
        let mut got = Vec::new();
        codec.push(&input[..at]);
        while let Some(l) = codec.next_line() { got.push(l); }
        codec.push(&input[at..]);
        while let Some(l) = codec.next_line() { got.push(l); }
        let want: Vec<Line> = lines.iter().map(|l| Line::Complete(l.clone())).collect();
        prop_assert_eq!(got, want);
    }
}
