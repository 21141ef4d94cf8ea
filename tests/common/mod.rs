//! Starting a standalone server in-process for the end-to-end tests. Generic
//! helpers (metrics parsing, waiting) live in the `danmaku-testkit` crate.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use danmaku::standalone::{self, Running, StandaloneConfig};
use danmaku_client::{Client, ServerEvent};
use tokio_util::sync::CancellationToken;

pub const SECRET: &str = "e2e-test-secret";

/// A standalone server on a free loopback port with a known secret;
/// `tweak` adjusts the config (limits, queue sizes) per test.
pub async fn start(tweak: impl FnOnce(&mut StandaloneConfig)) -> Running {
    danmaku_testkit::init_crypto();
    let mut config = StandaloneConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        auth_secret: Some(SECRET.into()),
        // Unique per start, not per process id: tests run in a PID namespace,
        // so ids repeat from run to run, and a stale embedded store from an
        // earlier run would turn every gift into a "duplicate".
        data: std::env::temp_dir().join(danmaku_testkit::kafka::unique("danmaku-e2e")),
        ..StandaloneConfig::default()
    };
    tweak(&mut config);
    standalone::start(config, CancellationToken::new())
        .await
        .expect("standalone starts")
}

pub fn token(srv: &Running, user: &str) -> String {
    srv.tokens
        .mint(user, "user", danmaku_proto::token::now_secs(), 3600)
}

/// Reads events until `Joined` for `channel` arrives.
pub async fn wait_joined(client: &mut Client, channel: &str) {
    let deadline = Duration::from_secs(10);
    tokio::time::timeout(deadline, async {
        while let Some(ev) = client.next_event().await {
            match ev {
                ServerEvent::Joined { channel: c, .. } if c == channel => return,
                ServerEvent::Error { code, message } => panic!("join failed: {code}: {message}"),
                _ => {}
            }
        }
        panic!("connection closed before joined");
    })
    .await
    .expect("joined within 10 s");
}

pub async fn metrics_text(base: &str) -> String {
    reqwest::get(format!("{base}/metrics"))
        .await
        .expect("GET /metrics")
        .text()
        .await
        .expect("metrics body")
}

/// `(section, metric)` for every metric row of docs/METRICS.md; section is the
/// `## heading` it stands under (`edge`, `ingest`, `scheduler`, `bus`).
pub fn documented_metrics() -> Vec<(String, String)> {
    // The run-time variable (set by cargo and nextest) follows the checkout even when a
    // shared target dir reuses a test binary built in another checkout.
    let root = std::env::var("CARGO_MANIFEST_DIR")
        .unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").to_owned());
    let path = std::path::Path::new(&root).join("docs/METRICS.md");
    let doc = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut section = String::new();
    let mut out = Vec::new();
    for line in doc.lines() {
        if let Some(h) = line.strip_prefix("## ") {
            section = h.split_whitespace().next().unwrap_or("").to_owned();
        } else if let Some(rest) = line.strip_prefix("| `")
            && let Some(name) = rest.split('`').next().filter(|n| n.starts_with("danmaku_"))
        {
            out.push((section.clone(), name.to_owned()));
        }
    }
    out
}

/// The names in `names` with no sample in the Prometheus text `exposition`. A
/// sample counts when its name is exactly the metric's, or the metric's with a
/// histogram/summary suffix (`_bucket`, `_sum`, `_count`) when the exposition's
/// `# TYPE` line says it is one; `danmaku_x` is not found by `danmaku_x_total`.
pub fn missing_metrics<'a>(exposition: &str, names: &'a [String]) -> Vec<&'a String> {
    let mut samples = std::collections::HashSet::new();
    let mut kinds = std::collections::HashMap::new();
    for line in exposition.lines() {
        if let Some(t) = line.strip_prefix("# TYPE ") {
            let mut it = t.split_whitespace();
            if let (Some(name), Some(kind)) = (it.next(), it.next()) {
                kinds.insert(name, kind);
            }
        } else if !line.starts_with('#')
            && let Some(name) = line.split(['{', ' ']).next().filter(|n| !n.is_empty())
        {
            samples.insert(name);
        }
    }
    names
        .iter()
        .filter(|n| {
            let n = n.as_str();
            let found = samples.contains(n)
                || (matches!(kinds.get(n), Some(&"histogram" | &"summary"))
                    && ["_bucket", "_sum", "_count"]
                        .iter()
                        .any(|s| samples.contains(format!("{n}{s}").as_str())));
            !found
        })
        .collect()
}

