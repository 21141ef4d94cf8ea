//! Coalesced store reads for reconnect storms.
//!
//! When an edge dies, its viewers reconnect to the others all at once, and every
//! join and resume reads the store: `last_seq(channel)` and `read_after(channel,
//! after, limit)`. For one room these are the SAME few queries thousands of times,
//! and a pool of 16 connections answering them one by one times out (measured:
//! 2,000 viewers took 115 s to resume, BENCHMARKS.md "Chaos"). [`CoalescedReads`]
//! wraps the store so that identical concurrent reads share one query.
//!
//! Freshness is kept: a caller never shares a query that started before it called.
//! Per key there is at most one query running and one queued behind it; callers
//! join the queued one, which starts when the running one ends. So every answer is
//! at least as fresh as a query of the caller's own would have been, and a storm
//! costs about two queries per key instead of one per viewer.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use danmaku_store::{
    Appended, AuditEntry, Member, ModerationAction, NewMessage, Policy, Store, StoreError,
    StoredMessage, Unread,
};
use futures_util::FutureExt;
use futures_util::future::{BoxFuture, Shared};

type Answer<T> = Result<Arc<T>, StoreError>;
type Flight<T> = Shared<BoxFuture<'static, Answer<T>>>;

/// Per key: the queued query callers may still join, and the last one created.
struct Slot<T> {
    queued: Option<(u64, Flight<T>)>,
    tail: (u64, Flight<T>),
}

struct Flights<K, T> {
    slots: Mutex<HashMap<K, Slot<T>>>,
    next_id: std::sync::atomic::AtomicU64,
}

