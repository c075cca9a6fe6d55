//! A real sky `Shard` (standalone or a ring member) fed arbitrary datagrams
//! from arbitrary sources on virtual time: without a valid cookie no reply
//! is larger than its request, replies go to the source only, in-place
//! transmits fit the buffer, introductions go only to registered endpoints.
//!
//! The checks are in `src/shard_datagram.rs`; see README.md for running.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| sky_fuzz::shard_datagram::run(data));
