//! Sky nodes: a real shard and presence table each; and the sky as a
//! whole, hand-set (one shared ring the test replaces).

use std::net::SocketAddr;
use std::sync::Arc;

use sky_node::keys::NodeSecret;
use sky_node::presence::{Found, Presence};
use sky_node::shard::{Shard, ShardConfig};
use sky_node::snapshot::{self, SharedRing};
use sky_proto::ring::Ring;
use sky_proto::time::MonoTime;
use sky_proto::wire::VirtualAddr;

use crate::{Net, node, slash32, sorted};

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

    /// Whether it holds `address` online at `now`.
    ///
    /// The presence table has no read-only lookup: this takes one
    /// introduction from the entry's allowance the first time it is asked
    /// in a second (an allowance of 0 takes none after that), so asking
    /// leaves at least 4 of the 5 a shard allows.
    pub fn holds(&self, address: &VirtualAddr, now: MonoTime) -> bool {
        let now = now.as_secs().min(u32::MAX.into()) as u32;
        matches!(self.presence.lookup(address, now, 0), Found::Online { .. })
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
}
