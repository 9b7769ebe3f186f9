//! `POST /api/apps/:app_slug/events`: an app's server triggers an event, authenticated with the
//! app's `key:secret` over HTTP Basic.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::HeaderMap;
use bytes::Bytes;
use serde_json::value::RawValue;
use serde_json::{Map, Value, json};

use super::auth::{basic_credentials, credentials_match};
use super::body;
use super::error::ApiError;
use super::extract::Slug;
use crate::domain::app::App;
use crate::domain::event::{Data, Event, RESERVED, Scope, check_name, event_name, is_reserved};
use crate::limits::{Limit, RetryAfter};
use crate::node::{NodeState, Source};

/// Room for the other fields and for percent-encoding (up to three bytes per payload byte).
#[must_use]
pub fn body_limit(payload_limit: usize) -> usize {
    payload_limit.saturating_mul(3).saturating_add(4096)
}

/// The active app `slug`, when the request carries its `key:secret` over HTTP Basic.
///
/// # Errors
/// 401 without or with wrong credentials, 404 for no active app.
pub(super) async fn authenticate(
    state: &NodeState,
    slug: &str,
    headers: &HeaderMap,
) -> Result<Arc<App>, ApiError> {
    let Some((key, secret)) = basic_credentials(headers) else {
        return Err(ApiError::Unauthorized("app key and secret required"));
    };
    let app = state
        .registry
        .by_slug(slug)
        .await?
        .filter(|app| app.active)
        .ok_or(ApiError::NotFound("no active app with this slug"))?;
    if !credentials_match((&key, &secret), (&app.key, &app.secret)) {
        return Err(ApiError::Unauthorized("wrong app key or secret"));
    }
    Ok(app)
}

/// Counts `count` events of `app` triggered over HTTP against its rate, across the cluster.
///
/// # Errors
/// 429 over the rate (the rest of the second); 503 when the count cannot be kept.
pub(super) async fn admit(state: &NodeState, app: &App, count: usize) -> Result<(), ApiError> {
    let max = state.limits.max_triggers_per_sec(app);
    if max == 0 {
        return Ok(());
    }
    let taken = state
        .bus
        .take(
            &app.slug,
            u64::try_from(count).unwrap_or(u64::MAX),
            max.into(),
        )
        .await
        .map_err(|e| ApiError::Unavailable(e.to_string()))?;
    if !taken {
        state.metrics.limit_refused(Limit::Triggers);
        return Err(ApiError::too_many(
            "the app is over its trigger rate (max_triggers_per_sec)",
            RetryAfter(1),
        ));
    }
    Ok(())
}

pub async fn trigger(
    State(state): State<NodeState>,
    Slug(slug): Slug,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    let app = authenticate(&state, &slug, &headers).await?;
    let payload_limit = state.config.limits.event_payload_bytes;
    let body = body.map_err(|r| ApiError::from_body(&r, body_limit(payload_limit)))?;
    let fields = body::object(&headers, &body)?;
    let event = parse_event(&slug, fields, payload_limit)?;
    admit(&state, &app, 1).await?;
    let position = state
        .publish(&app, &event, Source::Http)
        .await
        .map_err(|e| ApiError::Unavailable(e.to_string()))?;
    // On a topic with history, where the event was stored (Centrifugo's publish result).
    Ok(Json(position.map_or_else(|| json!({}), |p| json!(p))))
}

fn required<'a>(fields: &'a Map<String, Value>, name: &str) -> Result<&'a str, ApiError> {
    match fields.get(name) {
        None | Some(Value::Null) => Err(ApiError::Unprocessable(format!("`{name}` is required"))),
        Some(Value::String(s)) => {
            check_name(name, s).map_err(ApiError::Unprocessable)?;
            Ok(s)
        }
        Some(_) => Err(ApiError::Unprocessable(format!(
            "`{name}` must be a string"
        ))),
    }
}

/// Validates the article's fields and builds the event it describes.
pub(crate) fn parse_event(
    slug: &str,
    fields: Map<String, Value>,
    payload_limit: usize,
) -> Result<Event, ApiError> {
    let topic = required(&fields, "topic")?;
    let event = required(&fields, "event")?;
    let name = event_name(topic, event);
    if is_reserved(event) || is_reserved(&name) {
        return Err(ApiError::Unprocessable(RESERVED.to_owned()));
    }
    let scope = Scope::parse(required(&fields, "scope")?).ok_or_else(|| {
        ApiError::Unprocessable("`scope` must be `public` or `private`".to_owned())
    })?;
    let payload_text = match fields.get("payload") {
        None | Some(Value::Null) => "{}".to_owned(),
        // A form carries the payload as JSON text (`{...}.to_json` in the article).
        Some(Value::String(text)) => text.clone(),
        Some(value @ Value::Object(_)) => value.to_string(),
        Some(_) => {
            return Err(ApiError::Unprocessable(
                "`payload` must be a JSON object".to_owned(),
            ));
        }
    };
    if payload_text.len() > payload_limit {
        return Err(ApiError::PayloadTooLarge(payload_limit));
    }
    let payload: Box<RawValue> = serde_json::from_str(&payload_text)
        .map_err(|e| ApiError::Unprocessable(format!("`payload` is not valid JSON: {e}")))?;
    if !payload.get().trim_start().starts_with('{') {
        return Err(ApiError::Unprocessable(
            "`payload` must be a JSON object".to_owned(),
        ));
    }
    Ok(Event {
        topic: scope.topic(slug),
        event: name,
        data: Data::Object(payload),
        exclude: None,
        user_id: None,
        position: None,
    })
}
