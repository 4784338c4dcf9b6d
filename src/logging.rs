//! The gateway's two logs: its own (stderr, text or JSON; `RUST_LOG` or `log.level`), and
//! the access log, one line per request (JSON by default), to stderr, stdout, a file, or
//! nowhere (`log.access`). Set up once at start: a reload does not change them.

use std::sync::Arc;

use tracing::Level;
use tracing_subscriber::filter::{EnvFilter, Targets};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{Layer, Registry};

use crate::config::{LogDestination, LogFormat, LogSettings};

type BoxedLayer = Box<dyn Layer<Registry> + Send + Sync>;

/// Installs both logs. `RUST_LOG`, when set, takes the place of `log.level`.
pub fn init(settings: &LogSettings) -> Result<(), String> {
    let own_filter = match EnvFilter::try_from_default_env() {
        Ok(filter) => filter,
        Err(_) => EnvFilter::try_new(&settings.level)
            .map_err(|e| format!("log.level `{}`: {e}", settings.level))?,
    }
    // The access log has its own destination.
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
    let mut layers = vec![own];
    layers.extend(access_layer(settings)?);
    tracing_subscriber::registry()
        .with(layers)
        .try_init()
        .map_err(|e| e.to_string())
}

fn access_layer(settings: &LogSettings) -> Result<Option<BoxedLayer>, String> {
    let only_access = Targets::new().with_target("access", Level::INFO);
    let layer = |writer: tracing_subscriber::fmt::writer::BoxMakeWriter| -> BoxedLayer {
        match settings.access_format {
            LogFormat::Json => tracing_subscriber::fmt::layer()
                .json()
                .flatten_event(true)
                .with_current_span(false)
                .with_span_list(false)
                .with_target(false)
                .with_writer(writer)
                .with_filter(only_access.clone())
                .boxed(),
            LogFormat::Text => tracing_subscriber::fmt::layer()
                .with_ansi(false)
                .with_writer(writer)
                .with_filter(only_access.clone())
                .boxed(),
        }
    };
    use tracing_subscriber::fmt::writer::BoxMakeWriter;
    Ok(match &settings.access {
        LogDestination::Off => None,
        LogDestination::Stderr => Some(layer(BoxMakeWriter::new(std::io::stderr))),
        LogDestination::Stdout => Some(layer(BoxMakeWriter::new(std::io::stdout))),
        LogDestination::File(path) => {
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(|e| format!("log.access {}: {e}", path.display()))?;
            Some(layer(BoxMakeWriter::new(Arc::new(file))))
        }
    })
}
