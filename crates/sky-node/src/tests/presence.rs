//! Tests of `presence`.

use super::*;

fn ep(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

#[test]
fn entry_is_packed() {
    assert_eq!(std::mem::size_of::<Entry>(), 24);
    assert_eq!(std::mem::size_of::<(Key, Entry)>(), 36);
}

#[test]
fn expired_entries_read_as_offline_and_are_swept() {
    let p = Presence::new(10);
    let a = VirtualAddr([1; 16]);
    p.register(a, ep("192.0.2.1:1"), Flags(0), 75).unwrap();
    assert!(matches!(p.lookup(&a, 74, 5), Found::Online { .. }));
    assert_eq!(p.lookup(&a, 75, 5), Found::Offline);
    assert_eq!(p.sweep(74), 0);
    assert_eq!(p.sweep(75), 1);
    assert!(p.is_empty());
}

#[test]
fn full_table_refuses_new_addresses_but_refreshes_old_ones() {
    let p = Presence::new(2);
    for i in 0..2 {
        p.register(VirtualAddr([i; 16]), ep("192.0.2.1:1"), Flags(0), 10)
            .unwrap();
    }
    assert_eq!(
        p.register(VirtualAddr([9; 16]), ep("192.0.2.1:1"), Flags(0), 10),
        Err(Full)
    );
    assert_eq!(
        p.register(VirtualAddr([1; 16]), ep("192.0.2.1:2"), Flags(0), 20),
        Ok(())
    );
    assert!(p.refresh(&VirtualAddr([0; 16]), ep("192.0.2.1:1"), 5, 30));
}

#[test]
fn keepalive_from_another_endpoint_does_not_refresh() {
    let p = Presence::new(10);
    let a = VirtualAddr([1; 16]);
    p.register(a, ep("192.0.2.1:1"), Flags(0), 10).unwrap();
    assert!(!p.refresh(&a, ep("192.0.2.1:2"), 5, 30));
    assert!(p.refresh(&a, ep("[::ffff:192.0.2.1]:1"), 5, 30));
}

#[test]
fn handoff_keeps_only_owned_addresses() {
    use sky_proto::ring::{RingConfig, position_of_address};
    let config = RingConfig {
        prefix_v4: 32,
        ..RingConfig::default()
    };
    let nodes: Vec<SocketAddr> = (1..=6).map(|i| ep(&format!("127.0.0.{i}:7700"))).collect();
    let ring = Ring::new(config, nodes.clone());
    let me = nodes[0];
    let p = Presence::new(1000);
    let addresses: Vec<VirtualAddr> = (0..=255u8)
        .map(|i| {
            VirtualAddr([
                i,
                i.wrapping_mul(7),
                3,
                4,
                5,
                6,
                7,
                8,
                9,
                10,
                11,
                12,
                13,
                14,
                15,
                16,
            ])
        })
        .collect();
    for a in &addresses {
        p.register(*a, ep("192.0.2.1:1"), Flags(0), 100).unwrap();
    }
    let owned = addresses.iter().filter(|a| ring.is_owner(me, a)).count();
    assert!(owned > 0 && owned < addresses.len());
    assert_eq!(p.retain_owned(&ring, me), addresses.len() - owned);
    assert_eq!(p.len(), owned);
    for a in &addresses {
        let present = matches!(p.lookup(a, 1, 5), Found::Online { .. });
        assert_eq!(present, ring.is_owner(me, a), "{}", position_of_address(a));
    }
}

#[test]
fn introductions_are_limited_per_target_per_second() {
    let p = Presence::new(10);
    let a = VirtualAddr([1; 16]);
    p.register(a, ep("192.0.2.1:1"), Flags(0), 1000).unwrap();
    let introduced = |now| match p.lookup(&a, now, 3) {
        Found::Online { introduce, .. } => introduce,
        Found::Offline => panic!("offline"),
    };
    assert_eq!([true, true, true, false], [0; 4].map(|_| introduced(7)));
    assert!(introduced(8));
}
