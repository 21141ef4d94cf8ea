//! The ways a viewer's connection receives frames. At the bottom of the edge:
//! the registry, the metrics (as the `transport` label) and both transports
//! name it.

/// How a connection receives frames; also the `transport` metrics label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transport {
    /// WebSocket, subprotocol `danmaku.v1.json`: text frames.
    WsJson = 0,
    /// WebSocket, subprotocol `danmaku.v1.pb`: binary protobuf frames.
    WsPb = 1,
    /// QUIC, ALPN `danmaku/1`: protobuf frames on streams and datagrams.
    Quic = 2,
}

impl Transport {
    pub const ALL: [Transport; 3] = [Transport::WsJson, Transport::WsPb, Transport::Quic];

    pub fn label(self) -> &'static str {
        match self {
            Transport::WsJson => "ws_json",
            Transport::WsPb => "ws_pb",
            Transport::Quic => "quic",
        }
    }

    /// Whether this transport reads JSON text rather than protobuf bytes.
    pub fn is_json(self) -> bool {
        self == Transport::WsJson
    }
}
