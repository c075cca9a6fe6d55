//! A NAT that forgets idle mappings within the keepalive interval (many
//! mobile and carrier NATs do, after 10 to 30 s): the client's idle test
//! finds it and shortens its keepalives (`client/idle.rs`).

use sky_earth::client::{Event, Failure};
use sky_harness::*;

fn send(net: &mut Net) -> Result<(), Failure> {
    let now = net.now;
    let id = net.hosts[1].earth.send(now, "alice", b"are you there?");
    net.flush(1);
    net.run_for(secs(7));
    net.take_events(1)
        .into_iter()
        .find_map(|e| match e {
            Event::Delivered { id: i, .. } if i == id => Some(Ok(())),
            Event::Failed { id: i, why, .. } if i == id => Some(Err(why)),
            _ => None,
        })
        .expect("an outcome")
}

#[test]
fn a_nat_that_forgets_idle_mappings_is_learned_and_kept_open() {
    let mut net = Net::new(&["alice", "bob"], |_| {});
    net.hosts[0].idle_timeout = Some(secs(10));
    net.online(0);
    net.online(1);
    // Alice registered at once; her next keepalive is 25 s later. At 13 s
    // her NAT has forgotten the mapping the sky knows: bob's call, and
    // every introduction of it, are dropped at her router.
    net.run_for(secs(13));
    assert_eq!(
        send(&mut net),
        Err(Failure::Unreachable),
        "the reproduction"
    );
    // Her idle test fails twice (20 s of idle each), and she shortens.
    net.run_for(secs(120));
    let shortened = net.hosts[0].events.iter().find_map(|e| match e {
        Event::KeepaliveShortened { interval } => Some(*interval),
        _ => None,
    });
    let interval = shortened.expect("keepalives shortened");
    assert!(interval < secs(10), "{interval:?} within the NAT's 10 s");
    // From now on bob reaches her whenever he calls.
    for wait in [3, 7, 11] {
        net.run_for(secs(wait));
        assert_eq!(send(&mut net), Ok(()), "{wait} s later");
    }
}

#[test]
fn a_nat_that_keeps_idle_mappings_keeps_the_default_interval() {
    let mut net = Net::new(&["alice", "bob"], |_| {});
    net.hosts[0].idle_timeout = Some(secs(60));
    net.online(0);
    net.run_for(secs(300));
    assert!(
        !net.hosts[0]
            .events
            .iter()
            .any(|e| matches!(e, Event::KeepaliveShortened { .. }))
    );
}
