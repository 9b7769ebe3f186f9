//! The webhook store in Redis. Every key is under the hash tag `{webhooks}`, so a script decides
//! a transition and queues its event in one step, on a Redis Cluster too:
//! - `…:occ:TOPIC` the nodes with subscribers of a topic, `…:node:ID` the topics a node
//!   reported (swept when it dies);
//! - `…:vacating` and `…:leaving` the pending leaves, scored by when they are due, and
//!   `…:members` the last presence change applied per member (edges arrive out of order);
//! - `…:queue` the events, a stream read by the consumer group `deliver`: an event a node took
//!   stays pending until that node marks it done, and is taken over by another node when the
//!   first stops touching it (it died); `…:retry` the failed ones, scored by their next attempt,
//!   moved back into the stream when it comes;
//! - `…:status` the last attempt of each webhook, for the admin API.

use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use fred::prelude::{Client, ClientLike, HashesInterface, SortedSetsInterface, StreamsInterface};
use fred::types::Value as RedisValue;
use fred::types::config::Options;
use fred::types::scripts::Script;

use super::{Dropped, Job, Retry, Status, WebhookError, WebhookStore};
use crate::presence::MemberEdge;

const PREFIX: &str = "pushlite:webhooks:{webhooks}:";
const GROUP: &str = "deliver";
const PRELUDE: &str = include_str!("webhooks.lua");
/// Leaves fired per script call; the rest wait for the next tick.
const FIRE_BATCH: usize = 500;
/// Added to a blocking read's wait for its command timeout.
const READ_TIMEOUT_MARGIN: Duration = Duration::from_secs(2);

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
    enqueue: Script,
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
    /// Where the next take-over scan of the pending events starts, and when the last one
    /// ended a pass (no more to take over for a while).
    claims: Mutex<Claims>,
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
                enqueue: script(include_str!("enqueue.lua")),
                occupy: script(include_str!("occupy.lua")),
                vacate: script(include_str!("vacate.lua")),
                member: script(include_str!("member.lua")),
                due: script(include_str!("due.lua")),
                sweep: script(include_str!("sweep.lua")),
                done: script(include_str!("done.lua")),
                keep: script(include_str!("keep.lua")),
                claim: script(include_str!("claim.lua")),
            },
            claims: Mutex::new(Claims {
                cursor: "0-0".to_owned(),
                pass_ended: None,
            }),
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

    /// Events whose node stopped touching them. Scans on while there may be more; after a
    /// pass over the whole pending list, rests for half `claim_idle`.
    async fn claim(&self, max: usize) -> Result<Vec<Job>, WebhookError> {
        let cursor = {
            let claims = self.claims.lock().unwrap_or_else(PoisonError::into_inner);
            let resting = claims
                .pass_ended
                .is_some_and(|at| at.elapsed() < self.config.claim_idle / 2);
            if resting {
                return Ok(Vec::new());
            }
            claims.cursor.clone()
        };
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
        let (jobs, unreadable) =
            entries(items.next().map(RedisValue::into_array).unwrap_or_default());
        self.discard(unreadable).await;
        {
            let mut claims = self.claims.lock().unwrap_or_else(PoisonError::into_inner);
            claims.pass_ended = (next == "0-0").then(tokio::time::Instant::now);
            claims.cursor = next;
        }
        if !jobs.is_empty() {
            tracing::info!(
                count = jobs.len(),
                "webhooks: took over events of a node that stopped"
            );
        }
        Ok(jobs)
    }

    /// Acknowledges entries no version of pushlite wrote, so they are not taken over forever.
    async fn discard(&self, ids: Vec<String>) {
        if ids.is_empty() {
            return;
        }
        tracing::error!(
            count = ids.len(),
            "webhooks: unreadable queue entries discarded"
        );
        if let Err(error) = self.done(&ids, &[]).await {
            tracing::warn!(%error, "webhooks: unreadable entries not discarded");
        }
    }
}

struct Claims {
    cursor: String,
    pass_ended: Option<tokio::time::Instant>,
}

