//! The edge: where viewers connect and danmaku fans out.
//!
//! # A tour
//!
//! * [`Edge::start`] subscribes to the bus and spawns the **consumer**
//!   (`consumer.rs`), which drops events of channels without local members
//!   before decoding them, and routes the rest to **batcher** shards
//!   (`batcher.rs`). Each shard keeps open batches per channel and flushes them
//!   by the adaptive window of [`batch_policy`] — a pure, unit-tested rule that
//!   shares the edge's frame-write budget among channels.
//! * A flush encodes and compresses ONCE and pushes refcounted clones of the
//!   same bytes to every member's bounded queue through the [`channels`]
//!   registry (channel → local members, sharded maps, no global lock). A full
//!   queue drops that tick for that member only.
//! * The **reliable lane** ([`reliable`]: gifts, group chat; bus events with
//!   `seq > 0`) orders each channel's seqs in the sequencer
//!   (`sequencer.rs`) and feeds them to the same batchers: they ride the room's tick frame, so a viewer gets
//!   one frame per tick whatever the gift rate. Per member the edge keeps O(1)
//!   lane state; a member that misses a tick, resumes or stops acking is
//!   served from the channel's ring of recent events or the [`Store`].
//! * Connections arrive over WebSocket ([`Edge::router`], `ws.rs`) or QUIC
//!   ([`Edge::serve_quic`], `quic.rs`). Both open a `Session` (`session.rs`,
//!   the connection's state) and run the one connection loop
//!   (`connection/`), which hands each client frame to its handler
//!   (`connection/handlers/`, one file per frame kind) and each wake-up to the
//!   lane's connection side (`connection/reliable.rs`); a writer task per
//!   connection prefers replies over ticks.
//! * State lives low and the tasks that act on it above it: [`Edge`] itself
//!   (`node.rs`) is the state every task shares; this file starts and serves
//!   it. docs/ARCHITECTURE.md draws the layers.
//! * Every metric lives in [`metrics`], registered into the registry the
//!   process passes in. [`top_rooms`] ranks the hottest rooms every few
//!   seconds into rank-labelled gauges and `GET /v1/top-rooms`.
//!   [`control_plane`] registers with the scheduler, drains and pushes
//!   cluster-wide online counts.
//! * Account protection (`account.rs`): revoked tokens and blocked users are
//!   refused at connect and their open connections closed when a change
//!   arrives on the bus (key `!account`, which no channel can have).

mod account;
mod bans;
pub mod batch_policy;
mod batcher;
mod blobs;
pub mod channels;
pub mod config;
mod connection;
mod consumer;
pub mod control_plane;
mod control_state;
mod direct;
pub mod error;
mod fallback;
pub mod limits;
mod listener;
pub mod metrics;
mod node;
mod pipeline;
mod poll_rooms;
mod quic;
pub mod reliable;
mod reply;
mod sequencer;
mod session;
mod sse_wire;
mod store_reads;
mod sweep;
mod thinning;
mod tls;
pub mod top_rooms;
pub mod transport;
mod ws;

use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::routing::get;
use base64::Engine;
use danmaku_bus::Bus;
use danmaku_proto::token::TokenKey;
use danmaku_store::Store;
use tokio_util::sync::CancellationToken;

pub use batcher::{BuiltSizes, FrameBuilder, PbLayouts};
pub use config::{BatchConfig, ClientLimits, ControlConfig, EdgeConfig, ReliableConfig};
pub use control_plane::NotReady;
pub use error::{ApiError, EdgeError};
pub use listener::serve_http1;
pub use metrics::BusResult;
pub use node::Edge;
pub use tls::{ALPN, ALPN_DENSE};
pub use transport::Transport;
pub use ws::{SUBPROTOCOL_JSON, SUBPROTOCOL_PB};

use crate::channels::{ChannelGauges, Channels};
use crate::metrics::Metrics;
use crate::tls::CertMaterial;

/// Most batcher shards: encoding is cheap next to the writes, a few cores suffice.
const MAX_SHARDS: usize = 4;

