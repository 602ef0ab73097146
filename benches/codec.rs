//! SMTP codec scenarios: command lines out of a pipelined burst, DATA
//! content scanned for its end (the relay's per-byte hot path).

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use starttls_proxy::smtp::codec::LineCodec;
use starttls_proxy::smtp::command::Command;
use starttls_proxy::smtp::data::DataScanner;

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
    g.finish();
}

criterion_group!(benches, codec);
criterion_main!(benches);
