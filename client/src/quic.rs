//! QUIC transport (quinn), ALPN `danmaku/2` (dense batches, zstd dictionary
//! 1), falling back to `danmaku/1`.
//!
//! The client opens ONE bidirectional control stream and sends `Auth{token}`
//! first; control frames go both ways on it, varint length-prefixed. Danmaku
//! batches arrive in order on a server-opened unidirectional stream
//! (length-prefixed). Datagrams (one `ServerFrame` each, as older edges sent
//! small batches) are still read: every frame is fed into the same event
//! queue. A full event queue stops reading, so QUIC flow control tells the
//! edge, which drops (and counts) batches rather than buffering them.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use danmaku_proto::framing::{FrameReader, encode_prefixed};
use danmaku_proto::pb::{self, client_frame::Body};
use danmaku_proto::{Limits, frame};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::config::ClientConfig;
use crate::config::Transport;
use crate::error::ClientError;
use crate::event;
use crate::event::ServerEvent;
use crate::session::{Connected, Wiring, deliver};
use crate::tls::ServerTrust;

/// ALPN protocol id of danmaku over QUIC with plain batches.
pub const ALPN: &[u8] = b"danmaku/1";
/// ALPN of danmaku over QUIC with dense batches and zstd dictionary 1,
/// offered first; an edge that predates it answers `danmaku/1`.
pub const ALPN_DENSE: &[u8] = b"danmaku/2";
/// What the client offers, preferred first.
const OFFERED: &[&[u8]] = &[ALPN_DENSE, ALPN];
/// Name of the development certificate an edge makes for itself (it is pinned, so
/// the name is not checked).
pub const SERVER_NAME: &str = "localhost";
/// QUIC-level keep-alive, so an idle connection outlives the idle timeout even
/// with a long application heartbeat.
const KEEP_ALIVE: Duration = Duration::from_secs(10);

/// The rustls configuration: trusts exactly `cert_der` (a pin), or with `None`
/// the system's roots (see [`crate::tls::ServerTrust`]).
pub fn tls_config(cert_der: Option<Vec<u8>>) -> Result<rustls::ClientConfig, ClientError> {
    let trust = cert_der.map_or(ServerTrust::SystemRoots, ServerTrust::Pinned);
    crate::tls::client_config(&trust, None, OFFERED)
}

fn quic_err(e: impl std::fmt::Display) -> ClientError {
    ClientError::Quic(e.to_string())
}

/// Connects, sends `Auth`, and spawns the control-stream, datagram,
/// unidirectional-stream and writer tasks.
pub(crate) async fn connect(
    addr: SocketAddr,
    cert_der: Option<Vec<u8>>,
    token: &str,
    config: &ClientConfig,
) -> Result<Connected, ClientError> {
    // An explicit certificate is a pin; else `config.server_trust`, for the name in
    // `config.tls_server_name` or the address itself.
    let trust = match cert_der {
        Some(der) => ServerTrust::Pinned(der),
        None => config.server_trust.clone(),
    };
    let tls = crate::tls::client_config(&trust, None, OFFERED)?;
    let server_name = match &config.tls_server_name {
        Some(name) => name.clone(),
        None => addr.ip().to_string(),
    };
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls)
        .map_err(|e| ClientError::Tls(e.to_string()))?;
    let mut client_config = quinn::ClientConfig::new(Arc::new(crypto));
    let mut transport = quinn::TransportConfig::default();
    transport.keep_alive_interval(Some(KEEP_ALIVE));
    client_config.transport_config(Arc::new(transport));

    let local_ip = config.local_addr.unwrap_or(if addr.is_ipv4() {
        IpAddr::V4(Ipv4Addr::UNSPECIFIED)
    } else {
        IpAddr::V6(Ipv6Addr::UNSPECIFIED)
    });
    let mut endpoint = quinn::Endpoint::client(SocketAddr::new(local_ip, 0))?;
    endpoint.set_default_client_config(client_config);
    let conn = endpoint
        .connect(addr, &server_name)
        .map_err(quic_err)?
        .await
        .map_err(quic_err)?;
    let (mut send, recv) = conn.open_bi().await.map_err(quic_err)?;
    let auth = frame::client(Body::Auth(pb::Auth {
        token: token.to_owned(),
    }));
    send.write_all(&encode_prefixed(&frame::encode(&auth)))
        .await
        .map_err(quic_err)?;
    debug!(%addr, "quic connected");

    let wiring = Wiring::new(config.event_buffer);
    let limits = config.limits;
    let cancel = wiring.cancel.clone();
    // Control stream: its end is the end of the session.
    tokio::spawn({
        let (events, cancel) = (wiring.events_tx.clone(), cancel.clone());
        async move {
            read_stream(recv, limits, &events, &cancel, "control").await;
            cancel.cancel();
        }
    });
    tokio::spawn(read_datagrams(
        conn.clone(),
        limits,
        wiring.events_tx.clone(),
        cancel.clone(),
    ));
    tokio::spawn(accept_uni(
        conn.clone(),
        limits,
        wiring.events_tx,
        cancel.clone(),
    ));
    tokio::spawn(write_loop(send, wiring.out_rx, cancel.clone()));
    // Closes the connection once anything ends it (or the client is dropped);
    // holds the endpoint so its driver lives as long as the connection.
    tokio::spawn(async move {
        cancel.cancelled().await;
        conn.close(0u32.into(), b"bye");
        endpoint.wait_idle().await;
    });
    Ok(Connected {
        transport: Transport::Quic,
        outgoing: wiring.out_tx,
        events: wiring.events_rx,
        cancel: wiring.cancel,
    })
}

