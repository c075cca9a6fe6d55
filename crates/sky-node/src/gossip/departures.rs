//! Departures: a graceful leave told apart from a failure. foca marks a
//! member that left and one that failed alike (down); before it leaves, a
//! node disseminates a small custom broadcast naming its own identity,
//! signed with its identity key, and every node that hears it remembers
//! that identity as *left*. A member down whose identity left is reported
//! as [`super::MemberState::Left`], never as down: a planned stop pages
//! nobody. The signature makes a departure unforgeable, so a *down* about
//! a departed identity is believed without a check (`screen.rs`).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};

use foca::{BroadcastHandler, Invalidates};
use serde::{Deserialize, Serialize};

use super::NodeId;
use super::auth::{NodeKey, SIG_LEN, verify};

/// What a departure's signature covers, before the identity.
const DOMAIN: &[u8] = b"sky v1 gossip departure";

/// Identities remembered as left, at most; the oldest go first (foca
/// forgets down members after `remove_down_after` anyway).
const REMEMBERED: usize = 1024;

/// The broadcast: "this identity is leaving", signed by it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct Leaving {
    pub(super) id: NodeId,
    /// The signature, in two halves (serde derives arrays up to 32).
    sig: ([u8; 32], [u8; 32]),
}

impl Leaving {
    /// `id`'s departure, signed with its key.
    pub(super) fn signed(id: &NodeId, key: &NodeKey) -> Leaving {
        let sig = key.sign(&signed_bytes(id));
        let (a, b) = sig.split_at(SIG_LEN / 2);
        Leaving {
            id: *id,
            sig: (
                a.try_into().unwrap_or_default(),
                b.try_into().unwrap_or_default(),
            ),
        }
    }

    fn verifies(&self) -> bool {
        let mut sig = [0u8; SIG_LEN];
        sig[..32].copy_from_slice(&self.sig.0);
        sig[32..].copy_from_slice(&self.sig.1);
        verify(&self.id.key, &signed_bytes(&self.id), &sig)
    }

    pub(super) fn encode(&self) -> Vec<u8> {
        postcard::to_allocvec(self).unwrap_or_default()
    }
}

fn signed_bytes(id: &NodeId) -> Vec<u8> {
    let mut b = DOMAIN.to_vec();
    b.extend_from_slice(&postcard::to_allocvec(id).unwrap_or_default());
    b
}

impl Invalidates for Leaving {
    fn invalidates(&self, other: &Self) -> bool {
        self.id.gossip == other.id.gossip
    }
}

/// The identities that left, shared between foca's handler and the
/// [`super::Gossip`] that reads them.
#[derive(Clone, Debug, Default)]
pub(super) struct Departed(Arc<Mutex<HashMap<SocketAddr, NodeId>>>);

impl Departed {
    /// Whether `id` left (rather than failed).
    pub(super) fn left(&self, id: &NodeId) -> bool {
        let map = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        map.get(&id.gossip) == Some(id)
    }

    /// Records `l`; `true` if it is news.
    fn record(&self, l: Leaving) -> bool {
        let mut map = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if map.get(&l.id.gossip) == Some(&l.id) {
            return false;
        }
        if map.len() >= REMEMBERED
            && let Some(&any) = map.keys().next()
        {
            map.remove(&any);
        }
        map.insert(l.id.gossip, l.id);
        true
    }
}

/// The identities whose signed departures `tail` (a datagram's custom
/// broadcasts: items of a 16-bit length and the bytes) carries.
pub(super) fn departing(mut tail: &[u8]) -> Vec<NodeId> {
    let mut ids = Vec::new();
    while let Some((len, rest)) = tail.split_first_chunk::<2>() {
        let len = usize::from(u16::from_be_bytes(*len));
        let Some((item, rest)) = rest.split_at_checked(len) else {
            break;
        };
        if let Ok(l) = postcard::from_bytes::<Leaving>(item)
            && l.verifies()
        {
            ids.push(l.id);
        }
        tail = rest;
    }
    ids
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
        if !leaving.verifies() {
            return Err(BadBroadcast);
        }
        // A member is reported left only once foca holds it down: a
        // departure named for a live member changes nothing.
        Ok(self.0.record(leaving).then_some(leaving))
    }
}
