//! `earth_frames`: the earth-to-earth frames and the cryptography on top.
//!
//! Mode 0 (first byte even): the rest of the input is one datagram.
//! - `Frame::new_checked` never panics, agrees with `Registry::of`, and
//!   its accessors stay in bounds;
//! - `handshake::respond` (Bob's fixed static key, Alice his friend)
//!   accepts it only if it is the genuine msg1 Alice's fixed keys make,
//!   and calls it malformed exactly when the frame layer says it is no
//!   msg1;
//! - `Initiator::finish` (Alice's handshake in flight) accepts it only if
//!   it is Bob's genuine msg2, likewise.
//!
//! Mode 1 (first byte odd): a real session (Alice seals, Bob opens), then
//! operations read from the input: seal a frame, deliver a sealed frame
//! (in any order, any number of times), deliver it with a flipped bit, or
//! deliver arbitrary bytes. Every result is checked against a model of the
//! replay window (a counter opens once, and not 64 or more below the
//! highest opened): genuine frames open exactly when the model says, with
//! the payload sealed; damaged bytes never open, and arbitrary bytes only
//! if they are byte for byte what Alice's session seals (a frame from a
//! seed: every session on the fixed keys is the same session) and the
//! model accepts the counter.

use std::collections::HashSet;
use std::sync::OnceLock;

use sky_earth::handshake::{self, HandshakeError, Initiator, Session};
use sky_proto::frame::{self, Frame, FrameKind, Registry};
use sky_proto::wire::MAX_DATAGRAM_LEN;
use x25519_dalek::{PublicKey, StaticSecret};

use crate::Input;

/// Alice's static secret (the initiator).
pub const ALICE: [u8; 32] = [1; 32];
/// Bob's static secret (the responder).
pub const BOB: [u8; 32] = [2; 32];
const ALICE_EPHEMERAL: [u8; 32] = [11; 32];
const BOB_EPHEMERAL: [u8; 32] = [12; 32];

/// The public key of a static secret.
pub fn public(secret: [u8; 32]) -> [u8; 32] {
    PublicKey::from(&StaticSecret::from(secret)).to_bytes()
}

/// Alice's handshake in flight, and the genuine msg1 and msg2.
pub struct Fixed {
    pub initiator: Initiator,
    pub msg1: [u8; frame::MSG1_LEN],
    pub msg2: [u8; frame::MSG2_LEN],
    pub alice: [u8; 32],
    pub bob: [u8; 32],
}

pub fn fixed() -> &'static Fixed {
    static FIXED: OnceLock<Fixed> = OnceLock::new();
    FIXED.get_or_init(|| {
        let alice = public(ALICE);
        let bob = public(BOB);
        let mut msg1 = [0u8; frame::MSG1_LEN];
        let initiator = Initiator::start(ALICE, bob, ALICE_EPHEMERAL, &mut msg1);
        let mut msg2 = [0u8; frame::MSG2_LEN];
        handshake::respond(BOB, &[alice], &msg1, BOB_EPHEMERAL, &mut msg2)
            .expect("Bob answers Alice");
        Fixed {
            initiator,
            msg1,
            msg2,
            alice,
            bob,
        }
    })
}

/// A fresh session pair on the fixed handshake: (Alice's, Bob's).
pub fn sessions() -> (Session, Session) {
    let f = fixed();
    let mut msg2 = [0u8; frame::MSG2_LEN];
    let (bob, _) = handshake::respond(BOB, &[f.alice], &f.msg1, BOB_EPHEMERAL, &mut msg2)
        .expect("Bob answers Alice");
    let alice = f.initiator.finish(&msg2).expect("Alice accepts Bob");
    (alice, bob)
}

pub fn run(data: &[u8]) {
    let mut input = Input::new(data);
    if input.u8() & 1 == 0 {
        one_datagram(input.rest());
    } else {
        session(&mut input);
    }
}

fn one_datagram(data: &[u8]) {
    let f = fixed();
    let checked = Frame::new_checked(data);
    match (&checked, Registry::of(data)) {
        (Ok(fr), Registry::Frame(kind)) => assert_eq!(fr.kind(), kind),
        (Ok(fr), other) => panic!("frame {:?} but registry {other:?}", fr.kind()),
        (Err(_), _) => {}
    }
    if let Ok(fr) = &checked {
        assert_eq!(fr.as_bytes(), data);
        match fr.kind() {
            FrameKind::Msg1 => {
                let _ = fr.key(frame::field::MSG1_EPHEMERAL);
                assert_eq!(data.len(), frame::MSG1_LEN);
            }
            FrameKind::Msg2 => {
                let _ = fr.key(frame::field::MSG2_EPHEMERAL);
                assert_eq!(data.len(), frame::MSG2_LEN);
            }
            FrameKind::Data => {
                assert!(data.len() <= MAX_DATAGRAM_LEN);
                assert_eq!(fr.payload_len() + frame::DATA_OVERHEAD, data.len());
                let _ = fr.counter();
            }
            FrameKind::Punch => assert_eq!((fr.counter(), fr.payload_len()), (0, 0)),
            FrameKind::Refuse => assert_eq!(data.len(), frame::REFUSE_LEN),
            FrameKind::Probe => {
                assert_eq!(data.len(), sky_proto::hint::PROBE_LEN);
                let _ = sky_proto::hint::verify_probe(&[7; 32], data, true);
            }
        }
    }
    let is = |kind| checked.as_ref().is_ok_and(|fr| fr.kind() == kind);

    let mut msg2 = [0u8; frame::MSG2_LEN];
    match handshake::respond(BOB, &[f.alice], data, BOB_EPHEMERAL, &mut msg2) {
        Ok((_, friend)) => {
            assert_eq!(data, f.msg1, "respond accepted a msg1 Alice did not make");
            assert_eq!((friend, msg2), (0, f.msg2));
        }
        Err(HandshakeError::Malformed) => assert!(!is(FrameKind::Msg1), "frame says msg1"),
        Err(e) => {
            assert!(is(FrameKind::Msg1), "{e:?} for a frame that is no msg1");
            assert_ne!(e, HandshakeError::Replayed);
        }
    }
    // Nobody is a stranger's friend: even the genuine msg1 is refused.
    if let Ok(r) = handshake::respond(BOB, &[], data, BOB_EPHEMERAL, &mut msg2) {
        panic!("a handshake with no friends succeeded (friend {})", r.1);
    }
    match f.initiator.finish(data) {
        Ok(_) => assert_eq!(data, f.msg2, "finish accepted a msg2 Bob did not make"),
        Err(HandshakeError::Malformed) => assert!(!is(FrameKind::Msg2), "frame says msg2"),
        Err(e) => {
            assert!(is(FrameKind::Msg2), "{e:?} for a frame that is no msg2");
            assert_eq!(e, HandshakeError::Forged);
        }
    }
}

