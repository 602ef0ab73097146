//! The end of DATA content, found where the backend will find it and
//! nowhere else (DESIGN.md §2, "Message boundaries").
//!
//! The proxy and the backend must agree on where a message ends, or a
//! sender could smuggle a second message past the proxy (SMTP smuggling,
//! CVE-2023-51764 class). The only end is the raw `<CR><LF>.<CR><LF>` (or
//! `.<CR><LF>` right after the 354): the backend is sent a terminator there
//! and nowhere else.
//!
//! Content is relayed line by line as it streams through:
//! - `normal` (as Postfix >= 3.9): a bare LF ends a content line and goes
//!   on as CRLF. A line that could pass for the end but is not bounded by
//!   CRLF on both sides (`<LF>.<LF>`, `<LF>.<CR><LF>`, `<CR><LF>.<LF>`),
//!   or that hides its dot among NUL and CR bytes (`<NUL>.`, for backends
//!   that drop NULs), is content: it is dot-stuffed, so no backend can end
//!   the message there, and counted as a smuggling attempt.
//! - `strict`: any bare LF, and any such line, refuses the message.
//!
//! Bare CR is content. Client dot-stuffing is left alone: it is the
//! backend's to undo.

use crate::config::BareNewline;

/// Bytes of a line start that are held back while the line could still be
/// a lone dot (`[NUL CR]* . [NUL CR]*`). Past this the bytes go on and the
/// rest of the line is watched byte by byte (see [`Garbage`]).
const HOLD: usize = 64;

/// A line that began with more than [`HOLD`] NUL/CR/dot bytes: still a
/// possible lone dot while it holds nothing else.
#[derive(Debug, Clone, Copy)]
struct Garbage {
    dots: u8,
}

/// Scans DATA content chunk by chunk. No I/O, no buffering of the message
/// beyond [`HOLD`] bytes of one line start.
#[derive(Debug)]
pub struct DataScanner {
    strict: bool,
    /// At a line start, deciding: `held` holds what was seen of it.
    line_start: bool,
    held: [u8; HOLD],
    held_len: usize,
    /// The previous line ended with CRLF (true at the start of content).
    after_crlf: bool,
    /// Mid-line: the last byte consumed was CR.
    prev_cr: bool,
    /// Mid-line in a long NUL/CR run (rare; handled byte by byte).
    garbage: Option<Garbage>,
    /// Lines that looked like an end of data but were not one.
    suspicious: u32,
    /// Copy runs of ordinary lines whole ([`clean_run`]); off only in the
    /// tests that hold it against the line-by-line path.
    fast: bool,
}

impl Default for DataScanner {
    fn default() -> Self {
        Self::new(BareNewline::Normal)
    }
}

/// Why [`BareNewline::Strict`] refused the content.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Violation {
    /// A line ended in LF without CR.
    BareLf,
    /// A lone dot not bounded by CRLF, or hidden among NUL/CR bytes.
    FalseEnd,
}

/// The result of one [`DataScanner::scan`].
#[derive(Debug, PartialEq, Eq)]
pub struct Scanned {
    /// Input bytes used (up to and including the terminator, if found).
    pub consumed: usize,
    /// The terminating `.CRLF` was found at the end of `consumed`.
    pub ended: bool,
    /// Strict mode refused the content: nothing more may go to the backend,
    /// and never a terminator.
    pub refused: Option<Violation>,
}

impl Scanned {
    fn more(consumed: usize) -> Self {
        Self {
            consumed,
            ended: false,
            refused: None,
        }
    }

    fn refused(why: Violation) -> Self {
        Self {
            consumed: 0,
            ended: false,
            refused: Some(why),
        }
    }
}

impl DataScanner {
    pub fn new(mode: BareNewline) -> Self {
        Self {
            strict: mode == BareNewline::Strict,
            line_start: true,
            held: [0; HOLD],
            held_len: 0,
            after_crlf: true,
            prev_cr: false,
            garbage: None,
            suspicious: 0,
            fast: true,
        }
    }

    /// Lines so far that looked like an end of data but were not one
    /// (smuggling attempts; in strict mode the first one refuses).
    pub fn suspicious(&self) -> u32 {
        self.suspicious
    }

