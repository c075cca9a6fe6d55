//! The presence table: virtual address → where that earth node is now.
//!
//! Shared by every shard of a node: a fixed table of buckets (`table.rs`),
//! allocated once for the capacity and hashed with std's `RandomState`
//! (SipHash-1-3 with per-process random keys: addresses are
//! attacker-chosen, so bucket collisions must not be). Lookups, keepalives
//! and renewals take no lock; creating, moving and removing entries take
//! the table's one writer lock.
//!
//! **Soft state.** An entry expires `3 × keepalive` after its last register or
//! keepalive (SPEC §3). An expired entry is treated as absent at once and
//! removed by [`Presence::sweep`], which the control thread runs every
//! keepalive interval; the sweep holds the writer lock for a few thousand
//! buckets at a time, and readers never wait for it.
//!
//! **Capacity, budgets and eviction rule.** The table holds at most
//! `capacity` live entries, and no source can hold more than its share: at
//! most [`Budgets::per_ip`] entries registered from one source IP, and
//! [`Budgets::per_prefix`] from one prefix (/24 IPv4, /56 IPv6;
//! configurable). A registration of a *new* address (or one that would
//! move an address to another source IP) beyond any of these is refused
//! with a reason ([`Refused`]), which the shard answers in a 7-byte
//! `refused` reply; registered addresses keep refreshing. Expired entries
//! never count: before it refuses, the table reclaims every expired entry
//! (a sweep, at most once a second). Nothing live is ever evicted to make
//! room: a flood of fresh registrations cannot push online users out, and
//! one source or prefix cannot fill the table. New entries are admitted
//! under the writer lock, so the counts are exact.
//!
//! **Memory.** A slot is 40 bytes (sequence, 12-byte key, address, port,
//! state, expiry), and the table has capacity / 0.9 of them, all allocated
//! at start: 44 bytes an entry at capacity. Nothing is written to disk. The
//! engine asks the kernel for huge pages under it ([`Presence::memory`])
//! and prefetches the lines a lookup will read ([`Presence::lines_of`]),
//! placed once ([`Presence::place`]).
//!
//! Time here is whole seconds since the engine's origin, passed in: this
//! module reads no clock.

use std::hash::RandomState;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};

use dashmap::DashMap;

use sky_proto::ring::Ring;
use sky_proto::wire::{self, Flags, VirtualAddr};

mod table;

use table::{Buckets, Table, Value};

/// Cache lines to prefetch (null: none); see [`Presence::lines_of`].
pub type Lines = [*const u8; 3];

/// Which lines [`Presence::lines_of`] names: those a datagram's handling
/// reads first, or (a little later, when those are in the cache) the ones
/// they lead to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ahead {
    First,
    Second,
}

/// Where an address lives in the table, and for a lookup the caller's
/// introduction counter for it: the keyed hashes (SipHash) a lookup or
/// keepalive needs, taken once ([`Presence::place`]) for an engine's two
/// prefetch stages and the handling alike, where each took them again.
/// Meaningful only to the `Presence` that made it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Place {
    key: Key,
    buckets: Buckets,
    /// The caller's counter in `pairs`, if placed for a lookup.
    pair: Option<usize>,
}

/// Lock shards of the per-source counts.
pub const TABLE_SHARDS: usize = 256;

/// The table's key: the first 12 bytes of a virtual address.
///
/// Addresses are BLAKE3 outputs of tokens, so 96 bits identify one: taking
/// another user's slot means finding a token whose address shares a 96-bit
/// prefix with theirs (2^96 work), and two honest addresses among 10^7
/// collide with probability about 10^-15. Four bytes less per entry is what
/// brings an entry under SPEC §6's 64 bytes at 10^7 entries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct Key([u8; 12]);

impl Key {
    fn of(address: &VirtualAddr) -> Key {
        let mut k = [0u8; 12];
        k.copy_from_slice(&address.0[..12]);
        Key(k)
    }
}

/// Bit 15 of an entry's state: metered. Bits 8..15: the introduction
/// window (low 7 bits of the second). Bits 0..8: introductions sent in
/// that window.
const METERED: u16 = 0x8000;

fn ip16(ip: IpAddr) -> [u8; 16] {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    }
}

impl Value {
    fn new(endpoint: SocketAddr, flags: Flags, expires: u32) -> Value {
        Value {
            ip: ip16(endpoint.ip()),
            port: endpoint.port(),
            state: if flags.metered() { METERED } else { 0 },
            expires,
        }
    }

