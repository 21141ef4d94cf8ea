//! Online counts: how many viewers a channel has, cluster-wide when a
//! scheduler reports it (from the heartbeat answers of
//! [`super::registration`]), else this edge's own members. Every few seconds
//! a big channel's count rides its next tick (`Batch.online`: no frame of its
//! own to each of 100,000 viewers); a quiet room whose last count no tick took
//! gets an `online` frame instead. A standalone server answers
//! `GET /v1/channels/{channel}/online` from here.

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use danmaku_proto::json::JsonServerFrame;
use danmaku_proto::pb::server_frame::Body;
use danmaku_proto::wsframe::{OpCode, Prepared};
use danmaku_proto::{ChannelName, frame, pb};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::channels::BatchFrames;
use crate::error::ApiError;
use crate::node::Edge;

/// `GET /v1/channels/{channel}/online` from this edge's own members.
pub(crate) fn router(edge: Arc<Edge>) -> Router {
    Router::new()
        .route("/v1/channels/{channel}/online", get(local_online_handler))
        .with_state(edge)
}

async fn local_online_handler(
    State(edge): State<Arc<Edge>>,
    Path(channel): Path<String>,
) -> Response {
    match ChannelName::parse(&channel) {
        Ok(name) => Json(serde_json::json!({
            "channel": name.as_str(),
            "online": edge.online_count(name.as_str()),
        }))
        .into_response(),
        Err(e) => {
            ApiError::new(StatusCode::BAD_REQUEST, "bad_channel", e.to_string()).into_response()
        }
    }
}

/// The `online` frame of `channel`, built once for every member.
fn online_frames(channel: &str, online: u64, json: bool) -> BatchFrames {
    let pb = Prepared::encode(
        OpCode::Binary,
        &frame::server(Body::Online(pb::Online {
            channel: channel.to_owned(),
            online,
        })),
    );
    let json = json.then(|| {
        let text = JsonServerFrame::Online {
            channel: channel.to_owned(),
            online,
        }
        .to_text();
        Prepared::new(OpCode::Text, text.as_bytes())
    });
    BatchFrames::plain(pb, json)
}

/// Every [`crate::config::ControlConfig::online_push_interval`], one `online` frame to
/// each member of every channel with enough local members.
pub(super) async fn online_loop(edge: Arc<Edge>, shutdown: CancellationToken) {
    let every = edge
        .config
        .control
        .online_push_interval
        .max(Duration::from_millis(100));
    let min = edge.config.control.online_push_min.max(1);
    let mut tick = tokio::time::interval_at(Instant::now() + every, every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        for channel in edge.channels.snapshot() {
            if channel.len() < min {
                continue;
            }
            let online = edge.online_count(channel.name().as_str());
            // The count rides the room's next tick: no frame of its own.
            if !channel.offer_online(online) {
                edge.control.metrics.online_in_ticks.inc();
                continue;
            }
            // No tick took the last count in a whole interval: a quiet room.
            let frames = online_frames(channel.name().as_str(), online, channel.json_members() > 0);
            let out = channel.push(&frames, None);
            edge.control
                .metrics
                .online_frames
                .inc_by(out.total_pushed());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn online_frame_is_built_in_both_forms() {
        let f = online_frames("room:1", 900, true);
        let text = f.json.expect("json built");
        assert_eq!(
            &text.payload()[..],
            br#"{"type":"online","channel":"room:1","online":900}"#
        );
        let decoded = danmaku_proto::frame::decode_server(
            &f.pb[0].as_ref().unwrap().payload(),
            &danmaku_proto::Limits::default(),
        )
        .unwrap();
        assert_eq!(
            decoded.body,
            Some(Body::Online(pb::Online {
                channel: "room:1".into(),
                online: 900
            }))
        );
        assert!(online_frames("room:1", 1, false).json.is_none());
    }
}