/// Reads length-prefixed frames from one stream until it ends or fails.
/// Returns normally on a clean finish; a decode error cancels the session.
async fn read_stream(
    mut recv: quinn::RecvStream,
    limits: Limits,
    events: &mpsc::Sender<ServerEvent>,
    cancel: &CancellationToken,
    which: &'static str,
) {
    let mut reader = FrameReader::new(limits.max_frame_bytes);
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = tokio::select! {
            _ = cancel.cancelled() => return,
            r = recv.read(&mut buf) => match r {
                Ok(Some(n)) => n,
                Ok(None) => {
                    debug!(stream = which, "quic stream finished");
                    return;
                }
                Err(e) => {
                    debug!(stream = which, error = %e, "quic stream read ended");
                    return;
                }
            },
        };
        reader.push(&buf[..n]);
        match drain_frames(&mut reader, &limits) {
            Ok(evs) => {
                if !deliver(events, cancel, evs).await {
                    return;
                }
            }
            Err(e) => {
                warn!(stream = which, error = %e, "closing connection");
                cancel.cancel();
                return;
            }
        }
    }
}

/// Takes every complete frame out of `reader` and decodes it.
pub fn drain_frames(
    reader: &mut FrameReader,
    limits: &Limits,
) -> Result<Vec<ServerEvent>, ClientError> {
    let mut out = Vec::new();
    while let Some(f) = reader.next_frame()? {
        out.extend(event::decode_pb_events(&f, limits)?);
    }
    Ok(out)
}

async fn read_datagrams(
    conn: quinn::Connection,
    limits: Limits,
    events: mpsc::Sender<ServerEvent>,
    cancel: CancellationToken,
) {
    loop {
        let dgram = tokio::select! {
            _ = cancel.cancelled() => break,
            d = conn.read_datagram() => match d {
                Ok(d) => d,
                Err(e) => {
                    debug!(error = %e, "quic connection ended");
                    break;
                }
            },
        };
        match event::decode_pb_events(&dgram, &limits) {
            Ok(evs) => {
                if !deliver(&events, &cancel, evs).await {
                    break;
                }
            }
            Err(e) => {
                warn!(error = %ClientError::Proto(e), "bad datagram, closing connection");
                break;
            }
        }
    }
    cancel.cancel();
}

async fn accept_uni(
    conn: quinn::Connection,
    limits: Limits,
    events: mpsc::Sender<ServerEvent>,
    cancel: CancellationToken,
) {
    loop {
        let recv = tokio::select! {
            _ = cancel.cancelled() => break,
            r = conn.accept_uni() => match r {
                Ok(r) => r,
                Err(e) => {
                    debug!(error = %e, "quic connection ended");
                    break;
                }
            },
        };
        let (events, cancel) = (events.clone(), cancel.clone());
        tokio::spawn(async move {
            read_stream(recv, limits, &events, &cancel, "uni").await;
        });
    }
    cancel.cancel();
}

