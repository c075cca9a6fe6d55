//! `sky-harness` (dev-only): earth cores and real shard cores on one
//! simulated network in virtual time.
//!
//! The sky is one standalone node, or several ring-aware nodes sharing one
//! ring; earth hosts sit behind NATs that filter like home routers; the
//! network delays, loses (seeded), rebinds and partitions; epochs pass in
//! milliseconds of real time. Everything that runs is the real code — the
//! `sky-earth` core and the `sky-node` shard — and only the sockets and the
//! clock are the harness's. The tests in `tests/` use it.

#![allow(missing_docs)] // a test harness: its users are this workspace's tests
#![allow(clippy::disallowed_methods)] // no clock is read here; tests may

mod net;
mod sky;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::time::Duration;

use sky_earth::client::{Config, Earth, Event};
use sky_earth::identity::{Friends, Identity};
use sky_earth::invite::Invite;
use sky_earth::ratchet::DEFAULT_EPOCH;
use sky_earth::state::State;
use sky_proto::ring::{Ring, RingConfig};
use sky_proto::time::UnixTime;
use sky_proto::wire::VirtualAddr;

pub use net::{Net, RandomLoss};
pub use sky::SkyNode;

pub const SKY: &str = "198.51.100.1:7700";
/// The virtual time every simulation starts at (2027).
pub const T0: UnixTime = UnixTime::from_secs(1_800_000_000);

/// One earth core behind a NAT: `public` is its mapping; with
/// `filtering` it drops what comes from an endpoint it never sent to.
pub struct Host {
    pub earth: Earth,
    pub public: SocketAddr,
    pub filtering: bool,
    pub sent_to: HashSet<SocketAddr>,
    pub events: Vec<Event>,
}

pub fn sky() -> SocketAddr {
    SKY.parse().unwrap()
}

/// Sky node `n` of a ring: 198.51.100.n:7700 (node 1 is `SKY`).
pub fn node(n: u8) -> SocketAddr {
    SocketAddr::new([198, 51, 100, n].into(), 7700)
}

/// Every address its own operator, so five nodes give five prefixes.
pub fn slash32() -> RingConfig {
    RingConfig {
        prefix_v4: 32,
        ..RingConfig::default()
    }
}

pub fn identity(seed: u8) -> Identity {
    Identity::generate(
        [seed; 64],
        DEFAULT_EPOCH,
        T0 - Duration::from_secs(86_400 * 3),
    )
}

pub fn sorted(mut v: Vec<SocketAddr>) -> Vec<SocketAddr> {
    v.sort();
    v
}

/// `names.len()` users, all friends of each other, bootstrapping from
/// `sky()`.
pub fn hosts(names: &[&str], config: impl Fn(&mut Config)) -> Vec<Host> {
    let mut ids: Vec<Identity> = (0..names.len()).map(|i| identity(i as u8 + 1)).collect();
    let invites: Vec<Invite> = ids.iter_mut().map(|id| id.invite(T0)).collect();
    names
        .iter()
        .enumerate()
        .map(|(i, _)| {
            let mut friends = Friends::default();
            for (j, name) in names.iter().enumerate() {
                if j != i {
                    friends.add(name, invites[j].clone().into()).unwrap();
                }
            }
            let state = State {
                identity: ids[i].clone(),
                friends,
                pending_resets: Default::default(),
            };
            let mut c = Config::new(vec![sky()]);
            config(&mut c);
            Host {
                earth: Earth::new(c, state, [i as u8 + 50; 32], T0),
                public: format!("203.0.113.{}:4{i}000", i + 1).parse().unwrap(),
                filtering: true,
                sent_to: HashSet::new(),
                events: Vec::new(),
            }
        })
        .collect()
}

pub fn registered(events: &[Event]) -> Vec<(VirtualAddr, SocketAddr)> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::Registered { address, observed } => Some((*address, *observed)),
            _ => None,
        })
        .collect()
}

pub fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

pub fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// The owners of `address` in `ring`, sorted.
pub fn owners(ring: &Ring, address: &VirtualAddr) -> Vec<SocketAddr> {
    sorted(ring.owners(address).as_slice().collect())
}
