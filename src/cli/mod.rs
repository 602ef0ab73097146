//! Command line: `run` (default), `check`, `probe`, `status`.

pub mod check;
pub mod help;
pub mod probe;
pub mod run;
pub mod status;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "starttls-proxy",
    version,
    about = "STARTTLS-terminating SMTP proxy",
    long_about = help::LONG_ABOUT,
    after_long_help = help::AFTER_LONG_HELP
)]
pub struct Cli {
    /// Config file.
    #[arg(long, short = 'c', global = true, default_value = crate::config::DEFAULT_PATH)]
    pub config: PathBuf,
    /// `run` is the default command: its options are accepted without it.
    /// Not global, so `check --help` does not offer them.
    #[command(flatten)]
    pub run: RunArgs,
    #[command(subcommand)]
    pub command: Option<Cmd>,
}

/// Options of `run`.
#[derive(Debug, Clone, Copy, Default, Args)]
pub struct RunArgs {
    /// Log format, overriding `[log] format`.
    #[arg(long, value_enum)]
    pub log_format: Option<crate::config::LogFormat>,
    /// Run even when started as root. Without it `run` refuses root: the
    /// proxy needs no privilege but binding ports below 1024, which
    /// CAP_NET_BIND_SERVICE grants to an unprivileged user (the systemd
    /// unit and the Debian package run it as `starttls-proxy`). Other
    /// commands (`check`, `probe`, `status`) run as root without it.
    #[arg(long, env = "STARTTLS_PROXY_ALLOW_ROOT", value_parser = clap::builder::BoolishValueParser::new())]
    pub allow_root: bool,
}

/// Options of `check`. Without `--dns` it reads only files, as `run`
/// does at start.
#[derive(Debug, Clone, Default, Args)]
pub struct CheckArgs {
    /// Print the report as one JSON object.
    #[arg(long)]
    pub json: bool,
    /// Also look at the proxy through DNS, as senders do: probe the
    /// hostname and the certificate names where they resolve, and compare
    /// published TLSA records with the certificate and key files on disk.
    #[arg(long)]
    pub dns: bool,
    /// With --dns: send every DNS query to this server (port 53 when not
    /// given).
    #[arg(long, value_name = "IP:PORT", requires = "dns", value_parser = probe::parse_nameserver)]
    pub nameserver: Option<SocketAddr>,
    /// With --dns: more trust anchors (PEM roots) for the probe.
    #[arg(long, value_name = "FILE", requires = "dns")]
    pub ca: Option<PathBuf>,
    /// With --dns: the SMTP port to probe and of the TLSA records
    /// (`_PORT._tcp.NAME`); default: the first STARTTLS listener's, else 25.
    #[arg(long, value_name = "N", requires = "dns")]
    pub smtp_port: Option<u16>,
    /// With --dns: the limit for every step of the probe, in seconds.
    #[arg(long, value_name = "SECS", requires = "dns", value_parser = probe::parse_timeout)]
    pub timeout: Option<Duration>,
}

#[derive(Debug, Subcommand)]
pub enum Cmd {
    /// Run the proxy (the default).
    Run(RunArgs),
    /// Validate the config and every certificate as `run` would, print a
    /// report, exit non-zero on errors.
    Check(CheckArgs),
    /// Diagnose an SMTP server's STARTTLS from the sender's side: every
    /// address, with and without SNI, TLS 1.3, 1.2 and legacy; chain,
    /// names, expiry; findings with fixes.
    Probe(probe::ProbeArgs),
    /// Print a running proxy's status page (`/status.json` on its
    /// `[metrics] listen` address) as a report; exit 1 when a certificate
    /// is inside the warning window or a backend server is down, 2 when
    /// the proxy does not answer.
    Status(status::StatusArgs),
}

impl Cli {
    /// The command to run, with `run`'s options merged from before and
    /// after the subcommand name; an error when `run`'s options are given
    /// to another command (`--log-format json check`).
    pub fn resolve(self) -> Result<(PathBuf, Command), clap::Error> {
        let command = match self.command {
            None => Command::Run(self.run),
            Some(Cmd::Run(args)) => Command::Run(RunArgs {
                log_format: args.log_format.or(self.run.log_format),
                allow_root: args.allow_root || self.run.allow_root,
            }),
            Some(Cmd::Check(args)) => {
                if self.run.log_format.is_some() {
                    return Err(<Self as clap::CommandFactory>::command().error(
                        clap::error::ErrorKind::ArgumentConflict,
                        "--log-format applies to `run` only, not to `check`",
                    ));
                }
                Command::Check(args)
            }
            Some(Cmd::Probe(args)) => {
                if self.run.log_format.is_some() {
                    return Err(<Self as clap::CommandFactory>::command().error(
                        clap::error::ErrorKind::ArgumentConflict,
                        "--log-format applies to `run` only, not to `probe`",
                    ));
                }
                Command::Probe(args)
            }
            Some(Cmd::Status(args)) => {
                if self.run.log_format.is_some() {
                    return Err(<Self as clap::CommandFactory>::command().error(
                        clap::error::ErrorKind::ArgumentConflict,
                        "--log-format applies to `run` only, not to `status`",
                    ));
                }
                Command::Status(args)
            }
        };
        Ok((self.config, command))
    }
}

/// What `main` dispatches on.
#[derive(Debug)]
pub enum Command {
    Run(RunArgs),
    Check(CheckArgs),
    Probe(probe::ProbeArgs),
    Status(status::StatusArgs),
}
