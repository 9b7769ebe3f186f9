//! The console's own endpoints beside the admin API's: the apps list with their usage, test
//! events, and the live debug stream (Server-Sent Events).

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::body::Body;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use bytes::Bytes;
use futures_util::StreamExt;
use serde_json::{Value, json};

use super::SessionHash;
use crate::debug::Viewer;
use crate::http::error::{ApiError, detail_response};
use crate::http::extract::Slug;
use crate::http::stats::{Summary, cluster};
use crate::http::{body, events};
use crate::node::{NodeState, Source};
use crate::registry::AppRegistry;

/// A comment line this often keeps proxies from closing a quiet stream.
const KEEPALIVE: Duration = Duration::from_secs(15);

/// The longest a new viewer waits for its watch to reach the other nodes.
const ANNOUNCE_WAIT: Duration = Duration::from_secs(2);

/// Every app with its cluster-wide usage, from one read of the node reports.
pub async fn overview(State(state): State<NodeState>) -> Result<Json<Value>, ApiError> {
    let apps = state.database.list().await?;
    let reports = cluster(&state).await?;
    let apps: Vec<Value> = apps
        .iter()
        .map(|app| {
            let sum = Summary::of(&reports, &app.slug);
            json!({
                "name": app.name,
                "slug": app.slug,
                "active": app.active,
                "connections": sum.connections,
                "events_last_minute": sum.published,
                "deliveries_last_minute": sum.delivered,
            })
        })
        .collect();
    Ok(Json(json!({ "data": apps, "nodes": reports.len() })))
}

/// A test event, as the article's events API takes it (`scope`, `topic`, `event`, `payload`),
/// without the app's secret: the console session stands for it.
pub async fn test_event(
    State(state): State<NodeState>,
    Slug(slug): Slug,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    let limit = state.config.limits.event_payload_bytes;
    let body = body.map_err(|r| ApiError::from_body(&r, events::body_limit(limit)))?;
    let app = state
        .database
        .by_slug(&slug)
        .await?
        .ok_or(ApiError::NotFound("no app with this slug"))?;
    if !app.active {
        return Err(ApiError::Unprocessable(
            "the app is inactive: activate it to send events".to_owned(),
        ));
    }
    let event = events::parse_event(&slug, body::object(&headers, &body)?, limit)?;
    let position = state
        .publish(&app, &event, Source::Console)
        .await
        .map_err(|e| ApiError::Unavailable(e.to_string()))?;
    Ok(Json(position.map_or_else(|| json!({}), |p| json!(p))))
}

/// `text/event-stream` of the app's debug records: first a `hello` event with the stream's
/// bounds, then one message per record, a `lost` event when this viewer's queue overflowed,
/// and a comment every 15 s. Ends when the node shuts down.
pub async fn debug_stream(
    State(state): State<NodeState>,
    Extension(session): Extension<SessionHash>,
    Slug(slug): Slug,
) -> Response {
    match state.database.by_slug(&slug).await {
        Ok(Some(_)) => {}
        Ok(None) => return ApiError::NotFound("no app with this slug").into_response(),
        Err(error) => return ApiError::from(error).into_response(),
    }
    let (viewer, announced) = match state.debug.view(&slug) {
        Ok(viewing) => viewing,
        Err(error) => {
            return detail_response(StatusCode::TOO_MANY_REQUESTS, &error.to_string());
        }
    };
    // "Live" only once every node has been told (or the bus did not answer in time).
    announced.wait(ANNOUNCE_WAIT).await;
    let limits = state.debug.limits();
    let hello = json!({
        "app": viewer.slug(),
        "node": state.node.id,
        "rate_per_node": limits.rate,
        "data_max_bytes": crate::debug::DATA_MAX_BYTES,
    });
    let first = Bytes::from(format!("event: hello\ndata: {hello}\n\n"));
    let stream = Stream {
        viewer,
        session,
        registry: state.database.clone(),
        closing: state.shutdown.closing(),
        keepalive: tokio::time::interval_at(tokio::time::Instant::now() + KEEPALIVE, KEEPALIVE),
        lost_shown: 0,
    };
    let body = futures_util::stream::once(async move { Ok::<_, Infallible>(first) })
        .chain(futures_util::stream::unfold(stream, Stream::next));
    (
        [
            (header::CONTENT_TYPE, "text/event-stream"),
            (header::CACHE_CONTROL, "no-store"),
            // Tells nginx-style proxies not to buffer the stream.
            (header::HeaderName::from_static("x-accel-buffering"), "no"),
        ],
        Body::from_stream(body),
    )
        .into_response()
}

struct Stream {
    viewer: Viewer,
    /// Checked again on every keepalive: logging out (on any node) ends the stream.
    session: SessionHash,
    registry: Arc<dyn AppRegistry>,
    closing: tokio::sync::watch::Receiver<bool>,
    keepalive: tokio::time::Interval,
    lost_shown: u64,
}

impl Stream {
    async fn next(mut self) -> Option<(Result<Bytes, Infallible>, Stream)> {
        let record = tokio::select! {
            record = self.viewer.rx.recv() => Some(record?),
            _ = self.keepalive.tick() => None,
            _ = self.closing.wait_for(|closing| *closing) => return None,
        };
        let chunk = match record {
            Some(record) => {
                let lost = self.viewer.lost.load(Ordering::Relaxed);
                let mut text = String::new();
                if lost > self.lost_shown {
                    text = format!("event: lost\ndata: {{\"lost\":{lost}}}\n\n");
                    self.lost_shown = lost;
                }
                text + "data: " + &record + "\n\n"
            }
            None => {
                let now = chrono::Utc::now().timestamp();
                if let Ok(false) = self.registry.session_valid(&self.session.0, now).await {
                    return None;
                }
                ": keepalive\n\n".to_owned()
            }
        };
        Some((Ok(Bytes::from(chunk)), self))
    }
}
