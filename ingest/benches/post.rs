//! Ingest throughput with the word filter off vs on: one danmaku
//! `POST /v1/channels/{channel}/messages` through the whole router (auth,
//! validation, rate limits, moderation, encode, publish to the memory bus),
//! without lists and with a 10,000-word global list plus a 10,000-word room
//! list. `cargo bench -p danmaku-ingest --bench post`.

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, header};
use criterion::{Criterion, criterion_group, criterion_main};
use danmaku_bus::{Bus, MemoryBus, MemoryBusConfig};
use danmaku_ingest::{Ingest, IngestConfig};
use danmaku_proto::token::{TokenKey, now_secs};
use danmaku_store::{GLOBAL_SCOPE, ModerationAction, ModerationChange};
use tower::ServiceExt;

/// Deterministic pseudo-random words (as in the filter bench).
fn words(n: usize, seed: u64) -> Vec<String> {
    let mut state = seed;
    (0..n)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            // 6 to 9 letters: a random list then never hits the bench comment.
            let len = 6 + (state % 4) as usize;
            (0..len)
                .map(|i| (b'a' + ((state >> (i * 5)) % 26) as u8) as char)
                .collect()
        })
        .collect()
}

fn post(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut g = c.benchmark_group("ingest_post_danmaku");
    for (name, lists) in [("filter_off", false), ("filter_on_2x10k_words", true)] {
        let dir = tempfile::tempdir().unwrap();
        let (router, token) = rt.block_on(async {
            let url = format!("embedded:{}", dir.path().join("bench.db").display());
            let store = danmaku_store::connect(&url).await.unwrap();
            if lists {
                for (scope, seed) in [(GLOBAL_SCOPE, 7u64), ("room:bench", 11)] {
                    let mut all = words(10_000, seed);
                    let mask = all.split_off(5_000);
                    store
                        .moderate(&ModerationAction {
                            scope: scope.into(),
                            actor: "bench".into(),
                            change: ModerationChange::SetWordlist { block: all, mask },
                            ts_ms: 1,
                        })
                        .await
                        .unwrap();
                }
            }
            let bus: Arc<dyn Bus> = Arc::new(MemoryBus::new(MemoryBusConfig::default()));
            let key = TokenKey::new("bench");
            let config = IngestConfig {
                user_rate_per_sec: 1e9,
                user_burst: u32::MAX,
                channel_rate_per_sec: 1e9,
                ..IngestConfig::default()
            };
            let registry = prometheus::Registry::new();
            let ingest = Ingest::new(config, bus, store, key.clone(), &registry).unwrap();
            ingest.start_moderation().await.unwrap();
            (ingest.router(), key.mint("alice", "user", now_secs(), 3600))
        });
        g.bench_function(name, |b| {
            b.iter(|| {
                rt.block_on(async {
                    let req = Request::post("/v1/channels/room:bench/messages")
                        .header(header::AUTHORIZATION, format!("Bearer {token}"))
                        .header(header::CONTENT_TYPE, "application/json")
                        .body(Body::from(
                            r#"{"kind":"danmaku","text":"66666 主播好厉害 this is great!!"}"#,
                        ))
                        .unwrap();
                    let resp = router.clone().oneshot(req).await.unwrap();
                    assert_eq!(resp.status(), 202);
                })
            })
        });
        drop(dir);
    }
    g.finish();
}

criterion_group!(benches, post);
criterion_main!(benches);
