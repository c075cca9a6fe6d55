//! Memory per presence entry, measured by the process's resident set:
//! BENCHMARKS.md's row. Ignored by default (10^7 registrations, about a
//! minute in release); run with
//!
//! ```sh
//! cargo test --release -p sky-node --test memory -- --ignored --nocapture
//! ```

use std::net::SocketAddr;

use sky_node::presence::{Budgets, Presence};
use sky_proto::wire::{Flags, VirtualAddr};

/// Resident bytes of this process (`/proc/self/statm`, Linux).
fn rss() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}

#[test]
#[ignore = "10^7 entries: run in release (BENCHMARKS.md)"]
fn memory_per_entry_at_ten_million() {
    const N: usize = 10_000_000;
    let Some(before) = rss() else {
        eprintln!("SKIPPED: no /proc/self/statm");
        return;
    };
    // Sized as spec6.py sizes the node's table for this row.
    let table = Presence::with_budgets(N + 100_000, Budgets::unlimited());
    let ep: SocketAddr = "192.0.2.1:4000".parse().unwrap();
    for i in 0..N {
        let mut a = [0u8; 16];
        a[..8].copy_from_slice(&(i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15).to_le_bytes());
        a[8..].copy_from_slice(&(i as u64).to_le_bytes());
        table
            .register(VirtualAddr(a), ep, Flags(0), 0, 1000)
            .expect("room");
    }
    let after = rss().unwrap();
    let per_entry = (after - before) as f64 / N as f64;
    println!(
        "presence: {N} entries, RSS {:.0} -> {:.0} MiB: {per_entry:.1} B an entry",
        before as f64 / 1048576.0,
        after as f64 / 1048576.0
    );
    assert_eq!(table.len(), N);
    assert!(per_entry <= 48.0, "{per_entry:.1} B an entry");
}
