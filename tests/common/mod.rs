//! Starting a standalone server in-process for the end-to-end tests. Generic
//! helpers (metrics parsing, waiting) live in the `danmaku-testkit` crate.
#![allow(dead_code)]

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
        data: std::env::temp_dir().join(format!("danmaku-e2e-{}", std::process::id())),
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
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/METRICS.md"))
        .expect("docs/METRICS.md");
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

/// The names in `names` with no sample in the Prometheus text `exposition`.
pub fn missing_metrics<'a>(exposition: &str, names: &'a [String]) -> Vec<&'a String> {
    names
        .iter()
        .filter(|n| {
            !exposition.lines().any(|l| {
                l.strip_prefix(n.as_str())
                    .is_some_and(|rest| rest.starts_with([' ', '{', '_']))
            })
        })
        .collect()
}
