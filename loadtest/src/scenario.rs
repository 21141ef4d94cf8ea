//! The workload: which rooms, how many viewers each, how fast danmaku and gifts
//! are posted to each, for how long, and how many viewers churn. Built from
//! flags ([`Scenario::uniform`]) or a TOML file ([`Scenario::from_toml`]):
//!
//! ```toml
//! duration = 60            # seconds of posting
//! churn = 0.02             # share of viewers that leave and rejoin
//! churn_stay = 10          # seconds a churning viewer stays before leaving
//!
//! [[rooms]]                # one 100k room
//! viewers = 100000
//! danmaku_rate = 1000      # per second
//! gift_rate = 10
//!
//! [[rooms]]                # 200 rooms of 50
//! count = 200
//! viewers = 50
//! danmaku_rate = 1
//! gift_rate = 0.1
//! ```

use std::time::Duration;

/// A group of identical rooms.
#[derive(Debug, Clone, PartialEq)]
pub struct RoomGroup {
    pub count: usize,
    pub viewers: usize,
    pub danmaku_rate: f64,
    pub gift_rate: f64,
}

/// One whole workload.
#[derive(Debug, Clone, PartialEq)]
pub struct Scenario {
    pub rooms: Vec<RoomGroup>,
    pub duration: Duration,
    /// Share of viewers (0–1) that leave and rejoin during the run.
    pub churn: f64,
    pub churn_stay: Duration,
}

/// One room of a scenario, expanded.
#[derive(Debug, Clone, PartialEq)]
pub struct RoomPlan {
    pub viewers: usize,
    pub danmaku_rate: f64,
    pub gift_rate: f64,
}

impl Scenario {
    /// `connections` viewers spread over `rooms` rooms (the first rooms get one
    /// more when it does not divide), `rate` danmaku/s and `gift_rate` gifts/s
    /// in total, split evenly.
    pub fn uniform(
        connections: usize,
        rooms: usize,
        rate: f64,
        gift_rate: f64,
        duration: Duration,
    ) -> Self {
        let rooms = rooms.max(1);
        let base = connections / rooms;
        let extra = connections % rooms;
        let mut groups = Vec::new();
        for (count, viewers) in [(extra, base + 1), (rooms - extra, base)] {
            if count > 0 {
                groups.push(RoomGroup {
                    count,
                    viewers,
                    danmaku_rate: rate / rooms as f64,
                    gift_rate: gift_rate / rooms as f64,
                });
            }
        }
        Scenario {
            rooms: groups,
            duration,
            churn: 0.0,
            churn_stay: Duration::from_secs(10),
        }
    }

    /// Parses a TOML scenario (see the module docs).
    pub fn from_toml(text: &str) -> Result<Self, String> {
        let doc: toml_edit::DocumentMut = text.parse().map_err(|e| format!("scenario: {e}"))?;
        let num =
            |item: Option<&toml_edit::Item>, what: &str, default: f64| -> Result<f64, String> {
                match item {
                    None => Ok(default),
                    Some(i) => i
                        .as_float()
                        .or_else(|| i.as_integer().map(|v| v as f64))
                        .filter(|v| v.is_finite() && *v >= 0.0)
                        .ok_or_else(|| format!("scenario: {what} must be a number ≥ 0")),
                }
            };
        let duration = num(doc.get("duration"), "duration", 60.0)?;
        let churn = num(doc.get("churn"), "churn", 0.0)?;
        if churn > 1.0 {
            return Err("scenario: churn is a share between 0 and 1".into());
        }
        let churn_stay = num(doc.get("churn_stay"), "churn_stay", 10.0)?;
        let tables = doc
            .get("rooms")
            .and_then(|r| r.as_array_of_tables())
            .ok_or("scenario: needs at least one [[rooms]] table")?;
        let mut rooms = Vec::new();
        for t in tables.iter() {
            let count = num(t.get("count"), "rooms.count", 1.0)? as usize;
            let viewers = num(t.get("viewers"), "rooms.viewers", 0.0)? as usize;
            rooms.push(RoomGroup {
                count,
                viewers,
                danmaku_rate: num(t.get("danmaku_rate"), "rooms.danmaku_rate", 0.0)?,
                gift_rate: num(t.get("gift_rate"), "rooms.gift_rate", 0.0)?,
            });
        }
        if rooms.iter().all(|r| r.count == 0) {
            return Err("scenario: no rooms".into());
        }
        Ok(Scenario {
            rooms,
            duration: Duration::from_secs_f64(duration),
            churn,
            churn_stay: Duration::from_secs_f64(churn_stay.max(1.0)),
        })
    }

