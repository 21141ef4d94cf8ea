//! The store contract: the same tests for every backend. A backend is added by
//! instantiating `contract_suite!` with a constructor of a [`Fixture`].
//!
//! The PostgreSQL suite runs against the real server named by `DANMAKU_TEST_POSTGRES`
//! (`scripts/services.sh start postgres`, then `source .services/env`). All tests share
//! that database, so each one works on channel, group and user names of its own.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use danmaku_proto::account::{self, AccountPolicy, BLOCK_TOMBSTONE_SECS, Refusal};
use danmaku_proto::token::Claims;
use danmaku_store::{
    GLOBAL_SCOPE, MAX_READ_LIMIT, Member, ModerationAction, ModerationChange, NewMessage, Policy,
    RoomSettings, SettingsPatch, Store, StoreError,
};

/// A store under test plus what is needed to open it again.
pub struct Fixture {
    pub store: Arc<dyn Store>,
    /// The URL `store` was opened with: `connect(url)` gives an independent handle.
    pub url: String,
    pub backend: &'static str,
    _dir: Option<tempfile::TempDir>,
}

/// A name no other test (in this run or an earlier one on the same database) uses.
fn unique(prefix: &str) -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    format!(
        "{prefix}:t{}-{nanos}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

fn msg(channel: &str, text: &str) -> NewMessage {
    NewMessage {
        channel: channel.to_owned(),
        client_msg_id: None,
        sender: "alice".into(),
        kind: "gift".into(),
        text: text.to_owned(),
        payload_json: None,
        blob: None,
        ts_ms: 1_732_350_000_000,
    }
}

fn msg_id(channel: &str, text: &str, client_msg_id: &str) -> NewMessage {
    NewMessage {
        client_msg_id: Some(client_msg_id.to_owned()),
        ..msg(channel, text)
    }
}

async fn append_n(store: &dyn Store, channel: &str, n: u64) {
    for i in 0..n {
        store.append(msg(channel, &format!("m{i}"))).await.unwrap();
    }
}

/// Every seq of the channel, read back page by page.
async fn all_seqs(store: &dyn Store, channel: &str) -> Vec<u64> {
    let mut seqs = Vec::new();
    loop {
        let after = seqs.last().copied().unwrap_or(0);
        let page = store.read_after(channel, after, 500).await.unwrap();
        if page.is_empty() {
            return seqs;
        }
        seqs.extend(page.iter().map(|m| m.seq));
    }
}

/// `tasks` tasks each append `per_task` messages to `channel`, task i through
/// `handles[i % handles.len()]`; returns every assigned seq.
async fn append_concurrently(
    handles: &[Arc<dyn Store>],
    channel: &str,
    tasks: usize,
    per_task: usize,
) -> Vec<u64> {
    let mut joins = Vec::new();
    for t in 0..tasks {
        let store = handles[t % handles.len()].clone();
        let channel = channel.to_owned();
        joins.push(tokio::spawn(async move {
            let mut seqs = Vec::with_capacity(per_task);
            for i in 0..per_task {
                let a = store
                    .append(msg(&channel, &format!("t{t}-{i}")))
                    .await
                    .unwrap();
                assert!(!a.duplicate);
                seqs.push(a.seq);
            }
            seqs
        }));
    }
    let mut seqs = Vec::new();
    for j in joins {
        seqs.extend(j.await.unwrap());
    }
    seqs
}

fn assert_exactly_one_to(seqs: &[u64], n: u64) {
    let mut sorted = seqs.to_vec();
    sorted.sort_unstable();
    let expected: Vec<u64> = (1..=n).collect();
    assert_eq!(sorted.len() as u64, n, "count of seqs");
    assert!(sorted == expected, "seqs are not exactly 1..={n}");
}

// ------------------------------------------------------------------------ the tests

pub async fn backend_name(fx: Fixture) {
    assert_eq!(fx.store.backend(), fx.backend);
    fx.store.ping().await.unwrap();
}

pub async fn seqs_start_at_one_and_are_gap_free(fx: Fixture) {
    let s = &*fx.store;
    let (a, b) = (unique("room"), unique("room"));
    for i in 1..=10u64 {
        let appended = s.append(msg(&a, &format!("a{i}"))).await.unwrap();
        assert_eq!(appended.seq, i);
        assert!(!appended.duplicate);
        assert_eq!(appended.ts_ms, 1_732_350_000_000);
    }
    // Channels count independently.
    assert_eq!(s.append(msg(&b, "b1")).await.unwrap().seq, 1);
    assert_eq!(s.last_seq(&a).await.unwrap(), 10);
    assert_eq!(s.last_seq(&b).await.unwrap(), 1);

    let stored = s.read_after(&a, 0, 100).await.unwrap();
    assert_eq!(
        stored.iter().map(|m| m.seq).collect::<Vec<_>>(),
        (1..=10).collect::<Vec<_>>()
    );
    assert_eq!(stored[0].text, "a1");
    assert_eq!(stored[0].channel, a);
}

pub async fn fields_round_trip(fx: Fixture) {
    let s = &*fx.store;
    let ch = unique("group");
    let m = NewMessage {
        channel: ch.clone(),
        client_msg_id: Some("c-1".into()),
        sender: "bob".into(),
        kind: "chat".into(),
        text: "héllo 弹幕 🚀 'quotes' \"and\" \\ backslash".into(),
        payload_json: Some(r#"{"gift":"rocket","n":3}"#.into()),
        blob: None,
        ts_ms: 42,
    };
    s.append(m.clone()).await.unwrap();
    s.append(msg(&ch, "")).await.unwrap();
    let got = s.read_after(&ch, 0, 10).await.unwrap();
    assert_eq!(got.len(), 2);
    let first = &got[0];
    assert_eq!(
        (
            first.channel.as_str(),
            first.seq,
            first.client_msg_id.as_deref()
        ),
        (ch.as_str(), 1, Some("c-1"))
    );
    assert_eq!(
        (
            first.sender.as_str(),
            first.kind.as_str(),
            first.text.as_str()
        ),
        (m.sender.as_str(), m.kind.as_str(), m.text.as_str())
    );
    assert_eq!(
        (first.payload_json.as_deref(), first.ts_ms),
        (m.payload_json.as_deref(), 42)
    );
    assert_eq!(
        (got[1].text.as_str(), got[1].client_msg_id.as_deref()),
        ("", None)
    );
}

pub async fn concurrent_appends_are_gap_free(fx: Fixture) {
    let ch = unique("room");
    let seqs = append_concurrently(std::slice::from_ref(&fx.store), &ch, 32, 50).await;
    assert_exactly_one_to(&seqs, 1600);
    assert_eq!(fx.store.last_seq(&ch).await.unwrap(), 1600);
    assert_exactly_one_to(&all_seqs(&*fx.store, &ch).await, 1600);
}

pub async fn two_handles_append_concurrently(fx: Fixture) {
    // Two independent connections to one database, as two ingest processes have.
    let other = danmaku_store::connect(&fx.url).await.unwrap();
    let ch = unique("group");
    let seqs = append_concurrently(&[fx.store.clone(), other.clone()], &ch, 32, 50).await;
    assert_exactly_one_to(&seqs, 1600);
    assert_eq!(other.last_seq(&ch).await.unwrap(), 1600);
    assert_exactly_one_to(&all_seqs(&*fx.store, &ch).await, 1600);
}

pub async fn retry_returns_original_seq(fx: Fixture) {
    let s = &*fx.store;
    let (ch, other) = (unique("group"), unique("group"));
    let first = s.append(msg_id(&ch, "rocket", "gift-1")).await.unwrap();
    assert_eq!((first.seq, first.duplicate), (1, false));
    s.append(msg(&ch, "plain")).await.unwrap();

    // An identical resend (only the accept time differs) is the same message.
    let mut retry = msg_id(&ch, "rocket", "gift-1");
    retry.ts_ms += 5_000;
    for _ in 0..3 {
        let again = s.append(retry.clone()).await.unwrap();
        assert_eq!((again.seq, again.duplicate), (1, true));
        assert_eq!(
            again.ts_ms, first.ts_ms,
            "a duplicate answers the original ts"
        );
    }
    assert_eq!(s.last_seq(&ch).await.unwrap(), 2, "a retry stores nothing");
    let stored = s.read_after(&ch, 0, 10).await.unwrap();
    assert_eq!(stored.len(), 2);
    assert_eq!(stored[0].text, "rocket");

    // The key is per channel.
    let elsewhere = s.append(msg_id(&other, "x", "gift-1")).await.unwrap();
    assert_eq!((elsewhere.seq, elsewhere.duplicate), (1, false));
    // The next new message continues the sequence.
    assert_eq!(s.append(msg_id(&ch, "y", "gift-2")).await.unwrap().seq, 3);
}

pub async fn idempotency_key_is_per_sender(fx: Fixture) {
    let s = &*fx.store;
    let ch = unique("room");
    let alice = s.append(msg_id(&ch, "rocket", "x")).await.unwrap();
    assert_eq!((alice.seq, alice.duplicate), (1, false));
    // Bob reuses alice's id for a gift of his own: it is a new message, not hers.
    let bob = NewMessage {
        sender: "bob".into(),
        ..msg_id(&ch, "castle", "x")
    };
    let appended = s.append(bob.clone()).await.unwrap();
    assert_eq!((appended.seq, appended.duplicate), (2, false));
    // Even with a body equal to alice's, bob's message is his own.
    let bob_same_body = NewMessage {
        sender: "bob".into(),
        ..msg_id(&ch, "rocket", "y")
    };
    let a = s
        .append(NewMessage {
            sender: "carol".into(),
            ..bob_same_body.clone()
        })
        .await
        .unwrap();
    assert_eq!((a.seq, a.duplicate), (3, false));
    let b = s.append(bob_same_body).await.unwrap();
    assert_eq!((b.seq, b.duplicate), (4, false));
    // Each sender's retry finds their own message.
    assert_eq!(s.append(bob).await.unwrap().seq, 2);
    assert_eq!(s.append(msg_id(&ch, "rocket", "x")).await.unwrap().seq, 1);

    let stored = s.read_after(&ch, 0, 10).await.unwrap();
    let got: Vec<(&str, &str)> = stored
        .iter()
        .map(|m| (m.sender.as_str(), m.text.as_str()))
        .collect();
    assert_eq!(
        got,
        [
            ("alice", "rocket"),
            ("bob", "castle"),
            ("carol", "rocket"),
            ("bob", "rocket")
        ]
    );
}

pub async fn reused_key_with_another_body_conflicts(fx: Fixture) {
    let s = &*fx.store;
    let ch = unique("room");
    let mut first = msg_id(&ch, "rocket", "k");
    first.payload_json = Some(r#"{"gift_id":7}"#.into());
    assert_eq!(s.append(first.clone()).await.unwrap().seq, 1);

    let different_text = msg_id(&ch, "castle", "k");
    let different_payload = NewMessage {
        payload_json: Some(r#"{"gift_id":8}"#.into()),
        ..first.clone()
    };
    let no_payload = NewMessage {
        payload_json: None,
        ..first.clone()
    };
    let different_kind = NewMessage {
        kind: "chat".into(),
        ..first.clone()
    };
    for conflicting in [
        different_text,
        different_payload,
        no_payload,
        different_kind,
    ] {
        match s.append(conflicting.clone()).await {
            Err(e @ StoreError::IdempotencyConflict { seq: 1, .. }) => {
                assert_eq!(e.kind(), "idempotency_conflict");
                assert!(e.to_string().contains("\"k\""), "{e}");
            }
            other => panic!("{conflicting:?}: expected a conflict on seq 1, got {other:?}"),
        }
    }
    assert_eq!(
        s.last_seq(&ch).await.unwrap(),
        1,
        "a conflict stores nothing"
    );
    // The identical retry still succeeds, and so do other appends afterwards.
    let again = s.append(first).await.unwrap();
    assert_eq!((again.seq, again.duplicate), (1, true));
    assert_eq!(s.append(msg(&ch, "next")).await.unwrap().seq, 2);
}

/// Conflicts racing the original and each other: exactly one body wins, every other
/// answer is either a duplicate of it or a conflict naming its seq.
pub async fn concurrent_conflicts_keep_one_body(fx: Fixture) {
    let ch = unique("room");
    let mut joins = Vec::new();
    for copy in 0..12 {
        let store = fx.store.clone();
        let ch = ch.clone();
        joins.push(tokio::spawn(async move {
            let body = format!("body {}", copy % 3);
            (body.clone(), store.append(msg_id(&ch, &body, "same")).await)
        }));
    }
    let mut winners = BTreeSet::new();
    let mut answers = Vec::new();
    for j in joins {
        answers.push(j.await.unwrap());
    }
    for (body, answer) in &answers {
        match answer {
            Ok(a) => {
                assert_eq!(a.seq, 1);
                winners.insert(body.clone());
            }
            Err(StoreError::IdempotencyConflict { seq: 1, .. }) => {}
            Err(e) => panic!("unexpected {e}"),
        }
    }
    assert_eq!(winners.len(), 1, "one body stored: {answers:?}");
    let stored = fx.store.read_after(&ch, 0, 10).await.unwrap();
    assert_eq!(stored.len(), 1);
    assert!(winners.contains(&stored[0].text));
}

pub async fn concurrent_retries_share_one_seq(fx: Fixture) {
    let ch = unique("group");
    // 20 client ids, each sent 8 times at once (from several tasks), mixed with
    // messages without an id.
    let mut joins = Vec::new();
    for _copy in 0..8 {
        for id in 0..20 {
            let store = fx.store.clone();
            let ch = ch.clone();
            joins.push(tokio::spawn(async move {
                let a = store
                    .append(msg_id(&ch, &format!("gift {id}"), &format!("id-{id}")))
                    .await
                    .unwrap();
                (id, a)
            }));
        }
    }
    let plain = {
        let store = fx.store.clone();
        let ch = ch.clone();
        tokio::spawn(async move { append_n(&*store, &ch, 10).await })
    };
    let mut by_id: std::collections::BTreeMap<u32, Vec<(u64, bool)>> = Default::default();
    for j in joins {
        let (id, a) = j.await.unwrap();
        by_id.entry(id).or_default().push((a.seq, a.duplicate));
    }
    plain.await.unwrap();
    for (id, answers) in &by_id {
        let seqs: BTreeSet<u64> = answers.iter().map(|a| a.0).collect();
        assert_eq!(seqs.len(), 1, "id-{id} got several seqs: {answers:?}");
        let originals = answers.iter().filter(|a| !a.1).count();
        assert_eq!(
            originals, 1,
            "id-{id}: exactly one answer is not a duplicate"
        );
    }
    assert_eq!(fx.store.last_seq(&ch).await.unwrap(), 30);
    assert_exactly_one_to(&all_seqs(&*fx.store, &ch).await, 30);
}

pub async fn paging_across_page_boundaries(fx: Fixture) {
    let s = &*fx.store;
    let ch = unique("room");
    append_n(s, &ch, 25).await;
    let mut after = 0;
    let mut sizes = Vec::new();
    loop {
        let page = s.read_after(&ch, after, 10).await.unwrap();
        if page.is_empty() {
            break;
        }
        assert_eq!(
            page[0].seq,
            after + 1,
            "a page starts right after the previous one"
        );
        assert!(page.windows(2).all(|w| w[1].seq == w[0].seq + 1));
        sizes.push(page.len());
        after = page.last().unwrap().seq;
    }
    assert_eq!(sizes, [10, 10, 5]);
    let mid = s.read_after(&ch, 17, 100).await.unwrap();
    assert_eq!(
        mid.iter().map(|m| m.seq).collect::<Vec<_>>(),
        (18..=25).collect::<Vec<_>>()
    );
    assert!(s.read_after(&ch, 25, 10).await.unwrap().is_empty());
    assert!(s.read_after(&ch, u64::MAX, 10).await.unwrap().is_empty());
    assert!(s.read_after(&ch, 0, 0).await.unwrap().is_empty());
    assert!(
        s.read_after(&unique("room"), 0, 10)
            .await
            .unwrap()
            .is_empty()
    );
}

pub async fn read_limit_is_capped(fx: Fixture) {
    let ch = unique("room");
    let n = MAX_READ_LIMIT + 5;
    append_concurrently(std::slice::from_ref(&fx.store), &ch, 5, n / 5).await;
    let page = fx.store.read_after(&ch, 0, usize::MAX).await.unwrap();
    assert_eq!(page.len(), MAX_READ_LIMIT);
    assert_eq!(page.last().unwrap().seq, MAX_READ_LIMIT as u64);
}

pub async fn last_seq_of_unknown_channel_is_zero(fx: Fixture) {
    assert_eq!(fx.store.last_seq(&unique("room")).await.unwrap(), 0);
}

pub async fn join_time_floor(fx: Fixture) {
    let s = &*fx.store;
    let (g, alice, bob) = (unique("group"), unique("alice"), unique("bob"));
    append_n(s, &g, 3).await;
    assert_eq!(s.join_group(&g, &alice).await.unwrap(), 3);
    append_n(s, &g, 2).await;
    assert_eq!(
        s.join_group(&g, &alice).await.unwrap(),
        3,
        "re-join keeps joined_seq"
    );
    assert_eq!(s.join_group(&g, &bob).await.unwrap(), 5);
    assert_eq!(s.is_member(&g, &alice).await.unwrap(), Some(3));
    assert_eq!(s.members(&g).await.unwrap(), {
        let mut m = vec![
            Member {
                user: alice.clone(),
                joined_seq: 3,
            },
            Member {
                user: bob.clone(),
                joined_seq: 5,
            },
        ];
        m.sort();
        m
    });

    let seen = |v: Vec<danmaku_store::StoredMessage>| v.iter().map(|m| m.seq).collect::<Vec<_>>();
    assert_eq!(
        seen(s.read_after_for_member(&g, &alice, 0, 100).await.unwrap()),
        [4, 5]
    );
    assert_eq!(
        seen(s.read_after_for_member(&g, &alice, 4, 100).await.unwrap()),
        [5]
    );
    assert!(
        s.read_after_for_member(&g, &bob, 0, 100)
            .await
            .unwrap()
            .is_empty()
    );
    append_n(s, &g, 1).await;
    assert_eq!(
        seen(s.read_after_for_member(&g, &bob, 0, 100).await.unwrap()),
        [6]
    );

    let stranger = unique("carol");
    assert_eq!(s.is_member(&g, &stranger).await.unwrap(), None);
    match s.read_after_for_member(&g, &stranger, 0, 10).await {
        Err(e @ StoreError::NotMember { .. }) => assert_eq!(e.kind(), "not_member"),
        other => panic!("expected NotMember, got {other:?}"),
    }

    // Leaving forgets the membership; joining again starts from the new last_seq.
    assert!(s.leave_group(&g, &alice).await.unwrap());
    assert!(!s.leave_group(&g, &alice).await.unwrap());
    assert_eq!(s.is_member(&g, &alice).await.unwrap(), None);
    assert_eq!(s.join_group(&g, &alice).await.unwrap(), 6);
    assert!(
        s.read_after_for_member(&g, &alice, 0, 10)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(s.members(&unique("group")).await.unwrap().is_empty());
}

pub async fn ack_is_monotonic_and_capped(fx: Fixture) {
    let s = &*fx.store;
    let (ch, user) = (unique("group"), unique("u"));
    assert_eq!(s.acked(&user, &ch).await.unwrap(), 0);
    append_n(s, &ch, 5).await;
    assert_eq!(s.ack(&user, &ch, 3).await.unwrap(), 3);
    assert_eq!(
        s.ack(&user, &ch, 2).await.unwrap(),
        3,
        "an ack never moves back"
    );
    assert_eq!(s.acked(&user, &ch).await.unwrap(), 3);
    assert_eq!(
        s.ack(&user, &ch, 100).await.unwrap(),
        5,
        "capped at last_seq"
    );
    assert_eq!(s.ack(&user, &ch, u64::MAX).await.unwrap(), 5);
    assert_eq!(s.acked(&user, &ch).await.unwrap(), 5);
    // Acks are per user and per channel.
    assert_eq!(s.acked(&unique("u"), &ch).await.unwrap(), 0);
    assert_eq!(s.ack(&user, &unique("room"), 7).await.unwrap(), 0);
}

pub async fn unread_moves_with_acks(fx: Fixture) {
    let s = &*fx.store;
    let (a, b, room, user) = (
        unique("group"),
        unique("group"),
        unique("room"),
        unique("u"),
    );
    assert_eq!(s.unread(&user).await.unwrap().total, 0);

    append_n(s, &a, 2).await; // before joining: never unread
    s.join_group(&a, &user).await.unwrap();
    s.join_group(&b, &user).await.unwrap();
    append_n(s, &a, 3).await;
    append_n(s, &b, 1).await;
    let u = s.unread(&user).await.unwrap();
    assert_eq!(u.total, 4);
    assert_eq!((u.channels[&a], u.channels[&b]), (3, 1));
    assert_eq!(u.channels.len(), 2);

    s.ack(&user, &a, 4).await.unwrap();
    let u = s.unread(&user).await.unwrap();
    assert_eq!((u.total, u.channels[&a], u.channels[&b]), (2, 1, 1));

    // An ack below joined_seq does not count messages from before the join.
    s.ack(&user, &b, 0).await.unwrap();
    assert_eq!(s.unread(&user).await.unwrap().channels[&b], 1);

    // A channel the user acked but does not belong to (a live room) is followed too.
    append_n(s, &room, 4).await;
    s.ack(&user, &room, 1).await.unwrap();
    let u = s.unread(&user).await.unwrap();
    assert_eq!((u.total, u.channels[&room]), (5, 3));

    // Reading everything clears the count; zeros stay listed.
    s.ack(&user, &a, 5).await.unwrap();
    s.ack(&user, &b, 1).await.unwrap();
    s.ack(&user, &room, 4).await.unwrap();
    let u = s.unread(&user).await.unwrap();
    assert_eq!(u.total, 0);
    assert_eq!(u.channels.len(), 3);

    // New messages show up again; leaving a group drops it.
    append_n(s, &b, 2).await;
    assert_eq!(s.unread(&user).await.unwrap().total, 2);
    s.leave_group(&b, &user).await.unwrap();
    let u = s.unread(&user).await.unwrap();
    assert_eq!(u.total, 0);
    assert!(!u.channels.contains_key(&b));
}

pub async fn survives_reopen(fx: Fixture) {
    let (ch, user) = (unique("group"), unique("u"));
    {
        let s = fx.store;
        s.append(msg_id(&ch, "one", "k1")).await.unwrap();
        append_n(&*s, &ch, 2).await;
        s.join_group(&ch, &user).await.unwrap();
        append_n(&*s, &ch, 1).await;
        s.ack(&user, &ch, 4).await.unwrap();
    } // dropped: every connection of the first handle goes away
    let s = danmaku_store::connect(&fx.url).await.unwrap();
    assert_eq!(s.last_seq(&ch).await.unwrap(), 4);
    assert_eq!(all_seqs(&*s, &ch).await, [1, 2, 3, 4]);
    assert_eq!(s.read_after(&ch, 0, 1).await.unwrap()[0].text, "one");
    let again = s.append(msg_id(&ch, "one", "k1")).await.unwrap();
    assert_eq!((again.seq, again.duplicate), (1, true));
    assert_eq!(s.append(msg(&ch, "five")).await.unwrap().seq, 5);
    assert_eq!(s.is_member(&ch, &user).await.unwrap(), Some(3));
    assert_eq!(s.acked(&user, &ch).await.unwrap(), 4);
}

pub async fn rejects_invalid_input(fx: Fixture) {
    let s = &*fx.store;
    let err = s.append(msg("", "x")).await.unwrap_err();
    assert_eq!(err.kind(), "invalid", "{err}");
    let err = s
        .append(msg_id(&unique("room"), "x", ""))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), "invalid", "{err}");
    assert_eq!(s.join_group("", "u").await.unwrap_err().kind(), "invalid");
    assert_eq!(s.ack("", "room:1", 1).await.unwrap_err().kind(), "invalid");
}

/// The stored account changes, applied to a fresh policy as a process does at start.
async fn policy_from(s: &dyn Store, now: u64) -> AccountPolicy {
    let mut p = AccountPolicy::default();
    for c in s.account_changes(now).await.unwrap() {
        p.apply(&c, now);
    }
    p
}

fn claims(sub: &str, jti: &str, iat: u64) -> Claims {
    Claims {
        sub: sub.to_owned(),
        exp: u64::MAX,
        role: "user".into(),
        kid: None,
        jti: Some(jti.to_owned()),
        iat: Some(iat),
    }
}

pub async fn account_changes_merge_survive_reopen_and_purge(fx: Fixture) {
    let now = 1_000_000;
    let (jti, alice, bob, carol) = (
        unique("jti"),
        unique("alice"),
        unique("bob"),
        unique("carol"),
    );
    {
        let s = &*fx.store;
        s.record_account_change(&account::revoke_token(&jti, now + 100, 1))
            .await
            .unwrap();
        // A second revocation of the same id keeps the later expiry.
        s.record_account_change(&account::revoke_token(&jti, now + 50, 2))
            .await
            .unwrap();
        s.record_account_change(&account::revoke_user(&alice, now - 10, now + 200, 1))
            .await
            .unwrap();
        // An earlier cut-off never shrinks the stored one.
        s.record_account_change(&account::revoke_user(&alice, now - 500, now + 10, 2))
            .await
            .unwrap();
        s.record_account_change(&account::block(&bob, None, false, 10))
            .await
            .unwrap();
        // Carol: blocked, lifted, then the older block arrives late (another ingest).
        s.record_account_change(&account::block(&carol, Some(now + 50), false, 10))
            .await
            .unwrap();
        s.record_account_change(&account::block(&carol, Some(now), true, 30))
            .await
            .unwrap();
        s.record_account_change(&account::block(&carol, Some(now + 50), false, 20))
            .await
            .unwrap();
    }
    let s = danmaku_store::connect(&fx.url).await.unwrap();
    let p = policy_from(&*s, now).await;
    let revoked = Err(Refusal::TokenRevoked);
    assert_eq!(p.check(&claims("x", &jti, now), now + 99), revoked);
    assert_eq!(p.check(&claims(&alice, "a", now - 11), now + 199), revoked);
    assert_eq!(p.check(&claims(&alice, "b", now - 10), now), Ok(()));
    assert_eq!(
        p.check(&claims(&bob, "c", now), now + 1_000_000),
        Err(Refusal::UserBlocked { until: None })
    );
    assert_eq!(p.check(&claims(&carol, "d", now), now + 1), Ok(()));
    // Gone from the store once they refuse nothing (ended blocks after the tombstone time).
    s.purge_account_changes(now + 200).await.unwrap();
    let later = policy_from(&*s, now + 200).await;
    assert_eq!(later.check(&claims("x", &jti, now), now + 150), Ok(()));
    assert_eq!(later.check(&claims(&alice, "a", 0), now + 150), Ok(()));
    s.purge_account_changes(now + BLOCK_TOMBSTONE_SECS + 1)
        .await
        .unwrap();
    let mine = |c: &danmaku_proto::pb::AccountChange| format!("{c:?}").contains(&carol);
    assert!(
        !s.account_changes(now).await.unwrap().iter().any(mine),
        "the lifted block was purged"
    );
    assert_eq!(
        policy_from(&*s, now + 1_000_000)
            .await
            .check(&claims(&bob, "c", now), now + 1_000_000),
        Err(Refusal::UserBlocked { until: None }),
        "a permanent block is never purged"
    );
    let err = s
        .record_account_change(&account::revoke_token("", now + 1, 1))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), "invalid");
}

fn action(scope: &str, actor: &str, change: ModerationChange, ts_ms: i64) -> ModerationAction {
    ModerationAction {
        scope: scope.to_owned(),
        actor: actor.to_owned(),
        change,
        ts_ms,
    }
}

fn words(w: &[&str]) -> Vec<String> {
    w.iter().map(|s| s.to_string()).collect()
}

pub async fn moderation_state_round_trips(fx: Fixture) {
    let s = &*fx.store;
    let room = unique("room");
    let now = 1_800_000_000_000;
    assert_eq!(s.policy(&room, now).await.unwrap(), Policy::default());
    let set = |block: &[&str], mask: &[&str]| ModerationChange::SetWordlist {
        block: words(block),
        mask: words(mask),
    };
    assert!(
        s.moderate(&action(&room, "app", set(&["bad", "傻瓜"], &["darn"]), now))
            .await
            .unwrap()
    );
    // A PUT replaces the whole list.
    s.moderate(&action(&room, "app", set(&[], &["darn", "heck"]), now + 1))
        .await
        .unwrap();
    let mod_ = |u: &str| ModerationChange::AddModerator { user: u.into() };
    assert!(
        s.moderate(&action(&room, "app", mod_("mia"), now))
            .await
            .unwrap()
    );
    assert!(
        !s.moderate(&action(&room, "app", mod_("mia"), now))
            .await
            .unwrap()
    );
    s.moderate(&action(&room, "app", mod_("max"), now))
        .await
        .unwrap();
    let unmod = |u: &str| ModerationChange::RemoveModerator { user: u.into() };
    assert!(
        s.moderate(&action(&room, "app", unmod("max"), now))
            .await
            .unwrap()
    );
    assert!(
        !s.moderate(&action(&room, "app", unmod("nobody"), now))
            .await
            .unwrap()
    );
    let mute = |u: &str, until_ms| ModerationChange::Mute {
        user: u.into(),
        until_ms,
    };
    s.moderate(&action(&room, "mia", mute("troll", now + 60_000), now))
        .await
        .unwrap();
    s.moderate(&action(&room, "mia", mute("old", now - 1), now))
        .await
        .unwrap();
    // A second mute replaces the first one's end.
    s.moderate(&action(&room, "mia", mute("brat", now + 1_000), now))
        .await
        .unwrap();
    s.moderate(&action(&room, "mia", mute("brat", now + 5_000), now))
        .await
        .unwrap();
    s.moderate(&action(
        &room,
        "mia",
        ModerationChange::Settings(SettingsPatch {
            slow_mode_secs: Some(10),
            mute_all: None,
            max_rate: Some(200),
        }),
        now,
    ))
    .await
    .unwrap();
    // Absent fields keep their value.
    s.moderate(&action(
        &room,
        "mia",
        ModerationChange::Settings(SettingsPatch {
            mute_all: Some(true),
            ..Default::default()
        }),
        now,
    ))
    .await
    .unwrap();

    let p = s.policy(&room, now).await.unwrap();
    assert_eq!(p.block, Vec::<String>::new());
    assert_eq!(p.mask, words(&["darn", "heck"]));
    assert_eq!(p.moderators, words(&["mia"]));
    assert_eq!(
        p.mutes,
        vec![
            ("brat".to_string(), now + 5_000),
            ("troll".to_string(), now + 60_000)
        ]
    );
    assert_eq!(
        p.settings,
        RoomSettings {
            slow_mode_secs: 10,
            mute_all: true,
            max_rate: 200
        }
    );
    // Mutes end by themselves.
    assert_eq!(s.policy(&room, now + 5_000).await.unwrap().mutes.len(), 1);
    assert!(
        s.moderate(&action(
            &room,
            "mia",
            ModerationChange::Unmute {
                user: "troll".into()
            },
            now
        ))
        .await
        .unwrap()
    );
    assert!(
        s.policy(&room, now)
            .await
            .unwrap()
            .mutes
            .iter()
            .all(|(u, _)| u != "troll")
    );

    let scopes = s.policy_scopes(now).await.unwrap();
    assert!(scopes.contains(&room), "{scopes:?}");

    // The global list lives beside the rooms'; other changes have no global scope.
    s.moderate(&action(GLOBAL_SCOPE, "app", set(&["evil"], &[]), now))
        .await
        .unwrap();
    assert_eq!(
        s.policy(GLOBAL_SCOPE, now).await.unwrap().block,
        words(&["evil"])
    );
    let err = s
        .moderate(&action(GLOBAL_SCOPE, "app", mod_("x"), now))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), "invalid");

    // Every action is in the trail, newest first.
    let log = s.moderation_log(&room, 100).await.unwrap();
    let actions: Vec<&str> = log.iter().map(|e| e.action.as_str()).collect();
    assert_eq!(
        actions,
        [
            "unmute",
            "settings",
            "settings",
            "mute",
            "mute",
            "mute",
            "mute",
            "remove_moderator",
            "remove_moderator",
            "add_moderator",
            "add_moderator",
            "add_moderator",
            "set_wordlist",
            "set_wordlist",
        ]
    );
    assert_eq!(
        (log[0].actor.as_str(), log[0].target.as_str()),
        ("mia", "troll")
    );
    assert_eq!(log[3].detail, format!("until_ms={}", now + 5_000));
    assert_eq!(log[1].detail, "mute_all=true");
    assert_eq!(log.last().unwrap().detail, "block=2 mask=1");
    assert!(log.windows(2).all(|w| w[0].id > w[1].id));
    assert_eq!(s.moderation_log(&room, 2).await.unwrap(), log[..2]);

    // Every action moves the head; a refused one does not.
    let head = s.moderation_head().await.unwrap();
    assert!(head > 0);
    s.moderate(&action(
        &room,
        "mia",
        ModerationChange::Unmute { user: "x".into() },
        now,
    ))
    .await
    .unwrap();
    let moved = s.moderation_head().await.unwrap();
    assert!(moved > head, "{moved} after {head}");
    s.moderate(&action(
        &room,
        "mia",
        ModerationChange::Unmute {
            user: String::new(),
        },
        now,
    ))
    .await
    .unwrap_err();
    assert_eq!(s.moderation_head().await.unwrap(), moved);
}

