//! A client that survives losing its edge: [`ResilientClient`].
//!
//! It holds one [`Client`] connection to one of a list of edges. When the
//! connection ends (edge gone, `Error{code:"reliable_backlog"}`, `Redirect`,
//! nothing heard for [`ClientConfig::dead_edge_timeout`]) it reconnects — to
//! the next edge of the list first, cycling, with a backoff of
//! [`ClientConfig::reconnect_backoff_initial`] doubling up to
//! [`ClientConfig::reconnect_backoff_max`] between failed attempts (each pause
//! drawn between half and all of it, so a crowd does not retry in step) — and gives
//! up only after [`ClientConfig::max_reconnect_time`]. Once connected again it
//! re-joins every channel and sends `Resume{after_seq = delivered_upto}` for
//! each channel that has delivered something, so the edge replays what was
//! published meanwhile from the store.
//!
//! Two refusals end it instead: `token_revoked` and `user_blocked`
//! ([`crate::error::FINAL_CODES`]) would refuse every reconnect the same way,
//! so the `Error` event goes to the application and `next_event` then returns
//! `None` (a reconnect attempt refused with one of them gives up at once).
//!
//! Started with [`ResilientClient::connect_via_scheduler`], it asks the
//! scheduler (`GET /v1/edges`) for edges and *races* them: the first edge gets
//! a head start of [`RACE_STAGGER`], then the next joins, and so on; the first
//! completed handshake wins and the other attempts are dropped (closed). On
//! losing its edge it asks the scheduler again and races the fresh answer,
//! falling back to the edges it knows when the scheduler cannot answer; the
//! edges of a `Redirect` are raced first.
//!
//! Reliable events go through a [`ReliableTracker`]: the application sees
//! each seq of a channel once, in order, and the client acks cumulatively
//! once it has handed them out: at once when nothing more has arrived (but no
//! more often than the edge asked in `AuthOk`: in a hot room each ack is a
//! frame the edge reads), and while a backlog drains at most once per
//! [`ClientConfig::ack_interval`] and channel (a deferred ack goes out when the
//! interval ends, even while the application waits in `next_event`).

use crate::tls::ServerTrust;
use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::Duration;

use danmaku_proto::frame;
use danmaku_proto::pb::{self, client_frame::Body};
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::client::Client;
use crate::config::ClientConfig;
use crate::config::Transport;
use crate::error::{ClientError, is_final_code};
use crate::event::EdgeAddr;
use crate::event::ServerEvent;
use crate::ingest::IngestClient;
use crate::reliable::{ReliableTracker, Verdict};
use crate::scheduler::SchedulerClient;

/// Head start of each edge over the next in a race: long enough that the
/// scheduler's first choice wins even when a flash crowd slows handshakes to
/// hundreds of ms (a second edge started early would win by luck and undo the
/// scheduler's spreading), short enough that a dead first choice costs little
/// (a refused connect starts the next attempt at once).
pub const RACE_STAGGER: Duration = Duration::from_secs(1);

/// How long a gap may stay open after a `Resume` for it before the client asks
/// again. A `Resume` can be lost without the connection ending (refused
/// `rate_limited` by the edge's frame budget, or dropped from a full send
/// queue); the edge then only sends live seqs past the gap and would close the
/// connection only after its last retransmission (about a minute), all that
/// time holding every gift back from the application.
pub const GAP_RESUME_RETRY: Duration = Duration::from_secs(2);

/// Edges asked from the scheduler.
pub const SCHEDULER_PICKS: usize = 3;

