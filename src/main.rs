//! The `danmaku` command line. Maps flags (and `DANMAKU_<FLAG>` environment
//! variables) onto the config structs of the service crates and runs them.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand, ValueEnum};
use danmaku::server::{bind_pair, cancel_on_signal, ops_router};
use danmaku::standalone::{self, StandaloneConfig};
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(
    name = "danmaku",
    version,
    about = "Live-stream danmaku, gift and group chat broadcast engine"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Everything in one process: ingest, edge, scheduler, demo page, /metrics.
    Standalone {
        #[arg(long, env = "DANMAKU_LISTEN", default_value = "127.0.0.1:7070")]
        listen: SocketAddr,
        #[arg(long, env = "DANMAKU_DATA", default_value = "./data")]
        data: PathBuf,
        /// HMAC key for tokens; repeat (or comma-separate) to rotate: all verify, the
        /// first signs. Without it, dev tokens are handed out at POST /v1/dev/token.
        #[arg(long, env = "DANMAKU_AUTH_SECRET", value_delimiter = ',')]
        auth_secret: Vec<String>,
        /// Let POST /v1/dev/token also mint `app` tokens (group management); dev only.
        #[arg(long, env = "DANMAKU_DEV_APP_TOKENS")]
        dev_app_tokens: bool,
        #[command(flatten)]
        limits: IngestLimits,
    },
    /// The upload API: validates, rate-limits and publishes to the bus.
    Ingest {
        #[arg(long, env = "DANMAKU_LISTEN")]
        listen: SocketAddr,
        /// `memory` or `kafka://host:port[,host:port…][?topic=NAME]`.
        #[arg(long, env = "DANMAKU_BUS")]
        bus: String,
        /// `embedded:PATH` or `postgres://…`: where gifts and group chat are persisted.
        #[arg(long, env = "DANMAKU_STORE")]
        store: String,
        /// HMAC key for tokens; repeat (or comma-separate) to rotate: all verify, the first signs.
        #[arg(
            long,
            env = "DANMAKU_AUTH_SECRET",
            value_delimiter = ',',
            required = true
        )]
        auth_secret: Vec<String>,
        #[command(flatten)]
        limits: IngestLimits,
    },
    /// Holds client connections and pushes batches from the bus.
    Edge {
        #[arg(long, env = "DANMAKU_LISTEN")]
        listen: SocketAddr,
        #[arg(long, env = "DANMAKU_BUS")]
        bus: String,
        /// `embedded:PATH` or `postgres://…` (resume and gap fills read from it).
        #[arg(long, env = "DANMAKU_STORE")]
        store: String,
        /// Address clients should use to reach this edge (defaults to --listen).
        #[arg(long, env = "DANMAKU_ADVERTISE")]
        advertise: Option<String>,
        /// Scheduler to register with.
        #[arg(long, env = "DANMAKU_SCHEDULER")]
        scheduler: Option<String>,
        /// HMAC key for tokens; repeat (or comma-separate) to rotate: all verify, the first signs.
        #[arg(
            long,
            env = "DANMAKU_AUTH_SECRET",
            value_delimiter = ',',
            required = true
        )]
        auth_secret: Vec<String>,
        #[arg(long, env = "DANMAKU_TLS_CERT")]
        tls_cert: Option<PathBuf>,
        #[arg(long, env = "DANMAKU_TLS_KEY")]
        tls_key: Option<PathBuf>,
    },
    /// Hands clients the least-loaded edges.
    Scheduler {
        #[arg(long, env = "DANMAKU_LISTEN")]
        listen: SocketAddr,
        #[arg(long, env = "DANMAKU_PROMETHEUS_URL")]
        prometheus_url: Option<String>,
        /// Edges to hand out, as `id=ws_url|quic_addr` (until edges self-register).
        #[arg(long = "edge", env = "DANMAKU_EDGES", value_delimiter = ',')]
        edges: Vec<String>,
    },
    /// Prints a signed token, as an app backend would mint it.
    Token {
        /// HMAC key for tokens; repeat (or comma-separate) to rotate: all verify, the first signs.
        #[arg(
            long,
            env = "DANMAKU_AUTH_SECRET",
            value_delimiter = ',',
            required = true
        )]
        auth_secret: Vec<String>,
        #[arg(long, env = "DANMAKU_USER")]
        user: String,
        #[arg(long, env = "DANMAKU_TTL_SECS", default_value_t = 3600)]
        ttl_secs: u64,
        #[arg(long, env = "DANMAKU_ROLE", default_value = "user")]
        role: String,
    },
    /// Joins many clients, posts comments, reports delivery, loss, order and latency.
    Loadtest {
        /// Base HTTP URL of a standalone server, e.g. http://127.0.0.1:7070 (the
        /// default for --ingest and --edges; not needed when both are given).
        #[arg(long, env = "DANMAKU_TARGET", required_unless_present_all = ["ingest", "edges"])]
        target: Option<String>,
        /// Distributed mode: ingest base URLs, posted to round-robin (default: --target).
        #[arg(long, env = "DANMAKU_INGEST", value_delimiter = ',')]
        ingest: Vec<String>,
        /// Distributed mode: edge base URLs, viewers spread round-robin (default: --target).
        #[arg(long, env = "DANMAKU_EDGES", value_delimiter = ',')]
        edges: Vec<String>,
        /// Mint tokens locally with the cluster's secret instead of POST /v1/dev/token.
        #[arg(long, env = "DANMAKU_AUTH_SECRET")]
        auth_secret: Option<String>,
        /// Extra danmaku per second to rooms no viewer joined (room:foreign-N).
        #[arg(long, env = "DANMAKU_FOREIGN_RATE", default_value_t = 0.0)]
        foreign_rate: f64,
        #[arg(long, env = "DANMAKU_CONNECTIONS", default_value_t = 100)]
        connections: usize,
        #[arg(long, env = "DANMAKU_ROOMS", default_value_t = 1)]
        rooms: usize,
        /// Danmaku posted per second, in total.
        #[arg(long, env = "DANMAKU_RATE", default_value_t = 50.0)]
        rate: f64,
        /// Seconds of posting.
        #[arg(long, env = "DANMAKU_DURATION", default_value_t = 10)]
        duration: u64,
        #[arg(long, env = "DANMAKU_TRANSPORT", value_enum, default_value_t = LoadTransport::WsPb)]
        transport: LoadTransport,
        #[arg(long, env = "DANMAKU_SENDERS", default_value_t = 10)]
        senders: usize,
        /// Write the report as JSON here.
        #[arg(long, env = "DANMAKU_REPORT")]
        report: Option<PathBuf>,
        /// Local addresses to spread client sockets over (e.g. 127.0.0.2,127.0.0.3).
        #[arg(long, env = "DANMAKU_SOURCE_ADDRS", value_delimiter = ',')]
        source_addrs: Vec<std::net::IpAddr>,
    },
}

