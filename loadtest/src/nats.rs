//! Peer mode: the same workload through NATS over its WebSocket listener, one
//! message per event on subject `room.<id>`, so the report compares danmaku
//! with a well-known broker on deliveries per CPU-second, latency, bytes per
//! delivered message and memory per connection.
//!
//! NATS speaks text over WebSocket: the server opens with `INFO {…}`, a client
//! sends `CONNECT {…}` and `SUB <subject> <sid>`, a publisher `PUB <subject>
//! <len>\r\n<payload>\r\n`, and subscribers receive `MSG <subject> <sid> <len>`.
//! A publisher here is one connection per room; it posts the room's danmaku
//! (`lt <room> <n> …`) and gifts (`lt <room> <n> gift`, kind `gift`) at the
//! scenario's rates, then flushes with `PING`/`PONG`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use danmaku_proto::sample::CommentGenerator;
use tokio::time::{Instant, MissedTickBehavior};

use crate::counting::{event_json, nats_subject};
use crate::tally::post_text;
use crate::wire::{OP_TEXT, WsConn, WsTarget};

/// What one room's publisher sent.
#[derive(Debug, Default)]
pub struct Published {
    pub danmaku: Vec<u64>,
    pub gifts: Vec<u64>,
    pub raw_json_bytes: u64,
    /// NATS stopped reading from the publisher (it fans out on the publisher's
    /// read loop, so slow subscribers stall it) past the deadline + 10 s.
    pub stalled: bool,
}

async fn handshake(conn: &mut WsConn) -> std::io::Result<()> {
    loop {
        match conn.next().await? {
            Some((_, d)) if d.starts_with(b"INFO ") => break,
            Some(_) => {}
            None => return Err(std::io::Error::other("NATS closed before INFO")),
        }
    }
    conn.send(
        OP_TEXT,
        b"CONNECT {\"verbose\":false,\"pedantic\":false}\r\n",
    )
    .await
}

async fn flush(conn: &mut WsConn) -> std::io::Result<()> {
    conn.send(OP_TEXT, b"PING\r\n").await?;
    loop {
        match conn.next().await? {
            Some((_, d)) if d.windows(4).any(|w| w == b"PONG") => return Ok(()),
            Some((_, d)) if d.starts_with(b"PING") => conn.send(OP_TEXT, b"PONG\r\n").await?,
            Some(_) => {}
            None => return Err(std::io::Error::other("NATS closed before PONG")),
        }
    }
}

/// Publishes room `room_idx`'s events until `deadline`.
#[allow(clippy::too_many_arguments)]
pub async fn run_publisher(
    target: WsTarget,
    room_idx: u32,
    room: String,
    danmaku_rate: f64,
    gift_rate: f64,
    start: Instant,
    deadline: Instant,
    posted: Arc<AtomicU64>,
) -> Result<Published, String> {
    let mut conn = WsConn::connect(&target, "", None, None)
        .await
        .map_err(|e| format!("NATS publisher: {e}"))?;
    handshake(&mut conn)
        .await
        .map_err(|e| format!("NATS publisher: {e}"))?;
    let subject = nats_subject(&room);
    let sender = format!("lt-sender-{room_idx}");
    let mut out = Published::default();
    let mut comments = CommentGenerator::new(u64::from(room_idx) + 1);
    let far = Duration::from_secs(1 << 20);
    let period = |r: f64| {
        if r > 0.0 {
            Duration::from_secs_f64(1.0 / r)
        } else {
            far
        }
    };
    let mut d_tick = tokio::time::interval_at(start, period(danmaku_rate));
    let mut g_tick =
        tokio::time::interval_at(start + period(gift_rate.max(1e-6)) / 2, period(gift_rate));
    d_tick.set_missed_tick_behavior(MissedTickBehavior::Burst);
    g_tick.set_missed_tick_behavior(MissedTickBehavior::Burst);
    let end = tokio::time::sleep_until(deadline);
    tokio::pin!(end);
    let (mut dn, mut gn) = (0u64, 0u64);
    let give_up = deadline + Duration::from_secs(10);
    loop {
        if Instant::now() >= deadline {
            break;
        }
        let (kind, n, text) = tokio::select! {
            _ = &mut end => break,
            _ = d_tick.tick() => { let t = post_text(room_idx, dn, &comments.text()); dn += 1; ("danmaku", dn - 1, t) }
            _ = g_tick.tick() => { let t = post_text(room_idx, gn, "gift"); gn += 1; ("gift", gn - 1, t) }
            m = conn.next() => {
                match m {
                    Ok(Some((_, d))) if d.starts_with(b"PING") => {
                        conn.send(OP_TEXT, b"PONG\r\n").await.map_err(|e| e.to_string())?;
                    }
                    Ok(Some(_)) => {}
                    _ => return Err("NATS publisher connection closed".into()),
                }
                continue;
            }
        };
        let payload = event_json(kind, &sender, &text, danmaku_proto::now_ms());
        let msg = format!("PUB {subject} {}\r\n{payload}\r\n", payload.len());
        match tokio::time::timeout_at(give_up, conn.send(OP_TEXT, msg.as_bytes())).await {
            Ok(r) => r.map_err(|e| format!("NATS publish: {e}"))?,
            Err(_) => {
                out.stalled = true;
                return Ok(out);
            }
        }
        out.raw_json_bytes += payload.len() as u64;
        posted.fetch_add(1, Ordering::Relaxed);
        if kind == "gift" {
            out.gifts.push(n + 1);
        } else {
            out.danmaku.push(n);
        }
    }
    flush(&mut conn)
        .await
        .map_err(|e| format!("NATS flush: {e}"))?;
    conn.close().await;
    Ok(out)
}