    /// Scans `input`, appending what the backend must get to `out`.
    pub fn scan(&mut self, input: &[u8], out: &mut Vec<u8>) -> Scanned {
        out.reserve(input.len() + 16);
        let mut i = 0;
        while i < input.len() {
            if self.line_start {
                match self.line_start_byte(input[i], out) {
                    Ok(true) => i += 1,
                    // Not part of a lone-dot shape: the line goes on as is.
                    Ok(false) => self.line_start = false,
                    Err(end) => {
                        return Scanned {
                            consumed: i + 1,
                            ..end
                        };
                    }
                }
                continue;
            }
            if let Some(g) = self.garbage {
                match self.garbage_byte(g, input[i], out) {
                    Ok(()) => i += 1,
                    Err(refused) => {
                        return Scanned {
                            consumed: i + 1,
                            ..refused
                        };
                    }
                }
                continue;
            }
            // Where the next LF is, when already known.
            let mut at_lf = None;
            if self.fast {
                // Mid-line: whole ordinary lines go on in one piece, up
                // to an LF the line-by-line path must see (or the end).
                let n = clean_run(&input[i..], self.prev_cr);
                if n > 0 {
                    out.extend_from_slice(&input[i..i + n]);
                    i += n;
                    self.prev_cr = input[i - 1] == b'\r';
                }
                if i == input.len() {
                    break;
                }
                at_lf = Some(0);
            }
            // Mid-line: copy the run up to the next LF in one piece.
            let rest = &input[i..];
            let Some(lf) = at_lf.or_else(|| memchr::memchr(b'\n', rest)) else {
                out.extend_from_slice(rest);
                self.prev_cr = rest.last() == Some(&b'\r');
                return Scanned::more(input.len());
            };
            let crlf = if lf > 0 {
                rest[lf - 1] == b'\r'
            } else {
                self.prev_cr
            };
            out.extend_from_slice(&rest[..lf]);
            i += lf + 1;
            if !crlf && self.strict {
                return Scanned {
                    consumed: i,
                    ended: false,
                    refused: Some(Violation::BareLf),
                };
            }
            out.extend_from_slice(if crlf { b"\n" } else { b"\r\n" });
            self.end_line(crlf);
        }
        Scanned::more(input.len())
    }

    fn end_line(&mut self, crlf: bool) {
        self.after_crlf = crlf;
        self.line_start = true;
        self.held_len = 0;
        self.prev_cr = false;
        self.garbage = None;
    }

    /// One byte of a line that so far holds only NUL, CR and one dot,
    /// more than [`HOLD`] of them.
    fn garbage_byte(&mut self, g: Garbage, b: u8, out: &mut Vec<u8>) -> Result<(), Scanned> {
        match b {
            b'\n' => {
                let crlf = self.prev_cr;
                if g.dots == 1 {
                    if self.strict {
                        return Err(Scanned::refused(Violation::FalseEnd));
                    }
                    // Its start has gone out already: a second dot at its
                    // end keeps it from reading as a lone dot.
                    self.suspicious += 1;
                    out.extend_from_slice(b".\r\n");
                } else if !crlf && self.strict {
                    return Err(Scanned::refused(Violation::BareLf));
                } else {
                    out.extend_from_slice(if crlf { b"\n" } else { b"\r\n" });
                }
                self.end_line(crlf);
            }
            0 | b'\r' => out.push(b),
            b'.' if g.dots == 0 => {
                out.push(b);
                self.garbage = Some(Garbage { dots: 1 });
            }
            _ => {
                out.push(b);
                self.garbage = None;
            }
        }
        self.prev_cr = b == b'\r';
        Ok(())
    }

