//! The Redis bus (fred): one publisher client and one subscriber connection per node.
//!
//! Every event travels on the Redis channel named exactly as its topic (`public:foo-app`), as a
//! versioned JSON envelope `{"v":1,"event":"foo-topic:msg","payload":{...}}`, so any producer
//! can `PUBLISH` there directly. Pusher-protocol events carry `"data"` (any JSON value, as the
//! Pusher producer sent it) instead of `"payload"`, and `"socket_id"` when the sender's own
//! connection must not receive the event, and `"user_id"` for a client event on a presence
//! channel. Presence changes travel on their topic as `{"v":1,"presence":{...}}`, written by the
//! presence store's scripts. Control messages travel on `pushlite:control`. With a
//! `redis-cluster://` URL, sharded pub/sub (`SPUBLISH`/`SSUBSCRIBE`) keeps each message on the
//! shard that owns its channel.
//!
//! An event of a topic with history is stored and published by one script
//! (`history_publish.lua`): the topic's offset and epoch live in the hash
//! `pushlite:history:{TOPIC}:meta`, its last events in the stream `pushlite:history:{TOPIC}:events`
//! (entry id = offset), and the published envelope starts with `"offset"` and `"epoch"`. The
//! hash tag puts both keys in the slot of the topic's channel, so the script runs on the shard
//! that publishes it.
//!
//! After any reconnect, publishing is refused for a grace period: a restarted Redis has
//! forgotten every node's subscriptions, and nodes reconnect with a backoff capped below that
//! grace, so once it has passed every live node has re-subscribed.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use fred::clients::SubscriberClient;
use fred::prelude::{
    Builder, Client, ClientLike, Config, EventInterface, KeysInterface, PubsubInterface,
    ReconnectPolicy,
};
use fred::types::config::{Options, TlsConfig, TlsConnector, TlsHostMapping};
use fred::types::scripts::Script;
use fred::types::{ClusterHash, CustomCommand, Value as RedisValue};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use tokio::sync::broadcast::error::RecvError;

use super::{Bus, BusError, BusSink, Control};
use crate::domain::event::{Data, Event, is_reserved};
use crate::domain::history::{Keep, Page, Position, Read, new_epoch};
use crate::metrics::Metrics;
use crate::presence::{Change, TopicChange};

/// The channel every node subscribes for [`Control`] messages.
pub const CONTROL_CHANNEL: &str = "pushlite:control";
/// The envelope version this node writes and reads.
const ENVELOPE_VERSION: u32 = 1;

/// Tunables of the Redis bus.
#[derive(Debug, Clone)]
pub struct RedisBusConfig {
    pub url: String,
    /// Extra certificate authorities for `rediss://` (PEM).
    pub tls_ca_file: Option<std::path::PathBuf>,
    /// Longest wait between reconnect attempts. Keep it below `resubscribe_grace`.
    pub max_reconnect_delay: Duration,
    /// How long publishing stays refused after a reconnect.
    pub resubscribe_grace: Duration,
    /// Timeout of every Redis command.
    pub command_timeout: Duration,
    /// How often both connections are pinged for readiness.
    pub health_interval: Duration,
}

impl RedisBusConfig {
    /// The bus settings of `redis`, or `None` when no Redis is configured.
    #[must_use]
    pub fn from_config(redis: &crate::config::RedisConfig) -> Option<RedisBusConfig> {
        Some(RedisBusConfig {
            url: redis.url.clone()?,
            tls_ca_file: redis.tls_ca_file.clone(),
            max_reconnect_delay: Duration::from_millis(redis.max_reconnect_delay_ms),
            resubscribe_grace: Duration::from_millis(redis.resubscribe_grace_ms),
            command_timeout: Duration::from_millis(redis.command_timeout_ms),
            health_interval: Duration::from_millis(redis.health_interval_ms),
        })
    }
}

#[derive(Serialize, Deserialize)]
struct EventEnvelope<'a> {
    v: u32,
    event: String,
    /// A JSON object ([`Data::Object`]).
    #[serde(borrow, default, skip_serializing_if = "Option::is_none")]
    payload: Option<&'a RawValue>,
    /// Pusher data ([`Data::Pusher`]).
    #[serde(borrow, default, skip_serializing_if = "Option::is_none")]
    data: Option<&'a RawValue>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    socket_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    user_id: Option<String>,
    /// The event's place in its topic's history: written by `history_publish.lua` only.
    #[serde(default, skip_serializing)]
    offset: Option<u64>,
    #[serde(default, skip_serializing)]
    epoch: Option<String>,
}

