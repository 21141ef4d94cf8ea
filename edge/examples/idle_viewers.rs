//! Holds N WebSocket viewers joined to one room, as cheaply as a client can: a
//! plain TCP socket per viewer, a hand-made upgrade, one masked `join`, then a
//! task that reads and discards whatever the edge writes (so its socket buffers
//! never fill and nothing is dropped as a slow consumer). Used to measure the
//! edge's memory per idle connection and its frames written per CPU-second
//! (BENCHMARKS.md), without a load generator that decodes every frame.
//!
//! ```sh
//! cargo run --release -p danmaku-edge --example idle_viewers -- \
//!     127.0.0.1:7070 SECRET 10000 room:bench 60 [SRC_IP,SRC_IP…]
//! ```
//! Prints one line when every viewer has joined, then the bytes received every
//! 5 s, and exits after the hold time (seconds).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use danmaku_proto::pb::{self, client_frame};
use danmaku_proto::token::TokenKey;
use danmaku_proto::wsframe::{OpCode, encode_masked};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

type Error = Box<dyn std::error::Error + Send + Sync>;

#[tokio::main]
async fn main() -> Result<(), Error> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 5 {
        eprintln!("usage: idle_viewers ADDR SECRET N ROOM HOLD_SECS [SRC_IP,…]");
        std::process::exit(2);
    }
    let addr: SocketAddr = args[0].parse()?;
    let key = TokenKey::new(&args[1]);
    let n: usize = args[2].parse()?;
    let room = args[3].clone();
    let hold = Duration::from_secs(args[4].parse()?);
    let sources: Vec<IpAddr> = args
        .get(5)
        .map(|s| s.split(',').filter_map(|ip| ip.parse().ok()).collect())
        .unwrap_or_default();
    let received = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let sem = Arc::new(tokio::sync::Semaphore::new(200));
    let mut joins = Vec::with_capacity(n);
    for i in 0..n {
        let permit = Arc::clone(&sem).acquire_owned().await?;
        let token = key.mint(
            &format!("v{i}"),
            "user",
            danmaku_proto::token::now_secs(),
            86_400,
        );
        let src = (!sources.is_empty()).then(|| sources[i % sources.len()]);
        let room = room.clone();
        let received = Arc::clone(&received);
        joins.push(tokio::spawn(async move {
            let tcp = connect(addr, src, &token, &room).await;
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
    let mut readers = Vec::with_capacity(n);
    let mut failed = 0;
    for j in joins {
        match j.await? {
            Ok(r) => readers.push(r),
            Err(e) => {
                if failed < 5 {
                    eprintln!("viewer failed: {e}");
                }
                failed += 1;
            }
        }
    }
    println!(
        "joined {} viewers ({failed} failed) in {:.1} s",
        readers.len(),
        start.elapsed().as_secs_f64()
    );
    let until = Instant::now() + hold;
    while Instant::now() < until {
        tokio::time::sleep(Duration::from_secs(5).min(until - Instant::now())).await;
        println!(
            "{:.0} s: {} bytes received",
            start.elapsed().as_secs_f64(),
            received.load(Ordering::Relaxed)
        );
    }
    Ok(())
}

/// Upgrades, waits for `auth_ok`, joins `room` and waits for `joined`.
async fn connect(
    addr: SocketAddr,
    src: Option<IpAddr>,
    token: &str,
    room: &str,
) -> Result<TcpStream, Error> {
    let socket = TcpSocket::new_v4()?;
    if let Some(ip) = src {
        socket.bind(SocketAddr::new(ip, 0))?;
    }
    let mut tcp = socket.connect(addr).await?;
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
    // 101 response, auth_ok and joined: read until the joined frame's channel
    // name shows up (both are small; they arrive within a few reads).
    let mut seen = Vec::new();
    let mut buf = [0u8; 2048];
    let deadline = Instant::now() + Duration::from_secs(30);
    while !seen.windows(room.len()).any(|w| w == room.as_bytes()) {
        let k = tokio::time::timeout_at(deadline.into(), tcp.read(&mut buf)).await??;
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
