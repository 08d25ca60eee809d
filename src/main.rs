//! The `fermata` binary: parse flags, set up logging, run, map to an exit code.

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;
use fermata::cli::{self, Cli, LogFormat};

/// jemalloc: glibc's per-thread arenas fragment under tokio's blocking pool
/// (measured by fermata-bench: 226 MiB peak RSS on 10,000 compositions with
/// glibc, 118 MiB with a single arena).
#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Read by jemalloc before `main`: see [`fermata::JEMALLOC_CONF`].
#[export_name = "_rjem_malloc_conf"]
static MALLOC_CONF: Option<&'static std::ffi::c_char> = Some(&fermata::JEMALLOC_CONF[0]);

fn main() -> ExitCode {
    // First, while this is the only thread: it sets environment variables.
    fermata::libgit2::start();
    let cli = Cli::parse();
    // The demo prints its own table; its logs would only bury it. rPGP
    // warns of every packet it skips (in a keyring, in a signature): what
    // matters reaches our own errors, so only its errors are logged.
    let default = if matches!(cli.command, cli::Command::Demo(_)) {
        "warn,pgp=error"
    } else {
        "info,pgp=error"
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("FERMATA_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    match cli.log_format {
        LogFormat::Human => logs.init(),
        LogFormat::Json => logs.json().init(),
    }
    match cli::run(cli) {
        Ok(code) => code,
        Err(e) => {
            // `{:#}` prints the whole cause chain on one line: the git2 error
            // behind "cannot fetch" is what the user needs.
            cli::err(format_args!("error: {e:#}\n"));
            ExitCode::from(2)
        }
    }
}