    fn endpoint(&self) -> SocketAddr {
        wire::canonical(SocketAddr::new(
            IpAddr::V6(Ipv6Addr::from(self.ip)),
            self.port,
        ))
    }

    fn flags(&self) -> Flags {
        Flags(if self.state & METERED != 0 {
            Flags::METERED
        } else {
            0
        })
    }

    fn alive_at(&self, now_secs: u32) -> bool {
        now_secs < self.expires
    }
}

/// `state` with one introduction taken from this second's allowance, or
/// `None` if it is spent.
fn take_introduction(state: u16, now_secs: u32, per_second: u8) -> Option<u16> {
    let window = (now_secs & 0x7f) as u16;
    let metered = state & METERED;
    if (state >> 8) & 0x7f != window {
        Some(metered | (window << 8) | 1)
    } else if (state & 0xff) < u16::from(per_second) {
        Some(state + 1)
    } else {
        None
    }
}

/// `state` with the metered bit of `flags`.
fn with_flags(state: u16, flags: Flags) -> u16 {
    (state & !METERED) | if flags.metered() { METERED } else { 0 }
}

/// Why a registration was refused (the `reason` of its `refused` reply
/// and of `sky_registrations_refused_total`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Refused {
    /// The table holds `capacity` live entries.
    TableFull = 1,
    /// The source IP holds its share.
    SourceLimit = 2,
    /// The source's prefix holds its share.
    PrefixLimit = 3,
    /// The registration would create or move an entry, and the source has
    /// spent its signature checks for this second (the shard's, not the
    /// table's: [`crate::proof`]).
    ProofBudget = 4,
    /// The registration would create or move an entry, and its signature
    /// does not verify (the shard's).
    Forged = 5,
}

impl Refused {
    pub const ALL: [Refused; 5] = [
        Refused::TableFull,
        Refused::SourceLimit,
        Refused::PrefixLimit,
        Refused::ProofBudget,
        Refused::Forged,
    ];

    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            Refused::TableFull => "table_full",
            Refused::SourceLimit => "source_limit",
            Refused::PrefixLimit => "prefix_limit",
            Refused::ProofBudget => "proof_budget",
            Refused::Forged => "forged",
        }
    }
}

/// How much of the table one source may hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Budgets {
    /// Entries registered from one source IP, at most.
    pub per_ip: u32,
    /// Entries registered from one prefix, at most.
    pub per_prefix: u32,
    /// The prefix lengths that count as one source network.
    pub prefix_v4: u8,
    pub prefix_v6: u8,
}

impl Budgets {
    /// The defaults for a table of `capacity`: one IP 1% of it, one prefix
    /// 5% (at least 64 and 256: a carrier NAT hides many users behind one
    /// address).
    pub fn for_capacity(capacity: usize) -> Budgets {
        let share =
            |percent: usize, floor: usize| (capacity * percent / 100).max(floor).min(capacity);
        Budgets {
            per_ip: share(1, 64) as u32,
            per_prefix: share(5, 256) as u32,
            prefix_v4: 24,
            prefix_v6: 56,
        }
    }

    /// No limit but the capacity (benchmarks from one machine).
    pub fn unlimited() -> Budgets {
        Budgets {
            per_ip: u32::MAX,
            per_prefix: u32::MAX,
            prefix_v4: 24,
            prefix_v6: 56,
        }
    }
}

/// A source as budgets count it: an IP, or a prefix (masked, with its
/// length). Never leaves this module, never logged.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
struct Source([u8; 17]);

impl Budgets {
    fn sources_of(&self, ip: &[u8; 16]) -> (Source, Source) {
        let v4 = Ipv6Addr::from(*ip).to_ipv4_mapped().is_some();
        let len = if v4 {
            96 + usize::from(self.prefix_v4.min(32))
        } else {
            usize::from(self.prefix_v6.min(128))
        };
        let mut prefix = [0u8; 17];
        for (i, b) in ip.iter().enumerate() {
            let keep = len.saturating_sub(i * 8).min(8);
            prefix[i] = if keep == 0 {
                0
            } else {
                b & (0xffu8 << (8 - keep))
            };
        }
        prefix[16] = len as u8;
        let mut exact = [0u8; 17];
        exact[..16].copy_from_slice(ip);
        exact[16] = 0xff;
        (Source(exact), Source(prefix))
    }
}

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
    table: Table,
    /// Written by every insert and removal: a line of its own (as the
    /// table's writer words: `table::Line`).
    len: table::Line<AtomicUsize>,
    capacity: usize,
    budgets: Budgets,
    /// Entries held per source IP and per prefix.
    sources: DashMap<Source, u32, RandomState>,
    /// When expired entries were last reclaimed on demand (seconds).
    reclaimed: AtomicU32,
    /// Introductions per (caller IP, target) this second, by keyed hash:
    /// one caller cannot spend a target's whole allowance.
    pairs: Box<[AtomicU32]>,
    pair_hasher: RandomState,
}

