//! `sky-earth`: the earth client — what a user's device runs to be found by
//! its friends through the sky, and to reach them directly.
//!
//! A user holds a secret chain key that ratchets forward every epoch; from
//! it come the epoch's address key pair and virtual address (the hash of
//! the public key). Friends hold the chain too (an invite), so they can
//! compute where the user is reachable today; the sky sees only public
//! keys, signatures over its own cookies, and addresses. The client
//! registers its address with the sky nodes that own it, looks friends up,
//! punches a UDP path through both NATs when the sky introduces them, and
//! authenticates the friend with a Noise-IK-shaped handshake before any
//! data flows. The sky never relays and never sees a message.
//!
//! Portable: this crate depends on `sky-proto` and portable crates only —
//! no server crate, nothing Linux-only — so it builds wherever `std` and a
//! UDP socket do (an app on a phone or a desktop).
//!
//! Modules — all sans-IO but `state` and `driver` (times and random bytes
//! are arguments; no socket, clock or randomness is touched elsewhere):
//! - [`client`]: the core, [`client::Earth`] — cooperating state machines
//!   for the sky's members, registrations, lookups, peers and the address
//!   reset, behind `handle_datagram` / `handle_timeout` / `poll_transmit` /
//!   `poll_event` / `poll_timeout`;
//! - [`driver`]: a std driver for it (one UDP socket, the wall clock);
//! - [`ratchet`]: chain keys, the one-way ratchet per epoch, address key
//!   pairs and virtual addresses, the epoch schedule with its per-user phase;
//! - [`invite`]: the copy-pasteable string a friend needs;
//! - [`identity`]: the user's chain and X25519 key pair, the friend list;
//! - [`state`]: all of it on disk, owner-only, replaced atomically;
//! - [`store`]: the state directory's one owner (an exclusive lock);
//! - [`handshake`]: the friends' handshake and sealed datagrams (X25519,
//!   ChaCha20-Poly1305).
//!
//! # Example
//!
//! Two friends find each other through a sky node and exchange a message
//! (the whole program is `examples/two_friends.rs`; run it with
//! `cargo run -p sky-earth --example two_friends -- 127.0.0.1:7700` while
//! `sky node` runs, or let it start one):
//!
//! ```no_run
//! use std::ops::ControlFlow;
//! use std::sync::atomic::AtomicBool;
//! use sky_earth::client::{Config, Event};
//! use sky_earth::driver::{Driver, unix_now};
//! use sky_earth::state::State;
//!
//! # fn bob_state() -> State { unimplemented!() }
//! let sky = "127.0.0.1:7700".parse().unwrap();
//! // Bob's identity and friends (he holds Alice's invite), e.g. from disk:
//! // `State::load(dir)`.
//! let mut bob = Driver::bind(Config::new(vec![sky]), bob_state()).unwrap();
//! let id = bob.earth.send(unix_now(), "alice", b"hello alice");
//! bob.run(None, &AtomicBool::new(false), |_, event| match event {
//!     Event::Delivered { id: i, peer, .. } if i == id => {
//!         println!("delivered to alice at {peer}");
//!         ControlFlow::Break(())
//!     }
//!     Event::Failed { id: i, why, .. } if i == id => {
//!         println!("cannot reach alice: {why}");
//!         ControlFlow::Break(())
//!     }
//!     _ => ControlFlow::Continue(()),
//! })
//! .unwrap();
//! ```
//!
//! An application with its own event loop drives [`client::Earth`]
//! directly instead: feed it datagrams and timeouts, drain its transmits
//! and events.
//!
//! **Separation from the sky.** Chain keys live only in this crate, and no
//! sky-side crate depends on it (`sky-node` cannot name a chain key); a
//! [`ratchet::ChainKey`] converts into no wire type: the sky sees public
//! keys and addresses, never the chain key they come from.

pub mod client;
pub mod driver;
pub mod handshake;
pub mod identity;
pub mod invite;
#[cfg(feature = "portmap")]
pub mod portmap;
pub mod ratchet;
pub mod state;
pub mod store;
