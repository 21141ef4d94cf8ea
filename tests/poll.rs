//! Long-poll end to end (`GET /v1/poll`): the cursor protocol, many pollers
//! getting every gift, a cursor from another ring (gap, reliable caught up
//! from the edge's ring or the store), and bad input typed and counted.

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use danmaku_client::{IngestClient, PostOutcome};
use danmaku_testkit::kafka::unique;
use danmaku_testkit::metric_value;
use serde_json::Value;

fn room() -> String {
    format!("room:{}", unique("poll").replace('.', "-"))
}

async fn post_gift(http: &IngestClient, t: &str, channel: &str, n: u64) -> u64 {
    match http
        .post_reliable(
            t,
            channel,
            "gift",
            &format!("gift {n}"),
            Some(&format!("g{n}")),
        )
        .await
    {
        Ok(PostOutcome::Persisted { seq }) => seq,
        other => panic!("gift {n}: {other:?}"),
    }
}

async fn poll(http: &reqwest::Client, base: &str, query: &str) -> (u16, Value) {
    let resp = http
        .get(format!("{base}/v1/poll?{query}"))
        .send()
        .await
        .expect("poll answered");
    let status = resp.status().as_u16();
    (status, resp.json().await.expect("a JSON body"))
}

/// The gift seqs and danmaku texts in a poll answer's frames.
fn contents(answer: &Value) -> (Vec<u64>, Vec<String>) {
    let (mut seqs, mut texts) = (Vec::new(), Vec::new());
    for f in answer["events"].as_array().expect("events") {
        match f["type"].as_str() {
            Some("batch") => {
                for e in f["events"].as_array().unwrap() {
                    match e["seq"].as_u64() {
                        Some(s) => seqs.push(s),
                        None => texts.push(e["text"].as_str().unwrap().to_owned()),
                    }
                }
            }
            Some("reliable") => seqs.push(f["seq"].as_u64().unwrap()),
            other => panic!("unexpected frame {other:?}: {f}"),
        }
    }
    (seqs, texts)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poll_answers_at_once_without_a_cursor_and_when_something_follows_it() {
    let srv = common::start(|_| {}).await;
    let base = srv.base_url();
    let channel = room();
    let t = common::token(&srv, "viewer");
    let http = reqwest::Client::new();
    let q = format!("token={t}&channel={channel}");
    let started = Instant::now();
    let (status, first) = poll(&http, &base, &q).await;
    assert_eq!(status, 200, "{first}");
    assert_eq!(first["events"], serde_json::json!([]));
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "no cursor: answered at once"
    );
    let cursor = first["cursor"].as_str().unwrap().to_owned();

    // Nothing follows: empty after `wait`, the same cursor back.
    let started = Instant::now();
    let (status, empty) = poll(&http, &base, &format!("{q}&cursor={cursor}&wait=1")).await;
    assert_eq!(status, 200);
    assert!(started.elapsed() >= Duration::from_millis(900), "waited");
    assert_eq!(empty["events"], serde_json::json!([]));
    assert_eq!(empty["cursor"], cursor.as_str());

    // A danmaku while the poll hangs ends it.
    let waiting = {
        let (http, base, q, cursor) = (http.clone(), base.clone(), q.clone(), cursor.clone());
        tokio::spawn(
            async move { poll(&http, &base, &format!("{q}&cursor={cursor}&wait=20")).await },
        )
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let ingest = IngestClient::new(&base);
    let poster = common::token(&srv, "poster");
    let posted = Instant::now();
    ingest
        .post_danmaku(&poster, &channel, "hello poll")
        .await
        .unwrap();
    let (status, got) = waiting.await.unwrap();
    assert_eq!(status, 200, "{got}");
    assert!(
        posted.elapsed() < Duration::from_secs(10),
        "answered when the tick came"
    );
    let (_, texts) = contents(&got);
    assert_eq!(texts, vec!["hello poll".to_owned()]);
    assert_ne!(got["cursor"], cursor.as_str(), "the cursor moved");
    assert!(got.get("gap").is_none());
    let text = common::metrics_text(&base).await;
    for r in ["now", "empty", "events"] {
        let n = metric_value(&text, "danmaku_edge_polls_total", &[("result", r)]).unwrap_or(0.0);
        assert!(n >= 1.0, "{r}: {n}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_pollers_get_every_gift() {
    const POLLERS: usize = 200;
    const GIFTS: u64 = 30;
    let srv = common::start(|c| {
        c.ingest.user_rate_per_sec = 100_000.0;
        c.ingest.user_burst = 100_000;
    })
    .await;
    let base = srv.base_url();
    let channel = room();
    let http = reqwest::Client::new();
    let mut tasks = Vec::new();
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::channel::<()>(POLLERS);
    for i in 0..POLLERS {
        let t = common::token(&srv, &format!("p{i}"));
        let (http, base, channel, ready) = (
            http.clone(),
            base.clone(),
            channel.clone(),
            ready_tx.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let q = format!("token={t}&channel={channel}");
            let (_, first) = poll(&http, &base, &q).await;
            let mut cursor = first["cursor"].as_str().unwrap().to_owned();
            ready.send(()).await.unwrap();
            let mut seqs = BTreeSet::new();
            let deadline = Instant::now() + Duration::from_secs(60);
            while (seqs.len() as u64) < GIFTS && Instant::now() < deadline {
                let (status, a) = poll(&http, &base, &format!("{q}&cursor={cursor}&wait=5")).await;
                assert_eq!(status, 200, "{a}");
                seqs.extend(contents(&a).0);
                cursor = a["cursor"].as_str().unwrap().to_owned();
            }
            seqs
        }));
    }
    for _ in 0..POLLERS {
        ready_rx.recv().await.unwrap();
    }
    let ingest = IngestClient::new(&base);
    let poster = common::token(&srv, "poster");
    let mut want = BTreeSet::new();
    for n in 1..=GIFTS {
        want.insert(post_gift(&ingest, &poster, &channel, n).await);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), want, "every poller got every gift");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cursor_from_another_ring_gets_a_gap_and_every_reliable_event_after_its_seq() {
    let srv = common::start(|_| {}).await;
    let base = srv.base_url();
    let channel = room();
    let t = common::token(&srv, "viewer");
    let http = reqwest::Client::new();
    let q = format!("token={t}&channel={channel}");
    let (_, first) = poll(&http, &base, &q).await;
    let cursor = first["cursor"].as_str().unwrap().to_owned();
    let ingest = IngestClient::new(&base);
    let poster = common::token(&srv, "poster");
    let mut all = Vec::new();
    for n in 1..=5 {
        all.push(post_gift(&ingest, &poster, &channel, n).await);
    }
    // The room's member saw the gifts: the normal path gets them all.
    let mut seqs = BTreeSet::new();
    let mut c = cursor.clone();
    while seqs.len() < all.len() {
        let (status, a) = poll(&http, &base, &format!("{q}&cursor={c}&wait=5")).await;
        assert_eq!(status, 200, "{a}");
        seqs.extend(contents(&a).0);
        c = a["cursor"].as_str().unwrap().to_owned();
    }
    // A cursor of another edge (another epoch) that had seq 2: a gap for
    // danmaku, and the reliable events after 2.
    let foreign = format!("abc.7.{}", all[1]);
    let (status, a) = poll(&http, &base, &format!("{q}&cursor={foreign}&wait=5")).await;
    assert_eq!(status, 200, "{a}");
    assert_eq!(a["gap"], true, "{a}");
    let got: BTreeSet<u64> = contents(&a).0.into_iter().collect();
    let want: BTreeSet<u64> = all[2..].iter().copied().collect();
    assert!(want.is_subset(&got), "got {got:?}, want {want:?}");
    // Ticks of the ring may repeat older gifts (the client drops seqs it has);
    // the reliable frames start after the cursor's seq.
    let replayed: Vec<u64> = a["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["type"] == "reliable")
        .map(|f| f["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(
        replayed,
        all[2..].to_vec(),
        "reliable frames after the cursor's seq, in order"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_polls_get_typed_counted_errors() {
    let srv = common::start(|_| {}).await;
    let base = srv.base_url();
    let t = common::token(&srv, "viewer");
    let http = reqwest::Client::new();
    let (_, first) = poll(&http, &base, &format!("token={t}&channel=room:1")).await;
    let cursor = first["cursor"].as_str().unwrap().to_owned();
    let (epoch, _) = cursor.split_once('.').unwrap();
    let other = common::token(&srv, "someone-else");
    let cases = [
        ("token=nope&channel=room:1".to_string(), 401, "bad_token"),
        (format!("token={t}"), 400, "bad_channel"),
        (format!("token={t}&channel=Room:1"), 400, "bad_channel"),
        (
            format!("token={t}&channel=room:1&channel=room:2"),
            400,
            "too_many_channels",
        ),
        (
            format!("token={t}&channel=room:1&cursor=zzz"),
            400,
            "bad_cursor",
        ),
        (
            format!("token={t}&channel=room:1&cursor=1.2"),
            400,
            "bad_cursor",
        ),
        (
            format!("token={t}&channel=room:1&cursor={}", "1".repeat(100)),
            400,
            "bad_cursor",
        ),
        (
            format!("token={t}&channel=room:1&cursor={epoch}.999999.0"),
            400,
            "bad_cursor",
        ),
        (
            format!("token={t}&channel=room:1&cursor={cursor}&wait=31"),
            400,
            "bad_wait",
        ),
        (
            format!("token={t}&channel=room:1&cursor={cursor}&wait=-1"),
            400,
            "bad_wait",
        ),
        (
            format!("token={t}&channel=room:1&wait=1&wait=2"),
            400,
            "bad_request",
        ),
        (format!("token={t}&channel=group:nobody"), 403, "not_member"),
        // Another user's cursor is not this user's.
        (
            format!("token={other}&channel=room:1&cursor={cursor}"),
            400,
            "bad_cursor",
        ),
    ];
    for (query, status, code) in &cases {
        let (got, body) = poll(&http, &base, query).await;
        assert_eq!(got, *status, "{query}: {body}");
        assert_eq!(body["error"]["code"], *code, "{query}: {body}");
    }
    let text = common::metrics_text(&base).await;
    for code in [
        "bad_token",
        "bad_channel",
        "too_many_channels",
        "bad_cursor",
        "bad_wait",
        "bad_request",
        "not_member",
    ] {
        let n = metric_value(&text, "danmaku_edge_errors_total", &[("code", code)]).unwrap_or(0.0);
        assert!(n >= 1.0, "{code} counted: {n}");
    }
}
