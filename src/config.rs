//! The typed configuration tree and its layering.
//!
//! Precedence, lowest first: built-in defaults, the TOML file (`--config PATH`, else
//! `./pushlite.toml` when present), the conventional environment names (`PORT`,
//! `DATABASE_URL`, `REDIS_URL`, `PUSHER_ADMIN_USERNAME`, `PUSHER_ADMIN_PASSWORD`), and finally
//! `PUSHLITE_<SECTION>__<KEY>`, which is the most specific and therefore wins.
//!
//! [`Config::load`] does no I/O beyond reading the file and the environment, and
//! [`Config::validate`] rejects every bad value before a socket or database is touched.

use std::net::IpAddr;
use std::path::Path;

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};

/// The development admin pair from the article. Accepted on loopback only.
pub const DEV_ADMIN_USERNAME: &str = "pusher_admin_username";
/// See [`DEV_ADMIN_USERNAME`].
pub const DEV_ADMIN_PASSWORD: &str = "pusher_admin_password";

const REDACTED: &str = "[redacted]";

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub server: ServerConfig,
    pub database: DatabaseConfig,
    pub redis: RedisConfig,
    pub cache: CacheConfig,
    pub stats: StatsConfig,
    pub admin: AdminConfig,
    pub limits: LimitsConfig,
    pub pusher: PusherConfig,
    pub presence: PresenceConfig,
    pub longpoll: LongPollConfig,
    pub webhooks: WebhooksConfig,
    pub history: HistoryConfig,
    pub console: ConsoleConfig,
    pub metrics: MetricsConfig,
    pub log: LogConfig,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    pub host: IpAddr,
    pub port: u16,
    /// After SIGTERM, how long the node keeps serving (with `/readyz` at 503) so load balancers
    /// stop routing to it before sockets are closed.
    pub drain_delay_ms: u64,
    /// After SIGTERM, the longest the process takes to exit.
    pub shutdown_timeout_ms: u64,
    /// Longest wait for a complete request head once its first byte has arrived, or for the
    /// first byte of a new connection. A connection that misses it is closed.
    pub header_timeout_ms: u64,
    /// Longest wait for a request body to arrive in full; a late body is answered 408.
    pub body_timeout_ms: u64,
    /// How long a keep-alive connection may sit between requests before it is closed.
    pub keepalive_timeout_ms: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// A separate `host:port` for `/metrics`; unset serves it on the main port.
    pub listen: Option<std::net::SocketAddr>,
    /// Distinct `app` label values before the rest are folded into `other`.
    pub max_app_labels: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseConfig {
    /// `postgres://…` or `sqlite://PATH` (created when missing).
    pub url: String,
    /// Apply the embedded migrations when `serve` starts. Turn off when a Job migrates.
    pub migrate_on_start: bool,
    pub max_connections: u32,
    /// Seconds to wait for a pooled connection before answering 503.
    pub acquire_timeout_secs: u64,
    /// Seconds one registry call may take in all (a frozen database keeps its connections
    /// open and answers nothing) before it fails with 503.
    pub query_timeout_secs: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisConfig {
    /// Unset: the in-process bus (one node only). `redis://` for one Redis,
    /// `redis-cluster://host:port?node=host2:port2` for a cluster (sharded pub/sub);
    /// `rediss://` and `rediss-cluster://` for the same over TLS.
    pub url: Option<String>,
    /// PEM file of the certificate authorities trusted for `rediss://`, in addition to the
    /// public roots built in (Mozilla's): for a Redis whose certificate a private CA signed.
    pub tls_ca_file: Option<std::path::PathBuf>,
    /// Longest wait between reconnect attempts; must stay below `resubscribe_grace_ms`.
    pub max_reconnect_delay_ms: u64,
    /// After a reconnect, triggers are refused (503) this long so every node can re-subscribe.
    pub resubscribe_grace_ms: u64,
    /// Timeout of each Redis command, publish included.
    pub command_timeout_ms: u64,
    /// How often both Redis connections are pinged; readiness turns 503 when a ping fails or
    /// takes longer than `command_timeout_ms` (a frozen Redis keeps its TCP connection open).
    pub health_interval_ms: u64,
}

/// The cluster directory behind `/api/admin/nodes` and the per-app stats.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StatsConfig {
    /// How often a node stores its usage report in Redis.
    pub heartbeat_ms: u64,
    /// How long a report lives; a dead node drops out after this.
    pub node_ttl_ms: u64,
}