impl<'a> EventEnvelope<'a> {
    fn new(event: &'a Event) -> EventEnvelope<'a> {
        let (payload, data) = match &event.data {
            Data::Object(payload) => (Some(&**payload), None),
            Data::Pusher(data) => (None, Some(&**data)),
        };
        EventEnvelope {
            v: ENVELOPE_VERSION,
            event: event.event.clone(),
            payload,
            data,
            socket_id: event.exclude.clone(),
            user_id: event.user_id.clone(),
            offset: None,
            epoch: None,
        }
    }
}

impl EventEnvelope<'_> {
    /// The event this envelope carries on `topic`, if it is a well-formed version 1 envelope.
    fn into_event(self, topic: &str) -> Option<Event> {
        if self.v != ENVELOPE_VERSION {
            return None;
        }
        let data = match (self.payload, self.data) {
            (Some(payload), None) if payload.get().starts_with('{') => {
                Data::Object(payload.to_owned())
            }
            (None, Some(data)) => Data::Pusher(data.to_owned()),
            _ => return None,
        };
        let position = self
            .offset
            .zip(self.epoch)
            .map(|(offset, epoch)| Position { offset, epoch });
        Some(Event {
            topic: topic.to_owned(),
            event: self.event,
            data,
            exclude: self.socket_id,
            user_id: self.user_id,
            position,
        })
    }
}

/// A presence change, as the presence store's scripts publish it on the topic's channel.
#[derive(Deserialize)]
struct PresenceEnvelope {
    v: u32,
    presence: Change,
}

#[derive(Serialize, Deserialize)]
struct ControlEnvelope {
    v: u32,
    #[serde(flatten)]
    control: Control,
}

#[derive(Default)]
struct Health {
    /// The subscriber connection is up and has re-subscribed everything.
    subscribed: AtomicBool,
    /// When the latest reconnect (of either connection) happened.
    reconnected_at: Mutex<Option<Instant>>,
    /// Counts reconnects, so a publish can tell whether one happened while it was in flight.
    epoch: AtomicU64,
    /// Both connections answered the latest health ping within the command timeout. A frozen
    /// Redis (SIGSTOP, a partition without RST) keeps its TCP connections open, so only a
    /// round trip tells.
    responsive: AtomicBool,
}

impl Health {
    fn mark_reconnect(&self) {
        self.epoch.fetch_add(1, Ordering::SeqCst);
        *self
            .reconnected_at
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(Instant::now());
    }
}

pub struct RedisBus {
    metrics: Metrics,
    publisher: Client,
    scripts: Scripts,
    subscriber: SubscriberClient,
    sharded: bool,
    grace: Duration,
    health: Arc<Health>,
}

struct Scripts {
    publish: Script,
    read: Script,
    take: Script,
}

/// `INCRBY` that gives a new counter a TTL in the same step (a crash between two commands
/// cannot leave a counter that never expires) and takes back what passes the maximum.
const TAKE_LUA: &str = "local n = redis.call('INCRBY', KEYS[1], ARGV[1]) \
    if n == tonumber(ARGV[1]) then redis.call('EXPIRE', KEYS[1], 2) end \
    if n > tonumber(ARGV[2]) then redis.call('DECRBY', KEYS[1], ARGV[1]) return 0 end \
    return 1";

/// A history script after the functions both share (`history.lua`).
fn history_script(body: &str) -> Script {
    Script::from_lua(format!("{}\n{body}", include_str!("history.lua")))
}

/// The keys of a topic's history: its events and its meta.
fn history_keys(topic: &str) -> Vec<String> {
    vec![
        format!("pushlite:history:{{{topic}}}:events"),
        format!("pushlite:history:{{{topic}}}:meta"),
    ]
}

fn unavailable(e: &fred::error::Error) -> BusError {
    BusError::Unavailable(e.to_string())
}

