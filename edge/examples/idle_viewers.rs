//! Measures what one edge connection costs: server memory per idle joined
//! WebSocket viewer, and batch frames written per server CPU-second.
//!
//! The viewers are as cheap as a client can be: a plain TCP socket each, a
//! hand-made upgrade, one masked `join`, then a task that reads and discards
//! whatever the edge writes (so socket buffers never fill and nothing is dropped
//! as a slow consumer). No frame is decoded, so on a shared machine the load
//! generator stays far cheaper than the server it measures.
//!
//! ```sh
//! SERVER_PID=<pid of danmaku standalone> \
//! cargo run --release -p danmaku-edge --example idle_viewers -- \
//!     127.0.0.1:7070 SECRET 10000 room:bench 20 1000
//! ```
//! Arguments: address, token secret, viewers, room, seconds of posting, danmaku
//! per second (posted over HTTP to the same address by one user: start the
//! server with `--user-rate`/`--user-burst` at least that high). With
//! `SERVER_PID` set it reads the server's VmRSS before and after connecting, and
//! its CPU time (utime + stime) and `/metrics` around the posting window, and
//! prints per-connection memory and frames written per CPU-second.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use danmaku_proto::pb::{self, client_frame};
use danmaku_proto::sample::CommentGenerator;
use danmaku_proto::token::TokenKey;
use danmaku_proto::wsframe::{OpCode, encode_masked};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

type Error = Box<dyn std::error::Error + Send + Sync>;

#[tokio::main]
async fn main() -> Result<(), Error> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 5 {
        eprintln!("usage: idle_viewers ADDR SECRET N ROOM POST_SECS [POST_RATE]");
        std::process::exit(2);
    }
    let addr: SocketAddr = args[0].parse()?;
    let key = TokenKey::new(&args[1]);
    let n: usize = args[2].parse()?;
    let room = args[3].clone();
    let post_secs: u64 = args[4].parse()?;
    let rate: f64 = args.get(5).map(|r| r.parse()).transpose()?.unwrap_or(0.0);
    let pid: Option<u32> = std::env::var("SERVER_PID")
        .ok()
        .and_then(|p| p.parse().ok());

    let rss0 = pid.map(rss_kb).transpose()?;
    let received = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let sem = Arc::new(tokio::sync::Semaphore::new(100));
    let mut joins = Vec::with_capacity(n);
    for i in 0..n {
        let permit = Arc::clone(&sem).acquire_owned().await?;
        let token = key.mint(&format!("v{i}"), "user", now_secs(), 86_400);
        let room = room.clone();
        let received = Arc::clone(&received);
        joins.push(tokio::spawn(async move {
            let tcp = connect(addr, &token, &room).await;
            drop(permit);
            let mut tcp = tcp?;
            Ok::<_, Error>(tokio::spawn(async move {
                let mut buf = vec![0u8; 16 << 10];
                while let Ok(k) = tcp.read(&mut buf).await {
                    if k == 0 {
                        break;
                    }
                    received.fetch_add(k as u64, Ordering::Relaxed);
                }
            }))
        }));
    }
    let mut joined = 0usize;
    let mut failed = 0usize;
    for j in joins {
        match j.await? {
            Ok(_reader) => joined += 1,
            Err(e) => {
                if failed < 5 {
                    eprintln!("viewer failed: {e}");
                }
                failed += 1;
            }
        }
    }
    println!(
        "joined {joined} viewers ({failed} failed) in {:.1} s",
        start.elapsed().as_secs_f64()
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    if let (Some(pid), Some(rss0)) = (pid, rss0) {
        let rss1 = rss_kb(pid)?;
        println!(
            "server VmRSS {rss0} kB -> {rss1} kB: {:.2} kB per joined idle connection",
            (rss1 as f64 - rss0 as f64) / joined.max(1) as f64
        );
    }
    if rate <= 0.0 {
        return Ok(());
    }

    let before = sample(pid, addr).await?;
    let posted = post(addr, &key, &room, rate, Duration::from_secs(post_secs)).await?;
    // Let the last batches flush (windows are ≤ 1 s).
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = sample(pid, addr).await?;
    let frames = after.frames - before.frames;
    let cpu = after.cpu_secs - before.cpu_secs;
    println!(
        "posted {posted} danmaku in {post_secs} s; edge wrote {frames:.0} batch frames, {:.1} MB \
         ({:.0} B/frame), {:.0} slow-consumer drops; server CPU {cpu:.2} s -> {:.0} frames per CPU-second; \
         viewers received {} bytes in total",
        (after.egress - before.egress) / 1e6,
        (after.egress - before.egress) / frames.max(1.0),
        after.drops - before.drops,
        frames / cpu.max(0.001),
        received.load(Ordering::Relaxed)
    );
    if let Some(pid) = pid {
        println!("server VmRSS now {} kB", rss_kb(pid)?);
    }
    Ok(())
}

fn now_secs() -> u64 {
    danmaku_proto::token::now_secs()
}

