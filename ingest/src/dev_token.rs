//! `POST /v1/dev/token`: mints a token for any user who asks. Only served when
//! `IngestConfig::dev_tokens` is on (standalone without `--auth-secret`), so a
//! demo works out of the box; otherwise the route answers the JSON 404. It
//! mints role `user` only, unless `IngestConfig::dev_app_tokens` is on
//! (`--dev-app-tokens`): an `app` token manages group membership, which must
//! not be handed to whoever reaches the port.

use std::sync::Arc;

use axum::Json;
use axum::body::Body;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use danmaku_proto::id::is_valid_id;
use danmaku_proto::token::now_secs;
use serde::Deserialize;

use crate::body;
use crate::error::ApiError;
use crate::node::Ingest;

#[derive(Debug, Deserialize)]
struct DevTokenRequest {
    user: String,
    #[serde(default)]
    role: Option<String>,
}

pub async fn mint(State(ingest): State<Arc<Ingest>>, headers: HeaderMap, body: Body) -> Response {
    match ingest.mint_dev_token(&headers, body).await {
        Ok(response) => response,
        Err(error) => {
            ingest.metrics.reject(&error);
            error.into_response()
        }
    }
}

impl Ingest {
    async fn mint_dev_token(&self, headers: &HeaderMap, body: Body) -> Result<Response, ApiError> {
        if !self.config.dev_tokens {
            return Err(ApiError::NotFound);
        }
        let bytes = body::read_bounded(headers, body, self.config.max_body_bytes).await?;
        let request: DevTokenRequest = body::parse_json(&bytes)?;
        if !is_valid_id(&request.user) {
            return Err(ApiError::BadUser);
        }
        let role = request.role.unwrap_or_else(|| "user".into());
        if role != "user" && role != "app" {
            return Err(ApiError::BadRole);
        }
        if role == "app" && !self.config.dev_app_tokens {
            return Err(ApiError::RoleNotAllowed);
        }
        let now = now_secs();
        let ttl = self.config.dev_token_ttl_secs;
        let token = self.tokens.mint(&request.user, &role, now, ttl);
        tracing::info!(user = %request.user, %role, "minted a dev token");
        Ok(Json(serde_json::json!({
            "token": token,
            "user": request.user,
            "role": role,
            "exp": now.saturating_add(ttl),
        }))
        .into_response())
    }
}
