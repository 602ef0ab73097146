//! A scripted backend MTA that speaks STARTTLS for real (a rustls server
//! with a certificate chosen by the test), for the cases of `[[backend]]
//! tls = "starttls"` a real Postfix will not produce on demand: a server
//! that does not offer STARTTLS, refuses it, sends bytes after its 220
//! (the STARTTLS command-injection class, server side), or presents a
//! certificate that does not verify. It carries on like a small MTA in
//! plaintext when there is no TLS, so a proxy that wrongly relayed in
//! plaintext would show it here; each connection's lines are kept apart
//! by phase (before and inside TLS).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};

use rustls::ServerConfig;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};

use super::pki::Leaf;

/// What the server does at STARTTLS.
#[derive(Clone)]
pub enum StartTls {
    /// Offers STARTTLS, answers `220`, handshakes with this config.
    Good(Arc<ServerConfig>),
    /// The EHLO reply has no STARTTLS (a STARTTLS sent anyway gets 502).
    NotOffered,
    /// Offers STARTTLS and answers it with this reply (CRLF added).
    Refused(&'static str),
    /// Offers STARTTLS, writes these bytes (a 220 and more) in one write,
    /// then handshakes with this config as if all were well.
    Injects(&'static [u8], Arc<ServerConfig>),
    /// Offers STARTTLS, answers `220`, waits for the client's first
    /// handshake bytes, then writes these bytes (plaintext, where the
    /// server's handshake should be) before handshaking with this config.
    InjectsInHandshake(&'static [u8], Arc<ServerConfig>),
}

/// One connection's command lines (DATA content included).
#[derive(Default, Clone, Debug)]
pub struct Lines {
    pub plain: Vec<String>,
    pub tls: Vec<String>,
}

pub struct StartTlsBackend {
    pub addr: SocketAddr,
    behaviour: Arc<Mutex<StartTls>>,
    connections: Arc<Mutex<Vec<Arc<Mutex<Lines>>>>>,
}

/// A server config presenting `leaf` (with its intermediates).
pub fn server_config(leaf: &Leaf) -> Arc<ServerConfig> {
    server_config_pem(&leaf.fullchain(), &leaf.key_pem)
}

/// A server config presenting the PEM chain and key.
pub fn server_config_pem(chain_pem: &str, key_pem: &str) -> Arc<ServerConfig> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(chain_pem.as_bytes())
        .map(Result::unwrap)
        .collect();
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).unwrap();
    Arc::new(
        ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .unwrap(),
    )
}

impl StartTlsBackend {
    pub fn start(behaviour: StartTls) -> StartTlsBackend {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let behaviour = Arc::new(Mutex::new(behaviour));
        let connections: Arc<Mutex<Vec<Arc<Mutex<Lines>>>>> = Arc::default();
        let (current, conns) = (behaviour.clone(), connections.clone());
        std::thread::spawn(move || {
            for tcp in l.incoming() {
                let Ok(tcp) = tcp else { return };
                let rec: Arc<Mutex<Lines>> = Arc::default();
                conns.lock().unwrap().push(rec.clone());
                let b = current.lock().unwrap().clone();
                std::thread::spawn(move || session(tcp, b, rec));
            }
        });
        StartTlsBackend {
            addr,
            behaviour,
            connections,
        }
    }

    /// Connections accepted from now on behave like this (a server that
    /// passed its health probe and changed afterwards).
    pub fn set_behaviour(&self, b: StartTls) {
        *self.behaviour.lock().unwrap() = b;
    }

    /// Every connection's lines (health probes included), in accept order.
    pub fn connections(&self) -> Vec<Lines> {
        self.connections
            .lock()
            .unwrap()
            .iter()
            .map(|c| c.lock().unwrap().clone())
            .collect()
    }

    /// Every line received in plaintext, all connections.
    pub fn plaintext_lines(&self) -> Vec<String> {
        self.connections()
            .into_iter()
            .flat_map(|c| c.plain)
            .collect()
    }

