//! Hot reload: on SIGHUP, or when the config file's content changes, the file is loaded
//! and validated beside the running config, the next [`State`] is built from it
//! (keeping what did not change, see [`State::carry_over`]) and swapped in at once.
//! Requests hold their snapshot to their end, so the ones in flight finish on the config
//! they started with.
//!
//! A file that does not load, or a state that cannot be built (e.g. an unreadable CA
//! file), leaves the running config in place: each problem is logged with its line, and
//! the failure is counted. Listeners and Pingora's server settings (threads, grace
//! period, …) are fixed when the process starts: a reload that changes them says so and
//! applies the rest; they go through a graceful upgrade (`tollgate -u`, then SIGQUIT to
//! the old process).
//!
//! This module owns the trigger (signal and file watch), the decision and the reload
//! metrics; what is kept across a reload is `state`'s business, the watch loops of new
//! pools the `monitor`'s.

use std::path::{Path, PathBuf};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use async_trait::async_trait;
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::BackgroundService;
use prometheus::{IntCounterVec, IntGauge, IntGaugeVec};
use sha2::{Digest, Sha256};
use tokio::signal::unix::{Signal, SignalKind, signal};

use crate::config::Config;
use crate::monitor::PoolsChanged;
use crate::state::{Carried, State};
use crate::store::Backend;

/// How often the config file is read to see whether it changed.
pub const WATCH_INTERVAL: Duration = Duration::from_secs(1);

// === Hangups ===

/// SIGHUP, taken over from its default action (ending the process).
pub struct Hangups(Signal);

impl Hangups {
    /// Installs the handler. Call it first thing in `main`: from then on a SIGHUP no
    /// longer ends the process, and one that arrives before the reload service runs is
    /// kept and handled when it starts.
    pub fn install() -> std::io::Result<Hangups> {
        // Tokio registers a signal through a runtime, but the handler and the stream
        // outlive it: the server's runtimes deliver the signals later.
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()?;
        let _entered = runtime.enter();
        signal(SignalKind::hangup()).map(Hangups)
    }
}

/// The next SIGHUP; never, without a handler.
async fn next_hangup(hangups: &mut Option<Hangups>) {
    match hangups {
        Some(Hangups(signal)) => {
            if signal.recv().await.is_none() {
                std::future::pending::<()>().await;
            }
        }
        None => std::future::pending::<()>().await,
    }
}

// === Fingerprint ===

/// A config file's content, as its SHA-256.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fingerprint([u8; 32]);

impl Fingerprint {
    pub fn of(bytes: &[u8]) -> Fingerprint {
        Fingerprint(Sha256::digest(bytes).into())
    }

    /// The file's fingerprint; `None` when it cannot be read (that is a state too: a
    /// file that comes back is a change).
    pub fn read(path: &Path) -> Option<Fingerprint> {
        std::fs::read(path)
            .ok()
            .map(|bytes| Fingerprint::of(&bytes))
    }

    /// The first 16 hex digits: the `hash` label of `tollgate_config_info`.
    pub fn short(&self) -> String {
        self.0[..8].iter().map(|b| format!("{b:02x}")).collect()
    }
}

// === Reloader ===

/// What the reload service needs from `main`.
pub struct ConfigSource {
    /// The config file, as an absolute path (the process may change directory).
    pub path: PathBuf,
    /// Its content just before the first load: a change during that load is seen at the
    /// first poll.
    pub loaded: Option<Fingerprint>,
    /// SIGHUP, taken over early; `None` if that failed (the file is still watched).
    pub hangups: Option<Hangups>,
}

/// What started a reload, for logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    Hangup,
    FileChanged,
}

impl Trigger {
    pub fn as_str(self) -> &'static str {
        match self {
            Trigger::Hangup => "sighup",
            Trigger::FileChanged => "file_changed",
        }
    }
}

/// The background service that reloads the config.
pub struct Reloader {
    path: PathBuf,
    loaded: Option<Fingerprint>,
    hangups: Mutex<Option<Hangups>>,
    state: Arc<ArcSwap<State>>,
    pools_changed: PoolsChanged,
}

