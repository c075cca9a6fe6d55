//! Earth clients and one standalone sky node (a real shard) on the
//! simulated network: registration, keepalives, NAT rebinding, epochs,
//! punching, delivery under loss, glare, strangers and forgeries, the
//! address reset, cover traffic.

use std::net::SocketAddr;
use std::time::Duration;

use sky_earth::client::{Event, Failure, Overlap, ROTATION_DELAY};
use sky_earth::handshake::{self, Initiator};
use sky_earth::ratchet::{ChainKey, DEFAULT_OVERLAP, Epoch};
use sky_harness::*;
use sky_proto::frame::{MSG1_LEN, Payload};
use sky_proto::wire::{self, Message, VirtualAddr};

#[test]
fn registers_keeps_alive_and_is_found() {
    let mut net = Net::new(&["alice", "bob"], |_| {});
    net.online(0);
    net.run_for(secs(1));
    let regs = registered(&net.take_events(0));
    assert_eq!(regs.len(), 1);
    assert_eq!(regs[0].1, net.hosts[0].public, "the observed endpoint");
    assert_eq!(net.hosts[0].earth.observed(), Some(net.hosts[0].public));
    let sent_before = net.keepalive_rings.len();
    // Ten minutes later she is still there: keepalives, every 25 s (her
    // NAT keeps idle mappings: the idle test passed, nothing shortened).
    net.run_for(secs(600));
    let keepalives = net.keepalive_rings.len() - sent_before;
    assert!((23..=25).contains(&keepalives), "{keepalives} keepalives");
    assert!(
        !net.hosts[0]
            .events
            .iter()
            .any(|e| matches!(e, Event::KeepaliveShortened { .. }))
    );
    assert_eq!(net.lookup(1, "alice").unwrap().0, net.hosts[0].public);
    // The sky introduced bob to alice, by name.
    assert!(net.take_events(0).iter().any(|e| matches!(e,
        Event::Introduced { friend: Some(f), endpoint, .. } if f == "bob" && *endpoint == net.hosts[1].public)));
    net.hosts[0].earth.go_offline();
    net.flush(0);
    net.run_for(secs(1));
    assert_eq!(net.lookup(1, "alice"), Err(Failure::Offline));
}

#[test]
fn lookup_of_a_silent_sky_fails_in_bounded_time() {
    let mut net = Net::new(&["alice", "bob"], |_| {});
    net.loss = 1; // everything lost
    assert_eq!(net.lookup(1, "alice"), Err(Failure::SkySilent));
    let now = net.now;
    net.hosts[1].earth.lookup(now, "nobody");
    net.flush(1);
    assert!(net.take_events(1).contains(&Event::Lookup {
        friend: "nobody".into(),
        result: Err(Failure::NoSuchFriend)
    }));
}

#[test]
fn registers_again_when_the_nat_mapping_changes() {
    let mut net = Net::new(&["alice", "bob"], |_| {});
    net.online(0);
    net.run_for(secs(1));
    net.take_events(0);
    // Her NAT gives her a new public port.
    let moved: SocketAddr = "203.0.113.1:40999".parse().unwrap();
    net.hosts[0].public = moved;
    net.run_for(secs(30));
    let regs = registered(&net.take_events(0));
    assert_eq!(regs.len(), 1, "registered again after one keepalive");
    assert_eq!(regs[0].1, moved);
    assert_eq!(net.lookup(1, "alice").unwrap().0, moved);
}

#[test]
fn registers_again_when_the_node_forgot() {
    let mut net = Net::new(&["alice", "bob"], |_| {});
    net.online(0);
    net.run_for(secs(1));
    net.take_events(0);
    net.restart_sky();
    assert_eq!(net.lookup(1, "alice"), Err(Failure::Offline));
    net.run_for(secs(30));
    assert_eq!(registered(&net.take_events(0)).len(), 1);
    assert!(net.lookup(1, "alice").is_ok());
}

#[test]
fn moves_to_the_next_address_at_the_boundary() {
    let mut net = Net::new(&["alice", "bob"], |_| {});
    net.online(0);
    net.run_for(secs(1));
    let (first, first_seen) = registered(&net.take_events(0))[0];
    let schedule = net.hosts[0].earth.state().identity.schedule;
    let next = schedule.start_of(Epoch(schedule.epoch_at(net.now).0 + 1));
    // The old address is gone at once at the boundary.
    net.run_until(next + secs(1));
    assert!(!net.present(&first));
    // The new one comes within a minute (docs/PRIVACY.md's random delay),
    // from a fresh socket: the sky sees a new endpoint, nothing ties the
    // two addresses together on the wire.
    net.run_until(next + ROTATION_DELAY + secs(1));
    let regs = registered(&net.take_events(0));
    assert_eq!(regs.len(), 1);
    assert_ne!(regs[0].0, first);
    assert_ne!(
        regs[0].1, first_seen,
        "the new address came from the old socket"
    );
    assert_eq!(regs[0].1.ip(), first_seen.ip());
    assert!(net.present(&regs[0].0));
    assert!(net.lookup(1, "alice").is_ok());
}

