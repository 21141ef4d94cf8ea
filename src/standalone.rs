//! `danmaku standalone`: the whole system in one process on one address.
//!
//! ingest, edge and scheduler share a [`MemoryBus`] and one Prometheus registry;
//! their routers are merged with `/metrics`, `/healthz` and the demo page, and
//! QUIC listens on the same port number over UDP. Without `--auth-secret` a
//! random key is made at start and `POST /v1/dev/token` hands out tokens.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::response::Html;
use axum::routing::get;
use danmaku_bus::{Bus, MemoryBus, MemoryBusConfig};
use danmaku_edge::{Edge, EdgeConfig};
use danmaku_ingest::{Ingest, IngestConfig};
use danmaku_proto::token::TokenKey;
use danmaku_scheduler::{EdgeInfo, Scheduler, SchedulerConfig};
use prometheus::Registry;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::server::{
    Readiness, ServeError, bind_pair, ops_router, process_registry, readyz_router,
};

/// The player page, served at `/`, with its script and the JavaScript SDK bundle
/// it imports (prebuilt by `npm run build` in sdk/js; no build step at run time).
const INDEX_HTML: &str = include_str!("../web/index.html");
const APP_JS: &str = include_str!("../web/app.js");
const SDK_JS: &str = include_str!("../sdk/js/dist/danmaku.min.js");

/// A JavaScript module as an HTTP answer.
fn javascript(body: &'static str) -> impl axum::response::IntoResponse {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/javascript; charset=utf-8",
        )],
        body,
    )
}

/// How long open connections get to finish after shutdown starts.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Settings of a standalone server. Defaults: `127.0.0.1:7070`, data under
/// `./data`, dev tokens (no secret), and each component's own defaults.
#[derive(Debug, Clone)]
pub struct StandaloneConfig {
    /// TCP (HTTP, WebSocket) and UDP (QUIC) address. Port 0 picks a free one.
    pub listen: SocketAddr,
    /// Where the embedded store keeps its file (used by the reliable lane).
    pub data: PathBuf,
    /// HMAC key for tokens; `None` enables the dev token endpoint with a random key.
    pub auth_secret: Option<String>,
    /// More secrets whose tokens are accepted (key rotation: `auth_secret` signs,
    /// these only verify). Ignored without `auth_secret`. Default none.
    pub extra_auth_secrets: Vec<String>,
    pub edge: EdgeConfig,
    pub ingest: IngestConfig,
    pub bus: MemoryBusConfig,
}

impl Default for StandaloneConfig {
    fn default() -> Self {
        StandaloneConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 7070)),
            data: PathBuf::from("./data"),
            auth_secret: None,
            extra_auth_secrets: Vec::new(),
            edge: EdgeConfig::default(),
            ingest: IngestConfig::default(),
            bus: MemoryBusConfig::default(),
        }
    }
}

