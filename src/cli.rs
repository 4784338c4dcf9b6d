//! Command-line interface.

use std::path::PathBuf;

use clap::Parser;

/// Tollgate: an OpenAI-compatible LLM gateway.
#[derive(Debug, Parser)]
#[command(name = "tollgate", version, about)]
pub struct Cli {
    /// The configuration file.
    #[arg(short = 'c', long = "config", default_value = "conf/gateway.yaml")]
    pub config: PathBuf,

    /// Check the configuration and exit: 0 if valid, 1 with every error otherwise.
    #[arg(long, visible_alias = "test", short = 't')]
    pub validate: bool,

    /// Take over the listening sockets of a running instance (zero-downtime upgrade);
    /// then send SIGQUIT to the old process.
    #[arg(short = 'u', long)]
    pub upgrade: bool,

    /// Run in the background (writes `server.pid_file`).
    #[arg(short = 'd', long)]
    pub daemon: bool,
}
