//! Test vectors for the JavaScript SDK's batch decoder (`sdk/js/test/fixtures/batches.json`):
//! batches made by this crate's encoder in every layout, with the events
//! `decode_batch` reads back from them, so the SDK is tested against the real
//! encoder (compact and dense layouts, zstd with and without dictionary 1)
//! rather than against its own idea of it.
//!
//! `cargo run --release -p danmaku-proto --example batch_vectors -- sdk/js/test/fixtures/batches.json`
//! (from the repository root)
//!
//! Events are as the SDK decodes them (`sdk/js/src/event.js`): `kind` by name,
//! empty strings and a false `priority` left out, `payload_json` parsed into
//! `payload` when it is JSON. Deterministic: the same build writes the same bytes.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use bytes::BytesMut;
use danmaku_proto::batch::ENCODING_DENSE;
use danmaku_proto::sample::CommentGenerator;
use danmaku_proto::{BatchEncoder, Layout, Limits, decode_batch, pb};
use prost::Message;
use serde_json::{Value, json};

const GENERATOR: &str = "cargo run --release -p danmaku-proto --example batch_vectors -- sdk/js/test/fixtures/batches.json";

/// `Kind` names as the SDK spells them (`KINDS` in `event.js`), by number.
const KINDS: [&str; 5] = ["unspecified", "danmaku", "gift", "chat", "retract"];

/// A tick's worth of danmaku, ids as ingest issues them: node `tags[i % tags.len()]`,
/// its counter advancing by `steps[i % steps.len()]`.
fn danmaku(seed: u64, n: usize, tags: &[u32], steps: &[u32]) -> Vec<pb::Event> {
    let mut g = CommentGenerator::new(seed);
    let mut counters = vec![0x0001_0000u32; tags.len()];
    let mut ts = 1_796_650_800_000i64;
    (0..n)
        .map(|i| {
            // Mostly forward, now and then a millisecond back (ingest nodes'
            // clocks differ): negative deltas too.
            ts += [3, 0, 11, -1][i % 4];
            let node = i % tags.len();
            counters[node] += steps[i % steps.len()];
            pb::Event {
                kind: pb::Kind::Danmaku as i32,
                sender: g.sender(),
                text: g.text(),
                ts_ms: ts,
                id: format!("{ts:011x}{:08x}{:08x}", tags[node], counters[node]),
                ..Default::default()
            }
        })
        .collect()
}

/// Danmaku with the other kinds and optional fields among them.
fn mixed() -> Vec<pb::Event> {
    let mut events = danmaku(11, 12, &[0x3f2a_91c4], &[1]);
    let named = events[2].id.clone();
    events[3].priority = true;
    events[4].blob = "ab".repeat(32);
    events.insert(
        5,
        pb::Event {
            kind: pb::Kind::Gift as i32,
            sender: "user42".into(),
            text: "rocket".into(),
            ts_ms: events[4].ts_ms + 2,
            seq: 41,
            payload_json: r#"{"gift":"rocket","n":1,"combo":[1,2]}"#.into(),
            client_msg_id: "c-7f3a".into(),
            ..Default::default()
        },
    );
    events.insert(
        8,
        pb::Event {
            kind: pb::Kind::Retract as i32,
            sender: "mod1".into(),
            ts_ms: events[7].ts_ms,
            id: named,
            ..Default::default()
        },
    );
    events.push(pb::Event {
        kind: pb::Kind::Chat as i32,
        sender: "user7".into(),
        text: "hello".into(),
        ts_ms: events[12].ts_ms + 40,
        seq: 42,
        payload_json: "not json".into(),
        ..Default::default()
    });
    events
}

/// A tick with one danmaku whose own id could be read as a shortened one: the
/// encoder falls back to a simpler layout for it.
fn odd_id(id: &str) -> Vec<pb::Event> {
    let mut events = danmaku(13, 6, &[7], &[1]);
    events[2].id = id.into();
    events
}

/// Event as the SDK decodes it.
fn js_event(e: &pb::Event) -> Value {
    let mut v = json!({
        "kind": KINDS.get(e.kind as usize).copied().unwrap_or("unspecified"),
        "sender": e.sender,
        "text": e.text,
        "ts_ms": e.ts_ms,
        "seq": e.seq,
    });
    let o = v.as_object_mut().expect("an object");
    let mut opt = |key: &str, s: &str| {
        if !s.is_empty() {
            o.insert(key.into(), json!(s));
        }
    };
    opt("id", &e.id);
    opt("client_msg_id", &e.client_msg_id);
    opt("blob", &e.blob);
    if e.priority {
        o.insert("priority".into(), json!(true));
    }
    if !e.payload_json.is_empty() {
        match serde_json::from_str::<Value>(&e.payload_json) {
            Ok(p) => o.insert("payload".into(), p),
            Err(_) => o.insert("payload_json".into(), json!(e.payload_json)),
        };
    }
    v
}

