//! `starttls-proxy run`: load, bind, serve until SIGTERM/SIGINT.

use std::process::ExitCode;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::{error, info, warn};

use crate::backend::Backend;
use crate::backend::xclient::Dns;
use crate::config::Config;
use crate::listener::{self, ConnectionTable};
use crate::session::ListenerContext;
use crate::telemetry;
use crate::telemetry::http::Readiness;
use crate::tls::reload::{self, Reloader, forward_hangups};
use crate::tls::{CertStore, TlsTerminator};

pub fn main(path: &std::path::Path, log_format: Option<crate::config::LogFormat>) -> ExitCode {
    let mut config = match Config::load(path) {
        Ok(c) => c,
        Err(errors) => {
            eprintln!("{errors}");
            return ExitCode::from(2);
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
    runtime.block_on(run(config))
}

async fn run(config: Config) -> ExitCode {
    // First thing: a SIGHUP during start-up (systemctl reload right after
    // start) is queued for the reloader instead of killing the process.
    let reload_channel = reload::channel();
    forward_hangups(reload_channel.0.clone());
    let loaded = CertStore::load_anchors(&config).and_then(|anchors| {
        let store = CertStore::load(&config, &anchors)?;
        Ok((anchors, store))
    });
    let (anchors, store) = match loaded {
        Ok(x) => x,
        Err(errors) => {
            eprintln!("{errors}");
            return ExitCode::from(2);
        }
    };
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
    let tls = match TlsTerminator::new(store, config.tls.min_version, config.tls.session_tickets) {
        Ok(t) => t,
        Err(e) => {
            error!(error = %e, "cannot build the TLS configuration");
            return ExitCode::from(2);
        }
    };
    // The endpoint is bound before anything is served: a port in use stops
    // start-up like a listener's would.
    let readiness = Arc::new(Readiness::default());
    if let Some(address) = config.metrics {
        let handle = match telemetry::metrics::install() {
            Ok(h) => h,
            Err(e) => {
                error!(error = %e, "cannot install the metrics recorder");
                return ExitCode::from(2);
            }
        };
        let socket = match telemetry::http::bind(address).await {
            Ok(s) => s,
            Err(e) => {
                error!(%address, error = %e, "cannot bind the metrics endpoint");
                eprintln!(
                    "{}: metrics.listen: cannot bind {address}: {e}",
                    config.path.display()
                );
                return ExitCode::from(2);
            }
        };
        tokio::spawn(telemetry::http::serve(socket, handle, readiness.clone()));
    }
    for c in tls.store().certificates() {
        telemetry::metrics::certificate_not_after(&c.name, c.not_after);
    }
    let config = Arc::new(config);
    let reloader = Reloader::new(config.clone(), tls.clone(), anchors, reload_channel);
    let task = tokio::spawn(reloader.run());
    tokio::spawn(async move {
        if let Err(e) = task.await {
            error!(error = %e, "the certificate reload task died: certificates no longer reload; restart the proxy");
        }
    });

    let dns = if config
        .backends
        .iter()
        .any(|b| b.identity == crate::config::Identity::Xclient)
    {
        match Dns::new(config.dns_servers.as_deref()) {
            Ok(d) => Some(d),
            Err(e) => {
                error!(error = %e, "cannot set up DNS for the XCLIENT NAME lookup");
                eprintln!(
                    "{}: dns: cannot set up the resolver: {e}",
                    config.path.display()
                );
                return ExitCode::from(2);
            }
        }
    } else {
        None
    };
    let mut backends = Vec::new();
    for b in &config.backends {
        let dns = (b.identity == crate::config::Identity::Xclient)
            .then(|| dns.clone())
            .flatten();
        match Backend::new(b, &config.hostname, config.timeouts.backend_connect, dns) {
            Ok(b) => backends.push(Arc::new(b)),
            Err(e) => {
                error!(backend = %b.name, error = %e, "cannot prepare backend");
                eprintln!("{}: backend {:?}: {e}", config.path.display(), b.name);
                return ExitCode::from(2);
            }
        }
    }

    for b in &backends {
        tokio::spawn(b.clone().probe_loop());
    }
    readiness.set_backends(backends.clone());

    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let table = Arc::new(ConnectionTable::new(config.limits.max_connections));
    let mut tasks = Vec::new();
    for (i, l) in config.listeners.iter().enumerate() {
        let socket = match TcpListener::bind(l.address).await {
            Ok(s) => s,
            Err(e) => {
                error!(address = %l.address, error = %e, "cannot bind listener");
                eprintln!(
                    "{}: listener[{i}].address: cannot bind {}: {e}",
                    config.path.display(),
                    l.address
                );
                return ExitCode::from(2);
            }
        };
        let bound = socket.local_addr().unwrap_or(l.address);
        info!(address = %bound, mode = l.mode.as_str(), tls = l.tls.as_str(), backend = %backends[l.backend].name, "listener bound");
        let ctx = Arc::new(ListenerContext {
            hostname: config.hostname.clone(),
            address: bound,
            mode: l.mode,
            tls_policy: l.tls,
            backend: backends[l.backend].clone(),
            tls: tls.clone(),
            limits: config.limits,
            timeouts: config.timeouts,
            proxy_protocol: l.proxy_protocol.clone(),
            stress: table.stress(),
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
    // Sessions end at their next command boundary, or at the end of the
    // grace with a 421; the margin lets those last replies go out.
    let margin = std::time::Duration::from_secs(2);
    if tokio::time::timeout(config.timeouts.shutdown_grace + margin, table.drained())
        .await
        .is_err()
    {
        warn!(
            active = table.active(),
            "shutdown grace over, closing the remaining sessions"
        );
    }
    info!("stopped");
    ExitCode::SUCCESS
}
