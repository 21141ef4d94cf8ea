//! The stall sweep: the one timer of the live reliable lane.
//!
//! Connections are not woken per tick and keep no resend timer of their own.
//! Instead, every `interval` this task walks the members of channels that
//! carry reliable events and asks each lane ([`LaneShared::sweep`]) whether
//! seqs stayed unacked through two whole intervals; only those connections are
//! woken ([`ConnEvent::Stalled`]) and decide whether to resend from the ring
//! (`connection/reliable.rs`). The cost is a few atomic loads per member per interval,
//! whatever the gift rate.
//!
//! [`LaneShared::sweep`]: crate::reliable::lane::LaneShared::sweep
//! [`ConnEvent::Stalled`]: crate::channels::ConnEvent::Stalled

use std::sync::Arc;
use std::time::Duration;

use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;

use crate::channels::Channels;
use crate::metrics::Metrics;

/// Sweeps `channels` every `interval` until `shutdown`.
pub(crate) async fn run(
    channels: Arc<Channels>,
    interval: Duration,
    metrics: Metrics,
    shutdown: CancellationToken,
) {
    let mut ticker = tokio::time::interval(interval.max(Duration::from_millis(10)));
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => return,
            _ = ticker.tick() => {}
        }
        let mut woken = 0;
        channels.for_each_channel(|ch| woken += ch.sweep_stalled());
        metrics.reliable_stalls.inc_by(woken);
    }
}
