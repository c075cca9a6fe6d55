//! Earth clients in a sky of several ring-aware nodes (real shards reading
//! one ring) on the simulated network: owners, silent owners, joins, stale
//! views, introductions checked per node, bootstrap.

use std::net::SocketAddr;

use sky_earth::client::Event;
use sky_harness::*;
use sky_node::keys::{IntroKeys, NodeSecret};
use sky_proto::intro::introduction_mac;
use sky_proto::ring::Ring;
use sky_proto::wire::{Kind, Message, VirtualAddr};

/// Alice online in a sky of five; her address and its owners.
fn alice_in_five() -> (Net, VirtualAddr) {
    let mut net = Net::with_ring(&["alice", "bob"], 5, |_| {});
    net.online(0);
    net.run_for(secs(1));
    let regs = registered(&net.hosts[0].events);
    assert_eq!(regs.len(), 1, "{:?}", net.hosts[0].events);
    (net, regs[0].0)
}

#[test]
fn registers_with_both_owners_in_a_sky_of_five_and_is_found() {
    let (mut net, address) = alice_in_five();
    let events = net.take_events(0);
    let ring = net.sky_ring();
    assert!(events.contains(&Event::Sky {
        version: ring.version(),
        nodes: 5
    }));
    assert_eq!(
        registered(&events),
        vec![(address, net.hosts[0].public)],
        "one event for the address, not one per owner"
    );
    let owners = owners(&ring, &address);
    assert_eq!(owners.len(), 2);
    assert_eq!(net.holders(&address), owners, "both owners, no other node");
    assert_eq!(sorted(net.hosts[0].earth.holders(&address)), owners);
    // Keepalives to both owners carry the ring version; nobody asks her
    // to register again.
    net.run_for(secs(60));
    assert!(registered(&net.take_events(0)).is_empty());
    assert!(net.keepalive_rings.len() >= 4, "{:?}", net.keepalive_rings);
    assert!(net.keepalive_rings.iter().all(|&r| r == ring.version()));
    assert_eq!(net.holders(&address), owners);
    // Bob finds her through her first owner, which introduces him.
    assert_eq!(net.lookup(1, "alice").unwrap().0, net.hosts[0].public);
    let first = ring.owners(&address).first().unwrap();
    let bob = net.hosts[1].public;
    assert!(net.replies.contains(&(first, bob, Kind::Online)));
    assert!(net.take_events(0).iter().any(|e| matches!(e,
        Event::Introduced { friend: Some(f), .. } if f == "bob")));
}

#[test]
fn a_silent_owner_loses_no_one() {
    let (mut net, address) = alice_in_five();
    let ring = net.sky_ring();
    let owners = owners(&ring, &address);
    // The owner a lookup asks first stops answering anything.
    let first = ring.owners(&address).first().unwrap();
    net.sky_node(first).down = true;
    for _ in 0..3 {
        assert_eq!(net.lookup(1, "alice").unwrap().0, net.hosts[0].public);
        net.run_for(secs(30));
    }
    let bob = net.take_events(1);
    assert!(
        !bob.iter()
            .any(|e| matches!(e, Event::Lookup { result: Err(_), .. })),
        "{bob:?}"
    );
    let alice = net.take_events(0);
    assert!(!alice.contains(&Event::SkySilent), "{alice:?}");
    let other = owners.iter().find(|o| **o != first).unwrap();
    assert!(net.holders(&address).contains(other));
}

#[test]
fn a_joining_node_gets_the_address_within_one_keepalive_interval() {
    let (mut net, address) = alice_in_five();
    net.take_events(0);
    let before = owners(&net.sky_ring(), &address);
    // A sixth node whose position makes it an owner of her address.
    let five = || (1..=5).map(node);
    let newcomer = (6..=254)
        .map(node)
        .find(|n| {
            Ring::new(slash32(), five().chain([*n]))
                .owners(&address)
                .contains(*n)
        })
        .expect("some position owns it");
    net.add_node(newcomer, 6);
    let six = net.set_ring(five().chain([newcomer]));
    let after = owners(&six, &address);
    assert_ne!(before, after);
    net.run_for(secs(25)); // one keepalive interval
    let alice = net.hosts[0].public;
    assert!(
        net.replies
            .iter()
            .any(|(_, to, k)| *to == alice && *k == Kind::RingChanged)
    );
    assert_eq!(net.version_held(0), Some(six.version()));
    assert_eq!(
        net.holders(&address),
        after,
        "registered with the new owner, unregistered at the old"
    );
    assert!(registered(&net.take_events(0)).is_empty(), "held all along");
    // Bob, who never fetched before, computes owners on the new ring
    // and finds her at its first owner.
    assert_eq!(net.lookup(1, "alice").unwrap().0, alice);
    assert_eq!(net.version_held(1), Some(six.version()));
    let first = six.owners(&address).first().unwrap();
    let bob = net.hosts[1].public;
    assert!(net.replies.contains(&(first, bob, Kind::Online)));
}

