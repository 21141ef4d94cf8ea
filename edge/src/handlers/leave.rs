//! `Leave{channel}`: stop receiving a channel. Idempotent: leaving a channel
//! not joined still answers `Left`.

use danmaku_proto::pb::server_frame::Body;
use danmaku_proto::{ChannelName, pb};

use crate::session::{Flow, Session};

pub(crate) async fn handle(session: &mut Session, leave: pb::Leave) -> Flow {
    let channel = match ChannelName::parse(&leave.channel) {
        Ok(c) => c,
        Err(e) => return session.reply_error(e.code(), e.to_string()).await,
    };
    // Write this channel's pending ack offset before its lane goes.
    crate::handlers::reliable::persist_acks(session, true).await;
    session.lanes.remove(&channel);
    if session.joined.remove(&channel) {
        session.edge.registry.leave(&channel, session.conn_id);
        tracing::debug!(conn_id = session.conn_id, channel = %channel, "left");
    }
    session
        .reply(Body::Left(pb::Left {
            channel: channel.to_string(),
        }))
        .await
}
