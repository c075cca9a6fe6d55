//! Tests of `handshake`.

use super::*;

fn public(secret: [u8; 32]) -> [u8; 32] {
    PublicKey::from(&StaticSecret::from(secret)).to_bytes()
}

const ALICE: [u8; 32] = [1; 32];
const BOB: [u8; 32] = [2; 32];
const MALLORY: [u8; 32] = [3; 32];

fn handshake() -> (Session, Session) {
    let mut m1 = [0u8; MSG1_LEN];
    let i = Initiator::start(ALICE, public(BOB), [11; 32], &mut m1);
    let mut m2 = [0u8; MSG2_LEN];
    let (r, who) = respond(
        BOB,
        &[public(MALLORY), public(ALICE)],
        &m1,
        [12; 32],
        &mut m2,
    )
    .unwrap();
    assert_eq!(who, 1);
    (i.finish(&m2).unwrap(), r)
}

#[test]
fn friends_complete_a_handshake_and_exchange_sealed_datagrams() {
    let (mut a, mut b) = handshake();
    let mut buf = [0u8; 128];
    let n = a.seal(b"hello bob", &mut buf);
    let range = b.open(&mut buf[..n]).unwrap();
    assert_eq!(&buf[range], b"hello bob");
    let n = b.seal(b"hi alice", &mut buf);
    let range = a.open(&mut buf[..n]).unwrap();
    assert_eq!(&buf[range], b"hi alice");
}

#[test]
fn a_forged_handshake_is_rejected() {
    // Mallory knows both public keys but neither secret.
    let mut m1 = [0u8; MSG1_LEN];
    let _ = Initiator::start(MALLORY, public(BOB), [13; 32], &mut m1);
    // ...and claims to be Alice by swapping in her static key: the
    // encrypted static no longer opens under k1's tag, or k2's tag fails.
    let mut forged = m1;
    forged[33..65].copy_from_slice(&public(ALICE));
    let mut m2 = [0u8; MSG2_LEN];
    assert_eq!(
        respond(BOB, &[public(ALICE)], &forged, [14; 32], &mut m2).err(),
        Some(HandshakeError::Forged)
    );
    // A stranger's genuine handshake is refused too.
    assert_eq!(
        respond(BOB, &[public(ALICE)], &m1, [14; 32], &mut m2).err(),
        Some(HandshakeError::Stranger)
    );
    // A msg2 not made by Bob fails at Alice.
    let mut m1 = [0u8; MSG1_LEN];
    let i = Initiator::start(ALICE, public(BOB), [15; 32], &mut m1);
    let mut fake = [0u8; MSG2_LEN];
    fake[0] = MSG2;
    fake[1..33].copy_from_slice(&public([16; 32]));
    assert_eq!(i.finish(&fake).err(), Some(HandshakeError::Forged));
    // Every single-bit flip of a genuine msg1 is refused.
    let mut m1 = [0u8; MSG1_LEN];
    let _ = Initiator::start(ALICE, public(BOB), [17; 32], &mut m1);
    for byte in 1..MSG1_LEN {
        let mut bad = m1;
        bad[byte] ^= 0x01;
        assert!(
            respond(BOB, &[public(ALICE)], &bad, [18; 32], &mut m2).is_err(),
            "byte {byte}"
        );
    }
}

#[test]
fn replayed_and_tampered_data_is_refused() {
    let (mut a, mut b) = handshake();
    let mut buf = [0u8; 64];
    let n = a.seal(b"once", &mut buf);
    let copy = buf;
    assert!(b.open(&mut buf[..n]).is_ok());
    let mut again = copy;
    assert_eq!(b.open(&mut again[..n]), Err(HandshakeError::Replayed));
    let n = a.seal(b"twice", &mut buf);
    buf[12] ^= 1;
    assert_eq!(b.open(&mut buf[..n]), Err(HandshakeError::Forged));
    // Out of order within the window is fine.
    let mut first = [0u8; 64];
    let n1 = a.seal(b"3", &mut first);
    let mut second = [0u8; 64];
    let n2 = a.seal(b"4", &mut second);
    assert!(b.open(&mut second[..n2]).is_ok());
    assert!(b.open(&mut first[..n1]).is_ok());
}

#[test]
fn a_stranger_is_refused_and_only_its_own_initiator_can_check_the_refusal() {
    let responder = [7u8; 32];
    let responder_pub = x25519_dalek::PublicKey::from(&StaticSecret::from(responder)).to_bytes();
    let mut msg1 = [0u8; MSG1_LEN];
    let initiator = Initiator::start([1; 32], responder_pub, [2; 32], &mut msg1);
    let mut msg2 = [0u8; MSG2_LEN];
    let Answer::Refused(refusal) = answer(responder, &[[9; 32]], &msg1, [3; 32], &mut msg2) else {
        panic!("a valid msg1 from a stranger is refused");
    };
    assert!(initiator.refused(&refusal));
    // Another initiator (another msg1) cannot take it for its own.
    let mut other = [0u8; MSG1_LEN];
    let other = Initiator::start([4; 32], responder_pub, [5; 32], &mut other);
    assert!(!other.refused(&refusal));
    // Damaged, it proves nothing.
    let mut damaged = refusal;
    damaged[40] ^= 1;
    assert!(!initiator.refused(&damaged));
    // A forged msg1 gets no refusal at all.
    msg1[90] ^= 1;
    assert!(matches!(
        answer(responder, &[[9; 32]], &msg1, [3; 32], &mut msg2),
        Answer::Invalid(HandshakeError::Forged)
    ));
}