/// Upload limits of ingest (defaults: see `danmaku_ingest::IngestConfig`).
#[derive(clap::Args)]
struct IngestLimits {
    /// Danmaku per second one user may post (token bucket refill).
    #[arg(long, env = "DANMAKU_USER_RATE", default_value_t = 5.0)]
    user_rate: f64,
    /// Posts a user may burst before the rate applies.
    #[arg(long, env = "DANMAKU_USER_BURST", default_value_t = 10)]
    user_burst: u32,
    /// Danmaku per second one channel accepts from all users together.
    #[arg(long, env = "DANMAKU_CHANNEL_RATE", default_value_t = 2000.0)]
    channel_rate: f64,
}

impl IngestLimits {
    fn apply(&self, config: danmaku_ingest::IngestConfig) -> danmaku_ingest::IngestConfig {
        danmaku_ingest::IngestConfig {
            user_rate_per_sec: self.user_rate,
            user_burst: self.user_burst,
            channel_rate_per_sec: self.channel_rate,
            ..config
        }
    }
}

#[derive(Clone, Copy, ValueEnum)]
enum LoadTransport {
    WsJson,
    WsPb,
    Quic,
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    // quinn brings ring, reqwest could bring aws-lc-rs: pick one provider for the process.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let runtime = tokio::runtime::Runtime::new().context("starting the tokio runtime")?;
    runtime.block_on(run(cli.command))
}

