//! The built-in sink backend: a small SMTP server inside the proxy that
//! stores every accepted message in a Maildir. For trying the proxy out and
//! for benchmarks; it is an explicit backend (`sink = "var/mail"`), never a
//! fallback.
//!
//! Each message is one file in `new/`: `Return-Path:` and one
//! `Delivered-To:` per recipient (as an MDA adds them), then the content
//! exactly as received, dot-stuffing undone, CRLF kept. The file is synced
//! and renamed from `tmp/` before the 250 is sent.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::fs::File;
use tokio::io::{
    AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader, BufWriter, DuplexStream, ReadHalf,
};
use tracing::{debug, warn};

use super::BackendConn;
use crate::smtp::reply::ReplyParser;

/// Command lines longer than this are refused by the sink.
const MAX_LINE: usize = 64 * 1024;
/// Message content is gathered this much before a write to the file.
const WRITE_BUFFER: usize = 64 * 1024;

/// What the sink's EHLO reply offers after its name. The pre-TLS EHLO
/// offers these too (through the same safe-set filter as a probed
/// backend's), so a plaintext client can use what the sink accepts.
const EXTENSIONS: &[&str] = &[
    "PIPELINING",
    "8BITMIME",
    "SMTPUTF8",
    "ENHANCEDSTATUSCODES",
    "CHUNKING",
    "DSN",
];

#[derive(Debug)]
pub struct Sink {
    dir: PathBuf,
    hostname: String,
    counter: AtomicU64,
    /// fsync each message before its 250 (durable), or leave it to the
    /// kernel (benchmarks, demos).
    fsync: bool,
}

impl Sink {
    /// Creates `dir/{tmp,new,cur}` if needed.
    pub fn open(dir: &Path, hostname: &str, fsync: bool) -> std::io::Result<Self> {
        for sub in ["tmp", "new", "cur"] {
            std::fs::create_dir_all(dir.join(sub)).map_err(|e| {
                std::io::Error::new(
                    e.kind(),
                    format!("sink Maildir {}: {e}", dir.join(sub).display()),
                )
            })?;
        }
        Ok(Self {
            dir: dir.to_path_buf(),
            hostname: hostname.to_string(),
            counter: AtomicU64::new(0),
            fsync,
        })
    }

    /// A new in-process SMTP session. Like a TCP backend after its greeting.
    pub fn connect(self: &std::sync::Arc<Self>) -> BackendConn {
        let (proxy_side, sink_side) = tokio::io::duplex(64 * 1024);
        let sink = self.clone();
        tokio::spawn(async move {
            if let Err(e) = sink.serve(sink_side).await {
                debug!(error = %e, "sink session ended");
            }
        });
        BackendConn {
            io: Box::new(proxy_side),
            server: "sink".to_string(),
            parser: ReplyParser::default(),
            tls: None,
        }
    }

    /// The texts of the sink's EHLO reply: its name, then its extensions
    /// (the shape `Health::set_extensions` takes from a probe).
    pub fn ehlo_texts(&self) -> Vec<String> {
        std::iter::once(self.hostname.clone())
            .chain(EXTENSIONS.iter().map(|e| e.to_string()))
            .collect()
    }

    fn ehlo_reply(&self) -> String {
        crate::smtp::ehlo::multiline(250, &self.ehlo_texts())
    }

    fn unique_name(&self) -> String {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        // Zero-padded microseconds: names sort in delivery order.
        format!(
            "{}.{:06}_{}_{}.{}",
            now.as_secs(),
            now.subsec_micros(),
            std::process::id(),
            n,
            self.hostname
        )
    }

