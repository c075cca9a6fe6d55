//! Lookups made in the background while a scenario runs, and what came of
//! them.

use std::net::SocketAddr;
use std::time::Duration;

use sky_earth::client::{Event, Failure};
use sky_proto::time::UnixTime;
use sky_proto::wire::Flags;

use crate::Net;

/// What one lookup answered.
pub type LookupResult = Result<(SocketAddr, Flags), Failure>;

/// Hosts looking friends up in turn, round and round a list of (who,
/// whom) pairs, one lookup started per step; a pair is not started again
/// while its last lookup is in flight. A lookup is *found* when it answers
/// the friend's public endpoint.
pub struct Lookups {
    pairs: Vec<(usize, usize)>,
    next: usize,
    /// Lookups in flight: (who, whom, started).
    pending: Vec<(usize, usize, UnixTime)>,
    pub made: u32,
    pub found: u32,
    /// Lookups that answered anything else: (who, whom, answer).
    pub failed: Vec<(usize, usize, LookupResult)>,
    /// The longest a found lookup took, to the step it was read in.
    pub slowest: Duration,
}

impl Lookups {
    /// Every host of `net` looks up every other, in turn.
    pub fn all_pairs(net: &Net) -> Lookups {
        let n = net.hosts.len();
        let mut pairs = Vec::with_capacity(n * n);
        // By distance first, so consecutive lookups come from different
        // hosts and ask about different friends.
        for d in 1..n {
            for who in 0..n {
                pairs.push((who, (who + d) % n));
            }
        }
        Lookups {
            pairs,
            next: 0,
            pending: Vec::new(),
            made: 0,
            found: 0,
            failed: Vec::new(),
            slowest: Duration::ZERO,
        }
    }

    /// Starts the next lookup whose pair has none in flight.
    pub fn start(&mut self, net: &mut Net) {
        for _ in 0..self.pairs.len() {
            let (who, whom) = self.pairs[self.next];
            self.next = (self.next + 1) % self.pairs.len();
            if self.pending.iter().any(|p| (p.0, p.1) == (who, whom)) {
                continue;
            }
            let now = net.now;
            let friend = net.names[whom].clone();
            net.hosts[who].earth.lookup(now, &friend);
            net.flush(who);
            self.pending.push((who, whom, now));
            self.made += 1;
            return;
        }
    }

    /// Reads the answers that came (taking the hosts' lookup events; other
    /// events stay).
    pub fn collect(&mut self, net: &mut Net) {
        for who in 0..net.hosts.len() {
            let mut answers = Vec::new();
            net.hosts[who].events.retain(|e| match e {
                Event::Lookup { friend, result } => {
                    answers.push((friend.clone(), result.clone()));
                    false
                }
                _ => true,
            });
            for (friend, result) in answers {
                let whom = net.names.iter().position(|n| *n == friend);
                let Some(p) = self
                    .pending
                    .iter()
                    .position(|p| p.0 == who && Some(p.1) == whom)
                else {
                    continue; // not one of ours
                };
                let (_, whom, started) = self.pending.remove(p);
                match result {
                    Ok((endpoint, _)) if endpoint == net.hosts[whom].public => {
                        self.found += 1;
                        let took = net.now.saturating_duration_since(started);
                        self.slowest = self.slowest.max(took);
                    }
                    other => self.failed.push((who, whom, other)),
                }
            }
        }
    }

    /// Runs `net` for `d` in steps of `every`, starting one lookup at each
    /// step and reading answers after it; `each` sees the net after every
    /// step.
    pub fn run(&mut self, net: &mut Net, d: Duration, every: Duration, mut each: impl FnMut(&Net)) {
        let end = net.now + d;
        while net.now < end {
            self.start(net);
            net.run_for(every);
            self.collect(net);
            each(net);
        }
    }

    /// Starts nothing more and lets every lookup in flight answer (each
    /// gives up after the earth config's `give_up`), reading answers every
    /// `every`.
    pub fn finish(&mut self, net: &mut Net, every: Duration) {
        let give_up = net.hosts.iter().map(|h| h.earth.config().give_up).max();
        let end = net.now + give_up.unwrap_or_default() + Duration::from_secs(1);
        while net.now < end && !self.pending.is_empty() {
            net.run_for(every);
            self.collect(net);
        }
        assert!(
            self.pending.is_empty(),
            "lookups never answered: {:?}",
            self.pending
        );
    }

    /// Lookups still in flight.
    pub fn in_flight(&self) -> usize {
        self.pending.len()
    }
}
