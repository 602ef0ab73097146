use std::process::ExitCode;

use clap::Parser;
use starttls_proxy::cli::{Cli, Command, check, run};

fn main() -> ExitCode {
    let (config, command) = match Cli::parse().resolve() {
        Ok(x) => x,
        Err(e) => e.exit(),
    };
    match command {
        Command::Run(args) => run::main(&config, args.log_format),
        Command::Check { json } => check::main(&config, json),
    }
}