    /// Every room, in order.
    pub fn plan(&self) -> Vec<RoomPlan> {
        self.rooms
            .iter()
            .flat_map(|g| {
                std::iter::repeat_n(
                    RoomPlan {
                        viewers: g.viewers,
                        danmaku_rate: g.danmaku_rate,
                        gift_rate: g.gift_rate,
                    },
                    g.count,
                )
            })
            .collect()
    }

    pub fn viewers(&self) -> usize {
        self.rooms.iter().map(|g| g.count * g.viewers).sum()
    }

    pub fn room_count(&self) -> usize {
        self.rooms.iter().map(|g| g.count).sum()
    }

    pub fn danmaku_rate(&self) -> f64 {
        self.rooms
            .iter()
            .map(|g| g.count as f64 * g.danmaku_rate)
            .sum()
    }

    pub fn gift_rate(&self) -> f64 {
        self.rooms
            .iter()
            .map(|g| g.count as f64 * g.gift_rate)
            .sum()
    }
}

/// Whether viewer `i` (of all viewers, in order) is one of the `fraction`:
/// spread evenly, so 0.01 makes viewers 99, 199, 299… probes.
pub fn is_every(i: u64, fraction: f64) -> bool {
    if fraction <= 0.0 {
        return false;
    }
    if fraction >= 1.0 {
        return true;
    }
    ((i + 1) as f64 * fraction).floor() > (i as f64 * fraction).floor()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uniform_splits_viewers_and_rates() {
        let s = Scenario::uniform(10, 3, 30.0, 3.0, Duration::from_secs(5));
        let p = s.plan();
        assert_eq!(p.iter().map(|r| r.viewers).collect::<Vec<_>>(), [4, 3, 3]);
        assert!(p.iter().all(|r| (r.danmaku_rate - 10.0).abs() < 1e-9));
        assert_eq!((s.viewers(), s.room_count()), (10, 3));
        assert!((s.gift_rate() - 3.0).abs() < 1e-9);
    }

    #[test]
    fn toml_scenario_of_one_big_room_and_many_small_ones() {
        let s = Scenario::from_toml(
            r#"
            duration = 60
            churn = 0.02
            [[rooms]]
            viewers = 100000
            danmaku_rate = 1000
            gift_rate = 10
            [[rooms]]
            count = 200
            viewers = 50
            danmaku_rate = 1
            gift_rate = 0.1
            "#,
        )
        .unwrap();
        assert_eq!(s.viewers(), 110_000);
        assert_eq!(s.room_count(), 201);
        assert!((s.danmaku_rate() - 1200.0).abs() < 1e-9);
        assert!((s.gift_rate() - 30.0).abs() < 1e-6);
        assert_eq!(s.duration, Duration::from_secs(60));
        assert_eq!(s.churn, 0.02);
        assert!(Scenario::from_toml("duration = 1").is_err());
        assert!(Scenario::from_toml("[[rooms]]\nviewers = -3").is_err());
        assert!(Scenario::from_toml("churn = 2\n[[rooms]]\nviewers = 1").is_err());
    }

    #[test]
    fn every_hundredth_viewer_is_a_probe() {
        let probes: Vec<u64> = (0..1000).filter(|&i| is_every(i, 0.01)).collect();
        assert_eq!(probes.len(), 10);
        assert_eq!(probes[0], 99);
        assert_eq!((0..10).filter(|&i| is_every(i, 1.0)).count(), 10);
        assert_eq!((0..10).filter(|&i| is_every(i, 0.0)).count(), 0);
    }
}
