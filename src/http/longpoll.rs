//! `/socket/longpoll`: Phoenix's LongPoll transport, as phoenix.js speaks it. Every answer is
//! HTTP 200 (503 when the node cannot take the session) with a JSON body whose `status` is the
//! real one:
//! - `GET` without a session token opens a session: `{"status":410,"token":T,"messages":[]}`;
//! - `GET` with one waits up to `longpoll.window_ms` for frames: `{"status":200,"token":T,
//!   "messages":[frame text, …]}`, or 204 when none came, or 410 when the session is gone;
//! - `POST` with one sends its frames (`application/x-ndjson`, one per line, at most
//!   `longpoll.max_frames`): `{"status":200,"token":T}`.
//!
//! The session token travels as the `token` query parameter (phoenix.js up to 1.8.12, after any
//! `token` connect parameter) or the `X-Phoenix-Longpoll-Token` header.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::ws::Message;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::extract::ClientIp;
use crate::limits::{Limit, RetryAfter};
use crate::node::NodeState;
use crate::protocol::phoenix::Vsn;
use crate::session::PhoenixConnect;
use crate::session::longpoll::{PollSession, TOKEN_PREFIX};

type Params = Query<Vec<(String, String)>>;

/// A LongPoll answer: HTTP `http`, body status `status`.
fn answer(http: StatusCode, body: Value) -> Response {
    let mut response = (http, Json(body)).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        HeaderValue::from_static("*"),
    );
    response
}

fn status(code: u16, token: Option<&str>) -> Response {
    answer(
        StatusCode::OK,
        json!({ "status": code, "token": token, "messages": [] }),
    )
}

/// The session token the request carries, if any: a `token` parameter that looks like one, or
/// the header.
fn session_token<'a>(params: &'a [(String, String)], headers: &'a HeaderMap) -> Option<&'a str> {
    headers
        .get("x-phoenix-longpoll-token")
        .and_then(|v| v.to_str().ok())
        .or_else(|| {
            params
                .iter()
                .rev()
                .find(|(k, v)| k == "token" && v.starts_with(TOKEN_PREFIX))
                .map(|(_, v)| v.as_str())
        })
}

fn param<'a>(params: &'a [(String, String)], name: &str) -> Option<&'a str> {
    params
        .iter()
        .find(|(k, v)| k == name && !v.starts_with(TOKEN_PREFIX))
        .map(|(_, v)| v.as_str())
}

/// The live session a token names, if any.
fn session(state: &NodeState, token: Option<&str>) -> Option<(String, Arc<PollSession>)> {
    let token = token?;
    let session = state.longpolls.get(token)?;
    Some((token.to_owned(), session))
}

/// `GET /socket/longpoll`: opens a session, or polls one.
pub async fn poll(
    State(state): State<NodeState>,
    ClientIp(ip): ClientIp,
    Query(params): Params,
    headers: HeaderMap,
) -> Response {
    match session_token(&params, &headers) {
        None => open(state, ip, &params, &headers),
        Some(token) => match session(&state, Some(token)) {
            Some((token, session)) => wait(&state, &token, &session).await,
            None => status(410, None),
        },
    }
}

fn open(
    state: NodeState,
    ip: IpAddr,
    params: &[(String, String)],
    headers: &HeaderMap,
) -> Response {
    let unavailable = |why: &str| {
        // phoenix.js retries a body status of 500 with its reconnect backoff.
        answer(
            StatusCode::SERVICE_UNAVAILABLE,
            json!({ "status": 500, "token": null, "messages": [], "error": why }),
        )
    };
    if state.shutdown.is_closing() {
        return unavailable("this node is shutting down; reconnect");
    }
    // A session is a connection like a WebSocket's, and counts against the same budget.
    if let Err(RetryAfter(secs)) = state.limits.upgrade(ip) {
        state.metrics.limit_refused(Limit::Upgrades);
        let mut response = answer(
            StatusCode::TOO_MANY_REQUESTS,
            json!({ "status": 500, "token": null, "messages": [],
                    "error": "too many new connections from this address" }),
        );
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        return response;
    }
    let Some(vsn) = Vsn::negotiate(param(params, "vsn")) else {
        return status(403, None);
    };
    let token = headers
        .get("x-phoenix-authtoken")
        .and_then(|v| v.to_str().ok())
        .or_else(|| param(params, "token"))
        .or_else(|| param(params, "guardian_token"))
        .map(str::to_owned);
    let connect = PhoenixConnect {
        vsn,
        token,
        origin: headers
            .get(header::ORIGIN)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned),
    };
    let sessions = state.longpolls.clone();
    match sessions.start(connect, state) {
        Some(token) => status(410, Some(&token)),
        None => unavailable("too many LongPoll sessions on this node"),
    }
}