/// Upgrades, joins `room`, and waits for the `joined` reply.
async fn connect(addr: SocketAddr, token: &str, room: &str) -> Result<TcpStream, Error> {
    let mut tcp = TcpStream::connect(addr).await?;
    let req = format!(
        "GET /v1/ws?token={token} HTTP/1.1\r\nHost: {addr}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
         Sec-WebSocket-Protocol: danmaku.v1.pb\r\n\r\n"
    );
    tcp.write_all(req.as_bytes()).await?;
    let join = danmaku_proto::frame::encode(&danmaku_proto::frame::client(
        client_frame::Body::Join(pb::Join {
            channel: room.to_owned(),
        }),
    ));
    tcp.write_all(&encode_masked(true, OpCode::Binary, [7, 7, 7, 7], &join))
        .await?;
    // The 101 response, auth_ok and joined are small: read until the joined
    // frame's channel name shows up.
    let mut seen = Vec::new();
    let mut buf = [0u8; 2048];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while !seen.windows(room.len()).any(|w| w == room.as_bytes()) {
        let k = tokio::time::timeout_at(deadline, tcp.read(&mut buf)).await??;
        if k == 0 {
            return Err(format!("closed: {}", String::from_utf8_lossy(&seen)).into());
        }
        seen.extend_from_slice(&buf[..k]);
    }
    if !seen.starts_with(b"HTTP/1.1 101") {
        return Err(format!("refused: {}", String::from_utf8_lossy(&seen)).into());
    }
    Ok(tcp)
}

/// Posts `rate` varied danmaku per second for `dur` over 4 keep-alive connections.
async fn post(
    addr: SocketAddr,
    key: &TokenKey,
    room: &str,
    rate: f64,
    dur: Duration,
) -> Result<u64, Error> {
    const CONNS: usize = 4;
    let token = key.mint("bench-poster", "user", now_secs(), 86_400);
    let mut tasks = Vec::new();
    for c in 0..CONNS {
        let token = token.clone();
        let room = room.to_owned();
        tasks.push(tokio::spawn(async move {
            let mut tcp = TcpStream::connect(addr).await?;
            let mut texts = CommentGenerator::new(c as u64 + 1);
            let every = Duration::from_secs_f64(CONNS as f64 / rate);
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            let end = Instant::now() + dur;
            let mut sent = 0u64;
            while Instant::now() < end {
                tick.tick().await;
                let text = texts.events(1, 0).remove(0).text;
                let body = serde_json::json!({"kind": "danmaku", "text": text}).to_string();
                let req = format!(
                    "POST /v1/channels/{room}/messages HTTP/1.1\r\nHost: {addr}\r\n\
                     Authorization: Bearer {token}\r\nContent-Type: application/json\r\n\
                     Content-Length: {}\r\n\r\n{body}",
                    body.len()
                );
                tcp.write_all(req.as_bytes()).await?;
                let (status, _) = read_response(&mut tcp).await?;
                if status < 300 {
                    sent += 1;
                } else if sent == 0 {
                    return Err::<u64, Error>(format!("post refused with {status}").into());
                }
            }
            Ok(sent)
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t.await??;
    }
    Ok(total)
}

/// Reads one HTTP/1.1 response with a Content-Length body.
async fn read_response(tcp: &mut TcpStream) -> Result<(u16, Vec<u8>), Error> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let status: u16 = head.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            while buf.len() < end + 4 + len {
                let k = tcp.read(&mut chunk).await?;
                if k == 0 {
                    return Err("connection closed mid-body".into());
                }
                buf.extend_from_slice(&chunk[..k]);
            }
            return Ok((status, buf[end + 4..end + 4 + len].to_vec()));
        }
        let k = tcp.read(&mut chunk).await?;
        if k == 0 {
            return Err("connection closed".into());
        }
        buf.extend_from_slice(&chunk[..k]);
    }
}

struct Sample {
    cpu_secs: f64,
    frames: f64,
    egress: f64,
    drops: f64,
}

async fn sample(pid: Option<u32>, addr: SocketAddr) -> Result<Sample, Error> {
    let mut tcp = TcpStream::connect(addr).await?;
    tcp.write_all(format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await?;
    let (_, body) = read_response(&mut tcp).await?;
    let text = String::from_utf8_lossy(&body);
    let sum = |prefix: &str| -> f64 {
        text.lines()
            .filter(|l| l.starts_with(prefix))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    Ok(Sample {
        cpu_secs: pid.map(cpu_secs).transpose()?.unwrap_or(0.0),
        frames: sum("danmaku_edge_frames_pushed_total{"),
        egress: sum("danmaku_edge_egress_bytes_total{"),
        drops: sum("danmaku_edge_slow_consumer_drops_total"),
    })
}

fn rss_kb(pid: u32) -> Result<u64, Error> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| "no VmRSS".into())
}

/// utime + stime of `pid`, in seconds (clock ticks of 1/100 s).
fn cpu_secs(pid: u32) -> Result<f64, Error> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let after = stat.rsplit_once(')').ok_or("bad stat")?.1;
    let fields: Vec<&str> = after.split_whitespace().collect();
    // Fields 14 and 15 of stat(5); `after` starts at field 3.
    let utime: f64 = fields.get(11).ok_or("bad stat")?.parse()?;
    let stime: f64 = fields.get(12).ok_or("bad stat")?.parse()?;
    Ok((utime + stime) / 100.0)
}
