//! The presence table's storage: buckets of [`SLOTS`] slots, allocated
//! once for the table's capacity, which readers search without any lock.
//!
//! **Placement.** A key (keyed-hashed with std's `RandomState`, so nobody
//! can aim at a bucket) has two buckets and lives in a slot of one of
//! them; an insert takes the emptier, and when both are full moves one
//! resident to its other bucket (one or two moves deep, "cuckoo" style).
//! The table is sized so that at capacity 90% of its slots are taken:
//! [`LOAD`].
//!
//! **Readers never wait for a writer.** Each slot has a sequence word: odd
//! while a writer rewrites it, otherwise a version and an occupied bit. A
//! reader copies a slot and checks that its sequence did not change (a
//! seqlock, with every field an atomic so that a racing copy is merely
//! stale, never undefined); a slot being rewritten is skipped, never waited
//! on. That is safe because a writer never rewrites the only copy of a live
//! entry: a changed entry is written whole into a free slot of its buckets
//! and the old slot is cleared after, and a move between buckets copies
//! first too. Every write of such a move bumps a table-wide counter after
//! it, and a reader that found nothing while the counter changed looks
//! again; a reader that found nothing while it did not change has seen
//! every entry (a writer paused in the middle of a write leaves the copy
//! it is replacing in place). Keepalives and introductions change a found
//! entry in place with one atomic store or compare-exchange and no lock.
//!
//! One exception, written here so that nobody relies on more: a changed
//! entry whose two buckets are full even after moves (a table at its
//! capacity around that key) is rewritten in place, with the counter odd;
//! a reader of that key then retries, and after [`OPTIMISTIC_TRIES`] takes
//! the writer lock, as does a reader overtaken by that many moves in a row.
//!
//! **Writers** (a new entry, a move to another endpoint, a removal, the
//! sweep) take one mutex: they are the rare operations (a registration
//! that creates an entry has just checked a signature, about 50 µs), and
//! one writer at a time keeps inserts free of duplicates and moves simple.
//! The sweep takes it for a few thousand buckets at a time.
//!
//! **Memory.** A slot is 40 bytes (sequence 4, key 12, IPv6 address 16,
//! port and state 4, expiry 4); at capacity 40 / 0.9 ≈ 44 bytes an entry,
//! all of it allocated at start (no doubling, no allocation afterwards).

use std::hash::{BuildHasher, RandomState};
use std::hint::spin_loop;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering, fence};
use std::sync::{Mutex, MutexGuard, PoisonError};

/// Slots per bucket.
pub(super) const SLOTS: usize = 8;
/// The share of slots taken when the table holds its capacity.
pub(super) const LOAD: f64 = 0.9;
/// Lock-free looks before a reader that keeps missing while entries move
/// (or while its entry is rewritten in place) takes the writer lock.
const OPTIMISTIC_TRIES: usize = 64;
/// Buckets the sweep handles per hold of the writer lock.
const SWEEP_CHUNK: usize = 4096;

const WRITING: u32 = 1;
const OCCUPIED: u32 = 2;

/// A table key: 12 bytes (`presence::Key`).
pub(super) type Key = [u8; 12];

/// What a slot holds besides its key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Value {
    /// IPv6, or IPv4-mapped.
    pub ip: [u8; 16],
    pub port: u16,
    /// Owned by `presence` (metered bit, introduction window and count).
    pub state: u16,
    /// Second at which the entry expires.
    pub expires: u32,
}

/// One cache line of sequence words and each slot's first key word (what
/// a lookup scans), then the slots' records, two to a line: a lookup that
/// misses a bucket reads one line of it, one that hits reads two.
#[repr(C, align(64))]
struct Bucket {
    seq: [AtomicU32; SLOTS],
    /// Key word 0 of each slot.
    tag: [AtomicU32; SLOTS],
    /// Key words 1 and 2, IP (4 words), port << 16 | state, expires.
    rec: [[AtomicU32; 8]; SLOTS],
}

/// Where in a record the value's words start, and its port-and-state and
/// expiry words.
const VALUE: usize = 2;
const PORT_STATE: usize = 6;
const EXPIRES: usize = 7;

impl Bucket {
    fn new() -> Bucket {
        Bucket {
            seq: std::array::from_fn(|_| AtomicU32::new(0)),
            tag: std::array::from_fn(|_| AtomicU32::new(0)),
            rec: std::array::from_fn(|_| std::array::from_fn(|_| AtomicU32::new(0))),
        }
    }

