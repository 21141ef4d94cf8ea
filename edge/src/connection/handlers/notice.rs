//! `notice` frames: moderation that concerns this connection's user only. A
//! moderator muted the user in a channel (over HTTP, on any ingest; the edges
//! hear it on the bus): the user's connections that joined the channel get
//! `{"type":"notice","channel":…,"code":"muted","until_ms":…}` (the same in
//! protobuf), nobody else does. The connection stays in the channel: a muted
//! viewer still watches, only their posts are refused.

use danmaku_proto::pb;
use danmaku_proto::pb::server_frame::Body;

use crate::channels::MuteNotice;
use crate::session::{Flow, Session};

/// `Notice.code` of a mute.
pub(crate) const CODE_MUTED: &str = "muted";

pub(crate) async fn muted(session: &mut Session, notice: &MuteNotice) -> Flow {
    if *notice.user != *session.user.as_str() || !session.joined.contains(&notice.channel) {
        return Flow::Continue;
    }
    session.edge.metrics.notices_sent.inc();
    tracing::info!(conn_id = session.conn_id, user = %session.user, channel = %notice.channel, until_ms = notice.until_ms, "muted; notice sent");
    session
        .reply(Body::Notice(pb::Notice {
            channel: notice.channel.to_string(),
            code: CODE_MUTED.to_owned(),
            until_ms: notice.until_ms,
        }))
        .await
}
