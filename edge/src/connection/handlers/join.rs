//! `Join{channel}`: validate the name, register this connection as a member and
//! answer `Joined{last_seq, ack_interval_ms}` (the channel's last stored seq, and
//! a room's slower ack pace; the lane's stall sweep waits for it). A `group:`
//! channel needs membership in the store (`not_member` otherwise); a user a moderator
//! banned from the channel is refused `banned` (`bans.rs`); joining a group pushes
//! the newest page of what the member missed as `Reliable` frames (older pages
//! come from HTTP history). Rooms push nothing from before the join. A bad name,
//! too many channels or a store failure is answered with an error frame and the
//! connection stays: it is a request the client can correct or retry.

use danmaku_proto::pb::server_frame::Body;
use danmaku_proto::{ChannelKind, ChannelName, pb};

use crate::connection::reliable;
use crate::session::{Flow, Session};

pub(crate) async fn handle(session: &mut Session, join: pb::Join) -> Flow {
    let channel = match ChannelName::parse(&join.channel) {
        Ok(c) => c,
        Err(e) => return session.reply_error(e.code(), e.to_string()).await,
    };
    if let Some(until) = session
        .edge
        .bans
        .banned(&channel, &session.user, danmaku_proto::now_ms())
    {
        let message = match until {
            Some(ms) => format!(
                "{} is banned from {channel} until {ms} (ms since the epoch)",
                session.user
            ),
            None => format!("{} is banned from {channel}", session.user),
        };
        return session.reply_error("banned", message).await;
    }
    let store = std::sync::Arc::clone(&session.edge.store);
    if session.joined.contains(&channel) {
        let last_seq = match store.last_seq(channel.as_str()).await {
            Ok(s) => s,
            Err(e) => return store_unavailable(session, "last_seq", &channel, e).await,
        };
        return joined(session, &channel, last_seq).await;
    }
    let max = session.edge.config.max_channels_per_conn;
    if session.joined.len() >= max {
        return session
            .reply_error(
                "too_many_channels",
                format!("a connection may join at most {max} channels"),
            )
            .await;
    }
    let group = channel.kind() == ChannelKind::Group;
    let mut joined_seq = 0;
    if group {
        match store.is_member(channel.as_str(), &session.user).await {
            Ok(Some(j)) => joined_seq = j,
            Ok(None) => {
                return session
                    .reply_error(
                        "not_member",
                        format!("{} is not a member of {channel}", session.user),
                    )
                    .await;
            }
            Err(e) => return store_unavailable(session, "is_member", &channel, e).await,
        }
    }
    // Registered before reading last_seq: an event persisted in between reaches
    // this connection live (or as a gap it fills), never falls in a hole.
    // The lane learns its start (the channel's last seq) below; a tick
    // pushed in between reaches this member and is not taken for a hole.
    let patience = session.edge.config.reliable.sweep_patience(channel.kind());
    let mut lane = reliable::joining_lane(group, joined_seq, patience);
    let member = session.member(&lane);
    session
        .edge
        .channels
        .join(&channel, session.conn_id, member);
    let last_seq = match store.last_seq(channel.as_str()).await {
        Ok(s) => s,
        Err(e) => {
            session.edge.channels.leave(&channel, session.conn_id);
            return store_unavailable(session, "last_seq", &channel, e).await;
        }
    };
    lane.start_at(last_seq);
    session.joined.insert(channel.clone(), lane);
    tracing::debug!(conn_id = session.conn_id, user = %session.user, channel = %channel, last_seq, "joined");
    if let Flow::Close(r) = joined(session, &channel, last_seq).await {
        return Flow::Close(r);
    }
    if group {
        return reliable::push_missed(session, &channel, joined_seq, last_seq).await;
    }
    Flow::Continue
}

async fn joined(session: &Session, channel: &ChannelName, last_seq: u64) -> Flow {
    let reliable = &session.edge.config.reliable;
    session
        .reply(Body::Joined(pb::Joined {
            channel: channel.to_string(),
            last_seq,
            ack_interval_ms: reliable.joined_ack_interval_ms(channel.kind()),
        }))
        .await
}

async fn store_unavailable(
    session: &Session,
    op: &str,
    channel: &ChannelName,
    e: danmaku_store::StoreError,
) -> Flow {
    session.edge.metrics.store_error(op);
    tracing::warn!(conn_id = session.conn_id, channel = %channel, op, error = %e, "join: store call failed");
    session
        .reply_error("store_unavailable", format!("cannot join {channel}: {e}"))
        .await
}
