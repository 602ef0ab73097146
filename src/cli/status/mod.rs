//! `starttls-proxy status [--url URL]`: reads `/status.json` from a running
//! proxy and prints it as a terminal report (docs/status.md). For cron
//! and monitoring checks, the exit code says what needs a look:
//! 0 all well, 1 a certificate inside the warning window (or expired) or a
//! backend server down, 2 no answer, or an answer that is not a status.

mod fetch;
mod report;

use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;

use crate::telemetry::status::snapshot::Snapshot;

pub use fetch::{FetchError, StatusUrl};

/// Nothing needs a look.
pub const EXIT_OK: u8 = 0;
/// A certificate inside the warning window, or a backend server down.
pub const EXIT_WARNING: u8 = 1;
/// The proxy did not answer, or not with a status.
pub const EXIT_UNREACHABLE: u8 = 2;

/// Options of `status`.
#[derive(Debug, Clone, Args)]
pub struct StatusArgs {
    /// The proxy's `[metrics] listen` address as a URL; `/status.json` is
    /// appended (a path before it is kept, for a reverse proxy).
    #[arg(long, value_name = "URL", default_value = "http://127.0.0.1:9125")]
    pub url: String,
    /// Print the JSON as received instead of the report (same exit code).
    #[arg(long)]
    pub json: bool,
    /// Give up after this many seconds (connect, request and answer).
    #[arg(long, value_name = "SECS", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=300))]
    pub timeout: u64,
}

pub fn main(args: StatusArgs) -> ExitCode {
    let code = match run(&args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("starttls-proxy status: {e}");
            EXIT_UNREACHABLE
        }
    };
    ExitCode::from(code)
}

/// Fetches, prints, judges; an error when nothing could be judged.
fn run(args: &StatusArgs) -> Result<u8, FetchError> {
    let url = StatusUrl::parse(&args.url)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(FetchError::Runtime)?;
    let body = runtime.block_on(fetch::get(&url, Duration::from_secs(args.timeout)))?;
    let snapshot: Snapshot = serde_json::from_slice(&body).map_err(|source| FetchError::Json {
        url: url.to_string(),
        source,
    })?;
    let mut out = std::io::stdout().lock();
    let written = if args.json {
        out.write_all(&body).and_then(|()| writeln!(out))
    } else {
        let colour = std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none();
        report::write(&mut out, &snapshot, colour)
    };
    // A closed pipe (`| head`) is not the proxy's fault: the verdict stands.
    let _ = written.and_then(|()| out.flush());
    Ok(verdict(&snapshot))
}

/// The exit code for a snapshot.
pub fn verdict(s: &Snapshot) -> u8 {
    if s.compute_warnings().is_empty() {
        EXIT_OK
    } else {
        EXIT_WARNING
    }
}