#[test]
fn dual_registration_keeps_the_previous_address_for_h() {
    let mut net = Net::new(&["alice", "bob"], |c| c.overlap = Overlap::Dual);
    net.online(0);
    net.run_for(secs(1));
    let schedule = net.hosts[0].earth.state().identity.schedule;
    let next = schedule.start_of(Epoch(schedule.epoch_at(net.now).0 + 1));
    net.run_until(next - secs(60));
    let regs = registered(&net.take_events(0));
    let old = regs.last().unwrap().0;
    net.run_until(next + secs(60));
    let new = registered(&net.take_events(0)).last().unwrap().0;
    assert_ne!(old, new);
    assert!(net.present(&old), "previous address kept during H");
    assert!(net.present(&new));
    net.run_until(next + DEFAULT_OVERLAP + secs(60));
    assert!(!net.present(&old), "and dropped after H");
    assert!(net.present(&new));
}

fn delivered(events: &[Event], id: u64) -> Option<(SocketAddr, u32)> {
    events.iter().find_map(|e| match e {
        Event::Delivered {
            id: i, peer, sent, ..
        } if *i == id => Some((*peer, *sent)),
        _ => None,
    })
}

fn messages(events: &[Event]) -> Vec<(String, Vec<u8>)> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::Message { friend, payload } => Some((friend.clone(), payload.clone())),
            _ => None,
        })
        .collect()
}

#[test]
fn send_punches_through_filtering_nats_and_delivers() {
    let mut net = Net::new(&["alice", "bob"], |_| {});
    net.online(0);
    net.run_for(secs(1));
    let now = net.now;
    let id = net.hosts[1].earth.send(now, "alice", b"hello");
    net.flush(1);
    net.run_for(secs(6));
    let bob = net.take_events(1);
    let (peer, sent) = delivered(&bob, id).expect("delivered");
    assert_eq!(peer, net.hosts[0].public);
    assert!(sent <= 4, "{sent} datagrams");
    let alice = net.take_events(0);
    assert_eq!(
        messages(&alice),
        vec![("alice".replace("alice", "bob"), b"hello".to_vec())]
    );
    assert!(
        alice
            .iter()
            .any(|e| matches!(e, Event::Connected { friend, .. } if friend == "bob"))
    );
    // Over the session: best-effort datagrams both ways, and a second
    // reliable message needs no new handshake.
    assert!(net.hosts[0].earth.send_datagram("bob", b"ping"));
    net.flush(0);
    let now = net.now;
    let id2 = net.hosts[1].earth.send(now, "alice", b"again");
    net.flush(1);
    net.run_for(secs(1));
    let bob = net.take_events(1);
    assert_eq!(delivered(&bob, id2).unwrap().1, 1);
    assert_eq!(
        messages(&bob),
        vec![("alice".to_string(), b"ping".to_vec())]
    );
}

#[test]
fn delivery_survives_loss() {
    for loss in [2, 3, 5] {
        let mut net = Net::new(&["alice", "bob"], |_| {});
        net.loss = loss;
        // Both online through the loss first: the members fetch (1232 B
        // each way) has its own retries; this is about the call.
        net.online(0);
        net.online(1);
        net.run_for(secs(30));
        let now = net.now;
        let id = net.hosts[1].earth.send(now, "alice", b"through loss");
        net.flush(1);
        net.run_for(secs(6));
        let bob = net.take_events(1);
        assert!(delivered(&bob, id).is_some(), "loss 1/{loss}: {bob:?}");
        let got = messages(&net.take_events(0));
        assert_eq!(
            got.len(),
            1,
            "delivered exactly once despite retries: {got:?}"
        );
    }
}

#[test]
fn both_sending_at_once_both_deliver() {
    let mut net = Net::new(&["alice", "bob"], |_| {});
    net.online(0);
    net.online(1);
    net.run_for(secs(1));
    let now = net.now;
    let a = net.hosts[0].earth.send(now, "bob", b"from alice");
    let b = net.hosts[1].earth.send(now, "alice", b"from bob");
    net.flush(0);
    net.flush(1);
    net.run_for(secs(6));
    let (ea, eb) = (net.take_events(0), net.take_events(1));
    assert!(delivered(&ea, a).is_some(), "{ea:?}");
    assert!(delivered(&eb, b).is_some(), "{eb:?}");
    assert_eq!(
        messages(&ea),
        vec![("bob".to_string(), b"from bob".to_vec())]
    );
    assert_eq!(
        messages(&eb),
        vec![("alice".to_string(), b"from alice".to_vec())]
    );
}

