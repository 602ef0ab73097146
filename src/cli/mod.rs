//! Command line: `run` (default), `check`.

pub mod check;
pub mod run;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

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
    /// Log format for `run`, overriding `[log] format`.
    #[arg(long, global = true, value_enum)]
    pub log_format: Option<crate::config::LogFormat>,
    #[command(subcommand)]
    pub command: Option<Cmd>,
}

#[derive(Debug, Subcommand)]
pub enum Cmd {
    /// Run the proxy (the default).
    Run,
    /// Validate the config and every certificate as `run` would, print a
    /// report, exit non-zero on errors.
    Check {
        /// Print the report as one JSON object.
        #[arg(long)]
        json: bool,
    },
}