    fn occupied(&self, s: usize) -> bool {
        self.seq[s].load(Ordering::Acquire) & OCCUPIED != 0
    }

    fn free(&self) -> Option<usize> {
        (0..SLOTS).find(|&s| !self.occupied(s))
    }

    fn free_count(&self) -> usize {
        (0..SLOTS).filter(|&s| !self.occupied(s)).count()
    }

    fn read_key(&self, s: usize) -> [u32; 3] {
        [
            self.tag[s].load(Ordering::Relaxed),
            self.rec[s][0].load(Ordering::Relaxed),
            self.rec[s][1].load(Ordering::Relaxed),
        ]
    }

    fn read_value(&self, s: usize) -> Value {
        let w: [u32; 6] = std::array::from_fn(|i| self.rec[s][VALUE + i].load(Ordering::Relaxed));
        let mut ip = [0u8; 16];
        for (i, word) in w[..4].iter().enumerate() {
            ip[4 * i..4 * i + 4].copy_from_slice(&word.to_ne_bytes());
        }
        Value {
            ip,
            port: (w[4] >> 16) as u16,
            state: w[4] as u16,
            expires: w[5],
        }
    }

    /// Rewrites slot `s` (the caller holds the writer lock): `None`
    /// empties it.
    fn write(&self, s: usize, entry: Option<(&[u32; 3], &Value)>) {
        let before = self.seq[s].load(Ordering::Relaxed);
        // Release: a reader that sees this slot busy also sees the move
        // counter as it was bumped before (see `Table::find`).
        self.seq[s].store(before | WRITING, Ordering::Release);
        fence(Ordering::Release);
        #[cfg(test)]
        if entry.is_none() {
            tests::pause_point();
        }
        if let Some((key, v)) = entry {
            self.tag[s].store(key[0], Ordering::Relaxed);
            self.rec[s][0].store(key[1], Ordering::Relaxed);
            self.rec[s][1].store(key[2], Ordering::Relaxed);
            // Half written: the key new, the value still the old one.
            #[cfg(test)]
            tests::pause_point();
            for i in 0..4 {
                let mut word = [0u8; 4];
                word.copy_from_slice(&v.ip[4 * i..4 * i + 4]);
                self.rec[s][VALUE + i].store(u32::from_ne_bytes(word), Ordering::Relaxed);
            }
            self.rec[s][PORT_STATE].store(
                u32::from(v.port) << 16 | u32::from(v.state),
                Ordering::Relaxed,
            );
            self.rec[s][EXPIRES].store(v.expires, Ordering::Relaxed);
        }
        let occupied = if entry.is_some() { OCCUPIED } else { 0 };
        self.seq[s].store(
            ((before >> 2).wrapping_add(1) << 2) | occupied,
            Ordering::Release,
        );
    }
}

fn words(key: &Key) -> [u32; 3] {
    std::array::from_fn(|i| {
        u32::from_ne_bytes([key[4 * i], key[4 * i + 1], key[4 * i + 2], key[4 * i + 3]])
    })
}

fn bytes(words: &[u32; 3]) -> Key {
    let mut key = [0u8; 12];
    for (i, w) in words.iter().enumerate() {
        key[4 * i..4 * i + 4].copy_from_slice(&w.to_ne_bytes());
    }
    key
}

/// A key's two buckets ([`Table::buckets`]): the keyed hash of a key,
/// taken once for the prefetch stages and the look. Meaningful only to the
/// table that made it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Buckets(usize, usize);

/// An entry a reader found: where it is, the version it was read at, and
/// what it held then.
#[derive(Clone, Copy, Debug)]
pub(super) struct Found {
    bucket: usize,
    slot: usize,
    seq: u32,
    pub value: Value,
}

pub(super) struct Table {
    buckets: Box<[Bucket]>,
    hasher: RandomState,
    /// Bumped by 2 after every write that moves or replaces a live entry,
    /// odd during an in-place rewrite; a reader that missed while it
    /// changed looks again.
    moves: Line<AtomicU64>,
    writer: Line<Mutex<()>>,
}

/// A value on a cache line of its own. The words writers write (the move
/// counter, the writer lock) sat on the line of the bucket pointer and the
/// hash keys that every lookup reads, so every insert on one core evicted
/// that line from every reader's cache: a lookup while another thread
/// inserts and removes took 117 ns against 69 ns alone (`cargo bench --bench
/// core -- presence/lookup_while_writing`).
#[repr(align(64))]
pub(super) struct Line<T>(pub(super) T);