    async fn serve(&self, io: DuplexStream) -> std::io::Result<()> {
        let (r, mut w) = tokio::io::split(io);
        let mut r = BufReader::new(r);
        let mut from: Option<String> = None;
        let mut rcpts: Vec<String> = Vec::new();
        let mut bdat: Option<Delivery> = None;
        let mut line = Vec::new();
        loop {
            line.clear();
            if !read_line(&mut r, &mut line, MAX_LINE).await? {
                return Ok(());
            }
            let text = String::from_utf8_lossy(&line);
            let text = text.trim_end_matches(['\r', '\n']);
            let upper = text.to_ascii_uppercase();
            let verb = upper.split(' ').next().unwrap_or("");
            let reply: String = match verb {
                "EHLO" => self.ehlo_reply(),
                "HELO" => format!("250 {}\r\n", self.hostname),
                "MAIL" => match angle_arg(text, "FROM:") {
                    Some(a) if from.is_none() => {
                        from = Some(a);
                        "250 2.1.0 Ok\r\n".into()
                    }
                    Some(_) => "503 5.5.1 Error: nested MAIL command\r\n".into(),
                    None => "501 5.5.4 Syntax: MAIL FROM:<address>\r\n".into(),
                },
                "RCPT" => match (angle_arg(text, "TO:"), &from) {
                    (_, None) => "503 5.5.1 Error: need MAIL command\r\n".into(),
                    (Some(a), Some(_)) if !a.is_empty() => {
                        rcpts.push(a);
                        "250 2.1.5 Ok\r\n".into()
                    }
                    _ => "501 5.5.4 Syntax: RCPT TO:<address>\r\n".into(),
                },
                "DATA" if rcpts.is_empty() => "503 5.5.1 Error: need RCPT command\r\n".into(),
                "DATA" => {
                    w.write_all(b"354 End data with <CR><LF>.<CR><LF>\r\n")
                        .await?;
                    w.flush().await?;
                    let mut d = self.begin(from.as_deref().unwrap_or(""), &rcpts).await?;
                    let done = copy_dot_stuffed(&mut r, &mut d.file).await?;
                    let reply = if done {
                        self.finish(d).await
                    } else {
                        return Ok(());
                    };
                    from = None;
                    rcpts.clear();
                    reply
                }
                "BDAT" => {
                    let mut args = upper.split_ascii_whitespace().skip(1);
                    let size: Option<u64> = args.next().and_then(|s| s.parse().ok());
                    let last = args.next() == Some("LAST");
                    match size {
                        None => "501 5.5.4 Syntax: BDAT size [LAST]\r\n".into(),
                        Some(size) => {
                            if bdat.is_none() && !rcpts.is_empty() {
                                bdat =
                                    Some(self.begin(from.as_deref().unwrap_or(""), &rcpts).await?);
                            }
                            match bdat.as_mut() {
                                None => {
                                    // Read and drop the chunk to stay in sync.
                                    tokio::io::copy(
                                        &mut (&mut r).take(size),
                                        &mut tokio::io::sink(),
                                    )
                                    .await?;
                                    "503 5.5.1 Error: need RCPT command\r\n".into()
                                }
                                Some(d) => {
                                    let n = tokio::io::copy(&mut (&mut r).take(size), &mut d.file)
                                        .await?;
                                    if n < size {
                                        return Ok(());
                                    }
                                    if last {
                                        let Some(d) = bdat.take() else { continue };
                                        from = None;
                                        rcpts.clear();
                                        self.finish(d).await
                                    } else {
                                        format!("250 2.0.0 {size} octets received\r\n")
                                    }
                                }
                            }
                        }
                    }
                }
                "RSET" => {
                    from = None;
                    rcpts.clear();
                    bdat = None;
                    "250 2.0.0 Ok\r\n".into()
                }
                "NOOP" => "250 2.0.0 Ok\r\n".into(),
                "QUIT" => {
                    w.write_all(b"221 2.0.0 Bye\r\n").await?;
                    w.flush().await?;
                    return Ok(());
                }
                _ => "502 5.5.2 Error: command not recognized\r\n".into(),
            };
            w.write_all(reply.as_bytes()).await?;
            w.flush().await?;
        }
    }

    async fn begin(&self, from: &str, rcpts: &[String]) -> std::io::Result<Delivery> {
        let name = self.unique_name();
        let tmp = self.dir.join("tmp").join(&name);
        // Content arrives a line at a time; each write to a tokio File is a
        // trip to the blocking pool, so they are gathered first.
        let mut file = BufWriter::with_capacity(WRITE_BUFFER, File::create(&tmp).await?);
        let mut head = format!("Return-Path: <{from}>\r\n");
        for r in rcpts {
            head.push_str(&format!("Delivered-To: {r}\r\n"));
        }
        file.write_all(head.as_bytes()).await?;
        Ok(Delivery { file, tmp, name })
    }

