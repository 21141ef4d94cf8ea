//! Direct writes: a batcher shard writes a tick frame straight into a member's
//! socket when nothing else is waiting for it, instead of queueing the frame
//! and waking the connection's writer task.
//!
//! Why: in a hot room every member gets one frame per tick, and the queue-and-
//! wake (an mpsc push, a task wake-up, a poll, the write) was the measured gap
//! between the edge and a bare writer that loops over its sockets. With the
//! socket writable (the usual case: a live viewer's kernel buffer is nearly
//! empty) the tick costs one `write` from the shard and no wake at all.
//!
//! Only plain-TCP WebSockets get a [`DirectSink`] (`ws.rs`): the upgraded
//! socket is taken back from hyper. TLS and QUIC keep the queue.
//!
//! The rule that keeps the byte stream whole and the ticks in order is one
//! atomic word per connection, [`DirectSink::state`]:
//!
//! * `DIRECT` — a shard is writing now; `WRITER` — the writer task is writing
//!   now. At most one of the two is ever set: whoever writes owns the socket.
//! * the low bits count tick frames handed to the writer and not yet written
//!   (queued, or the unwritten tail of a partial direct write). A shard writes
//!   directly only when the whole word is 0, so a tick never overtakes one
//!   queued before it.
//! * `CLOSED` — the writer has ended or the socket failed: never 0 again.
//!
//! A direct write that the socket takes only in part leaves the rest in
//! [`DirectSink::take_tail`], counted as pending, and the writer writes it before
//! anything else (replies included), so frames are never interleaved.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};

use bytes::Bytes;
use tokio::net::TcpStream;
use tokio::sync::Notify;

const DIRECT: u32 = 1 << 31;
const WRITER: u32 = 1 << 30;
const CLOSED: u32 = 1 << 29;
const PENDING: u32 = CLOSED - 1;

/// Yields [`DirectSink::lock_writer`] makes before it naps between tries.
const SPINS_BEFORE_NAP: u32 = 16;

/// What [`DirectSink::try_write`] did with a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Offer {
    /// The whole frame went into the socket.
    Written,
    /// The socket took these many bytes (maybe 0); the writer task writes the
    /// rest before anything else.
    Handed(usize),
    /// Something is queued or being written: queue the frame as usual
    /// (bracketed by [`DirectSink::queued`]).
    Busy,
    /// The connection is ending: skip it.
    Closed,
}

/// A WebSocket's TCP socket, shared by its reader, its writer task and the
/// batcher shards that push its ticks.
#[derive(Debug)]
pub(crate) struct DirectSink {
    stream: TcpStream,
    state: AtomicU32,
    /// The unwritten end of a partial direct write (at most one: while it
    /// waits, the pending count is not 0 and no shard writes directly).
    tail: Mutex<Option<Bytes>>,
    /// Wakes the writer task when a tail is left for it.
    tail_left: Notify,
}

impl DirectSink {
    pub fn new(stream: TcpStream) -> Self {
        DirectSink {
            stream,
            state: AtomicU32::new(0),
            tail: Mutex::new(None),
            tail_left: Notify::new(),
        }
    }

    pub fn stream(&self) -> &TcpStream {
        &self.stream
    }

    /// Writes `wire` (one complete frame) now if nothing is queued or being
    /// written for this connection and the socket takes it without waiting.
    pub fn try_write(&self, wire: &Bytes) -> Offer {
        if let Err(s) = self
            .state
            .compare_exchange(0, DIRECT, Ordering::Acquire, Ordering::Relaxed)
        {
            return if s & CLOSED != 0 {
                Offer::Closed
            } else {
                Offer::Busy
            };
        }
        let written = match self.stream.try_write(wire) {
            Ok(n) if n == wire.len() => {
                self.state.fetch_and(!DIRECT, Ordering::Release);
                return Offer::Written;
            }
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => 0,
            Err(_) => {
                // The peer is gone; the reader sees it and ends the connection.
                self.state.fetch_or(CLOSED, Ordering::AcqRel);
                self.state.fetch_and(!DIRECT, Ordering::Release);
                return Offer::Closed;
            }
        };
        *self.lock_tail() = Some(wire.slice(written..));
        // Clear DIRECT and count the tail as pending, in one step.
        self.state.fetch_sub(DIRECT - 1, Ordering::Release);
        self.tail_left.notify_one();
        Offer::Handed(written)
    }

    /// A tick frame is about to be queued for the writer (call before the
    /// queue's `try_send`; [`Self::unqueued`] if that fails).
    pub fn queued(&self) {
        self.state.fetch_add(1, Ordering::AcqRel);
    }

    /// The frame counted by [`Self::queued`] was not queued after all.
    pub fn unqueued(&self) {
        self.state.fetch_sub(1, Ordering::AcqRel);
    }

    /// Tick frames queued or left as a tail and not yet written.
    pub fn pending(&self) -> u32 {
        self.state.load(Ordering::Acquire) & PENDING
    }

    /// Resolves when a shard left a tail for the writer (maybe spuriously).
    pub async fn tail_left(&self) {
        self.tail_left.notified().await
    }

