//! Full TLS handshakes in memory, server side only: rustls with aws-lc-rs
//! against ring, ECDSA P-256 and RSA-2048 leaves (certs.example/), TLS 1.3
//! and 1.2, and the cost of the hybrid post-quantum group X25519MLKEM768
//! over X25519.
//!
//! Each handshake is a real one: a rustls `ClientConnection` and the
//! server's `Acceptor` → `ServerConnection` exchange bytes through buffers,
//! no sockets. The server config is built by `tls::provider::server_config`
//! (what the proxy uses) and cloned per handshake with the certificate
//! resolver set, as `tls::acceptor` does; only the provider differs. Only
//! the server's calls are timed (`iter_custom`), so a figure is server CPU
//! per full handshake and its inverse handshakes/s on one core.
//!
//! Scenarios are named like rustls's ci-bench: `full_1.3_ecdsa_x25519`,
//! each with one function per provider (`aws-lc-rs`, `ring`).
//!
//! Repeatable instruction counts: with `HANDSHAKE_COUNT=<scenario>/<provider>/<n>`
//! the binary runs `n` handshakes of that scenario and exits, for
//!
//! ```text
//! HANDSHAKE_COUNT=full_1.3_rsa_x25519/ring/200 valgrind --tool=callgrind \
//!     --toggle-collect='*server_flight*' target/release/deps/handshake-*
//! ```
//!
//! which counts only the server's instructions (see `server_flight`).

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput};
use rustls::client::ClientConnection;
use rustls::crypto::{CryptoProvider, SupportedKxGroup, aws_lc_rs, ring};
use rustls::server::{Acceptor, ClientHello, ResolvesServerCert, ServerConnection};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, RootCertStore, ServerConfig, SupportedProtocolVersion};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use starttls_proxy::config::MinVersion;
use starttls_proxy::tls::provider;

#[derive(Clone, Copy, PartialEq)]
enum Provider {
    AwsLc,
    Ring,
}

impl Provider {
    fn name(self) -> &'static str {
        match self {
            Self::AwsLc => "aws-lc-rs",
            Self::Ring => "ring",
        }
    }

    /// The server's provider. aws-lc-rs is exactly what the proxy builds
    /// (`server_provider`), hybrid group included; ring has no ML-KEM.
    fn server(self) -> CryptoProvider {
        match self {
            Self::AwsLc => provider::server_provider(true),
            Self::Ring => ring::default_provider(),
        }
    }
}

#[derive(Clone, Copy)]
enum Leaf {
    Ecdsa,
    Rsa,
}

#[derive(Clone, Copy)]
enum Group {
    X25519,
    X25519MlKem768,
}

#[derive(Clone, Copy)]
struct Scenario {
    tls13: bool,
    leaf: Leaf,
    group: Group,
}

impl Scenario {
    fn name(self) -> String {
        format!(
            "full_{}_{}_{}",
            if self.tls13 { "1.3" } else { "1.2" },
            match self.leaf {
                Leaf::Ecdsa => "ecdsa",
                Leaf::Rsa => "rsa",
            },
            match self.group {
                Group::X25519 => "x25519",
                Group::X25519MlKem768 => "x25519mlkem768",
            }
        )
    }

    fn all() -> Vec<Scenario> {
        let mut all = Vec::new();
        for tls13 in [true, false] {
            for leaf in [Leaf::Ecdsa, Leaf::Rsa] {
                all.push(Scenario {
                    tls13,
                    leaf,
                    group: Group::X25519,
                });
            }
        }
        // The hybrid group exists in TLS 1.3 only.
        for leaf in [Leaf::Ecdsa, Leaf::Rsa] {
            all.push(Scenario {
                tls13: true,
                leaf,
                group: Group::X25519MlKem768,
            });
        }
        all
    }

    fn providers(self) -> &'static [Provider] {
        match self.group {
            Group::X25519 => &[Provider::AwsLc, Provider::Ring],
            Group::X25519MlKem768 => &[Provider::AwsLc],
        }
    }
}

// === the server, as the proxy builds it ===

/// Always the one certificate of the scenario (the proxy's resolver picks
/// from the store; its lookup is benched in benches/resolver.rs).
#[derive(Debug)]
struct Fixed(Arc<CertifiedKey>);

impl ResolvesServerCert for Fixed {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }
}

fn certs_dir(leaf: Leaf) -> String {
    let base = format!(
        "{}/certs.example/mx1.example.test",
        env!("CARGO_MANIFEST_DIR")
    );
    match leaf {
        Leaf::Ecdsa => format!("{base}/ecdsa"),
        Leaf::Rsa => base,
    }
}

/// The key loaded by the provider under test, so that it signs with it.
fn certified_key(leaf: Leaf, provider: &CryptoProvider) -> Arc<CertifiedKey> {
    let dir = certs_dir(leaf);
    let chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_file_iter(format!("{dir}/fullchain.pem"))
            .unwrap()
            .map(Result::unwrap)
            .collect();
    let key = PrivateKeyDer::from_pem_file(format!("{dir}/privkey.pem")).unwrap();
    let key = provider.key_provider.load_private_key(key).unwrap();
    Arc::new(CertifiedKey::new(chain, key))
}

struct Server {
    base: ServerConfig,
    resolver: Arc<Fixed>,
}

impl Server {
    fn new(p: Provider, leaf: Leaf) -> Server {
        let provider = Arc::new(p.server());
        let resolver = Arc::new(Fixed(certified_key(leaf, &provider)));
        let base =
            provider::server_config(provider, MinVersion::Tls12, 0, resolver.clone()).unwrap();
        Server { base, resolver }
    }
}

// === the client, the same for every provider ===