    /// Every line received inside TLS, all connections.
    pub fn tls_lines(&self) -> Vec<String> {
        self.connections().into_iter().flat_map(|c| c.tls).collect()
    }
}

/// A transaction command (what must never travel in plaintext).
pub fn is_transaction(line: &str) -> bool {
    let upper = line.to_ascii_uppercase();
    ["MAIL", "RCPT", "DATA", "BDAT"]
        .iter()
        .any(|c| upper.starts_with(c))
}

/// One line, byte by byte (no read-ahead past the STARTTLS line: the
/// handshake's first bytes must stay on the socket for rustls).
fn read_line(s: &mut impl Read) -> Option<String> {
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    loop {
        match s.read(&mut b) {
            Ok(1) => {
                line.push(b[0]);
                if b[0] == b'\n' {
                    return Some(String::from_utf8_lossy(&line).trim_end().to_string());
                }
            }
            _ => return None,
        }
    }
}

enum Next {
    Close,
    Handshake(Arc<ServerConfig>),
}

/// Answers like a small MTA; at STARTTLS does what `b` says.
fn smtp(s: &mut (impl Read + Write), b: &StartTls, inside_tls: bool, rec: &Mutex<Lines>) -> Next {
    let mut in_data = false;
    while let Some(line) = read_line(s) {
        {
            let mut r = rec.lock().unwrap();
            if inside_tls { &mut r.tls } else { &mut r.plain }.push(line.clone());
        }
        if in_data {
            if line == "." {
                in_data = false;
                if s.write_all(b"250 2.0.0 Ok: queued as TLSFAKE\r\n").is_err() {
                    return Next::Close;
                }
            }
            continue;
        }
        let upper = line.to_ascii_uppercase();
        let offer = !inside_tls && !matches!(b, StartTls::NotOffered);
        let reply: Vec<u8> = if upper.starts_with("EHLO") {
            let starttls = if offer { "250-STARTTLS\r\n" } else { "" };
            format!("250-fake.tls.test\r\n250-PIPELINING\r\n{starttls}250 8BITMIME\r\n").into()
        } else if upper.starts_with("STARTTLS") && offer {
            match b {
                StartTls::Good(config) => {
                    if s.write_all(b"220 2.0.0 Ready to start TLS\r\n").is_err() {
                        return Next::Close;
                    }
                    return Next::Handshake(config.clone());
                }
                StartTls::Injects(bytes, config) => {
                    if s.write_all(bytes).is_err() {
                        return Next::Close;
                    }
                    return Next::Handshake(config.clone());
                }
                StartTls::InjectsInHandshake(_, config) => {
                    if s.write_all(b"220 2.0.0 Ready to start TLS\r\n").is_err() {
                        return Next::Close;
                    }
                    return Next::Handshake(config.clone());
                }
                StartTls::Refused(reply) => format!("{reply}\r\n").into(),
                StartTls::NotOffered => unreachable!(),
            }
        } else if upper.starts_with("STARTTLS") {
            b"502 5.5.1 STARTTLS not offered\r\n".to_vec()
        } else if upper.starts_with("DATA") {
            in_data = true;
            b"354 go ahead\r\n".to_vec()
        } else if upper.starts_with("QUIT") {
            let _ = s.write_all(b"221 2.0.0 Bye\r\n");
            return Next::Close;
        } else {
            b"250 2.0.0 Ok\r\n".to_vec()
        };
        if s.write_all(&reply).is_err() {
            return Next::Close;
        }
    }
    Next::Close
}

fn session(mut tcp: TcpStream, b: StartTls, rec: Arc<Mutex<Lines>>) {
    if tcp.write_all(b"220 fake.tls.test ESMTP\r\n").is_err() {
        return;
    }
    let Next::Handshake(config) = smtp(&mut tcp, &b, false, &rec) else {
        return;
    };
    if let StartTls::InjectsInHandshake(bytes, _) = &b {
        let mut first = [0u8; 1];
        if !matches!(tcp.peek(&mut first), Ok(1)) || tcp.write_all(bytes).is_err() {
            return;
        }
    }
    let Ok(conn) = rustls::ServerConnection::new(config) else {
        return;
    };
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    // No greeting inside TLS (RFC 3207): the client speaks first.
    smtp(&mut tls, &b, true, &rec);
}
