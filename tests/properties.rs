//! Property tests for the byte-level SMTP pieces the relay trusts: how a
//! stream is cut into reads must never change what comes out.

use proptest::prelude::*;
use starttls_proxy::config::BareNewline;
use starttls_proxy::smtp::codec::{Line, LineCodec};
use starttls_proxy::smtp::data::{DataScanner, Violation};

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
    // Any bytes but CR, LF and NUL (lines of dots among NULs are false
    // ends: see `only_the_raw_terminator_ends_data`), often a dot first.
    prop::collection::vec(
        prop_oneof![
            Just(b'.'),
            any::<u8>().prop_filter("no CR/LF/NUL", |b| *b != b'\r' && *b != b'\n' && *b != 0)
        ],
        0..40,
    )
}

/// Where a careful backend ends raw client bytes: the first
/// `<CR><LF>.<CR><LF>` (or `.<CR><LF>` at the very start), end included.
fn raw_end(input: &[u8]) -> Option<usize> {
    if input.starts_with(b".\r\n") {
        return Some(3);
    }
    input
        .windows(5)
        .position(|w| w == b"\r\n.\r\n")
        .map(|i| i + 5)
}

/// Bytes an attacker mixes around dots: CR, LF, NUL, the dot, and text.
fn hostile() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(
        prop_oneof![
            Just(b'\r'),
            Just(b'\n'),
            Just(0u8),
            Just(b'.'),
            Just(b'x'),
            Just(b'M'),
        ],
        // Past the 64 bytes the scanner holds at a line start.
        0..200,
    )
}

/// Scans `input` cut at `points`: output, consumed, ended, refused.
fn scan_cut(
    mode: BareNewline,
    input: &[u8],
    points: &[usize],
) -> (Vec<u8>, usize, bool, Option<Violation>) {
    let mut scanner = DataScanner::new(mode);
    let mut out = Vec::new();
    let mut consumed = 0;
    for w in points.windows(2) {
        let piece = &input[w[0].max(consumed)..w[1].max(consumed)];
        if piece.is_empty() {
            continue;
        }
        let r = scanner.scan(piece, &mut out);
        consumed += r.consumed;
        if r.ended || r.refused.is_some() {
            return (out, consumed, r.ended, r.refused);
        }
    }
    (out, consumed, false, None)
}

fn cut_points(len: usize, cuts: &[prop::sample::Index]) -> Vec<usize> {
    let mut points: Vec<usize> = cuts.iter().map(|i| i.index(len + 1)).collect();
    points.push(0);
    points.push(len);
    points.sort();
    points
}

proptest! {
    /// Only the raw `<CR><LF>.<CR><LF>` ends the message, and the backend
    /// (reading CRLF lines, dropping NULs or not, ending lines at a bare CR
    /// or not) finds no end anywhere before it.
    #[test]
    fn only_the_raw_terminator_ends_data(
        input in hostile(),
        cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..6),
    ) {
        let points = cut_points(input.len(), &cuts);
        let (out, consumed, ended, refused) = scan_cut(BareNewline::Normal, &input, &points);
        prop_assert_eq!(refused, None);
        match raw_end(&input) {
            Some(end) => {
                prop_assert!(ended);
                prop_assert_eq!(consumed, end);
            }
            None => {
                prop_assert!(!ended);
                prop_assert_eq!(consumed, input.len());
            }
        }
        // No LF without CR goes to the backend.
        for (i, &b) in out.iter().enumerate() {
            prop_assert!(b != b'\n' || (i > 0 && out[i - 1] == b'\r'), "bare LF at {}", i);
        }
        // Every line but a final terminator is, with NUL and CR removed,
        // something other than a lone dot.
        // Complete lines only: one still open ends nothing yet.
        let body = if ended { &out[..out.len() - 3] } else { &out[..] };
        let complete = body.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
        for line in body[..complete].split(|&b| b == b'\n') {
            let shown: Vec<u8> = line.iter().copied().filter(|&b| b != 0 && b != b'\r').collect();
            prop_assert_ne!(shown, b".".to_vec(), "false end in {:?}", out);
        }
        if ended {
            prop_assert!(out == b".\r\n" || out.ends_with(b"\r\n.\r\n"));
        }
        // The same whatever the reads.
        let whole = scan_cut(BareNewline::Normal, &input, &[0, input.len()]);
        prop_assert_eq!(whole, (out, consumed, ended, refused));
    }

    /// Strict: a bare LF or a false end refuses; clean content never does.
    #[test]
    fn strict_refuses_exactly_bare_lf(
        input in hostile(),
        cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..6),
    ) {
        let points = cut_points(input.len(), &cuts);
        let (out, consumed, ended, refused) = scan_cut(BareNewline::Strict, &input, &points);
        let upto = raw_end(&input).unwrap_or(input.len());
        let bare_lf = input[..upto]
            .iter()
            .enumerate()
            .any(|(i, &b)| b == b'\n' && (i == 0 || input[i - 1] != b'\r'));
        if bare_lf {
            prop_assert!(refused.is_some());
        }
        if refused.is_some() {
            prop_assert!(!ended);
            prop_assert!(!out.ends_with(b"\r\n.\r\n") && out != b".\r\n");
        } else {
            prop_assert_eq!(ended, raw_end(&input).is_some());
            prop_assert_eq!(consumed, upto);
        }
        let whole = scan_cut(BareNewline::Strict, &input, &[0, input.len()]);
        prop_assert_eq!(whole.3, refused);
    }

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