    /// One byte at the start of a line. `Ok(true)`: taken (held, or the
    /// line ended); `Ok(false)`: the held bytes went out and `b` starts the
    /// line's ordinary rest; `Err`: the content ended or was refused.
    fn line_start_byte(&mut self, b: u8, out: &mut Vec<u8>) -> Result<bool, Scanned> {
        let held_dot = self.held[..self.held_len].contains(&b'.');
        match b {
            b'\n' => self.line_end(out).map(|()| true),
            0 | b'\r' | b'.' if !(b == b'.' && held_dot) => {
                if self.held_len == HOLD {
                    // No real line starts like this: let the bytes go and
                    // watch the rest of the line.
                    out.extend_from_slice(&self.held);
                    self.garbage = Some(Garbage {
                        dots: u8::from(held_dot),
                    });
                    self.held_len = 0;
                    self.line_start = false;
                    self.prev_cr = self.held[HOLD - 1] == b'\r';
                    return Ok(false);
                }
                self.held[self.held_len] = b;
                self.held_len += 1;
                Ok(true)
            }
            _ => {
                // An ordinary line after all ("..text", ".text", "text",
                // "<NUL>text"). A dot mixed with NUL/CR before text
                // (`<LF>.<CR>MAIL`) ends nothing but is odd enough to count.
                let held = &self.held[..self.held_len];
                if held_dot && held.len() > 1 {
                    self.suspicious += 1;
                }
                out.extend_from_slice(held);
                self.held_len = 0;
                self.prev_cr = false;
                Ok(false)
            }
        }
    }

    /// An LF while the whole line so far is held: the end of data, an
    /// ordinary (maybe empty) line, or a lone dot that is not an end.
    fn line_end(&mut self, out: &mut Vec<u8>) -> Result<(), Scanned> {
        let held = &self.held[..self.held_len];
        let crlf = held.last() == Some(&b'\r');
        let content = if crlf { &held[..held.len() - 1] } else { held };
        if content == b"." && crlf && self.after_crlf {
            out.extend_from_slice(b".\r\n");
            return Err(Scanned {
                consumed: 0,
                ended: true,
                refused: None,
            });
        }
        let false_end = content.contains(&b'.');
        if self.strict && (false_end || !crlf) {
            let why = if false_end {
                Violation::FalseEnd
            } else {
                Violation::BareLf
            };
            return Err(Scanned::refused(why));
        }
        if false_end {
            self.suspicious += 1;
            out.push(b'.');
        }
        out.extend_from_slice(content);
        out.extend_from_slice(b"\r\n");
        self.end_line(crlf);
        Ok(())
    }
}