/// A danmaku process, killed when dropped. Its log goes to a file named in panics.
pub struct Proc {
    pub child: Child,
    pub base: String,
    /// TCP (HTTP, WebSocket) and UDP (QUIC, edges) address.
    pub addr: std::net::SocketAddr,
    pub log: PathBuf,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn free_addr() -> std::net::SocketAddr {
    // Bind both protocols (edges use UDP on the same port for QUIC), then release.
    let (tcp, udp) = danmaku::server::bind_pair("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = tcp.local_addr().unwrap();
    drop((tcp, udp));
    addr
}

/// Starts `danmaku ROLE` with the bus, the test PostgreSQL store and the test
/// secret on a free address; returns once `/healthz` answers.
pub async fn spawn(role: &str, bus: &str, extra: &[&str]) -> Proc {
    let postgres = danmaku_testkit::kafka::env_or_fail("DANMAKU_TEST_POSTGRES");
    let args: Vec<String> = ["--bus", bus, "--auth-secret", SECRET, "--store", &postgres]
        .iter()
        .chain(extra)
        .map(|s| s.to_string())
        .collect();
    spawn_plain(role, &args).await
}

/// Starts `danmaku ROLE --listen ADDR ARGS…` on a free address with exactly the
/// given flags (no bus, store or secret added); returns once `/healthz` answers.
pub async fn spawn_plain(role: &str, args: &[String]) -> Proc {
    let addr = free_addr();
    let log = std::env::temp_dir().join(format!(
        "{}.log",
        danmaku_testkit::kafka::unique(&format!("danmaku-{role}"))
    ));
    let child = Command::new(env!("CARGO_BIN_EXE_danmaku"))
        .arg(role)
        .args(["--listen", &addr.to_string()])
        .args(args)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .expect("spawn danmaku");
    let p = Proc {
        child,
        base: format!("http://{addr}"),
        addr,
        log,
    };
    wait_healthy(&p, role).await;
    p
}

/// Starts `danmaku ARGS…` (the caller gives every flag, `--listen` included, at
/// `addr`) and returns once `/healthz` answers on `addr`.
pub async fn spawn_args(addr: std::net::SocketAddr, args: &[&str]) -> Proc {
    let log = std::env::temp_dir().join(format!(
        "{}.log",
        danmaku_testkit::kafka::unique(&format!("danmaku-{}", args[0]))
    ));
    // The log (tracing writes to stdout) and stderr both go to the file.
    let file = std::fs::File::create(&log).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_danmaku"))
        .args(args)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(file.try_clone().unwrap())
        .stderr(file)
        .spawn()
        .expect("spawn danmaku");
    let local = std::net::SocketAddr::from(([127, 0, 0, 1], addr.port()));
    let p = Proc {
        child,
        base: format!("http://{local}"),
        addr: local,
        log,
    };
    wait_healthy(&p, &format!("{args:?}")).await;
    p
}

/// Waits (up to 30 s) until `p` answers `/healthz`; panics with its log path if not.
pub async fn wait_healthy(p: &Proc, what: &str) {
    let healthy = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            if let Ok(r) = reqwest::get(format!("{}/healthz", p.base)).await
                && r.status().is_success()
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert!(
        healthy.is_ok(),
        "{what} on {} not healthy; log: {}",
        p.addr,
        p.log.display()
    );
}