pub async fn moderation_refuses_bad_input_and_survives_reopen(fx: Fixture) {
    let room = unique("room");
    let now = 1_800_000_000_000;
    {
        let s = &*fx.store;
        for change in [
            ModerationChange::SetWordlist {
                block: words(&["ok", ""]),
                mask: vec![],
            },
            ModerationChange::SetWordlist {
                block: vec![],
                mask: words(&["a\nb"]),
            },
            ModerationChange::Mute {
                user: String::new(),
                until_ms: now,
            },
        ] {
            let err = s
                .moderate(&action(&room, "app", change, now))
                .await
                .unwrap_err();
            assert_eq!(err.kind(), "invalid", "{err}");
        }
        // Nothing of a refused action is kept, not even its audit row.
        assert_eq!(s.policy(&room, now).await.unwrap(), Policy::default());
        assert!(s.moderation_log(&room, 10).await.unwrap().is_empty());
        s.moderate(&action(
            &room,
            "app",
            ModerationChange::SetWordlist {
                block: words(&["bad"]),
                mask: words(&["darn"]),
            },
            now,
        ))
        .await
        .unwrap();
        s.moderate(&action(
            &room,
            "app",
            ModerationChange::Mute {
                user: "troll".into(),
                until_ms: now + 60_000,
            },
            now,
        ))
        .await
        .unwrap();
    }
    drop(fx.store);
    let s = danmaku_store::connect(&fx.url).await.unwrap();
    let p = s.policy(&room, now).await.unwrap();
    assert_eq!((p.block, p.mask), (words(&["bad"]), words(&["darn"])));
    assert_eq!(p.mutes, vec![("troll".to_string(), now + 60_000)]);
    assert_eq!(s.moderation_log(&room, 10).await.unwrap().len(), 2);
}