/// The per-node cache of app lookups.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CacheConfig {
    /// Seconds an app stays cached; changes made through any node invalidate it at once.
    pub ttl_secs: u64,
    /// Apps kept at most.
    pub capacity: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    pub username: String,
    pub password: String,
}

/// Every limit on client input. All of them are enforced; all of them can be changed.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    /// Largest admin API request body, in bytes.
    pub admin_body_bytes: usize,
    /// Largest event payload accepted by the events API, in bytes.
    pub event_payload_bytes: usize,
    /// Largest WebSocket frame a client may send, in bytes.
    pub ws_frame_bytes: usize,
    /// Topics one socket may have joined at once.
    pub channels_per_socket: usize,
    /// Frames queued for one socket before it counts as a slow consumer and is closed.
    pub outbound_queue: usize,
    /// Seconds without any frame from the client before the socket is closed.
    pub idle_timeout_secs: u64,
    /// Seconds a write to a socket may block (a client that does not read) before it is closed.
    pub write_timeout_secs: u64,
    /// Client events one socket may push per second (the burst is the same number). Excess
    /// events get an error reply; a socket that keeps pushing past the limit is closed (1008).
    pub client_events_per_sec: u32,
    /// New WebSocket connections and long-poll sessions per second from one client address
    /// (an IPv6 /64), with a burst of as many; past it the upgrade gets 429. 0: no limit.
    pub upgrades_per_sec_per_ip: u32,
    /// Wrong admin credentials (admin API and console login) one client address may send per
    /// minute, with a burst of as many; past it every admin request from there gets 429
    /// until the budget refills. 0: no limit.
    pub admin_login_failures_per_min: u32,
    /// Addresses or CIDR blocks of the proxies in front of the nodes: only from them is
    /// `X-Forwarded-For` believed when finding a client's address. Empty: the peer address.
    pub trusted_proxies: Vec<String>,
    /// Connections one app may hold across the cluster, unless the app sets
    /// `max_connections`. 0: no limit.
    pub connections_per_app: u32,
    /// Events one app may trigger over HTTP per second across the cluster, unless the app
    /// sets `max_triggers_per_sec`; past it triggers get 429 with `Retry-After`. 0: no limit.
    pub triggers_per_sec_per_app: u32,
}

/// The Pusher protocol 7 endpoint (`/app/:key`) and HTTP API (`/apps/:app_id/...`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PusherConfig {
    /// Announced in `pusher:connection_established`: after this many seconds without a frame
    /// from the client, the server sends `pusher:ping`.
    pub activity_timeout_secs: u64,
    /// How long the server waits for any frame after its `pusher:ping` before closing (4201).
    pub pong_timeout_secs: u64,
    /// Events in one `POST /apps/:app_id/batch_events`.
    pub max_batch_events: usize,
    /// Channels in one `POST /apps/:app_id/events`.
    pub max_trigger_channels: usize,
    /// How far `auth_timestamp` may be from the server's clock, in seconds.
    pub timestamp_skew_secs: u64,
}

/// Presence channels across the cluster.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PresenceConfig {
    /// A node silent this long is dead: the others remove its members and announce it.
    pub node_timeout_ms: u64,
}

/// Phoenix's LongPoll transport (`/socket/longpoll`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LongPollConfig {
    /// How long a poll waits for messages before answering 204.
    pub window_ms: u64,
    /// A session that sees no request for this long is closed.
    pub session_timeout_ms: u64,
    /// Frames in one POST (phoenix.js sends at most 100).
    pub max_frames: usize,
    /// Messages in one poll answer.
    pub max_messages: usize,
    /// Sessions one node holds at most; more are refused until some end.
    pub max_sessions: usize,
}

/// Webhooks to the apps' servers.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhooksConfig {
    /// Accept webhook URLs on loopback, private and link-local addresses. Off: an app owner
    /// could otherwise make the cluster call its own internal services.
    pub allow_private_targets: bool,
    /// Webhooks one app may have.
    pub max_per_app: usize,
    /// `channel_vacated` and `member_removed` wait this long, and are dropped if the channel or
    /// member comes back meanwhile (a page reload).
    pub leave_delay_ms: u64,
    /// A delivery failing for this long after its event was queued is dropped and counted.
    pub retry_for_secs: u64,
    /// First wait before a retry; each failure doubles it, up to `backoff_max_ms`.
    pub backoff_initial_ms: u64,
    pub backoff_max_ms: u64,
    /// Longest one webhook request may take, connection included.
    pub timeout_ms: u64,
    /// Events of one app sent in one request at most. 1 (Pusher's default) keeps the
    /// idempotency header of an event the same even when another node takes it over.
    pub batch_max: usize,
    /// How long a node waits for more events to fill a batch (0: send what is queued).
    pub batch_delay_ms: u64,
    /// Events a node holds undelivered (sending or waiting to retry) at most; it takes no more
    /// from the queue until some are done.
    pub max_in_flight: usize,
    /// Events queued or waiting to retry at most (cluster-wide with Redis); past it new events
    /// are refused and counted as dropped.
    pub max_queue: usize,
    /// Events of one app queued or waiting to retry at most, unless the app sets
    /// `webhook_max_queue`; 0: only `max_queue` applies. Keeps one app whose receiver is down
    /// from filling the queue the others share.
    pub max_queue_per_app: usize,
    /// An event taken by a node that has not touched it for this long is taken over by
    /// another (the first node died).
    pub claim_idle_ms: u64,
}

