//! The presence table: virtual address → where that earth node is now.
//!
//! Shared by every shard of a node: a [`DashMap`] split into
//! [`TABLE_SHARDS`] locks, hashed with std's `RandomState` (SipHash-1-3 with
//! per-process random keys: addresses are attacker-chosen, so bucket
//! collisions must not be).
//!
//! **Soft state.** An entry expires `3 × keepalive` after its last register or
//! keepalive (SPEC §3). An expired entry is treated as absent at once and
//! removed by [`Presence::sweep`], which the control thread runs every
//! keepalive interval; the sweep locks one table shard at a time.
//!
//! **Capacity and eviction rule.** The table holds at most `capacity`
//! entries. A registration of a *new* address when the table is full is
//! refused (counted as `table_full`); registered addresses keep refreshing.
//! Nothing already present is ever evicted to make room: a flood of fresh
//! registrations cannot push online users out. Room comes back only through
//! expiry and unregistration. The count is kept with a relaxed atomic, so
//! concurrent shards may overshoot the capacity by at most one entry each.
//!
//! **Memory.** One entry is a 12-byte key plus a 24-byte [`Entry`], plus
//! the hash table's control byte and spare buckets (at 10^7 entries the
//! table has 2^24 buckets: 37 / 0.6 ≈ 62 bytes an entry). Nothing is
//! written to disk.
//!
//! Time here is whole seconds since the engine's origin, passed in: this
//! module reads no clock.

use std::hash::RandomState;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering};

use dashmap::DashMap;

use sky_proto::ring::Ring;
use sky_proto::wire::{self, Flags, VirtualAddr};

/// Lock shards of the table. Many small locks keep both packet shards and
/// the sweep from waiting on each other.
pub const TABLE_SHARDS: usize = 256;

/// The table's key: the first 12 bytes of a virtual address.
///
/// Addresses are BLAKE3 outputs of tokens, so 96 bits identify one: taking
/// another user's slot means finding a token whose address shares a 96-bit
/// prefix with theirs (2^96 work), and two honest addresses among 10^7
/// collide with probability about 10^-15. Four bytes less per entry is what
/// brings an entry under SPEC §6's 64 bytes at 10^7 entries.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
struct Key([u8; 12]);

impl Key {
    fn of(address: &VirtualAddr) -> Key {
        let mut k = [0u8; 12];
        k.copy_from_slice(&address.0[..12]);
        Key(k)
    }
}

/// A presence entry, packed to 24 bytes.
#[derive(Debug)]
pub struct Entry {
    /// IPv6 or IPv4-mapped address.
    ip: [u8; 16],
    port: [u8; 2],
    /// Second at which the entry expires.
    expires: [u8; 4],
    /// Bit 15: metered. Bits 8..15: the introduction window (low 7 bits of
    /// the second). Bits 0..8: introductions sent in that window.
    state: AtomicU16,
}

const METERED: u16 = 0x8000;

impl Entry {
    fn new(endpoint: SocketAddr, flags: Flags, expires: u32) -> Entry {
        let mut e = Entry {
            ip: [0; 16],
            port: [0; 2],
            expires: expires.to_le_bytes(),
            state: AtomicU16::new(if flags.metered() { METERED } else { 0 }),
        };
        e.set_endpoint(endpoint);
        e
    }

    fn set_endpoint(&mut self, endpoint: SocketAddr) {
        self.ip = match endpoint.ip() {
            IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
            IpAddr::V6(v6) => v6.octets(),
        };
        self.port = endpoint.port().to_be_bytes();
    }

    fn set_metered(&mut self, metered: bool) {
        let state = self.state.get_mut();
        *state = (*state & !METERED) | if metered { METERED } else { 0 };
    }

    pub fn endpoint(&self) -> SocketAddr {
        let ip = Ipv6Addr::from(self.ip);
        wire::canonical(SocketAddr::new(
            IpAddr::V6(ip),
            u16::from_be_bytes(self.port),
        ))
    }

    fn flags(&self) -> Flags {
        let metered = self.state.load(Ordering::Relaxed) & METERED != 0;
        Flags(if metered { Flags::METERED } else { 0 })
    }

    fn expires(&self) -> u32 {
        u32::from_le_bytes(self.expires)
    }

    fn alive_at(&self, now_secs: u32) -> bool {
        now_secs < self.expires()
    }

    /// Takes one introduction from this second's allowance.
    fn take_introduction(&self, now_secs: u32, per_second: u8) -> bool {
        let window = (now_secs & 0x7f) as u16;
        let mut seen = self.state.load(Ordering::Relaxed);
        // Bounded: a lost race means another shard just introduced to the
        // same target; after a few we call it rate-limited.
        for _ in 0..4 {
            let metered = seen & METERED;
            let next = if (seen >> 8) & 0x7f != window {
                metered | (window << 8) | 1
            } else if (seen & 0xff) < u16::from(per_second) {
                seen + 1
            } else {
                return false;
            };
            match self
                .state
                .compare_exchange(seen, next, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => return true,
                Err(now) => seen = now,
            }
        }
        false
    }
}

