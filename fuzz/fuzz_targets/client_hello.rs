//! The ClientHello inspection (src/tls/hello.rs) on arbitrary bytes, as
//! they arrive after STARTTLS. Invariants:
//! - `progress` never panics and is monotonic: once the prefix of the
//!   stream holds a whole ClientHello, every longer prefix says the same
//!   `Complete(n)`; before that it never says `Complete`.
//! - `NotTls` is decided by the first byte alone (0x16 or not).
//! - `parse` never panics on what `progress` calls complete, and what it
//!   reports is bounded: a kept SNI is a lowercase LDH name of at most 253
//!   bytes, so it is safe to log.
#![no_main]

use libfuzzer_sys::fuzz_target;
use starttls_proxy::tls::hello::{Progress, parse, progress};

fuzz_target!(|data: &[u8]| {
    let mut complete: Option<usize> = None;
    for cut in 0..=data.len() {
        let p = progress(&data[..cut]);
        if let Some(n) = complete {
            assert_eq!(p, Progress::Complete(n), "not monotonic at {cut}");
            continue;
        }
        match p {
            Progress::Complete(n) => {
                assert_eq!(n, cut, "complete must be detected at the last byte needed");
                complete = Some(n);
            }
            Progress::NotTls => {
                assert!(cut > 0 && data[0] != 0x16);
                return;
            }
            Progress::GiveUp => return,
            Progress::NeedMore => assert!(cut == 0 || data[0] == 0x16),
        }
    }
    if let Some(n) = complete {
        if let Some(summary) = parse(&data[..n]) {
            if let Some(sni) = &summary.sni {
                assert!(sni.len() <= 253);
                assert!(sni.bytes().all(|b| b.is_ascii_lowercase()
                    || b.is_ascii_digit()
                    || b == b'.'
                    || b == b'-'
                    || b == b'_'));
            }
        }
    }
});
