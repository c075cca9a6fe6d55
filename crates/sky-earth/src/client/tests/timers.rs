//! Timer table tests.

use super::*;

#[test]
fn timers_fire_in_deadline_order_and_moving_one_replaces_it() {
    let mut t = Timers::default();
    let at = UnixTime::from_secs;
    t.set(Timer::Reset, at(5));
    t.set(Timer::Fetch, at(3));
    t.set(Timer::Boundary, at(4));
    t.set(Timer::Fetch, at(6)); // moved, not doubled
    assert_eq!(t.next(), Some(at(4)));
    assert_eq!(t.pop_due(at(3)), None);
    assert_eq!(t.pop_due(at(5)), Some(Timer::Boundary));
    assert_eq!(t.pop_due(at(5)), Some(Timer::Reset));
    assert_eq!(t.pop_due(at(5)), None);
    t.cancel(Timer::Fetch);
    assert_eq!(t.next(), None);
}

#[test]
fn cancel_where_clears_a_machine_s_keys() {
    let mut t = Timers::default();
    let at = UnixTime::from_secs;
    t.set(Timer::GiveUp(1), at(1));
    t.set(Timer::NextOwner(1, 0), at(2));
    t.set(Timer::NextOwner(2, 0), at(3));
    t.cancel_where(|k| matches!(k, Timer::GiveUp(1) | Timer::NextOwner(1, _)));
    assert_eq!(t.get(Timer::NextOwner(2, 0)), Some(at(3)));
    assert_eq!(t.next(), Some(at(3)));
}
