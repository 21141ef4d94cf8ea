//! The floor: a bare tokio server that writes one prebuilt WebSocket binary
//! frame to every connected socket at a fixed frame rate, and nothing else.
//! Run side by side with the edge (same viewers, same frame size and rate, see
//! `--bare-writer`), frames written per server CPU-second give the ratio of
//! the edge's fan-out to what the kernel and tokio allow on this machine.
//!
//! It runs as its own process (`danmaku loadtest-bare-server`) so its CPU is
//! read from `/proc` like the edge's. Protocol on stdin/stdout, one JSON line
//! each: the [`BareSpec`] in, `{"listening":ADDR}` out; then `go`, `stop` in and
//! the [`BareStats`] out. The frame is a real `ServerFrame` `Batch` for the
//! viewers' room claiming `events_per_frame` events, so counting viewers count
//! it like an edge's batch.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use bytes::Bytes;
use danmaku_proto::frame;
use danmaku_proto::pb::{self, server_frame::Body};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::sync::Mutex;

use crate::wire::{OP_BINARY, server_frame};

/// What the bare writer writes.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BareSpec {
    pub listen: String,
    pub room: String,
    /// Size of the whole WebSocket frame, bytes.
    pub frame_bytes: usize,
    /// Frames per second to every socket.
    pub frame_rate: f64,
    pub events_per_frame: u32,
}

/// What it did between `go` and `stop`.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct BareStats {
    pub connections: u64,
    pub frames_written: u64,
    pub write_errors: u64,
}

/// The prebuilt frame: a `Batch` padded so the WebSocket frame is `frame_bytes`.
pub fn prebuilt_frame(room: &str, frame_bytes: usize, events: u32) -> Bytes {
    let build = |pad: usize| {
        let f = frame::server(Body::Batch(pb::Batch {
            channel: room.to_owned(),
            codec: pb::Codec::Raw as i32,
            dict_id: 0,
            count: events,
            payload: Bytes::from(vec![b' '; pad]),
            ..Default::default()
        }));
        server_frame(OP_BINARY, &frame::encode(&f))
    };
    let base = build(0).len();
    let mut pad = frame_bytes.saturating_sub(base);
    // Length prefixes grow with the payload: shrink until it fits.
    while pad > 0 && build(pad).len() > frame_bytes {
        pad -= 1;
    }
    Bytes::from(build(pad))
}

fn hello_frames(room: &str) -> Vec<u8> {
    let mut out = server_frame(
        OP_BINARY,
        &frame::encode(&frame::server(Body::AuthOk(pb::AuthOk {
            user: "bare".into(),
            ack_interval_ms: 0,
        }))),
    );
    out.extend(server_frame(
        OP_BINARY,
        &frame::encode(&frame::server(Body::Joined(pb::Joined {
            channel: room.to_owned(),
            last_seq: 0,
            ..Default::default()
        }))),
    ));
    out
}

const SHARDS: usize = 8;

/// Runs the bare writer process (stdin/stdout protocol in the module docs).
pub async fn process_main() -> std::io::Result<()> {
    let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    let spec: BareSpec = serde_json::from_str(&lines.next_line().await?.unwrap_or_default())
        .map_err(|e| std::io::Error::other(format!("bare spec: {e}")))?;
    let listener = TcpListener::bind(&spec.listen).await?;
    let mut stdout = tokio::io::stdout();
    let line = serde_json::json!({"listening": listener.local_addr()?.to_string()}).to_string();
    stdout.write_all(format!("{line}\n").as_bytes()).await?;
    stdout.flush().await?;

    let frame = prebuilt_frame(&spec.room, spec.frame_bytes, spec.events_per_frame);
    let hello = Bytes::from(hello_frames(&spec.room));
    let shards: Arc<Vec<Mutex<Vec<OwnedWriteHalf>>>> =
        Arc::new((0..SHARDS).map(|_| Mutex::new(Vec::new())).collect());
    let going = Arc::new(AtomicBool::new(false));
    let written = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let accepted = Arc::new(AtomicU64::new(0));

    // Accept: answer the upgrade, send auth_ok + joined, park the write half.
    {
        let (shards, hello, accepted) = (shards.clone(), hello.clone(), accepted.clone());
        tokio::spawn(async move {
            loop {
                let Ok((mut s, _)) = listener.accept().await else {
                    continue;
                };
                let (shards, hello, accepted) = (shards.clone(), hello.clone(), accepted.clone());
                tokio::spawn(async move {
                    let _ = s.set_nodelay(true);
                    let mut buf = Vec::with_capacity(1024);
                    let mut chunk = [0u8; 1024];
                    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                        match s.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                        if buf.len() > 16 << 10 {
                            return;
                        }
                    }
                    let mut resp = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: bare\r\n\r\n".to_vec();
                    resp.extend_from_slice(&hello);
                    if s.write_all(&resp).await.is_err() {
                        return;
                    }
                    let (_read, write) = s.into_split();
                    // The read half is dropped: client pings just sit in the kernel buffer.
                    let n = accepted.fetch_add(1, Relaxed) as usize;
                    shards[n % SHARDS].lock().await.push(write);
                });
            }
        });
    }

    // Writers: one task per shard, one tick per frame period.
    let period = Duration::from_secs_f64(1.0 / spec.frame_rate.max(0.001));
    for i in 0..SHARDS {
        let (shards, frame, going, written, errors) = (
            shards.clone(),
            frame.clone(),
            going.clone(),
            written.clone(),
            errors.clone(),
        );
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                if !going.load(Relaxed) {
                    continue;
                }
                let mut conns = shards[i].lock().await;
                let mut k = 0;
                while k < conns.len() {
                    if conns[k].write_all(&frame).await.is_ok() {
                        written.fetch_add(1, Relaxed);
                        k += 1;
                    } else {
                        errors.fetch_add(1, Relaxed);
                        conns.swap_remove(k);
                    }
                }
            }
        });
    }

    while let Some(cmd) = lines.next_line().await? {
        match cmd.trim() {
            "go" => {
                written.store(0, Relaxed);
                going.store(true, Relaxed);
            }
            "stop" => {
                going.store(false, Relaxed);
                let stats = BareStats {
                    connections: accepted.load(Relaxed),
                    frames_written: written.load(Relaxed),
                    write_errors: errors.load(Relaxed),
                };
                let line = serde_json::to_string(&stats).unwrap_or_default();
                stdout.write_all(format!("{line}\n").as_bytes()).await?;
                stdout.flush().await?;
                return Ok(());
            }
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::counting::{self, ViewerCounts, Wire};
    use crate::wire::parse_frame;

    #[test]
    fn the_prebuilt_frame_has_the_asked_size_and_counts_as_a_batch() {
        for size in [100usize, 300, 1000, 5000] {
            let f = prebuilt_frame("room:b", size, 50);
            assert!(
                f.len() <= size && f.len() + 3 >= size,
                "{size} → {}",
                f.len()
            );
            let h = parse_frame(&f).unwrap().unwrap();
            let mut c = ViewerCounts::new(false);
            counting::on_message(
                &mut c,
                Wire::WsPb,
                "room:b",
                &f[h.header..],
                0,
                &mut |_, _| {},
            );
            assert_eq!((c.danmaku, c.frames), (50, 1));
        }
    }
}