impl<T> std::ops::Deref for Line<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}

impl Table {
    /// A table with room for `capacity` entries at [`LOAD`].
    pub(super) fn new(capacity: usize) -> Table {
        let buckets = ((capacity as f64 / (SLOTS as f64 * LOAD)).ceil() as usize).max(2);
        Table {
            buckets: (0..buckets).map(|_| Bucket::new()).collect(),
            hasher: RandomState::new(),
            moves: Line(AtomicU64::new(0)),
            writer: Line(Mutex::new(())),
        }
    }

    /// Slots in all.
    #[cfg(test)]
    pub(super) fn slots(&self) -> usize {
        self.buckets.len() * SLOTS
    }

    /// The two buckets of `key` (distinct).
    fn buckets_of(&self, key: &[u32; 3]) -> (usize, usize) {
        let h = self.hasher.hash_one(key);
        let n = self.buckets.len() as u64;
        let b1 = (((h & 0xffff_ffff) * n) >> 32) as usize;
        let b2 = (((h >> 32) * n) >> 32) as usize;
        (b1, if b2 == b1 { (b1 + 1) % n as usize } else { b2 })
    }

    /// `key`'s two buckets, hashed once for the looks that follow
    /// ([`Table::find_in`], [`Table::lines_of`], [`Table::record_lines_of`]).
    pub(super) fn buckets(&self, key: &Key) -> Buckets {
        let (b1, b2) = self.buckets_of(&words(key));
        Buckets(b1, b2)
    }

    fn other_bucket(&self, key: &[u32; 3], b: usize) -> usize {
        let (b1, b2) = self.buckets_of(key);
        if b == b1 { b2 } else { b1 }
    }

    /// Where the buckets are and how many bytes they take (for an engine to
    /// advise the kernel on the pages behind them).
    pub(super) fn memory(&self) -> (*const u8, usize) {
        (
            self.buckets.as_ptr().cast(),
            std::mem::size_of_val(&*self.buckets),
        )
    }

    /// The first cache line of each of a key's two buckets (their
    /// sequence words and tags: what every look reads first), for an
    /// engine to prefetch a few datagrams ahead of the one it handles.
    /// Reads nothing.
    pub(super) fn lines_of(&self, Buckets(b1, b2): Buckets) -> [*const u8; 2] {
        [b1, b2].map(|b| std::ptr::from_ref(&self.buckets[b]).cast())
    }

    /// The record line of the first slot in each of `key`'s buckets whose
    /// tag is the key's (null where none is): what a look reads second,
    /// named once the tag lines are in the cache. Reads the tags only,
    /// without the sequence words: a stale answer costs a wasted prefetch.
    pub(super) fn record_lines_of(&self, key: &Key, Buckets(b1, b2): Buckets) -> [*const u8; 2] {
        let tag = words(key)[0];
        [b1, b2].map(|b| {
            let bucket = &self.buckets[b];
            (0..SLOTS)
                .find(|&s| bucket.tag[s].load(Ordering::Relaxed) == tag)
                .map_or(std::ptr::null(), |s| {
                    std::ptr::from_ref(&bucket.rec[s]).cast()
                })
        })
    }

    /// A consistent copy of slot `s` of bucket `b` if it holds `key`; None
    /// if it does not, or if the slot is being rewritten (never waited on:
    /// see the module's doc for why that loses no entry).
    fn read_if(&self, b: usize, s: usize, key: &[u32; 3]) -> Option<Found> {
        let bucket = &self.buckets[b];
        // One word first, without the sequence: almost every slot is
        // someone else's. (A slot being rewritten with our key at this
        // instant orders this look before that write, as below.)
        if bucket.tag[s].load(Ordering::Relaxed) != key[0] {
            return None;
        }
        let seq = bucket.seq[s].load(Ordering::Acquire);
        // Busy, or not ours (or empty): a racing write of ours is ordered
        // after this look.
        if seq & WRITING != 0 || seq & OCCUPIED == 0 || bucket.read_key(s) != *key {
            return None;
        }
        let value = bucket.read_value(s);
        fence(Ordering::Acquire);
        (bucket.seq[s].load(Ordering::Relaxed) == seq).then_some(Found {
            bucket: b,
            slot: s,
            seq,
            value,
        })
    }

