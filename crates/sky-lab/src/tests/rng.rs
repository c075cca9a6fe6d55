//! Tests of `rng`.

use super::*;

#[test]
fn same_labels_same_stream_other_labels_other_stream() {
    let draw = |labels: &[u64]| {
        let mut rng = Rng::stream(7, labels);
        [rng.next_u64(), rng.next_u64()]
    };
    assert_eq!(draw(&[1, 2]), draw(&[1, 2]));
    assert_ne!(draw(&[1, 2]), draw(&[2, 1]));
    assert_ne!(draw(&[1]), draw(&[1, 0]));
    assert_ne!(
        Rng::stream(7, &[1]).next_u64(),
        Rng::stream(8, &[1]).next_u64()
    );
}

#[test]
fn draws_stay_in_range_and_average_right() {
    let mut rng = Rng::stream(1, &[]);
    let n = 100_000;
    let mut unit_sum = 0.0;
    let mut exp_sum = 0.0;
    for _ in 0..n {
        let u = rng.unit();
        assert!((0.0..1.0).contains(&u));
        unit_sum += u;
        exp_sum += rng.exp(3.0);
        assert!(rng.below(10) < 10);
        assert!((5..8).contains(&rng.between(5, 8)));
    }
    assert!((unit_sum / n as f64 - 0.5).abs() < 0.01);
    assert!((exp_sum / n as f64 - 3.0).abs() < 0.05);
    assert_eq!(rng.below(0), 0);
    assert_eq!(rng.between(4, 4), 4);
}
