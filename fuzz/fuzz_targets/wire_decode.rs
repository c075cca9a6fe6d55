//! Arbitrary bytes through `Packet::new_checked` and `Message::decode`:
//! view and decoder agree, a decoded message emits and decodes back equal
//! (endpoints canonical), and members page entries iterate without panic.
//!
//! The checks are in `src/wire_decode.rs`; see README.md for running.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| sky_fuzz::wire_decode::run(data));
