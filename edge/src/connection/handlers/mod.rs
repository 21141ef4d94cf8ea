//! One handler per client frame kind, mini-redis style: each file takes the
//! decoded message and the session, acts, and queues its reply. Adding a frame
//! kind touches one file and one match arm here. The connection's task
//! (`connection.rs`) calls [`dispatch`] once a frame passed its budget.

pub(crate) mod ack;
pub(crate) mod auth;
mod join;
pub(crate) mod leave;
mod ping;
mod resume;

use danmaku_proto::pb;
use danmaku_proto::pb::client_frame::Body;

use crate::session::{Flow, Session};

pub(crate) async fn dispatch(session: &mut Session, frame: pb::ClientFrame) -> Flow {
    match frame.body {
        Some(Body::Join(m)) => join::handle(session, m).await,
        Some(Body::Leave(m)) => leave::handle(session, m).await,
        Some(Body::Ping(m)) => ping::handle(session, m).await,
        Some(Body::Ack(m)) => ack::handle(session, m).await,
        Some(Body::Resume(m)) => resume::handle(session, m).await,
        Some(Body::Auth(m)) => auth::handle(session, m).await,
        // The decoders refuse empty frames; kept total for safety.
        None => {
            session
                .reply_error("malformed_frame", "frame has no body")
                .await
        }
    }
}
