//! The earth client: what a user's device runs to be found by its friends
//! through the sky.
//!
//! All sans-IO except `state` and `driver` (no socket, clock or randomness
//! is touched elsewhere: times and random bytes are arguments):
//! - [`ratchet`]: chain keys, the one-way ratchet per epoch, registration
//!   tokens and virtual addresses, the epoch schedule with its per-user
//!   phase, and which epochs a friend's lookup tries near a boundary;
//! - [`invite`]: the copy-pasteable string a friend needs;
//! - [`identity`]: the user's chain and X25519 key pair, the friend list;
//! - [`state`]: all of it on disk, owner-only, replaced atomically;
//! - [`handshake`]: the friends' Noise-IK-shaped handshake and sealed
//!   datagrams (X25519, ChaCha20-Poly1305);
//! - [`client`]: the core, [`client::Earth`] — the sky's member list and
//!   ring, registration with every owner, keepalives, lookups one owner
//!   after another, punching, handshakes, delivery, address reset, overlap
//!   modes, cover traffic;
//! - [`driver`]: a std driver for it (one UDP socket, the wall clock).
//!
//! **Separation from the sky.** Chain keys live only in this crate, and no
//! sky-side crate depends on it (`sky-node` cannot name a chain key); a
//! [`ratchet::ChainKey`] converts into no wire type: the sky sees tokens
//! and addresses, never the key they come from.

pub mod client;
pub mod driver;
pub mod handshake;
pub mod identity;
pub mod invite;
pub mod ratchet;
pub mod state;
