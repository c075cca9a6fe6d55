//! A gossiping sky: each node's SWIM core, driven as the engine's gossip
//! thread drives it, and its handoff, done as the engine's control thread
//! does it; kills, restarts, and what a test waits for.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use sky_earth::client::Config;
use sky_node::gossip::{Gossip, GossipConfig, NodeId};
use sky_node::shard::ShardConfig;
use sky_node::snapshot;
use sky_proto::ring::Ring;
use sky_proto::time::{MonoTime, UnixTime};

use crate::{Net, SkyNode, node, node_gossip, slash32};

/// The handoff grace: the engine's default, two keepalive intervals.
fn handoff_grace() -> Duration {
    2 * ShardConfig::default().keepalive
}

/// A sky node's membership: its gossip core and what the engine's gossip
/// and control threads keep beside it.
pub struct Member {
    pub gossip: Gossip,
    /// Its gossip endpoint.
    pub endpoint: SocketAddr,
    /// The gossip endpoints it joined through.
    pub seeds: Vec<SocketAddr>,
    /// Its identity key's secret (kept across restarts, as the engine
    /// keeps its key file).
    key: [u8; 32],
    /// Rings stored into the node's ring so far.
    pub ring_changes: u32,
    /// Entries dropped by handoffs so far.
    pub handed_off: usize,
    /// Gossip errors taken from the core so far (datagrams refused, sends
    /// over budget).
    pub errors: u64,
    /// The ring the node serves, as the control thread tracks it: the
    /// next handoff is done against it.
    served: Arc<Ring>,
    /// When `served` was stored; `None` once it was handed off against.
    changed_at: Option<MonoTime>,
}

impl Member {
    /// When this member next needs a call: a gossip timer, or the handoff.
    fn next_timer(&self) -> Option<MonoTime> {
        let handoff = self.changed_at.map(|at| at + handoff_grace());
        [self.gossip.poll_timeout(), handoff]
            .into_iter()
            .flatten()
            .min()
    }

    /// A new core for the same endpoints under the next identity bump,
    /// and the seeds to join through.
    pub(crate) fn restarted(self, seed: u64) -> (Gossip, [u8; 32], Vec<SocketAddr>) {
        let old = self.gossip.identity();
        let bump = old.bump.wrapping_add(1);
        let me = NodeId::new(old.gossip, old.service, bump);
        let rng = gossip_rng_seed(seed, old.service, bump);
        let gossip = Gossip::new(me, self.key, slash32(), rng, GossipConfig::default());
        (gossip, self.key, self.seeds)
    }
}

/// The seed of one identity's random choices: the run's seed, the node
/// and the bump, so that every run of a seed is the same run.
fn gossip_rng_seed(seed: u64, service: SocketAddr, bump: u16) -> u64 {
    let ip = match service.ip() {
        std::net::IpAddr::V4(v4) => u64::from(u32::from(v4)),
        std::net::IpAddr::V6(v6) => u128::from(v6) as u64,
    };
    seed.wrapping_mul(1_000_003) ^ (ip << 16) ^ u64::from(bump)
}

impl SkyNode {
    /// A node with its own ring, built by `gossip`, which joins through
    /// `seeds` at `now`; `key` is the secret `gossip` signs with. The
    /// caller sends what the join queued (`Net::after_gossip`).
    pub fn gossiping(
        addr: SocketAddr,
        secret: [u8; 32],
        key: [u8; 32],
        mut gossip: Gossip,
        seeds: &[SocketAddr],
        now: MonoTime,
    ) -> SkyNode {
        // As the engine: the ring starts as this node alone.
        let ring = snapshot::shared(gossip.ring().clone());
        let mut node = SkyNode::new(addr, secret, Some(&ring), now);
        gossip.join(seeds, now);
        node.member = Some(Member {
            endpoint: gossip.identity().gossip,
            gossip,
            seeds: seeds.to_vec(),
            key,
            ring_changes: 0,
            handed_off: 0,
            errors: 0,
            served: ring.load_full(),
            changed_at: None,
        });
        node
    }
}

impl Net {
    /// The users and a sky of `n` gossiping nodes: node `i` serves at
    /// `node(i)` and gossips at `node_gossip(i)`, every node joins through
    /// node 1 at time zero, rings are k = 2 on /32 prefixes. The users
    /// bootstrap from node 1. Gossip's random choices come from seed 0.
    pub fn gossiping(names: &[&str], n: u8, config: impl Fn(&mut Config)) -> Net {
        Net::gossiping_seeded(names, n, 0, config)
    }