impl WebhooksConfig {
    /// What the validation of an app's `webhooks` field allows.
    #[must_use]
    pub fn rules(&self) -> crate::domain::webhook::Rules {
        crate::domain::webhook::Rules {
            allow_private_targets: self.allow_private_targets,
            max_per_app: self.max_per_app,
        }
    }
}

/// Channel history, which apps switch on with `history_size`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HistoryConfig {
    /// The largest `history_size` an app may set (events kept per channel).
    pub max_size: u32,
    /// The longest `history_ttl_secs` an app may set.
    pub max_ttl_secs: u32,
    /// How long a channel's offset and epoch outlive its events, so that a client returning
    /// later is told its position is gone instead of being handed a fresh history.
    pub meta_ttl_secs: u32,
    /// How long a Pusher cache channel keeps its last event.
    pub cache_ttl_secs: u32,
    /// Events one `GET /api/apps/:app_slug/history` returns at most.
    pub max_read: u32,
}

impl Config {
    /// What the validation of an app's fields allows.
    #[must_use]
    pub fn app_rules(&self) -> crate::domain::app::Rules {
        crate::domain::app::Rules {
            webhooks: self.webhooks.rules(),
            history: self.history.bounds(),
        }
    }
}

impl HistoryConfig {
    #[must_use]
    pub fn bounds(&self) -> crate::domain::history::Bounds {
        crate::domain::history::Bounds {
            max_size: self.max_size,
            max_ttl_secs: self.max_ttl_secs,
            meta_ttl_secs: self.meta_ttl_secs,
            cache_ttl_secs: self.cache_ttl_secs,
        }
    }
}

/// The web console at `/console`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsoleConfig {
    /// Serve `/console` at all. The admin API does not depend on it.
    pub enabled: bool,
    /// How long a console login lasts.
    pub session_ttl_secs: u64,
    /// How long the answer to a failed login is held back.
    pub login_delay_ms: u64,
    /// Login attempts one node checks at once; more wait their turn, so guessing in parallel
    /// is no faster than `login_concurrency` guesses per `login_delay_ms`.
    pub login_concurrency: u32,
    /// Debug stream records each node sends per watched app per second; the rest are skipped
    /// and counted.
    pub debug_rate: u32,
    /// How long a debug watch lasts without renewal (renewed every third of it).
    pub debug_lease_secs: u64,
    /// Debug stream viewers one node serves at once.
    pub debug_max_viewers: usize,
}