/// Slots of the per-pair introduction counts (a power of two; 256 KiB).
const PAIR_SLOTS: usize = 1 << 16;

impl Presence {
    /// A table for at most `capacity` entries, allocated now (44 bytes an
    /// entry: 44 MB for the default 10^6).
    pub fn new(capacity: usize) -> Presence {
        Presence::with_budgets(capacity, Budgets::for_capacity(capacity))
    }

    /// A table with explicit per-source budgets.
    pub fn with_budgets(capacity: usize, budgets: Budgets) -> Presence {
        Presence {
            table: Table::new(capacity),
            len: table::Line(AtomicUsize::new(0)),
            capacity,
            budgets,
            sources: DashMap::with_hasher_and_shard_amount(RandomState::new(), TABLE_SHARDS),
            reclaimed: AtomicU32::new(u32::MAX),
            pairs: (0..PAIR_SLOTS).map(|_| AtomicU32::new(0)).collect(),
            pair_hasher: RandomState::new(),
        }
    }

    /// Takes one introduction from a caller's allowance towards a target
    /// this second (`per_second`), in their counter `pair`
    /// ([`Presence::pair_slot`]). Slots are shared by keyed hash, so two
    /// pairs rarely, and never predictably, share one.
    fn take_pair(&self, pair: usize, now_secs: u32, per_second: u8) -> bool {
        let cell = &self.pairs[pair];
        let window = now_secs & 0xffff;
        let mut seen = cell.load(Ordering::Relaxed);
        for _ in 0..4 {
            let next = if seen >> 16 != window {
                (window << 16) | 1
            } else if seen & 0xffff < u32::from(per_second) {
                seen + 1
            } else {
                return false;
            };
            match cell.compare_exchange(seen, next, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => return true,
                Err(now) => seen = now,
            }
        }
        false
    }

    /// The counter of (`caller`, `target`) in `pairs`.
    fn pair_slot(&self, caller: IpAddr, target: &Key) -> usize {
        use std::hash::BuildHasher;
        self.pair_hasher.hash_one((ip16(caller), target.0)) as usize & (PAIR_SLOTS - 1)
    }

    /// The per-source budgets.
    pub fn budgets(&self) -> Budgets {
        self.budgets
    }

    /// Counts one entry more (`up`) or less for the sources of `ip`.
    fn count(&self, ip: &[u8; 16], up: bool) {
        let (exact, prefix) = self.budgets.sources_of(ip);
        for source in [exact, prefix] {
            if up {
                *self.sources.entry(source).or_insert(0) += 1;
            } else if let dashmap::Entry::Occupied(mut o) = self.sources.entry(source) {
                *o.get_mut() -= 1;
                if *o.get() == 0 {
                    o.remove();
                }
            }
        }
    }

    /// Whether one more entry from `ip` fits its budgets.
    fn within_budgets(&self, ip: &[u8; 16]) -> Result<(), Refused> {
        let (exact, prefix) = self.budgets.sources_of(ip);
        let held = |s| self.sources.get(&s).map_or(0, |n| *n);
        if held(exact) >= self.budgets.per_ip {
            return Err(Refused::SourceLimit);
        }
        if held(prefix) >= self.budgets.per_prefix {
            return Err(Refused::PrefixLimit);
        }
        Ok(())
    }

    /// Whether a new entry from `ip` may be added: room and budget.
    fn room_for(&self, ip: &[u8; 16]) -> Result<(), Refused> {
        if self.len() >= self.capacity {
            return Err(Refused::TableFull);
        }
        self.within_budgets(ip)
    }

