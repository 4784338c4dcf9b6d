//! The gateway's two logs: its own (stderr, text or JSON; `RUST_LOG` or `log.level`), and
//! the access log, one JSON line per request (see [`crate::access_log`]), to stderr,
//! stdout, a file, or nowhere (`log.access`). Set up once at start: a reload does not
//! change them.

use tracing_subscriber::filter::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{Layer, Registry};

use crate::config::{LogDestination, LogFormat, LogSettings};
use std::os::fd::AsFd;

type BoxedLayer = Box<dyn Layer<Registry> + Send + Sync>;

/// Installs both logs. `RUST_LOG`, when set, takes the place of `log.level`.
pub fn init(settings: &LogSettings) -> Result<(), String> {
    let own_filter = match EnvFilter::try_from_default_env() {
        Ok(filter) => filter,
        Err(_) => EnvFilter::try_new(&settings.level)
            .map_err(|e| format!("log.level `{}`: {e}", settings.level))?,
    }
    // Access-log lines are not events of this log.
    .add_directive("access=off".parse().map_err(|e| format!("{e}"))?);
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let own: BoxedLayer = match settings.format {
        LogFormat::Text => tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_ansi(ansi)
            .with_filter(own_filter)
            .boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .with_writer(std::io::stderr)
            .with_filter(own_filter)
            .boxed(),
    };
    set_access_sink(settings)?;
    tracing_subscriber::registry()
        .with(own)
        .try_init()
        .map_err(|e| e.to_string())
}

/// Tells the access log where to write.
fn set_access_sink(settings: &LogSettings) -> Result<(), String> {
    let duplicate = |fd: std::os::fd::BorrowedFd<'_>, name: &str| {
        fd.try_clone_to_owned()
            .map(std::fs::File::from)
            .map_err(|e| format!("log.access {name}: {e}"))
    };
    let sink = match &settings.access {
        LogDestination::Off => return Ok(()),
        LogDestination::Stderr => duplicate(std::io::stderr().as_fd(), "stderr")?,
        LogDestination::Stdout => duplicate(std::io::stdout().as_fd(), "stdout")?,
        LogDestination::File(path) => std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| format!("log.access {}: {e}", path.display()))?,
    };
    crate::access_log::set_sink(sink);
    Ok(())
}
