//! `starttls-proxy run`: load, bind, serve until SIGTERM/SIGINT.
//!
//! Start-up order: load and check everything (config, certificates,
//! backends), then bind every socket, and only then start what runs in the
//! background (certificate reloader, health probes, metrics server, SIGHUP
//! forwarding). A port in use therefore ends the process before any task
//! exists that the runtime's shutdown could catch mid-step (the reloader's
//! first reload runs in `block_in_place` and panics if it resumes into a
//! runtime that is going away). On the way out, every background task is
//! cancelled and awaited before the runtime is dropped, for the same reason.

use std::future::Future;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio::task::{AbortHandle, JoinHandle};
use tracing::{debug, error, info, warn};

use crate::backend::Backend;
use crate::backend::route::{Routes, SharedRoutes};
use crate::backend::xclient::Dns;
use crate::config::Config;
use crate::listener::{self, ConnectionTable};
use crate::policy::{Policy, SharedPolicy};
use crate::session::ListenerContext;
use crate::telemetry;
use crate::telemetry::http::Readiness;
use crate::telemetry::status::{self, BackendFacts, ListenerFacts};
use crate::tls::reload::{self, ReloadRequest, Reloader};
use crate::tls::validate::TrustAnchors;
use crate::tls::{CertStore, TlsTerminator};

/// Exit code for anything wrong in the config or the environment it names
/// (bad file, certificate, port in use): the same as `check`'s errors.
const EXIT_CONFIG: u8 = 2;

/// Why `run` stops when started as root without `--allow-root`.
const REFUSE_ROOT: &str = "starttls-proxy: refusing to run as root: the proxy needs no privilege \
but binding ports below 1024. Run it as an unprivileged user with CAP_NET_BIND_SERVICE \
(deploy/systemd/starttls-proxy.service does), or pass --allow-root \
(or set STARTTLS_PROXY_ALLOW_ROOT=true) to run as root anyway.";

