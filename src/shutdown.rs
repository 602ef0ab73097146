//! The signals that stop the proxy.

use tracing::warn;

/// Resolves on SIGTERM or SIGINT.
pub async fn signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) {
            (Ok(mut term), Ok(mut int)) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = int.recv() => {}
                }
            }
            _ => {
                warn!("cannot install signal handlers; stopping only on Ctrl-C");
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// SIGHUP would otherwise kill the process (the default action). Until
/// reload lands (issue #4) it is logged and changes nothing. The handler is
/// registered before this returns, so no SIGHUP after it can kill us.
pub fn ignore_hangups() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let Ok(mut hup) = signal(SignalKind::hangup()) else {
            warn!("cannot install the SIGHUP handler: SIGHUP will stop the proxy");
            return;
        };
        tokio::spawn(async move {
            while hup.recv().await.is_some() {
                warn!(
                    "SIGHUP received: reload is not implemented in this version yet; restart to apply config or certificate changes"
                );
            }
        });
    }
}
