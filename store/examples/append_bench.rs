//! Append throughput of a store backend: N tasks × M appends, as ingest does them
//! (each with a fresh `client_msg_id`, each awaited before the next).
//!
//! ```text
//! cargo run --release -p danmaku-store --example append_bench -- embedded:/tmp/bench.db
//! source .services/env
//! cargo run --release -p danmaku-store --example append_bench -- "$DANMAKU_TEST_POSTGRES"
//! ```
//! Options after the URL: `--tasks N` (default 32), `--appends M` per task (default
//! 200), `--channels C` (default 1: every task appends to the same channel, the
//! worst case, since appends to one channel are serialized; with C > 1 task i uses
//! channel i % C).

use std::time::Instant;

use danmaku_store::NewMessage;

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let url = args
        .next()
        .unwrap_or_else(|| "embedded:/tmp/danmaku-append-bench.db".into());
    let (mut tasks, mut appends, mut channels) = (32usize, 200usize, 1usize);
    while let Some(flag) = args.next() {
        let value: usize = args
            .next()
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{flag} needs a number"));
        match flag.as_str() {
            "--tasks" => tasks = value,
            "--appends" => appends = value,
            "--channels" => channels = value.max(1),
            other => panic!("unknown option {other}"),
        }
    }
    let store = danmaku_store::connect(&url)
        .await
        .unwrap_or_else(|e| panic!("cannot open {url}: {e}"));
    let run = std::process::id();
    let start = Instant::now();
    let mut joins = Vec::new();
    for t in 0..tasks {
        let store = store.clone();
        let channel = format!("group:bench-{run}-{}", t % channels);
        joins.push(tokio::spawn(async move {
            let mut worst = std::time::Duration::ZERO;
            for i in 0..appends {
                let begun = Instant::now();
                store
                    .append(NewMessage {
                        channel: channel.clone(),
                        client_msg_id: Some(format!("{t}-{i}")),
                        sender: format!("user{t}"),
                        kind: "gift".into(),
                        text: "rocket".into(),
                        payload_json: Some(r#"{"gift":"rocket","count":1}"#.into()),
                        blob: None,
                        ts_ms: 1_732_350_000_000,
                    })
                    .await
                    .expect("append failed");
                worst = worst.max(begun.elapsed());
            }
            worst
        }));
    }
    let mut worst = std::time::Duration::ZERO;
    for j in joins {
        worst = worst.max(j.await.expect("task panicked"));
    }
    let elapsed = start.elapsed();
    let total = tasks * appends;
    println!(
        "{backend}: {total} appends ({tasks} tasks x {appends}, {channels} channel(s)) in {:.2} s \
         = {:.0} appends/s; slowest append {:.1} ms",
        elapsed.as_secs_f64(),
        total as f64 / elapsed.as_secs_f64(),
        worst.as_secs_f64() * 1e3,
        backend = store.backend(),
    );
}