fn client(s: Scenario) -> Arc<ClientConfig> {
    let groups: Vec<&'static dyn SupportedKxGroup> = match s.group {
        Group::X25519 => vec![aws_lc_rs::kx_group::X25519],
        Group::X25519MlKem768 => vec![
            aws_lc_rs::kx_group::X25519MLKEM768,
            aws_lc_rs::kx_group::X25519,
        ],
    };
    let provider = CryptoProvider {
        kx_groups: groups,
        ..aws_lc_rs::default_provider()
    };
    let versions: &[&'static SupportedProtocolVersion] = if s.tls13 {
        &[&rustls::version::TLS13]
    } else {
        &[&rustls::version::TLS12]
    };
    let mut roots = RootCertStore::empty();
    let ca = format!("{}/certs.example/ca.pem", env!("CARGO_MANIFEST_DIR"));
    for c in CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let mut config = ClientConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(versions)
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    // Full handshakes only: the server's default session cache would let a
    // TLS 1.2 client resume by session ID.
    config.resumption = rustls::client::Resumption::disabled();
    Arc::new(config)
}

// === one handshake ===

enum ServerSide {
    Hello(Acceptor),
    Conn(ServerConnection),
}

/// One server flight: take the client's bytes, answer. The only code
/// timed, and the callgrind toggle (`--toggle-collect='*server_flight*'`).
#[inline(never)]
fn server_flight(
    state: ServerSide,
    server: &Server,
    input: &[u8],
    out: &mut Vec<u8>,
) -> ServerSide {
    let mut input = input;
    let mut conn = match state {
        ServerSide::Hello(mut acceptor) => {
            while !input.is_empty() {
                acceptor.read_tls(&mut input).unwrap();
            }
            match acceptor.accept() {
                Ok(Some(accepted)) => {
                    // Per handshake, as tls::acceptor does: a copy of the
                    // base config carrying this handshake's resolver.
                    let mut config = server.base.clone();
                    config.cert_resolver = server.resolver.clone();
                    accepted.into_connection(Arc::new(config)).unwrap()
                }
                Ok(None) => return ServerSide::Hello(acceptor),
                Err((e, _)) => panic!("server: {e}"),
            }
        }
        ServerSide::Conn(mut conn) => {
            while !input.is_empty() {
                conn.read_tls(&mut input).unwrap();
                conn.process_new_packets().unwrap();
            }
            conn
        }
    };
    while conn.wants_write() {
        conn.write_tls(out).unwrap();
    }
    ServerSide::Conn(conn)
}

/// Runs one full handshake; returns the server's time.
fn handshake(server: &Server, client: &Arc<ClientConfig>, expect: Group) -> Duration {
    let name = ServerName::try_from("mx1.example.test").unwrap();
    let mut c = ClientConnection::new(client.clone(), name).unwrap();
    let mut state = ServerSide::Hello(Acceptor::default());
    let mut to_server = Vec::with_capacity(4096);
    let mut to_client = Vec::with_capacity(8192);
    let mut server_time = Duration::ZERO;
    loop {
        while c.wants_write() {
            c.write_tls(&mut to_server).unwrap();
        }
        let server_done = matches!(&state, ServerSide::Conn(s) if !s.is_handshaking());
        if to_server.is_empty() && !c.is_handshaking() && server_done {
            break;
        }
        let t = Instant::now();
        state = server_flight(state, server, &to_server, &mut to_client);
        server_time += t.elapsed();
        to_server.clear();
        let mut input = &to_client[..];
        while !input.is_empty() {
            c.read_tls(&mut input).unwrap();
            c.process_new_packets().unwrap();
        }
        to_client.clear();
    }
    let ServerSide::Conn(s) = state else {
        unreachable!("handshake ended before the server accepted")
    };
    let want = match expect {
        Group::X25519 => rustls::NamedGroup::X25519,
        Group::X25519MlKem768 => rustls::NamedGroup::X25519MLKEM768,
    };
    assert_eq!(
        s.negotiated_key_exchange_group().map(|g| g.name()),
        Some(want)
    );
    black_box(s);
    server_time
}

fn handshakes(c: &mut Criterion) {
    for s in Scenario::all() {
        let client = client(s);
        let mut g = c.benchmark_group(s.name());
        g.throughput(Throughput::Elements(1));
        for &p in s.providers() {
            let server = Server::new(p, s.leaf);
            g.bench_function(p.name(), |b| {
                b.iter_custom(|n| (0..n).map(|_| handshake(&server, &client, s.group)).sum())
            });
        }
        g.finish();
    }
}

/// `HANDSHAKE_COUNT=<scenario>/<provider>/<n>`: n handshakes, no Criterion.
fn fixed_count(spec: &str) {
    let mut parts = spec.split('/');
    let (Some(scenario), Some(provider), Some(n), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        panic!("HANDSHAKE_COUNT=<scenario>/<provider>/<n>, got {spec:?}");
    };
    let s = Scenario::all()
        .into_iter()
        .find(|s| s.name() == scenario)
        .unwrap_or_else(|| panic!("no scenario {scenario:?}"));
    let p = *s
        .providers()
        .iter()
        .find(|p| p.name() == provider)
        .unwrap_or_else(|| panic!("no provider {provider:?} for {scenario}"));
    let n: u32 = n.parse().unwrap();
    let client = client(s);
    let server = Server::new(p, s.leaf);
    let total: Duration = (0..n).map(|_| handshake(&server, &client, s.group)).sum();
    eprintln!(
        "{scenario} {provider}: {n} handshakes, server {:?} each",
        total / n
    );
}

fn main() {
    if let Ok(spec) = std::env::var("HANDSHAKE_COUNT") {
        return fixed_count(&spec);
    }
    let mut c = Criterion::default().configure_from_args();
    handshakes(&mut c);
    c.final_summary();
}
