//! Tests of `presence::table`: the layout, a table filled to its
//! capacity, and readers racing writers on real threads.

#![allow(clippy::disallowed_methods)] // readers and writers on plain threads

use super::*;
use std::cell::RefCell;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::sync::mpsc;
use std::time::Duration;

thread_local! {
    /// Called by this thread's slot writes (a writer a test pauses).
    static PAUSE: RefCell<Option<Box<dyn FnMut()>>> = RefCell::new(None);
}

/// Where `Bucket::write` lets a test pause it: after the slot is marked
/// busy (for a write of an entry, once its key is written and its value
/// is still the old one).
pub(super) fn pause_point() {
    PAUSE.with(|p| {
        if let Some(f) = p.borrow_mut().as_mut() {
            f();
        }
    });
}

fn key(i: u32) -> Key {
    let mut k = [0u8; 12];
    k[..4].copy_from_slice(&i.to_le_bytes());
    k[4..8].copy_from_slice(&i.wrapping_mul(0x9e37_79b9).to_le_bytes());
    k
}

/// A value that says which key it belongs to (a torn copy would not).
fn value(i: u32, expires: u32) -> Value {
    let mut ip = [0u8; 16];
    ip[..4].copy_from_slice(&i.to_le_bytes());
    ip[12..].copy_from_slice(&(!i).to_le_bytes());
    Value {
        ip,
        port: i as u16,
        state: 0,
        expires,
    }
}

fn consistent(i: u32, v: &Value) -> bool {
    let w = value(i, v.expires);
    v.ip == w.ip && v.port == w.port
}

#[test]
fn a_slot_is_forty_bytes() {
    assert_eq!(std::mem::size_of::<Bucket>(), 40 * SLOTS);
}

#[test]
fn inserts_finds_updates_and_removals() {
    let t = Table::new(100);
    let w = t.write();
    assert!(w.get(&key(1)).is_none());
    assert!(w.insert(&key(1), &value(1, 10)));
    assert_eq!(w.get(&key(1)), Some(value(1, 10)));
    w.update(&key(1), &value(1, 20));
    drop(w);
    let f = t.find(&key(1)).unwrap();
    assert_eq!(f.value.expires, 20);
    assert!(t.set_expires(&f, 30));
    assert!(t.update_state(&f, |s| Some(s | 0x8000)));
    let f = t.find(&key(1)).unwrap();
    assert_eq!((f.value.expires, f.value.state), (30, 0x8000));
    assert!(t.find(&key(2)).is_none());
    assert_eq!(t.write().remove(&key(1)).map(|v| v.port), Some(1));
    assert!(t.find(&key(1)).is_none());
}

/// What an engine prefetches for a key is what a look for it reads: the
/// first line of both its buckets, then the record line of its slot.
#[test]
fn the_lines_named_ahead_are_the_ones_a_look_reads() {
    let t = Table::new(10_000);
    let w = t.write();
    for i in 0..5_000 {
        assert!(w.insert(&key(i), &value(i, 10)));
    }
    drop(w);
    for i in 0..5_000 {
        let found = t.find(&key(i)).unwrap();
        let bucket = &t.buckets[found.bucket];
        let buckets = t.buckets(&key(i));
        // The buckets hashed once are the ones a look hashes for itself.
        assert_eq!(
            t.find_in(&key(i), buckets).map(|f| f.bucket),
            Some(found.bucket)
        );
        let first: *const u8 = std::ptr::from_ref(bucket).cast();
        assert!(t.lines_of(buckets).contains(&first), "key {i}");
        let record: *const u8 = std::ptr::from_ref(&bucket.rec[found.slot]).cast();
        assert!(
            t.record_lines_of(&key(i), buckets).contains(&record),
            "key {i}"
        );
        // Each named line starts a line (a bucket's first, a record's).
        for line in t
            .lines_of(buckets)
            .into_iter()
            .chain(t.record_lines_of(&key(i), buckets))
        {
            assert!(line.is_null() || (line as usize).is_multiple_of(32));
        }
    }
    // A key nobody holds has no record line to name (unless another
    // key's first word is its: not these).
    let absent = key(9_999_999);
    assert_eq!(
        t.record_lines_of(&absent, t.buckets(&absent)),
        [std::ptr::null(); 2]
    );
}

