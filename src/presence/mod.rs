//! Presence: who is in each `presence-*` channel, cluster-wide and whatever the protocol.
//!
//! Every joined connection is one *entry* (Phoenix's `phx_ref`) of a user; a user with several
//! connections (tabs, nodes, protocols) is one member. A store changes the membership and
//! announces every change ([`Change`]) to the nodes subscribed to the channel, marked with the
//! channel's `epoch` and a `ver` that grows with each change, so a session that took a
//! [`Snapshot`] at `ver` N ignores the changes it already holds (see [`Seen`]).
//!
//! Two stores: [`RedisPresence`] (membership in Redis, each entry owned by the node holding its
//! connection, swept by the others when that node dies) and [`LocalPresence`] (one node, in
//! memory).

mod local;
mod redis;

use std::collections::HashMap;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::{Map, Value};

pub use local::LocalPresence;
pub use redis::{RedisPresence, RedisPresenceConfig};

/// The longest user id a member may have (Pusher's limit).
pub const USER_ID_MAX: usize = 128;
/// The largest user info a member may carry, as JSON text (Pusher's limit).
pub const USER_INFO_MAX: usize = 1024;

/// One connection's entry in a presence channel.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Member {
    /// Unique in the cluster for the entry's life; Phoenix clients see it as `phx_ref`.
    #[serde(rename = "ref")]
    pub entry: String,
    pub user_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_info: Option<Box<RawValue>>,
}

impl Member {
    /// The entry as a Phoenix Presence meta: the fields of an object `user_info` with
    /// `phx_ref`, or `{"phx_ref", "user_info"}` for any other value.
    #[must_use]
    pub fn meta(&self) -> Value {
        let info: Option<Value> = self
            .user_info
            .as_ref()
            .and_then(|raw| serde_json::from_str(raw.get()).ok());
        let mut meta = match info {
            Some(Value::Object(fields)) => fields,
            None | Some(Value::Null) => Map::new(),
            Some(other) => Map::from_iter([("user_info".to_owned(), other)]),
        };
        meta.insert("phx_ref".to_owned(), Value::String(self.entry.clone()));
        Value::Object(meta)
    }

    fn info_value(&self) -> Value {
        self.user_info
            .as_ref()
            .and_then(|raw| serde_json::from_str(raw.get()).ok())
            .unwrap_or(Value::Null)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Op {
    Join,
    Leave,
}

/// One change of a channel's membership, as every subscribed node receives it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Change {
    pub op: Op,
    /// The user's first entry (a join) or last one (a leave) in the channel, cluster-wide.
    pub edge: bool,
    pub epoch: String,
    pub ver: u64,
    pub member: Member,
}

/// A change on its way to the sessions of one topic.
#[derive(Debug)]
pub struct TopicChange {
    pub topic: String,
    pub change: Change,
}

/// A fresh snapshot of one topic, for a session repairing a gap.
#[derive(Debug)]
pub struct TopicSnapshot {
    pub topic: String,
    pub snapshot: Snapshot,
}

impl Change {
    /// Phoenix's `presence_diff` payload.
    #[must_use]
    pub fn phoenix_diff(&self) -> Value {
        let one = Value::Object(Map::from_iter([(
            self.member.user_id.clone(),
            serde_json::json!({ "metas": [self.member.meta()] }),
        )]));
        let (joins, leaves) = match self.op {
            Op::Join => (one, Value::Object(Map::new())),
            Op::Leave => (Value::Object(Map::new()), one),
        };
        serde_json::json!({ "joins": joins, "leaves": leaves })
    }

    /// Pusher's `member_added` / `member_removed` data, when the change is a user's edge.
    #[must_use]
    pub fn pusher_member(&self) -> Option<(&'static str, Value)> {
        if !self.edge {
            return None;
        }
        Some(match self.op {
            Op::Join => (
                "pusher_internal:member_added",
                serde_json::json!({
                    "user_id": self.member.user_id,
                    "user_info": self.member.info_value(),
                }),
            ),
            Op::Leave => (
                "pusher_internal:member_removed",
                serde_json::json!({ "user_id": self.member.user_id }),
            ),
        })
    }
}

/// A channel's membership at one version.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub epoch: String,
    pub ver: u64,
    pub members: Vec<Member>,
}

impl Snapshot {
    /// Pusher's presence data: `{"presence": {"ids", "hash", "count"}}`, one user per id with
    /// the info of its first entry.
    #[must_use]
    pub fn pusher_data(&self) -> Value {
        let mut ids = Vec::new();
        let mut hash = Map::new();
        for member in &self.members {
            if !hash.contains_key(&member.user_id) {
                ids.push(Value::String(member.user_id.clone()));
                hash.insert(member.user_id.clone(), member.info_value());
            }
        }
        let count = ids.len();
        serde_json::json!({ "presence": { "ids": ids, "hash": hash, "count": count } })
    }

