//! Tests of `ring`.

use super::*;

fn args(nodes: Vec<usize>) -> RingArgs {
    RingArgs {
        nodes,
        replicas: 2,
        per_prefix: 1,
        positions: vec![1, 16],
        trials: 3,
        seed: 7,
    }
}

#[test]
fn shares_are_fractions_of_the_ring() {
    let rows = simulate(&args(vec![10, 100])).unwrap();
    for r in &rows {
        let n = r.nodes as f64;
        assert!((r.mean_primary - 1.0 / n).abs() < 1e-9);
        assert!((r.mean_owned - 2.0 / n).abs() < 1e-9);
        assert!(r.max_primary >= r.mean_primary && r.max_primary <= 1.0);
        assert!(r.max_owned >= r.mean_owned && r.max_owned <= 1.0);
    }
}

#[test]
fn same_arguments_same_report() {
    let a = run(&args(vec![50])).unwrap();
    assert_eq!(a, run(&args(vec![50])).unwrap());
    assert_ne!(
        a,
        run(&RingArgs {
            seed: 8,
            ..args(vec![50])
        })
        .unwrap()
    );
}

#[test]
fn nodes_in_one_block_share_k_not_more() {
    // Four nodes per /24: an address's two owners are in two blocks, so
    // a block's nodes together own at most what one node would.
    let a = RingArgs {
        per_prefix: 4,
        ..args(vec![40])
    };
    let rows = simulate(&a).unwrap();
    assert!((rows[0].mean_owned - 2.0 / 40.0).abs() < 1e-9);
}

#[test]
fn bad_arguments_are_refused() {
    assert!(simulate(&args(vec![0])).is_err());
    assert!(
        simulate(&RingArgs {
            replicas: 0,
            ..args(vec![10])
        })
        .is_err()
    );
}

/// The table in docs/DHT.md: `cargo test --release --lib
/// sim::ring::tests::default_table -- --ignored --nocapture`, or
/// `sky sim ring`.
#[test]
#[ignore]
fn default_table() {
    let a = RingArgs {
        nodes: vec![10, 100, 1_000, 10_000],
        replicas: 2,
        per_prefix: 1,
        positions: vec![1, 16],
        trials: 20,
        seed: 1,
    };
    println!("{}", run(&a).unwrap());
}
