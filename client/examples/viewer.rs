//! Joins a room and prints its comments.
//!
//! ```text
//! cargo run -p danmaku-client --example viewer -- [BASE_URL] [CHANNEL] [USER] [ws-pb|ws-json|quic]
//! cargo run -p danmaku-client --example viewer -- http://127.0.0.1:7070 room:42 viewer ws-pb
//! ```
//!
//! Gets a dev token from the server (standalone without `--auth-secret`). With
//! `quic` it fetches the server's dev certificate from `/v1/cert` and connects
//! to the same port over UDP.

use danmaku_client::{Client, ClientConfig, IngestClient, ServerEvent, Transport};
use danmaku_proto::pb;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let base = args
        .next()
        .unwrap_or_else(|| "http://127.0.0.1:7070".into());
    let channel = args.next().unwrap_or_else(|| "room:42".into());
    let user = args.next().unwrap_or_else(|| "viewer".into());
    let transport: Transport = args
        .next()
        .unwrap_or_else(|| "ws-pb".into())
        .parse()
        .map_err(anyhow::Error::msg)?;

    let ingest = IngestClient::new(&base);
    let token = ingest.dev_token(&user).await?;
    let mut client = match transport {
        Transport::Quic => {
            let url = url::Url::parse(&base)?;
            let host = url.host_str().unwrap_or("127.0.0.1");
            let port = url.port_or_known_default().unwrap_or(7070);
            let addr = tokio::net::lookup_host((host, port))
                .await?
                .next()
                .ok_or_else(|| anyhow::anyhow!("{host} resolves to nothing"))?;
            let cert = ingest.fetch_cert_der().await?;
            Client::connect_quic(addr, Some(cert), &token, ClientConfig::default()).await?
        }
        ws => Client::connect_ws(&base, &token, ws, ClientConfig::default()).await?,
    };
    println!("connected as {} over {}", client.user(), client.transport());
    client.join(&channel).await?;

    while let Some(ev) = client.next_event().await {
        match ev {
            ServerEvent::Joined {
                channel, last_seq, ..
            } => {
                println!("joined {channel} (last seq {last_seq})")
            }
            ServerEvent::Batch { channel, events } => {
                for e in events {
                    println!("[{channel}] {}: {}", e.sender, e.text);
                }
            }
            ServerEvent::Reliable {
                channel,
                seq,
                event,
            } => {
                let kind = pb::Kind::try_from(event.kind).unwrap_or(pb::Kind::Unspecified);
                println!(
                    "[{channel} #{seq}] {} sent {}: {} {}",
                    event.sender,
                    kind.name(),
                    event.text,
                    event.payload_json
                );
                client.ack(&channel, seq).await?;
            }
            ServerEvent::Redirect { edges } => {
                println!("edge is draining; reconnect to one of:");
                for e in edges {
                    println!("  {} ws={} quic={} load={:.2}", e.id, e.ws, e.quic, e.load);
                }
            }
            ServerEvent::Error { code, message } => eprintln!("error {code}: {message}"),
            ServerEvent::Online { channel, online } => println!("{channel}: {online} online"),
            ServerEvent::Left { channel, reason } => println!("left {channel} {reason}"),
            ServerEvent::Reconnected { edge } => println!("reconnected to {edge}"),
            ServerEvent::Notice {
                channel,
                code,
                until_ms,
            } => {
                let left = (until_ms - danmaku_proto::now_ms()).max(0) / 1000;
                println!("[{channel}] notice {code}: {left} s left");
            }
            ServerEvent::Retract { channel, id } => println!("[{channel}] retracted {id}"),
            ServerEvent::SampledOut { channel, count } => {
                println!("[{channel}] +{count} not shown (busy room)")
            }
            ServerEvent::Pong | ServerEvent::AuthOk { .. } => {}
        }
    }
    println!("connection closed");
    Ok(())
}
