//! Why a load test could not run (individual connection or post failures are
//! counted in the report, not errors).

use danmaku_client::ClientError;

#[derive(Debug, thiserror::Error)]
pub enum LoadtestError {
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error("setup against the target failed: {0}")]
    Setup(#[from] ClientError),
    #[error("writing the report failed: {0}")]
    Io(#[from] std::io::Error),
    #[error("encoding the report failed: {0}")]
    Json(#[from] serde_json::Error),
}
