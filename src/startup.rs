//! Assembles a node from its configuration: the only place that picks concrete backends.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use tokio::net::TcpListener;

use crate::bus::{Bus, BusError, LocalBus, RedisBus, RedisBusConfig};
use crate::config::{Config, ConfigError};
use crate::control::NodeSink;
use crate::debug::Debug;
use crate::directory::{LocalDirectory, NodeDirectory, RedisDirectory};
use crate::http;
use crate::http::server::{self, Timeouts};
use crate::hub::{Hub, run_subscriptions};
use crate::limits::Limits;
use crate::metrics::Metrics;
use crate::node::{NodeInfo, NodeState, Parts};
use crate::presence::{LocalPresence, PresenceStore, RedisPresence, RedisPresenceConfig};
use crate::registry::{self, AppCache, AppRegistry, CachedRegistry, RegistryError};
use crate::shutdown::Shutdown;
use crate::webhooks::deliver::{self, Delivery};
use crate::webhooks::{LocalWebhookStore, RedisWebhookStore, RedisWebhookStoreConfig, Webhooks};

/// Why a node could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("app registry: {0}")]
    Registry(#[from] RegistryError),
    #[error("redis: {0}")]
    Bus(#[from] BusError),
    #[error("webhooks: {0}")]
    Webhooks(String),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("server error: {0}")]
    Serve(std::io::Error),
}

/// The backends that follow from `redis.url`: all Redis, or all in this process.
type Backends = (
    Arc<dyn Bus>,
    Arc<dyn NodeDirectory>,
    Arc<dyn PresenceStore>,
    Arc<Webhooks>,
);

/// A bound, ready node. Port 0 in the configuration picks a free port: see [`Server::local_addr`].
pub struct Server {
    listener: TcpListener,
    metrics_listener: Option<TcpListener>,
    state: NodeState,
}

