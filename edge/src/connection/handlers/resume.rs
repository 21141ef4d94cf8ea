//! `Resume{channel, after_seq}`: the client holds the channel's reliable
//! events up to `after_seq` and nothing after (a reconnect, or a gap it saw).
//! The edge sends what follows from the channel's ring or the store, paced by
//! the client's acks, until it reaches what the live ticks bring. `not_joined`
//! if the channel was not joined; `store_unavailable` if the store cannot be
//! read (the connection stays; the client asks again).

use danmaku_proto::pb;

use crate::connection::reliable;
use crate::session::{Flow, Session};

pub(crate) async fn handle(session: &mut Session, resume: pb::Resume) -> Flow {
    reliable::on_resume(session, resume).await
}
