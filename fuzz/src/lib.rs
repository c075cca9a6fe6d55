//! The bodies of the fuzz targets in `fuzz_targets/`, one module each, and
//! the seed inputs for them ([`seeds`]).
//!
//! Each target file is one line that calls `run` here, so the checks are
//! ordinary Rust: `cargo test` in this directory runs every seed through
//! its target on stable, without libFuzzer. A check that fails panics;
//! libFuzzer reports the panic as a crash and saves the input.
//!
//! The structured targets (`members_page`, `shard_datagram`,
//! `earth_stranger`, `gossip_datagram`) read their input with [`Input`]: a
//! few setup bytes, then records, each a small header and a datagram.
//! Exhausted input reads as zeros, so every byte string is a valid input.

#![forbid(unsafe_code)]

pub mod earth_frames;
pub mod earth_stranger;
pub mod gossip_datagram;
pub mod invite_decode;
pub mod members_page;
pub mod seeds;
pub mod shard_datagram;
pub mod wire_decode;

use std::net::SocketAddr;
use std::time::Duration;

use sky_proto::wire::{self, Message};

/// A target's name and body.
pub type Target = (&'static str, fn(&[u8]));

/// Every target, by name: the names of `fuzz_targets/*.rs` and of the
/// directories under `corpus/`.
pub const TARGETS: [Target; 7] = [
    ("wire_decode", wire_decode::run),
    ("members_page", members_page::run),
    ("earth_frames", earth_frames::run),
    ("invite_decode", invite_decode::run),
    ("shard_datagram", shard_datagram::run),
    ("earth_stranger", earth_stranger::run),
    ("gossip_datagram", gossip_datagram::run),
];

/// A reader over fuzz input that never fails: past the end, every number
/// is zero and every byte string empty.
#[derive(Clone, Debug)]
pub struct Input<'a> {
    data: &'a [u8],
}

impl<'a> Input<'a> {
    pub fn new(data: &'a [u8]) -> Input<'a> {
        Input { data }
    }

    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    pub fn u8(&mut self) -> u8 {
        match self.data.split_first() {
            Some((&b, rest)) => {
                self.data = rest;
                b
            }
            None => 0,
        }
    }

    pub fn u16(&mut self) -> u16 {
        u16::from_be_bytes([self.u8(), self.u8()])
    }

    pub fn u32(&mut self) -> u32 {
        u32::from_be_bytes([self.u8(), self.u8(), self.u8(), self.u8()])
    }

    /// Up to `n` bytes (fewer at the end of the input).
    pub fn bytes(&mut self, n: usize) -> &'a [u8] {
        let (head, rest) = self.data.split_at(n.min(self.data.len()));
        self.data = rest;
        head
    }

    /// Exactly `N` bytes, zero-padded at the end of the input.
    pub fn array<const N: usize>(&mut self) -> [u8; N] {
        let mut out = [0u8; N];
        let b = self.bytes(N);
        out[..b.len()].copy_from_slice(b);
        out
    }

    /// A length-prefixed byte string (big-endian `u16` length).
    pub fn chunk(&mut self) -> &'a [u8] {
        let n = self.u16();
        self.bytes(n.into())
    }

    /// Everything left.
    pub fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.data)
    }
}

/// Writes a record as [`Input::chunk`] reads it.
pub fn chunk(out: &mut Vec<u8>, bytes: &[u8]) {
    let n = u16::try_from(bytes.len()).expect("seed chunks are short");
    out.extend_from_slice(&n.to_be_bytes());
    out.extend_from_slice(bytes);
}

/// The time step a record's step byte names: up to 1.27 s in 10 ms steps
/// (retries, token buckets), or up to 635 s in 5 s steps (keepalives,
/// expiry, cookie rotation every 300 s).
pub fn step(byte: u8) -> Duration {
    if byte < 128 {
        Duration::from_millis(u64::from(byte) * 10)
    } else {
        Duration::from_secs(u64::from(byte - 128) * 5)
    }
}