impl Server {
    /// Connects the registry (migrating it when configured), and binds the listener.
    ///
    /// # Errors
    /// Unsafe exposure, an unreachable database, failed migrations, or a busy port.
    pub async fn build(config: Config) -> Result<Server, StartupError> {
        config.check_exposure()?;
        let registry = registry::connect(&config.database).await?;
        if config.database.migrate_on_start {
            registry.migrate().await?;
        }
        let addr = SocketAddr::new(config.server.host, config.server.port);
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| StartupError::Bind { addr, source })?;
        let cache = AppCache::new(
            config.cache.capacity,
            Duration::from_secs(config.cache.ttl_secs),
        );
        let database = registry;
        let registry: Arc<dyn AppRegistry> =
            Arc::new(CachedRegistry::new(database.clone(), cache.clone()));
        let metrics = Metrics::new(config.metrics.max_app_labels);
        let node = Arc::new(NodeInfo::default());
        let (hub, ops) = Hub::new(metrics.clone(), node.socket_prefix);
        let (debug, outbox) = Debug::new(
            node.id.clone(),
            config.console.debug_limits(),
            metrics.clone(),
        );
        let sink = Arc::new(NodeSink {
            hub: hub.clone(),
            cache,
            registry: registry.clone(),
            debug: debug.clone(),
        });
        let node_ttl = Duration::from_millis(config.stats.node_ttl_ms);
        let hooks = &config.webhooks;
        let leave_delay = Duration::from_millis(hooks.leave_delay_ms);
        let quota_per_app = u64::try_from(hooks.max_queue_per_app).unwrap_or(u64::MAX);
        let (bus, directory, presence, webhooks): Backends =
            match RedisBusConfig::from_config(&config.redis) {
                None => {
                    let store = Arc::new(LocalWebhookStore::new(leave_delay, hooks.max_queue));
                    let webhooks =
                        Webhooks::start(store, registry.clone(), metrics.clone(), quota_per_app);
                    (
                        Arc::new(LocalBus::new(sink.clone(), metrics.clone())),
                        Arc::new(LocalDirectory),
                        Arc::new(LocalPresence::new(sink.clone(), webhooks.clone())),
                        webhooks,
                    )
                }
                Some(bus_config) => {
                    // The Helm chart mounts one CA for Postgres and Redis alike.
                    if bus_config.tls_ca_file.is_some()
                        && !crate::config::is_tls_redis_url(&bus_config.url)
                    {
                        tracing::warn!(
                            "redis.tls_ca_file is set but redis.url is not rediss://: unused"
                        );
                    }
                    let redis =
                        RedisBus::connect(&bus_config, sink.clone(), metrics.clone()).await?;
                    let directory = RedisDirectory::new(redis.client(), node_ttl);
                    let (client, sharded) = (redis.client(), redis.sharded());
                    let store = RedisWebhookStore::connect(
                        client.clone(),
                        RedisWebhookStoreConfig {
                            node: node.id.clone(),
                            leave_delay,
                            max_queue: hooks.max_queue,
                            claim_idle: Duration::from_millis(hooks.claim_idle_ms),
                        },
                    )
                    .await
                    .map_err(|e| StartupError::Webhooks(e.to_string()))?;
                    let webhooks = Webhooks::start(
                        Arc::new(store),
                        registry.clone(),
                        metrics.clone(),
                        quota_per_app,
                    );
                    let redis: Arc<dyn Bus> = Arc::new(redis);
                    let presence = RedisPresence::start(
                        client,
                        redis.clone(),
                        webhooks.clone(),
                        node.id.clone(),
                        RedisPresenceConfig {
                            node_timeout: Duration::from_millis(config.presence.node_timeout_ms),
                            sharded,
                        },
                    );
                    (redis, Arc::new(directory), presence, webhooks)
                }
            };
        deliver::start(Delivery {
            config: config.webhooks.clone(),
            store: webhooks.store().clone(),
            registry: registry.clone(),
            metrics: metrics.clone(),
            client: deliver::client(&config.webhooks).map_err(StartupError::Webhooks)?,
        });
        tokio::spawn(debug.clone().run(outbox, bus.clone()));
        tokio::spawn(run_subscriptions(
            hub.clone(),
            bus.clone(),
            webhooks.clone(),
            ops,
        ));
        let metrics_listener = match config.metrics.listen {
            Some(addr) => Some(
                TcpListener::bind(addr)
                    .await
                    .map_err(|source| StartupError::Bind { addr, source })?,
            ),
            None => None,
        };
        let limits = Limits::new(&config.limits)
            .map_err(|problem| ConfigError::key("limits.trusted_proxies", problem))?;
        let state = NodeState::new(Parts {
            limits: Arc::new(limits),
            config: Arc::new(config),
            registry,
            database,
            bus,
            hub,
            sink,
            conn_ids: Arc::new(AtomicU64::new(1)),
            metrics,
            shutdown: Arc::new(Shutdown::default()),
            directory,
            presence,
            webhooks,
            longpolls: Arc::default(),
            node,
            debug,
        });
        spawn_heartbeat(state.clone());
        Ok(Server {
            listener,
            metrics_listener,
            state,
        })
    }

    /// The address actually bound.
    ///
    /// # Panics
    /// Never in practice: a bound listener always has a local address.
    #[must_use]
    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound TCP listener has a local address")
    }

    /// Serves until `signal` completes, then shuts down gracefully: `/readyz` turns 503 at
    /// once; after `server.drain_delay_ms` new upgrades are refused and every socket is closed
    /// (1012, so clients reconnect elsewhere); in-flight requests finish. Returns once all of
    /// that is done or `server.shutdown_timeout_ms` after the signal, whichever comes first.
    ///
    /// # Errors
    /// A listener could not be served.
    pub async fn run_until(
        self,
        signal: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), StartupError> {
        let addr = self.local_addr();
        let state = self.state;
        let shutdown = state.shutdown.clone();
        let drain_delay = Duration::from_millis(state.config.server.drain_delay_ms);
        let timeout = Duration::from_millis(state.config.server.shutdown_timeout_ms);
        let timeouts = Timeouts::from_config(&state.config.server);
        if let Some(metrics_listener) = self.metrics_listener {
            let metrics_app = http::metrics_router(state.clone());
            tracing::info!(addr = ?metrics_listener.local_addr().ok(), "metrics listening");
            tokio::spawn(server::serve(
                metrics_listener,
                metrics_app,
                timeouts,
                state.metrics.clone(),
                std::future::pending(),
            ));
        }
        tracing::info!(%addr, "pushlite listening");
        let metrics = state.metrics.clone();
        let state_presence = state.presence.clone();
        let app = http::router(state);
        let (signalled, signal_time) = tokio::sync::oneshot::channel();
        let draining = shutdown.clone();
        let graceful = async move {
            signal.await;
            let _ = signalled.send(tokio::time::Instant::now());
            draining.start_draining();
            tracing::info!(
                ?drain_delay,
                "draining: readiness is off, closing sockets after the delay"
            );
            tokio::time::sleep(drain_delay).await;
            draining.close_sessions();
            tracing::info!(sockets = draining.live_sessions(), "closing every socket");
        };
        let serving = tokio::spawn(server::serve(
            self.listener,
            app,
            timeouts,
            metrics,
            graceful,
        ));
        let Ok(signalled_at) = signal_time.await else {
            // The signal future was dropped without completing: the accept loop is gone.
            return match serving.await {
                Ok(()) => Ok(()),
                Err(join) => Err(StartupError::Serve(std::io::Error::other(join))),
            };
        };
        let presence = state_presence;
        let finished = tokio::time::timeout_at(signalled_at + timeout, async {
            let served = serving.await;
            shutdown.sessions_ended().await;
            // The closed sockets' presence leaves: announced now rather than swept later.
            let left =
                (signalled_at + timeout).saturating_duration_since(tokio::time::Instant::now());
            // The closed sockets' webhooks (their channels vacated) go out after them.
            presence.drain(left).await;
            served
        })
        .await;
        match finished {
            Ok(Ok(())) => {}
            Ok(Err(join)) => return Err(StartupError::Serve(std::io::Error::other(join))),
            Err(_) => tracing::warn!(
                sockets = shutdown.live_sessions(),
                "shutdown timeout reached; exiting with work left"
            ),
        }
        tracing::info!("shutdown complete");
        Ok(())
    }
}

