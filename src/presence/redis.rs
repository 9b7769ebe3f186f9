//! Presence in Redis. Per channel (topic `T`), three keys under the hash tag `{T}`:
//! `…:e` entries (field `node|entry|user` → member JSON), `…:u` entries per user, `…:m` the
//! epoch and version. Lua scripts change them and announce the change on the topic's Redis
//! channel in one step, so announcements are exactly as ordered as the changes.
//!
//! Each node owns its entries: it lists the channels it holds entries in (`{node:ID}:topics`)
//! and proves it is alive in a sorted set scored by Redis's clock. A node silent for
//! `node_timeout` is claimed dead by whichever node looks first, and one node at a time (a
//! lease) sweeps its entries, announcing them as leaves. A node that finds Redis has forgotten
//! it (a restart) re-adds its entries without announcing them; one that finds it was swept
//! re-adds and announces them.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use fred::prelude::{
    Client, EventInterface, Expiration, HashesInterface, KeysInterface, SetsInterface,
    SortedSetsInterface,
};
use fred::types::SetOptions;
use fred::types::Value as RedisValue;
use fred::types::scripts::Script;
use tokio::sync::{Notify, mpsc};

use super::{Member, MemberEdge, Observer, PresenceError, PresenceStore, Snapshot};
use crate::bus::Bus;

const PRELUDE: &str = include_str!("presence.lua");
const LIVE_KEY: &str = "pushlite:presence:{live}";
const DEAD_KEY: &str = "pushlite:presence:{live}:dead";
const SWEPT_PREFIX: &str = "pushlite:presence:{live}:swept:";
const LEASE_PREFIX: &str = "pushlite:presence:{live}:lease:";
/// How long a swept marker waits for its node to come back.
const SWEPT_TTL: Duration = Duration::from_secs(24 * 3600);
/// Leaves applied at once by the leave task.
const LEAVE_BATCH: usize = 64;
const LEAVE_RETRY: Duration = Duration::from_millis(500);
/// A re-assert that failed (Redis still settling) is tried again this soon, not a beat later.
const REASSERT_RETRY: Duration = Duration::from_millis(250);

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
    snapshot: Script,
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
            snapshot: script(include_str!("snapshot.lua")),
            sweep: script(include_str!("sweep.lua")),
            reassert: script(include_str!("reassert.lua")),
            heartbeat: script(include_str!("heartbeat.lua")),
            claim: script(include_str!("claim.lua")),
        }
    }
}

/// One of this node's entries, kept to re-assert it and to announce its leave.
#[derive(Clone)]
struct Owned {
    field: String,
    json: String,
    /// The channel's epoch when the entry joined (`-` until the join completes): a leave that
    /// finds the entry gone and the epoch changed knows Redis lost it, and still announces it.
    epoch: String,
}

/// This node's hold on one channel: its entries by entry id, and its joins in flight. While
/// either is non-empty the channel stays in the node's topic list, so a sweep after this
/// node's death finds every entry it may have written.
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

/// A leave on its way to Redis.
struct Leave {
    topic: String,
    entry: Owned,
}

pub struct RedisPresence {
    client: Client,
    /// Announcements wait until the bus is settled after a reconnect: before every node has
    /// re-subscribed, a change published by a script would reach nobody.
    bus: Arc<dyn Bus>,
    /// Told of member edges this node decided, of dead nodes it sweeps, and of its return.
    observer: Arc<dyn Observer>,
    node: String,
    publish: &'static str,
    config: RedisPresenceConfig,
    scripts: Scripts,
    owned: Mutex<HashMap<String, Held>>,
    leaves: mpsc::UnboundedSender<Leave>,
    /// Leaves queued and not yet applied.
    pending: AtomicUsize,
    drained: Notify,
    stopped: AtomicBool,
    /// Since when Redis has answered this node's heartbeats without a break; `None` during an
    /// outage. Sweeps wait a whole timeout after one.
    healthy_since: Mutex<Option<Instant>>,
}

