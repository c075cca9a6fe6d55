//! The core's one timer table: every deadline of every state machine, by a
//! typed key, so that "what is due" is one lookup instead of a scan of
//! deadline fields.
//!
//! Each machine sets and cancels its own keys ([`Timer`]); [`Earth`]
//! (`super::Earth`) asks the table for the earliest deadline
//! (`poll_timeout`) and, in `handle_timeout`, pops every key that is due
//! and hands it to the machine that owns it. Setting a key that is already
//! set moves it.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;

use sky_proto::time::UnixTime;

use super::event::SocketId;

/// A registration's identity inside the core (stable while it lives).
pub(crate) type RegId = u64;
/// A lookup's identity inside the core.
pub(crate) type QueryId = u64;
/// A connection's identity inside the core.
pub(crate) type PeerId = u64;

/// Every deadline the core keeps, by the machine that owns it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Timer {
    /// Members: send the members request again, or ask the next node.
    Fetch,
    /// Members: a fetch a node's answer asked for may start now.
    Refetch,
    /// Registrations: the set of own addresses changes (an epoch begins,
    /// or a dual overlap ends).
    Boundary,
    /// Registrations: time for a cover registration.
    Cover,
    /// Registrations: with this owner, register again (no answer yet) or
    /// send the keepalive (registered).
    Owner(RegId, SocketAddr),
    /// Registrations: no owner has held the address for the give-up time.
    Silent(RegId),
    /// Registrations: a cover registration's hold is over.
    CoverEnd(RegId),
    /// Lookups: the lookup gives up.
    GiveUp(QueryId),
    /// Lookups: target `usize` asks its next owner.
    NextOwner(QueryId, usize),
    /// Peers: the handshake, or the datagram in flight, gives up (before
    /// anything else due for that peer at the same instant).
    PeerGiveUp(PeerId),
    /// Peers: send msg1, or the sealed datagram in flight, again.
    Resend(PeerId),
    /// Peers: look the friend up again while the handshake waits.
    Relookup(PeerId),
    /// Punch: probe towards an endpoint again (from that socket).
    Punch(SocketId, SocketAddr),
    /// Punch: a birthday campaign's next round, batch, or end.
    Campaign(u64),
    /// NAT: send an unanswered check again, or conclude.
    Check,
    /// Idle: test how long the NAT keeps an idle mapping, or judge it.
    Idle,
    /// The socket the client left at an epoch boundary may close now.
    Release(SocketId),
    /// Reset: send the pending address reset to friends again.
    Reset,
}

/// Deadlines by key, and keys by deadline.
#[derive(Default)]
pub(crate) struct Timers {
    at: BTreeMap<Timer, UnixTime>,
    due: BTreeSet<(UnixTime, Timer)>,
}

impl Timers {
    /// Sets (or moves) `timer` to `when`.
    pub(crate) fn set(&mut self, timer: Timer, when: UnixTime) {
        if let Some(old) = self.at.insert(timer, when) {
            self.due.remove(&(old, timer));
        }
        self.due.insert((when, timer));
    }

    /// Clears `timer` if it is set.
    pub(crate) fn cancel(&mut self, timer: Timer) {
        if let Some(old) = self.at.remove(&timer) {
            self.due.remove(&(old, timer));
        }
    }

    /// Clears every timer `matches` selects.
    pub(crate) fn cancel_where(&mut self, matches: impl Fn(&Timer) -> bool) {
        let gone: Vec<Timer> = self.at.keys().copied().filter(|t| matches(t)).collect();
        for t in gone {
            self.cancel(t);
        }
    }

    /// When `timer` is due, if it is set.
    pub(crate) fn get(&self, timer: Timer) -> Option<UnixTime> {
        self.at.get(&timer).copied()
    }

    /// The earliest deadline.
    pub(crate) fn next(&self) -> Option<UnixTime> {
        self.due.first().map(|(at, _)| *at)
    }

    /// Removes and returns the earliest timer due at `now`.
    pub(crate) fn pop_due(&mut self, now: UnixTime) -> Option<Timer> {
        let &(at, timer) = self.due.first()?;
        if at > now {
            return None;
        }
        self.due.remove(&(at, timer));
        self.at.remove(&timer);
        Some(timer)
    }
}

#[cfg(test)]
#[path = "tests/timers.rs"]
mod tests;