#[test]
fn a_table_takes_its_whole_capacity_and_finds_every_entry() {
    for capacity in [10, 1_000, 200_000] {
        let t = Table::new(capacity);
        let w = t.write();
        for i in 0..capacity as u32 {
            assert!(w.insert(&key(i), &value(i, 1)), "{i} of {capacity}");
        }
        drop(w);
        for i in 0..capacity as u32 {
            let f = t.find(&key(i)).expect("found");
            assert!(consistent(i, &f.value));
        }
        assert!(t.find(&key(capacity as u32)).is_none());
        // Removing half leaves the other half.
        let gone = t.retain(|k, _| k[0].is_multiple_of(2), |_| {});
        assert!(gone > 0);
        for i in 0..capacity as u32 {
            assert_eq!(t.find(&key(i)).is_some(), key(i)[0].is_multiple_of(2));
        }
    }
}

/// Readers on two threads look up entries that are never removed while a
/// writer fills the table to its capacity and beyond (so residents move
/// between buckets), changes some of them, removes and re-inserts others,
/// and a third thread refreshes: a reader always finds every stable entry, and every copy it
/// gets is whole. Bounded: a fixed number of rounds.
#[test]
fn readers_never_miss_a_stable_entry_or_see_a_torn_one_while_writers_work() {
    const CAPACITY: usize = 20_000;
    const STABLE: u32 = 2_000;
    let t = Arc::new(Table::new(CAPACITY));
    {
        let w = t.write();
        for i in 0..STABLE {
            assert!(w.insert(&key(i), &value(i, 1)));
        }
    }
    let done = Arc::new(AtomicBool::new(false));
    let readers: Vec<_> = (0..2)
        .map(|r| {
            let (t, done) = (t.clone(), done.clone());
            std::thread::spawn(move || {
                let mut looks = 0u64;
                while !done.load(Ordering::Relaxed) || looks < 10_000 {
                    let i = (looks as u32).wrapping_mul(7 + r) % STABLE;
                    let f = t.find(&key(i)).unwrap_or_else(|| panic!("missed {i}"));
                    assert!(consistent(i, &f.value), "torn {i}: {:?}", f.value);
                    // And churned entries, when found, are whole too.
                    let j = STABLE + (looks as u32 % (CAPACITY as u32));
                    if let Some(f) = t.find(&key(j)) {
                        assert!(consistent(j, &f.value), "torn {j}");
                    }
                    looks += 1;
                }
                looks
            })
        })
        .collect();
    let refresher = {
        let (t, done) = (t.clone(), done.clone());
        std::thread::spawn(move || {
            let mut n = 0u32;
            while !done.load(Ordering::Relaxed) {
                if let Some(f) = t.find(&key(n % STABLE)) {
                    t.set_expires(&f, n);
                }
                n = n.wrapping_add(1);
            }
        })
    };
    let mut moved_ok = 0;
    for round in 0..20u32 {
        let w = t.write();
        // Stable entries change too (a new copy, then the old cleared).
        for i in (round..STABLE).step_by(37) {
            w.update(&key(i), &value(i, round + 2));
        }
        for i in 0..(CAPACITY as u32 - STABLE) {
            let k = STABLE + (i + round * 977) % (CAPACITY as u32 * 2);
            if w.get(&key(k)).is_none() && w.insert(&key(k), &value(k, 1)) {
                moved_ok += 1;
            }
        }
        drop(w);
        t.retain(
            |k, _| u32::from_le_bytes([k[0], k[1], k[2], k[3]]) < STABLE,
            |_| {},
        );
    }
    done.store(true, Ordering::Relaxed);
    refresher.join().unwrap();
    for r in readers {
        assert!(r.join().unwrap() >= 10_000);
    }
    assert!(moved_ok > 0);
    for i in 0..STABLE {
        assert!(consistent(i, &t.find(&key(i)).unwrap().value));
    }
}

enum Writer {
    Paused,
    Done,
}

