//! `Leave{channel}`: stop receiving a channel. Idempotent: leaving a channel
//! not joined still answers `Left`.
//!
//! Also the other way out: the user was removed from the group, or banned
//! from the channel by a moderator, over HTTP (ingest tells every edge on the
//! bus). Their connections leave the channel at once and get
//! `Left{channel, reason:"removed"}` or `Left{channel, reason:"banned"}`;
//! nothing more is pushed.

use danmaku_proto::pb::server_frame::Body;
use danmaku_proto::{ChannelName, pb};

use crate::channels::{LeaveReason, Removal};
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

/// `removal.user` was removed from the group, or banned from the channel: if
/// that is this session's user and it joined the channel, leave it (without
/// writing the ack offset: a removal forgot it with the membership, a ban
/// keeps the last one written) and say so.
pub(crate) async fn removed(session: &mut Session, removal: &Removal) -> Flow {
    let channel = &removal.channel;
    if *removal.user != *session.user.as_str() || session.joined.remove(channel).is_none() {
        return Flow::Continue;
    }
    session.edge.channels.leave(channel, session.conn_id);
    match removal.reason {
        LeaveReason::Removed => session.edge.metrics.members_removed.inc(),
        LeaveReason::Banned => session.edge.metrics.banned_leaves.inc(),
    }
    let reason = removal.reason.as_str();
    tracing::info!(conn_id = session.conn_id, user = %session.user, channel = %channel, reason, "made to leave");
    session
        .reply(Body::Left(pb::Left {
            channel: channel.to_string(),
            reason: reason.to_owned(),
        }))
        .await
}
