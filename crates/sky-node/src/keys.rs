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
//! - **Introduction MAC**: `keyed_blake3(intro_key, intro_without_mac)[..8]`
//!   (`sky_proto::intro`). An off-path attacker never sees the key, so cannot
//!   forge one.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use sky_proto::intro::ct_eq;
#[cfg(test)]
use sky_proto::intro::{IntroError, introduction_mac, verify_introduction};
use sky_proto::time::MonoTime;
use sky_proto::wire::{self, Cookie, IntroKey, VirtualAddr};

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
    pub fn new(secret: &NodeSecret, now: MonoTime) -> CookieJar {
        let generation = Self::generation_at(now);
        CookieJar {
            generation,
            current: Self::key(secret, generation),
            previous: Self::key(secret, generation.wrapping_sub(1)),
        }
    }

    fn generation_at(now: MonoTime) -> u64 {
        now.as_secs() / COOKIE_ROTATION.as_secs()
    }

    fn key(secret: &NodeSecret, generation: u64) -> [u8; 32] {
        secret.derive("sky v1 cookie key", &generation.to_le_bytes())
    }

    /// Moves to the generation of `now` if it changed (cheap when it did not).
    pub fn rotate(&mut self, secret: &NodeSecret, now: MonoTime) {
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

#[cfg(test)]
#[path = "tests/keys.rs"]
mod tests;
