//! What every post is screened against, held in memory on each ingest node:
//! the compiled word lists ([`filter`]) and each room's moderators, mutes and
//! settings ([`RoomPolicy`]), with slow mode's last-post times. The store is
//! the truth; `moderation` (the endpoints and the reloads) fills this from it.
//! Nothing here talks to the store, the bus or HTTP, so the post path and the
//! endpoints both build on it without importing each other.

pub mod filter;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use danmaku_store::RoomSettings;
use dashmap::DashMap;

use filter::Filter;

/// Longest slow-mode window, in seconds (1 hour).
pub const MAX_SLOW_MODE_SECS: i64 = 3_600;

/// One channel's policy, compiled for enforcement.
#[derive(Debug, Default)]
pub struct RoomPolicy {
    pub filter: Arc<Filter>,
    pub moderators: HashSet<String>,
    /// user → until_ms (may have passed since loading: compare with now).
    pub mutes: HashMap<String, i64>,
    pub settings: RoomSettings,
}

impl RoomPolicy {
    pub fn is_moderator(&self, user: &str) -> bool {
        self.moderators.contains(user)
    }

    /// The end of `user`'s mute when it is still running at `now_ms`.
    pub fn muted_until(&self, user: &str, now_ms: i64) -> Option<i64> {
        self.mutes
            .get(user)
            .copied()
            .filter(|&until| until > now_ms)
    }
}

/// This node's copy of the stored policy, plus slow mode's last-post times.
#[derive(Default)]
pub struct Moderation {
    pub(crate) global: RwLock<Arc<Filter>>,
    pub(crate) rooms: DashMap<String, Arc<RoomPolicy>>,
    /// (channel, user) → when their last post was accepted in slow mode.
    pub(crate) last_post: DashMap<(String, String), Instant>,
    /// Reloads run one at a time, so a reload that read the store later always
    /// lands later.
    pub(crate) reload: tokio::sync::Mutex<()>,
}

impl Moderation {
    pub fn room(&self, channel: &str) -> Option<Arc<RoomPolicy>> {
        self.rooms.get(channel).map(|r| r.clone())
    }

    pub fn global(&self) -> Arc<Filter> {
        match self.global.read() {
            Ok(g) => g.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    pub(crate) fn set_global(&self, filter: Arc<Filter>) {
        match self.global.write() {
            Ok(mut g) => *g = filter,
            Err(poisoned) => *poisoned.into_inner() = filter,
        }
    }

    /// Running mutes over all rooms at `now_ms`.
    pub fn active_mutes(&self, now_ms: i64) -> usize {
        self.rooms
            .iter()
            .map(|r| r.mutes.values().filter(|&&u| u > now_ms).count())
            .sum()
    }

    /// Words in the global list and in all room lists.
    pub(crate) fn words(&self) -> (usize, usize) {
        let rooms = self.rooms.iter().map(|r| r.filter.words()).sum();
        (self.global().words(), rooms)
    }

    /// Forgets slow-mode times older than the longest window.
    pub(crate) fn prune_last_posts(&self) {
        let window = Duration::from_secs(MAX_SLOW_MODE_SECS as u64);
        self.last_post.retain(|_, at| at.elapsed() < window);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mute_ends_at_its_time() {
        let room = RoomPolicy {
            mutes: [("troll".to_string(), 1_000)].into(),
            ..Default::default()
        };
        assert_eq!(room.muted_until("troll", 999), Some(1_000));
        assert_eq!(room.muted_until("troll", 1_000), None);
        assert_eq!(room.muted_until("alice", 0), None);
    }
}
