//! The only module that knows axum: routes, shared state, request logging.

mod admin;
mod auth;
mod body;
mod error;
mod events;
mod ws;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use axum::extract::{DefaultBodyLimit, MatchedPath, Request};
use axum::http::{HeaderName, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;

use crate::bus::Bus;
use crate::config::Config;
use crate::domain::app::App;
use crate::domain::event::{Scope, topic_for};
use crate::hub::{ConnId, Hub};
use crate::registry::AppRegistry;

pub use error::ApiError;

/// Shared by every handler; cheap to clone.
#[derive(Clone)]
pub struct AppState {
    pub config: Arc<Config>,
    pub registry: Arc<dyn AppRegistry>,
    pub bus: Arc<dyn Bus>,
    pub hub: Arc<Hub>,
    pub conn_ids: Arc<AtomicU64>,
}

impl AppState {
    #[must_use]
    pub fn next_conn_id(&self) -> ConnId {
        self.conn_ids.fetch_add(1, Ordering::Relaxed)
    }

    /// After an admin write: channels of an app that is gone, inactive or renamed are closed.
    pub fn app_changed(&self, old_slug: &str, now: Option<&App>) {
        let still_open = now.is_some_and(|app| app.active && app.slug == old_slug);
        if !still_open {
            for scope in [Scope::Public, Scope::Private] {
                self.hub.close_topic(&topic_for(scope, old_slug));
            }
        }
    }
}

static REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Builds the router with every route and layer.
pub fn router(state: AppState) -> Router {
    let admin_limit = state.config.limits.admin_body_bytes;
    let admin = Router::new()
        .route("/", get(admin::index).post(admin::create))
        .route(
            "/{slug}",
            get(admin::show)
                .patch(admin::update)
                .put(admin::update)
                .delete(admin::delete),
        )
        .route("/{slug}/rotate_secret", post(admin::rotate_secret))
        .layer(DefaultBodyLimit::max(admin_limit))
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            admin::require_admin,
        ));
    let events_limit = events::body_limit(state.config.limits.event_payload_bytes);
    Router::new()
        .route("/healthz", get(healthz))
        .nest("/api/admin/apps", admin)
        .route(
            "/api/apps/{app_slug}/events",
            post(events::trigger).layer(DefaultBodyLimit::max(events_limit)),
        )
        .route("/socket/websocket", get(ws::upgrade))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn(log_request))
        .with_state(state)
}

async fn healthz() -> impl IntoResponse {
    Json(json!({ "status": "ok" }))
}

async fn not_found() -> ApiError {
    ApiError::NotFound("no such route")
}

async fn method_not_allowed() -> Response {
    (
        StatusCode::METHOD_NOT_ALLOWED,
        Json(json!({ "errors": { "detail": "method not allowed" } })),
    )
        .into_response()
}

/// Logs each request once, with its matched route (never the raw path with its slugs), and
/// tags it with a request id: the caller's `x-request-id` when it sends one, else a new UUID.
/// Headers are never logged, so neither are credentials.
async fn log_request(request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = request.method().clone();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let request_id = request
        .headers()
        .get(&REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 128)
        .map_or_else(|| uuid::Uuid::new_v4().to_string(), str::to_owned);
    let mut response = next.run(request).await;
    tracing::info!(
        %method,
        %route,
        status = response.status().as_u16(),
        elapsed_ms = started.elapsed().as_secs_f64() * 1000.0,
        %request_id,
        "http request"
    );
    if let Ok(value) = HeaderValue::from_str(&request_id) {
        response.headers_mut().insert(REQUEST_ID.clone(), value);
    }
    response
}
