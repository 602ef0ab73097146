use std::process::ExitCode;

use clap::Parser;
use starttls_proxy::cli::{Cli, Command, check, probe, run, status};

#[cfg(all(
    target_os = "linux",
    not(target_env = "musl"),
    not(feature = "system-alloc")
))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's settings, read at its start: a background thread gives
/// unused pages back within about a second of a wave of sessions closing.
#[cfg(all(
    target_os = "linux",
    not(target_env = "musl"),
    not(feature = "system-alloc")
))]
#[unsafe(export_name = "_rjem_malloc_conf")]
pub static MALLOC_CONF: &[u8] = b"background_thread:true,dirty_decay_ms:1000,muzzy_decay_ms:0\0";

fn main() -> ExitCode {
    let (config, command) = match Cli::parse().resolve() {
        Ok(x) => x,
        Err(e) => e.exit(),
    };
    match command {
        Command::Run(args) => run::main(&config, args),
        Command::Check(args) => check::main(&config, &args),
        Command::Probe(args) => probe::main(args),
        Command::Status(args) => status::main(args),
    }
}
