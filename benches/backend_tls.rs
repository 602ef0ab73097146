//! The proxy's side of TLS to the backend (`[[backend]] tls`, DESIGN.md
//! §10): what the second handshake of every session costs the proxy, full
//! against resumed (issue #14: "client-side session resumption so that the
//! second handshake costs little; measure its cost per session").
//!
//! In memory, no sockets: a rustls `ClientConnection` with the proxy's
//! client provider and the demo CA as `tls_ca` (as `backend::tls` builds
//! it), against a rustls server with the demo ECDSA leaf that sends TLS 1.3
//! tickets (as OpenSSL does). Only the client's calls are timed
//! (`iter_custom`): a figure is proxy CPU per backend handshake.
//!
//! - `full_1.3_ecdsa`: resumption disabled, every handshake full.
//! - `resumed_1.3_ecdsa`: one client config kept across handshakes (as each
//!   pool keeps its own), every handshake resumes a ticket of the one before.

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::Criterion;
use rustls::client::{ClientConnection, Resumption};
use rustls::server::ServerConnection;
use rustls::{ClientConfig, HandshakeKind, RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use starttls_proxy::tls::provider;

fn certs(file: &str) -> String {
    format!("{}/certs.example/{file}", env!("CARGO_MANIFEST_DIR"))
}

fn server() -> Arc<ServerConfig> {
    let chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_file_iter(certs("mx1.example.test/ecdsa/fullchain.pem"))
            .unwrap()
            .map(Result::unwrap)
            .collect();
    let key = PrivateKeyDer::from_pem_file(certs("mx1.example.test/ecdsa/privkey.pem")).unwrap();
    let mut c = ServerConfig::builder_with_provider(Arc::new(provider::client_provider()))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .unwrap();
    c.send_tls13_tickets = 2;
    Arc::new(c)
}

fn client(resume: bool) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(certs("ca.pem")).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let mut c = ClientConfig::builder_with_provider(Arc::new(provider::client_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    if !resume {
        c.resumption = Resumption::disabled();
    }
    Arc::new(c)
}

/// One handshake, then the server's tickets delivered to the client (as
/// the backend's greeting would carry them); the client's time and kind.
fn handshake(server: &Arc<ServerConfig>, client: &Arc<ClientConfig>) -> (Duration, HandshakeKind) {
    let name = ServerName::try_from("mx1.example.test").unwrap();
    let mut spent = Duration::ZERO;
    let t = Instant::now();
    let mut c = ClientConnection::new(client.clone(), name).unwrap();
    spent += t.elapsed();
    let mut s = ServerConnection::new(server.clone()).unwrap();
    // Until both are done, and once more for the tickets sent after it.
    let mut rounds_after = 1;
    loop {
        let t = Instant::now();
        let mut to_server = Vec::new();
        while c.wants_write() {
            c.write_tls(&mut to_server).unwrap();
        }
        spent += t.elapsed();
        let mut rd = &to_server[..];
        while !rd.is_empty() {
            s.read_tls(&mut rd).unwrap();
            s.process_new_packets().unwrap();
        }
        let mut to_client = Vec::new();
        while s.wants_write() {
            s.write_tls(&mut to_client).unwrap();
        }
        let t = Instant::now();
        let mut rd = &to_client[..];
        while !rd.is_empty() {
            c.read_tls(&mut rd).unwrap();
            c.process_new_packets().unwrap();
        }
        spent += t.elapsed();
        if !c.is_handshaking() && !s.is_handshaking() {
            if rounds_after == 0 {
                break;
            }
            rounds_after -= 1;
        }
    }
    (spent, c.handshake_kind().unwrap())
}

fn backend_handshakes(cr: &mut Criterion) {
    let server = server();
    let mut g = cr.benchmark_group("backend_tls");
    for (scenario, resume, kind) in [
        ("full_1.3_ecdsa", false, HandshakeKind::Full),
        ("resumed_1.3_ecdsa", true, HandshakeKind::Resumed),
    ] {
        let client = client(resume);
        // The first handshake fills the cache.
        handshake(&server, &client);
        g.bench_function(scenario, |b| {
            b.iter_custom(|n| {
                let mut total = Duration::ZERO;
                for _ in 0..n {
                    let (spent, got) = handshake(&server, &client);
                    assert_eq!(got, kind, "{scenario}");
                    total += spent;
                }
                total
            })
        });
    }
    g.finish();
}

fn main() {
    let mut c = Criterion::default().configure_from_args();
    backend_handshakes(&mut c);
    c.final_summary();
}
