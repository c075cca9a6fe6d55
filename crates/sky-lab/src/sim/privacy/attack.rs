//! The adversary: colluding operators who see the registrations at the
//! nodes they run and link successive addresses of one user.

use super::model::*;
use super::*;

/// The observed registrations cut by public IP, and each real address's
/// first sighting.
pub(super) struct IpGroups {
    /// Per IP: its registrations' range in the observed log, and the
    /// longest of them (bounds how far back a candidate can start).
    pub(super) ranges: Vec<(Range<usize>, u64)>,
    /// Real address → index of its first observed registration.
    pub(super) first: HashMap<u64, usize>,
}

/// The observed registrations from one IP.
pub(super) struct Group<'a> {
    /// The observed log, for indices in [`IpGroups::first`].
    pub(super) log: &'a [Registration],
    /// This IP's part of it, by start.
    pub(super) range: Range<usize>,
    /// The longest registration in it.
    pub(super) longest: u64,
}

impl IpGroups {
    pub(super) fn new(p: &Params, seen: &[Registration]) -> IpGroups {
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

    pub(super) fn group<'a>(&self, ip: u32, seen: &'a [Registration]) -> Group<'a> {
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
pub(super) struct Tally {
    pub(super) transitions: u64,
    pub(super) seen_both: u64,
    pub(super) linked: f64,
    pub(super) certain: u64,
    pub(super) chains: u64,
    pub(super) chain_addresses: u64,
}

impl Tally {
    pub(super) fn row(&self, p: &Params, mode: Mode, adversarial: u32) -> Row {
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
    pub(super) fn close_chain(&mut self, links: u64) {
        if links > 0 {
            self.chains += 1;
            self.chain_addresses += links + 1;
        }
    }
}

/// Attacks every transition of `user` inside the simulated time.
pub(super) fn attack_user(
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
pub(super) fn link_score(group: &Group<'_>, prev: u64, next: &Registration) -> f64 {
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
