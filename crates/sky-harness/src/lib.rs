//! `sky-harness` (dev-only): earth cores, real shard cores and real gossip
//! cores on one simulated network in virtual time.
//!
//! Everything that runs is the real code — the `sky-earth` core, the
//! `sky-node` shard and presence table, and `sky-node`'s SWIM [`Gossip`]
//! core (foca) — and only the sockets, the threads and the clock are the
//! harness's. The tests in `tests/` use it.
//!
//! # The skies
//!
//! - **One standalone node** ([`Net::new`]): a shard without a ring, owner
//!   of every address.
//! - **A hand-set ring** ([`Net::with_ring`]): `n` ring-aware shards that
//!   all read one shared ring, which the test replaces ([`Net::set_ring`]).
//!   Nothing gossips and nothing is handed off.
//! - **A gossiping sky** ([`Net::gossiping`]): `n` nodes, each with its
//!   own gossip core on its own gossip endpoint ([`node_gossip`]) and its
//!   own ring, which its shard reads. After every gossip call the harness
//!   sends what the core queued and stores [`Gossip::take_ring_change`]
//!   into that node's ring, as the engine's gossip thread does; once a new
//!   ring has stood for the handoff grace (2 × keepalive, the engine's
//!   default) the node drops the entries it no longer owns
//!   (`Presence::retain_owned`), as the engine's control thread does.
//!   Nodes can be killed ([`Net::kill`]) and restarted
//!   ([`Net::restart_node`]).
//!
//! # What the network models
//!
//! - Latency: 10 ms one way for anything to or from a sky node (gossip
//!   included), 20 ms between earth hosts; datagrams due at the same
//!   instant arrive in the order they were sent.
//! - Loss, deterministic: every `loss`-th datagram by a counter-based coin
//!   ([`Net::loss`]), or each datagram with a probability drawn from a
//!   seeded generator ([`RandomLoss`]); either on every link.
//! - Earth hosts behind NATs that filter like home routers (a datagram from
//!   an endpoint the host never sent to is dropped), NATs that forget idle
//!   mappings ([`Host::idle_timeout`]), NAT rebinding (change
//!   [`Host::public`]), an unpunchable pair ([`Net::block_peers`]), and
//!   port-randomising NATs ([`Net::randomize`]: a random public port per
//!   socket and destination, filtering by both). Every node serves the NAT
//!   check on [`CHECK_PORTS`].
//! - A silent node ([`SkyNode::down`]: drops what it receives) and a
//!   killed one (silent, its timers stopped, what it had in flight gone).
//! - Time: virtual. Earth hosts run on [`UnixTime`] from [`T0`]; sky nodes
//!   on [`MonoTime`] since the simulation began ([`Net::sky_now`]). A
//!   restarted node keeps that clock (a real one starts at zero again).
//!
//! # What it does not model
//!
//! No jitter, reordering within a latency class, duplication, bandwidth,
//! queues or MTU; no clock skew between machines. A node runs one shard
//! (the engine runs several over one presence table), its `handle_timeout`
//! is never called (cookies rotate on datagrams), presence is never swept
//! (expired entries are invisible to lookups anyway), and nothing is
//! measured as metrics. A kill is `kill -9`: no graceful leave. A
//! restarted node's identity bump is the last one plus one, where the
//! engine takes it from the wall clock. NAT mappings expire only where a
//! test sets [`Host::idle_timeout`].

#![allow(missing_docs)] // a test harness: its users are this workspace's tests
#![allow(clippy::disallowed_methods)] // no clock is read here; tests may

mod gossip;
mod lookups;
mod nat;
mod net;
mod sky;

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::time::Duration;

use sky_earth::client::{Config, Earth, Event, SocketId};
use sky_earth::identity::{Friends, Identity};
use sky_earth::invite::Invite;
use sky_earth::ratchet::DEFAULT_EPOCH;
use sky_earth::state::State;
use sky_proto::ring::{Ring, RingConfig};
use sky_proto::time::UnixTime;
use sky_proto::wire::VirtualAddr;

pub use gossip::Member;
pub use lookups::{LookupResult, Lookups};
pub use nat::{CHECK_PORTS, RandomNat};
pub use net::{Net, RandomLoss};
pub use sky::SkyNode;

#[doc(no_inline)]
pub use sky_node::gossip::Gossip;
#[doc(no_inline)]
pub use sky_proto::time::MonoTime;

pub const SKY: &str = "198.51.100.1:7700";
/// The virtual time every simulation starts at (2027).
pub const T0: UnixTime = UnixTime::from_secs(1_800_000_000);

/// One earth core behind a NAT: `public` is its mapping; with
/// `filtering` it drops what comes from an endpoint it never sent to.
pub struct Host {
    pub earth: Earth,
    /// The NAT mapping of its main socket; socket `n` maps to the same IP
    /// and `public.port() + n` (a NAT gives each socket its own port).
    pub public: SocketAddr,
    pub filtering: bool,
    /// (socket, destination) pairs it sent to: what its NAT lets back in.
    pub sent_to: HashSet<(SocketId, SocketAddr)>,
    pub events: Vec<Event>,
    /// The sockets it has used and not released.
    pub sockets: HashSet<SocketId>,
    /// Behind a port-randomising NAT instead ([`Net::randomize`]).
    pub random: Option<RandomNat>,
    /// A NAT that forgets a mapping idle this long (nothing sent or
    /// received on it): what comes in after that is dropped. `None`: never.
    pub idle_timeout: Option<Duration>,
    /// When each (socket, destination) mapping was last used.
    pub last_used: HashMap<(SocketId, SocketAddr), UnixTime>,
}

impl Host {
    /// The public endpoint of socket `socket`.
    pub fn public_of(&self, socket: SocketId) -> SocketAddr {
        if socket == SocketId::MAIN {
            return self.public;
        }
        SocketAddr::new(self.public.ip(), self.public.port() + socket.0 as u16)
    }
}

pub fn sky() -> SocketAddr {
    SKY.parse().unwrap()
}

/// Sky node `n` of a ring: 198.51.100.n:7700 (node 1 is `SKY`).
pub fn node(n: u8) -> SocketAddr {
    SocketAddr::new([198, 51, 100, n].into(), 7700)
}

/// The gossip endpoint of sky node `n`: 198.51.100.n:7701.
pub fn node_gossip(n: u8) -> SocketAddr {
    SocketAddr::new([198, 51, 100, n].into(), 7701)
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
            let state = State::new(ids[i].clone(), friends);
            let mut c = Config::new(vec![sky()]);
            config(&mut c);
            Host {
                earth: Earth::new(c, state, [i as u8 + 50; 32], T0),
                public: format!("203.0.113.{}:4{i}000", i + 1).parse().unwrap(),
                filtering: true,
                sent_to: HashSet::new(),
                events: Vec::new(),
                sockets: HashSet::from([SocketId::MAIN]),
                random: None,
                idle_timeout: None,
                last_used: HashMap::new(),
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
