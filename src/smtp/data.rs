//! The end of DATA content, found the way the backend will find it.
//!
//! The proxy must agree with the backend on where a message ends, or a
//! sender could smuggle a second message past the proxy (SMTP smuggling,
//! CVE-2023-51764 class). So the content is normalised as it streams
//! through: a bare LF becomes CRLF. The backend then sees only CRLF line
//! ends and the one terminator `CRLF . CRLF` the proxy also sees.
//! Dot-stuffing is left alone: it is the backend's to undo.

/// Scans DATA content chunk by chunk. No I/O, no buffering of the message.
#[derive(Debug)]
pub struct DataScanner {
    /// The last bytes emitted; starts as if a CRLF preceded the content.
    tail: [u8; 4],
    /// The previous input byte was CR.
    prev_cr: bool,
}

impl Default for DataScanner {
    fn default() -> Self {
        Self {
            tail: [0, 0, b'\r', b'\n'],
            prev_cr: false,
        }
    }
}

/// The result of one [`DataScanner::scan`].
#[derive(Debug, PartialEq, Eq)]
pub struct Scanned {
    /// Input bytes used (up to and including the terminator, if found).
    pub consumed: usize,
    /// The terminating `.CRLF` was found at the end of `consumed`.
    pub ended: bool,
}

impl DataScanner {
    /// Scans `input`, appending the normalised content to `out`.
    pub fn scan(&mut self, input: &[u8], out: &mut Vec<u8>) -> Scanned {
        out.reserve(input.len() + 16);
        for (i, &b) in input.iter().enumerate() {
            if b == b'\n' && !self.prev_cr {
                self.emit(b'\r', out);
            }
            self.prev_cr = b == b'\r';
            self.emit(b, out);
            // After normalisation every LF follows a CR, so "\n.\r\n" is
            // "\r\n.\r\n" (or ".\r\n" right at the start).
            if self.tail == *b"\n.\r\n" {
                return Scanned {
                    consumed: i + 1,
                    ended: true,
                };
            }
        }
        Scanned {
            consumed: input.len(),
            ended: false,
        }
    }

    fn emit(&mut self, b: u8, out: &mut Vec<u8>) {
        out.push(b);
        self.tail = [self.tail[1], self.tail[2], self.tail[3], b];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan_all(chunks: &[&[u8]]) -> (Vec<u8>, Option<usize>) {
        let mut s = DataScanner::default();
        let mut out = Vec::new();
        let mut total = 0;
        for c in chunks {
            let r = s.scan(c, &mut out);
            total += r.consumed;
            if r.ended {
                return (out, Some(total));
            }
        }
        (out, None)
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

    #[test]
    fn bare_lf_is_normalised_so_backend_and_proxy_agree() {
        // A bare-LF "end" is normalised into a real one: the backend sees
        // CRLF.CRLF exactly where the proxy ends the message.
        let (out, consumed) = scan_all(&[b"a\n.\nMAIL FROM:<evil>\r\n"]);
        assert_eq!(out, b"a\r\n.\r\n");
        assert_eq!(consumed, Some(4));
    }

    #[test]
    fn dot_inside_lines_is_not_an_end() {
        let (out, consumed) = scan_all(&[b"a.\r\n.b\r\nx\r.\r\n"]);
        assert_eq!(consumed, None);
        assert_eq!(out, b"a.\r\n.b\r\nx\r.\r\n");
    }

    #[test]
    fn eight_bit_passes() {
        let body = "Grüße\r\n\u{00ff}\r\n.\r\n".as_bytes();
        let (out, consumed) = scan_all(&[body]);
        assert_eq!(consumed, Some(body.len()));
        assert_eq!(out, body);
    }
}
