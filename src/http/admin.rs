//! The admin Apps API under `/api/admin/apps`, behind the admin credentials.

use std::sync::Arc;

use axum::Json;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde_json::json;

use super::auth::{basic_credentials, credentials_match};
use super::body;
use super::error::ApiError;
use super::extract::{ClientIp, Slug};
use crate::domain::app::{App, AppParams, random_credential};
use crate::limits::Limit;
use crate::node::NodeState;

/// Middleware applied once to every admin route.
/// An address that sent too many wrong credentials is refused before they are checked, so
/// guessing stops there (`limits.admin_login_failures_per_min`).
pub async fn require_admin(
    State(state): State<NodeState>,
    ClientIp(ip): ClientIp,
    request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    if let Err(wait) = state.limits.login_allowed(ip) {
        state.metrics.limit_refused(Limit::AdminLogin);
        return Err(ApiError::too_many(
            "too many failed logins from this address; try later",
            wait,
        ));
    }
    let admin = &state.config.admin;
    let given = basic_credentials(request.headers());
    let allowed = given.as_ref().is_some_and(|(user, password)| {
        credentials_match((user, password), (&admin.username, &admin.password))
    });
    if allowed {
        Ok(next.run(request).await)
    } else {
        // A request without credentials is a browser asking for them, not a guess.
        if given.is_some() {
            state.limits.login_failed(ip);
            tracing::warn!(%ip, "wrong admin credentials");
        }
        Err(ApiError::Unauthorized("admin credentials required"))
    }
}

fn data(app: &App) -> Json<serde_json::Value> {
    Json(json!({ "data": app }))
}

async fn find(state: &NodeState, slug: &str) -> Result<Arc<App>, ApiError> {
    state
        .database
        .by_slug(slug)
        .await?
        .ok_or(ApiError::NotFound("no app with this slug"))
}

pub async fn index(State(state): State<NodeState>) -> Result<impl IntoResponse, ApiError> {
    let apps = state.database.list().await?;
    Ok(Json(json!({ "data": apps })))
}

pub async fn create(
    State(state): State<NodeState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let limit = state.config.limits.admin_body_bytes;
    let body = body.map_err(|r| ApiError::from_body(&r, limit))?;
    let params = AppParams::from_map(body::app_object(&headers, &body)?);
    let new_app = params
        .into_new_app(state.config.app_rules())
        .map_err(ApiError::Validation)?;
    let app = state.registry.insert(&new_app).await?;
    tracing::info!(slug = %app.slug, "app created");
    let mut response = (StatusCode::CREATED, data(&app)).into_response();
    if let Ok(location) = HeaderValue::from_str(&format!("/api/admin/apps/{}", app.slug)) {
        response.headers_mut().insert(header::LOCATION, location);
    }
    Ok(response)
}

/// One app, each webhook with its last delivery attempt: `last_attempt_at`, `last_status`
/// (the receiver's HTTP status, if it answered) and `last_error`, all null before the first.
pub async fn show(
    State(state): State<NodeState>,
    Slug(slug): Slug,
) -> Result<impl IntoResponse, ApiError> {
    let app = find(&state, &slug).await?;
    let mut shown = json!(app);
    let urls: Vec<String> = app.webhooks.iter().map(|hook| hook.url.clone()).collect();
    // The app is shown from the database even while Redis is down; its statuses are then
    // unknown (null).
    let statuses = match state.webhooks.store().statuses(&app.slug, &urls).await {
        Ok(statuses) => statuses,
        Err(error) => {
            tracing::warn!(%error, "webhook statuses unavailable");
            vec![None; urls.len()]
        }
    };
    if let Some(hooks) = shown["webhooks"].as_array_mut() {
        for (hook, status) in hooks.iter_mut().zip(statuses) {
            hook["last_attempt_at"] = json!(status.as_ref().map(|s| &s.at));
            hook["last_status"] = json!(status.as_ref().and_then(|s| s.status));
            hook["last_error"] = json!(status.and_then(|s| s.error));
        }
    }
    Ok(Json(json!({ "data": shown })))
}

pub async fn update(
    State(state): State<NodeState>,
    Slug(slug): Slug,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<impl IntoResponse, ApiError> {
    let limit = state.config.limits.admin_body_bytes;
    let body = body.map_err(|r| ApiError::from_body(&r, limit))?;
    let params = AppParams::from_map(body::app_object(&headers, &body)?);
    let changes = params
        .into_changes(state.config.app_rules())
        .map_err(ApiError::Validation)?;
    let app = to_completion(async move {
        let app = state
            .registry
            .update(&slug, &changes)
            .await?
            .ok_or(ApiError::NotFound("no app with this slug"))?;
        state.app_changed(&slug, Some(&app)).await;
        Ok(app)
    })
    .await?;
    tracing::info!(slug = %app.slug, "app updated");
    Ok(data(&app))
}

pub async fn rotate_secret(
    State(state): State<NodeState>,
    Slug(slug): Slug,
) -> Result<impl IntoResponse, ApiError> {
    let app = to_completion(async move {
        let app = state
            .registry
            .rotate_secret(&slug, &random_credential())
            .await?
            .ok_or(ApiError::NotFound("no app with this slug"))?;
        state.app_changed(&slug, Some(&app)).await;
        Ok(app)
    })
    .await?;
    tracing::info!(slug = %app.slug, "app secret rotated");
    Ok(data(&app))
}

pub async fn delete(
    State(state): State<NodeState>,
    Slug(slug): Slug,
) -> Result<StatusCode, ApiError> {
    to_completion(async move {
        if state.registry.delete(&slug).await? {
            state.app_changed(&slug, None).await;
            tracing::info!(%slug, "app deleted");
            Ok(StatusCode::NO_CONTENT)
        } else {
            Err(ApiError::NotFound("no app with this slug"))
        }
    })
    .await
}

/// Runs a write and its invalidation and announcement on their own task: hyper drops a
/// handler whose client disconnects, and a write that committed without its invalidation
/// would leave every node serving the old row (a rotated-away secret) until the cache TTL.
async fn to_completion<T: Send + 'static>(
    write: impl Future<Output = Result<T, ApiError>> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::spawn(write)
        .await
        .unwrap_or_else(|e| Err(ApiError::Unavailable(format!("write task failed: {e}"))))
}
