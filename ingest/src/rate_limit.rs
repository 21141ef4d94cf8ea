//! Per-user and per-channel rate limits (GCRA token buckets from `governor`).
//!
//! A user may send `user_rate_per_sec` with bursts of `user_burst`; a channel
//! accepts `channel_rate_per_sec` in total with one second's worth of burst, so
//! a hot room is protected from the sum of many well-behaved senders. The user
//! bucket is checked first: a flooding user is refused before it can drain the
//! channel's shared budget. Generic over the clock so tests drive time by hand.

use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use danmaku_proto::ChannelName;
use governor::clock::{Clock, DefaultClock};
use governor::middleware::NoOpMiddleware;
use governor::state::keyed::DefaultKeyedStateStore;
use governor::{Quota, RateLimiter};

use crate::config::IngestConfig;
use crate::error::IngestError;
use crate::error::RateScope;

/// Every this many checks, keys whose bucket is full again are forgotten, so
/// the limiters' memory follows the number of recently active users and
/// channels instead of growing with every user ever seen.
const RETAIN_EVERY: u64 = 4096;

type Keyed<K, C> =
    RateLimiter<K, DefaultKeyedStateStore<K>, C, NoOpMiddleware<<C as Clock>::Instant>>;

/// The two keyed limiters of an ingest node.
pub struct RateLimits<C: Clock = DefaultClock> {
    user: Keyed<String, C>,
    channel: Keyed<ChannelName, C>,
    clock: C,
    checks: AtomicU64,
}

impl RateLimits<DefaultClock> {
    pub fn new(config: &IngestConfig) -> Result<Self, IngestError> {
        Self::with_clock(config, DefaultClock::default())
    }
}

impl<C: Clock + Clone> RateLimits<C> {
    pub fn with_clock(config: &IngestConfig, clock: C) -> Result<Self, IngestError> {
        let user = quota(
            "user_rate_per_sec",
            config.user_rate_per_sec,
            config.user_burst,
        )?;
        let channel_burst = config
            .channel_rate_per_sec
            .ceil()
            .clamp(1.0, u32::MAX as f64) as u32;
        let channel = quota(
            "channel_rate_per_sec",
            config.channel_rate_per_sec,
            channel_burst,
        )?;
        Ok(RateLimits {
            user: RateLimiter::new(user, DefaultKeyedStateStore::default(), clock.clone()),
            channel: RateLimiter::new(channel, DefaultKeyedStateStore::default(), clock.clone()),
            clock,
            checks: AtomicU64::new(0),
        })
    }

    /// Takes one message from `user`'s and then `channel`'s bucket. On refusal
    /// returns which limit hit and how long until one more message would pass.
    pub fn check(&self, user: &str, channel: &ChannelName) -> Result<(), (RateScope, Duration)> {
        if self.checks.fetch_add(1, Ordering::Relaxed) % RETAIN_EVERY == RETAIN_EVERY - 1 {
            self.forget_idle();
        }
        self.user
            .check_key(&user.to_owned())
            .map_err(|n| (RateScope::User, n.wait_time_from(self.clock.now())))?;
        self.channel
            .check_key(channel)
            .map_err(|n| (RateScope::Channel, n.wait_time_from(self.clock.now())))?;
        Ok(())
    }

    /// Drops the state of users and channels whose buckets have refilled.
    pub fn forget_idle(&self) {
        self.user.retain_recent();
        self.user.shrink_to_fit();
        self.channel.retain_recent();
        self.channel.shrink_to_fit();
    }

    /// Number of users and channels currently tracked.
    pub fn tracked_keys(&self) -> usize {
        self.user.len() + self.channel.len()
    }
}

fn quota(field: &str, rate_per_sec: f64, burst: u32) -> Result<Quota, IngestError> {
    let bad = || IngestError::Config(format!("{field} = {rate_per_sec} is not a usable rate"));
    if !(rate_per_sec.is_finite() && rate_per_sec > 0.0) {
        return Err(bad());
    }
    let period = Duration::try_from_secs_f64(1.0 / rate_per_sec).map_err(|_| bad())?;
    let burst = NonZeroU32::new(burst).ok_or_else(bad)?;
    Ok(Quota::with_period(period)
        .ok_or_else(bad)?
        .allow_burst(burst))
}

#[cfg(test)]
mod tests {
    use super::*;
    use governor::clock::FakeRelativeClock;

    fn limits(
        user_rate: f64,
        burst: u32,
        channel_rate: f64,
    ) -> (RateLimits<FakeRelativeClock>, FakeRelativeClock) {
        let config = IngestConfig {
            user_rate_per_sec: user_rate,
            user_burst: burst,
            channel_rate_per_sec: channel_rate,
            ..IngestConfig::default()
        };
        let clock = FakeRelativeClock::default();
        (
            RateLimits::with_clock(&config, clock.clone()).unwrap(),
            clock,
        )
    }

    fn room(id: &str) -> ChannelName {
        ChannelName::parse(&format!("room:{id}")).unwrap()
    }

    #[test]
    fn user_burst_then_refill_rate() {
        let (l, clock) = limits(5.0, 10, 1000.0);
        for _ in 0..10 {
            l.check("alice", &room("1")).unwrap();
        }
        let (scope, wait) = l.check("alice", &room("1")).unwrap_err();
        assert_eq!(scope, RateScope::User);
        assert_eq!(wait, Duration::from_millis(200));
        // Another user is not affected.
        l.check("bob", &room("1")).unwrap();
        clock.advance(Duration::from_millis(200));
        l.check("alice", &room("1")).unwrap();
        assert!(l.check("alice", &room("1")).is_err());
    }

    #[test]
    fn channel_limit_is_shared_by_all_senders() {
        let (l, clock) = limits(100.0, 100, 3.0);
        for user in ["a", "b", "c"] {
            l.check(user, &room("hot")).unwrap();
        }
        let (scope, wait) = l.check("d", &room("hot")).unwrap_err();
        assert_eq!(scope, RateScope::Channel);
        assert!(
            wait > Duration::ZERO && wait <= Duration::from_millis(334),
            "{wait:?}"
        );
        l.check("d", &room("quiet")).unwrap();
        clock.advance(Duration::from_secs(1));
        l.check("d", &room("hot")).unwrap();
    }

    #[test]
    fn idle_keys_are_forgotten() {
        let (l, clock) = limits(5.0, 10, 1000.0);
        for i in 0..50 {
            l.check(&format!("user{i}"), &room(&i.to_string())).unwrap();
        }
        assert_eq!(l.tracked_keys(), 100);
        clock.advance(Duration::from_secs(5));
        l.forget_idle();
        assert_eq!(l.tracked_keys(), 0);
    }

    #[test]
    fn unusable_rates_are_config_errors() {
        let config = IngestConfig {
            user_rate_per_sec: 1e-300,
            ..IngestConfig::default()
        };
        assert!(RateLimits::new(&config).is_err());
    }
}
