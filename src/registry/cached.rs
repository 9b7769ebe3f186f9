//! A bounded, expiring cache in front of the registry for the hot lookups: by slug (every
//! Phoenix join and seed trigger) and by key (every Pusher connection and HTTP API call). Writes go through and drop the local entry; other nodes drop theirs when
//! the change is announced on the bus (see `Control::AppChanged`).
//!
//! While the database is down, apps still in the cache keep working: joins and triggers do
//! not touch the database for them.
//!
//! A lookup that misses loads the row and caches it only if no invalidation happened since
//! the load began: otherwise a load that read the row just before a write committed could
//! put the superseded row back after the write's invalidation, and serve it for the TTL.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use moka::sync::Cache;

use super::{AppRegistry, RegistryError};
use crate::domain::app::{App, AppChanges, NewApp};

/// The shared cache, also held by the bus sink to apply invalidations.
#[derive(Clone)]
pub struct AppCache {
    /// Shared with every connection that holds the app: one copy per app, not per socket.
    apps: Cache<String, Arc<App>>,
    /// Key → slug. Only a hint: a key lookup reads the app through the slug cache (which
    /// invalidations keep right) and checks the key, so a stale hint costs a database read,
    /// never a wrong answer.
    slugs: Cache<String, String>,
    /// Counts invalidations; the lock also orders every invalidation against every insert.
    generation: Arc<Mutex<u64>>,
}

impl AppCache {
    #[must_use]
    pub fn new(capacity: u64, ttl: Duration) -> AppCache {
        AppCache {
            apps: Cache::builder()
                .max_capacity(capacity)
                .time_to_live(ttl)
                .build(),
            slugs: Cache::builder()
                .max_capacity(capacity)
                .time_to_live(ttl)
                .build(),
            generation: Arc::new(Mutex::new(0)),
        }
    }

    fn generation(&self) -> std::sync::MutexGuard<'_, u64> {
        self.generation
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    pub fn invalidate(&self, slug: &str) {
        let mut generation = self.generation();
        *generation += 1;
        self.apps.invalidate(slug);
    }

    /// Caches `app`, loaded after [`AppCache::generation`] read `seen`, unless an invalidation
    /// came in between.
    fn insert_if_current(&self, slug: &str, app: Arc<App>, seen: u64) {
        let generation = self.generation();
        if *generation == seen {
            self.apps.insert(slug.to_owned(), app);
        }
    }
}

pub struct CachedRegistry {
    inner: Arc<dyn AppRegistry>,
    cache: AppCache,
}

impl CachedRegistry {
    #[must_use]
    pub fn new(inner: Arc<dyn AppRegistry>, cache: AppCache) -> CachedRegistry {
        CachedRegistry { inner, cache }
    }
}

#[async_trait]
impl AppRegistry for CachedRegistry {
    async fn migrate(&self) -> Result<(), RegistryError> {
        self.inner.migrate().await
    }

    async fn ping(&self) -> Result<(), RegistryError> {
        self.inner.ping().await
    }

    async fn list(&self) -> Result<Vec<App>, RegistryError> {
        self.inner.list().await
    }

    async fn by_slug(&self, slug: &str) -> Result<Option<Arc<App>>, RegistryError> {
        if let Some(app) = self.cache.apps.get(slug) {
            return Ok(Some(app));
        }
        let seen = *self.cache.generation();
        let found = self.inner.by_slug(slug).await?;
        if let Some(app) = &found {
            self.cache.insert_if_current(slug, app.clone(), seen);
        }
        Ok(found)
    }

    async fn by_key(&self, key: &str) -> Result<Option<Arc<App>>, RegistryError> {
        if let Some(slug) = self.cache.slugs.get(key)
            && let Some(app) = self.cache.apps.get(&slug)
            && app.key == key
        {
            return Ok(Some(app));
        }
        let seen = *self.cache.generation();
        let found = self.inner.by_key(key).await?;
        if let Some(app) = &found {
            self.cache.slugs.insert(key.to_owned(), app.slug.clone());
            self.cache.insert_if_current(&app.slug, app.clone(), seen);
        }
        Ok(found)
    }

