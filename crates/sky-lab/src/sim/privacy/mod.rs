//! `sky sim privacy`: how much of a user's chain of virtual addresses
//! colluding sky operators can link across epoch boundaries, for each way a
//! client may behave at its boundary (SPEC §2). The full write-up, with a
//! table from the default run, is `docs/PRIVACY.md`.
//!
//! # The model
//!
//! Virtual time in milliseconds, `D` days (`--days`, default 7).
//!
//! - **Users.** `U` users (`--users`, 10 000). User `u` sits behind public
//!   IP `u / P` (`--users-per-ip`, 4: a household or a carrier-grade NAT)
//!   and rotates its address every `R` (`--epoch-hours`, 24) at its own
//!   phase, uniform in `[0, R)`: epoch 0 is `[0, phase)`, epoch `e ≥ 1`
//!   begins at `phase + (e − 1)·R`. Each epoch has its own address.
//! - **Sessions.** A user alternates online and offline periods with
//!   exponential lengths: online with mean `M` (`--session-minutes`, 60),
//!   offline with mean `M·(1 − F)/F`, so the user is online a fraction `F`
//!   of the time (`--online`, 0.3); at time 0 it is online with probability
//!   `F`. Each session opens a new socket, so the NAT gives it a fresh
//!   port (uniform in `[1024, 65536)`). While online the client is
//!   registered; at a session's start it registers the current address.
//! - **The sky.** `S` nodes (`--nodes`, 100); every address has `k`
//!   (`--owners`, 2) distinct owners drawn uniformly at random, and the
//!   client registers with all of them. An adversary runs `round(f·S)` of
//!   the nodes (`--adversary`, 0.1; the report always adds `f = 1`, one
//!   operator that sees everything). It observes an address if it runs at
//!   least one of its owners, and then logs every registration of that
//!   address: (start, end, address, public IP, port). Keepalives every
//!   25 s and the 75 s expiry (SPEC §3) tell it the end to within a
//!   keepalive; the model gives it the exact end.
//!
//! # Client behaviours (modes)
//!
//! Each mode is simulated on the very same users, phases, sessions and
//! ports (every random choice comes from its own named stream), so the
//! modes differ only by what the client does:
//!
//! - `lookup-side` (the earth client before it used fresh sockets): at its
//!   boundary an online client
//!   unregisters the old address and registers the new one from the same
//!   socket (same port); friends near the boundary try both addresses.
//! - `lookup-side-fresh-port` (what the earth client does by default): the
//!   same, but at the boundary the client
//!   opens a new socket (new port) and registers the new address after a
//!   random delay in `[0, 60 s)`.
//! - `dual`: `lookup-side`, and during the first `H` of an epoch
//!   (`--overlap-hours`, 1) the previous epoch's address is registered too,
//!   from the same socket, whether the client was online at the boundary
//!   or came online during the overlap.
//! - `cover`: `lookup-side-fresh-port`, and while online, at exponential
//!   intervals (mean `--cover-interval` minutes, 30), the client registers
//!   a random unrelated address from a new socket for a uniform 30 s to
//!   5 min: noise for the adversary.
//!
//! # The linking attack
//!
//! For every true transition of a user from `a_e` to `a_{e+1}` (every
//! boundary inside the simulated time), the adversary takes the first
//! registration it saw of `a_{e+1}` (time `t1`, IP, port) and the candidate
//! predecessors: the other addresses it saw registered from the same IP
//! with a registration that overlaps `t1` or ended at most `W` before it
//! (`W` = 3 × 25 s keepalive = 75 s); if any candidate was registered from
//! the exact same port, only those. The transition's linkage score is
//! `1 / |candidates|` if `a_e` is among them, else 0. The report gives, per
//! mode and adversary:
//!
//! - **seen both**: the fraction of true transitions whose two addresses the
//!   adversary observed at all;
//! - **linked**: the mean linkage score over all true transitions — the
//!   expected fraction of a user's epoch-to-epoch links it recovers;
//! - **certain**: the fraction of transitions whose only candidate is the
//!   true predecessor (score 1);
//! - **mean chain**: the mean number of addresses in a maximal run of
//!   certain links (runs of at least one link).
//!
//! # What the model leaves out
//!
//! Owners are independent per address (the ring's prefix rule and
//! membership changes are ignored); clocks are exact; the adversary uses
//! only the rule above. A stronger adversary does better: it can prefer
//! the candidate that ended just before `t1`, discard decoys (they live a
//! few minutes and are never looked up), correlate friends' lookups, or
//! link by a stable public IP across days — a user alone behind a static
//! IP is linkable by that IP whatever the addresses do. The numbers are
//! what timing at the boundary gives away, not a bound on everything an
//! operator can learn.

use std::collections::HashMap;
use std::fmt;
use std::ops::Range;

use crate::rng::Rng;

