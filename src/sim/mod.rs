//! `sky sim`: simulators of the sky, for questions the code alone cannot
//! answer.
//!
//! Every simulator here is pure and deterministic: virtual time, a seeded
//! PRNG ([`rng`]), no clock, no sockets, no threads. The same arguments
//! print the same report on every machine.
//!
//! - [`privacy`]: how linkable a user's successive virtual addresses are to
//!   colluding sky operators, per client behaviour (SPEC §2, the rotation
//!   boundary, dual registration and cover traffic). `docs/PRIVACY.md`.

pub mod privacy;
pub mod rng;

/// The simulators, as `sky sim` subcommands.
#[derive(clap::Subcommand, Clone, Debug)]
pub enum SimCommand {
    /// How much of a user's address chain colluding sky operators can link
    /// across epochs, for each client behaviour (see docs/PRIVACY.md).
    Privacy(privacy::PrivacyArgs),
}

/// Runs one simulator and returns the report to print (Markdown), or why
/// its arguments were refused.
pub fn run(cmd: SimCommand) -> Result<String, String> {
    match cmd {
        SimCommand::Privacy(args) => privacy::run(&args),
    }
}
