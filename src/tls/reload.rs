//! Certificate hot reload: files watched (notify) and polled, changes
//! debounced, each certificate validated on its own, the store swapped in
//! one step. A certificate that fails keeps its last good version — one bad
//! file never takes the others down — and established sessions keep what
//! they negotiated. `SIGHUP` re-reads the whole config as well.
//!
//! The watcher's callback only asks for a reload; all the work happens in
//! the reload task (Vector's `config/watcher.rs` is the model).

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use notify::Watcher;
use tokio::sync::mpsc;
use tracing::{error, info, warn};

use super::acceptor::TlsTerminator;
use super::load::{LoadContext, LoadedCert, fmt_time, load_certificate, now_unix};
use super::store::CertStore;
use super::validate::TrustAnchors;
use crate::config::{CertificateConfig, Config};

/// Why the reload task wakes up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReloadRequest {
    /// Something changed in a watched directory.
    Files,
    /// SIGHUP: re-read the config file too.
    Hangup,
}

/// The result of one reload of one certificate (a metric label later).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReloadResult {
    Success,
    Failure,
    Unchanged,
}

impl ReloadResult {
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Success => "success",
            Self::Failure => "failure",
            Self::Unchanged => "unchanged",
        }
    }
}

/// One certificate as the reloader tracks it.
#[derive(Debug)]
struct Tracked {
    config: CertificateConfig,
    /// What is served now.
    good: Arc<LoadedCert>,
    /// The file contents last looked at (good or not), to notice changes.
    seen: Option<(Vec<u8>, Vec<u8>)>,
}

/// Owns the reload state; runs as one task.
pub struct Reloader {
    config: Arc<Config>,
    terminator: TlsTerminator,
    anchors: TrustAnchors,
    certs: Vec<Tracked>,
    watched: HashSet<PathBuf>,
    watcher: Option<notify::RecommendedWatcher>,
    tx: mpsc::Sender<ReloadRequest>,
    rx: mpsc::Receiver<ReloadRequest>,
}

impl std::fmt::Debug for Reloader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reloader")
            .field("certificates", &self.certs.len())
            .finish_non_exhaustive()
    }
}

fn read_pair(c: &CertificateConfig) -> Option<(Vec<u8>, Vec<u8>)> {
    Some((std::fs::read(&c.chain).ok()?, std::fs::read(&c.key).ok()?))
}

impl Reloader {
    /// `store` holds exactly the certificates of `config`, in order.
    pub fn new(config: Arc<Config>, terminator: TlsTerminator, anchors: TrustAnchors) -> Self {
        let store = terminator.store();
        let certs = config
            .certificates
            .iter()
            .zip(store.certificates())
            .map(|(c, good)| Tracked {
                config: c.clone(),
                good: good.clone(),
                seen: read_pair(c),
            })
            .collect();
        let (tx, rx) = mpsc::channel(64);
        let mut r = Self {
            config,
            terminator,
            anchors,
            certs,
            watched: HashSet::new(),
            watcher: None,
            tx,
            rx,
        };
        if r.config.reload.events {
            r.start_watcher();
        }
        r
    }

    /// A handle to ask for reloads (SIGHUP).
    pub fn requests(&self) -> mpsc::Sender<ReloadRequest> {
        self.tx.clone()
    }

    fn start_watcher(&mut self) {
        let tx = self.tx.clone();
        let handler = move |res: notify::Result<notify::Event>| match res {
            Ok(ev) if ev.kind.is_access() => {}
            Ok(_) => {
                // Full channel: a reload is already pending.
                let _ = tx.try_send(ReloadRequest::Files);
            }
            Err(e) => warn!(error = %e, "certificate watcher error; the poll still runs"),
        };
        match notify::recommended_watcher(handler) {
            Ok(w) => {
                self.watcher = Some(w);
                self.watch_directories();
            }
            Err(e) => warn!(error = %e, "cannot watch certificate files; relying on the poll"),
        }
    }

