//! `Ack{channel, seq}`: the client holds every reliable event of the channel
//! up to `seq` (cumulative). It moves the lane's ack (no resend for what it
//! covers), continues a catch-up waiting for room, and for a group becomes
//! the user's ack offset in the store (throttled). An ack on a channel not
//! joined is ignored: it may cross a `leave`.

use danmaku_proto::pb;

use crate::connection::reliable;
use crate::session::{Flow, Session};

pub(crate) async fn handle(session: &mut Session, ack: pb::Ack) -> Flow {
    reliable::on_ack(session, ack).await
}
