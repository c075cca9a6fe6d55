use super::*;
use proptest::prelude::*;

const KEY: [u8; 32] = [7; 32];
const CALLER: VirtualAddr = VirtualAddr([1; 16]);
const TARGET: VirtualAddr = VirtualAddr([2; 16]);

fn sample() -> Hint {
    Hint {
        flags: HintFlags(HintFlags::LOCAL | HintFlags::KNOWN),
        candidate: Some("192.168.1.20:40123".parse().unwrap()),
    }
}

#[test]
fn a_hint_opens_only_under_its_key_for_its_lookup() {
    let sealed = sample().seal(&KEY, [9, 9, 9], &CALLER, &TARGET);
    assert_eq!(Hint::open(&KEY, &sealed, &CALLER, &TARGET), Some(sample()));
    assert_eq!(Hint::open(&[8; 32], &sealed, &CALLER, &TARGET), None);
    // Moved to another lookup (another caller or target): refused.
    assert_eq!(Hint::open(&KEY, &sealed, &TARGET, &CALLER), None);
    assert_eq!(
        Hint::open(&KEY, &sealed, &CALLER, &VirtualAddr([3; 16])),
        None
    );
}

#[test]
fn the_sealed_bytes_do_not_show_the_candidate() {
    let sealed = sample().seal(&KEY, [1, 2, 3], &CALLER, &TARGET);
    let ip = [192u8, 168, 1, 20];
    assert!(!sealed.windows(4).any(|w| w == ip));
    assert!(!sealed.windows(2).any(|w| w == 40123u16.to_be_bytes()));
    // Two seals of one hint under two nonces share nothing but length.
    let other = sample().seal(&KEY, [1, 2, 4], &CALLER, &TARGET);
    assert_ne!(sealed[3..], other[3..]);
}

#[test]
fn no_candidate_is_none() {
    let h = Hint {
        flags: HintFlags(HintFlags::RANDOM | HintFlags::KNOWN),
        candidate: None,
    };
    let sealed = h.seal(&KEY, [0; 3], &CALLER, &TARGET);
    assert_eq!(Hint::open(&KEY, &sealed, &CALLER, &TARGET), Some(h));
}

#[test]
fn a_probe_verifies_in_its_direction_only() {
    let p = probe(&KEY, [4, 3, 2, 1], true);
    assert_eq!(p.len(), PROBE_LEN);
    assert_eq!(
        crate::frame::Registry::of(&p),
        crate::frame::Registry::Frame(crate::frame::FrameKind::Probe)
    );
    assert!(verify_probe(&KEY, &p, true));
    // Reflected back at its sender, or under another key: refused.
    assert!(!verify_probe(&KEY, &p, false));
    assert!(!verify_probe(&[1; 32], &p, true));
    assert!(!verify_probe(&KEY, &p[..12], true));
}

proptest! {
    #[test]
    fn opening_arbitrary_bytes_never_panics(bytes in any::<[u8; HINT_LEN]>()) {
        let _ = Hint::open(&KEY, &bytes, &CALLER, &TARGET);
    }

    #[test]
    fn every_hint_round_trips(flags: u8, ip: [u8; 4], port in 1u16.., nonce: [u8; 3]) {
        let h = Hint {
            flags: HintFlags(flags),
            candidate: (ip != [0; 4]).then(|| SocketAddrV4::new(ip.into(), port)),
        };
        let sealed = h.seal(&KEY, nonce, &CALLER, &TARGET);
        prop_assert_eq!(Hint::open(&KEY, &sealed, &CALLER, &TARGET), Some(h));
    }

    #[test]
    fn verifying_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..32)) {
        let _ = verify_probe(&KEY, &bytes, true);
    }
}