    /// Finds `key` without a lock and without waiting for a writer in
    /// progress. A miss while the move counter changed (an entry was
    /// copied or cleared during the look) is looked at again; a miss with
    /// the counter even and unchanged is final. Only a reader that keeps
    /// missing through [`OPTIMISTIC_TRIES`] looks (a writer moving entries
    /// without pause, or the in-place rewrite of the module's doc) takes
    /// the writer lock to look once more, so that a present entry is never
    /// reported absent.
    pub(super) fn find(&self, key: &Key) -> Option<Found> {
        self.find_in(key, self.buckets(key))
    }

    /// [`Table::find`] in `key`'s buckets as [`Table::buckets`] gave them.
    pub(super) fn find_in(&self, key: &Key, Buckets(b1, b2): Buckets) -> Option<Found> {
        let key = words(key);
        // Both buckets' tag lines at once: their cache misses overlap.
        std::hint::black_box((
            self.buckets[b1].tag[0].load(Ordering::Relaxed),
            self.buckets[b2].tag[0].load(Ordering::Relaxed),
        ));
        let scan = || {
            [b1, b2]
                .into_iter()
                .find_map(|b| (0..SLOTS).find_map(|s| self.read_if(b, s, &key)))
        };
        for _ in 0..OPTIMISTIC_TRIES {
            let before = self.moves.load(Ordering::Acquire);
            if let Some(found) = scan() {
                return Some(found);
            }
            fence(Ordering::Acquire);
            if before & 1 == 0 && self.moves.load(Ordering::Relaxed) == before {
                return None;
            }
            spin_loop();
        }
        let _w = self.write();
        scan()
    }

    /// Sets a found entry's expiry; false if the slot no longer holds what
    /// was found (the caller looks again; the store may then have landed on
    /// the entry now there: soft state, at most one keepalive's worth).
    pub(super) fn set_expires(&self, found: &Found, expires: u32) -> bool {
        let bucket = &self.buckets[found.bucket];
        bucket.rec[found.slot][EXPIRES].store(expires, Ordering::Relaxed);
        bucket.seq[found.slot].load(Ordering::Acquire) == found.seq
    }

    /// Changes a found entry's state with `f` (compare-exchange, a few
    /// tries); false if `f` declined, the slot changed, or the tries ran
    /// out.
    pub(super) fn update_state(&self, found: &Found, f: impl Fn(u16) -> Option<u16>) -> bool {
        let bucket = &self.buckets[found.bucket];
        let cell = &bucket.rec[found.slot][PORT_STATE];
        let mut seen = cell.load(Ordering::Relaxed);
        for _ in 0..4 {
            if (seen >> 16) as u16 != found.value.port {
                return false;
            }
            let Some(next) = f(seen as u16) else {
                return false;
            };
            let next = (seen & 0xffff_0000) | u32::from(next);
            match cell.compare_exchange(seen, next, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => return bucket.seq[found.slot].load(Ordering::Acquire) == found.seq,
                Err(now) => seen = now,
            }
        }
        false
    }

    /// The writer lock: inserts, moves, removals.
    pub(super) fn write(&self) -> Writer<'_> {
        Writer {
            table: self,
            _guard: self.writer.lock().unwrap_or_else(PoisonError::into_inner),
        }
    }

    /// Removes every entry for which `keep` says false, calling `gone` with
    /// each; holds the writer lock for [`SWEEP_CHUNK`] buckets at a time.
    pub(super) fn retain(
        &self,
        mut keep: impl FnMut(&Key, &Value) -> bool,
        mut gone: impl FnMut(&Value),
    ) -> usize {
        let mut removed = 0;
        for chunk in (0..self.buckets.len()).step_by(SWEEP_CHUNK) {
            let _w = self.write();
            for bucket in &self.buckets[chunk..(chunk + SWEEP_CHUNK).min(self.buckets.len())] {
                for s in 0..SLOTS {
                    if !bucket.occupied(s) {
                        continue;
                    }
                    let value = bucket.read_value(s);
                    if !keep(&bytes(&bucket.read_key(s)), &value) {
                        bucket.write(s, None);
                        gone(&value);
                        removed += 1;
                    }
                }
            }
        }
        removed
    }
}

/// The writer lock, held.
pub(super) struct Writer<'a> {
    table: &'a Table,
    _guard: MutexGuard<'a, ()>,
}

