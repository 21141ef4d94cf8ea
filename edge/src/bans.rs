//! Channel bans on the edge: who may not join which channel, until when.
//!
//! A moderator bans a user from a channel over HTTP on any ingest; the ban is
//! stored and announced on the bus under the moderation key (`!moderation`,
//! never a channel name), which every edge decodes (moderation changes are
//! rare). The edge keeps every active ban in memory — loaded from the store at
//! start, kept in step by the bus consumer (`consumer.rs`) — because a `join`
//! of a channel this edge does not host yet must be refused too. The check on
//! `join` is one read lock and one hash lookup by user (a user is banned from
//! few channels: the short list is scanned). The banned user's connections in
//! the channel leave it at once (`handlers/leave.rs`, reason `banned`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use danmaku_proto::ChannelName;
use danmaku_store::Store;
use prometheus::IntGauge;
use tokio_util::sync::CancellationToken;

/// How often ended bans leave the memory (and the gauge is refreshed).
const SWEEP_EVERY: Duration = Duration::from_secs(5);

/// One ban of a user: the channel and its end (ms since the epoch; `None` =
/// permanent).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Ban {
    channel: ChannelName,
    until_ms: Option<i64>,
}

impl Ban {
    fn active(&self, now_ms: i64) -> bool {
        self.until_ms.is_none_or(|u| u > now_ms)
    }
}

/// Every active ban, by user.
pub(crate) struct Bans {
    by_user: RwLock<HashMap<Box<str>, Vec<Ban>>>,
    /// `danmaku_edge_bans_active`.
    gauge: IntGauge,
    /// Whether the table matches the store (else the sweep loads it again:
    /// at start when the store was down, after the bus lagged).
    loaded: AtomicBool,
}

impl Bans {
    pub fn new(gauge: IntGauge) -> Self {
        Bans {
            by_user: RwLock::default(),
            gauge,
            loaded: AtomicBool::new(false),
        }
    }

    /// Replaces the table with the bans stored in force now; false (logged)
    /// when the store cannot be read.
    pub async fn load(&self, store: &dyn Store) -> bool {
        let now = danmaku_proto::now_ms();
        let stored = match store.bans(now).await {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(error = %e, "cannot load the channel bans; retrying");
                return false;
            }
        };
        let mut table: HashMap<Box<str>, Vec<Ban>> = HashMap::new();
        for b in stored {
            let Ok(channel) = ChannelName::parse(&b.channel) else {
                continue;
            };
            table.entry(b.user.into()).or_default().push(Ban {
                channel,
                until_ms: b.until_ms,
            });
        }
        let n = count(&table);
        *self.by_user.write().unwrap_or_else(|e| e.into_inner()) = table;
        self.gauge.set(n as i64);
        self.loaded.store(true, Ordering::Relaxed);
        tracing::debug!(bans = n, "channel bans loaded");
        true
    }

    /// The bus lagged: an announcement may be lost, so load the store again.
    pub fn reload_later(&self) {
        self.loaded.store(false, Ordering::Relaxed);
    }

    /// Drops ended bans every few seconds; loads the stored ones while the
    /// table is not known to match the store.
    pub async fn sweep(self: Arc<Self>, store: Arc<dyn Store>, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(SWEEP_EVERY);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            if !self.loaded.load(Ordering::Relaxed) {
                self.load(&*store).await;
            }
            self.purge(danmaku_proto::now_ms());
        }
    }

    /// `Some(until_ms)` (`None` inside = permanent) when `user` is banned from
    /// `channel` at `now_ms`.
    pub fn banned(&self, channel: &ChannelName, user: &str, now_ms: i64) -> Option<Option<i64>> {
        let by_user = self.by_user.read().unwrap_or_else(|e| e.into_inner());
        by_user
            .get(user)?
            .iter()
            .find(|b| b.channel == *channel && b.active(now_ms))
            .map(|b| b.until_ms)
    }

    /// Applies one announced or stored ban: `until_ms` 0 = permanent; `lifted`
    /// removes it. Returns true when the ban is in force now (its user's
    /// connections in the channel must leave).
    pub fn apply(
        &self,
        channel: ChannelName,
        user: &str,
        until_ms: i64,
        lifted: bool,
        now_ms: i64,
    ) -> bool {
        let ban = Ban {
            channel,
            until_ms: (until_ms > 0).then_some(until_ms),
        };
        let in_force = !lifted && ban.active(now_ms);
        let mut by_user = self.by_user.write().unwrap_or_else(|e| e.into_inner());
        let list = by_user.entry(Box::from(user)).or_default();
        list.retain(|b| b.channel != ban.channel);
        if in_force {
            list.push(ban);
        }
        if list.is_empty() {
            by_user.remove(user);
        }
        self.gauge.set(count(&by_user) as i64);
        in_force
    }

    /// Drops ended bans (and refreshes the gauge); returns how many remain.
    pub fn purge(&self, now_ms: i64) -> usize {
        let mut by_user = self.by_user.write().unwrap_or_else(|e| e.into_inner());
        by_user.retain(|_, list| {
            list.retain(|b| b.active(now_ms));
            !list.is_empty()
        });
        let n = count(&by_user);
        self.gauge.set(n as i64);
        n
    }
}

fn count(by_user: &HashMap<Box<str>, Vec<Ban>>) -> usize {
    by_user.values().map(Vec::len).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ch(s: &str) -> ChannelName {
        ChannelName::parse(s).unwrap()
    }

    #[test]
    fn bans_refuse_their_channel_until_they_end_or_are_lifted() {
        let bans = Bans::new(IntGauge::new("g", "g").unwrap());
        assert!(bans.apply(ch("room:1"), "troll", 2_000, false, 1_000));
        assert!(bans.apply(ch("room:2"), "troll", 0, false, 1_000));
        assert_eq!(
            bans.banned(&ch("room:1"), "troll", 1_500),
            Some(Some(2_000))
        );
        assert_eq!(bans.banned(&ch("room:2"), "troll", 1_500), Some(None));
        assert_eq!(bans.banned(&ch("room:3"), "troll", 1_500), None);
        assert_eq!(bans.banned(&ch("room:1"), "other", 1_500), None);
        assert_eq!(bans.banned(&ch("room:1"), "troll", 2_000), None, "ended");
        assert_eq!(bans.gauge.get(), 2);
        // A new ban replaces the old one; lifting removes it.
        assert!(bans.apply(ch("room:1"), "troll", 9_000, false, 1_000));
        assert_eq!(
            bans.banned(&ch("room:1"), "troll", 5_000),
            Some(Some(9_000))
        );
        assert!(!bans.apply(ch("room:2"), "troll", 0, true, 1_000));
        assert_eq!(bans.banned(&ch("room:2"), "troll", 1_500), None);
        assert_eq!(bans.gauge.get(), 1);
        // An announcement of a ban already over is not in force.
        assert!(!bans.apply(ch("room:4"), "late", 500, false, 1_000));
        assert_eq!(bans.purge(10_000), 0);
        assert_eq!(bans.gauge.get(), 0);
    }
}
