//! The friends' handshake on a punched path, and the sealed datagrams after
//! it: X25519 and ChaCha20-Poly1305 composed in the pattern of Noise IK.
//!
//! Both friends know each other's long-term public key from their invites.
//! The initiator `i` sends its ephemeral key and, encrypted, its static key;
//! the responder `r` answers with its ephemeral key. Every key is derived
//! with BLAKE3 `derive_key` over everything before it:
//!
//! ```text
//! msg1 = 0x21 | e_i | AEAD(k1, 0, aad=e_i, S_i) | AEAD(k2, 0, aad=e_i|c1, "")      97 bytes
//!   k1 = KDF("sky v1 hs k1", S_r | e_i | DH(e_i, S_r))
//!   k2 = KDF("sky v1 hs k2", k1 | DH(s_i, S_r))
//! msg2 = 0x22 | e_r | AEAD(k3, 0, aad=e_r, "")                                    49 bytes
//!   k3 = KDF("sky v1 hs k3", k2 | e_r | DH(e_r, e_i) | DH(e_r, S_i))
//! keys: i→r = KDF("sky v1 session i2r", k3), r→i = KDF("sky v1 session r2i", k3)
//! data = 0x23 | counter u64 | AEAD(key, counter, aad=first 9 bytes, payload)
//! ```
//!
//! Only the holder of `s_r` can open msg1 and make msg2; only the holder of
//! `s_i` can make msg1's second tag; ephemerals give forward secrecy. A
//! forged or replayed message fails a tag, and a data counter already seen
//! (or older than the 64-counter window) is refused. Sans-IO: ephemeral
//! keys come from the caller's random bytes.

use std::fmt;

use chacha20poly1305::aead::AeadInOut;
use chacha20poly1305::{ChaCha20Poly1305, Key, KeyInit, Nonce, Tag};
use x25519_dalek::{PublicKey, StaticSecret};

use sky_proto::frame::{DATA, DATA_OVERHEAD, MSG1, MSG1_LEN, MSG2, MSG2_LEN, REFUSE, REFUSE_LEN};

/// Why a handshake or data message was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HandshakeError {
    /// Wrong length or type byte.
    Malformed,
    /// A tag did not verify: forged, damaged, or not for us.
    Forged,
    /// A valid handshake from a key that is not one of our friends.
    Stranger,
    /// A data counter already seen or too old.
    Replayed,
}

impl fmt::Display for HandshakeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            HandshakeError::Malformed => "malformed handshake or data message",
            HandshakeError::Forged => "authentication failed (forged or damaged)",
            HandshakeError::Stranger => "handshake from a key that is no friend",
            HandshakeError::Replayed => "replayed data message",
        })
    }
}

impl std::error::Error for HandshakeError {}

fn kdf(context: &str, parts: &[&[u8]]) -> [u8; 32] {
    let mut h = blake3::Hasher::new_derive_key(context);
    for p in parts {
        h.update(p);
    }
    *h.finalize().as_bytes()
}

fn nonce(counter: u64) -> Nonce {
    let mut n = [0u8; 12];
    n[4..].copy_from_slice(&counter.to_be_bytes());
    Nonce::from(n)
}

fn seal(key: &[u8; 32], counter: u64, aad: &[u8], buf: &mut [u8]) -> [u8; 16] {
    let cipher = ChaCha20Poly1305::new(&Key::from(*key));
    let tag = cipher
        .encrypt_inout_detached(&nonce(counter), aad, buf.into())
        .expect("ChaCha20-Poly1305 seals any length we send");
    let mut out = [0u8; 16];
    out.copy_from_slice(tag.as_slice());
    out
}

fn open(
    key: &[u8; 32],
    counter: u64,
    aad: &[u8],
    buf: &mut [u8],
    tag: &[u8],
) -> Result<(), HandshakeError> {
    let cipher = ChaCha20Poly1305::new(&Key::from(*key));
    let mut t = [0u8; 16];
    t.copy_from_slice(tag);
    cipher
        .decrypt_inout_detached(&nonce(counter), aad, buf.into(), &Tag::from(t))
        .map_err(|_| HandshakeError::Forged)
}

/// The pair key of two friend devices: what their probes and sealed hints
/// are made under (`sky_proto::hint`). Both derive it from their own static
/// secret and the other's public key; the sky never sees either.
pub(crate) fn pair_key(our_static: [u8; 32], their_public: [u8; 32]) -> [u8; 32] {
    let shared = dh(&StaticSecret::from(our_static), &their_public);
    blake3::derive_key("sky 2026-11 pair key v1", &shared)
}

fn dh(secret: &StaticSecret, public: &[u8; 32]) -> [u8; 32] {
    secret.diffie_hellman(&PublicKey::from(*public)).to_bytes()
}

/// The initiator between sending msg1 and receiving msg2.
pub struct Initiator {
    ephemeral: StaticSecret,
    our_static: StaticSecret,
    k2: [u8; 32],
}