/// Waits for what the session sends, up to the window.
async fn wait(state: &NodeState, token: &str, session: &PollSession) -> Response {
    // A poll is the client's heartbeat: the session's idle timer restarts.
    let _ = session.inbound.try_send(Message::Ping(Default::default()));
    let window = Duration::from_millis(state.config.longpoll.window_ms);
    let Ok(mut outbound) = tokio::time::timeout(window, session.outbound.lock()).await else {
        return status(204, Some(token));
    };
    let first = match tokio::time::timeout(window, outbound.recv()).await {
        Err(_) => return status(204, Some(token)),
        Ok(None) => return status(410, None),
        Ok(Some(message)) => message,
    };
    let max = state.config.longpoll.max_messages;
    let mut messages = Vec::new();
    let mut next = Some(first);
    while let Some(message) = next.take() {
        if let Message::Text(text) = message {
            messages.push(Value::String(text.to_string()));
        }
        if messages.len() < max {
            next = outbound.try_recv().ok();
        }
    }
    if messages.is_empty() {
        // Only a close frame: the session ended.
        return status(410, None);
    }
    answer(
        StatusCode::OK,
        json!({ "status": 200, "token": token, "messages": messages }),
    )
}

/// The frames of a LongPoll body: one per non-empty line of an `application/x-ndjson` body
/// (phoenix.js batches them so), else the whole body.
pub(crate) fn frames(body: &str, ndjson: bool) -> Vec<&str> {
    if ndjson {
        body.lines().filter(|l| !l.is_empty()).collect()
    } else {
        vec![body]
    }
}

/// `POST /socket/longpoll`: the client's frames, one per line.
pub async fn send(
    State(state): State<NodeState>,
    Query(params): Params,
    headers: HeaderMap,
    body: String,
) -> Response {
    let Some((token, session)) = session(&state, session_token(&params, &headers)) else {
        return status(410, None);
    };
    let ndjson = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/x-ndjson"));
    let frames = frames(&body, ndjson);
    if frames.len() > state.config.longpoll.max_frames {
        return answer(
            StatusCode::OK,
            json!({ "status": 400, "token": token, "error": format!("at most {} frames per request", state.config.longpoll.max_frames) }),
        );
    }
    let window = Duration::from_millis(state.config.longpoll.window_ms);
    for frame in frames {
        // Lines that are not JSON text are phoenix.js's base64 binary frames: the session
        // refuses binary frames as it does over a WebSocket.
        let message = if frame.starts_with('[') || frame.starts_with('{') {
            Message::Text(frame.to_owned().into())
        } else {
            Message::Binary(Default::default())
        };
        match tokio::time::timeout(window, session.inbound.send(message)).await {
            Err(_) => return status(408, Some(&token)),
            Ok(Err(_)) => return status(410, None),
            Ok(Ok(())) => {}
        }
    }
    answer(StatusCode::OK, json!({ "status": 200, "token": token }))
}

/// `OPTIONS /socket/longpoll`: the CORS preflight of cross-origin pages.
pub async fn preflight() -> Response {
    let mut response = StatusCode::OK.into_response();
    let headers = response.headers_mut();
    for (name, value) in [
        (header::ACCESS_CONTROL_ALLOW_ORIGIN, "*"),
        (header::ACCESS_CONTROL_ALLOW_METHODS, "GET, POST, OPTIONS"),
        (
            header::ACCESS_CONTROL_ALLOW_HEADERS,
            "content-type, x-phoenix-longpoll-token, x-phoenix-authtoken",
        ),
        (header::ACCESS_CONTROL_MAX_AGE, "3600"),
    ] {
        headers.insert(name, HeaderValue::from_static(value));
    }
    response
}
