//! `Auth` after the session is established: the connection is already
//! authenticated (query token on WebSocket, first frame on QUIC), so a second
//! `Auth` is answered with an error and otherwise ignored.

use danmaku_proto::pb;

use crate::session::{Flow, Session};

pub(crate) async fn handle(session: &mut Session, _auth: pb::Auth) -> Flow {
    session
        .reply_error(
            "already_authenticated",
            "this connection is already authenticated",
        )
        .await
}