impl Reloader {
    /// Also sets the config metrics for the config the server starts with.
    pub fn new(
        source: ConfigSource,
        state: Arc<ArcSwap<State>>,
        pools_changed: PoolsChanged,
    ) -> Reloader {
        METRICS.started(source.loaded);
        Reloader {
            path: source.path,
            loaded: source.loaded,
            hangups: Mutex::new(source.hangups),
            state,
            pools_changed,
        }
    }

    /// Loads the file and swaps its state in, or leaves the running one; logs and counts
    /// either way. Returns the fingerprint of the file as it was read.
    pub fn reload(&self, trigger: Trigger) -> Option<Fingerprint> {
        // Read before loading: if the file changes during the load, the next poll sees it.
        let fingerprint = Fingerprint::read(&self.path);
        let hash = fingerprint.map_or_else(|| "unreadable".to_owned(), |f| f.short());
        let config = match crate::config::load(&self.path) {
            Ok(config) => config,
            Err(errors) => {
                for e in &errors.0 {
                    tracing::error!(trigger = trigger.as_str(), error = %e, "Config reload: invalid config");
                }
                tracing::warn!(
                    trigger = trigger.as_str(),
                    file = %self.path.display(),
                    errors = errors.0.len(),
                    "Config reload failed; the running config stays"
                );
                METRICS.failed();
                return fingerprint;
            }
        };
        let running = self.state.load_full();
        let config = keep_fixed_settings(config, &running.config, trigger);
        let models = config.models.len();
        match State::carry_over(config, &running) {
            Ok((next, carried)) => {
                let cache = match (&next.cache, carried.cache_kept) {
                    (None, _) => "none",
                    (Some(_), true) => "kept",
                    (Some(_), false) => "new",
                };
                let dropped_counters = !carried.shared_kept
                    && running.config.state.backend == Backend::Local
                    && next.config.quotas.is_some();
                if dropped_counters {
                    tracing::warn!(
                        trigger = trigger.as_str(),
                        "Config reload: the `state` section changed; the limit and budget counters kept in this process start over"
                    );
                }
                self.state.store(Arc::new(next));
                self.pools_changed.notify();
                log_applied(trigger, &hash, models, &carried, cache);
                METRICS.succeeded(fingerprint);
            }
            Err(e) => {
                tracing::error!(trigger = trigger.as_str(), error = %e, "Config reload failed; the running config stays");
                METRICS.failed();
            }
        }
        fingerprint
    }
}

#[async_trait]
impl BackgroundService for Reloader {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let taken = match self.hangups.lock() {
            Ok(mut hangups) => hangups.take(),
            Err(poisoned) => poisoned.into_inner().take(),
        };
        let mut hangups = match taken {
            Some(h) => Some(h),
            None => match signal(SignalKind::hangup()) {
                Ok(s) => Some(Hangups(s)),
                Err(e) => {
                    tracing::warn!(error = %e, "No SIGHUP handler: reloads follow file changes only");
                    None
                }
            },
        };
        let mut seen = self.loaded;
        let mut poll = tokio::time::interval(WATCH_INTERVAL);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tracing::info!(file = %self.path.display(), every = ?WATCH_INTERVAL, "Watching the config file; SIGHUP reloads it");
        loop {
            let trigger = tokio::select! {
                _ = shutdown.changed() => return,
                () = next_hangup(&mut hangups) => Trigger::Hangup,
                _ = poll.tick() => {
                    if Fingerprint::read(&self.path) == seen {
                        continue;
                    }
                    Trigger::FileChanged
                }
            };
            // Loading is blocking work (file reads, parsing, TLS material), but short and
            // rare; it runs here so that reloads never overlap.
            seen = self.reload(trigger);
        }
    }
}