impl RedisBus {
    /// Connects both clients and starts the reader and reconnect tasks.
    ///
    /// # Errors
    /// A URL fred cannot use, or a Redis that cannot be reached at startup.
    pub async fn connect(
        config: &RedisBusConfig,
        sink: Arc<dyn BusSink>,
        metrics: Metrics,
    ) -> Result<RedisBus, BusError> {
        let (builder, sharded) = builder(config)?;
        let publisher = builder.build().map_err(|e| unavailable(&e))?;
        let subscriber = builder
            .build_subscriber_client()
            .map_err(|e| unavailable(&e))?;
        // A redis-cluster:// URL against a single Redis fails here (no CLUSTER SLOTS).
        publisher.init().await.map_err(|e| unavailable(&e))?;
        if !sharded {
            let info: String = publisher
                .custom(
                    CustomCommand::new_static("INFO", ClusterHash::FirstKey, false),
                    vec!["cluster"],
                )
                .await
                .map_err(|e| unavailable(&e))?;
            if info.contains("cluster_enabled:1") {
                return Err(BusError::Config(
                    "this Redis is a cluster node: use a redis-cluster:// URL".to_owned(),
                ));
            }
        }
        subscriber.init().await.map_err(|e| unavailable(&e))?;
        let health = Arc::new(Health::default());
        health.responsive.store(true, Ordering::SeqCst);
        let bus = RedisBus {
            metrics,
            publisher,
            scripts: Scripts {
                publish: history_script(include_str!("history_publish.lua")),
                read: history_script(include_str!("history_read.lua")),
                take: Script::from_lua(TAKE_LUA),
            },
            subscriber,
            sharded,
            grace: config.resubscribe_grace,
            health,
        };
        bus.subscribe(&[CONTROL_CHANNEL.to_owned()]).await?;
        bus.health.subscribed.store(true, Ordering::SeqCst);
        bus.spawn_tasks(sink);
        bus.spawn_health(config.health_interval);
        Ok(bus)
    }