/// `msg` as it reads back after `emit`: endpoints in their canonical form
/// (an IPv4-mapped IPv6 address is written as IPv4).
pub fn canonical_message(msg: Message) -> Message {
    match msg {
        Message::Registered {
            tag,
            keepalive_secs,
            intro_key,
            observed,
        } => Message::Registered {
            tag,
            keepalive_secs,
            intro_key,
            observed: wire::canonical(observed),
        },
        Message::Online {
            tag,
            flags,
            endpoint,
        } => Message::Online {
            tag,
            flags,
            endpoint: wire::canonical(endpoint),
        },
        Message::Introduction {
            caller,
            mac,
            hint,
            endpoint,
        } => Message::Introduction {
            caller,
            mac,
            hint,
            endpoint: wire::canonical(endpoint),
        },
        Message::Checked {
            tag,
            check_port,
            endpoint,
        } => Message::Checked {
            tag,
            check_port,
            endpoint: wire::canonical(endpoint),
        },
        Message::NotOwner { tag, version, hint } => Message::NotOwner {
            tag,
            version,
            hint: wire::canonical(hint),
        },
        other => other,
    }
}

/// An endpoint from 7 input bytes: a family byte, then an IPv4 address
/// and port, or (odd family) 16 more bytes of an IPv6 address and port.
pub fn endpoint(input: &mut Input<'_>) -> SocketAddr {
    if input.u8() & 1 == 0 {
        let b: [u8; 6] = input.array();
        wire::decode_endpoint(&b).expect("6 bytes")
    } else {
        let b: [u8; 18] = input.array();
        wire::decode_endpoint(&b).expect("18 bytes")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every seed passes its own target: the checks hold on valid traffic,
    /// so a fuzzer crash is about the mutation, not the seed.
    #[test]
    fn every_seed_passes_its_target() {
        for (name, run) in TARGETS {
            let seeds = seeds::for_target(name);
            assert!(!seeds.is_empty(), "{name} has seeds");
            for (seed, bytes) in seeds {
                eprintln!("{name}/{seed}");
                run(&bytes);
            }
        }
    }

    /// The checked-in corpus is what `examples/seed_corpus.rs` writes.
    #[test]
    fn checked_in_corpus_is_current() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
        for (name, _) in TARGETS {
            for (seed, bytes) in seeds::for_target(name) {
                let path = root.join(name).join(&seed);
                let on_disk = std::fs::read(&path).unwrap_or_else(|e| {
                    panic!("{}: {e} (run the seed_corpus example)", path.display())
                });
                assert_eq!(on_disk, bytes, "{} is stale", path.display());
            }
        }
    }

    /// Found by `earth_frames` in its first CI run: a frame Alice sealed in
    /// another session on the same fixed keys (the `hello` seed) opens in
    /// this one. That is the harness's fixed keys, not a forgery.
    #[test]
    fn earth_frames_takes_a_seed_frame_opened_in_a_new_session() {
        let (mut alice, _) = earth_frames::sessions();
        let mut hello = vec![0u8; 5 + sky_proto::frame::DATA_OVERHEAD];
        alice.seal(b"hello", &mut hello);
        // Seal "one" (counter 1), deliver nothing, then offer `hello`
        // (counter 1 too) as arbitrary bytes: it opens, and is Alice's.
        let mut input = vec![1, 0, 0, 3];
        input.extend_from_slice(b"one");
        input.push(3);
        chunk(&mut input, &hello);
        earth_frames::run(&input);
    }

    #[test]
    fn input_reads_zeros_past_the_end() {
        let mut input = Input::new(&[1, 2, 3]);
        assert_eq!(input.u16(), 0x0102);
        assert_eq!(input.u16(), 0x0300);
        assert_eq!(input.chunk(), b"");
        assert!(input.is_empty());
    }
}
