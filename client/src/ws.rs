//! WebSocket transport: `GET {base}/v1/ws?token=…` with subprotocol
//! `danmaku.v1.json` (text frames) or `danmaku.v1.pb` (binary frames).
//!
//! The TCP socket is made by hand so that `SO_RCVBUF` and the local address can
//! be set before connecting (slow-reader tests, load generators with many
//! source addresses); the handshake then runs over it.

use std::net::SocketAddr;

use danmaku_proto::json::JsonClientFrame;
use danmaku_proto::{frame, pb};
use futures_util::{SinkExt, StreamExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{Connector, MaybeTlsStream, WebSocketStream};
use tracing::{debug, warn};
use url::Url;

use crate::config::ClientConfig;
use crate::config::Transport;
use crate::error::ClientError;
use crate::event;
use crate::session::{Connected, Wiring, deliver};

/// Builds the `ws://…/v1/ws?token=…` URL from a base URL (`http`, `https`,
/// `ws` or `wss`; a trailing `/v1/ws` is kept, otherwise appended).
pub fn ws_url(base_url: &str, token: &str) -> Result<Url, ClientError> {
    let bad = |reason: &str| ClientError::InvalidUrl {
        url: base_url.to_owned(),
        reason: reason.to_owned(),
    };
    let mut url = Url::parse(base_url).map_err(|e| bad(&e.to_string()))?;
    let scheme = match url.scheme() {
        "http" | "ws" => "ws",
        "https" | "wss" => "wss",
        _ => return Err(bad("scheme must be http, https, ws or wss")),
    };
    url.set_scheme(scheme)
        .map_err(|_| bad("cannot set scheme"))?;
    if url.host_str().is_none() {
        return Err(bad("no host"));
    }
    if !url.path().ends_with("/v1/ws") {
        let path = format!("{}/v1/ws", url.path().trim_end_matches('/'));
        url.set_path(&path);
    }
    url.set_query(None);
    url.query_pairs_mut().append_pair("token", token);
    Ok(url)
}

async fn resolve(url: &Url, config: &ClientConfig) -> Result<SocketAddr, ClientError> {
    let host = url.host_str().unwrap_or_default();
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let port = url.port_or_known_default().unwrap_or(80);
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host, port)).await?.collect();
    let same_family = |a: &&SocketAddr| match config.local_addr {
        Some(local) => a.is_ipv4() == local.is_ipv4(),
        None => true,
    };
    addrs
        .iter()
        .find(same_family)
        .or(addrs.first())
        .copied()
        .ok_or_else(|| ClientError::InvalidUrl {
            url: url.to_string(),
            reason: "host resolves to no address".into(),
        })
}

async fn tcp_connect(addr: SocketAddr, config: &ClientConfig) -> Result<TcpStream, ClientError> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    if let Some(n) = config.recv_buffer_bytes {
        socket.set_recv_buffer_size(u32::try_from(n).unwrap_or(u32::MAX))?;
    }
    if let Some(ip) = config.local_addr {
        crate::bind::bind_source(&socket, ip)?;
    }
    let stream = socket.connect(addr).await?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// Opens the socket, runs the handshake and spawns the reader and writer tasks.
pub(crate) async fn connect(
    base_url: &str,
    token: &str,
    transport: Transport,
    config: &ClientConfig,
) -> Result<Connected, ClientError> {
    let subprotocol = transport
        .subprotocol()
        .ok_or_else(|| ClientError::InvalidUrl {
            url: base_url.to_owned(),
            reason: "connect_ws needs Transport::WsJson or Transport::WsPb".into(),
        })?;
    let url = ws_url(base_url, token)?;
    // wss: rustls, verified as `config.server_trust` says, for the URL's host name.
    let connector = if url.scheme() == "wss" {
        let tls = crate::tls::client_config(&config.server_trust, None, &[b"http/1.1"])?;
        Some(Connector::Rustls(std::sync::Arc::new(tls)))
    } else {
        Some(Connector::Plain)
    };
    let addr = resolve(&url, config).await?;
    let stream = tcp_connect(addr, config).await?;

    let mut request = url.as_str().into_client_request()?;
    request.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        HeaderValue::from_static(subprotocol),
    );
    let ws_config = WebSocketConfig::default()
        .max_message_size(Some(config.limits.max_frame_bytes))
        .max_frame_size(Some(config.limits.max_frame_bytes));
    let (ws, _response) = match tokio_tungstenite::client_async_tls_with_config(
        request,
        stream,
        Some(ws_config),
        connector,
    )
    .await
    {
        Ok(ok) => ok,
        Err(tungstenite::Error::Http(resp)) => {
            let status = resp.status();
            let body = resp
                .body()
                .as_deref()
                .map(|b| String::from_utf8_lossy(b).into_owned())
                .unwrap_or_default();
            // docs/PROTOCOL.md error body: {"error":{"code":…,"message":…}}.
            let parsed: Option<(String, String)> = serde_json::from_str::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| {
                    let e = v.get("error")?;
                    Some((
                        e.get("code")?.as_str()?.to_owned(),
                        e.get("message")
                            .and_then(|m| m.as_str())
                            .unwrap_or("")
                            .to_owned(),
                    ))
                });
            let (code, message) =
                parsed.unwrap_or_else(|| (format!("http_{}", status.as_u16()), body));
            return Err(if status == 401 || status == 403 {
                ClientError::AuthRefused { code, message }
            } else {
                ClientError::HttpStatus {
                    status: status.as_u16(),
                    code,
                    message,
                }
            });
        }
        Err(e) => return Err(e.into()),
    };
    debug!(%addr, transport = transport.name(), "websocket connected");

    let wiring = Wiring::new(config.event_buffer);
    let (sink, stream) = ws.split();
    tokio::spawn(read_loop(
        stream,
        transport,
        config.limits,
        wiring.events_tx,
        wiring.cancel.clone(),
    ));
    tokio::spawn(write_loop(
        sink,
        transport,
        wiring.out_rx,
        wiring.cancel.clone(),
    ));
    Ok(Connected {
        transport,
        outgoing: wiring.out_tx,
        events: wiring.events_rx,
        cancel: wiring.cancel,
    })
}

