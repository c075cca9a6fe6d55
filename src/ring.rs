//! The ring: which sky nodes own which virtual addresses (SPEC §4).
//!
//! Pure data and pure functions: no clock, socket or lock. Gossip builds a
//! new [`Ring`] whenever membership changes and publishes it as an
//! immutable snapshot ([`SharedRing`]); shards read the snapshot they hold
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
use std::sync::Arc;

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
}

/// Up to [`MAX_REPLICAS`] owners, without allocating.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Owners {
    endpoints: [Option<SocketAddr>; MAX_REPLICAS],
    len: usize,
}

impl Owners {
    pub fn as_slice(&self) -> impl Iterator<Item = SocketAddr> + '_ {
        self.endpoints[..self.len].iter().flatten().copied()
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

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
        Ring {
            config,
            members,
            points,
            version,
        }
    }

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

    pub fn len(&self) -> usize {
        self.members.len()
    }

    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

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
        let want = usize::from(self.config.replicas).min(MAX_REPLICAS);
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

/// The ring snapshot a node's shards read and its gossip thread replaces.
///
/// `ArcSwap::load` is lock-free and wait-free for readers; shards keep an
/// `arc_swap::Cache`, which costs one atomic load per datagram while the
/// ring is unchanged.
pub type SharedRing = Arc<arc_swap::ArcSwap<Ring>>;

/// A shared ring holding `ring`.
pub fn shared(ring: Ring) -> SharedRing {
    Arc::new(arc_swap::ArcSwap::from_pointee(ring))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ep(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn loopback(n: u8) -> SocketAddr {
        SocketAddr::new(IpAddr::from([127, 0, 0, n]), 7700)
    }

    fn slash32() -> RingConfig {
        RingConfig {
            prefix_v4: 32,
            ..RingConfig::default()
        }
    }

    #[test]
    fn position_ignores_the_port_and_ipv4_mapping() {
        let a = position_of_ip(ep("192.0.2.1:1").ip(), 0);
        assert_eq!(a, position_of_ip(ep("[::ffff:192.0.2.1]:2").ip(), 0));
        assert_ne!(a, position_of_ip(ep("192.0.2.2:1").ip(), 0));
        assert_ne!(a, position_of_ip(ep("192.0.2.1:1").ip(), 1));
    }

    #[test]
    fn owners_follow_the_address_and_skip_shared_prefixes() {
        let members: Vec<SocketAddr> = (1..=5).map(loopback).collect();
        // /32: every loopback address is its own operator.
        let ring = Ring::new(slash32(), members.clone());
        for i in 0..200u8 {
            let addr = VirtualAddr([i; 16]);
            let owners = ring.owners(&addr);
            assert_eq!(owners.len(), 2);
            // The first owner holds the first point at or after the address.
            let pos = position_of_address(&addr);
            let points: Vec<(u64, SocketAddr)> = ring
                .members()
                .iter()
                .flat_map(|m| (0..16).map(|i| (position_of_ip(m.endpoint.ip(), i), m.endpoint)))
                .collect();
            let next = points.iter().filter(|p| p.0 >= pos).min_by_key(|p| p.0);
            let expected = next.or_else(|| points.iter().min_by_key(|p| p.0)).unwrap();
            assert_eq!(owners.first(), Some(expected.1));
        }
        // /24: all of 127.0.0.x is one operator, so one owner only.
        let ring24 = Ring::new(RingConfig::default(), members);
        assert_eq!(ring24.owners(&VirtualAddr([7; 16])).len(), 1);
    }

    #[test]
    fn mixed_prefixes_give_one_owner_per_prefix() {
        let members = [
            ep("192.0.2.1:7700"),
            ep("192.0.2.2:7700"),
            ep("192.0.2.3:7700"),
            ep("198.51.100.1:7700"),
            ep("[2001:db8::1]:7700"),
            ep("[2001:db8::2]:7700"),
        ];
        let config = RingConfig {
            replicas: 3,
            ..RingConfig::default()
        };
        let ring = Ring::new(config, members);
        for i in 0..=255u8 {
            let owners = ring.owners(&VirtualAddr([i; 16]));
            assert_eq!(owners.len(), 3, "three prefixes, three owners");
            let prefixes: Vec<[u8; 16]> =
                owners.as_slice().map(|e| config.prefix(e.ip())).collect();
            assert_ne!(prefixes[0], prefixes[1]);
            assert_ne!(prefixes[1], prefixes[2]);
            assert_ne!(prefixes[0], prefixes[2]);
        }
    }

    #[test]
    fn version_names_the_view() {
        let a = Ring::new(slash32(), (1..=4).map(loopback));
        let b = Ring::new(slash32(), (1..=4).rev().map(loopback));
        assert_eq!(a.version(), b.version(), "order of arrival does not matter");
        let c = Ring::new(slash32(), (1..=3).map(loopback));
        assert_ne!(a.version(), c.version());
        let d = Ring::new(RingConfig::default(), (1..=4).map(loopback));
        assert_ne!(a.version(), d.version(), "settings are part of the view");
        let e = Ring::new(
            RingConfig {
                positions: 1,
                ..slash32()
            },
            (1..=4).map(loopback),
        );
        assert_ne!(a.version(), e.version());
        assert_ne!(Ring::new(slash32(), []).version(), 0);
    }

    #[test]
    fn a_node_leaving_moves_only_its_own_addresses() {
        let all = Ring::new(slash32(), (1..=10).map(loopback));
        let without = Ring::new(slash32(), (1..=10).filter(|&n| n != 4).map(loopback));
        let gone = loopback(4);
        for i in 0..1000u32 {
            let mut a = [0u8; 16];
            a[..4].copy_from_slice(&i.wrapping_mul(2_654_435_761).to_be_bytes());
            let addr = VirtualAddr(a);
            let before = all.owners(&addr);
            let after = without.owners(&addr);
            if !before.contains(gone) {
                assert_eq!(before, after);
            } else {
                // The survivor keeps owning it.
                let survivor = before.as_slice().find(|&e| e != gone).unwrap();
                assert!(after.contains(survivor));
            }
        }
    }

    #[test]
    fn single_member_and_empty_rings() {
        let me = loopback(1);
        let ring = Ring::new(slash32(), [me]);
        assert!(ring.is_owner(me, &VirtualAddr([3; 16])));
        assert!(!ring.is_owner(loopback(2), &VirtualAddr([3; 16])));
        assert!((ring.primary_shares()[0] - 1.0).abs() < 1e-9);
        let empty = Ring::new(slash32(), []);
        assert!(empty.owners(&VirtualAddr([3; 16])).is_empty());
    }

    #[test]
    fn shares_sum_to_one() {
        for positions in [1, 16] {
            let config = RingConfig {
                positions,
                ..slash32()
            };
            let ring = Ring::new(config, (1..=50).map(loopback));
            let sum: f64 = ring.primary_shares().iter().sum();
            assert!((sum - 1.0).abs() < 1e-9);
        }
    }

    #[test]
    fn config_is_validated() {
        assert!(RingConfig::default().validate().is_ok());
        for bad in [
            RingConfig {
                replicas: 0,
                ..RingConfig::default()
            },
            RingConfig {
                replicas: 9,
                ..RingConfig::default()
            },
            RingConfig {
                prefix_v4: 33,
                ..RingConfig::default()
            },
            RingConfig {
                prefix_v6: 129,
                ..RingConfig::default()
            },
            RingConfig {
                positions: 0,
                ..RingConfig::default()
            },
            RingConfig {
                positions: 65,
                ..RingConfig::default()
            },
        ] {
            assert!(bad.validate().is_err());
        }
    }
}
