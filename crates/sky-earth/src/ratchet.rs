//! Chain keys and the epoch ratchet (SPEC §2; derivations in
//! `docs/PROTOCOL.md`, "Earth: the ratchet").
//!
//! ```text
//! ck[e+1]    = BLAKE3.derive_key("sky v1 chain ratchet", ck[e])
//! seed[e,d]  = BLAKE3.derive_key("sky v1 address key", ck[e] || d)      (device d, 0 first)
//! pk[e,d]    = the Ed25519 public key of the key pair whose seed is seed[e,d]
//! addr[e,d]  = BLAKE3.derive_key("sky v1 virtual address", pk[e,d])[0..16]
//! phase      = u64_le(BLAKE3.derive_key("sky v1 epoch phase", ck[origin])[0..8]) mod R
//! epoch(t)   = floor((t - phase) / R)        (t: seconds since the Unix epoch)
//! ```
//!
//! Whoever holds `ck[e]` computes every later key, key pair and address;
//! the ratchet is one-way, so nobody computes an earlier one, and a sky
//! node, which sees only public keys, signatures and addresses, computes
//! none — nor can it sign for an address it has seen registered.
//!
//! ```compile_fail
//! // A chain key never becomes a wire type: the sky cannot be handed one.
//! let ck = sky_earth::ratchet::ChainKey::from_bytes([0; 32]);
//! let key: sky_proto::wire::AddrKey = ck.into();
//! ```

use std::fmt;
use std::time::Duration;

use sky_proto::time::UnixTime;

use ed25519_dalek::Signer;
use sky_proto::wire::{self, AddrKey, Cookie, Flags, Signature, VirtualAddr};

/// The key pair of one address (one epoch, one device): its public half
/// and its hash, the address, are what the sky sees; the private half
/// signs registrations and unregisters, so that nobody who only saw them
/// can move or drop the address. Its `Debug` shows nothing.
#[derive(Clone)]
pub struct AddressKey {
    signing: ed25519_dalek::SigningKey,
    public: AddrKey,
    address: VirtualAddr,
}

impl fmt::Debug for AddressKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AddressKey(..)")
    }
}

impl PartialEq for AddressKey {
    fn eq(&self, other: &AddressKey) -> bool {
        self.public == other.public
    }
}

impl Eq for AddressKey {}

impl AddressKey {
    /// The key pair whose seed is `seed` (a scalar multiplication: about
    /// 15 µs; [`Chain`] keeps the few it needs).
    pub fn from_seed(seed: [u8; 32]) -> AddressKey {
        let signing = ed25519_dalek::SigningKey::from_bytes(&seed);
        let public = AddrKey(signing.verifying_key().to_bytes());
        AddressKey {
            signing,
            address: VirtualAddr::from_key(&public),
            public,
        }
    }

    /// The public half, as `register` carries it.
    pub fn public(&self) -> AddrKey {
        self.public
    }

    /// The address: the hash of the public half.
    pub fn address(&self) -> VirtualAddr {
        self.address
    }

    /// The signature a `register` with `cookie` and `flags` carries.
    pub fn sign_register(&self, cookie: &Cookie, flags: Flags) -> Signature {
        Signature(
            self.signing
                .sign(&wire::register_statement(cookie, flags))
                .to_bytes(),
        )
    }

    /// The signature an `unregister` with `cookie` carries.
    pub fn sign_unregister(&self, cookie: &Cookie) -> Signature {
        Signature(
            self.signing
                .sign(&wire::unregister_statement(cookie))
                .to_bytes(),
        )
    }
}

/// A user's secret chain key for one epoch. Its `Debug` shows nothing.
#[derive(Clone, PartialEq, Eq)]
pub struct ChainKey([u8; 32]);

impl fmt::Debug for ChainKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ChainKey(..)")
    }
}

impl ChainKey {
    /// A chain key from 32 random bytes (the caller draws them).
    pub fn from_bytes(bytes: [u8; 32]) -> ChainKey {
        ChainKey(bytes)
    }

    pub(crate) fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The next epoch's key. There is no way back.
    pub fn next(&self) -> ChainKey {
        ChainKey(blake3::derive_key("sky v1 chain ratchet", &self.0))
    }

    /// The address key pair of device `device` of the user in this key's
    /// epoch: every device has its own, so no device's registration takes
    /// another's address, and the sky cannot tell two devices' addresses
    /// from two users'.
    pub fn address_key(&self, device: u8) -> AddressKey {
        let mut input = [0u8; 33];
        input[..32].copy_from_slice(&self.0);
        input[32] = device;
        AddressKey::from_seed(blake3::derive_key("sky v1 address key", &input))
    }

    /// Device 0's address in this key's epoch.
    pub fn address(&self) -> VirtualAddr {
        self.address_key(0).address()
    }

    /// The user's phase offset in `[0, length)`, derived from the key the
    /// chain started from, so users do not all rotate at the same instant.
    pub fn phase(&self, length: Duration) -> Duration {
        let hash = blake3::derive_key("sky v1 epoch phase", &self.0);
        let mut n = [0u8; 8];
        n.copy_from_slice(&hash[..8]);
        Duration::from_secs(u64::from_le_bytes(n) % length.as_secs().max(1))
    }
}

/// An epoch number: `R`-long periods shifted by the user's phase.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Epoch(pub u64);

