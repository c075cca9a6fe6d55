//! Where each operation goes: the nodes of the target's sky (from its
//! members page) and, for each generator thread, its slice of the
//! population sorted by the nodes that own it.
//!
//! Against one node (a standalone node, the baseline, a STUN server)
//! everything goes to the target, as it always did. Against a sky of
//! several, the generator behaves like the earth clients it stands for:
//! an address is registered with each of its owners, looked up at its
//! first owner, and a ping goes to any member. A batch goes to one node,
//! so each operation is drawn among those that node answers: a
//! registration among the addresses it owns, an online lookup among those
//! it is first owner of, an offline lookup at a ring position it is first
//! owner of.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::ops::Range;
use std::time::Duration;

use sky_node::probe;
use sky_proto::ring::{MAX_REPLICAS, Ring};
use sky_proto::wire::VirtualAddr;

use super::BenchError;
use crate::rng::Rng;

/// How long the target may take to send its members page before it is
/// loaded alone: the baseline and STUN servers have none.
const MEMBERS_TIMEOUT: Duration = Duration::from_secs(1);

/// The nodes a run loads, and the ring that says which owns what.
pub(super) struct Targets {
    /// Node `n`'s service endpoint is `nodes[n]`; one node, the target,
    /// when it is not part of a sky of several.
    pub(super) nodes: Vec<SocketAddr>,
    /// With more than one node: the ring, each endpoint's node number, and
    /// the ring positions each node is first owner of.
    ring: Option<(Ring, HashMap<SocketAddr, usize>, Vec<Arcs>)>,
}

/// The nodes that own one address (node numbers), first owner first.
#[derive(Clone, Copy)]
pub(super) struct OwnerNodes {
    nodes: [usize; MAX_REPLICAS],
    len: usize,
}

impl OwnerNodes {
    pub(super) fn as_slice(&self) -> &[usize] {
        &self.nodes[..self.len]
    }
}

/// The ring arcs one node is first owner of: arc `i` holds the `lens[i]`
/// positions from `starts[i]` on (wrapping); `ends[i]` is the sum of the
/// lengths up to and including arc `i`.
#[derive(Default)]
struct Arcs {
    starts: Vec<u64>,
    ends: Vec<u128>,
}

impl Targets {
    /// The target alone.
    pub(super) fn alone(target: SocketAddr) -> Targets {
        Targets {
            nodes: vec![target],
            ring: None,
        }
    }

    /// The target's view of the sky: its members page. A node that sends
    /// none within a second, or a view of one member, is loaded alone.
    pub(super) fn discover(target: SocketAddr) -> Result<Targets, BenchError> {
        let view = probe::Client::new(target, MEMBERS_TIMEOUT)
            .ok()
            .and_then(|mut client| client.members().ok());
        match view {
            Some(view) if view.members.len() > 1 => {
                let ring = Ring::new(view.config, view.members);
                if ring.version() != view.version {
                    return Err(BenchError::Setup(format!(
                        "{target}'s members page says ring {:08x}, but its members make ring {:08x}",
                        view.version,
                        ring.version()
                    )));
                }
                Targets::of_ring(target, ring)
            }
            _ => Ok(Targets::alone(target)),
        }
    }

    /// Every member of `ring`, which must be of `target`'s address family
    /// (the generator's sockets are).
    pub(super) fn of_ring(target: SocketAddr, ring: Ring) -> Result<Targets, BenchError> {
        let nodes: Vec<SocketAddr> = ring.members().iter().map(|m| m.endpoint).collect();
        if let Some(other) = nodes.iter().find(|n| n.is_ipv4() != target.is_ipv4()) {
            return Err(BenchError::Setup(format!(
                "{target}'s sky has member {other} of the other address family"
            )));
        }
        let index: HashMap<SocketAddr, usize> =
            nodes.iter().enumerate().map(|(i, &e)| (e, i)).collect();
        let arcs = first_owner_arcs(&ring, &index, nodes.len());
        Ok(Targets {
            nodes,
            ring: Some((ring, index, arcs)),
        })
    }

    /// Whether the run loads a sky of several nodes.
    pub(super) fn is_sky(&self) -> bool {
        self.ring.is_some()
    }

    /// The numbers of the nodes that own `address`, first owner first.
    pub(super) fn owners(&self, address: &VirtualAddr) -> OwnerNodes {
        let mut owners = OwnerNodes {
            nodes: [0; MAX_REPLICAS],
            len: 1,
        };
        if let Some((ring, index, _)) = &self.ring {
            owners.len = 0;
            for endpoint in ring.owners(address).as_slice() {
                if let Some(&n) = index.get(&endpoint) {
                    owners.nodes[owners.len] = n;
                    owners.len += 1;
                }
            }
        }
        owners
    }

