//! Presence in Redis. Per channel (topic `T`), three keys under the hash tag `{T}`:
//! `…:e` entries (field `node|entry` → member JSON), `…:u` entries per user, `…:m` the epoch and
//! version. Lua scripts change them and announce the change on the topic's Redis channel in one
//! step, so announcements are exactly as ordered as the changes.
//!
//! Each node owns its entries: it lists the channels it holds entries in (`{node:ID}:topics`)
//! and proves it is alive in a sorted set scored by Redis's clock. A node silent for
//! `node_timeout` is claimed dead by whichever node looks first, and its entries are swept and
//! announced as leaves. A node that finds Redis has forgotten it (a restart) re-adds its entries
//! without announcing them; one that finds it was swept re-adds and announces them.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use fred::prelude::{
    Client, EventInterface, HashesInterface, KeysInterface, SetsInterface, SortedSetsInterface,
};
use fred::types::Value as RedisValue;
use fred::types::scripts::Script;
use tokio::sync::{Notify, mpsc};

use super::{Member, PresenceError, PresenceStore, Snapshot};

const PRELUDE: &str = include_str!("presence.lua");
const LIVE_KEY: &str = "pushlite:presence:{live}";
const DEAD_KEY: &str = "pushlite:presence:{live}:dead";
const SWEPT_PREFIX: &str = "pushlite:presence:{live}:swept:";
/// How long a swept marker waits for its node to come back.
const SWEPT_TTL: Duration = Duration::from_secs(24 * 3600);
/// Leaves applied at once by the leave task.
const LEAVE_BATCH: usize = 64;
const LEAVE_RETRY: Duration = Duration::from_millis(500);

#[derive(Debug, Clone)]
pub struct RedisPresenceConfig {
    /// A node silent this long is dead: its entries are removed and announced.
    pub node_timeout: Duration,
    /// Redis Cluster: announce with `SPUBLISH` on the channel's shard.
    pub sharded: bool,
}

struct Scripts {
    join: Script,
    leave: Script,
    sweep: Script,
    reassert: Script,
    heartbeat: Script,
    claim: Script,
}

fn script(body: &str) -> Script {
    Script::from_lua(format!("{PRELUDE}\n{body}"))
}

impl Scripts {
    fn new() -> Scripts {
        Scripts {
            join: script(include_str!("join.lua")),
            leave: script(include_str!("leave.lua")),
            sweep: script(include_str!("sweep.lua")),
            reassert: script(include_str!("reassert.lua")),
            heartbeat: script(include_str!("heartbeat.lua")),
            claim: script(include_str!("claim.lua")),
        }
    }
}

/// One of this node's entries, kept to re-assert it.
#[derive(Clone)]
struct Owned {
    user_id: String,
    json: String,
}

/// This node's hold on one channel: its entries, and its joins in flight. While either is
/// non-empty the channel stays in the node's topic list, so a sweep after this node's death
/// finds every entry it may have written.
#[derive(Default)]
struct Held {
    entries: HashMap<String, Owned>,
    joining: usize,
}

impl Held {
    fn is_empty(&self) -> bool {
        self.entries.is_empty() && self.joining == 0
    }
}

pub struct RedisPresence {
    client: Client,
    node: String,
    publish: &'static str,
    config: RedisPresenceConfig,
    scripts: Scripts,
    /// This node's entries by topic.
    owned: Mutex<HashMap<String, Held>>,
    leaves: mpsc::UnboundedSender<(String, String)>,
    /// Leaves queued and not yet applied.
    pending: AtomicUsize,
    drained: Notify,
    stopped: AtomicBool,
}

fn unavailable(e: &fred::error::Error) -> PresenceError {
    PresenceError::Unavailable(e.to_string())
}

fn channel_keys(topic: &str) -> Vec<String> {
    ["e", "u", "m"]
        .iter()
        .map(|k| format!("pushlite:presence:{{{topic}}}:{k}"))
        .collect()
}

fn node_topics_key(node: &str) -> String {
    format!("pushlite:presence:{{node:{node}}}:topics")
}

fn millis(d: Duration) -> String {
    d.as_millis().to_string()
}

