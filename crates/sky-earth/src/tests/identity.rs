//! Tests of `identity`.

use super::*;
use crate::ratchet::DEFAULT_EPOCH;
use sky_proto::time::UnixTime;

#[test]
fn a_friend_added_from_an_invite_computes_the_users_current_address() {
    let now = UnixTime::from_secs(1_795_000_000);
    let mut alice = Identity::generate([3; 64], DEFAULT_EPOCH, now);
    let later = now + DEFAULT_EPOCH * 10;
    let invite = alice.invite(later);
    let mut friends = Friends::default();
    friends.add("alice", invite.into()).unwrap();
    let friend = friends.0.get_mut("alice").unwrap();
    let e = alice.schedule.epoch_at(later + DEFAULT_EPOCH * 3);
    assert_eq!(friend.chain.address_at(e), alice.chain.address_at(e));
    assert_eq!(friend.keys[0], alice.public_key());
    // The invite gave nothing before its own epoch.
    assert_eq!(friend.chain.address_at(alice.schedule.epoch_at(now)), None);
}

#[test]
fn friend_names_are_checked_and_unique() {
    let mut alice = Identity::generate([3; 64], DEFAULT_EPOCH, UnixTime::ZERO);
    let mut friends = Friends::default();
    let f: Friend = alice.invite(UnixTime::ZERO).into();
    assert!(matches!(
        friends.add("", f.clone()),
        Err(FriendError::BadName(_))
    ));
    assert!(matches!(
        friends.add("a b", f.clone()),
        Err(FriendError::BadName(_))
    ));
    friends.add("bob", f.clone()).unwrap();
    assert!(matches!(
        friends.add("bob", f),
        Err(FriendError::AlreadyFriend(_))
    ));
    friends.remove("bob").unwrap();
    assert!(matches!(
        friends.remove("bob"),
        Err(FriendError::NoSuchFriend(_))
    ));
}

#[test]
fn identities_from_different_randomness_differ() {
    let a = Identity::generate([1; 64], DEFAULT_EPOCH, UnixTime::ZERO);
    let b = Identity::generate([2; 64], DEFAULT_EPOCH, UnixTime::ZERO);
    assert_ne!(a.public_key(), b.public_key());
    assert!(!format!("{a:?}").contains("secret"));
}
