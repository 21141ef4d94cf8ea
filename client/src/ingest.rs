//! The sending side: a small HTTP client for ingest (`/v1/dev/token`,
//! `/v1/cert`, `POST /v1/channels/{channel}/messages`) and the reliable lane's
//! HTTP side (history, ack offsets, unread counts, group membership), and
//! blobs for notify-pull (upload with an app token, post a message carrying
//! one, fetch one on demand: [`IngestClient::fetch_blob`]).

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;
use serde_json::json;

use crate::error::ClientError;

/// What ingest did with a posted danmaku.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PostOutcome {
    /// `202`: accepted and published (danmaku lane). `id` names the danmaku
    /// for a moderator's retraction (27 hex digits; empty from an ingest that
    /// predates ids).
    Accepted { id: String },
    /// `200 {"seq":N}`: a reliable message (gift, chat) persisted with `seq`. A
    /// retry with the same `client_msg_id` answers the same `seq`.
    Persisted { seq: u64 },
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

/// One stored reliable message, as `GET /v1/channels/{channel}/messages` lists it.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct HistoryMessage {
    pub seq: u64,
    /// `gift`, `chat`...
    #[serde(default)]
    pub kind: String,
    #[serde(default)]
    pub sender: String,
    #[serde(default)]
    pub text: String,
    #[serde(default)]
    pub ts_ms: i64,
    /// The message's JSON payload, when it has one.
    #[serde(default)]
    pub payload: Option<serde_json::Value>,
    /// The id of the blob the message carries, when it has one
    /// ([`IngestClient::fetch_blob`]).
    #[serde(default)]
    pub blob: Option<String>,
}

/// A blob fetched with [`IngestClient::fetch_blob`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchedBlob {
    /// The content type it was uploaded with (`image/png`...).
    pub content_type: String,
    pub body: Vec<u8>,
}

/// One page of reliable history, oldest first.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct HistoryPage {
    pub messages: Vec<HistoryMessage>,
    /// Pass as `after_seq` to get the next page. When the server omits it, the
    /// last message's seq (or the requested `after_seq` for an empty page).
    #[serde(default)]
    pub next_after_seq: u64,
}

impl HistoryPage {
    /// Parses a history answer body; `after_seq` is what was asked for (used
    /// when the body has no `next_after_seq`).
    pub fn from_json(body: &str, after_seq: u64) -> Result<HistoryPage, serde_json::Error> {
        #[derive(Deserialize)]
        struct Raw {
            #[serde(default)]
            messages: Vec<HistoryMessage>,
            next_after_seq: Option<u64>,
        }
        let raw: Raw = serde_json::from_str(body)?;
        let next_after_seq = raw.next_after_seq.unwrap_or_else(|| {
            raw.messages
                .iter()
                .map(|m| m.seq)
                .max()
                .unwrap_or(after_seq)
        });
        Ok(HistoryPage {
            messages: raw.messages,
            next_after_seq,
        })
    }
}

/// `GET /v1/unread`: unread reliable messages per channel and in total.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
pub struct Unread {
    #[serde(default)]
    pub total: u64,
    #[serde(default)]
    pub channels: BTreeMap<String, u64>,
}

#[derive(Deserialize)]
struct SeqBody {
    seq: u64,
}

#[derive(Deserialize)]
struct AckedBody {
    acked: u64,
}

#[derive(Deserialize)]
struct JoinedSeqBody {
    #[serde(default)]
    joined_seq: u64,
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

pub(crate) async fn error_of(resp: reqwest::Response) -> ClientError {
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
        self.post_message(token, channel, json!({ "kind": "danmaku", "text": text }))
            .await
    }

    /// Posts one reliable message (`kind` is `gift` or `chat`) to `channel`.
    /// `200 {"seq":N}` → [`PostOutcome::Persisted`]. On a 503
    /// (`store_unavailable`, `bus_unavailable`: [`PostOutcome::Rejected`]) or a
    /// transport error, retry later with the same `client_msg_id`: ingest then
    /// answers the first `seq` instead of storing a second message.
    pub async fn post_reliable(
        &self,
        token: &str,
        channel: &str,
        kind: &str,
        text: &str,
        client_msg_id: Option<&str>,
    ) -> Result<PostOutcome, ClientError> {
        let mut body = json!({ "kind": kind, "text": text });
        if let Some(id) = client_msg_id {
            body["client_msg_id"] = json!(id);
        }
        self.post_message(token, channel, body).await
    }