    /// An address nobody registered whose first owner is `node`.
    pub(super) fn offline_address(&self, rng: &mut Rng, node: usize) -> Option<VirtualAddr> {
        let mut target = [0u8; 16];
        let Some((_, _, arcs)) = &self.ring else {
            target[..8].copy_from_slice(&rng.next_u64().to_le_bytes());
            return Some(VirtualAddr(target));
        };
        let arcs = &arcs[node];
        let total = *arcs.ends.last()?;
        let r = (u128::from(rng.next_u64()) * total) >> 64;
        let i = arcs.ends.partition_point(|&end| end <= r);
        let before = if i == 0 { 0 } else { arcs.ends[i - 1] };
        let position = arcs.starts[i].wrapping_add((r - before) as u64);
        // An address's ring position is its first 8 bytes, big-endian.
        target[..8].copy_from_slice(&position.to_be_bytes());
        Some(VirtualAddr(target))
    }
}

/// For each node, the ring positions whose first owner it is.
fn first_owner_arcs(ring: &Ring, index: &HashMap<SocketAddr, usize>, nodes: usize) -> Vec<Arcs> {
    let mut arcs: Vec<Arcs> = (0..nodes).map(|_| Arcs::default()).collect();
    // The points' positions, ascending; equal ones (two endpoints on one
    // IP) are one point whose owners are those of its position.
    let mut points: Vec<u64> = ring.arcs().map(|(end, _)| end).collect();
    points.dedup();
    for (i, &end) in points.iter().enumerate() {
        // The arc (previous point, end] wraps past 2^64 for the first one;
        // a ring of one point is all 2^64 positions.
        let prev = points[(i + points.len() - 1) % points.len()];
        let len = if points.len() == 1 {
            1u128 << 64
        } else {
            u128::from(end.wrapping_sub(prev))
        };
        let first = ring.owners_of_position(end).first();
        let Some(&n) = first.and_then(|e| index.get(&e)) else {
            continue;
        };
        let a = &mut arcs[n];
        let total = a.ends.last().copied().unwrap_or(0);
        a.starts.push(prev.wrapping_add(1));
        a.ends.push(total + len);
    }
    arcs
}

/// One generator thread's share of the population: the addresses of
/// population members `range`, and with a sky, which of them each node
/// owns and is first owner of (indices into the slice).
pub(super) struct Slice {
    pub(super) range: Range<usize>,
    pub(super) addresses: Vec<VirtualAddr>,
    /// Registrations per member, at most ([`super::keys::Proofs::per_member`]).
    per_member: usize,
    /// The thread's sockets: member `j` lives on socket `j % sockets`.
    sockets: usize,
    /// With a sky, `owned[node * sockets + c]`: the registrations with
    /// `node` of the members that live on socket `c`, each as
    /// `j * per_member + k` (`node` is member `j`'s `k`-th owner).
    owned: Vec<Vec<u32>>,
    /// With a sky, `first[node]`: the members whose first owner is `node`.
    first: Vec<Vec<u32>>,
}

impl Slice {
    /// Population members `range`, whose addresses are `addresses` (empty
    /// in the modes that neither register nor look them up), on `sockets`
    /// sockets.
    pub(super) fn new(
        targets: &Targets,
        range: Range<usize>,
        addresses: Vec<VirtualAddr>,
        sockets: usize,
    ) -> Slice {
        let per_member = super::keys::Proofs::per_member(targets);
        let sockets = sockets.max(1);
        let mut owned = Vec::new();
        let mut first = Vec::new();
        if targets.is_sky() {
            owned = vec![Vec::new(); targets.nodes.len() * sockets];
            first = vec![Vec::new(); targets.nodes.len()];
            for (j, address) in addresses.iter().enumerate() {
                for (k, &n) in targets.owners(address).as_slice().iter().enumerate() {
                    owned[n * sockets + j % sockets].push((j * per_member + k) as u32);
                    if k == 0 {
                        first[n].push(j as u32);
                    }
                }
            }
        }
        Slice {
            range,
            addresses,
            per_member,
            sockets,
            owned,
            first,
        }
    }

    /// A registration with `node` of a population member that lives on
    /// socket `socket` (so that registering it again there only refreshes
    /// it): its slice index `j`, and `k` for `node`, its `k`-th owner.
    pub(super) fn owned_by(
        &self,
        rng: &mut Rng,
        node: usize,
        socket: usize,
    ) -> Option<(usize, usize)> {
        if self.owned.is_empty() {
            // One node: members socket, socket + sockets, ...
            let len = self.addresses.len();
            if socket >= len {
                return None;
            }
            let count = (len - 1 - socket) / self.sockets + 1;
            let j = socket + rng.below(count as u64) as usize * self.sockets;
            return Some((j, 0));
        }
        let among = &self.owned[node * self.sockets + socket];
        if among.is_empty() {
            return None;
        }
        let item = among[rng.below(among.len() as u64) as usize] as usize;
        Some((item / self.per_member, item % self.per_member))
    }

    /// A population member (slice index) whose first owner is `node`, for
    /// a lookup.
    pub(super) fn first_owned_by(&self, rng: &mut Rng, node: usize) -> Option<usize> {
        let len = if self.first.is_empty() {
            self.range.len()
        } else {
            self.first[node].len()
        };
        if len == 0 {
            return None;
        }
        let k = rng.below(len as u64) as usize;
        Some(if self.first.is_empty() {
            k
        } else {
            self.first[node][k] as usize
        })
    }
}

#[cfg(test)]
#[path = "../tests/targets.rs"]
mod tests;
