//! The webhook store of a single node (no Redis): the same decisions and retries, in memory.
//! Its queue lives as long as the process.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use serde_json::json;
use serde_json::value::RawValue;
use tokio::sync::Notify;
use tokio::time::Instant;

use super::{Dropped, Job, Retry, Status, WebhookError, WebhookStore};
use crate::domain::topic::{app_of, channel_of};
use crate::presence::MemberEdge;

#[derive(Default)]
struct State {
    occupied: HashSet<String>,
    /// Topic → when its `channel_vacated` is due, and whether the app wants it.
    vacating: HashMap<String, (Instant, bool)>,
    /// (topic, user) → when its `member_removed` is due, and whether the app wants it.
    leaving: HashMap<(String, String), (Instant, bool)>,
    queue: VecDeque<Job>,
    retries: Vec<Retry>,
    /// Taken and not yet done: id → app.
    taken: HashMap<String, String>,
    statuses: HashMap<(String, String), Status>,
    /// App → how many of its events may be queued, taken or wait to retry (absent: no quota).
    quotas: HashMap<String, usize>,
    /// App → how many of its events are queued, taken or waiting to retry.
    counts: HashMap<String, usize>,
    next: u64,
}

pub struct LocalWebhookStore {
    leave_delay: Duration,
    max_queue: usize,
    state: Mutex<State>,
    arrived: Notify,
}

