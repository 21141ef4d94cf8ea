//! Moderation (issue 19, ingest side) on real servers: word lists with their
//! evasion cases, moderators, mutes, room settings, the audit trail, who may do
//! what, restarts, and two ingest processes over Kafka sharing one policy.

mod common;

use std::time::{Duration, Instant};

use danmaku_client::{Client, ClientConfig, ServerEvent, Transport};
use danmaku_proto::token::{TokenKey, now_secs};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

fn mint(user: &str, role: &str) -> String {
    TokenKey::new(common::SECRET).mint(user, role, now_secs(), 3600)
}

/// One HTTP call: status, JSON body (Null when none) and `Retry-After`.
async fn call(
    method: Method,
    url: String,
    token: Option<&str>,
    body: Option<Value>,
) -> (StatusCode, Value, Option<String>) {
    let mut req = reqwest::Client::new().request(method, url);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await.expect("request");
    let status = resp.status();
    let retry = resp
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_owned());
    let text = resp.text().await.unwrap();
    let json = serde_json::from_str(&text).unwrap_or(Value::Null);
    (status, json, retry)
}

struct Api {
    base: String,
}

impl Api {
    async fn put(&self, path: &str, token: Option<&str>, body: Value) -> (StatusCode, Value) {
        let (s, j, _) = call(
            Method::PUT,
            format!("{}{path}", self.base),
            token,
            Some(body),
        )
        .await;
        (s, j)
    }
    async fn get(&self, path: &str, token: Option<&str>) -> (StatusCode, Value) {
        let (s, j, _) = call(Method::GET, format!("{}{path}", self.base), token, None).await;
        (s, j)
    }
    async fn delete(&self, path: &str, token: Option<&str>) -> (StatusCode, Value) {
        let (s, j, _) = call(Method::DELETE, format!("{}{path}", self.base), token, None).await;
        (s, j)
    }
    /// Posts a danmaku; status, body and `Retry-After`.
    async fn post(
        &self,
        channel: &str,
        token: &str,
        text: &str,
    ) -> (StatusCode, Value, Option<String>) {
        self.post_kind(channel, token, "danmaku", text).await
    }
    async fn post_kind(
        &self,
        channel: &str,
        token: &str,
        kind: &str,
        text: &str,
    ) -> (StatusCode, Value, Option<String>) {
        call(
            Method::POST,
            format!("{}/v1/channels/{channel}/messages", self.base),
            Some(token),
            Some(json!({ "kind": kind, "text": text })),
        )
        .await
    }
    /// The error code of a refused post (panics when accepted).
    async fn refused(&self, channel: &str, token: &str, text: &str) -> String {
        let (status, body, _) = self.post(channel, token, text).await;
        assert!(!status.is_success(), "{text:?} accepted: {body}");
        body["error"]["code"].as_str().unwrap().to_owned()
    }
    /// The text the post was published with (panics when refused).
    async fn published(&self, channel: &str, token: &str, text: &str) -> String {
        let (status, body, _) = self.post(channel, token, text).await;
        assert_eq!(status, StatusCode::ACCEPTED, "{text:?}: {body}");
        match body["masked"].as_bool() {
            Some(true) => body["text"].as_str().unwrap().to_owned(),
            _ => text.to_owned(),
        }
    }
}

/// Fails unless every line is in the server's `/metrics`.
async fn assert_metrics(base: &str, lines: &[&str]) {
    let metrics = common::metrics_text(base).await;
    for line in lines {
        assert!(metrics.contains(line), "{line} not in /metrics");
    }
}

fn code(body: &Value) -> &str {
    body["error"]["code"].as_str().unwrap_or("")
}

