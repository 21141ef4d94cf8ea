//! [`Client`]: one connection to an edge, whatever its transport. The
//! transports (`ws.rs`, `quic.rs`) hand it a connected session
//! (`session.rs`); it owns the tasks and the queues the crate docs describe.

use danmaku_proto::frame;
use danmaku_proto::pb::{self, client_frame::Body};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::config::{ClientConfig, Transport};
use crate::error::ClientError;
use crate::event::ServerEvent;
use crate::{quic, session, ws};

/// One connection to an edge. Receive with [`Client::next_event`]; the
/// connection closes when the client is dropped.
pub struct Client {
    transport: Transport,
    user: String,
    ack_interval: Duration,
    outgoing: mpsc::Sender<pb::ClientFrame>,
    events: mpsc::Receiver<ServerEvent>,
    cancel: CancellationToken,
}

impl Client {
    /// Connects over WebSocket (`transport` is [`Transport::WsJson`] or
    /// [`Transport::WsPb`]) to `base_url` (`http://host:port` or `ws://host:port`;
    /// `/v1/ws` is appended) and waits for the edge's `AuthOk`.
    pub async fn connect_ws(
        base_url: &str,
        token: &str,
        transport: Transport,
        config: ClientConfig,
    ) -> Result<Client, ClientError> {
        let timeout = config.connect_timeout;
        tokio::time::timeout(timeout, async {
            let conn = ws::connect(base_url, token, transport, &config).await?;
            Client::start(conn, &config, token).await
        })
        .await
        .map_err(|_| ClientError::Timeout("websocket connect and auth_ok"))?
    }

    /// Connects over QUIC to `addr` and waits for `AuthOk`. `cert_der` pins the
    /// edge's certificate (e.g. its development certificate from `GET /v1/cert`,
    /// [`IngestClient::fetch_cert_der`], fetched over a channel you trust); `None`
    /// verifies as [`ClientConfig::server_trust`] says (default: system roots and
    /// [`ClientConfig::tls_server_name`], else the IP address).
    pub async fn connect_quic(
        addr: SocketAddr,
        cert_der: Option<Vec<u8>>,
        token: &str,
        config: ClientConfig,
    ) -> Result<Client, ClientError> {
        let timeout = config.connect_timeout;
        tokio::time::timeout(timeout, async {
            let conn = quic::connect(addr, cert_der, token, &config).await?;
            Client::start(conn, &config, token).await
        })
        .await
        .map_err(|_| ClientError::Timeout("quic connect and auth_ok"))?
    }

    /// Starts the heartbeat (and the token refresh, when configured) and waits
    /// for the edge's first frame, `AuthOk`.
    async fn start(
        conn: session::Connected,
        config: &ClientConfig,
        token: &str,
    ) -> Result<Client, ClientError> {
        let session::Connected {
            transport,
            outgoing,
            mut events,
            cancel,
        } = conn;
        let (user, ack_interval_ms) = match events.recv().await {
            Some(ServerEvent::AuthOk {
                user,
                ack_interval_ms,
            }) => (user, ack_interval_ms),
            other => {
                cancel.cancel();
                return Err(match other {
                    Some(ServerEvent::Error { code, message }) => {
                        ClientError::AuthRefused { code, message }
                    }
                    Some(ev) => ClientError::Unexpected(format!("{ev:?} before auth_ok")),
                    None => ClientError::Closed,
                });
            }
        };
        session::spawn_heartbeat(outgoing.clone(), cancel.clone(), config.heartbeat_interval);
        if let Some(refresh) = &config.token_refresh {
            session::spawn_token_refresh(
                outgoing.clone(),
                cancel.clone(),
                refresh.clone(),
                config.token_refresh_before,
                token.to_owned(),
            );
        }
        Ok(Client {
            transport,
            user,
            ack_interval: Duration::from_millis(u64::from(ack_interval_ms)),
            outgoing,
            events,
            cancel,
        })
    }

    /// Asks to join `channel`; the `Joined` (or `Error`) answer arrives via
    /// [`Client::next_event`].
    pub async fn join(&self, channel: &str) -> Result<(), ClientError> {
        self.send_raw(frame::client(Body::Join(pb::Join {
            channel: channel.to_owned(),
        })))
        .await
    }

    /// Asks to leave `channel`.
    pub async fn leave(&self, channel: &str) -> Result<(), ClientError> {
        self.send_raw(frame::client(Body::Leave(pb::Leave {
            channel: channel.to_owned(),
        })))
        .await
    }

    /// Acknowledges reliable events of `channel` up to `seq`.
    pub async fn ack(&self, channel: &str, seq: u64) -> Result<(), ClientError> {
        self.send_raw(frame::client(Body::Ack(pb::Ack {
            channel: channel.to_owned(),
            seq,
        })))
        .await
    }

    /// Asks the edge to replay reliable events of `channel` after `after_seq`.
    pub async fn resume(&self, channel: &str, after_seq: u64) -> Result<(), ClientError> {
        self.send_raw(frame::client(Body::Resume(pb::Resume {
            channel: channel.to_owned(),
            after_seq,
        })))
        .await
    }

    /// Sends a ping now (the heartbeat also sends them); `Pong` arrives via `next_event`.
    pub async fn ping(&self) -> Result<(), ClientError> {
        self.send_raw(session::ping_frame()).await
    }

    /// Queues any client frame for the writer task, as is.
    pub async fn send_raw(&self, frame: pb::ClientFrame) -> Result<(), ClientError> {
        self.outgoing
            .send(frame)
            .await
            .map_err(|_| ClientError::Closed)
    }

    /// Queues a frame without waiting; fails when the queue is full or closed.
    pub(crate) fn try_send_raw(&self, frame: pb::ClientFrame) -> Result<(), ClientError> {
        self.outgoing
            .try_send(frame)
            .map_err(|_| ClientError::Closed)
    }

    /// The next frame from the edge; `None` once the connection has closed.
    pub async fn next_event(&mut self) -> Option<ServerEvent> {
        self.events.recv().await
    }

    /// Whether frames from the edge are waiting to be read by `next_event`.
    pub(crate) fn has_queued(&self) -> bool {
        !self.events.is_empty()
    }

    /// The transport this client speaks.
    pub fn transport(&self) -> Transport {
        self.transport
    }

    /// The user id the edge authenticated (from `AuthOk`).
    pub fn user(&self) -> &str {
        &self.user
    }

    /// How often the edge asked this client to ack at most (from `AuthOk`);
    /// zero when it left the pace to the client.
    pub fn ack_interval(&self) -> Duration {
        self.ack_interval
    }

    /// Closes the connection; pending `next_event` calls drain what was
    /// already received and then return `None`.
    pub fn close(&self) {
        self.cancel.cancel();
    }

    /// Whether the connection has been closed (by either side).
    pub fn is_closed(&self) -> bool {
        self.cancel.is_cancelled()
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("transport", &self.transport)
            .field("user", &self.user)
            .field("closed", &self.is_closed())
            .finish()
    }
}
