//! The load model: which edges exist, how loaded each is, and which to hand
//! out. Plain data and `fn on_x(&mut self, now, …)` methods, no sockets and no
//! clock of its own, so every rule here is unit-tested with made-up instants.
//!
//! # Inputs
//! * **Registrations and heartbeats** (self-registered edges): the edge's
//!   addresses and capacities, then every ~1 s `ready`, `draining` and its
//!   local member count per channel.
//! * **Samples** of the edge's own metrics, from a scrape of its `/metrics` or
//!   from a Prometheus server: open connections, `process_cpu_seconds_total`,
//!   egress bytes, and the instant the sample was taken. CPU and egress are
//!   counters; the model turns two consecutive samples into rates, so both
//!   load sources feed exactly the same arithmetic.
//! * **Static edges** (`--edge`): no readings, a fixed base load.
//!
//! # Score
//! `max(connections / capacity, cpu utilisation, egress B/s / egress capacity)`
//! from the latest sample, plus `in-flight / capacity`, where in-flight counts
//! the clients this scheduler sent to the edge that the sample may not show
//! yet: those handed out after `sample time − connect_allowance`. Readings lag
//! by up to a scrape interval; without the correction a burst of requests
//! would all see the same "emptiest" edge and herd onto it. The allowance
//! makes a client handed out just before a scrape still count (it may not have
//! finished its handshake); the price is counting some clients twice for a
//! second, which every edge pays in proportion to its share of the picks.
//!
//! # Picks
//! Power of two choices over the edges that are healthy (fresh heartbeat and
//! fresh sample), ready and not draining: draw two at random, keep the lower
//! score, repeat without replacement for the k answers. The first answer is
//! the one the client is expected to use and the only one counted in flight.
//! Sampling two instead of taking the global minimum is what keeps stale
//! readings from herding (Mitzenmacher, "How useful is old information?").
//!
//! # Determinism
//! The random draws come from a [`SplitMix64`] seeded by the caller (per
//! request). The model keeps no cursor or other hidden state besides the
//! registry, the samples and the in-flight log, so two scheduler processes
//! with the same registry and readings give the same answer for the same seed;
//! the in-flight log is the one process-local input, and it empties itself
//! with each newer reading.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::{Duration, Instant};

/// Tunables of the load model; every field has a documented default.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelConfig {
    /// An edge whose last heartbeat, or last load sample, is older than this is
    /// ejected (never picked, forgotten). Default 3 s.
    pub stale_after: Duration,
    /// How long a newly registered edge may go without its first load sample
    /// before it is ejected (a Prometheus server needs a discovery refresh and
    /// a scrape before it has one). Default 10 s.
    pub first_sample_grace: Duration,
    /// How long a client handed out may take to show up in the edge's
    /// connection gauge: hand-outs after `sample time − connect_allowance`
    /// count as in flight. Default 2 s: under a flash crowd handshakes take
    /// well over a second, and a client dropped from in-flight before it shows
    /// up in the gauge is a client the scores do not see.
    pub connect_allowance: Duration,
    /// Capacity assumed for static edges, which report none; scales their
    /// in-flight correction. Default 19,000 (what one edge holds here).
    pub static_capacity: u64,
    /// Bound on the in-flight log of one edge. Default 100,000.
    pub max_in_flight: usize,
}

impl Default for ModelConfig {
    fn default() -> Self {
        ModelConfig {
            stale_after: Duration::from_secs(3),
            first_sample_grace: Duration::from_secs(10),
            connect_allowance: Duration::from_secs(2),
            static_capacity: 19_000,
            max_in_flight: 100_000,
        }
    }
}

/// What a self-registered edge declares about itself (validated by the caller).
#[derive(Debug, Clone, PartialEq)]
pub struct Registration {
    pub id: String,
    /// `ws://` or `wss://` URL of its WebSocket endpoint.
    pub ws: String,
    /// `host:port` of its QUIC endpoint, or empty.
    pub quic: String,
    /// Where its Prometheus metrics are served; also names it in Prometheus
    /// (`instance` = host:port of this URL).
    pub metrics_url: String,
    /// Most client connections it should hold.
    pub capacity: u64,
    /// Bytes per second it can send.
    pub egress_capacity: u64,
    /// CPU cores its process may use (CPU utilisation is divided by this).
    pub cores: u32,
}

