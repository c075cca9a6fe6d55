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

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use sky_earth::client::{Config, Earth, Event, Failure};
use sky_earth::identity::{Friends, Identity};
use sky_earth::invite::Invite;
use sky_earth::ratchet::DEFAULT_EPOCH;
use sky_earth::state::State;
use sky_node::keys::NodeSecret;
use sky_node::presence::Presence;
use sky_node::shard::{Shard, ShardConfig};
use sky_node::snapshot::{self, SharedRing};
use sky_proto::ring::{Ring, RingConfig};
use sky_proto::time::{MonoTime, UnixTime};
use sky_proto::wire::{self, Flags, Kind, Message, VirtualAddr};

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

/// One sky node: a real shard with its own secret and presence table.
pub struct SkyNode {
    pub addr: SocketAddr,
    pub secret: [u8; 32],
    pub shard: Shard,
    pub presence: Arc<Presence>,
    /// Drops every datagram sent to it (a node that stopped answering).
    pub down: bool,
}

impl SkyNode {
    pub fn new(
        addr: SocketAddr,
        secret: [u8; 32],
        ring: Option<&SharedRing>,
        now: MonoTime,
    ) -> Self {
        let presence = Arc::new(Presence::new(1000));
        let shard = Shard::new(
            Arc::new(NodeSecret::new(secret)),
            presence.clone(),
            ShardConfig::default(),
            now,
        );
        let shard = match ring {
            Some(ring) => shard.with_ring(ring.clone(), addr),
            None => shard,
        };
        SkyNode {
            addr,
            secret,
            shard,
            presence,
            down: false,
        }
    }
}

pub struct Net {
    pub now: UnixTime,
    pub skies: Vec<SkyNode>,
    /// The ring every node reads (`None`: one standalone node).
    pub ring: Option<SharedRing>,
    pub hosts: Vec<Host>,
    /// (arrival, from, to, bytes)
    pub flight: Vec<(UnixTime, SocketAddr, SocketAddr, Vec<u8>)>,
    /// Every `loss`-th datagram is dropped (0: none).
    pub loss: u32,
    pub counter: u32,
    /// Drops everything between earth hosts (an unpunchable pair).
    pub block_peers: bool,
    /// Datagrams each host sent to the sky.
    pub to_sky: Vec<u32>,
    /// Every reply a sky node sent: (node, to, kind).
    pub replies: Vec<(SocketAddr, SocketAddr, Kind)>,
    /// The ring version of every keepalive the sky received.
    pub keepalive_rings: Vec<u32>,
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

impl Net {
    /// The sky nodes' monotonic clock: time since the simulation began.
    pub fn sky_now(&self) -> MonoTime {
        MonoTime::from_duration(self.now.saturating_duration_since(T0))
    }

    /// The users and one standalone sky node (no ring) at `sky()`.
    pub fn new(names: &[&str], config: impl Fn(&mut Config)) -> Net {
        Net {
            now: T0,
            skies: vec![SkyNode::new(sky(), [7; 32], None, MonoTime::ZERO)],
            ring: None,
            hosts: hosts(names, config),
            flight: Vec::new(),
            loss: 0,
            counter: 0,
            block_peers: false,
            to_sky: vec![0; names.len()],
            replies: Vec::new(),
            keepalive_rings: Vec::new(),
        }
    }

    /// The users and a sky of `n` ring-aware nodes, `node(1..=n)`,
    /// sharing one ring (k = 2, /32); the users bootstrap from node 1.
    pub fn with_ring(names: &[&str], n: u8, config: impl Fn(&mut Config)) -> Net {
        let shared = snapshot::shared(Ring::new(slash32(), (1..=n).map(node)));
        let mut net = Net::new(names, config);
        net.skies = (1..=n)
            .map(|i| SkyNode::new(node(i), [i; 32], Some(&shared), MonoTime::ZERO))
            .collect();
        net.ring = Some(shared);
        net
    }

    /// The ring the sky holds now.
    pub fn sky_ring(&self) -> Arc<Ring> {
        self.ring.as_ref().expect("a ring").load_full()
    }

    /// Every node now reads a ring of `members`.
    pub fn set_ring(&mut self, members: impl IntoIterator<Item = SocketAddr>) -> Ring {
        let ring = Ring::new(slash32(), members);
        self.ring
            .as_ref()
            .expect("a ring")
            .store(Arc::new(ring.clone()));
        ring
    }

    /// A new node at `addr` that reads the sky's ring.
    pub fn add_node(&mut self, addr: SocketAddr, secret: u8) {
        let node = SkyNode::new(addr, [secret; 32], self.ring.as_ref(), self.sky_now());
        self.skies.push(node);
    }

    pub fn sky_node(&mut self, addr: SocketAddr) -> &mut SkyNode {
        self.skies
            .iter_mut()
            .find(|s| s.addr == addr)
            .expect("a sky node")
    }

    pub fn is_sky(&self, addr: SocketAddr) -> bool {
        self.skies.iter().any(|s| s.addr == addr)
    }

    /// The sky nodes that have `address` online now.
    pub fn holders(&self, address: &VirtualAddr) -> Vec<SocketAddr> {
        let now = self.sky_now().as_secs() as u32;
        let found = self.skies.iter().filter(|s| {
            matches!(
                s.presence.lookup(address, now, u8::MAX),
                sky_node::presence::Found::Online { .. }
            )
        });
        sorted(found.map(|s| s.addr).collect())
    }

