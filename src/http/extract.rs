//! Extractors whose rejections are JSON errors like every other client mistake.

use axum::extract::{FromRequestParts, Path};
use axum::http::request::Parts;

use super::error::ApiError;

/// The `:slug` / `:app_slug` path segment.
pub struct Slug(pub String);

impl<S: Send + Sync> FromRequestParts<S> for Slug {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        Path::<String>::from_request_parts(parts, state)
            .await
            .map(|Path(slug)| Slug(slug))
            .map_err(|e| ApiError::BadRequest(format!("bad path: {e}")))
    }
}
