//! Certificate choice per ClientHello with 2, 10, 1k and 10k names: must stay
//! flat (hash lookups), whether the SNI matches exactly, by wildcard, or
//! not at all.

use std::sync::Arc;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use rustls::SignatureScheme;
use rustls::sign::CertifiedKey;
use rustls_pki_types::PrivateKeyDer;
use rustls_pki_types::pem::PemObject;
use starttls_proxy::tls::CertStore;
use starttls_proxy::tls::load::{KeyAlgorithm, LoadedCert};

fn store(names: usize) -> CertStore {
    let root = env!("CARGO_MANIFEST_DIR");
    let key = PrivateKeyDer::from_pem_file(format!(
        "{root}/certs.example/mx1.example.test/ecdsa/privkey.pem"
    ))
    .unwrap();
    let key = rustls::crypto::ring::sign::any_supported_type(&key).unwrap();
    let chain = rustls_pki_types::CertificateDer::pem_file_iter(format!(
        "{root}/certs.example/mx1.example.test/ecdsa/fullchain.pem"
    ))
    .unwrap()
    .map(Result::unwrap)
    .collect::<Vec<_>>();
    let ck = Arc::new(CertifiedKey::new(chain, key));
    // One certificate per tenant, each with an exact and a wildcard name.
    let certs = (0..names.div_ceil(2))
        .map(|i| {
            Arc::new(LoadedCert {
                name: format!("tenant{i}"),
                names: vec![format!("mx.tenant{i}.test"), format!("*.tenant{i}.test")],
                key: ck.clone(),
                algorithm: KeyAlgorithm::Ecdsa,
                subject: String::new(),
                issuer: String::new(),
                serial: String::new(),
                not_before: 0,
                not_after: 0,
                root_dropped: false,
                chain: Vec::new(),
                chain_check: starttls_proxy::config::ChainCheck::Full,
                warnings: Vec::new(),
            })
        })
        .collect();
    CertStore::new(certs, 0).unwrap()
}

fn resolver(c: &mut Criterion) {
    let schemes = [
        SignatureScheme::ECDSA_NISTP256_SHA256,
        SignatureScheme::RSA_PSS_SHA256,
    ];
    let mut g = c.benchmark_group("resolver");
    for n in [2usize, 10, 1_000, 10_000] {
        let s = store(n);
        let last = n.div_ceil(2) - 1;
        let exact = format!("mx.tenant{last}.test");
        let wild = format!("smtp.tenant{last}.test");
        g.bench_with_input(BenchmarkId::new("sni_exact", n), &exact, |b, sni| {
            b.iter(|| s.select(Some(sni), &schemes))
        });
        g.bench_with_input(BenchmarkId::new("sni_wildcard", n), &wild, |b, sni| {
            b.iter(|| s.select(Some(sni), &schemes))
        });
        g.bench_with_input(
            BenchmarkId::new("sni_unmatched", n),
            "nobody.example.org",
            |b, sni| b.iter(|| s.select(Some(sni), &schemes)),
        );
        g.bench_function(BenchmarkId::new("no_sni", n), |b| {
            b.iter(|| s.select(None, &schemes))
        });
    }
    g.finish();
}

criterion_group!(benches, resolver);
criterion_main!(benches);