impl ConsoleConfig {
    #[must_use]
    pub fn debug_limits(&self) -> crate::debug::Limits {
        crate::debug::Limits {
            rate: self.debug_rate,
            lease: std::time::Duration::from_secs(self.debug_lease_secs),
            max_viewers: self.debug_max_viewers,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// `text` or `json`. `PUSHLITE_LOG_FORMAT=json` selects JSON lines.
    pub format: LogFormat,
    /// A tracing filter; `RUST_LOG` wins when set.
    pub level: String,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            server: ServerConfig {
                host: IpAddr::from([127, 0, 0, 1]),
                port: 4000,
                drain_delay_ms: 5000,
                shutdown_timeout_ms: 30_000,
                header_timeout_ms: 10_000,
                body_timeout_ms: 30_000,
                keepalive_timeout_ms: 75_000,
            },
            database: DatabaseConfig {
                url: "sqlite://pushlite.db".to_owned(),
                migrate_on_start: true,
                max_connections: 10,
                acquire_timeout_secs: 5,
                query_timeout_secs: 10,
            },
            redis: RedisConfig {
                url: None,
                tls_ca_file: None,
                max_reconnect_delay_ms: 400,
                resubscribe_grace_ms: 1200,
                command_timeout_ms: 2000,
                health_interval_ms: 1000,
            },
            cache: CacheConfig {
                ttl_secs: 300,
                capacity: 10_000,
            },
            stats: StatsConfig {
                heartbeat_ms: 1000,
                node_ttl_ms: 5000,
            },
            admin: AdminConfig {
                username: DEV_ADMIN_USERNAME.to_owned(),
                password: DEV_ADMIN_PASSWORD.to_owned(),
            },
            limits: LimitsConfig {
                admin_body_bytes: 16 * 1024,
                event_payload_bytes: 10 * 1024,
                ws_frame_bytes: 64 * 1024,
                channels_per_socket: 100,
                outbound_queue: 1024,
                idle_timeout_secs: 60,
                write_timeout_secs: 10,
                client_events_per_sec: 10,
                upgrades_per_sec_per_ip: 100,
                admin_login_failures_per_min: 10,
                trusted_proxies: Vec::new(),
                connections_per_app: 0,
                triggers_per_sec_per_app: 0,
            },
            pusher: PusherConfig {
                activity_timeout_secs: 120,
                pong_timeout_secs: 30,
                max_batch_events: 10,
                max_trigger_channels: 100,
                timestamp_skew_secs: 600,
            },
            presence: PresenceConfig {
                node_timeout_ms: 10_000,
            },
            longpoll: LongPollConfig {
                window_ms: 10_000,
                session_timeout_ms: 15_000,
                max_frames: 100,
                max_messages: 1000,
                max_sessions: 10_000,
            },
            webhooks: WebhooksConfig {
                allow_private_targets: false,
                max_per_app: 10,
                leave_delay_ms: 3000,
                retry_for_secs: 300,
                backoff_initial_ms: 1000,
                backoff_max_ms: 60_000,
                timeout_ms: 5000,
                batch_max: 1,
                batch_delay_ms: 0,
                max_in_flight: 1000,
                max_queue: 100_000,
                max_queue_per_app: 10_000,
                claim_idle_ms: 30_000,
            },
            history: HistoryConfig {
                max_size: 1000,
                max_ttl_secs: 86_400,
                meta_ttl_secs: 86_400,
                cache_ttl_secs: 1800,
                max_read: 1000,
            },
            console: ConsoleConfig {
                enabled: true,
                session_ttl_secs: 8 * 3600,
                login_delay_ms: 1000,
                login_concurrency: 4,
                debug_rate: 50,
                debug_lease_secs: 30,
                debug_max_viewers: 32,
            },
            metrics: MetricsConfig {
                listen: None,
                max_app_labels: 100,
            },
            log: LogConfig {
                format: LogFormat::Text,
                level: "info".to_owned(),
            },
        }
    }
}

/// A configuration value that cannot be used. The message names the key.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(String);

impl ConfigError {
    pub(crate) fn key(key: &str, problem: impl std::fmt::Display) -> Self {
        ConfigError(format!("invalid configuration: `{key}`: {problem}"))
    }
}

impl Config {
    /// Layers defaults, the TOML file and the environment.
    ///
    /// # Errors
    /// A missing explicit file, a TOML syntax error, an unknown key or a value of the wrong
    /// type, each reported in one line naming the key and never showing a value.
    pub fn load(file: Option<&Path>) -> Result<Config, ConfigError> {
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        let file = match file {
            Some(path) if !path.exists() => {
                return Err(ConfigError(format!(
                    "invalid configuration: file {} does not exist",
                    path.display()
                )));
            }
            Some(path) => Some(path),
            None => Some(Path::new("pushlite.toml")).filter(|p| p.exists()),
        };
        if let Some(path) = file {
            check_toml_syntax(path)?;
            figment = figment.merge(Toml::file_exact(path));
        }
        // The conventional names (and the article's), each feeding one key.
        const ALIASES: [(&str, &str); 6] = [
            ("PORT", "server.port"),
            ("DATABASE_URL", "database.url"),
            ("REDIS_URL", "redis.url"),
            ("PUSHER_ADMIN_USERNAME", "admin.username"),
            ("PUSHER_ADMIN_PASSWORD", "admin.password"),
            ("PUSHLITE_LOG_FORMAT", "log.format"),
        ];
        for (var, key) in ALIASES {
            figment = if STRING_KEYS.contains(&key) {
                merge_raw(figment, var, key)?
            } else {
                figment.merge(Env::raw().only(&[var]).map(move |_| key.into()))
            };
        }
        // Only `SECTION__KEY` names: Kubernetes injects `PUSHLITE_PORT`, `PUSHLITE_SERVICE_HOST`…
        // for a Service called `pushlite`, and those must not be read as configuration.
        figment = figment.merge(
            Env::prefixed("PUSHLITE_")
                .filter(|key| key.as_str().contains("__") && !is_string_key(key.as_str()))
                .split("__"),
        );
        for key in STRING_KEYS {
            let var = format!("PUSHLITE_{}", key.replace('.', "__").to_ascii_uppercase());
            figment = merge_raw(figment, &var, key)?;
        }
        let config: Config = figment.extract().map_err(|errors| {
            // figment may collect several errors; the first is enough to fix, in one line.
            let Some(e) = errors.into_iter().next() else {
                return ConfigError("invalid configuration".to_owned());
            };
            let source = e
                .metadata
                .as_ref()
                .map(|m| format!(" (from {})", m.name))
                .unwrap_or_default();
            let problem = describe(&e.kind);
            if e.path.is_empty() {
                ConfigError(format!("invalid configuration: {problem}{source}"))
            } else {
                ConfigError::key(&e.path.join("."), format!("{problem}{source}"))
            }
        })?;
        config.validate()?;
        Ok(config)
    }