    /// Whether the sky has `address` online now.
    pub fn present(&self, address: &VirtualAddr) -> bool {
        !self.holders(address).is_empty()
    }

    /// The first sky node forgets everything (it restarted).
    pub fn restart_sky(&mut self) {
        let addr = self.skies[0].addr;
        self.restart_node(addr);
    }

    /// Sky node `addr` forgets everything and draws a new secret.
    pub fn restart_node(&mut self, addr: SocketAddr) {
        let (ring, now) = (self.ring.clone(), self.sky_now());
        let node = self.sky_node(addr);
        *node = SkyNode::new(addr, [node.secret[0] ^ 0xff; 32], ring.as_ref(), now);
    }

    pub fn send(&mut self, from: SocketAddr, to: SocketAddr, bytes: Vec<u8>) {
        self.counter += 1;
        let coin = (u64::from(self.counter).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 40) as u32;
        if self.loss != 0 && coin.is_multiple_of(self.loss) {
            return;
        }
        let sky_side = self.is_sky(to) || self.is_sky(from);
        if self.block_peers && !sky_side {
            return;
        }
        let latency = Duration::from_millis(if sky_side { 10 } else { 20 });
        self.flight.push((self.now + latency, from, to, bytes));
    }

    pub fn flush(&mut self, i: usize) {
        let from = self.hosts[i].public;
        while let Some(t) = self.hosts[i].earth.poll_transmit() {
            self.hosts[i].sent_to.insert(t.dst);
            if self.is_sky(t.dst) {
                self.to_sky[i] += 1;
            }
            self.send(from, t.dst, t.bytes);
        }
        while let Some(e) = self.hosts[i].earth.poll_event() {
            self.hosts[i].events.push(e);
        }
    }

    pub fn deliver(&mut self, from: SocketAddr, to: SocketAddr, mut bytes: Vec<u8>) {
        if let Some(s) = self.skies.iter().position(|s| s.addr == to) {
            if self.skies[s].down {
                return;
            }
            if let Ok(Message::Keepalive { ring, .. }) = Message::decode(&bytes) {
                self.keepalive_rings.push(ring);
            }
            let len = bytes.len();
            bytes.resize(2048, 0);
            let mut reply = [0u8; wire::MAX_MESSAGE_LEN];
            let now = self.sky_now();
            let out = self.skies[s]
                .shard
                .handle_datagram(now, from, &mut bytes, len, &mut reply);
            if let Some(n) = out.reply {
                let kind = Message::decode(&reply[..n]).unwrap().kind();
                self.replies.push((to, from, kind));
                self.send(to, from, reply[..n].to_vec());
            }
            if let Some(t) = out.in_place {
                self.send(to, t.dst, bytes[..t.len].to_vec());
            }
            return;
        }
        let Some(i) = self.hosts.iter().position(|h| h.public == to) else {
            return; // nobody there (a NAT mapping that is gone)
        };
        let h = &mut self.hosts[i];
        if h.filtering && !h.sent_to.contains(&from) {
            return;
        }
        h.earth.handle_datagram(self.now, from, &mut bytes);
        self.flush(i);
    }

    /// Runs the network until `until` (virtual time).
    pub fn run_until(&mut self, until: UnixTime) {
        for i in 0..self.hosts.len() {
            self.flush(i);
        }
        for _ in 0..10_000_000 {
            let next_flight = self.flight.iter().map(|f| f.0).min();
            let next_timer = self
                .hosts
                .iter()
                .filter_map(|h| h.earth.poll_timeout())
                .min();
            let next = [next_flight, next_timer].into_iter().flatten().min();
            let Some(next) = next.filter(|n| *n <= until) else {
                self.now = until;
                return;
            };
            self.now = self.now.max(next);
            let (due, rest): (Vec<_>, Vec<_>) =
                self.flight.drain(..).partition(|f| f.0 <= self.now);
            self.flight = rest;
            for (_, from, to, bytes) in due {
                self.deliver(from, to, bytes);
            }
            for i in 0..self.hosts.len() {
                if self.hosts[i]
                    .earth
                    .poll_timeout()
                    .is_some_and(|t| t <= self.now)
                {
                    let now = self.now;
                    self.hosts[i].earth.handle_timeout(now);
                    self.flush(i);
                }
            }
        }
        panic!("the cores never went idle: a timer that does not move");
    }

    pub fn run_for(&mut self, d: Duration) {
        self.run_until(self.now + d);
    }

    pub fn online(&mut self, i: usize) {
        let now = self.now;
        self.hosts[i].earth.go_online(now);
        self.flush(i);
    }

    pub fn lookup(&mut self, i: usize, friend: &str) -> Result<(SocketAddr, Flags), Failure> {
        let now = self.now;
        self.hosts[i].earth.lookup(now, friend);
        self.flush(i);
        self.run_for(Duration::from_secs(6));
        self.hosts[i]
            .events
            .iter()
            .rev()
            .find_map(|e| match e {
                Event::Lookup { friend: f, result } if f == friend => Some(result.clone()),
                _ => None,
            })
            .expect("a lookup answers within its time limit")
    }

    pub fn take_events(&mut self, i: usize) -> Vec<Event> {
        std::mem::take(&mut self.hosts[i].events)
    }

    /// The version of the view host `i` holds.
    pub fn version_held(&self, i: usize) -> Option<u32> {
        self.hosts[i].earth.ring().map(|(_, v)| v)
    }
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
