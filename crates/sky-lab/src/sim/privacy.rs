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
//! - `lookup-side` (the default client): at its boundary an online client
//!   unregisters the old address and registers the new one from the same
//!   socket (same port); friends near the boundary try both addresses.
//! - `lookup-side-fresh-port`: the same, but at the boundary the client
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

/// Validated parameters, in milliseconds.
#[derive(Clone, Debug)]
struct Params {
    users: u32,
    users_per_ip: u32,
    horizon: u64,
    online: f64,
    session_mean: f64,
    offline_mean: f64,
    nodes: u32,
    owners: u32,
    seed: u64,
    cover_mean: f64,
    epoch: u64,
    overlap: u64,
    /// Address ids per user: `horizon / epoch + 2` epochs at most.
    epochs_per_user: u64,
}

impl Params {
    /// Checks every argument's range; the error names the flag.
    fn new(a: &PrivacyArgs) -> Result<Params, String> {
        within("--users", a.users, 1..=1_000_000)?;
        within("--days", a.days, 1..=3650)?;
        within("--users-per-ip", a.users_per_ip, 1..=1024)?;
        within("--nodes", a.nodes, 1..=1_000_000)?;
        within("--owners", a.owners, 1..=a.nodes)?;
        if !(a.online > 0.0 && a.online < 1.0) {
            return Err(format!("--online must be in (0, 1), got {}", a.online));
        }
        within("--adversary", a.adversary, 0.0..=1.0)?;
        within("--session-minutes", a.session_minutes, 1.0..=1e6)?;
        within("--cover-interval", a.cover_interval, 1.0..=1e6)?;
        within("--epoch-hours", a.epoch_hours, 0.1..=8760.0)?;
        if !(a.overlap_hours >= 0.0 && a.overlap_hours < a.epoch_hours) {
            return Err(format!(
                "--overlap-hours must be in [0, --epoch-hours = {}), got {}",
                a.epoch_hours, a.overlap_hours
            ));
        }
        let estimate = registrations_estimate(a);
        if estimate > MAX_REGISTRATIONS {
            return Err(format!(
                "this run would record about {estimate:.0} registrations, more than the \
                 {MAX_REGISTRATIONS:.0} the simulator allows; lower --users or --days, or \
                 raise --session-minutes, --cover-interval or --epoch-hours"
            ));
        }
        let horizon = u64::from(a.days) * MS_PER_DAY;
        let epoch = (a.epoch_hours * MS_PER_HOUR).round() as u64;
        let session_mean = a.session_minutes * MS_PER_MINUTE;
        Ok(Params {
            users: a.users,
            users_per_ip: a.users_per_ip,
            horizon,
            online: a.online,
            session_mean,
            offline_mean: session_mean * (1.0 - a.online) / a.online,
            nodes: a.nodes,
            owners: a.owners,
            seed: a.seed,
            cover_mean: a.cover_interval * MS_PER_MINUTE,
            epoch,
            overlap: (a.overlap_hours * MS_PER_HOUR).round() as u64,
            epochs_per_user: horizon / epoch + 2,
        })
    }

    /// How many nodes an adversary with share `fraction` runs.
    fn adversary_nodes(&self, fraction: f64) -> u32 {
        (fraction * f64::from(self.nodes)).round() as u32
    }

    /// The public IPs: users `ip·P .. (ip + 1)·P` share IP `ip`.
    fn ips(&self) -> u32 {
        self.users.div_ceil(self.users_per_ip)
    }

    /// The users behind `ip`.
    fn users_of(&self, ip: u32) -> Range<u32> {
        ip * self.users_per_ip..((ip + 1) * self.users_per_ip).min(self.users)
    }

    /// The address of `user` in `epoch`, as an id (the simulation needs no
    /// bytes: only which registrations share an address).
    fn address(&self, user: u32, epoch: u64) -> u64 {
        u64::from(user) * self.epochs_per_user + epoch
    }

    /// `user`'s epoch clock, with its phase drawn uniformly in `[0, R)`.
    fn clock(&self, user: u32) -> Clock {
        let phase = Rng::stream(self.seed, &[stream::PHASE, u64::from(user)]).below(self.epoch);
        Clock {
            phase,
            length: self.epoch,
        }
    }

