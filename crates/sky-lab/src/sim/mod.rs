//! `sky sim`: simulators of the sky, for questions the code alone cannot
//! answer.
//!
//! Every simulator here is pure and deterministic: virtual time, a seeded
//! PRNG ([`crate::rng`]), no clock, no sockets, no threads. The same arguments
//! print the same report on every machine.
//!
//! - [`privacy`]: how linkable a user's successive virtual addresses are to
//!   colluding sky operators, per client behaviour (SPEC §2, the rotation
//!   boundary, dual registration and cover traffic). `docs/PRIVACY.md`.
//! - [`ring`]: how evenly IP-hash placement spreads addresses over the
//!   sky's nodes (SPEC §4). `docs/DHT.md`.

pub mod privacy;
pub mod ring;

/// The simulators, as `sky sim` subcommands.
#[derive(clap::Subcommand, Clone, Debug)]
pub enum SimCommand {
    /// How much of a user's address chain colluding sky operators can link
    /// across epochs, for each client behaviour (see docs/PRIVACY.md).
    Privacy(privacy::PrivacyArgs),
    /// Load balance of IP-hash placement: the largest and mean share of the
    /// ring a node owns, per sky size (see docs/DHT.md).
    Ring(ring::RingArgs),
}

/// Runs one simulator and returns the report to print (Markdown), or why
/// its arguments were refused.
pub fn run(cmd: SimCommand) -> Result<String, String> {
    match cmd {
        SimCommand::Privacy(args) => privacy::run(&args),
        SimCommand::Ring(args) => ring::run(&args),
    }
}