impl Writer<'_> {
    fn locate(&self, key: &[u32; 3]) -> Option<(usize, usize)> {
        let (b1, b2) = self.table.buckets_of(key);
        [b1, b2].into_iter().find_map(|b| {
            let bucket = &self.table.buckets[b];
            (0..SLOTS)
                .find(|&s| bucket.occupied(s) && bucket.read_key(s) == *key)
                .map(|s| (b, s))
        })
    }

    /// What `key` holds, if present.
    pub(super) fn get(&self, key: &Key) -> Option<Value> {
        let (b, s) = self.locate(&words(key))?;
        Some(self.table.buckets[b].read_value(s))
    }

    /// Rewrites the entry of `key` (present: see [`Writer::get`]): the new
    /// copy goes into a free slot of its buckets and the old slot is
    /// cleared after, so that a reader always finds one whole copy.
    pub(super) fn update(&self, key: &Key, value: &Value) {
        let t = self.table;
        let k = words(key);
        let Some((b, s)) = self.locate(&k) else {
            return;
        };
        if let Some((fb, fs)) = self.room(&k) {
            self.step(fb, fs, Some((&k, value)));
            self.step(b, s, None);
        } else {
            // Both buckets full even after moves: in place, the counter
            // odd meanwhile (readers of this key retry: the module's doc).
            let m = &t.moves;
            m.fetch_add(1, Ordering::Relaxed);
            t.buckets[b].write(s, Some((&k, value)));
            m.fetch_add(1, Ordering::Release);
        }
    }

    /// Removes `key`; what it held.
    pub(super) fn remove(&self, key: &Key) -> Option<Value> {
        let (b, s) = self.locate(&words(key))?;
        let bucket = &self.table.buckets[b];
        let value = bucket.read_value(s);
        bucket.write(s, None);
        Some(value)
    }

    /// Inserts `key` (absent: see [`Writer::get`]); false when neither of
    /// its buckets has room even after moving residents two deep.
    pub(super) fn insert(&self, key: &Key, value: &Value) -> bool {
        let k = words(key);
        match self.room(&k) {
            Some((b, s)) => {
                self.table.buckets[b].write(s, Some((&k, value)));
                true
            }
            None => false,
        }
    }

    /// A free slot in one of `k`'s buckets (the emptier), making one by
    /// moving residents other than `k` on to their other buckets, one or two
    /// deep ("cuckoo" moves), if both are full. None: no room even so.
    fn room(&self, k: &[u32; 3]) -> Option<(usize, usize)> {
        let t = self.table;
        let (b1, b2) = t.buckets_of(k);
        let b = if t.buckets[b1].free_count() >= t.buckets[b2].free_count() {
            b1
        } else {
            b2
        };
        if let Some(s) = t.buckets[b].free() {
            return Some((b, s));
        }
        // A path of moves: a resident of b1 or b2 (v) to its other bucket,
        // or a resident of that one (w) on to its own other bucket first.
        for vb in [b1, b2] {
            for vs in 0..SLOTS {
                let vk = t.buckets[vb].read_key(vs);
                if vk == *k {
                    continue;
                }
                let alt = t.other_bucket(&vk, vb);
                if let Some(fs) = t.buckets[alt].free() {
                    self.relocate((vb, vs), (alt, fs));
                    return Some((vb, vs));
                }
                for ws in 0..SLOTS {
                    let wk = t.buckets[alt].read_key(ws);
                    let alt2 = t.other_bucket(&wk, alt);
                    if alt2 == vb {
                        continue;
                    }
                    if let Some(fs) = t.buckets[alt2].free() {
                        self.relocate((alt, ws), (alt2, fs));
                        self.relocate((vb, vs), (alt, ws));
                        return Some((vb, vs));
                    }
                }
            }
        }
        None
    }

    /// Moves slot `from` to the free slot `to`: copied first, then
    /// cleared, each write followed by a bump of the move counter.
    fn relocate(&self, from: (usize, usize), to: (usize, usize)) {
        let t = self.table;
        let key = t.buckets[from.0].read_key(from.1);
        let value = t.buckets[from.0].read_value(from.1);
        self.step(to.0, to.1, Some((&key, &value)));
        self.step(from.0, from.1, None);
    }

    /// One write of a move or replacement, then the counter bump that tells
    /// a reader who missed during it to look again.
    fn step(&self, b: usize, s: usize, entry: Option<(&[u32; 3], &Value)>) {
        self.table.buckets[b].write(s, entry);
        self.table.moves.fetch_add(2, Ordering::Release);
    }
}

#[cfg(test)]
#[path = "../tests/table.rs"]
mod tests;
