//! The ways a viewer's connection receives frames. At the bottom of the edge:
//! the registry, the metrics (as the `transport` label) and the transports
//! name it.

/// How a connection receives frames; also the `transport` metrics label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transport {
    /// WebSocket, subprotocol `danmaku.v1.json`: text frames.
    WsJson = 0,
    /// WebSocket, subprotocol `danmaku.v1.pb`: binary protobuf frames.
    WsPb = 1,
    /// QUIC, ALPN `danmaku/2` or `danmaku/1`: protobuf frames on streams and datagrams.
    Quic = 2,
    /// Server-sent events (`GET /v1/sse`): the JSON frames as `data:` lines
    /// (`sse_wire.rs`), one way.
    Sse = 3,
    /// Long-poll (`GET /v1/poll`): not a connection but the one registry
    /// member per polled room that fills the room's ring of recent ticks
    /// (`poll_rooms.rs`) with the JSON tick text.
    Poll = 4,
}

impl Transport {
    pub const ALL: [Transport; 5] = [
        Transport::WsJson,
        Transport::WsPb,
        Transport::Quic,
        Transport::Sse,
        Transport::Poll,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Transport::WsJson => "ws_json",
            Transport::WsPb => "ws_pb",
            Transport::Quic => "quic",
            Transport::Sse => "sse",
            Transport::Poll => "poll",
        }
    }

    /// Whether this transport reads JSON text rather than protobuf bytes
    /// (SSE and long-poll too: they carry the JSON frames).
    pub fn is_json(self) -> bool {
        matches!(self, Transport::WsJson | Transport::Sse | Transport::Poll)
    }
}