/// A static edge from the command line: always healthy, fixed base load.
#[derive(Debug, Clone, PartialEq)]
pub struct StaticEdge {
    pub id: String,
    pub ws: String,
    pub quic: String,
    /// Base load score (0 idle); the in-flight correction is added to it.
    pub load: f64,
}

/// One heartbeat's content.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Heartbeat {
    pub ready: bool,
    pub draining: bool,
    pub connections: u64,
    pub members: u64,
    /// Local member count per channel (the edge sends the biggest, bounded).
    pub channels: Vec<(String, u64)>,
}

/// One reading of an edge's metrics.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample {
    /// When the edge produced these values (scrape start, or Prometheus'
    /// sample timestamp).
    pub at: Instant,
    /// Open client connections.
    pub connections: f64,
    /// `process_cpu_seconds_total`; `None` when the edge does not export it.
    pub cpu_seconds: Option<f64>,
    /// Egress bytes counter; `None` when the edge does not export it.
    pub egress_bytes: Option<f64>,
}

/// What became of a sample.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SampleOutcome {
    Accepted,
    /// Not newer than the last one (Prometheus answered the same scrape twice,
    /// or readings arrived out of order): ignored.
    Old,
    UnknownEdge,
}

/// Why an edge left the registry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EjectReason {
    /// No heartbeat for [`ModelConfig::stale_after`].
    Heartbeat,
    /// No fresh load sample for [`ModelConfig::stale_after`] (or no first one
    /// within [`ModelConfig::first_sample_grace`]).
    Readings,
}

impl EjectReason {
    pub const ALL: [EjectReason; 2] = [EjectReason::Heartbeat, EjectReason::Readings];

    /// Metrics label.
    pub fn label(self) -> &'static str {
        match self {
            EjectReason::Heartbeat => "heartbeat",
            EjectReason::Readings => "readings",
        }
    }
}

/// Where an edge stands, as counted in the registry-size metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EdgeState {
    /// Picked.
    Healthy,
    /// Registered, no load sample yet.
    Warming,
    /// Its heartbeat says not ready.
    NotReady,
    Draining,
    /// Heartbeat or samples overdue; ejected at the next sweep.
    Stale,
}

impl EdgeState {
    pub const ALL: [EdgeState; 5] = [
        EdgeState::Healthy,
        EdgeState::Warming,
        EdgeState::NotReady,
        EdgeState::Draining,
        EdgeState::Stale,
    ];

    /// Metrics label.
    pub fn label(self) -> &'static str {
        match self {
            EdgeState::Healthy => "healthy",
            EdgeState::Warming => "warming",
            EdgeState::NotReady => "not_ready",
            EdgeState::Draining => "draining",
            EdgeState::Stale => "stale",
        }
    }
}

/// An edge in an answer, best first.
#[derive(Debug, Clone, PartialEq)]
pub struct Pick {
    pub id: String,
    pub ws: String,
    pub quic: String,
    /// The score the decision used.
    pub load: f64,
}

/// Whether a registration added an edge or replaced one with the same id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Registered {
    Created,
    Replaced,
}

// A few dozen edges live in one map and are never moved: boxing the big
// variant would only add a pointer chase to every score.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
enum Kind {
    Static {
        load: f64,
    },
    Registered {
        spec: Registration,
        registered_at: Instant,
        last_heartbeat: Instant,
        ready: bool,
        draining: bool,
        /// Local members per channel, from the latest heartbeat.
        channels: HashMap<String, u64>,
        last: Option<Sample>,
        cpu_util: f64,
        egress_rate: f64,
    },
}

