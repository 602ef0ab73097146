//! The status model behind `/status`, `/status.json` and `starttls-proxy
//! status` (docs/status.md): counters since start, the last hour minute by
//! minute, and the facts of the config (listeners, certificates, backends).
//!
//! Fed by pushes only, like the rest of telemetry: the functions of
//! [`super::metrics`] record here too, start-up and reload publish the
//! config's facts, and the health probe its results. Nothing is kept from
//! what a client sent: every string is a config name or a `&'static str`
//! of a fixed set, and every table is bounded (fixed arrays, config-sized
//! lists, capped label slots), so memory does not grow with traffic.
//!
//! Without a `[metrics]` section the model is never installed and every
//! push returns at once.

pub mod html;
pub mod human;
mod ring;
pub mod snapshot;

use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ring::Ring;
use snapshot::{Snapshot, Stamp};

/// Negotiated versions (rustls's names); anything else counts as `other`.
pub const NEGOTIATED: [&str; 3] = ["TLSv1.3", "TLSv1.2", "other"];
/// Highest versions offered in a ClientHello (`tls::hello::Version`).
pub const OFFERED: [&str; 6] = [
    "TLSv1.3", "TLSv1.2", "TLSv1.1", "TLSv1.0", "SSLv3", "unknown",
];
pub const SNI: [&str; 3] = ["matched", "unmatched", "absent"];
/// `sessions_total{tls}`: `none` is a plaintext session.
pub const SESSIONS: [&str; 3] = ["starttls", "implicit", "none"];
pub const POLICY_RESULTS: [&str; 3] = ["satisfied", "would_refuse", "refused"];

/// Slots for handshake failure reasons; the last one takes any reason
/// beyond (there are about 40, and a run sees a handful).
const MAX_REASONS: usize = 48;
/// Slots for connection rejection reasons (5 exist).
const MAX_REJECTIONS: usize = 16;
/// Policy rules come from the config; this only bounds a runaway caller.
const MAX_POLICY_RULES: usize = 256;
/// A probe error is built from fixed words and config values; cut anyway.
const MAX_ERROR_LEN: usize = 200;
/// The name of the overflow slot of a capped label set.
const OVERFLOW: &str = "other";

// === counters ===

/// Counters of one minute, or of the whole run: fixed-size arrays indexed
/// by the fixed sets above.
#[derive(Debug, Clone)]
pub struct Counts {
    handshakes: [u64; NEGOTIATED.len()],
    sni: [u64; SNI.len()],
    offered: [u64; OFFERED.len()],
    failures: [u64; MAX_REASONS],
    sessions: [u64; SESSIONS.len()],
    messages: u64,
    smuggling: u64,
    injections: u64,
}

impl Default for Counts {
    fn default() -> Self {
        Self {
            handshakes: [0; NEGOTIATED.len()],
            sni: [0; SNI.len()],
            offered: [0; OFFERED.len()],
            failures: [0; MAX_REASONS],
            sessions: [0; SESSIONS.len()],
            messages: 0,
            smuggling: 0,
            injections: 0,
        }
    }
}

impl Counts {
    fn add(&mut self, o: &Counts) {
        fn sum<const N: usize>(a: &mut [u64; N], b: &[u64; N]) {
            for (x, y) in a.iter_mut().zip(b) {
                *x += y;
            }
        }
        sum(&mut self.handshakes, &o.handshakes);
        sum(&mut self.sni, &o.sni);
        sum(&mut self.offered, &o.offered);
        sum(&mut self.failures, &o.failures);
        sum(&mut self.sessions, &o.sessions);
        self.messages += o.messages;
        self.smuggling += o.smuggling;
        self.injections += o.injections;
    }
}

/// Position of `v` in a fixed set.
fn index(set: &[&str], v: &str) -> Option<usize> {
    set.iter().position(|s| *s == v)
}

/// Position of `v`, or the set's last entry (its catch-all).
fn index_or_last(set: &[&str], v: &str) -> usize {
    index(set, v).unwrap_or(set.len() - 1)
}

