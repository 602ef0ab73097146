use std::process::ExitCode;

use clap::Parser;
use starttls_proxy::cli::{Cli, Cmd, check, run};

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        None | Some(Cmd::Run) => run::main(&cli.config, cli.log_format),
        Some(Cmd::Check { json }) => check::main(&cli.config, json),
    }
}