    /// Pings both connections every `every`; each ping is bounded by the command timeout.
    fn spawn_health(&self, every: Duration) {
        let (publisher, subscriber) = (self.publisher.clone(), self.subscriber.clone());
        let health = self.health.clone();
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval(every);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticker.tick().await;
                let (published, subscribed) = tokio::join!(
                    publisher.ping::<RedisValue>(None),
                    subscriber.ping::<RedisValue>(None)
                );
                let responsive = published.is_ok() && subscribed.is_ok();
                let was = health.responsive.swap(responsive, Ordering::SeqCst);
                if was && !responsive {
                    let error = published.err().or(subscribed.err());
                    tracing::warn!(error = ?error.map(|e| e.to_string()), "redis does not answer pings: not ready");
                } else if !was && responsive {
                    tracing::info!("redis answers pings again");
                }
            }
        });
    }

    fn spawn_tasks(&self, sink: Arc<dyn BusSink>) {
        let mut messages = self.subscriber.message_rx();
        let metrics = self.metrics.clone();
        tokio::spawn(async move {
            loop {
                match messages.recv().await {
                    Ok(message) => {
                        metrics.bus_received();
                        metrics.bus_bytes_received(
                            message.channel.len() + message.value.as_bytes().map_or(0, <[u8]>::len),
                        );
                        handle_message(&*sink, &message.channel, message.value);
                    }
                    Err(RecvError::Lagged(lost)) => {
                        tracing::error!(lost, "redis reader lagged: messages were lost");
                    }
                    Err(RecvError::Closed) => break,
                }
            }
        });

        let mut errors = self.subscriber.error_rx();
        let health = self.health.clone();
        tokio::spawn(async move {
            loop {
                match errors.recv().await {
                    Ok((error, _)) => tracing::warn!(%error, "redis subscriber connection lost"),
                    // Missed notices still mean trouble: assume the worst until re-subscribed.
                    Err(RecvError::Lagged(_)) => {}
                    Err(RecvError::Closed) => break,
                }
                health.subscribed.store(false, Ordering::SeqCst);
            }
        });

        let mut reconnects = self.subscriber.reconnect_rx();
        let subscriber = self.subscriber.clone();
        let health = self.health.clone();
        let metrics = self.metrics.clone();
        tokio::spawn(async move {
            // A lagged receiver still means at least one reconnect happened.
            while !matches!(reconnects.recv().await, Err(RecvError::Closed)) {
                metrics.bus_reconnected();
                health.subscribed.store(false, Ordering::SeqCst);
                health.mark_reconnect();
                // fred remembers what this client subscribed; a new connection starts empty.
                match subscriber.resubscribe_all().await {
                    Ok(()) => {
                        health.subscribed.store(true, Ordering::SeqCst);
                        health.mark_reconnect();
                        tracing::info!(
                            topics = subscriber.tracked_channels().len()
                                + subscriber.tracked_shard_channels().len(),
                            "redis subscriber reconnected and re-subscribed"
                        );
                    }
                    Err(error) => tracing::error!(%error, "redis re-subscribe failed"),
                }
            }
        });

        let mut reconnects = self.publisher.reconnect_rx();
        let health = self.health.clone();
        let metrics = self.metrics.clone();
        tokio::spawn(async move {
            while !matches!(reconnects.recv().await, Err(RecvError::Closed)) {
                metrics.bus_reconnected();
                health.mark_reconnect();
                tracing::info!("redis publisher reconnected");
            }
        });
    }

    /// The publisher connection, for the node directory and the presence store to share.
    #[must_use]
    pub fn client(&self) -> Client {
        self.publisher.clone()
    }

    /// Whether this is a Redis Cluster (sharded pub/sub).
    #[must_use]
    pub fn sharded(&self) -> bool {
        self.sharded
    }

    async fn send(&self, channel: &str, message: String) -> Result<(), BusError> {
        let sharded = self.sharded;
        self.fenced(channel, |publisher| async move {
            if sharded {
                publisher.spublish::<i64, _, _>(channel, message).await
            } else {
                publisher.publish::<i64, _, _>(channel, message).await
            }
        })
        .await
        .map(|_| ())
    }

    /// Runs `publish` on a connection that never retries, only when the bus is settled, and
    /// reports failure for a publish that a reconnect overtook: fred may hold a command written
    /// just before a connection dropped and send it on the next connection, to a Redis whose
    /// subscribers are not back yet.
    async fn fenced<T, F, Fut>(&self, channel: &str, publish: F) -> Result<T, BusError>
    where
        F: FnOnce(fred::clients::WithOptions<Client>) -> Fut,
        Fut: std::future::Future<Output = Result<T, fred::error::Error>>,
    {
        self.ready()?;
        let epoch = self.health.epoch.load(Ordering::SeqCst);
        let publisher = self.publisher.with_options(&Options {
            fail_fast: true,
            max_attempts: Some(1),
            ..Options::default()
        });
        let started = Instant::now();
        let published = publish(publisher.clone())
            .await
            .map_err(|e| unavailable(&e))?;
        // The fence: Redis answers PUBLISH before it has written the message to the
        // subscribers' sockets, and a crash in between loses it. A later command on the same
        // connection (routed by the channel's slot, so the same shard) is read in a later
        // event-loop turn, after that write: once it answers, the message has left Redis.
        let _: i64 = publisher
            .exists(channel)
            .await
            .map_err(|e| unavailable(&e))?;
        self.metrics.bus_published(started.elapsed().as_secs_f64());
        if self.health.epoch.load(Ordering::SeqCst) != epoch {
            return Err(BusError::Unavailable(
                "redis reconnected while publishing; delivery is not guaranteed".to_owned(),
            ));
        }
        self.ready()?;
        Ok(published)
    }

    /// Stores `event` in its topic's history and publishes it (`history_publish.lua`).
    async fn publish_kept(&self, event: &Event, keep: Keep) -> Result<Position, BusError> {
        let envelope = serde_json::to_string(&EventEnvelope::new(event))
            .map_err(|e| BusError::Unavailable(e.to_string()))?;
        let keys = history_keys(&event.topic);
        let args = vec![
            envelope,
            keep.size.to_string(),
            keep.ttl_secs.to_string(),
            keep.meta_ttl_secs.to_string(),
            new_epoch(),
            event.topic.clone(),
            if self.sharded { "spublish" } else { "publish" }.to_owned(),
        ];
        let script = &self.scripts.publish;
        // EVALSHA by hand: fred's script helpers do not take a client with options. fred
        // routes a custom command by an explicit slot only (it hashes the first argument, the
        // script's hash, otherwise): the keys' slot, which is the channel's.
        let slot = fred::util::redis_keyslot(keys[0].as_bytes());
        let mut command = vec![script.sha1().to_string(), keys.len().to_string()];
        command.extend(keys);
        command.extend(args);
        let evalsha = || CustomCommand::new_static("EVALSHA", ClusterHash::Custom(slot), false);
        let loader = self.publisher.clone();
        let reply: RedisValue = self
            .fenced(&event.topic, |publisher| async move {
                match publisher.custom(evalsha(), command.clone()).await {
                    // Nothing ran: load the script (on every shard) and run it once more.
                    Err(e) if e.details().starts_with("NOSCRIPT") => {
                        script.load(&loader).await?;
                        publisher.custom(evalsha(), command).await
                    }
                    other => other,
                }
            })
            .await?;
        match reply.into_array().as_slice() {
            [offset, epoch] => match (offset.as_u64(), epoch.as_string()) {
                (Some(offset), Some(epoch)) => Ok(Position { offset, epoch }),
                _ => Err(BusError::Unavailable(
                    "unexpected reply from the history script".to_owned(),
                )),
            },
            _ => Err(BusError::Unavailable(
                "unexpected reply from the history script".to_owned(),
            )),
        }
    }
}

