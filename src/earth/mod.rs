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
//! **Separation from the sky.** Chain keys live only here. Nothing in the
//! sky-side modules (`wire`, `keys`, `presence`, `shard`, `engine`) names
//! this module, and a [`ratchet::ChainKey`] converts into no wire type: the
//! sky sees tokens and addresses, never the key they come from.

pub mod client;
pub mod driver;
pub mod handshake;
pub mod identity;
pub mod invite;
pub mod ratchet;
pub mod state;

#[cfg(test)]
mod tests {
    /// The sky side cannot reach a chain key: none of its modules names
    /// this one.
    #[test]
    fn sky_side_modules_do_not_use_the_earth_client() {
        let sky_side = [
            ("wire.rs", include_str!("../wire.rs")),
            ("keys.rs", include_str!("../keys.rs")),
            ("presence.rs", include_str!("../presence.rs")),
            ("shard.rs", include_str!("../shard.rs")),
            ("baseline.rs", include_str!("../baseline.rs")),
            ("metrics.rs", include_str!("../metrics.rs")),
            ("engine/mod.rs", include_str!("../engine/mod.rs")),
            ("engine/uring.rs", include_str!("../engine/uring.rs")),
            ("engine/mmsg.rs", include_str!("../engine/mmsg.rs")),
            ("engine/outbox.rs", include_str!("../engine/outbox.rs")),
            ("engine/control.rs", include_str!("../engine/control.rs")),
        ];
        for (file, text) in sky_side {
            assert!(!text.contains("earth::"), "{file} uses the earth client");
            assert!(!text.contains("ChainKey"), "{file} names a chain key");
        }
    }
}