/// Labels from a fixed set defined elsewhere (`&'static str` only, so never
/// a client's string), given a slot on first sight. The last of the `N`
/// slots is shared by whatever comes after the others are taken.
#[derive(Debug)]
struct Slots<const N: usize> {
    names: Vec<&'static str>,
}

impl<const N: usize> Default for Slots<N> {
    fn default() -> Self {
        Self { names: Vec::new() }
    }
}

impl<const N: usize> Slots<N> {
    fn slot(&mut self, name: &'static str) -> usize {
        if let Some(i) = self.names.iter().position(|n| *n == name) {
            return i;
        }
        if self.names.len() < N - 1 {
            self.names.push(name);
            return self.names.len() - 1;
        }
        N - 1
    }

    /// Every slot in use, with its name.
    fn used(&self, counts: &[u64; N]) -> Vec<(usize, &'static str)> {
        let mut out: Vec<(usize, &'static str)> = self.names.iter().copied().enumerate().collect();
        if counts[N - 1] > 0 {
            out.push((N - 1, OVERFLOW));
        }
        out
    }
}

// === config facts ===

/// A listener as bound.
#[derive(Debug, Clone)]
pub struct ListenerFacts {
    /// The bound address, as the `listener` metric label spells it.
    pub address: String,
    pub mode: &'static str,
    pub tls: &'static str,
    pub backend: String,
}

/// A certificate as served now.
#[derive(Debug, Clone)]
pub struct CertificateFacts {
    pub name: String,
    pub names: Vec<String>,
    pub algorithm: &'static str,
    pub default: bool,
    pub not_after: i64,
}

/// A backend pool; `servers` is `None` for the built-in sink.
#[derive(Debug, Clone)]
pub struct BackendFacts {
    pub name: String,
    pub identity: &'static str,
    pub servers: Option<Vec<String>>,
}

#[derive(Debug)]
struct ListenerEntry {
    facts: ListenerFacts,
    connections: u64,
    smuggling: u64,
    injections: u64,
}

#[derive(Debug)]
struct CertificateEntry {
    facts: CertificateFacts,
    handshakes: u64,
    reloads_success: u64,
    reloads_failure: u64,
    last_reload: Option<Stamp>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ServerState {
    Unknown,
    Up,
    Down,
}

impl ServerState {
    fn as_str(self) -> &'static str {
        match self {
            Self::Unknown => "unknown",
            Self::Up => "up",
            Self::Down => "down",
        }
    }
}

#[derive(Debug)]
struct ServerEntry {
    address: String,
    state: ServerState,
    last_probe_at: Option<i64>,
    state_since: Option<i64>,
    error: Option<String>,
    connect_failures: u64,
}

#[derive(Debug)]
struct BackendEntry {
    name: String,
    identity: &'static str,
    sink: bool,
    servers: Vec<ServerEntry>,
}

#[derive(Debug)]
struct PolicyEntry {
    rule: String,
    counts: [u64; POLICY_RESULTS.len()],
}

// === impl Status ===

/// The model: one per process, behind [`install`].
#[derive(Debug)]
pub struct Status {
    started: Instant,
    started_at: i64,
    hostname: String,
    inner: Mutex<Inner>,
}

/// Everything that changes, under one lock: a push holds it for a few
/// additions, and a snapshot sees since-start and last-hour figures that
/// agree with each other.
#[derive(Debug)]
struct Inner {
    total: Counts,
    ring: Ring,
    reasons: Slots<MAX_REASONS>,
    /// Failures since start by reason slot × highest offered version.
    failure_offered: Box<[[u64; OFFERED.len()]; MAX_REASONS]>,
    rejection_names: Slots<MAX_REJECTIONS>,
    rejections: [u64; MAX_REJECTIONS],
    expiry_warning: Duration,
    config_reload: Option<Stamp>,
    listeners: Vec<ListenerEntry>,
    certificates: Vec<CertificateEntry>,
    backends: Vec<BackendEntry>,
    policies: Vec<PolicyEntry>,
}

static STATUS: OnceLock<Status> = OnceLock::new();

/// Creates the process's model (the first call wins; later ones return
/// it). Called at start-up when `[metrics]` is configured.
pub fn install(hostname: &str, expiry_warning: Duration) -> &'static Status {
    STATUS.get_or_init(|| Status::new(hostname, expiry_warning))
}