    /// Watches the directory of every file, and of its symlink target
    /// (certbot's archive/), adding directories as targets move.
    fn watch_directories(&mut self) {
        let Some(w) = self.watcher.as_mut() else {
            return;
        };
        let mut dirs = HashSet::new();
        for t in &self.certs {
            for p in [&t.config.chain, &t.config.key] {
                if let Some(d) = parent(p) {
                    dirs.insert(d);
                }
                if let Some(d) = std::fs::canonicalize(p).ok().as_deref().and_then(parent) {
                    dirs.insert(d);
                }
            }
        }
        for d in dirs {
            if self.watched.contains(&d) {
                continue;
            }
            match w.watch(&d, notify::RecursiveMode::NonRecursive) {
                Ok(()) => {
                    self.watched.insert(d);
                }
                Err(e) => {
                    warn!(dir = %d.display(), error = %e, "cannot watch directory; relying on the poll")
                }
            }
        }
    }

    /// Runs until the request channel closes (never, in practice).
    pub async fn run(mut self) {
        let mut poll = tokio::time::interval(self.config.reload.poll_interval);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        poll.tick().await;
        loop {
            let first = tokio::select! {
                r = self.rx.recv() => match r {
                    Some(r) => r,
                    None => return,
                },
                                _ = poll.tick() => {
                    // File reads and PEM/X.509 work block: let the runtime
                    // move other tasks off this worker meanwhile.
                    tokio::task::block_in_place(|| {
                        if self.certs.iter().any(|t| read_pair(&t.config) != t.seen) {
                            info!("certificate files changed (poll)");
                            self.reload_certificates();
                        }
                    });
                    continue;
                }
            };
            let hangup = self.debounce(first).await;
            tokio::task::block_in_place(|| {
                if hangup {
                    self.reload_config();
                } else {
                    self.reload_certificates();
                }
            });
        }
    }

    /// Waits until no request came for `debounce`, so a half-written file is
    /// not loaded; returns whether a SIGHUP was among the requests.
    async fn debounce(&mut self, first: ReloadRequest) -> bool {
        let mut hangup = first == ReloadRequest::Hangup;
        let quiet = self.config.reload.debounce;
        loop {
            match tokio::time::timeout(quiet, self.rx.recv()).await {
                Ok(Some(r)) => hangup |= r == ReloadRequest::Hangup,
                Ok(None) | Err(_) => return hangup,
            }
        }
    }

    /// Reloads every certificate whose files changed; swaps the store if
    /// any did. Returns the result per certificate.
    pub fn reload_certificates(&mut self) -> Vec<ReloadResult> {
        let cx = LoadContext {
            anchors: &self.anchors,
            now: now_unix(),
            expiry_warning: self.config.tls.expiry_warning,
        };
        let mut results = Vec::with_capacity(self.certs.len());
        for t in &mut self.certs {
            let now_seen = read_pair(&t.config);
            if now_seen.is_some() && now_seen == t.seen {
                results.push(ReloadResult::Unchanged);
                continue;
            }
            t.seen = now_seen;
            match load_certificate(&t.config, &cx) {
                Ok(l) if l.key.cert == t.good.key.cert && l.serial == t.good.serial => {
                    results.push(ReloadResult::Unchanged);
                }
                Ok(l) => {
                    info!(
                        certificate = %t.config.name,
                        serial = %l.serial,
                        previous_serial = %t.good.serial,
                        not_after = %fmt_time(l.not_after),
                        "certificate reloaded"
                    );
                    for w in &l.warnings {
                        warn!(certificate = %t.config.name, "{w}");
                    }
                    t.good = Arc::new(l);
                    results.push(ReloadResult::Success);
                }
                Err(e) => {
                    error!(
                        certificate = %t.config.name,
                        error = %e,
                        serving_serial = %t.good.serial,
                        "certificate reload failed; keeping the last good version"
                    );
                    results.push(ReloadResult::Failure);
                }
            }
        }
        if results.contains(&ReloadResult::Success) {
            self.publish();
        }
        self.watch_directories();
        results
    }

    /// Builds a store from the good certificates and swaps it in.
    fn publish(&mut self) -> bool {
        let good: Vec<Arc<LoadedCert>> = self.certs.iter().map(|t| t.good.clone()).collect();
        match CertStore::new(good, self.config.tls.default_certificate) {
            Ok(store) => {
                self.terminator.swap_store(store);
                true
            }
            Err(e) => {
                error!(error = %e, "new certificates conflict; still serving the previous set");
                false
            }
        }
    }

