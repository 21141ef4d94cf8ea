//! `Ack` and `Resume` belong to the reliable lane, which the edge does not serve
//! yet. They are answered `not_supported` and the connection stays, so clients
//! written against the full protocol keep working on the danmaku lane.

use danmaku_proto::pb;

use crate::session::{Flow, Session};

pub(crate) async fn ack(session: &mut Session, ack: pb::Ack) -> Flow {
    session
        .reply_error(
            "not_supported",
            format!(
                "ack on {:?}: the reliable lane is not served by this edge yet",
                ack.channel
            ),
        )
        .await
}

pub(crate) async fn resume(session: &mut Session, resume: pb::Resume) -> Flow {
    session
        .reply_error(
            "not_supported",
            format!(
                "resume on {:?}: the reliable lane is not served by this edge yet",
                resume.channel
            ),
        )
        .await
}
