//! Logs (tracing, text or JSON on stderr), Prometheus metrics, the status
//! model, and the `/metrics`, `/healthz`, `/ready`, `/status` endpoint
//! (DESIGN.md §6).

pub mod http;
pub mod metrics;
pub mod status;

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

use crate::config::{LogConfig, LogFormat};

/// Client-supplied text made safe for a log field: printable ASCII only
/// (anything else becomes `?`), at most 128 characters.
pub fn sanitize(s: &str) -> String {
    s.chars()
        .take(128)
        .map(|c| if c.is_ascii_graphic() { c } else { '?' })
        .collect()
}

/// Installs the global subscriber. `RUST_LOG`, when set, overrides the level.
pub fn init_logs(config: &LogConfig) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(config.level.as_str()));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    let _ = match config.format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Text => builder.try_init(),
    };
}
