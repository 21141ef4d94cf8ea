//! `Leave{channel}`: stop receiving a channel. Idempotent: leaving a channel
//! not joined still answers `Left`.
//!
//! Also the other way out of a group: the user was removed from it over HTTP
//! (ingest tells every edge on the bus). Their connections leave the channel at
//! once and get `Left{channel, reason:"removed"}`; nothing more is pushed.

use danmaku_proto::pb::server_frame::Body;
use danmaku_proto::{ChannelName, pb};

/// `Left.reason` when the user was removed from the group.
pub(crate) const REASON_REMOVED: &str = "removed";

use crate::session::{Flow, Session};

pub(crate) async fn handle(session: &mut Session, leave: pb::Leave) -> Flow {
    let channel = match ChannelName::parse(&leave.channel) {
        Ok(c) => c,
        Err(e) => return session.reply_error(e.code(), e.to_string()).await,
    };
    // Write this channel's pending ack offset before its lane goes.
    crate::connection::reliable::persist_acks(session, true).await;
    if session.joined.remove(&channel).is_some() {
        session.edge.channels.leave(&channel, session.conn_id);
        tracing::debug!(conn_id = session.conn_id, channel = %channel, "left");
    }
    session
        .reply(Body::Left(pb::Left {
            channel: channel.to_string(),
            reason: String::new(),
        }))
        .await
}

/// `user` was removed from the group `channel`: if that is this session's user
/// and it joined the channel, leave it (without writing the ack offset: the
/// store forgot it with the membership) and say so.
pub(crate) async fn removed(session: &mut Session, channel: ChannelName, user: &str) -> Flow {
    if user != session.user || session.joined.remove(&channel).is_none() {
        return Flow::Continue;
    }
    session.edge.channels.leave(&channel, session.conn_id);
    session.edge.metrics.members_removed.inc();
    tracing::info!(conn_id = session.conn_id, user, channel = %channel, "removed from group; left");
    session
        .reply(Body::Left(pb::Left {
            channel: channel.to_string(),
            reason: REASON_REMOVED.to_owned(),
        }))
        .await
}
