//! A bounded, expiring cache in front of the registry for the hot lookup (by slug, on every
//! join and trigger). Writes go through and drop the local entry; other nodes drop theirs when
//! the change is announced on the bus (see `Control::AppChanged`).
//!
//! While the database is down, apps still in the cache keep working: joins and triggers do
//! not touch the database for them.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use moka::sync::Cache;

use super::{AppRegistry, RegistryError};
use crate::domain::app::{App, AppChanges, NewApp};

/// The shared cache, also held by the bus sink to apply invalidations.
#[derive(Clone)]
pub struct AppCache(Cache<String, App>);

impl AppCache {
    #[must_use]
    pub fn new(capacity: u64, ttl: Duration) -> AppCache {
        AppCache(
            Cache::builder()
                .max_capacity(capacity)
                .time_to_live(ttl)
                .build(),
        )
    }

    pub fn invalidate(&self, slug: &str) {
        self.0.invalidate(slug);
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

    async fn by_slug(&self, slug: &str) -> Result<Option<App>, RegistryError> {
        if let Some(app) = self.cache.0.get(slug) {
            return Ok(Some(app));
        }
        let found = self.inner.by_slug(slug).await?;
        if let Some(app) = &found {
            self.cache.0.insert(slug.to_owned(), app.clone());
        }
        Ok(found)
    }

    async fn by_key(&self, key: &str) -> Result<Option<App>, RegistryError> {
        self.inner.by_key(key).await
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
}
