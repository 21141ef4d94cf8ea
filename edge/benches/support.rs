//! What both fan-out benches build the same way: the registry as the edge
//! builds it, and members whose wake queues are held but never read (a bench
//! never misses a tick).

use std::sync::Arc;

use danmaku_edge::channels::{ChannelGauges, Channels, ConnEvent, Member, Outbound, Waker};
use danmaku_edge::metrics::Metrics;
use danmaku_edge::reliable::lane::LaneShared;
use danmaku_edge::transport::Transport;
use tokio::sync::mpsc;

/// The registry, with its gauges from `metrics`.
pub fn channels(metrics: &Metrics) -> Channels {
    Channels::new(ChannelGauges::from(metrics), 1024)
}

/// A member pushing into `tx`; `wakes` keeps its wake queue open.
pub fn member(
    transport: Transport,
    tx: mpsc::Sender<Outbound>,
    wakes: &mut Vec<mpsc::Receiver<ConnEvent>>,
) -> Member {
    let (wake, rx, _overflow) = Waker::channel(8);
    wakes.push(rx);
    Member::new(transport, tx, wake, Arc::new(LaneShared::new(0)))
}