#[test]
fn an_offline_friend_fails_and_a_silent_path_gives_up() {
    let mut net = Net::new(&["alice", "bob"], |_| {});
    let now = net.now;
    let id = net.hosts[1].earth.send(now, "alice", b"x");
    net.flush(1);
    net.run_for(secs(6));
    assert!(net.take_events(1).contains(&Event::Failed {
        friend: "alice".into(),
        id,
        why: Failure::Offline
    }));
    // Online, but the path drops everything between the two.
    net.online(0);
    net.run_for(secs(1));
    net.block_peers = true;
    let now = net.now;
    let id = net.hosts[1].earth.send(now, "alice", b"x");
    net.flush(1);
    net.run_for(secs(6));
    assert!(net.take_events(1).contains(&Event::Failed {
        friend: "alice".into(),
        id,
        why: Failure::Unreachable
    }));
    assert!(
        net.hosts[1]
            .earth
            .poll_timeout()
            .is_none_or(|t| t > net.now)
    );
}

#[test]
fn strangers_and_forged_introductions_are_refused() {
    let mut net = Net::new(&["alice", "bob"], |_| {});
    net.online(0);
    net.run_for(secs(1));
    // A forged introduction from somewhere else than the sky.
    let intro = Message::Introduction {
        caller: VirtualAddr([1; 16]),
        mac: wire::Mac([0; 8]),
        hint: [0; 16],
        endpoint: "192.0.2.7:9".parse().unwrap(),
    };
    let mut buf = [0u8; 64];
    let n = intro.emit(&mut buf);
    let now = net.now;
    let stranger: SocketAddr = "192.0.2.7:9".parse().unwrap();
    net.hosts[0]
        .earth
        .handle_datagram(now, stranger, &mut buf[..n]);
    net.hosts[0]
        .earth
        .handle_datagram(now, sky(), &mut buf[..n]);
    // A forged msg1 (a broken tag) is answered with nothing.
    let mut msg1 = [0u8; MSG1_LEN];
    let alice_pub = net.hosts[0].earth.state().identity.public_key();
    let initiator = Initiator::start([99; 32], alice_pub, [98; 32], &mut msg1);
    let mut forged = msg1;
    forged[90] ^= 1;
    net.hosts[0]
        .earth
        .handle_datagram(now, stranger, &mut forged);
    net.flush(0);
    assert!(
        net.flight.iter().all(|f| f.2 != stranger),
        "answered a forgery"
    );
    // A stranger's handshake: a valid msg1 from a key alice does not know.
    net.hosts[0].earth.handle_datagram(now, stranger, &mut msg1);
    net.flush(0);
    let events = net.take_events(0);
    assert_eq!(
        events
            .iter()
            .filter(|e| **e == Event::ForgedIntroduction)
            .count(),
        2,
        "{events:?}"
    );
    assert!(events.iter().any(|e| matches!(
        e,
        Event::HandshakeRefused {
            error: handshake::HandshakeError::Stranger,
            ..
        }
    )));
    // The stranger is told, once, smaller than what it sent, in a way
    // only it can check.
    let to_stranger: Vec<&Vec<u8>> = net
        .flight
        .iter()
        .filter(|f| f.2 == stranger)
        .map(|f| &f.3)
        .collect();
    assert_eq!(to_stranger.len(), 1, "{to_stranger:?}");
    assert!(to_stranger[0].len() < MSG1_LEN);
    assert!(initiator.refused(to_stranger[0]));
}