async fn run(command: Command) -> Result<()> {
    let shutdown = CancellationToken::new();
    match command {
        Command::Standalone {
            listen,
            data,
            auth_secret,
            dev_app_tokens,
            limits,
        } => {
            cancel_on_signal(shutdown.clone());
            let mut secrets = auth_secret.into_iter();
            let config = StandaloneConfig {
                listen,
                data,
                auth_secret: secrets.next(),
                extra_auth_secrets: secrets.collect(),
                ingest: limits.apply(danmaku_ingest::IngestConfig {
                    dev_app_tokens,
                    ..danmaku_ingest::IngestConfig::default()
                }),
                ..StandaloneConfig::default()
            };
            let running = standalone::start(config, shutdown)
                .await
                .with_context(|| format!("starting standalone on {listen}"))?;
            println!(
                "danmaku standalone: open {} in a browser (QUIC on udp {})",
                running.base_url(),
                running.quic_addr
            );
            running.wait().await;
            Ok(())
        }
        Command::Ingest {
            listen,
            bus,
            store,
            auth_secret,
            limits,
        } => {
            cancel_on_signal(shutdown.clone());
            let registry = prometheus::Registry::new();
            let (bus, store) = open_backends(&bus, &store, &registry).await?;
            let ingest = danmaku_ingest::Ingest::new(
                limits.apply(danmaku_ingest::IngestConfig {
                    node_id: format!("ingest-{listen}"),
                    ..danmaku_ingest::IngestConfig::default()
                }),
                bus,
                store,
                token_key(&auth_secret)?,
                &registry,
            )?;
            let app = axum::Router::new()
                .merge(ops_router(registry))
                .merge(ingest.router());
            serve_http(listen, app, shutdown).await
        }
        Command::Edge {
            listen,
            bus,
            store,
            advertise,
            scheduler,
            auth_secret,
            tls_cert,
            tls_key,
        } => {
            if scheduler.is_some() {
                tracing::warn!("--scheduler is not used yet: edges do not self-register");
            }
            cancel_on_signal(shutdown.clone());
            let registry = prometheus::Registry::new();
            let (bus, store) = open_backends(&bus, &store, &registry).await?;
            let (tcp, udp) = bind_pair(listen)?;
            let edge = danmaku_edge::Edge::start(
                danmaku_edge::EdgeConfig {
                    id: format!(
                        "edge-{}",
                        advertise.clone().unwrap_or_else(|| listen.to_string())
                    ),
                    tls_cert,
                    tls_key,
                    ..danmaku_edge::EdgeConfig::default()
                },
                bus,
                store,
                token_key(&auth_secret)?,
                &registry,
                shutdown.clone(),
            )
            .await?;
            let quic = edge.serve_quic(udp)?;
            let app = axum::Router::new()
                .merge(ops_router(registry))
                .merge(edge.router());
            let listener = tokio::net::TcpListener::from_std(tcp)?;
            tracing::info!(%listen, "edge serving");
            use axum::serve::ListenerExt;
            let tuned = {
                let edge = edge.clone();
                listener.tap_io(move |s| edge.tune_tcp(s))
            };
            let graceful = shutdown.clone();
            // Connect info gives the edge the peer address (per-IP connection caps).
            let app = app.into_make_service_with_connect_info::<SocketAddr>();
            axum::serve(tuned, app)
                .with_graceful_shutdown(async move { graceful.cancelled().await })
                .await?;
            quic.abort();
            Ok(())
        }
        Command::Scheduler {
            listen,
            prometheus_url,
            edges,
        } => {
            if prometheus_url.is_some() {
                tracing::warn!("--prometheus-url is not used yet: edges are static");
            }
            cancel_on_signal(shutdown.clone());
            let registry = prometheus::Registry::new();
            let static_edges = edges
                .iter()
                .map(|e| parse_edge(e))
                .collect::<Result<Vec<_>>>()?;
            let scheduler = danmaku_scheduler::Scheduler::new(
                danmaku_scheduler::SchedulerConfig { static_edges },
                &registry,
            )?;
            let app = axum::Router::new()
                .merge(ops_router(registry))
                .merge(scheduler.router());
            serve_http(listen, app, shutdown).await
        }
        Command::Token {
            auth_secret,
            user,
            ttl_secs,
            role,
        } => {
            if role != "user" && role != "app" {
                bail!("--role must be user or app, not {role:?}");
            }
            let key = token_key(&auth_secret)?;
            println!(
                "{}",
                key.mint(&user, &role, danmaku_proto::token::now_secs(), ttl_secs)
            );
            Ok(())
        }
        Command::Loadtest {
            target,
            ingest,
            edges,
            auth_secret,
            foreign_rate,
            connections,
            rooms,
            rate,
            duration,
            transport,
            senders,
            report,
            source_addrs,
        } => {
            let config = danmaku_loadtest::LoadtestConfig {
                target: target.unwrap_or_default(),
                ingest,
                edges,
                auth_secret,
                foreign_rate,
                connections,
                rooms,
                rate,
                duration: Duration::from_secs(duration),
                transport: match transport {
                    LoadTransport::WsJson => danmaku_client::Transport::WsJson,
                    LoadTransport::WsPb => danmaku_client::Transport::WsPb,
                    LoadTransport::Quic => danmaku_client::Transport::Quic,
                },
                senders,
                report,
                source_addrs,
                ..danmaku_loadtest::LoadtestConfig::default()
            };
            let report = danmaku_loadtest::run(config).await?;
            println!("{}", report.render_text());
            Ok(())
        }
    }
}

