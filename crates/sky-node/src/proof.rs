//! Proofs of an address: the Ed25519 signature that a `register` creating
//! or moving an entry, and every `unregister`, must carry
//! (`docs/PROTOCOL.md`, "register → registered"), and the per-source budget
//! of signature checks that keeps a flood of bogus proofs from taking a
//! core.
//!
//! A check costs about 30–50 µs, a hundred times a refresh; a source whose
//! cookie is valid (it receives at its address) may have
//! `checks_per_source` (default [`CHECKS_PER_SOURCE`]) of them a second on
//! each shard, and is answered
//! `refused` (7 bytes) past that. Sources are IPv4 addresses and IPv6 /64s,
//! kept in a fixed table of [`SLOTS`] counters indexed by a keyed hash: no
//! allocation, no growth; two sources that share a slot share its budget.

use std::hash::BuildHasher;
use std::net::IpAddr;

use sky_proto::wire::{AddrKey, Signature};

/// Signature checks one source may spend per second on one shard, by
/// default (`checks_per_source` in the configuration).
pub const CHECKS_PER_SOURCE: u16 = 64;
/// Budget slots per shard.
pub const SLOTS: usize = 4096;

/// Whether `sig` is `key`'s signature over `statement` (strict: no
/// small-order key, no malleable signature).
pub fn verify(key: &AddrKey, statement: &[u8], sig: &Signature) -> bool {
    match ed25519_dalek::VerifyingKey::from_bytes(&key.0) {
        Ok(vk) => vk
            .verify_strict(statement, &ed25519_dalek::Signature::from_bytes(&sig.0))
            .is_ok(),
        Err(_) => false,
    }
}

#[derive(Clone, Copy, Default)]
struct Slot {
    second: u32,
    used: u16,
}

/// One shard's per-source budget of signature checks.
pub struct CheckBudget {
    hasher: std::hash::RandomState,
    slots: Box<[Slot]>,
    per_source: u16,
}

impl CheckBudget {
    /// `per_source` checks a second for each source.
    pub fn new(per_source: u16) -> CheckBudget {
        CheckBudget {
            hasher: std::hash::RandomState::new(),
            slots: vec![Slot::default(); SLOTS].into_boxed_slice(),
            per_source,
        }
    }

    /// Takes one check from `ip`'s budget for second `now_secs`; false when
    /// it is spent.
    pub fn take(&mut self, ip: IpAddr, now_secs: u32) -> bool {
        let source: u128 = match ip {
            IpAddr::V4(v4) => u32::from(v4).into(),
            IpAddr::V6(v6) => u128::from(v6) >> 64 | 1 << 64,
        };
        let i = (self.hasher.hash_one(source) as usize) % SLOTS;
        let slot = &mut self.slots[i];
        if slot.second != now_secs {
            *slot = Slot {
                second: now_secs,
                used: 0,
            };
        }
        if slot.used >= self.per_source {
            return false;
        }
        slot.used += 1;
        true
    }
}
