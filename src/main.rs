//! `tollgate`: config → server → run. SIGHUP or a change of the config file reloads it
//! (see `tollgate::reload`); SIGTERM stops gracefully, SIGQUIT hands the listening sockets
//! to a new process started with `-u`.
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::ExitCode;

use clap::Parser;
use tikv_jemallocator::Jemalloc;
use tollgate::cli::Cli;
use tollgate::reload::{ConfigSource, Fingerprint, Hangups};
use tollgate::server::{self, StartMode};

/// jemalloc: cheaper per request than glibc's malloc, and with its background thread it
/// hands memory back to the system after a load peak (e.g. thousands of open streams).
#[global_allocator]
static GLOBAL: Jemalloc = Jemalloc;

/// jemalloc settings read at startup: purge freed memory from a background thread, after
/// a short decay, so RSS falls back once a peak has passed.
#[allow(non_upper_case_globals)]
#[unsafe(export_name = "_rjem_malloc_conf")]
pub static malloc_conf: &[u8] = b"background_thread:true,dirty_decay_ms:1000,muzzy_decay_ms:1000\0";

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging();
    // SIGHUP's default action ends the process: take it over before anything else, so one
    // sent during startup waits for the reload service instead.
    let hangups = Hangups::install()
        .inspect_err(|e| tracing::warn!(error = %e, "Cannot handle SIGHUP; reloads follow file changes only"))
        .ok();
    // Absolute: daemon mode changes directory, and the file is read again on reloads.
    let path = std::path::absolute(&cli.config).unwrap_or_else(|_| cli.config.clone());
    // Seen before the load, so that a change during it shows at the first poll.
    let loaded = Fingerprint::read(&path);

    let config = match tollgate::config::load(&cli.config) {
        Ok(c) => c,
        Err(errors) => {
            eprintln!("{errors}");
            eprintln!(
                "{}: invalid ({} error(s))",
                cli.config.display(),
                errors.0.len()
            );
            return ExitCode::FAILURE;
        }
    };
    if cli.validate {
        println!("{}: ok", cli.config.display());
        return ExitCode::SUCCESS;
    }
    tracing::info!(config = %cli.config.display(), models = config.models.len(), pools = config.pools.len(), threads = config.server.threads, "config loaded");

    let mode = StartMode {
        upgrade: cli.upgrade,
        daemon: cli.daemon,
    };
    let source = ConfigSource {
        path,
        loaded,
        hangups,
    };
    match server::build(config, source, mode) {
        Ok(server) => {
            tracing::info!(version = env!("CARGO_PKG_VERSION"), "tollgate starting");
            server.run_forever()
        }
        Err(e) => {
            eprintln!("tollgate: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Logs go to stderr; `RUST_LOG` sets the filter (default `info`).
fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}
