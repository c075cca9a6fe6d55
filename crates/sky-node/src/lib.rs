//! `sky-node`: the sky node — the rendezvous server a cloud operator runs.
//!
//! A node answers UDP datagrams from earth clients (register, keepalive,
//! lookup, unregister, members), introduces callers to online targets, and
//! keeps a sky of many nodes together by gossip. See `ARCHITECTURE.md` for
//! the map and the path of one datagram, `docs/PROTOCOL.md` for the bytes.
//!
//! Layers, from the core out:
//! - [`keys`]: the node secret, cookies, introduction keys;
//! - [`presence`]: the shared presence table;
//! - [`shard`]: the sans-IO core that handles one datagram ([`shard::Core`]);
//! - [`snapshot`]: the ring snapshot gossip swaps in and shards read;
//! - [`gossip`]: SWIM membership among sky nodes (foca), which makes the ring;
//! - [`engine`]: sockets, threads, io_uring and `recvmmsg`, the control and
//!   gossip threads — the only place in the workspace with a clock,
//!   syscalls or `unsafe`;
//! - [`metrics`]: every metric name, in one place;
//! - [`config`]: the node's configuration (file, environment, flags);
//! - [`probe`]: the operator's blocking client (`sky probe`).
//!
//! The wire format, the ring and the introduction MAC are `sky_proto`'s;
//! nothing here depends on the earth client (`sky-earth`): the privacy rule
//! "no sky-side code names the earth client" is this crate's dependency
//! list.

#![allow(missing_docs)] // the public API for app developers is sky-earth and sky-proto

pub mod config;
pub mod engine;
pub mod gossip;
pub mod keys;
pub mod metrics;
pub mod presence;
pub mod probe;
pub mod proof;
pub mod shard;
pub mod snapshot;