    /// Posts a message of `kind` (`danmaku`, `gift`, `chat`) carrying the blob
    /// `blob` (an id from [`IngestClient::upload_blob`]). Refused with
    /// `bad_blob` (not an id) or `unknown_blob` (never uploaded).
    pub async fn post_with_blob(
        &self,
        token: &str,
        channel: &str,
        kind: &str,
        text: &str,
        blob: &str,
        client_msg_id: Option<&str>,
    ) -> Result<PostOutcome, ClientError> {
        let mut body = json!({ "kind": kind, "text": text, "blob": blob });
        if let Some(id) = client_msg_id {
            body["client_msg_id"] = json!(id);
        }
        self.post_message(token, channel, body).await
    }

    /// `POST /v1/channels/{channel}/messages` with `body`, the answer mapped.
    async fn post_message(
        &self,
        token: &str,
        channel: &str,
        body: serde_json::Value,
    ) -> Result<PostOutcome, ClientError> {
        let resp = self
            .http
            .post(format!("{}/v1/channels/{}/messages", self.base, channel))
            .bearer_auth(token)
            .json(&body)
            .send()
            .await?;
        post_outcome(resp).await
    }

    /// `POST /v1/blobs` with an `app` token: stores `body` and answers its id
    /// (the lowercase hex SHA-256 of `body`, so uploading twice is harmless).
    pub async fn upload_blob(
        &self,
        app_token: &str,
        content_type: &str,
        body: Vec<u8>,
    ) -> Result<String, ClientError> {
        let resp = self
            .http
            .post(format!("{}/v1/blobs", self.base))
            .bearer_auth(app_token)
            .header(reqwest::header::CONTENT_TYPE, content_type)
            .body(body)
            .send()
            .await?;
        if !resp.status().is_success() {
            return Err(error_of(resp).await);
        }
        Ok(resp.json::<BlobCreated>().await?.id)
    }

    /// The URL of the blob `id` on this server (any ingest or edge serves it).
    pub fn blob_url(&self, id: &str) -> String {
        format!("{}{}", self.base, blob_path(id))
    }

    /// `GET /v1/blobs/{id}`: fetches a blob an event carries, on demand (no
    /// token needed; blobs are immutable, so a caller may cache by id).
    pub async fn fetch_blob(&self, id: &str) -> Result<FetchedBlob, ClientError> {
        let resp = self.http.get(self.blob_url(id)).send().await?;
        if !resp.status().is_success() {
            return Err(error_of(resp).await);
        }
        let content_type = resp
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("application/octet-stream")
            .to_owned();
        let body = resp.bytes().await?.to_vec();
        Ok(FetchedBlob { content_type, body })
    }

    /// `GET /v1/channels/{channel}/messages?after_seq=…&limit=…`: stored
    /// reliable messages with `seq > after_seq`, oldest first.
    pub async fn history(
        &self,
        token: &str,
        channel: &str,
        after_seq: u64,
        limit: u32,
    ) -> Result<HistoryPage, ClientError> {
        let resp = self
            .http
            .get(format!(
                "{}/v1/channels/{}/messages?after_seq={}&limit={}",
                self.base, channel, after_seq, limit
            ))
            .bearer_auth(token)
            .send()
            .await?;
        if !resp.status().is_success() {
            return Err(error_of(resp).await);
        }
        let body = resp.text().await?;
        HistoryPage::from_json(&body, after_seq)
            .map_err(|e| ClientError::Unexpected(format!("history body of {channel}: {e}")))
    }

    /// `POST /v1/channels/{channel}/ack {"seq":N}`: stores the user's ack
    /// offset; returns the offset now stored (`acked`).
    pub async fn ack(&self, token: &str, channel: &str, seq: u64) -> Result<u64, ClientError> {
        let resp = self
            .http
            .post(format!("{}/v1/channels/{}/ack", self.base, channel))
            .bearer_auth(token)
            .json(&json!({ "seq": seq }))
            .send()
            .await?;
        if !resp.status().is_success() {
            return Err(error_of(resp).await);
        }
        Ok(resp.json::<AckedBody>().await?.acked)
    }