impl Initiator {
    /// Starts a handshake with the friend whose static key is `their_static`;
    /// writes msg1 into `out` and returns its length.
    pub fn start(
        our_static: [u8; 32],
        their_static: [u8; 32],
        ephemeral: [u8; 32],
        out: &mut [u8; MSG1_LEN],
    ) -> Initiator {
        let ephemeral = StaticSecret::from(ephemeral);
        let our_static = StaticSecret::from(our_static);
        let e_i = PublicKey::from(&ephemeral).to_bytes();
        let s_i = PublicKey::from(&our_static).to_bytes();
        let k1 = kdf(
            "sky v1 hs k1",
            &[&their_static, &e_i, &dh(&ephemeral, &their_static)],
        );
        let k2 = kdf("sky v1 hs k2", &[&k1, &dh(&our_static, &their_static)]);
        out[0] = MSG1;
        out[1..33].copy_from_slice(&e_i);
        out[33..65].copy_from_slice(&s_i);
        let tag1 = seal(&k1, 0, &e_i, &mut out[33..65]);
        out[65..81].copy_from_slice(&tag1);
        let mut transcript = [0u8; 80];
        transcript.copy_from_slice(&out[1..81]);
        let tag2 = seal(&k2, 0, &transcript, &mut []);
        out[81..97].copy_from_slice(&tag2);
        Initiator {
            ephemeral,
            our_static,
            k2,
        }
    }

    /// Whether `datagram` is the responder's authenticated refusal of our
    /// msg1: they hold the static key we called, and we are no friend of
    /// theirs.
    pub fn refused(&self, datagram: &[u8]) -> bool {
        if datagram.len() != REFUSE_LEN || datagram[0] != REFUSE {
            return false;
        }
        let mut e_r = [0u8; 32];
        e_r.copy_from_slice(&datagram[1..33]);
        let kr = kdf(
            "sky v1 hs refuse",
            &[
                &self.k2,
                &e_r,
                &dh(&self.ephemeral, &e_r),
                &dh(&self.our_static, &e_r),
            ],
        );
        open(&kr, 0, &e_r, &mut [], &datagram[33..49]).is_ok()
    }

    /// Checks msg2 and returns the session.
    pub fn finish(&self, msg2: &[u8]) -> Result<Session, HandshakeError> {
        if msg2.len() != MSG2_LEN || msg2[0] != MSG2 {
            return Err(HandshakeError::Malformed);
        }
        let mut e_r = [0u8; 32];
        e_r.copy_from_slice(&msg2[1..33]);
        let k3 = kdf(
            "sky v1 hs k3",
            &[
                &self.k2,
                &e_r,
                &dh(&self.ephemeral, &e_r),
                &dh(&self.our_static, &e_r),
            ],
        );
        open(&k3, 0, &e_r, &mut [], &msg2[33..49])?;
        Ok(Session::new(&k3, true))
    }
}

/// Answers msg1 from one of `friends` (static public keys): writes msg2
/// into `out` and returns the session and the index of the friend.
pub fn respond(
    our_static: [u8; 32],
    friends: &[[u8; 32]],
    msg1: &[u8],
    ephemeral: [u8; 32],
    out: &mut [u8; MSG2_LEN],
) -> Result<(Session, usize), HandshakeError> {
    match answer(our_static, friends, msg1, ephemeral, out) {
        Answer::Accepted(session, friend) => Ok((session, friend)),
        Answer::Refused(_) => Err(HandshakeError::Stranger),
        Answer::Invalid(e) => Err(e),
    }
}

/// What the responder does with a msg1.
pub enum Answer {
    /// From a friend: msg2 is in the caller's buffer; the session and the
    /// friend's index.
    Accepted(Session, usize),
    /// A valid msg1 from a key that is no friend: the refusal to send back
    /// (it tells the caller, authenticated, that we do not know them;
    /// smaller than the msg1 that asked).
    Refused([u8; REFUSE_LEN]),
    /// Not a valid msg1 (malformed or forged): nothing to answer.
    Invalid(HandshakeError),
}

/// [`respond`], and the refusal for a valid msg1 from a stranger:
///
/// ```text
/// refuse (49) = 0x24 | e_r | AEAD(kr, 0, aad=e_r, "")
///   kr = KDF("sky v1 hs refuse", k2 | e_r | DH(e_r, e_i) | DH(e_r, S_i))
/// ```
///
/// Only the holder of `s_r` can make it (it needs `k2`), and only the
/// initiator can check it; it reveals to the caller only what the sky
/// already told them — that we are online at this endpoint.
pub fn answer(
    our_static: [u8; 32],
    friends: &[[u8; 32]],
    msg1: &[u8],
    ephemeral: [u8; 32],
    out: &mut [u8; MSG2_LEN],
) -> Answer {
    match respond_inner(our_static, friends, msg1, ephemeral, out) {
        Ok(Inner::Friend(session, friend)) => Answer::Accepted(session, friend),
        Ok(Inner::Stranger(refusal)) => Answer::Refused(refusal),
        Err(e) => Answer::Invalid(e),
    }
}

enum Inner {
    Friend(Session, usize),
    Stranger([u8; REFUSE_LEN]),
}

