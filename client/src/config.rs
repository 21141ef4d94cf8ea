//! How a `Client` connects: the transport to use and the knobs of one
//! connection (heartbeat, decode bounds, buffering).

use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;

use crate::tls::ServerTrust;
use std::sync::Arc;
use std::time::Duration;

use danmaku_proto::Limits;

/// The wire a client speaks to an edge.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transport {
    /// WebSocket, subprotocol `danmaku.v1.json`: text frames of JSON.
    WsJson,
    /// WebSocket, subprotocols `danmaku.v3.pb` (dense batches with zstd
    /// dictionary 1, preferred), `danmaku.v2.pb` (compact batches) and
    /// `danmaku.v1.pb`: binary protobuf frames, batches zstd-compressed.
    WsPb,
    /// QUIC (ALPN `danmaku/2`, dense batches, else `danmaku/1`): a control
    /// stream plus datagrams / unidirectional streams.
    Quic,
}

impl Transport {
    /// The WebSocket subprotocols this transport offers, as the header value
    /// (`None` for QUIC). Protobuf offers the dense batch layout first, then
    /// the compact one; an edge that knows neither picks `danmaku.v1.pb`, and
    /// the batch decoder reads all three.
    pub fn subprotocol(self) -> Option<&'static str> {
        match self {
            Transport::WsJson => Some("danmaku.v1.json"),
            Transport::WsPb => Some("danmaku.v3.pb, danmaku.v2.pb, danmaku.v1.pb"),
            Transport::Quic => None,
        }
    }

    /// Short name used in logs and reports: `ws-json`, `ws-pb`, `quic`.
    pub fn name(self) -> &'static str {
        match self {
            Transport::WsJson => "ws-json",
            Transport::WsPb => "ws-pb",
            Transport::Quic => "quic",
        }
    }
}

impl std::str::FromStr for Transport {
    type Err = String;

    /// Accepts `ws-json`/`json`, `ws-pb`/`pb`, `quic`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "ws-json" | "json" | "wsjson" => Ok(Transport::WsJson),
            "ws-pb" | "pb" | "wspb" | "ws" => Ok(Transport::WsPb),
            "quic" => Ok(Transport::Quic),
            other => Err(format!(
                "unknown transport {other:?} (ws-json, ws-pb, quic)"
            )),
        }
    }
}

impl std::fmt::Display for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Settings of one client connection.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// How often the client sends `ping`. The edge closes a connection silent for
    /// 2.5 intervals, so keep it below the edge's own setting. Default 30 s.
    pub heartbeat_interval: Duration,
    /// Bounds applied when decoding frames from the edge (frame size, batch
    /// events, string lengths). Default: [`Limits::default`].
    pub limits: Limits,
    /// Capacity of the queue between the connection's reader task and
    /// `Client::next_event`. When it is full the reader stops reading
    /// the socket, so a slow consumer shows up to the edge as a slow reader.
    /// Default 1024.
    pub event_buffer: usize,
    /// `SO_RCVBUF` of the WebSocket TCP socket, set before connecting. Tests use
    /// a tiny value to simulate a slow reader. `None` keeps the OS default.
    pub recv_buffer_bytes: Option<usize>,
    /// Local address to bind the socket to (e.g. `127.0.0.2`), so a load
    /// generator can go past one source address's ephemeral ports. `None` lets
    /// the OS choose.
    pub local_addr: Option<IpAddr>,
    /// How long `connect_*` waits for the transport handshake plus `AuthOk`.
    /// Default 10 s.
    pub connect_timeout: Duration,
    /// [`crate::resilient::ResilientClient`]: how long it keeps trying to reconnect after
    /// losing its edge before `next_event` gives up and returns `None`.
    /// Default 60 s.
    pub max_reconnect_time: Duration,
    /// [`crate::resilient::ResilientClient`]: pause after the first failed reconnect
    /// attempt; doubled after each further failure up to
    /// `reconnect_backoff_max`. Default 100 ms.
    pub reconnect_backoff_initial: Duration,
    /// [`crate::resilient::ResilientClient`]: the longest pause between reconnect
    /// attempts. Default 2 s.
    pub reconnect_backoff_max: Duration,
    /// [`crate::resilient::ResilientClient`]: a connection that delivers nothing (not even
    /// a `pong`) for this long is taken as lost and replaced. `None` means
    /// three heartbeat intervals (none when the heartbeat is off). Default `None`.
    pub dead_edge_timeout: Option<Duration>,
    /// [`crate::resilient::ResilientClient`]: least time between two acks of one channel
    /// while more frames wait to be read (a backlog after a reconnect, a slow
    /// application); a client that has read everything acks at once. Acks are
    /// cumulative, so one covers every seq handed out before it; one held back
    /// goes out when the interval ends, while the application waits in
    /// `next_event`. Acking every delivery costs the edge
    /// a frame per gift per viewer and, at tens of gifts a second, eats most of
    /// the edge's per-connection frame budget (50/s), so that after a reconnect
    /// storm the acks of replays and retransmits were refused `rate_limited`,
    /// which caused more retransmits. Keep it well below the edge's
    /// `--retransmit-initial` (3 s). The edge's own pace, announced in
    /// `AuthOk` (`--client-ack-interval`), applies on top, also when caught
    /// up. Default 250 ms.
    pub ack_interval: Duration,
    /// Where a fresh token comes from before the current one expires. The edge
    /// closes a connection whose token expires (`error{code:"token_expired"}`);
    /// with a callback the client asks it for a new token `token_refresh_before`
    /// ahead of expiry and sends it as an `auth` frame, so the connection lives on
    /// (the edge answers `AuthOk`, which `next_event` shows). `None` (default):
    /// no refresh.
    pub token_refresh: Option<TokenRefresh>,
    /// How long before its token expires the client asks `token_refresh`.
    /// Default 60 s (a token with less life left is refreshed at once).
    pub token_refresh_before: Duration,
    /// Which edge certificates to trust over QUIC and `wss://`. Default
    /// [`ServerTrust::SystemRoots`]: the system's roots and the host name.
    /// `Client::connect_quic` with a certificate pins that one instead.
    pub server_trust: ServerTrust,
    /// The name the edge's certificate must carry, when it is not the host of the
    /// URL connected to (e.g. QUIC to an IP address). Default `None`.
    pub tls_server_name: Option<String>,
}

