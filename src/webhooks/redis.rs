//! The webhook store in Redis. Every key is under the hash tag `{webhooks}`, so a script decides
//! a transition and queues its event in one step, on a Redis Cluster too:
//! - `…:occ:TOPIC` the nodes with subscribers of a topic, `…:node:ID` the topics a node
//!   reported (swept when it dies);
//! - `…:vacating` and `…:leaving` the pending leaves, scored by when they are due;
//! - `…:queue` the events, a stream read by the consumer group `deliver`: an event a node took
//!   stays pending until that node marks it done, and is taken over by another node when the
//!   first stops touching it (it died);
//! - `…:status` the last attempt of each webhook, for the admin API.

use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use fred::prelude::{Client, ClientLike, HashesInterface, StreamsInterface};
use fred::types::Value as RedisValue;
use fred::types::scripts::Script;
use serde_json::value::RawValue;

use super::{Job, Status, WebhookError, WebhookStore};

const PREFIX: &str = "pushlite:webhooks:{webhooks}:";
const GROUP: &str = "deliver";
const PRELUDE: &str = include_str!("webhooks.lua");
/// Leaves fired per script call; the rest wait for the next tick.
const FIRE_BATCH: usize = 500;

fn queue_key() -> String {
    format!("{PREFIX}queue")
}

fn status_key() -> String {
    format!("{PREFIX}status")
}

fn script(body: &str) -> Script {
    Script::from_lua(format!("{PRELUDE}\n{body}"))
}

struct Scripts {
    occupy: Script,
    vacate: Script,
    member: Script,
    due: Script,
    sweep: Script,
    done: Script,
    keep: Script,
    claim: Script,
}

#[derive(Debug, Clone)]
pub struct RedisWebhookStoreConfig {
    pub node: String,
    pub leave_delay: Duration,
    pub max_queue: usize,
    /// An event untouched this long is taken over by another node.
    pub claim_idle: Duration,
}

pub struct RedisWebhookStore {
    client: Client,
    /// Blocking reads (`XREADGROUP … BLOCK`) get their own connection: on the shared one they
    /// would hold up every other command.
    reader: Client,
    config: RedisWebhookStoreConfig,
    scripts: Scripts,
    /// Where the next take-over scan of the pending events starts.
    cursor: Mutex<String>,
    last_claim: Mutex<Option<tokio::time::Instant>>,
}

fn unavailable(e: &fred::error::Error) -> WebhookError {
    WebhookError::Unavailable(e.to_string())
}

impl RedisWebhookStore {
    /// Opens the reading connection; the consumer group is made on first use.
    ///
    /// # Errors
    /// The reading connection cannot be set up.
    pub async fn connect(
        client: Client,
        config: RedisWebhookStoreConfig,
    ) -> Result<RedisWebhookStore, WebhookError> {
        let reader = client.clone_new();
        reader.init().await.map_err(|e| unavailable(&e))?;
        let store = RedisWebhookStore {
            client,
            reader,
            config,
            scripts: Scripts {
                occupy: script(include_str!("occupy.lua")),
                vacate: script(include_str!("vacate.lua")),
                member: script(include_str!("member.lua")),
                due: script(include_str!("due.lua")),
                sweep: script(include_str!("sweep.lua")),
                done: script(include_str!("done.lua")),
                keep: script(include_str!("keep.lua")),
                claim: script(include_str!("claim.lua")),
            },
            cursor: Mutex::new("0-0".to_owned()),
            last_claim: Mutex::new(None),
        };
        // Redis may be down at startup: the group is made again whenever a read finds it gone.
        let _ = store.ensure_group().await;
        Ok(store)
    }

    async fn ensure_group(&self) -> Result<(), WebhookError> {
        let made: Result<RedisValue, _> = self
            .client
            .xgroup_create(queue_key(), GROUP, "0", true)
            .await;
        match made {
            Ok(_) => Ok(()),
            Err(e) if e.details().contains("BUSYGROUP") => Ok(()),
            Err(e) => Err(unavailable(&e)),
        }
    }

    async fn eval(&self, script: &Script, args: Vec<String>) -> Result<RedisValue, WebhookError> {
        let mut argv = vec![PREFIX.to_owned(), self.config.max_queue.to_string()];
        argv.extend(args);
        script
            .evalsha_with_reload(&self.client, vec![queue_key()], argv)
            .await
            .map_err(|e| unavailable(&e))
    }

