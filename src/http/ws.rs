//! `GET /socket/websocket`: the Phoenix Channels endpoint.

use std::collections::HashMap;

use axum::extract::rejection::QueryRejection;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::Response;

use super::AppState;
use super::error::detail_response;
use crate::protocol::phoenix::Vsn;
use crate::session::{self, Connect};

/// Per-socket buffers. tungstenite's defaults (128 KiB each) would make idle sockets expensive.
/// The read buffer is only the initial allocation: a larger frame makes it grow (up to the
/// frame limit). Phoenix traffic from clients is mostly 50-byte heartbeats, so 512 bytes keep
/// an idle socket near 7 KiB in all.
const READ_BUFFER: usize = 512;
const WRITE_BUFFER: usize = 8 * 1024;

pub async fn upgrade(
    State(state): State<AppState>,
    query: Result<Query<HashMap<String, String>>, QueryRejection>,
    headers: HeaderMap,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    let ws = match ws {
        Ok(ws) => ws,
        Err(rejection) => {
            return detail_response(
                rejection.status(),
                &format!("not a WebSocket upgrade: {rejection}"),
            );
        }
    };
    let params = match query {
        Ok(Query(params)) => params,
        Err(rejection) => {
            return detail_response(
                StatusCode::BAD_REQUEST,
                &format!("bad query string: {rejection}"),
            );
        }
    };
    if state.shutdown.is_closing() {
        return detail_response(
            StatusCode::SERVICE_UNAVAILABLE,
            "this node is shutting down; reconnect",
        );
    }
    let Some(vsn) = Vsn::negotiate(params.get("vsn").map(String::as_str)) else {
        return detail_response(StatusCode::FORBIDDEN, "unsupported vsn: use 1.0.0 or 2.0.0");
    };
    let token = params
        .get("token")
        .or_else(|| params.get("guardian_token"))
        .cloned();
    let origin = headers
        .get(header::ORIGIN)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let frame_limit = state.config.limits.ws_frame_bytes;
    ws.read_buffer_size(READ_BUFFER)
        .write_buffer_size(WRITE_BUFFER)
        .max_message_size(frame_limit)
        .max_frame_size(frame_limit)
        .on_upgrade(move |socket| session::run(socket, Connect { vsn, token, origin }, state))
}