/// Connects to the first of `edges` to complete its handshake. Attempt `i`
/// starts [`RACE_STAGGER`] after attempt `i − 1`, or at once when every
/// earlier attempt has failed. Returns the winner's index; the attempts still
/// running are dropped, which closes their sockets.
pub async fn race(
    edges: &[EdgeTarget],
    token: &str,
    config: &ClientConfig,
) -> Result<(usize, Client), ClientError> {
    use futures_util::stream::{FuturesUnordered, StreamExt};
    // One closure, so every attempt is the same future type.
    let open = |i: usize, edge: &EdgeTarget| {
        let edge = edge.clone();
        async move { (i, edge.open(token, config).await) }
    };
    let mut pending = FuturesUnordered::new();
    let mut next = 0;
    let mut last = ClientError::InvalidUrl {
        url: String::new(),
        reason: "no edge to connect to".into(),
    };
    loop {
        if pending.is_empty() {
            let Some(edge) = edges.get(next) else {
                return Err(last);
            };
            pending.push(open(next, edge));
            next += 1;
        }
        tokio::select! {
            Some((i, result)) = pending.next() => match result {
                Ok(client) => return Ok((i, client)),
                Err(e) => {
                    debug!(edge = %edges[i].base_url, error = %e, "edge did not answer");
                    last = e;
                }
            },
            _ = tokio::time::sleep(RACE_STAGGER), if next < edges.len() => {
                pending.push(open(next, &edges[next]));
                next += 1;
            }
        }
    }
}

/// One edge a [`ResilientClient`] may connect to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EdgeTarget {
    /// `http://host:port`: the WebSocket endpoint (`/v1/ws`) and, for QUIC,
    /// where the dev certificate is fetched (`/v1/cert`).
    pub base_url: String,
    pub transport: Transport,
    /// QUIC address; `None` means the host and port of `base_url` (the edge
    /// serves QUIC on the same port number over UDP).
    pub quic_addr: Option<SocketAddr>,
}

impl EdgeTarget {
    /// A WebSocket or QUIC target at `base_url` (QUIC on the same port).
    pub fn new(base_url: &str, transport: Transport) -> Self {
        EdgeTarget {
            base_url: base_url.trim_end_matches('/').to_owned(),
            transport,
            quic_addr: None,
        }
    }

    /// The target an edge's `Redirect` entry names, spoken over `transport`.
    pub fn from_edge_addr(addr: &EdgeAddr, transport: Transport) -> Option<Self> {
        let ws = addr.ws.trim();
        let base = if let Some(rest) = ws.strip_prefix("ws://") {
            format!("http://{rest}")
        } else if let Some(rest) = ws.strip_prefix("wss://") {
            format!("https://{rest}")
        } else if ws.starts_with("http://") || ws.starts_with("https://") {
            ws.to_owned()
        } else {
            return None;
        };
        let base = base.trim_end_matches('/');
        let base = base.strip_suffix("/v1/ws").unwrap_or(base);
        Some(EdgeTarget {
            base_url: base.to_owned(),
            transport,
            quic_addr: addr.quic.parse().ok(),
        })
    }

    async fn resolve_quic(&self) -> Result<SocketAddr, ClientError> {
        if let Some(a) = self.quic_addr {
            return Ok(a);
        }
        let bad = |reason: String| ClientError::InvalidUrl {
            url: self.base_url.clone(),
            reason,
        };
        let url = url::Url::parse(&self.base_url).map_err(|e| bad(e.to_string()))?;
        let host = url.host_str().ok_or_else(|| bad("no host".into()))?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let port = url
            .port_or_known_default()
            .ok_or_else(|| bad("no port".into()))?;
        tokio::net::lookup_host((host, port))
            .await?
            .next()
            .ok_or_else(|| bad("host resolves to no address".into()))
    }

    async fn open(&self, token: &str, config: &ClientConfig) -> Result<Client, ClientError> {
        match self.transport {
            Transport::Quic => {
                let addr = self.resolve_quic().await?;
                let mut config = config.clone();
                let cert = match &config.server_trust {
                    // Development: fetched on every connect (a restarted edge has a
                    // new self-signed certificate).
                    ServerTrust::FetchFromEdge => {
                        Some(IngestClient::new(&self.base_url).fetch_cert_der().await?)
                    }
                    _ => None,
                };
                // The certificate must name the host of the edge's URL.
                if config.tls_server_name.is_none()
                    && let Ok(url) = url::Url::parse(&self.base_url)
                    && let Some(host) = url.host_str()
                {
                    config.tls_server_name = Some(host.to_owned());
                }
                Client::connect_quic(addr, cert, token, config).await
            }
            ws => Client::connect_ws(&self.base_url, token, ws, config.clone()).await,
        }
    }
}

