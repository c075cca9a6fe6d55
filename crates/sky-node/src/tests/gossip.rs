//! Tests of `gossip`.

use super::*;
use foca::{Codec, Identity};
use rand::RngExt;
use rand::SeedableRng;
use rand::rngs::SmallRng;
use std::collections::{BinaryHeap, HashMap};
use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

#[path = "gossip/hostile.rs"]
mod hostile;

/// Node `i`'s identity key secret.
fn secret(i: usize) -> [u8; 32] {
    [i as u8 + 1; 32]
}

fn node_id(i: usize, bump: u16) -> NodeId {
    let ip = IpAddr::V4(Ipv4Addr::new(10, 0, 0, i as u8 + 1));
    NodeId::new(SocketAddr::new(ip, 7701), SocketAddr::new(ip, 7700), bump)
        .with_key(public_key_of(secret(i)))
}

/// Node `i` (identity `node_id(i, bump)`), knowing only itself.
fn node(i: usize, bump: u16, seed: u64, config: GossipConfig) -> Gossip {
    Gossip::new(node_id(i, bump), secret(i), slash32(), seed, config)
}

fn slash32() -> RingConfig {
    RingConfig {
        prefix_v4: 32,
        ..RingConfig::default()
    }
}

struct Sim {
    gossip: Gossip,
    up: bool,
}

/// Datagram in flight: (arrival, sequence, destination, source,
/// payload).
type InFlight = Reverse<(MonoTime, u64, usize, SocketAddr, Vec<u8>)>;

/// Nodes on a simulated network in virtual time: 1–5 ms latency,
/// optional random loss from a seeded generator, optional partition.
struct Net {
    nodes: Vec<Sim>,
    by_gossip: HashMap<SocketAddr, usize>,
    /// Service endpoints: a sky `ping` there is answered with a `pong`,
    /// as a node's shard does.
    by_service: HashMap<SocketAddr, usize>,
    now: MonoTime,
    in_flight: BinaryHeap<InFlight>,
    seq: u64,
    rng: SmallRng,
    loss: f64,
    /// The side of the partition each node is on, if partitioned.
    sides: Option<Vec<u8>>,
    /// Identities seen in any datagram header.
    seen: Vec<NodeId>,
    /// Datagrams sent to endpoints that are no node's.
    to_nowhere: usize,
}

impl Net {
    /// `n` nodes, each seeded with node 0, joined at time zero.
    fn new(n: usize, seed: u64) -> Net {
        Net::with_config(n, seed, GossipConfig::default())
    }

    fn with_config(n: usize, seed: u64, config: GossipConfig) -> Net {
        let mut net = Net {
            nodes: Vec::new(),
            by_gossip: HashMap::new(),
            by_service: HashMap::new(),
            now: MonoTime::ZERO,
            in_flight: BinaryHeap::new(),
            seq: 0,
            rng: SmallRng::seed_from_u64(seed),
            loss: 0.0,
            sides: None,
            seen: Vec::new(),
            to_nowhere: 0,
        };
        for i in 0..n {
            let id = node_id(i, 1);
            let gossip = node(i, 1, seed.wrapping_mul(1000) + i as u64, config.clone());
            net.by_gossip.insert(id.gossip, i);
            net.by_service.insert(id.service, i);
            net.nodes.push(Sim { gossip, up: true });
        }
        let seeds = [node_id(0, 1).gossip];
        for i in 0..n {
            net.nodes[i].gossip.join(&seeds, MonoTime::ZERO);
        }
        net
    }

    fn flush(&mut self) {
        for i in 0..self.nodes.len() {
            while let Some((dst, mut bytes)) = self.nodes[i].gossip.poll_transmit() {
                let from = self.nodes[i].gossip.identity().gossip;
                if bytes[0] == MARKER {
                    let header: foca::Header<NodeId> = PostcardCodec
                        .decode_header(&bytes[PREFIX_LEN..])
                        .expect("a header");
                    for id in [header.src, header.dst] {
                        if !self.seen.contains(&id) {
                            self.seen.push(id);
                        }
                    }
                }
                let (to, from) = if let Some(&to) = self.by_gossip.get(&dst) {
                    (to, from)
                } else if let Some(&to) = self.by_service.get(&dst) {
                    // The shard's answer, from the service endpoint.
                    let Ok(wire::Message::Ping { tag, .. }) = wire::Message::decode(&bytes) else {
                        continue;
                    };
                    if !self.nodes[to].up {
                        continue;
                    }
                    let pong = wire::Message::Pong { tag };
                    bytes = vec![0; pong.buffer_len()];
                    let n = pong.emit(&mut bytes);
                    bytes.truncate(n);
                    (i, dst)
                } else {
                    self.to_nowhere += 1;
                    continue;
                };
                let lost = self.loss > 0.0 && self.rng.random::<f64>() < self.loss;
                let cut = self.sides.as_ref().is_some_and(|s| s[i] != s[to]);
                if lost || cut {
                    continue;
                }
                let latency = Duration::from_micros(self.rng.random_range(1000..5000));
                self.seq += 1;
                self.in_flight
                    .push(Reverse((self.now + latency, self.seq, to, from, bytes)));
            }
        }
    }

