//! Prometheus metrics (DESIGN.md §6), recorded with the `metrics` crate and
//! rendered by metrics-exporter-prometheus.
//!
//! Every metric is written through a function here, so names live in one
//! place and every label value comes from a fixed set (an enum's `as_str`)
//! or from the configuration (listener address, certificate and backend
//! names) — never from what a client sent. Without a `[metrics]` section no
//! recorder is installed and these calls cost next to nothing.
//!
//! The same calls feed the status page's model ([`super::status`]), so
//! `/status` and `/metrics` count the same events.

use std::sync::Arc;
use std::time::Duration;

use metrics::{counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram};
use metrics_exporter_prometheus::{BuildError, Matcher, PrometheusBuilder, PrometheusHandle};

use super::status::{self, Status};

pub const PREFIX: &str = "starttls_proxy_";

const BUILD_INFO: &str = "starttls_proxy_build_info";
const CONNECTIONS: &str = "starttls_proxy_connections_total";
const CONNECTIONS_ACTIVE: &str = "starttls_proxy_connections_active";
const CONNECTIONS_REJECTED: &str = "starttls_proxy_connections_rejected_total";
const SESSIONS: &str = "starttls_proxy_sessions_total";
const HANDSHAKES: &str = "starttls_proxy_tls_handshakes_total";
const HANDSHAKE_FAILURES: &str = "starttls_proxy_tls_handshake_failures_total";
const HANDSHAKE_DURATION: &str = "starttls_proxy_tls_handshake_duration_seconds";
const CLIENT_MAX_VERSION: &str = "starttls_proxy_tls_client_max_version_total";
const BACKEND_UP: &str = "starttls_proxy_backend_up";
const BACKEND_CONNECT_FAILURES: &str = "starttls_proxy_backend_connect_failures_total";
const MESSAGES_RELAYED: &str = "starttls_proxy_messages_relayed_total";
const BYTES_RELAYED: &str = "starttls_proxy_bytes_relayed_total";
const CERT_NOT_AFTER: &str = "starttls_proxy_certificate_not_after_timestamp_seconds";
const CERT_RELOADS: &str = "starttls_proxy_certificate_reloads_total";
const SMUGGLING: &str = "starttls_proxy_smtp_smuggling_attempts_total";
const STARTTLS_INJECTION: &str = "starttls_proxy_starttls_injection_total";
const TLS_POLICY: &str = "starttls_proxy_tls_policy_evaluations_total";

/// Handshakes take milliseconds on loopback and up to the handshake
/// timeout (30 s by default) for a stalled client.
const HANDSHAKE_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// Installs the global recorder and returns the handle that renders
/// `/metrics`. Call once, before any session starts.
pub fn install() -> Result<PrometheusHandle, BuildError> {
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Full(HANDSHAKE_DURATION.to_string()),
            HANDSHAKE_BUCKETS,
        )?
        .install_recorder()?;
    describe();
    gauge!(BUILD_INFO, "version" => env!("CARGO_PKG_VERSION")).set(1.0);
    gauge!(CONNECTIONS_ACTIVE).set(0.0);
    Ok(handle)
}

