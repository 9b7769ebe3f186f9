//! Extractors whose rejections are JSON errors like every other client mistake.

use axum::extract::{FromRequestParts, Path};
use axum::http::request::Parts;

use super::error::ApiError;
use crate::domain::app::is_valid_slug;

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