/// A client connection that reconnects across edges and keeps the reliable
/// lane exactly-once and in order. See the [module docs](self).
pub struct ResilientClient {
    edges: Vec<EdgeTarget>,
    token: String,
    config: ClientConfig,
    current: usize,
    client: Option<Client>,
    /// Channels joined, in join order; re-joined after a reconnect.
    joined: Vec<String>,
    tracker: ReliableTracker<pb::Event>,
    /// Events ready for the application, in order.
    pending: VecDeque<ServerEvent>,
    /// Per channel, the `after_seq` of the last `Resume` sent and when (repeated
    /// only after [`GAP_RESUME_RETRY`]).
    resumed: HashMap<String, (u64, Instant)>,
    reconnects: u64,
    /// Set when reconnecting failed for `max_reconnect_time`.
    gave_up: bool,
    /// Asked for fresh edges on every reconnect, when set.
    scheduler: Option<SchedulerClient>,
    /// Edges a `Redirect` offered, raced first on the next reconnect.
    offered: Vec<EdgeTarget>,
    /// Per channel, the last ack sent: when, and up to which seq.
    acks: HashMap<String, (Instant, u64)>,
    /// Channels owing an ack; `true` re-sends it even when the seq was acked
    /// (the edge retransmitted, so it may not have got the last one).
    acks_owed: HashMap<String, bool>,
    /// Channels whose `Joined` asked for a slower ack pace than `AuthOk`'s.
    channel_paces: HashMap<String, Duration>,
    /// When the current connection last delivered anything.
    heard_at: Instant,
}

/// What ended one wait in [`ResilientClient::next_event`].
enum Woke {
    Event(Option<ServerEvent>),
    Silent,
    AckDue,
}

impl std::fmt::Debug for ResilientClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResilientClient")
            .field("current_edge", &self.current_edge())
            .field("joined", &self.joined)
            .field("reconnects", &self.reconnects)
            .field("connected", &self.client.is_some())
            .finish()
    }
}

impl ResilientClient {
    /// Connects to the first edge of `edges` that answers (each is tried once,
    /// in order); fails with the last error when none does.
    pub async fn connect(
        edges: Vec<EdgeTarget>,
        token: String,
        config: ClientConfig,
    ) -> Result<Self, ClientError> {
        if edges.is_empty() {
            return Err(ClientError::InvalidUrl {
                url: String::new(),
                reason: "no edge to connect to".into(),
            });
        }
        let mut last = ClientError::Closed;
        for (i, edge) in edges.iter().enumerate() {
            match edge.open(&token, &config).await {
                Ok(client) => {
                    return Ok(ResilientClient {
                        current: i,
                        client: Some(client),
                        edges,
                        token,
                        config,
                        joined: Vec::new(),
                        tracker: ReliableTracker::new(),
                        pending: VecDeque::new(),
                        resumed: Default::default(),
                        reconnects: 0,
                        gave_up: false,
                        scheduler: None,
                        offered: Vec::new(),
                        acks: HashMap::new(),
                        acks_owed: HashMap::new(),
                        channel_paces: HashMap::new(),
                        heard_at: Instant::now(),
                    });
                }
                Err(e) => {
                    debug!(edge = %edge.base_url, error = %e, "edge did not answer");
                    last = e;
                }
            }
        }
        Err(last)
    }

    /// Asks the scheduler at `scheduler_url` for edges (`GET /v1/edges`) and
    /// [races](race) them over `transport`. Later reconnects ask it again.
    pub async fn connect_via_scheduler(
        scheduler_url: &str,
        transport: Transport,
        token: String,
        config: ClientConfig,
    ) -> Result<Self, ClientError> {
        let scheduler = SchedulerClient::new(scheduler_url);
        let edges = targets(&scheduler.edges(SCHEDULER_PICKS).await?, transport);
        let (current, client) = race(&edges, &token, &config).await?;
        Ok(ResilientClient {
            current,
            client: Some(client),
            edges,
            token,
            config,
            joined: Vec::new(),
            tracker: ReliableTracker::new(),
            pending: VecDeque::new(),
            resumed: Default::default(),
            reconnects: 0,
            gave_up: false,
            scheduler: Some(scheduler),
            offered: Vec::new(),
            acks: HashMap::new(),
            acks_owed: HashMap::new(),
            channel_paces: HashMap::new(),
            heard_at: Instant::now(),
        })
    }

