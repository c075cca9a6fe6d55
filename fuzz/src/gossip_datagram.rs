//! `gossip_datagram`: a real `Gossip` (foca SWIM) fed arbitrary datagrams
//! from arbitrary sources on virtual time.
//!
//! Setup byte: bit 0 joins the seed first. Then records: a source byte (the
//! seed, the seed's IPv4-mapped form, two strangers, this node's own
//! gossip endpoint, a third node, or — 6 and 7 — an endpoint read from
//! the input), a time step byte, a flags byte (bit 0: run the timers
//! first) and the datagram.
//!
//! Checks: nothing panics; every datagram sent fits foca's
//! `max_packet_size`; and what goes to endpoints that are neither seeds
//! nor active members stays within the budgets for strangers and for
//! identities being proven ([`STRANGER_BUDGET`] + [`VOUCHED_BUDGET`] a
//! second, as deep), however the input spoofs and whatever it claims.
//!
//! Gossip datagrams are signed: a mutated one fails its signature, so
//! what reaches foca is the seed corpus's own traffic (three nodes proving
//! each other and joining) in the orders and timings the fuzzer picks,
//! and everything else exercises the checks in front of it.

use std::net::SocketAddr;

use sky_node::gossip::{
    Gossip, GossipConfig, MemberState, NodeId, STRANGER_BUDGET, VOUCHED_BUDGET, public_key_of,
};
use sky_proto::ring::RingConfig;
use sky_proto::time::MonoTime;
use sky_proto::wire;

use crate::{Input, endpoint, step};

/// This node: gossip on 7701, service on 7700.
pub fn me() -> NodeId {
    node(1)
}

/// Node `n` of 10.0.0.n.
pub fn node(n: u8) -> NodeId {
    let ip = [10, 0, 0, n].into();
    NodeId::new(SocketAddr::new(ip, 7701), SocketAddr::new(ip, 7700), 1)
        .with_key(public_key_of(secret(n)))
}

/// Node `n`'s identity key secret.
pub fn secret(n: u8) -> [u8; 32] {
    [n; 32]
}

/// The ring settings every node uses.
pub fn ring_config() -> RingConfig {
    RingConfig {
        prefix_v4: 32,
        ..RingConfig::default()
    }
}

/// Sources 0..6; 6 and 7 read an endpoint from the input.
pub fn sources() -> [SocketAddr; 6] {
    let seed = node(2).gossip;
    let mapped = match seed {
        SocketAddr::V4(v4) => SocketAddr::new(v4.ip().to_ipv6_mapped().into(), v4.port()),
        v6 => v6,
    };
    [
        seed,
        mapped,
        "192.0.2.9:7701".parse().expect("fixed"),
        "[2001:db8::9]:7701".parse().expect("fixed"),
        me().gossip,
        node(3).gossip,
    ]
}

pub fn run(data: &[u8]) {
    let mut input = Input::new(data);
    let setup = input.u8();
    let config = GossipConfig::default();
    let max_packet = config.swim.max_packet_size.get();
    let mut gossip = Gossip::new(me(), secret(1), ring_config(), 7, config);
    let seeds = [node(2).gossip];
    let mut joined = false;
    let mut now = MonoTime::ZERO;
    let mut to_strangers: u64 = 0;

    if setup & 1 != 0 {
        gossip.join(&seeds, now);
        joined = true;
    }
    let mut records = 0;
    loop {
        while let Some((dst, bytes)) = gossip.poll_transmit() {
            assert!(bytes.len() <= max_packet, "{}-byte datagram", bytes.len());
            let dst = wire::canonical(dst);
            let seed = joined && seeds.contains(&dst);
            let active = matches!(
                gossip.member_state(dst),
                Some(MemberState::Alive | MemberState::Suspect)
            );
            if !seed && !active {
                to_strangers += 1;
            }
        }
        // (A millionth of slack for the bucket's floating-point refill.)
        let rate = f64::from(STRANGER_BUDGET + VOUCHED_BUDGET);
        let budget = rate * (1.0 + now.as_duration().as_secs_f64()) + 1e-6;
        assert!(
            to_strangers as f64 <= budget,
            "{to_strangers} datagrams to strangers by {now:?}"
        );
        if input.is_empty() || records >= 200 {
            break;
        }
        records += 1;
        let source = usize::from(input.u8() % 8);
        let from = match sources().get(source) {
            Some(s) => *s,
            None => endpoint(&mut input),
        };
        now += step(input.u8());
        let flags = input.u8();
        let datagram = input.chunk();
        if flags & 1 != 0 {
            gossip.handle_timeout(now);
        }
        let _ = gossip.handle_datagram(now, from, datagram);
        let _ = gossip.take_ring_change();
        let _ = gossip.take_errors();
    }
}
