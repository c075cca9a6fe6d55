//! Introduction authentication (`docs/PROTOCOL.md`, "Introduction
//! authentication"): the MAC a sky node puts on an introduction and the
//! check an earth client makes before it punches towards a caller.
//!
//! ```text
//! mac = BLAKE3.keyed_hash(intro_key, 01 87 caller endpoint)[0..8]
//! ```
//!
//! The sky derives `intro_key` per address from its own secret (node side)
//! and sends it once, in `registered`; the client keeps the keys each node
//! gave it and accepts an introduction from a node only under one of them.

use std::net::SocketAddr;

use crate::addr::encode_endpoint;
use crate::hint::HINT_LEN;
use crate::wire::{self, IntroKey, Kind, MAX_MESSAGE_LEN, Mac, VERSION, VirtualAddr, endpoint_len};

/// The bytes an introduction's MAC covers: everything but the MAC itself
/// (version, kind, caller address, endpoint), in wire order. Returns the
/// length written into `out`.
pub fn introduction_mac_input(
    caller: &VirtualAddr,
    endpoint: &SocketAddr,
    out: &mut [u8; MAX_MESSAGE_LEN],
) -> usize {
    out[0] = VERSION;
    out[1] = Kind::Introduction as u8;
    out[2..18].copy_from_slice(&caller.0);
    let n = endpoint_len(endpoint);
    encode_endpoint(endpoint, &mut out[18..18 + n]);
    18 + n
}

/// The MAC of an introduction of `caller` at `endpoint`, under `key`.
pub fn introduction_mac(key: &IntroKey, caller: &VirtualAddr, endpoint: &SocketAddr) -> Mac {
    let mut input = [0u8; MAX_MESSAGE_LEN];
    let n = introduction_mac_input(caller, endpoint, &mut input);
    let hash = blake3::keyed_hash(&key.0, &input[..n]);
    let mut out = [0u8; 8];
    out.copy_from_slice(&hash.as_bytes()[..8]);
    Mac(out)
}

/// Why a client refused an introduction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IntroError {
    /// Not a sky message at all.
    Malformed(wire::Error),
    /// A sky message, but not an introduction.
    NotAnIntroduction,
    /// The MAC does not verify under any key the client holds: forged, or
    /// from a node it is not registered with.
    Forged,
}

/// Client side: checks an introduction against the keys the client received
/// in its `registered` replies. Returns the caller, its endpoint and its
/// sealed hint (which the MAC does not cover: the pair key protects it).
pub fn verify_introduction(
    keys: &[IntroKey],
    datagram: &[u8],
) -> Result<(VirtualAddr, SocketAddr, [u8; HINT_LEN]), IntroError> {
    match wire::Message::decode(datagram).map_err(IntroError::Malformed)? {
        wire::Message::Introduction {
            caller,
            mac,
            hint,
            endpoint,
        } => {
            let ok = keys.iter().fold(false, |ok, key| {
                ok | ct_eq(&introduction_mac(key, &caller, &endpoint).0, &mac.0)
            });
            if ok {
                Ok((caller, endpoint, hint))
            } else {
                Err(IntroError::Forged)
            }
        }
        _ => Err(IntroError::NotAnIntroduction),
    }
}

/// Constant-time equality of two 8-byte values.
pub fn ct_eq(a: &[u8; 8], b: &[u8; 8]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