    /// Checks what types cannot express. Runs before any I/O.
    ///
    /// # Errors
    /// The first bad value, naming its key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let db = &self.database.url;
        if !(db.starts_with("postgres://")
            || db.starts_with("postgresql://")
            || db.starts_with("sqlite:"))
        {
            return Err(ConfigError::key(
                "database.url",
                "must start with postgres://, postgresql:// or sqlite:",
            ));
        }
        if let Some(url) = &self.redis.url
            && !REDIS_SCHEMES.iter().any(|scheme| url.starts_with(scheme))
        {
            return Err(ConfigError::key(
                "redis.url",
                "must start with redis://, rediss://, redis-cluster:// or rediss-cluster://",
            ));
        }
        if self.admin.username.is_empty() || self.admin.password.is_empty() {
            return Err(ConfigError::key(
                "admin",
                "username and password must not be empty (PUSHER_ADMIN_USERNAME, PUSHER_ADMIN_PASSWORD)",
            ));
        }
        if self.admin.username.contains(':') {
            return Err(ConfigError::key(
                "admin.username",
                "must not contain `:` (HTTP Basic could never send it)",
            ));
        }
        self.check_ranges()?;
        crate::limits::parse_cidrs(&self.limits.trusted_proxies)
            .map_err(|problem| ConfigError::key("limits.trusted_proxies", problem))?;
        if self.redis.max_reconnect_delay_ms >= self.redis.resubscribe_grace_ms {
            return Err(ConfigError::key(
                "redis.max_reconnect_delay_ms",
                "must be below redis.resubscribe_grace_ms, or triggers could be accepted before every node re-subscribed",
            ));
        }
        if self.stats.node_ttl_ms <= self.stats.heartbeat_ms {
            return Err(ConfigError::key(
                "stats.node_ttl_ms",
                "must be above stats.heartbeat_ms",
            ));
        }
        if self.server.drain_delay_ms >= self.server.shutdown_timeout_ms {
            return Err(ConfigError::key(
                "server.drain_delay_ms",
                "must be below server.shutdown_timeout_ms",
            ));
        }
        Ok(())
    }

    /// Every number has a floor and a ceiling: a value that parses can still overflow a timer
    /// or make a pool allocate for billions of connections.
    fn check_ranges(&self) -> Result<(), ConfigError> {
        const DAY_MS: u64 = 86_400_000;
        const DAY_SECS: u64 = 86_400;
        const GIB: u64 = 1 << 30;
        let (s, d, r, l) = (&self.server, &self.database, &self.redis, &self.limits);
        let as_u64 = |v: usize| u64::try_from(v).unwrap_or(u64::MAX);
        let p = &self.pusher;
        let w = &self.webhooks;
        let h = &self.history;
        let c = &self.console;
        let ranges: [(&str, u64, u64, u64); 63] = [
            ("server.drain_delay_ms", s.drain_delay_ms, 0, DAY_MS),
            (
                "server.shutdown_timeout_ms",
                s.shutdown_timeout_ms,
                1,
                DAY_MS,
            ),
            ("server.header_timeout_ms", s.header_timeout_ms, 1, DAY_MS),
            ("server.body_timeout_ms", s.body_timeout_ms, 1, DAY_MS),
            (
                "server.keepalive_timeout_ms",
                s.keepalive_timeout_ms,
                1,
                DAY_MS,
            ),
            (
                "database.max_connections",
                u64::from(d.max_connections),
                1,
                10_000,
            ),
            (
                "database.acquire_timeout_secs",
                d.acquire_timeout_secs,
                1,
                DAY_SECS,
            ),
            (
                "database.query_timeout_secs",
                d.query_timeout_secs,
                1,
                DAY_SECS,
            ),
            (
                "redis.max_reconnect_delay_ms",
                r.max_reconnect_delay_ms,
                0,
                DAY_MS,
            ),
            (
                "redis.resubscribe_grace_ms",
                r.resubscribe_grace_ms,
                0,
                DAY_MS,
            ),
            ("redis.command_timeout_ms", r.command_timeout_ms, 1, DAY_MS),
            ("redis.health_interval_ms", r.health_interval_ms, 1, DAY_MS),
            ("cache.ttl_secs", self.cache.ttl_secs, 1, DAY_SECS),
            ("cache.capacity", self.cache.capacity, 1, 100_000_000),
            ("stats.heartbeat_ms", self.stats.heartbeat_ms, 1, DAY_MS),
            ("stats.node_ttl_ms", self.stats.node_ttl_ms, 1, DAY_MS),
            (
                "limits.admin_body_bytes",
                as_u64(l.admin_body_bytes),
                1,
                GIB,
            ),
            (
                "limits.event_payload_bytes",
                as_u64(l.event_payload_bytes),
                1,
                GIB,
            ),
            ("limits.ws_frame_bytes", as_u64(l.ws_frame_bytes), 1, GIB),
            (
                "limits.channels_per_socket",
                as_u64(l.channels_per_socket),
                1,
                100_000,
            ),
            (
                "limits.outbound_queue",
                as_u64(l.outbound_queue),
                1,
                1_000_000,
            ),
            ("limits.idle_timeout_secs", l.idle_timeout_secs, 1, DAY_SECS),
            (
                "limits.write_timeout_secs",
                l.write_timeout_secs,
                1,
                DAY_SECS,
            ),
            (
                "limits.client_events_per_sec",
                u64::from(l.client_events_per_sec),
                1,
                1_000_000,
            ),
            (
                "limits.upgrades_per_sec_per_ip",
                u64::from(l.upgrades_per_sec_per_ip),
                0,
                1_000_000,
            ),
            (
                "limits.admin_login_failures_per_min",
                u64::from(l.admin_login_failures_per_min),
                0,
                1_000_000,
            ),
            (
                "limits.connections_per_app",
                u64::from(l.connections_per_app),
                0,
                2_147_483_647,
            ),
            (
                "limits.triggers_per_sec_per_app",
                u64::from(l.triggers_per_sec_per_app),
                0,
                2_147_483_647,
            ),
            (
                "pusher.activity_timeout_secs",
                p.activity_timeout_secs,
                1,
                DAY_SECS,
            ),
            ("pusher.pong_timeout_secs", p.pong_timeout_secs, 1, DAY_SECS),
            (
                "pusher.max_batch_events",
                as_u64(p.max_batch_events),
                1,
                10_000,
            ),
            (
                "pusher.max_trigger_channels",
                as_u64(p.max_trigger_channels),
                1,
                10_000,
            ),
            (
                "pusher.timestamp_skew_secs",
                p.timestamp_skew_secs,
                1,
                DAY_SECS,
            ),
            (
                "presence.node_timeout_ms",
                self.presence.node_timeout_ms,
                1000,
                600_000,
            ),
            ("longpoll.window_ms", self.longpoll.window_ms, 100, 60_000),
            (
                "longpoll.session_timeout_ms",
                self.longpoll.session_timeout_ms,
                self.longpoll.window_ms + 1000,
                600_000,
            ),
            (
                "longpoll.max_frames",
                as_u64(self.longpoll.max_frames),
                1,
                10_000,
            ),
            (
                "longpoll.max_messages",
                as_u64(self.longpoll.max_messages),
                1,
                100_000,
            ),
            (
                "longpoll.max_sessions",
                as_u64(self.longpoll.max_sessions),
                0,
                1_000_000,
            ),
            ("webhooks.max_per_app", as_u64(w.max_per_app), 0, 100),
            ("webhooks.leave_delay_ms", w.leave_delay_ms, 0, 600_000),
            ("webhooks.retry_for_secs", w.retry_for_secs, 1, DAY_SECS),
            (
                "webhooks.backoff_initial_ms",
                w.backoff_initial_ms,
                1,
                DAY_MS,
            ),
            (
                "webhooks.backoff_max_ms",
                w.backoff_max_ms,
                w.backoff_initial_ms,
                DAY_MS,
            ),
            ("webhooks.timeout_ms", w.timeout_ms, 100, 600_000),
            ("webhooks.batch_max", as_u64(w.batch_max), 1, 1000),
            ("webhooks.batch_delay_ms", w.batch_delay_ms, 0, 60_000),
            (
                "webhooks.max_in_flight",
                as_u64(w.max_in_flight),
                1,
                1_000_000,
            ),
            ("webhooks.max_queue", as_u64(w.max_queue), 1, 100_000_000),
            (
                "webhooks.max_queue_per_app",
                as_u64(w.max_queue_per_app),
                0,
                100_000_000,
            ),
            ("webhooks.claim_idle_ms", w.claim_idle_ms, 1000, DAY_MS),
            ("history.max_size", u64::from(h.max_size), 0, 100_000),
            (
                "history.max_ttl_secs",
                u64::from(h.max_ttl_secs),
                1,
                30 * DAY_SECS,
            ),
            (
                "history.meta_ttl_secs",
                u64::from(h.meta_ttl_secs),
                1,
                365 * DAY_SECS,
            ),
            (
                "history.cache_ttl_secs",
                u64::from(h.cache_ttl_secs),
                1,
                30 * DAY_SECS,
            ),
            ("history.max_read", u64::from(h.max_read), 1, 100_000),
            (
                "console.session_ttl_secs",
                c.session_ttl_secs,
                60,
                30 * DAY_SECS,
            ),
            ("console.login_delay_ms", c.login_delay_ms, 0, 60_000),
            (
                "console.login_concurrency",
                u64::from(c.login_concurrency),
                1,
                1000,
            ),
            ("console.debug_rate", u64::from(c.debug_rate), 1, 10_000),
            ("console.debug_lease_secs", c.debug_lease_secs, 3, 3600),
            (
                "console.debug_max_viewers",
                as_u64(c.debug_max_viewers),
                0,
                10_000,
            ),
            (
                "metrics.max_app_labels",
                as_u64(self.metrics.max_app_labels),
                0,
                100_000,
            ),
        ];
        for (key, value, min, max) in ranges {
            if value < min || value > max {
                return Err(ConfigError::key(
                    key,
                    format!("must be between {min} and {max}"),
                ));
            }
        }
        Ok(())
    }

    /// The safety rule: refuse development or empty admin credentials beyond loopback.
    ///
    /// # Errors
    /// Why `serve` must not start with this configuration.
    pub fn check_exposure(&self) -> Result<(), ConfigError> {
        if self.server.host.is_loopback() {
            return Ok(());
        }
        let admin = &self.admin;
        if admin.username.is_empty() || admin.password.is_empty() {
            return Err(ConfigError(format!(
                "refusing to listen on {} with empty admin credentials: set PUSHER_ADMIN_USERNAME and PUSHER_ADMIN_PASSWORD",
                self.server.host
            )));
        }
        if admin.username == DEV_ADMIN_USERNAME || admin.password == DEV_ADMIN_PASSWORD {
            return Err(ConfigError(format!(
                "refusing to listen on {} with the development admin credentials: set PUSHER_ADMIN_USERNAME and PUSHER_ADMIN_PASSWORD",
                self.server.host
            )));
        }
        Ok(())
    }

    /// The effective configuration as TOML with every secret replaced.
    #[must_use]
    pub fn redacted_toml(&self) -> String {
        let mut shown = self.clone();
        shown.admin.password = REDACTED.to_owned();
        shown.database.url = redact_url(&shown.database.url);
        shown.redis.url = shown.redis.url.as_deref().map(redact_url);
        toml::to_string_pretty(&shown).unwrap_or_else(|e| format!("# cannot render: {e}\n"))
    }
}

