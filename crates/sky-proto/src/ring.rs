//! The ring: which sky nodes own which virtual addresses (SPEC §4).
//!
//! Pure data and pure functions: no clock, socket or lock. Gossip builds a
//! new [`Ring`] whenever membership changes and publishes it as an
//! immutable snapshot (`sky_node`'s `SharedRing`); shards read the snapshot they hold
//! and never wait for gossip. Earth clients build the very same `Ring` from
//! a members page and compute owners themselves.
//!
//! **Positions.** A node's position is the first 8 bytes (big-endian) of a
//! domain-separated BLAKE3 hash of its IP address, the port ignored: one
//! position per IP, so an operator gets more of the ring only by holding
//! more addresses, and cannot pick where it lands. An address's position is
//! the first 8 bytes of the virtual address itself: virtual addresses are
//! already outputs of their own BLAKE3 domain (`sky v1 virtual address`), so
//! hashing them again would add a hash per datagram and no uniformity.
//!
//! **Owners.** The `k` owners of an address are the members that follow its
//! position on the ring (wrapping), skipping any member whose IP prefix
//! (`/prefix_v4`, `/prefix_v6`) is already among the owners, so one
//! operator's block of addresses holds at most one of an address's replicas.
//! With fewer distinct prefixes than `k`, every distinct prefix owns.
//!
//! **Version.** A ring's version is a 32-bit domain-separated hash of its
//! settings and sorted members: two nodes with the same view have the same
//! version, so "one view" is checkable from outside, and a client notices a
//! change by comparing four bytes. Zero is never a version (it means "no
//! ring known" on the wire).

use std::net::{IpAddr, SocketAddr};

use crate::wire::{self, VirtualAddr};

/// The most replicas a ring may be configured with.
pub const MAX_REPLICAS: usize = 8;

/// The most positions one IP may take.
pub const MAX_POSITIONS: u8 = 64;

/// How a ring chooses owners. Every node of a sky must use the same
/// settings; a members page carries them to clients.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RingConfig {
    /// Owners per address, `k` (1..=[`MAX_REPLICAS`]).
    pub replicas: u8,
    /// IPv4 prefix length (0..=32) that counts as one operator.
    pub prefix_v4: u8,
    /// IPv6 prefix length (0..=128) that counts as one operator.
    pub prefix_v6: u8,
    /// Positions each IP takes on the ring (1..=[`MAX_POSITIONS`]), all
    /// derived from the IP: more even load, same rule (see `docs/DHT.md`).
    pub positions: u8,
}

/// Positions per IP by default; `docs/DHT.md` has the measurement.
pub const DEFAULT_POSITIONS: u8 = 16;

impl Default for RingConfig {
    fn default() -> Self {
        RingConfig {
            replicas: 2,
            prefix_v4: 24,
            prefix_v6: 48,
            positions: DEFAULT_POSITIONS,
        }
    }
}

impl RingConfig {
    /// Checks the ranges; the message names the bad setting.
    pub fn validate(&self) -> Result<(), String> {
        if self.replicas == 0 || usize::from(self.replicas) > MAX_REPLICAS {
            return Err(format!(
                "replicas must be 1..={MAX_REPLICAS}, not {}",
                self.replicas
            ));
        }
        if self.prefix_v4 > 32 {
            return Err(format!("prefix_v4 must be 0..=32, not {}", self.prefix_v4));
        }
        if self.prefix_v6 > 128 {
            return Err(format!("prefix_v6 must be 0..=128, not {}", self.prefix_v6));
        }
        if self.positions == 0 || self.positions > MAX_POSITIONS {
            return Err(format!(
                "positions must be 1..={MAX_POSITIONS}, not {}",
                self.positions
            ));
        }
        Ok(())
    }

    /// The prefix of `ip` that counts as one operator, as 16 bytes
    /// (IPv4 mapped into IPv6 first, so families never share a prefix).
    pub fn prefix(&self, ip: IpAddr) -> [u8; 16] {
        let (bytes, bits) = match canonical_ip(ip) {
            IpAddr::V4(v4) => (v4.to_ipv6_mapped().octets(), 96 + u32::from(self.prefix_v4)),
            IpAddr::V6(v6) => (v6.octets(), u32::from(self.prefix_v6)),
        };
        let mask = if bits == 0 {
            0
        } else {
            u128::MAX << (128 - bits)
        };
        (u128::from_be_bytes(bytes) & mask).to_be_bytes()
    }
}

