//! Settings of an ingest node. Every field has a default suited to a single
//! standalone process; `src/main.rs` maps command-line flags onto them.

use crate::error::IngestError;

/// Settings of an ingest node.
#[derive(Debug, Clone, PartialEq)]
pub struct IngestConfig {
    /// Id of this node, written into `BusEvent.origin` so consumers can tell
    /// ingest nodes apart. Default `"ingest-1"`.
    pub node_id: String,
    /// Longest accepted `text`, in characters (Unicode scalar values, not bytes).
    /// Default 200.
    pub max_text_chars: usize,
    /// Largest accepted request body, in bytes; larger bodies get `413`.
    /// Default 8192.
    pub max_body_bytes: usize,
    /// Sustained danmaku per second allowed per user (token bucket refill rate).
    /// Default 5.0.
    pub user_rate_per_sec: f64,
    /// Messages a user may send at once before the refill rate applies.
    /// Default 10.
    pub user_burst: u32,
    /// Sustained messages per second accepted into one channel, protecting a hot
    /// room from the sum of its senders; the burst is one second's worth.
    /// Default 2000.0.
    pub channel_rate_per_sec: f64,
    /// Serve `POST /v1/dev/token`, which mints a token for anyone who asks.
    /// Only for standalone runs without `--auth-secret`. Default `false`.
    pub dev_tokens: bool,
    /// Let `POST /v1/dev/token` also mint `app` tokens (group management). Off,
    /// the endpoint mints only `user` tokens and refuses `"role":"app"` with
    /// `403 role_not_allowed`: anyone who can reach a dev endpoint must not be
    /// able to manage groups. Default `false`.
    pub dev_app_tokens: bool,
    /// Lifetime of a dev token, in seconds. Default 86400 (one day).
    pub dev_token_ttl_secs: u64,
    /// The longest lifetime the app backend gives its tokens, in seconds: a
    /// revocation of a user's tokens issued before `T` is kept until
    /// `T + max_token_ttl_secs`, when the last of them has expired (unless the
    /// request names its own `expire_at`). Default 2,592,000 (30 days).
    pub max_token_ttl_secs: u64,
    /// Largest blob `POST /v1/blobs` accepts, in bytes; larger ones get `413`.
    /// Default 1 MiB.
    pub max_blob_bytes: usize,
}

impl Default for IngestConfig {
    fn default() -> Self {
        IngestConfig {
            node_id: "ingest-1".into(),
            max_text_chars: 200,
            max_body_bytes: 8192,
            user_rate_per_sec: 5.0,
            user_burst: 10,
            channel_rate_per_sec: 2000.0,
            dev_tokens: false,
            dev_app_tokens: false,
            dev_token_ttl_secs: 86_400,
            max_token_ttl_secs: 30 * 86_400,
            max_blob_bytes: 1 << 20,
        }
    }
}

impl IngestConfig {
    /// Refuses settings that would make the service reject everything or panic.
    pub(crate) fn validate(&self) -> Result<(), IngestError> {
        let bad = |reason: &str| Err(IngestError::Config(reason.to_owned()));
        if self.node_id.is_empty() {
            return bad("node_id must not be empty");
        }
        if self.max_text_chars == 0 {
            return bad("max_text_chars must be at least 1");
        }
        if self.max_body_bytes == 0 {
            return bad("max_body_bytes must be at least 1");
        }
        if !(self.user_rate_per_sec.is_finite() && self.user_rate_per_sec > 0.0) {
            return bad("user_rate_per_sec must be a positive number");
        }
        if self.user_burst == 0 {
            return bad("user_burst must be at least 1");
        }
        if !(self.channel_rate_per_sec.is_finite() && self.channel_rate_per_sec > 0.0) {
            return bad("channel_rate_per_sec must be a positive number");
        }
        if self.dev_token_ttl_secs == 0 {
            return bad("dev_token_ttl_secs must be at least 1");
        }
        if self.max_token_ttl_secs == 0 {
            return bad("max_token_ttl_secs must be at least 1");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_is_valid_and_bad_values_are_refused() {
        assert!(IngestConfig::default().validate().is_ok());
        for broken in [
            IngestConfig {
                user_rate_per_sec: 0.0,
                ..IngestConfig::default()
            },
            IngestConfig {
                channel_rate_per_sec: f64::NAN,
                ..IngestConfig::default()
            },
            IngestConfig {
                user_burst: 0,
                ..IngestConfig::default()
            },
            IngestConfig {
                max_text_chars: 0,
                ..IngestConfig::default()
            },
        ] {
            assert!(broken.validate().is_err(), "{broken:?}");
        }
    }
}
