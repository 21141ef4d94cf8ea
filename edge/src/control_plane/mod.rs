//! The edge's side of the control plane, one file per concern:
//!
//! * [`registration`]: with [`ControlConfig::scheduler`] set, a task registers
//!   the edge (`POST /v1/registry/edges`, an `app`-role token minted with the
//!   edge's own key), then heartbeats every ~1 s with readiness, connection and
//!   member counts and the biggest 1,000 channels. A `404 unknown_edge` (the
//!   scheduler restarted or ejected us) re-registers. The answer carries the
//!   cluster-wide count of each reported channel; [`online`] uses it.
//! * [`drain`] (`POST /admin/drain` or SIGTERM, see [`Edge::request_drain`](crate::node::Edge::request_drain)):
//!   the edge deregisters, refuses new connections (`503 draining` on the
//!   WebSocket upgrade, an `error{code:"draining"}` frame on QUIC), and every
//!   second redirects a wave of [`ControlConfig::drain_rate`] of its connections
//!   to fresh scheduler picks. A client that stays more than
//!   [`drain::REDIRECT_GRACE`] after its redirect is closed.
//!   [`Edge::drained`](crate::node::Edge::drained) resolves when no connection is left or at
//!   [`ControlConfig::drain_deadline`]; the process then exits.
//! * [`online`]: every [`ControlConfig::online_push_interval`] each channel
//!   with at least [`ControlConfig::online_push_min`] local members gets one
//!   `online` frame, built once and queued to every member like a batch (a full
//!   queue drops it: the next one comes in a few seconds).
//! * [`readiness`]: what `/readyz` and the heartbeats report.
//! * `scheduler.rs`: the scheduler's URLs and the `app` token of each call.
//!
//! The JSON bodies exchanged with the scheduler are
//! [`danmaku_proto::control`]'s, shared with the scheduler and the client.
//! The decisions (wave sizes, which channels a heartbeat reports) are pure
//! functions, unit-tested beside them; the tasks only do I/O around them.
//! The state these tasks share lives below them (`control_state.rs`, inside
//! [`Edge`]); `Edge`'s public methods for it are in `node.rs` and `lib.rs`.

pub mod drain;
pub mod online;
pub mod readiness;
pub mod registration;
mod scheduler;

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

pub use crate::config::ControlConfig;
pub use drain::{REDIRECT_GRACE, wave_size};
pub use readiness::NotReady;
pub use registration::{HEARTBEAT_MAX_CHANNELS, heartbeat_channels};

use crate::node::Edge;

/// Spawns the control plane's tasks (called by [`Edge::start`]).
pub(crate) fn spawn(edge: &Arc<Edge>, shutdown: CancellationToken) {
    tokio::spawn(online::online_loop(Arc::clone(edge), shutdown.clone()));
    tokio::spawn(drain::drain_task(Arc::clone(edge), shutdown.clone()));
    if edge.config.control.scheduler.is_some() {
        registration::spawn_heartbeats(Arc::clone(edge), shutdown);
    }
}
