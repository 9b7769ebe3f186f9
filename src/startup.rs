//! Assembles a node from its configuration: the only place that picks concrete backends.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use axum::serve::ListenerExt;
use tokio::net::TcpListener;

use crate::bus::{Bus, BusError, LocalBus, RedisBus, RedisBusConfig};
use crate::config::{Config, ConfigError};
use crate::control::NodeSink;
use crate::http::{self, AppState};
use crate::hub::{Hub, run_subscriptions};
use crate::registry::{self, AppCache, AppRegistry, CachedRegistry, RegistryError};

/// Why a node could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("app registry: {0}")]
    Registry(#[from] RegistryError),
    #[error("redis: {0}")]
    Bus(#[from] BusError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("server error: {0}")]
    Serve(std::io::Error),
}

/// A bound, ready node. Port 0 in the configuration picks a free port: see [`Server::local_addr`].
pub struct Server {
    listener: TcpListener,
    state: AppState,
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
        let registry: Arc<dyn AppRegistry> = Arc::new(CachedRegistry::new(registry, cache.clone()));
        let (hub, ops) = Hub::new();
        let sink = Arc::new(NodeSink {
            hub: hub.clone(),
            cache,
        });
        let bus: Arc<dyn Bus> = match &config.redis.url {
            None => Arc::new(LocalBus::new(sink.clone())),
            Some(url) => {
                let redis = &config.redis;
                let bus_config = RedisBusConfig {
                    url: url.clone(),
                    max_reconnect_delay: Duration::from_millis(redis.max_reconnect_delay_ms),
                    resubscribe_grace: Duration::from_millis(redis.resubscribe_grace_ms),
                    command_timeout: Duration::from_millis(redis.command_timeout_ms),
                };
                Arc::new(RedisBus::connect(&bus_config, sink.clone()).await?)
            }
        };
        tokio::spawn(run_subscriptions(hub.clone(), bus.clone(), ops));
        let state = AppState {
            config: Arc::new(config),
            registry,
            bus,
            hub,
            sink,
            conn_ids: Arc::new(AtomicU64::new(1)),
        };
        Ok(Server { listener, state })
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

    /// Serves until `shutdown` completes, then lets in-flight requests finish.
    ///
    /// # Errors
    /// The accept loop failed.
    pub async fn run_until(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), StartupError> {
        let addr = self.local_addr();
        tracing::info!(%addr, "pushlite listening");
        let app = http::router(self.state);
        // Frames are small and latency matters: no Nagle delay on any socket.
        let listener = self.listener.tap_io(|tcp| {
            if let Err(error) = tcp.set_nodelay(true) {
                tracing::debug!(%error, "cannot set TCP_NODELAY");
            }
        });
        axum::serve(listener, app)
            .with_graceful_shutdown(shutdown)
            .await
            .map_err(StartupError::Serve)
    }
}