impl RedisPresence {
    /// Starts the store's tasks: applying leaves, the heartbeat, and sweeping dead nodes.
    #[must_use]
    pub fn start(client: Client, node: String, config: RedisPresenceConfig) -> Arc<RedisPresence> {
        let (leaves, rx) = mpsc::unbounded_channel();
        let presence = Arc::new(RedisPresence {
            client,
            node,
            publish: if config.sharded {
                "SPUBLISH"
            } else {
                "PUBLISH"
            },
            config,
            scripts: Scripts::new(),
            owned: Mutex::new(HashMap::new()),
            leaves,
            pending: AtomicUsize::new(0),
            drained: Notify::new(),
            stopped: AtomicBool::new(false),
        });
        tokio::spawn(presence.clone().apply_leaves(rx));
        tokio::spawn(presence.clone().maintain());
        presence
    }

    fn owned(&self) -> std::sync::MutexGuard<'_, HashMap<String, Held>> {
        self.owned.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn field(&self, entry: &str) -> String {
        format!("{}|{entry}", self.node)
    }

    async fn eval(
        &self,
        script: &Script,
        keys: Vec<String>,
        args: Vec<String>,
    ) -> Result<RedisValue, PresenceError> {
        script
            .evalsha_with_reload(&self.client, keys, args)
            .await
            .map_err(|e| unavailable(&e))
    }

    /// Applies queued leaves in batches, retrying those Redis refused until they apply.
    async fn apply_leaves(self: Arc<Self>, mut rx: mpsc::UnboundedReceiver<(String, String)>) {
        while let Some(first) = rx.recv().await {
            let mut todo = vec![first];
            while todo.len() < LEAVE_BATCH {
                match rx.try_recv() {
                    Ok(leave) => todo.push(leave),
                    Err(_) => break,
                }
            }
            loop {
                let results = futures_util::future::join_all(
                    todo.iter().map(|(topic, field)| self.remove(topic, field)),
                )
                .await;
                let failed: Vec<(String, String)> = todo
                    .into_iter()
                    .zip(results)
                    .filter_map(|(leave, result)| result.err().map(|_| leave))
                    .collect();
                if failed.is_empty() {
                    break;
                }
                tracing::warn!(
                    left = failed.len(),
                    "presence leaves not applied: redis unavailable; retrying"
                );
                tokio::time::sleep(LEAVE_RETRY).await;
                todo = failed;
            }
        }
    }

