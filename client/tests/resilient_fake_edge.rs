//! `ResilientClient` against two scripted fake edges (JSON WebSocket): the
//! first sends seqs 1..=5 with a duplicate and a reordering and then dies; the
//! client moves to the second, re-joins, resumes after 5 and gets 6..=7.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use danmaku_client::{ClientConfig, EdgeTarget, ResilientClient, ServerEvent, Transport};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
use tokio_tungstenite::tungstenite::http::HeaderValue;

/// Client frames a fake edge received.
type Log = Arc<Mutex<Vec<Value>>>;

/// A client of the one fake edge at `addr`, over JSON WebSocket.
async fn connect_json(addr: SocketAddr, config: ClientConfig) -> ResilientClient {
    ResilientClient::connect(
        vec![EdgeTarget::new(
            &format!("http://{addr}"),
            Transport::WsJson,
        )],
        "tok".into(),
        config,
    )
    .await
    .unwrap()
}

fn reliable(seq: u64) -> String {
    json!({"type":"reliable","channel":"group:7","seq":seq,
           "event":{"kind":"chat","sender":"bob","text":format!("m{seq}"),"ts_ms":1}})
    .to_string()
}

/// Serves one WebSocket connection: auth_ok, then `script(frame)` answers each
/// client frame with text frames; `None` closes the connection.
async fn fake_edge<F>(script: F) -> (SocketAddr, Log)
where
    F: Fn(&Value) -> Option<Vec<String>> + Send + 'static,
{
    fake_edge_with(r#"{"type":"auth_ok","user":"amy"}"#, script).await
}

/// [`fake_edge`] with its own `auth_ok`. Logged frames get `_at_ms`: when
/// they arrived, in ms since the edge started.
async fn fake_edge_with<F>(auth_ok: &'static str, script: F) -> (SocketAddr, Log)
where
    F: Fn(&Value) -> Option<Vec<String>> + Send + 'static,
{
    let started = std::time::Instant::now();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let log: Log = Arc::default();
    let log2 = log.clone();
    tokio::spawn(async move {
        let Ok((stream, _)) = listener.accept().await else {
            return;
        };
        #[allow(clippy::result_large_err)] // the signature tungstenite asks for
        let cb = |_req: &Request, mut resp: Response| {
            resp.headers_mut().insert(
                "Sec-WebSocket-Protocol",
                HeaderValue::from_static("danmaku.v1.json"),
            );
            Ok(resp)
        };
        let mut ws = tokio_tungstenite::accept_hdr_async(stream, cb)
            .await
            .unwrap();
        ws.send(Message::text(auth_ok)).await.unwrap();
        while let Some(Ok(msg)) = ws.next().await {
            let Message::Text(t) = msg else { continue };
            let frame: Value = serde_json::from_str(&t).unwrap();
            let mut logged = frame.clone();
            logged["_at_ms"] = json!(started.elapsed().as_millis() as u64);
            log2.lock().unwrap().push(logged);
            match script(&frame) {
                Some(out) => {
                    for o in out {
                        ws.send(Message::text(o)).await.unwrap();
                    }
                }
                None => {
                    let _ = ws.close(None).await;
                    return;
                }
            }
        }
        // Keep the listener alive until the client goes (drop after).
        drop(listener);
    });
    (addr, log)
}

fn ty(f: &Value) -> &str {
    f["type"].as_str().unwrap_or_default()
}

#[tokio::test]
async fn survives_edge_loss_without_loss_or_duplicates() {
    // Edge A: on join, 1 2 3 2(dup) 5(early) 4; on the first ack of 5, dies.
    let (a, log_a) = fake_edge(|f| match ty(f) {
        "join" => Some(vec![
            json!({"type":"joined","channel":"group:7","last_seq":0}).to_string(),
            reliable(1),
            reliable(2),
            reliable(3),
            reliable(2),
            reliable(5),
            reliable(4),
        ]),
        "ack" if f["seq"] == 5 => None,
        _ => Some(vec![]),
    })
    .await;
    // Edge B: replays after the resume point.
    let (b, log_b) = fake_edge(|f| match ty(f) {
        "join" => Some(vec![
            json!({"type":"joined","channel":"group:7","last_seq":7}).to_string(),
        ]),
        "resume" => {
            let after = f["after_seq"].as_u64().unwrap();
            Some(((after + 1)..=7).map(reliable).collect())
        }
        _ => Some(vec![]),
    })
    .await;

    let edges = vec![
        EdgeTarget::new(&format!("http://{a}"), Transport::WsJson),
        EdgeTarget::new(&format!("http://{b}"), Transport::WsJson),
    ];
    let config = ClientConfig {
        max_reconnect_time: Duration::from_secs(10),
        ..ClientConfig::default()
    };
    let mut c = ResilientClient::connect(edges, "tok".into(), config)
        .await
        .unwrap();
    assert_eq!(c.current_edge(), format!("http://{a}"));
    c.join("group:7").await.unwrap();

    let mut seqs = Vec::new();
    let mut reconnected = Vec::new();
    let mut joined = 0;
    tokio::time::timeout(Duration::from_secs(10), async {
        while seqs.len() < 7 {
            match c.next_event().await.expect("client gave up") {
                ServerEvent::Reliable { seq, event, .. } => {
                    assert_eq!(event.text, format!("m{seq}"));
                    seqs.push(seq);
                }
                ServerEvent::Reconnected { edge } => reconnected.push(edge),
                ServerEvent::Joined { .. } => joined += 1,
                other => panic!("unexpected {other:?}"),
            }
        }
    })
    .await
    .expect("all seven in time");

    assert_eq!(seqs, (1..=7).collect::<Vec<_>>());
    assert_eq!(reconnected, vec![format!("http://{b}")]);
    assert_eq!(joined, 2);
    assert_eq!(c.reconnects(), 1);
    assert_eq!(c.current_edge(), format!("http://{b}"));
    assert_eq!(c.delivered_upto("group:7"), 7);

    let a_frames = log_a.lock().unwrap().clone();
    assert!(
        a_frames.iter().any(|f| ty(f) == "ack" && f["seq"] == 5),
        "cumulative ack of 5 on A: {a_frames:?}"
    );
    // B got join, then resume after 5, then an ack of 7 (held back up to the
    // ack interval, sent while the application waits for more).
    let _ = tokio::time::timeout(Duration::from_millis(500), c.next_event()).await;
    let b_frames = log_b.lock().unwrap().clone();
    let kinds: Vec<&str> = b_frames.iter().map(ty).collect();
    assert_eq!(&kinds[..2], ["join", "resume"], "{b_frames:?}");
    assert_eq!(b_frames[1]["after_seq"], 5);
    assert!(
        b_frames.iter().any(|f| ty(f) == "ack" && f["seq"] == 7),
        "{b_frames:?}"
    );
}

#[tokio::test]
async fn gives_up_after_max_reconnect_time() {
    let (a, _log) = fake_edge(|f| match ty(f) {
        "join" => None,
        _ => Some(vec![]),
    })
    .await;
    let config = ClientConfig {
        max_reconnect_time: Duration::from_millis(800),
        ..ClientConfig::default()
    };
    let mut c = connect_json(a, config).await;
    c.join("room:1").await.unwrap();
    let started = std::time::Instant::now();
    let ev = tokio::time::timeout(Duration::from_secs(5), c.next_event())
        .await
        .expect("gives up in time");
    assert_eq!(ev, None);
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(700), "{took:?}");
    assert_eq!(c.reconnects(), 0);
}

#[tokio::test]
async fn acks_at_most_once_per_interval_and_sends_the_held_back_one() {
    // On join: 60 seqs at once. The client acks the first batch at once and the
    // rest when the interval ends, not once per seq (each would cost the edge a
    // frame of the connection's budget).
    let (a, log) = fake_edge(|f| match ty(f) {
        "join" => Some((1..=60).map(reliable).collect()),
        _ => Some(vec![]),
    })
    .await;
    let config = ClientConfig {
        ack_interval: Duration::from_millis(300),
        ..ClientConfig::default()
    };
    let mut c = connect_json(a, config).await;
    c.join("group:7").await.unwrap();
    let mut seqs = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), async {
        while seqs.len() < 60 {
            if let Some(ServerEvent::Reliable { seq, .. }) = c.next_event().await {
                seqs.push(seq);
                // A slow application: the seqs trickle out over ~600 ms.
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        // Waiting for more: the held-back ack of 60 goes out meanwhile.
        let _ = tokio::time::timeout(Duration::from_millis(800), c.next_event()).await;
    })
    .await
    .expect("all 60 in time");
    assert_eq!(seqs, (1..=60).collect::<Vec<_>>());
    let acks: Vec<u64> = log
        .lock()
        .unwrap()
        .iter()
        .filter(|f| ty(f) == "ack")
        .map(|f| f["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(acks.last(), Some(&60), "the last seq is acked: {acks:?}");
    assert!(
        acks.len() <= 5,
        "about one ack per 300 ms over ~600 ms, not one per seq: {acks:?}"
    );
    assert!(acks.windows(2).all(|w| w[0] < w[1]), "{acks:?}");
}

/// A caught-up client on a fake edge that sends a new seq on every ping
/// (every 50 ms) and answers the join with `joined`: the acks it logged
/// (arrival ms, seq) once 30 seqs and one more `min_gap_ms` went by.
async fn acks_of_a_caught_up_client(auth_ok: &'static str, joined: Value) -> Vec<(u64, u64)> {
    let next = Arc::new(Mutex::new(1u64));
    let (a, log) = fake_edge_with(auth_ok, {
        let next = next.clone();
        move |f| match ty(f) {
            "join" => Some(vec![joined.to_string()]),
            "ping" => {
                let mut n = next.lock().unwrap();
                *n += 1;
                Some(vec![reliable(*n - 1)])
            }
            _ => Some(vec![]),
        }
    })
    .await;
    let config = ClientConfig {
        heartbeat_interval: Duration::from_millis(50),
        ack_interval: Duration::from_millis(10),
        ..ClientConfig::default()
    };
    let mut c = connect_json(a, config).await;
    c.join("group:7").await.unwrap();
    let mut seqs = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), async {
        while seqs.len() < 30 {
            if let Some(ServerEvent::Reliable { seq, .. }) = c.next_event().await {
                seqs.push(seq);
            }
        }
        // Keep reading (new seqs keep coming) past one more interval.
        let until = tokio::time::Instant::now() + Duration::from_millis(1_000);
        while let Ok(Some(ev)) = tokio::time::timeout_at(until, c.next_event()).await {
            if let ServerEvent::Reliable { seq, .. } = ev {
                seqs.push(seq);
            }
        }
    })
    .await
    .expect("30 seqs in time");
    assert_eq!(seqs[..30], (1..=30).collect::<Vec<_>>());
    let acks: Vec<(u64, u64)> = log
        .lock()
        .unwrap()
        .iter()
        .filter(|f| ty(f) == "ack")
        .map(|f| (f["_at_ms"].as_u64().unwrap(), f["seq"].as_u64().unwrap()))
        .collect();
    assert!(acks.len() >= 2, "{acks:?}");
    assert!(
        acks.last().unwrap().1 >= 30,
        "the last seq is acked: {acks:?}"
    );
    acks
}

#[tokio::test]
async fn a_caught_up_client_acks_no_faster_than_the_edge_asked() {
    // The edge asks for acks every 400 ms at most. The client is always caught
    // up, so without the edge's pace it would ack each seq at once: ~20 acks a
    // second.
    let acks = acks_of_a_caught_up_client(
        r#"{"type":"auth_ok","user":"amy","ack_interval_ms":400}"#,
        json!({"type":"joined","channel":"group:7","last_seq":0}),
    )
    .await;
    for w in acks.windows(2) {
        assert!(
            w[1].0 - w[0].0 >= 390,
            "acks {w:?} closer than the edge's 400 ms"
        );
    }
}

#[tokio::test]
async fn a_channel_whose_join_asks_for_a_slower_pace_is_acked_at_that_pace() {
    // `auth_ok` asks for 100 ms, the channel's `joined` for 700 ms: the
    // slower one holds for this channel.
    let acks = acks_of_a_caught_up_client(
        r#"{"type":"auth_ok","user":"amy","ack_interval_ms":100}"#,
        json!({"type":"joined","channel":"group:7","last_seq":0,"ack_interval_ms":700}),
    )
    .await;
    for w in acks.windows(2) {
        assert!(
            w[1].0 - w[0].0 >= 690,
            "acks {w:?} closer than the channel's 700 ms"
        );
    }
}

#[tokio::test]
async fn asks_again_for_a_gap_whose_resume_was_refused() {
    // The edge sends 1, then live seqs from 3 on (one per client ping), so 2 is
    // missing. It refuses the first resume as over budget (`rate_limited`, the
    // frame ignored, the connection stays) and answers the next one. Before
    // the fix the client never asked again and held every seq back until the
    // edge gave up on its retransmissions, about a minute later.
    let next_live = Arc::new(Mutex::new(3u64));
    let resumes = Arc::new(Mutex::new(0u32));
    let (a, log) = fake_edge({
        let (next_live, resumes) = (next_live.clone(), resumes.clone());
        move |f| match ty(f) {
            "join" => Some(vec![
                json!({"type":"joined","channel":"group:7","last_seq":1}).to_string(),
                reliable(1),
            ]),
            "ping" => {
                let mut n = next_live.lock().unwrap();
                *n += 1;
                Some(vec![reliable(*n - 1)])
            }
            "resume" => {
                let mut r = resumes.lock().unwrap();
                *r += 1;
                if *r == 1 {
                    return Some(vec![
                        json!({"type":"error","code":"rate_limited",
                               "message":"too many frames on this connection"})
                        .to_string(),
                    ]);
                }
                let after = f["after_seq"].as_u64().unwrap();
                let upto = *next_live.lock().unwrap() - 1;
                Some(((after + 1)..=upto).map(reliable).collect())
            }
            _ => Some(vec![]),
        }
    })
    .await;
    let config = ClientConfig {
        heartbeat_interval: Duration::from_millis(200),
        ..ClientConfig::default()
    };
    let mut c = connect_json(a, config).await;
    c.join("group:7").await.unwrap();
    let mut seqs = Vec::new();
    let started = std::time::Instant::now();
    tokio::time::timeout(Duration::from_secs(15), async {
        while seqs.len() < 5 {
            if let Some(ServerEvent::Reliable { seq, .. }) = c.next_event().await {
                seqs.push(seq);
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("stuck after {seqs:?}: {:?}", log.lock().unwrap()));
    assert_eq!(seqs, (1..=5).collect::<Vec<_>>());
    assert!(*resumes.lock().unwrap() >= 2);
    eprintln!("gap filled after {:?}", started.elapsed());
}
