//! CPU per delivered danmaku and long-poll latency, by transport: N viewers of
//! one transport (`ws-json`, `sse`, `poll`) in one room of a running server,
//! danmaku posted at a fixed rate plus one gift a second; reads the server's
//! CPU (utime + stime of `--pid` from /proc) over the run. Used for
//! BENCHMARKS.md ("Fallback transports").
//!
//! ```text
//! danmaku standalone --listen 127.0.0.1:7070 --auth-secret s --user-rate 100000 --user-burst 100000 --channel-rate 100000 &
//! cargo run --release -p danmaku-client --example fallback_bench -- \
//!     --base http://127.0.0.1:7070 --secret s --pid $! --transport sse --viewers 2000 --rate 20 --secs 20
//! ```

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use danmaku_client::IngestClient;
use danmaku_proto::token::{TokenKey, now_secs};
use futures_util::{SinkExt, StreamExt};
use tokio::sync::Mutex;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;

#[derive(Default)]
struct Tally {
    danmaku: AtomicU64,
    requests: AtomicU64,
    latencies_ms: Mutex<Vec<u64>>,
}

fn arg(args: &[String], name: &str, default: &str) -> String {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
        .unwrap_or_else(|| default.to_owned())
}

fn cpu_secs(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0
}

fn count(hay: &[u8]) -> u64 {
    let needle = br#""kind":"danmaku""#;
    hay.windows(needle.len()).filter(|w| w == needle).count() as u64
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let base = arg(&args, "--base", "http://127.0.0.1:7070");
    let key = TokenKey::new(arg(&args, "--secret", "s"));
    let pid: u32 = arg(&args, "--pid", "0").parse()?;
    let transport = arg(&args, "--transport", "sse");
    let viewers: usize = arg(&args, "--viewers", "2000").parse()?;
    let rate: u64 = arg(&args, "--rate", "20").parse()?;
    let secs: u64 = arg(&args, "--secs", "20").parse()?;
    let room = format!("room:bench-{}", std::process::id());
    let tally = Arc::new(Tally::default());
    let stop = tokio_util::sync::CancellationToken::new();
    let mut tasks = Vec::new();
    for i in 0..viewers {
        let token = key.mint(&format!("v{i}"), "user", now_secs(), 3600);
        let (base, room, tally, stop, transport) = (
            base.clone(),
            room.clone(),
            Arc::clone(&tally),
            stop.clone(),
            transport.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let run = async {
                match transport.as_str() {
                    "ws-json" => ws_viewer(&base, &token, &room, &tally).await,
                    "sse" => sse_viewer(&base, &token, &room, &tally).await,
                    "poll" => poll_viewer(&base, &token, &room, &tally).await,
                    t => anyhow::bail!("unknown transport {t}"),
                }
            };
            tokio::select! {
                _ = stop.cancelled() => Ok(()),
                r = run => r,
            }
        }));
        if i % 100 == 99 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    tokio::time::sleep(Duration::from_secs(3)).await; // every viewer joined
    let http = IngestClient::new(&base);
    let poster = key.mint("poster", "user", now_secs(), 3600);
    tally.danmaku.store(0, Ordering::Relaxed);
    tally.requests.store(0, Ordering::Relaxed);
    tally.latencies_ms.lock().await.clear();
    let cpu0 = cpu_secs(pid);
    let t0 = Instant::now();
    let mut posted = 0u64;
    let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / rate.max(1)));
    while t0.elapsed() < Duration::from_secs(secs) {
        tick.tick().await;
        let _ = http
            .post_danmaku(&poster, &room, &format!("666 前方高能 {posted}"))
            .await;
        posted += 1;
        if posted.is_multiple_of(rate.max(1)) {
            let _ = http
                .post_reliable(
                    &poster,
                    &room,
                    "gift",
                    "rocket",
                    Some(&format!("g{posted}")),
                )
                .await;
        }
    }
    tokio::time::sleep(Duration::from_secs(3)).await; // the last ticks and polls
    let wall = t0.elapsed().as_secs_f64();
    let cpu = cpu_secs(pid) - cpu0;
    stop.cancel();
    for t in tasks {
        if let Ok(Err(e)) = t.await {
            eprintln!("viewer: {e}");
        }
    }
    let delivered = tally.danmaku.load(Ordering::Relaxed);
    let requests = tally.requests.load(Ordering::Relaxed);
    let mut lat = tally.latencies_ms.lock().await.clone();
    lat.sort_unstable();
    let pct = |p: f64| {
        lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1)))
            .copied()
    };
    println!(
        "transport={transport} viewers={viewers} posted={posted} delivered={delivered} ({:.1}% of posted×viewers) server_cpu_s={cpu:.2} wall_s={wall:.1} cpu_us_per_delivered={:.2}",
        100.0 * delivered as f64 / (posted * viewers as u64).max(1) as f64,
        cpu * 1e6 / delivered.max(1) as f64,
    );
    if transport == "poll" {
        println!(
            "poll: requests/s per viewer={:.2} latency ms (ingest accept → poll answer read) p50={:?} p99={:?} max={:?}",
            requests as f64 / wall / viewers as f64,
            pct(0.5),
            pct(0.99),
            lat.last()
        );
    }
    Ok(())
}

