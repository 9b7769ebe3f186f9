//! Extractors whose rejections are JSON errors like every other client mistake.

use std::convert::Infallible;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use axum::extract::{ConnectInfo, FromRequestParts, Path};
use axum::http::request::Parts;

use super::error::ApiError;
use crate::domain::app::is_valid_slug;
use crate::limits::RetryAfter;
use crate::node::NodeState;

/// The client's address (see [`crate::limits::client_ip`]). A request that did not come
/// through the accept loop (none in production) counts as `0.0.0.0`.
#[derive(Debug, Clone, Copy)]
pub struct ClientIp(pub IpAddr);

impl FromRequestParts<NodeState> for ClientIp {
    type Rejection = Infallible;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &NodeState,
    ) -> Result<Self, Self::Rejection> {
        let peer = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |c| c.0.ip());
        Ok(ClientIp(state.limits.client_ip(peer, &parts.headers)))
    }
}

impl ApiError {
    /// A 429 for a limit, with its advice.
    #[must_use]
    pub fn too_many(detail: &'static str, RetryAfter(secs): RetryAfter) -> ApiError {
        ApiError::TooManyRequests {
            detail,
            retry_after_secs: secs,
        }
    }
}

/// The `:slug` / `:app_slug` path segment; one that no app could have is a 404 at once.
pub struct Slug(pub String);

impl<S: Send + Sync> FromRequestParts<S> for Slug {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        Path::<String>::from_request_parts(parts, state)
            .await
            .map_err(|e| ApiError::BadRequest(format!("bad path: {e}")))
            .and_then(|Path(slug)| {
                if is_valid_slug(&slug) {
                    Ok(Slug(slug))
                } else {
                    Err(ApiError::NotFound("no app with this slug"))
                }
            })
    }
}
