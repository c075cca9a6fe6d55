//! Tests of `presence`.

use super::*;

fn ep(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn caller() -> IpAddr {
    "198.51.100.77".parse().unwrap()
}

#[test]
fn the_table_is_sized_for_its_capacity_at_start() {
    let p = Presence::new(100_000);
    let slots = p.table.slots();
    assert!(slots >= 100_000 && slots as f64 <= 100_000.0 / table::LOAD + 16.0);
}

#[test]
fn expired_entries_read_as_offline_and_are_swept() {
    let p = Presence::new(10);
    let a = VirtualAddr([1; 16]);
    p.register(a, ep("192.0.2.1:1"), Flags(0), 0, 75).unwrap();
    assert!(matches!(
        p.lookup(&a, caller(), 74, (5, 5)),
        Found::Online { .. }
    ));
    assert_eq!(p.lookup(&a, caller(), 75, (5, 5)), Found::Offline);
    assert_eq!(p.sweep(74), 0);
    assert_eq!(p.sweep(75), 1);
    assert!(p.is_empty());
}

#[test]
fn full_table_refuses_new_addresses_but_refreshes_old_ones() {
    let p = Presence::new(2);
    for i in 0..2 {
        p.register(VirtualAddr([i; 16]), ep("192.0.2.1:1"), Flags(0), 0, 10)
            .unwrap();
    }
    assert_eq!(
        p.register(VirtualAddr([9; 16]), ep("192.0.2.1:1"), Flags(0), 0, 10),
        Err(Refused::TableFull)
    );
    assert_eq!(
        p.register(VirtualAddr([1; 16]), ep("192.0.2.1:2"), Flags(0), 0, 20),
        Ok(())
    );
    assert!(p.refresh(&VirtualAddr([0; 16]), ep("192.0.2.1:1"), 5, 30));
}

#[test]
fn keepalive_from_another_endpoint_does_not_refresh() {
    let p = Presence::new(10);
    let a = VirtualAddr([1; 16]);
    p.register(a, ep("192.0.2.1:1"), Flags(0), 0, 10).unwrap();
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
    let p = Presence::with_budgets(1000, Budgets::unlimited());
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
        p.register(*a, ep("192.0.2.1:1"), Flags(0), 0, 100).unwrap();
    }
    let owned = addresses.iter().filter(|a| ring.is_owner(me, a)).count();
    assert!(owned > 0 && owned < addresses.len());
    assert_eq!(p.retain_owned(&ring, me), addresses.len() - owned);
    assert_eq!(p.len(), owned);
    for a in &addresses {
        let present = matches!(p.lookup(a, caller(), 1, (5, 5)), Found::Online { .. });
        assert_eq!(present, ring.is_owner(me, a), "{}", position_of_address(a));
    }
}

#[test]
fn introductions_are_limited_per_target_per_second() {
    let p = Presence::new(10);
    let a = VirtualAddr([1; 16]);
    p.register(a, ep("192.0.2.1:1"), Flags(0), 0, 1000).unwrap();
    let introduced = |from: &str, now| match p.lookup(&a, from.parse().unwrap(), now, (3, 2)) {
        Found::Online { introduce, .. } => introduce,
        Found::Offline => panic!("offline"),
    };
    // One caller gets its share (2 a second) of the target's 3 ...
    let flood = [0; 4].map(|_| introduced("203.0.113.66", 7));
    assert_eq!(flood, [true, true, false, false]);
    // ... and a friend from elsewhere is still introduced, until the
    // target's own allowance is spent.
    assert!(introduced("198.51.100.7", 7));
    assert!(!introduced("192.0.2.200", 7));
    assert!(introduced("203.0.113.66", 8));
}

#[test]
fn one_source_ip_holds_at_most_its_budget_and_another_prefix_still_registers() {
    let budgets = Budgets {
        per_ip: 3,
        per_prefix: 5,
        prefix_v4: 24,
        prefix_v6: 56,
    };
    let p = Presence::with_budgets(100, budgets);
    let mut n = 0u8;
    let mut reg = |p: &Presence, from: &str| {
        n += 1;
        p.register(VirtualAddr([n; 16]), ep(from), Flags(0), 0, 100)
    };
    for port in 1..=3 {
        assert_eq!(reg(&p, &format!("192.0.2.1:{port}")), Ok(()));
    }
    assert_eq!(reg(&p, "192.0.2.1:4"), Err(Refused::SourceLimit));
    // Another IP of the same /24: until the prefix's share.
    assert_eq!(reg(&p, "192.0.2.2:1"), Ok(()));
    assert_eq!(reg(&p, "192.0.2.3:1"), Ok(()));
    assert_eq!(reg(&p, "192.0.2.4:1"), Err(Refused::PrefixLimit));
    // Another prefix registers at once.
    assert_eq!(reg(&p, "198.51.100.1:1"), Ok(()));
    // Refreshing what one holds is never refused; moving an address to a
    // source at its budget is.
    let first = VirtualAddr([1; 16]);
    assert_eq!(
        p.register(first, ep("192.0.2.1:9"), Flags(0), 0, 200),
        Ok(())
    );
    assert_eq!(
        p.register(VirtualAddr([7; 16]), ep("192.0.2.1:9"), Flags(0), 0, 200),
        Err(Refused::SourceLimit)
    );
    // Removing one frees its place.
    assert!(p.remove(&first));
    assert_eq!(reg(&p, "192.0.2.1:5"), Ok(()));
}

#[test]
fn ipv6_sources_count_by_their_slash_56() {
    let budgets = Budgets {
        per_ip: 100,
        per_prefix: 2,
        prefix_v4: 24,
        prefix_v6: 56,
    };
    let p = Presence::with_budgets(100, budgets);
    let at = |i: u8, from: &str| p.register(VirtualAddr([i; 16]), ep(from), Flags(0), 0, 100);
    assert_eq!(at(1, "[2001:db8:0:100::1]:1"), Ok(()));
    assert_eq!(at(2, "[2001:db8:0:1ff::2]:1"), Ok(()), "same /56");
    assert_eq!(at(3, "[2001:db8:0:1ff::3]:1"), Err(Refused::PrefixLimit));
    assert_eq!(at(4, "[2001:db8:0:200::1]:1"), Ok(()), "the next /56");
}

#[test]
fn expired_entries_never_count_toward_capacity_or_budgets() {
    let budgets = Budgets {
        per_ip: 2,
        per_prefix: 100,
        prefix_v4: 24,
        prefix_v6: 56,
    };
    let p = Presence::with_budgets(3, budgets);
    for i in 0..2 {
        p.register(VirtualAddr([i; 16]), ep("192.0.2.1:1"), Flags(0), 0, 10)
            .unwrap();
    }
    p.register(VirtualAddr([5; 16]), ep("198.51.100.1:1"), Flags(0), 0, 10)
        .unwrap();
    // Full, and the source at its budget, until they expire at 10: then
    // the expired entries are reclaimed on the spot, no sweep waited for.
    assert_eq!(
        p.register(VirtualAddr([9; 16]), ep("203.0.113.1:1"), Flags(0), 9, 20),
        Err(Refused::TableFull)
    );
    assert_eq!(
        p.register(VirtualAddr([9; 16]), ep("203.0.113.1:1"), Flags(0), 10, 20),
        Ok(())
    );
    assert_eq!(
        p.register(VirtualAddr([8; 16]), ep("192.0.2.1:1"), Flags(0), 11, 20),
        Ok(())
    );
    assert_eq!(p.len(), 2);
}