/// A callback returning a fresh token (e.g. from the app backend), or `None`
/// when there is none; see [`ClientConfig::token_refresh`].
#[derive(Clone)]
pub struct TokenRefresh(Arc<dyn Fn() -> TokenFuture + Send + Sync>);

/// What a [`TokenRefresh`] callback returns.
type TokenFuture = Pin<Box<dyn Future<Output = Option<String>> + Send>>;

impl TokenRefresh {
    pub fn new<F, Fut>(f: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Option<String>> + Send + 'static,
    {
        TokenRefresh(Arc::new(move || Box::pin(f())))
    }

    /// Asks the callback for a token.
    pub async fn fetch(&self) -> Option<String> {
        (self.0)().await
    }
}

impl std::fmt::Debug for TokenRefresh {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenRefresh(..)")
    }
}

impl ClientConfig {
    /// Settings for a viewer that must notice a frozen edge (process stopped, host
    /// hung, network black hole: the TCP connection stays open but nothing arrives)
    /// within about 1.5 s and move to another edge, so that a gift is on screen
    /// within 3 s of being accepted even then: a `ping` every 500 ms
    /// ([`heartbeat_interval`](Self::heartbeat_interval)), a connection silent for
    /// 1.5 s is dropped ([`dead_edge_timeout`](Self::dead_edge_timeout)), and a
    /// reconnect attempt gives up on an edge after 2 s. Costs one ping and one pong
    /// per 500 ms per connection, so use it for viewers that need the promise, not
    /// for every idle mobile client (the default 30 s heartbeat keeps radios asleep).
    /// Measured in BENCHMARKS.md, "Chaos".
    pub fn fast_failover() -> Self {
        ClientConfig {
            heartbeat_interval: Duration::from_millis(500),
            dead_edge_timeout: Some(Duration::from_millis(1500)),
            connect_timeout: Duration::from_secs(2),
            reconnect_backoff_initial: Duration::from_millis(50),
            reconnect_backoff_max: Duration::from_millis(500),
            ..ClientConfig::default()
        }
    }
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            heartbeat_interval: Duration::from_secs(30),
            limits: Limits::default(),
            event_buffer: 1024,
            recv_buffer_bytes: None,
            local_addr: None,
            connect_timeout: Duration::from_secs(10),
            max_reconnect_time: Duration::from_secs(60),
            reconnect_backoff_initial: Duration::from_millis(100),
            reconnect_backoff_max: Duration::from_secs(2),
            dead_edge_timeout: None,
            ack_interval: Duration::from_millis(250),
            token_refresh: None,
            token_refresh_before: Duration::from_secs(60),
            server_trust: ServerTrust::SystemRoots,
            tls_server_name: None,
        }
    }
}
