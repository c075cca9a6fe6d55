//! Tests of `ring`.

use super::*;

fn ep(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn loopback(n: u8) -> SocketAddr {
    SocketAddr::new(IpAddr::from([127, 0, 0, n]), 7700)
}

fn slash32() -> RingConfig {
    RingConfig {
        prefix_v4: 32,
        ..RingConfig::default()
    }
}

#[test]
fn position_ignores_the_port_and_ipv4_mapping() {
    let a = position_of_ip(ep("192.0.2.1:1").ip(), 0);
    assert_eq!(a, position_of_ip(ep("[::ffff:192.0.2.1]:2").ip(), 0));
    assert_ne!(a, position_of_ip(ep("192.0.2.2:1").ip(), 0));
    assert_ne!(a, position_of_ip(ep("192.0.2.1:1").ip(), 1));
}

#[test]
fn owners_follow_the_address_and_skip_shared_prefixes() {
    let members: Vec<SocketAddr> = (1..=5).map(loopback).collect();
    // /32: every loopback address is its own operator.
    let ring = Ring::new(slash32(), members.clone());
    for i in 0..200u8 {
        let addr = VirtualAddr([i; 16]);
        let owners = ring.owners(&addr);
        assert_eq!(owners.len(), 2);
        // The first owner holds the first point at or after the address.
        let pos = position_of_address(&addr);
        let points: Vec<(u64, SocketAddr)> = ring
            .members()
            .iter()
            .flat_map(|m| (0..16).map(|i| (position_of_ip(m.endpoint.ip(), i), m.endpoint)))
            .collect();
        let next = points.iter().filter(|p| p.0 >= pos).min_by_key(|p| p.0);
        let expected = next.or_else(|| points.iter().min_by_key(|p| p.0)).unwrap();
        assert_eq!(owners.first(), Some(expected.1));
    }
    // /24: all of 127.0.0.x is one operator, so one owner only.
    let ring24 = Ring::new(RingConfig::default(), members);
    assert_eq!(ring24.owners(&VirtualAddr([7; 16])).len(), 1);
}

#[test]
fn mixed_prefixes_give_one_owner_per_prefix() {
    let members = [
        ep("192.0.2.1:7700"),
        ep("192.0.2.2:7700"),
        ep("192.0.2.3:7700"),
        ep("198.51.100.1:7700"),
        ep("[2001:db8::1]:7700"),
        ep("[2001:db8::2]:7700"),
    ];
    let config = RingConfig {
        replicas: 3,
        ..RingConfig::default()
    };
    let ring = Ring::new(config, members);
    for i in 0..=255u8 {
        let owners = ring.owners(&VirtualAddr([i; 16]));
        assert_eq!(owners.len(), 3, "three prefixes, three owners");
        let prefixes: Vec<[u8; 16]> = owners.as_slice().map(|e| config.prefix(e.ip())).collect();
        assert_ne!(prefixes[0], prefixes[1]);
        assert_ne!(prefixes[1], prefixes[2]);
        assert_ne!(prefixes[0], prefixes[2]);
    }
}

#[test]
fn version_names_the_view() {
    let a = Ring::new(slash32(), (1..=4).map(loopback));
    let b = Ring::new(slash32(), (1..=4).rev().map(loopback));
    assert_eq!(a.version(), b.version(), "order of arrival does not matter");
    let c = Ring::new(slash32(), (1..=3).map(loopback));
    assert_ne!(a.version(), c.version());
    let d = Ring::new(RingConfig::default(), (1..=4).map(loopback));
    assert_ne!(a.version(), d.version(), "settings are part of the view");
    let e = Ring::new(
        RingConfig {
            positions: 1,
            ..slash32()
        },
        (1..=4).map(loopback),
    );
    assert_ne!(a.version(), e.version());
    assert_ne!(Ring::new(slash32(), []).version(), 0);
}

#[test]
fn a_node_leaving_moves_only_its_own_addresses() {
    let all = Ring::new(slash32(), (1..=10).map(loopback));
    let without = Ring::new(slash32(), (1..=10).filter(|&n| n != 4).map(loopback));
    let gone = loopback(4);
    for i in 0..1000u32 {
        let mut a = [0u8; 16];
        a[..4].copy_from_slice(&i.wrapping_mul(2_654_435_761).to_be_bytes());
        let addr = VirtualAddr(a);
        let before = all.owners(&addr);
        let after = without.owners(&addr);
        if !before.contains(gone) {
            assert_eq!(before, after);
        } else {
            // The survivor keeps owning it.
            let survivor = before.as_slice().find(|&e| e != gone).unwrap();
            assert!(after.contains(survivor));
        }
    }
}

#[test]
fn single_member_and_empty_rings() {
    let me = loopback(1);
    let ring = Ring::new(slash32(), [me]);
    assert!(ring.is_owner(me, &VirtualAddr([3; 16])));
    assert!(!ring.is_owner(loopback(2), &VirtualAddr([3; 16])));
    assert!((ring.primary_shares()[0] - 1.0).abs() < 1e-9);
    let empty = Ring::new(slash32(), []);
    assert!(empty.owners(&VirtualAddr([3; 16])).is_empty());
}

#[test]
fn shares_sum_to_one() {
    for positions in [1, 16] {
        let config = RingConfig {
            positions,
            ..slash32()
        };
        let ring = Ring::new(config, (1..=50).map(loopback));
        let sum: f64 = ring.primary_shares().iter().sum();
        assert!((sum - 1.0).abs() < 1e-9);
    }
}

#[test]
fn config_is_validated() {
    assert!(RingConfig::default().validate().is_ok());
    for bad in [
        RingConfig {
            replicas: 0,
            ..RingConfig::default()
        },
        RingConfig {
            replicas: 9,
            ..RingConfig::default()
        },
        RingConfig {
            prefix_v4: 33,
            ..RingConfig::default()
        },
        RingConfig {
            prefix_v6: 129,
            ..RingConfig::default()
        },
        RingConfig {
            positions: 0,
            ..RingConfig::default()
        },
        RingConfig {
            positions: 65,
            ..RingConfig::default()
        },
    ] {
        assert!(bad.validate().is_err());
    }
}
