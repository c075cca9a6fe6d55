//! Tests of `presence::table`: the layout, a table filled to its
//! capacity, and readers racing writers on real threads.

#![allow(clippy::disallowed_methods)] // readers and writers on plain threads

use super::*;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

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
/// between buckets), removes and re-inserts others, and a third thread
/// refreshes: a reader always finds every stable entry, and every copy it
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