/// SPEC §3: the keepalive interval.
const KEEPALIVE_MS: u64 = 25_000;
/// The linking window `W`: an entry is dead 3 keepalives after its last
/// refresh (SPEC §3), so a successor's first sighting within this of a
/// predecessor's last one may be the same client.
pub const LINK_WINDOW_MS: u64 = 3 * KEEPALIVE_MS;
/// `lookup-side-fresh-port`: the new address is registered this long after
/// the boundary at most.
const FRESH_PORT_DELAY_MS: u64 = 60_000;
/// `cover`: a decoy registration lives between these (milliseconds).
const DECOY_LIFETIME_MS: Range<u64> = 30_000..300_000;
/// The NAT gives each new socket a port in this range.
const PORTS: Range<u64> = 1024..65_536;
/// Decoy addresses have this bit set; a user's real ones never do.
const DECOY_BIT: u64 = 1 << 63;

const MS_PER_MINUTE: f64 = 60_000.0;
const MS_PER_HOUR: f64 = 3_600_000.0;
const MS_PER_DAY: u64 = 86_400_000;

/// Refuse runs estimated to hold more registrations than this (memory
/// and runtime stay bounded: about 32 bytes and well under a microsecond
/// each). The defaults need about 1.7 million.
const MAX_REGISTRATIONS: f64 = 10_000_000.0;

/// The PRNG streams, one per kind of random choice.
mod stream {
    pub(super) const PHASE: u64 = 1;
    pub(super) const SESSIONS: u64 = 2;
    pub(super) const BOUNDARY: u64 = 3;
    pub(super) const COVER: u64 = 4;
    pub(super) const OWNERS: u64 = 5;
}

/// Defaults of `sky sim privacy` (SPEC §2 for `R` and `H`).
pub const DEFAULT_USERS: u32 = 10_000;
pub const DEFAULT_DAYS: u32 = 7;
pub const DEFAULT_USERS_PER_IP: u32 = 4;
pub const DEFAULT_ONLINE: f64 = 0.3;
pub const DEFAULT_SESSION_MINUTES: f64 = 60.0;
pub const DEFAULT_NODES: u32 = 100;
pub const DEFAULT_OWNERS: u32 = 2;
pub const DEFAULT_ADVERSARY: f64 = 0.1;
pub const DEFAULT_SEED: u64 = 1;
pub const DEFAULT_COVER_MINUTES: f64 = 30.0;
pub const DEFAULT_EPOCH_HOURS: f64 = 24.0;
pub const DEFAULT_OVERLAP_HOURS: f64 = 1.0;

/// Arguments of `sky sim privacy`. [`Default`] gives the same values as
/// the command line's defaults.
#[derive(clap::Args, Clone, Debug, PartialEq)]
pub struct PrivacyArgs {
    /// Users (earth nodes), 1 to 1 000 000.
    #[arg(long, default_value_t = DEFAULT_USERS)]
    pub users: u32,
    /// Days of virtual time, 1 to 3650.
    #[arg(long, default_value_t = DEFAULT_DAYS)]
    pub days: u32,
    /// Users behind one public IP (household, carrier-grade NAT), 1 to 1024.
    #[arg(long, default_value_t = DEFAULT_USERS_PER_IP)]
    pub users_per_ip: u32,
    /// Mean fraction of the time a user is online, in (0, 1).
    #[arg(long, default_value_t = DEFAULT_ONLINE)]
    pub online: f64,
    /// Mean length of an online session, in minutes (at least 1).
    #[arg(long, default_value_t = DEFAULT_SESSION_MINUTES)]
    pub session_minutes: f64,
    /// Sky nodes, 1 to 1 000 000.
    #[arg(long, default_value_t = DEFAULT_NODES)]
    pub nodes: u32,
    /// Owners per address (k), 1 to --nodes.
    #[arg(long, default_value_t = DEFAULT_OWNERS)]
    pub owners: u32,
    /// Fraction of the sky nodes the adversary runs, in [0, 1] (the report
    /// always adds 1.0).
    #[arg(long, default_value_t = DEFAULT_ADVERSARY)]
    pub adversary: f64,
    /// PRNG seed: the same seed prints the same report.
    #[arg(long, default_value_t = DEFAULT_SEED)]
    pub seed: u64,
    /// Cover traffic: mean minutes between decoy registrations while
    /// online (at least 1).
    #[arg(long, default_value_t = DEFAULT_COVER_MINUTES)]
    pub cover_interval: f64,
    /// Epoch length R, in hours (0.1 to 8760).
    #[arg(long, default_value_t = DEFAULT_EPOCH_HOURS)]
    pub epoch_hours: f64,
    /// Overlap H, in hours, in [0, R).
    #[arg(long, default_value_t = DEFAULT_OVERLAP_HOURS)]
    pub overlap_hours: f64,
}

impl Default for PrivacyArgs {
    fn default() -> PrivacyArgs {
        PrivacyArgs {
            users: DEFAULT_USERS,
            days: DEFAULT_DAYS,
            users_per_ip: DEFAULT_USERS_PER_IP,
            online: DEFAULT_ONLINE,
            session_minutes: DEFAULT_SESSION_MINUTES,
            nodes: DEFAULT_NODES,
            owners: DEFAULT_OWNERS,
            adversary: DEFAULT_ADVERSARY,
            seed: DEFAULT_SEED,
            cover_interval: DEFAULT_COVER_MINUTES,
            epoch_hours: DEFAULT_EPOCH_HOURS,
            overlap_hours: DEFAULT_OVERLAP_HOURS,
        }
    }
}

