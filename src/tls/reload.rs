//! Certificate hot reload: files watched (notify) and polled, changes
//! debounced, each certificate validated on its own, the store swapped in
//! one step. A certificate that fails keeps its last good version — one bad
//! file never takes the others down — and is retried on every poll, so a
//! rotation refused for a reason that passes (a notBefore a few seconds
//! ahead) is still taken. Established sessions keep what they negotiated.
//! `SIGHUP` re-reads the whole config as well, and hands it to whoever
//! else applies reloadable settings (the TLS policy rules).
//!
//! The watcher's callback only asks for a reload; all the work happens in
//! the reload task (Vector's `config/watcher.rs` is the model).

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use crate::telemetry::metrics;
use crate::telemetry::status::{self, CertificateFacts};
use notify::Watcher;
use tokio::sync::mpsc;
use tracing::{error, info, warn};

use super::acceptor::TlsTerminator;
use super::load::{
    CertStamps, LoadContext, LoadedCert, fmt_time, load_files, now_unix, read_files,
};
use super::store::CertStore;
use super::validate::TrustAnchors;
use crate::config::{CertificateConfig, Config};

/// Why the reload task wakes up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReloadRequest {
    /// Something changed that concerns a certificate file.
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
    /// Stamps (metadata and digest, never the bytes: one file is the
    /// private key) of the files last validated, good or not.
    seen: Option<CertStamps>,
    /// The last attempt failed: try again on the next poll even if the
    /// files did not change (time passes, anchors change).
    retry: bool,
    /// When its coming expiry was last warned about.
    expiry_warned: Option<Instant>,
}

impl Tracked {
    /// Serves `l` from now on (it validated and fits with the others).
    fn take(&mut self, l: Arc<LoadedCert>) {
        info!(certificate = %self.config.name, serial = %l.serial, previous_serial = %self.good.serial, not_after = %fmt_time(l.not_after), "certificate reloaded");
        for w in &l.warnings {
            warn!(certificate = %self.config.name, "{w}");
        }
        self.good = l;
    }

    /// Whether the files' contents differ from what was last validated
    /// (or they became readable, or stopped being so). When both paths
    /// still lead to the very files last read, untouched (inode, size,
    /// mtime, change time), that is two `stat`s; otherwise, or when
    /// `full`, it reads and digests them (keeping nothing of them), and
    /// same contents under new metadata (a touch, a swap to identical
    /// bytes) become the new stamps, so the next poll is two `stat`s
    /// again. With 10,000 certificates, reading every file at each poll
    /// cost 7 % of a core at a 2 s interval.
    fn files_changed(&mut self, full: bool) -> bool {
        if !full
            && self
                .seen
                .as_ref()
                .is_some_and(|s| s.same_files(&self.config))
        {
            return false;
        }
        let now = read_files(&self.config).ok().map(|f| f.stamps);
        if !same_contents(self.seen.as_ref(), now.as_ref()) {
            return true;
        }
        if now.is_some() {
            self.seen = now;
        }
        false
    }
}

/// Same contents, by digest: metadata alone (a touch, a new inode holding
/// the same bytes) is no change. Two unreadable states are the same.
fn same_contents(seen: Option<&CertStamps>, now: Option<&CertStamps>) -> bool {
    match (seen, now) {
        (Some(a), Some(b)) => a.same_contents(b),
        (None, None) => true,
        _ => false,
    }
}

/// Paths whose changes concern the certificates; shared with the watcher
/// callback, which filters events with it.
type Interesting = Arc<RwLock<HashSet<PathBuf>>>;

/// Owns the reload state; runs as one task.
pub struct Reloader {
    config: Arc<Config>,
    terminator: TlsTerminator,
    anchors: TrustAnchors,
    certs: Vec<Tracked>,
    interesting: Interesting,
    watcher: Option<notify::RecommendedWatcher>,
    tx: mpsc::Sender<ReloadRequest>,
    rx: mpsc::Receiver<ReloadRequest>,
    /// Called with every config a SIGHUP applied.
    on_config: Option<ConfigHook>,
    /// Polls so far (every `FULL_READ_EVERY_POLLS`th reads every file).
    polls: u64,
}

