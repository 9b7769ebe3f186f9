//! Channel history: which topics keep their recent events, the position (offset and epoch) of
//! an event in its topic's history, and the rules of recovery.
//!
//! A topic with history numbers its events 1, 2, 3… (the offset). The numbering lives as long
//! as the topic's meta does (`history.meta_ttl_secs` after its latest event, while the events
//! themselves go after `history_ttl_secs`): when it is lost (that time passed, Redis lost its
//! data or is another process than the one that wrote it), numbering starts again under a new
//! epoch. A position is only meaningful with its epoch.

use serde::Serialize;

use super::app::App;
use super::topic::{ChannelKind, channel_of};

/// Channel name prefixes of Pusher cache channels: they keep their last event.
const CACHE_PREFIXES: [&str; 4] = [
    "cache-",
    "private-cache-",
    "private-encrypted-cache-",
    "presence-cache-",
];

/// Longest epoch a client may send back.
pub const EPOCH_MAX_BYTES: usize = 64;

/// Whether `channel` is a Pusher cache channel.
#[must_use]
pub fn is_cache(channel: &str) -> bool {
    CACHE_PREFIXES
        .iter()
        .any(|prefix| channel.starts_with(prefix))
}

/// The node-wide bounds of history (configuration `[history]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bounds {
    /// The largest `history_size` an app may have.
    pub max_size: u32,
    /// The longest `history_ttl_secs` an app may have.
    pub max_ttl_secs: u32,
    /// How long the offset and epoch of a topic outlive its last event, so that a client
    /// coming back after the events expired is told so rather than given a fresh epoch.
    pub meta_ttl_secs: u32,
    /// How long a cache channel keeps its last event (Pusher: 30 minutes).
    pub cache_ttl_secs: u32,
}

/// What one topic keeps: its last `size` events, for `ttl_secs` after the latest one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Keep {
    pub size: u32,
    pub ttl_secs: u32,
    /// See [`Bounds::meta_ttl_secs`]; never shorter than `ttl_secs`.
    pub meta_ttl_secs: u32,
}

impl Keep {
    /// What `topic` (`channel:slug`) of `app` keeps, or `None` when it keeps nothing: the
    /// app's history settings, and at least the last event for 30 minutes on a cache channel.
    /// A user's own channel never keeps anything. It takes the topic as text, not a parsed
    /// [`super::topic::Topic`]: every publish asks, and parsing would copy the topic.
    #[must_use]
    pub fn of(app: &App, topic: &str, bounds: Bounds) -> Option<Keep> {
        let channel = channel_of(topic)?;
        if ChannelKind::of(channel) == ChannelKind::User {
            return None;
        }
        let size = u32::try_from(app.history_size)
            .unwrap_or(0)
            .min(bounds.max_size);
        let ttl = u32::try_from(app.history_ttl_secs)
            .unwrap_or(0)
            .clamp(1, bounds.max_ttl_secs.max(1));
        let (size, ttl_secs) = match (size, is_cache(channel)) {
            (0, false) => return None,
            (0, true) => (1, bounds.cache_ttl_secs),
            (size, true) => (size, ttl.max(bounds.cache_ttl_secs)),
            (size, false) => (size, ttl),
        };
        Some(Keep {
            size,
            ttl_secs,
            meta_ttl_secs: bounds.meta_ttl_secs.max(ttl_secs),
        })
    }
}

/// Where an event stands in its topic's history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Position {
    pub offset: u64,
    pub epoch: String,
}

/// The message `ref` of a broadcast at `offset` on the Phoenix wire: the offset with a leading
/// `+`. Clients number their own refs `"1"`, `"2"`…, and phoenix.js treats any message whose
/// ref equals its pending heartbeat's as the heartbeat's reply; a `+` can never match one.
/// `Number(ref)` and `parseInt(ref)` still give the offset.
#[must_use]
pub fn message_ref(offset: u64) -> String {
    format!("+{offset}")
}

/// A fresh epoch: random, so that no two lives of a topic's history share one.
#[must_use]
pub fn new_epoch() -> String {
    let id = uuid::Uuid::new_v4().simple().to_string();
    id[..12].to_owned()
}

/// What to read from a topic's history.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Read<'a> {
    /// Only the position of the latest event.
    Top,
    /// Events after `offset`, oldest first, at most `limit`: what is kept of them.
    Since { offset: u64, limit: u32 },
    /// Every event after `since`, oldest first, at most `limit`, only when all of them are
    /// kept in `since`'s epoch; otherwise none (see [`Page::recovers`]). A recovery that
    /// cannot succeed reads no event.
    Recover { since: &'a Position, limit: u32 },
    /// The latest `count` events, oldest first.
    Last(u32),
}