    async fn insert(&self, app: &NewApp) -> Result<App, RegistryError> {
        self.inner.insert(app).await
    }

    async fn update(&self, slug: &str, changes: &AppChanges) -> Result<Option<App>, RegistryError> {
        let updated = self.inner.update(slug, changes).await;
        self.cache.invalidate(slug);
        updated
    }

    async fn rotate_secret(&self, slug: &str, secret: &str) -> Result<Option<App>, RegistryError> {
        let rotated = self.inner.rotate_secret(slug, secret).await;
        self.cache.invalidate(slug);
        rotated
    }

    async fn delete(&self, slug: &str) -> Result<bool, RegistryError> {
        let deleted = self.inner.delete(slug).await;
        self.cache.invalidate(slug);
        deleted
    }

    async fn start_session(&self, token_hash: &str, expires_at: i64) -> Result<(), RegistryError> {
        self.inner.start_session(token_hash, expires_at).await
    }

    async fn session_valid(&self, token_hash: &str, now: i64) -> Result<bool, RegistryError> {
        self.inner.session_valid(token_hash, now).await
    }

    async fn end_session(&self, token_hash: &str) -> Result<(), RegistryError> {
        self.inner.end_session(token_hash).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::app::NewApp;
    use crate::registry::SqliteRegistry;
    use tokio::sync::{Mutex as AsyncMutex, oneshot};

    /// Holds the first `by_slug` after it has read the row, until told to go on; counts the
    /// key lookups that reach the database.
    struct Gated {
        inner: SqliteRegistry,
        loaded: AsyncMutex<Option<oneshot::Sender<()>>>,
        proceed: AsyncMutex<Option<oneshot::Receiver<()>>>,
        key_lookups: std::sync::atomic::AtomicUsize,
    }

    #[async_trait]
    impl AppRegistry for Gated {
        async fn migrate(&self) -> Result<(), RegistryError> {
            self.inner.migrate().await
        }
        async fn ping(&self) -> Result<(), RegistryError> {
            self.inner.ping().await
        }
        async fn list(&self) -> Result<Vec<App>, RegistryError> {
            self.inner.list().await
        }
        async fn by_slug(&self, slug: &str) -> Result<Option<Arc<App>>, RegistryError> {
            let found = self.inner.by_slug(slug).await;
            if let Some(loaded) = self.loaded.lock().await.take() {
                let _ = loaded.send(());
                if let Some(proceed) = self.proceed.lock().await.take() {
                    let _ = proceed.await;
                }
            }
            found
        }
        async fn by_key(&self, key: &str) -> Result<Option<Arc<App>>, RegistryError> {
            self.key_lookups
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            self.inner.by_key(key).await
        }
        async fn insert(&self, app: &NewApp) -> Result<App, RegistryError> {
            self.inner.insert(app).await
        }
        async fn update(
            &self,
            slug: &str,
            changes: &AppChanges,
        ) -> Result<Option<App>, RegistryError> {
            self.inner.update(slug, changes).await
        }
        async fn rotate_secret(
            &self,
            slug: &str,
            secret: &str,
        ) -> Result<Option<App>, RegistryError> {
            self.inner.rotate_secret(slug, secret).await
        }
        async fn delete(&self, slug: &str) -> Result<bool, RegistryError> {
            self.inner.delete(slug).await
        }
        async fn start_session(&self, hash: &str, expires_at: i64) -> Result<(), RegistryError> {
            self.inner.start_session(hash, expires_at).await
        }
        async fn session_valid(&self, hash: &str, now: i64) -> Result<bool, RegistryError> {
            self.inner.session_valid(hash, now).await
        }
        async fn end_session(&self, hash: &str) -> Result<(), RegistryError> {
            self.inner.end_session(hash).await
        }
    }

    async fn foo_app() -> SqliteRegistry {
        let inner = SqliteRegistry::connect("sqlite::memory:", 1, Duration::from_secs(5))
            .await
            .expect("in-memory SQLite");
        inner.migrate().await.expect("migrate");
        inner
            .insert(&NewApp {
                name: "Foo App".into(),
                slug: "foo-app".into(),
                key: "key".into(),
                secret: "old-secret".into(),
                active: true,
                client_events: true,
                allowed_origins: vec![],
                max_presence_members: crate::domain::app::DEFAULT_PRESENCE_MEMBERS,
                webhooks: Vec::new(),
                history_size: 0,
                history_ttl_secs: crate::domain::app::DEFAULT_HISTORY_TTL_SECS,
                max_connections: None,
                max_triggers_per_sec: None,
                webhook_max_queue: None,
            })
            .await
            .expect("insert");
        inner
    }

    /// Pusher connections and API calls look apps up by key: cached, and never stale.
    #[tokio::test]
    async fn key_lookups_are_cached_and_follow_invalidations() {
        let gated = Arc::new(Gated {
            inner: foo_app().await,
            loaded: AsyncMutex::new(None),
            proceed: AsyncMutex::new(None),
            key_lookups: 0.into(),
        });
        let cache = AppCache::new(100, Duration::from_secs(300));
        let registry = CachedRegistry::new(gated.clone(), cache);
        let lookups = || gated.key_lookups.load(std::sync::atomic::Ordering::SeqCst);
        for _ in 0..3 {
            let app = registry
                .by_key("key")
                .await
                .expect("lookup")
                .expect("found");
            assert_eq!(app.secret, "old-secret");
        }
        assert_eq!(lookups(), 1);
        // every connection of the app holds the one cached copy
        let (by_key, by_slug) = (
            registry
                .by_key("key")
                .await
                .expect("lookup")
                .expect("found"),
            registry
                .by_slug("foo-app")
                .await
                .expect("lookup")
                .expect("found"),
        );
        assert!(Arc::ptr_eq(&by_key, &by_slug));
        registry
            .rotate_secret("foo-app", "new-secret")
            .await
            .expect("rotate");
        let app = registry
            .by_key("key")
            .await
            .expect("lookup")
            .expect("found");
        assert_eq!(app.secret, "new-secret");
        assert_eq!(lookups(), 2);
        registry.delete("foo-app").await.expect("delete");
        assert!(registry.by_key("key").await.expect("lookup").is_none());
        assert!(registry.by_key("other").await.expect("lookup").is_none());
    }

    /// Issue 10, D4: a lookup that read the row before a rotation committed must not put the
    /// superseded row back into the cache after the rotation's invalidation.
    #[tokio::test]
    async fn a_load_overtaken_by_a_write_is_not_cached() {
        let (loaded_tx, loaded_rx) = oneshot::channel();
        let (proceed_tx, proceed_rx) = oneshot::channel();
        let gated = Gated {
            inner: foo_app().await,
            loaded: AsyncMutex::new(Some(loaded_tx)),
            proceed: AsyncMutex::new(Some(proceed_rx)),
            key_lookups: 0.into(),
        };
        let cache = AppCache::new(100, Duration::from_secs(300));
        let registry = Arc::new(CachedRegistry::new(Arc::new(gated), cache));
        let reader = registry.clone();
        let lookup = tokio::spawn(async move { reader.by_slug("foo-app").await });
        loaded_rx.await.expect("the lookup read the old row");
        let rotated = registry
            .rotate_secret("foo-app", "new-secret")
            .await
            .expect("rotate")
            .expect("app exists");
        assert_eq!(rotated.secret, "new-secret");
        proceed_tx.send(()).expect("lookup waiting");
        let stale = lookup.await.expect("lookup task").expect("lookup");
        assert_eq!(stale.expect("found").secret, "old-secret");
        let now = registry.by_slug("foo-app").await.expect("lookup");
        assert_eq!(now.expect("found").secret, "new-secret");
    }
}
