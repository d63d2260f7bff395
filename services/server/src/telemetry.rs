//! Logging set-up: human-readable lines by default, JSON lines with `MESHFLEET_LOG_FORMAT=json`.
//! Colour only on a terminal, so log files and pipes carry no escape codes.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

use crate::config::{Config, LogFormat};

pub fn init(config: &Config) {
    let filter = EnvFilter::try_new(&config.log).unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_target(true).with_writer(std::io::stdout).with_ansi(colour(&std::io::stdout()));
    // try_init: a second call (tests) keeps the first subscriber.
    let _ = match config.log_format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Text => builder.try_init(),
    };
}

/// Colour for a terminal, unless NO_COLOR (https://no-color.org) says otherwise.
fn colour(stream: &impl IsTerminal) -> bool {
    stream.is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}
