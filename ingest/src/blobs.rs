//! Blobs for notify-pull: `POST /v1/blobs` (role `app`) stores a body of up to
//! `IngestConfig::max_blob_bytes` (1 MiB by default) under its SHA-256 and
//! answers `201 {"id","url"}`; `GET /v1/blobs/{id}` serves it to anyone with
//! its content type, `ETag` and an immutable cache header (`304` on a matching
//! `If-None-Match`). A message then carries the id, not the bytes, so a big
//! payload never rides the push path. The store keeps them
//! (`store/migrations/*/0006_blobs.sql`), so every ingest serves every blob.

use std::sync::Arc;

use crate::reliable::APP_ROLE;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use sha2::Digest;

use crate::body;
use crate::error::ApiError;
use crate::node::Ingest;

/// How long clients and caches may keep a blob: it can never change.
pub const CACHE_CONTROL: &str = "public, max-age=31536000, immutable";

/// `POST /v1/blobs`.
pub async fn post(State(ingest): State<Arc<Ingest>>, headers: HeaderMap, body: Body) -> Response {
    let result = ingest.put_blob(&headers, body).await;
    ingest.answer(result)
}

/// `GET /v1/blobs/{id}`.
pub async fn get(
    State(ingest): State<Arc<Ingest>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    let result = serve(&ingest, &id, &headers).await;
    ingest.answer(result)
}

impl Ingest {
    async fn put_blob(&self, headers: &HeaderMap, body: Body) -> Result<Response, ApiError> {
        let claims = self.authenticate(headers)?;
        if claims.role != APP_ROLE {
            return Err(ApiError::NotAllowed(
                "only tokens with role \"app\" may upload blobs".into(),
            ));
        }
        let content_type = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("application/octet-stream");
        if content_type.is_empty() || content_type.len() > danmaku_store::blob::MAX_CONTENT_TYPE {
            return Err(ApiError::BadBlob(format!(
                "Content-Type must be 1 to {} bytes",
                danmaku_store::blob::MAX_CONTENT_TYPE
            )));
        }
        let bytes = body::read_bounded(headers, body, self.config().max_blob_bytes).await?;
        if bytes.is_empty() {
            return Err(ApiError::BadBlob("the blob is empty".into()));
        }
        let id = hex::encode(sha2::Sha256::digest(&bytes));
        self.store_call("put_blob", self.store().put_blob(&id, content_type, &bytes))
            .await?;
        let url = format!("/v1/blobs/{id}");
        let mut resp = (
            StatusCode::CREATED,
            axum::Json(serde_json::json!({ "id": id, "url": url })),
        )
            .into_response();
        if let Ok(v) = HeaderValue::from_str(&url) {
            resp.headers_mut().insert(header::LOCATION, v);
        }
        Ok(resp)
    }
}

/// The answer to `GET /v1/blobs/{id}` (the edge serves the same, `edge/src/blobs.rs`).
async fn serve(ingest: &Ingest, id: &str, headers: &HeaderMap) -> Result<Response, ApiError> {
    if !danmaku_store::blob::is_blob_id(id) {
        return Err(ApiError::BadBlob(format!(
            "blob id {id:?} is not 64 lowercase hex digits"
        )));
    }
    let etag = format!("\"{id}\"");
    let cached = headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim() == etag || t.trim() == "*");
    let blob = if cached {
        // Content-addressed: a client that has the tag has the bytes, if they exist.
        if !ingest
            .store_call("has_blob", ingest.store().has_blob(id))
            .await?
        {
            return Err(ApiError::NotFound);
        }
        None
    } else {
        match ingest
            .store_call("get_blob", ingest.store().get_blob(id))
            .await?
        {
            Some(b) => Some(b),
            None => return Err(ApiError::NotFound),
        }
    };
    let mut resp = match blob {
        None => StatusCode::NOT_MODIFIED.into_response(),
        Some(b) => {
            let mut r = Response::new(Body::from(b.body));
            if let Ok(v) = HeaderValue::from_str(&b.content_type) {
                r.headers_mut().insert(header::CONTENT_TYPE, v);
            }
            r
        }
    };
    let h = resp.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&etag) {
        h.insert(header::ETAG, v);
    }
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static(CACHE_CONTROL),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    Ok(resp)
}
