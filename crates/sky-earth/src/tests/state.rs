//! Tests of `state`.

use super::*;
use crate::ratchet::DEFAULT_EPOCH;
use sky_proto::time::UnixTime;

fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("sky-state-{name}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&d);
    d
}

fn state() -> State {
    let now = UnixTime::from_secs(1_795_000_000);
    let identity = Identity::generate([5; 64], DEFAULT_EPOCH, now);
    let mut bob = Identity::generate([6; 64], DEFAULT_EPOCH, now);
    let mut friends = Friends::default();
    friends.add("bob", bob.invite(now).into()).unwrap();
    State {
        identity,
        friends,
        pending_resets: ["bob".to_string()].into(),
        sky: vec!["sky.example:7700".into()],
    }
}

#[test]
fn state_round_trips_through_an_owner_only_directory() {
    let dir = temp_dir("roundtrip").join("nested");
    let mut s = state();
    s.save(&dir).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&dir.join(FILE)), 0o600);
    }
    assert!(!dir.join("state.toml.tmp").exists());
    let mut back = State::load(&dir).unwrap();
    assert_eq!(back.identity.public_key(), s.identity.public_key());
    assert_eq!(back.identity.schedule, s.identity.schedule);
    assert_eq!(back.pending_resets, s.pending_resets);
    assert_eq!(back.sky, s.sky);
    let e = Epoch(s.identity.chain.origin().0 + 5);
    assert_eq!(
        back.identity.chain.address_at(e),
        s.identity.chain.address_at(e)
    );
    let (b0, b1) = (
        s.friends.0.get_mut("bob").unwrap(),
        back.friends.0.get_mut("bob").unwrap(),
    );
    assert_eq!(b0.chain.address_at(e), b1.chain.address_at(e));
    assert_eq!(b0.keys[0], b1.keys[0]);
    fs::remove_dir_all(dir.parent().unwrap()).unwrap();
}

#[test]
fn a_crash_before_the_rename_leaves_the_old_state() {
    let dir = temp_dir("crash");
    let s = state();
    s.save(&dir).unwrap();
    // A crash mid-write leaves a partial temporary file behind.
    fs::write(dir.join("state.toml.tmp"), "version = 1\n[identity").unwrap();
    let back = State::load(&dir).unwrap();
    assert_eq!(back.identity.public_key(), s.identity.public_key());
    s.save(&dir).unwrap(); // and the next save replaces it
    assert!(!dir.join("state.toml.tmp").exists());
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn missing_and_corrupt_state_say_so() {
    let dir = temp_dir("missing");
    assert!(matches!(State::load(&dir), Err(StateError::Missing(_))));
    fs::create_dir_all(&dir).unwrap();
    fs::write(dir.join(FILE), "version = 1\n").unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(dir.join(FILE), fs::Permissions::from_mode(0o600)).unwrap();
    }
    assert!(matches!(State::load(&dir), Err(StateError::Corrupt(..))));
    fs::remove_dir_all(&dir).unwrap();
}

#[cfg(unix)]
#[test]
fn a_state_file_others_can_read_is_refused_with_the_fix() {
    use std::os::unix::fs::PermissionsExt;
    let dir = std::env::temp_dir().join(format!("sky-state-exposed-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let now = UnixTime::from_secs(1_800_000_000);
    let state = State::new(
        Identity::generate([9; 64], DEFAULT_EPOCH, now),
        Friends::default(),
    );
    state.save(&dir).unwrap();
    let file = dir.join("state.toml");
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let e = State::load(&dir).unwrap_err();
    assert!(matches!(e, StateError::Exposed(_, 0o644)), "{e}");
    assert!(e.to_string().contains("chmod 600"), "{e}");
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
    assert!(State::load(&dir).is_ok());
    std::fs::remove_dir_all(&dir).unwrap();
}
