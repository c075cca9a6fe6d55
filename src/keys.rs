//! The node's keyed hashes: stateless cookies and introduction keys.
//!
//! Everything derives from one 32-byte node secret handed in by the engine
//! (sans-IO: no randomness is drawn here), with domain-separated BLAKE3
//! `derive_key` contexts, so every shard of a node computes the same values
//! without sharing any state.
//!
//! - **Cookie** (SPEC §3): `keyed_blake3(cookie_key(g), ip16 || port_be)[..8]`
//!   where `g = now / COOKIE_ROTATION` and `ip16` is the IPv6 (or
//!   IPv4-mapped) source address. Generations `g` and `g − 1` are accepted, so
//!   a cookie lives between one and two rotation periods.
//! - **Introduction key**: `keyed_blake3(intro_master, address)`, sent to the
//!   registrant in its `registered` reply (only ever to its observed endpoint).
//! - **Introduction MAC**: `keyed_blake3(intro_key, intro_without_mac)[..8]`.
//!   An off-path attacker never sees the key, so cannot forge one.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use crate::wire::{self, Cookie, IntroKey, Mac, VirtualAddr};

/// How often the cookie secret rotates. A cookie is accepted for one to two
/// periods; a client whose cookie went stale gets a fresh one in reply.
pub const COOKIE_ROTATION: Duration = Duration::from_secs(300);

/// The node's long-lived secret. Not `Debug`, not `Clone` by accident.
pub struct NodeSecret([u8; 32]);

impl NodeSecret {
    pub fn new(bytes: [u8; 32]) -> NodeSecret {
        NodeSecret(bytes)
    }

    fn derive(&self, context: &str, extra: &[u8]) -> [u8; 32] {
        let mut hasher = blake3::Hasher::new_derive_key(context);
        hasher.update(&self.0);
        hasher.update(extra);
        *hasher.finalize().as_bytes()
    }
}

/// Issues and checks cookies for one shard. Two generations are live.
pub struct CookieJar {
    generation: u64,
    current: [u8; 32],
    previous: [u8; 32],
}

impl CookieJar {
    pub fn new(secret: &NodeSecret, now: Duration) -> CookieJar {
        let generation = Self::generation_at(now);
        CookieJar {
            generation,
            current: Self::key(secret, generation),
            previous: Self::key(secret, generation.wrapping_sub(1)),
        }
    }

    fn generation_at(now: Duration) -> u64 {
        now.as_secs() / COOKIE_ROTATION.as_secs()
    }

    fn key(secret: &NodeSecret, generation: u64) -> [u8; 32] {
        secret.derive("sky v1 cookie key", &generation.to_le_bytes())
    }

    /// Moves to the generation of `now` if it changed (cheap when it did not).
    pub fn rotate(&mut self, secret: &NodeSecret, now: Duration) {
        let g = Self::generation_at(now);
        if g == self.generation {
            return;
        }
        self.previous = if g == self.generation + 1 {
            self.current
        } else {
            Self::key(secret, g.wrapping_sub(1))
        };
        self.current = Self::key(secret, g);
        self.generation = g;
    }

    pub fn issue(&self, source: &SocketAddr) -> Cookie {
        cookie_with(&self.current, source)
    }

    /// True if `cookie` was issued to `source` in the current or previous
    /// generation. Each comparison is constant-time; the previous generation
    /// is hashed only when the current one does not match (which reveals to
    /// a client only how old its own cookie is, and saves a BLAKE3 call on
    /// nearly every request).
    pub fn check(&self, source: &SocketAddr, cookie: &Cookie) -> bool {
        ct_eq(&cookie_with(&self.current, source).0, &cookie.0)
            || ct_eq(&cookie_with(&self.previous, source).0, &cookie.0)
    }
}

fn cookie_with(key: &[u8; 32], source: &SocketAddr) -> Cookie {
    let source = wire::canonical(*source);
    let ip = match source.ip() {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    };
    let mut input = [0u8; 18];
    input[..16].copy_from_slice(&ip);
    input[16..].copy_from_slice(&source.port().to_be_bytes());
    let hash = blake3::keyed_hash(key, &input);
    let mut out = [0u8; 8];
    out.copy_from_slice(&hash.as_bytes()[..8]);
    Cookie(out)
}

/// Derives introduction keys for the addresses registered at this node.
pub struct IntroKeys {
    master: [u8; 32],
}

impl IntroKeys {
    pub fn new(secret: &NodeSecret) -> IntroKeys {
        IntroKeys {
            master: secret.derive("sky v1 introduction key", &[]),
        }
    }