    /// SIGHUP: re-reads the config file; applies certificates and TLS
    /// settings, names what needs a restart, keeps everything on error.
    pub fn reload_config(&mut self) {
        info!(config = %self.config.path.display(), "SIGHUP: reloading the config and certificates");
        let new = match Config::load(&self.config.path) {
            Ok(c) => c,
            Err(errors) => {
                for e in &errors.0 {
                    error!("{e}");
                }
                error!(
                    "config reload failed; still running on the previous config and certificates"
                );
                return;
            }
        };
        let needs_restart = restart_only_changes(&self.config, &new);
        if !needs_restart.is_empty() {
            warn!(
                changed = %needs_restart.join(", "),
                "these settings changed but only take effect after a restart"
            );
        }
        let anchors = match CertStore::load_anchors(&new) {
            Ok(a) => a,
            Err(errors) => {
                error!("{errors}; keeping the previous certificates");
                return;
            }
        };
        let cx = LoadContext {
            anchors: &anchors,
            now: now_unix(),
            expiry_warning: new.tls.expiry_warning,
        };
        let mut certs = Vec::with_capacity(new.certificates.len());
        for c in &new.certificates {
            let previous = self.certs.iter().find(|t| t.config.name == c.name);
            match (load_certificate(c, &cx), previous) {
                (Ok(l), _) => certs.push(Tracked {
                    config: c.clone(),
                    good: Arc::new(l),
                    seen: read_pair(c),
                }),
                (Err(e), Some(p)) => {
                    error!(certificate = %c.name, error = %e, "certificate reload failed; keeping the last good version");
                    certs.push(Tracked {
                        config: c.clone(),
                        good: p.good.clone(),
                        seen: read_pair(c),
                    });
                }
                (Err(e), None) => {
                    error!(certificate = %c.name, error = %e, "new certificate cannot be loaded; config reload abandoned");
                    return;
                }
            }
        }
        let good: Vec<Arc<LoadedCert>> = certs.iter().map(|t| t.good.clone()).collect();
        let store = match CertStore::new(good, new.tls.default_certificate) {
            Ok(s) => s,
            Err(e) => {
                error!(error = %e, "config reload abandoned");
                return;
            }
        };
        match self
            .terminator
            .apply_settings(new.tls.min_version, new.tls.session_tickets)
        {
            Ok(true) => info!("TLS settings applied"),
            Ok(false) => {}
            Err(e) => {
                error!(error = %e, "cannot apply the new TLS settings; config reload abandoned");
                return;
            }
        }
        self.terminator.swap_store(store);
        self.certs = certs;
        self.anchors = anchors;
        self.config = Arc::new(new);
        self.watch_directories();
        info!(certificates = self.certs.len(), "config reloaded");
    }
}

fn parent(p: &Path) -> Option<PathBuf> {
    let d = p.parent()?;
    Some(if d.as_os_str().is_empty() {
        PathBuf::from(".")
    } else {
        d.to_path_buf()
    })
}

/// Settings a reload cannot apply to a running proxy.
fn restart_only_changes(old: &Config, new: &Config) -> Vec<&'static str> {
    let mut out = Vec::new();
    let listeners = |c: &Config| -> Vec<String> {
        c.listeners
            .iter()
            .map(|l| {
                format!(
                    "{} {} {} {}",
                    l.address,
                    l.mode.as_str(),
                    l.tls.as_str(),
                    c.backends[l.backend].name
                )
            })
            .collect()
    };
    if listeners(old) != listeners(new) {
        out.push("listeners");
    }
    if format!("{:?}", old.backends) != format!("{:?}", new.backends) {
        out.push("backends");
    }
    if old.hostname != new.hostname {
        out.push("hostname");
    }
    if format!("{:?}", old.limits) != format!("{:?}", new.limits) {
        out.push("limits");
    }
    if format!("{:?}", old.timeouts) != format!("{:?}", new.timeouts) {
        out.push("timeouts");
    }
    if format!("{:?}{:?}", old.log, old.metrics) != format!("{:?}{:?}", new.log, new.metrics) {
        out.push("log/metrics");
    }
    if format!("{:?}", old.reload) != format!("{:?}", new.reload) {
        out.push("reload");
    }
    out
}

/// Forwards SIGHUP to the reload task. Registered before it returns.
pub fn forward_hangups(tx: mpsc::Sender<ReloadRequest>) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let Ok(mut hup) = signal(SignalKind::hangup()) else {
            warn!("cannot install the SIGHUP handler: SIGHUP will stop the proxy");
            return;
        };
        tokio::spawn(async move {
            while hup.recv().await.is_some() {
                let _ = tx.send(ReloadRequest::Hangup).await;
            }
        });
    }
    #[cfg(not(unix))]
    let _ = tx;
}