    /// Phoenix's `presence_state` payload: `{user_id: {"metas": [...]}}`.
    #[must_use]
    pub fn phoenix_state(&self) -> Value {
        let mut users: HashMap<&str, Vec<Value>> = HashMap::new();
        for member in &self.members {
            users
                .entry(member.user_id.as_str())
                .or_default()
                .push(member.meta());
        }
        Value::Object(
            users
                .into_iter()
                .map(|(user, metas)| (user.to_owned(), serde_json::json!({ "metas": metas })))
                .collect(),
        )
    }

    /// What a session has seen once it holds this snapshot.
    #[must_use]
    pub fn seen(&self) -> Seen {
        Seen {
            epoch: self.epoch.clone(),
            ver: self.ver,
        }
    }
}

/// The newest change a session holds for one channel.
#[derive(Debug, Clone)]
pub struct Seen {
    epoch: String,
    ver: u64,
}

/// What a change is to a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    /// Already held (in the snapshot, or seen before): drop it.
    Old,
    /// The next change.
    New,
    /// News, but changes before it were lost on the way (a reconnect, a lagging reader): the
    /// session should take a fresh snapshot.
    Gap,
}

impl Seen {
    /// What `change` is to the session; records it unless it is old. A change of another epoch
    /// (the store lost the channel and rebuilt it) is always news.
    pub fn admit(&mut self, change: &Change) -> Admit {
        let admit = if change.epoch != self.epoch {
            Admit::New
        } else if change.ver <= self.ver {
            return Admit::Old;
        } else if change.ver > self.ver + 1 {
            Admit::Gap
        } else {
            Admit::New
        };
        self.epoch.clone_from(&change.epoch);
        self.ver = change.ver;
        admit
    }

    /// Takes a snapshot fetched to repair a gap. Returns whether it was current: one older than
    /// a change the session already applied undoes that change, so the session fetches once
    /// more (and, its version now recorded, the next one is current).
    pub fn accept(&mut self, snapshot: &Snapshot) -> bool {
        let current = snapshot.epoch != self.epoch || snapshot.ver >= self.ver;
        self.epoch.clone_from(&snapshot.epoch);
        self.ver = snapshot.ver;
        current
    }
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum PresenceError {
    /// The channel holds `max_presence_members` users already.
    #[error("presence channel is full")]
    Full,
    #[error("presence store unavailable: {0}")]
    Unavailable(String),
    /// The store refused this input for good (a script error); retrying cannot help.
    #[error("presence store refused the request: {0}")]
    Rejected(String),
}

/// The membership seam.
///
/// Contract, for every implementation:
/// - `join` adds the entry (idempotent for an entry already present) unless it would be a new
///   user beyond `max_users`; it returns the membership including the entry, and every change
///   after that snapshot reaches every node subscribed to the topic with a greater `ver` (or a
///   new `epoch`), in the order the store applied them;
/// - a join announces `edge` when it is the user's first entry, a leave when it is the last;
/// - `join` may be dropped half-way (its session ended): the entry is then removed again;
/// - `leave` never fails for the caller: the store retries until the entry is gone;
/// - entries of a node that stops without leaving are removed, and announced, by the others;
/// - `users` and `user_counts` answer for the whole cluster.
#[async_trait]
pub trait PresenceStore: Send + Sync + 'static {
    async fn join(
        &self,
        topic: &str,
        member: &Member,
        max_users: usize,
    ) -> Result<Snapshot, PresenceError>;
    fn leave(&self, topic: &str, entry: &str);
    /// The membership now, with its version.
    async fn snapshot(&self, topic: &str) -> Result<Snapshot, PresenceError>;
    async fn users(&self, topic: &str) -> Result<Vec<String>, PresenceError>;
    async fn user_counts(&self, topics: &[String]) -> Result<Vec<usize>, PresenceError>;
    /// Waits until every leave has been applied (a graceful shutdown), at most `timeout`.
    async fn drain(&self, timeout: std::time::Duration);
}

/// A user's first entry joining, or last one leaving, a presence channel, cluster-wide.
#[derive(Debug, Clone)]
pub struct MemberEdge {
    pub topic: String,
    pub user_id: String,
    pub joined: bool,
    /// The change's epoch and version: nodes report edges in their own time, and these order
    /// them.
    pub epoch: String,
    pub ver: u64,
}