/// Applies the reloadable settings of a newly loaded config.
pub type ConfigHook = Box<dyn Fn(&Config) + Send + Sync>;

impl std::fmt::Debug for Reloader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reloader")
            .field("certificates", &self.certs.len())
            .finish_non_exhaustive()
    }
}

/// The request channel, created before anything is loaded so that a SIGHUP
/// arriving during start-up is queued, not fatal.
pub fn channel() -> (mpsc::Sender<ReloadRequest>, mpsc::Receiver<ReloadRequest>) {
    mpsc::channel(64)
}

/// Longest a burst of events may postpone a reload, in debounce periods.
const MAX_DEBOUNCE_PERIODS: u32 = 10;
/// Every this many polls, the files are read and digested even where their
/// metadata says untouched: a bound on what a change the metadata could
/// not show (a write in place within one tick of the file system's clock,
/// keeping size and mtime) would cost.
const FULL_READ_EVERY_POLLS: u64 = 10;
/// Coming expiry of a served certificate is warned about once a day.
const EXPIRY_WARNING_EVERY: Duration = Duration::from_secs(24 * 3600);

impl Reloader {
    /// `terminator`'s store holds exactly the certificates of `config`, in
    /// order. The first `run` step re-reads every file, so a change between
    /// the initial load and now is not lost.
    pub fn new(
        config: Arc<Config>,
        terminator: TlsTerminator,
        anchors: TrustAnchors,
        (tx, rx): (mpsc::Sender<ReloadRequest>, mpsc::Receiver<ReloadRequest>),
    ) -> Self {
        let store = terminator.store();
        let certs = config
            .certificates
            .iter()
            .zip(store.certificates())
            .map(|(c, good)| Tracked {
                config: c.clone(),
                good: good.clone(),
                seen: None,
                retry: false,
                expiry_warned: None,
            })
            .collect();
        let mut r = Self {
            config,
            terminator,
            anchors,
            certs,
            interesting: Arc::default(),
            watcher: None,
            tx,
            rx,
            on_config: None,
            polls: 0,
        };
        r.rewatch();
        r
    }

    /// After each config reload that succeeds, `hook` gets the new config
    /// (a failed one changes nothing, here or there).
    pub fn on_config(mut self, hook: ConfigHook) -> Self {
        self.on_config = Some(hook);
        self
    }

    /// Recreates the watcher on the directories that matter now. Done after
    /// every reload: directories deleted and recreated, or swapped by a
    /// rename, lose their inotify watch, and symlinks move.
    fn rewatch(&mut self) {
        let (dirs, files) = self.paths_of_interest();
        if let Ok(mut set) = self.interesting.write() {
            *set = files;
        }
        if !self.config.reload.events {
            return;
        }
        self.watcher = None;
        let tx = self.tx.clone();
        let interesting = self.interesting.clone();
        let handler = move |res: notify::Result<notify::Event>| match res {
            Ok(ev) if ev.kind.is_access() => {}
            Ok(ev) => {
                let relevant = interesting
                    .read()
                    .map(|set| ev.paths.iter().any(|p| set.contains(p)))
                    .unwrap_or(true);
                if relevant {
                    // Full channel: a reload is already pending.
                    let _ = tx.try_send(ReloadRequest::Files);
                }
            }
            Err(e) => warn!(error = %e, "certificate watcher error; the poll still runs"),
        };
        let mut w = match notify::recommended_watcher(handler) {
            Ok(w) => w,
            Err(e) => {
                warn!(error = %e, "cannot watch certificate files; relying on the poll");
                return;
            }
        };
        for d in dirs {
            if let Err(e) = w.watch(&d, notify::RecursiveMode::NonRecursive) {
                // Gone for now (deleted, not yet recreated): its parent is
                // watched too, and the poll runs.
                tracing::debug!(dir = %d.display(), error = %e, "cannot watch directory");
            }
        }
        self.watcher = Some(w);
        // A change made while no watcher was listening (between the old
        // one's drop and this one's start) would be missed until the poll:
        // look once more now.
        if self.certs.iter_mut().any(|t| t.files_changed(true)) {
            let _ = self.tx.try_send(ReloadRequest::Files);
        }
    }