/// The other nodes' connections per app, for the connection quotas.
async fn gather_connections(state: &NodeState) {
    match state.directory.reports().await {
        Ok(reports) => {
            let mut counts: HashMap<String, i64> = HashMap::new();
            for report in reports.iter().filter(|r| r.id != state.node.id) {
                for (slug, app) in &report.apps {
                    *counts.entry(slug.clone()).or_default() += app.connections;
                }
            }
            state.limits.set_elsewhere(counts);
        }
        // The last counts stay: a quota holds with slightly old figures.
        Err(error) => tracing::debug!(%error, "node reports not read for the quotas"),
    }
}

/// Stores this node's usage report on every heartbeat until shutdown, then removes it.
fn spawn_heartbeat(state: NodeState) {
    let every = Duration::from_millis(state.config.stats.heartbeat_ms);
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(every);
        let mut closing = state.shutdown.closing();
        loop {
            tokio::select! {
                _ = ticker.tick() => {
                    let report = http::stats::node_report(&state);
                    if let Err(error) = state.directory.store(&report).await {
                        tracing::debug!(%error, "node report not stored");
                    }
                    if state.limits.wants_cluster_counts() {
                        gather_connections(&state).await;
                    }
                }
                _ = closing.changed() => {
                    let _ = state.directory.remove(&state.node.id).await;
                    break;
                }
            }
        }
    });
}