impl Edge {
    /// Subscribes to the bus and spawns the consumer, batcher and reliable tasks;
    /// `store` serves the reliable lane (join's `last_seq`, membership, resume,
    /// gap fills, ack offsets). They stop
    /// when `shutdown` is cancelled. Metrics are registered into `registry` (one
    /// per process, passed in; never the global default registry, because tests
    /// start several servers in one process).
    pub async fn start(
        config: EdgeConfig,
        bus: Arc<dyn Bus>,
        store: Arc<dyn Store>,
        tokens: TokenKey,
        registry: &prometheus::Registry,
        shutdown: CancellationToken,
    ) -> Result<Arc<Edge>, EdgeError> {
        // Joins and resumes after a reconnect storm share identical reads.
        let store: Arc<dyn Store> = Arc::new(store_reads::CoalescedReads::new(store));
        let metrics = Metrics::register(registry)?;
        let control_metrics = metrics::ControlMetrics::register(registry)?;
        let account = Arc::new(account::Account::new(
            metrics::AccountMetrics::register(registry)?,
            config.limits,
        ));
        let cert = CertMaterial::load_or_generate(&config)?;
        let quic_config = cert.server_config()?;
        if config.tls_cert.is_none() || config.tls_key.is_none() {
            tracing::info!(
                edge = %config.id,
                sha256 = %tls::sha256_hex(cert.leaf()),
                "QUIC uses a self-signed certificate (served at GET /v1/cert)"
            );
        }
        let channels = Arc::new(Channels::new(
            ChannelGauges::from(&metrics),
            config.reliable.ring,
        ));
        let shards = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
            .clamp(1, MAX_SHARDS);
        let pipeline = pipeline::start(shutdown.clone())?;
        // Subscribe before returning, so nothing published after `start` is
        // missed; on the delivery thread, because a subscription's own tasks
        // (Kafka's forwarding task) run on the runtime that created it.
        let subscription = {
            let bus = Arc::clone(&bus);
            pipeline
                .spawn(async move { bus.subscribe_all().await })
                .await
                .map_err(|e| EdgeError::Pipeline(std::io::Error::other(e)))??
        };
        let shard_queues = batcher::spawn_shards(
            &pipeline,
            shards,
            &config.batch,
            Arc::clone(&channels),
            metrics.clone(),
            shutdown.clone(),
        )?;
        let reliable_queues = sequencer::spawn_shards(
            shards,
            config.reliable.reorder_hold,
            shard_queues.clone(),
            Arc::clone(&store),
            Arc::clone(&channels),
            metrics.clone(),
            shutdown.clone(),
        );
        tokio::spawn(sweep::run(
            Arc::clone(&channels),
            config.reliable.sweep_interval(),
            metrics.clone(),
            shutdown.clone(),
        ));
        // After subscribing: a change announced while loading is applied twice, harmlessly.
        account.load(&*store).await;
        tokio::spawn(Arc::clone(&account).sweep(Arc::clone(&store), shutdown.clone()));
        let bans = Arc::new(bans::Bans::new(metrics.bans_active.clone()));
        bans.load(&*store).await;
        tokio::spawn(Arc::clone(&bans).sweep(Arc::clone(&store), shutdown.clone()));
        let consumer = consumer::Consumer {
            account: Arc::clone(&account),
            bans: Arc::clone(&bans),
            channels: Arc::clone(&channels),
            metrics: metrics.clone(),
            shards: shard_queues,
            reliable: reliable_queues,
            limits: config.limits,
            room_max_rate: config.room_max_rate,
            start_ms: danmaku_proto::now_ms(),
        };
        pipeline.spawn(consumer.run(subscription, shutdown.clone()));
        let (top_tx, top_rx) = tokio::sync::watch::channel(Arc::new(top_rooms::TopRoomsSnapshot {
            edge: config.id.clone(),
            ..Default::default()
        }));
        let gauges = metrics::TopRoomGauges::register(registry, config.top_rooms)?;
        if config.top_rooms > 0 {
            tokio::spawn(top_rooms::run(
                config.id.clone(),
                config.top_rooms,
                config
                    .top_rooms_interval
                    .max(std::time::Duration::from_millis(100)),
                Arc::clone(&channels),
                gauges,
                top_tx,
                shutdown.clone(),
            ));
        }
        tracing::info!(edge = %config.id, bus = bus.kind(), store = store.backend(), shards, "edge started");
        let control = control_state::ControlState::new(control_metrics, bus, &config.control);
        let edge = Arc::new(Edge {
            config,
            tokens,
            store,
            metrics,
            channels,
            cert,
            quic_config,
            shutdown: shutdown.clone(),
            next_conn: AtomicU64::new(1),
            control,
            top_rooms: top_rx,
            limiter: Arc::default(),
            account,
            bans,
            polls: Default::default(),
        });
        control_plane::spawn(&edge, shutdown);
        Ok(edge)
    }

