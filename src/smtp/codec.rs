//! Command lines out of a byte stream, bounded in length.
//!
//! No I/O: the caller pushes what it read and pulls complete lines. A line
//! ends with LF (CRLF or a bare LF, as Postfix accepts); the terminator is
//! not part of the returned line. A line longer than the limit is consumed
//! up to its end and reported once as [`Line::TooLong`], so the buffer never
//! grows past the limit whatever the client sends.

/// What [`LineCodec::next_line`] found.
#[derive(Debug, PartialEq, Eq)]
pub enum Line {
    /// One complete line without its CRLF/LF.
    Complete(Vec<u8>),
    /// A line over the limit was received (and dropped).
    TooLong,
}

#[derive(Debug)]
pub struct LineCodec {
    /// Received bytes; those before `start` are consumed. Lines are taken
    /// by moving `start`, and the consumed bytes are dropped once per
    /// push: taking N lines out of one read costs O(read), not O(N × read).
    buf: Vec<u8>,
    start: usize,
    limit: usize,
    /// Inside an over-long line: drop bytes up to the next LF.
    discarding: bool,
    /// The last complete line ended in a bare LF (no CR before it).
    bare_lf: bool,
    /// Bytes still to drop as they arrive (a refused BDAT chunk).
    skip: u64,
}

impl LineCodec {
    /// `limit` counts the bytes of a line including its CRLF.
    pub fn new(limit: usize) -> Self {
        Self {
            buf: Vec::new(),
            start: 0,
            limit,
            discarding: false,
            bare_lf: false,
            skip: 0,
        }
    }

    /// Adds received bytes (less any still to be skipped).
    pub fn push(&mut self, data: &[u8]) {
        let skipped = usize::try_from(self.skip)
            .unwrap_or(usize::MAX)
            .min(data.len());
        self.skip -= skipped as u64;
        if self.start > 0 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        self.buf.extend_from_slice(&data[skipped..]);
    }

    /// What was received and not yet consumed.
    fn live(&self) -> &[u8] {
        &self.buf[self.start..]
    }

