//! The model: users' sessions and the registrations each client
//! behaviour makes from them (same socket, a fresh port at the boundary,
//! dual registration, cover traffic).

use super::*;

/// Validated parameters, in milliseconds.
#[derive(Clone, Debug)]
pub(super) struct Params {
    pub(super) users: u32,
    pub(super) users_per_ip: u32,
    pub(super) horizon: u64,
    pub(super) online: f64,
    pub(super) session_mean: f64,
    pub(super) offline_mean: f64,
    pub(super) nodes: u32,
    pub(super) owners: u32,
    pub(super) seed: u64,
    pub(super) cover_mean: f64,
    pub(super) epoch: u64,
    pub(super) overlap: u64,
    /// Address ids per user: `horizon / epoch + 2` epochs at most.
    pub(super) epochs_per_user: u64,
}

impl Params {
    /// Checks every argument's range; the error names the flag.
    pub(super) fn new(a: &PrivacyArgs) -> Result<Params, String> {
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
    pub(super) fn adversary_nodes(&self, fraction: f64) -> u32 {
        (fraction * f64::from(self.nodes)).round() as u32
    }

    /// The public IPs: users `ip·P .. (ip + 1)·P` share IP `ip`.
    pub(super) fn ips(&self) -> u32 {
        self.users.div_ceil(self.users_per_ip)
    }

    /// The users behind `ip`.
    pub(super) fn users_of(&self, ip: u32) -> Range<u32> {
        ip * self.users_per_ip..((ip + 1) * self.users_per_ip).min(self.users)
    }

    /// The address of `user` in `epoch`, as an id (the simulation needs no
    /// bytes: only which registrations share an address).
    pub(super) fn address(&self, user: u32, epoch: u64) -> u64 {
        u64::from(user) * self.epochs_per_user + epoch
    }

    /// `user`'s epoch clock, with its phase drawn uniformly in `[0, R)`.
    pub(super) fn clock(&self, user: u32) -> Clock {
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
    pub(super) fn observes(&self, address: u64, adversarial: u32) -> bool {
        let mut rng = Rng::stream(self.seed, &[stream::OWNERS, address]);
        (0..self.owners).any(|i| rng.below(u64::from(self.nodes - i)) < u64::from(adversarial))
    }
}

/// Errors unless `value` is in `range`, naming the flag.
pub(super) fn within<T>(
    flag: &str,
    value: T,
    range: std::ops::RangeInclusive<T>,
) -> Result<(), String>
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
pub(super) fn registrations_estimate(a: &PrivacyArgs) -> f64 {
    let minutes_per_day = 1440.0;
    let sessions = minutes_per_day * a.online / a.session_minutes;
    let boundaries = 24.0 / a.epoch_hours;
    let decoys = minutes_per_day * a.online / a.cover_interval;
    f64::from(a.users) * f64::from(a.days) * (sessions + 2.0 * boundaries + decoys)
}

/// One user's epochs: epoch 0 is `[0, phase)`, epoch `e ≥ 1` begins at
/// `phase + (e − 1)·length`.
#[derive(Clone, Copy, Debug)]
pub(super) struct Clock {
    pub(super) phase: u64,
    pub(super) length: u64,
}

impl Clock {
    /// The epoch at `t`.
    pub(super) fn epoch_at(self, t: u64) -> u64 {
        (t + self.length - self.phase) / self.length
    }

    /// When `epoch` begins.
    pub(super) fn start(self, epoch: u64) -> u64 {
        match epoch {
            0 => 0,
            e => self.phase + (e - 1) * self.length,
        }
    }
}

/// One online period of a user, on one socket.
#[derive(Clone, Copy, Debug)]
pub(super) struct Session {
    pub(super) start: u64,
    pub(super) end: u64,
    pub(super) port: u16,
}

/// One address registered from one endpoint during `[start, end)`: what
/// the address's owners see.
#[derive(Clone, Copy, Debug)]
pub(super) struct Registration {
    pub(super) address: u64,
    pub(super) ip: u32,
    pub(super) port: u16,
    pub(super) start: u64,
    pub(super) end: u64,
}

/// A user's sessions: alternating exponential online and offline periods,
/// starting online with probability `F` (the stationary share), cut at the
/// horizon.
pub(super) fn sessions(p: &Params, user: u32) -> Vec<Session> {
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
pub(super) fn port(rng: &mut Rng) -> u16 {
    rng.between(PORTS.start, PORTS.end) as u16
}

/// Everything every node saw in one mode, grouped by public IP.
pub(super) struct Log {
    /// Sorted by (IP, start, address).
    pub(super) registrations: Vec<Registration>,
}

impl Log {
    /// Simulates every user in `mode`.
    pub(super) fn record(p: &Params, mode: Mode) -> Log {
        let mut registrations = Vec::new();
        for user in 0..p.users {
            record_user(p, mode, user, &mut registrations);
        }
        registrations.sort_unstable_by_key(|r| (r.ip, r.start, r.address, r.end, r.port));
        Log { registrations }
    }

    /// Runs the linking attack of an adversary that runs `adversarial`
    /// nodes.
    pub(super) fn attack(&self, p: &Params, mode: Mode, adversarial: u32) -> Row {
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
pub(super) fn record_user(p: &Params, mode: Mode, user: u32, out: &mut Vec<Registration>) {
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
pub(super) fn same_socket(
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
pub(super) fn fresh_socket(
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
pub(super) fn cover(
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