/// A read of a topic's history: the position of its latest event (offset 0 when it has had
/// none in this epoch) and the events read, oldest first, each with its position.
#[derive(Debug, Clone)]
pub struct Page {
    pub top: Position,
    pub events: Vec<super::event::Event>,
    /// How long the kept events have left, when there are any.
    pub ttl_secs: Option<u64>,
}

impl Page {
    /// Whether this page, read with [`Read::Since`] from `since`, holds every event after it:
    /// the same epoch, an offset the history has reached, and no event missing between.
    /// Recovery is all or nothing.
    #[must_use]
    pub fn recovers(&self, since: &Position) -> bool {
        if since.epoch != self.top.epoch || since.offset > self.top.offset {
            return false;
        }
        let missed = self.top.offset - since.offset;
        let offsets = self
            .events
            .iter()
            .filter_map(|event| event.position.as_ref().map(|p| p.offset));
        u64::try_from(self.events.len()).is_ok_and(|n| n == missed)
            && offsets.eq(since.offset + 1..=self.top.offset)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::event::{Data, Event};

    fn app(size: i32, ttl: i32) -> App {
        App {
            id: 1,
            name: "foo app".into(),
            slug: "foo-app".into(),
            key: "k".into(),
            secret: "s".into(),
            active: true,
            client_events: true,
            allowed_origins: Vec::new(),
            max_presence_members: 100,
            webhooks: Vec::new(),
            history_size: size,
            history_ttl_secs: ttl,
            max_connections: None,
            max_triggers_per_sec: None,
            webhook_max_queue: None,
            inserted_at: chrono::Utc::now(),
            updated_at: chrono::Utc::now(),
        }
    }

    const BOUNDS: Bounds = Bounds {
        max_size: 500,
        max_ttl_secs: 7200,
        meta_ttl_secs: 86_400,
        cache_ttl_secs: 1800,
    };

    #[test]
    fn what_a_topic_keeps() {
        assert_eq!(Keep::of(&app(0, 60), "public:foo-app", BOUNDS), None);
        let kept = Keep::of(&app(10, 60), "public:foo-app", BOUNDS).unwrap();
        assert_eq!(
            (kept.size, kept.ttl_secs, kept.meta_ttl_secs),
            (10, 60, 86_400)
        );
        let capped = Keep::of(&app(9000, 99_999), "room:foo-app", BOUNDS).unwrap();
        assert_eq!((capped.size, capped.ttl_secs), (500, 7200));
        let cache = Keep::of(&app(0, 60), "cache-x:foo-app", BOUNDS).unwrap();
        assert_eq!((cache.size, cache.ttl_secs), (1, 1800));
        let both = Keep::of(&app(5, 60), "presence-cache-x:foo-app", BOUNDS).unwrap();
        assert_eq!((both.size, both.ttl_secs), (5, 1800));
        let user = "#server-to-user-1:foo-app";
        assert_eq!(Keep::of(&app(5, 60), user, BOUNDS), None);
        assert!(is_cache("private-encrypted-cache-a") && !is_cache("cached"));
    }

    fn page(epoch: &str, top: u64, offsets: &[u64]) -> Page {
        let events = offsets
            .iter()
            .map(|&offset| Event {
                topic: "public:foo-app".into(),
                event: "msg".into(),
                data: Data::Object(serde_json::value::RawValue::from_string("{}".into()).unwrap()),
                exclude: None,
                user_id: None,
                position: Some(Position {
                    offset,
                    epoch: epoch.into(),
                }),
            })
            .collect();
        Page {
            top: Position {
                offset: top,
                epoch: epoch.into(),
            },
            events,
            ttl_secs: None,
        }
    }

    #[test]
    fn recovery_is_all_or_nothing() {
        let since = |offset| Position {
            offset,
            epoch: "e1".into(),
        };
        assert!(page("e1", 5, &[3, 4, 5]).recovers(&since(2)));
        assert!(page("e1", 5, &[]).recovers(&since(5)));
        // The oldest missed event is gone.
        assert!(!page("e1", 5, &[4, 5]).recovers(&since(2)));
        // Another life of the history.
        assert!(!page("e2", 5, &[3, 4, 5]).recovers(&since(2)));
        // An offset the history never reached.
        assert!(!page("e1", 5, &[]).recovers(&since(9)));
        // Cut short by the read limit.
        assert!(!page("e1", 5, &[3, 4]).recovers(&since(2)));
        assert_eq!(message_ref(42), "+42");
        assert_eq!(new_epoch().len(), 12);
    }
}