/// What Alice's session on the fixed keys seals as its `counter`-th
/// datagram with `payload` (`None` past the first 4096: no seed goes
/// that far, so such a frame is a forgery).
fn sealed_by_alice(counter: u64, payload: &[u8]) -> Option<Vec<u8>> {
    if counter == 0 || counter > 4096 {
        return None;
    }
    let (mut alice, _) = sessions();
    let mut scratch = [0u8; frame::DATA_OVERHEAD];
    for _ in 1..counter {
        alice.seal(&[], &mut scratch);
    }
    let mut out = vec![0u8; payload.len() + frame::DATA_OVERHEAD];
    alice.seal(payload, &mut out);
    Some(out)
}

/// Bob's replay window, as a set.
#[derive(Default)]
struct Window {
    opened: HashSet<u64>,
    max: u64,
}

impl Window {
    fn fresh(&self, counter: u64) -> bool {
        counter != 0
            && !self.opened.contains(&counter)
            && (counter > self.max || self.max - counter < 64)
    }

    fn open(&mut self, counter: u64) {
        self.opened.insert(counter);
        self.max = self.max.max(counter);
    }
}

fn session(input: &mut Input<'_>) {
    let (mut alice, mut bob) = sessions();
    let mut sealed: Vec<(Vec<u8>, Vec<u8>)> = Vec::new(); // (frame, payload)
    let mut window = Window::default();
    let mut ops = 0;
    while !input.is_empty() && ops < 256 {
        ops += 1;
        let op = input.u8() % 4;
        match op {
            0 => {
                // Alice seals a payload (and it waits to be delivered).
                let n = usize::from(input.u16()) % (MAX_DATAGRAM_LEN - frame::DATA_OVERHEAD + 1);
                let payload = input.bytes(n).to_vec();
                let mut out = vec![0u8; payload.len() + frame::DATA_OVERHEAD];
                let len = alice.seal(&payload, &mut out);
                assert_eq!(len, out.len());
                let fr = Frame::new_checked(&out[..]).expect("a sealed frame is a frame");
                assert_eq!(fr.kind(), FrameKind::Data);
                assert_eq!(fr.counter(), sealed.len() as u64 + 1);
                sealed.push((out, payload));
            }
            1 | 2 if !sealed.is_empty() => {
                let damage = op == 2;
                let i = usize::from(input.u16()) % sealed.len();
                let (genuine, payload) = &sealed[i];
                let counter = i as u64 + 1;
                let mut bytes = genuine.clone();
                if damage {
                    let at = usize::from(input.u16()) % bytes.len();
                    let bit = 1u8 << (input.u8() % 8);
                    bytes[at] ^= bit;
                    assert!(bob.open(&mut bytes).is_err(), "a damaged frame opened");
                    continue;
                }
                let fresh = window.fresh(counter);
                match bob.open(&mut bytes) {
                    Ok(range) => {
                        assert!(fresh, "counter {counter} opened twice or too old");
                        assert_eq!(&bytes[range], &payload[..]);
                        window.open(counter);
                    }
                    Err(HandshakeError::Replayed) => {
                        assert!(!fresh, "fresh counter {counter} refused as replayed")
                    }
                    Err(e) => panic!("genuine frame {counter}: {e:?}"),
                }
            }
            _ => {
                let mut bytes = input.chunk().to_vec();
                let copy = bytes.clone();
                if let Ok(range) = bob.open(&mut bytes) {
                    // Sessions on the fixed keys are all the same session:
                    // a frame Alice sealed in another run (a seed) opens
                    // too. It must be hers, and fresh.
                    let counter = Frame::new_checked(&copy[..]).expect("opened").counter();
                    assert!(window.fresh(counter), "counter {counter} opened twice");
                    assert_eq!(
                        sealed_by_alice(counter, &bytes[range]).as_deref(),
                        Some(&copy[..]),
                        "forged bytes opened"
                    );
                    window.open(counter);
                }
            }
        }
    }
}