fn respond_inner(
    our_static: [u8; 32],
    friends: &[[u8; 32]],
    msg1: &[u8],
    ephemeral: [u8; 32],
    out: &mut [u8; MSG2_LEN],
) -> Result<Inner, HandshakeError> {
    if msg1.len() != MSG1_LEN || msg1[0] != MSG1 {
        return Err(HandshakeError::Malformed);
    }
    let our_static = StaticSecret::from(our_static);
    let s_r = PublicKey::from(&our_static).to_bytes();
    let mut e_i = [0u8; 32];
    e_i.copy_from_slice(&msg1[1..33]);
    let k1 = kdf("sky v1 hs k1", &[&s_r, &e_i, &dh(&our_static, &e_i)]);
    let mut s_i = [0u8; 32];
    s_i.copy_from_slice(&msg1[33..65]);
    open(&k1, 0, &e_i, &mut s_i, &msg1[65..81])?;
    let k2 = kdf("sky v1 hs k2", &[&k1, &dh(&our_static, &s_i)]);
    open(&k2, 0, &msg1[1..81], &mut [], &msg1[81..97])?;
    let ephemeral = StaticSecret::from(ephemeral);
    let e_r = PublicKey::from(&ephemeral).to_bytes();
    let Some(friend) = friends.iter().position(|f| *f == s_i) else {
        let kr = kdf(
            "sky v1 hs refuse",
            &[&k2, &e_r, &dh(&ephemeral, &e_i), &dh(&ephemeral, &s_i)],
        );
        let mut refusal = [0u8; REFUSE_LEN];
        refusal[0] = REFUSE;
        refusal[1..33].copy_from_slice(&e_r);
        let tag = seal(&kr, 0, &e_r, &mut []);
        refusal[33..49].copy_from_slice(&tag);
        return Ok(Inner::Stranger(refusal));
    };
    let k3 = kdf(
        "sky v1 hs k3",
        &[&k2, &e_r, &dh(&ephemeral, &e_i), &dh(&ephemeral, &s_i)],
    );
    out[0] = MSG2;
    out[1..33].copy_from_slice(&e_r);
    let tag = seal(&k3, 0, &e_r, &mut []);
    out[33..49].copy_from_slice(&tag);
    Ok(Inner::Friend(Session::new(&k3, false), friend))
}

/// An established session: seals and opens data datagrams.
pub struct Session {
    send_key: [u8; 32],
    recv_key: [u8; 32],
    send_counter: u64,
    /// Highest counter received, and a bitmap of the 64 below it.
    recv_max: u64,
    recv_seen: u64,
}

impl Session {
    fn new(k3: &[u8; 32], initiator: bool) -> Session {
        let i2r = kdf("sky v1 session i2r", &[k3]);
        let r2i = kdf("sky v1 session r2i", &[k3]);
        let (send_key, recv_key) = if initiator { (i2r, r2i) } else { (r2i, i2r) };
        Session {
            send_key,
            recv_key,
            send_counter: 0,
            recv_max: 0,
            recv_seen: 0,
        }
    }

    /// Seals `payload` into `out` (at least `payload.len() + DATA_OVERHEAD`
    /// bytes); returns the datagram's length.
    pub fn seal(&mut self, payload: &[u8], out: &mut [u8]) -> usize {
        self.send_counter += 1;
        let n = payload.len();
        out[0] = DATA;
        out[1..9].copy_from_slice(&self.send_counter.to_be_bytes());
        out[9..9 + n].copy_from_slice(payload);
        let (header, body) = out.split_at_mut(9);
        let tag = seal(&self.send_key, self.send_counter, header, &mut body[..n]);
        out[9 + n..9 + n + 16].copy_from_slice(&tag);
        9 + n + 16
    }

    /// Opens a data datagram in place; returns the payload's range in it.
    pub fn open(&mut self, datagram: &mut [u8]) -> Result<std::ops::Range<usize>, HandshakeError> {
        if datagram.len() < DATA_OVERHEAD || datagram[0] != DATA {
            return Err(HandshakeError::Malformed);
        }
        let counter = u64::from_be_bytes(datagram[1..9].try_into().expect("8 bytes"));
        let fresh = counter > self.recv_max
            || (self.recv_max - counter < 64
                && self.recv_seen & (1 << (self.recv_max - counter)) == 0);
        if counter == 0 || !fresh {
            return Err(HandshakeError::Replayed);
        }
        let n = datagram.len() - DATA_OVERHEAD;
        let (header, rest) = datagram.split_at_mut(9);
        let (body, tag) = rest.split_at_mut(n);
        open(&self.recv_key, counter, header, body, tag)?;
        if counter > self.recv_max {
            let shift = counter - self.recv_max;
            self.recv_seen = if shift >= 64 {
                0
            } else {
                self.recv_seen << shift
            };
            self.recv_seen |= 1;
            self.recv_max = counter;
        } else {
            self.recv_seen |= 1 << (self.recv_max - counter);
        }
        Ok(9..9 + n)
    }
}

#[cfg(test)]
#[path = "tests/handshake.rs"]
mod tests;
