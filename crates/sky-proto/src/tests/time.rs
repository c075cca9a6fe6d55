//! Time newtype tests.

use super::*;

#[test]
fn arithmetic_saturates_instead_of_panicking() {
    let t = MonoTime::from_secs(5);
    assert_eq!(t - Duration::from_secs(9), MonoTime::ZERO);
    assert_eq!(
        t.saturating_duration_since(MonoTime::from_secs(9)),
        Duration::ZERO
    );
    assert_eq!((t + Duration::from_secs(1)).as_secs(), 6);
    assert_eq!(t.checked_sub(Duration::from_secs(6)), None);
    let u = UnixTime::from_millis(1500);
    assert_eq!(u.as_secs(), 1);
    assert!(u < u + Duration::from_nanos(1));
}