pub async fn bans_and_retractions_round_trip_and_survive_reopen(fx: Fixture) {
    let room = unique("room");
    let other = unique("room");
    let now = 1_800_000_000_000;
    let ban = |user: &str, until_ms: Option<i64>| ModerationChange::Ban {
        user: user.into(),
        until_ms,
    };
    {
        let s = &*fx.store;
        assert!(
            s.moderate(&action(&room, "mia", ban("troll", Some(now + 60_000)), now))
                .await
                .unwrap()
        );
        s.moderate(&action(&room, "app", ban("spammer", None), now))
            .await
            .unwrap();
        s.moderate(&action(&room, "app", ban("gone", Some(now - 1)), now))
            .await
            .unwrap();
        s.moderate(&action(&other, "app", ban("troll", None), now))
            .await
            .unwrap();
        // A new ban replaces the old one; an unban removes it.
        s.moderate(&action(&other, "app", ban("troll", Some(now + 5)), now))
            .await
            .unwrap();
        s.moderate(&action(&room, "app", ban("brief", None), now))
            .await
            .unwrap();
        assert!(
            s.moderate(&action(
                &room,
                "app",
                ModerationChange::Unban {
                    user: "brief".into()
                },
                now
            ))
            .await
            .unwrap()
        );
        assert!(
            !s.moderate(&action(
                &room,
                "app",
                ModerationChange::Unban {
                    user: "nobody".into()
                },
                now
            ))
            .await
            .unwrap()
        );
        let p = s.policy(&room, now).await.unwrap();
        assert_eq!(
            p.bans,
            vec![
                ("spammer".to_string(), None),
                ("troll".to_string(), Some(now + 60_000))
            ],
            "ended and lifted bans are not in force"
        );
        assert!(
            s.policy_scopes(now).await.unwrap().contains(&room),
            "a room with only bans has a policy"
        );
        let mine: Vec<_> = s
            .bans(now)
            .await
            .unwrap()
            .into_iter()
            .filter(|b| b.channel == room || b.channel == other)
            .map(|b| (b.channel == room, b.user, b.until_ms))
            .collect();
        assert_eq!(mine.len(), 3, "{mine:?}");
        assert!(mine.contains(&(false, "troll".into(), Some(now + 5))));
        // Retractions: gifts/chat by seq are stored once; a danmaku leaves the audit row only.
        let retract = |id: &str, seq: Option<u64>| ModerationChange::Retract { id: id.into(), seq };
        assert!(
            s.moderate(&action(&room, "mia", retract("3", Some(3)), now))
                .await
                .unwrap()
        );
        assert!(
            !s.moderate(&action(&room, "mia", retract("3", Some(3)), now))
                .await
                .unwrap(),
            "already retracted"
        );
        s.moderate(&action(&room, "mia", retract("7", Some(7)), now))
            .await
            .unwrap();
        assert!(
            s.moderate(&action(
                &room,
                "mia",
                retract("0190a1b2c3d4e5f60718293a4b", None),
                now
            ))
            .await
            .unwrap()
        );
        assert_eq!(s.retracted(&room, 0, 10).await.unwrap(), vec![3, 7]);
        assert_eq!(s.retracted(&room, 3, 6).await.unwrap(), Vec::<u64>::new());
        assert_eq!(s.retracted(&other, 0, 10).await.unwrap(), Vec::<u64>::new());
        let log = s.moderation_log(&room, 3).await.unwrap();
        assert_eq!(
            log.iter()
                .map(|e| (e.action.as_str(), e.detail.as_str()))
                .collect::<Vec<_>>(),
            vec![
                ("retract", "id=0190a1b2c3d4e5f60718293a4b"),
                ("retract", "id=7"),
                ("retract", "id=3")
            ]
        );
        // Bad input: nothing written.
        for bad in [ban("", None), ban("x", Some(0)), retract("", Some(1))] {
            let err = s
                .moderate(&action(&room, "app", bad, now))
                .await
                .unwrap_err();
            assert_eq!(err.kind(), "invalid", "{err}");
        }
        assert_eq!(s.moderation_log(&room, 100).await.unwrap().len(), 10);
    }
    drop(fx.store);
    let s = danmaku_store::connect(&fx.url).await.unwrap();
    let p = s.policy(&room, now).await.unwrap();
    assert_eq!(p.bans.len(), 2, "a restart keeps bans");
    assert_eq!(s.retracted(&room, 0, 10).await.unwrap(), vec![3, 7]);
}

