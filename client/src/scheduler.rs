//! Asking the scheduler where to connect: [`SchedulerClient::edges`] is
//! `GET /v1/edges?k=N`, the first edge being the scheduler's choice and the
//! rest alternatives to race or fall back to. See
//! [`crate::resilient::ResilientClient::connect_via_scheduler`].

use std::time::Duration;

use danmaku_proto::control::EdgeList;

use crate::error::ClientError;
use crate::event::EdgeAddr;
use crate::ingest::error_of;

/// Longest the scheduler may take to answer one request.
const SCHEDULER_TIMEOUT: Duration = Duration::from_secs(10);
/// Tries of one [`SchedulerClient::edges`] call.
pub const ATTEMPTS: u32 = 3;

/// A handle on one scheduler (cheap to clone).
#[derive(Debug, Clone)]
pub struct SchedulerClient {
    http: reqwest::Client,
    base: String,
}

impl SchedulerClient {
    /// `base_url` like `http://127.0.0.1:7000` (a trailing `/` is ignored).
    pub fn new(base_url: &str) -> Self {
        let http = reqwest::Client::builder()
            .timeout(SCHEDULER_TIMEOUT)
            .build()
            .unwrap_or_default();
        SchedulerClient {
            http,
            base: base_url.trim_end_matches('/').to_owned(),
        }
    }

    pub fn base_url(&self) -> &str {
        &self.base
    }

    /// `GET /v1/edges?k={k}`: up to `k` edges, the scheduler's choice first.
    /// A request that fails before an answer (a scheduler swamped by a flash
    /// crowd) is tried [`ATTEMPTS`] times with a short backoff. An error answer
    /// (e.g. `503 no_edge`) is [`ClientError::HttpStatus`].
    pub async fn edges(&self, k: usize) -> Result<Vec<EdgeAddr>, ClientError> {
        let mut backoff = Duration::from_millis(100);
        for _ in 1..ATTEMPTS {
            match self.edges_once(k).await {
                Err(ClientError::Http(e)) => {
                    tracing::debug!(scheduler = %self.base, error = %e, "asking again");
                    tokio::time::sleep(backoff).await;
                    backoff *= 2;
                }
                other => return other,
            }
        }
        self.edges_once(k).await
    }

    async fn edges_once(&self, k: usize) -> Result<Vec<EdgeAddr>, ClientError> {
        let resp = self
            .http
            .get(format!("{}/v1/edges?k={k}", self.base))
            .send()
            .await?;
        if !resp.status().is_success() {
            return Err(error_of(resp).await);
        }
        let body: EdgeList = resp.json().await?;
        Ok(body
            .edges
            .into_iter()
            .map(|e| EdgeAddr {
                id: e.id,
                ws: e.ws,
                quic: e.quic,
                load: e.load,
            })
            .collect())
    }
}