#[derive(Debug)]
struct Edge {
    id: String,
    ws: String,
    quic: String,
    kind: Kind,
    /// Instants at which this edge was the first answer, oldest first.
    handed_out: VecDeque<Instant>,
}

impl Edge {
    fn capacity(&self, config: &ModelConfig) -> f64 {
        match &self.kind {
            Kind::Static { .. } => config.static_capacity.max(1) as f64,
            Kind::Registered { spec, .. } => spec.capacity.max(1) as f64,
        }
    }

    fn state(&self, now: Instant, config: &ModelConfig) -> EdgeState {
        match &self.kind {
            Kind::Static { .. } => EdgeState::Healthy,
            Kind::Registered {
                registered_at,
                last_heartbeat,
                ready,
                draining,
                last,
                ..
            } => {
                let overdue =
                    |since: Instant, limit: Duration| now.saturating_duration_since(since) > limit;
                let samples_overdue = match last {
                    Some(s) => overdue(s.at, config.stale_after),
                    None => overdue(*registered_at, config.first_sample_grace),
                };
                if overdue(*last_heartbeat, config.stale_after) || samples_overdue {
                    EdgeState::Stale
                } else if *draining {
                    EdgeState::Draining
                } else if !*ready {
                    EdgeState::NotReady
                } else if last.is_none() {
                    EdgeState::Warming
                } else {
                    EdgeState::Healthy
                }
            }
        }
    }

    /// Drops hand-outs the latest sample (or, for static edges, the passing
    /// of the allowance) already accounts for.
    fn prune_in_flight(&mut self, now: Instant, config: &ModelConfig) {
        let reference = match &self.kind {
            Kind::Registered { last: Some(s), .. } => s.at,
            Kind::Registered { last: None, .. } => return,
            Kind::Static { .. } => now,
        };
        if let Some(cutoff) = reference.checked_sub(config.connect_allowance) {
            while self.handed_out.front().is_some_and(|t| *t <= cutoff) {
                self.handed_out.pop_front();
            }
        }
    }

    /// The score without the in-flight correction.
    fn base_load(&self) -> f64 {
        match &self.kind {
            Kind::Static { load } => *load,
            Kind::Registered {
                spec,
                last,
                cpu_util,
                egress_rate,
                ..
            } => {
                let connections = last.map_or(0.0, |s| s.connections) / spec.capacity.max(1) as f64;
                let egress = egress_rate / spec.egress_capacity.max(1) as f64;
                connections.max(*cpu_util).max(egress)
            }
        }
    }

    fn score(&self, config: &ModelConfig) -> f64 {
        self.base_load() + self.handed_out.len() as f64 / self.capacity(config)
    }
}

/// The registry and readings of every edge. See the [module docs](self).
#[derive(Debug)]
pub struct LoadModel {
    config: ModelConfig,
    /// Ordered by id, so candidate order (and thus a seeded pick) does not
    /// depend on registration order.
    edges: BTreeMap<String, Edge>,
}

impl LoadModel {
    pub fn new(config: ModelConfig) -> Self {
        LoadModel {
            config,
            edges: BTreeMap::new(),
        }
    }

    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    /// Adds a static edge (replacing any edge with its id).
    pub fn add_static(&mut self, edge: StaticEdge) {
        self.edges.insert(
            edge.id.clone(),
            Edge {
                id: edge.id,
                ws: edge.ws,
                quic: edge.quic,
                kind: Kind::Static { load: edge.load },
                handed_out: VecDeque::new(),
            },
        );
    }

    /// Registers (or re-registers) an edge. A re-registration starts afresh:
    /// the edge may have restarted with other capacities or an empty gauge.
    /// It counts as ready until a heartbeat says otherwise (an edge registers
    /// once it serves), and is picked once its first load sample arrives.
    pub fn on_register(&mut self, now: Instant, reg: Registration) -> Registered {
        let id = reg.id.clone();
        let edge = Edge {
            id: id.clone(),
            ws: reg.ws.clone(),
            quic: reg.quic.clone(),
            kind: Kind::Registered {
                spec: reg,
                registered_at: now,
                last_heartbeat: now,
                ready: true,
                draining: false,
                channels: HashMap::new(),
                last: None,
                cpu_util: 0.0,
                egress_rate: 0.0,
            },
            handed_out: VecDeque::new(),
        };
        match self.edges.insert(id, edge) {
            Some(_) => Registered::Replaced,
            None => Registered::Created,
        }
    }

