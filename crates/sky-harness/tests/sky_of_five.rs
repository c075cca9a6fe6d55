//! A sky of five gossiping nodes (real shards, real SWIM gossip) and ten
//! earth clients on the simulated network: the view forms, users register
//! with both owners, a node is killed, and every online user is still
//! found — without loss and with seeded random loss on every link.
//!
//! The times asserted are virtual. `cargo test -p sky-harness --test
//! sky_of_five -- --nocapture` prints what each run measured.

use std::net::SocketAddr;
use std::time::Duration;

use sky_earth::client::Event;
use sky_harness::*;
use sky_proto::ring::Ring;

const USERS: [&str; 10] = [
    "ada", "bo", "cy", "di", "ed", "flo", "gus", "hal", "ivy", "jo",
];

/// SPEC §6: a killed node is dropped by every other within 5 s.
const DETECTION: Duration = Duration::from_secs(5);
/// The clients' keepalive interval (SPEC §4: they move to new owners
/// within one).
const KEEPALIVE: Duration = Duration::from_secs(25);

/// Whether every online host holds the view `ring` and is registered with
/// every owner of its address in it: the owners hold it, and the host
/// knows they do.
fn settled(net: &Net, ring: &Ring) -> bool {
    let knows = |i: usize| {
        let address = net.address_of(i).unwrap();
        net.version_held(i) == Some(ring.version())
            && sorted(net.hosts[i].earth.holders(&address)) == owners(ring, &address)
    };
    (0..net.hosts.len()).all(knows) && net.unheld(ring).is_empty()
}

/// Five gossiping nodes agree on one ring; then every user goes online
/// and is registered with both owners of its address.
fn five_with_everyone_online(seed: u64, loss: Option<u64>) -> Net {
    let mut net = Net::gossiping_seeded(&USERS, 5, seed, |_| {});
    if let Some(percent) = loss {
        net.random_loss = Some(RandomLoss::new(percent, seed));
    }
    let formed = net.run_until_one_view(secs(10));
    let formed = formed.unwrap_or_else(|| panic!("seed {seed}: five nodes never agreed"));
    assert_eq!(net.sky_ring().len(), 5);
    for i in 0..USERS.len() {
        net.online(i);
    }
    let ring = net.live_ring();
    let limit = if loss.is_some() {
        3 * KEEPALIVE
    } else {
        secs(2)
    };
    let took = net.wait_for(limit, |net| settled(net, &ring));
    let took = took.unwrap_or_else(|| {
        panic!(
            "seed {seed}: not registered with every owner: {:?}",
            net.unheld(&ring)
        )
    });
    eprintln!("seed {seed}: one view of 5 after {formed:?}; all registered {took:?} later");
    net
}

/// The node (not the bootstrap node 1) that owns the most users'
/// addresses.
fn busiest_owner(net: &Net) -> SocketAddr {
    let ring = net.live_ring();
    let owned = |n: SocketAddr| {
        (0..net.hosts.len())
            .filter(|&i| owners(&ring, &net.address_of(i).unwrap()).contains(&n))
            .count()
    };
    let victim = (2..=5).map(node).max_by_key(|n| owned(*n)).unwrap();
    assert!(owned(victim) > 0);
    victim
}

/// What one kill measured.
#[derive(Debug, PartialEq, Eq)]
struct Kill {
    victim: SocketAddr,
    /// From the kill until no live node's ring holds the victim.
    dropped: Duration,
    /// From the kill until every user holds the new view and is registered
    /// with every owner of its address in it (and knows it).
    moved: Duration,
    made: u32,
    found: u32,
    /// Lookups that did not find the friend, found by one retry.
    retried: usize,
    slowest: Duration,
    /// (since the kill, user) at each 100 ms step where an online user
    /// was held by no live node.
    orphaned: Vec<(Duration, usize)>,
    lost: u64,
}