fn room(prefix: &str) -> String {
    let id: String = danmaku_testkit::kafka::unique(prefix)
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    format!("room:{id}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn word_lists_see_through_evasions_and_viewers_get_the_masked_text() {
    let srv = common::start(|c| {
        c.ingest.user_rate_per_sec = 10_000.0;
        c.ingest.user_burst = 10_000;
    })
    .await;
    let api = Api {
        base: srv.base_url(),
    };
    let app = mint("backend", "app");
    let alice = common::token(&srv, "alice");
    let ch = room("words");

    let (s, b) = api
        .put(
            &format!("/v1/channels/{ch}/wordlist"),
            Some(&app),
            json!({"block": ["badword", "傻瓜"], "mask": ["darn", "垃圾"]}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(b, json!({"scope": ch, "block": 2, "mask": 2}));
    let (s, b) = api
        .put("/v1/wordlist", Some(&app), json!({"block": ["globalevil"]}))
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");

    // A viewer of the room sees what was published: the masked text.
    let mut viewer = Client::connect_ws(
        &srv.base_url(),
        &common::token(&srv, "viewer"),
        Transport::WsJson,
        ClientConfig::default(),
    )
    .await
    .unwrap();
    viewer.join(&ch).await.unwrap();
    common::wait_joined(&mut viewer, &ch).await;

    // The example, and the 202 says it was masked.
    let (s, b, _) = api.post(&ch, &alice, "hello darn it").await;
    assert_eq!(s, StatusCode::ACCEPTED);
    let id = b["id"]
        .as_str()
        .expect("every accepted danmaku has an id")
        .to_owned();
    assert_eq!(
        b,
        json!({"accepted": true, "id": id, "masked": true, "text": "hello **** it"})
    );
    let seen = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if let Some(ServerEvent::Batch { events, .. }) = viewer.next_event().await
                && let Some(e) = events.into_iter().next()
            {
                return e.text;
            }
        }
    })
    .await
    .expect("the viewer gets the comment");
    assert_eq!(seen, "hello **** it");
    assert_eq!(
        api.published(&ch, &alice, "hello there").await,
        "hello there"
    );

    // Case.
    assert_eq!(
        api.refused(&ch, &alice, "a BadWord here").await,
        "blocked_content"
    );
    assert_eq!(api.published(&ch, &alice, "DARN!").await, "****!");
    // Full-width / half-width and other compatibility forms.
    assert_eq!(
        api.refused(&ch, &alice, "ｂａｄｗｏｒｄ").await,
        "blocked_content"
    );
    assert_eq!(api.refused(&ch, &alice, "𝐛𝐚𝐝𝐰𝐨𝐫𝐝").await, "blocked_content");
    assert_eq!(api.published(&ch, &alice, "oh ＤＡＲＮ").await, "oh ****");
    // Invisible characters between letters: zero-width space, ZWNJ, ZWJ, soft
    // hyphen, BOM, word joiner.
    for sep in [
        '\u{200B}', '\u{200C}', '\u{200D}', '\u{00AD}', '\u{FEFF}', '\u{2060}',
    ] {
        let evasive: String = "badword".chars().flat_map(|c| [c, sep]).collect();
        assert_eq!(
            api.refused(&ch, &alice, &evasive).await,
            "blocked_content",
            "{sep:?}"
        );
        let masked = api
            .published(&ch, &alice, &format!("d{sep}a{sep}r{sep}n x"))
            .await;
        assert_eq!(masked, "******* x", "{sep:?}");
    }
    // CJK, plain and with the same evasions.
    assert_eq!(
        api.refused(&ch, &alice, "你是傻瓜").await,
        "blocked_content"
    );
    assert_eq!(
        api.refused(&ch, &alice, "傻\u{200B}瓜").await,
        "blocked_content"
    );
    assert_eq!(
        api.published(&ch, &alice, "这是垃圾游戏").await,
        "这是**游戏"
    );
    assert_eq!(api.published(&ch, &alice, "垃\u{FEFF}圾").await, "***");
    // The global list holds in every room; the room's list only in its room.
    assert_eq!(
        api.refused(&ch, &alice, "GlobalEvil").await,
        "blocked_content"
    );
    let other = room("other");
    assert_eq!(
        api.refused(&other, &alice, "globalevil").await,
        "blocked_content"
    );
    assert_eq!(
        api.published(&other, &alice, "badword darn").await,
        "badword darn"
    );
    // Gifts go through the lists too.
    let (s, b, _) = api.post_kind(&ch, &alice, "gift", "darn rocket").await;
    assert_eq!(
        (s, b["masked"].clone()),
        (StatusCode::OK, json!(true)),
        "{b}"
    );

    let (_, b) = api
        .get(&format!("/v1/channels/{ch}/wordlist"), Some(&app))
        .await;
    assert_eq!(
        b,
        json!({"block": ["badword", "傻瓜"], "mask": ["darn", "垃圾"]})
    );
    let (_, b) = api.get("/v1/wordlist", Some(&app)).await;
    assert_eq!(b, json!({"block": ["globalevil"], "mask": []}));

    assert_metrics(
        &srv.base_url(),
        &[
            "danmaku_ingest_filtered_total{verdict=\"blocked\"} 13",
            "danmaku_ingest_moderation_refused_total{reason=\"blocked_content\"} 13",
            "danmaku_ingest_wordlist_words{scope=\"global\"} 1",
            "danmaku_ingest_wordlist_words{scope=\"rooms\"} 4",
        ],
    )
    .await;
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_list_of_tens_of_thousands_of_words_is_taken_and_enforced() {
    let srv = common::start(|_| {}).await;
    let api = Api {
        base: srv.base_url(),
    };
    let app = mint("backend", "app");
    let alice = common::token(&srv, "alice");
    let ch = room("big");
    // 30,000 distinct words: "wordaaaa", "wordaaab", …
    let words: Vec<String> = (0..30_000u32)
        .map(|mut i| {
            let mut w = String::from("word");
            for _ in 0..4 {
                w.push((b'a' + (i % 26) as u8) as char);
                i /= 26;
            }
            w
        })
        .collect();
    let (block, mask) = words.split_at(20_000);
    let (s, b) = api
        .put(
            &format!("/v1/channels/{ch}/wordlist"),
            Some(&app),
            json!({"block": block, "mask": mask}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(b, json!({"scope": ch, "block": 20_000, "mask": 10_000}));
    assert_eq!(
        api.refused(
            &ch,
            &alice,
            &format!("x {} y", block[19_999].to_uppercase())
        )
        .await,
        "blocked_content"
    );
    assert_eq!(
        api.published(&ch, &alice, &format!("x {}", mask[9_999]))
            .await,
        "x ********"
    );
    assert_eq!(api.published(&ch, &alice, "wordy").await, "wordy");
    let (_, b) = api
        .get(&format!("/v1/channels/{ch}/wordlist"), Some(&app))
        .await;
    assert_eq!(b["block"].as_array().unwrap().len(), 20_000);
    assert_eq!(b["mask"][9_999], json!(mask[9_999]));
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_refused_whole_and_counted() {
    let srv = common::start(|_| {}).await;
    let api = Api {
        base: srv.base_url(),
    };
    let app = mint("backend", "app");
    let ch = room("bad");
    let path = format!("/v1/channels/{ch}/wordlist");
    let (s, _) = api.put(&path, Some(&app), json!({"block": ["keep"]})).await;
    assert_eq!(s, StatusCode::OK);
    let too_many: Vec<String> = (0..100_001).map(|i| format!("w{i}")).collect();
    for (body, want) in [
        (json!({}), "bad_wordlist"),
        (json!({"block": ["ok", ""]}), "bad_wordlist"),
        (
            json!({"block": ["ok"], "mask": ["\u{200B}\u{FEFF}\u{00AD}"]}),
            "bad_wordlist",
        ),
        (json!({"block": ["x".repeat(65)]}), "bad_wordlist"),
        (json!({"block": ["a\nb"]}), "bad_wordlist"),
        (json!({"block": too_many}), "bad_wordlist"),
        (json!({"block": ["ok"], "allow": ["x"]}), "bad_json"),
        (json!({"block": "ok"}), "bad_json"),
    ] {
        let (s, b) = api.put(&path, Some(&app), body.clone()).await;
        assert_eq!(
            (s, code(&b)),
            (StatusCode::BAD_REQUEST, want),
            "{body:.80}: {b}"
        );
        assert!(
            b["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty())
        );
    }
    // Nothing of a refused list was applied.
    let (_, b) = api.get(&path, Some(&app)).await;
    assert_eq!(b, json!({"block": ["keep"], "mask": []}));

    let mutes = format!("/v1/channels/{ch}/mutes/troll");
    for (body, want) in [
        (json!({"seconds": -5}), "bad_seconds"),
        (json!({"seconds": 0}), "bad_seconds"),
        (json!({"seconds": 31 * 86_400}), "bad_seconds"),
        (json!({"seconds": "10"}), "bad_json"),
        (json!({"seconds": 10, "reason": "x"}), "bad_json"),
        (json!({}), "bad_json"),
    ] {
        let (s, b) = api.put(&mutes, Some(&app), body.clone()).await;
        assert_eq!(
            (s, code(&b)),
            (StatusCode::BAD_REQUEST, want),
            "{body}: {b}"
        );
    }
    let (s, b) = api
        .put(
            &format!("/v1/channels/{ch}/mutes/bad%20user"),
            Some(&app),
            json!({"seconds": 5}),
        )
        .await;
    assert_eq!((s, code(&b)), (StatusCode::BAD_REQUEST, "bad_user"));
    let (s, b) = api
        .put(
            "/v1/channels/nope/mutes/troll",
            Some(&app),
            json!({"seconds": 5}),
        )
        .await;
    assert_eq!((s, code(&b)), (StatusCode::BAD_REQUEST, "bad_channel"));

    let settings = format!("/v1/channels/{ch}/settings");
    for (body, want) in [
        (json!({}), "bad_settings"),
        (json!({"slow_mode_secs": -1}), "bad_settings"),
        (json!({"slow_mode_secs": 3601}), "bad_settings"),
        (json!({"max_rate": -3}), "bad_settings"),
        (json!({"mute_all": "yes"}), "bad_json"),
        (json!({"slow_mode": 5}), "bad_json"),
    ] {
        let (s, b) = api.put(&settings, Some(&app), body.clone()).await;
        assert_eq!(
            (s, code(&b)),
            (StatusCode::BAD_REQUEST, want),
            "{body}: {b}"
        );
    }
    let (s, b) = api
        .get(
            &format!("/v1/channels/{ch}/moderation/log?limit=0"),
            Some(&app),
        )
        .await;
    assert_eq!((s, code(&b)), (StatusCode::BAD_REQUEST, "bad_query"));

    // Only the first, valid list reached the audit trail and the state.
    let (_, b) = api
        .get(&format!("/v1/channels/{ch}/moderation/log"), Some(&app))
        .await;
    assert_eq!(b["entries"].as_array().unwrap().len(), 1, "{b}");
    let (_, b) = api.get(&settings, Some(&app)).await;
    assert_eq!(
        b,
        json!({"slow_mode_secs": 0, "mute_all": false, "max_rate": 0})
    );

    assert_metrics(
        &srv.base_url(),
        &[
            "danmaku_ingest_rejected_total{code=\"bad_wordlist\"} 6",
            "danmaku_ingest_rejected_total{code=\"bad_seconds\"} 3",
            "danmaku_ingest_rejected_total{code=\"bad_settings\"} 4",
        ],
    )
    .await;
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn who_may_do_what() {
    let srv = common::start(|_| {}).await;
    let api = Api {
        base: srv.base_url(),
    };
    let app = mint("backend", "app");
    let (ch, elsewhere) = (room("matrix"), room("elsewhere"));
    let (s, _) = api
        .put(
            &format!("/v1/channels/{ch}/moderators/mia"),
            Some(&app),
            json!(null),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    let (s, _) = api
        .put(
            &format!("/v1/channels/{elsewhere}/moderators/otto"),
            Some(&app),
            json!(null),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    let mia = common::token(&srv, "mia"); // moderator of ch
    let otto = common::token(&srv, "otto"); // moderator of another room
    let bob = common::token(&srv, "bob"); // nobody

    enum Call {
        Put(String, Value),
        Get(String),
        Delete(String),
    }
    let calls = [
        Call::Put(
            format!("/v1/channels/{ch}/wordlist"),
            json!({"mask": ["darn"]}),
        ),
        Call::Get(format!("/v1/channels/{ch}/wordlist")),
        Call::Put("/v1/wordlist".into(), json!({"mask": ["heck"]})),
        Call::Get("/v1/wordlist".into()),
        Call::Put(format!("/v1/channels/{ch}/moderators/max"), json!(null)),
        Call::Delete(format!("/v1/channels/{ch}/moderators/max")),
        Call::Put(
            format!("/v1/channels/{ch}/mutes/troll"),
            json!({"seconds": 60}),
        ),
        Call::Delete(format!("/v1/channels/{ch}/mutes/troll")),
        Call::Put(
            format!("/v1/channels/{ch}/settings"),
            json!({"max_rate": 100}),
        ),
        Call::Get(format!("/v1/channels/{ch}/settings")),
        Call::Get(format!("/v1/channels/{ch}/moderation/log")),
    ];
    // Expected for app, mia (this room's moderator), otto (another room's), bob.
    let allowed: [[bool; 4]; 11] = [
        [true, true, false, false],
        [true, true, false, false],
        [true, false, false, false],
        [true, false, false, false],
        [true, false, false, false],
        [true, false, false, false],
        [true, true, false, false],
        [true, true, false, false],
        [true, true, false, false],
        [true, true, false, false],
        [true, true, false, false],
    ];
    for (call, allowed) in calls.iter().zip(allowed) {
        for (who, token) in [("app", &app), ("mia", &mia), ("otto", &otto), ("bob", &bob)]
            .into_iter()
            .zip(allowed)
            .map(|((w, t), a)| ((w, a), t))
        {
            let (who, ok) = who;
            let (s, b) = match call {
                Call::Put(p, body) => api.put(p, Some(token), body.clone()).await,
                Call::Get(p) => api.get(p, Some(token)).await,
                Call::Delete(p) => api.delete(p, Some(token)).await,
            };
            let path = match call {
                Call::Put(p, _) | Call::Get(p) | Call::Delete(p) => p,
            };
            if ok {
                assert_eq!(s, StatusCode::OK, "{who} on {path}: {b}");
            } else {
                assert_eq!(
                    (s, code(&b)),
                    (StatusCode::FORBIDDEN, "forbidden"),
                    "{who} on {path}: {b}"
                );
            }
        }
        // No token at all: 401.
        let (s, b) = match call {
            Call::Put(p, body) => api.put(p, None, body.clone()).await,
            Call::Get(p) => api.get(p, None).await,
            Call::Delete(p) => api.delete(p, None).await,
        };
        assert_eq!((s, code(&b)), (StatusCode::UNAUTHORIZED, "missing_token"));
    }
    // A moderator cannot mute a moderator; app can.
    let (s, _) = api
        .put(
            &format!("/v1/channels/{ch}/moderators/max"),
            Some(&app),
            json!(null),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    let (s, b) = api
        .put(
            &format!("/v1/channels/{ch}/mutes/max"),
            Some(&mia),
            json!({"seconds": 60}),
        )
        .await;
    assert_eq!((s, code(&b)), (StatusCode::FORBIDDEN, "forbidden"));
    let (s, _) = api
        .put(
            &format!("/v1/channels/{ch}/mutes/max"),
            Some(&app),
            json!({"seconds": 60}),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    // A removed moderator loses the right at once.
    let (s, b) = api
        .delete(&format!("/v1/channels/{ch}/moderators/mia"), Some(&app))
        .await;
    assert_eq!((s, b["removed"].clone()), (StatusCode::OK, json!(true)));
    let (s, _) = api
        .put(
            &format!("/v1/channels/{ch}/mutes/troll"),
            Some(&mia),
            json!({"seconds": 60}),
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutes_refuse_until_they_end_and_room_settings_hold() {
    let srv = common::start(|c| {
        c.ingest.user_rate_per_sec = 10_000.0;
        c.ingest.user_burst = 10_000;
    })
    .await;
    let api = Api {
        base: srv.base_url(),
    };
    let app = mint("backend", "app");
    let ch = room("mutes");
    let (troll, alice, mia) = (
        common::token(&srv, "troll"),
        common::token(&srv, "alice"),
        common::token(&srv, "mia"),
    );
    api.put(
        &format!("/v1/channels/{ch}/moderators/mia"),
        Some(&app),
        json!(null),
    )
    .await;

    // A moderator mutes troll for 2 s: refused with the end time, others not.
    let (s, b) = api
        .put(
            &format!("/v1/channels/{ch}/mutes/troll"),
            Some(&mia),
            json!({"seconds": 2}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let until_ms = b["until_ms"].as_i64().unwrap();
    let (s, b, _) = api.post(&ch, &troll, "hi").await;
    assert_eq!((s, code(&b)), (StatusCode::FORBIDDEN, "muted"));
    let message = b["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("until 20") && message.contains(&ch),
        "{message}"
    );
    assert_eq!(api.published(&ch, &alice, "hi").await, "hi");
    // Only in that room.
    assert_eq!(api.published(&room("free"), &troll, "hi").await, "hi");
    let metrics = common::metrics_text(&srv.base_url()).await;
    assert!(
        metrics.contains("danmaku_ingest_active_mutes 1"),
        "active mutes"
    );
    // The mute ends by itself.
    let wait = until_ms - danmaku_proto::now_ms();
    tokio::time::sleep(Duration::from_millis(wait.max(0) as u64 + 100)).await;
    assert_eq!(api.published(&ch, &troll, "back").await, "back");
    // Unmute ends one early.
    api.put(
        &format!("/v1/channels/{ch}/mutes/troll"),
        Some(&app),
        json!({"seconds": 600}),
    )
    .await;
    assert_eq!(api.refused(&ch, &troll, "hi").await, "muted");
    let (s, b) = api
        .delete(&format!("/v1/channels/{ch}/mutes/troll"), Some(&mia))
        .await;
    assert_eq!((s, b["unmuted"].clone()), (StatusCode::OK, json!(true)));
    assert_eq!(api.published(&ch, &troll, "free").await, "free");

    // Slow mode: a second post within the window is 429 with Retry-After;
    // moderators and app are exempt.
    let (s, b) = api
        .put(
            &format!("/v1/channels/{ch}/settings"),
            Some(&mia),
            json!({"slow_mode_secs": 2, "max_rate": 200}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(
        b,
        json!({"slow_mode_secs": 2, "mute_all": false, "max_rate": 200})
    );
    assert_eq!(api.published(&ch, &alice, "one").await, "one");
    let (s, b, retry) = api.post(&ch, &alice, "two").await;
    assert_eq!(
        (s, code(&b)),
        (StatusCode::TOO_MANY_REQUESTS, "slow_mode"),
        "{b}"
    );
    let retry: u64 = retry.expect("Retry-After").parse().unwrap();
    assert!((1..=2).contains(&retry), "Retry-After {retry}");
    for _ in 0..2 {
        assert_eq!(api.published(&ch, &mia, "mod").await, "mod");
        assert_eq!(api.published(&ch, &app, "app").await, "app");
    }
    tokio::time::sleep(Duration::from_secs(retry)).await;
    assert_eq!(api.published(&ch, &alice, "three").await, "three");

    // mute_all: everyone but moderators and app; gifts still go through.
    let (s, b) = api
        .put(
            &format!("/v1/channels/{ch}/settings"),
            Some(&app),
            json!({"mute_all": true, "slow_mode_secs": 0}),
        )
        .await;
    assert_eq!(
        b,
        json!({"slow_mode_secs": 0, "mute_all": true, "max_rate": 200}),
        "{s}"
    );
    let (s, b, _) = api.post(&ch, &alice, "hello").await;
    assert_eq!((s, code(&b)), (StatusCode::FORBIDDEN, "room_muted"));
    assert_eq!(api.published(&ch, &mia, "mods speak").await, "mods speak");
    assert_eq!(api.published(&ch, &app, "app speaks").await, "app speaks");
    let (s, _, _) = api.post_kind(&ch, &alice, "gift", "rocket").await;
    assert_eq!(s, StatusCode::OK);
    api.put(
        &format!("/v1/channels/{ch}/settings"),
        Some(&app),
        json!({"mute_all": false}),
    )
    .await;
    assert_eq!(api.published(&ch, &alice, "hello").await, "hello");

    // The audit trail: every action, newest first, with who, what and target.
    let (s, b) = api
        .get(
            &format!("/v1/channels/{ch}/moderation/log?limit=3"),
            Some(&mia),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    let entries = b["entries"].as_array().unwrap();
    let summary: Vec<(String, String, String)> = entries
        .iter()
        .map(|e| {
            (
                e["actor"].as_str().unwrap().into(),
                e["action"].as_str().unwrap().into(),
                e["detail"].as_str().unwrap().into(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            ("backend".into(), "settings".into(), "mute_all=false".into()),
            (
                "backend".into(),
                "settings".into(),
                "slow_mode_secs=0 mute_all=true".into()
            ),
            (
                "mia".into(),
                "settings".into(),
                "slow_mode_secs=2 max_rate=200".into()
            ),
        ]
    );
    let (_, b) = api
        .get(&format!("/v1/channels/{ch}/moderation/log"), Some(&app))
        .await;
    let actions: Vec<&str> = b["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(
        actions,
        [
            "settings",
            "settings",
            "settings",
            "unmute",
            "mute",
            "mute",
            "add_moderator"
        ]
    );
    let mute = &b["entries"][5];
    assert_eq!(
        (mute["actor"].as_str(), mute["target"].as_str()),
        (Some("mia"), Some("troll"))
    );
    assert!(mute["ts_ms"].as_i64().unwrap() > 0);

    assert_metrics(
        &srv.base_url(),
        &[
            "danmaku_ingest_moderation_refused_total{reason=\"muted\"} 2",
            "danmaku_ingest_moderation_refused_total{reason=\"slow_mode\"} 1",
            "danmaku_ingest_moderation_refused_total{reason=\"room_muted\"} 1",
        ],
    )
    .await;
    srv.stop().await;
}

/// The next `Notice` on `client` (panics after `secs` without one); other
/// events are skipped.
async fn next_notice(client: &mut Client, secs: u64) -> (String, String, i64) {
    tokio::time::timeout(Duration::from_secs(secs), async {
        loop {
            match client.next_event().await {
                Some(ServerEvent::Notice {
                    channel,
                    code,
                    until_ms,
                }) => return (channel, code, until_ms),
                Some(_) => {}
                None => panic!("connection closed before a notice"),
            }
        }
    })
    .await
    .expect("a notice in time")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_muted_user_gets_a_notice_on_every_transport() {
    let srv = common::start(|_| {}).await;
    let base = srv.base_url();
    let api = Api { base: base.clone() };
    let app = mint("backend", "app");
    let ch = room("notice");
    let cert = danmaku_client::IngestClient::new(&base)
        .fetch_cert_der()
        .await
        .unwrap();
    let troll = common::token(&srv, "troll");
    let mut trolls = vec![
        Client::connect_ws(&base, &troll, Transport::WsJson, ClientConfig::default())
            .await
            .unwrap(),
        Client::connect_ws(&base, &troll, Transport::WsPb, ClientConfig::default())
            .await
            .unwrap(),
        Client::connect_quic(srv.quic_addr, Some(cert), &troll, ClientConfig::default())
            .await
            .unwrap(),
    ];
    let mut bystander = Client::connect_ws(
        &base,
        &common::token(&srv, "alice"),
        Transport::WsJson,
        ClientConfig::default(),
    )
    .await
    .unwrap();
    for c in trolls.iter_mut().chain([&mut bystander]) {
        c.join(&ch).await.unwrap();
        common::wait_joined(c, &ch).await;
    }
    let (s, b) = api
        .put(
            &format!("/v1/channels/{ch}/mutes/troll"),
            Some(&app),
            json!({"seconds": 300}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let until_ms = b["until_ms"].as_i64().unwrap();
    for t in &mut trolls {
        assert_eq!(
            next_notice(t, 10).await,
            (ch.clone(), "muted".into(), until_ms)
        );
    }
    // The bystander sees the next comment and no notice before it.
    assert_eq!(api.published(&ch, &app, "after").await, "after");
    let first = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match bystander.next_event().await {
                Some(e @ (ServerEvent::Notice { .. } | ServerEvent::Batch { .. })) => return e,
                Some(_) => {}
                None => panic!("closed"),
            }
        }
    })
    .await
    .unwrap();
    assert!(matches!(first, ServerEvent::Batch { .. }), "{first:?}");
    assert_metrics(&base, &["danmaku_edge_notices_sent_total 3"]).await;
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_keeps_lists_mutes_moderators_and_settings() {
    let data = std::env::temp_dir().join(danmaku_testkit::kafka::unique("danmaku-mod-restart"));
    let ch = room("restart");
    let app = mint("backend", "app");
    {
        let d = data.clone();
        let srv = common::start(move |c| c.data = d).await;
        let api = Api {
            base: srv.base_url(),
        };
        for (path, body) in [
            (
                format!("/v1/channels/{ch}/wordlist"),
                json!({"block": ["badword"], "mask": ["darn"]}),
            ),
            ("/v1/wordlist".to_string(), json!({"block": ["globalevil"]})),
            (
                format!("/v1/channels/{ch}/mutes/troll"),
                json!({"seconds": 600}),
            ),
            (format!("/v1/channels/{ch}/moderators/mia"), json!(null)),
            (
                format!("/v1/channels/{ch}/settings"),
                json!({"mute_all": true}),
            ),
        ] {
            let (s, b) = api.put(&path, Some(&app), body).await;
            assert_eq!(s, StatusCode::OK, "{path}: {b}");
        }
        srv.stop().await;
    }
    let d = data.clone();
    let srv = common::start(move |c| c.data = d).await;
    let api = Api {
        base: srv.base_url(),
    };
    let (troll, mia) = (common::token(&srv, "troll"), common::token(&srv, "mia"));
    let alice = common::token(&srv, "alice");
    assert_eq!(api.refused(&ch, &troll, "hi").await, "muted");
    assert_eq!(api.refused(&ch, &alice, "hi").await, "room_muted");
    assert_eq!(api.refused(&ch, &mia, "badword").await, "blocked_content");
    assert_eq!(
        api.refused(&ch, &mia, "globalevil").await,
        "blocked_content"
    );
    assert_eq!(api.published(&ch, &mia, "darn").await, "****");
    srv.stop().await;
    let _ = std::fs::remove_dir_all(&data);
}

/// Polls `f` until it returns true, for at most `within`; returns the time taken.
async fn within<F, Fut>(within: Duration, mut f: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let started = Instant::now();
    loop {
        if f().await {
            return started.elapsed();
        }
        assert!(started.elapsed() < within, "not within {within:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_two_ingest_nodes_share_the_policy_within_two_seconds() {
    danmaku_testkit::init_crypto();
    let bus = format!(
        "kafka://{}?topic={}",
        danmaku_testkit::kafka::shared_broker(),
        danmaku_testkit::kafka::unique("moderation")
    );
    let limits = ["--user-rate", "10000", "--user-burst", "10000"];
    let a = common::spawn("ingest", &bus, &limits).await;
    let b = common::spawn("ingest", &bus, &limits).await;
    let edge = common::spawn("edge", &bus, &[]).await;
    let (api_a, api_b) = (
        Api {
            base: a.base.clone(),
        },
        Api {
            base: b.base.clone(),
        },
    );
    let app = mint("backend", "app");
    let alice = mint("alice", "user");
    let ch = room("dist");

    // A list set through A is enforced by B within 2 s.
    assert_eq!(api_b.published(&ch, &alice, "a badword").await, "a badword");
    let (s, _) = api_a
        .put(
            &format!("/v1/channels/{ch}/wordlist"),
            Some(&app),
            json!({"block": ["badword"], "mask": ["darn"]}),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    let took = within(Duration::from_secs(2), || async {
        api_b.post(&ch, &alice, "a badword").await.0 == StatusCode::BAD_REQUEST
    })
    .await;
    eprintln!("word list reached the other ingest node in {took:?}");
    assert_eq!(api_b.published(&ch, &alice, "darn").await, "****");
    // The global list too.
    api_a
        .put("/v1/wordlist", Some(&app), json!({"block": ["globalevil"]}))
        .await;
    within(Duration::from_secs(2), || async {
        api_b.post(&room("any"), &alice, "globalevil").await.0 == StatusCode::BAD_REQUEST
    })
    .await;
    // A mute and a moderator made through B hold on A within 2 s.
    api_b
        .put(
            &format!("/v1/channels/{ch}/moderators/mia"),
            Some(&app),
            json!(null),
        )
        .await;
    let mia = mint("mia", "user");
    within(Duration::from_secs(2), || async {
        api_a
            .put(
                &format!("/v1/channels/{ch}/mutes/troll"),
                Some(&mia),
                json!({"seconds": 60}),
            )
            .await
            .0
            == StatusCode::OK
    })
    .await;
    let troll = mint("troll", "user");
    let mut troll_viewer =
        Client::connect_ws(&edge.base, &troll, Transport::WsPb, ClientConfig::default())
            .await
            .unwrap();
    troll_viewer.join(&ch).await.unwrap();
    common::wait_joined(&mut troll_viewer, &ch).await;
    let (s, muted) = api_a
        .put(
            &format!("/v1/channels/{ch}/mutes/troll"),
            Some(&app),
            json!({"seconds": 120}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{muted}");
    // (The notice of mia's earlier mute may still be on its way: skip it.)
    let want = (
        ch.clone(),
        "muted".to_owned(),
        muted["until_ms"].as_i64().unwrap(),
    );
    tokio::time::timeout(Duration::from_secs(2), async {
        while next_notice(&mut troll_viewer, 2).await != want {}
    })
    .await
    .expect("the muted user's connection on the edge gets the notice within 2 s");
    within(Duration::from_secs(2), || async {
        api_b.post(&ch, &troll, "hi").await.0 == StatusCode::FORBIDDEN
    })
    .await;
    // Settings: slow mode set through A holds on B.
    api_a
        .put(
            &format!("/v1/channels/{ch}/settings"),
            Some(&app),
            json!({"mute_all": true}),
        )
        .await;
    within(Duration::from_secs(2), || async {
        let (s, b, _) = api_b.post(&ch, &alice, "hi").await;
        s == StatusCode::FORBIDDEN && code(&b) == "room_muted"
    })
    .await;
    // A change committed without an announcement (as when the publish after the
    // commit failed) still reaches both nodes: they see the audit trail's head
    // move (polled every 5 s).
    let store = danmaku_store::connect(&danmaku_testkit::kafka::env_or_fail(
        "DANMAKU_TEST_POSTGRES",
    ))
    .await
    .unwrap();
    let quiet = room("quiet");
    store
        .moderate(&danmaku_store::ModerationAction {
            scope: quiet.clone(),
            actor: "dba".into(),
            change: danmaku_store::ModerationChange::SetWordlist {
                block: vec!["silentword".into()],
                mask: vec![],
            },
            ts_ms: danmaku_proto::now_ms(),
        })
        .await
        .unwrap();
    for api in [&api_a, &api_b] {
        let took = within(Duration::from_secs(8), || async {
            api.post(&quiet, &alice, "silentword").await.0 == StatusCode::BAD_REQUEST
        })
        .await;
        eprintln!("an unannounced change was enforced after {took:?}");
    }
    // Edges drop the announcements unread: none counted as a bad event.
    let metrics = common::metrics_text(&edge.base).await;
    assert!(
        !metrics.lines().any(|l| l
            .starts_with("danmaku_edge_bus_events_total{result=\"bad_event\"}")
            && !l.ends_with(" 0")),
        "edges must not count announcements as bad events"
    );
    // B heard A's changes on the bus (not only from its periodic reload).
    let metrics = common::metrics_text(&b.base).await;
    assert!(
        metrics.contains("danmaku_ingest_moderation_reloads_total{result=\"ok\",trigger=\"bus\"}"),
        "B reloaded on announcements"
    );
}

// ---------------------------------------------------------------- part B ----

/// `user`'s connections to `srv`, one per transport (`Transport::Quic` over
/// QUIC with the server's certificate), each joined to `ch`.
async fn joined_on(
    srv: &danmaku::standalone::Running,
    user: &str,
    ch: &str,
    transports: &[Transport],
) -> Vec<Client> {
    let base = srv.base_url();
    let token = common::token(srv, user);
    let mut clients = Vec::new();
    for &t in transports {
        let mut c = if t == Transport::Quic {
            let cert = danmaku_client::IngestClient::new(&base)
                .fetch_cert_der()
                .await
                .unwrap();
            Client::connect_quic(srv.quic_addr, Some(cert), &token, ClientConfig::default())
                .await
                .unwrap()
        } else {
            Client::connect_ws(&base, &token, t, ClientConfig::default())
                .await
                .unwrap()
        };
        c.join(ch).await.unwrap();
        common::wait_joined(&mut c, ch).await;
        clients.push(c);
    }
    clients
}

/// The next `Left` (channel, reason) or `Error` code a client gets, skipping
/// everything else.
async fn next_left_or_error(client: &mut Client, secs: u64) -> ServerEvent {
    tokio::time::timeout(Duration::from_secs(secs), async {
        loop {
            match client.next_event().await {
                Some(e @ (ServerEvent::Left { .. } | ServerEvent::Error { .. })) => return e,
                Some(_) => {}
                None => panic!("connection closed before a left or an error"),
            }
        }
    })
    .await
    .expect("a left or an error in time")
}

fn left_banned(ch: &str) -> ServerEvent {
    ServerEvent::Left {
        channel: ch.to_owned(),
        reason: "banned".into(),
    }
}

/// Joins `ch` and expects the `banned` error.
async fn join_refused_banned(client: &mut Client, ch: &str) {
    client.join(ch).await.unwrap();
    match next_left_or_error(client, 10).await {
        ServerEvent::Error { code, message } => {
            assert_eq!(code, "banned", "{message}");
            assert!(message.contains(ch), "{message}");
        }
        other => panic!("expected the error banned, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bans_who_may_do_what_and_bad_input_refused_whole() {
    let srv = common::start(|_| {}).await;
    let base = srv.base_url();
    let api = Api { base: base.clone() };
    let app = mint("backend", "app");
    let ch = room("bans");
    let other = room("bans-other");
    let (mia, max, alice, troll) = (
        mint("mia", "user"),
        mint("max", "user"),
        mint("alice", "user"),
        mint("troll", "user"),
    );
    for (room, user) in [(&ch, "mia"), (&other, "max"), (&ch, "mod2")] {
        let (s, b) = api
            .put(
                &format!("/v1/channels/{room}/moderators/{user}"),
                Some(&app),
                json!(null),
            )
            .await;
        assert_eq!(s, StatusCode::OK, "{b}");
    }
    let ban = |user: &str| format!("/v1/channels/{ch}/bans/{user}");
    // Who may not: a moderator of another room, a plain user, no token, a
    // moderator banning a moderator.
    for (token, user, status, want) in [
        (Some(&max), "troll", StatusCode::FORBIDDEN, "forbidden"),
        (Some(&alice), "troll", StatusCode::FORBIDDEN, "forbidden"),
        (None, "troll", StatusCode::UNAUTHORIZED, "missing_token"),
        (Some(&mia), "mod2", StatusCode::FORBIDDEN, "forbidden"),
    ] {
        let (s, b) = api
            .put(
                &ban(user),
                token.map(|t| t.as_str()),
                json!({"seconds": 60}),
            )
            .await;
        assert_eq!((s, code(&b)), (status, want), "{b}");
        if user == "troll" {
            let (s, b) = api.delete(&ban(user), token.map(|t| t.as_str())).await;
            assert_eq!((s, code(&b)), (status, want), "DELETE: {b}");
        }
    }
    // Bad input: nothing applied.
    for (path, body, want) in [
        (ban("troll"), json!({"seconds": -5}), "bad_seconds"),
        (ban("troll"), json!({"seconds": 0}), "bad_seconds"),
        (ban("troll"), json!({"seconds": 400_000_000}), "bad_seconds"),
        (ban("troll"), json!({"seconds": "10"}), "bad_json"),
        (ban("troll"), json!({"secs": 10}), "bad_json"),
        (ban("bad user!"), json!({"seconds": 10}), "bad_user"),
        (
            "/v1/channels/chan:1/bans/troll".to_string(),
            json!({"seconds": 10}),
            "bad_channel",
        ),
    ] {
        let (s, b) = api.put(&path, Some(&app), body.clone()).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{path} {body}: {b}");
        assert_eq!(code(&b), want, "{path} {body}: {b}");
    }
    assert_eq!(api.published(&ch, &troll, "still here").await, "still here");
    let (_, log) = api
        .get(
            &format!("/v1/channels/{ch}/moderation/log?limit=100"),
            Some(&app),
        )
        .await;
    assert!(
        !log["entries"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["action"] == "ban"),
        "a refused ban leaves no audit row: {log}"
    );
    // The room's moderator bans for a minute: every kind is refused, saying until when.
    let (s, b) = api
        .put(&ban("troll"), Some(&mia), json!({"seconds": 60}))
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let until_ms = b["until_ms"].as_i64().unwrap();
    assert!(until_ms > danmaku_proto::now_ms() + 50_000, "{b}");
    assert_eq!(
        (b["banned"].as_bool(), b["user"].as_str()),
        (Some(true), Some("troll"))
    );
    for kind in ["danmaku", "gift"] {
        let (s, b, _) = api.post_kind(&ch, &troll, kind, "hi").await;
        assert_eq!(
            (s, code(&b)),
            (StatusCode::FORBIDDEN, "banned"),
            "{kind}: {b}"
        );
        assert!(
            b["error"]["message"].as_str().unwrap().contains("until"),
            "{b}"
        );
    }
    assert_eq!(
        api.published(&other, &troll, "elsewhere").await,
        "elsewhere"
    );
    // The app bans for good; the app itself is never held back.
    let (s, b) = api.put(&ban("spammer"), Some(&app), json!({})).await;
    assert_eq!((s, b["until_ms"].is_null()), (StatusCode::OK, true), "{b}");
    let (s, b, _) = api.post(&ch, &mint("spammer", "user"), "buy now").await;
    assert_eq!((s, code(&b)), (StatusCode::FORBIDDEN, "banned"), "{b}");
    assert!(
        b["error"]["message"]
            .as_str()
            .unwrap()
            .contains("permanently"),
        "{b}"
    );
    // Lifting: the post goes through again; lifting twice says nothing was lifted.
    let (s, b) = api.delete(&ban("troll"), Some(&mia)).await;
    assert_eq!(
        (s, b["unbanned"].as_bool()),
        (StatusCode::OK, Some(true)),
        "{b}"
    );
    let (_, b) = api.delete(&ban("troll"), Some(&app)).await;
    assert_eq!(b["unbanned"].as_bool(), Some(false), "{b}");
    assert_eq!(api.published(&ch, &troll, "back").await, "back");
    let (_, log) = api
        .get(
            &format!("/v1/channels/{ch}/moderation/log?limit=3"),
            Some(&app),
        )
        .await;
    let actions: Vec<(&str, &str, &str)> = log["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["actor"].as_str().unwrap(),
                e["action"].as_str().unwrap(),
                e["target"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        actions,
        vec![
            ("backend", "unban", "troll"),
            ("mia", "unban", "troll"),
            ("backend", "ban", "spammer")
        ]
    );
    assert_metrics(
        &base,
        &[
            "danmaku_ingest_moderation_refused_total{reason=\"banned\"} 3",
            "danmaku_ingest_moderation_changes_total{what=\"bans\"} 4",
            "danmaku_ingest_active_bans 1",
            "danmaku_ingest_rejected_total{code=\"bad_seconds\"",
        ],
    )
    .await;
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ban_ends_the_users_connections_on_every_transport_until_lifted() {
    let srv = common::start(|_| {}).await;
    let base = srv.base_url();
    let api = Api { base: base.clone() };
    let app = mint("backend", "app");
    let ch = room("ban-conn");
    let all = [Transport::WsJson, Transport::WsPb, Transport::Quic];
    let mut trolls = joined_on(&srv, "troll", &ch, &all).await;
    let mut viewer = joined_on(&srv, "alice", &ch, &[Transport::WsPb])
        .await
        .remove(0);
    let (s, b) = api
        .put(
            &format!("/v1/channels/{ch}/bans/troll"),
            Some(&app),
            json!({"seconds": 600}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    for t in &mut trolls {
        assert_eq!(next_left_or_error(t, 10).await, left_banned(&ch));
        join_refused_banned(t, &ch).await;
    }
    // The viewer stays and keeps getting the room.
    assert_eq!(
        api.published(&ch, &app, "after the ban").await,
        "after the ban"
    );
    let got = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match viewer.next_event().await {
                Some(ServerEvent::Batch { events, .. }) if !events.is_empty() => return events,
                Some(ServerEvent::Left { .. }) => panic!("the viewer must stay"),
                Some(_) => {}
                None => panic!("closed"),
            }
        }
    })
    .await
    .unwrap();
    assert_eq!(got[0].text, "after the ban");
    let (s, _) = api
        .delete(&format!("/v1/channels/{ch}/bans/troll"), Some(&app))
        .await;
    assert_eq!(s, StatusCode::OK);
    // Lifted: joining works again (the edge heard it on the bus).
    let t = &mut trolls[0];
    // A join sent before the edge heard the lift is refused `banned` once more; those
    // refusals are counted too, so the test counts them to know the exact total.
    let mut refused_while_lifting = 0;
    let joined = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            t.join(&ch).await.unwrap();
            match tokio::time::timeout(Duration::from_millis(500), t.next_event()).await {
                Ok(Some(ServerEvent::Joined { .. })) => return,
                Ok(Some(ServerEvent::Error { code, .. })) if code == "banned" => {
                    refused_while_lifting += 1;
                    tokio::time::sleep(Duration::from_millis(50)).await
                }
                Ok(Some(_)) | Err(_) => {}
                Ok(None) => panic!("closed"),
            }
        }
    })
    .await;
    assert!(joined.is_ok(), "join after the ban was lifted");
    // Three refused joins while banned (one per transport) plus any during the lift.
    let banned_errors = format!(
        "danmaku_edge_errors_total{{code=\"banned\"}} {}",
        3 + refused_while_lifting
    );
    assert_metrics(
        &base,
        &[
            "danmaku_edge_banned_leaves_total 3",
            &banned_errors,
            "danmaku_edge_bans_active 0",
        ],
    )
    .await;
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_keeps_bans_on_ingest_and_edge() {
    let data = std::env::temp_dir().join(danmaku_testkit::kafka::unique("danmaku-ban-restart"));
    let ch = room("ban-restart");
    let app = mint("backend", "app");
    {
        let d = data.clone();
        let srv = common::start(move |c| c.data = d).await;
        let api = Api {
            base: srv.base_url(),
        };
        let (s, b) = api
            .put(
                &format!("/v1/channels/{ch}/bans/troll"),
                Some(&app),
                json!({}),
            )
            .await;
        assert_eq!(s, StatusCode::OK, "{b}");
        srv.stop().await;
    }
    let d = data.clone();
    let srv = common::start(move |c| c.data = d).await;
    let base = srv.base_url();
    let api = Api { base: base.clone() };
    let troll = common::token(&srv, "troll");
    assert_eq!(api.refused(&ch, &troll, "hi").await, "banned");
    let mut c = Client::connect_ws(&base, &troll, Transport::WsJson, ClientConfig::default())
        .await
        .unwrap();
    join_refused_banned(&mut c, &ch).await;
    assert_metrics(
        &base,
        &["danmaku_edge_bans_active 1", "danmaku_ingest_active_bans 1"],
    )
    .await;
    srv.stop().await;
    let _ = std::fs::remove_dir_all(&data);
}

/// The next `Retract` a client gets (skipping everything else).
async fn next_retract(client: &mut Client, secs: u64) -> (String, String) {
    tokio::time::timeout(Duration::from_secs(secs), async {
        loop {
            match client.next_event().await {
                Some(ServerEvent::Retract { channel, id }) => return (channel, id),
                Some(_) => {}
                None => panic!("connection closed before a retraction"),
            }
        }
    })
    .await
    .expect("a retraction in time")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retraction_reaches_viewers_on_every_transport_and_hides_gifts_from_history() {
    let srv = common::start(|_| {}).await;
    let base = srv.base_url();
    let api = Api { base: base.clone() };
    let app = mint("backend", "app");
    let ch = room("retract");
    let other = room("retract-other");
    let (mia, max, alice) = (
        mint("mia", "user"),
        mint("max", "user"),
        mint("alice", "user"),
    );
    api.put(
        &format!("/v1/channels/{ch}/moderators/mia"),
        Some(&app),
        json!(null),
    )
    .await;
    api.put(
        &format!("/v1/channels/{other}/moderators/max"),
        Some(&app),
        json!(null),
    )
    .await;
    let all = [Transport::WsJson, Transport::WsPb, Transport::Quic];
    let mut viewers = joined_on(&srv, "viewer", &ch, &all).await;
    // Every accepted danmaku has an id, in the answer and on the event.
    let (s, posted, _) = api.post(&ch, &alice, "oops").await;
    assert_eq!(s, StatusCode::ACCEPTED, "{posted}");
    let id = posted["id"].as_str().unwrap().to_owned();
    assert_eq!(id.len(), 27, "{posted}");
    for v in &mut viewers {
        let ev = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                if let Some(ServerEvent::Batch { events, .. }) = v.next_event().await
                    && let Some(e) = events.into_iter().find(|e| e.text == "oops")
                {
                    return e;
                }
            }
        })
        .await
        .unwrap();
        assert_eq!(ev.id, id);
    }
    let retract = |id: &str| format!("/v1/channels/{ch}/messages/{id}");
    // Who may not, and bad ids: nothing published.
    for (token, path, status, want) in [
        (Some(&max), retract(&id), StatusCode::FORBIDDEN, "forbidden"),
        (
            Some(&alice),
            retract(&id),
            StatusCode::FORBIDDEN,
            "forbidden",
        ),
        (
            None,
            retract(&id),
            StatusCode::UNAUTHORIZED,
            "missing_token",
        ),
        (
            Some(&mia),
            retract("not-an-id"),
            StatusCode::BAD_REQUEST,
            "bad_message_id",
        ),
        (
            Some(&mia),
            retract("0"),
            StatusCode::BAD_REQUEST,
            "bad_message_id",
        ),
        (
            Some(&mia),
            retract("12345"),
            StatusCode::NOT_FOUND,
            "unknown_message",
        ),
        // A well-formed danmaku id from 2020: nothing on screen to take back.
        (
            Some(&mia),
            retract("175f8e6a8000000000100000000"),
            StatusCode::NOT_FOUND,
            "unknown_message",
        ),
    ] {
        let (s, b) = api.delete(&path, token.map(|t| t.as_str())).await;
        assert_eq!((s, code(&b)), (status, want), "{path}: {b}");
    }
    // The room's moderator retracts it: every viewer is told, on every transport.
    let (s, b) = api.delete(&retract(&id), Some(&mia)).await;
    assert_eq!(
        (s, b["retracted"].as_bool()),
        (StatusCode::OK, Some(true)),
        "{b}"
    );
    for v in &mut viewers {
        assert_eq!(next_retract(v, 10).await, (ch.clone(), id.clone()));
    }
    // A gift: retracted by seq, gone from history (an earlier and a later one stay).
    let mut seqs = Vec::new();
    for text in ["rose", "rocket", "car"] {
        let (s, b, _) = api.post_kind(&ch, &alice, "gift", text).await;
        assert_eq!(s, StatusCode::OK, "{b}");
        seqs.push(b["seq"].as_u64().unwrap());
    }
    let (s, b) = api.delete(&retract(&seqs[1].to_string()), Some(&app)).await;
    assert_eq!(
        (s, b["retracted"].as_bool()),
        (StatusCode::OK, Some(true)),
        "{b}"
    );
    for v in &mut viewers {
        assert_eq!(next_retract(v, 10).await, (ch.clone(), seqs[1].to_string()));
    }
    let (_, b) = api.delete(&retract(&seqs[1].to_string()), Some(&app)).await;
    assert_eq!(
        b["retracted"].as_bool(),
        Some(false),
        "already retracted: {b}"
    );
    let (s, h) = api
        .get(
            &format!("/v1/channels/{ch}/messages?after_seq=0"),
            Some(&alice),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{h}");
    let texts: Vec<&str> = h["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["text"].as_str().unwrap())
        .collect();
    assert_eq!(texts, vec!["rose", "car"], "{h}");
    // A page of only retracted messages does not read as the end.
    let (_, h) = api
        .get(
            &format!("/v1/channels/{ch}/messages?after_seq={}&limit=1", seqs[0]),
            Some(&alice),
        )
        .await;
    assert_eq!(h["messages"][0]["text"], "car", "{h}");
    let (_, log) = api
        .get(
            &format!("/v1/channels/{ch}/moderation/log?limit=3"),
            Some(&app),
        )
        .await;
    assert_eq!(log["entries"][0]["action"], "retract", "{log}");
    assert_eq!(log["entries"][2]["detail"], format!("id={id}"), "{log}");
    assert_metrics(
        &base,
        &[
            "danmaku_ingest_moderation_changes_total{what=\"retract\"} 3",
            "danmaku_ingest_rejected_total{code=\"bad_message_id\"} 2",
            "danmaku_ingest_rejected_total{code=\"unknown_message\"} 2",
        ],
    )
    .await;
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_a_ban_through_one_ingest_ends_the_users_connections_on_both_edges() {
    danmaku_testkit::init_crypto();
    let bus = format!(
        "kafka://{}?topic={}",
        danmaku_testkit::kafka::shared_broker(),
        danmaku_testkit::kafka::unique("moderation-bans")
    );
    let a = common::spawn("ingest", &bus, &[]).await;
    let b = common::spawn("ingest", &bus, &[]).await;
    let edge1 = common::spawn("edge", &bus, &[]).await;
    let edge2 = common::spawn("edge", &bus, &[]).await;
    let (api_a, api_b) = (
        Api {
            base: a.base.clone(),
        },
        Api {
            base: b.base.clone(),
        },
    );
    let app = mint("backend", "app");
    let troll = mint("troll", "user");
    let ch = room("kbans");
    let mut conns = Vec::new();
    for edge in [&edge1, &edge2] {
        let mut c =
            Client::connect_ws(&edge.base, &troll, Transport::WsPb, ClientConfig::default())
                .await
                .unwrap();
        c.join(&ch).await.unwrap();
        common::wait_joined(&mut c, &ch).await;
        conns.push(c);
    }
    let started = Instant::now();
    let (s, body) = api_a
        .put(
            &format!("/v1/channels/{ch}/bans/troll"),
            Some(&app),
            json!({"seconds": 300}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{body}");
    for c in &mut conns {
        assert_eq!(next_left_or_error(c, 2).await, left_banned(&ch));
    }
    eprintln!(
        "both edges made the banned user leave within {:?}",
        started.elapsed()
    );
    for c in &mut conns {
        join_refused_banned(c, &ch).await;
    }
    // The other ingest refuses the user's posts within 2 s.
    within(Duration::from_secs(2), || async {
        let (s, b, _) = api_b.post(&ch, &troll, "hi").await;
        s == StatusCode::FORBIDDEN && code(&b) == "banned"
    })
    .await;
    // A new edge loads the ban from the store at start.
    let edge3 = common::spawn("edge", &bus, &[]).await;
    let mut late = Client::connect_ws(
        &edge3.base,
        &troll,
        Transport::WsJson,
        ClientConfig::default(),
    )
    .await
    .unwrap();
    join_refused_banned(&mut late, &ch).await;
    // Lifted through B: A accepts the posts again.
    api_b
        .delete(&format!("/v1/channels/{ch}/bans/troll"), Some(&app))
        .await;
    within(Duration::from_secs(2), || async {
        api_a.post(&ch, &troll, "back").await.0 == StatusCode::ACCEPTED
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hot_room_capped_at_200_per_second_gives_every_viewer_200_with_every_gift_and_priority() {
    let srv = common::start(|c| {
        c.ingest.user_rate_per_sec = 100_000.0;
        c.ingest.user_burst = 100_000;
        c.ingest.channel_rate_per_sec = 100_000.0;
    })
    .await;
    let base = srv.base_url();
    let api = Api { base: base.clone() };
    let app = mint("backend", "app");
    let ch = room("hot");
    api.put(
        &format!("/v1/channels/{ch}/moderators/host"),
        Some(&app),
        json!(null),
    )
    .await;
    let (s, b) = api
        .put(
            &format!("/v1/channels/{ch}/settings"),
            Some(&app),
            json!({"max_rate": 200}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let viewers = joined_on(&srv, "viewer", &ch, &[Transport::WsPb, Transport::Quic]).await;
    // 2,000 danmaku/s for 3 s from 20 posters; the host (a moderator) posts one in
    // 20 of them (priority); a gift every 100 ms.
    const SECS: u64 = 3;
    let http = reqwest::Client::new();
    let url = format!("{base}/v1/channels/{ch}/messages");
    let started = Instant::now();
    let mut posters = Vec::new();
    for p in 0..20u64 {
        let (http, url) = (http.clone(), url.clone());
        let (crowd, host) = (mint(&format!("fan{p}"), "user"), mint("host", "user"));
        posters.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(10));
            let mut sent = (0u64, 0u64, 0u64); // danmaku, priority, gifts
            for i in 0..SECS * 100 {
                tick.tick().await;
                let (token, kind, text) = match (p, i % 10) {
                    (0, 0) => (&crowd, "gift", format!("gift {i}")),
                    (1, _) => (&host, "danmaku", format!("host {i}")),
                    _ => (&crowd, "danmaku", format!("fan{p} {i}")),
                };
                let r = http
                    .post(&url)
                    .bearer_auth(token)
                    .json(&json!({"kind": kind, "text": text}))
                    .send()
                    .await
                    .unwrap();
                assert!(r.status().is_success(), "{}", r.status());
                match (kind, p) {
                    ("gift", _) => sent.2 += 1,
                    (_, 1) => sent.1 += 1,
                    _ => sent.0 += 1,
                }
            }
            sent
        }));
    }
    let counts = viewers.into_iter().map(|mut v| {
        tokio::spawn(async move {
            let (mut plain, mut priority, mut sampled_out) = (0u64, 0u64, 0u64);
            let mut gifts = std::collections::HashSet::new();
            while let Ok(Some(ev)) =
                tokio::time::timeout(Duration::from_secs(3), v.next_event()).await
            {
                match ev {
                    ServerEvent::Batch { events, .. } => {
                        for e in events {
                            if e.priority {
                                priority += 1
                            } else {
                                plain += 1
                            }
                        }
                    }
                    ServerEvent::Reliable { seq, .. } => {
                        gifts.insert(seq);
                    }
                    ServerEvent::SampledOut { count, .. } => sampled_out += count,
                    _ => {}
                }
            }
            (plain, priority, gifts.len() as u64, sampled_out)
        })
    });
    let counts: Vec<_> = counts.collect();
    let mut sent = (0, 0, 0);
    for p in posters {
        let s = p.await.unwrap();
        sent = (sent.0 + s.0, sent.1 + s.1, sent.2 + s.2);
    }
    let secs = started.elapsed().as_secs_f64();
    eprintln!(
        "posted {} danmaku + {} priority + {} gifts in {secs:.2} s ({:.0}/s)",
        sent.0,
        sent.1,
        sent.2,
        (sent.0 + sent.1) as f64 / secs
    );
    for c in counts {
        let (plain, priority, gifts, sampled_out) = c.await.unwrap();
        let rate = (plain + priority) as f64 / secs;
        eprintln!(
            "viewer: {plain} + {priority} priority ({rate:.0}/s), {gifts} gifts, {sampled_out} sampled out"
        );
        assert_eq!(priority, sent.1, "every priority danmaku");
        assert_eq!(gifts, sent.2, "every gift");
        assert_eq!(
            plain + priority + sampled_out,
            sent.0 + sent.1,
            "sampled_out counts the rest"
        );
        assert!(
            (180.0..=220.0).contains(&rate),
            "200/s ±10% expected, got {rate:.0}/s"
        );
    }
    srv.stop().await;
}