    /// Whether expired entries may be reclaimed on demand now (at most
    /// once a second), and claims that turn.
    fn reclaim_due(&self, now_secs: u32) -> bool {
        let last = self.reclaimed.load(Ordering::Relaxed);
        let due = last == u32::MAX || now_secs.saturating_sub(last) >= 1;
        due && self
            .reclaimed
            .compare_exchange(last, now_secs, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
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

    /// Registers or re-registers `address` at `endpoint` until `expires`
    /// (`now_secs`: the time, for reclaiming expired entries). A
    /// re-registration may move the address to a new endpoint (the caller
    /// has checked the address key's signature); one to another source IP
    /// counts against that source's budget.
    pub fn register(
        &self,
        address: VirtualAddr,
        endpoint: SocketAddr,
        flags: Flags,
        now_secs: u32,
        expires: u32,
    ) -> Result<(), Refused> {
        let key = Key::of(&address);
        let new = Value::new(endpoint, flags, expires);
        for attempt in 0..2 {
            let w = self.table.write();
            if let Some(old) = w.get(&key.0) {
                if old.ip != new.ip {
                    // To another source IP: within that source's budgets.
                    self.within_budgets(&new.ip)?;
                }
                w.update(
                    &key.0,
                    &Value {
                        state: with_flags(old.state, flags),
                        ..new
                    },
                );
                drop(w);
                if old.ip != new.ip {
                    self.count(&old.ip, false);
                    self.count(&new.ip, true);
                }
                return Ok(());
            }
            let refused = match self.room_for(&new.ip) {
                Ok(()) if w.insert(&key.0, &new) => {
                    self.len.fetch_add(1, Ordering::Relaxed);
                    self.count(&new.ip, true);
                    return Ok(());
                }
                // Both of its buckets full, even after moves: the table is
                // as good as full for this address.
                Ok(()) => Refused::TableFull,
                Err(refused) => refused,
            };
            drop(w);
            // Expired entries never count: reclaim them and try once more.
            if attempt > 0 || !self.reclaim_due(now_secs) || self.sweep(now_secs) == 0 {
                return Err(refused);
            }
        }
        Err(Refused::TableFull)
    }

    /// A registration that moves nothing: if `address` is alive at exactly
    /// `endpoint`, takes the new flags and expiry and returns true (no
    /// proof needed: the address stays where its owner put it). False:
    /// the registration would create or move the entry.
    pub fn renew(
        &self,
        address: &VirtualAddr,
        endpoint: SocketAddr,
        flags: Flags,
        now_secs: u32,
        expires: u32,
    ) -> bool {
        let place = self.place(address, None);
        self.extend(&place, endpoint, Some(flags), now_secs, expires)
    }

    /// Extends the address placed at `place` (and takes `flags`, if any)
    /// if it is alive at exactly `endpoint`. No lock: one atomic store (and
    /// a compare-exchange for the flags).
    fn extend(
        &self,
        place: &Place,
        endpoint: SocketAddr,
        flags: Option<Flags>,
        now_secs: u32,
        expires: u32,
    ) -> bool {
        let endpoint = wire::canonical(endpoint);
        // A slot rewritten under us (an entry moved between buckets) is
        // looked up again; a few tries.
        for _ in 0..4 {
            let Some(found) = self.table.find_in(&place.key.0, place.buckets) else {
                return false;
            };
            if !found.value.alive_at(now_secs) || found.value.endpoint() != endpoint {
                return false;
            }
            if let Some(f) = flags
                && found.value.flags() != f
            {
                self.table
                    .update_state(&found, |st| Some(with_flags(st, f)));
            }
            if self.table.set_expires(&found, expires) {
                return true;
            }
        }
        false
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
        self.refresh_at(&self.place(address, None), endpoint, now_secs, expires)
    }

    /// [`Presence::refresh`] of the address placed at `place`.
    pub fn refresh_at(
        &self,
        place: &Place,
        endpoint: SocketAddr,
        now_secs: u32,
        expires: u32,
    ) -> bool {
        self.extend(place, endpoint, None, now_secs, expires)
    }

    /// Whether `address` is online at `now_secs`, and where (reads only:
    /// takes no introduction).
    pub fn peek(&self, address: &VirtualAddr, now_secs: u32) -> Option<SocketAddr> {
        match self.table.find(&Key::of(address).0) {
            Some(f) if f.value.alive_at(now_secs) => Some(f.value.endpoint()),
            _ => None,
        }
    }

    /// Looks `target` up and, if it is online, takes one introduction from
    /// the caller's allowance towards it (`limits.1` a second) and then from
    /// the target's (`limits.0` a second): a caller flooding lookups of one
    /// address spends only its own share, and others' lookups are still
    /// introduced.
    pub fn lookup(
        &self,
        target: &VirtualAddr,
        caller: IpAddr,
        now_secs: u32,
        limits: (u8, u8),
    ) -> Found {
        self.lookup_at(&self.place(target, Some(caller)), caller, now_secs, limits)
    }

    /// [`Presence::lookup`] of the target placed at `place` by `caller`
    /// (whose counter a place made for a lookup by that caller holds; any
    /// other place has it computed here).
    pub fn lookup_at(
        &self,
        place: &Place,
        caller: IpAddr,
        now_secs: u32,
        limits: (u8, u8),
    ) -> Found {
        match self.table.find_in(&place.key.0, place.buckets) {
            Some(f) if f.value.alive_at(now_secs) => Found::Online {
                endpoint: f.value.endpoint(),
                flags: f.value.flags(),
                introduce: self.take_pair(
                    place
                        .pair
                        .unwrap_or_else(|| self.pair_slot(caller, &place.key)),
                    now_secs,
                    limits.1,
                ) && self
                    .table
                    .update_state(&f, |st| take_introduction(st, now_secs, limits.0)),
            },
            _ => Found::Offline,
        }
    }

    /// The table's buckets: where they start and their size in bytes.
    pub fn memory(&self) -> (*const u8, usize) {
        self.table.memory()
    }

    /// Where `address` lives, and for a lookup (`lookup_from`: the
    /// caller's IP) the caller's introduction counter for it: hashed once
    /// for [`Presence::lines_of`], [`Presence::lookup_at`] and
    /// [`Presence::refresh_at`].
    pub fn place(&self, address: &VirtualAddr, lookup_from: Option<IpAddr>) -> Place {
        let key = Key::of(address);
        Place {
            key,
            buckets: self.table.buckets(&key.0),
            pair: lookup_from.map(|caller| self.pair_slot(caller, &key)),
        }
    }

    /// The cache lines that handling a keepalive or lookup of the address
    /// at `place` will read, for an engine to prefetch
    /// ([`Core::lines_ahead`](crate::shard::Core::lines_ahead)): at
    /// [`Ahead::First`], the tag lines of its two buckets and, for a place
    /// made for a lookup, the caller's introduction counter for it; at
    /// [`Ahead::Second`], once those are in the cache, the record lines of
    /// the slots whose tag matches. Hashes nothing.
    pub fn lines_of(&self, place: &Place, ahead: Ahead) -> Lines {
        match ahead {
            Ahead::First => {
                let [b1, b2] = self.table.lines_of(place.buckets);
                let pair = place.pair.map_or(std::ptr::null(), |pair| {
                    std::ptr::from_ref(&self.pairs[pair]).cast()
                });
                [b1, b2, pair]
            }
            Ahead::Second => {
                let [r1, r2] = self.table.record_lines_of(&place.key.0, place.buckets);
                [r1, r2, std::ptr::null()]
            }
        }
    }

    /// Drops `address`. Returns whether it was present.
    pub fn remove(&self, address: &VirtualAddr) -> bool {
        let removed = self.table.write().remove(&Key::of(address).0);
        match removed {
            Some(e) => {
                self.len.fetch_sub(1, Ordering::Relaxed);
                self.count(&e.ip, false);
                true
            }
            None => false,
        }
    }

    /// Removes every entry whose address `me` does not own in `ring` (the
    /// handoff: run once the grace after a ring change has passed, when the
    /// new owners have had their registrations). Returns how many. The ring
    /// position of an address is its first 8 bytes, which the 12-byte key
    /// keeps.
    pub fn retain_owned(&self, ring: &Ring, me: SocketAddr) -> usize {
        let me = wire::canonical(me);
        self.retain(|key, _| {
            let mut position = [0u8; 8];
            position.copy_from_slice(&key[..8]);
            ring.owners_of_position(u64::from_be_bytes(position))
                .contains(me)
        })
    }

    /// Removes every entry expired at `now_secs`; returns how many.
    pub fn sweep(&self, now_secs: u32) -> usize {
        self.retain(|_, e| e.alive_at(now_secs))
    }

    fn retain(&self, keep: impl FnMut(&[u8; 12], &Value) -> bool) -> usize {
        let mut gone = Vec::new();
        let removed = self.table.retain(keep, |e| gone.push(e.ip));
        for ip in &gone {
            self.count(ip, false);
        }
        self.len.fetch_sub(removed, Ordering::Relaxed);
        removed
    }
}

#[cfg(test)]
#[path = "tests/presence.rs"]
mod tests;