    /// `GET /v1/unread`: the token owner's unread counts.
    pub async fn unread(&self, token: &str) -> Result<Unread, ClientError> {
        let resp = self
            .http
            .get(format!("{}/v1/unread", self.base))
            .bearer_auth(token)
            .send()
            .await?;
        if !resp.status().is_success() {
            return Err(error_of(resp).await);
        }
        Ok(resp.json::<Unread>().await?)
    }

    /// `PUT /v1/groups/{group}/members/{user}` with an app-role token: adds
    /// `user` to `group`; returns `joined_seq` (the member sees messages after it).
    pub async fn join_group(
        &self,
        app_token: &str,
        group: &str,
        user: &str,
    ) -> Result<u64, ClientError> {
        let resp = self
            .http
            .put(format!(
                "{}/v1/groups/{}/members/{}",
                self.base, group, user
            ))
            .bearer_auth(app_token)
            .send()
            .await?;
        if !resp.status().is_success() {
            return Err(error_of(resp).await);
        }
        let body = resp.bytes().await?;
        if body.iter().all(u8::is_ascii_whitespace) {
            return Ok(0);
        }
        serde_json::from_slice::<JoinedSeqBody>(&body)
            .map(|b| b.joined_seq)
            .map_err(|e| ClientError::Unexpected(format!("join_group body: {e}")))
    }

    /// `DELETE /v1/groups/{group}/members/{user}` with an app-role token:
    /// removes `user` from `group`. Returns whether the user was a member
    /// (the `left`/`removed` field of the answer; `true` when absent; `false`
    /// on a 404 carrying an API error code, e.g. not a member).
    pub async fn leave_group(
        &self,
        app_token: &str,
        group: &str,
        user: &str,
    ) -> Result<bool, ClientError> {
        let resp = self
            .http
            .delete(format!(
                "{}/v1/groups/{}/members/{}",
                self.base, group, user
            ))
            .bearer_auth(app_token)
            .send()
            .await?;
        let status = resp.status().as_u16();
        if !resp.status().is_success() {
            return match error_of(resp).await {
                ClientError::HttpStatus { code, .. } if status == 404 && !code.is_empty() => {
                    Ok(false)
                }
                e => Err(e),
            };
        }
        let body: serde_json::Value = resp.json().await.unwrap_or(serde_json::Value::Null);
        Ok(["left", "removed", "was_member"]
            .iter()
            .find_map(|k| body.get(*k).and_then(serde_json::Value::as_bool))
            .unwrap_or(true))
    }
}

/// Account protection (app-role token): revocations and global blocks.
impl IngestClient {
    /// `POST /v1/admin/revocations {"jti","expire_at"}`: refuses the token
    /// with this `jti` until `expire_at` (unix seconds; its `exp`).
    pub async fn revoke_token(
        &self,
        app_token: &str,
        jti: &str,
        expire_at: u64,
    ) -> Result<(), ClientError> {
        self.account_call(
            self.http
                .post(format!("{}/v1/admin/revocations", self.base)),
            app_token,
            Some(json!({ "jti": jti, "expire_at": expire_at })),
        )
        .await
    }

    /// `POST /v1/admin/revocations {"user","issued_before"}`: refuses every
    /// token of `user` issued before `issued_before` (unix seconds).
    pub async fn revoke_user(
        &self,
        app_token: &str,
        user: &str,
        issued_before: u64,
    ) -> Result<(), ClientError> {
        self.account_call(
            self.http
                .post(format!("{}/v1/admin/revocations", self.base)),
            app_token,
            Some(json!({ "user": user, "issued_before": issued_before })),
        )
        .await
    }

    /// `PUT /v1/users/{user}/block`: blocks `user` everywhere for `seconds`
    /// (`None`: until unblocked).
    pub async fn block_user(
        &self,
        app_token: &str,
        user: &str,
        seconds: Option<u64>,
    ) -> Result<(), ClientError> {
        let body = match seconds {
            Some(s) => json!({ "seconds": s }),
            None => json!({}),
        };
        self.account_call(
            self.http
                .put(format!("{}/v1/users/{}/block", self.base, user)),
            app_token,
            Some(body),
        )
        .await
    }