/// A history read's reply (`history_read.lua`): `[epoch, top, [[id, [field, value, …]], …],
/// ttl]`.
fn page_of(topic: &str, reply: RedisValue) -> Result<Page, BusError> {
    let malformed = || BusError::Unavailable(format!("unexpected history reply for {topic}"));
    let mut parts = reply.into_array().into_iter();
    let (Some(epoch), Some(top), Some(entries), Some(ttl)) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(malformed());
    };
    let epoch = epoch.as_string().ok_or_else(malformed)?;
    let top = top.as_u64().ok_or_else(malformed)?;
    let mut events = Vec::new();
    for entry in entries.into_array() {
        let mut entry = entry.into_array().into_iter();
        let (Some(id), Some(fields)) = (entry.next(), entry.next()) else {
            return Err(malformed());
        };
        let id = id.as_string().ok_or_else(malformed)?;
        let offset = id
            .split('-')
            .next()
            .and_then(|ms| ms.parse::<u64>().ok())
            .ok_or_else(malformed)?;
        let fields = fields.into_array();
        let Some(text) = fields.get(1).and_then(RedisValue::as_str) else {
            return Err(malformed());
        };
        // An entry this version cannot read is skipped: the recovery check then sees the gap.
        let Some(mut event) = serde_json::from_str::<EventEnvelope<'_>>(&text)
            .ok()
            .and_then(|envelope| envelope.into_event(topic))
        else {
            tracing::warn!(%topic, offset, "skipping an undecodable history entry");
            continue;
        };
        event.position = Some(Position {
            offset,
            epoch: epoch.clone(),
        });
        events.push(event);
    }
    Ok(Page {
        top: Position { offset: top, epoch },
        events,
        // TTL answers -2 for no key and -1 for no expiry; only a count of seconds is one.
        ttl_secs: ttl.as_i64().and_then(|t| u64::try_from(t).ok()),
    })
}

/// A fred builder for `config`, and whether the URL asks for sharded pub/sub (a cluster).
fn builder(config: &RedisBusConfig) -> Result<(Builder, bool), BusError> {
    let sharded =
        config.url.starts_with("redis-cluster://") || config.url.starts_with("rediss-cluster://");
    let mut redis_config =
        Config::from_url(&config.url).map_err(|e| BusError::Config(e.to_string()))?;
    if crate::config::is_tls_redis_url(&config.url) {
        // fred's default would read the system's CA bundle, which a minimal image lacks; and
        // it would install no crypto provider of its own. Cluster nodes are dialled at the
        // addresses they announce, so their certificates must name those addresses.
        redis_config.tls = Some(TlsConfig {
            connector: TlsConnector::from(tls_client_config(config.tls_ca_file.as_deref())?),
            hostnames: TlsHostMapping::None,
        });
    }
    let max_delay = u32::try_from(config.max_reconnect_delay.as_millis()).unwrap_or(u32::MAX);
    let mut builder = Builder::from_config(redis_config);
    builder
        .set_policy(ReconnectPolicy::new_exponential(
            0,
            50,
            max_delay.max(50),
            2,
        ))
        .with_connection_config(|c| {
            c.connection_timeout = config.command_timeout;
            c.internal_command_timeout = config.command_timeout;
            // A command is never re-sent after a connection drop: a retried PUBLISH could
            // be delivered twice.
            c.max_command_attempts = 1;
            // Small messages must not wait for Nagle's algorithm.
            c.tcp.nodelay = Some(true);
        })
        .with_performance_config(|p| {
            p.default_command_timeout = config.command_timeout;
            // The reader must not lag behind bursts: a lagging broadcast receiver loses
            // messages. tokio allocates every slot up front, so this is ~2.5 MiB a client.
            p.broadcast_channel_capacity = 1 << 14;
        });
    Ok((builder, sharded))
}