    /// Joins `channel`; it is remembered and re-joined after every reconnect.
    /// The `Joined` answer comes through [`ResilientClient::next_event`]. When
    /// the connection is down the join is sent on the next one.
    pub async fn join(&mut self, channel: &str) -> Result<(), ClientError> {
        if !self.joined.iter().any(|c| c == channel) {
            self.joined.push(channel.to_owned());
        }
        self.send(Body::Join(pb::Join {
            channel: channel.to_owned(),
        }))
        .await
    }

    /// Joins `channel` and resumes it after `after_seq` (e.g. an offset the
    /// application stored): every seq ≤ `after_seq` counts as delivered, and
    /// the edge replays the rest.
    pub async fn join_from(&mut self, channel: &str, after_seq: u64) -> Result<(), ClientError> {
        self.tracker.set_delivered_upto(channel, after_seq);
        self.join(channel).await?;
        self.resumed
            .insert(channel.to_owned(), (after_seq, Instant::now()));
        self.send(Body::Resume(pb::Resume {
            channel: channel.to_owned(),
            after_seq,
        }))
        .await
    }

    /// Leaves `channel` and forgets it (no re-join, delivery state dropped).
    pub async fn leave(&mut self, channel: &str) -> Result<(), ClientError> {
        self.joined.retain(|c| c != channel);
        self.tracker.forget(channel);
        self.acks.remove(channel);
        self.acks_owed.remove(channel);
        self.channel_paces.remove(channel);
        self.resumed.remove(channel);
        self.send(Body::Leave(pb::Leave {
            channel: channel.to_owned(),
        }))
        .await
    }