/// Kills the busiest owner. For `run` after it, one lookup every 100 ms
/// round every (user, friend) pair, each checked to find the friend; then,
/// if need be, waits up to `settle` more for every user to move.
fn kill_and_look_up(net: &mut Net, run: Duration, settle: Duration) -> Kill {
    let victim = busiest_owner(net);
    net.kill(victim);
    let killed = net.now;
    let new_ring = net.live_ring();
    let mut lookups = Lookups::all_pairs(net);
    let (mut dropped, mut moved, mut orphaned) = (None, None, Vec::new());
    lookups.run(net, run, ms(100), |net| {
        let since = net.now.saturating_duration_since(killed);
        let gone = net
            .live()
            .iter()
            .all(|n| !net.node_ring(*n).contains(victim));
        if dropped.is_none() && gone {
            dropped = Some(since);
        }
        if moved.is_none() && settled(net, &new_ring) {
            moved = Some(since);
        }
        for i in 0..net.hosts.len() {
            if !net.present(&net.address_of(i).unwrap()) {
                orphaned.push((since, i));
            }
        }
    });
    lookups.finish(net, ms(100));
    // A lookup that did not find its friend is tried once more.
    let mut retried = 0;
    for (who, whom, answer) in &lookups.failed {
        let again = net.lookup(*who, USERS[*whom]);
        assert_eq!(
            again.map(|(e, _)| e),
            Ok(net.hosts[*whom].public),
            "{} never finds {} (first answer {answer:?})",
            USERS[*who],
            USERS[*whom]
        );
        retried += 1;
    }
    let moved = moved.or_else(|| {
        let waited = net.wait_for(settle, |net| settled(net, &new_ring))?;
        let _ = waited;
        Some(net.now.saturating_duration_since(killed))
    });
    Kill {
        victim,
        dropped: dropped.expect("every live node dropped the killed one"),
        moved: moved.unwrap_or_else(|| panic!("users never moved: {:?}", net.unheld(&new_ring))),
        made: lookups.made,
        found: lookups.found,
        retried,
        slowest: lookups.slowest,
        orphaned,
        lost: net.lost,
    }
}

fn no_user_went_silent(net: &mut Net) {
    for (i, user) in USERS.iter().enumerate() {
        let events = net.take_events(i);
        assert!(!events.contains(&Event::SkySilent), "{user}: {events:?}");
    }
}

#[test]
fn five_nodes_agree_and_every_user_registers_with_both_owners() {
    let net = five_with_everyone_online(0, None);
    let ring = net.live_ring();
    for (i, user) in USERS.iter().enumerate() {
        let address = net.address_of(i).unwrap();
        let owners = owners(&ring, &address);
        assert_eq!(owners.len(), 2);
        assert_eq!(net.holders(&address), owners, "{user}: no other node");
        assert_eq!(sorted(net.hosts[i].earth.holders(&address)), owners);
    }
    for n in net.live() {
        assert_eq!(*net.node_ring(n), ring, "{n} reads the common ring");
    }
}

#[test]
fn a_killed_node_loses_no_online_user() {
    let mut net = five_with_everyone_online(0, None);
    let kill = kill_and_look_up(&mut net, secs(60), Duration::ZERO);
    eprintln!("no loss: {kill:?}");
    assert!(
        kill.orphaned.is_empty(),
        "always held by a live node: {kill:?}"
    );
    assert!(kill.dropped <= DETECTION, "{kill:?}");
    assert!(net.one_view(), "the four agree");
    assert_eq!(net.sky_ring().len(), 4);
    assert!(
        kill.moved <= kill.dropped + KEEPALIVE + secs(1),
        "moved within one keepalive interval of the ring change: {kill:?}"
    );
    assert_eq!(
        kill.found, kill.made,
        "every lookup found its friend: {kill:?}"
    );
    assert_eq!(kill.retried, 0);
    // Registered with exactly the new owners: the clients unregistered
    // where they no longer belong, and the handoff grace has passed.
    let ring = net.live_ring();
    assert!(net.unheld(&ring).is_empty());
    assert!(net.strays(&ring).is_empty(), "{:?}", net.strays(&ring));
    no_user_went_silent(&mut net);
}

