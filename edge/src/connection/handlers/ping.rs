//! `Ping` → `Pong` echoing the client's timestamp (so it can measure RTT).
//! Any frame resets the idle timer; pings exist for when there is nothing else.

use danmaku_proto::pb;
use danmaku_proto::pb::server_frame::Body;

use crate::session::{Flow, Session};

pub(crate) async fn handle(session: &mut Session, ping: pb::Ping) -> Flow {
    session
        .reply(Body::Pong(pb::Pong { ts_ms: ping.ts_ms }))
        .await
}