/// Why a Redis call failed: a script error (this input will always fail) or unavailability.
fn failure(e: &fred::error::Error) -> PresenceError {
    let details = e.details();
    if details.contains("user_script") || details.contains("Error running script") {
        PresenceError::Rejected(details.to_owned())
    } else {
        PresenceError::Unavailable(e.to_string())
    }
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

/// Undoes a join's hold when the join ends, or is dropped half-way (its session ended while it
/// waited on Redis): the entry may be in Redis already, so it is taken out again.
struct JoinGuard<'a> {
    store: &'a RedisPresence,
    topic: &'a str,
    entry: &'a str,
    owned: Option<Owned>,
    /// How the join ended: the epoch it joined in, refused (full), or not at all.
    result: Option<Result<String, ()>>,
}

impl Drop for JoinGuard<'_> {
    fn drop(&mut self) {
        let mut owned = self.store.owned();
        let Some(held) = owned.get_mut(self.topic) else {
            return;
        };
        held.joining = held.joining.saturating_sub(1);
        let Some(entry) = self.owned.take() else {
            return;
        };
        match self.result.take() {
            Some(Ok(epoch)) => {
                held.entries
                    .insert(self.entry.to_owned(), Owned { epoch, ..entry });
            }
            // Refused (full): nothing was written.
            Some(Err(())) => {}
            // Failed or abandoned: the script may have run.
            None => self.store.queue_leave(self.topic, entry),
        }
        if held.is_empty() {
            owned.remove(self.topic);
        }
    }
}

impl RedisPresence {
    /// Starts the store's tasks: applying leaves, the heartbeat, and sweeping dead nodes.
    #[must_use]
    pub fn start(
        client: Client,
        bus: Arc<dyn Bus>,
        observer: Arc<dyn Observer>,
        node: String,
        config: RedisPresenceConfig,
    ) -> Arc<RedisPresence> {
        let (leaves, rx) = mpsc::unbounded_channel();
        // At startup Redis is taken as settled (every live node's heartbeat is fresh); after a
        // failure or a reconnect, a whole timeout must pass first.
        let healthy_since = Instant::now().checked_sub(config.node_timeout);
        let presence = Arc::new(RedisPresence {
            client,
            bus,
            observer,
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
            healthy_since: Mutex::new(healthy_since),
        });
        tokio::spawn(presence.clone().apply_leaves(rx));
        tokio::spawn(presence.clone().beat());
        tokio::spawn(presence.clone().sweeper());
        presence
    }

    fn owned(&self) -> std::sync::MutexGuard<'_, HashMap<String, Held>> {
        self.owned.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn healthy_since(&self) -> std::sync::MutexGuard<'_, Option<Instant>> {
        self.healthy_since
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn queue_leave(&self, topic: &str, entry: Owned) {
        self.pending.fetch_add(1, Ordering::SeqCst);
        let _ = self.leaves.send(Leave {
            topic: topic.to_owned(),
            entry,
        });
    }

    /// Runs a script that may announce changes: only once the bus is settled.
    async fn eval(
        &self,
        script: &Script,
        keys: Vec<String>,
        args: Vec<String>,
    ) -> Result<RedisValue, PresenceError> {
        self.bus
            .ready()
            .map_err(|e| PresenceError::Unavailable(e.to_string()))?;
        self.eval_now(script, keys, args).await
    }

    /// Runs a script that announces nothing (the heartbeat, reading a snapshot).
    async fn eval_now(
        &self,
        script: &Script,
        keys: Vec<String>,
        args: Vec<String>,
    ) -> Result<RedisValue, PresenceError> {
        script
            .evalsha_with_reload(&self.client, keys, args)
            .await
            .map_err(|e| failure(&e))
    }