/// How many bytes at the start of `rest` (which begins mid-line; the byte
/// before it was CR when `prev_cr`) pass on unchanged while the scanner
/// stays mid-line: up to, not including, the first LF that is bare, or is
/// the input's last byte, or is followed by a byte that may start a lone
/// dot (`.`, NUL, CR) or an empty line (LF). Every LF before that is a
/// CRLF followed by an ordinary byte, where the line-by-line path would
/// copy the line, end it as CRLF and take the next byte as the start of an
/// ordinary line: the same bytes, one copy for many lines.
fn clean_run(rest: &[u8], prev_cr: bool) -> usize {
    for lf in memchr::memchr_iter(b'\n', rest) {
        let crlf = match lf.checked_sub(1) {
            Some(cr) => rest[cr] == b'\r',
            None => prev_cr,
        };
        let ordinary_next =
            matches!(rest.get(lf + 1), Some(b) if !matches!(b, b'.' | 0 | b'\r' | b'\n'));
        if !(crlf && ordinary_next) {
            return lf;
        }
    }
    rest.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Output, consumed bytes when the end was found, and the violation.
    fn scan_mode(mode: BareNewline, chunks: &[&[u8]]) -> (Vec<u8>, Option<usize>, u32) {
        let mut s = DataScanner::new(mode);
        let mut out = Vec::new();
        let mut total = 0;
        for c in chunks {
            let r = s.scan(c, &mut out);
            total += r.consumed;
            assert_eq!(r.refused, None);
            if r.ended {
                return (out, Some(total), s.suspicious());
            }
        }
        (out, None, s.suspicious())
    }

    fn scan_all(chunks: &[&[u8]]) -> (Vec<u8>, Option<usize>) {
        let (out, end, _) = scan_mode(BareNewline::Normal, chunks);
        (out, end)
    }

    fn refused(input: &[u8]) -> Option<Violation> {
        let mut s = DataScanner::new(BareNewline::Strict);
        let mut out = Vec::new();
        let r = s.scan(input, &mut out);
        assert!(!out.ends_with(b"\r\n.\r\n"), "terminator sent: {out:?}");
        r.refused
    }

    /// Everything a scan reports, over `input` cut at `cuts`.
    fn outcome(mut s: DataScanner, input: &[u8], cuts: &[usize]) -> (Vec<u8>, Vec<Scanned>, u32) {
        let mut out = Vec::new();
        let mut results = Vec::new();
        let mut at = 0;
        for &cut in cuts.iter().chain(std::iter::once(&input.len())) {
            let cut = cut.clamp(at, input.len());
            let r = s.scan(&input[at..cut], &mut out);
            at += r.consumed;
            let stop = r.ended || r.refused.is_some();
            results.push(r);
            if stop {
                break;
            }
        }
        (out, results, s.suspicious())
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(4000))]
        /// Copying ordinary lines whole (`clean_run`) changes nothing the
        /// line-by-line path would do: same output, same results for every
        /// read, same count, in both modes, whatever the cuts. The bytes
        /// are drawn mostly from those the boundary rules are about.
        #[test]
        fn whole_line_copies_equal_the_line_by_line_path(
            input in proptest::collection::vec(
                proptest::sample::select(&b"\r\n\r\n.\x00xy"[..]), 0..300),
            cuts in proptest::collection::vec(0usize..300, 0..6),
            strict in proptest::bool::ANY,
        ) {
            let mode = if strict { BareNewline::Strict } else { BareNewline::Normal };
            let mut cuts = cuts;
            cuts.sort_unstable();
            let mut reference = DataScanner::new(mode);
            reference.fast = false;
            proptest::prop_assert_eq!(
                outcome(DataScanner::new(mode), &input, &cuts),
                outcome(reference, &input, &cuts)
            );
        }
    }

    #[test]
    fn clean_run_stops_where_a_line_start_matters() {
        assert_eq!(clean_run(b"ab\r\ncd\r\nef", false), 10);
        assert_eq!(clean_run(b"ab\r\n.d", false), 3, "a dot starts the line");
        assert_eq!(clean_run(b"ab\r\n\x00d", false), 3, "a NUL starts the line");
        assert_eq!(clean_run(b"ab\r\n\r\n", false), 3, "an empty line");
        assert_eq!(clean_run(b"ab\r\n\n", false), 3);
        assert_eq!(clean_run(b"ab\ncd", false), 2, "a bare LF");
        assert_eq!(clean_run(b"ab\r\n", false), 3, "what follows is unknown");
        assert_eq!(clean_run(b"\nx", true), 2, "CR at the end of the last read");
        assert_eq!(clean_run(b"\nx", false), 0);
    }

    #[test]
    fn finds_end_on_every_split() {
        let msg = b"Subject: x\r\n\r\n..stuffed\r\nbody\r\n.\r\nQUIT\r\n";
        let end = msg.len() - b"QUIT\r\n".len();
        for split in 0..=msg.len() {
            let (out, consumed) = scan_all(&[&msg[..split], &msg[split..]]);
            assert_eq!(consumed, Some(end), "split {split}");
            assert_eq!(out, &msg[..end], "split {split}");
        }
    }

    #[test]
    fn empty_message() {
        assert_eq!(scan_all(&[b".\r\nQUIT\r\n"]), (b".\r\n".to_vec(), Some(3)));
    }

    /// The published end-of-data variants (SMTP smuggling research): each
    /// is content, stuffed so the backend cannot end there either, and
    /// counted; the real end after it is still found.
    #[test]
    fn false_ends_are_stuffed_content() {
        let cases: &[(&[u8], &[u8])] = &[
            (b"a\n.\nMAIL", b"a\r\n..\r\nMAIL"),
            (b"a\n.\r\nMAIL", b"a\r\n..\r\nMAIL"),
            (b"a\r\n.\nMAIL", b"a\r\n..\r\nMAIL"),
            (b"a\r\n\x00.\r\nMAIL", b"a\r\n.\x00.\r\nMAIL"),
            (b"a\r\n.\r\r\nMAIL", b"a\r\n..\r\r\nMAIL"),
            (b"a\r\n.\x00\r\nMAIL", b"a\r\n..\x00\r\nMAIL"),
            (b"a\n\r.\r\r\nMAIL", b"a\r\n.\r.\r\r\nMAIL"),
        ];
        for (input, want) in cases {
            let mut whole = input.to_vec();
            whole.extend_from_slice(b" FROM:<evil>\r\n.\r\n");
            let mut expect = want.to_vec();
            expect.extend_from_slice(b" FROM:<evil>\r\n.\r\n");
            for split in 0..=whole.len() {
                let (out, end, suspicious) =
                    scan_mode(BareNewline::Normal, &[&whole[..split], &whole[split..]]);
                assert_eq!(out, expect, "{input:?} split {split}");
                assert_eq!(end, Some(whole.len()), "{input:?} split {split}");
                assert_eq!(suspicious, 1, "{input:?}");
            }
        }
    }

    /// Bare CR is content: a dot between bare CRs ends nothing, and the
    /// bytes pass unchanged.
    #[test]
    fn bare_cr_dot_is_content() {
        for input in [&b"a\r.\rMAIL\r\n"[..], b"a\r.\r\nMAIL\r\n"] {
            let (out, end) = scan_all(&[input]);
            assert_eq!(end, None);
            assert_eq!(out, input);
        }
        // `<LF>.<CR>text`: the line starts with a dot and a bare CR.
        let (out, end, suspicious) = scan_mode(BareNewline::Normal, &[b"a\n.\rMAIL\r\n"]);
        assert_eq!((out.as_slice(), end), (&b"a\r\n.\rMAIL\r\n"[..], None));
        assert_eq!(suspicious, 1);
    }

    #[test]
    fn bare_lf_lines_become_crlf() {
        let (out, end, suspicious) = scan_mode(BareNewline::Normal, &[b"a\nb\n\nc\r\n"]);
        assert_eq!(out, b"a\r\nb\r\n\r\nc\r\n");
        assert_eq!((end, suspicious), (None, 0));
    }

    #[test]
    fn strict_refuses_bare_lf_and_false_ends() {
        assert_eq!(refused(b"a\nb\r\n"), Some(Violation::BareLf));
        assert_eq!(refused(b"a\r\n\n"), Some(Violation::BareLf));
        assert_eq!(refused(b"a\r\n.\nMAIL"), Some(Violation::FalseEnd));
        assert_eq!(refused(b"a\r\n\x00.\r\nMAIL"), Some(Violation::FalseEnd));
        assert_eq!(refused(b"a\r.\rb\r\n"), None, "bare CR stays content");
        let mut s = DataScanner::new(BareNewline::Strict);
        let mut out = Vec::new();
        let r = s.scan(b"a\r\n..b\r\n.\r\n", &mut out);
        assert!(r.ended && r.refused.is_none());
    }

    #[test]
    fn dot_inside_lines_is_not_an_end() {
        let (out, consumed) = scan_all(&[b"a.\r\n.b\r\nx\r.\r\n"]);
        assert_eq!(consumed, None);
        assert_eq!(out, b"a.\r\n.b\r\nx\r.\r\n");
    }

    #[test]
    fn long_nul_runs_stay_bounded_and_end_nothing() {
        let mut input = vec![0u8; 1000];
        input.extend_from_slice(b".\r\n.\r\n");
        let (out, end, suspicious) = scan_mode(BareNewline::Normal, &[&input]);
        assert_eq!(end, Some(input.len()));
        assert_eq!(&out[..1001], &input[..1001]);
        assert_eq!(&out[1001..], b"\r.\r\n.\r\n");
        assert_eq!(suspicious, 1);
        let mut other = vec![b'\r'; 100];
        other.extend_from_slice(b"\x00x.\r\n");
        assert_eq!(scan_all(&[&other]), (other.clone(), None));
        assert_eq!(refused(&input), Some(Violation::FalseEnd));
    }

    #[test]
    fn nul_and_cr_only_lines_pass_unchanged() {
        let input = b"\x00\r\n\r\r\r\n\x00\x00x\r\n";
        assert_eq!(scan_all(&[input]), (input.to_vec(), None));
    }

    #[test]
    fn eight_bit_passes() {
        let body = "Grüße\r\n\u{00ff}\r\n.\r\n".as_bytes();
        let (out, consumed) = scan_all(&[body]);
        assert_eq!(consumed, Some(body.len()));
        assert_eq!(out, body);
    }
}