impl LocalWebhookStore {
    #[must_use]
    pub fn new(leave_delay: Duration, max_queue: usize) -> LocalWebhookStore {
        LocalWebhookStore {
            leave_delay,
            max_queue,
            state: Mutex::new(State::default()),
            arrived: Notify::new(),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Queues an event, unless the queue is full: then its app is added to `dropped`.
    fn push(&self, state: &mut State, app: &str, event: String, dropped: &mut Dropped) {
        let Ok(event) = RawValue::from_string(event) else {
            return;
        };
        if state.queue.len() + state.retries.len() >= self.max_queue {
            dropped.push(app.to_owned());
            return;
        }
        let count = state.counts.get(app).copied().unwrap_or(0);
        if state.quotas.get(app).is_some_and(|&quota| count >= quota) {
            dropped.push(app.to_owned());
            return;
        }
        state.counts.insert(app.to_owned(), count + 1);
        state.next += 1;
        let now = chrono::Utc::now().timestamp_millis();
        let id = format!("{now}-{}", state.next);
        state.queue.push_back(Job {
            origin: id.clone(),
            id,
            app: app.to_owned(),
            event,
            queued_at_ms: now,
            url: None,
            attempt: 0,
        });
        self.arrived.notify_one();
    }

    fn push_channel(
        &self,
        state: &mut State,
        name: &str,
        topic: &str,
        user_id: Option<&str>,
    ) -> Dropped {
        let mut dropped = Vec::new();
        let (Some(app), Some(channel)) = (app_of(topic), channel_of(topic)) else {
            return dropped;
        };
        let mut event = json!({ "name": name, "channel": channel });
        if let (Some(user_id), Some(fields)) = (user_id, event.as_object_mut()) {
            fields.insert("user_id".to_owned(), user_id.into());
        }
        self.push(state, app, event.to_string(), &mut dropped);
        dropped
    }
}

#[async_trait]
impl WebhookStore for LocalWebhookStore {
    async fn occupy(
        &self,
        topic: &str,
        wants: bool,
        announce: bool,
    ) -> Result<Dropped, WebhookError> {
        let mut state = self.state();
        if state.occupied.insert(topic.to_owned())
            && state.vacating.remove(topic).is_none()
            && announce
            && wants
        {
            return Ok(self.push_channel(&mut state, "channel_occupied", topic, None));
        }
        Ok(Vec::new())
    }

    async fn vacate(&self, topic: &str, wants: bool) -> Result<(), WebhookError> {
        let mut state = self.state();
        if state.occupied.remove(topic) {
            let due = Instant::now() + self.leave_delay;
            state.vacating.insert(topic.to_owned(), (due, wants));
        }
        Ok(())
    }

    // One process: its presence store reports edges in order, so they need no ordering here.
    async fn member(&self, edge: &MemberEdge, wants: bool) -> Result<Dropped, WebhookError> {
        let mut state = self.state();
        let key = (edge.topic.clone(), edge.user_id.clone());
        if !edge.joined {
            state
                .leaving
                .insert(key, (Instant::now() + self.leave_delay, wants));
        } else if state.leaving.remove(&key).is_none() && wants {
            return Ok(self.push_channel(
                &mut state,
                "member_added",
                &edge.topic,
                Some(&edge.user_id),
            ));
        }
        Ok(Vec::new())
    }

    async fn enqueue(&self, app: &str, event: &str) -> Result<Dropped, WebhookError> {
        let mut state = self.state();
        let mut dropped = Vec::new();
        self.push(&mut state, app, event.to_owned(), &mut dropped);
        Ok(dropped)
    }

    async fn fire_due(&self) -> Result<Dropped, WebhookError> {
        let now = Instant::now();
        let mut dropped = Vec::new();
        let mut state = self.state();
        let vacated: Vec<(String, bool)> = state
            .vacating
            .iter()
            .filter(|(_, (due, _))| *due <= now)
            .map(|(topic, (_, wants))| (topic.clone(), *wants))
            .collect();
        for (topic, wants) in vacated {
            state.vacating.remove(&topic);
            if wants && !state.occupied.contains(&topic) {
                dropped.extend(self.push_channel(&mut state, "channel_vacated", &topic, None));
            }
        }
        let removed: Vec<((String, String), bool)> = state
            .leaving
            .iter()
            .filter(|(_, (due, _))| *due <= now)
            .map(|(key, (_, wants))| (key.clone(), *wants))
            .collect();
        for (key, wants) in removed {
            state.leaving.remove(&key);
            if !wants {
                continue;
            }
            dropped.extend(self.push_channel(&mut state, "member_removed", &key.0, Some(&key.1)));
        }
        let now_ms = chrono::Utc::now().timestamp_millis();
        let (due, waiting): (Vec<Retry>, Vec<Retry>) = std::mem::take(&mut state.retries)
            .into_iter()
            .partition(|retry| retry.due_ms <= now_ms);
        state.retries = waiting;
        if !due.is_empty() {
            state.queue.extend(due.into_iter().map(|retry| retry.job));
            self.arrived.notify_one();
        }
        Ok(dropped)
    }

    async fn take(&self, max: usize, wait: Duration) -> Result<Vec<Job>, WebhookError> {
        let deadline = Instant::now() + wait;
        loop {
            let arrived = self.arrived.notified();
            tokio::pin!(arrived);
            arrived.as_mut().enable();
            {
                let mut state = self.state();
                if !state.queue.is_empty() {
                    let count = max.min(state.queue.len());
                    let jobs: Vec<Job> = state.queue.drain(..count).collect();
                    for job in &jobs {
                        state.taken.insert(job.id.clone(), job.app.clone());
                    }
                    return Ok(jobs);
                }
            }
            if tokio::time::timeout_at(deadline, arrived).await.is_err() {
                return Ok(Vec::new());
            }
        }
    }

    async fn done(&self, ids: &[String], retries: &[Retry]) -> Result<(), WebhookError> {
        let mut state = self.state();
        // As on Redis: a retry counts for its app again, a finished event no more.
        for retry in retries {
            *state.counts.entry(retry.job.app.clone()).or_default() += 1;
        }
        for id in ids {
            if let Some(app) = state.taken.remove(id)
                && let Some(count) = state.counts.get_mut(&app)
            {
                *count = count.saturating_sub(1);
                if *count == 0 {
                    state.counts.remove(&app);
                }
            }
        }
        state.retries.extend(retries.iter().cloned());
        Ok(())
    }

    async fn keep(&self, _ids: &[String]) -> Result<(), WebhookError> {
        Ok(())
    }

    async fn set_quota(&self, app: &str, max: u64) -> Result<(), WebhookError> {
        let mut state = self.state();
        if max == 0 {
            state.quotas.remove(app);
        } else {
            state
                .quotas
                .insert(app.to_owned(), usize::try_from(max).unwrap_or(usize::MAX));
        }
        Ok(())
    }

    async fn depth(&self) -> Result<u64, WebhookError> {
        let state = self.state();
        let depth = state.queue.len() + state.taken.len() + state.retries.len();
        Ok(u64::try_from(depth).unwrap_or(u64::MAX))
    }

    async fn sweep_node(&self, _node: &str) -> Result<(), WebhookError> {
        Ok(())
    }

    async fn set_status(&self, app: &str, url: &str, status: &Status) -> Result<(), WebhookError> {
        self.state()
            .statuses
            .insert((app.to_owned(), url.to_owned()), status.clone());
        Ok(())
    }

    async fn statuses(
        &self,
        app: &str,
        urls: &[String],
    ) -> Result<Vec<Option<Status>>, WebhookError> {
        let state = self.state();
        Ok(urls
            .iter()
            .map(|url| state.statuses.get(&(app.to_owned(), url.clone())).cloned())
            .collect())
    }
}