    /// Applies queued leaves in batches. Those Redis could not take are retried until they
    /// apply; one a script refuses is dropped with an error, so it never blocks the others.
    async fn apply_leaves(self: Arc<Self>, mut rx: mpsc::UnboundedReceiver<Leave>) {
        while let Some(first) = rx.recv().await {
            let mut todo = vec![first];
            while todo.len() < LEAVE_BATCH {
                match rx.try_recv() {
                    Ok(leave) => todo.push(leave),
                    Err(_) => break,
                }
            }
            loop {
                let results =
                    futures_util::future::join_all(todo.iter().map(|leave| self.remove(leave)))
                        .await;
                let mut failed = Vec::new();
                for (leave, result) in todo.into_iter().zip(results) {
                    match result {
                        Err(PresenceError::Unavailable(_)) => {
                            failed.push(leave);
                            continue;
                        }
                        Err(error) => {
                            tracing::error!(%error, topic = %leave.topic, "presence leave refused; dropped");
                        }
                        Ok(()) => {}
                    }
                    if self.pending.fetch_sub(1, Ordering::SeqCst) == 1 {
                        self.drained.notify_waiters();
                    }
                }
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

    async fn remove(&self, leave: &Leave) -> Result<(), PresenceError> {
        let args = vec![
            leave.entry.field.clone(),
            leave.topic.clone(),
            self.publish.to_owned(),
            leave.entry.json.clone(),
            leave.entry.epoch.clone(),
        ];
        let removed = self
            .eval(&self.scripts.leave, channel_keys(&leave.topic), args)
            .await?;
        let mut removed = removed.into_array().into_iter();
        if removed.next().and_then(|v| v.as_i64()) == Some(2) {
            let epoch = removed
                .next()
                .and_then(|v| v.as_string())
                .unwrap_or_default();
            let ver = removed.next().and_then(|v| v.as_u64()).unwrap_or(0);
            self.observer.member(MemberEdge {
                topic: leave.topic.clone(),
                user_id: user_of(&leave.entry.field).to_owned(),
                joined: false,
                epoch,
                ver,
            });
        }
        let held = self.owned().contains_key(&leave.topic);
        if !held {
            let key = node_topics_key(&self.node);
            let _: i64 = self
                .client
                .srem(&key, leave.topic.as_str())
                .await
                .map_err(|e| failure(&e))?;
            // A join that began meanwhile may have listed the channel just before this removal:
            // list it again, or a sweep after this node's death would miss its entry.
            if self.owned().contains_key(&leave.topic) {
                let _: i64 = self
                    .client
                    .sadd(&key, leave.topic.as_str())
                    .await
                    .map_err(|e| failure(&e))?;
            }
        }
        Ok(())
    }

    /// Lists the channel for this node when it holds no entry there yet, then runs the join
    /// script.
    async fn add(
        &self,
        topic: &str,
        entry: &Owned,
        max_users: usize,
        first_here: bool,
    ) -> Result<Snapshot, PresenceError> {
        if first_here {
            let _: i64 = self
                .client
                .sadd(node_topics_key(&self.node), topic)
                .await
                .map_err(|e| failure(&e))?;
        }
        let args = vec![
            entry.field.clone(),
            entry.json.clone(),
            max_users.to_string(),
            topic.to_owned(),
            self.publish.to_owned(),
        ];
        let reply = self
            .eval(&self.scripts.join, channel_keys(topic), args)
            .await?;
        let (snapshot, edge) = snapshot(reply)?;
        if edge {
            self.observer.member(MemberEdge {
                topic: topic.to_owned(),
                user_id: user_of(&entry.field).to_owned(),
                joined: true,
                epoch: snapshot.epoch.clone(),
                ver: snapshot.ver,
            });
        }
        Ok(snapshot)
    }

    /// The heartbeat: 0 known, 1 forgotten by Redis, 2 swept as dead, 3 being swept.
    async fn heartbeat(&self) -> Result<i64, PresenceError> {
        let keys = vec![
            LIVE_KEY.to_owned(),
            DEAD_KEY.to_owned(),
            format!("{SWEPT_PREFIX}{}", self.node),
        ];
        let state = self
            .eval_now(&self.scripts.heartbeat, keys, vec![self.node.clone()])
            .await?;
        Ok(state.as_i64().unwrap_or(0))
    }

    /// Adds every entry of this node that Redis lacks, announcing them or not.
    async fn reassert(&self, announce: bool) -> Result<usize, PresenceError> {
        let held: Vec<(String, Vec<(String, Owned)>)> = self
            .owned()
            .iter()
            .filter(|(_, held)| !held.entries.is_empty())
            .map(|(topic, held)| {
                let entries = held
                    .entries
                    .iter()
                    .map(|(id, owned)| (id.clone(), owned.clone()))
                    .collect();
                (topic.clone(), entries)
            })
            .collect();
        let mut added = 0;
        for (topic, entries) in held {
            let _: i64 = self
                .client
                .sadd(node_topics_key(&self.node), topic.as_str())
                .await
                .map_err(|e| failure(&e))?;
            let mut args = vec![
                topic.clone(),
                self.publish.to_owned(),
                if announce { "1" } else { "0" }.to_owned(),
            ];
            for (_, owned) in &entries {
                args.extend([owned.field.clone(), owned.json.clone()]);
            }
            let keys = channel_keys(&topic);
            // A silent re-assert publishes nothing, so it need not wait for a settled bus.
            let reply = if announce {
                self.eval(&self.scripts.reassert, keys, args).await?
            } else {
                self.eval_now(&self.scripts.reassert, keys, args).await?
            };
            let mut reply = reply.into_array().into_iter();
            let count = reply.next().and_then(|v| v.as_u64()).unwrap_or(0);
            added += usize::try_from(count).unwrap_or(0);
            for edge in edges(&topic, true, reply) {
                self.observer.member(edge);
            }
            // An entry that left while the script was on its way may have been written back:
            // take it out again.
            let gone: Vec<Owned> = {
                let owned = self.owned();
                let still: HashSet<&String> = owned
                    .get(&topic)
                    .map(|held| held.entries.keys().collect())
                    .unwrap_or_default();
                entries
                    .into_iter()
                    .filter(|(id, _)| !still.contains(id))
                    .map(|(_, owned)| owned)
                    .collect()
            };
            for entry in gone {
                self.queue_leave(&topic, entry);
            }
        }
        Ok(added)
    }

    /// Claims the nodes silent past the timeout and removes their entries, announcing each.
    /// One node sweeps a dead node at a time (a lease as long as the timeout): two sweeps
    /// racing with the dead node's return could remove entries it had just re-added.
    async fn sweep(&self) -> Result<(), PresenceError> {
        // A heartbeat interval of margin: a node is claimed before the timeout, and swept by it.
        let silence = self.config.node_timeout - self.interval();
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
            let ttl = i64::try_from(self.config.node_timeout.as_millis()).unwrap_or(i64::MAX);
            let lease: Option<String> = self
                .client
                .set(
                    format!("{LEASE_PREFIX}{node}"),
                    self.node.as_str(),
                    Some(Expiration::PX(ttl)),
                    Some(SetOptions::NX),
                    false,
                )
                .await
                .map_err(|e| failure(&e))?;
            if lease.is_none() {
                continue;
            }
            self.sweep_node(&node).await?;
        }
        Ok(())
    }

    async fn sweep_node(&self, node: &str) -> Result<(), PresenceError> {
        let topics_key = node_topics_key(node);
        let topics: Vec<String> = self
            .client
            .smembers(&topics_key)
            .await
            .map_err(|e| failure(&e))?;
        // The rest of what the node held (its channels' occupancy) first: its presence keys
        // are deleted below, and a failure here must leave the node to the next sweep.
        self.observer
            .node_dead(node)
            .await
            .map_err(PresenceError::Unavailable)?;
        let prefix = format!("{node}|");
        let mut removed = 0;
        for topic in &topics {
            let args = vec![prefix.clone(), topic.clone(), self.publish.to_owned()];
            match self
                .eval(&self.scripts.sweep, channel_keys(topic), args)
                .await
            {
                Ok(reply) => {
                    let mut reply = reply.into_array().into_iter();
                    removed += reply.next().and_then(|v| v.as_u64()).unwrap_or(0);
                    for edge in edges(topic, false, reply) {
                        self.observer.member(edge);
                    }
                }
                Err(PresenceError::Rejected(error)) => {
                    tracing::error!(%error, %topic, "presence sweep refused for a channel; skipped");
                }
                Err(e) => return Err(e),
            }
        }
        let _: i64 = self
            .client
            .del(&topics_key)
            .await
            .map_err(|e| failure(&e))?;
        let _: i64 = self
            .client
            .zrem(DEAD_KEY, node)
            .await
            .map_err(|e| failure(&e))?;
        tracing::info!(%node, channels = topics.len(), removed, "presence: swept a dead node");
        Ok(())
    }

    fn interval(&self) -> Duration {
        self.config.node_timeout / 5
    }

    /// Heartbeats every fifth of the timeout, and at once after a reconnect, and re-asserts
    /// what Redis lost. Its own task: a long sweep must not delay it into looking dead.
    async fn beat(self: Arc<Self>) {
        let mut ticker = tokio::time::interval(self.interval());
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut reconnects = self.client.reconnect_rx();
        // A re-assert that failed half-way, retried on the next beat: Some(announce).
        let mut owed: Option<bool> = None;
        while !self.stopped.load(Ordering::SeqCst) {
            let retry = async {
                match owed {
                    Some(_) => tokio::time::sleep(REASSERT_RETRY).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = ticker.tick() => {}
                _ = reconnects.recv() => *self.healthy_since() = None,
                () = retry => {}
            }
            let beat = match self.heartbeat().await {
                Ok(beat) => beat,
                Err(error) => {
                    tracing::debug!(%error, "presence heartbeat failed");
                    *self.healthy_since() = None;
                    continue;
                }
            };
            self.healthy_since().get_or_insert_with(Instant::now);
            match beat {
                1 => owed = Some(owed.unwrap_or(false)),
                2 => owed = Some(true),
                _ => {}
            }
            if let Some(announce) = owed {
                match self.reassert(announce).await {
                    Ok(added) => {
                        self.observer.returned(announce);
                        if added > 0 {
                            tracing::info!(
                                added,
                                announce,
                                "presence: re-asserted this node's members"
                            );
                        }
                        owed = None;
                    }
                    Err(error) => tracing::warn!(%error, "presence re-assert failed; retrying"),
                }
            }
        }
    }

    /// Sweeps dead nodes every heartbeat interval, unless an outage ended less than a timeout
    /// ago: right after one every node's heartbeat is stale, and none of them is dead.
    async fn sweeper(self: Arc<Self>) {
        let mut ticker = tokio::time::interval(self.interval());
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        while !self.stopped.load(Ordering::SeqCst) {
            ticker.tick().await;
            let settled = self
                .healthy_since()
                .is_some_and(|since| since.elapsed() >= self.config.node_timeout);
            if settled && let Err(error) = self.sweep().await {
                tracing::warn!(%error, "presence sweep failed");
            }
        }
    }
}

/// The edges a script listed as (user, epoch, version) triples.
fn edges(topic: &str, joined: bool, items: impl Iterator<Item = RedisValue>) -> Vec<MemberEdge> {
    let items: Vec<RedisValue> = items.collect();
    items
        .chunks(3)
        .filter_map(|triple| match triple {
            [user, epoch, ver] => Some(MemberEdge {
                topic: topic.to_owned(),
                user_id: user.as_string()?,
                joined,
                epoch: epoch.as_string()?,
                ver: ver.as_string()?.parse().ok()?,
            }),
            _ => None,
        })
        .collect()
}

/// The user id of an entry's field `node|entry|user`.
fn user_of(field: &str) -> &str {
    field.splitn(3, '|').nth(2).unwrap_or(field)
}

/// `{0}` (full) or `{1, epoch, ver, [member JSON…], edge}`, from the join and snapshot scripts
/// (only a join has the edge: whether it added the user's first entry).
fn snapshot(value: RedisValue) -> Result<(Snapshot, bool), PresenceError> {
    let mut items = value.into_array().into_iter();
    match items.next().and_then(|v| v.as_i64()) {
        Some(0) => return Err(PresenceError::Full),
        Some(1) => {}
        _ => {
            return Err(PresenceError::Unavailable(
                "unexpected presence script reply".to_owned(),
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
    let edge = items.next().and_then(|v| v.as_i64()) == Some(1);
    Ok((
        Snapshot {
            epoch,
            ver,
            members,
        },
        edge,
    ))
}

#[async_trait]
impl PresenceStore for RedisPresence {
    async fn join(
        &self,
        topic: &str,
        member: &Member,
        max_users: usize,
    ) -> Result<Snapshot, PresenceError> {
        let json =
            serde_json::to_string(member).map_err(|e| PresenceError::Rejected(e.to_string()))?;
        let entry = Owned {
            field: format!("{}|{}|{}", self.node, member.entry, member.user_id),
            json,
            epoch: "-".to_owned(),
        };
        let first_here = {
            let mut owned = self.owned();
            let held = owned.entry(topic.to_owned()).or_default();
            held.joining += 1;
            // Concurrent first joins each list the channel: a set add is idempotent, and none
            // of them may rely on another's add having landed.
            held.entries.is_empty()
        };
        let mut guard = JoinGuard {
            store: self,
            topic,
            entry: &member.entry,
            owned: Some(entry.clone()),
            result: None,
        };
        let result = self.add(topic, &entry, max_users, first_here).await;
        guard.result = match &result {
            Ok(snapshot) => Some(Ok(snapshot.epoch.clone())),
            Err(PresenceError::Full) => Some(Err(())),
            Err(_) => None,
        };
        drop(guard);
        result
    }

    fn leave(&self, topic: &str, entry: &str) {
        let owned_entry = {
            let mut owned = self.owned();
            let Some(held) = owned.get_mut(topic) else {
                return;
            };
            let Some(owned_entry) = held.entries.remove(entry) else {
                return;
            };
            if held.is_empty() {
                owned.remove(topic);
            }
            owned_entry
        };
        self.queue_leave(topic, owned_entry);
    }

    async fn snapshot(&self, topic: &str) -> Result<Snapshot, PresenceError> {
        let reply = self
            .eval_now(&self.scripts.snapshot, channel_keys(topic), Vec::new())
            .await?;
        snapshot(reply).map(|(snapshot, _)| snapshot)
    }

    async fn users(&self, topic: &str) -> Result<Vec<String>, PresenceError> {
        let keys = channel_keys(topic);
        self.client.hkeys(&keys[1]).await.map_err(|e| failure(&e))
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
                    .map_err(|e| failure(&e))
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
        let started = Instant::now();
        let done = tokio::time::timeout(timeout, drained).await.is_ok();
        // The leaves' member edges are queued before the observer's own drain, so they go too.
        let observed = self
            .observer
            .drain(timeout.saturating_sub(started.elapsed()))
            .await;
        self.stopped.store(true, Ordering::SeqCst);
        if done && observed && self.owned().is_empty() {
            // Every entry left: nothing for the others to sweep.
            let _: Result<i64, _> = self.client.zrem(LIVE_KEY, self.node.as_str()).await;
            let _: Result<i64, _> = self.client.del(node_topics_key(&self.node)).await;
        }
    }
}
