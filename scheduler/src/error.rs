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
    #[error("building the HTTP client: {0}")]
    Http(#[from] reqwest::Error),
}

/// A request the scheduler refuses. Every refusal is counted in
/// `danmaku_scheduler_refused_total{code}` (see [`crate::metrics`]).
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("bad query: {0}")]
    BadQuery(String),
    #[error("no edge is available: {0}")]
    NoEdge(String),
    #[error("{0}")]
    BadToken(String),
    #[error("registry calls need an app-role token")]
    Forbidden,
    #[error("bad registration: {0}")]
    BadRegistration(String),
    #[error("bad heartbeat: {0}")]
    BadHeartbeat(String),
    #[error("edge {0:?} is not registered; register again")]
    UnknownEdge(String),
    #[error("bad channel name: {0}")]
    BadChannel(String),
}

/// The `code` of a refusal, left in the response's extensions so one
/// middleware counts every refusal, whichever handler made it.
#[derive(Debug, Clone, Copy)]
pub struct RefusalCode(pub &'static str);

impl ApiError {
    /// Every code, so the refusal counter has a series for each from the start.
    pub const CODES: [&'static str; 8] = [
        "bad_query",
        "no_edge",
        "bad_token",
        "forbidden",
        "bad_registration",
        "bad_heartbeat",
        "unknown_edge",
        "bad_channel",
    ];

    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadQuery(_)
            | ApiError::BadRegistration(_)
            | ApiError::BadHeartbeat(_)
            | ApiError::BadChannel(_) => StatusCode::BAD_REQUEST,
            ApiError::NoEdge(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::BadToken(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden => StatusCode::FORBIDDEN,
            ApiError::UnknownEdge(_) => StatusCode::NOT_FOUND,
        }
    }

    pub fn code(&self) -> &'static str {
        match self {
            ApiError::BadQuery(_) => "bad_query",
            ApiError::NoEdge(_) => "no_edge",
            ApiError::BadToken(_) => "bad_token",
            ApiError::Forbidden => "forbidden",
            ApiError::BadRegistration(_) => "bad_registration",
            ApiError::BadHeartbeat(_) => "bad_heartbeat",
            ApiError::UnknownEdge(_) => "unknown_edge",
            ApiError::BadChannel(_) => "bad_channel",
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let code = self.code();
        let body = serde_json::json!({
            "error": { "code": code, "message": self.to_string() }
        });
        let mut response = (self.status(), Json(body)).into_response();
        response.extensions_mut().insert(RefusalCode(code));
        response
    }
}