#[test]
fn address_reset_reaches_friends_and_is_acknowledged_after_the_save() {
    let mut net = Net::new(&["alice", "bob", "carol"], |c| c.reset_retry = secs(60));
    net.online(1);
    net.run_for(secs(1));
    let now = net.now;
    let old_alice = net.hosts[2].earth.state().friends.0["alice"].clone();
    net.hosts[0]
        .earth
        .remove_friend(now, "carol", ChainKey::from_bytes([77; 32]))
        .unwrap();
    net.flush(0);
    assert!(net.take_events(0).contains(&Event::SaveState));
    assert_eq!(
        net.hosts[0].earth.state().pending_resets,
        ["bob".to_string()].into()
    );
    net.online(0);
    // Nothing leaves before the new chain is on disk.
    net.run_for(secs(2));
    assert_eq!(net.to_sky[0], 0, "sent before the save");
    net.hosts[0].earth.saved();
    net.flush(0);
    net.run_for(secs(6));
    let bob = net.take_events(1);
    assert!(
        bob.contains(&Event::ResetAdopted {
            friend: "alice".into()
        }),
        "{bob:?}"
    );
    // Bob has not saved yet: no acknowledgement, alice still pending.
    assert!(
        !net.take_events(0)
            .iter()
            .any(|e| matches!(e, Event::ResetAcknowledged { .. }))
    );
    // Bob's save failed and he never acknowledges that notice: alice
    // sends it again a minute later; this time bob saves.
    net.hosts[1].earth.save_failed();
    let mut saved = false;
    for _ in 0..700 {
        net.run_for(Duration::from_millis(100));
        if net.take_events(1).contains(&Event::SaveState) {
            net.hosts[1].earth.saved();
            net.flush(1);
            saved = true;
            break;
        }
    }
    assert!(saved, "the notice came again");
    net.run_for(secs(2));
    let alice = net.take_events(0);
    assert!(
        alice.contains(&Event::ResetAcknowledged {
            friend: "bob".into()
        }),
        "{alice:?}"
    );
    assert!(net.hosts[0].earth.state().pending_resets.is_empty());
    // Bob finds alice under her new chain; carol, under the old, does not.
    assert!(net.lookup(1, "alice").is_ok());
    assert_eq!(net.lookup(2, "alice"), Err(Failure::Offline));
    let mut old = old_alice;
    let e = old.schedule.epoch_at(net.now);
    assert!(!net.present(&old.chain.address_at(e).unwrap()));
}

#[test]
fn a_forged_reset_notice_is_ignored() {
    // A notice carrying another key than the one the session proved.
    let mut net = Net::new(&["alice", "bob"], |_| {});
    net.online(0);
    net.run_for(secs(1));
    let mut other = identity(42);
    let mut forged = vec![Payload::Reset as u8];
    forged.extend_from_slice(&other.invite(net.now).to_bytes());
    let now = net.now;
    net.hosts[1]
        .earth
        .send_raw_payload_for_test(now, "alice", forged);
    net.flush(1);
    net.run_for(secs(6));
    let alice = net.take_events(0);
    assert!(
        !alice
            .iter()
            .any(|e| matches!(e, Event::ResetAdopted { .. } | Event::SaveState)),
        "{alice:?}"
    );
    let bob_key = net.hosts[1].earth.state().identity.public_key();
    assert_eq!(net.hosts[0].earth.state().friends.0["bob"].keys[0], bob_key);
}

#[test]
fn cover_traffic_registers_random_addresses_and_drops_them() {
    let mut net = Net::new(&["alice"], |c| c.cover = Some(secs(120)));
    net.sky_log = Some(Vec::new());
    net.online(0);
    net.run_for(secs(3600));
    let now = net.now;
    let mut id = net.hosts[0].earth.state().identity.clone();
    let own = id.chain.address_at(id.schedule.epoch_at(now)).unwrap();
    // On the wire, as the sky saw it: her own registrations come from her
    // main socket; every cover registration from a socket of its own.
    let mut own_sources = std::collections::HashSet::new();
    let mut cover_sources: std::collections::HashMap<_, std::collections::HashSet<_>> =
        Default::default();
    for (from, m) in net.sky_log.as_ref().unwrap() {
        if let Message::Register { key, .. } = m {
            let address = VirtualAddr::from_key(key);
            if address == own {
                own_sources.insert(*from);
            } else {
                cover_sources.entry(address).or_default().insert(*from);
            }
        }
    }
    assert_eq!(own_sources.len(), 1, "{own_sources:?}");
    assert!(cover_sources.len() >= 10, "{} decoys", cover_sources.len());
    let mut seen = own_sources.clone();
    for sources in cover_sources.values() {
        assert_eq!(sources.len(), 1, "a decoy moved sockets: {sources:?}");
        let source = *sources.iter().next().unwrap();
        assert!(seen.insert(source), "a decoy shared a socket: {source}");
    }
    // Registrations seen by the sky: hers plus cover ones, and no cover
    // one outlives its hold (at most 5 keepalive intervals).
    let covers = net.hosts[0]
        .earth
        .registrations()
        .iter()
        .filter(|r| r.cover)
        .count();
    assert!(net.present(&own));
    assert!(
        net.skies[0].presence.len() <= 1 + covers,
        "cover entries are unregistered when done"
    );
    assert!(
        net.hosts[0].sockets.len() <= 1 + covers,
        "a decoy's socket is released when it is done"
    );
    assert!(
        net.to_sky[0] > 160 + 10,
        "cover registrations and their keepalives were sent"
    );
    // Without cover traffic the same hour is only her keepalives.
    let mut quiet = Net::new(&["alice"], |_| {});
    quiet.online(0);
    quiet.run_for(secs(3600));
    // (keepalives, plus a few sent again with a rotated cookie)
    assert!(quiet.to_sky[0] <= 160, "{}", quiet.to_sky[0]);
    assert_eq!(quiet.skies[0].presence.len(), 1);
}

// ---- a sky of many nodes ----
