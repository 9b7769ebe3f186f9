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
    let mut topics: BTreeMap<String, usize> = BTreeMap::new();
    let (mut connections, mut published, mut published_total) = (0, 0, 0);
    let (mut delivered, mut delivered_total) = (0, 0);
    for app in reports.iter().filter_map(|node| node.apps.get(&slug)) {
        connections += app.connections;
        published += app.published_last_minute;
        published_total += app.published_total;
        delivered += app.delivered_last_minute;
        delivered_total += app.delivered_total;
        for (topic, subscribers) in &app.topics {
            *topics.entry(topic.clone()).or_default() += subscribers;
        }
    }
    Ok(Json(json!({ "data": {
        "app": slug,
        "nodes": reports.len(),
        "connections": connections,
        "topics": topics,
        "events_published": { "last_minute": published, "since_start": published_total },
        "messages_delivered": { "last_minute": delivered, "since_start": delivered_total },
    }})))
}
