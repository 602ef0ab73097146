//! SMTP codec scenarios: command lines out of a pipelined burst, DATA
//! content scanned for its end (the relay's per-byte hot path).

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use starttls_proxy::smtp::codec::LineCodec;
use starttls_proxy::smtp::command::Command;
use starttls_proxy::smtp::data::DataScanner;
use starttls_proxy::tls::hello;

fn codec(c: &mut Criterion) {
    let burst = b"MAIL FROM:<sender@example.org> SIZE=12345 BODY=8BITMIME\r\nRCPT TO:<a@example.test>\r\nRCPT TO:<b@example.test>\r\nDATA\r\n";
    let mut g = c.benchmark_group("codec");
    g.throughput(Throughput::Bytes(burst.len() as u64));
    g.bench_function("pipelined_mail_rcpt_rcpt_data", |b| {
        b.iter(|| {
            let mut codec = LineCodec::new(4096);
            codec.push(std::hint::black_box(burst));
            let mut n = 0;
            while let Some(starttls_proxy::smtp::codec::Line::Complete(l)) = codec.next_line() {
                if !matches!(Command::parse(&l), Command::Unknown) {
                    n += 1;
                }
            }
            n
        })
    });
    // One 32 KiB read (a read batch) of short command lines, all taken
    // out: the cost per line must not grow with what is left behind it.
    let flood = b"NOOP\r\n".repeat(32 * 1024 / 6);
    g.throughput(Throughput::Bytes(flood.len() as u64));
    g.bench_function("noop_flood_32k_read", |b| {
        let mut codec = LineCodec::new(4096);
        b.iter(|| {
            codec.push(std::hint::black_box(&flood));
            let mut n = 0;
            while let Some(starttls_proxy::smtp::codec::Line::Complete(_)) = codec.next_line() {
                n += 1;
            }
            n
        })
    });
    g.finish();

    // 1 MiB of 78-character lines, then the terminator.
    let mut body = Vec::new();
    while body.len() < 1 << 20 {
        body.extend_from_slice(&[b'x'; 76]);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(b".\r\n");
    let mut g = c.benchmark_group("data");
    g.throughput(Throughput::Bytes(body.len() as u64));
    g.bench_function("scan_1mib_crlf_16k_chunks", |b| {
        let mut out = Vec::with_capacity(body.len() + 64);
        b.iter(|| {
            out.clear();
            let mut s = DataScanner::default();
            let mut ended = false;
            for chunk in body.chunks(16 * 1024) {
                ended = s.scan(chunk, &mut out).ended;
            }
            assert!(ended);
        })
    });
    // The same bytes copied and nothing else: the ceiling for the scan.
    g.bench_function("plain_copy_1mib_16k_chunks", |b| {
        let mut out = Vec::with_capacity(body.len() + 64);
        b.iter(|| {
            out.clear();
            for chunk in body.chunks(16 * 1024) {
                out.extend_from_slice(std::hint::black_box(chunk));
            }
            out.len()
        })
    });
    // Bare-LF content: every line is rewritten to CRLF.
    let bare: Vec<u8> = body
        .split(|&b| b == b'\n')
        .flat_map(|l| {
            let l = l.strip_suffix(b"\r").unwrap_or(l);
            l.iter().copied().chain(std::iter::once(b'\n'))
        })
        .collect();
    g.throughput(Throughput::Bytes(bare.len() as u64));
    g.bench_function("scan_1mib_bare_lf_16k_chunks", |b| {
        let mut out = Vec::with_capacity(bare.len() * 2);
        b.iter(|| {
            out.clear();
            let mut s = DataScanner::default();
            for chunk in bare.chunks(16 * 1024) {
                s.scan(chunk, &mut out);
            }
            out.len()
        })
    });
    g.finish();
}

/// ClientHello inspection (read before rustls on every handshake): the
/// record boundary check and the parse, on real captured hellos.
fn client_hello(c: &mut Criterion) {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/clienthello");
    let mut g = c.benchmark_group("client_hello");
    for name in ["openssl-default", "go-default", "python-default"] {
        let Ok(bytes) = std::fs::read(dir.join(format!("{name}.bin"))) else {
            continue;
        };
        g.throughput(Throughput::Bytes(bytes.len() as u64));
        g.bench_function(name, |b| {
            b.iter(|| {
                let n = match hello::progress(std::hint::black_box(&bytes)) {
                    hello::Progress::Complete(n) => n,
                    _ => return None,
                };
                hello::parse(&bytes[..n])
            })
        });
    }
    g.finish();
}

criterion_group!(benches, codec, client_hello);
criterion_main!(benches);