async fn ws_viewer(base: &str, token: &str, room: &str, tally: &Tally) -> anyhow::Result<()> {
    let url = format!("{}/v1/ws?token={token}", base.replace("http", "ws"));
    let mut req = url.into_client_request()?;
    req.headers_mut().insert(
        "sec-websocket-protocol",
        HeaderValue::from_static("danmaku.v1.json"),
    );
    let (mut ws, _) = tokio_tungstenite::connect_async(req).await?;
    ws.send(format!(r#"{{"type":"join","channel":"{room}"}}"#).into())
        .await?;
    let mut last_ping = Instant::now();
    while let Some(m) = ws.next().await {
        let m = m?;
        if m.is_text() {
            tally
                .danmaku
                .fetch_add(count(m.into_data().as_ref()), Ordering::Relaxed);
        }
        if last_ping.elapsed() > Duration::from_secs(20) {
            ws.send(r#"{"type":"ping"}"#.into()).await?;
            last_ping = Instant::now();
        }
    }
    Ok(())
}

async fn sse_viewer(base: &str, token: &str, room: &str, tally: &Tally) -> anyhow::Result<()> {
    let url = danmaku_client::sse::sse_url(base, token, &[room], &[])?;
    let mut resp = reqwest::Client::new().get(url).send().await?;
    anyhow::ensure!(resp.status().is_success(), "sse: {}", resp.status());
    while let Some(chunk) = resp.chunk().await? {
        tally.danmaku.fetch_add(count(&chunk), Ordering::Relaxed);
    }
    Ok(())
}

async fn poll_viewer(base: &str, token: &str, room: &str, tally: &Tally) -> anyhow::Result<()> {
    let http = reqwest::Client::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut url = url::Url::parse(&format!("{base}/v1/poll"))?;
        url.query_pairs_mut()
            .append_pair("token", token)
            .append_pair("channel", room);
        if let Some(c) = &cursor {
            url.query_pairs_mut().append_pair("cursor", c);
        }
        let resp = http.get(url).send().await?;
        anyhow::ensure!(resp.status().is_success(), "poll: {}", resp.status());
        let body: serde_json::Value = resp.json().await?;
        let now = danmaku_proto::now_ms();
        tally.requests.fetch_add(1, Ordering::Relaxed);
        let mut lat = Vec::new();
        for f in body["events"].as_array().into_iter().flatten() {
            for e in f["events"].as_array().into_iter().flatten() {
                if e["kind"] == "danmaku" {
                    tally.danmaku.fetch_add(1, Ordering::Relaxed);
                    if let Some(ts) = e["ts_ms"].as_i64() {
                        lat.push((now - ts).max(0) as u64);
                    }
                }
            }
        }
        if !lat.is_empty() {
            tally.latencies_ms.lock().await.extend(lat);
        }
        cursor = body["cursor"].as_str().map(str::to_owned);
    }
}