/// A blob id for `body` the way ingest makes one (the store does not hash).
fn blob_id(body: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(body))
}

async fn blobs_are_content_addressed_and_survive_reopen(fx: Fixture) {
    let body: Vec<u8> = format!("png bytes {}", unique("blob")).into_bytes();
    let id = blob_id(&body);
    let s = &*fx.store;
    assert!(!s.has_blob(&id).await.unwrap());
    assert_eq!(s.get_blob(&id).await.unwrap(), None);
    assert!(s.put_blob(&id, "image/png", &body).await.unwrap(), "stored");
    assert!(
        !s.put_blob(&id, "image/png", &body).await.unwrap(),
        "twice: one row"
    );
    assert!(s.has_blob(&id).await.unwrap());
    let want = danmaku_store::Blob {
        content_type: "image/png".into(),
        body: body.clone(),
    };
    assert_eq!(s.get_blob(&id).await.unwrap(), Some(want.clone()));
    // Binary bodies round-trip byte for byte.
    let bin: Vec<u8> = (0..=255u8).cycle().take(70_000).collect();
    let bin_id = blob_id(&bin);
    s.put_blob(&bin_id, "application/octet-stream", &bin)
        .await
        .unwrap();
    assert_eq!(s.get_blob(&bin_id).await.unwrap().unwrap().body, bin);
    for bad in ["", "ABC", &id[..63], &id.to_uppercase()] {
        assert!(
            matches!(
                s.put_blob(bad, "image/png", &body).await,
                Err(StoreError::Invalid(_))
            ),
            "{bad:?}"
        );
        assert!(matches!(s.get_blob(bad).await, Err(StoreError::Invalid(_))));
    }
    assert!(matches!(
        s.put_blob(&id, "", &body).await,
        Err(StoreError::Invalid(_))
    ));
    drop(fx.store);
    let again = danmaku_store::connect(&fx.url).await.unwrap();
    assert_eq!(again.get_blob(&id).await.unwrap(), Some(want));
}

