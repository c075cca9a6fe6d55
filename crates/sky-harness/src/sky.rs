//! Sky nodes: a real shard and presence table each, reading a ring; and
//! the sky as a whole, hand-set (one shared ring the test replaces).

use std::net::SocketAddr;
use std::sync::Arc;

use sky_node::keys::NodeSecret;
use sky_node::presence::Presence;
use sky_node::shard::{Shard, ShardConfig};
use sky_node::snapshot::{self, SharedRing};
use sky_proto::ring::Ring;
use sky_proto::time::MonoTime;
use sky_proto::wire::VirtualAddr;

use crate::gossip::Member;
use crate::{Net, node, owners, slash32, sorted};

/// One sky node: a real shard with its own secret and presence table,
/// and, in a gossiping sky, its gossip core.
pub struct SkyNode {
    /// Its service endpoint: where earth clients send, what rings name.
    pub addr: SocketAddr,
    pub secret: [u8; 32],
    pub shard: Shard,
    pub presence: Arc<Presence>,
    /// Drops every datagram sent to it (a node that stopped answering);
    /// a killed node is down and its timers stop too.
    pub down: bool,
    /// The ring its shard reads: the sky's shared ring (hand-set), its own
    /// (gossiping), or none (standalone).
    pub ring: Option<SharedRing>,
    /// Its gossip core, in a gossiping sky.
    pub member: Option<Member>,
}

impl SkyNode {
    /// A node reading `ring` (shared with others, or its own), or a
    /// standalone one.
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
            ShardConfig {
                check_port: crate::CHECK_PORTS[0],
                ..ShardConfig::default()
            },
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
            ring: ring.cloned(),
            member: None,
        }
    }

    /// The ring its shard reads now.
    pub fn ring_now(&self) -> Option<Arc<Ring>> {
        self.ring.as_ref().map(|r| r.load_full())
    }

    /// Whether it holds `address` online at `now`.
    ///
    /// The presence table has no read-only lookup: this takes one
    /// introduction from the entry's allowance the first time it is asked
    /// in a second (an allowance of 0 takes none after that), so asking
    /// leaves at least 4 of the 5 a shard allows.
    pub fn holds(&self, address: &VirtualAddr, now: MonoTime) -> bool {
        let now = now.as_secs().min(u32::MAX.into()) as u32;
        self.presence.peek(address, now).is_some()
    }
}

impl Net {
    /// The users and a sky of `n` ring-aware nodes, `node(1..=n)`,
    /// sharing one ring (k = 2, /32); the users bootstrap from node 1.
    pub fn with_ring(
        names: &[&str],
        n: u8,
        config: impl Fn(&mut sky_earth::client::Config),
    ) -> Net {
        let shared = snapshot::shared(Ring::new(slash32(), (1..=n).map(node)));
        let mut net = Net::new(names, config);
        net.skies = (1..=n)
            .map(|i| SkyNode::new(node(i), [i; 32], Some(&shared), MonoTime::ZERO))
            .collect();
        net.ring = Some(shared);
        net
    }

    /// The ring the sky holds now: the shared one, or in a gossiping sky
    /// that of the first live node.
    pub fn sky_ring(&self) -> Arc<Ring> {
        match &self.ring {
            Some(shared) => shared.load_full(),
            None => self
                .skies
                .iter()
                .find(|s| !s.down)
                .and_then(SkyNode::ring_now)
                .expect("a ring"),
        }
    }

    /// The ring node `addr`'s shard reads now.
    pub fn node_ring(&self, addr: SocketAddr) -> Arc<Ring> {
        self.skies
            .iter()
            .find(|s| s.addr == addr)
            .and_then(SkyNode::ring_now)
            .expect("a node with a ring")
    }

    /// Every node now reads a ring of `members` (hand-set sky).
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

    /// Whether `addr` is a sky node's service or gossip endpoint.
    pub fn is_sky(&self, addr: SocketAddr) -> bool {
        self.skies
            .iter()
            .any(|s| s.addr == addr || s.member.as_ref().is_some_and(|m| m.endpoint == addr))
    }

    /// The sky nodes that have `address` online now; a node that is down
    /// answers nothing and holds nothing.
    pub fn holders(&self, address: &VirtualAddr) -> Vec<SocketAddr> {
        let now = self.sky_now();
        let found = self
            .skies
            .iter()
            .filter(|s| !s.down && s.holds(address, now));
        sorted(found.map(|s| s.addr).collect())
    }

    /// Whether the sky has `address` online now.
    pub fn present(&self, address: &VirtualAddr) -> bool {
        !self.holders(address).is_empty()
    }

    /// Host `i`'s own address now (its current epoch's), once it keeps one.
    pub fn address_of(&self, i: usize) -> Option<VirtualAddr> {
        let regs = self.hosts[i].earth.registrations();
        regs.iter().find(|r| !r.cover).map(|r| r.address)
    }

    /// The (host, owner) pairs where an online host's own address has an
    /// owner in `ring` that does not hold it; empty when every online user
    /// is registered with all its owners.
    pub fn unheld(&self, ring: &Ring) -> Vec<(usize, SocketAddr)> {
        let mut missing = Vec::new();
        for i in 0..self.hosts.len() {
            let Some(address) = self.address_of(i) else {
                continue;
            };
            let holders = self.holders(&address);
            for o in owners(ring, &address) {
                if !holders.contains(&o) {
                    missing.push((i, o));
                }
            }
        }
        missing
    }

    /// The (host, node) pairs where a live node that is not an owner in
    /// `ring` holds an online host's own address.
    pub fn strays(&self, ring: &Ring) -> Vec<(usize, SocketAddr)> {
        let mut strays = Vec::new();
        for i in 0..self.hosts.len() {
            let Some(address) = self.address_of(i) else {
                continue;
            };
            let owners = owners(ring, &address);
            for h in self.holders(&address) {
                if !owners.contains(&h) {
                    strays.push((i, h));
                }
            }
        }
        strays
    }

    /// The first sky node forgets everything (it restarted).
    pub fn restart_sky(&mut self) {
        let addr = self.skies[0].addr;
        self.restart_node(addr);
    }

    /// Sky node `addr` forgets everything, draws a new secret and is up.
    /// A gossiping node rejoins through its seeds under a newer identity,
    /// knowing only itself until then (node 1, the seed, has no other:
    /// the others find it by announcing to members they hold down, every
    /// 5 s).
    pub fn restart_node(&mut self, addr: SocketAddr) {
        let (ring, now) = (self.ring.clone(), self.sky_now());
        let s = self
            .skies
            .iter()
            .position(|s| s.addr == addr)
            .expect("a sky node");
        let old = &mut self.skies[s];
        let secret = [old.secret[0] ^ 0xff; 32];
        match old.member.take() {
            None => self.skies[s] = SkyNode::new(addr, secret, ring.as_ref(), now),
            Some(member) => {
                let (gossip, key, seeds) = member.restarted(self.seed);
                self.skies[s] = SkyNode::gossiping(addr, secret, key, gossip, &seeds, now);
                self.after_gossip(s);
            }
        }
    }
}