/// Stream entries (`[id, [field, value, …]]`, or a map of fields in RESP3) as jobs, and the ids
/// of those that are not jobs.
fn entries(list: Vec<RedisValue>) -> (Vec<Job>, Vec<String>) {
    let mut jobs = Vec::new();
    let mut unreadable = Vec::new();
    for entry in list {
        let mut parts = entry.into_array().into_iter();
        let (Some(id), Some(fields)) = (parts.next().and_then(|v| v.as_string()), parts.next())
        else {
            continue;
        };
        let values: Vec<String> = match fields {
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
        let pairs: Vec<(String, String)> = values
            .chunks(2)
            .filter_map(|pair| match pair {
                [key, value] => Some((key.clone(), value.clone())),
                _ => None,
            })
            .collect();
        match Job::from_fields(id.clone(), &pairs) {
            Some(job) => jobs.push(job),
            None => unreadable.push(id),
        }
    }
    (jobs, unreadable)
}

/// The entries of an `XREADGROUP` reply (one stream), whether RESP2 arrays or RESP3 maps.
fn read_entries(reply: RedisValue) -> (Vec<Job>, Vec<String>) {
    let streams: Vec<RedisValue> = match reply {
        RedisValue::Map(map) => map.inner().into_values().collect(),
        RedisValue::Array(streams) => streams
            .into_iter()
            .filter_map(|stream| stream.into_array().into_iter().nth(1))
            .collect(),
        _ => Vec::new(),
    };
    let mut jobs = Vec::new();
    let mut unreadable = Vec::new();
    for list in streams {
        let (more, bad) = entries(list.into_array());
        jobs.extend(more);
        unreadable.extend(bad);
    }
    (jobs, unreadable)
}

/// The apps a script listed as dropped.
fn dropped(reply: RedisValue) -> Dropped {
    reply
        .into_array()
        .into_iter()
        .filter_map(|v| v.as_string())
        .collect()
}

#[async_trait]
impl WebhookStore for RedisWebhookStore {
    async fn occupy(
        &self,
        topic: &str,
        wants: bool,
        announce: bool,
    ) -> Result<Dropped, WebhookError> {
        let flag = |b: bool| if b { "1" } else { "0" }.to_owned();
        let args = vec![
            topic.to_owned(),
            self.config.node.clone(),
            flag(announce),
            flag(wants),
        ];
        self.eval(&self.scripts.occupy, args).await.map(dropped)
    }

    async fn vacate(&self, topic: &str, wants: bool) -> Result<(), WebhookError> {
        let args = vec![
            topic.to_owned(),
            self.config.node.clone(),
            self.delay(),
            if wants { "1" } else { "0" }.to_owned(),
        ];
        self.eval(&self.scripts.vacate, args).await.map(drop)
    }

    async fn member(&self, edge: &MemberEdge, wants: bool) -> Result<Dropped, WebhookError> {
        let args = vec![
            edge.topic.clone(),
            edge.user_id.clone(),
            if edge.joined { "1" } else { "0" }.to_owned(),
            self.delay(),
            edge.epoch.clone(),
            edge.ver.to_string(),
            if wants { "1" } else { "0" }.to_owned(),
        ];
        self.eval(&self.scripts.member, args).await.map(dropped)
    }

    async fn enqueue(&self, app: &str, event: &str) -> Result<Dropped, WebhookError> {
        let args = vec![app.to_owned(), event.to_owned()];
        self.eval(&self.scripts.enqueue, args).await.map(dropped)
    }

    async fn set_quota(&self, app: &str, max: u64) -> Result<(), WebhookError> {
        let key = format!("{PREFIX}caps");
        let done: Result<i64, _> = if max == 0 {
            self.client.hdel(key, app).await
        } else {
            self.client.hset(key, (app, max.to_string())).await
        };
        done.map(drop).map_err(|e| unavailable(&e))
    }

    async fn fire_due(&self) -> Result<Dropped, WebhookError> {
        // A removed member's last edge outlives any report still on its way.
        let forget = (self.config.leave_delay * 20).max(Duration::from_secs(60));
        let args = vec![FIRE_BATCH.to_string(), forget.as_millis().to_string()];
        self.eval(&self.scripts.due, args).await.map(dropped)
    }

    async fn take(&self, max: usize, wait: Duration) -> Result<Vec<Job>, WebhookError> {
        let jobs = self.claim(max).await?;
        if !jobs.is_empty() {
            return Ok(jobs);
        }
        // BLOCK 0 would wait forever: no wait is no BLOCK at all.
        let block = (!wait.is_zero()).then(|| u64::try_from(wait.as_millis()).unwrap_or(u64::MAX));
        // The wait is on top of the command timeout, which a short `redis.command_timeout_ms`
        // would otherwise cut every idle read short.
        let options = Options {
            timeout: Some(wait + READ_TIMEOUT_MARGIN),
            ..Options::default()
        };
        let reply: Result<RedisValue, _> = self
            .reader
            .with_options(&options)
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
                let (jobs, unreadable) = read_entries(reply);
                self.discard(unreadable).await;
                Ok(jobs)
            }
            Err(e) if e.details().contains("NOGROUP") => {
                self.ensure_group().await?;
                Ok(Vec::new())
            }
            Err(e) => Err(unavailable(&e)),
        }
    }

    async fn done(&self, ids: &[String], retries: &[Retry]) -> Result<(), WebhookError> {
        if ids.is_empty() && retries.is_empty() {
            return Ok(());
        }
        let mut args = vec![GROUP.to_owned(), ids.len().to_string()];
        args.extend(ids.iter().cloned());
        for retry in retries {
            // The fields as one JSON array of strings: unique per event, URL and attempt.
            let fields: Vec<String> = retry
                .job
                .fields()
                .into_iter()
                .flat_map(|(key, value)| [key.to_owned(), value])
                .collect();
            let json = serde_json::to_string(&fields)
                .map_err(|e| WebhookError::Unavailable(e.to_string()))?;
            args.extend([retry.due_ms.to_string(), json]);
        }
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
        let queued: u64 = self
            .client
            .xlen(queue_key())
            .await
            .map_err(|e| unavailable(&e))?;
        let waiting: u64 = self
            .client
            .zcard(format!("{PREFIX}retry"))
            .await
            .map_err(|e| unavailable(&e))?;
        Ok(queued + waiting)
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