fn describe() {
    describe_gauge!(
        BUILD_INFO,
        "Always 1; the version label says which build runs."
    );
    describe_counter!(
        CONNECTIONS,
        "TCP connections accepted, by listener address."
    );
    describe_gauge!(CONNECTIONS_ACTIVE, "Client connections open now.");
    describe_counter!(
        CONNECTIONS_REJECTED,
        "Connections refused before the SMTP dialogue, by reason."
    );
    describe_counter!(
        SESSIONS,
        "Sessions relayed to a backend, by how TLS was used (starttls, implicit, none)."
    );
    describe_counter!(
        HANDSHAKES,
        "Completed TLS handshakes by version, cipher, SNI match and certificate served."
    );
    describe_counter!(HANDSHAKE_FAILURES, "Failed TLS handshakes, by reason.");
    describe_histogram!(
        HANDSHAKE_DURATION,
        metrics::Unit::Seconds,
        "Time from the start of the handshake to its completion."
    );
    describe_counter!(
        CLIENT_MAX_VERSION,
        "Highest TLS version offered in ClientHellos, refused ones included."
    );
    describe_gauge!(
        BACKEND_UP,
        "1 when the last health probe of the backend server succeeded."
    );
    describe_counter!(
        BACKEND_CONNECT_FAILURES,
        "Failed connections (or greetings) to a backend server."
    );
    describe_counter!(
        MESSAGES_RELAYED,
        "Messages the backend accepted (its 250 reached the client)."
    );
    describe_counter!(
        BYTES_RELAYED,
        "Bytes relayed after the pre-TLS dialogue, by direction."
    );
    describe_gauge!(
        CERT_NOT_AFTER,
        metrics::Unit::Seconds,
        "notAfter of the leaf served for each configured certificate, as a Unix time."
    );
    describe_counter!(
        SMUGGLING,
        "Messages holding a lone dot not bounded by CRLF (SMTP smuggling), by listener."
    );
    describe_counter!(
        STARTTLS_INJECTION,
        "STARTTLS commands followed by pipelined bytes, which were discarded, by listener."
    );
    describe_counter!(
        TLS_POLICY,
        "TLS policy rules that matched a MAIL FROM or RCPT TO, by rule and result (satisfied, would_refuse, refused)."
    );
    describe_counter!(
        CERT_RELOADS,
        "Certificate reload attempts by result (success, failure, unchanged)."
    );
}

/// Why a connection was refused before any SMTP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    MaxConnections,
    MaxConnectionsPerIp,
    ProxyUntrusted,
    ProxyInvalid,
    /// Every backend server failed its last probe: 421 greeting.
    BackendDown,
}

impl Rejection {
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::MaxConnections => "max_connections",
            Self::MaxConnectionsPerIp => "max_connections_per_ip",
            Self::ProxyUntrusted => "proxy_untrusted",
            Self::ProxyInvalid => "proxy_invalid",
            Self::BackendDown => "backend_down",
        }
    }
}

/// Direction of relayed bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    ClientToBackend,
    BackendToClient,
}

impl Direction {
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::ClientToBackend => "client_to_backend",
            Self::BackendToClient => "backend_to_client",
        }
    }
}

/// Also into the status model, when one is installed.
fn to_status(f: impl FnOnce(&Status)) {
    if let Some(s) = status::get() {
        f(s);
    }
}

pub fn connection_accepted(listener: &str) {
    counter!(CONNECTIONS, "listener" => listener.to_string()).increment(1);
    to_status(|s| s.connection_accepted(listener));
}

pub fn connection_rejected(reason: Rejection) {
    counter!(CONNECTIONS_REJECTED, "reason" => reason.as_str()).increment(1);
    to_status(|s| s.connection_rejected(reason.as_str()));
}

/// A message (or a refused one) held a false end of data.
pub fn smuggling_attempt(listener: &str) {
    counter!(SMUGGLING, "listener" => listener.to_string()).increment(1);
    to_status(|s| s.smuggling_attempt(listener));
}

/// Bytes pipelined after STARTTLS were discarded (CVE-2011-0411 class).
pub fn starttls_injection(listener: &str) {
    counter!(STARTTLS_INJECTION, "listener" => listener.to_string()).increment(1);
    to_status(|s| s.starttls_injection(listener));
}

/// `tls_policy_evaluations_total` of one rule, one handle per result,
/// registered when the rule is loaded: every series exists from the
/// start at 0, so `increase()` sees the first refusal too.
/// The status page (`telemetry::status`) shows the same counts.
#[derive(Debug, Clone)]
pub struct PolicyCounters {
    rule: std::sync::Arc<str>,
    satisfied: metrics::Counter,
    would_refuse: metrics::Counter,
    refused: metrics::Counter,
}

impl PolicyCounters {
    /// One evaluation of the rule; `result` is "satisfied",
    /// "would_refuse" or "refused".
    pub fn count(&self, result: &'static str) {
        let counter = match result {
            "satisfied" => &self.satisfied,
            "would_refuse" => &self.would_refuse,
            _ => &self.refused,
        };
        counter.increment(1);
        to_status(|s| s.policy_evaluation(&self.rule, result));
    }
}