    /// Marks the next `n` live bytes consumed.
    fn advance(&mut self, n: usize) {
        self.start += n.min(self.buf.len() - self.start);
        if self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
        }
    }

    /// Drops the next `n` bytes, buffered or still to come, unread: the
    /// content of a BDAT chunk the proxy refused is never a command.
    pub fn skip(&mut self, n: u64) {
        let now = usize::try_from(n)
            .unwrap_or(usize::MAX)
            .min(self.live().len());
        self.advance(now);
        self.skip = n - now as u64;
    }

    /// Bytes of a refused chunk still to arrive; no line is returned before.
    pub fn skipping(&self) -> bool {
        self.skip > 0
    }

    /// Whether the last line [`next_line`](Self::next_line) returned ended
    /// in a bare LF (refused under `limits.bare_newline = "strict"`).
    pub fn last_line_bare_lf(&self) -> bool {
        self.bare_lf
    }

    /// The next complete line, if any.
    pub fn next_line(&mut self) -> Option<Line> {
        loop {
            match memchr::memchr(b'\n', self.live()) {
                Some(lf) if self.discarding => {
                    self.advance(lf + 1);
                    self.discarding = false;
                    return Some(Line::TooLong);
                }
                Some(lf) if lf + 1 > self.limit => {
                    self.advance(lf + 1);
                    return Some(Line::TooLong);
                }
                Some(lf) => {
                    let mut line = self.live()[..lf].to_vec();
                    self.advance(lf + 1);
                    self.bare_lf = line.last() != Some(&b'\r');
                    if !self.bare_lf {
                        line.pop();
                    }
                    return Some(Line::Complete(line));
                }
                None if self.discarding => {
                    self.advance(usize::MAX);
                    return None;
                }
                None if self.live().len() >= self.limit => {
                    // Over the limit and no end in sight: drop what we have
                    // and the rest of the line as it arrives.
                    self.advance(usize::MAX);
                    self.discarding = true;
                    continue;
                }
                None => return None,
            }
        }
    }

    /// Takes whatever was received but not yet returned as a line.
    ///
    /// After `220 Ready to start TLS` this is what the client sent before
    /// the handshake: it must be discarded, never read as commands
    /// (CVE-2011-0411). For an opportunistic plaintext relay it is handed on.
    pub fn take_buffered(&mut self) -> Vec<u8> {
        self.discarding = false;
        self.buf.drain(..self.start);
        self.start = 0;
        std::mem::take(&mut self.buf)
    }

    /// Frees the buffer if it is empty and grew past a command's size
    /// (after message content): idle sessions hold next to nothing.
    pub fn release_if_empty(&mut self) {
        if self.live().is_empty() && self.buf.capacity() > 1024 {
            self.buf = Vec::new();
        }
    }

    pub fn buffered_len(&self) -> usize {
        self.live().len()
    }

    /// Bytes received but not yet consumed (message content in the relay).
    pub fn buffer(&self) -> &[u8] {
        self.live()
    }

    /// Drops the first `n` buffered bytes after the caller used them raw.
    pub fn consume(&mut self, n: usize) {
        self.advance(n);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(codec: &mut LineCodec) -> Vec<Line> {
        std::iter::from_fn(|| codec.next_line()).collect()
    }

    #[test]
    fn every_split_point_gives_the_same_lines() {
        let input = b"EHLO a.test\r\nNOOP\nMAIL FROM:<a@b>\r\nQUIT\r\n";
        for split in 0..=input.len() {
            let mut c = LineCodec::new(100);
            c.push(&input[..split]);
            let mut got = lines(&mut c);
            c.push(&input[split..]);
            got.extend(lines(&mut c));
            assert_eq!(
                got,
                vec![
                    Line::Complete(b"EHLO a.test".to_vec()),
                    Line::Complete(b"NOOP".to_vec()),
                    Line::Complete(b"MAIL FROM:<a@b>".to_vec()),
                    Line::Complete(b"QUIT".to_vec()),
                ],
                "split at {split}"
            );
        }
    }

    #[test]
    fn too_long_line_is_reported_once_and_skipped() {
        let mut c = LineCodec::new(10);
        c.push(b"0123456789abcdef");
        assert_eq!(c.next_line(), None);
        assert!(c.buffered_len() < 10);
        c.push(b"ghijkl\r\nNOOP\r\n");
        assert_eq!(
            lines(&mut c),
            vec![Line::TooLong, Line::Complete(b"NOOP".to_vec())]
        );
    }

    #[test]
    fn limit_counts_crlf() {
        let mut c = LineCodec::new(6);
        c.push(b"NOOP\r\nNOOPS\r\n");
        assert_eq!(
            lines(&mut c),
            vec![Line::Complete(b"NOOP".to_vec()), Line::TooLong]
        );
    }

    #[test]
    fn buffer_stays_bounded_without_newlines() {
        let mut c = LineCodec::new(64);
        for _ in 0..1000 {
            c.push(&[b'x'; 100]);
            assert_eq!(c.next_line(), None);
            assert!(c.buffered_len() <= 164);
        }
    }

    #[test]
    fn skip_drops_buffered_and_future_bytes() {
        let mut c = LineCodec::new(100);
        c.push(b"ab\r\nQUIT");
        c.skip(10);
        assert!(c.skipping());
        assert_eq!(c.next_line(), None);
        c.push(b"\r\nNOOP\r\n");
        assert!(!c.skipping());
        assert_eq!(lines(&mut c), vec![Line::Complete(b"NOOP".to_vec())]);
    }

    #[test]
    fn bare_lf_is_reported_per_line() {
        let mut c = LineCodec::new(100);
        c.push(b"NOOP\nRSET\r\n");
        assert!(c.next_line().is_some());
        assert!(c.last_line_bare_lf());
        assert!(c.next_line().is_some());
        assert!(!c.last_line_bare_lf());
    }

    #[test]
    fn take_buffered_returns_the_rest() {
        let mut c = LineCodec::new(100);
        c.push(b"STARTTLS\r\nNOOP\r\nMAIL");
        assert_eq!(c.next_line(), Some(Line::Complete(b"STARTTLS".to_vec())));
        assert_eq!(c.take_buffered(), b"NOOP\r\nMAIL".to_vec());
        assert_eq!(c.next_line(), None);
    }
}
