//! The `[metrics] listen` endpoint: `/metrics` (Prometheus text format),
//! `/healthz` (the process answers), `/ready` (it can take mail: the
//! listeners are bound, it is not draining for shutdown, and every backend
//! has a server that passed its last health probe), and the status page,
//! `/status` (HTML) and `/status.json` (docs/status.md).
//!
//! HTTP/1.1 by hyper; one request per connection, each connection bounded
//! in time and in number, so a stuck scraper cannot pile up tasks.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{CACHE_CONTROL, CONTENT_TYPE, HeaderName, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tracing::{info, warn};

use super::status;
use crate::backend::Backend;

/// At most this many scrapes at once; more wait in the kernel's backlog.
const MAX_CONNECTIONS: usize = 16;
/// A connection that has not finished its request and response by then is dropped.
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(30);
/// How often histograms are folded and idle state cleaned.
const UPKEEP_INTERVAL: Duration = Duration::from_secs(5);

/// What `/ready` reports.
#[derive(Debug, Default)]
pub struct Readiness {
    listening: AtomicBool,
    draining: AtomicBool,
    backends: OnceLock<Vec<Arc<Backend>>>,
}

impl Readiness {
    pub fn set_backends(&self, backends: Vec<Arc<Backend>>) {
        let _ = self.backends.set(backends);
    }

    pub fn set_listening(&self) {
        self.listening.store(true, Ordering::Release);
    }

    pub fn set_draining(&self) {
        self.draining.store(true, Ordering::Release);
    }

    /// `Ok` when ready, with the backends that are down (degraded, still
    /// ready), else every reason why not. A backend with no server up
    /// makes the proxy unready only when every backend is down: the
    /// backends are usually shared by every replica, so one tenant's MTA
    /// going down would otherwise take every replica out of the balancer
    /// and every other tenant with it. Its sessions get `421` instead.
    pub fn check(&self) -> Result<Vec<String>, Vec<String>> {
        let mut why = Vec::new();
        if !self.listening.load(Ordering::Acquire) {
            why.push("listeners not bound yet".to_string());
        }
        if self.draining.load(Ordering::Acquire) {
            why.push("shutting down".to_string());
        }
        let backends = self.backends.get().map(Vec::as_slice).unwrap_or_default();
        let down: Vec<String> = backends
            .iter()
            .filter(|b| !b.health().any_up())
            .map(|b| format!("backend {}: no server up", b.name))
            .collect();
        if !backends.is_empty() && down.len() == backends.len() {
            why.extend(down);
            return Err(why);
        }
        if why.is_empty() { Ok(down) } else { Err(why) }
    }
}

/// Binds the endpoint (an error here stops start-up, like a listener).
pub async fn bind(address: SocketAddr) -> std::io::Result<TcpListener> {
    let listener = TcpListener::bind(address).await?;
    let bound = listener.local_addr().unwrap_or(address);
    info!(address = %bound, "metrics endpoint bound");
    Ok(listener)
}

/// Serves the endpoint until the process ends.
pub async fn serve(listener: TcpListener, handle: PrometheusHandle, readiness: Arc<Readiness>) {
    let upkeep = handle.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(UPKEEP_INTERVAL);
        loop {
            tick.tick().await;
            upkeep.run_upkeep();
        }
    });
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        let (tcp, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                warn!(error = %e, "metrics endpoint: accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let handle = handle.clone();
        let readiness = readiness.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let response = respond(&req, &handle, &readiness);
                async move { Ok::<_, Infallible>(response) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .keep_alive(false)
                .serve_connection(TokioIo::new(tcp), service);
            match tokio::time::timeout(CONNECTION_TIMEOUT, conn).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => warn!(%peer, error = %e, "metrics endpoint: bad request"),
                Err(_) => warn!(%peer, "metrics endpoint: request timed out"),
            }
            drop(permit);
        });
    }
}

fn respond(
    req: &Request<Incoming>,
    handle: &PrometheusHandle,
    readiness: &Readiness,
) -> Response<Full<Bytes>> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "GET or HEAD only\n".into());
    }
    match req.uri().path() {
        "/metrics" => {
            let mut r = text(StatusCode::OK, handle.render());
            r.headers_mut().insert(
                CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            r
        }
        "/healthz" => text(StatusCode::OK, "ok\n".into()),
        "/ready" => match readiness.check() {
            Ok(down) if down.is_empty() => text(StatusCode::OK, "ready\n".into()),
            Ok(down) => text(
                StatusCode::OK,
                format!("ready, degraded: {}\n", down.join("; ")),
            ),
            Err(why) => text(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("not ready: {}\n", why.join("; ")),
            ),
        },
        "/status" => status_page(req.uri().query()),
        "/status.json" => status_json(),
        _ => text(
            StatusCode::NOT_FOUND,
            "not found: try /status, /status.json, /metrics, /healthz or /ready\n".into(),
        ),
    }
}

/// The page allows nothing but its own inline stylesheet: no script, no
/// request anywhere, even if something slipped past the escaping.
const STATUS_CSP: &str = "default-src 'none'; style-src 'unsafe-inline'; base-uri 'none'; \
     form-action 'none'; frame-ancestors 'none'";

fn status_page(query: Option<&str>) -> Response<Full<Bytes>> {
    let Some(model) = status::get() else {
        return text(StatusCode::NOT_FOUND, "no status model\n".into());
    };
    let refresh = status::html::refresh_from_query(query);
    let body = status::html::render(&model.snapshot(), refresh);
    let mut r = Response::new(Full::new(Bytes::from(body)));
    let headers = r.headers_mut();
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(
        HeaderName::from_static("content-security-policy"),
        HeaderValue::from_static(STATUS_CSP),
    );
    headers.insert(
        HeaderName::from_static("x-content-type-options"),
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        HeaderName::from_static("referrer-policy"),
        HeaderValue::from_static("no-referrer"),
    );
    r
}

fn status_json() -> Response<Full<Bytes>> {
    let Some(model) = status::get() else {
        return text(StatusCode::NOT_FOUND, "no status model\n".into());
    };
    let body = match serde_json::to_vec_pretty(&model.snapshot()) {
        Ok(b) => b,
        Err(e) => {
            return text(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("cannot serialize the status: {e}\n"),
            );
        }
    };
    let mut r = Response::new(Full::new(Bytes::from(body)));
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r.headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}
