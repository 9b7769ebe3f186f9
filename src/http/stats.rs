//! `/api/admin/nodes` and `/api/admin/apps/:slug/stats`: usage summed over every live node.

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::State;
use serde_json::{Value, json};

use super::error::ApiError;
use super::extract::Slug;
use crate::directory::NodeReport;
use crate::domain::topic::app_of;
use crate::node::NodeState;
use crate::usage::{SERIES_BUCKET_SECS, SERIES_BUCKETS};

/// This node's report, fresh.
#[must_use]
pub fn node_report(state: &NodeState) -> NodeReport {
    let mut apps = state.metrics.usage().report();
    for (topic, subscribers) in state.hub.topic_counts() {
        if let Some(slug) = app_of(&topic) {
            apps.entry(slug.to_owned())
                .or_default()
                .topics
                .insert(topic, subscribers);
        }
    }
    NodeReport {
        id: state.node.id.clone(),
        version: env!("CARGO_PKG_VERSION").to_owned(),
        started_at: state.node.started_at,
        connections: state.shutdown.live_sessions(),
        apps,
    }
}

/// This node's fresh report and every other live node's latest one.
pub async fn cluster(state: &NodeState) -> Result<Vec<NodeReport>, ApiError> {
    let mut reports = state
        .directory
        .reports()
        .await
        .map_err(|e| ApiError::Unavailable(e.to_string()))?;
    reports.retain(|report| report.id != state.node.id);
    reports.push(node_report(state));
    reports.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(reports)
}

pub async fn nodes(State(state): State<NodeState>) -> Result<Json<Value>, ApiError> {
    let nodes: Vec<Value> = cluster(&state)
        .await?
        .into_iter()
        .map(|n| {
            json!({"id": n.id, "version": n.version, "started_at": n.started_at,
                   "connections": n.connections})
        })
        .collect();
    Ok(Json(json!({ "data": nodes })))
}

pub async fn app_stats(
    State(state): State<NodeState>,
    Slug(slug): Slug,
) -> Result<Json<Value>, ApiError> {
    state
        .database
        .by_slug(&slug)
        .await?
        .ok_or(ApiError::NotFound("no app with this slug"))?;
    let reports = cluster(&state).await?;
    let sum = Summary::of(&reports, &slug);
    let last = chrono::Utc::now().timestamp();
    let last = last - last.rem_euclid(SERIES_BUCKET_SECS);
    let buckets: Vec<Value> = (0..SERIES_BUCKETS as i64)
        .rev()
        .map(|back| {
            let at = last - back * SERIES_BUCKET_SECS;
            let (events, deliveries) = sum.series.get(&at).copied().unwrap_or((0, 0));
            json!({"at": at, "events": events, "deliveries": deliveries})
        })
        .collect();
    Ok(Json(json!({ "data": {
        "app": slug,
        "nodes": reports.len(),
        "connections": sum.connections,
        "topics": sum.topics,
        "events_published": { "last_minute": sum.published, "since_start": sum.published_total },
        "messages_delivered": { "last_minute": sum.delivered, "since_start": sum.delivered_total },
        "series": { "bucket_secs": SERIES_BUCKET_SECS, "buckets": buckets },
    }})))
}

/// One app's usage summed over the nodes' reports.
#[derive(Default)]
pub struct Summary {
    pub connections: i64,
    pub topics: BTreeMap<String, usize>,
    pub published: u64,
    pub published_total: u64,
    pub delivered: u64,
    pub delivered_total: u64,
    /// Bucket start → (published, delivered).
    pub series: BTreeMap<i64, (i64, i64)>,
}

impl Summary {
    #[must_use]
    pub fn of(reports: &[NodeReport], slug: &str) -> Summary {
        let mut sum = Summary::default();
        for app in reports.iter().filter_map(|node| node.apps.get(slug)) {
            sum.connections += app.connections;
            sum.published += app.published_last_minute;
            sum.published_total += app.published_total;
            sum.delivered += app.delivered_last_minute;
            sum.delivered_total += app.delivered_total;
            for (topic, subscribers) in &app.topics {
                *sum.topics.entry(topic.clone()).or_default() += subscribers;
            }
            for [at, published, delivered] in &app.recent {
                let bucket = sum.series.entry(*at).or_default();
                bucket.0 += published;
                bucket.1 += delivered;
            }
        }
        sum
    }
}
