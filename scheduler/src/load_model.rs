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
//! `max(connections / capacity, cpu term, egress B/s / egress capacity)` from
//! the latest sample, plus `in-flight / capacity`. The CPU term is the
//! utilisation once it reaches [`ModelConfig::cpu_floor`] (half the cores by
//! default) and 0 below: CPU is there to keep an edge whose processor is the
//! bottleneck from taking more clients, not to rank lightly loaded edges, and
//! below the floor it is mostly the handshakes of the very clients a new edge
//! is being given (a new edge taking 100 connects/s burnt 20–30 % of a core
//! and, scored as is, looked busier than old edges holding real viewers).
//!
//! # In flight
//! Readings lag by up to a sampling interval, so each hand-out (the first edge
//! of an answer) is logged per edge and counted in that edge's score until a
//! sample shows it: a new sample shows as many hand-outs as connections it
//! gained since the previous one (the `accepted` counter's increase when the
//! edge exports one, else the growth of the connection gauge), oldest first,
//! among those made before the sample was taken. A hand-out no sample has
//! shown within [`ModelConfig::show_timeout`] is dropped: the client went to
//! another edge of its answer, gave up, or arrived while others left (a gauge
//! that gained 5 and lost 5 shows 0 arrivals; the counter does not have this
//! blind spot). So a burst counts once: in flight until the reading that
//! holds it, then in the reading only.
//!
//! # Picks
//! Least score over every edge that is healthy (fresh heartbeat and fresh
//! sample), ready and not draining, ties broken at random by the seed; the
//! k answers are the k lowest scores. The first answer is the one the client
//! is expected to use and the only one counted in flight.
//!
//! Power of two choices (what this replaced) never herds on stale readings,
//! but it caps how much a new edge can take: the edge is in the sampled pair
//! `1 − C(n−1,2)/C(n,2) = 2/n` of the time, so with five loaded edges a sixth,
//! empty one got 33 % of the next clients, where "fill the new machine" needs
//! all of them. Herding is what the in-flight correction prevents instead:
//! this process's own hand-outs raise the chosen edge's score at once, so a
//! burst between two readings spreads exactly as if the readings were live.
//! What a scheduler cannot see are other replicas' hand-outs; two replicas
//! each fill the emptiest edge with their own clients until the next reading,
//! which overshoots it by at most one sampling interval of one replica's
//! picks, and the reading after corrects it (see `docs/ARCHITECTURE.md`
//! for the measured shares).
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
    /// An edge whose last heartbeat is older than this is ejected (never
    /// picked, forgotten). Default 3 s.
    pub stale_after: Duration,
    /// An edge that heartbeats but whose load samples are older than this is
    /// ejected. Default 30 s. Longer than `stale_after` on purpose: in a flash
    /// crowd a busy edge answers its `/metrics` late while its heartbeats (on
    /// a runtime of their own, carrying its connection count) still arrive.
    /// Ejecting it then moved its share of the crowd onto the others, which
    /// got slow in turn (measured: 21 ejections in a 100k-viewer connect,
    /// scheduler picks p99 10 s). Its heartbeats' connection count stands in
    /// for the late samples meanwhile.
    pub readings_stale_after: Duration,
    /// How long a newly registered edge may go without its first load sample
    /// before it is ejected (a Prometheus server needs a discovery refresh and
    /// a scrape before it has one). Default 10 s.
    pub first_sample_grace: Duration,
    /// Longest a hand-out stays in flight without a sample showing it (see
    /// the [module docs](self)). Default 3 s: under a flash crowd handshakes
    /// take well over a second, and a client dropped from in flight before it
    /// shows up in a reading is a client the scores do not see. Static edges,
    /// which have no readings, count each hand-out this long.
    pub show_timeout: Duration,
    /// CPU utilisation (of the edge's declared cores) below which the CPU
    /// term scores 0. Default 0.5.
    pub cpu_floor: f64,
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
            readings_stale_after: Duration::from_secs(30),
            first_sample_grace: Duration::from_secs(10),
            show_timeout: Duration::from_secs(3),
            cpu_floor: 0.5,
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
    /// Counter of client connections the edge ever accepted; `None` when the
    /// edge does not export it (then the gauge's growth stands in for it).
    pub accepted: Option<f64>,
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
        /// Open connections, from the latest heartbeat.
        heartbeat_connections: u64,
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
                    Some(s) => overdue(s.at, config.readings_stale_after),
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

    /// Drops hand-outs no sample showed within the timeout.
    fn expire_in_flight(&mut self, now: Instant, config: &ModelConfig) {
        while self
            .handed_out
            .front()
            .is_some_and(|t| now.saturating_duration_since(*t) > config.show_timeout)
        {
            self.handed_out.pop_front();
        }
    }

    /// Drops the `shown` oldest hand-outs made before `at`: those a sample
    /// taken at `at` holds.
    fn show_in_flight(&mut self, at: Instant, shown: usize) {
        for _ in 0..shown {
            match self.handed_out.front() {
                Some(t) if *t <= at => {
                    self.handed_out.pop_front();
                }
                _ => break,
            }
        }
    }

    /// The score without the in-flight correction.
    fn base_load(&self, config: &ModelConfig) -> f64 {
        match &self.kind {
            Kind::Static { load } => *load,
            Kind::Registered {
                spec,
                last,
                heartbeat_connections,
                cpu_util,
                egress_rate,
                ..
            } => {
                // The fresher of the two counts is the larger while clients
                // arrive (a late sample, a heartbeat a second old).
                let connections = last
                    .map_or(0.0, |s| s.connections)
                    .max(*heartbeat_connections as f64)
                    / spec.capacity.max(1) as f64;
                let egress = egress_rate / spec.egress_capacity.max(1) as f64;
                let cpu = if *cpu_util >= config.cpu_floor {
                    *cpu_util
                } else {
                    0.0
                };
                connections.max(cpu).max(egress)
            }
        }
    }

    fn score(&self, config: &ModelConfig) -> f64 {
        self.base_load(config) + self.handed_out.len() as f64 / self.capacity(config)
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
                heartbeat_connections: 0,
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
        let stale_after = self.config.stale_after;
        let edge = self.edges.get_mut(id)?;
        let Kind::Registered {
            last_heartbeat,
            ready,
            draining,
            channels,
            heartbeat_connections,
            last,
            ..
        } = &mut edge.kind
        else {
            return None;
        };
        *last_heartbeat = now;
        *ready = hb.ready;
        *draining = hb.draining;
        // Only while the samples are late: with fresh samples the in-flight
        // correction already counts the clients a heartbeat would show, and
        // counting them twice sends a new edge fewer than its share.
        let samples_late = last.is_some_and(|s| now.saturating_duration_since(s.at) > stale_after);
        *heartbeat_connections = if samples_late { hb.connections } else { 0 };
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
            heartbeat_connections,
            cpu_util,
            egress_rate,
            ..
        } = &mut edge.kind
        else {
            return SampleOutcome::UnknownEdge;
        };
        let mut shown = sample.connections;
        if let Some(prev) = last {
            if sample.at <= prev.at {
                return SampleOutcome::Old;
            }
            shown = match (prev.accepted, sample.accepted) {
                (Some(a), Some(b)) if b >= a => b - a,
                _ => sample.connections - prev.connections,
            };
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
        *heartbeat_connections = 0;
        *last = Some(sample);
        // Bounded by the log's length; a NaN or negative growth shows nothing.
        let shown = if shown.is_finite() && shown > 0.0 {
            shown.round().min(edge.handed_out.len() as f64) as usize
        } else {
            0
        };
        edge.show_in_flight(sample.at, shown);
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

    /// The `k` least loaded healthy edges (see the [module docs](self)),
    /// ties broken by draws from `seed`; records the first as handed out.
    /// Empty when no edge is healthy.
    pub fn pick(&mut self, now: Instant, k: usize, seed: u64) -> Vec<Pick> {
        let config = &self.config;
        let mut rng = SplitMix64::new(seed);
        // One draw per healthy edge, in id order, so the answer depends on
        // the seed and the inputs only.
        let mut pool: Vec<(f64, u64, &mut Edge)> = self
            .edges
            .values_mut()
            .filter(|e| e.state(now, config) == EdgeState::Healthy)
            .map(|e| {
                e.expire_in_flight(now, config);
                (e.score(config), rng.next_u64(), e)
            })
            .collect();
        // The k best in O(n): select, then order those k.
        let order = |a: &(f64, u64, &mut Edge), b: &(f64, u64, &mut Edge)| {
            a.0.total_cmp(&b.0).then(a.1.cmp(&b.1))
        };
        if k == 0 {
            return Vec::new();
        }
        if pool.len() > k {
            pool.select_nth_unstable_by(k - 1, order);
            pool.truncate(k);
        }
        pool.sort_unstable_by(order);
        let mut picks = Vec::with_capacity(pool.len());
        for (i, (score, _, edge)) in pool.into_iter().enumerate() {
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
    use std::collections::HashSet;

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
            accepted: None,
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
            accepted: None,
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
        // CPU below the floor (0.8 CPU-seconds over 1 s on 2 cores: 40 %)
        // scores 0: 100 connections of 1,000 is the load.
        let s5 = Sample {
            at: t0 + ms(5000),
            cpu_seconds: Some(0.9),
            egress_bytes: Some(10.0),
            ..s1
        };
        m.on_sample("a", s5);
        assert!((scores(&m) - 0.1).abs() < 1e-9, "{}", scores(&m));
        // Same or older sample time: ignored.
        assert_eq!(
            m.on_sample("a", sample(t0 + ms(5000), 999.0)),
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
    fn silent_edges_are_ejected_after_three_seconds_unsampled_ones_later() {
        let t0 = Instant::now();
        let mut m = model_with(t0, &[("hb", 100, 0.0), ("scrape", 100, 0.0)]);
        m.on_register(t0, reg("never", 100));
        // "hb" keeps its samples but stops heartbeating; "scrape" heartbeats
        // but its samples stop (a busy edge answering /metrics late).
        for i in 1..=6 {
            let t = t0 + ms(500 * i);
            m.on_sample("hb", sample(t, 0.0));
            m.on_heartbeat(t, "scrape", ready());
            m.on_heartbeat(t, "never", ready());
        }
        assert!(m.sweep(t0 + ms(3000)).is_empty());
        assert_eq!(m.state_of(t0 + ms(3001), "hb"), Some(EdgeState::Stale));
        assert_eq!(
            m.state_of(t0 + ms(3001), "scrape"),
            Some(EdgeState::Healthy),
            "heartbeats carry it while its samples are late"
        );
        let picks = m.pick(t0 + ms(3001), 3, 7);
        let ids: Vec<_> = picks.iter().map(|p| p.id.as_str()).collect();
        assert_eq!(ids, ["scrape"]);
        assert_eq!(
            m.sweep(t0 + ms(3001)),
            [("hb".to_string(), EjectReason::Heartbeat)]
        );
        // Samples late for `readings_stale_after` (30 s): ejected for its readings.
        for i in 1..=58 {
            m.on_heartbeat(t0 + ms(3000 + 500 * i), "scrape", ready());
        }
        m.on_heartbeat(t0 + ms(30_400), "never", ready());
        let mut out = m.sweep(t0 + ms(31_001));
        out.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(
            out,
            [
                ("never".to_string(), EjectReason::Readings),
                ("scrape".to_string(), EjectReason::Readings)
            ]
        );
        assert!(m.is_empty());
    }

    #[test]
    fn a_heartbeat_count_stands_in_only_while_samples_are_late() {
        let t0 = Instant::now();
        let mut m = model_with(t0, &[("a", 100, 0.0), ("b", 100, 0.0)]);
        let busy = Heartbeat {
            connections: 80,
            ..ready()
        };
        // Samples fresh: the heartbeat's count is not added (the in-flight
        // correction counts those clients already), so both edges are picked.
        m.on_heartbeat(t0 + ms(500), "a", busy.clone());
        m.on_heartbeat(t0 + ms(500), "b", ready());
        let firsts: HashSet<String> = (0..20)
            .map(|seed| m.pick(t0 + ms(600), 1, seed)[0].id.clone())
            .collect();
        assert_eq!(firsts.len(), 2, "{firsts:?}");
        // "a"'s samples are late; its heartbeat says it took 80 of its 100.
        m.on_heartbeat(t0 + ms(3500), "a", busy);
        m.on_heartbeat(t0 + ms(3500), "b", ready());
        for seed in 0..20 {
            let picks = m.pick(t0 + ms(3600), 1, seed);
            assert_eq!(picks[0].id, "b", "seed {seed}");
        }
        // A fresh sample takes over again: the 80 no longer counts (what is
        // left of a's score is the in-flight hand-outs of the picks above).
        assert_eq!(
            m.on_sample("a", sample(t0 + ms(3700), 0.0)),
            SampleOutcome::Accepted
        );
        let score_of_a =
            |m: &LoadModel| m.scores().into_iter().find(|(id, _)| id == "a").unwrap().1;
        assert!(score_of_a(&m) < 0.5, "{}", score_of_a(&m));
    }

    #[test]
    fn unsampled_edges_are_ejected_after_the_first_sample_grace() {
        let t0 = Instant::now();
        let mut m = model_with(t0, &[]);
        m.on_register(t0, reg("never", 100));
        m.on_heartbeat(t0 + ms(3100), "never", ready());
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
    fn a_hand_out_counts_until_a_sample_shows_it_and_then_only_there() {
        let t0 = Instant::now();
        let mut m = model_with(t0, &[("a", 100, 0.0)]);
        let score = |m: &LoadModel| m.scores()[0].1;
        for _ in 0..10 {
            m.pick(t0 + ms(100), 1, 1);
        }
        assert!((score(&m) - 0.1).abs() < 1e-9);
        // A sample 50 ms later holds 4 of them: 4 in the reading, 6 in flight,
        // none counted twice.
        m.on_sample("a", sample(t0 + ms(150), 4.0));
        assert!((score(&m) - 0.1).abs() < 1e-9, "{}", score(&m));
        // Two more hand-outs after the next sample was taken; that sample
        // shows the other 6 and 2 clients of someone else's: the 2 newer
        // hand-outs stay in flight.
        m.pick(t0 + ms(300), 1, 1);
        m.pick(t0 + ms(300), 1, 1);
        m.on_sample("a", sample(t0 + ms(250), 12.0));
        assert!((score(&m) - 0.14).abs() < 1e-9, "{}", score(&m));
        m.on_sample("a", sample(t0 + ms(400), 14.0));
        assert!((score(&m) - 0.14).abs() < 1e-9, "{}", score(&m));
    }

    #[test]
    fn an_accepted_counter_shows_arrivals_that_departures_hide() {
        let t0 = Instant::now();
        let mut m = model_with(t0, &[("counter", 100, 50.0), ("gauge", 100, 50.0)]);
        m.on_sample(
            "counter",
            Sample {
                accepted: Some(50.0),
                ..sample(t0 + ms(1), 50.0)
            },
        );
        // 5 hand-outs each; all 5 arrive while 5 others leave.
        for seed in 0..10 {
            m.pick(t0 + ms(10), 1, seed);
        }
        let scores = |m: &LoadModel| m.scores().into_iter().collect::<HashMap<_, _>>();
        assert!((scores(&m)["gauge"] - 0.55).abs() < 1e-9);
        assert!((scores(&m)["counter"] - 0.55).abs() < 1e-9);
        m.on_sample("gauge", sample(t0 + ms(500), 50.0));
        m.on_sample(
            "counter",
            Sample {
                accepted: Some(55.0),
                ..sample(t0 + ms(500), 50.0)
            },
        );
        // The counter shows the 5; the gauge shows no growth, so its 5 stay
        // in flight until the show timeout.
        assert!((scores(&m)["counter"] - 0.5).abs() < 1e-9);
        assert!((scores(&m)["gauge"] - 0.55).abs() < 1e-9);
        for id in ["gauge", "counter"] {
            m.on_heartbeat(t0 + ms(3000), id, ready());
            m.on_sample(id, sample(t0 + ms(3000), 50.0));
        }
        m.pick(t0 + ms(3011), 2, 0);
        let after = scores(&m);
        // Expired; the one new hand-out went to one of the two.
        assert!(
            (after["gauge"] + after["counter"] - 1.01).abs() < 1e-9,
            "{after:?}"
        );
    }

    /// Clients arriving at simulated edges: each asks one of `models` in
    /// turn and connects to the first answer `connect_delay` later; every
    /// `interval` each model reads every edge's connection count.
    struct Sim {
        now: Instant,
        models: Vec<LoadModel>,
        /// (id, connections, arrival instants of clients on their way).
        edges: Vec<(String, f64, VecDeque<Instant>)>,
        connect_delay: Duration,
        interval: Duration,
        next_sample: Instant,
        asked: usize,
    }

    impl Sim {
        fn new(replicas: usize, edges: &[(&str, u64, f64)]) -> Sim {
            let now = Instant::now();
            Sim {
                now,
                models: (0..replicas).map(|_| model_with(now, edges)).collect(),
                edges: edges
                    .iter()
                    .map(|(id, _, c)| (id.to_string(), *c, VecDeque::new()))
                    .collect(),
                connect_delay: ms(30),
                interval: ms(1000),
                next_sample: now + ms(1000),
                asked: 0,
            }
        }

        fn advance(&mut self, to: Instant) {
            loop {
                let step = to.min(self.next_sample);
                for (_, conns, coming) in &mut self.edges {
                    while coming.front().is_some_and(|t| *t <= step) {
                        coming.pop_front();
                        *conns += 1.0;
                    }
                }
                self.now = step;
                if step < self.next_sample {
                    return;
                }
                for m in &mut self.models {
                    for (id, conns, _) in &self.edges {
                        m.on_heartbeat(step, id, ready());
                        m.on_sample(id, sample(step, *conns));
                    }
                }
                self.next_sample += self.interval;
            }
        }

        /// One client at `at` through the next replica; the edge it got.
        fn client(&mut self, at: Instant) -> String {
            self.advance(at);
            let replica = self.asked % self.models.len();
            let id = self.models[replica].pick(at, 3, self.asked as u64)[0]
                .id
                .clone();
            self.asked += 1;
            let edge = self.edges.iter_mut().find(|e| e.0 == id).unwrap();
            edge.2.push_back(at + self.connect_delay);
            id
        }

        /// Connections per edge once every client has arrived.
        fn settle(&mut self) -> Vec<f64> {
            self.advance(self.now + self.interval * 2);
            self.edges.iter().map(|e| e.1).collect()
        }
    }

    fn max_over_mean(counts: &[f64]) -> f64 {
        let mean = counts.iter().sum::<f64>() / counts.len() as f64;
        counts.iter().cloned().fold(0.0, f64::max) / mean
    }

    #[test]
    fn a_new_edge_among_ten_takes_the_next_clients_until_balanced() {
        // Nine edges at 150 of 1,000, a tenth empty: balance is 150 more
        // clients, all of them to the new edge. 100 clients/s, readings 1/s.
        let mut edges: Vec<(String, u64, f64)> =
            (0..9).map(|i| (format!("old{i}"), 1000, 150.0)).collect();
        edges.push(("new".into(), 1000, 0.0));
        let refs: Vec<(&str, u64, f64)> =
            edges.iter().map(|(i, c, n)| (i.as_str(), *c, *n)).collect();
        let mut sim = Sim::new(1, &refs);
        let t0 = sim.now;
        let mut to_new = 0;
        for i in 0..150u32 {
            if sim.client(t0 + ms(10) * i) == "new" {
                to_new += 1;
            }
        }
        assert!(to_new >= 120, "new edge took {to_new} of 150");
        // 1,000 more: stays balanced.
        for i in 150..1150u32 {
            sim.client(t0 + ms(10) * i);
        }
        let counts = sim.settle();
        println!(
            "ten edges: new took {to_new} of 150; then {counts:?}, max/mean {:.3}",
            max_over_mean(&counts)
        );
        assert!(max_over_mean(&counts) <= 1.10, "{counts:?}");
    }

    #[test]
    fn replicas_taking_clients_in_turn_stay_balanced() {
        // Each replica sees only its own hand-outs between readings. Two
        // loaded edges and a new one, then 2,000 clients at 200/s, asking 2,
        // 4 or 8 replicas in turn: each may overshoot by its own hand-outs of
        // one reading interval, and the next reading corrects it.
        for replicas in [2, 4, 8] {
            let mut sim = Sim::new(
                replicas,
                &[("a", 1500, 300.0), ("b", 1500, 300.0), ("new", 1500, 0.0)],
            );
            let t0 = sim.now;
            let mut to_new = 0;
            for i in 0..2000u32 {
                let id = sim.client(t0 + ms(5) * i);
                if i < 400 && id == "new" {
                    to_new += 1;
                }
            }
            let counts = sim.settle();
            println!(
                "{replicas} replicas: new took {to_new} of 400; after 2,000 {counts:?}, max/mean {:.3}",
                max_over_mean(&counts)
            );
            assert!(
                to_new >= 320,
                "{replicas} replicas: new took {to_new} of 400"
            );
            assert!(
                max_over_mean(&counts) <= 1.15,
                "{replicas} replicas: {counts:?}"
            );
        }
    }

    #[test]
    fn a_burst_of_a_thousand_picks_between_two_readings_spreads() {
        // Three edges, one slightly loaded; 1,000 picks within 100 ms.
        let mut sim = Sim::new(1, &[("a", 1500, 0.0), ("b", 1500, 0.0), ("c", 1500, 30.0)]);
        let t0 = sim.now;
        let before: Vec<f64> = sim.edges.iter().map(|e| e.1).collect();
        for i in 0..1000u32 {
            sim.client(t0 + Duration::from_micros(100) * i);
        }
        let after = sim.settle();
        let burst: Vec<f64> = after.iter().zip(&before).map(|(a, b)| a - b).collect();
        println!("burst: {burst:?}, max/mean {:.3}", max_over_mean(&burst));
        assert!(max_over_mean(&burst) <= 1.2, "{burst:?}");
        // And the totals even out: 1,030 over three.
        assert!(max_over_mean(&after) <= 1.01, "{after:?}");
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
        // The correction lapses after the show timeout.
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