    /// Directories to watch, and the paths whose events matter: each file,
    /// every symlink on the way to it (k8s `..data`, a `current ->` link)
    /// and where it finally points (certbot's archive/), and the
    /// directories holding them, themselves seen from their parents.
    fn paths_of_interest(&self) -> (HashSet<PathBuf>, HashSet<PathBuf>) {
        let mut dirs = HashSet::new();
        let mut files = HashSet::new();
        let add = |p: &Path, dirs: &mut HashSet<PathBuf>, files: &mut HashSet<PathBuf>| {
            files.insert(p.to_path_buf());
            if let Some(d) = parent(p) {
                files.insert(d.clone());
                if let Some(g) = parent(&d) {
                    dirs.insert(g);
                }
                dirs.insert(d);
            }
        };
        for t in &self.certs {
            for p in [&t.config.chain, &t.config.key] {
                add(p, &mut dirs, &mut files);
                for link in symlinks_on_the_way(p) {
                    add(&link, &mut dirs, &mut files);
                }
                if let Ok(target) = std::fs::canonicalize(p) {
                    add(&target, &mut dirs, &mut files);
                }
            }
        }
        (dirs, files)
    }

    /// Runs until the request channel closes (never, in practice).
    pub async fn run(mut self) {
        tokio::task::block_in_place(|| self.reload_certificates());
        info!(certificates = self.certs.len(), events = self.config.reload.events, poll_interval = ?self.config.reload.poll_interval, "certificate reloader ready");
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
                    self.on_poll().await;
                    continue;
                }
            };
            let hangup = if first == ReloadRequest::Hangup {
                true
            } else {
                self.debounce().await
            };
            // File reads and X.509 work block: let the runtime move other
            // tasks off this worker meanwhile.
            tokio::task::block_in_place(|| {
                if hangup {
                    self.reload_config();
                } else {
                    self.reload_certificates();
                }
            });
        }
    }

    /// The poll: files whose contents changed (read twice, `debounce` apart,
    /// so a file being written over NFS is not taken half-written),
    /// certificates whose last attempt failed, and coming expiries.
    async fn on_poll(&mut self) {
        self.polls = self.polls.wrapping_add(1);
        let full = self.polls.is_multiple_of(FULL_READ_EVERY_POLLS);
        let changed = tokio::task::block_in_place(|| {
            self.certs
                .iter_mut()
                .any(|t| t.retry || t.files_changed(full))
        });
        if changed {
            tokio::time::sleep(self.config.reload.debounce).await;
            info!("certificate files changed or pending retry (poll)");
            tokio::task::block_in_place(|| self.reload_certificates());
        }
        self.warn_expiring();
    }

    /// Waits until no request came for `debounce` (at most
    /// `MAX_DEBOUNCE_PERIODS` of them: a busy neighbour file must not
    /// postpone reloads forever); returns whether a SIGHUP came meanwhile.
    async fn debounce(&mut self) -> bool {
        let quiet = self.config.reload.debounce;
        let give_up = tokio::time::Instant::now() + quiet * MAX_DEBOUNCE_PERIODS;
        loop {
            let until = (tokio::time::Instant::now() + quiet).min(give_up);
            match tokio::time::timeout_at(until, self.rx.recv()).await {
                Ok(Some(ReloadRequest::Hangup)) => return true,
                Ok(Some(ReloadRequest::Files)) if tokio::time::Instant::now() < give_up => {}
                _ => return false,
            }
        }
    }

    fn warn_expiring(&mut self) {
        let now = now_unix();
        let window = self.config.tls.expiry_warning.as_secs() as i64;
        for t in &mut self.certs {
            let left = t.good.not_after - now;
            if left < window
                && t.expiry_warned
                    .is_none_or(|w| w.elapsed() >= EXPIRY_WARNING_EVERY)
            {
                warn!(certificate = %t.config.name, not_after = %fmt_time(t.good.not_after), days_left = left / 86_400, "served certificate expires soon");
                t.expiry_warned = Some(Instant::now());
            }
        }
    }

    /// Reloads every certificate whose files changed or whose last attempt
    /// failed; swaps the store if any changed and the new set is
    /// consistent. Returns the result per certificate.
    pub fn reload_certificates(&mut self) -> Vec<ReloadResult> {
        let cx = LoadContext {
            anchors: &self.anchors,
            now: now_unix(),
            expiry_warning: self.config.tls.expiry_warning,
        };
        let mut results = Vec::with_capacity(self.certs.len());
        let mut candidates: Vec<Option<Arc<LoadedCert>>> = Vec::with_capacity(self.certs.len());
        for t in &mut self.certs {
            let files = match read_files(&t.config) {
                Ok(f) => f,
                Err(e) => {
                    if !t.retry {
                        error!(certificate = %t.config.name, error = %e, serving_serial = %t.good.serial, "certificate reload failed; keeping the last good version");
                    }
                    t.retry = true;
                    t.seen = None;
                    results.push(ReloadResult::Failure);
                    candidates.push(None);
                    continue;
                }
            };
            let same = same_contents(t.seen.as_ref(), Some(&files.stamps));
            if same && !t.retry {
                results.push(ReloadResult::Unchanged);
                candidates.push(None);
                continue;
            }
            let was_retry = t.retry && same;
            let outcome = load_files(&t.config, &files, &cx);
            t.seen = Some(files.stamps.clone());
            // The key's PEM text is zeroed here, before anything else runs.
            drop(files);
            match outcome {
                Ok(l) if l.key.cert == t.good.key.cert && l.serial == t.good.serial => {
                    t.retry = false;
                    results.push(ReloadResult::Unchanged);
                    candidates.push(None);
                }
                Ok(l) => {
                    t.retry = false;
                    results.push(ReloadResult::Success);
                    candidates.push(Some(Arc::new(l)));
                }
                Err(e) => {
                    // A retry of the same bytes failing the same way is not
                    // news: logged once per content.
                    if !was_retry {
                        error!(certificate = %t.config.name, error = %e, serving_serial = %t.good.serial, "certificate reload failed; keeping the last good version");
                    }
                    t.retry = true;
                    results.push(ReloadResult::Failure);
                    candidates.push(None);
                }
            }
        }
        if candidates.iter().any(Option::is_some) {
            self.commit(candidates, &mut results);
        }
        if results.contains(&ReloadResult::Success) {
            // A rotation may change a certificate's names.
            self.publish_status();
        }
        for (t, r) in self.certs.iter().zip(&results) {
            metrics::certificate_reload(&t.config.name, r.as_str());
            metrics::certificate_not_after(&t.config.name, t.good.not_after);
        }
        self.rewatch();
        results
    }

    /// Tells the status page what is served now.
    fn publish_status(&self) {
        let served: Vec<Arc<LoadedCert>> = self.certs.iter().map(|t| t.good.clone()).collect();
        publish_status(&served, &self.config);
    }

    /// Takes the new certificates that fit with the rest: each is tried on
    /// top of what is accepted so far, so one that clashes (two
    /// certificates of one key type for a name) is refused alone and cannot
    /// block the rotations of the others. Swaps the store once.
    fn commit(&mut self, candidates: Vec<Option<Arc<LoadedCert>>>, results: &mut [ReloadResult]) {
        let mut accepted: Vec<Arc<LoadedCert>> =
            self.certs.iter().map(|t| t.good.clone()).collect();
        // The usual case: every new certificate fits, and one store is built
        // for the whole batch, O(total) however many changed (a bulk rotation
        // of thousands). Only a clash falls back to one trial per candidate.
        let mut all = accepted.clone();
        for (slot, c) in all.iter_mut().zip(&candidates) {
            if let Some(l) = c {
                *slot = l.clone();
            }
        }
        if let Ok(s) = CertStore::new(all, self.config.tls.default_certificate) {
            for (t, c) in self.certs.iter_mut().zip(candidates) {
                if let Some(l) = c {
                    t.take(l);
                }
            }
            self.terminator.swap_store(s);
            return;
        }
        let mut store = None;
        for (i, c) in candidates.into_iter().enumerate() {
            let Some(l) = c else { continue };
            let mut trial = accepted.clone();
            trial[i] = l.clone();
            match CertStore::new(trial.clone(), self.config.tls.default_certificate) {
                Ok(s) => {
                    self.certs[i].take(l);
                    accepted = trial;
                    store = Some(s);
                }
                Err(e) => {
                    let t = &mut self.certs[i];
                    error!(certificate = %t.config.name, error = %e, serving_serial = %t.good.serial, "certificate reload failed; keeping the last good version");
                    t.retry = true;
                    results[i] = ReloadResult::Failure;
                }
            }
        }
        if let Some(s) = store {
            self.terminator.swap_store(s);
        }
    }

    /// SIGHUP: re-reads the config file; applies certificates and TLS
    /// settings, names what needs a restart, keeps everything on error.
    pub fn reload_config(&mut self) {
        let ok = self.apply_config();
        status::config_reloaded(ok);
        if ok {
            // New certificates get their expiry at once, not at their
            // first file change.
            for t in &self.certs {
                metrics::certificate_not_after(&t.config.name, t.good.not_after);
            }
            self.publish_status();
        }
    }

    /// `reload_config`'s work; false when the reload was abandoned.
    fn apply_config(&mut self) -> bool {
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
                return false;
            }
        };
        let needs_restart = restart_only_changes(&self.config, &new);
        if !needs_restart.is_empty() {
            warn!(changed = %needs_restart.join(", "), "these settings changed but only take effect after a restart");
        }
        let anchors = match CertStore::load_anchors(&new) {
            Ok(a) => a,
            Err(errors) => {
                error!("{errors}; keeping the previous certificates");
                return false;
            }
        };
        let cx = LoadContext {
            anchors: &anchors,
            now: now_unix(),
            expiry_warning: new.tls.expiry_warning,
        };
        let mut certs = Vec::with_capacity(new.certificates.len());
        for c in &new.certificates {
            // The same certificate under a new name, or new files under the
            // same name, keeps its last good version if the files are bad.
            let previous = self
                .certs
                .iter()
                .find(|t| t.config.name == c.name)
                .or_else(|| {
                    self.certs
                        .iter()
                        .find(|t| t.config.chain == c.chain && t.config.key == c.key)
                });
            let files = read_files(c);
            let loaded = files
                .as_ref()
                .map_err(|e| e.to_string())
                .and_then(|f| load_files(c, f, &cx).map_err(|e| e.to_string()));
            let seen = files.ok().map(|f| f.stamps);
            match (loaded, previous) {
                (Ok(l), _) => {
                    for w in &l.warnings {
                        warn!(certificate = %c.name, "{w}");
                    }
                    certs.push(Tracked {
                        config: c.clone(),
                        good: Arc::new(l),
                        seen,
                        retry: false,
                        expiry_warned: None,
                    });
                }
                (Err(e), Some(p)) => {
                    error!(certificate = %c.name, error = %e, serving_serial = %p.good.serial, "certificate reload failed; keeping the last good version");
                    certs.push(Tracked {
                        config: c.clone(),
                        good: p.good.clone(),
                        seen,
                        retry: true,
                        expiry_warned: None,
                    });
                }
                (Err(e), None) => {
                    error!(certificate = %c.name, error = %e, "new certificate cannot be loaded; config reload abandoned");
                    return false;
                }
            }
        }
        let good: Vec<Arc<LoadedCert>> = certs.iter().map(|t| t.good.clone()).collect();
        let store = match CertStore::new(good, new.tls.default_certificate) {
            Ok(s) => s,
            Err(e) => {
                error!(error = %e, "config reload abandoned");
                return false;
            }
        };
        match self.terminator.apply_settings(
            new.tls.min_version,
            new.tls.session_tickets,
            new.tls.post_quantum,
        ) {
            Ok(true) => info!("TLS settings applied"),
            Ok(false) => {}
            Err(e) => {
                error!(error = %e, "cannot apply the new TLS settings; config reload abandoned");
                return false;
            }
        }
        self.terminator.swap_store(store);
        self.certs = certs;
        self.anchors = anchors;
        // Keep the reload settings the task runs with (they need a restart).
        let mut new = new;
        new.reload = self.config.reload;
        self.config = Arc::new(new);
        self.rewatch();
        if let Some(hook) = &self.on_config {
            hook(&self.config);
        }
        info!(certificates = self.certs.len(), "config reloaded");
        true
    }
}