type WsStream = futures_util::stream::SplitStream<WebSocketStream<MaybeTlsStream<TcpStream>>>;
type WsSink = futures_util::stream::SplitSink<WebSocketStream<MaybeTlsStream<TcpStream>>, Message>;

async fn read_loop(
    mut stream: WsStream,
    transport: Transport,
    limits: danmaku_proto::Limits,
    events: tokio::sync::mpsc::Sender<crate::event::ServerEvent>,
    cancel: tokio_util::sync::CancellationToken,
) {
    loop {
        let msg = tokio::select! {
            _ = cancel.cancelled() => break,
            msg = stream.next() => msg,
        };
        let decoded = match msg {
            None => break,
            Some(Err(e)) => {
                debug!(error = %e, "websocket read ended");
                break;
            }
            Some(Ok(Message::Binary(b))) if transport == Transport::WsPb => {
                event::decode_pb_events(&b, &limits)
            }
            Some(Ok(Message::Text(t))) if transport == Transport::WsJson => {
                event::decode_json_events(t.as_str(), &limits)
            }
            Some(Ok(Message::Close(close))) => {
                debug!(?close, "websocket closed by edge");
                break;
            }
            Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => continue,
            Some(Ok(other)) => {
                let err = ClientError::Unexpected(format!(
                    "{} frame on a {} connection",
                    if other.is_text() { "text" } else { "binary" },
                    transport.name()
                ));
                warn!(error = %err, "closing connection");
                break;
            }
        };
        match decoded {
            Ok(evs) => {
                if !deliver(&events, &cancel, evs).await {
                    break;
                }
            }
            Err(e) => {
                warn!(error = %ClientError::Proto(e), "closing connection");
                break;
            }
        }
    }
    cancel.cancel();
}

fn to_message(frame: &pb::ClientFrame, transport: Transport) -> Option<Message> {
    match transport {
        Transport::WsJson => {
            let json = JsonClientFrame::from_pb(frame)?;
            serde_json::to_string(&json).ok().map(Message::text)
        }
        _ => Some(Message::binary(frame::encode(frame))),
    }
}

async fn write_loop(
    mut sink: WsSink,
    transport: Transport,
    mut outgoing: tokio::sync::mpsc::Receiver<pb::ClientFrame>,
    cancel: tokio_util::sync::CancellationToken,
) {
    loop {
        let frame = tokio::select! {
            _ = cancel.cancelled() => break,
            f = outgoing.recv() => match f {
                Some(f) => f,
                None => break,
            },
        };
        let Some(msg) = to_message(&frame, transport) else {
            warn!(?frame, "dropping a client frame with no body");
            continue;
        };
        if let Err(e) = sink.send(msg).await {
            debug!(error = %e, "websocket write failed");
            break;
        }
    }
    cancel.cancel();
    // Best effort: tell the edge we are going.
    let _ = tokio::time::timeout(std::time::Duration::from_secs(1), sink.close()).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_forms() {
        let u = ws_url("http://127.0.0.1:7070", "t0k").unwrap();
        assert_eq!(u.as_str(), "ws://127.0.0.1:7070/v1/ws?token=t0k");
        let u = ws_url("ws://127.0.0.1:7070/", "a b+c").unwrap();
        assert_eq!(u.as_str(), "ws://127.0.0.1:7070/v1/ws?token=a+b%2Bc");
        let u = ws_url("ws://localhost:1/v1/ws", "x").unwrap();
        assert_eq!(u.as_str(), "ws://localhost:1/v1/ws?token=x");
        let u = ws_url("https://edge.example/prefix", "x").unwrap();
        assert_eq!(u.as_str(), "wss://edge.example/prefix/v1/ws?token=x");
        assert!(ws_url("ftp://h", "x").is_err());
        assert!(ws_url("not a url", "x").is_err());
    }

    #[test]
    fn json_writer_uses_api_md_shapes() {
        let join = frame::client(pb::client_frame::Body::Join(pb::Join {
            channel: "room:42".into(),
        }));
        match to_message(&join, Transport::WsJson) {
            Some(Message::Text(t)) => {
                assert_eq!(t.as_str(), r#"{"type":"join","channel":"room:42"}"#)
            }
            other => panic!("unexpected {other:?}"),
        }
        match to_message(&crate::session::ping_frame(), Transport::WsJson) {
            Some(Message::Text(t)) => assert_eq!(t.as_str(), r#"{"type":"ping"}"#),
            other => panic!("unexpected {other:?}"),
        }
        assert!(matches!(
            to_message(&join, Transport::WsPb),
            Some(Message::Binary(_))
        ));
    }
}
