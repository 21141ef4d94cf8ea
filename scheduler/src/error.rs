//! Errors: [`SchedulerError`] for building the service, [`ApiError`] for
//! requests, answered as `{"error":{"code","message"}}` like the rest of the API.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

/// Why the scheduler could not be built.
#[derive(Debug, thiserror::Error)]
pub enum SchedulerError {
    #[error("invalid scheduler config: {0}")]
    Config(String),
    #[error("registering scheduler metrics: {0}")]
    Metrics(#[from] prometheus::Error),
}

/// A request the scheduler refuses.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("bad query: {0}")]
    BadQuery(String),
    #[error("no edge is available")]
    NoEdges,
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadQuery(_) => StatusCode::BAD_REQUEST,
            ApiError::NoEdges => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    pub fn code(&self) -> &'static str {
        match self {
            ApiError::BadQuery(_) => "bad_query",
            ApiError::NoEdges => "no_edges",
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({
            "error": { "code": self.code(), "message": self.to_string() }
        });
        (self.status(), Json(body)).into_response()
    }
}
