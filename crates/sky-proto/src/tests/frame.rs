//! Frame layout tests.

use super::*;

#[test]
fn the_registry_separates_sky_messages_from_frames() {
    assert_eq!(Registry::of(&[1, 0x81]), Registry::Sky);
    assert_eq!(Registry::of(&[PUNCH]), Registry::Frame(FrameKind::Punch));
    assert_eq!(Registry::of(&[0x26]), Registry::Unknown);
    assert_eq!(Registry::of(&[]), Registry::Unknown);
    for kind in FrameKind::ALL {
        assert_ne!(kind as u8, crate::wire::VERSION);
    }
}

#[test]
fn lengths_are_the_documented_ones() {
    assert_eq!(MSG1_LEN, 97);
    assert_eq!(MSG2_LEN, 49);
    assert_eq!(DATA_OVERHEAD, 25);
    assert_eq!(field::MSG1_TAG.end, MSG1_LEN);
    assert_eq!(field::MSG2_TAG.end, MSG2_LEN);
}

#[test]
fn every_length_of_every_kind_is_checked_without_panicking() {
    let bytes = [0u8; 1300];
    for first in 0..=255u8 {
        for len in 0..1300 {
            let mut b = bytes[..len].to_vec();
            if let Some(f) = b.first_mut() {
                *f = first;
            }
            if let Ok(frame) = Frame::new_checked(&b[..]) {
                let _ = (frame.counter(), frame.payload_len());
                match frame.kind() {
                    FrameKind::Msg1 => assert_eq!(len, MSG1_LEN),
                    FrameKind::Msg2 => assert_eq!(len, MSG2_LEN),
                    FrameKind::Refuse => assert_eq!(len, REFUSE_LEN),
                    FrameKind::Data => assert!(len >= DATA_OVERHEAD),
                    FrameKind::Punch => assert!(len >= 1),
                    FrameKind::Probe => assert_eq!(len, crate::hint::PROBE_LEN),
                }
            }
        }
    }
}

#[test]
fn acknowledgements_round_trip() {
    let p = ack_payload(0x0102_0304_0506_0708);
    assert_eq!(Payload::from_byte(p[0]), Some(Payload::Ack));
    assert_eq!(parse_ack(&p[1..]), Some(0x0102_0304_0506_0708));
    assert_eq!(parse_ack(&p[2..]), None);
}
