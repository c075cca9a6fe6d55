//! `sky-proto`: what a sky node and an earth client must agree on, and
//! nothing else — pure, portable, no socket, clock, thread or unsafe code.
//!
//! - [`wire`]: every sky message (checked view [`wire::Packet`] and parsed
//!   [`wire::Message`]), the layout of `docs/PROTOCOL.md`;
//! - [`addr`]: the values messages carry (virtual addresses, address keys, tags,
//!   cookies, keys, endpoints), whose `Debug` never prints a secret;
//! - [`intro`]: the introduction MAC and the client's check of it;
//! - [`frame`]: the earth-to-earth frames (punch, handshake messages,
//!   sealed data) and the **first-byte registry** that tells every datagram
//!   kind from every other;
//! - [`hint`]: the sealed candidate hint a lookup carries to the friend
//!   and the probe frame only a friend can make;
//! - [`ring`]: the sky's placement — which nodes own an address;
//! - [`time`]: [`time::MonoTime`] and [`time::UnixTime`], so a monotonic
//!   reading and a calendar time cannot be passed for each other.
//!
//! Decoding never panics and never allocates, for any input: property
//! tests here, and the fuzz targets in `fuzz/`, feed it arbitrary bytes.

#![forbid(unsafe_code)]

pub mod addr;
pub mod frame;
pub mod hint;
pub mod intro;
pub mod ring;
pub mod time;
pub mod wire;

pub use addr::{AddrKey, Cookie, Flags, IntroKey, Mac, Signature, Tag, VirtualAddr};
pub use time::{MonoTime, UnixTime};