/// The table was full and the address was new.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Full;

/// What a lookup found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Found {
    Offline,
    Online {
        endpoint: SocketAddr,
        flags: Flags,
        /// The target's introduction allowance had room.
        introduce: bool,
    },
}

pub struct Presence {
    map: DashMap<Key, Entry, RandomState>,
    len: AtomicUsize,
    capacity: usize,
}

impl Presence {
    /// A table for at most `capacity` entries. It starts small and grows
    /// with the load (sizing it for `capacity` up front was measured: the
    /// allocator and transparent huge pages made most of it resident at
    /// once, 240 MiB for an empty 10^7 table).
    pub fn new(capacity: usize) -> Presence {
        Presence {
            map: DashMap::with_capacity_and_hasher_and_shard_amount(
                capacity.min(1 << 16),
                RandomState::new(),
                TABLE_SHARDS,
            ),
            len: AtomicUsize::new(0),
            capacity,
        }
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Entries held, expired-but-unswept included.
    pub fn len(&self) -> usize {
        self.len.load(Ordering::Relaxed)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Registers or re-registers `address` at `endpoint` until `expires`.
    /// A re-registration may move the address to a new endpoint (the token
    /// proves ownership).
    pub fn register(
        &self,
        address: VirtualAddr,
        endpoint: SocketAddr,
        flags: Flags,
        expires: u32,
    ) -> Result<(), Full> {
        let key = Key::of(&address);
        if let Some(mut e) = self.map.get_mut(&key) {
            e.set_endpoint(endpoint);
            e.set_metered(flags.metered());
            e.expires = expires.to_le_bytes();
            return Ok(());
        }
        if self.len() >= self.capacity {
            return Err(Full);
        }
        match self.map.entry(key) {
            dashmap::Entry::Occupied(mut o) => {
                // Another shard inserted it since our look.
                *o.get_mut() = Entry::new(endpoint, flags, expires);
            }
            dashmap::Entry::Vacant(v) => {
                v.insert(Entry::new(endpoint, flags, expires));
                self.len.fetch_add(1, Ordering::Relaxed);
            }
        }
        Ok(())
    }

    /// A keepalive: extends the entry if it is alive and registered at
    /// `endpoint`. False means the client must register again.
    pub fn refresh(
        &self,
        address: &VirtualAddr,
        endpoint: SocketAddr,
        now_secs: u32,
        expires: u32,
    ) -> bool {
        match self.map.get_mut(&Key::of(address)) {
            Some(mut e) if e.alive_at(now_secs) && e.endpoint() == wire::canonical(endpoint) => {
                e.expires = expires.to_le_bytes();
                true
            }
            _ => false,
        }
    }

    /// Looks `target` up and, if it is online, takes one introduction from
    /// its allowance of `intros_per_second`.
    pub fn lookup(&self, target: &VirtualAddr, now_secs: u32, intros_per_second: u8) -> Found {
        match self.map.get(&Key::of(target)) {
            Some(e) if e.alive_at(now_secs) => Found::Online {
                endpoint: e.endpoint(),
                flags: e.flags(),
                introduce: e.take_introduction(now_secs, intros_per_second),
            },
            _ => Found::Offline,
        }
    }

    /// Drops `address`. Returns whether it was present.
    pub fn remove(&self, address: &VirtualAddr) -> bool {
        let removed = self.map.remove(&Key::of(address)).is_some();
        if removed {
            self.len.fetch_sub(1, Ordering::Relaxed);
        }
        removed
    }

    /// Removes every entry whose address `me` does not own in `ring` (the
    /// handoff: run once the grace after a ring change has passed, when the
    /// new owners have had their registrations). Returns how many. The ring
    /// position of an address is its first 8 bytes, which the 12-byte key
    /// keeps.
    pub fn retain_owned(&self, ring: &Ring, me: SocketAddr) -> usize {
        let me = wire::canonical(me);
        let mut dropped = 0;
        self.map.retain(|k, _| {
            let mut position = [0u8; 8];
            position.copy_from_slice(&k.0[..8]);
            let keep = ring
                .owners_of_position(u64::from_be_bytes(position))
                .contains(me);
            dropped += usize::from(!keep);
            keep
        });
        self.len.fetch_sub(dropped, Ordering::Relaxed);
        dropped
    }

    /// Removes every entry expired at `now_secs`; returns how many.
    pub fn sweep(&self, now_secs: u32) -> usize {
        let mut expired = 0;
        self.map.retain(|_, e| {
            let keep = e.alive_at(now_secs);
            expired += usize::from(!keep);
            keep
        });
        self.len.fetch_sub(expired, Ordering::Relaxed);
        expired
    }
}

#[cfg(test)]
#[path = "tests/presence.rs"]
mod tests;