    fn delay(&self) -> String {
        self.config.leave_delay.as_millis().to_string()
    }

    /// Events whose node stopped touching them, at most every half `claim_idle`.
    async fn claim(&self, max: usize) -> Result<Vec<Job>, WebhookError> {
        let now = tokio::time::Instant::now();
        {
            let mut last = self.last_claim.lock().unwrap_or_else(|e| e.into_inner());
            if last.is_some_and(|at| now.duration_since(at) < self.config.claim_idle / 2) {
                return Ok(Vec::new());
            }
            *last = Some(now);
        }
        let cursor = self
            .cursor
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let reply = self
            .eval(
                &self.scripts.claim,
                vec![
                    GROUP.to_owned(),
                    self.config.node.clone(),
                    self.config.claim_idle.as_millis().to_string(),
                    cursor,
                    max.to_string(),
                ],
            )
            .await;
        let reply = match reply {
            Err(WebhookError::Unavailable(e)) if e.contains("NOGROUP") => {
                self.ensure_group().await?;
                return Ok(Vec::new());
            }
            other => other?,
        };
        let mut items = reply.into_array().into_iter();
        let next = items
            .next()
            .and_then(|v| v.as_string())
            .unwrap_or_else(|| "0-0".to_owned());
        *self.cursor.lock().unwrap_or_else(|e| e.into_inner()) = next;
        let mut jobs = Vec::new();
        let rest: Vec<RedisValue> = items.collect();
        for triple in rest.chunks(3) {
            if let [id, app, event] = triple
                && let (Some(id), Some(app), Some(event)) =
                    (id.as_string(), app.as_string(), event.as_string())
                && let Some(job) = job(id, app, event)
            {
                jobs.push(job);
            }
        }
        if !jobs.is_empty() {
            tracing::info!(
                count = jobs.len(),
                "webhooks: took over events of a node that stopped"
            );
        }
        Ok(jobs)
    }
}

/// A queued entry as a job; its id (`ms-seq`) tells when it was queued.
fn job(id: String, app: String, event: String) -> Option<Job> {
    let queued_at_ms = id.split('-').next()?.parse().ok()?;
    let event = RawValue::from_string(event).ok()?;
    Some(Job {
        id,
        app,
        event,
        queued_at_ms,
    })
}

/// The entries of an `XREADGROUP` reply (one stream), whether RESP2 arrays or RESP3 maps.
fn read_entries(reply: RedisValue) -> Vec<Job> {
    let streams = match reply {
        RedisValue::Map(map) => map.inner().into_values().collect(),
        RedisValue::Array(streams) => streams
            .into_iter()
            .filter_map(|stream| stream.into_array().into_iter().nth(1))
            .collect(),
        _ => Vec::new(),
    };
    let mut jobs = Vec::new();
    for entries in streams {
        for entry in entries.into_array() {
            let mut parts = entry.into_array().into_iter();
            let (Some(id), Some(fields)) = (parts.next().and_then(|v| v.as_string()), parts.next())
            else {
                continue;
            };
            let fields: Vec<String> = match fields {
                RedisValue::Map(map) => map
                    .inner()
                    .into_iter()
                    .flat_map(|(k, v)| [k.as_str().map(str::to_owned), v.as_string()])
                    .flatten()
                    .collect(),
                other => other
                    .into_array()
                    .into_iter()
                    .filter_map(|v| v.as_string())
                    .collect(),
            };
            let field = |name: &str| {
                fields
                    .chunks(2)
                    .find(|pair| pair.first().map(String::as_str) == Some(name))
                    .and_then(|pair| pair.get(1).cloned())
            };
            if let (Some(app), Some(event)) = (field("app"), field("event"))
                && let Some(job) = job(id, app, event)
            {
                jobs.push(job);
            }
        }
    }
    jobs
}

#[async_trait]
impl WebhookStore for RedisWebhookStore {
    async fn occupy(&self, topic: &str, announce: bool) -> Result<(), WebhookError> {
        let args = vec![
            topic.to_owned(),
            self.config.node.clone(),
            if announce { "1" } else { "0" }.to_owned(),
        ];
        self.eval(&self.scripts.occupy, args).await.map(drop)
    }

    async fn vacate(&self, topic: &str) -> Result<(), WebhookError> {
        let args = vec![topic.to_owned(), self.config.node.clone(), self.delay()];
        self.eval(&self.scripts.vacate, args).await.map(drop)
    }