const REDIS_SCHEMES: [&str; 4] = [
    "redis://",
    "rediss://",
    "redis-cluster://",
    "rediss-cluster://",
];

/// Whether a Redis URL asks for TLS.
#[must_use]
pub fn is_tls_redis_url(url: &str) -> bool {
    url.starts_with("rediss://") || url.starts_with("rediss-cluster://")
}

/// Keys whose values are text however they look: `PUSHER_ADMIN_PASSWORD=0012345` is a password,
/// not the number 12345. figment would parse environment values as TOML scalars.
const STRING_KEYS: [&str; 5] = [
    "admin.username",
    "admin.password",
    "database.url",
    "redis.url",
    "log.level",
];

/// Whether `admin__password` (a prefix-stripped variable name) names one of [`STRING_KEYS`].
fn is_string_key(name: &str) -> bool {
    let key = name.replace("__", ".");
    STRING_KEYS.iter().any(|k| k.eq_ignore_ascii_case(&key))
}

/// Merges environment variable `var` (its name matched without regard to case, as figment
/// matches the others), when set, as the string value of `key`.
fn merge_raw(figment: Figment, var: &str, key: &str) -> Result<Figment, ConfigError> {
    let Some((_, value)) = std::env::vars_os()
        .find(|(name, _)| name.to_str().is_some_and(|n| n.eq_ignore_ascii_case(var)))
    else {
        return Ok(figment);
    };
    match value.into_string() {
        Ok(value) => Ok(figment.merge(Serialized::default(key, value))),
        Err(_) => Err(ConfigError::key(key, format!("{var} is not valid UTF-8"))),
    }
}