    /// Whether an adversary running `adversarial` of the nodes runs one of
    /// `address`'s owners: the `k` owners are drawn one at a time among the
    /// nodes not drawn yet (a uniform `k`-subset), stopping at the first
    /// adversarial one. The same uniform draws serve every adversary size,
    /// so a larger adversary observes a superset.
    fn observes(&self, address: u64, adversarial: u32) -> bool {
        let mut rng = Rng::stream(self.seed, &[stream::OWNERS, address]);
        (0..self.owners).any(|i| rng.below(u64::from(self.nodes - i)) < u64::from(adversarial))
    }
}

/// Errors unless `value` is in `range`, naming the flag.
fn within<T>(flag: &str, value: T, range: std::ops::RangeInclusive<T>) -> Result<(), String>
where
    T: PartialOrd + fmt::Display,
{
    if range.contains(&value) {
        Ok(())
    } else {
        Err(format!(
            "{flag} must be in [{}, {}], got {value}",
            range.start(),
            range.end()
        ))
    }
}

/// About how many registrations a run records in its busiest mode: per
/// user-day, the sessions, two per boundary (dual) and the decoys.
fn registrations_estimate(a: &PrivacyArgs) -> f64 {
    let minutes_per_day = 1440.0;
    let sessions = minutes_per_day * a.online / a.session_minutes;
    let boundaries = 24.0 / a.epoch_hours;
    let decoys = minutes_per_day * a.online / a.cover_interval;
    f64::from(a.users) * f64::from(a.days) * (sessions + 2.0 * boundaries + decoys)
}

/// One user's epochs: epoch 0 is `[0, phase)`, epoch `e ≥ 1` begins at
/// `phase + (e − 1)·length`.
#[derive(Clone, Copy, Debug)]
struct Clock {
    phase: u64,
    length: u64,
}

impl Clock {
    /// The epoch at `t`.
    fn epoch_at(self, t: u64) -> u64 {
        (t + self.length - self.phase) / self.length
    }

    /// When `epoch` begins.
    fn start(self, epoch: u64) -> u64 {
        match epoch {
            0 => 0,
            e => self.phase + (e - 1) * self.length,
        }
    }
}

/// One online period of a user, on one socket.
#[derive(Clone, Copy, Debug)]
struct Session {
    start: u64,
    end: u64,
    port: u16,
}

/// One address registered from one endpoint during `[start, end)`: what
/// the address's owners see.
#[derive(Clone, Copy, Debug)]
struct Registration {
    address: u64,
    ip: u32,
    port: u16,
    start: u64,
    end: u64,
}

/// A user's sessions: alternating exponential online and offline periods,
/// starting online with probability `F` (the stationary share), cut at the
/// horizon.
fn sessions(p: &Params, user: u32) -> Vec<Session> {
    let mut rng = Rng::stream(p.seed, &[stream::SESSIONS, u64::from(user)]);
    let horizon = p.horizon as f64;
    let mut out = Vec::new();
    let mut online = rng.chance(p.online);
    let mut t = 0.0;
    while t < horizon {
        let mean = if online {
            p.session_mean
        } else {
            p.offline_mean
        };
        let next = t + rng.exp(mean);
        if online {
            let (start, end) = (t as u64, next.min(horizon) as u64);
            let port = port(&mut rng);
            if start < end {
                out.push(Session { start, end, port });
            }
        }
        t = next;
        online = !online;
    }
    out
}

/// A port for a new socket.
fn port(rng: &mut Rng) -> u16 {
    rng.between(PORTS.start, PORTS.end) as u16
}

/// Everything every node saw in one mode, grouped by public IP.
struct Log {
    /// Sorted by (IP, start, address).
    registrations: Vec<Registration>,
}

impl Log {
    /// Simulates every user in `mode`.
    fn record(p: &Params, mode: Mode) -> Log {
        let mut registrations = Vec::new();
        for user in 0..p.users {
            record_user(p, mode, user, &mut registrations);
        }
        registrations.sort_unstable_by_key(|r| (r.ip, r.start, r.address, r.end, r.port));
        Log { registrations }
    }

    /// Runs the linking attack of an adversary that runs `adversarial`
    /// nodes.
    fn attack(&self, p: &Params, mode: Mode, adversarial: u32) -> Row {
        let seen: Vec<Registration> = self
            .registrations
            .iter()
            .filter(|r| p.observes(r.address, adversarial))
            .copied()
            .collect();
        let groups = IpGroups::new(p, &seen);
        let mut tally = Tally::default();
        for ip in 0..p.ips() {
            let group = groups.group(ip, &seen);
            for user in p.users_of(ip) {
                attack_user(p, user, &group, &groups.first, &mut tally);
            }
        }
        tally.row(p, mode, adversarial)
    }
}

