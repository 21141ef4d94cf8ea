//! Reading request bodies: bounded by `max_body_bytes` while streaming (so a
//! huge body is refused without being buffered) and decoded into typed JSON
//! with our error codes instead of axum's plain-text rejections.

use axum::body::Body;
use axum::http::{HeaderMap, header};
use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use serde::de::DeserializeOwned;

use crate::error::ApiError;

/// Reads the whole body, refusing with `body_too_large` as soon as it is known
/// to exceed `limit` bytes (from `Content-Length` or while streaming).
pub async fn read_bounded(
    headers: &HeaderMap,
    body: Body,
    limit: usize,
) -> Result<Bytes, ApiError> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(ApiError::BodyTooLarge { limit });
    }
    let mut stream = body.into_data_stream();
    let mut buf = BytesMut::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| ApiError::BadJson(format!("could not read body: {e}")))?;
        if buf.len() + chunk.len() > limit {
            return Err(ApiError::BodyTooLarge { limit });
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(buf.freeze())
}

/// Decodes a JSON body: `bad_utf8` if it is not UTF-8, `bad_json` if it is not
/// the expected shape.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let text = std::str::from_utf8(bytes).map_err(|_| ApiError::BadUtf8)?;
    serde_json::from_str(text).map_err(|e| ApiError::BadJson(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[derive(serde::Deserialize, Debug)]
    struct T {
        #[allow(dead_code)]
        a: u32,
    }

    #[tokio::test]
    async fn limit_applies_with_and_without_content_length() {
        let ok = read_bounded(&HeaderMap::new(), Body::from("12345"), 5).await;
        assert_eq!(ok.unwrap(), Bytes::from_static(b"12345"));
        let err = read_bounded(&HeaderMap::new(), Body::from("123456"), 5).await;
        assert_eq!(err.unwrap_err().code(), "body_too_large");
        let mut h = HeaderMap::new();
        h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("100"));
        let err = read_bounded(&h, Body::from("1"), 5).await;
        assert_eq!(err.unwrap_err().code(), "body_too_large");
    }

    #[test]
    fn utf8_then_shape() {
        assert_eq!(
            parse_json::<T>(b"{\"a\":\xff}").unwrap_err().code(),
            "bad_utf8"
        );
        assert_eq!(
            parse_json::<T>(b"{\"a\":\"x\"}").unwrap_err().code(),
            "bad_json"
        );
        assert_eq!(parse_json::<T>(b"{").unwrap_err().code(), "bad_json");
        assert!(parse_json::<T>(b"{\"a\":1}").is_ok());
    }
}