pub fn main(path: &std::path::Path, args: super::RunArgs) -> ExitCode {
    if rustix::process::geteuid().is_root() && !args.allow_root {
        eprintln!("{REFUSE_ROOT}");
        return ExitCode::from(EXIT_CONFIG);
    }
    let log_format = args.log_format;
    let mut config = match Config::load(path) {
        Ok(c) => c,
        Err(errors) => {
            eprintln!("{errors}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    if let Some(f) = log_format {
        config.log.format = f;
    }
    telemetry::init_logs(&config.log);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            error!(error = %e, "cannot start the async runtime");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(run(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Exit) => ExitCode::from(EXIT_CONFIG),
    }
}

/// Start-up failed; the reason has been printed (stderr and log).
struct Exit;

async fn run(config: Config) -> Result<(), Exit> {
    // The SIGHUP handler is installed first, so that a `systemctl reload`
    // right after start is queued instead of killing the process; nothing
    // reads it (no task) until the reloader starts.
    let hangups = install_hangup_handler();
    let (anchors, tls) = load_tls(&config)?;
    for w in crate::cli::check::route_warnings(&config, &tls.store()) {
        warn!("{w}");
    }
    let backends = prepare_backends(&config)?;
    let metrics = match config.metrics {
        Some(_) => Some(install_metrics()?),
        None => None,
    };
    if metrics.is_some() {
        // Before anything records: the status page counts from here.
        status::install(&config.hostname, config.tls.expiry_warning);
        reload::publish_status(tls.store().certificates(), &config);
        status::set_backends(backend_facts(&backends));
    }
    let sockets = bind_all(&config).await?;
    let started = std::time::Instant::now();
    match tokio::task::block_in_place(crate::tls::provider::warm_up_random) {
        Ok(()) => debug!(
            duration_ms = started.elapsed().as_millis(),
            "random generator seeded"
        ),
        Err(e) => {
            warn!(error = ?e, "cannot seed the random generator yet; handshakes will try again")
        }
    }
    // After the recorder: the rules' counters are registered with it.
    let policy = crate::policy::shared(&config.tls_policy);
    log_policy(&config);
    let routes = Routes::shared(&config.routes);
    log_routes(&config);

    let config = Arc::new(config);
    let readiness = Arc::new(Readiness::default());
    let mut background = Background::default();
    if let (Some(handle), Some(socket)) = (metrics, sockets.metrics) {
        background.spawn(telemetry::http::serve(socket, handle, readiness.clone()));
    }
    for c in tls.store().certificates() {
        telemetry::metrics::certificate_not_after(&c.name, c.not_after);
    }
    let channel = reload::channel();
    if let Some(hup) = hangups {
        background.spawn(forward_hangups(hup, channel.0.clone()));
    }
    let reloader =
        Reloader::new(config.clone(), tls.clone(), anchors, channel).on_config(Box::new({
            let policy = policy.clone();
            let routes = routes.clone();
            let running: Vec<String> = backends.iter().map(|b| b.name.clone()).collect();
            move |c: &Config| {
                policy.store(Arc::new(Policy::new(&c.tls_policy)));
                log_policy(c);
                match Routes::for_running(c, &running) {
                    Ok(r) => {
                        routes.store(Arc::new(r));
                        log_routes(c);
                    }
                    Err(e) => {
                        error!(error = %e, "routes not reloaded: the previous routes stay in force");
                    }
                }
            }
        }));
    background.spawn_reporting_panic(
        reloader.run(),
        "the certificate reload task died: certificates no longer reload; restart the proxy",
    );
    for b in &backends {
        background.spawn(b.clone().probe_loop());
    }
    readiness.set_backends(backends.clone());

    serve(
        &config,
        sockets.listeners,
        &backends,
        &tls,
        &readiness,
        &policy,
        &routes,
    )
    .await;
    background.stop().await;
    info!("stopped");
    Ok(())
}

/// Serves on the bound listeners until SIGTERM/SIGINT, then drains.
async fn serve(
    config: &Config,
    listeners: Vec<(TcpListener, SocketAddr)>,
    backends: &[Arc<Backend>],
    tls: &TlsTerminator,
    readiness: &Readiness,
    policy: &SharedPolicy,
    routes: &SharedRoutes,
) {
    let all: Arc<[Arc<Backend>]> = backends.iter().cloned().collect();
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let table = Arc::new(ConnectionTable::new(config.limits.max_connections));
    let mut tasks = Vec::new();
    status::set_listeners(
        listeners
            .iter()
            .zip(&config.listeners)
            .map(|((_, bound), l)| ListenerFacts {
                address: bound.to_string(),
                mode: l.mode.as_str(),
                tls: l.tls.as_str(),
                backend: backends[l.backend].name.clone(),
            })
            .collect(),
    );
    for ((socket, bound), l) in listeners.into_iter().zip(&config.listeners) {
        info!(address = %bound, mode = l.mode.as_str(), tls = l.tls.as_str(), backend = %backends[l.backend].name, "listener bound");
        let ctx = Arc::new(ListenerContext {
            hostname: config.hostname.clone(),
            address: bound,
            label: Arc::from(bound.to_string()),
            mode: l.mode,
            tls_policy: l.tls,
            backend: backends[l.backend].clone(),
            backends: all.clone(),
            routes: routes.clone(),
            tls: tls.clone(),
            limits: config.limits,
            timeouts: config.timeouts,
            proxy_protocol: l.proxy_protocol.clone(),
            stress: table.stress(),
            policy: policy.clone(),
        });
        tasks.push(tokio::spawn(listener::serve(
            socket,
            ctx,
            table.clone(),
            shutdown_rx.clone(),
        )));
    }
    readiness.set_listening();
    info!(hostname = %config.hostname, listeners = tasks.len(), "starttls-proxy ready");

    crate::shutdown::signal().await;
    readiness.set_draining();
    info!(active = table.active(), grace = ?config.timeouts.shutdown_grace, "shutting down: no new connections, draining sessions");
    let _ = shutdown_tx.send(true);
    for t in tasks {
        let _ = t.await;
    }
    // Every step of a session ends by itself at the latest when the grace
    // is over (421 at the next command boundary, or at the grace for one
    // mid-transaction, mid-handshake or mid-connect); the margin lets those
    // last replies go out. Only a task still running after that is cut.
    let margin = std::time::Duration::from_secs(2);
    let tasks = table.tasks();
    tasks.close();
    if tokio::time::timeout(config.timeouts.shutdown_grace + margin, tasks.wait())
        .await
        .is_err()
    {
        warn!(
            active = table.active(),
            tasks = tasks.len(),
            "shutdown grace over, closing the remaining sessions"
        );
    }
}

// === start-up steps ===

/// One line per TLS policy rule in force (at start and after SIGHUP).
fn log_policy(config: &Config) {
    for r in &config.tls_policy {
        info!(
            policy = %r.name,
            mode = r.mode.as_str(),
            require = r.require.as_str(),
            reply = r.reply.as_str(),
            stage = crate::policy::Stage::of(r).as_str(),
            "tls policy rule"
        );
    }
    info!(rules = config.tls_policy.len(), "tls policy loaded");
}

/// One line per route in force (at start and after SIGHUP).
fn log_routes(config: &Config) {
    for r in &config.routes {
        let backend = config
            .backends
            .get(r.backend)
            .map_or("", |b| b.name.as_str());
        info!(route = %r.key_path, sni = %r.sni.join(","), backend, "route");
    }
    info!(routes = config.routes.len(), "routes loaded");
}

/// Trust anchors, every certificate, and the TLS configuration built on them.
fn load_tls(config: &Config) -> Result<(TrustAnchors, TlsTerminator), Exit> {
    let loaded = CertStore::load_anchors(config).and_then(|anchors| {
        let store = CertStore::load(config, &anchors)?;
        Ok((anchors, store))
    });
    let (anchors, store) = loaded.map_err(|errors| {
        eprintln!("{errors}");
        Exit
    })?;
    for c in store.certificates() {
        info!(
            certificate = %c.name,
            names = %c.names.join(","),
            algorithm = c.algorithm.as_str(),
            serial = %c.serial,
            not_after = %crate::tls::load::fmt_time(c.not_after),
            "certificate loaded"
        );
        for w in &c.warnings {
            warn!(certificate = %c.name, "{w}");
        }
    }
    match TlsTerminator::new(
        store,
        config.tls.min_version,
        config.tls.session_tickets,
        config.tls.post_quantum,
    ) {
        Ok(t) => Ok((anchors, t)),
        Err(e) => {
            error!(error = %e, "cannot build the TLS configuration");
            Err(Exit)
        }
    }
}

/// Every backend, ready to connect (the sink's Maildir created); nothing
/// is started.
fn prepare_backends(config: &Config) -> Result<Vec<Arc<Backend>>, Exit> {
    let xclient = |b: &crate::config::BackendConfig| b.identity == crate::config::Identity::Xclient;
    let dns = if config.backends.iter().any(xclient) {
        match Dns::new(config.dns_servers.as_deref()) {
            Ok(d) => Some(d),
            Err(e) => {
                error!(error = %e, "cannot set up DNS for the XCLIENT NAME lookup");
                eprintln!(
                    "{}: dns: cannot set up the resolver: {e}",
                    config.path.display()
                );
                return Err(Exit);
            }
        }
    } else {
        None
    };
    let mut backends = Vec::new();
    for b in &config.backends {
        if let Some(t) = &b.tls {
            if t.verify {
                info!(backend = %b.name, tls = t.mode.as_str(), ca = %t.ca.as_ref().map_or("system roots".to_string(), |p| p.display().to_string()), name = t.name.as_deref().unwrap_or("the server's address"), "backend tls");
            } else {
                warn!(backend = %b.name, tls = t.mode.as_str(), "backend tls: tls_verify = false: the backend's certificate is NOT verified (anyone on the path can impersonate it)");
            }
        }
        let dns = xclient(b).then(|| dns.clone()).flatten();
        match Backend::new(b, &config.hostname, config.timeouts.backend_connect, dns) {
            Ok(b) => backends.push(Arc::new(b)),
            Err(e) => {
                error!(backend = %b.name, error = %e, "cannot prepare backend");
                let relative = match &b.target {
                    crate::config::BackendTarget::Sink(dir) => {
                        crate::config::relative_note(dir).unwrap_or_default()
                    }
                    crate::config::BackendTarget::Servers(_) => String::new(),
                };
                eprintln!(
                    "{}: backend {:?}: {e}{relative}",
                    config.path.display(),
                    b.name
                );
                return Err(Exit);
            }
        }
    }
    Ok(backends)
}

/// The backends as the status page lists them.
fn backend_facts(backends: &[Arc<Backend>]) -> Vec<BackendFacts> {
    backends
        .iter()
        .map(|b| BackendFacts {
            name: b.name.clone(),
            identity: b.identity().as_str(),
            servers: b
                .servers()
                .map(|s| s.iter().map(SocketAddr::to_string).collect()),
        })
        .collect()
}

fn install_metrics() -> Result<metrics_exporter_prometheus::PrometheusHandle, Exit> {
    telemetry::metrics::install().map_err(|e| {
        error!(error = %e, "cannot install the metrics recorder");
        Exit
    })
}

/// Every socket the proxy serves on, bound and not yet served.
struct Sockets {
    /// In `config.listeners` order, with the address actually bound.
    listeners: Vec<(TcpListener, SocketAddr)>,
    metrics: Option<TcpListener>,
}

/// Binds every listener and the metrics endpoint; reports every address
/// that cannot be bound (naming its config key), not only the first.
async fn bind_all(config: &Config) -> Result<Sockets, Exit> {
    let mut failed = false;
    let mut listeners = Vec::new();
    for (i, l) in config.listeners.iter().enumerate() {
        match TcpListener::bind(l.address).await {
            Ok(s) => {
                let bound = s.local_addr().unwrap_or(l.address);
                listeners.push((s, bound));
            }
            Err(e) => {
                error!(address = %l.address, error = %e, "cannot bind listener");
                eprintln!(
                    "{}: listener[{i}].address: cannot bind {}: {e}",
                    config.path.display(),
                    l.address
                );
                failed = true;
            }
        }
    }
    let mut metrics = None;
    if let Some(address) = config.metrics {
        match telemetry::http::bind(address).await {
            Ok(s) => metrics = Some(s),
            Err(e) => {
                error!(%address, error = %e, "cannot bind the metrics endpoint");
                eprintln!(
                    "{}: metrics.listen: cannot bind {address}: {e}",
                    config.path.display()
                );
                failed = true;
            }
        }
    }
    if failed {
        return Err(Exit);
    }
    Ok(Sockets { listeners, metrics })
}

#[cfg(unix)]
type Hangups = tokio::signal::unix::Signal;
#[cfg(not(unix))]
type Hangups = ();

/// Installs the SIGHUP handler; signals arriving before
/// [`forward_hangups`] runs are kept.
fn install_hangup_handler() -> Option<Hangups> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::hangup()) {
            Ok(s) => Some(s),
            Err(e) => {
                warn!(error = %e, "cannot install the SIGHUP handler: SIGHUP will stop the proxy");
                None
            }
        }
    }
    #[cfg(not(unix))]
    None
}

