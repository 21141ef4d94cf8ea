//! `GET /v1/channels/{channel}/online`: how many members a channel has across
//! the cluster, summed from the latest heartbeat of every registered edge.
//! 0 when no edge reports the channel (edges report their biggest channels
//! only, so a tiny room may read 0 until it grows).

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use danmaku_proto::ChannelName;
use serde::{Deserialize, Serialize};

use crate::error::ApiError;
use crate::state::Scheduler;

#[derive(Debug, Serialize, Deserialize)]
pub struct OnlineResponse {
    pub channel: String,
    pub online: u64,
}

pub async fn get_online(
    State(scheduler): State<Arc<Scheduler>>,
    Path(channel): Path<String>,
) -> Result<Json<OnlineResponse>, ApiError> {
    let name = ChannelName::parse(&channel).map_err(|e| ApiError::BadChannel(e.to_string()))?;
    Ok(Json(OnlineResponse {
        online: scheduler.online(name.as_str()),
        channel: name.as_str().to_owned(),
    }))
}