/// Tells the status page which certificates are served: `served` holds
/// the certificates of `config`, in its order.
pub fn publish_status(served: &[Arc<LoadedCert>], config: &Config) {
    let facts = served
        .iter()
        .enumerate()
        .map(|(i, c)| CertificateFacts {
            name: c.name.clone(),
            names: c.names.clone(),
            algorithm: c.algorithm.as_str(),
            default: i == config.tls.default_certificate,
            not_after: c.not_after,
        })
        .collect();
    status::set_certificates(facts, config.tls.expiry_warning);
}

fn parent(p: &Path) -> Option<PathBuf> {
    let d = p.parent()?;
    Some(if d.as_os_str().is_empty() {
        PathBuf::from(".")
    } else {
        d.to_path_buf()
    })
}

/// Every symlink met while resolving `p`, following links in links
/// (bounded), e.g. `…/tls.crt` and `…/..data` for a Kubernetes secret.
fn symlinks_on_the_way(p: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![p.to_path_buf()];
    while let Some(path) = todo.pop() {
        if out.len() > 32 {
            break;
        }
        let mut prefix = PathBuf::new();
        for comp in path.components() {
            prefix.push(comp);
            let Ok(meta) = std::fs::symlink_metadata(&prefix) else {
                break;
            };
            if meta.file_type().is_symlink() && !out.contains(&prefix) {
                out.push(prefix.clone());
                if let Ok(target) = std::fs::read_link(&prefix) {
                    let resolved = match parent(&prefix) {
                        Some(d) if target.is_relative() => d.join(&target),
                        _ => target,
                    };
                    let rest: PathBuf = path
                        .strip_prefix(&prefix)
                        .map(Path::to_path_buf)
                        .unwrap_or_default();
                    todo.push(resolved.join(rest));
                }
                break;
            }
        }
    }
    out
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::SystemTime;

    fn config(dir: &Path) -> CertificateConfig {
        CertificateConfig {
            name: "c".into(),
            chain: dir.join("chain.pem"),
            key: dir.join("key.pem"),
            key_path: "certificate[0]".into(),
            chain_at: Default::default(),
            key_at: Default::default(),
            chain_check: Default::default(),
        }
    }

    fn stamps(c: &CertificateConfig) -> CertStamps {
        read_files(c).unwrap().stamps
    }

    fn set_mtime(path: &Path, t: SystemTime) {
        std::fs::File::options()
            .write(true)
            .open(path)
            .unwrap()
            .set_modified(t)
            .unwrap();
    }

    #[test]
    fn a_rewrite_keeping_size_and_mtime_is_a_change() {
        let dir = tempfile::tempdir().unwrap();
        let c = config(dir.path());
        std::fs::write(&c.chain, "chain").unwrap();
        std::fs::write(&c.key, "key AAAA").unwrap();
        let seen = stamps(&c);
        // In place (same inode), same length, mtime put back.
        std::fs::write(&c.key, "key BBBB").unwrap();
        set_mtime(&c.key, seen.key.modified.unwrap());
        let now = stamps(&c);
        assert_eq!(
            (now.key.len, now.key.modified, now.key.ino, now.key.dev),
            (seen.key.len, seen.key.modified, seen.key.ino, seen.key.dev),
            "the metadata must not tell the rewrite apart"
        );
        assert!(!same_contents(Some(&seen), Some(&now)));
    }

    #[test]
    fn a_touch_or_a_swap_to_identical_bytes_is_no_change() {
        let dir = tempfile::tempdir().unwrap();
        let c = config(dir.path());
        std::fs::write(&c.chain, "chain").unwrap();
        std::fs::write(&c.key, "key AAAA").unwrap();
        let seen = stamps(&c);
        set_mtime(&c.key, SystemTime::now() + Duration::from_secs(3600));
        let tmp = dir.path().join("chain.new");
        std::fs::write(&tmp, "chain").unwrap();
        std::fs::rename(&tmp, &c.chain).unwrap();
        let now = stamps(&c);
        assert_ne!(now.key.modified, seen.key.modified);
        assert_ne!(now.chain.ino, seen.chain.ino);
        assert!(same_contents(Some(&seen), Some(&now)));
    }

    /// The poll's shortcut: two `stat`s say "untouched" only for the very
    /// files read, unchanged; a rename over one, a touch, or a write in
    /// place keeping size and mtime (once the file system's clock has
    /// moved on, which the change time then shows) make it read.
    #[test]
    fn the_poll_reads_only_files_whose_inode_or_times_moved() {
        let dir = tempfile::tempdir().unwrap();
        let c = config(dir.path());
        std::fs::write(&c.chain, "chain").unwrap();
        std::fs::write(&c.key, "key AAAA").unwrap();
        let seen = stamps(&c);
        assert!(seen.same_files(&c), "untouched");

        // A write in place, same size, mtime put back: the change time
        // moves as soon as the clock has ticked (tried until it has).
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        loop {
            std::fs::write(&c.key, "key BBBB").unwrap();
            set_mtime(&c.key, seen.key.modified.unwrap());
            if stamps(&c).key.changed != seen.key.changed {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "ctime never moved");
        }
        assert!(!seen.same_files(&c), "a rewrite keeping size and mtime");

        let seen = stamps(&c);
        let tmp = dir.path().join("chain.new");
        std::fs::write(&tmp, "chain").unwrap();
        std::fs::rename(&tmp, &c.chain).unwrap();
        assert!(!seen.same_files(&c), "a rename over the chain");

        let seen = stamps(&c);
        set_mtime(&c.chain, SystemTime::now() + Duration::from_secs(3600));
        assert!(!seen.same_files(&c), "a touch");

        let seen = stamps(&c);
        std::fs::remove_file(&c.key).unwrap();
        assert!(!seen.same_files(&c), "a missing key");
    }

    #[test]
    fn becoming_readable_or_unreadable_is_a_change() {
        let dir = tempfile::tempdir().unwrap();
        let c = config(dir.path());
        std::fs::write(&c.chain, "chain").unwrap();
        std::fs::write(&c.key, "key").unwrap();
        let s = stamps(&c);
        assert!(!same_contents(None, Some(&s)));
        assert!(!same_contents(Some(&s), None));
        assert!(same_contents(None, None));
    }

    #[test]
    fn the_digest_is_sha256_of_the_contents() {
        let dir = tempfile::tempdir().unwrap();
        let c = config(dir.path());
        std::fs::write(&c.chain, "abc").unwrap();
        std::fs::write(&c.key, "").unwrap();
        let s = stamps(&c);
        let hex = |d: &[u8]| d.iter().map(|b| format!("{b:02x}")).collect::<String>();
        assert_eq!(
            hex(&s.chain.digest),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(
            hex(&s.key.digest),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }
}