    /// Runs every event up to `now + d`, calling `each` after each one.
    fn run_for(&mut self, d: Duration, mut each: impl FnMut(&Net)) {
        let end = self.now + d;
        loop {
            self.flush();
            let timer = self
                .nodes
                .iter()
                .filter(|n| n.up)
                .filter_map(|n| n.gossip.poll_timeout())
                .min();
            let datagram = self.in_flight.peek().map(|d| d.0.0);
            let next = match (timer, datagram) {
                (Some(a), Some(b)) => a.min(b),
                (a, b) => a.or(b).unwrap_or(end),
            };
            if next > end {
                self.now = end;
                return;
            }
            self.now = next;
            if datagram == Some(next) {
                let Reverse((_, _, to, from, bytes)) = self.in_flight.pop().unwrap();
                if self.nodes[to].up {
                    let _ = self.nodes[to].gossip.handle_datagram(next, from, &bytes);
                }
            } else {
                for n in self.nodes.iter_mut().filter(|n| n.up) {
                    if n.gossip.poll_timeout().is_some_and(|t| t <= next) {
                        n.gossip.handle_timeout(next);
                    }
                }
            }
            each(self);
        }
    }

    /// Runs until `done` holds (checked after every event) or `limit`
    /// passes; returns the virtual time it took.
    fn run_until(&mut self, limit: Duration, done: impl Fn(&Net) -> bool) -> Option<Duration> {
        let start = self.now;
        let end = start + limit;
        while self.now < end {
            if done(self) {
                return Some(self.now.saturating_duration_since(start));
            }
            self.run_for(Duration::from_millis(10), |_| {});
        }
        done(self).then(|| self.now.saturating_duration_since(start))
    }

    fn live(&self) -> impl Iterator<Item = &Gossip> {
        self.nodes.iter().filter(|n| n.up).map(|n| &n.gossip)
    }

    /// Every live node has a ring of `members` with one version.
    fn one_view(&self, members: usize) -> bool {
        let mut versions = self.live().map(|g| (g.ring().version(), g.ring().len()));
        let first = versions.next().unwrap();
        first.1 == members && versions.all(|v| v == first)
    }

    fn joined(n: usize, seed: u64) -> Net {
        let mut net = Net::new(n, seed);
        let took = net.run_until(Duration::from_secs(10), |net| net.one_view(n));
        assert!(took.is_some(), "seed {seed}: {n} nodes never agreed");
        net
    }

    fn stop(&mut self, i: usize) {
        self.nodes[i].up = false;
    }
}

#[test]
fn five_nodes_join_through_one_seed_and_agree_on_the_ring() {
    for seed in 0..10 {
        let mut net = Net::new(5, seed);
        let took = net.run_until(Duration::from_secs(10), |net| net.one_view(5));
        let took = took.unwrap_or_else(|| panic!("seed {seed}: no agreement"));
        assert!(took < Duration::from_secs(3), "seed {seed}: took {took:?}");
        let ring = net.nodes[3].gossip.ring().clone();
        for i in 0..5 {
            assert!(ring.contains(node_id(i, 1).service));
            let counts = net.nodes[i].gossip.member_counts();
            assert_eq!(
                counts,
                MemberCounts {
                    alive: 5,
                    suspect: 0,
                    down: 0,
                    left: 0,
                }
            );
        }
        // Every change was signalled, the last one being this ring.
        for n in &mut net.nodes {
            let mut last = None;
            while let Some(r) = n.gossip.take_ring_change() {
                last = Some(r);
            }
            assert_eq!(last.as_ref(), Some(&ring));
            assert_eq!(n.gossip.take_ring_change(), None);
        }
        // Datagrams named sky nodes only: their real identities, or the
        // placeholder a seed is first announced to.
        for id in &net.seen {
            let i = net.by_gossip[&id.gossip];
            assert!(*id == node_id(i, 1) || *id == NodeId::seed(node_id(i, 1).gossip));
        }
    }
}

