//! Errors: [`ApiError`] is every way a request can fail, mapped in one place to
//! the status code and `{"error":{"code","message"}}` body docs/PROTOCOL.md promises;
//! [`IngestError`] is what can go wrong building the service.

use std::time::Duration;

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use danmaku_proto::account::Refusal;
use danmaku_proto::token::TokenError;
use danmaku_store::StoreError;

/// Why the service could not be built.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error("invalid ingest config: {0}")]
    Config(String),
    #[error("registering ingest metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    #[error("subscribing to the bus for announcements: {0}")]
    Bus(#[from] danmaku_bus::BusError),
    /// The moderation policy could not be loaded or kept fresh.
    #[error("moderation: {0}")]
    Moderation(String),
}

/// Which limiter refused a request; the `scope` label of `rate_limited_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RateScope {
    User,
    Channel,
}

impl RateScope {
    pub fn as_str(self) -> &'static str {
        match self {
            RateScope::User => "user",
            RateScope::Channel => "channel",
        }
    }
}

/// A request the API refuses. Each variant has a stable snake_case code.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadChannel(String),
    #[error("malformed request body: {0}")]
    BadJson(String),
    #[error("unknown kind {0:?}: expected danmaku, gift or chat")]
    BadKind(String),
    #[error("request body is not valid UTF-8")]
    BadUtf8,
    #[error("text is empty")]
    EmptyText,
    #[error("text is {chars} characters, limit is {limit}")]
    TextTooLong { chars: usize, limit: usize },
    #[error("{0}")]
    BadPayload(String),
    #[error("client_msg_id must be 1 to {limit} characters")]
    BadClientMsgId { limit: usize },
    #[error("user must be 1 to 64 characters of [A-Za-z0-9_-]")]
    BadUser,
    #[error("role must be \"user\" or \"app\"")]
    BadRole,
    /// A user id in an account change: any token `sub` (1 to 128 bytes).
    #[error("user must be 1 to 128 bytes (a token's sub)")]
    BadSubject,
    /// A time in an account change that is past, too far ahead or absurd.
    #[error("{0}")]
    BadTime(String),
    #[error("missing bearer token: send Authorization: Bearer <token>")]
    MissingToken,
    #[error("token is invalid")]
    BadToken,
    #[error("token expired")]
    TokenExpired,
    /// The token was revoked (by id, or with all of its user's older tokens).
    #[error("this token was revoked; sign in again for a new one")]
    TokenRevoked,
    /// The user is blocked (`until`: unix seconds; `None`: permanently).
    #[error("{}", match until { Some(t) => format!("this account is blocked until {t} (unix seconds)"), None => "this account is blocked".to_owned() })]
    UserBlocked { until: Option<u64> },
    #[error("not found")]
    NotFound,
    /// An ack for a room that has no reliable message: nothing to acknowledge.
    #[error("{0} has no reliable messages to acknowledge")]
    UnknownChannel(String),
    #[error("method not allowed")]
    MethodNotAllowed,
    #[error("request body exceeds {limit} bytes")]
    BodyTooLarge { limit: usize },
    #[error("{} rate limit reached, retry in {retry_after_secs} s", scope.as_str())]
    RateLimited {
        scope: RateScope,
        retry_after_secs: u64,
    },
    #[error("chat messages are only accepted in group: channels")]
    ChatNeedsGroup,
    #[error("{user:?} is not a member of {group:?}")]
    NotMember { group: String, user: String },
    #[error("only tokens with role \"app\" may manage group membership")]
    Forbidden,
    #[error(
        "dev tokens are role \"user\" only; start the server with --dev-app-tokens \
         to mint \"app\" tokens"
    )]
    RoleNotAllowed,
    #[error("bad query string: {0}")]
    BadQuery(String),
    #[error("bus unavailable: {0}")]
    BusUnavailable(String),
    /// The reliable message is durable but could not be published; the edges
    /// will still find it in the store on resume.
    #[error(
        "message persisted as seq {seq} but not published (bus unavailable: {reason}); \
         retry with the same client_msg_id to get the same seq"
    )]
    PersistedNotPublished { seq: u64, reason: String },
    /// The sender already stored a different message under this `client_msg_id`
    /// (as `seq`); nothing was stored. Carries the store's description.
    #[error("{message}")]
    IdempotencyConflict { seq: u64, message: String },
    /// Carries the store's own description ("store unavailable: …").
    #[error("{0}")]
    StoreUnavailable(String),
    /// The text contains a word of a block list.
    #[error("the message contains blocked content")]
    BlockedContent,
    #[error(
        "you are muted in {channel} until {} ({} s from now)",
        rfc3339(*until_ms),
        (until_ms - now_ms + 999) / 1000
    )]
    Muted {
        channel: String,
        until_ms: i64,
        now_ms: i64,
    },
    #[error("{0} is muted: only its moderators may post")]
    RoomMuted(String),
    /// A moderator banned the user from the channel (`until_ms` `None`: for good).
    #[error("you are banned from {channel} {}", match until_ms {
        Some(u) => format!("until {} ({} s from now)", rfc3339(*u), (u - now_ms + 999) / 1000),
        None => "permanently".to_owned(),
    })]
    Banned {
        channel: String,
        until_ms: Option<i64>,
        now_ms: i64,
    },
    /// A message id that is neither a danmaku id nor a seq.
    #[error("{0}")]
    BadMessageId(String),
    /// A well-formed id naming no message of the channel (or a danmaku too
    /// old to take back).
    #[error("{0}")]
    UnknownMessage(String),
    #[error(
        "{channel} is in slow mode: one message per {window_secs} s, retry in {retry_after_secs} s"
    )]
    SlowMode {
        channel: String,
        window_secs: u64,
        retry_after_secs: u64,
    },
    #[error("{0}")]
    BadWordList(String),
    #[error("{0}")]
    BadSeconds(String),
    #[error("{0}")]
    BadSettings(String),
    /// A moderation call by someone who may not make it.
    #[error("{0}")]
    NotAllowed(String),
    /// A blob upload or a blob id the edge cannot take (`blobs.rs`).
    #[error("{0}")]
    BadBlob(String),
    /// A message names a well-formed blob id that was never uploaded.
    #[error("no blob {0} is stored: upload it with POST /v1/blobs first")]
    UnknownBlob(String),
    /// A bug or corrupt stored data; logged.
    #[error("internal error: {0}")]
    Internal(String),
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        use ApiError::*;
        match self {
            BadChannel(_)
            | BadJson(_)
            | BadKind(_)
            | BadUtf8
            | EmptyText
            | TextTooLong { .. }
            | BadPayload(_)
            | BadClientMsgId { .. }
            | BadUser
            | BadRole
            | BadSubject
            | BadTime(_)
            | ChatNeedsGroup
            | BadQuery(_)
            | BlockedContent
            | BadWordList(_)
            | BadSeconds(_)
            | BadMessageId(_)
            | BadSettings(_)
            | BadBlob(_)
            | UnknownBlob(_) => StatusCode::BAD_REQUEST,
            MissingToken | BadToken | TokenExpired | TokenRevoked => StatusCode::UNAUTHORIZED,
            NotMember { .. }
            | Forbidden
            | RoleNotAllowed
            | UserBlocked { .. }
            | NotAllowed(_)
            | Muted { .. }
            | Banned { .. }
            | RoomMuted(_) => StatusCode::FORBIDDEN,
            IdempotencyConflict { .. } => StatusCode::CONFLICT,
            NotFound | UnknownChannel(_) | UnknownMessage(_) => StatusCode::NOT_FOUND,
            MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            RateLimited { .. } | SlowMode { .. } => StatusCode::TOO_MANY_REQUESTS,
            Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            BusUnavailable(_) | PersistedNotPublished { .. } | StoreUnavailable(_) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
        }
    }

    /// Stable code for the JSON body and the `rejected_total{code}` label.
    pub fn code(&self) -> &'static str {
        use ApiError::*;
        match self {
            BadChannel(_) => "bad_channel",
            BadJson(_) => "bad_json",
            BadKind(_) => "bad_kind",
            BadUtf8 => "bad_utf8",
            EmptyText => "empty_text",
            TextTooLong { .. } => "text_too_long",
            BadPayload(_) => "bad_payload",
            BadClientMsgId { .. } => "bad_client_msg_id",
            BadUser => "bad_user",
            BadRole => "bad_role",
            BadSubject => "bad_user",
            BadTime(_) => "bad_time",
            TokenRevoked => "token_revoked",
            UserBlocked { .. } => "user_blocked",
            MissingToken => "missing_token",
            BadToken => "bad_token",
            TokenExpired => "token_expired",
            NotFound => "not_found",
            UnknownChannel(_) => "unknown_channel",
            MethodNotAllowed => "method_not_allowed",
            BodyTooLarge { .. } => "body_too_large",
            RateLimited { .. } => "rate_limited",
            ChatNeedsGroup => "chat_needs_group",
            NotMember { .. } => "not_member",
            Forbidden => "forbidden",
            RoleNotAllowed => "role_not_allowed",
            BadQuery(_) => "bad_query",
            BusUnavailable(_) | PersistedNotPublished { .. } => "bus_unavailable",
            StoreUnavailable(_) => "store_unavailable",
            IdempotencyConflict { .. } => "idempotency_conflict",
            BlockedContent => "blocked_content",
            Muted { .. } => "muted",
            RoomMuted(_) => "room_muted",
            Banned { .. } => "banned",
            BadMessageId(_) => "bad_message_id",
            UnknownMessage(_) => "unknown_message",
            SlowMode { .. } => "slow_mode",
            BadWordList(_) => "bad_wordlist",
            BadSeconds(_) => "bad_seconds",
            BadSettings(_) => "bad_settings",
            NotAllowed(_) => "forbidden",
            BadBlob(_) => "bad_blob",
            UnknownBlob(_) => "unknown_blob",
            Internal(_) => "internal",
        }
    }

    /// A rate-limit refusal whose `Retry-After` is `wait` rounded up to whole
    /// seconds, at least 1 (0 would invite an immediate retry storm).
    pub fn rate_limited(scope: RateScope, wait: Duration) -> Self {
        let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
        ApiError::RateLimited {
            scope,
            retry_after_secs: secs.max(1),
        }
    }
}