/// A message's blob id is stored, read back, carried into the event, kept over a
/// reopen, and counts as part of the body for idempotency.
async fn messages_carry_their_blob(fx: Fixture) {
    let s = &*fx.store;
    let ch = unique("room");
    let body = format!("gif {ch}").into_bytes();
    let id = blob_id(&body);
    s.put_blob(&id, "image/gif", &body).await.unwrap();
    let with = NewMessage {
        blob: Some(id.clone()),
        ..msg_id(&ch, "rocket", "k")
    };
    assert_eq!(s.append(with.clone()).await.unwrap().seq, 1);
    s.append(msg(&ch, "plain")).await.unwrap();
    let again = s.append(with.clone()).await.unwrap();
    assert_eq!(
        (again.seq, again.duplicate),
        (1, true),
        "same blob: a retry"
    );
    for other in [None, Some(blob_id(b"another"))] {
        let conflicting = NewMessage {
            blob: other,
            ..with.clone()
        };
        match s.append(conflicting.clone()).await {
            Err(StoreError::IdempotencyConflict { seq: 1, .. }) => {}
            got => panic!("{conflicting:?}: expected a conflict on seq 1, got {got:?}"),
        }
    }
    let check = |read: Vec<danmaku_store::StoredMessage>| {
        let blobs: Vec<_> = read.iter().map(|m| m.blob.clone()).collect();
        assert_eq!(blobs, [Some(id.clone()), None]);
        let events: Vec<_> = read.into_iter().map(|m| m.into_event().blob).collect();
        assert_eq!(events, [id.clone(), String::new()]);
    };
    check(s.read_after(&ch, 0, 10).await.unwrap());
    drop(fx.store);
    let reopened = danmaku_store::connect(&fx.url).await.unwrap();
    check(reopened.read_after(&ch, 0, 10).await.unwrap());
}

