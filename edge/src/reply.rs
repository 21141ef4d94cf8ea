//! What a connection's writer task is told besides tick frames ([`Reply`]),
//! and why the edge ends a connection ([`CloseReason`], with its WebSocket and
//! QUIC close codes). Its own module, below the session and the control
//! plane: both queue replies (the drain queues redirects and closes to every
//! connection) and neither should import the other for it.

use danmaku_proto::pb;

use crate::channels::Outbound;

/// What the writer task is told to send, besides tick frames.
#[derive(Debug)]
pub(crate) enum Reply {
    /// A reply frame (never a batch: those go through the batch queue). Boxed:
    /// the queue's slots are allocated per connection, so they are kept small.
    Frame(Box<pb::ServerFrame>),
    /// A prebuilt frame shared with other connections (a reliable frame of a
    /// catch-up, a pong, a redirect): never dropped.
    Shared(Outbound),
    /// Close the connection after everything queued before.
    Close(CloseReason),
}

/// Why the edge ends a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CloseReason {
    /// The peer closed or went away.
    PeerClosed,
    /// Silent for 2.5 heartbeat intervals.
    Idle,
    /// A malformed frame (the error frame was queued first).
    BadFrame,
    /// Authentication failed (QUIC; WebSocket refuses before the upgrade).
    BadToken,
    /// The edge is shutting down.
    Shutdown,
    /// The peer stopped reading: replies could not be queued for an idle timeout.
    Stalled,
    /// The peer cannot keep up with the reliable lane (too many unacked seqs
    /// or too many resends); it should reconnect and resume.
    ReliableBacklog,
    /// The connection's wake queue overflowed (its task could not keep up,
    /// usually because the peer stopped reading): `reliable_backlog` to the
    /// client, which reconnects and resumes.
    ReliableOverflow,
    /// The token expired and no fresh `auth` frame arrived in time.
    TokenExpired,
    /// A limit refused the connection (see `limits.rs`; the error frame says which).
    Refused,
    /// The token was revoked or the user blocked (`account.rs`; the error frame
    /// says which). Final: the client must not reconnect with the same token.
    AccountRefused,
}

impl CloseReason {
    /// WebSocket close code (RFC 6455 §7.4.1).
    pub fn ws_code(self) -> u16 {
        match self {
            CloseReason::PeerClosed => 1000,
            CloseReason::Idle => 1000,
            CloseReason::BadFrame => 1002,
            CloseReason::BadToken => 1008,
            CloseReason::Shutdown => 1001,
            CloseReason::Stalled => 1008,
            CloseReason::ReliableBacklog | CloseReason::ReliableOverflow => 1008,
            CloseReason::TokenExpired => 1008,
            CloseReason::Refused => 1008,
            CloseReason::AccountRefused => 1008,
        }
    }

    /// QUIC application close code.
    pub fn quic_code(self) -> u32 {
        match self {
            CloseReason::PeerClosed => 0,
            CloseReason::Idle => 1,
            CloseReason::BadFrame => 2,
            CloseReason::BadToken => 3,
            CloseReason::Shutdown => 4,
            CloseReason::Stalled => 5,
            CloseReason::ReliableBacklog | CloseReason::ReliableOverflow => 6,
            CloseReason::TokenExpired => 7,
            CloseReason::Refused => 8,
            CloseReason::AccountRefused => 9,
        }
    }

    pub fn text(self) -> &'static str {
        match self {
            CloseReason::PeerClosed => "bye",
            CloseReason::Idle => "idle timeout",
            CloseReason::BadFrame => "malformed frame",
            CloseReason::BadToken => "bad token",
            CloseReason::Shutdown => "edge shutting down",
            CloseReason::Stalled => "peer stopped reading",
            CloseReason::ReliableBacklog | CloseReason::ReliableOverflow => {
                "reliable backlog; resume with after_seq"
            }
            CloseReason::TokenExpired => "token expired",
            CloseReason::Refused => "refused by a limit",
            CloseReason::AccountRefused => "token revoked or user blocked",
        }
    }
}