/// The running config's listeners and server settings go into `next` (a reload cannot
/// change them); a warning names those the file changed.
fn keep_fixed_settings(mut next: Config, running: &Config, trigger: Trigger) -> Config {
    let changed = fixed_changes(running, &next);
    if !changed.is_empty() {
        tracing::warn!(
            trigger = trigger.as_str(),
            changed = ?changed,
            "Config reload: listeners and server settings take effect only through a graceful upgrade (`tollgate -u`, then SIGQUIT to this process); the rest is applied"
        );
    }
    next.server = running.server.clone();
    next.listeners = running.listeners.clone();
    next.log = running.log.clone();
    if admin_listener_changed(running, &next) {
        next.admin = running.admin.clone();
    }
    next
}

/// The admin listener was added, removed or moved, or its key state file changed.
fn admin_listener_changed(running: &Config, next: &Config) -> bool {
    let place = |c: &Config| {
        c.admin
            .as_ref()
            .map(|a| (a.address.clone(), a.state_file.clone()))
    };
    place(running) != place(next)
}

/// The settings of `next` that differ from `running` and that only a new process applies.
pub fn fixed_changes(running: &Config, next: &Config) -> Vec<&'static str> {
    let listeners = |c: &Config| {
        c.listeners
            .iter()
            .map(|l| {
                let tls = l
                    .tls
                    .as_ref()
                    .map(|t| (t.cert_file.clone(), t.key_file.clone()));
                (l.address.clone(), tls, l.http2)
            })
            .collect::<Vec<_>>()
    };
    let (a, b) = (&running.server, &next.server);
    [
        ("listeners", listeners(running) != listeners(next)),
        ("server.threads", a.threads != b.threads),
        ("server.work_stealing", a.work_stealing != b.work_stealing),
        (
            "server.grace_period_seconds",
            a.grace_period_seconds != b.grace_period_seconds,
        ),
        (
            "server.graceful_shutdown_timeout_seconds",
            a.graceful_shutdown_timeout_seconds != b.graceful_shutdown_timeout_seconds,
        ),
        ("server.pid_file", a.pid_file != b.pid_file),
        (
            "admin.address / admin.state_file",
            admin_listener_changed(running, next),
        ),
        ("log", running.log != next.log),
        ("server.upgrade_sock", a.upgrade_sock != b.upgrade_sock),
        ("server.error_log", a.error_log != b.error_log),
        (
            "server.upstream_keepalive_pool_size",
            a.upstream_keepalive_pool_size != b.upstream_keepalive_pool_size,
        ),
    ]
    .into_iter()
    .filter_map(|(name, differs)| differs.then_some(name))
    .collect()
}

/// The one line a successful reload logs: what it kept and what it built.
fn log_applied(trigger: Trigger, hash: &str, models: usize, carried: &Carried, cache: &str) {
    tracing::info!(
        trigger = trigger.as_str(),
        hash,
        models,
        pools_kept = ?carried.pools_kept,
        pools_built = ?carried.pools_built,
        pools_removed = ?carried.pools_removed,
        shared_state = if carried.shared_kept { "kept" } else { "new" },
        cache,
        "Config reloaded"
    );
}

// === metrics ===

struct Metrics {
    reloads: IntCounterVec,
    info: IntGaugeVec,
    last_success: IntGauge,
}

static METRICS: LazyLock<Metrics> = LazyLock::new(|| Metrics {
    reloads: crate::metrics::counter_vec(
        "tollgate_config_reloads_total",
        "Config reloads by result (ok: swapped in; failed: the running config stayed).",
        &["result"],
    ),
    info: crate::metrics::gauge_vec(
        "tollgate_config_info",
        "The running config: 1, with the first 16 hex digits of the file's SHA-256.",
        &["hash"],
    ),
    last_success: crate::metrics::gauge(
        "tollgate_config_last_reload_success_timestamp_seconds",
        "When the running config was loaded (Unix seconds), at start or by a reload.",
    ),
});

