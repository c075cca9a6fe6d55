//! Tests of `bench::targets`: which node each operation goes to.

use std::net::SocketAddr;

use sky_proto::ring::{Ring, RingConfig};
use sky_proto::wire::VirtualAddr;

use super::{Slice, Targets};
use crate::bench::secret;
use crate::rng::Rng;

/// The addresses of population members `range`.
fn addresses(range: std::ops::Range<usize>) -> Vec<VirtualAddr> {
    range.map(|i| secret(i).address()).collect()
}

fn sky(ips: &[&str], prefix_v4: u8) -> Targets {
    let config = RingConfig {
        prefix_v4,
        ..RingConfig::default()
    };
    let members = ips.iter().map(|ip| format!("{ip}:7700").parse().unwrap());
    let target: SocketAddr = format!("{}:7700", ips[0]).parse().unwrap();
    Targets::of_ring(target, Ring::new(config, members)).unwrap()
}

fn ring_of(targets: &Targets) -> &Ring {
    &targets.ring.as_ref().unwrap().0
}

#[test]
fn offline_addresses_drawn_for_a_node_have_it_as_first_owner() {
    for (ips, prefix) in [
        (&["10.0.0.1", "10.0.0.2", "10.0.0.3"][..], 32),
        (&["127.0.0.1", "127.0.0.2", "127.0.0.3"][..], 32),
        // Two on one /24: one operator, one replica between them.
        (&["10.0.0.1", "10.0.0.2", "10.9.0.1", "10.8.0.1"][..], 24),
    ] {
        let t = sky(ips, prefix);
        let ring = ring_of(&t);
        let mut rng = Rng::stream(1, &[]);
        for n in 0..t.nodes.len() {
            for _ in 0..2000 {
                let a = t
                    .offline_address(&mut rng, n)
                    .expect("every node is first owner somewhere");
                assert_eq!(ring.owners(&a).first(), Some(t.nodes[n]), "{ips:?}");
            }
        }
    }
}

#[test]
fn offline_addresses_cover_a_nodes_share_of_the_ring() {
    // Drawn uniformly over the node's arcs: the draws' spread over the
    // ring's first byte follows the node's arcs, not one arc.
    let t = sky(&["10.0.0.1", "10.0.0.2", "10.0.0.3"], 32);
    let mut rng = Rng::stream(2, &[]);
    let mut first_bytes = std::collections::BTreeSet::new();
    for _ in 0..4000 {
        first_bytes.insert(t.offline_address(&mut rng, 1).unwrap().0[0]);
    }
    assert!(first_bytes.len() > 32, "{} first bytes", first_bytes.len());
}

#[test]
fn a_slice_knows_which_node_owns_each_member() {
    let t = sky(&["10.0.0.1", "10.0.0.2", "10.0.0.3"], 32);
    let ring = ring_of(&t);
    let slice = Slice::new(&t, 100..400, addresses(100..400), 4);
    assert_eq!(slice.addresses.len(), 300);
    let mut rng = Rng::stream(3, &[]);
    let mut copies = 0;
    for n in 0..t.nodes.len() {
        for c in 0..4 {
            copies += slice.owned[n * 4 + c].len();
            for _ in 0..100 {
                // Registered from its home socket only, with the owner's
                // rank among its owners.
                let (j, k) = slice.owned_by(&mut rng, n, c).unwrap();
                assert_eq!(j % 4, c);
                let owners = ring.owners(&slice.addresses[j]);
                assert_eq!(owners.as_slice().nth(k), Some(t.nodes[n]));
            }
        }
        for _ in 0..500 {
            let j = slice.first_owned_by(&mut rng, n).unwrap();
            assert_eq!(ring.owners(&slice.addresses[j]).first(), Some(t.nodes[n]));
        }
    }
    assert_eq!(copies, 2 * 300, "k = 2 owners each");
    let registrations: usize = slice
        .addresses
        .iter()
        .map(|a| t.owners(a).as_slice().len())
        .sum();
    assert_eq!(registrations, 600);
}

#[test]
fn alone_everything_goes_to_the_target_as_before() {
    let target: SocketAddr = "127.0.0.1:7700".parse().unwrap();
    let t = Targets::alone(target);
    assert!(!t.is_sky());
    let a = VirtualAddr([7; 16]);
    assert_eq!(t.owners(&a).as_slice(), &[0]);
    let slice = Slice::new(&t, 0..10, addresses(0..10), 3);
    // Registrations from socket 1: members 1, 4 and 7, each at some time.
    let mut r0 = Rng::stream(4, &[]);
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..100 {
        seen.insert(slice.owned_by(&mut r0, 0, 1).unwrap());
    }
    assert_eq!(
        seen.into_iter().collect::<Vec<_>>(),
        [(1, 0), (4, 0), (7, 0)]
    );
    assert_eq!(
        Slice::new(&t, 0..2, addresses(0..2), 3).owned_by(&mut r0, 0, 2),
        None
    );
    // The same draws a single-threaded run always made: below(len).
    let (mut r1, mut r2) = (Rng::stream(5, &[]), Rng::stream(5, &[]));
    for _ in 0..100 {
        assert_eq!(
            slice.first_owned_by(&mut r1, 0),
            Some(r2.below(10) as usize)
        );
    }
    let mut r3 = Rng::stream(6, &[]);
    let mut r4 = Rng::stream(6, &[]);
    let offline = t.offline_address(&mut r3, 0).unwrap();
    assert_eq!(offline.0[..8], r4.next_u64().to_le_bytes());
    assert_eq!(offline.0[8..], [0; 8]);
}

#[test]
fn a_sky_of_the_other_family_is_refused() {
    let ring = Ring::new(
        RingConfig::default(),
        ["[::1]:7700".parse().unwrap(), "[::2]:7700".parse().unwrap()],
    );
    assert!(Targets::of_ring("127.0.0.1:7700".parse().unwrap(), ring).is_err());
}