/// rustls with ring, Mozilla's roots and the certificates of `ca_file`.
fn tls_client_config(ca_file: Option<&std::path::Path>) -> Result<rustls::ClientConfig, BusError> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(path) = ca_file {
        let shown = path.display();
        let certs = CertificateDer::pem_file_iter(path)
            .map_err(|e| BusError::Config(format!("redis.tls_ca_file {shown}: {e}")))?;
        let mut added = 0;
        for cert in certs {
            let cert =
                cert.map_err(|e| BusError::Config(format!("redis.tls_ca_file {shown}: {e}")))?;
            roots
                .add(cert)
                .map_err(|e| BusError::Config(format!("redis.tls_ca_file {shown}: {e}")))?;
            added += 1;
        }
        if added == 0 {
            return Err(BusError::Config(format!(
                "redis.tls_ca_file {shown}: no certificate in the file"
            )));
        }
    }
    rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map(|builder| builder.with_root_certificates(roots).with_no_client_auth())
        .map_err(|e| BusError::Config(format!("redis TLS: {e}")))
}

/// Publishes one control message and disconnects: for the command line, which changes the
/// registry without running a node but must still tell the running nodes.
///
/// # Errors
/// Redis cannot be reached or refused the message.
pub async fn announce(config: &RedisBusConfig, control: &Control) -> Result<(), BusError> {
    let (builder, sharded) = builder(config)?;
    let client = builder.build().map_err(|e| unavailable(&e))?;
    client.init().await.map_err(|e| unavailable(&e))?;
    let envelope = ControlEnvelope {
        v: ENVELOPE_VERSION,
        control: control.clone(),
    };
    let text =
        serde_json::to_string(&envelope).map_err(|e| BusError::Unavailable(e.to_string()))?;
    let published: Result<i64, _> = if sharded {
        client.spublish(CONTROL_CHANNEL, text).await
    } else {
        client.publish(CONTROL_CHANNEL, text).await
    };
    let _ = client.quit().await;
    published.map(|_| ()).map_err(|e| unavailable(&e))
}

fn handle_message(sink: &dyn BusSink, channel: &str, value: RedisValue) {
    let Some(text) = value.as_str() else {
        tracing::warn!(%channel, "dropping a message that is not text");
        return;
    };
    if channel == CONTROL_CHANNEL {
        match serde_json::from_str::<ControlEnvelope>(&text) {
            Ok(envelope) if envelope.v == ENVELOPE_VERSION => sink.control(envelope.control),
            _ => {
                tracing::warn!(%channel, "dropping an undecodable control message");
            }
        }
        return;
    }
    match serde_json::from_str::<EventEnvelope<'_>>(&text) {
        Ok(envelope) if is_reserved(&envelope.event) => {
            tracing::warn!(%channel, "dropping an envelope with a reserved (phx_) event name");
        }
        Ok(envelope) => match envelope.into_event(channel) {
            Some(event) => sink.deliver(event),
            None => {
                tracing::warn!(%channel, "dropping a message that is not a version 1 envelope");
            }
        },
        Err(_) => match serde_json::from_str::<PresenceEnvelope>(&text) {
            Ok(envelope) if envelope.v == ENVELOPE_VERSION => sink.presence(TopicChange {
                topic: channel.to_owned(),
                change: envelope.presence,
            }),
            _ => {
                tracing::warn!(%channel, "dropping a message that is not a version 1 envelope");
            }
        },
    }
}

#[async_trait]
impl Bus for RedisBus {
    async fn publish(
        &self,
        event: &Event,
        keep: Option<Keep>,
    ) -> Result<Option<Position>, BusError> {
        if let Some(keep) = keep {
            return self.publish_kept(event, keep).await.map(Some);
        }
        let text = serde_json::to_string(&EventEnvelope::new(event))
            .map_err(|e| BusError::Unavailable(e.to_string()))?;
        self.send(&event.topic, text).await.map(|()| None)
    }

