//! Readiness: whether this edge should get new clients. `/readyz` answers it
//! and every heartbeat carries it to the scheduler.

use serde::Serialize;

use crate::control_state::SCHEDULER_TIMEOUT;
use crate::node::Edge;

/// Why a process is not ready, as `/readyz` reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NotReady {
    /// `draining`, `bus_unavailable` or `store_unavailable`.
    pub reason: &'static str,
    pub message: String,
}

/// Not draining, bus healthy, store answering within [`SCHEDULER_TIMEOUT`].
pub(crate) async fn check(edge: &Edge) -> Result<(), NotReady> {
    if edge.is_draining() {
        return Err(NotReady {
            reason: "draining",
            message: "the edge is draining; connect elsewhere".into(),
        });
    }
    let bus = &edge.control.bus;
    if !bus.healthy() {
        return Err(NotReady {
            reason: "bus_unavailable",
            message: format!("the {} bus cannot deliver", bus.kind()),
        });
    }
    match tokio::time::timeout(SCHEDULER_TIMEOUT, edge.store.ping()).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(NotReady {
            reason: "store_unavailable",
            message: e.to_string(),
        }),
        Err(_) => Err(NotReady {
            reason: "store_unavailable",
            message: format!("store ping took over {SCHEDULER_TIMEOUT:?}"),
        }),
    }
}