/// Errors starting a standalone server.
#[derive(Debug, thiserror::Error)]
pub enum StandaloneError {
    #[error(transparent)]
    Serve(#[from] ServeError),
    #[error("edge: {0}")]
    Edge(#[from] danmaku_edge::EdgeError),
    #[error("ingest: {0}")]
    Ingest(#[from] danmaku_ingest::IngestError),
    #[error("scheduler: {0}")]
    Scheduler(#[from] danmaku_scheduler::SchedulerError),
    #[error("metrics: {0}")]
    Metrics(prometheus::Error),
    #[error("store: {0}")]
    Store(#[from] danmaku_store::StoreError),
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
}

/// A started standalone server.
pub struct Running {
    /// Where HTTP and WebSocket listen.
    pub http_addr: SocketAddr,
    /// Where QUIC listens (same port, UDP).
    pub quic_addr: SocketAddr,
    /// The process registry, for tests that read metrics directly.
    pub registry: Registry,
    pub edge: Arc<Edge>,
    /// The token key in use (random in dev mode), for tests that mint tokens.
    pub tokens: TokenKey,
    shutdown: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
}

impl Running {
    /// Base URL of the HTTP API, e.g. `http://127.0.0.1:7070`.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.http_addr)
    }

    /// Stops serving and waits (bounded) for the tasks to end.
    pub async fn stop(self) {
        self.shutdown.cancel();
        for t in self.tasks {
            let _ = tokio::time::timeout(SHUTDOWN_GRACE * 2, t).await;
        }
    }

    /// Waits until the server stops (after `shutdown` is cancelled).
    pub async fn wait(self) {
        for t in self.tasks {
            let _ = t.await;
        }
    }
}

/// Logs a loud warning when `POST /v1/dev/token` is reachable from other
/// machines: anyone who can connect can then mint tokens for any user (and, with
/// `--dev-app-tokens`, manage groups). Returns whether it warned.
pub fn warn_if_dev_tokens_exposed(listen: SocketAddr, app_tokens: bool) -> bool {
    if listen.ip().is_loopback() {
        return false;
    }
    tracing::warn!(
        %listen,
        app_tokens,
        "DANGER: dev tokens are enabled on a non-loopback address: ANYONE who can reach \
         {listen} can mint a token for ANY user at POST /v1/dev/token{}. Set --auth-secret \
         (and mint tokens in your app backend) or listen on 127.0.0.1.",
        if app_tokens { " INCLUDING app tokens that manage groups (--dev-app-tokens)" } else { "" }
    );
    true
}

/// Starts all components and returns once the sockets are bound.
pub async fn start(
    config: StandaloneConfig,
    shutdown: CancellationToken,
) -> Result<Running, StandaloneError> {
    let (tcp, udp) = bind_pair(config.listen)?;
    let http_addr = tcp.local_addr()?;
    let quic_addr = udp.local_addr()?;

    let registry = process_registry();
    let (tokens, dev_tokens) = match &config.auth_secret {
        Some(secret) => {
            let ring = std::iter::once(secret).chain(&config.extra_auth_secrets);
            (
                TokenKey::ring(ring).unwrap_or_else(|| TokenKey::new(secret)),
                false,
            )
        }
        None => {
            tracing::warn!(
                "no --auth-secret: using a random key and enabling POST /v1/dev/token (development only)"
            );
            (TokenKey::new(rand::random::<[u8; 32]>()), true)
        }
    };

    std::fs::create_dir_all(&config.data)?;
    let store_url = format!("embedded:{}", config.data.join("danmaku.db").display());
    let store = danmaku_store::connect(&store_url).await?;
    let bus: Arc<dyn Bus> = Arc::new(MemoryBus::new(config.bus.clone()));
    danmaku_bus::metrics::register(bus.clone(), &registry).map_err(StandaloneError::Metrics)?;
    let edge = Edge::start(
        config.edge.clone(),
        bus.clone(),
        store.clone(),
        tokens.clone(),
        &registry,
        shutdown.clone(),
    )
    .await?;
    let dev_tokens = dev_tokens || config.ingest.dev_tokens;
    if dev_tokens {
        warn_if_dev_tokens_exposed(http_addr, config.ingest.dev_app_tokens);
    }
    let ingest = Ingest::new(
        IngestConfig {
            dev_tokens,
            ..config.ingest.clone()
        },
        bus,
        store,
        tokens.clone(),
        &registry,
    )?;
    // The edge of this process learns account changes from its own consumer;
    // the ingest half needs them too (checked on every HTTP call).
    ingest.start_announcements(shutdown.clone()).await?;
    ingest.start_moderation().await?;
    let scheduler = Scheduler::new(
        SchedulerConfig {
            static_edges: vec![EdgeInfo {
                id: config.edge.id.clone(),
                ws: format!("ws://{http_addr}/v1/ws"),
                quic: quic_addr.to_string(),
                load: 0.0,
            }],
            ..SchedulerConfig::default()
        },
        &registry,
    )?;

    let app = Router::new()
        .route("/", get(|| async { Html(INDEX_HTML) }))
        .route("/app.js", get(|| async { javascript(APP_JS) }))
        .route("/sdk/danmaku.min.js", get(|| async { javascript(SDK_JS) }))
        .merge(ops_router(registry.clone()))
        .merge(readyz_router(Readiness {
            edge: Some(edge.clone()),
            ..Readiness::default()
        }))
        .merge(edge.local_online_router())
        .merge(edge.router())
        .merge(scheduler.router())
        .merge(ingest.router());

    let quic_task = edge.serve_quic(udp)?;
    let listener = tokio::net::TcpListener::from_std(tcp)?;
    let http_task = {
        let edge = edge.clone();
        let tune = move |tcp: &tokio::net::TcpStream| edge.tune_tcp(tcp);
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            // HTTP/1.1 with upgrades (`danmaku_edge::serve_http1`: a WebSocket
            // takes its socket back); requests carry the peer address.
            let serve = danmaku_edge::serve_http1(listener, app, tune, shutdown.clone());
            tokio::select! {
                () = serve => {},
                _ = async { shutdown.cancelled().await; tokio::time::sleep(SHUTDOWN_GRACE).await } => {
                    tracing::warn!("connections still open after the shutdown grace; closing");
                }
            }
        })
    };
    tracing::info!(%http_addr, %quic_addr, cert_sha256 = %edge.cert_sha256_hex(), "standalone serving");
    Ok(Running {
        http_addr,
        quic_addr,
        registry,
        edge,
        tokens,
        shutdown,
        tasks: vec![http_task, quic_task],
    })
}