    /// Records a heartbeat; `None` when the edge is not registered (never was,
    /// was ejected, or is static), so it should register again.
    pub fn on_heartbeat(&mut self, now: Instant, id: &str, hb: Heartbeat) -> Option<()> {
        let edge = self.edges.get_mut(id)?;
        let Kind::Registered {
            last_heartbeat,
            ready,
            draining,
            channels,
            ..
        } = &mut edge.kind
        else {
            return None;
        };
        *last_heartbeat = now;
        *ready = hb.ready;
        *draining = hb.draining;
        channels.clear();
        channels.extend(hb.channels);
        Some(())
    }

    /// Removes a registered edge; false when there was none (static edges
    /// cannot be removed over the API).
    pub fn on_deregister(&mut self, id: &str) -> bool {
        if matches!(
            self.edges.get(id).map(|e| &e.kind),
            Some(Kind::Registered { .. })
        ) {
            self.edges.remove(id);
            true
        } else {
            false
        }
    }

    /// Takes a load sample of edge `id`. CPU and egress rates come from the
    /// difference to the previous sample; a counter that went down (process
    /// restart) keeps the previous rate for one sample.
    pub fn on_sample(&mut self, id: &str, sample: Sample) -> SampleOutcome {
        let Some(edge) = self.edges.get_mut(id) else {
            return SampleOutcome::UnknownEdge;
        };
        let Kind::Registered {
            spec,
            last,
            cpu_util,
            egress_rate,
            ..
        } = &mut edge.kind
        else {
            return SampleOutcome::UnknownEdge;
        };
        if let Some(prev) = last {
            if sample.at <= prev.at {
                return SampleOutcome::Old;
            }
            let dt = (sample.at - prev.at).as_secs_f64();
            if let (Some(a), Some(b)) = (prev.cpu_seconds, sample.cpu_seconds)
                && b >= a
            {
                *cpu_util = (b - a) / dt / f64::from(spec.cores.max(1));
            }
            if let (Some(a), Some(b)) = (prev.egress_bytes, sample.egress_bytes)
                && b >= a
            {
                *egress_rate = (b - a) / dt;
            }
        }
        *last = Some(sample);
        edge.prune_in_flight(sample.at, &self.config);
        SampleOutcome::Accepted
    }

    /// Ejects every edge that is [`EdgeState::Stale`] at `now`; returns which and why.
    pub fn sweep(&mut self, now: Instant) -> Vec<(String, EjectReason)> {
        let config = &self.config;
        let mut ejected = Vec::new();
        for edge in self.edges.values() {
            if edge.state(now, config) != EdgeState::Stale {
                continue;
            }
            let reason = match &edge.kind {
                Kind::Registered { last_heartbeat, .. }
                    if now.saturating_duration_since(*last_heartbeat) > config.stale_after =>
                {
                    EjectReason::Heartbeat
                }
                _ => EjectReason::Readings,
            };
            ejected.push((edge.id.clone(), reason));
        }
        for (id, _) in &ejected {
            self.edges.remove(id);
        }
        ejected
    }