/// Runs `op` under the writer lock on a thread whose `n`th slot write
/// pauses until `resume` says go; tells `events` when it pauses and when
/// it is done.
fn pausing_writer(
    t: &Arc<Table>,
    n: usize,
    op: impl FnOnce(&super::Writer<'_>) + Send + 'static,
) -> (
    mpsc::Receiver<Writer>,
    mpsc::Sender<()>,
    std::thread::JoinHandle<()>,
) {
    let (events, rx) = mpsc::channel();
    let (resume, wait) = mpsc::channel::<()>();
    let t = t.clone();
    let thread = std::thread::spawn(move || {
        let paused = events.clone();
        let mut writes = 0;
        PAUSE.with(|p| {
            *p.borrow_mut() = Some(Box::new(move || {
                writes += 1;
                if writes == n {
                    paused.send(Writer::Paused).unwrap();
                    wait.recv().unwrap();
                }
            }))
        });
        op(&t.write());
        PAUSE.with(|p| *p.borrow_mut() = None);
        events.send(Writer::Done).unwrap();
    });
    (rx, resume, thread)
}

/// A writer paused in the middle of each slot write of an update into a
/// free slot, an update and an insert that first move residents to their
/// other buckets, and a removal never keeps a lookup waiting: while it is
/// still paused, every other entry is found whole, the entry it changes is
/// found whole (as it was or as it will be), and an absent key is absent.
/// (The check waits for the lookups at most a minute, then lets the writer
/// go so the test ends: what it asserts is the order, lookups answered
/// before the writer went on.)
#[test]
fn a_lookup_never_waits_for_a_writer_paused_in_the_middle_of_a_write() {
    const CAPACITY: u32 = 2_000;
    #[derive(Clone, Copy, Debug, PartialEq)]
    enum Case {
        UpdateWithRoom,
        UpdateWithMoves,
        InsertWithMoves,
        Removal,
    }
    // A fresh table at its capacity for every pause, and the key the case
    // changes (in buckets with room, or in two full ones).
    let setup = |case: Case| {
        let t = Arc::new(Table::new(CAPACITY as usize));
        let w = t.write();
        for i in 0..CAPACITY {
            assert!(w.insert(&key(i), &value(i, 1)));
        }
        drop(w);
        let full = |i: u32| {
            let (b1, b2) = t.buckets_of(&words(&key(i)));
            t.buckets[b1].free_count() == 0 && t.buckets[b2].free_count() == 0
        };
        let changed = match case {
            Case::UpdateWithRoom | Case::Removal => (0..CAPACITY).find(|&i| !full(i)),
            Case::UpdateWithMoves => (0..CAPACITY).find(|&i| full(i)),
            Case::InsertWithMoves => (CAPACITY..CAPACITY * 100).find(|&i| full(i)),
        };
        (t.clone(), changed.expect("a key for the case"))
    };
    let mut pauses = 0;
    for case in [
        Case::UpdateWithRoom,
        Case::UpdateWithMoves,
        Case::InsertWithMoves,
        Case::Removal,
    ] {
        for n in 1.. {
            let (t, changed) = setup(case);
            let (events, resume, writer) = pausing_writer(&t, n, move |w| match case {
                Case::UpdateWithRoom | Case::UpdateWithMoves => {
                    w.update(&key(changed), &value(changed, 2))
                }
                Case::InsertWithMoves => assert!(w.insert(&key(changed), &value(changed, 2))),
                Case::Removal => assert!(w.remove(&key(changed)).is_some()),
            });
            if let Writer::Done = events.recv().unwrap() {
                writer.join().unwrap();
                assert!(n > 1, "{case:?}: no write at all");
                // Afterwards, the change is there, whole.
                match t.find(&key(changed)) {
                    Some(f) => assert_eq!(f.value, value(changed, 2), "{case:?}"),
                    None => assert_eq!(case, Case::Removal),
                }
                break;
            }
            pauses += 1;
            let (answers, answered) = mpsc::channel();
            let checker = {
                let t = t.clone();
                std::thread::spawn(move || {
                    for i in 0..CAPACITY {
                        let f = t.find(&key(i));
                        if i != changed {
                            let f = f.unwrap_or_else(|| panic!("{case:?}, write {n}: missed {i}"));
                            assert!(consistent(i, &f.value), "{case:?}: torn {i}");
                        } else if case != Case::Removal {
                            // Updates: as it was or as it will be, whole.
                            let f = f.unwrap_or_else(|| panic!("{case:?}, write {n}: missed it"));
                            assert!(consistent(i, &f.value), "{case:?}: torn {i}");
                        }
                    }
                    if case == Case::InsertWithMoves {
                        let f = t.find(&key(changed));
                        assert!(f.is_none_or(|f| consistent(changed, &f.value)));
                    }
                    assert!(t.find(&key(u32::MAX)).is_none());
                    answers.send(()).unwrap();
                })
            };
            let in_time = answered.recv_timeout(Duration::from_secs(60)).is_ok();
            resume.send(()).unwrap();
            checker.join().unwrap();
            assert!(
                in_time,
                "{case:?}: a lookup waited for the writer paused at write {n}"
            );
            assert!(matches!(events.recv().unwrap(), Writer::Done));
            writer.join().unwrap();
        }
    }
    // Each case paused at least once; the moves more than once.
    assert!(pauses >= 8, "{pauses} pauses");
}