    pub fn key_for(&self, address: &VirtualAddr) -> IntroKey {
        IntroKey(*blake3::keyed_hash(&self.master, &address.0).as_bytes())
    }
}

/// The MAC of an introduction of `caller` at `endpoint`, under `key`.
pub fn introduction_mac(key: &IntroKey, caller: &VirtualAddr, endpoint: &SocketAddr) -> Mac {
    let mut input = [0u8; wire::MAX_MESSAGE_LEN];
    let n = wire::introduction_mac_input(caller, endpoint, &mut input);
    let hash = blake3::keyed_hash(&key.0, &input[..n]);
    let mut out = [0u8; 8];
    out.copy_from_slice(&hash.as_bytes()[..8]);
    Mac(out)
}

/// Why a client refused an introduction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IntroError {
    /// Not an introduction at all.
    Malformed(wire::Error),
    NotAnIntroduction,
    /// The MAC does not verify under any key the client holds: forged, or
    /// from a node it is not registered with.
    Forged,
}

/// Client side: checks an introduction against the keys the client received
/// in its `registered` replies. Returns the caller and its endpoint.
pub fn verify_introduction(
    keys: &[IntroKey],
    datagram: &[u8],
) -> Result<(VirtualAddr, SocketAddr), IntroError> {
    match wire::Message::decode(datagram).map_err(IntroError::Malformed)? {
        wire::Message::Introduction {
            caller,
            mac,
            endpoint,
        } => {
            let ok = keys.iter().fold(false, |ok, key| {
                ok | ct_eq(&introduction_mac(key, &caller, &endpoint).0, &mac.0)
            });
            if ok {
                Ok((caller, endpoint))
            } else {
                Err(IntroError::Forged)
            }
        }
        _ => Err(IntroError::NotAnIntroduction),
    }
}

fn ct_eq(a: &[u8; 8], b: &[u8; 8]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret() -> NodeSecret {
        NodeSecret::new([7; 32])
    }

    #[test]
    fn cookie_is_bound_to_ip_and_port() {
        let jar = CookieJar::new(&secret(), Duration::ZERO);
        let a: SocketAddr = "192.0.2.1:5000".parse().unwrap();
        let cookie = jar.issue(&a);
        assert!(jar.check(&a, &cookie));
        assert!(!jar.check(&"192.0.2.1:5001".parse().unwrap(), &cookie));
        assert!(!jar.check(&"192.0.2.2:5000".parse().unwrap(), &cookie));
        // The mapped form of the same endpoint is the same endpoint.
        assert!(jar.check(&"[::ffff:192.0.2.1]:5000".parse().unwrap(), &cookie));
    }

    #[test]
    fn cookie_survives_one_rotation_but_not_two() {
        let s = secret();
        let mut jar = CookieJar::new(&s, Duration::ZERO);
        let a: SocketAddr = "[2001:db8::1]:9".parse().unwrap();
        let cookie = jar.issue(&a);
        jar.rotate(&s, COOKIE_ROTATION);
        assert!(jar.check(&a, &cookie));
        jar.rotate(&s, COOKIE_ROTATION * 2);
        assert!(!jar.check(&a, &cookie));
    }

    #[test]
    fn shards_of_one_node_agree_on_cookies() {
        let s = secret();
        let mut one = CookieJar::new(&s, Duration::ZERO);
        let two = CookieJar::new(&s, COOKIE_ROTATION * 5);
        one.rotate(&s, COOKIE_ROTATION * 5);
        let a: SocketAddr = "192.0.2.1:1".parse().unwrap();
        assert!(two.check(&a, &one.issue(&a)));
    }

    #[test]
    fn forged_introduction_is_rejected() {
        let keys = IntroKeys::new(&secret());
        let target = VirtualAddr([1; 16]);
        let key = keys.key_for(&target);
        let caller = VirtualAddr([2; 16]);
        let endpoint: SocketAddr = "192.0.2.9:4444".parse().unwrap();
        let mut buf = [0u8; wire::MAX_MESSAGE_LEN];
        let good = wire::Message::Introduction {
            caller,
            mac: introduction_mac(&key, &caller, &endpoint),
            endpoint,
        };
        let n = good.emit(&mut buf);
        assert_eq!(
            verify_introduction(&[key], &buf[..n]),
            Ok((caller, endpoint))
        );
        // Same caller, attacker's endpoint: the MAC no longer verifies.
        let forged = wire::Message::Introduction {
            caller,
            mac: introduction_mac(&key, &caller, &endpoint),
            endpoint: "203.0.113.66:1".parse().unwrap(),
        };
        let n = forged.emit(&mut buf);
        assert_eq!(
            verify_introduction(&[key], &buf[..n]),
            Err(IntroError::Forged)
        );
    }
}