    async fn remove(&self, topic: &str, field: &str) -> Result<(), PresenceError> {
        let args = vec![field.to_owned(), topic.to_owned(), self.publish.to_owned()];
        self.eval(&self.scripts.leave, channel_keys(topic), args)
            .await?;
        let holds = self.owned().contains_key(topic);
        if !holds {
            let _: i64 = self
                .client
                .srem(node_topics_key(&self.node), topic)
                .await
                .map_err(|e| unavailable(&e))?;
        }
        if self.pending.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.drained.notify_waiters();
        }
        Ok(())
    }

    /// Lists the channel for this node when it is its first hold there, then runs the join
    /// script.
    async fn add(
        &self,
        topic: &str,
        field: &str,
        member: &Member,
        json: &str,
        max_users: usize,
        first_here: bool,
    ) -> Result<Snapshot, PresenceError> {
        if first_here {
            let _: i64 = self
                .client
                .sadd(node_topics_key(&self.node), topic)
                .await
                .map_err(|e| unavailable(&e))?;
        }
        let args = vec![
            field.to_owned(),
            member.user_id.clone(),
            json.to_owned(),
            max_users.to_string(),
            topic.to_owned(),
            self.publish.to_owned(),
        ];
        let reply = self
            .eval(&self.scripts.join, channel_keys(topic), args)
            .await?;
        snapshot(reply)
    }

    /// The heartbeat: 0 known, 1 forgotten by Redis, 2 swept as dead, 3 being swept.
    async fn heartbeat(&self) -> Result<i64, PresenceError> {
        let keys = vec![
            LIVE_KEY.to_owned(),
            DEAD_KEY.to_owned(),
            format!("{SWEPT_PREFIX}{}", self.node),
        ];
        let state = self
            .eval(&self.scripts.heartbeat, keys, vec![self.node.clone()])
            .await?;
        Ok(state.as_i64().unwrap_or(0))
    }

    /// Adds every entry of this node that Redis lacks, announcing them or not.
    async fn reassert(&self, announce: bool) -> Result<usize, PresenceError> {
        let owned: Vec<(String, Vec<(String, Owned)>)> = self
            .owned()
            .iter()
            .filter(|(_, held)| !held.entries.is_empty())
            .map(|(topic, held)| {
                let entries = held
                    .entries
                    .iter()
                    .map(|(field, owned)| (field.clone(), owned.clone()))
                    .collect();
                (topic.clone(), entries)
            })
            .collect();
        let mut added = 0;
        for (topic, entries) in owned {
            let _: i64 = self
                .client
                .sadd(node_topics_key(&self.node), topic.as_str())
                .await
                .map_err(|e| unavailable(&e))?;
            let mut args = vec![
                topic.clone(),
                self.publish.to_owned(),
                if announce { "1" } else { "0" }.to_owned(),
            ];
            for (field, owned) in entries {
                args.extend([field, owned.user_id, owned.json]);
            }
            let count = self
                .eval(&self.scripts.reassert, channel_keys(&topic), args)
                .await?;
            added += usize::try_from(count.as_u64().unwrap_or(0)).unwrap_or(0);
        }
        Ok(added)
    }

    /// Claims the nodes silent past the timeout and removes their entries, announcing each.
    async fn sweep(&self) -> Result<(), PresenceError> {
        // A heartbeat interval of margin: a node is claimed before the timeout, and swept by it.
        let silence = self.config.node_timeout - self.beat();
        let args = vec![
            millis(silence),
            self.node.clone(),
            SWEPT_PREFIX.to_owned(),
            millis(SWEPT_TTL),
        ];
        let dead = self
            .eval(
                &self.scripts.claim,
                vec![LIVE_KEY.to_owned(), DEAD_KEY.to_owned()],
                args,
            )
            .await?;
        for node in dead.into_array() {
            let Some(node) = node.as_string() else {
                continue;
            };
            let topics_key = node_topics_key(&node);
            let topics: Vec<String> = self
                .client
                .smembers(&topics_key)
                .await
                .map_err(|e| unavailable(&e))?;
            let prefix = format!("{node}|");
            let mut removed = 0;
            for topic in &topics {
                let args = vec![prefix.clone(), topic.clone(), self.publish.to_owned()];
                let count = self
                    .eval(&self.scripts.sweep, channel_keys(topic), args)
                    .await?;
                removed += count.as_u64().unwrap_or(0);
            }
            let _: i64 = self
                .client
                .del(&topics_key)
                .await
                .map_err(|e| unavailable(&e))?;
            let _: i64 = self
                .client
                .zrem(DEAD_KEY, node.as_str())
                .await
                .map_err(|e| unavailable(&e))?;
            tracing::info!(%node, channels = topics.len(), removed, "presence: swept a dead node");
        }
        Ok(())
    }

    fn beat(&self) -> Duration {
        self.config.node_timeout / 5
    }

    /// Heartbeats every fifth of the timeout (and at once after a reconnect), re-asserts what
    /// Redis lost, and sweeps dead nodes unless an outage ended less than a timeout ago: right
    /// after one every node's heartbeat is stale, and none of them is dead.
    async fn maintain(self: Arc<Self>) {
        let mut ticker = tokio::time::interval(self.beat());
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut reconnects = self.client.reconnect_rx();
        // At startup Redis is taken as settled (every live node's heartbeat is fresh); after a
        // failure or a reconnect, a whole timeout must pass first.
        let mut healthy_since = Instant::now().checked_sub(self.config.node_timeout);
        // A re-assert that failed half-way, retried on the next beat: Some(announce).
        let mut owed: Option<bool> = None;
        while !self.stopped.load(Ordering::SeqCst) {
            tokio::select! {
                _ = ticker.tick() => {}
                _ = reconnects.recv() => healthy_since = None,
            }
            let beat = match self.heartbeat().await {
                Ok(beat) => beat,
                Err(error) => {
                    tracing::debug!(%error, "presence heartbeat failed");
                    healthy_since = None;
                    continue;
                }
            };
            match beat {
                1 => owed = Some(owed.unwrap_or(false)),
                2 => owed = Some(true),
                _ => {}
            }
            if let Some(announce) = owed {
                match self.reassert(announce).await {
                    Ok(added) => {
                        if added > 0 {
                            tracing::info!(
                                added,
                                announce,
                                "presence: re-asserted this node's members"
                            );
                        }
                        owed = None;
                    }
                    Err(error) => {
                        tracing::warn!(%error, "presence re-assert failed; retrying");
                        continue;
                    }
                }
            }
            let since = *healthy_since.get_or_insert_with(Instant::now);
            if since.elapsed() >= self.config.node_timeout
                && let Err(error) = self.sweep().await
            {
                tracing::warn!(%error, "presence sweep failed");
            }
        }
    }
}