/// A batch's fields as the SDK's `decodeBatchPayload` takes them, `layout` naming
/// what it was encoded for.
fn batch_json(layout: &str, b: &pb::Batch) -> Value {
    json!({
        "layout": layout,
        "codec": b.codec,
        "dict_id": b.dict_id,
        "count": b.count,
        "encoding": b.encoding,
        "payload": STANDARD.encode(&b.payload),
    })
}

/// One set of events: the batches that carry it and the events each decodes to
/// (the same for every batch of the set, checked here). One event per line, so
/// the file reads and diffs by event.
fn set_json(name: &str, batches: &[(&str, pb::Batch)], limits: &Limits) -> String {
    let mut events = None;
    for (layout, b) in batches {
        let decoded = decode_batch(b, limits).expect("the encoder's batch decodes");
        assert!(
            events.as_ref().is_none_or(|e| *e == decoded),
            "{name}: {layout} decodes to other events"
        );
        events = Some(decoded);
    }
    let line = |v: Value| serde_json::to_string(&v).expect("serializes");
    let events: Vec<String> = events
        .unwrap_or_default()
        .iter()
        .map(|e| format!("        {}", line(js_event(e))))
        .collect();
    let batches: Vec<String> = batches
        .iter()
        .map(|(layout, b)| format!("        {}", line(batch_json(layout, b))))
        .collect();
    format!(
        "    {{\n      \"name\": {},\n      \"batches\": [\n{}\n      ],\n      \"events\": [\n{}\n      ]\n    }}",
        line(json!(name)),
        batches.join(",\n"),
        events.join(",\n")
    )
}

fn main() {
    let out = std::env::args()
        .nth(1)
        .expect("usage: batch_vectors <out.json>");
    let limits = Limits::default();
    let sets = [
        ("3 danmaku, one node", danmaku(1, 3, &[0x3f2a_91c4], &[1])),
        ("20 danmaku, one node", danmaku(2, 20, &[0x3f2a_91c4], &[1])),
        (
            "300 danmaku, one node",
            danmaku(3, 300, &[0x3f2a_91c4], &[1]),
        ),
        (
            "40 danmaku, two nodes interleaved",
            danmaku(4, 40, &[0x3f2a_91c4, 0x8b10_77e2], &[1, 2, 5]),
        ),
        (
            "30 danmaku, one node with gaps",
            danmaku(5, 30, &[0x0000_0007], &[1, 12, 3, 250_000]),
        ),
        ("danmaku with a gift, a retract and a chat", mixed()),
        ("a danmaku id of 16 characters", odd_id("0123456789abcdef")),
        ("an empty danmaku id", odd_id("")),
        ("a danmaku id like a step", odd_id("+2")),
    ];
    let mut enc = BatchEncoder::default();
    let mut out_sets = Vec::new();
    for (name, events) in &sets {
        let batches: Vec<(&str, pb::Batch)> = [
            ("plain", Layout::Plain),
            ("compact", Layout::Compact),
            ("dense", Layout::Dense),
        ]
        .into_iter()
        .map(|(label, layout)| {
            let b = enc
                .encode_layout("room:1", events, layout)
                .expect("encodes");
            assert_eq!(
                &decode_batch(&b, &limits).expect("decodes"),
                events,
                "{name} {label}"
            );
            (label, b)
        })
        .collect();
        out_sets.push(set_json(name, &batches, &limits));
    }
    // Dense ids as no encoder writes them, as the decoder (`expand`) reads them:
    // a step with no id before it, a counter at u32::MAX - 1, a step past
    // u32::MAX, a step that is not a number, then a step that continues the counter.
    let wire = ["+5", "00000007fffffffe", "+9", "+x1", ""];
    let mut payload = BytesMut::new();
    for id in wire {
        pb::Event {
            kind: pb::Kind::Danmaku as i32,
            id: id.into(),
            ..Default::default()
        }
        .encode_length_delimited(&mut payload)
        .expect("encodes");
    }
    let hostile = pb::Batch {
        count: wire.len() as u32,
        payload: payload.freeze(),
        encoding: ENCODING_DENSE,
        ..Default::default()
    };
    out_sets.push(set_json("hostile dense ids", &[("wire", hostile)], &limits));
    let text = format!(
        "{{\n  \"generator\": \"{GENERATOR}\",\n  \"sets\": [\n{}\n  ]\n}}\n",
        out_sets.join(",\n")
    );
    serde_json::from_str::<Value>(&text).expect("writes JSON");
    std::fs::write(&out, text).unwrap_or_else(|e| panic!("writing {out}: {e}"));
    eprintln!("{} event sets written to {out}", out_sets.len());
}
