//! The edge's control plane on real processes: `/readyz` against a store that
//! goes away, `POST /admin/drain` auth, a drain (by `POST /admin/drain` or by
//! SIGTERM) that moves the viewers of a room receiving gifts to another edge in
//! waves, with every gift exactly once, and `online` frames with the standalone
//! `GET /v1/channels/{channel}/online`.

mod common;

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::{Proc, spawn};
use danmaku_client::{
    Client, ClientConfig, EdgeTarget, IngestClient, PostOutcome, ResilientClient, ServerEvent,
    Transport,
};
use danmaku_testkit::kafka::{shared_broker, unique};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

fn token(user: &str, role: &str) -> String {
    danmaku_proto::token::TokenKey::new(common::SECRET).mint(
        user,
        role,
        danmaku_proto::token::now_secs(),
        3600,
    )
}

async fn readyz(base: &str) -> (u16, serde_json::Value) {
    let r = reqwest::get(format!("{base}/readyz"))
        .await
        .expect("GET /readyz");
    let status = r.status().as_u16();
    (status, r.json().await.expect("readyz body is JSON"))
}

/// Polls `/readyz` until it answers `want` (bounded); returns the last body.
async fn wait_readyz(base: &str, want: u16, within: Duration) -> serde_json::Value {
    let deadline = Instant::now() + within;
    loop {
        let (status, body) = readyz(base).await;
        if status == want {
            return body;
        }
        assert!(
            Instant::now() < deadline,
            "/readyz of {base} still {status} {body} after {within:?}, want {want}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A TCP forwarder in front of PostgreSQL that the test can cut and restore:
/// a real network partition between a process and its store.
struct Partition {
    addr: std::net::SocketAddr,
    upstream: String,
    cut: CancellationToken,
}

impl Partition {
    async fn start(upstream: String) -> Partition {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let p = Partition {
            addr,
            upstream,
            cut: CancellationToken::new(),
        };
        p.serve(listener);
        p
    }

    fn serve(&self, listener: TcpListener) {
        let cut = self.cut.clone();
        let upstream = self.upstream.clone();
        tokio::spawn(async move {
            loop {
                let (mut inbound, _) = tokio::select! {
                    _ = cut.cancelled() => return,
                    a = listener.accept() => match a { Ok(a) => a, Err(_) => return },
                };
                let cut = cut.clone();
                let upstream = upstream.clone();
                tokio::spawn(async move {
                    let Ok(mut outbound) = TcpStream::connect(&upstream).await else {
                        return;
                    };
                    tokio::select! {
                        _ = cut.cancelled() => {}
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                    }
                });
            }
        });
    }

    /// Drops every forwarded connection and refuses new ones.
    fn cut(&mut self) {
        self.cut.cancel();
    }

    /// Serves again on the same port.
    async fn restore(&mut self) {
        self.cut = CancellationToken::new();
        let listener = TcpListener::bind(self.addr).await.unwrap();
        self.serve(listener);
    }
}

/// `postgres://user:pw@host:port/db?…` with `host:port` replaced by `addr`.
fn via(url: &str, addr: std::net::SocketAddr) -> (String, String) {
    let (scheme, rest) = url.split_once("://").unwrap();
    let (auth, rest) = rest.rsplit_once('@').map_or(("", rest), |(a, r)| (a, r));
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (hostport, tail) = rest.split_at(end);
    let at = if auth.is_empty() { "" } else { "@" };
    (
        format!("{scheme}://{auth}{at}{addr}{tail}"),
        hostport.to_owned(),
    )
}

/// `danmaku ROLE` with a `--store` of our choosing (the common helper always
/// passes the test PostgreSQL URL).
async fn spawn_with_store(role: &str, bus: &str, store: &str) -> Proc {
    spawn_logged(role, bus, store, &[]).await
}

/// Like `common::spawn`, with the log (tracing writes to stdout) kept in `Proc::log`.
async fn spawn_logged(role: &str, bus: &str, store: &str, extra: &[&str]) -> Proc {
    let mut args = vec![
        "--bus",
        bus,
        "--auth-secret",
        common::SECRET,
        "--store",
        store,
    ];
    args.extend_from_slice(extra);
    spawn_proc(role, &args).await
}

/// `danmaku ROLE --listen ADDR ARGS…` on a free address; `{addr}` in ARGS is
/// replaced by that address (for `--advertise`).
async fn spawn_proc(role: &str, args: &[&str]) -> Proc {
    let addr = common::free_addr();
    let log = std::env::temp_dir().join(format!("{}.log", unique(&format!("danmaku-{role}"))));
    let file = std::fs::File::create(&log).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_danmaku"))
        .arg(role)
        .args(["--listen", &addr.to_string()])
        .args(args.iter().map(|a| a.replace("{addr}", &addr.to_string())))
        .env("RUST_LOG", "info,danmaku_client=warn")
        .stdin(Stdio::null())
        .stdout(file.try_clone().unwrap())
        .stderr(file)
        .spawn()
        .expect("spawn danmaku");
    let p = Proc {
        child,
        base: format!("http://{addr}"),
        addr,
        log,
    };
    let up = tokio::time::timeout(Duration::from_secs(30), async {
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
    assert!(up.is_ok(), "{role} not healthy; log {}", p.log.display());
    p
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_goes_503_while_the_store_is_unreachable() {
    danmaku_testkit::init_crypto();
    let postgres = danmaku_testkit::kafka::env_or_fail("DANMAKU_TEST_POSTGRES");
    let (_, upstream) = via(&postgres, "127.0.0.1:1".parse().unwrap());
    let mut partition = Partition::start(upstream).await;
    let (store, _) = via(&postgres, partition.addr);
    let ingest = spawn_with_store("ingest", "memory", &store).await;
    let edge = spawn_with_store("edge", "memory", &store).await;

    for p in [&ingest, &edge] {
        let body = wait_readyz(&p.base, 200, Duration::from_secs(10)).await;
        assert_eq!(body["ready"], true);
    }
    partition.cut();
    for p in [&ingest, &edge] {
        let body = wait_readyz(&p.base, 503, Duration::from_secs(20)).await;
        assert_eq!(body["ready"], false, "{body}");
        assert_eq!(body["reason"], "store_unavailable", "{body}");
        // Alive all the same: an orchestrator must not restart it for this.
        let alive = reqwest::get(format!("{}/healthz", p.base)).await.unwrap();
        assert_eq!(alive.status(), 200);
    }
    partition.restore().await;
    for p in [&ingest, &edge] {
        wait_readyz(&p.base, 200, Duration::from_secs(30)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_drain_needs_an_app_token_then_refuses_and_redirects() {
    danmaku_testkit::init_crypto();
    let mut edge = spawn("edge", "memory", &["--drain-deadline", "30s"]).await;
    let http = reqwest::Client::new();
    let drain = |auth: Option<String>| {
        let mut req = http.post(format!("{}/admin/drain", edge.base));
        if let Some(t) = auth {
            req = req.bearer_auth(t);
        }
        req.send()
    };
    let r = drain(None).await.unwrap();
    assert_eq!(r.status(), 401);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "bad_token");
    let r = drain(Some("not-a-token".into())).await.unwrap();
    assert_eq!(r.status(), 401);
    let r = drain(Some(token("viewer", "user"))).await.unwrap();
    assert_eq!(r.status(), 403);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "forbidden");
    assert_eq!(
        readyz(&edge.base).await.0,
        200,
        "refused drains change nothing"
    );

    // A plain client that ignores redirects keeps the drain going until it is closed.
    let mut viewer = Client::connect_ws(
        &edge.base,
        &token("stayer", "user"),
        Transport::WsPb,
        ClientConfig::default(),
    )
    .await
    .unwrap();
    let r = drain(Some(token("ops", "app"))).await.unwrap();
    assert_eq!(r.status(), 202);
    let body = wait_readyz(&edge.base, 503, Duration::from_secs(5)).await;
    assert_eq!(body["reason"], "draining", "{body}");

    // New connections are refused with a clear code, on both transports.
    let refused = Client::connect_ws(
        &edge.base,
        &token("late", "user"),
        Transport::WsPb,
        ClientConfig::default(),
    )
    .await
    .expect_err("a draining edge refuses WebSocket upgrades");
    assert!(refused.to_string().contains("draining"), "{refused}");
    let cert = IngestClient::new(&edge.base)
        .fetch_cert_der()
        .await
        .unwrap();
    match Client::connect_quic(
        edge.addr,
        Some(cert),
        &token("late-quic", "user"),
        ClientConfig::default(),
    )
    .await
    {
        Err(e) => assert!(e.to_string().contains("draining"), "{e}"),
        Ok(mut c) => {
            let ev = tokio::time::timeout(Duration::from_secs(5), c.next_event())
                .await
                .unwrap();
            assert!(
                matches!(&ev, Some(ServerEvent::Error { code, .. }) if code == "draining"),
                "{ev:?}"
            );
        }
    }

    // The connected client is told to move, then closed when it stays.
    let got = tokio::time::timeout(Duration::from_secs(10), async {
        let mut redirected = false;
        while let Some(ev) = viewer.next_event().await {
            if let ServerEvent::Redirect { .. } = ev {
                redirected = true;
            }
        }
        redirected
    })
    .await
    .expect("the edge closes a client that ignores its redirect");
    assert!(got, "a redirect frame came before the close");

    // With nobody left the process exits on its own.
    let exited = tokio::time::timeout(Duration::from_secs(15), async {
        loop {
            if let Some(status) = edge.child.try_wait().unwrap() {
                return status;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("drained edge did not exit; log {}", edge.log.display()));
    assert!(exited.success(), "exit status {exited}");
}

/// Posts a gift until the store has it (503s are retried with the same client_msg_id).
async fn post_gift(http: &IngestClient, t: &str, channel: &str, id: &str) -> u64 {
    for _ in 0..600 {
        match http
            .post_reliable(t, channel, "gift", "rocket", Some(id))
            .await
        {
            Ok(PostOutcome::Persisted { seq }) => return seq,
            Ok(PostOutcome::Rejected { status: 503, .. }) | Err(_) => {
                tokio::time::sleep(Duration::from_millis(50)).await
            }
            Ok(other) => panic!("gift {id}: {other:?}"),
        }
    }
    panic!("gift {id} never persisted");
}

/// How a drain is started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DrainBy {
    /// `POST /admin/drain` with an app token.
    Http,
    /// SIGTERM to the edge process (README: "`POST /admin/drain` (or SIGTERM)").
    Sigterm,
}

/// One sample of the draining edge's drain counters: the edge read `redirects`
/// at some moment between `asked` and `answered` (since the drain began).
#[derive(Debug, Clone, Copy)]
struct DrainSample {
    asked: Duration,
    answered: Duration,
    redirects: u64,
}

/// `viewers` viewers of one room start on an edge that is then drained (at
/// `--drain-rate rate`) while gifts flow; every viewer must end on the other edge
/// with every gift exactly once, and the redirects must come in waves of at most
/// `ceil(viewers × rate)` a second.
///
/// Independent of the machine's speed: the gifts go on until the draining edge
/// has exited (at least `min_gifts` of them), so every viewer's last gift was
/// posted after its move; each viewer reads until it has every gift posted; the
/// wave checks are upper bounds (an edge may be slower than one wave a second,
/// never faster).
async fn drain_scenario(viewers: usize, rate: f64, min_gifts: u64, by: DrainBy) {
    danmaku_testkit::init_crypto();
    let bus = format!("kafka://{}?topic={}", shared_broker(), unique("drain"));
    let store = danmaku_testkit::kafka::env_or_fail("DANMAKU_TEST_POSTGRES");
    let rate_arg = rate.to_string();
    let mut draining = spawn_logged("edge", &bus, &store, &["--drain-rate", &rate_arg]).await;
    let other = spawn_logged("edge", &bus, &store, &[]).await;
    let ingest = spawn_logged(
        "ingest",
        &bus,
        &store,
        &["--user-rate", "100000", "--user-burst", "100000"],
    )
    .await;
    eprintln!(
        "logs: draining {} other {}",
        draining.log.display(),
        other.log.display()
    );
    let channel = format!("room:{}", unique("d").replace('.', "-"));
    let target = |p: &Proc| EdgeTarget {
        base_url: p.base.clone(),
        transport: Transport::WsPb,
        quic_addr: Some(p.addr),
    };
    // Every viewer starts on the edge to drain and knows the other as a fallback
    // (the redirect carries scheduler picks when the edge has a scheduler).
    let mut clients = Vec::new();
    for chunk in 0..viewers.div_ceil(50) {
        let joins: Vec<_> = (chunk * 50..((chunk + 1) * 50).min(viewers))
            .map(|n| {
                let list = vec![target(&draining), target(&other)];
                let channel = channel.clone();
                tokio::spawn(async move {
                    let mut list = list;
                    if n % 5 == 4 {
                        for t in &mut list {
                            t.transport = Transport::WsJson;
                        }
                    }
                    let mut c = ResilientClient::connect(
                        list,
                        token(&format!("viewer{n}"), "user"),
                        ClientConfig::default(),
                    )
                    .await
                    .expect("viewer connects");
                    c.join(&channel).await.unwrap();
                    c
                })
            })
            .collect();
        for j in joins {
            clients.push(j.await.unwrap());
        }
    }
    assert!(clients.iter().all(|v| v.current_edge() == draining.base));
    tokio::time::sleep(Duration::from_secs(1)).await;

    // The number of gifts, known once the gifter has stopped.
    let (total_tx, total_rx) = tokio::sync::watch::channel(None::<u64>);
    let collectors: Vec<_> = clients
        .into_iter()
        .map(|mut v| {
            let channel = channel.clone();
            let mut total_rx = total_rx.clone();
            tokio::spawn(async move {
                let mut seqs = Vec::new();
                let r = tokio::time::timeout(Duration::from_secs(300), async {
                    loop {
                        let total = *total_rx.borrow_and_update();
                        if total.is_some_and(|t| seqs.len() as u64 >= t) {
                            return;
                        }
                        tokio::select! {
                            biased;
                            // Cancels `next_event` at most once: the total is set once.
                            _ = total_rx.changed(), if total.is_none() => {}
                            ev = v.next_event() => match ev {
                                Some(ServerEvent::Reliable { channel: c, seq, .. }) => {
                                    assert_eq!(c, channel);
                                    seqs.push(seq);
                                }
                                Some(_) => {}
                                None => panic!("viewer gave up after {} gifts", seqs.len()),
                            },
                        }
                    }
                })
                .await;
                assert!(
                    r.is_ok(),
                    "viewer got {} of {:?} gifts",
                    seqs.len(),
                    *total_rx.borrow()
                );
                (seqs, v.current_edge().to_owned(), v.reconnects())
            })
        })
        .collect();

    let posted = Arc::new(AtomicU64::new(0));
    let drained = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let gifter = {
        let http = IngestClient::new(&ingest.base);
        let channel = channel.clone();
        let (posted, drained) = (posted.clone(), drained.clone());
        tokio::spawn(async move {
            let t = token("gifter", "user");
            let mut n = 0u64;
            // ~50 gifts/s until the drained edge is gone: the last gift is posted
            // after every viewer left it, however long the drain takes.
            loop {
                let last = drained.load(Ordering::SeqCst) && n >= min_gifts;
                post_gift(&http, &t, &channel, &format!("d{n}")).await;
                n += 1;
                posted.store(n, Ordering::Relaxed);
                if last {
                    return n;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    while posted.load(Ordering::Relaxed) < min_gifts / 5 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // The drain counters, sampled from the draining edge until it exits.
    let sampler = {
        let base = draining.base.clone();
        tokio::spawn(async move {
            let began = Instant::now();
            let mut samples = Vec::new();
            loop {
                let asked = began.elapsed();
                let Ok(r) = reqwest::get(format!("{base}/metrics")).await else {
                    break;
                };
                let Ok(text) = r.text().await else { break };
                let v =
                    danmaku_testkit::metric_value(&text, "danmaku_edge_drain_redirects_total", &[]);
                samples.push(DrainSample {
                    asked,
                    answered: began.elapsed(),
                    redirects: v.unwrap_or(0.0) as u64,
                });
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            samples
        })
    };
    let began = Instant::now();
    match by {
        DrainBy::Http => {
            let r = reqwest::Client::new()
                .post(format!("{}/admin/drain", draining.base))
                .bearer_auth(token("ops", "app"))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 202);
        }
        DrainBy::Sigterm => {
            let pid = draining.child.id().to_string();
            let ok = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
            assert!(ok.success(), "kill -TERM {pid}");
        }
    }
    let exited = tokio::time::timeout(Duration::from_secs(120), async {
        loop {
            if let Some(status) = draining.child.try_wait().unwrap() {
                return status;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("draining edge did not exit; log {}", draining.log.display()));
    let drain_took = began.elapsed();
    drained.store(true, Ordering::SeqCst);
    assert!(exited.success(), "exit status {exited}");
    let gifts = gifter.await.unwrap();
    total_tx.send(Some(gifts)).unwrap();
    let samples = sampler.await.unwrap();

    let want: Vec<u64> = (1..=gifts).collect();
    for c in collectors {
        let (seqs, edge, reconnects) = c.await.unwrap();
        assert_eq!(seqs, want, "every gift exactly once, in order");
        assert_eq!(edge, other.base, "the viewer ended on the other edge");
        assert!(reconnects >= 1);
    }

    // Waves: `per_wave` redirects at most, at most one wave a second.
    let per_wave = (viewers as f64 * rate).ceil() as u64;
    let waves = (viewers as u64).div_ceil(per_wave);
    assert!(
        samples.len() >= 2,
        "the draining edge answered /metrics during the drain ({samples:?})"
    );
    for (i, a) in samples.iter().enumerate() {
        assert!(
            a.redirects <= viewers as u64,
            "{a:?}: more redirects than viewers"
        );
        for b in &samples[i + 1..] {
            let sent = b.redirects - a.redirects;
            // Waves are ≥ 1 s apart, so a window of d seconds holds at most
            // floor(d) + 1 of them; these came after a's reading (at `a.asked`
            // or later) and by b's (at `b.answered` or sooner).
            let max_waves = (b.answered - a.asked).as_secs() + 1;
            assert!(
                sent <= per_wave * max_waves,
                "{sent} redirects between {a:?} and {b:?}: more than {max_waves} waves of {per_wave}"
            );
        }
    }
    let last = samples.last().unwrap().redirects;
    // The edge may exit before a sample sees the last wave.
    assert!(
        last + per_wave >= viewers as u64,
        "only {last} of {viewers} viewers were redirected ({samples:?})"
    );
    // `waves` waves one second apart: the drain cannot end sooner than that.
    assert!(
        drain_took >= Duration::from_secs(waves - 1),
        "{viewers} viewers in waves of {per_wave} drained in {drain_took:?}: faster than one wave a second"
    );
    let profile: Vec<String> = samples
        .iter()
        .step_by(20)
        .map(|s| format!("{:.0}s:{}", s.answered.as_secs_f64(), s.redirects))
        .collect();
    eprintln!(
        "drain ({by:?}) of {viewers} viewers at --drain-rate {rate} ({waves} waves of {per_wave}) took {:.1} s \
         (start to exit), {gifts} gifts; redirects over time {profile:?}",
        drain_took.as_secs_f64()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_moves_500_viewers_to_another_edge_with_every_gift_once() {
    drain_scenario(500, 0.05, 300, DrainBy::Http).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_an_edge_viewers_move_with_every_gift_once() {
    drain_scenario(100, 0.2, 100, DrainBy::Sigterm).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn big_channels_get_online_frames_and_standalone_serves_the_count() {
    let srv = common::start(|c| {
        c.edge.control.online_push_min = 3;
        c.edge.control.online_push_interval = Duration::from_millis(300);
    })
    .await;
    let channel = format!("room:{}", unique("o").replace('.', "-"));
    let mut clients = Vec::new();
    for (i, t) in [Transport::WsPb, Transport::WsJson, Transport::WsPb]
        .into_iter()
        .enumerate()
    {
        clients.push(joined_viewer(&srv, &format!("o{i}"), t, &channel).await);
    }
    for c in &mut clients {
        assert_eq!(next_online(c, &channel).await, 3);
    }
    let online: serde_json::Value =
        reqwest::get(format!("{}/v1/channels/{channel}/online", srv.base_url()))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
    assert_eq!(online["channel"], channel.as_str());
    assert_eq!(online["online"], 3);
    let r = reqwest::get(format!("{}/v1/channels/nope:1/online", srv.base_url()))
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "bad_channel");
    let (status, body) = readyz(&srv.base_url()).await;
    assert_eq!((status, body["ready"].clone()), (200, true.into()));
    let metrics = common::metrics_text(&srv.base_url()).await;
    for name in [
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
        "danmaku_edge_capacity_connections 19000",
    ] {
        assert!(metrics.contains(name), "{name} missing from /metrics");
    }
    srv.stop().await;
}

/// In a room that ticks, the online count rides the ticks (`Batch.online`):
/// every viewer hears it and not one `online` frame of its own is written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_a_busy_room_the_online_count_rides_the_ticks() {
    let srv = common::start(|c| {
        c.edge.control.online_push_min = 3;
        c.edge.control.online_push_interval = Duration::from_millis(300);
        c.ingest.user_rate_per_sec = 100_000.0;
        c.ingest.user_burst = 100_000;
    })
    .await;
    let channel = format!("room:{}", unique("ot").replace('.', "-"));
    let mut clients = Vec::new();
    for (i, t) in [Transport::WsPb, Transport::WsJson, Transport::WsPb]
        .into_iter()
        .enumerate()
    {
        clients.push(joined_viewer(&srv, &format!("ot{i}"), t, &channel).await);
        if i == 0 {
            // Ticks before the room is big enough for counts, and all along.
            let ingest = IngestClient::new(&srv.base_url());
            let token = common::token(&srv, "poster");
            let room = channel.clone();
            tokio::spawn(async move {
                for n in 0..400 {
                    let _ = ingest.post_danmaku(&token, &room, &format!("d{n}")).await;
                    tokio::time::sleep(Duration::from_millis(25)).await;
                }
            });
        }
    }
    for c in &mut clients {
        assert_eq!(next_online(c, &channel).await, 3);
    }
    let metrics = common::metrics_text(&srv.base_url()).await;
    let value = |name: &str| -> f64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
            .unwrap_or_else(|| panic!("{name} missing from /metrics"))
    };
    assert!(value("danmaku_edge_online_in_ticks_total") >= 1.0);
    assert_eq!(value("danmaku_edge_online_frames_total"), 0.0);
    srv.stop().await;
}

/// A viewer of the standalone `srv` as `user` on `transport`, joined to `channel`.
async fn joined_viewer(
    srv: &danmaku::standalone::Running,
    user: &str,
    transport: Transport,
    channel: &str,
) -> Client {
    let mut c = Client::connect_ws(
        &srv.base_url(),
        &common::token(srv, user),
        transport,
        ClientConfig::default(),
    )
    .await
    .unwrap();
    c.join(channel).await.unwrap();
    common::wait_joined(&mut c, channel).await;
    c
}

/// The next online count of `channel` the client hears (a frame of its own
/// or riding a tick: the client emits both as `Online`), within 10 s.
async fn next_online(c: &mut Client, channel: &str) -> u64 {
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match c.next_event().await {
                Some(ServerEvent::Online {
                    channel: ch,
                    online,
                }) if ch == channel => {
                    return online;
                }
                Some(_) => {}
                None => panic!("closed before an online count"),
            }
        }
    })
    .await
    .expect("an online count within 10 s")
}

async fn online_of(scheduler: &str, channel: &str) -> u64 {
    let v: serde_json::Value = reqwest::get(format!("{scheduler}/v1/channels/{channel}/online"))
        .await
        .expect("GET online")
        .json()
        .await
        .expect("online body");
    v["online"].as_u64().expect("online is a number")
}

/// Polls the scheduler's online count until it is `want`; returns how long it took.
async fn wait_online(scheduler: &str, channel: &str, want: u64) -> Duration {
    let began = Instant::now();
    loop {
        let got = online_of(scheduler, channel).await;
        if got == want {
            return began.elapsed();
        }
        assert!(
            began.elapsed() < Duration::from_secs(60),
            "online count of {channel} still {got}, want {want}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn online_count_of_900_members_on_3_self_registered_edges() {
    danmaku_testkit::init_crypto();
    let store = danmaku_testkit::kafka::env_or_fail("DANMAKU_TEST_POSTGRES");
    let scheduler = spawn_proc("scheduler", &["--auth-secret", common::SECRET]).await;
    let mut edges = Vec::new();
    for _ in 0..3 {
        edges.push(
            spawn_logged(
                "edge",
                "memory",
                &store,
                &[
                    "--scheduler",
                    &scheduler.base,
                    "--advertise",
                    "{addr}",
                    "--online-push-interval",
                    "1s",
                ],
            )
            .await,
        );
    }
    // All three registered and picked.
    let registered = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            if let Ok(r) = reqwest::get(format!("{}/v1/edges?k=3", scheduler.base)).await
                && let Ok(v) = r.json::<serde_json::Value>().await
                && v["edges"].as_array().is_some_and(|e| e.len() == 3)
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await;
    assert!(registered.is_ok(), "3 edges registered with the scheduler");

    let channel = format!("room:{}", unique("on").replace('.', "-"));
    let mut members: Vec<Client> = Vec::new();
    for chunk in 0..900 / 50 {
        let joins: Vec<_> = (0..50)
            .map(|i| {
                let n = chunk * 50 + i;
                let base = edges[n % 3].base.clone();
                let channel = channel.clone();
                tokio::spawn(async move {
                    let mut c = Client::connect_ws(
                        &base,
                        &token(&format!("m{n}"), "user"),
                        Transport::WsPb,
                        ClientConfig::default(),
                    )
                    .await
                    .expect("member connects");
                    c.join(&channel).await.unwrap();
                    common::wait_joined(&mut c, &channel).await;
                    c
                })
            })
            .collect();
        for j in joins {
            members.push(j.await.unwrap());
        }
    }
    let took = wait_online(&scheduler.base, &channel, 900).await;
    eprintln!("online 900 seen by the scheduler {took:?} after the last join");
    // A member of a 300-member room on one edge hears the cluster-wide count.
    let heard = tokio::time::timeout(Duration::from_secs(15), async {
        loop {
            match members[0].next_event().await {
                Some(ServerEvent::Online { channel: c, online })
                    if c == channel && online == 900 =>
                {
                    return;
                }
                Some(_) => {}
                None => panic!("member closed"),
            }
        }
    })
    .await;
    assert!(heard.is_ok(), "an online frame with 900");

    // 300 leave (100 per edge, by closing their connections).
    let leaving: Vec<Client> = members.drain(600..).collect();
    for c in &leaving {
        c.close();
    }
    drop(leaving);
    let took = wait_online(&scheduler.base, &channel, 600).await;
    eprintln!("online 600 seen by the scheduler {took:?} after 300 left");
}