    /// The best `k` edges by power of two choices (see the [module
    /// docs](self)), drawing from `seed`; records the first as handed out.
    /// Empty when no edge is healthy.
    pub fn pick(&mut self, now: Instant, k: usize, seed: u64) -> Vec<Pick> {
        let config = &self.config;
        let mut pool: Vec<(f64, &mut Edge)> = self
            .edges
            .values_mut()
            .filter(|e| e.state(now, config) == EdgeState::Healthy)
            .map(|e| {
                e.prune_in_flight(now, config);
                (e.score(config), e)
            })
            .collect();
        let mut rng = SplitMix64::new(seed);
        let mut order = Vec::with_capacity(k.min(pool.len()));
        while order.len() < k && !pool.is_empty() {
            let n = pool.len();
            let chosen = if n == 1 {
                0
            } else {
                let a = rng.below(n);
                let b = (a + 1 + rng.below(n - 1)) % n;
                // Ties go to the lower id (pool is in id order), so the
                // answer depends on the seed and the inputs only.
                let (lo, hi) = (a.min(b), a.max(b));
                if pool[hi].0 < pool[lo].0 { hi } else { lo }
            };
            order.push(pool.remove(chosen));
        }
        let mut picks = Vec::with_capacity(order.len());
        for (i, (score, edge)) in order.into_iter().enumerate() {
            if i == 0 {
                if edge.handed_out.len() >= config.max_in_flight {
                    edge.handed_out.pop_front();
                }
                edge.handed_out.push_back(now);
            }
            picks.push(Pick {
                id: edge.id.clone(),
                ws: edge.ws.clone(),
                quic: edge.quic.clone(),
                load: score,
            });
        }
        picks
    }

    /// Current score of every edge (healthy or not), by id.
    pub fn scores(&self) -> Vec<(String, f64)> {
        self.edges
            .values()
            .map(|e| (e.id.clone(), e.score(&self.config)))
            .collect()
    }

    /// Number of edges in each state at `now`.
    pub fn state_counts(&self, now: Instant) -> HashMap<EdgeState, usize> {
        let mut counts: HashMap<EdgeState, usize> =
            EdgeState::ALL.iter().map(|s| (*s, 0)).collect();
        for edge in self.edges.values() {
            *counts.entry(edge.state(now, &self.config)).or_default() += 1;
        }
        counts
    }

    /// State of edge `id` at `now`, if registered or static.
    pub fn state_of(&self, now: Instant, id: &str) -> Option<EdgeState> {
        self.edges.get(id).map(|e| e.state(now, &self.config))
    }

    /// `(id, metrics_url)` of every self-registered edge: what to scrape.
    pub fn sample_targets(&self) -> Vec<(String, String)> {
        self.edges
            .values()
            .filter_map(|e| match &e.kind {
                Kind::Registered { spec, .. } => Some((e.id.clone(), spec.metrics_url.clone())),
                Kind::Static { .. } => None,
            })
            .collect()
    }

    /// Cluster-wide members of `channel`: the sum over the registered edges'
    /// latest heartbeats (an ejected or deregistered edge no longer counts).
    pub fn online(&self, channel: &str) -> u64 {
        self.edges
            .values()
            .filter_map(|e| match &e.kind {
                Kind::Registered { channels, .. } => channels.get(channel).copied(),
                Kind::Static { .. } => None,
            })
            .fold(0u64, u64::saturating_add)
    }

    /// Number of edges known (any state).
    pub fn len(&self) -> usize {
        self.edges.len()
    }

    pub fn is_empty(&self) -> bool {
        self.edges.is_empty()
    }
}

