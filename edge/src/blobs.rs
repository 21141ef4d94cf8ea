//! `GET /v1/blobs/{id}` on a distributed edge: the notify-pull body a message
//! names, read from the store every edge shares, with the same answer ingest
//! gives (`ingest/src/blobs.rs`): the content type, `ETag` = the quoted id, an
//! immutable cache header, `304` on a matching `If-None-Match`, typed 400/404.
//! A standalone server mounts ingest's route instead (one process, one route).

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::error::ApiError;
use crate::node::Edge;

const CACHE_CONTROL: &str = "public, max-age=31536000, immutable";

pub(crate) async fn get(
    State(edge): State<Arc<Edge>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    match serve(&edge, &id, &headers).await {
        Ok(r) => r,
        Err(e) => {
            edge.metrics.error(e.code);
            e.into_response()
        }
    }
}

async fn serve(edge: &Edge, id: &str, headers: &HeaderMap) -> Result<Response, ApiError> {
    if !danmaku_store::blob::is_blob_id(id) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_blob",
            format!("blob id {id:?} is not 64 lowercase hex digits"),
        ));
    }
    let unavailable = |e: danmaku_store::StoreError| {
        edge.metrics.store_error("blob");
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "store_unavailable",
            e.to_string(),
        )
    };
    let not_found = || ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such blob");
    let etag = format!("\"{id}\"");
    let cached = headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim() == etag || t.trim() == "*");
    let mut resp = if cached {
        if !edge.store.has_blob(id).await.map_err(unavailable)? {
            return Err(not_found());
        }
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        let blob = edge
            .store
            .get_blob(id)
            .await
            .map_err(unavailable)?
            .ok_or_else(not_found)?;
        let mut r = Response::new(Body::from(blob.body));
        if let Ok(v) = HeaderValue::from_str(&blob.content_type) {
            r.headers_mut().insert(header::CONTENT_TYPE, v);
        }
        r
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