    /// `GET /v1/ws` (WebSocket), `GET /v1/sse` (server-sent events), `GET /v1/cert` (the QUIC certificate) and
    /// `GET /v1/top-rooms` (the latest top-rooms ranking).
    pub fn router(self: &Arc<Self>) -> Router {
        Router::new()
            .route(
                "/v1/ws",
                get(ws::upgrade).route_layer(axum::middleware::from_fn_with_state(
                    Arc::clone(self),
                    control_plane::drain::refuse_while_draining,
                )),
            )
            .route(
                "/v1/sse",
                get(fallback::sse::stream).route_layer(axum::middleware::from_fn_with_state(
                    Arc::clone(self),
                    control_plane::drain::refuse_while_draining,
                )),
            )
            .route("/v1/poll", get(fallback::poll::poll))
            .route("/v1/cert", get(cert_handler))
            .route("/v1/top-rooms", get(top_rooms_handler))
            .with_state(Arc::clone(self))
    }

    /// `GET /v1/blobs/{id}` (notify-pull bodies, from the store). A distributed
    /// edge mounts it; standalone serves ingest's route of the same path.
    pub fn blob_router(self: &Arc<Self>) -> Router {
        Router::new()
            .route("/v1/blobs/{id}", get(blobs::get))
            .with_state(Arc::clone(self))
    }

    /// Serves QUIC on `socket` until shutdown. Must be called inside a tokio runtime.
    pub fn serve_quic(
        self: &Arc<Self>,
        socket: std::net::UdpSocket,
    ) -> Result<tokio::task::JoinHandle<()>, EdgeError> {
        socket.set_nonblocking(true).map_err(EdgeError::Quic)?;
        let mut server_config = self.quic_config.clone();
        server_config.transport_config(Arc::new(quic::transport_config(&self.config)));
        let endpoint = quinn::Endpoint::new(
            quinn::EndpointConfig::default(),
            Some(server_config),
            socket,
            Arc::new(quinn::TokioRuntime),
        )
        .map_err(EdgeError::Quic)?;
        if let Ok(addr) = endpoint.local_addr() {
            tracing::info!(edge = %self.config.id, %addr, "QUIC listening");
        }
        Ok(tokio::spawn(quic::accept_loop(Arc::clone(self), endpoint)))
    }
}

/// The control plane's routes and readiness (`control_plane/`).
impl Edge {
    /// Readiness of the edge: not draining, bus healthy, store answering.
    pub async fn readiness(&self) -> Result<(), NotReady> {
        control_plane::readiness::check(self).await
    }

    /// `POST /admin/drain` (app-role token). Distributed edges only: a
    /// standalone server has nowhere to send its clients.
    pub fn admin_router(self: &Arc<Self>) -> Router {
        control_plane::drain::router(Arc::clone(self))
    }

    /// `GET /v1/channels/{channel}/online` from this edge's own members: what a
    /// standalone server (the only edge) answers.
    pub fn local_online_router(self: &Arc<Self>) -> Router {
        control_plane::online::router(Arc::clone(self))
    }
}

async fn top_rooms_handler(State(edge): State<Arc<Edge>>) -> Json<top_rooms::TopRoomsSnapshot> {
    Json(edge.top_rooms().as_ref().clone())
}

async fn cert_handler(State(edge): State<Arc<Edge>>) -> Json<serde_json::Value> {
    let der = edge.cert_der();
    Json(serde_json::json!({
        "sha256": edge.cert_sha256_hex(),
        "der_base64": base64::engine::general_purpose::STANDARD.encode(der),
        "pem": tls::pem(der),
    }))
}
