//! Helpers shared by the fuzz targets (each target includes this module).

#![allow(dead_code)]

/// Cuts `data` into chunks whose sizes come from `sizes`, cycled: chunk `i`
/// is `sizes[i % sizes.len()] % 32` bytes long. A zero size gives an empty
/// chunk (the code under test must cope with empty reads too); when every
/// size is zero, or no sizes are given, `data` is one chunk.
pub fn chunks<'a>(sizes: &[u8], data: &'a [u8]) -> Vec<&'a [u8]> {
    if sizes.iter().all(|&s| s % 32 == 0) {
        return vec![data];
    }
    let mut out = Vec::new();
    let mut rest = data;
    let mut i = 0;
    while !rest.is_empty() {
        let n = usize::from(sizes[i % sizes.len()] % 32).min(rest.len());
        let (head, tail) = rest.split_at(n);
        out.push(head);
        rest = tail;
        i += 1;
    }
    out
}

/// Splits `input` into a header of `n` bytes and the payload after it.
/// Short inputs give a zero-padded header and an empty payload.
pub fn header<const N: usize>(input: &[u8]) -> ([u8; N], &[u8]) {
    let mut h = [0u8; N];
    let n = input.len().min(N);
    h[..n].copy_from_slice(&input[..n]);
    (h, &input[n..])
}

/// A bare LF (not preceded by CR) turned into CRLF; everything else as is.
pub fn normalise_bare_lf(input: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(input.len() + 8);
    for (i, &b) in input.iter().enumerate() {
        if b == b'\n' && (i == 0 || input[i - 1] != b'\r') {
            out.push(b'\r');
        }
        out.push(b);
    }
    out
}