/// Appends `user`'s registrations in `mode`.
fn record_user(p: &Params, mode: Mode, user: u32, out: &mut Vec<Registration>) {
    let clock = p.clock(user);
    let mut boundary_rng = Rng::stream(p.seed, &[stream::BOUNDARY, u64::from(user)]);
    let mut cover_rng = Rng::stream(p.seed, &[stream::COVER, u64::from(user)]);
    let mut decoys = 0;
    for session in sessions(p, user) {
        let mut emit = |address, port, start, end| {
            if start < end {
                out.push(Registration {
                    address,
                    ip: user / p.users_per_ip,
                    port,
                    start,
                    end,
                });
            }
        };
        match mode {
            Mode::LookupSide => same_socket(p, user, clock, session, false, &mut emit),
            Mode::Dual => same_socket(p, user, clock, session, true, &mut emit),
            Mode::LookupSideFreshPort => {
                fresh_socket(p, user, clock, session, &mut boundary_rng, &mut emit);
            }
            Mode::Cover => {
                fresh_socket(p, user, clock, session, &mut boundary_rng, &mut emit);
                cover(p, user, session, &mut cover_rng, &mut decoys, &mut emit);
            }
        }
    }
}

/// `lookup-side` and `dual`: one socket for the whole session; at each
/// boundary the address changes on it. With `dual`, the previous address
/// stays registered until `H` into the epoch.
fn same_socket(
    p: &Params,
    user: u32,
    clock: Clock,
    s: Session,
    dual: bool,
    emit: &mut impl FnMut(u64, u16, u64, u64),
) {
    for epoch in clock.epoch_at(s.start)..=clock.epoch_at(s.end - 1) {
        let from = s.start.max(clock.start(epoch));
        let to = s.end.min(clock.start(epoch + 1));
        emit(p.address(user, epoch), s.port, from, to);
        if dual && epoch > 0 {
            let until = s.end.min(clock.start(epoch) + p.overlap);
            emit(p.address(user, epoch - 1), s.port, from, until);
        }
    }
}

/// `lookup-side-fresh-port`: at each boundary inside the session the old
/// socket unregisters the old address, and a new socket registers the new
/// one after a delay in `[0, 60 s)`. The delay and the port are drawn for
/// every boundary crossed, used or not, so the stream stays aligned.
fn fresh_socket(
    p: &Params,
    user: u32,
    clock: Clock,
    s: Session,
    rng: &mut Rng,
    emit: &mut impl FnMut(u64, u16, u64, u64),
) {
    let first = clock.epoch_at(s.start);
    let mut port_now = s.port;
    let mut from = s.start;
    for epoch in first..=clock.epoch_at(s.end - 1) {
        if epoch > first {
            from = clock.start(epoch) + rng.below(FRESH_PORT_DELAY_MS);
            port_now = port(rng);
        }
        let to = s.end.min(clock.start(epoch + 1));
        emit(p.address(user, epoch), port_now, from, to);
    }
}

/// `cover`: decoys at exponential intervals while online, each an unrelated
/// address on its own new socket, for 30 s to 5 min (cut at the session's
/// end: the device went offline).
fn cover(
    p: &Params,
    user: u32,
    s: Session,
    rng: &mut Rng,
    decoys: &mut u64,
    emit: &mut impl FnMut(u64, u16, u64, u64),
) {
    let mut t = s.start as f64 + rng.exp(p.cover_mean);
    while t < s.end as f64 {
        let start = t as u64;
        let end = s
            .end
            .min(start + rng.between(DECOY_LIFETIME_MS.start, DECOY_LIFETIME_MS.end));
        let address = DECOY_BIT | (u64::from(user) << 32) | *decoys;
        *decoys += 1;
        emit(address, port(rng), start, end);
        t += rng.exp(p.cover_mean);
    }
}

/// The observed registrations cut by public IP, and each real address's
/// first sighting.
struct IpGroups {
    /// Per IP: its registrations' range in the observed log, and the
    /// longest of them (bounds how far back a candidate can start).
    ranges: Vec<(Range<usize>, u64)>,
    /// Real address → index of its first observed registration.
    first: HashMap<u64, usize>,
}