impl Metrics {
    fn started(&self, loaded: Option<Fingerprint>) {
        // Both series exist from the start, so a rate over them has a first point.
        for result in ["ok", "failed"] {
            self.reloads.with_label_values(&[result]);
        }
        self.loaded(loaded);
    }

    fn succeeded(&self, loaded: Option<Fingerprint>) {
        self.reloads.with_label_values(&["ok"]).inc();
        self.loaded(loaded);
    }

    fn failed(&self) {
        self.reloads.with_label_values(&["failed"]).inc();
    }

    fn loaded(&self, loaded: Option<Fingerprint>) {
        self.info.reset();
        if let Some(f) = loaded {
            self.info.with_label_values(&[&f.short()]).set(1);
        }
        self.last_success.set(crate::openai::unix_now() as i64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn yaml(model: &str, threads: usize) -> String {
        format!(
            "server: {{threads: {threads}}}\n\
             listeners: [{{address: '127.0.0.1:0'}}]\n\
             models:\n  {model}:\n    targets: [{{pool: p}}]\n\
             pools:\n  p: {{provider: mock}}\n"
        )
    }

    fn parse(text: &str) -> Config {
        crate::config::parse(text, "test.yaml", Path::new("."), &|_| None)
            .unwrap_or_else(|e| panic!("{e}"))
    }

    fn reloads(result: &str) -> u64 {
        METRICS.reloads.with_label_values(&[result]).get()
    }

    #[test]
    fn listener_and_server_changes_are_named() {
        let running = parse(&yaml("m", 1));
        assert!(fixed_changes(&running, &parse(&yaml("other", 1))).is_empty());
        let moved = parse(&yaml("m", 2).replace("127.0.0.1:0", "127.0.0.1:1"));
        assert_eq!(
            fixed_changes(&running, &moved),
            ["listeners", "server.threads"]
        );
    }

    #[tokio::test]
    async fn a_valid_file_is_swapped_in_and_an_invalid_one_leaves_the_running_config() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.yaml");
        std::fs::write(&path, yaml("first", 1)).unwrap();
        let state = Arc::new(ArcSwap::from_pointee(
            State::build_for_test(parse(&yaml("first", 1))).unwrap(),
        ));
        let reloader = Reloader::new(
            ConfigSource {
                path: path.clone(),
                loaded: Fingerprint::read(&path),
                hangups: None,
            },
            state.clone(),
            PoolsChanged::default(),
        );
        let (ok, failed) = (reloads("ok"), reloads("failed"));
        let pool = state.load().pools[0].clone();

        // A new model and, ignored with a warning, another thread count.
        let text = yaml("second", 4);
        std::fs::write(&path, &text).unwrap();
        let seen = reloader.reload(Trigger::FileChanged);
        assert_eq!(seen, Some(Fingerprint::of(text.as_bytes())));
        let now = state.load_full();
        assert!(now.catalog.describe("second").is_some());
        assert!(now.catalog.describe("first").is_none());
        assert_eq!(
            now.config.server.threads, 1,
            "the running thread count stays"
        );
        assert!(
            Arc::ptr_eq(&now.pools[0], &pool),
            "the unchanged pool is kept"
        );
        assert_eq!((reloads("ok"), reloads("failed")), (ok + 1, failed));
        let hash = Fingerprint::of(text.as_bytes()).short();
        assert_eq!(hash.len(), 16);
        let rendered = crate::metrics::render();
        assert!(
            rendered.contains(&format!("tollgate_config_info{{hash=\"{hash}\"}} 1")),
            "{rendered}"
        );
        assert_eq!(
            rendered.matches("tollgate_config_info{").count(),
            1,
            "{rendered}"
        );

        std::fs::write(&path, "models: [oops\n").unwrap();
        reloader.reload(Trigger::Hangup);
        assert!(
            Arc::ptr_eq(&state.load_full(), &now),
            "the running state stays"
        );
        assert_eq!((reloads("ok"), reloads("failed")), (ok + 1, failed + 1));
        assert!(
            crate::metrics::render().contains(&hash),
            "the info still shows the running config"
        );
    }
}