/// `{0}` (full) or `{1, epoch, ver, [member JSON…]}`, from the join script.
fn snapshot(value: RedisValue) -> Result<Snapshot, PresenceError> {
    let mut items = value.into_array().into_iter();
    match items.next().and_then(|v| v.as_i64()) {
        Some(0) => return Err(PresenceError::Full),
        Some(1) => {}
        _ => {
            return Err(PresenceError::Unavailable(
                "unexpected join script reply".to_owned(),
            ));
        }
    }
    let epoch = items.next().and_then(|v| v.as_string()).unwrap_or_default();
    let ver = items.next().and_then(|v| v.as_u64()).unwrap_or(0);
    let members = items
        .next()
        .map(RedisValue::into_array)
        .unwrap_or_default()
        .into_iter()
        .filter_map(|v| v.as_string())
        .filter_map(|json| serde_json::from_str(&json).ok())
        .collect();
    Ok(Snapshot {
        epoch,
        ver,
        members,
    })
}

#[async_trait]
impl PresenceStore for RedisPresence {
    async fn join(
        &self,
        topic: &str,
        member: &Member,
        max_users: usize,
    ) -> Result<Snapshot, PresenceError> {
        let field = self.field(&member.entry);
        let json =
            serde_json::to_string(member).map_err(|e| PresenceError::Unavailable(e.to_string()))?;
        let first_here = {
            let mut owned = self.owned();
            let held = owned.entry(topic.to_owned()).or_default();
            held.joining += 1;
            // Concurrent first joins each list the channel: a set add is idempotent, and none
            // of them may rely on another's add having landed.
            held.entries.is_empty()
        };
        let result = self
            .add(topic, &field, member, &json, max_users, first_here)
            .await;
        let mut owned = self.owned();
        if let Some(held) = owned.get_mut(topic) {
            held.joining -= 1;
            if result.is_ok() {
                held.entries.insert(
                    field.clone(),
                    Owned {
                        user_id: member.user_id.clone(),
                        json,
                    },
                );
            }
            if held.is_empty() {
                owned.remove(topic);
            }
        }
        drop(owned);
        match result {
            Err(PresenceError::Unavailable(e)) => {
                // The script may have run before the reply was lost: take the entry out again.
                self.pending.fetch_add(1, Ordering::SeqCst);
                let _ = self.leaves.send((topic.to_owned(), field));
                Err(PresenceError::Unavailable(e))
            }
            other => other,
        }
    }

    fn leave(&self, topic: &str, entry: &str) {
        let field = self.field(entry);
        {
            let mut owned = self.owned();
            let Some(held) = owned.get_mut(topic) else {
                return;
            };
            if held.entries.remove(&field).is_none() {
                return;
            }
            if held.is_empty() {
                owned.remove(topic);
            }
        }
        self.pending.fetch_add(1, Ordering::SeqCst);
        let _ = self.leaves.send((topic.to_owned(), field));
    }

    async fn users(&self, topic: &str) -> Result<Vec<String>, PresenceError> {
        let keys = channel_keys(topic);
        self.client
            .hkeys(&keys[1])
            .await
            .map_err(|e| unavailable(&e))
    }

    async fn user_counts(&self, topics: &[String]) -> Result<Vec<usize>, PresenceError> {
        let counts = futures_util::future::join_all(topics.iter().map(|topic| async move {
            let keys = channel_keys(topic);
            self.client.hlen::<u64, _>(&keys[1]).await
        }))
        .await;
        counts
            .into_iter()
            .map(|count| {
                count
                    .map(|n| usize::try_from(n).unwrap_or(usize::MAX))
                    .map_err(|e| unavailable(&e))
            })
            .collect()
    }

    async fn drain(&self, timeout: Duration) {
        let drained = async {
            while self.pending.load(Ordering::SeqCst) > 0 {
                let notified = self.drained.notified();
                if self.pending.load(Ordering::SeqCst) == 0 {
                    break;
                }
                notified.await;
            }
        };
        let done = tokio::time::timeout(timeout, drained).await.is_ok();
        self.stopped.store(true, Ordering::SeqCst);
        if done && self.owned().is_empty() {
            // Every entry left: nothing for the others to sweep.
            let _: Result<i64, _> = self.client.zrem(LIVE_KEY, self.node.as_str()).await;
            let _: Result<i64, _> = self.client.del(node_topics_key(&self.node)).await;
        }
    }
}
