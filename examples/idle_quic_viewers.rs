//! Measures server memory per idle joined QUIC viewer (the QUIC counterpart of
//! `edge/examples/idle_viewers.rs`).
//!
//! The viewers share a few client endpoints (UDP sockets); each connection
//! authenticates, joins one room and then only reads (and discards) what the
//! edge sends, so nothing is dropped as a slow consumer, and pings every 30 s
//! (the edge's heartbeat interval), so a 10k run keeps its first connections.
//!
//! ```sh
//! SERVER_PID=<pid of danmaku standalone> \
//! cargo run --example idle_quic_viewers -- 127.0.0.1:7070 SECRET 2000 room:bench
//! ```
//! With `SERVER_PID` set it prints the server's VmRSS before and after
//! connecting and the difference per connection.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use danmaku_proto::frame;
use danmaku_proto::framing::encode_prefixed;
use danmaku_proto::pb::{self, client_frame::Body};
use danmaku_proto::token::{TokenKey, now_secs};

type Error = Box<dyn std::error::Error + Send + Sync>;

/// Connections per client endpoint (UDP socket).
const PER_ENDPOINT: usize = 500;

#[tokio::main]
async fn main() -> Result<(), Error> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 4 {
        eprintln!("usage: idle_quic_viewers ADDR SECRET N ROOM");
        std::process::exit(2);
    }
    let addr: SocketAddr = args[0].parse()?;
    let key = TokenKey::new(&args[1]);
    let n: usize = args[2].parse()?;
    let room = args[3].clone();
    let pid: Option<u32> = std::env::var("SERVER_PID")
        .ok()
        .and_then(|p| p.parse().ok());
    let _ = rustls::crypto::ring::default_provider().install_default();

    // The edge's development certificate, pinned (as the SDK's FetchFromEdge).
    let der = danmaku_client::IngestClient::new(&format!("http://{addr}"))
        .fetch_cert_der()
        .await?;
    let tls = danmaku_client::quic::tls_config(Some(der))?;
    let crypto = Arc::new(quinn::crypto::rustls::QuicClientConfig::try_from(tls)?);
    let mut transport = quinn::TransportConfig::default();
    transport.keep_alive_interval(Some(Duration::from_secs(10)));
    let transport = Arc::new(transport);
    let mut endpoints = Vec::new();
    for _ in 0..n.div_ceil(PER_ENDPOINT) {
        let mut e = quinn::Endpoint::client("127.0.0.1:0".parse()?)?;
        let mut c = quinn::ClientConfig::new(crypto.clone());
        c.transport_config(transport.clone());
        e.set_default_client_config(c);
        endpoints.push(e);
    }

    let rss0 = pid.map(rss_kb).transpose()?;
    let mut conns = Vec::with_capacity(n);
    let start = std::time::Instant::now();
    for i in 0..n {
        let conn = endpoints[i / PER_ENDPOINT]
            .connect(addr, "localhost")?
            .await?;
        let (mut send, mut recv) = conn.open_bi().await?;
        let token = key.mint(&format!("q{i}"), "user", now_secs(), 3600);
        for body in [
            Body::Auth(pb::Auth { token }),
            Body::Join(pb::Join {
                channel: room.clone(),
            }),
        ] {
            send.write_all(&encode_prefixed(&frame::encode(&frame::client(body))))
                .await?;
        }
        tokio::spawn(async move {
            // A ping per heartbeat interval (30 s by default), else the edge
            // closes connections that were opened more than 75 s ago while
            // the rest of a large run was still connecting.
            let ping = encode_prefixed(&frame::encode(&frame::client(Body::Ping(pb::Ping {
                ts_ms: 0,
            }))));
            let mut tick = tokio::time::interval(Duration::from_secs(30));
            tick.tick().await;
            let mut buf = vec![0u8; 2048];
            loop {
                tokio::select! {
                    r = recv.read(&mut buf) => if !matches!(r, Ok(Some(_))) { break },
                    _ = tick.tick() => if send.write_all(&ping).await.is_err() { break },
                }
            }
        });
        tokio::spawn({
            let conn = conn.clone();
            async move {
                while let Ok(mut uni) = conn.accept_uni().await {
                    tokio::spawn(async move {
                        let mut buf = vec![0u8; 2048];
                        while let Ok(Some(_)) = uni.read(&mut buf).await {}
                    });
                }
            }
        });
        conns.push(conn);
        if (i + 1) % 1000 == 0 {
            println!(
                "{} connected ({:.1} s)",
                i + 1,
                start.elapsed().as_secs_f64()
            );
        }
    }
    // Let the server finish every join and settle.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let open = conns.iter().filter(|c| c.close_reason().is_none()).count();
    println!("{open} of {n} connections open");
    if let (Some(pid), Some(rss0)) = (pid, rss0) {
        let rss1 = rss_kb(pid)?;
        println!(
            "server VmRSS {rss0} kB -> {rss1} kB: {:.2} kB per joined idle QUIC connection",
            (rss1 as f64 - rss0 as f64) / open.max(1) as f64
        );
    }
    for c in &conns {
        c.close(0u32.into(), b"bye");
    }
    for e in &endpoints {
        e.wait_idle().await;
    }
    Ok(())
}

fn rss_kb(pid: u32) -> Result<u64, Error> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))?
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .ok_or_else(|| "no VmRSS".into())
}
