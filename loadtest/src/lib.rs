//! The danmaku load harness: opens many viewer connections to a standalone
//! server (or to the edges of a distributed one, posting through its ingest
//! nodes), posts uniquely numbered comments through ingest at a fixed rate, and
//! reports exactly what arrived where: loss, duplicates, per-sender order,
//! frames, events per frame and end-to-end latency.
//!
//! A run: fetch tokens (and the QUIC certificate) → connect and join every
//! viewer, a bounded number at a time ([`viewers`]) → post for `duration`
//! ([`senders`]) → wait `drain_grace` for the last batches → stop the viewers
//! and compare what each received with what ingest accepted for its room
//! ([`tally`]) → [`Report`].

pub mod config;
pub mod error;
pub mod report;
pub mod senders;
pub mod tally;
pub mod viewers;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use danmaku_client::{IngestClient, Transport};
use danmaku_proto::token::{TokenKey, now_secs};
use tokio::sync::{Semaphore, mpsc};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::info;

use config::FOREIGN_ROOMS;
pub use config::LoadtestConfig;
pub use error::LoadtestError;
pub use report::{ClientReport, Latency, Report};
pub use tally::{RoomExpected, Tally, ViewerLog};

/// Distinct viewer users (viewer `i` uses token `i % VIEWER_USERS`).
const VIEWER_USERS: usize = 64;
/// Lifetime of locally minted tokens (a run is minutes at most).
const TOKEN_TTL_SECS: u64 = 6 * 3600;
/// Histogram shards for latency recording.
const LATENCY_SHARDS: usize = 32;

async fn quic_addr(base: &str) -> Result<SocketAddr, LoadtestError> {
    let url = url::Url::parse(base).map_err(|e| LoadtestError::Config(format!("{base}: {e}")))?;
    let host = url
        .host_str()
        .ok_or_else(|| LoadtestError::Config(format!("{base} has no host")))?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    let port = url.port_or_known_default().unwrap_or(80);
    tokio::net::lookup_host((host.as_str(), port))
        .await?
        .next()
        .ok_or_else(|| LoadtestError::Config(format!("{host} resolves to no address")))
}

/// Where tokens come from: the server's dev endpoint, or minted here with the
/// cluster's secret.
enum Tokens<'a> {
    Dev(&'a IngestClient),
    Local(TokenKey),
}

impl Tokens<'_> {
    async fn get(&self, user: &str) -> Result<String, LoadtestError> {
        match self {
            Tokens::Dev(ingest) => Ok(ingest.dev_token(user).await?),
            Tokens::Local(key) => Ok(key.mint(user, "user", now_secs(), TOKEN_TTL_SECS)),
        }
    }
}