    async fn member(&self, topic: &str, user_id: &str, joined: bool) -> Result<(), WebhookError> {
        let args = vec![
            topic.to_owned(),
            user_id.to_owned(),
            if joined { "1" } else { "0" }.to_owned(),
            self.delay(),
        ];
        self.eval(&self.scripts.member, args).await.map(drop)
    }

    async fn enqueue(&self, app: &str, event: &str) -> Result<(), WebhookError> {
        let fields = vec![("app", app.to_owned()), ("event", event.to_owned())];
        let cap = i64::try_from(self.config.max_queue).unwrap_or(i64::MAX);
        let _: RedisValue = self
            .client
            .xadd(queue_key(), false, ("MAXLEN", "~", cap), "*", fields)
            .await
            .map_err(|e| unavailable(&e))?;
        Ok(())
    }

    async fn fire_due(&self) -> Result<(), WebhookError> {
        self.eval(&self.scripts.due, vec![FIRE_BATCH.to_string()])
            .await
            .map(drop)
    }

    async fn take(&self, max: usize, wait: Duration) -> Result<Vec<Job>, WebhookError> {
        let mut jobs = self.claim(max).await?;
        if !jobs.is_empty() {
            return Ok(jobs);
        }
        // BLOCK 0 would wait forever: no wait is no BLOCK at all.
        let block = (!wait.is_zero()).then(|| u64::try_from(wait.as_millis()).unwrap_or(u64::MAX));
        let reply: Result<RedisValue, _> = self
            .reader
            .xreadgroup(
                GROUP,
                self.config.node.as_str(),
                Some(u64::try_from(max).unwrap_or(u64::MAX)),
                block,
                false,
                queue_key(),
                ">",
            )
            .await;
        match reply {
            Ok(reply) => {
                jobs = read_entries(reply);
                Ok(jobs)
            }
            Err(e) if e.details().contains("NOGROUP") => {
                self.ensure_group().await?;
                Ok(Vec::new())
            }
            Err(e) => Err(unavailable(&e)),
        }
    }

    async fn done(&self, ids: &[String]) -> Result<(), WebhookError> {
        if ids.is_empty() {
            return Ok(());
        }
        let mut args = vec![GROUP.to_owned()];
        args.extend(ids.iter().cloned());
        self.eval(&self.scripts.done, args).await.map(drop)
    }

    async fn keep(&self, ids: &[String]) -> Result<(), WebhookError> {
        if ids.is_empty() {
            return Ok(());
        }
        let mut args = vec![GROUP.to_owned(), self.config.node.clone()];
        args.extend(ids.iter().cloned());
        self.eval(&self.scripts.keep, args).await.map(drop)
    }

    async fn depth(&self) -> Result<u64, WebhookError> {
        self.client
            .xlen(queue_key())
            .await
            .map_err(|e| unavailable(&e))
    }

    async fn sweep_node(&self, node: &str) -> Result<(), WebhookError> {
        let vacated = self
            .eval(&self.scripts.sweep, vec![node.to_owned(), self.delay()])
            .await?;
        let vacated = vacated.as_u64().unwrap_or(0);
        if vacated > 0 {
            tracing::info!(%node, vacated, "webhooks: a dead node's channels are vacating");
        }
        Ok(())
    }

    async fn set_status(&self, app: &str, url: &str, status: &Status) -> Result<(), WebhookError> {
        let json =
            serde_json::to_string(status).map_err(|e| WebhookError::Unavailable(e.to_string()))?;
        let _: RedisValue = self
            .client
            .hset(status_key(), (format!("{app}\n{url}"), json))
            .await
            .map_err(|e| unavailable(&e))?;
        Ok(())
    }

    async fn statuses(
        &self,
        app: &str,
        urls: &[String],
    ) -> Result<Vec<Option<Status>>, WebhookError> {
        if urls.is_empty() {
            return Ok(Vec::new());
        }
        let fields: Vec<String> = urls.iter().map(|url| format!("{app}\n{url}")).collect();
        let values: Vec<Option<String>> = self
            .client
            .hmget(status_key(), fields)
            .await
            .map_err(|e| unavailable(&e))?;
        Ok(values
            .into_iter()
            .map(|v| v.and_then(|json| serde_json::from_str(&json).ok()))
            .collect())
    }
}
