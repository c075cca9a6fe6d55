//! foca's runtime: its timers and datagrams, queued until the caller polls.

use std::cmp::{Ordering, Reverse};
use std::collections::{BinaryHeap, VecDeque};
use std::net::SocketAddr;
use std::time::Duration;

use foca::{Notification, Runtime, Timer};
use sky_proto::time::MonoTime;

use super::NodeId;

/// Datagrams queued for sending, at most; beyond it the oldest is dropped
/// (and counted as an error). The engine drains the queue after every
/// call, so this only bounds a caller that forgets to.
const MAX_QUEUED_TRANSMITS: usize = 1024;

/// A timer foca asked for, at an absolute time.
pub(super) struct Scheduled {
    pub(super) at: MonoTime,
    pub(super) seq: u64,
    pub(super) timer: Timer<NodeId>,
}

impl PartialEq for Scheduled {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}

impl Eq for Scheduled {}

impl PartialOrd for Scheduled {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Scheduled {
    /// By deadline, then in the order foca asked.
    fn cmp(&self, other: &Self) -> Ordering {
        (self.at, self.seq).cmp(&(other.at, other.seq))
    }
}

/// foca's [`Runtime`]: queues what foca asks for until the caller polls.
pub(super) struct Io {
    /// The time of the call in progress; `submit_after` is relative to it.
    pub(super) now: MonoTime,
    pub(super) seq: u64,
    pub(super) timers: BinaryHeap<Reverse<Scheduled>>,
    pub(super) transmits: VecDeque<(SocketAddr, Vec<u8>)>,
    /// Set by every membership notification; the ring is rebuilt then.
    pub(super) membership_changed: bool,
    pub(super) dropped_transmits: u64,
}

impl Runtime<NodeId> for Io {
    fn notify(&mut self, _notification: Notification<'_, NodeId>) {
        self.membership_changed = true;
    }

    fn send_to(&mut self, to: NodeId, data: &[u8]) {
        if self.transmits.len() >= MAX_QUEUED_TRANSMITS {
            self.transmits.pop_front();
            self.dropped_transmits += 1;
        }
        self.transmits.push_back((to.gossip, data.to_vec()));
    }

    fn submit_after(&mut self, timer: Timer<NodeId>, after: Duration) {
        self.seq += 1;
        self.timers.push(Reverse(Scheduled {
            at: self.now + after,
            seq: self.seq,
            timer,
        }));
    }
}