/// What else follows from membership and node liveness (the webhooks' member and occupancy
/// events). The node that made a change, or swept a dead node, is the one told, so each
/// cluster-wide fact is reported once.
#[async_trait]
pub trait Observer: Send + Sync + 'static {
    fn member(&self, edge: MemberEdge);
    /// A dead node is being swept: undo what else it held. A failure is retried by the next
    /// sweep.
    async fn node_dead(&self, node: &str) -> Result<(), String>;
    /// Redis forgot this node (`announce` false: restore silently), or swept it as dead while it
    /// was only cut off (true: restore and announce).
    fn returned(&self, announce: bool);
    /// At shutdown, after this node's presence leaves: finish what else it held. Returns
    /// whether that was done within `timeout`; if not, the node must stay listed as live, so
    /// the others sweep it.
    async fn drain(&self, timeout: std::time::Duration) -> bool;
}

/// Checks a member's user id and info as a client sent them.
///
/// # Errors
/// Why they cannot make a member.
pub fn check_member(user_id: &str, user_info: Option<&RawValue>) -> Result<(), &'static str> {
    if user_id.is_empty() || user_id.len() > USER_ID_MAX {
        return Err("user_id must be 1 to 128 characters");
    }
    if user_id.chars().any(char::is_control) {
        return Err("user_id must not contain control characters");
    }
    if let Some(info) = user_info {
        if info.get().len() > USER_INFO_MAX {
            return Err("user_info must be at most 1 KiB of JSON");
        }
        // A raw value lets lone surrogates (`"\ud800"`) through; a parsed one does not, and
        // neither do the other nodes' parsers.
        if serde_json::from_str::<Value>(info.get()).is_err() {
            return Err("user_info must be valid JSON (no lone surrogates)");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(entry: &str, user: &str, info: Option<&str>) -> Member {
        Member {
            entry: entry.into(),
            user_id: user.into(),
            user_info: info.map(|i| RawValue::from_string(i.into()).unwrap()),
        }
    }

    #[test]
    fn views() {
        let snapshot = Snapshot {
            epoch: "e".into(),
            ver: 3,
            members: vec![
                member("1.1", "u1", Some(r#"{"name":"Ann"}"#)),
                member("2.1", "u2", None),
                member("1.2", "u1", Some(r#"{"name":"Ann 2"}"#)),
            ],
        };
        assert_eq!(
            snapshot.pusher_data(),
            serde_json::json!({"presence": {"ids": ["u1", "u2"], "hash": {"u1": {"name": "Ann"}, "u2": null}, "count": 2}})
        );
        assert_eq!(
            snapshot.phoenix_state(),
            serde_json::json!({
                "u1": {"metas": [{"name": "Ann", "phx_ref": "1.1"}, {"name": "Ann 2", "phx_ref": "1.2"}]},
                "u2": {"metas": [{"phx_ref": "2.1"}]},
            })
        );
        assert_eq!(
            member("3", "u", Some("\"text\"")).meta(),
            serde_json::json!({"phx_ref": "3", "user_info": "text"})
        );
    }

    #[test]
    fn seen_admits_only_news_and_spots_gaps() {
        let mut seen = Seen {
            epoch: "a".into(),
            ver: 5,
        };
        let mut change = Change {
            op: Op::Join,
            edge: true,
            epoch: "a".into(),
            ver: 5,
            member: member("1", "u", None),
        };
        assert_eq!(seen.admit(&change), Admit::Old);
        change.ver = 6;
        assert_eq!(seen.admit(&change), Admit::New);
        assert_eq!(seen.admit(&change), Admit::Old);
        change.ver = 9;
        assert_eq!(seen.admit(&change), Admit::Gap);
        let mut snapshot = Snapshot {
            epoch: "a".into(),
            ver: 8,
            members: vec![],
        };
        assert!(!seen.accept(&snapshot), "older than what the session holds");
        assert!(seen.accept(&snapshot), "its version is now the session's");
        snapshot.ver = 9;
        assert!(seen.accept(&snapshot));
        change.epoch = "b".into();
        change.ver = 1;
        assert_eq!(seen.admit(&change), Admit::New);
    }

    #[test]
    fn member_limits() {
        assert!(check_member("u", None).is_ok());
        assert!(check_member("", None).is_err());
        assert!(check_member(&"x".repeat(129), None).is_err());
        let big = RawValue::from_string(format!("\"{}\"", "x".repeat(1100))).unwrap();
        assert!(check_member("u", Some(&big)).is_err());
        let lone: Box<RawValue> = serde_json::from_str(r#""\ud800""#).unwrap();
        assert!(check_member("u", Some(&lone)).is_err());
    }
}
