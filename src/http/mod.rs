//! The only module that knows axum: routes, shared state, request logging.

mod admin;
mod auth;
pub(crate) mod body;
mod console;
mod error;
pub(crate) mod events;
mod extract;
pub(crate) mod history;
pub(crate) mod longpoll;
pub(crate) mod pusher_api;
pub mod server;
pub mod stats;
mod ws;

use std::time::Instant;

use axum::extract::{DefaultBodyLimit, MatchedPath, Request};
use axum::http::{HeaderName, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;

use crate::node::NodeState;

pub use error::ApiError;

static REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Builds the router with every route and layer.
pub fn router(state: NodeState) -> Router {
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
        .route("/{slug}/stats", get(stats::app_stats))
        .layer(DefaultBodyLimit::max(admin_limit))
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            admin::require_admin,
        ));
    let events_limit = events::body_limit(state.config.limits.event_payload_bytes);
    // A POST carries a batch of frames (phoenix.js sends up to 100 at once).
    let longpoll_limit = state.config.limits.ws_frame_bytes.saturating_mul(4);
    let mut router = Router::new();
    if state.config.metrics.listen.is_none() {
        router = router.route("/metrics", get(metrics));
    }
    if state.config.console.enabled {
        router = router.merge(console::router(&state));
    }
    router
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/api/openapi.json", get(openapi))
        .nest("/api/admin/apps", admin)
        .route(
            "/api/admin/nodes",
            get(stats::nodes).route_layer(middleware::from_fn_with_state(
                state.clone(),
                admin::require_admin,
            )),
        )
        .route(
            "/api/apps/{app_slug}/events",
            post(events::trigger).layer(DefaultBodyLimit::max(events_limit)),
        )
        .route("/api/apps/{app_slug}/history", get(history::read))
        .route("/socket/websocket", get(ws::upgrade))
        .route(
            "/socket/longpoll",
            get(longpoll::poll)
                .post(longpoll::send)
                .options(longpoll::preflight)
                .layer(DefaultBodyLimit::max(longpoll_limit)),
        )
        .route("/app/{key}", get(ws::upgrade_pusher))
        .merge(pusher_routes(&state))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(state.clone(), log_request))
        .with_state(state)
}

/// The Pusher HTTP API.
fn pusher_routes(state: &NodeState) -> Router<NodeState> {
    let limit = pusher_api::body_limit(&state.config);
    Router::new()
        .route("/apps/{app_id}/events", post(pusher_api::trigger))
        .route("/apps/{app_id}/batch_events", post(pusher_api::batch))
        .route("/apps/{app_id}/channels", get(pusher_api::channels))
        .route(
            "/apps/{app_id}/channels/{channel}",
            get(pusher_api::channel),
        )
        .route(
            "/apps/{app_id}/channels/{channel}/users",
            get(pusher_api::users),
        )
        .route(
            "/apps/{app_id}/users/{user_id}/terminate_connections",
            post(pusher_api::terminate),
        )
        .route(
            "/users/{user_id}/terminate_connections",
            post(pusher_api::terminate),
        )
        .layer(DefaultBodyLimit::max(limit))
}

/// `/metrics` alone, for a separate metrics listener.
pub fn metrics_router(state: NodeState) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .with_state(state)
}

async fn metrics(axum::extract::State(state): axum::extract::State<NodeState>) -> Response {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.metrics.render(),
    )
        .into_response()
}

/// The OpenAPI 3.1 description of every route above but the console's; `tests/openapi.rs`
/// keeps it true, and schemathesis checks the answers against it.
const OPENAPI: &str = include_str!("openapi.json");

async fn openapi() -> Response {
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        OPENAPI,
    )
        .into_response()
}

async fn healthz() -> impl IntoResponse {
    Json(json!({ "status": "ok" }))
}

/// Ready to take traffic: the database answers and the bus can publish with its guarantee.
/// Says which check failed, never why (no internals to unauthenticated callers).
async fn readyz(axum::extract::State(state): axum::extract::State<NodeState>) -> Response {
    let database = tokio::time::timeout(READY_TIMEOUT, state.registry.ping())
        .await
        .is_ok_and(|r| r.is_ok());
    let bus = state.bus.ready().is_ok();
    let serving = !state.shutdown.is_draining();
    let ready = database && bus && serving;
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = json!({
        "status": if ready { "ready" } else { "unavailable" },
        "checks": { "database": database, "bus": bus, "serving": serving },
    });
    (status, Json(body)).into_response()
}

const READY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(1);

async fn not_found() -> ApiError {
    ApiError::NotFound("no such route")
}

async fn method_not_allowed() -> Response {
    error::detail_response(StatusCode::METHOD_NOT_ALLOWED, "method not allowed")
}

/// A caller's request id is echoed and logged only when it is short and plain.
fn is_request_id(id: &str) -> bool {
    (1..=128).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
}

/// Logs each request once, with its matched route (never the raw path with its slugs), and
/// tags it with a request id: the caller's `x-request-id` when it sends one, else a new UUID.
/// Headers are never logged, so neither are credentials; every logged field comes from a
/// closed set or is bounded.
async fn log_request(
    axum::extract::State(state): axum::extract::State<NodeState>,
    request: Request,
    next: Next,
) -> Response {
    let started = Instant::now();
    let method = crate::metrics::method_label(request.method());
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let request_id = request
        .headers()
        .get(&REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|v| is_request_id(v))
        .map_or_else(|| uuid::Uuid::new_v4().to_string(), str::to_owned);
    let mut response = next.run(request).await;
    state.metrics.http_request(
        &route,
        method,
        response.status().as_u16(),
        started.elapsed().as_secs_f64(),
    );
    tracing::info!(
        method,
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
