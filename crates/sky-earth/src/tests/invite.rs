//! Tests of `invite`.

use super::*;
use crate::ratchet::{Chain, DEFAULT_EPOCH};

fn invite() -> Invite {
    let ck = ChainKey::from_bytes([9; 32]);
    Invite {
        epoch: Epoch(20_411),
        schedule: Schedule {
            length: DEFAULT_EPOCH,
            phase: ck.phase(DEFAULT_EPOCH),
        },
        chain_key: ck,
        keys: vec![[7; 32]],
    }
}

#[test]
fn an_invite_round_trips_through_its_string() {
    let text = invite().encode();
    assert!(text.starts_with("sky1-"));
    assert_eq!(text.len(), 5 + 2 * 84, "84 bytes for one device, as in v1");
    assert_eq!(Invite::decode(&format!("  {text}\n")), Ok(invite()));
}

#[test]
fn a_friend_finds_the_user_from_the_invite() {
    let ck = ChainKey::from_bytes([9; 32]);
    let mut owner = Chain::new(Epoch(20_000), ck.clone());
    let schedule = Schedule {
        length: DEFAULT_EPOCH,
        phase: ck.phase(DEFAULT_EPOCH),
    };
    let made = Invite {
        epoch: Epoch(20_411),
        chain_key: owner.key_at(Epoch(20_411)).unwrap(),
        schedule,
        keys: vec![[7; 32]],
    };
    let got = Invite::decode(&made.encode()).unwrap();
    assert_eq!(got.schedule, schedule);
    let mut friend = Chain::new(got.epoch, got.chain_key);
    for e in 20_411..20_420 {
        assert_eq!(friend.address_at(Epoch(e)), owner.address_at(Epoch(e)));
    }
    assert_eq!(friend.address_at(Epoch(20_410)), None);
}

#[test]
fn damaged_invites_are_refused() {
    let text = invite().encode();
    let mut damaged: Vec<char> = text.chars().collect();
    damaged[40] = if damaged[40] == '0' { '1' } else { '0' };
    let damaged: String = damaged.into_iter().collect();
    assert_eq!(Invite::decode(&damaged), Err(InviteError::Check));
    assert_eq!(
        Invite::decode(&text[..text.len() - 2]),
        Err(InviteError::Format)
    );
    assert_eq!(Invite::decode("sky2-00"), Err(InviteError::Format));
    for n in 0..text.len() {
        let _ = Invite::decode(&text[..n]); // never panics
    }
}

#[test]
fn every_device_key_travels_and_the_length_says_how_many() {
    let mut three = invite();
    three.keys = vec![[7; 32], [8; 32], [9; 32]];
    let text = three.encode();
    assert_eq!(text.len(), 5 + 2 * (84 + 64));
    assert_eq!(Invite::decode(&text), Ok(three));
    let mut nine = invite();
    nine.keys = vec![[1; 32]; MAX_DEVICES + 1];
    assert_eq!(Invite::decode(&nine.encode()), Err(InviteError::Format));
    let mut none = invite();
    none.keys.clear();
    assert_eq!(Invite::decode(&none.encode()), Err(InviteError::Format));
}

#[test]
fn out_of_range_schedules_and_epochs_are_refused() {
    use crate::ratchet::{MAX_EPOCH, MAX_WALK, MIN_EPOCH, Schedule};
    use std::time::Duration;
    let with = |length: Duration, epoch: u64| {
        let mut i = invite();
        i.schedule = Schedule {
            length,
            phase: Duration::ZERO,
        };
        i.epoch = crate::ratchet::Epoch(epoch);
        Invite::decode(&i.encode())
    };
    // The malicious invite: epoch 0 and a one-second epoch.
    assert_eq!(with(Duration::from_secs(1), 0), Err(InviteError::Schedule));
    assert_eq!(
        with(MIN_EPOCH - Duration::from_secs(1), 5),
        Err(InviteError::Schedule)
    );
    assert_eq!(
        with(MAX_EPOCH + Duration::from_secs(1), 5),
        Err(InviteError::Schedule)
    );
    // Within bounds it decodes; whether its epoch is reachable from now is
    // `check_at`'s.
    let ok = with(MIN_EPOCH, 0).unwrap();
    let now = sky_proto::time::UnixTime::from_secs(1_800_000_000);
    assert_eq!(
        ok.check_at(now),
        Err(InviteError::Epoch),
        "500 000 epochs back"
    );
    let current = ok.schedule.epoch_at(now).0;
    let recent = with(MIN_EPOCH, current - MAX_WALK).unwrap();
    assert_eq!(recent.check_at(now), Ok(()));
    let ahead = with(MIN_EPOCH, current + 2).unwrap();
    assert_eq!(ahead.check_at(now), Err(InviteError::Epoch));
}

#[test]
fn hex_with_a_sign_is_not_hex() {
    let text = invite().encode();
    let signed = text.replacen("sky1-0", "sky1-+", 1);
    if signed != text {
        assert_eq!(Invite::decode(&signed), Err(InviteError::Format));
    }
    assert_eq!(sky_proto::wire::from_hex::<1>("+f"), None);
    assert_eq!(sky_proto::wire::from_hex::<1>("0f"), Some([15]));
}