    /// Syncs and moves the message to `new/`; the reply says whether it worked.
    async fn finish(&self, mut d: Delivery) -> String {
        let stored = async {
            d.file.flush().await?;
            if self.fsync {
                d.file.get_ref().sync_all().await?;
            }
            tokio::fs::rename(&d.tmp, self.dir.join("new").join(&d.name)).await
        }
        .await;
        match stored {
            Ok(()) => format!("250 2.0.0 Ok: queued as {}\r\n", d.name),
            Err(e) => {
                warn!(error = %e, file = %d.tmp.display(), "sink could not store a message");
                let _ = tokio::fs::remove_file(&d.tmp).await;
                "451 4.3.0 Error: could not store the message\r\n".into()
            }
        }
    }
}

/// A message being written to `tmp/`.
struct Delivery {
    file: BufWriter<File>,
    tmp: PathBuf,
    name: String,
}

/// `MAIL FROM:<a@b> SIZE=1` → `a@b`.
fn angle_arg(text: &str, prefix: &str) -> Option<String> {
    let rest = text.get(5..)?.trim_start();
    if !rest.get(..prefix.len())?.eq_ignore_ascii_case(prefix) {
        return None;
    }
    let rest = rest.get(prefix.len()..)?.trim_start();
    let inner = rest.strip_prefix('<')?;
    let end = inner.find('>')?;
    Some(inner[..end].to_string())
}

/// Reads one line (LF included) of at most `max` bytes; `false` at EOF.
async fn read_line(
    r: &mut BufReader<ReadHalf<DuplexStream>>,
    line: &mut Vec<u8>,
    max: usize,
) -> std::io::Result<bool> {
    let n = (&mut *r).take(max as u64).read_until(b'\n', line).await?;
    Ok(n > 0)
}

/// Copies DATA content to `file` until the `.` line, undoing dot-stuffing,
/// one bounded piece at a time. `false` if the stream ended first.
async fn copy_dot_stuffed(
    r: &mut BufReader<ReadHalf<DuplexStream>>,
    file: &mut BufWriter<File>,
) -> std::io::Result<bool> {
    let mut piece = Vec::with_capacity(8192);
    let mut at_line_start = true;
    loop {
        piece.clear();
        let n = (&mut *r).take(8192).read_until(b'\n', &mut piece).await?;
        if n == 0 {
            return Ok(false);
        }
        let complete = piece.last() == Some(&b'\n');
        let mut content: &[u8] = &piece;
        if at_line_start {
            if complete && (content == b".\r\n" || content == b".\n") {
                return Ok(true);
            }
            if content.first() == Some(&b'.') {
                content = &content[1..];
            }
        }
        file.write_all(content).await?;
        at_line_start = complete;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pre_tls_ehlo_offers_what_the_sink_accepts() {
        let dir = tempfile::tempdir().unwrap();
        let sink = Sink::open(dir.path(), "mx.test", true).unwrap();
        assert_eq!(
            sink.ehlo_reply(),
            "250-mx.test\r\n250-PIPELINING\r\n250-8BITMIME\r\n250-SMTPUTF8\r\n250-ENHANCEDSTATUSCODES\r\n250-CHUNKING\r\n250 DSN\r\n"
        );
        let health = crate::backend::Health::always_up();
        health.set_extensions(Some(sink.ehlo_texts()));
        let offered = health.extensions().unwrap();
        assert!(offered.iter().any(|e| e == "SMTPUTF8"), "{offered:?}");
        assert!(
            !offered.iter().any(|e| e.starts_with("AUTH")),
            "{offered:?}"
        );
        let pre_tls = crate::smtp::ehlo::pre_tls_reply("mx.test", Some(&offered), true);
        assert!(pre_tls.contains("250-SMTPUTF8\r\n"), "{pre_tls}");
        assert!(pre_tls.ends_with("250 STARTTLS\r\n"), "{pre_tls}");
    }

    #[test]
    fn angle_args() {
        assert_eq!(
            angle_arg("MAIL FROM:<a@b.test> SIZE=10", "FROM:").as_deref(),
            Some("a@b.test")
        );
        assert_eq!(angle_arg("mail from: <>", "FROM:").as_deref(), Some(""));
        assert_eq!(angle_arg("RCPT TO:<x@y>", "TO:").as_deref(), Some("x@y"));
        assert_eq!(angle_arg("RCPT TO:x@y", "TO:"), None);
    }
}
