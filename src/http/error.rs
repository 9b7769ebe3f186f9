//! The HTTP layer's one error type, mapped once to a status and a JSON body.
//!
//! Client mistakes get a 4xx naming the problem; infrastructure trouble is logged here with
//! its cause and answered 503 without internals.

use axum::Json;
use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::server::BodyTimeout;
use crate::domain::app::ValidationErrors;
use crate::registry::RegistryError;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// Missing or wrong credentials; `realm` is announced in `WWW-Authenticate`.
    #[error("{0}")]
    Unauthorized(&'static str),
    #[error("{0}")]
    NotFound(&'static str),
    #[error("validation failed")]
    Validation(ValidationErrors),
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Unprocessable(String),
    #[error("body is larger than the limit of {0} bytes")]
    PayloadTooLarge(usize),
    #[error("{0}")]
    RequestTimeout(String),
    #[error("unsupported content type: use application/json or application/x-www-form-urlencoded")]
    UnsupportedMediaType,
    /// Over a rate limit or quota: answered 429 with `Retry-After`.
    #[error("{detail}")]
    TooManyRequests {
        detail: &'static str,
        retry_after_secs: u64,
    },
    /// A backend is down; the cause is logged, never sent.
    #[error("service unavailable: {0}")]
    Unavailable(String),
}

impl ApiError {
    fn status(&self) -> StatusCode {
        match self {
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Validation(_) | ApiError::Unprocessable(_) => {
                StatusCode::UNPROCESSABLE_ENTITY
            }
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::RequestTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            ApiError::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::TooManyRequests { .. } => StatusCode::TOO_MANY_REQUESTS,
        }
    }

    /// Maps a body read failure; `limit` is the configured maximum for this route.
    pub fn from_body(rejection: &BytesRejection, limit: usize) -> ApiError {
        let mut source: Option<&(dyn std::error::Error + 'static)> = Some(rejection);
        while let Some(error) = source {
            if let Some(timeout) = error.downcast_ref::<BodyTimeout>() {
                return ApiError::RequestTimeout(timeout.to_string());
            }
            source = error.source();
        }
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::PayloadTooLarge(limit)
        } else {
            ApiError::BadRequest(format!("cannot read the request body: {rejection}"))
        }
    }
}

impl From<RegistryError> for ApiError {
    fn from(err: RegistryError) -> ApiError {
        match err {
            RegistryError::Conflict { field } => {
                ApiError::Validation(ValidationErrors::single(field, "has already been taken"))
            }
            other => ApiError::Unavailable(other.to_string()),
        }
    }
}

/// The body of every non-validation error: `{"errors": {"detail": "..."}}`.
pub fn detail_response(status: StatusCode, detail: &str) -> Response {
    (status, Json(json!({ "errors": { "detail": detail } }))).into_response()
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let mut response = match &self {
            ApiError::Validation(errors) => {
                (status, Json(json!({ "errors": errors }))).into_response()
            }
            ApiError::Unavailable(cause) => {
                tracing::error!(%cause, "backend unavailable");
                detail_response(status, "service unavailable, try again later")
            }
            other => detail_response(status, &other.to_string()),
        };
        match self {
            ApiError::Unauthorized(_) => {
                response.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Basic realm=\"pushlite\""),
                );
            }
            ApiError::TooManyRequests {
                retry_after_secs, ..
            } => {
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from(retry_after_secs));
            }
            _ => {}
        }
        response
    }
}
