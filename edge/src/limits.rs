//! What one client may ask of an edge: frame budgets, connection caps, and the
//! handshake deadline, as plain state. The connection's task (`connection/`)
//! asks [`ConnLimits::admit`] when a connection starts and
//! [`ConnLimits::check_frame`] for every frame, and answers refusals; the
//! settings are [`ClientLimits`] (`config.rs`).
//!
//! * **Frame budgets.** Every client frame (join, leave, resume, ack, auth, ping)
//!   takes one token from its connection's bucket and one from its user's bucket
//!   (shared by all of the user's connections on this edge), so neither a single
//!   socket nor a user with many sockets can turn frames into unbounded store
//!   reads. A frame over budget is not handled: the client gets an `error` frame
//!   `rate_limited` and the connection stays.
//! * **Connection caps.** At most `max_conns_per_user` connections per user and
//!   `max_conns_per_ip` per remote address; one more is refused with
//!   `too_many_connections` / `too_many_connections_from_ip` and closed.
//! * **Handshake deadline.** A QUIC connection must send its `auth` frame within
//!   `handshake_timeout` (`handshake_timeout` error, then close). A WebSocket is
//!   authenticated by its upgrade request.
//!
//! Every refusal is counted in `danmaku_edge_refused_total{code}`. The bucket is
//! plain arithmetic ([`TokenBucket`]), unit-tested without sockets.

use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use dashmap::DashMap;
use tokio::time::Instant;

use crate::config::ClientLimits;

/// A token bucket: `rate` tokens per second, at most `burst` saved.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket.
    pub fn new(rate: f64, burst: u32, now: Instant) -> Self {
        let burst = f64::from(burst.max(1));
        TokenBucket {
            rate: rate.max(f64::MIN_POSITIVE),
            burst,
            tokens: burst,
            last: now,
        }
    }

    /// Takes one token, or says how long until one is available.
    pub fn take(&mut self, now: Instant) -> Result<(), Duration> {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - self.tokens) / self.rate))
        }
    }
}

/// Why a frame or a connection was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// Over the connection's or the user's frame budget.
    RateLimited {
        scope: &'static str,
        wait: Duration,
    },
    TooManyConnections {
        limit: usize,
    },
    TooManyConnectionsFromIp {
        limit: usize,
    },
}

impl Refusal {
    pub fn code(&self) -> &'static str {
        match self {
            Refusal::RateLimited { .. } => "rate_limited",
            Refusal::TooManyConnections { .. } => "too_many_connections",
            Refusal::TooManyConnectionsFromIp { .. } => "too_many_connections_from_ip",
        }
    }

    pub fn message(&self) -> String {
        match self {
            Refusal::RateLimited { scope, wait } => format!(
                "too many frames on this {scope}; frame ignored, retry in {} ms",
                wait.as_millis().max(1)
            ),
            Refusal::TooManyConnections { limit } => {
                format!("this user already has {limit} connections to this edge")
            }
            Refusal::TooManyConnectionsFromIp { limit } => {
                format!("this address already has {limit} connections to this edge")
            }
        }
    }

    /// Whether the connection ends with this refusal (caps) or goes on (budgets).
    pub fn closes(&self) -> bool {
        !matches!(self, Refusal::RateLimited { .. })
    }
}

/// One user's state on this edge: open connections and the shared frame bucket.
#[derive(Debug)]
struct UserState {
    conns: usize,
    bucket: Arc<Mutex<TokenBucket>>,
}

/// The edge-wide side of the limits: per-user and per-IP connection counts and
/// the per-user frame buckets. Entries live while the user (or address) has a
/// connection here, so memory follows open connections.
#[derive(Debug, Default)]
pub struct Limiter {
    users: DashMap<String, UserState>,
    ips: DashMap<IpAddr, usize>,
}

impl Limiter {
    /// Claims a connection slot for `user` (and `ip` when known), or refuses.
    fn admit(
        self: &Arc<Self>,
        config: &ClientLimits,
        user: &str,
        ip: Option<IpAddr>,
        now: Instant,
    ) -> Result<Slot, Refusal> {
        if let Some(ip) = ip {
            let mut n = self.ips.entry(ip).or_insert(0);
            if *n >= config.max_conns_per_ip {
                return Err(Refusal::TooManyConnectionsFromIp {
                    limit: config.max_conns_per_ip,
                });
            }
            *n += 1;
        }
        let mut state = self
            .users
            .entry(user.to_owned())
            .or_insert_with(|| UserState {
                conns: 0,
                bucket: Arc::new(Mutex::new(TokenBucket::new(
                    config.user_frames_per_sec,
                    config.user_frame_burst,
                    now,
                ))),
            });
        if state.conns >= config.max_conns_per_user {
            drop(state);
            if let Some(ip) = ip {
                self.release_ip(ip);
            }
            return Err(Refusal::TooManyConnections {
                limit: config.max_conns_per_user,
            });
        }
        state.conns += 1;
        let bucket = Arc::clone(&state.bucket);
        Ok(Slot {
            limiter: Arc::clone(self),
            user: user.to_owned(),
            ip,
            bucket,
        })
    }

