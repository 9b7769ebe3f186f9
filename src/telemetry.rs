//! Logging setup: human-readable text on a terminal, JSON lines when asked for.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

const QUIET: [&str; 6] = [
    "tungstenite=info",
    "tokio_tungstenite=info",
    "hyper=info",
    "hyper_util=info",
    "fred=info",
    "sqlx=info",
];

use crate::config::{LogConfig, LogFormat};

/// Installs the global subscriber once. `RUST_LOG` wins over `log.level`.
pub fn init(config: &LogConfig) {
    let mut filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&config.level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    // At debug and trace these crates log frame and request bytes: client payloads, and
    // credentials in headers or Redis commands. Capped whatever RUST_LOG asks for.
    for cap in QUIET {
        if let Ok(directive) = cap.parse() {
            filter = filter.add_directive(directive);
        }
    }
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    // A second init (tests) is harmless: the first subscriber stays.
    let _ = match config.format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Text => builder.try_init(),
    };
}
