//! `sky-lab`: the tools that measure and model the sky, beside (never
//! inside) the node.
//!
//! - [`bench`](mod@bench): the load generator (`sky bench`);
//! - [`baseline`]: the no-logic core the node is measured against, on the
//!   very same engine. It reads a destination out of a payload — what a
//!   sky node must never do — which is why it lives here and not in
//!   `sky-node`;
//! - [`sim`]: pure, deterministic simulators (`sky sim`): address
//!   linkability under colluding sky operators (`docs/PRIVACY.md`) and the
//!   ring's load balance (`docs/DHT.md`);
//! - [`rng`]: the one seeded PRNG (SplitMix64) they all draw from.

#![allow(missing_docs)] // the public API for app developers is sky-earth and sky-proto

pub mod baseline;
pub mod bench;
pub mod rng;
pub mod sim;
