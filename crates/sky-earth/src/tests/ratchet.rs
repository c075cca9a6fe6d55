//! Tests of `ratchet`.

use super::*;
use sky_proto::time::UnixTime;

fn owner() -> (Chain, Schedule) {
    let ck = ChainKey::from_bytes([42; 32]);
    let schedule = Schedule {
        length: DEFAULT_EPOCH,
        phase: ck.phase(DEFAULT_EPOCH),
    };
    (Chain::new(Epoch(20_000), ck), schedule)
}

#[test]
fn a_friend_holding_epoch_e_computes_the_owners_addresses_for_e_to_e_plus_100() {
    let (mut own, _) = owner();
    let e = Epoch(20_037);
    let mut friend = Chain::new(e, own.key_at(e).unwrap());
    for i in 0..=100 {
        let epoch = Epoch(e.0 + i);
        assert_eq!(
            friend.address_at(epoch),
            own.address_at(epoch),
            "epoch {epoch:?}"
        );
        let key = own.address_key_at(epoch, 0).unwrap();
        assert_eq!(friend.address_key_at(epoch, 0), Some(key.clone()));
        // What the sky checks: the address is the hash of the public key,
        // and a registration's signature verifies under it.
        assert_eq!(VirtualAddr::from_key(&key.public()), key.address());
        assert_eq!(key.address(), own.address_at(epoch).unwrap());
        let cookie = sky_proto::wire::Cookie([3; 8]);
        let flags = sky_proto::wire::Flags(1);
        let sig = key.sign_register(&cookie, flags);
        let vk = ed25519_dalek::VerifyingKey::from_bytes(&key.public().0).unwrap();
        let statement = sky_proto::wire::register_statement(&cookie, flags);
        let ed = ed25519_dalek::Signature::from_bytes(&sig.0);
        assert!(vk.verify_strict(&statement, &ed).is_ok());
        let other = sky_proto::wire::register_statement(&sky_proto::wire::Cookie([4; 8]), flags);
        assert!(
            vk.verify_strict(&other, &ed).is_err(),
            "bound to the cookie"
        );
    }
}

#[test]
fn nothing_computes_an_earlier_epoch_from_a_later_key() {
    let (mut own, _) = owner();
    let e = Epoch(20_037);
    let mut friend = Chain::new(e, own.key_at(e).unwrap());
    assert_eq!(friend.key_at(Epoch(e.0 - 1)), None);
    // Walking forward from e never meets e-1's address or token.
    let before = own.address_at(Epoch(e.0 - 1)).unwrap();
    let before_key = own.address_key_at(Epoch(e.0 - 1), 0).unwrap();
    for i in 0..=100 {
        let epoch = Epoch(e.0 + i);
        assert_ne!(friend.address_at(epoch), Some(before));
        assert_ne!(friend.address_key_at(epoch, 0), Some(before_key.clone()));
    }
}

#[test]
fn every_epoch_has_its_own_address_and_phases_differ_between_users() {
    let (mut own, _) = owner();
    let mut seen = std::collections::HashSet::new();
    for i in 0..1000 {
        assert!(seen.insert(own.address_at(Epoch(20_000 + i)).unwrap()));
    }
    let phases: std::collections::HashSet<_> = (0..50u8)
        .map(|b| ChainKey::from_bytes([b; 32]).phase(DEFAULT_EPOCH))
        .collect();
    assert!(phases.len() > 40, "phases should spread: {}", phases.len());
    assert!(phases.iter().all(|p| *p < DEFAULT_EPOCH));
}

#[test]
fn schedule_epochs_start_at_the_phase() {
    let s = Schedule {
        length: Duration::from_secs(100),
        phase: Duration::from_secs(30),
    };
    assert_eq!(s.epoch_at(UnixTime::from_secs(129)), Epoch(0));
    assert_eq!(s.epoch_at(UnixTime::from_secs(130)), Epoch(1));
    assert_eq!(s.start_of(Epoch(1)), UnixTime::from_secs(130));
}

/// SPEC §2: the user registers only its current address; a friend whose
/// clock is off by up to H still finds it.
#[test]
fn lookups_find_the_user_with_clocks_skewed_by_up_to_h() {
    let (mut own, schedule) = owner();
    let h = DEFAULT_OVERLAP;
    let boundary = schedule.start_of(Epoch(20_050));
    let step = Duration::from_secs(60);
    // Owner times from 2 h before to 2 h after a boundary.
    let mut t = boundary - 2 * h;
    while t <= boundary + 2 * h {
        let registered = own.address_at(schedule.epoch_at(t)).unwrap();
        let mut skew = 0i64;
        while skew.unsigned_abs() <= h.as_secs() {
            let friend_time = UnixTime::from_secs((t.as_secs() as i64 + skew) as u64);
            let tried: Vec<_> = schedule
                .lookup_epochs(friend_time, h)
                .into_iter()
                .map(|e| own.address_at(e).unwrap())
                .collect();
            assert!(
                tried.contains(&registered),
                "owner at {t:?}, friend skewed {skew} s: not found"
            );
            skew = if skew < 0 { -skew } else { -skew - 300 };
        }
        t += step;
    }
}

#[test]
fn away_from_a_boundary_a_friend_tries_one_address() {
    let (_, schedule) = owner();
    let middle = schedule.start_of(Epoch(20_050)) + DEFAULT_EPOCH / 2;
    assert_eq!(schedule.lookup_epochs(middle, DEFAULT_OVERLAP).len(), 1);
}

#[test]
fn a_walk_beyond_the_bound_answers_none_at_once() {
    use super::MAX_WALK;
    let mut chain = Chain::new(Epoch(10), ChainKey::from_bytes([3; 32]));
    assert!(chain.key_at(Epoch(10 + MAX_WALK + 1)).is_none());
    assert!(chain.key_at(Epoch(u64::MAX)).is_none());
    assert!(chain.key_at(Epoch(9)).is_none(), "no going back");
    assert!(chain.key_at(Epoch(12)).is_some());
}
