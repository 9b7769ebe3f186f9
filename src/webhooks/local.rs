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

use super::{Job, Status, WebhookError, WebhookStore};
use crate::domain::topic::{app_of, channel_of};

#[derive(Default)]
struct State {
    occupied: HashSet<String>,
    /// Topic → when its `channel_vacated` is due.
    vacating: HashMap<String, Instant>,
    /// (topic, user) → when its `member_removed` is due.
    leaving: HashMap<(String, String), Instant>,
    queue: VecDeque<Job>,
    /// Taken and not yet done.
    taken: HashSet<String>,
    statuses: HashMap<(String, String), Status>,
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

    fn push(&self, state: &mut State, app: &str, event: String) {
        let Ok(event) = RawValue::from_string(event) else {
            return;
        };
        if state.queue.len() >= self.max_queue
            && let Some(oldest) = state.queue.pop_front()
        {
            tracing::warn!(app = %oldest.app, "webhook queue full (webhooks.max_queue): oldest event dropped");
        }
        state.next += 1;
        let now = chrono::Utc::now().timestamp_millis();
        state.queue.push_back(Job {
            id: format!("{now}-{}", state.next),
            app: app.to_owned(),
            event,
            queued_at_ms: now,
        });
        self.arrived.notify_one();
    }

    fn push_channel(&self, state: &mut State, name: &str, topic: &str, user_id: Option<&str>) {
        let (Some(app), Some(channel)) = (app_of(topic), channel_of(topic)) else {
            return;
        };
        let mut event = json!({ "name": name, "channel": channel });
        if let (Some(user_id), Some(fields)) = (user_id, event.as_object_mut()) {
            fields.insert("user_id".to_owned(), user_id.into());
        }
        self.push(state, app, event.to_string());
    }
}

#[async_trait]
impl WebhookStore for LocalWebhookStore {
    async fn occupy(&self, topic: &str, announce: bool) -> Result<(), WebhookError> {
        let mut state = self.state();
        if state.occupied.insert(topic.to_owned())
            && state.vacating.remove(topic).is_none()
            && announce
        {
            self.push_channel(&mut state, "channel_occupied", topic, None);
        }
        Ok(())
    }

    async fn vacate(&self, topic: &str) -> Result<(), WebhookError> {
        let mut state = self.state();
        if state.occupied.remove(topic) {
            let due = Instant::now() + self.leave_delay;
            state.vacating.insert(topic.to_owned(), due);
        }
        Ok(())
    }

    async fn member(&self, topic: &str, user_id: &str, joined: bool) -> Result<(), WebhookError> {
        let mut state = self.state();
        let key = (topic.to_owned(), user_id.to_owned());
        if !joined {
            state.leaving.insert(key, Instant::now() + self.leave_delay);
        } else if state.leaving.remove(&key).is_none() {
            self.push_channel(&mut state, "member_added", topic, Some(user_id));
        }
        Ok(())
    }

    async fn enqueue(&self, app: &str, event: &str) -> Result<(), WebhookError> {
        let mut state = self.state();
        self.push(&mut state, app, event.to_owned());
        Ok(())
    }

    async fn fire_due(&self) -> Result<(), WebhookError> {
        let now = Instant::now();
        let mut state = self.state();
        let vacated: Vec<String> = state
            .vacating
            .iter()
            .filter(|(_, due)| **due <= now)
            .map(|(topic, _)| topic.clone())
            .collect();
        for topic in vacated {
            state.vacating.remove(&topic);
            if !state.occupied.contains(&topic) {
                self.push_channel(&mut state, "channel_vacated", &topic, None);
            }
        }
        let removed: Vec<(String, String)> = state
            .leaving
            .iter()
            .filter(|(_, due)| **due <= now)
            .map(|(key, _)| key.clone())
            .collect();
        for key in removed {
            state.leaving.remove(&key);
            self.push_channel(&mut state, "member_removed", &key.0, Some(&key.1));
        }
        Ok(())
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
                        state.taken.insert(job.id.clone());
                    }
                    return Ok(jobs);
                }
            }
            if tokio::time::timeout_at(deadline, arrived).await.is_err() {
                return Ok(Vec::new());
            }
        }
    }

    async fn done(&self, ids: &[String]) -> Result<(), WebhookError> {
        let mut state = self.state();
        for id in ids {
            state.taken.remove(id);
        }
        Ok(())
    }

    async fn keep(&self, _ids: &[String]) -> Result<(), WebhookError> {
        Ok(())
    }

    async fn depth(&self) -> Result<u64, WebhookError> {
        let state = self.state();
        Ok(u64::try_from(state.queue.len() + state.taken.len()).unwrap_or(u64::MAX))
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
