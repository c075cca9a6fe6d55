//! A real earth client (`Earth`) receiving arbitrary datagrams from
//! strangers and from its sky nodes: never panics, every datagram it sends
//! fits the protocol maximum, and a stranger gets no datagram in answer.
//!
//! The checks are in `src/earth_stranger.rs`; see README.md for running.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| sky_fuzz::earth_stranger::run(data));
