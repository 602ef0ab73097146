//! `starttls-proxy probe HOST[:PORT] | --domain DOMAIN`: arguments and
//! output only; the work is `crate::probe`'s. Exit 0 nothing found, 1
//! warnings only, 2 errors (and usage errors), as DESIGN.md §7 says.

use std::io::{IsTerminal, Write};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;

use crate::probe::domain::{DomainOptions, probe_domain};
use crate::probe::{Settings, Target, Timeouts, describe, probe_host};
use crate::tls::validate::TrustAnchors;

/// Options of `probe`.
#[derive(Debug, Clone, Args)]
pub struct ProbeArgs {
    /// The SMTP server to probe: a host name (its A and AAAA addresses are
    /// all probed), an IPv4 address, or [IPv6]; the port defaults to
    /// --smtp-port.
    #[arg(
        value_name = "HOST[:PORT]",
        required_unless_present = "domain",
        conflicts_with = "domain"
    )]
    pub target: Option<String>,
    /// Probe every MX host of DOMAIN on --smtp-port, with DANE, MTA-STS,
    /// TLS-RPT and PTR checks.
    #[arg(long, value_name = "DOMAIN")]
    pub domain: Option<String>,
    /// Print the report as one JSON object.
    #[arg(long)]
    pub json: bool,
    /// More trust anchors (PEM roots), besides the system's.
    #[arg(long, value_name = "FILE")]
    pub ca: Option<PathBuf>,
    /// Send every DNS query to this server (port 53 when not given).
    #[arg(long, value_name = "IP:PORT", value_parser = parse_nameserver)]
    pub nameserver: Option<SocketAddr>,
    /// The SMTP port, when HOST has none; with --domain, the port of every
    /// MX host (and of its TLSA records, `_PORT._tcp.MX`).
    #[arg(long, value_name = "N", default_value_t = 25)]
    pub smtp_port: u16,
    /// The HTTPS port the MTA-STS policy is fetched from.
    #[arg(long, value_name = "N", default_value_t = 443)]
    pub mta_sts_port: u16,
    /// Limit for every step (connect, each SMTP reply, each handshake), in
    /// seconds; default 5 s to connect, 10 s for the others.
    #[arg(long, value_name = "SECS", value_parser = parse_timeout)]
    pub timeout: Option<Duration>,
}

pub(crate) fn parse_nameserver(s: &str) -> Result<SocketAddr, String> {
    if let Ok(a) = s.parse::<SocketAddr>() {
        return Ok(a);
    }
    let bare = s.trim_start_matches('[').trim_end_matches(']');
    bare.parse::<IpAddr>()
        .map(|ip| SocketAddr::new(ip, 53))
        .map_err(|_| format!("{s:?} is not IP, IP:PORT or [IPv6]:PORT"))
}

pub(crate) fn parse_timeout(s: &str) -> Result<Duration, String> {
    match s.parse::<f64>() {
        Ok(secs) if secs > 0.0 && secs <= 3600.0 => Ok(Duration::from_secs_f64(secs)),
        _ => Err(format!("{s:?} is not a number of seconds from 0 to 3600")),
    }
}

pub fn main(args: ProbeArgs) -> ExitCode {
    match run(&args) {
        Ok(code) => ExitCode::from(code),
        Err(message) => {
            let _ = writeln!(std::io::stderr(), "starttls-proxy probe: {message}");
            ExitCode::from(2)
        }
    }
}

/// What to probe: one host, or a whole domain.
enum What {
    Host(Target),
    Domain(String),
}

/// The exit code, or a usage/setup error (exit 2).
fn run(args: &ProbeArgs) -> Result<u8, String> {
    let what = match (&args.domain, &args.target) {
        (Some(domain), _) => What::Domain(domain.clone()),
        (None, Some(raw)) => {
            What::Host(Target::parse(raw, args.smtp_port).map_err(|e| e.to_string())?)
        }
        (None, None) => return Err("give HOST[:PORT] or --domain DOMAIN".into()),
    };
    let anchors = TrustAnchors::load(args.ca.as_deref()).map_err(|e| describe(&e))?;
    let settings = Arc::new(Settings {
        timeouts: args
            .timeout
            .map_or_else(Timeouts::default, Timeouts::uniform),
        anchors,
        now: crate::tls::load::now_unix(),
    });
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the async runtime: {e}"))?;
    let report = match what {
        What::Host(target) => runtime.block_on(probe_host(&target, args.nameserver, settings)),
        What::Domain(domain) => {
            let opts = DomainOptions {
                nameserver: args.nameserver,
                smtp_port: args.smtp_port,
                mta_sts_port: args.mta_sts_port,
            };
            runtime
                .block_on(probe_domain(&domain, &opts, settings))
                .map_err(|e| describe(&e))?
        }
    };
    let stdout = std::io::stdout();
    let colour = stdout.is_terminal();
    let mut out = stdout.lock();
    // A closed pipe is no reason to change the exit code.
    let _ = if args.json {
        writeln!(
            out,
            "{}",
            serde_json::to_string_pretty(&report.to_json()).unwrap_or_default()
        )
    } else {
        report.write_text(&mut out, colour)
    };
    Ok(report.exit_code())
}
