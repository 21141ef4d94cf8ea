//! `Join{channel}`: validate the name, register this connection as a member and
//! answer `Joined`. A bad name or too many channels is answered with an error
//! frame and the connection stays: it is a request the client can correct, not
//! a broken peer.

use danmaku_proto::pb::server_frame::Body;
use danmaku_proto::{ChannelName, pb};

use crate::session::{Flow, Session};

pub(crate) async fn handle(session: &mut Session, join: pb::Join) -> Flow {
    let channel = match ChannelName::parse(&join.channel) {
        Ok(c) => c,
        Err(e) => return session.reply_error(e.code(), e.to_string()).await,
    };
    if !session.joined.contains(&channel) {
        let max = session.edge.config.max_channels_per_conn;
        if session.joined.len() >= max {
            return session
                .reply_error(
                    "too_many_channels",
                    format!("a connection may join at most {max} channels"),
                )
                .await;
        }
        session
            .edge
            .registry
            .join(&channel, session.conn_id, session.member());
        session.joined.insert(channel.clone());
        tracing::debug!(conn_id = session.conn_id, user = %session.user, channel = %channel, "joined");
    }
    session
        .reply(Body::Joined(pb::Joined {
            channel: channel.to_string(),
            // The reliable lane (and its seq) is not served by the edge yet.
            last_seq: 0,
        }))
        .await
}
