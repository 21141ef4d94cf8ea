//! Cost of one decision of the load model (`LoadModel::pick`, k = 3), without
//! HTTP or locking, for fleets of 3 to 1,000 edges. For BENCHMARKS.md:
//!
//! ```sh
//! cargo run --release -p danmaku-scheduler --example pick_cost
//! ```

use std::hint::black_box;
use std::time::{Duration, Instant};

use danmaku_scheduler::load_model::{LoadModel, ModelConfig, Registration};
use danmaku_scheduler::scrape::parse_exposition;

fn main() {
    const PICKS: u64 = 200_000;
    for n in [3usize, 10, 100, 1000] {
        let t0 = Instant::now();
        let mut model = LoadModel::new(ModelConfig::default());
        for i in 0..n {
            let id = format!("edge{i}");
            model.on_register(
                t0,
                Registration {
                    id: id.clone(),
                    ws: format!("ws://10.0.0.{i}:7070/v1/ws"),
                    quic: String::new(),
                    metrics_url: format!("http://10.0.0.{i}:7070/metrics"),
                    capacity: 19_000,
                    egress_capacity: 125_000_000,
                    cores: 2,
                },
            );
            let text = format!("danmaku_edge_connections {}\n", (i * 37) % 1000);
            model.on_sample(&id, parse_exposition(&text).unwrap().at(t0));
        }
        // Picks within one sampling interval: the in-flight log grows as it
        // would between two readings.
        let at = t0 + Duration::from_millis(10);
        let started = Instant::now();
        for seed in 0..PICKS {
            black_box(model.pick(at, 3, seed));
        }
        let per = started.elapsed().as_secs_f64() / PICKS as f64;
        println!("{n:>5} edges: {:.2} µs per pick (k = 3)", per * 1e6);
    }
}
