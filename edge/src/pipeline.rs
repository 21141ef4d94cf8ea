//! The delivery path's own thread: the bus consumer and the batcher shards run
//! on a single-threaded runtime of their own instead of among the connection
//! tasks.
//!
//! Why: a tick to a big room wakes every member's writer task at once. On the
//! shared runtime those ~17k tasks sit in the run queue ahead of the consumer,
//! which is woken from outside (the bus) and so queued last; after each
//! cooperative-budget yield it waits behind the whole fan-out again. While the
//! cores were short (a 100k-viewer room on two cores) the consumer read ~128
//! events per fan-out cycle, fell further behind every tick, and the bus hop
//! (`danmaku_edge_bus_hop_seconds`) grew from milliseconds to ten seconds and
//! more while the broker had answered at once. On its own thread the consumer
//! and the batchers get the CPU from the operating system as soon as they
//! wake, whatever the runtime's queue holds; what they hand the connections
//! (bounded queues, wake-ups) works across runtimes unchanged.
//!
//! The bus subscription is made on this thread too: a Kafka subscription
//! forwards what its poll thread reads through a task of its own, spawned on
//! the runtime that subscribed; on the main runtime that task queued behind
//! the writers just the same (measured: a bus hop of 4–5 s on average in the
//! 100k-viewer preset on a quiet box, with the consumer already here).
//!
//! The reliable fan-out (`sequencer.rs`) stays on the main runtime: it reads
//! the store, whose connections belong to the runtime that opened them.

use tokio::runtime::Handle;
use tokio_util::sync::CancellationToken;

use crate::error::EdgeError;

/// Starts the thread and returns its runtime's handle; the runtime (and every
/// task spawned on it) ends when `shutdown` is cancelled.
pub(crate) fn start(shutdown: CancellationToken) -> Result<Handle, EdgeError> {
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    std::thread::Builder::new()
        .name("edge-pipeline".into())
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = tx.send(Err(e));
                    return;
                }
            };
            let _ = tx.send(Ok(rt.handle().clone()));
            rt.block_on(shutdown.cancelled());
        })
        .map_err(EdgeError::Pipeline)?;
    match rx.recv() {
        Ok(Ok(handle)) => Ok(handle),
        Ok(Err(e)) => Err(EdgeError::Pipeline(e)),
        Err(_) => Err(EdgeError::Pipeline(std::io::Error::other(
            "the pipeline thread ended before its runtime started",
        ))),
    }
}