/// The model, if installed.
pub fn get() -> Option<&'static Status> {
    STATUS.get()
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

impl Status {
    pub fn new(hostname: &str, expiry_warning: Duration) -> Self {
        Self {
            started: Instant::now(),
            started_at: unix_now(),
            hostname: hostname.to_string(),
            inner: Mutex::new(Inner {
                total: Counts::default(),
                ring: Ring::default(),
                reasons: Slots::default(),
                failure_offered: Box::new([[0; OFFERED.len()]; MAX_REASONS]),
                rejection_names: Slots::default(),
                rejections: [0; MAX_REJECTIONS],
                expiry_warning,
                config_reload: None,
                listeners: Vec::new(),
                certificates: Vec::new(),
                backends: Vec::new(),
                policies: Vec::new(),
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Counters only: a panic elsewhere leaves nothing half-done here.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn minute(&self) -> u64 {
        self.started.elapsed().as_secs() / 60
    }

    /// Adds to the since-start counters and to this minute's.
    fn count(&self, f: impl Fn(&mut Counts)) {
        let minute = self.minute();
        self.lock().count(minute, f);
    }

    // --- pushes from telemetry::metrics ---

    pub fn handshake(&self, version: &str, sni: &str, certificate: &str) {
        let v = index_or_last(&NEGOTIATED, version);
        let s = index(&SNI, sni);
        let minute = self.minute();
        let mut inner = self.lock();
        inner.count(minute, |c| {
            c.handshakes[v] += 1;
            if let Some(s) = s {
                c.sni[s] += 1;
            }
        });
        if let Some(e) = inner
            .certificates
            .iter_mut()
            .find(|e| e.facts.name == certificate)
        {
            e.handshakes += 1;
        }
    }

    pub fn handshake_failed(&self, reason: &'static str, offered: &str) {
        let o = index_or_last(&OFFERED, offered);
        let minute = self.minute();
        let mut inner = self.lock();
        let r = inner.reasons.slot(reason);
        inner.total.failures[r] += 1;
        inner.ring.at(minute).failures[r] += 1;
        inner.failure_offered[r][o] += 1;
    }

    pub fn client_max_version(&self, version: &str) {
        let o = index_or_last(&OFFERED, version);
        self.count(|c| c.offered[o] += 1);
    }

    pub fn session(&self, tls: &str) {
        if let Some(i) = index(&SESSIONS, tls) {
            self.count(|c| c.sessions[i] += 1);
        }
    }

    pub fn message_relayed(&self) {
        self.count(|c| c.messages += 1);
    }

    pub fn connection_accepted(&self, listener: &str) {
        self.with_listener(listener, |l| l.connections += 1);
    }

    pub fn connection_rejected(&self, reason: &'static str) {
        let mut inner = self.lock();
        let i = inner.rejection_names.slot(reason);
        inner.rejections[i] += 1;
    }

    pub fn smuggling_attempt(&self, listener: &str) {
        let minute = self.minute();
        let mut inner = self.lock();
        inner.count(minute, |c| c.smuggling += 1);
        inner.with_listener(listener, |l| l.smuggling += 1);
    }

    pub fn starttls_injection(&self, listener: &str) {
        let minute = self.minute();
        let mut inner = self.lock();
        inner.count(minute, |c| c.injections += 1);
        inner.with_listener(listener, |l| l.injections += 1);
    }

    fn with_listener(&self, listener: &str, f: impl FnOnce(&mut ListenerEntry)) {
        self.lock().with_listener(listener, f);
    }

    /// A health probe's result; `error` says why it failed.
    pub fn backend_probe(&self, backend: &str, server: &str, error: Option<&str>) {
        let now = unix_now();
        let state = if error.is_some() {
            ServerState::Down
        } else {
            ServerState::Up
        };
        self.with_server(backend, server, |s| {
            if s.state != state {
                s.state = state;
                s.state_since = Some(now);
            }
            s.last_probe_at = Some(now);
            s.error = error.map(|e| e.chars().take(MAX_ERROR_LEN).collect());
        });
    }

    pub fn backend_connect_failed(&self, backend: &str, server: &str) {
        self.with_server(backend, server, |s| s.connect_failures += 1);
    }

    fn with_server(&self, backend: &str, server: &str, f: impl FnOnce(&mut ServerEntry)) {
        let mut inner = self.lock();
        let found = inner
            .backends
            .iter_mut()
            .find(|b| b.name == backend)
            .and_then(|b| b.servers.iter_mut().find(|s| s.address == server));
        if let Some(s) = found {
            f(s);
        }
    }

    pub fn certificate_not_after(&self, certificate: &str, not_after: i64) {
        self.with_certificate(certificate, |c| c.facts.not_after = not_after);
    }

    /// `result`: success, failure or unchanged (which is not shown as a
    /// reload: nothing happened to that certificate).
    pub fn certificate_reload(&self, certificate: &str, result: &'static str) {
        let at = unix_now();
        self.with_certificate(certificate, |c| {
            match result {
                "success" => c.reloads_success += 1,
                "failure" => c.reloads_failure += 1,
                _ => return,
            }
            c.last_reload = Some(Stamp {
                result: result.to_string(),
                at,
            });
        });
    }

    fn with_certificate(&self, name: &str, f: impl FnOnce(&mut CertificateEntry)) {
        let mut inner = self.lock();
        if let Some(c) = inner.certificates.iter_mut().find(|c| c.facts.name == name) {
            f(c);
        }
    }

    /// Rules known from the config: shown at 0 before their first use.
    pub fn policy_rules<'a>(&self, rules: impl IntoIterator<Item = &'a str>) {
        let mut inner = self.lock();
        for r in rules {
            policy_entry(&mut inner.policies, r);
        }
    }

    /// `result`: satisfied, would_refuse or refused.
    pub fn policy_evaluation(&self, rule: &str, result: &str) {
        let Some(i) = index(&POLICY_RESULTS, result) else {
            return;
        };
        let mut inner = self.lock();
        if let Some(p) = policy_entry(&mut inner.policies, rule) {
            p.counts[i] += 1;
        }
    }

    // --- config facts, at start and on reload ---

    pub fn set_listeners(&self, listeners: Vec<ListenerFacts>) {
        let mut inner = self.lock();
        inner.listeners = listeners
            .into_iter()
            .map(|facts| ListenerEntry {
                facts,
                connections: 0,
                smuggling: 0,
                injections: 0,
            })
            .collect();
    }

    /// The certificates served now; counters of names seen before carry
    /// over (a reload keeps a certificate's history).
    pub fn set_certificates(&self, certificates: Vec<CertificateFacts>, expiry_warning: Duration) {
        let mut inner = self.lock();
        inner.expiry_warning = expiry_warning;
        let mut old = std::mem::take(&mut inner.certificates);
        inner.certificates = certificates
            .into_iter()
            .map(
                |facts| match old.iter().position(|e| e.facts.name == facts.name) {
                    Some(i) => {
                        let mut e = old.swap_remove(i);
                        e.facts = facts;
                        e
                    }
                    None => CertificateEntry {
                        facts,
                        handshakes: 0,
                        reloads_success: 0,
                        reloads_failure: 0,
                        last_reload: None,
                    },
                },
            )
            .collect();
    }

    pub fn set_backends(&self, backends: Vec<BackendFacts>) {
        let mut inner = self.lock();
        inner.backends = backends
            .into_iter()
            .map(|b| BackendEntry {
                name: b.name,
                identity: b.identity,
                sink: b.servers.is_none(),
                servers: b
                    .servers
                    .unwrap_or_default()
                    .into_iter()
                    .map(|address| ServerEntry {
                        address,
                        state: ServerState::Unknown,
                        last_probe_at: None,
                        state_since: None,
                        error: None,
                        connect_failures: 0,
                    })
                    .collect(),
            })
            .collect();
    }

    /// A SIGHUP reload of the config: applied, or refused (the previous
    /// config still runs).
    pub fn config_reloaded(&self, ok: bool) {
        let mut inner = self.lock();
        inner.config_reload = Some(Stamp {
            result: if ok { "success" } else { "failure" }.to_string(),
            at: unix_now(),
        });
    }

    // --- reading ---

    pub fn snapshot(&self) -> Snapshot {
        self.snapshot_at(unix_now(), self.minute())
    }

    fn snapshot_at(&self, now: i64, minute: u64) -> Snapshot {
        let inner = self.lock();
        let hour = inner.ring.last_hour(minute);
        let warning_days = inner.expiry_warning.as_secs() / 86_400;
        let mut s = Snapshot {
            format: snapshot::FORMAT,
            version: env!("CARGO_PKG_VERSION").to_string(),
            hostname: self.hostname.clone(),
            now,
            started_at: self.started_at,
            uptime_seconds: self.started.elapsed().as_secs(),
            expiry_warning_days: warning_days,
            ok: true,
            warnings: Vec::new(),
            config_reload: inner.config_reload.clone(),
            listeners: inner.listeners.iter().map(listener_view).collect(),
            certificates: inner
                .certificates
                .iter()
                .map(|c| certificate_view(c, now, inner.expiry_warning))
                .collect(),
            tls: snapshot::Windows {
                since_start: window(&inner.total),
                last_hour: window(&hour),
            },
            handshake_failures: failures(&inner, &hour),
            connections_rejected: inner
                .rejection_names
                .used(&inner.rejections)
                .into_iter()
                .map(|(i, name)| (name.to_string(), inner.rejections[i]))
                .collect(),
            backends: inner.backends.iter().map(backend_view).collect(),
            tls_policy: inner.policies.iter().map(policy_view).collect(),
        };
        s.warnings = s.compute_warnings();
        s.ok = s.warnings.is_empty();
        s
    }
}

// === impl Inner ===

impl Inner {
    fn count(&mut self, minute: u64, f: impl Fn(&mut Counts)) {
        f(&mut self.total);
        f(self.ring.at(minute));
    }

    fn with_listener(&mut self, listener: &str, f: impl FnOnce(&mut ListenerEntry)) {
        if let Some(l) = self
            .listeners
            .iter_mut()
            .find(|l| l.facts.address == listener)
        {
            f(l);
        }
    }
}

fn policy_entry<'a>(policies: &'a mut Vec<PolicyEntry>, rule: &str) -> Option<&'a mut PolicyEntry> {
    match policies.iter().position(|p| p.rule == rule) {
        Some(i) => policies.get_mut(i),
        None if policies.len() < MAX_POLICY_RULES => {
            policies.push(PolicyEntry {
                rule: rule.to_string(),
                counts: [0; POLICY_RESULTS.len()],
            });
            policies.last_mut()
        }
        None => None,
    }
}

// === views: the model as the snapshot's shape ===

fn map<const N: usize>(set: &[&str; N], counts: &[u64; N]) -> BTreeMap<String, u64> {
    set.iter()
        .zip(counts)
        .map(|(k, v)| (k.to_string(), *v))
        .collect()
}

fn window(c: &Counts) -> snapshot::Window {
    snapshot::Window {
        handshakes: c.handshakes.iter().sum(),
        versions: map(&NEGOTIATED, &c.handshakes),
        sni: map(&SNI, &c.sni),
        failures: c.failures.iter().sum(),
        client_max_versions: map(&OFFERED, &c.offered),
        sessions: map(&SESSIONS, &c.sessions),
        messages_relayed: c.messages,
        smuggling_attempts: c.smuggling,
        starttls_injections: c.injections,
    }
}

fn failures(inner: &Inner, hour: &Counts) -> Vec<snapshot::Failure> {
    let mut out: Vec<snapshot::Failure> = inner
        .reasons
        .used(&inner.total.failures)
        .into_iter()
        .map(|(i, reason)| snapshot::Failure {
            reason: reason.to_string(),
            since_start: inner.total.failures[i],
            last_hour: hour.failures[i],
            client_max_versions: OFFERED
                .iter()
                .zip(&inner.failure_offered[i])
                .filter(|(_, n)| **n > 0)
                .map(|(v, n)| (v.to_string(), *n))
                .collect(),
        })
        .collect();
    out.sort_by_key(|f| std::cmp::Reverse(f.since_start));
    out
}

fn listener_view(l: &ListenerEntry) -> snapshot::Listener {
    snapshot::Listener {
        address: l.facts.address.clone(),
        mode: l.facts.mode.to_string(),
        tls: l.facts.tls.to_string(),
        backend: l.facts.backend.clone(),
        connections: l.connections,
        smuggling_attempts: l.smuggling,
        starttls_injections: l.injections,
    }
}

fn certificate_view(c: &CertificateEntry, now: i64, warning: Duration) -> snapshot::Certificate {
    let left = c.facts.not_after - now;
    snapshot::Certificate {
        name: c.facts.name.clone(),
        names: c.facts.names.clone(),
        algorithm: c.facts.algorithm.to_string(),
        default: c.facts.default,
        not_after: c.facts.not_after,
        days_left: left.div_euclid(86_400),
        expiring: left < warning.as_secs() as i64,
        expired: left <= 0,
        handshakes: c.handshakes,
        reloads_success: c.reloads_success,
        reloads_failure: c.reloads_failure,
        last_reload: c.last_reload.clone(),
    }
}

fn backend_view(b: &BackendEntry) -> snapshot::Backend {
    snapshot::Backend {
        name: b.name.clone(),
        kind: if b.sink { "sink" } else { "servers" }.to_string(),
        identity: b.identity.to_string(),
        up: b.sink || b.servers.iter().any(|s| s.state == ServerState::Up),
        servers: b
            .servers
            .iter()
            .map(|s| snapshot::Server {
                address: s.address.clone(),
                state: s.state.as_str().to_string(),
                last_probe_at: s.last_probe_at,
                state_since: s.state_since,
                error: s.error.clone(),
                connect_failures: s.connect_failures,
            })
            .collect(),
    }
}

fn policy_view(p: &PolicyEntry) -> snapshot::PolicyRule {
    snapshot::PolicyRule {
        rule: p.rule.clone(),
        satisfied: p.counts[0],
        would_refuse: p.counts[1],
        refused: p.counts[2],
    }
}

// === pushes to the installed model (no-ops without one) ===

/// TLS policy (issue #13): one evaluation of a configured rule.
pub fn policy_evaluation(rule: &str, result: &'static str) {
    if let Some(s) = get() {
        s.policy_evaluation(rule, result);
    }
}

/// TLS policy: the configured rules, so that unused ones show at 0.
pub fn policy_rules<'a>(rules: impl IntoIterator<Item = &'a str>) {
    if let Some(s) = get() {
        s.policy_rules(rules);
    }
}

pub fn set_listeners(listeners: Vec<ListenerFacts>) {
    if let Some(s) = get() {
        s.set_listeners(listeners);
    }
}

pub fn set_certificates(certificates: Vec<CertificateFacts>, expiry_warning: Duration) {
    if let Some(s) = get() {
        s.set_certificates(certificates, expiry_warning);
    }
}

pub fn set_backends(backends: Vec<BackendFacts>) {
    if let Some(s) = get() {
        s.set_backends(backends);
    }
}

pub fn config_reloaded(ok: bool) {
    if let Some(s) = get() {
        s.config_reloaded(ok);
    }
}

#[cfg(test)]
mod tests;