/// When a user's epochs begin: every `length`, offset by `phase`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Schedule {
    /// `R` (default 24 h). Whole seconds.
    pub length: Duration,
    /// In `[0, length)`. Whole seconds.
    pub phase: Duration,
}

/// SPEC §2 default epoch length.
pub const DEFAULT_EPOCH: Duration = Duration::from_secs(24 * 3600);
/// SPEC §2 default overlap window `H`.
pub const DEFAULT_OVERLAP: Duration = Duration::from_secs(3600);
/// The shortest epoch length `R` a chain may have: an invite or a reset
/// with a shorter one is refused (a second-long epoch would make every
/// walk of the ratchet millions of steps).
pub const MIN_EPOCH: Duration = Duration::from_secs(3600);
/// The longest epoch length `R`.
pub const MAX_EPOCH: Duration = Duration::from_secs(365 * 24 * 3600);
/// The most epochs a chain is walked forward in one go: about eleven years
/// at the shortest `R`. A chain further behind than this (a forged or
/// ancient invite) yields no key: [`Chain::key_at`] says `None` at once
/// instead of spinning.
pub const MAX_WALK: u64 = 100_000;

impl Schedule {
    /// The epoch at `unix`.
    pub fn epoch_at(&self, unix: UnixTime) -> Epoch {
        let t = unix.as_secs().saturating_sub(self.phase.as_secs());
        Epoch(t / self.length.as_secs().max(1))
    }

    /// When `epoch` begins.
    pub fn start_of(&self, epoch: Epoch) -> UnixTime {
        UnixTime::from_secs(epoch.0 * self.length.as_secs() + self.phase.as_secs())
    }

    /// The epochs whose addresses a friend tries at `unix`: the current one
    /// and, within `overlap` of a boundary, the neighbour on the other side
    /// (so clocks skewed by up to `overlap` still meet). Current first.
    pub fn lookup_epochs(&self, unix: UnixTime, overlap: Duration) -> Vec<Epoch> {
        let e = self.epoch_at(unix);
        let mut out = vec![e];
        let since_start = unix.saturating_duration_since(self.start_of(e));
        let until_next = self
            .start_of(Epoch(e.0 + 1))
            .saturating_duration_since(unix);
        if since_start < overlap && e.0 > 0 {
            out.push(Epoch(e.0 - 1));
        }
        if until_next <= overlap {
            out.push(Epoch(e.0 + 1));
        }
        out
    }
}

/// A chain known from some epoch on: a user's own (from its origin) or a
/// friend's (from the invite or reset that carried it). Keeps the latest
/// key it reached, so walking forward costs one step an epoch.
#[derive(Clone, Debug)]
pub struct Chain {
    origin: Epoch,
    origin_key: ChainKey,
    latest: Epoch,
    latest_key: ChainKey,
    /// The address keys computed last (each costs a scalar
    /// multiplication): at most [`KEPT_KEYS`], newest last.
    keys: Vec<(Epoch, u8, AddressKey)>,
}

/// Address keys a [`Chain`] keeps: three epochs (a lookup near a boundary
/// tries both neighbours) of a few devices.
const KEPT_KEYS: usize = 12;

impl Chain {
    /// The chain whose key at `origin` is `key`.
    pub fn new(origin: Epoch, key: ChainKey) -> Chain {
        Chain {
            origin,
            latest: origin,
            latest_key: key.clone(),
            origin_key: key,
            keys: Vec::new(),
        }
    }

    /// The epoch this chain is known from.
    pub fn origin(&self) -> Epoch {
        self.origin
    }

    /// The key the chain is known from (what persisting it saves).
    pub fn origin_key(&self) -> &ChainKey {
        &self.origin_key
    }

    /// The key of `epoch`, or `None` before the chain's origin (the
    /// ratchet cannot go back) or more than [`MAX_WALK`] epochs after it.
    pub fn key_at(&mut self, epoch: Epoch) -> Option<ChainKey> {
        if epoch < self.origin || epoch.0 - self.origin.0 > MAX_WALK {
            return None;
        }
        if epoch < self.latest {
            self.latest = self.origin;
            self.latest_key = self.origin_key.clone();
        }
        while self.latest < epoch {
            self.latest_key = self.latest_key.next();
            self.latest = Epoch(self.latest.0 + 1);
        }
        Some(self.latest_key.clone())
    }

    /// Device 0's virtual address in `epoch` (`None` before the origin).
    pub fn address_at(&mut self, epoch: Epoch) -> Option<VirtualAddr> {
        self.device_address_at(epoch, 0)
    }

    /// Device `device`'s address key pair in `epoch`.
    pub fn address_key_at(&mut self, epoch: Epoch, device: u8) -> Option<AddressKey> {
        if let Some((_, _, k)) = self
            .keys
            .iter()
            .find(|(e, d, _)| *e == epoch && *d == device)
        {
            return Some(k.clone());
        }
        let key = self.key_at(epoch)?.address_key(device);
        if self.keys.len() == KEPT_KEYS {
            self.keys.remove(0);
        }
        self.keys.push((epoch, device, key.clone()));
        Some(key)
    }

    /// Device `device`'s virtual address in `epoch`.
    pub fn device_address_at(&mut self, epoch: Epoch, device: u8) -> Option<VirtualAddr> {
        self.address_key_at(epoch, device).map(|k| k.address())
    }
}

#[cfg(test)]
#[path = "tests/ratchet.rs"]
mod tests;