    async fn history(&self, topic: &str, keep: Keep, read: Read<'_>) -> Result<Page, BusError> {
        // Offsets go to the script as text it never computes with: a client's huge offset
        // must not become a float.
        let first = |offset: u64| offset.saturating_add(1).to_string();
        let (mode, from, limit, epoch) = match read {
            Read::Top | Read::Last(0) => ("top", String::new(), 0, ""),
            Read::Since { limit: 0, .. } | Read::Recover { limit: 0, .. } => {
                ("top", String::new(), 0, "")
            }
            Read::Since { offset, limit } => ("since", first(offset), limit, ""),
            Read::Recover { since, limit } => {
                ("recover", first(since.offset), limit, since.epoch.as_str())
            }
            Read::Last(count) => ("last", count.to_string(), 0, ""),
        };
        let args = vec![
            new_epoch(),
            keep.ttl_secs.to_string(),
            mode.to_owned(),
            from,
            limit.to_string(),
            epoch.to_owned(),
        ];
        let reply: RedisValue = self
            .scripts
            .read
            .evalsha_with_reload(&self.publisher, history_keys(topic), args)
            .await
            .map_err(|e| unavailable(&e))?;
        let mut page = page_of(topic, reply)?;
        if mode == "last" {
            page.events.reverse();
        }
        Ok(page)
    }

    async fn publish_control(&self, control: &Control) -> Result<(), BusError> {
        let envelope = ControlEnvelope {
            v: ENVELOPE_VERSION,
            control: control.clone(),
        };
        let text =
            serde_json::to_string(&envelope).map_err(|e| BusError::Unavailable(e.to_string()))?;
        self.send(CONTROL_CHANNEL, text).await
    }

    async fn subscribe(&self, topics: &[String]) -> Result<(), BusError> {
        if !self.subscriber.is_connected() {
            return Err(BusError::Unavailable(
                "redis subscriber is disconnected".to_owned(),
            ));
        }
        if self.sharded {
            // One SSUBSCRIBE per channel: a batch must live in a single hash slot.
            for topic in topics {
                self.subscriber
                    .ssubscribe(topic.as_str())
                    .await
                    .map_err(|e| unavailable(&e))?;
            }
            Ok(())
        } else {
            self.subscriber
                .subscribe(topics.to_vec())
                .await
                .map_err(|e| unavailable(&e))?;
            // fred answers SUBSCRIBE as soon as it is written. Redis handles one connection's
            // commands in order, so the PONG to a later PING on the same connection means the
            // subscription is in place: only then may a join be acknowledged.
            self.subscriber
                .ping::<RedisValue>(None)
                .await
                .map(|_| ())
                .map_err(|e| unavailable(&e))
        }
    }

    async fn unsubscribe(&self, topics: &[String]) -> Result<(), BusError> {
        if self.sharded {
            for topic in topics {
                self.subscriber
                    .sunsubscribe(topic.as_str())
                    .await
                    .map_err(|e| unavailable(&e))?;
            }
            Ok(())
        } else {
            self.subscriber
                .unsubscribe(topics.to_vec())
                .await
                .map_err(|e| unavailable(&e))
        }
    }

    async fn take(&self, key: &str, count: u64, max: u64) -> Result<bool, BusError> {
        let second = chrono::Utc::now().timestamp();
        let taken: i64 = self
            .scripts
            .take
            .evalsha_with_reload(
                &self.publisher,
                vec![format!("pushlite:rate:{key}:{second}")],
                vec![count.to_string(), max.to_string()],
            )
            .await
            .map_err(|e| unavailable(&e))?;
        Ok(taken == 1)
    }

    fn ready(&self) -> Result<(), BusError> {
        if !self.publisher.is_connected() {
            return Err(BusError::Unavailable(
                "redis publisher is disconnected".to_owned(),
            ));
        }
        if !self.health.responsive.load(Ordering::SeqCst) {
            return Err(BusError::Unavailable(
                "redis does not answer pings".to_owned(),
            ));
        }
        if !self.subscriber.is_connected() || !self.health.subscribed.load(Ordering::SeqCst) {
            return Err(BusError::Unavailable(
                "redis subscriber is not subscribed".to_owned(),
            ));
        }
        let reconnected_at = *self
            .health
            .reconnected_at
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(at) = reconnected_at {
            let since = at.elapsed();
            if since < self.grace {
                return Err(BusError::Settling(since.as_millis()));
            }
        }
        Ok(())
    }
}
