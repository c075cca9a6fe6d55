//! Sky: a rendezvous appliance for earth nodes behind NATs.
//!
//! An earth node registers the virtual address it can be reached under; a
//! friend looks that address up; the sky node answers whether it is online
//! and introduces the two so that both punch a UDP path at once. The sky
//! never relays their traffic. See `ARCHITECTURE.md` for the map of this
//! crate and `docs/PROTOCOL.md` for the bytes on the wire.
//!
//! Layers, from the wire up:
//! - [`wire`]: parse and emit every message (checked view + parsed value);
//! - [`keys`]: cookies, introduction keys and MACs;
//! - [`presence`]: the shared presence table;
//! - [`shard`]: the sans-IO core that handles one datagram;
//! - [`ring`]: which nodes own which addresses (placement, owners, version);
//! - [`gossip`]: SWIM membership among sky nodes (foca), which makes the ring;
//! - [`engine`]: sockets, threads, io_uring and `recvmmsg`, the control
//!   thread — the only place with a clock, syscalls or `unsafe`;
//! - [`metrics`]: every metric name, in one place;
//! - [`config`]: the node's configuration (file, environment, flags);
//! - [`earth`]: the earth client: ratcheting addresses, friends, hole
//!   punching, address reset, in a sky of many nodes;
//! - [`probe`]: the operator's blocking client (`sky probe`);
//! - [`bench`](mod@bench): the load generator (`sky bench`), and [`baseline`], the
//!   no-logic core it measures the node against;
//! - [`sim`]: pure, deterministic simulators (`sky sim`): address
//!   linkability under colluding sky operators (`docs/PRIVACY.md`) and the
//!   ring's load balance (`docs/DHT.md`).

#![deny(unsafe_code)]

pub mod baseline;
pub mod bench;
pub mod config;
pub mod earth;
pub mod engine;
pub mod gossip;
pub mod keys;
pub mod metrics;
pub mod presence;
pub mod probe;
pub mod ring;
pub mod shard;
pub mod sim;
pub mod wire;