#[test]
fn a_stale_view_is_told_not_owner_fetches_again_and_finds() {
    let (mut net, address) = alice_in_five();
    // Bob fetches the view of five.
    assert!(net.lookup(1, "alice").is_ok());
    let five = net.sky_ring();
    assert_eq!(net.version_held(1), Some(five.version()));
    // Both of her owners leave the ring (they keep running); she moves.
    let leaving: Vec<SocketAddr> = five.owners(&address).as_slice().collect();
    let three = net.set_ring((1..=5).map(node).filter(|n| !leaving.contains(n)));
    net.run_for(secs(26));
    assert_eq!(net.holders(&address), owners(&three, &address));
    // Bob still holds five: the node he asks says it does not own her.
    assert_eq!(net.version_held(1), Some(five.version()));
    net.replies.clear();
    assert_eq!(net.lookup(1, "alice").unwrap().0, net.hosts[0].public);
    let bob = net.hosts[1].public;
    assert!(
        net.replies
            .iter()
            .any(|r| *r == (leaving[0], bob, Kind::NotOwner)),
        "{:?}",
        net.replies
    );
    assert!(
        net.replies
            .iter()
            .any(|r| r.1 == bob && r.2 == Kind::Online && !leaving.contains(&r.0))
    );
    assert_eq!(net.version_held(1), Some(three.version()), "fetched again");
    assert!(
        !net.take_events(1)
            .iter()
            .any(|e| matches!(e, Event::Lookup { result: Err(_), .. }))
    );
}

#[test]
fn an_introduction_is_checked_with_the_key_of_the_node_it_came_from() {
    let (mut net, address) = alice_in_five();
    net.take_events(0);
    let owners: Vec<SocketAddr> = net.sky_ring().owners(&address).as_slice().collect();
    let (a, b) = (owners[0], owners[1]);
    let key_b = IntroKeys::new(&NodeSecret::new(net.sky_node(b).secret)).key_for(&address);
    let caller = VirtualAddr([9; 16]);
    let endpoint: SocketAddr = "192.0.2.9:9999".parse().unwrap();
    let intro = Message::Introduction {
        caller,
        mac: introduction_mac(&key_b, &caller, &endpoint),
        hint: [0; 16],
        endpoint,
    };
    let mut bytes = vec![0u8; intro.buffer_len()];
    intro.emit(&mut bytes);
    let stranger = (1..=5).map(node).find(|n| !owners.contains(n)).unwrap();
    let now = net.now;
    // B's key, but from A or from a node she never registered with.
    for from in [a, stranger] {
        net.hosts[0]
            .earth
            .handle_datagram(now, from, &mut bytes.clone());
        net.flush(0);
        let events = net.take_events(0);
        assert_eq!(events, vec![Event::ForgedIntroduction], "from {from}");
    }
    // From B itself it is an introduction.
    net.hosts[0]
        .earth
        .handle_datagram(now, b, &mut bytes.clone());
    net.flush(0);
    assert!(net.take_events(0).contains(&Event::Introduced {
        friend: None,
        caller,
        endpoint
    }));
}

#[test]
fn an_owner_that_forgot_is_registered_with_again_alone() {
    let (mut net, address) = alice_in_five();
    net.take_events(0);
    let owners = owners(&net.sky_ring(), &address);
    net.restart_node(owners[1]);
    assert_eq!(net.holders(&address), vec![owners[0]]);
    net.run_for(secs(26));
    assert_eq!(net.holders(&address), owners);
    assert!(registered(&net.take_events(0)).is_empty(), "held all along");
    // The new secret's introduction key replaced nothing: both work.
    assert!(net.lookup(1, "alice").is_ok());
}

#[test]
fn bootstrap_moves_on_to_the_next_node_that_answers() {
    let dead: SocketAddr = "192.0.2.99:7700".parse().unwrap();
    let mut net = Net::with_ring(&["alice", "bob"], 5, |c| c.sky = vec![dead, node(3)]);
    net.online(0);
    net.run_for(secs(3));
    assert_eq!(registered(&net.take_events(0)).len(), 1);
    assert!(net.lookup(1, "alice").is_ok());
}

#[test]
fn a_standalone_node_is_a_sky_of_one() {
    let mut net = Net::new(&["alice", "bob"], |_| {});
    net.online(0);
    net.run_for(secs(60));
    let events = net.take_events(0);
    assert!(events.contains(&Event::Sky {
        version: 0,
        nodes: 1
    }));
    assert_eq!(registered(&events).len(), 1);
    assert!(!net.keepalive_rings.is_empty());
    assert!(
        net.keepalive_rings.iter().all(|&r| r == 0),
        "keepalives carry no ring version"
    );
    assert!(net.lookup(1, "alice").is_ok());
}

#[test]
fn a_silent_sky_is_reported_once_and_tried_again() {
    let mut net = Net::new(&["alice", "bob"], |_| {});
    net.skies[0].down = true;
    net.online(0);
    net.run_for(secs(60));
    let events = net.take_events(0);
    assert_eq!(
        events.iter().filter(|e| **e == Event::SkySilent).count(),
        1,
        "{events:?}"
    );
    assert!(net.to_sky[0] < 100, "backs off: {}", net.to_sky[0]);
    net.skies[0].down = false;
    net.run_for(secs(60));
    assert_eq!(registered(&net.take_events(0)).len(), 1);
}
