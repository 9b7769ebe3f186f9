//! A time bound on every registry call. Pool acquisition has its own timeout, but a query on a
//! connection to a frozen database (a hung host, a partition without RST) would wait for TCP
//! to give up, holding a join or an admin request for minutes.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use super::{AppRegistry, RegistryError};
use crate::domain::app::{App, AppChanges, NewApp};

pub struct TimedRegistry {
    inner: Arc<dyn AppRegistry>,
    limit: Duration,
}

impl TimedRegistry {
    #[must_use]
    pub fn new(inner: Arc<dyn AppRegistry>, limit: Duration) -> TimedRegistry {
        TimedRegistry { inner, limit }
    }

    async fn bounded<T>(
        &self,
        call: impl Future<Output = Result<T, RegistryError>>,
    ) -> Result<T, RegistryError> {
        tokio::time::timeout(self.limit, call)
            .await
            .unwrap_or(Err(RegistryError::Timeout(self.limit)))
    }
}

#[async_trait]
impl AppRegistry for TimedRegistry {
    /// Not bounded: a migration may rightly take long, and runs before serving.
    async fn migrate(&self) -> Result<(), RegistryError> {
        self.inner.migrate().await
    }

    async fn ping(&self) -> Result<(), RegistryError> {
        self.bounded(self.inner.ping()).await
    }

    async fn list(&self) -> Result<Vec<App>, RegistryError> {
        self.bounded(self.inner.list()).await
    }

    async fn by_slug(&self, slug: &str) -> Result<Option<Arc<App>>, RegistryError> {
        self.bounded(self.inner.by_slug(slug)).await
    }

    async fn by_key(&self, key: &str) -> Result<Option<Arc<App>>, RegistryError> {
        self.bounded(self.inner.by_key(key)).await
    }

    async fn insert(&self, app: &NewApp) -> Result<App, RegistryError> {
        self.bounded(self.inner.insert(app)).await
    }

    async fn update(&self, slug: &str, changes: &AppChanges) -> Result<Option<App>, RegistryError> {
        self.bounded(self.inner.update(slug, changes)).await
    }

    async fn rotate_secret(&self, slug: &str, secret: &str) -> Result<Option<App>, RegistryError> {
        self.bounded(self.inner.rotate_secret(slug, secret)).await
    }

    async fn delete(&self, slug: &str) -> Result<bool, RegistryError> {
        self.bounded(self.inner.delete(slug)).await
    }

    async fn start_session(&self, token_hash: &str, expires_at: i64) -> Result<(), RegistryError> {
        self.bounded(self.inner.start_session(token_hash, expires_at))
            .await
    }

    async fn session_valid(&self, token_hash: &str, now: i64) -> Result<bool, RegistryError> {
        self.bounded(self.inner.session_valid(token_hash, now))
            .await
    }

    async fn end_session(&self, token_hash: &str) -> Result<(), RegistryError> {
        self.bounded(self.inner.end_session(token_hash)).await
    }
}
