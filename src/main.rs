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
/// a short decay, so RSS falls back once a peak has passed; and keep freed blocks of up to
/// 64 KiB in the thread's cache (default: 32 KiB). Pingora gives each HTTP/1 body reader a
/// 64 KiB buffer, two per request (the client's body and the upstream's): from the cache
/// they cost a few dozen instructions instead of a trip to the arena (2.4% of a non-stream
/// request's instructions, about 5% of its CPU time).
#[allow(non_upper_case_globals)]
#[unsafe(export_name = "_rjem_malloc_conf")]
pub static malloc_conf: &[u8] =
    b"background_thread:true,dirty_decay_ms:1000,muzzy_decay_ms:1000,tcache_max:65536\0";

fn main() -> ExitCode {
    let cli = Cli::parse();
    // SIGHUP's default action ends the process: take it over before anything else, so one
    // sent during startup waits for the reload service instead.
    let hangups = Hangups::install();
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
    // The logs are set up by the config (`log:`), so after it is read.
    if let Err(e) = tollgate::logging::init(&config.log) {
        eprintln!("tollgate: {e}");
        return ExitCode::FAILURE;
    }
    let hangups = hangups
        .inspect_err(|e| tracing::warn!(error = %e, "Cannot handle SIGHUP; reloads follow file changes only"))
        .ok();
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
