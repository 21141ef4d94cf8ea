//! The sending side: a small HTTP client for ingest (`/v1/dev/token`,
//! `/v1/cert`, `POST /v1/channels/{channel}/messages`).

use std::time::Duration;

use serde::Deserialize;
use serde_json::json;

use crate::ClientError;

/// What ingest did with a posted danmaku.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PostOutcome {
    /// `202`: accepted and published.
    Accepted,
    /// `429`: try again after `retry_after` (from the `Retry-After` header).
    RateLimited { retry_after: Duration },
    /// Any other non-2xx answer, with the API's error code and message.
    Rejected {
        status: u16,
        code: String,
        message: String,
    },
}

/// HTTP client for an ingest (or standalone) server. Cheap to clone; clones
/// share one connection pool.
#[derive(Debug, Clone)]
pub struct IngestClient {
    http: reqwest::Client,
    base: String,
}

#[derive(Deserialize)]
struct TokenBody {
    token: String,
}

#[derive(Deserialize)]
struct CertBody {
    der_base64: String,
}

#[derive(Deserialize, Default)]
struct ErrorBody {
    #[serde(default)]
    error: ErrorDetail,
}

#[derive(Deserialize, Default)]
struct ErrorDetail {
    #[serde(default)]
    code: String,
    #[serde(default)]
    message: String,
}

/// Seconds of a `Retry-After` header (integer or decimal); 1 s when missing.
fn retry_after(headers: &reqwest::header::HeaderMap) -> Duration {
    headers
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<f64>().ok())
        .filter(|s| s.is_finite() && *s >= 0.0)
        .map(|s| Duration::from_secs_f64(s.min(3600.0)))
        .unwrap_or(Duration::from_secs(1))
}

async fn error_of(resp: reqwest::Response) -> ClientError {
    let status = resp.status().as_u16();
    let body: ErrorBody = resp.json().await.unwrap_or_default();
    ClientError::HttpStatus {
        status,
        code: body.error.code,
        message: body.error.message,
    }
}

impl IngestClient {
    /// `base_url` like `http://127.0.0.1:7070` (a trailing `/` is ignored).
    pub fn new(base_url: &str) -> Self {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .pool_max_idle_per_host(256)
            .build()
            .unwrap_or_default();
        IngestClient {
            http,
            base: base_url.trim_end_matches('/').to_owned(),
        }
    }

    /// The base URL requests go to.
    pub fn base_url(&self) -> &str {
        &self.base
    }

    /// `POST /v1/dev/token {"user":…}`: a dev token (standalone without `--auth-secret`).
    pub async fn dev_token(&self, user: &str) -> Result<String, ClientError> {
        let resp = self
            .http
            .post(format!("{}/v1/dev/token", self.base))
            .json(&json!({ "user": user }))
            .send()
            .await?;
        if !resp.status().is_success() {
            return Err(error_of(resp).await);
        }
        Ok(resp.json::<TokenBody>().await?.token)
    }

    /// `GET /v1/cert`: the DER of the edge's dev QUIC certificate.
    pub async fn fetch_cert_der(&self) -> Result<Vec<u8>, ClientError> {
        use base64::Engine;
        let resp = self
            .http
            .get(format!("{}/v1/cert", self.base))
            .send()
            .await?;
        if !resp.status().is_success() {
            return Err(error_of(resp).await);
        }
        let body: CertBody = resp.json().await?;
        base64::engine::general_purpose::STANDARD
            .decode(body.der_base64.trim())
            .map_err(|e| ClientError::Tls(format!("der_base64 of /v1/cert: {e}")))
    }

    /// Posts one danmaku comment to `channel` as the owner of `token`.
    pub async fn post_danmaku(
        &self,
        token: &str,
        channel: &str,
        text: &str,
    ) -> Result<PostOutcome, ClientError> {
        let resp = self
            .http
            .post(format!("{}/v1/channels/{}/messages", self.base, channel))
            .bearer_auth(token)
            .json(&json!({ "kind": "danmaku", "text": text }))
            .send()
            .await?;
        let status = resp.status();
        if status.is_success() {
            return Ok(PostOutcome::Accepted);
        }
        if status.as_u16() == 429 {
            return Ok(PostOutcome::RateLimited {
                retry_after: retry_after(resp.headers()),
            });
        }
        match error_of(resp).await {
            ClientError::HttpStatus {
                status,
                code,
                message,
            } => Ok(PostOutcome::Rejected {
                status,
                code,
                message,
            }),
            other => Err(other),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::{HeaderMap, HeaderValue, RETRY_AFTER};

    #[test]
    fn retry_after_forms() {
        let mut h = HeaderMap::new();
        assert_eq!(retry_after(&h), Duration::from_secs(1));
        h.insert(RETRY_AFTER, HeaderValue::from_static("3"));
        assert_eq!(retry_after(&h), Duration::from_secs(3));
        h.insert(RETRY_AFTER, HeaderValue::from_static("0.25"));
        assert_eq!(retry_after(&h), Duration::from_millis(250));
        h.insert(RETRY_AFTER, HeaderValue::from_static("soon"));
        assert_eq!(retry_after(&h), Duration::from_secs(1));
    }
}
