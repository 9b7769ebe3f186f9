//! pushlite: a horizontally scalable real-time message broker speaking the Phoenix Channels
//! protocol, after the 2015 "ExPusherLite" article series.
//!
//! # Layout
//! - [`config`]: the typed configuration and its layering (defaults, TOML, environment).
//! - [`domain`]: apps and their validation; no I/O.
//! - [`registry`]: the app registry trait and its Postgres and SQLite implementations.
//! - [`http`]: the axum router, handlers, the web console and the HTTP error mapping.
//! - [`protocol`]: the Phoenix Channels wire formats (v1 objects, v2 arrays); no I/O.
//! - [`bus`]: the cross-node fan-out seam and its in-process implementation.
//! - [`control`]: what a node does with events and control messages from the bus.
//! - [`hub`]: this node's topic → subscriber index and the bus subscription task.
//! - [`presence`]: presence channel membership, cluster-wide (Redis) or on one node.
//! - [`session`]: one connection's channels, queue and timers (WebSocket or LongPoll).
//! - [`metrics`]: the Prometheus metrics (names are a contract).
//! - [`shutdown`]: draining and graceful shutdown state.
//! - [`usage`] and [`directory`]: per-app usage and the live nodes, for the admin stats API.
//! - [`token`]: HS256 join tokens for private topics.
//! - [`startup`]: builds a node from a configuration; the only place concrete backends are chosen.
//! - [`webhooks`]: occupancy, member and client-event webhooks, decided cluster-wide and
//!   delivered at least once.
//! - [`debug`]: the web console's live debug stream, free while nobody watches.
//! - [`cli`]: the `pushlite` command line; `main.rs` only calls it.
//! - [`fuzz`]: the fuzz targets' entry points, one per decoder of outside input.

pub mod bus;
pub mod cli;
pub mod config;
pub mod control;
pub mod debug;
pub mod directory;
pub mod domain;
pub mod fuzz;
pub mod http;
pub mod hub;
pub mod limits;
pub mod metrics;
pub mod node;
pub mod presence;
pub mod protocol;
pub mod queue;
pub mod registry;
pub mod session;
pub mod shutdown;
pub mod startup;
pub mod telemetry;
pub mod token;
pub mod usage;
pub mod webhooks;

pub use config::Config;
pub use startup::Server;