/// IPv4-mapped IPv6 addresses are the IPv4 address.
fn canonical_ip(ip: IpAddr) -> IpAddr {
    wire::canonical(SocketAddr::new(ip, 0)).ip()
}

/// The `index`th position of an IP on the ring: a hash of the IP (the port
/// ignored) and the index.
pub fn position_of_ip(ip: IpAddr, index: u8) -> u64 {
    let mut hasher = blake3::Hasher::new_derive_key("sky v1 ring position");
    match canonical_ip(ip) {
        IpAddr::V4(v4) => hasher.update(&v4.octets()),
        IpAddr::V6(v6) => hasher.update(&v6.octets()),
    };
    hasher.update(&[index]);
    first_u64(hasher.finalize().as_bytes())
}

/// An address's position on the ring: its first 8 bytes.
pub fn position_of_address(address: &VirtualAddr) -> u64 {
    first_u64(&address.0)
}

fn first_u64(bytes: &[u8]) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&bytes[..8]);
    u64::from_be_bytes(b)
}

/// One sky node on the ring: the endpoint earth clients send to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Member {
    /// The member's service endpoint (where clients send).
    pub endpoint: SocketAddr,
    /// Its first position (index 0), which orders the member list.
    pub position: u64,
    prefix: [u8; 16],
}

/// One point on the ring: a position and the member holding it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Point {
    position: u64,
    member: u32,
}

/// An immutable view of the sky: its members, and their points sorted by
/// position.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ring {
    config: RingConfig,
    members: Vec<Member>,
    points: Vec<Point>,
    version: u32,
    /// Distinct operators (prefixes) among the members: an address never
    /// has more owners, so the owner walk stops there instead of visiting
    /// every point of a ring with fewer operators than replicas.
    operators: usize,
}

/// Up to [`MAX_REPLICAS`] owners, without allocating.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Owners {
    endpoints: [Option<SocketAddr>; MAX_REPLICAS],
    len: usize,
}

impl Owners {
    /// The owners, first owner first.
    pub fn as_slice(&self) -> impl Iterator<Item = SocketAddr> + '_ {
        self.endpoints[..self.len].iter().flatten().copied()
    }

    /// How many owners (at most `k`).
    pub fn len(&self) -> usize {
        self.len
    }

    /// No owner at all (an empty ring).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether `endpoint` is one of the owners.
    pub fn contains(&self, endpoint: SocketAddr) -> bool {
        self.as_slice().any(|e| e == endpoint)
    }

    /// The first owner, if any.
    pub fn first(&self) -> Option<SocketAddr> {
        self.endpoints[0]
    }
}

impl Ring {
    /// A ring of these members (service endpoints). Duplicates are removed;
    /// two endpoints on one IP share that IP's position.
    pub fn new(config: RingConfig, endpoints: impl IntoIterator<Item = SocketAddr>) -> Ring {
        let mut members: Vec<Member> = endpoints
            .into_iter()
            .map(|e| {
                let endpoint = wire::canonical(e);
                Member {
                    endpoint,
                    position: position_of_ip(endpoint.ip(), 0),
                    prefix: config.prefix(endpoint.ip()),
                }
            })
            .collect();
        members.sort_by(|a, b| {
            (a.position, endpoint_key(a.endpoint)).cmp(&(b.position, endpoint_key(b.endpoint)))
        });
        members.dedup_by(|a, b| a.endpoint == b.endpoint);
        let positions = config.positions.clamp(1, MAX_POSITIONS);
        let mut points: Vec<Point> = members
            .iter()
            .enumerate()
            .flat_map(|(i, m)| {
                (0..positions).map(move |index| Point {
                    position: position_of_ip(m.endpoint.ip(), index),
                    member: i as u32,
                })
            })
            .collect();
        // Member index breaks ties: two endpoints on one IP share points.
        points.sort_by_key(|p| (p.position, p.member));
        let version = version_of(&config, &members);
        let mut prefixes: Vec<[u8; 16]> = members.iter().map(|m| m.prefix).collect();
        prefixes.sort_unstable();
        prefixes.dedup();
        Ring {
            config,
            members,
            points,
            version,
            operators: prefixes.len(),
        }
    }