/// A figment error kind in words that never include the offending value, which may be a
/// secret in the wrong place.
fn describe(kind: &figment::error::Kind) -> String {
    use figment::error::Kind;
    match kind {
        Kind::InvalidType(_, expected) => format!("invalid type: expected {expected}"),
        Kind::InvalidValue(_, expected) => format!("invalid value: expected {expected}"),
        Kind::InvalidLength(_, expected) => format!("invalid length: expected {expected}"),
        Kind::UnknownVariant(_, expected) => {
            format!("unknown variant: expected one of {expected:?}")
        }
        Kind::ISizeOutOfRange(_) | Kind::USizeOutOfRange(_) => "number out of range".to_owned(),
        Kind::Unsupported(_) | Kind::UnsupportedKey(..) => "unsupported value".to_owned(),
        other => other.to_string(),
    }
}

/// Parses the file once to report a syntax error by position only: the TOML parser's own
/// message quotes the offending line, which may hold a password.
fn check_toml_syntax(path: &Path) -> Result<(), ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        ConfigError(format!(
            "invalid configuration: cannot read {}: {e}",
            path.display()
        ))
    })?;
    let Err(error) = toml::from_str::<toml::Table>(&text) else {
        return Ok(());
    };
    let offset = error.span().map_or(0, |span| span.start);
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    Err(ConfigError(format!(
        "invalid configuration: {}: TOML syntax error at line {line}, column {column}",
        path.display()
    )))
}