    fn release_ip(&self, ip: IpAddr) {
        self.ips.remove_if_mut(&ip, |_, n| {
            *n = n.saturating_sub(1);
            *n == 0
        });
    }

    /// Users with an entry now (for tests: entries go with their last connection).
    pub fn users(&self) -> usize {
        self.users.len()
    }
}

/// A claimed connection slot; dropping it gives the slot back.
#[derive(Debug)]
struct Slot {
    limiter: Arc<Limiter>,
    user: String,
    ip: Option<IpAddr>,
    bucket: Arc<Mutex<TokenBucket>>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.limiter.users.remove_if_mut(&self.user, |_, s| {
            s.conns = s.conns.saturating_sub(1);
            s.conns == 0
        });
        if let Some(ip) = self.ip {
            self.limiter.release_ip(ip);
        }
    }
}

/// One connection's limits: its own frame bucket and, once admitted, its slot
/// (which carries the user's shared bucket).
#[derive(Debug)]
pub(crate) struct ConnLimits {
    bucket: TokenBucket,
    slot: Option<Slot>,
}

impl ConnLimits {
    pub fn new(config: &ClientLimits) -> Self {
        ConnLimits {
            bucket: TokenBucket::new(
                config.conn_frames_per_sec,
                config.conn_frame_burst,
                Instant::now(),
            ),
            slot: None,
        }
    }

    /// Claims this connection's slot for `user` (and `ip` when known) in the
    /// edge-wide `limiter`, or refuses.
    pub fn admit(
        &mut self,
        limiter: &Arc<Limiter>,
        config: &ClientLimits,
        user: &str,
        ip: Option<IpAddr>,
        now: Instant,
    ) -> Result<(), Refusal> {
        self.slot = Some(limiter.admit(config, user, ip, now)?);
        Ok(())
    }

    /// Takes one frame from the connection's and the user's budgets.
    pub fn check_frame(&mut self, now: Instant) -> Result<(), Refusal> {
        self.bucket.take(now).map_err(|wait| Refusal::RateLimited {
            scope: "connection",
            wait,
        })?;
        if let Some(slot) = &self.slot {
            let mut user = slot.bucket.lock().unwrap_or_else(|e| e.into_inner());
            user.take(now).map_err(|wait| Refusal::RateLimited {
                scope: "user",
                wait,
            })?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_allows_the_burst_then_the_rate() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(10.0, 3, t0);
        for _ in 0..3 {
            assert!(b.take(t0).is_ok());
        }
        let wait = b.take(t0).unwrap_err();
        assert!(wait > Duration::from_millis(90) && wait <= Duration::from_millis(100));
        assert!(b.take(t0 + Duration::from_millis(100)).is_ok());
        assert!(b.take(t0 + Duration::from_millis(100)).is_err());
        // Saved tokens are capped at the burst.
        let later = t0 + Duration::from_secs(60);
        for _ in 0..3 {
            assert!(b.take(later).is_ok());
        }
        assert!(b.take(later).is_err());
    }

    #[test]
    fn connection_caps_per_user_and_ip_and_release() {
        let limiter = Arc::new(Limiter::default());
        let config = ClientLimits {
            max_conns_per_user: 2,
            max_conns_per_ip: 3,
            ..ClientLimits::default()
        };
        let now = Instant::now();
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let a1 = limiter.admit(&config, "alice", Some(ip), now).unwrap();
        let a2 = limiter.admit(&config, "alice", Some(ip), now).unwrap();
        assert_eq!(
            limiter.admit(&config, "alice", Some(ip), now).unwrap_err(),
            Refusal::TooManyConnections { limit: 2 }
        );
        // The refused attempt did not keep an IP slot.
        let b1 = limiter.admit(&config, "bob", Some(ip), now).unwrap();
        assert_eq!(
            limiter.admit(&config, "carol", Some(ip), now).unwrap_err(),
            Refusal::TooManyConnectionsFromIp { limit: 3 }
        );
        // Unknown address: only the user cap applies.
        assert!(limiter.admit(&config, "carol", None, now).is_ok());
        drop(a1);
        let a3 = limiter.admit(&config, "alice", Some(ip), now).unwrap();
        drop((a2, a3, b1));
        assert_eq!(limiter.users(), 0, "entries go with their last connection");
        assert!(limiter.ips.is_empty());
    }

    #[test]
    fn users_share_one_bucket_across_connections() {
        let limiter = Arc::new(Limiter::default());
        let config = ClientLimits {
            user_frames_per_sec: 1.0,
            user_frame_burst: 2,
            ..ClientLimits::default()
        };
        let now = Instant::now();
        let s1 = limiter.admit(&config, "alice", None, now).unwrap();
        let s2 = limiter.admit(&config, "alice", None, now).unwrap();
        assert!(s1.bucket.lock().unwrap().take(now).is_ok());
        assert!(s2.bucket.lock().unwrap().take(now).is_ok());
        assert!(s1.bucket.lock().unwrap().take(now).is_err());
    }
}
