//! The live nodes of a cluster and their usage reports, for `/api/admin/nodes` and the per-app
//! stats. Each node stores its report in Redis with a TTL and refreshes it on a heartbeat, so a
//! node that dies drops out within the TTL. A single node (no Redis) has no peers.

use std::collections::BTreeMap;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use fred::prelude::{Client, Expiration, KeysInterface, SortedSetsInterface};
use serde::{Deserialize, Serialize};

use crate::bus::BusError;
use crate::usage::AppReport;

/// One node's view, refreshed on every heartbeat.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeReport {
    pub id: String,
    pub version: String,
    pub started_at: DateTime<Utc>,
    pub connections: usize,
    pub apps: BTreeMap<String, AppReport>,
}

/// Where nodes find each other.
///
/// Contract: `reports` returns the latest report of every node that stored one within the
/// TTL, at most one per node id; `remove` makes a node disappear at once (graceful exit).
#[async_trait]
pub trait NodeDirectory: Send + Sync + 'static {
    async fn store(&self, report: &NodeReport) -> Result<(), BusError>;
    async fn reports(&self) -> Result<Vec<NodeReport>, BusError>;
    async fn remove(&self, id: &str) -> Result<(), BusError>;
}

/// A single node: nobody else to report to.
pub struct LocalDirectory;

#[async_trait]
impl NodeDirectory for LocalDirectory {
    async fn store(&self, _report: &NodeReport) -> Result<(), BusError> {
        Ok(())
    }

    async fn reports(&self) -> Result<Vec<NodeReport>, BusError> {
        Ok(Vec::new())
    }

    async fn remove(&self, _id: &str) -> Result<(), BusError> {
        Ok(())
    }
}

/// The hash tag keeps every key on one shard of a Redis Cluster, so MGET works there too.
const INDEX_KEY: &str = "pushlite:{nodes}";

fn node_key(id: &str) -> String {
    format!("{INDEX_KEY}:{id}")
}

pub struct RedisDirectory {
    client: Client,
    ttl: Duration,
}

impl RedisDirectory {
    #[must_use]
    pub fn new(client: Client, ttl: Duration) -> RedisDirectory {
        RedisDirectory { client, ttl }
    }
}

fn unavailable(e: &fred::error::Error) -> BusError {
    BusError::Unavailable(e.to_string())
}

fn now_ms() -> f64 {
    // Millisecond timestamps are exact in an f64 for the next few hundred thousand years.
    Utc::now().timestamp_millis() as f64
}

#[async_trait]
impl NodeDirectory for RedisDirectory {
    async fn store(&self, report: &NodeReport) -> Result<(), BusError> {
        let json =
            serde_json::to_string(report).map_err(|e| BusError::Unavailable(e.to_string()))?;
        let ttl = i64::try_from(self.ttl.as_millis()).unwrap_or(i64::MAX);
        let () = self
            .client
            .set(
                node_key(&report.id),
                json,
                Some(Expiration::PX(ttl)),
                None,
                false,
            )
            .await
            .map_err(|e| unavailable(&e))?;
        let _: i64 = self
            .client
            .zadd(
                INDEX_KEY,
                None,
                None,
                false,
                false,
                (now_ms(), report.id.as_str()),
            )
            .await
            .map_err(|e| unavailable(&e))?;
        Ok(())
    }

    async fn reports(&self) -> Result<Vec<NodeReport>, BusError> {
        let oldest = now_ms() - self.ttl.as_millis() as f64;
        let _: i64 = self
            .client
            .zremrangebyscore(INDEX_KEY, f64::MIN, oldest)
            .await
            .map_err(|e| unavailable(&e))?;
        let ids: Vec<String> = self
            .client
            .zrangebyscore(INDEX_KEY, oldest, f64::MAX, false, None)
            .await
            .map_err(|e| unavailable(&e))?;
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let keys: Vec<String> = ids.iter().map(|id| node_key(id)).collect();
        let values: Vec<Option<String>> =
            self.client.mget(keys).await.map_err(|e| unavailable(&e))?;
        Ok(values
            .into_iter()
            .flatten()
            .filter_map(|json| serde_json::from_str(&json).ok())
            .collect())
    }

    async fn remove(&self, id: &str) -> Result<(), BusError> {
        let _: i64 = self
            .client
            .del(node_key(id))
            .await
            .map_err(|e| unavailable(&e))?;
        let _: i64 = self
            .client
            .zrem(INDEX_KEY, id)
            .await
            .map_err(|e| unavailable(&e))?;
        Ok(())
    }
}