impl From<TokenError> for ApiError {
    fn from(e: TokenError) -> Self {
        match e {
            TokenError::Missing => ApiError::MissingToken,
            TokenError::Malformed | TokenError::BadSignature => ApiError::BadToken,
            TokenError::Expired => ApiError::TokenExpired,
        }
    }
}

impl From<Refusal> for ApiError {
    fn from(r: Refusal) -> Self {
        match r {
            Refusal::TokenRevoked => ApiError::TokenRevoked,
            Refusal::UserBlocked { until } => ApiError::UserBlocked { until },
        }
    }
}

/// `NotMember` (403) and `IdempotencyConflict` (409) are the caller's fault;
/// every other store failure means nothing is known to be done: 503, retry later.
impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotMember { group, user } => ApiError::NotMember { group, user },
            StoreError::IdempotencyConflict { seq, .. } => ApiError::IdempotencyConflict {
                seq,
                message: e.to_string(),
            },
            other => ApiError::StoreUnavailable(other.to_string()),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({
            "error": { "code": self.code(), "message": self.to_string() }
        });
        let mut response = (self.status(), Json(body)).into_response();
        if let ApiError::RateLimited {
            retry_after_secs, ..
        }
        | ApiError::SlowMode {
            retry_after_secs, ..
        } = self
        {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(retry_after_secs));
        }
        response
    }
}

