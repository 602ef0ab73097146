//! Command line: `run` (default), `check`, `probe`, `status`.

pub mod check;
pub mod probe;
pub mod run;
pub mod status;

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "starttls-proxy",
    version,
    about = "STARTTLS-terminating SMTP proxy"
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
}

#[derive(Debug, Subcommand)]
pub enum Cmd {
    /// Run the proxy (the default).
    Run(RunArgs),
    /// Validate the config and every certificate as `run` would, print a
    /// report, exit non-zero on errors.
    Check {
        /// Print the report as one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Diagnose an SMTP server's STARTTLS from the sender's side: every
    /// address, with and without SNI, TLS 1.3, 1.2 and legacy; chain,
    /// names, expiry; findings with fixes (DESIGN.md §7).
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
            }),
            Some(Cmd::Check { json }) => {
                if self.run.log_format.is_some() {
                    return Err(<Self as clap::CommandFactory>::command().error(
                        clap::error::ErrorKind::ArgumentConflict,
                        "--log-format applies to `run` only, not to `check`",
                    ));
                }
                Command::Check { json }
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
    Check { json: bool },
    Probe(probe::ProbeArgs),
    Status(status::StatusArgs),
}
