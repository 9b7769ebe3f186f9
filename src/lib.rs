//! pushlite: a horizontally scalable real-time message broker speaking the Phoenix Channels
//! protocol, after the 2015 "ExPusherLite" article series.
//!
//! # Layout
//! - [`config`]: the typed configuration and its layering (defaults, TOML, environment).
//! - [`domain`]: apps and their validation; no I/O.
//! - [`registry`]: the app registry trait and its Postgres and SQLite implementations.
//! - [`http`]: the axum router, handlers and the HTTP error mapping.
//! - [`startup`]: builds a node from a configuration; the only place concrete backends are chosen.
//! - [`cli`]: the `pushlite` command line; `main.rs` only calls it.

pub mod cli;
pub mod config;
pub mod domain;
pub mod http;
pub mod registry;
pub mod startup;
pub mod telemetry;

pub use config::Config;
pub use startup::Server;
