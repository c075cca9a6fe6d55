//! Earth-to-earth frames and their cryptography: `Frame::new_checked`,
//! `handshake::respond` and `Initiator::finish` on arbitrary bytes with
//! fixed keys (only the genuine msg1/msg2 are accepted), and
//! `Session::open` on a real session against a model of the replay window
//! (forged or damaged bytes never open). Never panics.
//!
//! The checks are in `src/earth_frames.rs`; see README.md for running.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| sky_fuzz::earth_frames::run(data));