/// Formats `ms` since the Unix epoch as RFC 3339 UTC (`2026-12-07T13:40:00Z`)
/// for messages people read.
fn rfc3339(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_formats_utc() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400_000), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_796_650_800_999), "2026-12-07T13:40:00Z");
    }

    #[test]
    fn retry_after_rounds_up_to_whole_seconds() {
        let secs = |d| match ApiError::rate_limited(RateScope::User, d) {
            ApiError::RateLimited {
                retry_after_secs, ..
            } => retry_after_secs,
            other => panic!("{other:?}"),
        };
        assert_eq!(secs(Duration::ZERO), 1);
        assert_eq!(secs(Duration::from_millis(200)), 1);
        assert_eq!(secs(Duration::from_secs(2)), 2);
        assert_eq!(secs(Duration::from_millis(2001)), 3);
    }

    #[test]
    fn rate_limited_response_has_retry_after_and_json_code() {
        let r =
            ApiError::rate_limited(RateScope::Channel, Duration::from_millis(1500)).into_response();
        assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(r.headers()[header::RETRY_AFTER], "2");
        assert_eq!(r.headers()[header::CONTENT_TYPE], "application/json");
    }

    #[test]
    fn token_errors_map_to_401_codes() {
        assert_eq!(ApiError::from(TokenError::Expired).code(), "token_expired");
        assert_eq!(ApiError::from(TokenError::BadSignature).code(), "bad_token");
        assert_eq!(ApiError::from(TokenError::Missing).code(), "missing_token");
        assert_eq!(
            ApiError::from(TokenError::Malformed).status(),
            StatusCode::UNAUTHORIZED
        );
    }
}