/// Under loss nothing bounds the move to one keepalive interval: a client
/// learns of the new ring only from a `ring changed` answering a keepalive,
/// and either can be lost (an interval more each time). What must hold is
/// that every online user is found, at worst on a retry, and that they all
/// move in the end.
#[test]
fn a_killed_node_loses_no_online_user_under_fifteen_percent_loss() {
    for seed in 1..=3 {
        let mut net = five_with_everyone_online(seed, Some(15));
        let kill = kill_and_look_up(&mut net, secs(60), 4 * KEEPALIVE);
        eprintln!("seed {seed}, 15% loss: {kill:?}");
        assert!(kill.dropped <= DETECTION, "seed {seed}: {kill:?}");
        assert!(net.one_view(), "seed {seed}: the four agree");
        assert_eq!(
            kill.found as usize + kill.retried,
            kill.made as usize,
            "seed {seed}: every lookup found its friend, some on a retry"
        );
        for n in net.live() {
            let m = net.skies.iter().find(|s| s.addr == n).unwrap();
            let counts = m.member.as_ref().unwrap().gossip.member_counts();
            assert_eq!(
                counts.down, 1,
                "seed {seed}: {n} holds only the killed node down"
            );
        }
    }
}

#[test]
fn a_restarted_node_rejoins_and_its_users_come_back() {
    let mut net = five_with_everyone_online(0, None);
    let kill = kill_and_look_up(&mut net, secs(30), Duration::ZERO);
    let victim = kill.victim;
    net.restart_node(victim);
    let back = net
        .run_until_one_view(secs(10))
        .expect("one view of five again");
    assert_eq!(net.sky_ring().len(), 5);
    let ring = net.live_ring();
    let mut lookups = Lookups::all_pairs(&net);
    let started = net.now;
    let mut moved = None;
    lookups.run(&mut net, secs(60), ms(100), |net| {
        if moved.is_none() && settled(net, &ring) {
            moved = Some(net.now.saturating_duration_since(started));
        }
    });
    lookups.finish(&mut net, ms(100));
    eprintln!(
        "restart: one view of 5 after {back:?}, users back after {moved:?}; \
         {} lookups, {} found, slowest {:?}",
        lookups.made, lookups.found, lookups.slowest
    );
    let moved = moved.expect("every user registered with its owners again");
    assert!(moved <= KEEPALIVE + secs(1));
    assert_eq!(lookups.found, lookups.made, "{:?}", lookups.failed);
    let restarted = net.skies.iter().find(|s| s.addr == victim).unwrap();
    assert!(!restarted.presence.is_empty(), "it holds its users again");
    assert!(net.strays(&ring).is_empty(), "{:?}", net.strays(&ring));
}

#[test]
fn users_move_to_nodes_that_join_later_within_one_keepalive_interval() {
    let mut net = Net::gossiping(&USERS, 5, |_| {});
    // Nodes 4 and 5 start later: down before anything reached anyone.
    net.kill(node(4));
    net.kill(node(5));
    // The three prove their endpoints to each other (a few round trips)
    // before the users come: users online during a change settle within
    // a keepalive interval, which is what the rest of the test measures.
    net.run_until_one_view(secs(10)).expect("one view of three");
    for i in 0..USERS.len() {
        net.online(i);
    }
    let three = net.live_ring();
    assert_eq!(three.len(), 3);
    net.wait_for(secs(2), |net| settled(net, &three))
        .expect("registered with their owners among three");
    net.run_for(secs(10));
    net.restart_node(node(4));
    net.restart_node(node(5));
    let formed = net.run_until_one_view(secs(10)).expect("one view of five");
    let five = net.live_ring();
    assert_eq!(five.len(), 5);
    let mut lookups = Lookups::all_pairs(&net);
    let (started, mut moved) = (net.now, None);
    lookups.run(&mut net, secs(30), ms(100), |net| {
        if moved.is_none() && settled(net, &five) {
            moved = Some(net.now.saturating_duration_since(started));
        }
    });
    lookups.finish(&mut net, ms(100));
    eprintln!(
        "join: one view of 5 after {formed:?}, users moved {moved:?} later; \
         {} lookups, {} found, slowest {:?}",
        lookups.made, lookups.found, lookups.slowest
    );
    let moved = moved.expect("every user registered with its new owners");
    assert!(moved <= KEEPALIVE + secs(1));
    assert_eq!(lookups.found, lookups.made, "{:?}", lookups.failed);
    assert!(net.strays(&five).is_empty(), "{:?}", net.strays(&five));
    no_user_went_silent(&mut net);
}

#[test]
fn the_same_seed_runs_the_same() {
    let run = || {
        let mut net = five_with_everyone_online(7, Some(15));
        let kill = kill_and_look_up(&mut net, secs(60), 4 * KEEPALIVE);
        (kill, net.counter, net.gossip_delivered)
    };
    assert_eq!(run(), run());
}