    /// Takes the socket for the writer task: waits out a shard's write in
    /// progress (one `write` call long; a few yields, then 1 ms naps in case
    /// the shard's thread was preempted mid-call on a busy host).
    pub async fn lock_writer(&self) {
        let mut waits = 0u32;
        loop {
            let s = self.state.load(Ordering::Relaxed);
            if s & DIRECT == 0 {
                if self
                    .state
                    .compare_exchange_weak(s, s | WRITER, Ordering::Acquire, Ordering::Relaxed)
                    .is_ok()
                {
                    return;
                }
                continue;
            }
            waits += 1;
            if waits <= SPINS_BEFORE_NAP {
                tokio::task::yield_now().await;
            } else {
                tokio::time::sleep(std::time::Duration::from_millis(1)).await;
            }
        }
    }

    /// Gives the socket back after the writer wrote `ticks` pending frames
    /// (queued ticks and tails).
    pub fn unlock_writer(&self, ticks: u32) {
        self.state.fetch_sub(WRITER + ticks, Ordering::Release);
    }

    /// The unwritten end of a partial direct write, if one waits. Call with
    /// the writer lock held; it counts as one pending frame.
    pub fn take_tail(&self) -> Option<Bytes> {
        self.lock_tail().take()
    }

    /// No more direct writes: the writer is closing or gone. The writer may
    /// still lock the socket (to write a tail and the close frame).
    pub fn close(&self) {
        self.state.fetch_or(CLOSED, Ordering::AcqRel);
    }

    fn lock_tail(&self) -> std::sync::MutexGuard<'_, Option<Bytes>> {
        self.tail.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;
    use tokio::net::TcpListener;

    async fn pair() -> (DirectSink, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (server, _) = l.accept().await.unwrap();
        (DirectSink::new(server), client)
    }

    #[tokio::test]
    async fn writes_directly_only_when_nothing_is_pending() {
        let (sink, mut peer) = pair().await;
        let frame = Bytes::from_static(b"tick-1");
        assert_eq!(sink.try_write(&frame), Offer::Written);
        // A queued tick blocks direct writes until the writer wrote it.
        sink.queued();
        assert_eq!(sink.try_write(&Bytes::from_static(b"x")), Offer::Busy);
        sink.lock_writer().await;
        assert_eq!(sink.try_write(&Bytes::from_static(b"x")), Offer::Busy);
        sink.unlock_writer(1);
        assert_eq!(sink.pending(), 0);
        assert_eq!(
            sink.try_write(&Bytes::from_static(b"tick-2")),
            Offer::Written
        );
        let mut got = [0u8; 12];
        peer.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"tick-1tick-2");
        // Closing stops the shards; the writer can still take the socket for
        // the close frame.
        sink.close();
        assert_eq!(sink.try_write(&frame), Offer::Closed);
        sink.lock_writer().await;
        assert_eq!(sink.try_write(&frame), Offer::Closed);
        sink.unlock_writer(0);
        assert_eq!(sink.try_write(&frame), Offer::Closed);
    }

    #[tokio::test]
    async fn the_writer_waits_out_a_shards_write_in_progress() {
        let (sink, _peer) = pair().await;
        let sink = std::sync::Arc::new(sink);
        // As if a shard were inside its `write` call.
        sink.state.store(DIRECT, Ordering::Release);
        let locker = tokio::spawn({
            let sink = std::sync::Arc::clone(&sink);
            async move { sink.lock_writer().await }
        });
        tokio::time::sleep(std::time::Duration::from_millis(30)).await;
        assert!(!locker.is_finished(), "the writer must not write meanwhile");
        sink.state.fetch_and(!DIRECT, Ordering::Release);
        tokio::time::timeout(std::time::Duration::from_secs(5), locker)
            .await
            .expect("the writer gets the socket once the shard is done")
            .unwrap();
        assert_eq!(sink.try_write(&Bytes::from_static(b"x")), Offer::Busy);
        sink.unlock_writer(0);
        assert_eq!(sink.try_write(&Bytes::from_static(b"x")), Offer::Written);
    }

    #[tokio::test]
    async fn a_full_socket_leaves_the_rest_as_a_tail_for_the_writer() {
        let (sink, mut peer) = pair().await;
        // Far more than the socket buffers hold while the peer does not read.
        let big = Bytes::from((0..8u32 << 20).map(|i| i as u8).collect::<Vec<u8>>());
        let written = match sink.try_write(&big) {
            Offer::Handed(n) => n,
            other => panic!("expected a partial write, got {other:?}"),
        };
        assert!(written < big.len());
        assert_eq!(sink.pending(), 1, "the tail counts as pending");
        assert_eq!(sink.try_write(&Bytes::from_static(b"x")), Offer::Busy);
        // The writer takes the socket and writes the tail; the peer reads the
        // frame whole and in order.
        let reader = tokio::spawn(async move {
            let mut all = vec![0u8; 8 << 20];
            peer.read_exact(&mut all).await.unwrap();
            all
        });
        sink.tail_left().await;
        sink.lock_writer().await;
        let tail = sink.take_tail().unwrap();
        assert_eq!(tail.len(), big.len() - written);
        let mut off = 0;
        while off < tail.len() {
            sink.stream().writable().await.unwrap();
            match sink.stream().try_write(&tail[off..]) {
                Ok(n) => off += n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => panic!("{e}"),
            }
        }
        sink.unlock_writer(1);
        assert_eq!(sink.pending(), 0);
        assert_eq!(reader.await.unwrap(), big.to_vec());
    }
}