/// A tiny, fully specified PRNG (Steele, Lea & Flood's SplitMix64): the same
/// seed gives the same draws on every platform and in every version, which is
/// what makes two schedulers' answers comparable.
#[derive(Debug, Clone)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    pub fn new(seed: u64) -> Self {
        SplitMix64(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n > 0`), by multiply-shift (bias below 2^-32 for
    /// the small `n` used here).
    pub fn below(&mut self, n: usize) -> usize {
        ((u128::from(self.next_u64()) * n as u128) >> 64) as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reg(id: &str, capacity: u64) -> Registration {
        Registration {
            id: id.into(),
            ws: format!("ws://{id}:7070/v1/ws"),
            quic: format!("{id}:7070"),
            metrics_url: format!("http://{id}:7070/metrics"),
            capacity,
            egress_capacity: 1_000_000,
            cores: 2,
        }
    }

    fn sample(at: Instant, connections: f64) -> Sample {
        Sample {
            at,
            connections,
            cpu_seconds: None,
            egress_bytes: None,
        }
    }

    fn ready() -> Heartbeat {
        Heartbeat {
            ready: true,
            ..Heartbeat::default()
        }
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// A model with `edges` registered and sampled at `t0` with `connections`.
    fn model_with(t0: Instant, edges: &[(&str, u64, f64)]) -> LoadModel {
        let mut m = LoadModel::new(ModelConfig::default());
        for (id, cap, conns) in edges {
            m.on_register(t0, reg(id, *cap));
            assert_eq!(m.on_sample(id, sample(t0, *conns)), SampleOutcome::Accepted);
        }
        m
    }

    #[test]
    fn score_is_the_worst_of_connections_cpu_and_egress() {
        let t0 = Instant::now();
        let mut m = model_with(t0, &[("a", 1000, 100.0)]);
        let scores = |m: &LoadModel| m.scores()[0].1;
        assert!((scores(&m) - 0.1).abs() < 1e-9);
        // 1.2 CPU-seconds over 1 s on 2 cores: 60 % busy.
        let s1 = Sample {
            at: t0 + ms(1000),
            connections: 100.0,
            cpu_seconds: Some(10.0),
            egress_bytes: Some(0.0),
        };
        m.on_sample("a", s1);
        let s2 = Sample {
            at: t0 + ms(2000),
            cpu_seconds: Some(11.2),
            egress_bytes: Some(300_000.0),
            ..s1
        };
        m.on_sample("a", s2);
        assert!((scores(&m) - 0.6).abs() < 1e-9, "{}", scores(&m));
        // Egress 900 kB/s of 1 MB/s dominates.
        let s3 = Sample {
            at: t0 + ms(3000),
            cpu_seconds: Some(11.3),
            egress_bytes: Some(1_200_000.0),
            ..s1
        };
        m.on_sample("a", s3);
        assert!((scores(&m) - 0.9).abs() < 1e-9, "{}", scores(&m));
        // A counter reset (restart) keeps the previous rates.
        let s4 = Sample {
            at: t0 + ms(4000),
            cpu_seconds: Some(0.1),
            egress_bytes: Some(5.0),
            ..s1
        };
        m.on_sample("a", s4);
        assert!((scores(&m) - 0.9).abs() < 1e-9);
        // Same or older sample time: ignored.
        assert_eq!(
            m.on_sample("a", sample(t0 + ms(4000), 999.0)),
            SampleOutcome::Old
        );
        assert_eq!(
            m.on_sample("zz", sample(t0, 1.0)),
            SampleOutcome::UnknownEdge
        );
    }

    #[test]
    fn only_healthy_ready_non_draining_edges_are_picked() {
        let t0 = Instant::now();
        let mut m = model_with(t0, &[("a", 100, 0.0), ("b", 100, 0.0), ("c", 100, 0.0)]);
        m.on_register(t0, reg("warm", 100)); // no sample yet
        m.on_heartbeat(
            t0,
            "b",
            Heartbeat {
                ready: false,
                ..ready()
            },
        );
        m.on_heartbeat(
            t0,
            "c",
            Heartbeat {
                draining: true,
                ..ready()
            },
        );
        for seed in 0..50 {
            let picks = m.pick(t0, 3, seed);
            let ids: Vec<_> = picks.iter().map(|p| p.id.as_str()).collect();
            assert_eq!(ids, ["a"]);
        }
        let counts = m.state_counts(t0);
        assert_eq!(counts[&EdgeState::Healthy], 1);
        assert_eq!(counts[&EdgeState::Warming], 1);
        assert_eq!(counts[&EdgeState::NotReady], 1);
        assert_eq!(counts[&EdgeState::Draining], 1);
        assert!(m.on_deregister("a"));
        assert!(!m.on_deregister("a"));
        assert!(m.pick(t0, 3, 1).is_empty());
    }

    #[test]
    fn silent_or_unsampled_edges_are_ejected_after_three_seconds() {
        let t0 = Instant::now();
        let mut m = model_with(t0, &[("hb", 100, 0.0), ("scrape", 100, 0.0)]);
        m.on_register(t0, reg("never", 100));
        // "hb" keeps its samples but stops heartbeating; "scrape" heartbeats
        // but its samples stop.
        for i in 1..=6 {
            let t = t0 + ms(500 * i);
            m.on_sample("hb", sample(t, 0.0));
            m.on_heartbeat(t, "scrape", ready());
            m.on_heartbeat(t, "never", ready());
        }
        assert!(m.sweep(t0 + ms(3000)).is_empty());
        assert_eq!(m.state_of(t0 + ms(3001), "hb"), Some(EdgeState::Stale));
        let picks = m.pick(t0 + ms(3001), 3, 7);
        assert!(picks.is_empty(), "{picks:?}");
        let mut out = m.sweep(t0 + ms(3001));
        out.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(
            out,
            [
                ("hb".to_string(), EjectReason::Heartbeat),
                ("scrape".to_string(), EjectReason::Readings)
            ]
        );
        assert_eq!(m.on_heartbeat(t0 + ms(3100), "hb", ready()), None);
        // No first sample within the grace: ejected for its readings.
        m.on_heartbeat(t0 + ms(9000), "never", ready());
        assert!(m.sweep(t0 + ms(9000)).is_empty());
        assert_eq!(
            m.sweep(t0 + ms(10_001)),
            [("never".to_string(), EjectReason::Readings)]
        );
        assert!(m.is_empty());
    }

    #[test]
    fn in_flight_correction_spreads_a_burst_between_readings() {
        let t0 = Instant::now();
        // Equal edges, one reading, then 3,000 picks before the next reading.
        let mut m = model_with(
            t0,
            &[("a", 19_000, 0.0), ("b", 19_000, 0.0), ("c", 19_000, 0.0)],
        );
        let mut counts: HashMap<String, u32> = HashMap::new();
        for seed in 0..3000u64 {
            let p = m.pick(t0 + ms(10), 3, seed);
            *counts.entry(p[0].id.clone()).or_default() += 1;
        }
        let max = *counts.values().max().unwrap() as f64;
        assert!(max / 1000.0 <= 1.01, "{counts:?}");
    }

    #[test]
    fn in_flight_is_forgotten_once_a_sample_covers_it() {
        let t0 = Instant::now();
        let mut m = model_with(t0, &[("a", 100, 0.0)]);
        for _ in 0..10 {
            m.pick(t0 + ms(100), 1, 1);
        }
        assert!((m.scores()[0].1 - 0.1).abs() < 1e-9);
        // A sample taken 500 ms after the hand-outs: within the allowance,
        // they still count (the clients may be mid-handshake).
        m.on_sample("a", sample(t0 + ms(600), 4.0));
        assert!((m.scores()[0].1 - 0.14).abs() < 1e-9);
        // One taken after the allowance covers them.
        m.on_sample("a", sample(t0 + ms(2200), 10.0));
        assert!((m.scores()[0].1 - 0.1).abs() < 1e-9);
    }

    #[test]
    fn a_new_empty_edge_takes_the_next_clients() {
        let t0 = Instant::now();
        let mut m = model_with(t0, &[("old", 4000, 2000.0), ("new", 4000, 0.0)]);
        let mut to_new = 0;
        // 2,000 clients over 10 s; readings every second catch up with them.
        let mut connected_new = 0.0;
        for i in 0..2000u64 {
            let now = t0 + ms(5 * i + 1);
            if i % 200 == 0 && i > 0 {
                m.on_heartbeat(now, "old", ready());
                m.on_heartbeat(now, "new", ready());
                m.on_sample("old", sample(now, 2000.0 + (i - to_new) as f64));
                m.on_sample("new", sample(now, connected_new));
            }
            if m.pick(now, 2, i)[0].id == "new" {
                to_new += 1;
                connected_new += 1.0;
            }
        }
        // The in-flight allowance counts the last seconds' clients twice,
        // so the new edge stops a little short of the old one's 2,000.
        assert!(to_new >= 1800, "{to_new}");
    }

    #[test]
    fn same_inputs_same_seed_same_answer() {
        let t0 = Instant::now();
        let edges = [
            ("a", 1000, 10.0),
            ("b", 1000, 20.0),
            ("c", 1000, 5.0),
            ("d", 1000, 7.0),
        ];
        let mut one = model_with(t0, &edges);
        // Registration order must not matter.
        let mut rev: Vec<_> = edges.to_vec();
        rev.reverse();
        let mut two = model_with(t0, &rev);
        for seed in 0..200 {
            assert_eq!(one.pick(t0, 3, seed), two.pick(t0, 3, seed));
        }
        // The k answers are distinct, and the worst edge is never first.
        let p = one.pick(t0, 4, 9);
        let mut ids: Vec<_> = p.iter().map(|p| p.id.clone()).collect();
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), 4);
        for seed in 0..200 {
            assert_ne!(model_with(t0, &edges).pick(t0, 3, seed)[0].id, "b");
        }
    }

    #[test]
    fn online_sums_the_latest_report_of_each_registered_edge() {
        let t0 = Instant::now();
        let mut m = model_with(t0, &[("a", 100, 0.0), ("b", 100, 0.0)]);
        let hb = |pairs: &[(&str, u64)]| Heartbeat {
            channels: pairs.iter().map(|(c, n)| (c.to_string(), *n)).collect(),
            ..ready()
        };
        m.on_heartbeat(t0, "a", hb(&[("room:1", 300), ("room:2", 3)]));
        m.on_heartbeat(t0, "b", hb(&[("room:1", 600)]));
        assert_eq!(m.online("room:1"), 900);
        assert_eq!(m.online("room:2"), 3);
        assert_eq!(m.online("room:3"), 0);
        // The latest report replaces the previous one.
        m.on_heartbeat(t0, "b", hb(&[("room:1", 300)]));
        assert_eq!(m.online("room:1"), 600);
        assert!(m.on_deregister("a"));
        assert_eq!(m.online("room:1"), 300);
        assert_eq!(m.online("room:2"), 0);
    }

    #[test]
    fn static_edges_are_always_healthy_and_spread_by_in_flight() {
        let t0 = Instant::now();
        let mut m = LoadModel::new(ModelConfig {
            static_capacity: 100,
            ..ModelConfig::default()
        });
        for id in ["s1", "s2"] {
            m.add_static(StaticEdge {
                id: id.into(),
                ws: format!("ws://{id}/v1/ws"),
                quic: String::new(),
                load: 0.0,
            });
        }
        let mut first = HashMap::<String, u32>::new();
        for seed in 0..100 {
            *first.entry(m.pick(t0, 3, seed)[0].id.clone()).or_default() += 1;
        }
        assert_eq!(first.len(), 2);
        assert!(first.values().all(|n| (49..=51).contains(n)), "{first:?}");
        // The correction lapses after the allowance.
        let later = m.pick(t0 + Duration::from_secs(5), 2, 3);
        assert!(later.iter().all(|p| p.load < 0.02), "{later:?}");
        assert!(m.sweep(t0 + Duration::from_secs(60)).is_empty());
        assert!(m.sample_targets().is_empty());
        assert!(!m.on_deregister("s1"));
        assert_eq!(m.on_heartbeat(t0, "s1", ready()), None);
    }

    #[test]
    fn splitmix_is_stable_and_below_is_in_range() {
        let mut r = SplitMix64::new(1234567);
        // Reference values of SplitMix64 for this seed.
        assert_eq!(r.next_u64(), 6457827717110365317);
        assert_eq!(r.next_u64(), 3203168211198807973);
        let mut r = SplitMix64::new(0);
        for n in 1..50 {
            assert!(r.below(n) < n);
        }
    }
}