    /// Sends on the current connection; a missing or closed connection is not
    /// an error (the frame's effect is restored by the re-join after reconnecting).
    async fn send(&mut self, body: Body) -> Result<(), ClientError> {
        if let Some(c) = &self.client {
            match c.send_raw(frame::client(body)).await {
                Ok(()) | Err(ClientError::Closed) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Queues a frame without waiting (so `next_event` stays cancel-safe);
    /// a full queue drops it, which the acks and retransmits of the reliable
    /// lane tolerate.
    fn try_send(&self, body: Body) {
        if let Some(c) = &self.client {
            let _ = c.try_send_raw(frame::client(body));
        }
    }

    /// Next event for the application. Reliable events come deduplicated and
    /// in seq order per channel, and are acked (cumulatively) once handed out.
    /// On connection loss it reconnects (see the [module docs](self)) and then
    /// yields [`ServerEvent::Reconnected`]. `None` once reconnecting failed for
    /// [`ClientConfig::max_reconnect_time`].
    pub async fn next_event(&mut self) -> Option<ServerEvent> {
        // Silence counts from the later of this call and the last event, so time
        // the application spent elsewhere is not taken for a dead edge.
        let called_at = Instant::now();
        loop {
            if let Some(ev) = self.pending.pop_front() {
                if let ServerEvent::Reliable { channel, .. } = &ev {
                    self.acks_owed.entry(channel.clone()).or_insert(false);
                    self.flush_acks(Instant::now());
                }
                return Some(ev);
            }
            if self.gave_up {
                return None;
            }
            let now = Instant::now();
            let silent_at = self
                .dead_edge_timeout()
                .map(|t| self.heard_at.max(called_at) + t);
            let ack_at = self.next_ack_at();
            let Some(client) = self.client.as_mut() else {
                let next = (self.current + 1) % self.edges.len();
                if !self.reconnect(next).await {
                    self.gave_up = true;
                }
                continue;
            };
            let woke = tokio::select! {
                biased;
                ev = client.next_event() => Woke::Event(ev),
                _ = tokio::time::sleep_until(silent_at.unwrap_or(now)), if silent_at.is_some() => {
                    Woke::Silent
                }
                _ = tokio::time::sleep_until(ack_at.unwrap_or(now)), if ack_at.is_some() => {
                    Woke::AckDue
                }
            };
            let ev = match woke {
                Woke::Event(ev) => {
                    self.heard_at = Instant::now();
                    ev
                }
                Woke::Silent => {
                    warn!(edge = %self.edges[self.current].base_url, "edge silent, reconnecting");
                    None
                }
                Woke::AckDue => {
                    self.flush_acks(Instant::now());
                    continue;
                }
            };
            match ev {
                None => {
                    info!(edge = %self.current_edge(), "connection lost");
                    self.client = None;
                }
                Some(ServerEvent::Reliable {
                    channel,
                    seq,
                    event,
                }) => self.on_reliable(channel, seq, event),
                // Revoked or blocked: reconnecting would be refused the same way.
                // Hand the error to the application, then end (`None`).
                Some(ServerEvent::Error { code, message }) if is_final_code(&code) => {
                    warn!(edge = %self.current_edge(), %code, %message, "refused for good; not reconnecting");
                    self.client = None;
                    self.gave_up = true;
                    return Some(ServerEvent::Error { code, message });
                }
                Some(ServerEvent::Error { code, message }) if code == "reliable_backlog" => {
                    info!(edge = %self.current_edge(), %message, "reliable backlog, reconnecting");
                    self.client = None;
                }
                // A join or resume the edge could not serve from its store leaves
                // the channel un-joined on this connection: nothing would ever
                // arrive. Reconnect (with the usual backoff) to join and resume again.
                Some(ServerEvent::Error { code, message })
                    if code == "store_unavailable" && !self.joined.is_empty() =>
                {
                    info!(edge = %self.current_edge(), %message, "store unavailable on join, reconnecting");
                    tokio::time::sleep(self.config.reconnect_backoff_initial).await;
                    self.client = None;
                }
                Some(ServerEvent::Redirect { edges }) => self.on_redirect(&edges),
                // Removed from the group or banned from the channel: not
                // re-joined after a reconnect (it would be refused).
                Some(ServerEvent::Left { channel, reason })
                    if reason == "removed" || reason == "banned" =>
                {
                    self.joined.retain(|c| *c != channel);
                    return Some(ServerEvent::Left { channel, reason });
                }
                Some(ServerEvent::Joined {
                    channel,
                    last_seq,
                    ack_interval_ms,
                }) => {
                    // A room owes this client every gift after `last_seq`: anchor
                    // there on a first join. A tick can reach the client before
                    // a gift the edge sends on its own (the one the tick's
                    // edge never saw live): anchored at the first seq it
                    // received, the client would take that gift for a repeat.
                    if channel.starts_with("room:") && !self.tracker.is_anchored(&channel) {
                        self.tracker.set_delivered_upto(&channel, last_seq);
                    }
                    // The channel's own pace (rooms), newest join's word.
                    if ack_interval_ms > 0 {
                        let pace = Duration::from_millis(u64::from(ack_interval_ms));
                        self.channel_paces.insert(channel.clone(), pace);
                    } else {
                        self.channel_paces.remove(&channel);
                    }
                    return Some(ServerEvent::Joined {
                        channel,
                        last_seq,
                        ack_interval_ms,
                    });
                }
                Some(other) => return Some(other),
            }
        }
    }

    fn on_reliable(&mut self, channel: String, seq: u64, event: pb::Event) {
        match self.tracker.offer(&channel, seq, event) {
            Verdict::Deliver => {
                while let Some((seq, event)) = self.tracker.pop_ready(&channel) {
                    self.pending.push_back(ServerEvent::Reliable {
                        channel: channel.clone(),
                        seq,
                        event,
                    });
                }
            }
            Verdict::Duplicate => {
                // The edge retransmits what it thinks unacked: ack again (once
                // per ack interval, however many it resends).
                if self.tracker.delivered_upto(&channel) > 0 {
                    self.acks_owed.insert(channel, true);
                    self.flush_acks(Instant::now());
                }
            }
            Verdict::Gap { after_seq } => {
                let now = Instant::now();
                let asked = self
                    .resumed
                    .get(&channel)
                    .is_some_and(|(s, at)| *s == after_seq && now < *at + GAP_RESUME_RETRY);
                if !asked {
                    debug!(%channel, after_seq, seq, "gap, resuming");
                    self.resumed.insert(channel.clone(), (after_seq, now));
                    self.try_send(Body::Resume(pb::Resume { channel, after_seq }));
                }
            }
        }
    }

    /// Moves to the edges a draining edge offers: they go into the list (if
    /// new) and the first becomes the next one tried.
    fn on_redirect(&mut self, offered: &[EdgeAddr]) {
        let transport = self.edges[self.current].transport;
        let mut first = None;
        self.offered = targets(offered, transport);
        for addr in offered {
            let Some(target) = EdgeTarget::from_edge_addr(addr, transport) else {
                continue;
            };
            let idx = match self
                .edges
                .iter()
                .position(|e| e.base_url == target.base_url)
            {
                Some(i) => i,
                None => {
                    self.edges.push(target);
                    self.edges.len() - 1
                }
            };
            first.get_or_insert(idx);
        }
        info!(edge = %self.current_edge(), "redirected");
        // reconnect() starts at current + 1.
        if let Some(idx) = first.filter(|i| *i != self.current) {
            self.current = (idx + self.edges.len() - 1) % self.edges.len();
        }
        self.client = None;
    }

    /// Sends the acks owed whose delivered seqs have all been handed to the
    /// application, at once when nothing more is waiting (the application is
    /// caught up: one ack per burst the edge wrote), else once the channel's
    /// ack interval has passed (a backlog drains with few acks).
    fn flush_acks(&mut self, now: Instant) {
        if self.acks_owed.is_empty() {
            return;
        }
        let mut sent = Vec::new();
        for (channel, &force) in &self.acks_owed {
            let pace = self.ack_pace(channel);
            let last = self.acks.get(channel);
            if last.is_some_and(|(at, _)| now < *at + pace)
                || self
                    .pending
                    .iter()
                    .any(|p| matches!(p, ServerEvent::Reliable { channel: c, .. } if c == channel))
            {
                continue;
            }
            let seq = self.tracker.delivered_upto(channel);
            if seq > 0 && (force || last.is_none_or(|(_, s)| *s < seq)) {
                sent.push((channel.clone(), seq));
            } else {
                sent.push((channel.clone(), 0));
            }
        }
        for (channel, seq) in sent {
            self.acks_owed.remove(&channel);
            if seq == 0 {
                continue;
            }
            self.acks.insert(channel.clone(), (now, seq));
            self.try_send(Body::Ack(pb::Ack { channel, seq }));
        }
    }

    /// The least time between two acks of `channel` now: the edge's pace
    /// (`AuthOk`, or the channel's slower one from `Joined`) always; a
    /// backlog still queued also waits for the client's own `ack_interval`,
    /// so that it drains with few acks.
    fn ack_pace(&self, channel: &str) -> Duration {
        let announced = self
            .client
            .as_ref()
            .map_or(Duration::ZERO, Client::ack_interval)
            .max(self.channel_paces.get(channel).copied().unwrap_or_default());
        let caught_up = self.client.as_ref().is_none_or(|c| !c.has_queued());
        if caught_up {
            announced
        } else {
            announced.max(self.config.ack_interval)
        }
    }

    /// When the next owed ack may go out (`None`: none owed).
    fn next_ack_at(&self) -> Option<Instant> {
        self.acks_owed
            .keys()
            .map(|c| match self.acks.get(c) {
                Some((at, _)) => *at + self.ack_pace(c),
                None => Instant::now(),
            })
            .min()
    }

    fn dead_edge_timeout(&self) -> Option<Duration> {
        self.config.dead_edge_timeout.or_else(|| {
            let hb = self.config.heartbeat_interval;
            (!hb.is_zero()).then(|| hb * 3)
        })
    }

    /// Connects again, starting with edge `start`, then re-joins and resumes.
    /// False when `max_reconnect_time` passed without success.
    async fn reconnect(&mut self, start: usize) -> bool {
        let began = Instant::now();
        let deadline = began + self.config.max_reconnect_time;
        let mut delay = self.config.reconnect_backoff_initial;
        let mut idx = start % self.edges.len();
        loop {
            let now = Instant::now();
            if now >= deadline {
                warn!(
                    after = ?began.elapsed(),
                    "giving up reconnecting"
                );
                return false;
            }
            let fresh = self.fresh_edges().await;
            let candidates = if fresh.is_empty() {
                vec![self.edges[idx].clone()]
            } else {
                fresh
            };
            // A token that expires within the refresh margin is replaced first.
            if let Some(refresh) = &self.config.token_refresh {
                let exp = danmaku_proto::token::unverified_exp(&self.token).unwrap_or(0);
                let margin = self.config.token_refresh_before.as_secs();
                if exp <= danmaku_proto::token::now_secs().saturating_add(margin)
                    && let Some(fresh) = refresh.fetch().await
                {
                    self.token = fresh;
                }
            }
            let attempt = async {
                let (won, client) = race(&candidates, &self.token, &self.config).await?;
                self.rejoin(&client).await?;
                Ok::<_, ClientError>((candidates[won].clone(), client))
            };
            match tokio::time::timeout_at(deadline, attempt).await {
                Ok(Ok((edge, client))) => {
                    info!(edge = %edge.base_url, after = ?began.elapsed(), "reconnected");
                    self.client = Some(client);
                    self.heard_at = Instant::now();
                    // A new connection: its first ack goes out at once.
                    self.acks.clear();
                    // rejoin() asked for these: a gap right after is the same one.
                    for channel in &self.joined {
                        if self.tracker.is_anchored(channel) {
                            let upto = self.tracker.delivered_upto(channel);
                            self.resumed.insert(channel.clone(), (upto, self.heard_at));
                        }
                    }
                    self.current = self.index_of(edge.clone());
                    self.reconnects += 1;
                    self.pending.push_back(ServerEvent::Reconnected {
                        edge: edge.base_url,
                    });
                    return true;
                }
                Ok(Err(e)) if e.is_final() => {
                    warn!(error = %e, "refused for good; not reconnecting");
                    return false;
                }
                Ok(Err(e)) => debug!(error = %e, "reconnect attempt failed"),
                Err(_) => {}
            }
            // Equal jitter (half fixed, half random): clients that lost the same
            // edge at the same moment do not come back in lockstep waves.
            let half = delay / 2;
            let jittered = half + half.mul_f64(rand::random::<f64>());
            let wait = jittered.min(deadline.saturating_duration_since(Instant::now()));
            tokio::time::sleep(wait).await;
            delay = (delay * 2).min(self.config.reconnect_backoff_max);
            idx = (idx + 1) % self.edges.len();
        }
    }

    /// What to race on a reconnect attempt: the edges a `Redirect` offered
    /// (once), else a fresh answer of the scheduler; empty without either.
    async fn fresh_edges(&mut self) -> Vec<EdgeTarget> {
        if !self.offered.is_empty() {
            return std::mem::take(&mut self.offered);
        }
        let Some(scheduler) = &self.scheduler else {
            return Vec::new();
        };
        let transport = self.edges[self.current].transport;
        match scheduler.edges(SCHEDULER_PICKS).await {
            Ok(addrs) => targets(&addrs, transport),
            Err(e) => {
                debug!(scheduler = %scheduler.base_url(), error = %e, "scheduler did not answer");
                Vec::new()
            }
        }
    }

    /// Index of `edge` in the known list, adding it if new.
    fn index_of(&mut self, edge: EdgeTarget) -> usize {
        match self.edges.iter().position(|e| e.base_url == edge.base_url) {
            Some(i) => i,
            None => {
                self.edges.push(edge);
                self.edges.len() - 1
            }
        }
    }

    /// Re-joins every channel on a fresh connection and resumes those that
    /// delivered something. A channel that never delivered relies on the
    /// edge's join push (the newest missed messages) instead.
    async fn rejoin(&self, client: &Client) -> Result<(), ClientError> {
        for channel in &self.joined {
            client.join(channel).await?;
            if self.tracker.is_anchored(channel) {
                client
                    .resume(channel, self.tracker.delivered_upto(channel))
                    .await?;
            }
        }
        Ok(())
    }

    /// Every seq ≤ this was delivered on `channel` (0 before the first one).
    pub fn delivered_upto(&self, channel: &str) -> u64 {
        self.tracker.delivered_upto(channel)
    }

    /// How many times the client connected again after losing its edge.
    pub fn reconnects(&self) -> u64 {
        self.reconnects
    }

    /// Base URL of the edge in use (or last used, while reconnecting).
    pub fn current_edge(&self) -> &str {
        &self.edges[self.current].base_url
    }

    /// The channels joined (re-joined after every reconnect).
    pub fn channels(&self) -> &[String] {
        &self.joined
    }

    /// The current connection, if up (e.g. to send raw frames or ping).
    pub fn client(&self) -> Option<&Client> {
        self.client.as_ref()
    }

    /// Drops the current connection now, as if the edge had gone away; the
    /// next `next_event` reconnects to the next edge.
    pub fn disconnect(&mut self) {
        self.client = None;
    }
}

/// The usable targets among `addrs`, in order.
fn targets(addrs: &[EdgeAddr], transport: Transport) -> Vec<EdgeTarget> {
    addrs
        .iter()
        .filter_map(|a| EdgeTarget::from_edge_addr(a, transport))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redirect_entry_to_target() {
        let addr = EdgeAddr {
            id: "e2".into(),
            ws: "ws://127.0.0.1:7071/v1/ws".into(),
            quic: "127.0.0.1:7071".into(),
            load: 0.2,
        };
        let t = EdgeTarget::from_edge_addr(&addr, Transport::Quic).unwrap();
        assert_eq!(t.base_url, "http://127.0.0.1:7071");
        assert_eq!(t.quic_addr, Some("127.0.0.1:7071".parse().unwrap()));
        assert_eq!(t.transport, Transport::Quic);
        let addr = EdgeAddr {
            ws: "wss://edge.example/v1/ws".into(),
            quic: "edge.example:443".into(),
            ..addr
        };
        let t = EdgeTarget::from_edge_addr(&addr, Transport::WsPb).unwrap();
        assert_eq!(
            (t.base_url.as_str(), t.quic_addr),
            ("https://edge.example", None)
        );
        let bad = EdgeAddr {
            ws: "tcp://x".into(),
            ..addr
        };
        assert!(EdgeTarget::from_edge_addr(&bad, Transport::WsPb).is_none());
    }

    #[tokio::test]
    async fn a_race_of_dead_edges_fails_without_waiting_for_the_stagger() {
        let edges = vec![
            EdgeTarget::new("http://127.0.0.1:9", Transport::WsPb),
            EdgeTarget::new("http://127.0.0.1:9", Transport::WsJson),
            EdgeTarget::new("http://127.0.0.1:9", Transport::WsPb),
        ];
        let started = Instant::now();
        let r = race(&edges, "t", &ClientConfig::default()).await;
        assert!(r.is_err());
        // Refused connects fail at once, so the next attempt starts at once.
        assert!(
            started.elapsed() < RACE_STAGGER * 2,
            "{:?}",
            started.elapsed()
        );
        assert!(race(&[], "t", &ClientConfig::default()).await.is_err());
    }

    #[tokio::test]
    async fn connect_fails_when_no_edge_answers() {
        let config = ClientConfig {
            connect_timeout: Duration::from_secs(2),
            ..ClientConfig::default()
        };
        // Port 9 on loopback: nothing listens, the connect is refused.
        let edges = vec![
            EdgeTarget::new("http://127.0.0.1:9", Transport::WsJson),
            EdgeTarget::new("http://127.0.0.1:9/", Transport::WsPb),
        ];
        assert!(
            ResilientClient::connect(edges, "t".into(), config.clone())
                .await
                .is_err()
        );
        assert!(
            ResilientClient::connect(Vec::new(), "t".into(), config)
                .await
                .is_err()
        );
    }
}
