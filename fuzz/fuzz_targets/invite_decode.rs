//! `Invite::decode` on arbitrary text and `Invite::from_bytes` on arbitrary
//! bytes: a decoded invite re-encodes to a string that decodes equal, and
//! the byte form round-trips exactly.
//!
//! The checks are in `src/invite_decode.rs`; see README.md for running.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| sky_fuzz::invite_decode::run(data));