/// The observed registrations from one IP.
struct Group<'a> {
    /// The observed log, for indices in [`IpGroups::first`].
    log: &'a [Registration],
    /// This IP's part of it, by start.
    range: Range<usize>,
    /// The longest registration in it.
    longest: u64,
}

impl IpGroups {
    fn new(p: &Params, seen: &[Registration]) -> IpGroups {
        let mut ranges = vec![(0..0, 0); p.ips() as usize];
        let mut first = HashMap::new();
        let mut i = 0;
        while i < seen.len() {
            let ip = seen[i].ip;
            let start = i;
            let mut longest = 0;
            while i < seen.len() && seen[i].ip == ip {
                let r = &seen[i];
                longest = longest.max(r.end - r.start);
                if r.address & DECOY_BIT == 0 {
                    first.entry(r.address).or_insert(i);
                }
                i += 1;
            }
            ranges[ip as usize] = (start..i, longest);
        }
        IpGroups { ranges, first }
    }

    fn group<'a>(&self, ip: u32, seen: &'a [Registration]) -> Group<'a> {
        let (range, longest) = self.ranges[ip as usize].clone();
        Group {
            log: seen,
            range,
            longest,
        }
    }
}

/// Sums over transitions.
#[derive(Default)]
struct Tally {
    transitions: u64,
    seen_both: u64,
    linked: f64,
    certain: u64,
    chains: u64,
    chain_addresses: u64,
}

impl Tally {
    fn row(&self, p: &Params, mode: Mode, adversarial: u32) -> Row {
        let per_transition = |n: f64| match self.transitions {
            0 => 0.0,
            t => n / t as f64,
        };
        Row {
            mode,
            adversary_nodes: adversarial,
            nodes: p.nodes,
            transitions: self.transitions,
            seen_both: per_transition(self.seen_both as f64),
            linked: per_transition(self.linked),
            certain: per_transition(self.certain as f64),
            mean_chain: (self.chains > 0).then(|| self.chain_addresses as f64 / self.chains as f64),
        }
    }

    /// Ends a run of `links` certain links (a chain of `links + 1`
    /// addresses), if there is one.
    fn close_chain(&mut self, links: u64) {
        if links > 0 {
            self.chains += 1;
            self.chain_addresses += links + 1;
        }
    }
}

/// Attacks every transition of `user` inside the simulated time.
fn attack_user(
    p: &Params,
    user: u32,
    group: &Group<'_>,
    first: &HashMap<u64, usize>,
    tally: &mut Tally,
) {
    let clock = p.clock(user);
    let mut run = 0;
    let mut epoch = 0;
    while clock.start(epoch + 1) < p.horizon {
        let boundary = clock.start(epoch + 1);
        epoch += 1;
        if boundary == 0 {
            continue; // phase 0: epoch 0 is empty, no transition
        }
        let (prev, next) = (p.address(user, epoch - 1), p.address(user, epoch));
        tally.transitions += 1;
        if first.contains_key(&prev) && first.contains_key(&next) {
            tally.seen_both += 1;
        }
        let score = first
            .get(&next)
            .map_or(0.0, |&i| link_score(group, prev, &group.log[i]));
        tally.linked += score;
        if score == 1.0 {
            tally.certain += 1;
            run += 1;
        } else {
            tally.close_chain(run);
            run = 0;
        }
    }
    tally.close_chain(run);
}

