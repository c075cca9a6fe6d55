//! Friends added, renamed and removed on a running client take effect at
//! once (`Earth::add_friend`, `rename_friend`, `remove_friend`), and a reset
//! is on disk before anything of it leaves.

use std::time::Duration;

use sky_earth::client::{Event, Failure};
use sky_earth::identity::FriendError;
use sky_earth::ratchet::ChainKey;
use sky_harness::*;

/// Lets host `i` "save": answers every `SaveState` it asked for.
fn save(net: &mut Net, i: usize) {
    if net.hosts[i].events.contains(&Event::SaveState) {
        net.hosts[i].earth.saved();
        net.flush(i);
    }
}

#[test]
fn a_friend_removed_while_registered_is_cut_off_within_one_keepalive_interval() {
    let mut net = Net::new(&["alice", "bob", "carol"], |c| c.reset_retry = secs(5));
    net.online(0);
    net.run_for(secs(1));
    assert!(net.lookup(2, "alice").is_ok(), "carol finds alice first");
    let old = net.hosts[0].earth.registrations()[0].address;
    let old_seen = net.hosts[0].earth.observed().unwrap();
    let now = net.now;
    net.hosts[0]
        .earth
        .remove_friend(now, "carol", ChainKey::from_bytes([9; 32]))
        .unwrap();
    net.flush(0);
    // Nothing of the reset leaves before the new chain is saved.
    let before = net.to_sky[0];
    net.run_for(secs(1));
    assert_eq!(net.to_sky[0], before, "sent before the save");
    save(&mut net, 0);
    net.run_for(secs(1));
    // The old address is gone from the sky, the new one is there.
    assert!(!net.present(&old), "the old address is still registered");
    let new = net.hosts[0].earth.registrations()[0].address;
    assert_ne!(new, old);
    assert!(net.present(&new));
    // From a new socket: the sky sees nothing that ties the two chains.
    assert_ne!(net.hosts[0].earth.observed().unwrap(), old_seen);
    // Carol's lookups say offline, her sends fail; bob (online) is sent
    // the new chain, acknowledges it and finds alice.
    assert_eq!(net.lookup(2, "alice"), Err(Failure::Offline));
    let now = net.now;
    let id = net.hosts[2].earth.send(now, "alice", b"hello?");
    net.flush(2);
    net.run_for(secs(6));
    assert!(net.hosts[2].events.iter().any(|e| matches!(e,
        Event::Failed { id: i, .. } if *i == id)));
    net.online(1);
    for _ in 0..20 {
        net.run_for(secs(1));
        save(&mut net, 1);
        save(&mut net, 0);
    }
    assert!(net.hosts[0].earth.state().pending_resets.is_empty());
    assert!(net.lookup(1, "alice").is_ok());
}

#[test]
fn a_friend_added_while_online_can_deliver_at_once() {
    let mut net = Net::new(&["alice", "bob"], |_| {});
    let dave = net.add_host("dave", &[0], |_| {});
    net.online(0);
    net.run_for(secs(1));
    // Before alice adds him, dave's handshake is refused.
    let now = net.now;
    let id = net.hosts[dave].earth.send(now, "alice", b"hi alice");
    net.flush(dave);
    net.run_for(secs(6));
    assert!(net.hosts[dave].events.iter().any(|e| matches!(e,
        Event::Failed { id: i, .. } if *i == id)));
    let invite = net.invite_of(dave);
    net.hosts[0].earth.add_friend("dave", invite).unwrap();
    net.flush(0);
    assert!(net.hosts[0].events.contains(&Event::SaveState));
    let now = net.now;
    let id = net.hosts[dave].earth.send(now, "alice", b"hi alice");
    net.flush(dave);
    net.run_for(secs(2));
    assert!(net.hosts[dave].events.iter().any(|e| matches!(e,
        Event::Delivered { id: i, .. } if *i == id)));
    assert!(net.hosts[0].events.iter().any(|e| matches!(e,
        Event::Message { friend, payload } if friend == "dave" && payload == b"hi alice")));
}

#[test]
fn own_and_duplicate_invites_are_refused_and_a_rename_keeps_the_friend() {
    let mut net = Net::new(&["alice", "bob"], |_| {});
    let own = net.invite_of(0);
    let bob = net.invite_of(1);
    let earth = &mut net.hosts[0].earth;
    assert_eq!(earth.add_friend("me", own), Err(FriendError::OwnInvite));
    assert_eq!(
        earth.add_friend("bobby", bob.clone()),
        Err(FriendError::SameKey("bob".into()))
    );
    assert_eq!(
        earth.add_friend("bob", bob),
        Err(FriendError::AlreadyFriend("bob".into()))
    );
    earth.rename_friend("bob", "robert").unwrap();
    net.online(0);
    net.online(1);
    net.run_for(secs(1));
    let now = net.now;
    let id = net.hosts[0].earth.send(now, "robert", b"new name");
    net.flush(0);
    net.run_for(Duration::from_secs(2));
    assert!(net.hosts[0].events.iter().any(|e| matches!(e,
        Event::Delivered { id: i, friend, .. } if *i == id && friend == "robert")));
}