#[test]
fn a_stopped_node_is_declared_down_by_every_other_within_5_s() {
    for seed in 0..40 {
        let mut net = Net::joined(5, seed);
        net.run_for(Duration::from_secs(5), |_| {});
        let dead = (seed % 5) as usize;
        let gone = node_id(dead, 1);
        net.stop(dead);
        let took = net.run_until(Duration::from_secs(10), |net| {
            net.live()
                .all(|g| g.member_state(gone.gossip) == Some(MemberState::Down))
        });
        let took = took.unwrap_or_else(|| panic!("seed {seed}: never declared down"));
        assert!(
            took <= Duration::from_secs(5),
            "seed {seed}: declared down by all after {took:?}"
        );
        assert!(net.one_view(4), "seed {seed}");
        assert!(net.live().all(|g| !g.ring().contains(gone.service)));
        assert!(net.live().all(|g| g.member_counts().down == 1));
    }
}

#[test]
fn a_node_that_leaves_is_dropped_by_the_others_at_once() {
    for seed in 0..10 {
        let mut net = Net::joined(5, seed);
        net.run_for(Duration::from_secs(2), |_| {});
        let leaving = 4;
        let gone = node_id(leaving, 1);
        net.nodes[leaving].gossip.leave(net.now);
        net.flush();
        net.stop(leaving);
        let took = net.run_until(Duration::from_secs(5), |net| {
            net.live().all(|g| !g.ring().contains(gone.service))
        });
        let took = took.unwrap_or_else(|| panic!("seed {seed}: never dropped"));
        assert!(took < Duration::from_secs(1), "seed {seed}: took {took:?}");
        assert!(net.one_view(4));
        // A departure, not a failure: every other node says `left`, and
        // none says `down` (SkyMemberDown pages on down only).
        let told = net.run_until(Duration::from_secs(5), |net| {
            net.live()
                .all(|g| g.member_state(gone.gossip) == Some(MemberState::Left))
        });
        assert!(told.is_some(), "seed {seed}: not every node says left");
        for g in net.live() {
            let c = g.member_counts();
            assert_eq!((c.down, c.left), (0, 1), "seed {seed}");
        }
    }
}

#[test]
fn a_node_with_other_ring_settings_is_refused_and_never_joins() {
    let me = node_id(0, 1);
    let other = node_id(1, 1);
    let mut a = node(0, 1, 1, GossipConfig::default());
    let mut b = Gossip::new(
        other,
        secret(1),
        RingConfig {
            replicas: 3,
            ..slash32()
        },
        2,
        GossipConfig::default(),
    );
    b.join(&[me.gossip], MonoTime::ZERO);
    let mut refused = 0;
    for _ in 0..10 {
        while let Some((dst, bytes)) = b.poll_transmit() {
            assert_eq!(dst, me.gossip);
            match a.handle_datagram(MonoTime::ZERO, other.gossip, &bytes) {
                Err(GossipError::OtherSettings(theirs)) => {
                    assert_eq!(theirs[0], 3, "their replicas");
                    refused += 1;
                }
                other => panic!("{other:?}"),
            }
        }
        b.handle_timeout(MonoTime::from_duration(Duration::from_secs(10)));
    }
    assert!(refused > 0);
    assert_eq!(a.members().count(), 0, "never a member");
    assert_eq!(a.ring().len(), 1);
    assert!(a.poll_transmit().is_none(), "nothing answered");
    assert_eq!(
        describe_settings([3, 32, 48, 16]),
        "replicas 3, prefixes /32 /48, positions 16"
    );
}

#[test]
fn twenty_percent_loss_for_a_minute_makes_no_live_node_down() {
    for seed in 0..10 {
        let mut net = Net::joined(5, seed);
        net.loss = 0.2;
        let mut downs = 0;
        net.run_for(Duration::from_secs(60), |net| {
            downs = downs.max(net.live().map(|g| g.member_counts().down).sum::<usize>());
        });
        assert_eq!(downs, 0, "seed {seed}: a live node was declared down");
        net.loss = 0.0;
        assert!(
            net.run_until(Duration::from_secs(5), |net| net.one_view(5))
                .is_some()
        );
    }
}

#[test]
fn a_partition_of_two_and_three_heals_into_one_view_within_30_s() {
    for seed in 0..10 {
        let mut net = Net::joined(5, seed);
        net.sides = Some(vec![0, 0, 1, 1, 1]);
        net.run_for(Duration::from_secs(30), |_| {});
        // Each side has its own view by now.
        for i in 0..5 {
            let side = if i < 2 { 2 } else { 3 };
            assert_eq!(net.nodes[i].gossip.ring().len(), side, "seed {seed}");
        }
        net.sides = None;
        let took = net.run_until(Duration::from_secs(30), |net| net.one_view(5));
        assert!(took.is_some(), "seed {seed}: never healed");
        assert!(net.live().all(|g| g.member_counts().down == 0));
    }
}

