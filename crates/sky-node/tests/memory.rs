//! Memory per presence entry, measured by the process's resident set:
//! BENCHMARKS.md's row, with the maps the table was chosen over (dashmap,
//! papaya, scc) holding the same 12-byte keys and 24-byte values, each in
//! a process of its own. Ignored by default (10^7 entries per map, a few
//! minutes in release); run with
//!
//! ```sh
//! cargo test --release -p sky-node --test memory -- --ignored --nocapture
//! ```

#![allow(clippy::disallowed_methods)] // spawns its own children

use std::hash::RandomState;
use std::net::SocketAddr;
use std::process::Command;

use sky_node::presence::{Budgets, Presence};
use sky_proto::wire::{Flags, VirtualAddr};

const N: usize = 10_000_000;
const MAPS: [&str; 4] = ["presence", "dashmap", "papaya", "scc"];
/// Which map a child process fills.
const CHILD: &str = "SKY_MEMORY_MAP";

/// Resident bytes of this process (`/proc/self/statm`, Linux).
fn rss() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}

/// The i-th address: spread over the ring like real ones.
fn address(i: usize) -> VirtualAddr {
    let mut a = [0u8; 16];
    a[..8].copy_from_slice(&(i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15).to_le_bytes());
    a[8..].copy_from_slice(&(i as u64).to_le_bytes());
    VirtualAddr(a)
}

/// The 12-byte key and 24-byte value of an entry (what the table stores:
/// IPv6 address, port, state, expiry).
fn key(i: usize) -> [u8; 12] {
    let mut k = [0u8; 12];
    k.copy_from_slice(&address(i).0[..12]);
    k
}

#[test]
#[ignore = "10^7 entries a map: run in release (BENCHMARKS.md)"]
fn memory_per_entry_at_ten_million() {
    if rss().is_none() {
        eprintln!("SKIPPED: no /proc/self/statm");
        return;
    }
    let me = std::env::current_exe().unwrap();
    let mut presence = None;
    for map in MAPS {
        let out = Command::new(&me)
            .args(["--ignored", "--exact", "fill_one_map", "--nocapture"])
            .env(CHILD, map)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{map}: {text}");
        let per_entry: f64 = text
            .lines()
            .find_map(|l| l.strip_prefix("per_entry="))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("{map}: {text}"));
        println!("{map}: {N} entries, {per_entry:.1} B an entry by RSS");
        if map == "presence" {
            presence = Some(per_entry);
        }
    }
    let presence = presence.unwrap();
    assert!(presence <= 48.0, "{presence:.1} B an entry");
}

/// A child of the test above: fills the map named in `SKY_MEMORY_MAP`
/// and prints its growth of the resident set an entry.
#[test]
#[ignore = "run by memory_per_entry_at_ten_million"]
fn fill_one_map() {
    let Ok(map) = std::env::var(CHILD) else {
        return;
    };
    let before = rss().unwrap();
    let ep: SocketAddr = "192.0.2.1:4000".parse().unwrap();
    let value = [1u8; 24];
    let held = match map.as_str() {
        "presence" => {
            // Sized as spec6.py sizes the node's table for this row.
            let table = Presence::with_budgets(N + 100_000, Budgets::unlimited());
            for i in 0..N {
                table
                    .register(address(i), ep, Flags(0), 0, 1000)
                    .expect("room");
            }
            assert_eq!(table.len(), N);
            Box::new(table) as Box<dyn std::any::Any>
        }
        "dashmap" => {
            let m = dashmap::DashMap::with_hasher_and_shard_amount(RandomState::new(), 256);
            for i in 0..N {
                let _ = m.insert(key(i), value);
            }
            Box::new(m)
        }
        "papaya" => {
            let m = papaya::HashMap::with_capacity_and_hasher(N, RandomState::new());
            for i in 0..N {
                let _ = m.pin().insert(key(i), value);
            }
            Box::new(m)
        }
        "scc" => {
            let m = scc::HashMap::with_capacity_and_hasher(N, RandomState::new());
            for i in 0..N {
                let _ = m.insert_sync(key(i), value);
            }
            Box::new(m)
        }
        other => panic!("no map {other}"),
    };
    let after = rss().unwrap();
    println!("per_entry={}", (after - before) as f64 / N as f64);
    drop(held);
}