/// Runs the simulation and returns the Markdown report.
pub fn run(args: &PrivacyArgs) -> Result<String, String> {
    simulate(args).map(|report| report.to_string())
}

/// Runs every mode against the given adversary and against one that runs
/// every node.
pub fn simulate(args: &PrivacyArgs) -> Result<Report, String> {
    let params = Params::new(args)?;
    let mut fractions = vec![params.adversary_nodes(args.adversary)];
    if fractions[0] < params.nodes {
        fractions.push(params.nodes);
    }
    let mut rows = Vec::new();
    for mode in Mode::ALL {
        let log = Log::record(&params, mode);
        for &adversarial in &fractions {
            rows.push(log.attack(&params, mode, adversarial));
        }
    }
    // Reading order: one block per adversary, the modes inside it.
    rows.sort_by_key(|row| row.adversary_nodes);
    Ok(Report {
        args: args.clone(),
        rows,
    })
}

/// How a client behaves at its epoch boundary (see the module doc).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    LookupSide,
    LookupSideFreshPort,
    Dual,
    Cover,
}

impl Mode {
    /// Every mode, in the report's order.
    pub const ALL: [Mode; 4] = [
        Mode::LookupSide,
        Mode::LookupSideFreshPort,
        Mode::Dual,
        Mode::Cover,
    ];

    /// The mode's name in the report.
    pub fn name(self) -> &'static str {
        match self {
            Mode::LookupSide => "lookup-side",
            Mode::LookupSideFreshPort => "lookup-side-fresh-port",
            Mode::Dual => "dual",
            Mode::Cover => "cover",
        }
    }
}

/// The simulation's result: one row per mode and adversary.
#[derive(Clone, Debug, PartialEq)]
pub struct Report {
    /// What was simulated.
    pub args: PrivacyArgs,
    /// Ordered by adversary size, then mode.
    pub rows: Vec<Row>,
}

/// What one adversary learns against one mode.
#[derive(Clone, Debug, PartialEq)]
pub struct Row {
    pub mode: Mode,
    /// Sky nodes the adversary runs.
    pub adversary_nodes: u32,
    /// All sky nodes.
    pub nodes: u32,
    /// True epoch transitions (the same in every mode).
    pub transitions: u64,
    /// Fraction of transitions whose two addresses the adversary observed.
    pub seen_both: f64,
    /// Mean linkage score over all transitions.
    pub linked: f64,
    /// Fraction of transitions linked with certainty (score 1).
    pub certain: f64,
    /// Mean addresses per maximal run of certain links; `None` without any.
    pub mean_chain: Option<f64>,
}

impl Row {
    /// The adversary's share of the sky.
    pub fn fraction(&self) -> f64 {
        f64::from(self.adversary_nodes) / f64::from(self.nodes)
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let a = &self.args;
        let transitions = self.rows.first().map_or(0, |row| row.transitions);
        writeln!(
            f,
            "{} users over {} days, {} per public IP, online {}% of the time \
             (sessions of {} min on average); {} sky nodes, {} owners per address; \
             epochs of {} h, overlap {} h; cover every {} min; seed {}. \
             {transitions} epoch transitions.",
            a.users,
            a.days,
            a.users_per_ip,
            // Rounded to 1e-9 %: 0.7 prints 70, not 70.00000000000001.
            (a.online * 1e11).round() / 1e9,
            a.session_minutes,
            a.nodes,
            a.owners,
            a.epoch_hours,
            a.overlap_hours,
            a.cover_interval,
            a.seed,
        )?;
        writeln!(f)?;
        writeln!(
            f,
            "| mode | adversary | seen both | linked (score) | certain | mean chain |"
        )?;
        writeln!(f, "| --- | --- | ---: | ---: | ---: | ---: |")?;
        for row in &self.rows {
            let chain = row
                .mean_chain
                .map_or_else(|| "–".to_string(), |c| format!("{c:.2}"));
            writeln!(
                f,
                "| {} | f = {:.2} ({}/{}) | {:.2}% | {:.2}% | {:.2}% | {chain} |",
                row.mode.name(),
                row.fraction(),
                row.adversary_nodes,
                row.nodes,
                row.seen_both * 100.0,
                row.linked * 100.0,
                row.certain * 100.0,
            )?;
        }
        writeln!(f)?;
        writeln!(
            f,
            "seen both: transitions whose old and new address the adversary observed; \
             linked: mean linkage score (1/|candidates| when the true predecessor is a \
             candidate); certain: transitions linked with a single candidate; mean chain: \
             addresses per run of certain links."
        )
    }
}

mod attack;
mod model;

use attack::*;
use model::*;

#[cfg(test)]
#[path = "../tests/privacy.rs"]
mod tests;