/// Turns each SIGHUP into a config and certificate reload request.
async fn forward_hangups(mut hup: Hangups, tx: mpsc::Sender<ReloadRequest>) {
    #[cfg(unix)]
    while hup.recv().await.is_some() {
        if tx.send(ReloadRequest::Hangup).await.is_err() {
            return;
        }
    }
    #[cfg(not(unix))]
    let _ = (hup, tx);
}

// === impl Background ===

/// The tasks that run beside the listeners. [`Background::stop`] cancels
/// and awaits every one, so none is still running (or resuming from
/// `block_in_place`) when the runtime shuts down.
#[derive(Default)]
struct Background {
    aborts: Vec<AbortHandle>,
    joins: Vec<JoinHandle<()>>,
}

impl Background {
    fn spawn(&mut self, task: impl Future<Output = ()> + Send + 'static) {
        let handle = tokio::spawn(task);
        self.aborts.push(handle.abort_handle());
        self.joins.push(handle);
    }

    /// Like `spawn`, and logs `message` if the task panics while running.
    fn spawn_reporting_panic(
        &mut self,
        task: impl Future<Output = ()> + Send + 'static,
        message: &'static str,
    ) {
        let inner = tokio::spawn(task);
        self.aborts.push(inner.abort_handle());
        self.spawn(async move {
            if let Err(e) = inner.await
                && e.is_panic()
            {
                error!(error = %e, "{message}");
            }
        });
    }

    async fn stop(self) {
        for a in &self.aborts {
            a.abort();
        }
        for j in self.joins {
            let _ = j.await;
        }
    }
}