macro_rules! contract_suite {
    ($modname:ident, $make:expr) => {
        mod $modname {
            use super::*;
            contract_suite!(@tests $make;
                backend_name,
                seqs_start_at_one_and_are_gap_free,
                fields_round_trip,
                concurrent_appends_are_gap_free,
                two_handles_append_concurrently,
                retry_returns_original_seq,
                idempotency_key_is_per_sender,
                reused_key_with_another_body_conflicts,
                concurrent_conflicts_keep_one_body,
                concurrent_retries_share_one_seq,
                paging_across_page_boundaries,
                read_limit_is_capped,
                last_seq_of_unknown_channel_is_zero,
                join_time_floor,
                ack_is_monotonic_and_capped,
                unread_moves_with_acks,
                survives_reopen,
                rejects_invalid_input,
                account_changes_merge_survive_reopen_and_purge,
                moderation_state_round_trips,
                moderation_refuses_bad_input_and_survives_reopen,
                bans_and_retractions_round_trip_and_survive_reopen,
                blobs_are_content_addressed_and_survive_reopen,
                messages_carry_their_blob,
            );
        }
    };
    (@tests $make:expr; $($test:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $test() {
                super::$test($make).await
            }
        )*
    };
}

/// An embedded store on a fresh file in a temporary directory.
async fn embedded() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("embedded:{}", dir.path().join("store.db").display());
    Fixture {
        store: danmaku_store::connect(&url).await.unwrap(),
        url,
        backend: "embedded",
        _dir: Some(dir),
    }
}

