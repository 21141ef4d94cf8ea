//! The reliable lane's rules: gifts (any channel) and group chat are never
//! lost and never shown twice. This folder is the sans-IO core — plain state
//! and decisions, time passed in, tested without sockets or sleeps; the tasks
//! that move frames live with the tasks they belong to. Walk one gift through:
//!
//! 1. **Order** ([`order`]) — the consumer hands events with `seq > 0` to the
//!    sequencer (`sequencer.rs`), which puts each channel's seqs in order:
//!    duplicates dropped, a seq that arrives ahead of a missing one held for
//!    `reorder_hold`, then the gap read from the store.
//! 2. **Ride the tick** — the sequencer frames each ordered event once
//!    ([`ring::ReliableFrame`]) into the channel's ring of recent events
//!    ([`ring::Ring`]) and hands it to the channel's batcher like a danmaku:
//!    it leaves inside the room's next tick frame, encoded and compressed once
//!    for every member, so a viewer gets one frame per tick whatever the gift
//!    rate.
//! 3. **Per member, O(1)** ([`lane::LaneShared`]) — pushing the tick
//!    (`channels.rs`) records the highest seq the member got; a member that
//!    could not take it (full queue) or that it would leave with a hole is
//!    marked missed and its connection's task is woken once.
//! 4. **The connection's side** ([`lane::LaneState`], driven by
//!    `connection/reliable.rs`) — acks (cumulative), `Resume`, a missed tick
//!    and a stalled client all become one catch-up: read the ring, else the
//!    store, from one position, send single `Reliable` frames on the
//!    never-dropping reply queue, paced by the client's acks. Group acks are
//!    written to the store as the user's offset.
//! 5. **Stalls** (`sweep.rs`) — one task per edge wakes only the connections
//!    whose acks did not move through two whole intervals
//!    ([`lane::LaneShared::sweep`]); they resend with backoff and, past
//!    `max_attempts` or `max_unacked`, close with `reliable_backlog` so the
//!    client resumes elsewhere.

pub mod lane;
pub mod order;
pub mod ring;
