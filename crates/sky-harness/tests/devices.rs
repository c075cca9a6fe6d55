//! Several devices per user: each registers its own address (derived from
//! the shared chain and its device number), so no device knocks another
//! off, and a friend can reach each one.

use sky_earth::client::Event;
use sky_harness::*;

fn save(net: &mut Net, i: usize) {
    if net.hosts[i].events.contains(&Event::SaveState) && net.hosts[i].earth.unsaved() {
        net.hosts[i].earth.saved();
        net.flush(i);
    }
}

fn delivered(net: &Net, i: usize, id: u64) -> bool {
    net.hosts[i].events.iter().any(|e| {
        matches!(e,
        Event::Delivered { id: d, .. } if *d == id)
    })
}

#[test]
fn a_second_device_is_announced_to_friends_and_both_are_reachable() {
    let mut net = Net::new(&["alice", "bob"], |c| c.reset_retry = secs(2));
    net.online(0);
    net.online(1);
    net.run_for(secs(1));
    // Alice adds a device: bob is sent her new device list.
    let now = net.now;
    let second = net.hosts[0].earth.add_device(now, [42; 32]).unwrap();
    net.flush(0);
    save(&mut net, 0);
    for _ in 0..10 {
        net.run_for(secs(1));
        save(&mut net, 0);
        save(&mut net, 1);
    }
    assert_eq!(net.hosts[1].earth.state().friends.0["alice"].keys.len(), 2);
    assert!(net.hosts[0].earth.state().pending_resets.is_empty());
    // The new device starts from what the first gave it, and goes online.
    assert_eq!(second.identity.device(), 1);
    let a1 = net.add_host_with("alice", second, |_| {});
    net.online(a1);
    net.run_for(secs(1));
    // Both devices are registered, under different addresses.
    let a0_address = net.hosts[0].earth.registrations()[0].address;
    let a1_address = net.hosts[a1].earth.registrations()[0].address;
    assert_ne!(a0_address, a1_address);
    assert!(net.present(&a0_address) && net.present(&a1_address));
    // Bob reaches each, by device.
    for (device, host) in [(0u8, 0usize), (1, a1)] {
        let now = net.now;
        net.hosts[1].earth.lookup_device(now, "alice", device);
        net.flush(1);
        net.run_for(secs(1));
        let found = net.hosts[1].events.iter().rev().find_map(|e| match e {
            Event::Lookup { result, .. } => Some(result.clone()),
            _ => None,
        });
        assert_eq!(found.unwrap().unwrap().0, net.hosts[host].public);
        let id = net.hosts[1]
            .earth
            .send_to_device(now, "alice", device, b"to one device");
        net.flush(1);
        net.run_for(secs(2));
        assert!(delivered(&net, 1, id), "device {device} not reached");
        assert!(net.hosts[host].events.iter().any(|e| matches!(e,
            Event::Message { friend, .. } if friend == "bob")));
    }
    // After all that, neither device was knocked off.
    net.run_for(secs(60));
    assert!(net.present(&a0_address) && net.present(&a1_address));
}

/// What one lookup costs the sky in egress, by the number of devices the
/// friend has online (SPEC §6: at most 64 B for the common single-device
/// user; docs/PROTOCOL.md, "Several devices").
#[test]
fn egress_per_online_lookup_is_unchanged_for_one_device_and_per_device_for_more() {
    let mut net = Net::new(&["alice", "bob"], |_| {});
    net.online(0);
    net.online(1);
    net.run_for(secs(1));
    let measure = |net: &mut Net, device: Option<u8>| {
        let before = net.sky_egress;
        let now = net.now;
        match device {
            Some(d) => net.hosts[1].earth.lookup_device(now, "alice", d),
            None => net.hosts[1].earth.lookup(now, "alice"),
        }
        net.flush(1);
        net.run_for(ms(200));
        net.sky_egress - before
    };
    let one = measure(&mut net, None);
    assert_eq!(
        one,
        13 + 48,
        "online reply + introduction with its sealed hint"
    );
    assert!(one <= 64, "SPEC §6: at most 64 B per online lookup");
    // Alice gets a second device; bob learns of it.
    let now = net.now;
    let second = net.hosts[0].earth.add_device(now, [42; 32]).unwrap();
    net.hosts[0].earth.saved();
    net.flush(0);
    for _ in 0..5 {
        net.run_for(secs(1));
        if net.hosts[1].earth.unsaved() {
            net.hosts[1].earth.saved();
            net.flush(1);
        }
    }
    let a1 = net.add_host_with("alice", second, |_| {});
    net.online(a1);
    net.run_for(secs(1));
    let any = measure(&mut net, None);
    let just_one = measure(&mut net, Some(1));
    eprintln!(
        "sky egress per lookup: 1 device {one} B; 2 devices, any {any} B, one asked {just_one} B"
    );
    assert_eq!(
        just_one,
        13 + 48,
        "a lookup of one device costs what a one-device user's does"
    );
    assert_eq!(
        any,
        2 * (13 + 48),
        "any device: every device's address is asked"
    );
}