/// The test PostgreSQL server; every test uses names of its own in it.
async fn postgres() -> Fixture {
    let url = std::env::var("DANMAKU_TEST_POSTGRES").unwrap_or_default();
    assert!(
        !url.is_empty(),
        "DANMAKU_TEST_POSTGRES is not set: run `scripts/services.sh start postgres && \
         source .services/env` first"
    );
    Fixture {
        store: danmaku_store::connect(&url).await.unwrap(),
        url,
        backend: "postgres",
        _dir: None,
    }
}

contract_suite!(embedded, embedded().await);
contract_suite!(postgres, postgres().await);

// ------------------------------------------------------------ not per backend

#[tokio::test]
async fn connect_rejects_bad_urls() {
    for url in [
        "",
        "memory",
        "embedded:",
        "mysql://localhost/db",
        "sqlite:x.db",
    ] {
        match danmaku_store::connect(url).await {
            Err(e @ StoreError::BadUrl { .. }) => assert_eq!(e.kind(), "bad_url"),
            Err(e) => panic!("{url:?}: expected BadUrl, got {e}"),
            Ok(_) => panic!("{url:?}: expected BadUrl, got a store"),
        }
    }
}

#[tokio::test]
async fn unreachable_postgres_is_unavailable() {
    // A port nothing listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("postgres://postgres@127.0.0.1:{port}/postgres");
    match danmaku_store::connect(&url).await {
        Err(e) => assert_eq!(e.kind(), "unavailable", "{e}"),
        Ok(_) => panic!("connected to a closed port"),
    }
}

#[tokio::test]
async fn embedded_creates_missing_directories() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a/b/store.db");
    let store = danmaku_store::EmbeddedStore::open(&path).await.unwrap();
    store.append(msg("room:1", "x")).await.unwrap();
    store.close().await;
    assert!(path.exists());
    let err = store.last_seq("room:1").await.unwrap_err();
    assert_eq!(err.kind(), "unavailable", "{err}");
}
