//! `GET /socket/websocket` (Phoenix Channels) and `GET /app/:key` (Pusher protocol 7).

use std::collections::HashMap;
use std::net::IpAddr;

use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::ws::WebSocket;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::error::{ApiError, detail_response};
use super::extract::ClientIp;
use crate::limits::Limit;
use crate::node::NodeState;
use crate::protocol::phoenix::Vsn;
use crate::session::{self, PhoenixConnect, PusherConnect};

/// Per-socket buffers. tungstenite's defaults (128 KiB each) would make idle sockets expensive.
/// The read buffer is only the initial allocation: a larger frame makes it grow (up to the
/// frame limit). What clients send is mostly heartbeats of 50 to 100 bytes, so 256 bytes read
/// each in one call.
const READ_BUFFER: usize = 256;
const WRITE_BUFFER: usize = 8 * 1024;

/// The checks both endpoints share; the upgrade and the query on success.
#[allow(clippy::result_large_err)]
fn accept(
    state: &NodeState,
    ip: IpAddr,
    query: Result<Query<HashMap<String, String>>, QueryRejection>,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<(WebSocketUpgrade, HashMap<String, String>), Response> {
    let ws = ws.map_err(|rejection| {
        detail_response(
            rejection.status(),
            &format!("not a WebSocket upgrade: {rejection}"),
        )
    })?;
    let Query(params) = query.map_err(|rejection| {
        detail_response(
            StatusCode::BAD_REQUEST,
            &format!("bad query string: {rejection}"),
        )
    })?;
    if state.shutdown.is_closing() {
        return Err(detail_response(
            StatusCode::SERVICE_UNAVAILABLE,
            "this node is shutting down; reconnect",
        ));
    }
    if let Err(wait) = state.limits.upgrade(ip) {
        state.metrics.limit_refused(Limit::Upgrades);
        return Err(
            ApiError::too_many("too many new connections from this address", wait).into_response(),
        );
    }
    let frame_limit = state.config.limits.ws_frame_bytes;
    let ws = ws
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(WRITE_BUFFER)
        .max_message_size(frame_limit)
        .max_frame_size(frame_limit);
    Ok((ws, params))
}

fn origin(headers: &HeaderMap) -> Option<String> {
    headers
        .get(header::ORIGIN)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

pub async fn upgrade(
    State(state): State<NodeState>,
    ClientIp(ip): ClientIp,
    query: Result<Query<HashMap<String, String>>, QueryRejection>,
    headers: HeaderMap,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    let (ws, params) = match accept(&state, ip, query, ws) {
        Ok(accepted) => accepted,
        Err(response) => return response,
    };
    let Some(vsn) = Vsn::negotiate(params.get("vsn").map(String::as_str)) else {
        return detail_response(StatusCode::FORBIDDEN, "unsupported vsn: use 1.0.0 or 2.0.0");
    };
    let token = params
        .get("token")
        .or_else(|| params.get("guardian_token"))
        .cloned();
    let connect = PhoenixConnect {
        vsn,
        token,
        origin: origin(&headers),
    };
    ws.on_upgrade(move |socket: WebSocket| session::run_phoenix(socket, connect, state))
}

/// Pusher clients learn why they were refused from the close code, so every check but the
/// upgrade itself happens on the open socket.
pub async fn upgrade_pusher(
    State(state): State<NodeState>,
    ClientIp(ip): ClientIp,
    key: Result<Path<String>, PathRejection>,
    query: Result<Query<HashMap<String, String>>, QueryRejection>,
    headers: HeaderMap,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    let (ws, mut params) = match accept(&state, ip, query, ws) {
        Ok(accepted) => accepted,
        Err(response) => return response,
    };
    let Ok(Path(key)) = key else {
        return detail_response(StatusCode::BAD_REQUEST, "bad app key in the path");
    };
    let connect = PusherConnect {
        key,
        protocol: params.remove("protocol"),
        origin: origin(&headers),
    };
    ws.on_upgrade(move |socket: WebSocket| session::run_pusher(socket, connect, state))
}
