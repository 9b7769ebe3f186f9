//! Cross-node fan-out. A node publishes every event to the bus (never straight to its own
//! sockets) and delivers what the bus hands back, so each subscriber receives each event once.

mod local;

use async_trait::async_trait;

use crate::domain::event::Event;

pub use local::LocalBus;

#[derive(Debug, Clone, thiserror::Error)]
pub enum BusError {
    /// The transport is down or refused the command; the event was not published.
    #[error("bus unavailable: {0}")]
    Unavailable(String),
}

/// Where a bus hands the events it receives for the topics this node subscribed.
pub trait EventSink: Send + Sync + 'static {
    fn deliver(&self, event: Event);
}

/// The fan-out seam, at the topic level (topics are `scope:app_slug`).
///
/// Contract, for every implementation:
/// - `publish` returns `Ok` only once the transport has accepted the event; every node
///   subscribed to the topic at that moment will then hand it to its sink once;
/// - events of one topic published by one node reach each sink in publish order;
/// - `subscribe` returns once events for those topics are being received; `unsubscribe` stops
///   them. Both take batches and are idempotent. Callers serialize them (the hub's subscription
///   task does), so the last call for a topic wins;
/// - a node receives nothing for topics it has not subscribed.
#[async_trait]
pub trait Bus: Send + Sync + 'static {
    async fn publish(&self, event: &Event) -> Result<(), BusError>;
    async fn subscribe(&self, topics: &[String]) -> Result<(), BusError>;
    async fn unsubscribe(&self, topics: &[String]) -> Result<(), BusError>;
}