/// The linkage score of the transition into `next`'s first sighting: the
/// candidates are the other addresses registered from the same IP with a
/// registration that overlaps it or ended at most `W` before it (only those
/// on the same port, if any is); `1 / |candidates|` if `prev` is one, else 0.
fn link_score(group: &Group<'_>, prev: u64, next: &Registration) -> f64 {
    let t1 = next.start;
    let from_ip = &group.log[group.range.clone()];
    let upto = from_ip.partition_point(|r| r.start <= t1);
    // Registrations starting earlier than this ended more than W before t1.
    let earliest = t1.saturating_sub(LINK_WINDOW_MS + group.longest);
    let mut candidates: Vec<(u64, bool)> = Vec::new();
    for r in from_ip[..upto].iter().rev() {
        if r.start < earliest {
            break;
        }
        if r.address == next.address || r.end + LINK_WINDOW_MS < t1 {
            continue;
        }
        let same_port = r.port == next.port;
        match candidates.iter_mut().find(|c| c.0 == r.address) {
            Some(c) => c.1 |= same_port,
            None => candidates.push((r.address, same_port)),
        }
    }
    let by_port = candidates.iter().any(|c| c.1);
    let kept = candidates.iter().filter(|c| !by_port || c.1);
    let (count, hit) = kept.fold((0u32, false), |(n, hit), c| (n + 1, hit || c.0 == prev));
    if hit { 1.0 / f64::from(count) } else { 0.0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Small enough for a debug build: 300 users for a week.
    fn small() -> PrivacyArgs {
        PrivacyArgs {
            users: 300,
            ..PrivacyArgs::default()
        }
    }

    fn row(report: &Report, mode: Mode, adversary_nodes: u32) -> &Row {
        report
            .rows
            .iter()
            .find(|r| r.mode == mode && r.adversary_nodes == adversary_nodes)
            .expect("row present")
    }

    #[test]
    fn same_seed_same_report_other_seed_other_report() {
        let a = simulate(&small()).unwrap();
        assert_eq!(a, simulate(&small()).unwrap());
        assert_eq!(run(&small()).unwrap(), a.to_string());
        let other = simulate(&PrivacyArgs { seed: 2, ..small() }).unwrap();
        assert_ne!(a.rows, other.rows);
    }

    #[test]
    fn dual_links_at_least_lookup_side_and_fresh_port_at_most() {
        let args = PrivacyArgs {
            users_per_ip: 1,
            adversary: 1.0,
            ..small()
        };
        let report = simulate(&args).unwrap();
        let nodes = args.nodes;
        let lookup = row(&report, Mode::LookupSide, nodes).linked;
        let dual = row(&report, Mode::Dual, nodes).linked;
        let fresh = row(&report, Mode::LookupSideFreshPort, nodes).linked;
        assert!(lookup > 0.0);
        assert!(dual >= lookup, "dual {dual} < lookup-side {lookup}");
        assert!(fresh <= lookup, "fresh port {fresh} > lookup-side {lookup}");
        // The overlap is what dual costs: users who come online during it.
        assert!(dual > lookup + 0.05, "dual {dual} vs lookup-side {lookup}");
    }

    #[test]
    fn lookup_side_links_about_the_users_online_at_their_boundary() {
        let args = PrivacyArgs {
            users_per_ip: 1,
            adversary: 1.0,
            ..small()
        };
        let report = simulate(&args).unwrap();
        let lookup = row(&report, Mode::LookupSide, args.nodes);
        assert!(
            (lookup.linked - args.online).abs() < 0.08,
            "linked {} vs online {}",
            lookup.linked,
            args.online
        );
        assert!(lookup.mean_chain.unwrap() >= 2.0);
    }

    #[test]
    fn no_adversary_links_nothing() {
        let report = simulate(&PrivacyArgs {
            adversary: 0.0,
            ..small()
        })
        .unwrap();
        for r in report.rows.iter().filter(|r| r.adversary_nodes == 0) {
            assert_eq!((r.seen_both, r.linked, r.certain), (0.0, 0.0, 0.0));
            assert_eq!(r.mean_chain, None);
        }
        assert_eq!(report.rows.len(), 2 * Mode::ALL.len());
    }

    #[test]
    fn cover_traffic_never_raises_the_score() {
        for users_per_ip in [1, 4] {
            let args = PrivacyArgs {
                users_per_ip,
                ..small()
            };
            let report = simulate(&args).unwrap();
            for adversary in [10, args.nodes] {
                let fresh = row(&report, Mode::LookupSideFreshPort, adversary).linked;
                let cover = row(&report, Mode::Cover, adversary).linked;
                assert!(cover <= fresh, "cover {cover} > fresh port {fresh}");
            }
        }
    }

    #[test]
    fn a_fresh_port_hides_among_the_household() {
        let report = simulate(&PrivacyArgs {
            adversary: 1.0,
            ..small()
        })
        .unwrap();
        let lookup = row(&report, Mode::LookupSide, 100).linked;
        let fresh = row(&report, Mode::LookupSideFreshPort, 100).linked;
        assert!(
            fresh < 0.9 * lookup,
            "fresh port {fresh} vs lookup-side {lookup}"
        );
    }

    #[test]
    fn a_larger_adversary_sees_more() {
        let report = simulate(&small()).unwrap();
        for mode in Mode::ALL {
            let (some, all) = (row(&report, mode, 10), row(&report, mode, 100));
            assert!(some.seen_both < all.seen_both);
            assert!(some.linked <= all.linked);
        }
    }

    #[test]
    fn owners_are_a_uniform_k_subset() {
        let p = Params::new(&small()).unwrap();
        let n = 100_000;
        let seen = (0..n).filter(|&a| p.observes(a, 10)).count() as f64 / n as f64;
        // 1 - C(90, 2) / C(100, 2) = 0.1909...
        assert!(
            (seen - (1.0 - 90.0 * 89.0 / (100.0 * 99.0))).abs() < 0.005,
            "{seen}"
        );
        assert!((0..1000).all(|a| p.observes(a, 100)));
        assert!((0..1000).all(|a| !p.observes(a, 0)));
    }

    #[test]
    fn every_bad_argument_is_an_error_naming_its_flag() {
        let cases: [(&str, PrivacyArgs); 12] = [
            (
                "--users",
                PrivacyArgs {
                    users: 0,
                    ..small()
                },
            ),
            ("--days", PrivacyArgs { days: 0, ..small() }),
            (
                "--users-per-ip",
                PrivacyArgs {
                    users_per_ip: 0,
                    ..small()
                },
            ),
            (
                "--online",
                PrivacyArgs {
                    online: 1.0,
                    ..small()
                },
            ),
            (
                "--online",
                PrivacyArgs {
                    online: f64::NAN,
                    ..small()
                },
            ),
            (
                "--owners",
                PrivacyArgs {
                    owners: 101,
                    ..small()
                },
            ),
            (
                "--adversary",
                PrivacyArgs {
                    adversary: 1.5,
                    ..small()
                },
            ),
            (
                "--cover-interval",
                PrivacyArgs {
                    cover_interval: 0.0,
                    ..small()
                },
            ),
            (
                "--epoch-hours",
                PrivacyArgs {
                    epoch_hours: 0.0,
                    ..small()
                },
            ),
            (
                "--overlap-hours",
                PrivacyArgs {
                    overlap_hours: 24.0,
                    ..small()
                },
            ),
            (
                "--session-minutes",
                PrivacyArgs {
                    session_minutes: -1.0,
                    ..small()
                },
            ),
            (
                "--users",
                PrivacyArgs {
                    users: 1_000_000,
                    days: 3650,
                    ..small()
                },
            ),
        ];
        for (flag, args) in cases {
            let err = simulate(&args).unwrap_err();
            assert!(err.contains(flag), "{flag}: {err}");
        }
    }

    #[test]
    fn command_line_defaults_are_the_default_args() {
        use clap::Parser;
        #[derive(Parser)]
        struct Cli {
            #[command(flatten)]
            args: PrivacyArgs,
        }
        assert_eq!(Cli::parse_from(["sim"]).args, PrivacyArgs::default());
        let cli = Cli::parse_from(["sim", "--users", "5", "--overlap-hours", "0.5"]);
        assert_eq!((cli.args.users, cli.args.overlap_hours), (5, 0.5));
    }

    #[test]
    fn the_report_is_a_markdown_table_with_a_row_per_mode_and_adversary() {
        let text = run(&small()).unwrap();
        let rows: Vec<&str> = text.lines().filter(|l| l.starts_with("| ")).collect();
        assert_eq!(rows.len(), 2 + 2 * Mode::ALL.len(), "{text}"); // header, rule, rows
        assert!(
            rows.iter()
                .any(|l| l.contains("| dual | f = 1.00 (100/100) |"))
        );
        assert!(
            rows.iter()
                .any(|l| l.contains("| cover | f = 0.10 (10/100) |"))
        );
    }

    /// The table in docs/PRIVACY.md: `cargo test --release --lib sim --
    /// --ignored --nocapture`.
    #[test]
    #[ignore = "the default run, for docs/PRIVACY.md (release build)"]
    fn default_parameters_table() {
        println!("{}", run(&PrivacyArgs::default()).unwrap());
    }

    /// The variations docs/PRIVACY.md cites: one owner per address, and one
    /// user per public IP.
    #[test]
    #[ignore = "variations of the default run, for docs/PRIVACY.md (release build)"]
    fn variations_table() {
        for args in [
            PrivacyArgs {
                owners: 1,
                ..PrivacyArgs::default()
            },
            PrivacyArgs {
                users_per_ip: 1,
                ..PrivacyArgs::default()
            },
        ] {
            println!("{}", run(&args).unwrap());
        }
    }
}
