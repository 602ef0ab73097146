//! A real HTTPS server on loopback (tokio-rustls + hyper's HTTP/1.1
//! server) answering every request with one canned reply, for the
//! MTA-STS policy fetch. It records what each client asked for (SNI,
//! Host, path), so tests can check that a redirect was not followed.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use http_body_util::BodyExt;
use http_body_util::combinators::BoxBody;
use hyper::body::{Body as HttpBody, Bytes, Frame};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;

/// What the server sends as the body.
#[derive(Clone, Debug)]
pub enum Body {
    /// With a Content-Length.
    Full(Vec<u8>),
    /// `count` chunks of `chunk`, chunked transfer encoding (no length
    /// announced, so only counting while reading catches a large body).
    Chunked { chunk: Vec<u8>, count: usize },
}

/// The reply to every request.
#[derive(Clone, Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(&'static str, String)>,
    pub body: Body,
}

impl Reply {
    /// 200, `text/plain; charset=utf-8`, `text` as the body.
    pub fn policy(text: &str) -> Reply {
        Reply {
            status: 200,
            headers: vec![("content-type", "text/plain; charset=utf-8".into())],
            body: Body::Full(text.as_bytes().to_vec()),
        }
    }

    /// `status` with a short text/plain body.
    pub fn status(status: u16) -> Reply {
        Reply {
            status,
            ..Reply::policy("no policy here\n")
        }
    }

    /// Replaces (or adds) a header.
    pub fn header(mut self, name: &'static str, value: &str) -> Reply {
        self.headers.retain(|(n, _)| *n != name);
        self.headers.push((name, value.to_string()));
        self
    }

    pub fn body(mut self, body: Body) -> Reply {
        self.body = body;
        self
    }
}

/// One request as the server saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Seen {
    pub sni: Option<String>,
    pub host: Option<String>,
    pub path: String,
}

pub struct HttpsServer {
    pub addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    task: tokio::task::JoinHandle<()>,
}

impl HttpsServer {
    /// Serves `reply` over TLS with `chain_pem` (leaf first) and `key_pem`
    /// on 127.0.0.1, a port of its own. Call from a tokio runtime.
    pub async fn start(chain_pem: &str, key_pem: &str, reply: Reply) -> HttpsServer {
        let certs: Vec<CertificateDer<'static>> =
            CertificateDer::pem_slice_iter(chain_pem.as_bytes())
                .collect::<Result<_, _>>()
                .unwrap();
        let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).unwrap();
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .unwrap();
        let acceptor = TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let log = seen.clone();
        let task = tokio::spawn(async move {
            // Connections live in the accept loop's set: aborting the
            // server ends them too.
            let mut conns = JoinSet::new();
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let (acceptor, reply, log) = (acceptor.clone(), reply.clone(), log.clone());
                conns.spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let sni = tls.get_ref().1.server_name().map(str::to_string);
                    let service = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                        log.lock().unwrap().push(Seen {
                            sni: sni.clone(),
                            host: req
                                .headers()
                                .get("host")
                                .map(|h| h.to_str().unwrap().to_string()),
                            path: req.uri().path().to_string(),
                        });
                        let reply = reply.clone();
                        async move { Ok::<_, Infallible>(respond(&reply)) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tls), service)
                        .await;
                });
            }
        });
        HttpsServer { addr, seen, task }
    }

    /// Every request so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

impl Drop for HttpsServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn respond(reply: &Reply) -> hyper::Response<BoxBody<Bytes, Infallible>> {
    let body = match &reply.body {
        Body::Full(b) => http_body_util::Full::new(Bytes::from(b.clone())).boxed(),
        Body::Chunked { chunk, count } => Chunks {
            chunk: Bytes::from(chunk.clone()),
            left: *count,
        }
        .boxed(),
    };
    let mut r = hyper::Response::builder().status(reply.status);
    for (name, value) in &reply.headers {
        r = r.header(*name, value);
    }
    r.body(body).unwrap()
}

/// A body of `left` more copies of `chunk`, its length unknown to hyper.
struct Chunks {
    chunk: Bytes,
    left: usize,
}

impl HttpBody for Chunks {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if self.left == 0 {
            return Poll::Ready(None);
        }
        self.left -= 1;
        Poll::Ready(Some(Ok(Frame::data(self.chunk.clone()))))
    }
}