    /// `DELETE /v1/users/{user}/block`: lifts the block.
    pub async fn unblock_user(&self, app_token: &str, user: &str) -> Result<(), ClientError> {
        self.account_call(
            self.http
                .delete(format!("{}/v1/users/{}/block", self.base, user)),
            app_token,
            None,
        )
        .await
    }

    async fn account_call(
        &self,
        request: reqwest::RequestBuilder,
        app_token: &str,
        body: Option<serde_json::Value>,
    ) -> Result<(), ClientError> {
        let request = request.bearer_auth(app_token);
        let request = match body {
            Some(b) => request.json(&b),
            None => request,
        };
        let resp = request.send().await?;
        if !resp.status().is_success() {
            return Err(error_of(resp).await);
        }
        Ok(())
    }
}

/// The path of the blob `id` on any ingest or edge: `/v1/blobs/{id}`.
pub fn blob_path(id: &str) -> String {
    format!("/v1/blobs/{id}")
}

/// A `202`'s body: `{"accepted":true,"id":"…"}`.
#[derive(Deserialize)]
struct AcceptedBody {
    #[serde(default)]
    id: String,
}

#[derive(Deserialize)]
struct BlobCreated {
    id: String,
}

/// Maps a post answer: 2xx `{"seq":N}` → `Persisted`, other 2xx → `Accepted`,
/// 429 → `RateLimited`, anything else → `Rejected` with the API error code.
async fn post_outcome(resp: reqwest::Response) -> Result<PostOutcome, ClientError> {
    let status = resp.status();
    if status.is_success() {
        let body = resp.bytes().await?;
        return Ok(match serde_json::from_slice::<SeqBody>(&body) {
            Ok(SeqBody { seq }) => PostOutcome::Persisted { seq },
            Err(_) => PostOutcome::Accepted {
                id: serde_json::from_slice::<AcceptedBody>(&body)
                    .map(|b| b.id)
                    .unwrap_or_default(),
            },
        });
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

    #[test]
    fn history_page_parses() {
        let body = r#"{"messages":[
            {"seq":3,"kind":"gift","sender":"bob","text":"rocket","ts_ms":1732350000000,"payload":{"id":"rocket","n":2}},
            {"seq":4,"kind":"chat","sender":"amy","text":"hi","ts_ms":1732350000001}
        ],"next_after_seq":4}"#;
        let page = HistoryPage::from_json(body, 2).unwrap();
        assert_eq!(page.next_after_seq, 4);
        assert_eq!(page.messages.len(), 2);
        assert_eq!(
            page.messages[0],
            HistoryMessage {
                seq: 3,
                kind: "gift".into(),
                sender: "bob".into(),
                text: "rocket".into(),
                ts_ms: 1_732_350_000_000,
                payload: Some(serde_json::json!({"id":"rocket","n":2})),
                blob: None,
            }
        );
        assert_eq!(page.messages[1].payload, None);
        assert_eq!(page.messages[1].kind, "chat");
    }

    #[test]
    fn history_page_without_next() {
        let page = HistoryPage::from_json(r#"{"messages":[]}"#, 7).unwrap();
        assert_eq!((page.messages.len(), page.next_after_seq), (0, 7));
        let page = HistoryPage::from_json(r#"{"messages":[{"seq":9},{"seq":10}]}"#, 7).unwrap();
        assert_eq!(page.next_after_seq, 10);
        assert!(HistoryPage::from_json("{nope", 0).is_err());
        assert!(HistoryPage::from_json(r#"{"messages":[{"kind":"chat"}]}"#, 0).is_err());
    }

    #[test]
    fn unread_parses() {
        let u: Unread =
            serde_json::from_str(r#"{"total":5,"channels":{"group:7":3,"group:8":2}}"#).unwrap();
        assert_eq!(u.total, 5);
        assert_eq!(u.channels.get("group:7"), Some(&3));
        assert_eq!(u.channels.len(), 2);
    }
}