    /// [`Net::gossiping`], with the gossip cores' random choices drawn from
    /// `seed`.
    pub fn gossiping_seeded(names: &[&str], n: u8, seed: u64, config: impl Fn(&mut Config)) -> Net {
        let mut net = Net::new(names, config);
        net.seed = seed;
        let seeds = [node_gossip(1)];
        net.skies = (1..=n)
            .map(|i| {
                let me = NodeId::new(node_gossip(i), node(i), 1);
                let rng = gossip_rng_seed(seed, node(i), 1);
                let key = [i.wrapping_add(100); 32];
                let gossip = Gossip::new(me, key, slash32(), rng, GossipConfig::default());
                SkyNode::gossiping(node(i), [i; 32], key, gossip, &seeds, MonoTime::ZERO)
            })
            .collect();
        for s in 0..net.skies.len() {
            net.after_gossip(s);
        }
        net
    }

    /// After every call into node `s`'s gossip core, as the engine's gossip
    /// thread: send what it queued, then store a new ring into the node's
    /// ring (and start the handoff grace).
    pub(crate) fn after_gossip(&mut self, s: usize) {
        let now = self.sky_now();
        let Some(m) = self.skies[s].member.as_mut() else {
            return;
        };
        let from = m.endpoint;
        let mut out = Vec::new();
        while let Some(t) = m.gossip.poll_transmit() {
            out.push(t);
        }
        m.errors += m.gossip.take_errors();
        for (dst, bytes) in out {
            self.send(from, dst, bytes);
        }
        let node = &mut self.skies[s];
        let Some(m) = node.member.as_mut() else {
            return;
        };
        if let Some(new) = m.gossip.take_ring_change() {
            let new = Arc::new(new);
            m.ring_changes += 1;
            m.served = new.clone();
            m.changed_at = Some(now);
            node.ring
                .as_ref()
                .expect("a gossiping node has a ring")
                .store(new);
        }
    }

    /// A datagram for a gossip endpoint: `false` if `to` is none.
    pub(crate) fn deliver_gossip(
        &mut self,
        from: SocketAddr,
        to: SocketAddr,
        bytes: &[u8],
    ) -> bool {
        let Some(s) = self
            .skies
            .iter()
            .position(|s| s.member.as_ref().is_some_and(|m| m.endpoint == to))
        else {
            return false;
        };
        if self.skies[s].down {
            return true;
        }
        let now = self.sky_now();
        let m = self.skies[s].member.as_mut().expect("a member");
        // Refusals are counted by the core and taken in `after_gossip`.
        let _ = m.gossip.handle_datagram(now, from, bytes);
        self.gossip_delivered += 1;
        self.after_gossip(s);
        true
    }

    /// When the next gossip timer or handoff of a live node is due.
    pub(crate) fn next_sky_timer(&self) -> Option<UnixTime> {
        self.skies
            .iter()
            .filter(|s| !s.down)
            .filter_map(|s| s.member.as_ref()?.next_timer())
            .min()
            .map(|t| self.at(t))
    }

    /// Runs the gossip timers and handoffs of live nodes that are due.
    pub(crate) fn sky_timers(&mut self) {
        let now = self.sky_now();
        for s in 0..self.skies.len() {
            if self.skies[s].down {
                continue;
            }
            let (addr, presence) = (self.skies[s].addr, self.skies[s].presence.clone());
            let Some(m) = self.skies[s].member.as_mut() else {
                continue;
            };
            if m.changed_at.is_some_and(|at| at + handoff_grace() <= now) {
                m.changed_at = None;
                m.handed_off += presence.retain_owned(&m.served, addr);
            }
            if m.gossip.poll_timeout().is_some_and(|t| t <= now) {
                m.gossip.handle_timeout(now);
                self.after_gossip(s);
            }
        }
    }

    /// Kills node `addr` (`kill -9`): it receives nothing, its timers stop,
    /// and what it sent that is still in flight is lost with it.
    pub fn kill(&mut self, addr: SocketAddr) {
        let node = self.sky_node(addr);
        node.down = true;
        let gossip = node.member.as_ref().map(|m| m.endpoint);
        self.flight.retain(|f| f.1 != addr && Some(f.1) != gossip);
    }

    /// The service endpoints of the gossiping nodes that are up.
    pub fn live(&self) -> Vec<SocketAddr> {
        self.skies
            .iter()
            .filter(|s| !s.down && s.member.is_some())
            .map(|s| s.addr)
            .collect()
    }

    /// The ring of exactly the live gossiping nodes.
    pub fn live_ring(&self) -> Ring {
        Ring::new(slash32(), self.live())
    }

    /// Whether every live gossiping node's shard reads the ring of exactly
    /// the live nodes.
    pub fn one_view(&self) -> bool {
        let want = self.live_ring();
        self.skies
            .iter()
            .filter(|s| !s.down && s.member.is_some())
            .all(|s| s.ring_now().is_some_and(|r| *r == want))
    }

    /// Runs until [`Net::one_view`] holds, at most `limit`; the time it took.
    pub fn run_until_one_view(&mut self, limit: Duration) -> Option<Duration> {
        self.wait_for(limit, Net::one_view)
    }
}
