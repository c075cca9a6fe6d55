//! Sealed candidate hints and tagged probes: how two friends tell each
//! other how to reach them without the sky learning it
//! (`docs/PROTOCOL.md`, "Candidates").
//!
//! A **hint** is 16 bytes a caller puts in every lookup; the owner copies
//! it, unread, into the introduction it sends the target. It is sealed
//! under the friends' *pair key* (both sides derive it from their static
//! X25519 keys; the sky never holds it) and bound to the lookup's caller
//! and target addresses, so only the target can open it and nobody can
//! move it to another lookup. Inside: the caller's NAT behaviour
//! ([`HintFlags`]) and one IPv4 candidate endpoint — a local (LAN)
//! address or a port mapping. To the sky every hint is 16 random-looking
//! bytes, present in every lookup, whatever it says.
//!
//! ```text
//! nonce[3] | flags ^ ks[0] | ip[4] ^ ks[1..5] | port[2] ^ ks[5..7] | tag[6]
//! ks  = BLAKE3-XOF(keyed by pair key; "sky hint v1 stream" | nonce | caller | target)
//! tag = BLAKE3(keyed by pair key; "sky hint v1 tag" | nonce | caller | target | ciphertext)[..6]
//! ```
//!
//! A **probe** (frame `0x25`) is the punch friends send each other
//! directly: `25 nonce[4] tag[8]`, the tag a MAC under the pair key over
//! the nonce and the direction. A probe from an endpoint nobody reported
//! proves that the friend is there, so the handshake may go to it (the
//! symmetric-NAT and birthday cases); a stranger cannot make one.

use std::net::{Ipv4Addr, SocketAddrV4};

use crate::addr::VirtualAddr;

/// Length of a sealed hint.
pub const HINT_LEN: usize = 16;
/// Length of a probe frame.
pub const PROBE_LEN: usize = 13;

const NONCE_LEN: usize = 3;
const BODY_LEN: usize = 7;
const TAG_LEN: usize = 6;
const PROBE_NONCE: std::ops::Range<usize> = 1..5;
const PROBE_TAG: std::ops::Range<usize> = 5..13;

/// What a friend says of its own NAT, and what its candidate is.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct HintFlags(pub u8);

impl HintFlags {
    /// The sender's NAT gives every destination its own port (address-
    /// and port-dependent mapping) and the sender holds no port mapping:
    /// the endpoint the sky saw is not the one a friend will see.
    pub const RANDOM: u8 = 0x01;
    /// Datagrams from anyone reach the sender at its observed endpoint
    /// (endpoint-independent filtering) or at its mapped candidate.
    pub const OPEN: u8 = 0x02;
    /// The candidate is a port mapping the sender's router gave it.
    pub const MAPPED: u8 = 0x04;
    /// The candidate is the sender's local (LAN) address.
    pub const LOCAL: u8 = 0x08;
    /// This lookup answers an introduction: do not look back.
    pub const REPLY: u8 = 0x10;
    /// The sender measured its NAT (otherwise RANDOM and OPEN mean
    /// nothing).
    pub const KNOWN: u8 = 0x20;

    /// Whether every bit of `bits` is set.
    pub fn has(self, bits: u8) -> bool {
        self.0 & bits == bits
    }
}

/// An opened hint.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Hint {
    /// The sender's NAT and what the candidate is.
    pub flags: HintFlags,
    /// One endpoint to try besides the observed one.
    pub candidate: Option<SocketAddrV4>,
}

fn keystream(
    key: &[u8; 32],
    nonce: &[u8],
    caller: &VirtualAddr,
    target: &VirtualAddr,
) -> [u8; BODY_LEN] {
    let mut h = blake3::Hasher::new_keyed(key);
    h.update(b"sky hint v1 stream");
    h.update(nonce);
    h.update(&caller.0);
    h.update(&target.0);
    let mut ks = [0u8; BODY_LEN];
    h.finalize_xof().fill(&mut ks);
    ks
}

fn hint_tag(
    key: &[u8; 32],
    nonce: &[u8],
    caller: &VirtualAddr,
    target: &VirtualAddr,
    body: &[u8],
) -> [u8; TAG_LEN] {
    let mut h = blake3::Hasher::new_keyed(key);
    h.update(b"sky hint v1 tag");
    h.update(nonce);
    h.update(&caller.0);
    h.update(&target.0);
    h.update(body);
    let mut tag = [0u8; TAG_LEN];
    tag.copy_from_slice(&h.finalize().as_bytes()[..TAG_LEN]);
    tag
}

