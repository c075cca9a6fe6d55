//! A sky node's gossip identity.

use std::cmp::Ordering;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use foca::Identity;
use serde::{Deserialize, Serialize};
use sky_proto::wire;

#[cfg(doc)]
use super::NodeKey;
#[cfg(doc)]
use sky_proto::ring::Ring;

/// One sky node as gossip knows it.
///
/// Serialized with postcard inside foca's messages: two socket addresses
/// a `u16` and a public key, nothing else.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct NodeId {
    /// Where this node's gossip socket listens; one identity per gossip
    /// endpoint.
    pub gossip: SocketAddr,
    /// Where earth clients reach it: the endpoint that goes into the
    /// [`Ring`].
    pub service: SocketAddr,
    /// Orders the identities of one gossip endpoint; see
    /// [`NodeId::win_addr_conflict`].
    pub bump: u16,
    /// The node's public identity key (Ed25519): every datagram it sends
    /// is signed with its secret half ([`NodeKey`]).
    pub key: [u8; 32],
}

impl NodeId {
    pub fn new(gossip: SocketAddr, service: SocketAddr, bump: u16) -> NodeId {
        NodeId {
            gossip: wire::canonical(gossip),
            service: wire::canonical(service),
            bump,
            key: [0; 32],
        }
    }

    /// This identity with public key `key`.
    pub fn with_key(self, key: [u8; 32]) -> NodeId {
        NodeId { key, ..self }
    }

    /// The identity a seed is announced to before its real identity is
    /// known: its gossip endpoint, an unspecified service endpoint and bump
    /// zero. foca accepts an announce addressed to any identity with the
    /// receiver's gossip endpoint, and the receiver's answer carries its
    /// real identity. A placeholder never becomes a member; should one ever
    /// meet a real identity of the same endpoint, the real one wins (as the
    /// "well-known members" of foca's `bootstrap_with_wellknown` example do).
    pub fn seed(gossip: SocketAddr) -> NodeId {
        NodeId {
            gossip: wire::canonical(gossip),
            service: SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0),
            bump: 0,
            key: [0; 32],
        }
    }

    /// Whether this is a [`NodeId::seed`] placeholder.
    pub fn is_placeholder(&self) -> bool {
        self.service.ip().is_unspecified() && self.service.port() == 0
    }
}

/// Serial-number order of bumps (RFC 1982): `a` is newer than `b` when it
/// is less than half the `u16` space ahead, so the order survives wrapping.
/// Exactly half-way apart falls back to plain order, keeping the relation
/// antisymmetric.
fn bump_order(a: u16, b: u16) -> Ordering {
    match a.wrapping_sub(b) {
        0 => Ordering::Equal,
        d if d < 0x8000 => Ordering::Greater,
        d if d > 0x8000 => Ordering::Less,
        _ => a.cmp(&b),
    }
}

impl Identity for NodeId {
    type Addr = SocketAddr;

    /// The next bump: always wins over the identity it replaces.
    fn renew(&self) -> Option<Self> {
        Some(NodeId {
            bump: self.bump.wrapping_add(1),
            ..*self
        })
    }

    /// One identity per gossip endpoint.
    fn addr(&self) -> SocketAddr {
        self.gossip
    }

    /// A real identity beats a placeholder; otherwise the newer bump wins,
    /// and for equal bumps the larger service endpoint, so that every node
    /// decides the same way.
    fn win_addr_conflict(&self, adversary: &Self) -> bool {
        match (self.is_placeholder(), adversary.is_placeholder()) {
            (true, _) => false,
            (false, true) => true,
            (false, false) => match bump_order(self.bump, adversary.bump) {
                Ordering::Equal => endpoint_key(self.service) > endpoint_key(adversary.service),
                o => o == Ordering::Greater,
            },
        }
    }
}

fn endpoint_key(e: SocketAddr) -> ([u8; 16], u16) {
    let ip = match e.ip() {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    };
    (ip, e.port())
}