/// Runs one load test against `config.target` (or its `ingest` and `edges`)
/// and returns its report (also written as JSON to `config.report` when set).
pub async fn run(config: LoadtestConfig) -> Result<Report, LoadtestError> {
    if config.rooms == 0
        || !(config.rate >= 0.0 && config.rate.is_finite())
        || !(config.foreign_rate >= 0.0 && config.foreign_rate.is_finite())
    {
        return Err(LoadtestError::Config(
            "rooms must be ≥ 1, rate and foreign rate finite numbers ≥ 0".into(),
        ));
    }
    let endpoints = config.endpoints().map_err(LoadtestError::Config)?;
    let wall = Instant::now();
    let ingest = Arc::new(senders::IngestPool::new(&endpoints.ingest));
    let run_id = danmaku_proto::now_ms() % 100_000_000;
    let rooms: Vec<String> = (0..config.rooms)
        .map(|k| format!("room:lt{run_id}-{k}"))
        .collect();
    let foreign_rooms: Vec<String> = (0..FOREIGN_ROOMS).map(config::foreign_room).collect();
    let n_senders = config.effective_senders();
    let n_foreign = config.foreign_senders();

    // Tokens first: a server that cannot mint them fails the run early.
    let tokens = match &config.auth_secret {
        Some(secret) => Tokens::Local(TokenKey::new(secret)),
        None => Tokens::Dev(ingest.first()),
    };
    let mut viewer_tokens = Vec::new();
    for u in 0..VIEWER_USERS.min(config.connections.max(1)) {
        viewer_tokens.push(tokens.get(&format!("lt-viewer-{u}")).await?);
    }
    let mut sender_tokens = Vec::with_capacity(n_senders);
    for i in 0..n_senders {
        sender_tokens.push(tokens.get(&format!("lt-sender-{i}")).await?);
    }
    let mut foreign_tokens = Vec::with_capacity(n_foreign);
    for i in 0..n_foreign {
        foreign_tokens.push(tokens.get(&format!("lt-foreign-{i}")).await?);
    }
    let mut edges = Vec::with_capacity(endpoints.edges.len());
    for url in &endpoints.edges {
        let (quic_addr, cert_der) = if config.transport == Transport::Quic {
            (
                Some(quic_addr(url).await?),
                Some(IngestClient::new(url).fetch_cert_der().await?),
            )
        } else {
            (None, None)
        };
        edges.push(viewers::EdgeTarget {
            url: url.clone(),
            quic_addr,
            cert_der,
        });
    }

    // Viewers: connect and join, a bounded number at a time.
    let setup = Arc::new(viewers::ViewerSetup {
        transport: config.transport,
        edges,
        tokens: viewer_tokens,
        source_addrs: config.source_addrs.clone(),
        connect_gate: Semaphore::new(config.connect_concurrency.max(1)),
        latency: viewers::LatencyShards::new(LATENCY_SHARDS),
    });
    let stop = CancellationToken::new();
    let (ready_tx, mut ready_rx) = mpsc::unbounded_channel();
    let handles: Vec<_> = (0..config.connections)
        .map(|id| {
            tokio::spawn(viewers::run_viewer(
                setup.clone(),
                id,
                rooms[id % rooms.len()].clone(),
                ready_tx.clone(),
                stop.clone(),
            ))
        })
        .collect();
    drop(ready_tx);
    let connect_started = Instant::now();
    let (mut ok, mut failed) = (0u64, 0u64);
    while let Some(joined) = ready_rx.recv().await {
        if joined {
            ok += 1
        } else {
            failed += 1
        }
        let done = ok + failed;
        if done % 1000 == 0 || done == config.connections as u64 {
            info!(ok, failed, total = config.connections, "viewers connected");
        }
        if done == config.connections as u64 {
            break;
        }
    }
    let connect_time = connect_started.elapsed();

    // Senders: each posts its share of the rate, interleaved.
    let period = if config.rate > 0.0 {
        Duration::from_secs_f64(n_senders as f64 / config.rate)
    } else {
        config.duration + Duration::from_secs(1)
    };
    info!(
        senders = n_senders,
        rate = config.rate,
        duration_s = config.duration.as_secs_f64(),
        "posting"
    );
    let start = Instant::now();
    let deadline = start + config.duration;
    // Foreign traffic: rooms no viewer joined, sender numbers after the real ones.
    let foreign_period = Duration::from_secs_f64(if config.foreign_rate > 0.0 {
        n_foreign as f64 / config.foreign_rate
    } else {
        1.0
    });
    let foreign_handles: Vec<_> = foreign_tokens
        .into_iter()
        .enumerate()
        .map(|(i, token)| {
            tokio::spawn(senders::run_sender(
                ingest.clone(),
                token,
                (n_senders + i) as u32,
                foreign_rooms.clone(),
                foreign_period,
                foreign_period.mul_f64(i as f64 / n_foreign as f64),
                start,
                deadline,
            ))
        })
        .collect();
    let sender_handles: Vec<_> = sender_tokens
        .into_iter()
        .enumerate()
        .map(|(i, token)| {
            tokio::spawn(senders::run_sender(
                ingest.clone(),
                token,
                i as u32,
                rooms.clone(),
                period,
                period.mul_f64(i as f64 / n_senders as f64),
                start,
                deadline,
            ))
        })
        .collect();
    let mut posts = senders::SenderOutcome::default();
    let mut expected: Vec<RoomExpected> = vec![RoomExpected::default(); rooms.len()];
    for (i, h) in sender_handles.into_iter().enumerate() {
        let Ok(o) = h.await else { continue };
        posts.attempted += o.attempted;
        posts.accepted += o.accepted;
        posts.rate_limited += o.rate_limited;
        posts.failed += o.failed;
        for (room, n) in o.accepted_posts {
            expected[room].add(i as u32, n);
        }
    }
    let mut foreign = senders::SenderOutcome::default();
    for h in foreign_handles {
        let Ok(o) = h.await else { continue };
        foreign.attempted += o.attempted;
        foreign.accepted += o.accepted;
        foreign.rate_limited += o.rate_limited;
        foreign.failed += o.failed;
    }
    let posting_time = start.elapsed();
    info!(accepted = posts.accepted, "posting done, draining");
    tokio::time::sleep(config.drain_grace).await;
    stop.cancel();

    // Tally every viewer against what was accepted for its room.
    let room_index: HashMap<&str, usize> = rooms
        .iter()
        .enumerate()
        .map(|(i, r)| (r.as_str(), i))
        .collect();
    let mut total = Tally::default();
    let mut foreign_events = 0;
    let mut dropped = 0;
    let mut connect_errors: BTreeMap<String, u64> = BTreeMap::new();
    let mut clients = Vec::with_capacity(handles.len());
    for h in handles {
        let Ok(v) = h.await else { continue };
        let connected = v.joined.is_ok();
        let tally = match &v.joined {
            Ok(()) => {
                let t = v.log.tally(&expected[room_index[v.room.as_str()]]);
                total += t;
                foreign_events += v.log.foreign;
                t
            }
            Err(reason) => {
                *connect_errors.entry(reason.clone()).or_default() += 1;
                Tally::default()
            }
        };
        dropped += u64::from(v.dropped);
        clients.push(ClientReport {
            client: v.id,
            room: v.room,
            edge: v.edge,
            connected,
            dropped: v.dropped,
            tally,
        });
    }
    let hist = setup.latency.merged();
    let report = Report {
        target: config.target.clone(),
        ingest: endpoints.ingest.clone(),
        edges: endpoints.edges.clone(),
        transport: config.transport.name().to_owned(),
        rooms: config.rooms,
        senders: n_senders,
        rate: config.rate,
        duration_s: config.duration.as_secs_f64(),
        connections_attempted: config.connections as u64,
        connections_ok: ok,
        connections_failed: failed,
        connections_dropped: dropped,
        connect_errors,
        connect_time_s: connect_time.as_secs_f64(),
        posts_attempted: posts.attempted,
        posts_accepted: posts.accepted,
        posts_rate_limited: posts.rate_limited,
        posts_failed: posts.failed,
        posts_per_s: posts.accepted as f64 / posting_time.as_secs_f64().max(1e-9),
        events_expected: total.expected,
        events_received: total.received,
        events_lost: total.lost,
        loss_ratio: if total.expected == 0 {
            0.0
        } else {
            total.lost as f64 / total.expected as f64
        },
        events_unexpected: total.unexpected,
        duplicates: total.duplicates,
        order_violations: total.order_violations,
        foreign_events,
        foreign_rate: config.foreign_rate,
        foreign_posts_accepted: foreign.accepted,
        foreign_posts_rate_limited: foreign.rate_limited,
        foreign_posts_failed: foreign.failed,
        foreign_posts_per_s: foreign.accepted as f64 / posting_time.as_secs_f64().max(1e-9),
        frames_received: total.frames,
        events_per_frame: if total.frames == 0 {
            0.0
        } else {
            total.events as f64 / total.frames as f64
        },
        latency_ms: Latency::from_histogram(&hist),
        wall_time_s: wall.elapsed().as_secs_f64(),
        clients,
    };
    if let Some(path) = &config.report {
        std::fs::write(path, serde_json::to_vec_pretty(&report)?)?;
    }
    Ok(report)
}
