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
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisConfig {
    /// Unset: the in-process bus (one node only). `redis://` for one Redis,
    /// `redis-cluster://host:port?node=host2:port2` for a cluster (sharded pub/sub).
    pub url: Option<String>,
    /// Longest wait between reconnect attempts; must stay below `resubscribe_grace_ms`.
    pub max_reconnect_delay_ms: u64,
    /// After a reconnect, triggers are refused (503) this long so every node can re-subscribe.
    pub resubscribe_grace_ms: u64,
    /// Timeout of each Redis command, publish included.
    pub command_timeout_ms: u64,
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
            },
            database: DatabaseConfig {
                url: "sqlite://pushlite.db".to_owned(),
                migrate_on_start: true,
                max_connections: 10,
                acquire_timeout_secs: 5,
            },
            redis: RedisConfig {
                url: None,
                max_reconnect_delay_ms: 400,
                resubscribe_grace_ms: 1200,
                command_timeout_ms: 2000,
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
    fn key(key: &str, problem: impl std::fmt::Display) -> Self {
        ConfigError(format!("invalid configuration: `{key}`: {problem}"))
    }
}

impl Config {
    /// Layers defaults, the TOML file and the environment.
    ///
    /// # Errors
    /// A missing explicit file, a TOML syntax error, an unknown key or a value of the wrong
    /// type, each reported in one line naming the key.
    pub fn load(file: Option<&Path>) -> Result<Config, ConfigError> {
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        match file {
            Some(path) if !path.exists() => {
                return Err(ConfigError(format!(
                    "invalid configuration: file {} does not exist",
                    path.display()
                )));
            }
            Some(path) => figment = figment.merge(Toml::file_exact(path)),
            None if Path::new("pushlite.toml").exists() => {
                figment = figment.merge(Toml::file_exact("pushlite.toml"));
            }
            None => {}
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
            figment = figment.merge(Env::raw().only(&[var]).map(move |_| key.into()));
        }
        let figment = figment
            // Only `SECTION__KEY` names: Kubernetes injects `PUSHLITE_PORT`, `PUSHLITE_SERVICE_HOST`…
            // for a Service called `pushlite`, and those must not be read as configuration.
            .merge(
                Env::prefixed("PUSHLITE_")
                    .filter(|key| key.as_str().contains("__"))
                    .split("__"),
            );
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
            if e.path.is_empty() {
                ConfigError(format!("invalid configuration: {}{source}", e.kind))
            } else {
                ConfigError::key(&e.path.join("."), format!("{}{source}", e.kind))
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
        if self.database.max_connections == 0 {
            return Err(ConfigError::key(
                "database.max_connections",
                "must be at least 1",
            ));
        }
        if self.database.acquire_timeout_secs == 0 {
            return Err(ConfigError::key(
                "database.acquire_timeout_secs",
                "must be at least 1",
            ));
        }
        if let Some(url) = &self.redis.url
            && !(url.starts_with("redis://") || url.starts_with("redis-cluster://"))
        {
            return Err(ConfigError::key(
                "redis.url",
                "must start with redis:// or redis-cluster:// (TLS to Redis is not built in)",
            ));
        }
        if self.redis.max_reconnect_delay_ms >= self.redis.resubscribe_grace_ms {
            return Err(ConfigError::key(
                "redis.max_reconnect_delay_ms",
                "must be below redis.resubscribe_grace_ms, or triggers could be accepted before every node re-subscribed",
            ));
        }
        if self.redis.command_timeout_ms == 0 {
            return Err(ConfigError::key(
                "redis.command_timeout_ms",
                "must be at least 1",
            ));
        }
        if self.cache.capacity == 0 || self.cache.ttl_secs == 0 {
            return Err(ConfigError::key(
                "cache",
                "ttl_secs and capacity must be at least 1",
            ));
        }
        let limits = [
            ("limits.admin_body_bytes", self.limits.admin_body_bytes),
            (
                "limits.event_payload_bytes",
                self.limits.event_payload_bytes,
            ),
            ("limits.ws_frame_bytes", self.limits.ws_frame_bytes),
            (
                "limits.channels_per_socket",
                self.limits.channels_per_socket,
            ),
            ("limits.outbound_queue", self.limits.outbound_queue),
        ];
        for (key, value) in limits {
            if value == 0 {
                return Err(ConfigError::key(key, "must be at least 1"));
            }
        }
        if self.stats.heartbeat_ms == 0 || self.stats.node_ttl_ms <= self.stats.heartbeat_ms {
            return Err(ConfigError::key(
                "stats.node_ttl_ms",
                "must be above stats.heartbeat_ms (which must be at least 1)",
            ));
        }
        if self.server.drain_delay_ms >= self.server.shutdown_timeout_ms {
            return Err(ConfigError::key(
                "server.drain_delay_ms",
                "must be below server.shutdown_timeout_ms",
            ));
        }
        if self.limits.idle_timeout_secs == 0 {
            return Err(ConfigError::key(
                "limits.idle_timeout_secs",
                "must be at least 1",
            ));
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

/// Replaces the password of `scheme://user:password@host…` so URLs can be shown.
#[must_use]
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let (authority, path) = rest.split_at(authority_end);
    let Some((userinfo, host)) = authority.rsplit_once('@') else {
        return url.to_owned();
    };
    match userinfo.split_once(':') {
        Some((user, _)) => format!("{scheme}://{user}:{REDACTED}@{host}{path}"),
        None => url.to_owned(),
    }
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
