//! Tried as an attacker would, on loopback: one IP cannot fill the
//! presence table, and one caller cannot starve a user's introductions
//! (issue "Hostile internet"; SPEC §3 invariants 3 and 5).

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use sky_node::config::{Config, EngineChoice};
use sky_node::engine::Node;
use sky_node::probe::AddrSecret;
use sky_proto::wire::{Cookie, Flags, Message, Tag, VirtualAddr};

use crate::common::*;

fn node(capacity: usize) -> Node {
    two_shard_node(Config {
        capacity,
        ..config(EngineChoice::Mmsg, "127.0.0.1:0")
    })
}

fn register(s: &UdpSocket, node: SocketAddr, cookie: Cookie, key: &AddrSecret) -> Option<Message> {
    let req = emit(key.register(Tag([1; 4]), cookie, Flags(0)));
    exchange(s, node, &req).and_then(|r| Message::decode(&r).ok())
}

fn random_key(i: u32) -> AddrSecret {
    let mut t = [0u8; 32];
    t[..4].copy_from_slice(&i.to_le_bytes());
    t[4..8].copy_from_slice(b"atck");
    AddrSecret::from_seed(t)
}

/// One source IP, many ports, registering random addresses as fast as it
/// can (bounded: 2 000 tries): it gets at most its budget (1% of the
/// table, at least 64; every new address also spends one of its signature
/// checks) and then `refused` replies — never silence — while a user
/// from another prefix registers at once; a table genuinely full says so.
#[test]
fn one_ip_takes_at_most_its_budget_and_everyone_else_still_registers() {
    let n = node(10_000);
    let sky = n.local_addr();
    let budget = n.presence().budgets().per_ip as usize;
    let attackers: Vec<(UdpSocket, Cookie)> = (0..8)
        .map(|_| {
            let s = socket_on("127.0.0.1");
            let c = cookie(&s, sky);
            (s, c)
        })
        .collect();
    let (mut held, mut refused, mut silent) = (0usize, 0usize, 0usize);
    for i in 0..2000u32 {
        let (s, c) = &attackers[i as usize % attackers.len()];
        match register(s, sky, *c, &random_key(i)) {
            Some(Message::Registered { .. }) => held += 1,
            // 2: the IP holds its share; 4: it spent its signature checks
            // for this second (every address here is new, so proven).
            Some(Message::Refused { reason: 2 | 4, .. }) => refused += 1,
            Some(other) => panic!("{other:?}"),
            None => silent += 1,
        }
    }
    eprintln!("one IP: {held} held, {refused} refused, {silent} unanswered; budget {budget}");
    assert!(
        held <= budget + 2,
        "{held} > {budget} (+ one per shard racing)"
    );
    assert!(refused >= 2000 - budget - 2 - silent);
    assert!(
        silent <= 20,
        "refusals are said, not dropped: {silent} unanswered"
    );
    assert_eq!(n.presence().len(), held);
    // A user from another /24 registers at once.
    let user = socket_on("127.0.1.9");
    let c = cookie(&user, sky);
    assert!(matches!(
        register(&user, sky, c, &secret(0x55)),
        Some(Message::Registered { .. })
    ));
    n.shutdown().unwrap();

    // A table genuinely full: many sources fill it; the next user, from
    // yet another prefix, is told the table is full.
    let n = node(100);
    let sky = n.local_addr();
    let mut filled = 0u32;
    'fill: for net in 2..10u8 {
        for host in 1..=2u8 {
            let s = socket_on(&format!("127.0.{net}.{host}"));
            let c = cookie(&s, sky);
            for i in 0..64u32 {
                if n.presence().len() >= 100 {
                    break 'fill;
                }
                let k = random_key(u32::from(net) << 16 | u32::from(host) << 8 | i);
                if matches!(register(&s, sky, c, &k), Some(Message::Registered { .. })) {
                    filled += 1;
                }
            }
        }
    }
    assert_eq!(filled, 100);
    let late = socket_on("127.0.20.1");
    let c = cookie(&late, sky);
    let answer = register(&late, sky, c, &secret(0x66));
    assert!(
        matches!(answer, Some(Message::Refused { reason: 1, .. })),
        "{answer:?}"
    );
    // Counted (shards publish every 100 ms).
    let series = "sky_registrations_refused_total{reason=\"table_full\"}";
    let end = Instant::now() + Duration::from_secs(2);
    while sample(&scrape(&n), series) < 1.0 && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(sample(&scrape(&n), series), 1.0);
    n.shutdown().unwrap();
}

/// Someone who knows a user's address (a removed friend, say) floods
/// lookups of it from one source, 20 a second for two seconds; a friend
/// looking the user up from elsewhere, once a second, is introduced each
/// time.
#[test]
fn a_flood_of_lookups_from_one_source_does_not_starve_a_friend() {
    let n = node(1000);
    let sky = n.local_addr();
    let user = socket_on("127.0.0.1");
    let uc = cookie(&user, sky);
    let key = secret(0x77);
    assert!(matches!(
        register(&user, sky, uc, &key),
        Some(Message::Registered { .. })
    ));
    let address = key.address();
    let lookup = |cookie| {
        emit(Message::Lookup {
            tag: Tag([2; 4]),
            cookie,
            target: address,
            caller: VirtualAddr([3; 16]),
            hint: [0; 16],
        })
    };
    let flood = socket_on("127.0.5.5");
    let fc = cookie(&flood, sky);
    let friend = socket_on("127.0.6.6");
    let frc = cookie(&friend, sky);
    let mut friend_introduced = 0;
    let start = Instant::now();
    for second in 0..2 {
        for _ in 0..20 {
            flood.send_to(&lookup(fc), sky).unwrap();
        }
        let answer = exchange(&friend, sky, &lookup(frc)).map(|r| Message::decode(&r));
        match answer {
            Some(Ok(Message::Online { flags, .. })) => {
                friend_introduced += usize::from(flags.introduced());
            }
            other => panic!("second {second}: {other:?}"),
        }
        // The next second's allowance.
        let next = start + Duration::from_millis(1100 * (second + 1));
        std::thread::sleep(next.saturating_duration_since(Instant::now()));
    }
    assert_eq!(
        friend_introduced, 2,
        "every lookup of the friend introduced"
    );
    n.shutdown().unwrap();
}