impl Hint {
    /// Seals this hint for the lookup of `target` by `caller`, under the
    /// pair key, with a fresh random `nonce`.
    pub fn seal(
        &self,
        key: &[u8; 32],
        nonce: [u8; NONCE_LEN],
        caller: &VirtualAddr,
        target: &VirtualAddr,
    ) -> [u8; HINT_LEN] {
        let (ip, port) = match self.candidate {
            Some(c) => (c.ip().octets(), c.port()),
            None => ([0; 4], 0),
        };
        let mut body = [0u8; BODY_LEN];
        body[0] = self.flags.0;
        body[1..5].copy_from_slice(&ip);
        body[5..7].copy_from_slice(&port.to_be_bytes());
        for (b, k) in body.iter_mut().zip(keystream(key, &nonce, caller, target)) {
            *b ^= k;
        }
        let mut out = [0u8; HINT_LEN];
        out[..NONCE_LEN].copy_from_slice(&nonce);
        out[NONCE_LEN..NONCE_LEN + BODY_LEN].copy_from_slice(&body);
        out[NONCE_LEN + BODY_LEN..].copy_from_slice(&hint_tag(key, &nonce, caller, target, &body));
        out
    }

    /// Opens `sealed` if it was sealed under `key` for this lookup.
    pub fn open(
        key: &[u8; 32],
        sealed: &[u8; HINT_LEN],
        caller: &VirtualAddr,
        target: &VirtualAddr,
    ) -> Option<Hint> {
        let nonce = &sealed[..NONCE_LEN];
        let body = &sealed[NONCE_LEN..NONCE_LEN + BODY_LEN];
        let tag = hint_tag(key, nonce, caller, target, body);
        if !ct_eq(&tag, &sealed[NONCE_LEN + BODY_LEN..]) {
            return None;
        }
        let mut plain = [0u8; BODY_LEN];
        for ((p, b), k) in plain
            .iter_mut()
            .zip(body)
            .zip(keystream(key, nonce, caller, target))
        {
            *p = b ^ k;
        }
        let ip = Ipv4Addr::new(plain[1], plain[2], plain[3], plain[4]);
        let port = u16::from_be_bytes([plain[5], plain[6]]);
        let candidate = (port != 0 && !ip.is_unspecified()).then(|| SocketAddrV4::new(ip, port));
        Some(Hint {
            flags: HintFlags(plain[0]),
            candidate,
        })
    }
}

fn probe_tag(key: &[u8; 32], nonce: &[u8], from_lower: bool) -> [u8; 8] {
    let mut h = blake3::Hasher::new_keyed(key);
    h.update(b"sky probe v1");
    h.update(&[u8::from(from_lower)]);
    h.update(nonce);
    let mut tag = [0u8; 8];
    tag.copy_from_slice(&h.finalize().as_bytes()[..8]);
    tag
}

/// A probe under the pair key, with a fresh random `nonce`; `from_lower`:
/// whether the sender's static public key is the lower of the two (so a
/// probe reflected back to its sender does not verify).
pub fn probe(key: &[u8; 32], nonce: [u8; 4], from_lower: bool) -> [u8; PROBE_LEN] {
    let mut out = [0u8; PROBE_LEN];
    out[0] = crate::frame::PROBE;
    out[PROBE_NONCE].copy_from_slice(&nonce);
    out[PROBE_TAG].copy_from_slice(&probe_tag(key, &nonce, from_lower));
    out
}

/// Whether `datagram` is a probe under `key` from the side whose key is
/// the lower (`from_lower`) or the higher.
pub fn verify_probe(key: &[u8; 32], datagram: &[u8], from_lower: bool) -> bool {
    datagram.len() == PROBE_LEN
        && datagram[0] == crate::frame::PROBE
        && ct_eq(
            &probe_tag(key, &datagram[PROBE_NONCE], from_lower),
            &datagram[PROBE_TAG],
        )
}

/// Constant-time equality of two tags.
fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
#[path = "tests/hint.rs"]
mod tests;