    /// The settings the ring was built with.
    pub fn config(&self) -> RingConfig {
        self.config
    }

    /// Never zero.
    pub fn version(&self) -> u32 {
        self.version
    }

    /// Members in ring order.
    pub fn members(&self) -> &[Member] {
        &self.members
    }

    /// Members in the ring.
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// No members.
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// Whether `endpoint` is a member.
    pub fn contains(&self, endpoint: SocketAddr) -> bool {
        let endpoint = wire::canonical(endpoint);
        self.members.iter().any(|m| m.endpoint == endpoint)
    }

    /// The owners of the ring point `position`, in ring order: the first
    /// owner is the member at or after it.
    pub fn owners_of_position(&self, position: u64) -> Owners {
        let mut owners = Owners::default();
        let mut prefixes = [[0u8; 16]; MAX_REPLICAS];
        let n = self.points.len();
        if n == 0 {
            return owners;
        }
        let start = self.points.partition_point(|p| p.position < position);
        let want = usize::from(self.config.replicas)
            .min(MAX_REPLICAS)
            .min(self.operators);
        for i in 0..n {
            let m = &self.members[self.points[(start + i) % n].member as usize];
            if prefixes[..owners.len].contains(&m.prefix) {
                continue;
            }
            prefixes[owners.len] = m.prefix;
            owners.endpoints[owners.len] = Some(m.endpoint);
            owners.len += 1;
            if owners.len == want {
                break;
            }
        }
        owners
    }

    /// The owners of `address`.
    pub fn owners(&self, address: &VirtualAddr) -> Owners {
        self.owners_of_position(position_of_address(address))
    }

    /// Whether `me` is among the owners of `address`. A ring without `me`
    /// (a node that has not yet seen itself, which gossip never publishes)
    /// owns nothing.
    pub fn is_owner(&self, me: SocketAddr, address: &VirtualAddr) -> bool {
        self.owners(address).contains(wire::canonical(me))
    }

    /// The arcs of the ring: for each point, the position it ends at and
    /// the fraction of the 2^64 positions in (previous point, this point],
    /// whose owners are the owners of the end position. The fractions sum
    /// to 1. For `sky sim ring`.
    pub fn arcs(&self) -> impl Iterator<Item = (u64, f64)> + '_ {
        let n = self.points.len();
        (0..n).map(move |i| {
            let end = self.points[i].position;
            if n == 1 {
                return (end, 1.0);
            }
            let prev = self.points[(i + n - 1) % n].position;
            (end, end.wrapping_sub(prev) as f64 / 2f64.powi(64))
        })
    }

    /// The share of the ring each member is first owner of, in member
    /// order; the shares sum to 1 (for a non-empty ring).
    pub fn primary_shares(&self) -> Vec<f64> {
        let mut shares = vec![0.0; self.members.len()];
        for (i, (_, share)) in self.arcs().enumerate() {
            shares[self.points[i].member as usize] += share;
        }
        shares
    }
}

/// A sort key for endpoints that orders IPv4 before IPv6, then bytes, port.
fn endpoint_key(e: SocketAddr) -> ([u8; 16], u16) {
    let ip = match e.ip() {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    };
    (ip, e.port())
}

fn version_of(config: &RingConfig, members: &[Member]) -> u32 {
    let mut hasher = blake3::Hasher::new_derive_key("sky v1 ring version");
    hasher.update(&[
        config.replicas,
        config.prefix_v4,
        config.prefix_v6,
        config.positions,
    ]);
    for m in members {
        let (ip, port) = endpoint_key(m.endpoint);
        hasher.update(&ip);
        hasher.update(&port.to_be_bytes());
    }
    let mut b = [0u8; 4];
    b.copy_from_slice(&hasher.finalize().as_bytes()[..4]);
    u32::from_be_bytes(b).max(1)
}

#[cfg(test)]
#[path = "tests/ring.rs"]
mod tests;
