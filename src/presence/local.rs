//! Presence on a single node (no Redis): the same membership and announcements, in memory.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use async_trait::async_trait;

use super::{
    Change, Member, MemberEdge, Observer, Op, PresenceError, PresenceStore, Snapshot, TopicChange,
};
use crate::bus::BusSink;

#[derive(Default)]
struct Channel {
    /// In join order, as a snapshot lists them.
    entries: Vec<Member>,
    /// Entries per user.
    users: HashMap<String, usize>,
    ver: u64,
}

pub struct LocalPresence {
    sink: Arc<dyn BusSink>,
    observer: Arc<dyn Observer>,
    /// Fixed for the process: its memory is the only copy, lost only with it.
    epoch: String,
    channels: Mutex<HashMap<String, Channel>>,
}

impl LocalPresence {
    #[must_use]
    pub fn new(sink: Arc<dyn BusSink>, observer: Arc<dyn Observer>) -> LocalPresence {
        LocalPresence {
            sink,
            observer,
            epoch: uuid::Uuid::new_v4().simple().to_string(),
            channels: Mutex::new(HashMap::new()),
        }
    }

    fn channels(&self) -> std::sync::MutexGuard<'_, HashMap<String, Channel>> {
        self.channels.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Hands a change to this node's sessions, under the lock so changes keep their order.
    fn announce(&self, topic: &str, op: Op, edge: bool, ver: u64, member: Member) {
        if edge {
            self.observer.member(MemberEdge {
                topic: topic.to_owned(),
                user_id: member.user_id.clone(),
                joined: op == Op::Join,
                epoch: self.epoch.clone(),
                ver,
            });
        }
        self.sink.presence(TopicChange {
            topic: topic.to_owned(),
            change: Change {
                op,
                edge,
                epoch: self.epoch.clone(),
                ver,
                member,
            },
        });
    }
}

#[async_trait]
impl PresenceStore for LocalPresence {
    async fn join(
        &self,
        topic: &str,
        member: &Member,
        max_users: usize,
    ) -> Result<Snapshot, PresenceError> {
        let mut channels = self.channels();
        let channel = channels.entry(topic.to_owned()).or_default();
        if !channel.entries.iter().any(|m| m.entry == member.entry) {
            let count = channel.users.get(&member.user_id).copied().unwrap_or(0);
            if count == 0 && channel.users.len() >= max_users {
                if channel.entries.is_empty() {
                    channels.remove(topic);
                }
                return Err(PresenceError::Full);
            }
            channel.users.insert(member.user_id.clone(), count + 1);
            channel.entries.push(member.clone());
            channel.ver += 1;
            self.announce(topic, Op::Join, count == 0, channel.ver, member.clone());
        }
        Ok(Snapshot {
            epoch: self.epoch.clone(),
            ver: channel.ver,
            members: channel.entries.clone(),
        })
    }

    fn leave(&self, topic: &str, entry: &str) {
        let mut channels = self.channels();
        let Some(channel) = channels.get_mut(topic) else {
            return;
        };
        let Some(at) = channel.entries.iter().position(|m| m.entry == entry) else {
            return;
        };
        let member = channel.entries.remove(at);
        let left = channel.users.get_mut(&member.user_id).map_or(0, |count| {
            *count -= 1;
            *count
        });
        if left == 0 {
            channel.users.remove(&member.user_id);
        }
        channel.ver += 1;
        let ver = channel.ver;
        if channel.entries.is_empty() {
            // Versions restart with the channel; the epoch tells sessions apart only across
            // processes, and a channel with no entries has no sessions left to confuse.
            channels.remove(topic);
        }
        self.announce(topic, Op::Leave, left == 0, ver, member);
    }

    async fn snapshot(&self, topic: &str) -> Result<Snapshot, PresenceError> {
        let channels = self.channels();
        Ok(Snapshot {
            epoch: self.epoch.clone(),
            ver: channels.get(topic).map_or(0, |c| c.ver),
            members: channels
                .get(topic)
                .map(|c| c.entries.clone())
                .unwrap_or_default(),
        })
    }

    async fn users(&self, topic: &str) -> Result<Vec<String>, PresenceError> {
        let channels = self.channels();
        Ok(channels
            .get(topic)
            .map(|c| c.users.keys().cloned().collect())
            .unwrap_or_default())
    }

    async fn user_counts(&self, topics: &[String]) -> Result<Vec<usize>, PresenceError> {
        let channels = self.channels();
        Ok(topics
            .iter()
            .map(|t| channels.get(t).map_or(0, |c| c.users.len()))
            .collect())
    }

    async fn drain(&self, timeout: std::time::Duration) {
        self.observer.drain(timeout).await;
    }
}
