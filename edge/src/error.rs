//! Errors of the edge: [`EdgeError`] for starting and serving, [`ApiError`] for
//! the HTTP answers given before a WebSocket upgrade (docs/PROTOCOL.md's error body).

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

/// Why the edge could not start or serve a listener.
#[derive(Debug, thiserror::Error)]
pub enum EdgeError {
    #[error("bus: {0}")]
    Bus(#[from] danmaku_bus::BusError),
    #[error("TLS setup: {0}")]
    Tls(String),
    #[error("reading {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("QUIC endpoint: {0}")]
    Quic(#[source] std::io::Error),
    #[error("metrics registration: {0}")]
    Metrics(#[from] prometheus::Error),
    #[error("batch encoder: {0}")]
    Encoder(#[from] danmaku_proto::ProtoError),
    #[error("delivery thread: {0}")]
    Pipeline(#[source] std::io::Error),
}

/// An HTTP error answered as `{"error":{"code":…,"message":…}}`.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({"error": {"code": self.code, "message": self.message}});
        (self.status, Json(body)).into_response()
    }
}