/// `rule` is a configured rule name.
pub fn tls_policy_counters(rule: &str) -> PolicyCounters {
    let c = |result: &'static str| counter!(TLS_POLICY, "policy" => rule.to_string(), "result" => result);
    to_status(|s| s.policy_rules([rule]));
    PolicyCounters {
        rule: rule.into(),
        satisfied: c("satisfied"),
        would_refuse: c("would_refuse"),
        refused: c("refused"),
    }
}

/// Counts an open connection until dropped.
#[derive(Debug)]
pub struct ActiveConnection(());

impl ActiveConnection {
    pub fn open() -> Self {
        gauge!(CONNECTIONS_ACTIVE).increment(1.0);
        Self(())
    }
}

impl Drop for ActiveConnection {
    fn drop(&mut self) {
        gauge!(CONNECTIONS_ACTIVE).decrement(1.0);
    }
}

/// `tls`: "starttls", "implicit" or "none".
/// A session that reached the relay; `backend`: the route taken (a
/// configured backend name).
pub fn session(tls: &'static str, backend: &Arc<str>) {
    counter!(SESSIONS, "tls" => tls, "backend" => backend.to_string()).increment(1);
    to_status(|s| s.session(tls));
}

/// A completed handshake. `version` and `cipher` are rustls's fixed names,
/// `sni` one of matched/unmatched/absent, `certificate` a configured name.
pub fn handshake(
    version: &'static str,
    cipher: &'static str,
    sni: &'static str,
    certificate: &str,
    duration: Duration,
) {
    counter!(
        HANDSHAKES,
        "version" => version,
        "cipher" => cipher,
        "sni" => sni,
        "certificate" => certificate.to_string()
    )
    .increment(1);
    histogram!(HANDSHAKE_DURATION).record(duration.as_secs_f64());
    to_status(|s| s.handshake(version, sni, certificate));
}

/// `reason` comes from `HandshakeFailure::reason` (a fixed set);
/// `offered` is the client's highest offered version (`unknown` without a
/// readable ClientHello), for the status page's failure table.
pub fn handshake_failed(reason: &'static str, offered: &'static str) {
    counter!(HANDSHAKE_FAILURES, "reason" => reason).increment(1);
    to_status(|s| s.handshake_failed(reason, offered));
}

/// The highest version a ClientHello offered (a fixed set of names).
pub fn client_max_version(version: &'static str) {
    counter!(CLIENT_MAX_VERSION, "version" => version).increment(1);
    to_status(|s| s.client_max_version(version));
}

/// A health probe's result: up, or down with why (`error`, built from
/// fixed words and config values, never from what the server said).
pub fn backend_probe(backend: &str, server: &str, error: Option<&str>) {
    gauge!(BACKEND_UP, "backend" => backend.to_string(), "server" => server.to_string())
        .set(if error.is_none() { 1.0 } else { 0.0 });
    to_status(|s| s.backend_probe(backend, server, error));
}

pub fn backend_connect_failed(backend: &str, server: &str) {
    counter!(BACKEND_CONNECT_FAILURES, "backend" => backend.to_string(), "server" => server.to_string())
        .increment(1);
    to_status(|s| s.backend_connect_failed(backend, server));
}

/// A message the backend accepted; `backend`: the route taken.
pub fn message_relayed(backend: &Arc<str>) {
    counter!(MESSAGES_RELAYED, "backend" => backend.to_string()).increment(1);
    to_status(Status::message_relayed);
}

pub fn bytes_relayed(direction: Direction, bytes: u64) {
    if bytes > 0 {
        counter!(BYTES_RELAYED, "direction" => direction.as_str()).increment(bytes);
    }
}

/// `not_after` in Unix seconds.
pub fn certificate_not_after(certificate: &str, not_after: i64) {
    gauge!(CERT_NOT_AFTER, "certificate" => certificate.to_string()).set(not_after as f64);
    to_status(|s| s.certificate_not_after(certificate, not_after));
}

/// `result` from `ReloadResult::as_str` (success, failure, unchanged).
pub fn certificate_reload(certificate: &str, result: &'static str) {
    counter!(CERT_RELOADS, "certificate" => certificate.to_string(), "result" => result)
        .increment(1);
    to_status(|s| s.certificate_reload(certificate, result));
}
