//! Publish throughput, publish→receive latency and the broker's CPU cost of a bus
//! backend.
//!
//! ```text
//! cargo run --release -p danmaku-bus --example throughput -- memory
//! cargo run --release -p danmaku-bus --example throughput -- "kafka://$DANMAKU_TEST_KAFKA?topic=bench.1"
//! ```
//! Options after the URL (settings of the Kafka clients go in the URL's query,
//! e.g. `?fetch_wait_ms=25&partitions=1`; see `KafkaBusConfig`):
//! * `--mode M`: `all` (default: throughput, then latency), `throughput`, `latency`,
//!   `idle`, `consume` or `publish` (the last two for one-consumer-per-process runs,
//!   `loadtest/bench-bus.sh`);
//! * `--messages N` (throughput phase, default 50,000), `--concurrency C` (default
//!   256 publishes in flight), `--rate R` (latency and publish, messages/s, default
//!   2,000);
//! * `--consumers N`: subscriptions in this process (each is its own Kafka consumer,
//!   as each edge process has one), default 1;
//! * `--duration S`: seconds of publishing (latency, publish), of waiting (idle) or
//!   the most a `consume` process runs; latency defaults to min(3 R, 10,000) messages;
//! * `--broker-pid PID`: also print the CPU-seconds (utime + stime from
//!   `/proc/PID/stat`) that process spent during the measured phase.
//!
//! Throughput publishes N messages with C in flight (each `publish` waits for its
//! acknowledgement, as ingest does) while one subscriber drains them. Latency
//! publishes at a steady rate and measures, per message and subscriber, the time from
//! calling `publish` to the subscriber receiving it. Idle only holds the
//! subscriptions. Every measured phase ends with a `RESULT key=value …` line.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use danmaku_bus::{Bus, BusError, Subscription};
use hdrhistogram::Histogram;

struct Opts {
    mode: String,
    messages: u64,
    concurrency: u64,
    rate: u64,
    consumers: u64,
    duration: Option<u64>,
    broker_pid: Option<u32>,
}

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let url = args.next().unwrap_or_else(|| "memory".into());
    let mut o = Opts {
        mode: "all".into(),
        messages: 50_000,
        concurrency: 256,
        rate: 2_000,
        consumers: 1,
        duration: None,
        broker_pid: None,
    };
    while let Some(flag) = args.next() {
        let value = args
            .next()
            .unwrap_or_else(|| panic!("{flag} needs a value"));
        let num = || -> u64 {
            value
                .parse()
                .unwrap_or_else(|_| panic!("{flag} needs a number"))
        };
        match flag.as_str() {
            "--mode" => o.mode = value.clone(),
            "--messages" => o.messages = num(),
            "--concurrency" => o.concurrency = num().max(1),
            "--rate" => o.rate = num().max(1),
            "--consumers" => o.consumers = num().max(1),
            "--duration" => o.duration = Some(num()),
            "--broker-pid" => o.broker_pid = Some(num() as u32),
            other => panic!("unknown option {other}"),
        }
    }
    let bus = danmaku_bus::connect(&url).await.expect("connect");
    eprintln!("backend {} ({url})", bus.kind());
    let latency_messages = match o.duration {
        Some(d) => o.rate * d,
        None => (o.rate * 3).min(10_000),
    };
    match o.mode.as_str() {
        "all" => {
            throughput(&bus, o.messages, o.concurrency).await;
            latency(&bus, &o, latency_messages).await;
        }
        "throughput" => throughput(&bus, o.messages, o.concurrency).await,
        "latency" => latency(&bus, &o, latency_messages).await,
        "idle" => idle(&bus, &o).await,
        "consume" => consume(&bus, &o, latency_messages).await,
        "publish" => {
            let start = Instant::now();
            publish_at(&bus, o.rate, latency_messages).await;
            println!(
                "RESULT mode=publish sent={latency_messages} secs={:.2}",
                start.elapsed().as_secs_f64()
            );
        }
        other => panic!("unknown mode {other}"),
    }
}

/// CPU-seconds (utime + stime) of a process so far, from `/proc/PID/stat`.
fn cpu_secs(pid: &str) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may contain spaces) start at `) `.
    let rest = stat.rsplit_once(") ").map_or("", |(_, r)| r);
    let f: Vec<u64> = rest
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0))
        .collect();
    // utime and stime are fields 14 and 15 of the line: 11 and 12 after the name.
    let ticks = f.get(11).copied().unwrap_or(0) + f.get(12).copied().unwrap_or(0);
    ticks as f64 / clock_ticks()
}

fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if hz > 0 { hz as f64 } else { 100.0 }
}

/// CPU of the broker (if given) and of this process between `start` and `end`.
struct Cpu {
    broker: Option<String>,
    broker0: f64,
    own0: f64,
    t0: Instant,
}

impl Cpu {
    fn start(o: &Opts) -> Cpu {
        let broker = o.broker_pid.map(|p| p.to_string());
        Cpu {
            broker0: broker.as_deref().map_or(0.0, cpu_secs),
            broker,
            own0: cpu_secs("self"),
            t0: Instant::now(),
        }
    }

    /// `broker_cpu_s=… broker_core=… own_cpu_s=… secs=…`
    fn end(&self) -> String {
        let secs = self.t0.elapsed().as_secs_f64();
        let own = cpu_secs("self") - self.own0;
        let broker = match &self.broker {
            Some(pid) => {
                let b = cpu_secs(pid) - self.broker0;
                format!("broker_cpu_s={b:.2} broker_core={:.3} ", b / secs)
            }
            None => String::new(),
        };
        format!("{broker}own_cpu_s={own:.2} secs={secs:.2}")
    }
}

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// A 64-byte payload, about the size of a short comment event: sequence number and
/// the wall-clock send time (µs since the epoch, comparable across processes).
fn payload(seq: u64, sent_us: u64) -> Bytes {
    let mut p = vec![b'x'; 64];
    p[..8].copy_from_slice(&seq.to_be_bytes());
    p[8..16].copy_from_slice(&sent_us.to_be_bytes());
    Bytes::from(p)
}

async fn throughput(bus: &Arc<dyn Bus>, messages: u64, concurrency: u64) {
    let mut sub = bus.subscribe_all().await.expect("subscribe");
    let receiver = tokio::spawn(async move {
        let mut got = 0u64;
        let mut last = Instant::now();
        while got < messages {
            match tokio::time::timeout(Duration::from_secs(10), sub.recv()).await {
                Ok(Ok(_)) => {
                    got += 1;
                    last = Instant::now();
                }
                Ok(Err(BusError::Lagged(n))) => got += n,
                Ok(Err(e)) => panic!("recv: {e}"),
                Err(_) => break,
            }
        }
        (got, last)
    });
    let start = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..concurrency {
        let bus = bus.clone();
        tasks.push(tokio::spawn(async move {
            let mut seq = w;
            while seq < messages {
                let key = Bytes::from(format!("room:{}", seq % 1000));
                bus.publish(key, payload(seq, 0)).await.expect("publish");
                seq += concurrency;
            }
        }));
    }
    for t in tasks {
        t.await.expect("publisher");
    }
    let published = start.elapsed();
    let (got, last) = receiver.await.expect("receiver");
    let received = last.duration_since(start);
    println!(
        "publish: {messages} msgs in {:.2} s = {:.0} msgs/s ({concurrency} in flight); \
         received {got} in {:.2} s = {:.0} msgs/s",
        published.as_secs_f64(),
        messages as f64 / published.as_secs_f64(),
        received.as_secs_f64(),
        got as f64 / received.as_secs_f64(),
    );
}

async fn subscribe_n(bus: &Arc<dyn Bus>, n: u64) -> Vec<Box<dyn Subscription>> {
    let mut subs = Vec::new();
    for _ in 0..n {
        subs.push(bus.subscribe_all().await.expect("subscribe"));
    }
    subs
}

/// Receives until `messages` arrived, nothing came for `quiet`, or `deadline`;
/// records publish→receive latency in µs.
async fn receive(
    mut sub: Box<dyn Subscription>,
    messages: u64,
    quiet: Duration,
    deadline: Instant,
) -> (Histogram<u64>, u64) {
    let mut hist = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3).expect("histogram");
    let mut got = 0;
    while got < messages {
        let wait = quiet.min(deadline.saturating_duration_since(Instant::now()));
        match tokio::time::timeout(wait, sub.recv()).await {
            Ok(Ok(m)) if m.payload.len() >= 16 => {
                let sent = u64::from_be_bytes(m.payload[8..16].try_into().expect("8 bytes"));
                if sent > 0 {
                    hist.saturating_record(now_us().saturating_sub(sent).max(1));
                    got += 1;
                }
            }
            Ok(Ok(_)) => {}
            Ok(Err(BusError::Lagged(n))) => got += n,
            Ok(Err(e)) => panic!("recv: {e}"),
            Err(_) => break,
        }
    }
    (hist, got)
}