#[test]
fn a_restarted_node_replaces_its_former_identity() {
    for seed in 0..10 {
        let mut net = Net::joined(5, seed);
        let old = node_id(2, 1);
        net.stop(2);
        // Declared down first, or restarted before anyone noticed.
        let downtime = if seed % 2 == 0 { 6 } else { 0 };
        net.run_for(Duration::from_secs(downtime), |_| {});
        let restarted = node_id(2, 2);
        let mut gossip = node(2, 2, seed + 77, GossipConfig::default());
        gossip.join(&[node_id(0, 1).gossip], net.now);
        net.nodes[2] = Sim { gossip, up: true };
        let took = net.run_until(Duration::from_secs(5), |net| {
            net.one_view(5)
                && net.live().all(|g| g.member_counts().down == 0)
                && net
                    .live()
                    .filter(|g| g.identity() != restarted)
                    .all(|g| g.members().any(|(id, _)| id == restarted))
        });
        assert!(took.is_some(), "seed {seed}: the restart never took over");
        for (i, n) in net.nodes.iter().enumerate().filter(|(i, _)| *i != 2) {
            let state = n.gossip.member_state(old.gossip);
            assert_eq!(state, Some(MemberState::Alive), "node {i}");
            assert!(n.gossip.members().all(|(id, _)| id != old));
        }
    }
}

#[test]
fn a_node_joins_a_seed_that_starts_later() {
    let mut net = Net::new(2, 7);
    net.stop(0);
    net.run_for(Duration::from_secs(5), |_| {});
    net.nodes[0].up = true;
    let took = net.run_until(Duration::from_secs(5), |net| net.one_view(2));
    assert!(took.is_some());
}

/// The tuning check behind [`GossipConfig`]'s numbers, over many more
/// seeds than the tests above (about a minute in release):
/// `cargo test --release --lib gossip::tests::many_seeds -- --ignored --nocapture`
#[test]
#[ignore]
fn many_seeds() {
    let runs = 2000;
    let (mut false_downs, mut worst, mut total, mut heal) =
        (0, Duration::ZERO, Duration::ZERO, Duration::ZERO);
    for seed in 0..runs {
        let mut net = Net::joined(5, seed);
        net.loss = 0.2;
        let mut downs = 0;
        net.run_for(Duration::from_secs(60), |net| {
            downs = downs.max(net.live().map(|g| g.member_counts().down).sum::<usize>());
        });
        false_downs += usize::from(downs > 0);

        let mut net = Net::joined(5, seed + runs);
        net.run_for(Duration::from_secs(3), |_| {});
        let gone = node_id((seed % 5) as usize, 1);
        net.stop((seed % 5) as usize);
        let took = net.run_until(Duration::from_secs(20), |net| {
            net.live()
                .all(|g| g.member_state(gone.gossip) == Some(MemberState::Down))
        });
        let took = took.expect("declared down");
        worst = worst.max(took);
        total += took;

        let mut net = Net::joined(5, seed + 2 * runs);
        net.sides = Some(vec![0, 0, 1, 1, 1]);
        net.run_for(Duration::from_secs(30), |_| {});
        net.sides = None;
        let took = net.run_until(Duration::from_secs(60), |net| net.one_view(5));
        heal = heal.max(took.expect("healed"));
    }
    eprintln!(
        "{runs} seeds: runs with a false down under 20% loss {false_downs}; \
         detection mean {:?}, worst {worst:?}; partition healed within {heal:?}",
        total / runs as u32
    );
    assert!(worst <= Duration::from_secs(5));
    assert!(heal <= Duration::from_secs(30));
    assert!(false_downs * 200 <= runs as usize, "more than 0.5%");
}

#[test]
fn a_lone_node_rings_itself_and_asks_its_seeds_again() {
    let me = node_id(0, 1);
    let mut g = node(0, 1, 1, GossipConfig::default());
    assert_eq!(g.ring().members().len(), 1);
    assert!(g.ring().contains(me.service));
    assert_eq!(g.poll_timeout(), None);
    g.join(&[me.gossip, node_id(1, 1).gossip], MonoTime::ZERO);
    let (dst, _) = g.poll_transmit().expect("an announce");
    assert_eq!(dst, node_id(1, 1).gossip, "never to itself");
    assert_eq!(g.poll_transmit(), None);
    let next = g.poll_timeout().unwrap();
    g.handle_timeout(next);
    assert_eq!(g.poll_transmit().map(|t| t.0), Some(node_id(1, 1).gossip));
    assert_eq!(g.take_ring_change(), None);
}

proptest::proptest! {
    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..1400)) {
        let mut g = node(0, 1, 1, GossipConfig::default());
        let r = g.handle_datagram(MonoTime::ZERO, node_id(1, 1).gossip, &bytes);
        let refused = g.take_refusals();
        let errors = g.take_errors() + refused.forged + refused.unproven;
        proptest::prop_assert_eq!(errors, u64::from(r.is_err()));
    }
}