/// Replaces the password of `scheme://user:password@host…` and the values of query
/// parameters that may carry one (`?password=…`, `sslpassword`, tokens, keys), so URLs can be
/// shown. The userinfo ends at the last `@`, so a password holding `/` or `?` is caught too;
/// when in doubt, more is hidden rather than less.
#[must_use]
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let rest = match rest.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _)) => format!("{user}:{REDACTED}@{host}"),
            None => format!("{userinfo}@{host}"),
        },
        None => rest.to_owned(),
    };
    let Some((base, query)) = rest.split_once('?') else {
        return format!("{scheme}://{rest}");
    };
    let query: Vec<String> = query
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some((name, _)) if is_secret_param(name) => format!("{name}={REDACTED}"),
            _ => pair.to_owned(),
        })
        .collect();
    format!("{scheme}://{base}?{}", query.join("&"))
}

fn is_secret_param(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    ["pass", "secret", "token", "key", "auth"]
        .iter()
        .any(|word| name.contains(word))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_url_passwords() {
        assert_eq!(
            redact_url("postgres://u:p%40ss@db:5432/x"),
            "postgres://u:[redacted]@db:5432/x"
        );
        assert_eq!(
            redact_url("redis://:pw@r:6379"),
            "redis://:[redacted]@r:6379"
        );
        assert_eq!(redact_url("sqlite://pushlite.db"), "sqlite://pushlite.db");
        assert_eq!(redact_url("redis://r:6379/0"), "redis://r:6379/0");
        assert_eq!(
            redact_url("postgres://u:pa/s?s@db/x?sslmode=require&password=hunter2"),
            "postgres://u:[redacted]@db/x?sslmode=require&password=[redacted]"
        );
        assert_eq!(
            redact_url("postgres://db/x?user=u&password=p/w"),
            "postgres://db/x?user=u&password=[redacted]"
        );
    }

    #[test]
    fn exposure_rule() {
        let mut config = Config::default();
        assert!(config.check_exposure().is_ok());
        config.server.host = IpAddr::from([0, 0, 0, 0]);
        assert!(config.check_exposure().is_err());
        config.admin.username = "ops".into();
        config.admin.password = "long-random-password".into();
        assert!(config.check_exposure().is_ok());
        config.admin.password = String::new();
        assert!(config.check_exposure().is_err());
    }
}