/// Connects the bus (and registers its metrics) and opens the store: what every
/// distributed ingest and edge process needs before it can serve.
async fn open_backends(
    bus_url: &str,
    store_url: &str,
    registry: &prometheus::Registry,
) -> Result<(
    std::sync::Arc<dyn danmaku_bus::Bus>,
    std::sync::Arc<dyn danmaku_store::Store>,
)> {
    let bus = danmaku_bus::connect(bus_url)
        .await
        .with_context(|| format!("connecting to the bus {bus_url}"))?;
    danmaku_bus::metrics::register(bus.clone(), registry)?;
    let store = danmaku_store::connect(store_url)
        .await
        .with_context(|| format!("opening the store {store_url}"))?;
    Ok((bus, store))
}

/// The token key ring of `--auth-secret` (repeatable): the first signs, all verify.
fn token_key(secrets: &[String]) -> Result<danmaku_proto::token::TokenKey> {
    if secrets.iter().any(|s| s.is_empty()) {
        bail!("--auth-secret must not be empty");
    }
    danmaku_proto::token::TokenKey::ring(secrets).context("--auth-secret is required")
}

/// Parses `id=ws_url|quic_addr`.
fn parse_edge(s: &str) -> Result<danmaku_scheduler::EdgeInfo> {
    let (id, rest) = s
        .split_once('=')
        .with_context(|| format!("edge {s:?}: expected id=ws_url|quic_addr"))?;
    let (ws, quic) = rest.split_once('|').unwrap_or((rest, ""));
    Ok(danmaku_scheduler::EdgeInfo {
        id: id.to_owned(),
        ws: ws.to_owned(),
        quic: quic.to_owned(),
        load: 0.0,
    })
}

async fn serve_http(
    listen: SocketAddr,
    app: axum::Router,
    shutdown: CancellationToken,
) -> Result<()> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding {listen}"))?;
    tracing::info!(%listen, "serving");
    axum::serve(listener, app)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await?;
    Ok(())
}
