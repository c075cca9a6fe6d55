//! A real `Gossip` (foca SWIM) fed arbitrary datagrams from arbitrary and
//! spoofed sources, joined to a seed or not: never panics, datagrams fit
//! `max_packet_size`, and sends to non-members stay within the stranger
//! budget.
//!
//! The checks are in `src/gossip_datagram.rs`; see README.md for running.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| sky_fuzz::gossip_datagram::run(data));