impl<K, T> Flights<K, T>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    T: Send + Sync + 'static,
{
    fn new() -> Self {
        Flights {
            slots: Mutex::new(HashMap::new()),
            next_id: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// Runs `query` for `key`, or joins a queued identical one.
    async fn run(
        self: &Arc<Self>,
        key: K,
        query: impl FnOnce() -> BoxFuture<'static, Result<T, StoreError>>,
    ) -> Answer<T> {
        let (id, flight) = {
            let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(Slot {
                queued: Some((id, f)),
                ..
            }) = slots.get(&key)
            {
                (*id, f.clone())
            } else {
                let id = self
                    .next_id
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let prev = slots.get(&key).map(|s| s.tail.1.clone());
                let me = Arc::clone(self);
                let k = key.clone();
                let q = query();
                let flight = async move {
                    if let Some(prev) = prev {
                        let _ = prev.await;
                    }
                    // Started: later callers queue a new query.
                    if let Some(slot) = me
                        .slots
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .get_mut(&k)
                        && slot.queued.as_ref().is_some_and(|(q, _)| *q == id)
                    {
                        slot.queued = None;
                    }
                    q.await.map(Arc::new)
                }
                .boxed()
                .shared();
                slots.insert(
                    key.clone(),
                    Slot {
                        queued: Some((id, flight.clone())),
                        tail: (id, flight.clone()),
                    },
                );
                (id, flight)
            }
        };
        let answer = flight.await;
        // The last query for this key is done: forget the key.
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        if slots
            .get(&key)
            .is_some_and(|s| s.tail.0 == id && s.queued.is_none())
        {
            slots.remove(&key);
        }
        answer
    }
}

/// A [`Store`] whose `last_seq` and `read_after` are coalesced (see the module
/// documentation); everything else goes straight to the inner store.
pub(crate) struct CoalescedReads {
    inner: Arc<dyn Store>,
    last_seq: Arc<Flights<String, u64>>,
    read_after: Arc<Flights<(String, u64, usize), Vec<StoredMessage>>>,
}

impl CoalescedReads {
    pub(crate) fn new(inner: Arc<dyn Store>) -> Self {
        CoalescedReads {
            inner,
            last_seq: Arc::new(Flights::new()),
            read_after: Arc::new(Flights::new()),
        }
    }
}

#[async_trait]
impl Store for CoalescedReads {
    fn backend(&self) -> &'static str {
        self.inner.backend()
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.inner.ping().await
    }

    async fn append(&self, message: NewMessage) -> Result<Appended, StoreError> {
        self.inner.append(message).await
    }

    async fn put_blob(
        &self,
        id: &str,
        content_type: &str,
        body: &[u8],
    ) -> Result<bool, StoreError> {
        self.inner.put_blob(id, content_type, body).await
    }

    async fn get_blob(&self, id: &str) -> Result<Option<danmaku_store::Blob>, StoreError> {
        self.inner.get_blob(id).await
    }

    async fn has_blob(&self, id: &str) -> Result<bool, StoreError> {
        self.inner.has_blob(id).await
    }

    async fn read_after(
        &self,
        channel: &str,
        after_seq: u64,
        limit: usize,
    ) -> Result<Vec<StoredMessage>, StoreError> {
        let inner = Arc::clone(&self.inner);
        let c = channel.to_owned();
        let key = (channel.to_owned(), after_seq, limit);
        let page = self
            .read_after
            .run(key, move || {
                async move { inner.read_after(&c, after_seq, limit).await }.boxed()
            })
            .await?;
        Ok(page.as_ref().clone())
    }

    async fn last_seq(&self, channel: &str) -> Result<u64, StoreError> {
        let inner = Arc::clone(&self.inner);
        let c = channel.to_owned();
        let seq = self
            .last_seq
            .run(channel.to_owned(), move || {
                async move { inner.last_seq(&c).await }.boxed()
            })
            .await?;
        Ok(*seq)
    }

    async fn join_group(&self, group: &str, user: &str) -> Result<u64, StoreError> {
        self.inner.join_group(group, user).await
    }

    async fn leave_group(&self, group: &str, user: &str) -> Result<bool, StoreError> {
        self.inner.leave_group(group, user).await
    }

    async fn is_member(&self, group: &str, user: &str) -> Result<Option<u64>, StoreError> {
        self.inner.is_member(group, user).await
    }

    async fn members(&self, group: &str) -> Result<Vec<Member>, StoreError> {
        self.inner.members(group).await
    }

    async fn read_after_for_member(
        &self,
        group: &str,
        user: &str,
        after_seq: u64,
        limit: usize,
    ) -> Result<Vec<StoredMessage>, StoreError> {
        self.inner
            .read_after_for_member(group, user, after_seq, limit)
            .await
    }

    async fn ack(&self, user: &str, channel: &str, seq: u64) -> Result<u64, StoreError> {
        self.inner.ack(user, channel, seq).await
    }

    async fn acked(&self, user: &str, channel: &str) -> Result<u64, StoreError> {
        self.inner.acked(user, channel).await
    }

    async fn unread(&self, user: &str) -> Result<Unread, StoreError> {
        self.inner.unread(user).await
    }

    async fn moderate(&self, action: &ModerationAction) -> Result<bool, StoreError> {
        self.inner.moderate(action).await
    }

    async fn policy(&self, scope: &str, now_ms: i64) -> Result<Policy, StoreError> {
        self.inner.policy(scope, now_ms).await
    }

    async fn policy_scopes(&self, now_ms: i64) -> Result<Vec<String>, StoreError> {
        self.inner.policy_scopes(now_ms).await
    }

    async fn moderation_head(&self) -> Result<u64, StoreError> {
        self.inner.moderation_head().await
    }

    async fn moderation_log(
        &self,
        scope: &str,
        limit: usize,
    ) -> Result<Vec<AuditEntry>, StoreError> {
        self.inner.moderation_log(scope, limit).await
    }

    async fn bans(&self, now_ms: i64) -> Result<Vec<danmaku_store::Ban>, StoreError> {
        self.inner.bans(now_ms).await
    }

    async fn retracted(
        &self,
        channel: &str,
        after_seq: u64,
        upto_seq: u64,
    ) -> Result<Vec<u64>, StoreError> {
        self.inner.retracted(channel, after_seq, upto_seq).await
    }

    async fn record_account_change(
        &self,
        change: &danmaku_proto::pb::AccountChange,
    ) -> Result<(), StoreError> {
        self.inner.record_account_change(change).await
    }

    async fn account_changes(
        &self,
        now: u64,
    ) -> Result<Vec<danmaku_proto::pb::AccountChange>, StoreError> {
        self.inner.account_changes(now).await
    }

    async fn purge_account_changes(&self, now: u64) -> Result<u64, StoreError> {
        self.inner.purge_account_changes(now).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    #[tokio::test]
    async fn identical_concurrent_reads_share_a_query_started_after_them() {
        let flights: Arc<Flights<&'static str, usize>> = Arc::new(Flights::new());
        let calls = Arc::new(AtomicUsize::new(0));
        let query = |calls: Arc<AtomicUsize>| {
            move || {
                async move {
                    let n = calls.fetch_add(1, Ordering::SeqCst) + 1;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    Ok(n)
                }
                .boxed()
            }
        };
        // The first caller starts query 1; the 99 arriving while it runs share ONE
        // queued query (2), which starts only after them.
        let first = tokio::spawn({
            let (f, c) = (flights.clone(), calls.clone());
            async move { *f.run("room", query(c)).await.unwrap() }
        });
        tokio::time::sleep(Duration::from_millis(10)).await;
        let later: Vec<_> = (0..99)
            .map(|_| {
                let (f, c) = (flights.clone(), calls.clone());
                tokio::spawn(async move { *f.run("room", query(c)).await.unwrap() })
            })
            .collect();
        assert_eq!(first.await.unwrap(), 1);
        for l in later {
            assert_eq!(
                l.await.unwrap(),
                2,
                "joined the query queued after the first"
            );
        }
        assert_eq!(calls.load(Ordering::SeqCst), 2);
        assert!(
            flights.slots.lock().unwrap().is_empty(),
            "keys are forgotten"
        );
        // Another key is independent.
        assert_eq!(
            *flights.run("other", query(calls.clone())).await.unwrap(),
            3
        );
    }

    #[tokio::test]
    async fn errors_reach_every_caller_and_the_next_read_retries() {
        let flights: Arc<Flights<u8, u8>> = Arc::new(Flights::new());
        let err = flights
            .run(1, || {
                async { Err(StoreError::Unavailable("down".into())) }.boxed()
            })
            .await;
        assert!(matches!(err, Err(StoreError::Unavailable(_))));
        let ok = flights.run(1, || async { Ok(7) }.boxed()).await;
        assert_eq!(*ok.unwrap(), 7);
    }
}
