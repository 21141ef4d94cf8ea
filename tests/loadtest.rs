//! The load harness's own accounting, against a real standalone server:
//! 2,000 viewers (counting and probe, WebSocket pb/JSON and QUIC, in two worker
//! processes) see zero loss; and through a relay that drops every fifth batch
//! frame the harness reports exactly the events the relay dropped.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use danmaku_loadtest::config::{parse_mix, senders_for_rate};
use danmaku_loadtest::scenario::Scenario;
use danmaku_loadtest::wire::{OP_BINARY, parse_frame};
use danmaku_loadtest::{LoadtestConfig, Peer};
use danmaku_proto::pb::{self, server_frame::Body};
use prost::Message;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Danmaku and gifts per second over all rooms, and for how long.
const DANMAKU_RATE: f64 = 40.0;
const GIFT_RATE: f64 = 2.0;
const POSTING: Duration = Duration::from_secs(5);

fn config(target: &str, viewers: usize, rooms: usize) -> LoadtestConfig {
    let mut scenario = Scenario::uniform(viewers, rooms, DANMAKU_RATE, GIFT_RATE, POSTING);
    scenario.duration = POSTING;
    LoadtestConfig {
        target: target.to_owned(),
        auth_secret: Some(common::SECRET.into()),
        peer: Peer::Danmaku,
        scenario,
        probe_fraction: 0.05,
        ramp_per_sec: 4000.0,
        drain_grace: Duration::from_secs(3),
        progress: false,
        worker_exe: Some(env!("CARGO_BIN_EXE_danmaku").into()),
        ..LoadtestConfig::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_thousand_viewers_over_two_workers_see_zero_loss() {
    let srv = common::start(|c| c.data = c.data.join("two-thousand")).await;
    let base = srv.base_url();
    let rooms = 4;
    let cfg = LoadtestConfig {
        workers: 2,
        mix: parse_mix("ws-pb=0.8,ws-json=0.15,quic=0.05").unwrap(),
        ..config(&base, 2000, rooms)
    };
    let r = danmaku_loadtest::run(cfg).await.expect("load test runs");
    let text = r.render_text();
    assert_eq!(r.connections_ok, 2000, "{text}");
    assert_eq!(r.connections_failed + r.connections_dropped, 0, "{text}");
    // Every first connect is timed per step, once per viewer.
    for step in danmaku_loadtest::worker::CONNECT_STEPS {
        let l = &r.connect_steps_ms[step];
        assert_eq!(l.count, 2000, "{step}: {text}");
        assert!(l.p50 <= r.connect_ms.max, "{step}: {text}");
    }
    assert!(r.connects_per_s > 0.0, "{text}");
    assert!(r.probes >= 50 && r.counting >= 1900, "{text}");
    assert_eq!(r.wires.len(), 3, "{text}");
    // Nothing refused: each sender asks for its room's rate ÷ its senders (10/s
    // ÷ 3 = 3.3/s) against ingest's default 5/s per user with a burst of 10, and
    // a room's 10/s against 2,000/s per channel (a sender the server delayed
    // catches up at once, which the burst absorbs unless it fell 3 s behind).
    // So every post the senders were
    // asked for is accepted: rate × duration, give or take one tick per sender
    // (each sender's ticks fall on its own grid of `senders ÷ rate`).
    let limits = danmaku_ingest::IngestConfig::default();
    for (what, posts, total_rate) in [
        ("danmaku", &r.danmaku_posts, DANMAKU_RATE),
        ("gifts", &r.gift_posts, GIFT_RATE),
    ] {
        let room_rate = total_rate / rooms as f64;
        let senders = senders_for_rate(room_rate, 1);
        assert!(
            room_rate / senders as f64 <= limits.user_rate_per_sec
                && room_rate <= limits.channel_rate_per_sec,
            "the scenario stays under ingest's limits"
        );
        assert_eq!((posts.rate_limited, posts.failed), (0, 0), "{what}: {text}");
        assert_eq!(posts.attempted, posts.accepted, "{what}: {text}");
        let asked = total_rate * POSTING.as_secs_f64();
        let tolerance = (rooms * senders) as f64;
        assert!(
            (posts.accepted as f64 - asked).abs() <= tolerance,
            "{what}: accepted {} of {asked} asked (± {tolerance}): {text}",
            posts.accepted
        );
    }
    for lane in [&r.danmaku, &r.gifts] {
        let t = &lane.tally;
        assert!(t.expected > 0, "{text}");
        assert_eq!((t.lost, t.excess, t.unexpected), (0, 0, 0), "{text}");
        assert_eq!(t.order_violations, 0, "{text}");
        assert!(lane.latency_ms.count > 0, "probes measured latency: {text}");
    }
    assert_eq!(r.danmaku.tally.received, r.danmaku.tally.expected, "{text}");
    assert_eq!(r.danmaku.tally.duplicates, 0, "{text}");
    // A gift whose ack came late is sent again by the edge (the SDK drops the
    // repeat by seq): repeats are counted, never as loss.
    assert_eq!(
        r.gifts.tally.received,
        r.gifts.tally.expected + r.gifts.tally.duplicates,
        "{text}"
    );
    // 500 viewers per room: the expectation is the room's accepted posts × viewers.
    assert_eq!(
        r.danmaku.tally.expected,
        r.danmaku_posts.accepted * 500,
        "{text}"
    );
    srv.stop().await;
}

/// A relay in front of the edge that drops every fifth `Batch` frame of each
/// connection and counts the events in what it dropped.
async fn lossy_relay(edge: std::net::SocketAddr, dropped: Arc<AtomicU64>) -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((client, _)) = listener.accept().await else {
                continue;
            };
            let dropped = dropped.clone();
            tokio::spawn(async move {
                let Ok(server) = TcpStream::connect(edge).await else {
                    return;
                };
                let (mut cr, mut cw) = client.into_split();
                let (mut sr, mut sw) = server.into_split();
                tokio::spawn(async move {
                    let _ = tokio::io::copy(&mut cr, &mut sw).await;
                    let _ = sw.shutdown().await;
                });
                let mut buf = Vec::new();
                let mut chunk = vec![0u8; 16 << 10];
                let mut head_done = false;
                let mut batches = 0u64;
                loop {
                    let n = match sr.read(&mut chunk).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => n,
                    };
                    buf.extend_from_slice(&chunk[..n]);
                    if !head_done {
                        let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                            continue;
                        };
                        if cw.write_all(&buf[..end + 4]).await.is_err() {
                            return;
                        }
                        buf.drain(..end + 4);
                        head_done = true;
                    }
                    while let Ok(Some(f)) = parse_frame(&buf) {
                        let total = f.header + f.len;
                        let mut pass = true;
                        if f.opcode == OP_BINARY
                            && let Ok(frame) = pb::ServerFrame::decode(&buf[f.header..total])
                            && let Some(Body::Batch(b)) = frame.body
                        {
                            batches += 1;
                            if batches.is_multiple_of(5) {
                                pass = false;
                                // A tick also carries gifts (seqs first..=last):
                                // only its danmaku are lost for good.
                                let gifts = if b.last_seq > 0 {
                                    b.last_seq - b.first_seq + 1
                                } else {
                                    0
                                };
                                dropped.fetch_add(
                                    u64::from(b.count).saturating_sub(gifts),
                                    Ordering::SeqCst,
                                );
                            }
                        }
                        if pass && cw.write_all(&buf[..total]).await.is_err() {
                            return;
                        }
                        buf.drain(..total);
                    }
                }
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lossy_relay_is_reported_exactly() {
    // The relay loses ticks, which TCP never does: their gifts come back only
    // by the stall sweep's resend, 1–1.5 × retransmit_initial after the tick
    // (on rooms, after the room's slower ack pace too: use the connection's
    // here, so the test stays short). A tick lost just before posting ends
    // needs that long past it to be delivered.
    let reliable = danmaku_edge::ReliableConfig::default();
    let resend_by = reliable.retransmit_initial.mul_f32(1.5);
    let srv = common::start(|c| {
        c.data = c.data.join("lossy-relay");
        c.edge.reliable.room_ack_interval = reliable.client_ack_interval;
    })
    .await;
    let dropped = Arc::new(AtomicU64::new(0));
    let relay = lossy_relay(srv.http_addr, dropped.clone()).await;
    let cfg = LoadtestConfig {
        edges: vec![format!("http://{relay}")],
        mix: parse_mix("ws-pb").unwrap(),
        probe_fraction: 0.1,
        drain_grace: resend_by + Duration::from_secs(2),
        ..config(&srv.base_url(), 200, 2)
    };
    let r = danmaku_loadtest::run(cfg).await.expect("load test runs");
    let text = r.render_text();
    assert_eq!(r.connections_ok, 200, "{text}");
    let dropped = dropped.load(Ordering::SeqCst);
    assert!(dropped > 0, "the relay dropped something: {text}");
    assert_eq!(r.danmaku.tally.lost, dropped, "{text}");
    assert_eq!(
        r.danmaku.tally.received + dropped,
        r.danmaku.tally.expected,
        "{text}"
    );
    assert_eq!(
        r.danmaku.tally.excess + r.danmaku.tally.duplicates,
        0,
        "{text}"
    );
    // Gifts of a dropped tick are resent by the edge (the viewer's acks stop
    // short of them): none lost.
    assert_eq!(r.gifts.tally.lost, 0, "{text}");
    assert!(r.gifts.tally.expected > 0, "{text}");
    srv.stop().await;
}
