//! The one error type of the client crate.

use danmaku_proto::ProtoError;

/// Why a client operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The base URL or address could not be used.
    #[error("invalid url {url:?}: {reason}")]
    InvalidUrl { url: String, reason: String },
    /// A socket operation failed.
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
    /// The WebSocket handshake or a WebSocket read/write failed.
    #[error("websocket error: {0}")]
    WebSocket(Box<tokio_tungstenite::tungstenite::Error>),
    /// The QUIC handshake or connection failed.
    #[error("quic error: {0}")]
    Quic(String),
    /// The TLS setup (certificate, provider) failed.
    #[error("tls error: {0}")]
    Tls(String),
    /// The edge sent bytes the client refuses (too large, malformed, bad batch).
    #[error("protocol error ({code}): {0}", code = .0.code())]
    Proto(#[from] ProtoError),
    /// The edge sent a frame that makes no sense at this point.
    #[error("unexpected frame: {0}")]
    Unexpected(String),
    /// The edge refused the token (or answered the handshake with an `Error`).
    #[error("authentication refused: {code}: {message}")]
    AuthRefused { code: String, message: String },
    /// The connection is closed; no more frames can be sent.
    #[error("connection closed")]
    Closed,
    /// Something did not happen in time.
    #[error("timed out waiting for {0}")]
    Timeout(&'static str),
    /// An HTTP request to ingest failed before an answer came back.
    #[error("http error: {0}")]
    Http(#[from] reqwest::Error),
    /// Ingest answered with an unexpected status.
    #[error("http status {status}: {code}: {message}")]
    HttpStatus {
        status: u16,
        code: String,
        message: String,
    },
}

/// Error codes after which reconnecting with the same token is pointless: the
/// token was revoked, or the user is blocked. A client stops and tells the
/// application (which signs the user in again, or shows the block).
pub const FINAL_CODES: [&str; 2] = ["token_revoked", "user_blocked"];

/// Whether `code` (of an `error` frame or an HTTP answer) is one of [`FINAL_CODES`].
pub fn is_final_code(code: &str) -> bool {
    FINAL_CODES.contains(&code)
}

impl ClientError {
    /// Whether retrying cannot help: the edge or ingest refused the token as
    /// revoked or the user as blocked.
    pub fn is_final(&self) -> bool {
        match self {
            ClientError::AuthRefused { code, .. } | ClientError::HttpStatus { code, .. } => {
                is_final_code(code)
            }
            _ => false,
        }
    }
}

impl From<tokio_tungstenite::tungstenite::Error> for ClientError {
    fn from(e: tokio_tungstenite::tungstenite::Error) -> Self {
        ClientError::WebSocket(Box::new(e))
    }
}