/// Publishes `messages` at `rate` per second, each `publish` awaited in its own task.
async fn publish_at(bus: &Arc<dyn Bus>, rate: u64, messages: u64) {
    let mut tick = tokio::time::interval(Duration::from_nanos(1_000_000_000 / rate));
    let mut inflight = Vec::new();
    for seq in 0..messages {
        tick.tick().await;
        let bus = bus.clone();
        let sent = now_us();
        inflight.push(tokio::spawn(async move {
            let key = Bytes::from(format!("room:{}", seq % 100));
            bus.publish(key, payload(seq, sent)).await.expect("publish");
        }));
    }
    for t in inflight {
        t.await.expect("publisher");
    }
}

fn summary(hist: &Histogram<u64>) -> String {
    format!(
        "p50_ms={:.2} p99_ms={:.2} max_ms={:.2}",
        hist.value_at_quantile(0.5) as f64 / 1000.0,
        hist.value_at_quantile(0.99) as f64 / 1000.0,
        hist.max() as f64 / 1000.0,
    )
}

async fn latency(bus: &Arc<dyn Bus>, o: &Opts, messages: u64) {
    let subs = subscribe_n(bus, o.consumers).await;
    // Let the consumers reach their steady fetch loop before measuring.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let cpu = Cpu::start(o);
    let deadline = Instant::now() + Duration::from_secs(messages / o.rate + 30);
    let receivers: Vec<_> = subs
        .into_iter()
        .map(|s| tokio::spawn(receive(s, messages, Duration::from_secs(5), deadline)))
        .collect();
    publish_at(bus, o.rate, messages).await;
    let mut hist = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3).expect("histogram");
    let mut got = 0;
    for r in receivers {
        let (h, n) = r.await.expect("receiver");
        hist.add(&h).expect("same bounds");
        got += n;
    }
    let cpu = cpu.end();
    println!(
        "latency publish→recv at {} msgs/s, {} consumer(s), {} samples: {}",
        o.rate,
        o.consumers,
        hist.len(),
        summary(&hist)
    );
    println!(
        "RESULT mode=latency consumers={} rate={} expected={} received={got} {} {cpu}",
        o.consumers,
        o.rate,
        messages * o.consumers,
        summary(&hist),
    );
}

async fn idle(bus: &Arc<dyn Bus>, o: &Opts) {
    let subs = subscribe_n(bus, o.consumers).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let cpu = Cpu::start(o);
    tokio::time::sleep(Duration::from_secs(o.duration.unwrap_or(10))).await;
    println!("RESULT mode=idle consumers={} {}", o.consumers, cpu.end());
    drop(subs);
}

/// Subscribes, prints `READY`, then receives what a `publish` process with the same
/// `--rate` and `--duration` sends: until all of it came, nothing came for 3 s after
/// the first message, or `--duration` + 60 seconds.
async fn consume(bus: &Arc<dyn Bus>, o: &Opts, messages: u64) {
    let subs = subscribe_n(bus, o.consumers).await;
    println!("READY");
    let deadline = Instant::now() + Duration::from_secs(o.duration.unwrap_or(0) + 60);
    let receivers: Vec<_> = subs
        .into_iter()
        .map(|s| {
            tokio::spawn(async move {
                // Wait for the first message as long as the deadline allows, then
                // stop after 3 quiet seconds.
                let mut s = s;
                let first = loop {
                    let wait = deadline.saturating_duration_since(Instant::now());
                    match tokio::time::timeout(wait, s.recv()).await {
                        Ok(Ok(m)) if m.payload.len() >= 16 => break Some(m),
                        Ok(Ok(_)) => continue,
                        _ => break None,
                    }
                };
                let Some(first) = first else {
                    return (
                        Histogram::<u64>::new_with_bounds(1, 600_000_000, 3).expect("histogram"),
                        0,
                    );
                };
                let sent = u64::from_be_bytes(first.payload[8..16].try_into().expect("8 bytes"));
                let rest = messages.saturating_sub(1);
                let (mut h, n) = receive(s, rest, Duration::from_secs(3), deadline).await;
                h.saturating_record(now_us().saturating_sub(sent).max(1));
                (h, n + 1)
            })
        })
        .collect();
    let mut hist = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3).expect("histogram");
    let mut got = 0;
    for r in receivers {
        let (h, n) = r.await.expect("receiver");
        hist.add(&h).expect("same bounds");
        got += n;
    }
    println!(
        "RESULT mode=consume consumers={} received={got} {}",
        o.consumers,
        summary(&hist)
    );
}