async fn write_loop(
    mut send: quinn::SendStream,
    mut outgoing: mpsc::Receiver<pb::ClientFrame>,
    cancel: CancellationToken,
) {
    loop {
        let frame = tokio::select! {
            _ = cancel.cancelled() => break,
            f = outgoing.recv() => match f {
                Some(f) => f,
                None => break,
            },
        };
        if let Err(e) = send
            .write_all(&encode_prefixed(&frame::encode(&frame)))
            .await
        {
            debug!(error = %e, "quic write failed");
            break;
        }
    }
    let _ = send.finish();
    cancel.cancel();
}

#[cfg(test)]
mod tests {
    use super::*;
    use danmaku_proto::BatchEncoder;
    use danmaku_proto::pb::server_frame;
    use danmaku_proto::sample::CommentGenerator;

    fn wire(f: &pb::ServerFrame) -> Vec<u8> {
        encode_prefixed(&frame::encode(f)).to_vec()
    }

    #[test]
    fn stream_frames_fed_in_pieces() {
        let events = CommentGenerator::new(1).events(50, 10);
        let batch = BatchEncoder::default().encode("room:1", &events).unwrap();
        let frames = [
            frame::server(server_frame::Body::AuthOk(pb::AuthOk {
                user: "u".into(),
                ack_interval_ms: 0,
            })),
            frame::server(server_frame::Body::Joined(pb::Joined {
                channel: "room:1".into(),
                last_seq: 0,
                ..Default::default()
            })),
            frame::server(server_frame::Body::Batch(batch)),
            frame::server(server_frame::Body::Pong(pb::Pong { ts_ms: 1 })),
        ];
        let bytes: Vec<u8> = frames.iter().flat_map(wire).collect();
        let limits = Limits::default();
        for chunk in [1, 3, 7, 100, bytes.len()] {
            let mut reader = FrameReader::new(limits.max_frame_bytes);
            let mut got = Vec::new();
            for piece in bytes.chunks(chunk) {
                reader.push(piece);
                got.extend(drain_frames(&mut reader, &limits).unwrap());
            }
            assert_eq!(got.len(), 4, "chunk {chunk}");
            assert_eq!(
                got[0],
                ServerEvent::AuthOk {
                    user: "u".into(),
                    ack_interval_ms: 0
                }
            );
            assert_eq!(
                got[2],
                ServerEvent::Batch {
                    channel: "room:1".into(),
                    events: events.clone()
                }
            );
            assert_eq!(got[3], ServerEvent::Pong);
            assert_eq!(reader.buffered(), 0);
        }
    }

    #[test]
    fn stream_refuses_oversize_and_garbage() {
        let limits = Limits {
            max_frame_bytes: 16,
            ..Limits::default()
        };
        let mut reader = FrameReader::new(limits.max_frame_bytes);
        reader.push(&encode_prefixed(&[0u8; 17]));
        assert!(matches!(
            drain_frames(&mut reader, &limits),
            Err(ClientError::Proto(e)) if e.code() == "frame_too_large"
        ));
        let mut reader = FrameReader::new(limits.max_frame_bytes);
        reader.push(&encode_prefixed(&[0xff, 0xff, 0xff]));
        assert!(matches!(
            drain_frames(&mut reader, &limits),
            Err(ClientError::Proto(_))
        ));
    }

    #[test]
    fn tls_configs_build_with_ring() {
        let any = crate::tls::client_config(&ServerTrust::InsecureAcceptAny, None, OFFERED);
        let cfg = any.unwrap();
        assert_eq!(cfg.alpn_protocols, vec![ALPN_DENSE.to_vec(), ALPN.to_vec()]);
        assert!(quinn::crypto::rustls::QuicClientConfig::try_from(cfg).is_ok());
        // Not a certificate: refused with a typed error, no panic.
        assert!(tls_config(Some(vec![1, 2, 3])).is_err());
        let garbage = ServerTrust::AddedRoots(vec![vec![1, 2, 3]]);
        assert!(crate::tls::client_config(&garbage, None, &[ALPN]).is_err());
    }
}
