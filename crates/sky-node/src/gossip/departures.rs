//! Departures: a graceful leave told apart from a failure. foca marks a
//! member that left and one that failed alike (down); before it leaves, a
//! node disseminates a small custom broadcast naming its own identity
//! (gossip endpoint and bump), and every node that hears it remembers that
//! identity as *left*. A member down whose identity left is reported as
//! [`super::MemberState::Left`], never as down: a planned stop pages nobody.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};

use foca::{BroadcastHandler, Invalidates};
use serde::{Deserialize, Serialize};

use super::NodeId;

/// Identities remembered as left, at most; the oldest go first (foca
/// forgets down members after `remove_down_after` anyway).
const REMEMBERED: usize = 1024;

/// The broadcast: "this identity is leaving".
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct Leaving {
    pub(super) gossip: SocketAddr,
    pub(super) bump: u16,
}

impl Leaving {
    pub(super) fn of(id: &NodeId) -> Leaving {
        Leaving {
            gossip: id.gossip,
            bump: id.bump,
        }
    }

    pub(super) fn encode(&self) -> Vec<u8> {
        postcard::to_allocvec(self).unwrap_or_default()
    }
}

impl Invalidates for Leaving {
    fn invalidates(&self, other: &Self) -> bool {
        self.gossip == other.gossip
    }
}

/// The identities that left, shared between foca's handler and the
/// [`super::Gossip`] that reads them.
#[derive(Clone, Debug, Default)]
pub(super) struct Departed(Arc<Mutex<HashMap<SocketAddr, u16>>>);

impl Departed {
    /// Whether `id` left (rather than failed).
    pub(super) fn left(&self, id: &NodeId) -> bool {
        let map = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        map.get(&id.gossip) == Some(&id.bump)
    }

    /// Records `l`; `true` if it is news.
    fn record(&self, l: Leaving) -> bool {
        let mut map = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if map.get(&l.gossip) == Some(&l.bump) {
            return false;
        }
        if map.len() >= REMEMBERED
            && let Some(&any) = map.keys().next()
        {
            map.remove(&any);
        }
        map.insert(l.gossip, l.bump);
        true
    }
}

/// Why a custom broadcast was refused.
#[derive(Debug)]
pub(super) struct BadBroadcast;

impl std::fmt::Display for BadBroadcast {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("undecodable custom broadcast")
    }
}

impl std::error::Error for BadBroadcast {}

/// foca's handler of our one custom broadcast.
pub(super) struct Departures(pub(super) Departed);

impl BroadcastHandler<NodeId> for Departures {
    type Key = Leaving;
    type Error = BadBroadcast;

    fn receive_item(
        &mut self,
        data: &[u8],
        sender: Option<&NodeId>,
    ) -> Result<Option<Leaving>, BadBroadcast> {
        let _ = sender; // relayed by anyone, like foca's own updates
        let leaving: Leaving = postcard::from_bytes(data).map_err(|_| BadBroadcast)?;
        // A member is reported left only once foca holds it down: a
        // departure named for a live member changes nothing.
        Ok(self.0.record(leaving).then_some(leaving))
    }
}
