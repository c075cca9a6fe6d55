//! The simulated network: datagrams in flight, loss, and the event loop
//! that drives every core in virtual time.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::time::Duration;

use sky_earth::client::{Config, Earth, Event, Failure, SocketId};
use sky_earth::identity::Friends;
use sky_earth::invite::Invite;
use sky_earth::state::State;
use sky_proto::time::{MonoTime, UnixTime};
use sky_proto::wire::{self, Flags, Kind, Message};

use crate::{Host, SkyNode, T0, hosts, identity, sky};

/// Seeded random loss: each datagram, on any link, is lost with
/// probability `percent` / 100, drawn from a SplitMix64 stream. The same
/// seed loses the same datagrams of the same run.
#[derive(Clone, Debug)]
pub struct RandomLoss {
    pub percent: u64,
    state: u64,
}

impl RandomLoss {
    pub fn new(percent: u64, seed: u64) -> RandomLoss {
        RandomLoss {
            percent,
            state: seed,
        }
    }

    fn lose(&mut self) -> bool {
        // SplitMix64 (Steele, Lea, Flood 2014).
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        z % 100 < self.percent
    }
}

pub struct Net {
    pub now: UnixTime,
    pub skies: Vec<SkyNode>,
    /// The ring every node reads in a hand-set sky (`None`: one
    /// standalone node, or a gossiping sky where each node has its own).
    pub ring: Option<sky_node::snapshot::SharedRing>,
    pub hosts: Vec<Host>,
    /// The users' names, in the order of `hosts`.
    pub names: Vec<String>,
    /// (arrival, from, to, bytes)
    pub flight: Vec<(UnixTime, SocketAddr, SocketAddr, Vec<u8>)>,
    /// Every `loss`-th datagram is dropped (0: none).
    pub loss: u32,
    pub counter: u32,
    /// Seeded random loss on every link, besides `loss`.
    pub random_loss: Option<RandomLoss>,
    /// Datagrams lost by `loss` or `random_loss`.
    pub lost: u64,
    /// Drops everything between earth hosts (an unpunchable pair).
    pub block_peers: bool,
    /// Datagrams each host sent to the sky.
    pub to_sky: Vec<u32>,
    /// Every reply a sky node sent: (node, to, kind).
    pub replies: Vec<(SocketAddr, SocketAddr, Kind)>,
    /// UDP payload bytes the sky nodes sent to earth hosts (their egress):
    /// replies and introductions.
    pub sky_egress: u64,
    /// When `Some`, every request a sky node received: (source, message) —
    /// the wire as the sky sees it.
    pub sky_log: Option<Vec<(SocketAddr, Message)>>,
    /// The ring version of every keepalive the sky received.
    pub keepalive_rings: Vec<u32>,
    /// Gossip datagrams delivered to a live node.
    pub gossip_delivered: u64,
    /// Seeds the gossip cores' random choices (a gossiping sky).
    pub seed: u64,
}

impl Net {
    /// The sky nodes' monotonic clock: time since the simulation began.
    pub fn sky_now(&self) -> MonoTime {
        MonoTime::from_duration(self.now.saturating_duration_since(T0))
    }

    /// The virtual time of the sky nodes' `at`.
    pub fn at(&self, at: MonoTime) -> UnixTime {
        T0 + at.as_duration()
    }

    /// The users and one standalone sky node (no ring) at `sky()`.
    pub fn new(names: &[&str], config: impl Fn(&mut Config)) -> Net {
        Net {
            now: T0,
            skies: vec![SkyNode::new(sky(), [7; 32], None, MonoTime::ZERO)],
            ring: None,
            hosts: hosts(names, config),
            names: names.iter().map(|n| n.to_string()).collect(),
            flight: Vec::new(),
            loss: 0,
            counter: 0,
            random_loss: None,
            lost: 0,
            block_peers: false,
            to_sky: vec![0; names.len()],
            replies: Vec::new(),
            sky_egress: 0,
            sky_log: None,
            keepalive_rings: Vec::new(),
            gossip_delivered: 0,
            seed: 0,
        }
    }

    /// The invite host `i` would give a friend now.
    pub fn invite_of(&self, i: usize) -> Invite {
        self.hosts[i]
            .earth
            .state()
            .identity
            .clone()
            .invite(self.now)
    }

    /// A new user `name` (its own identity, behind its own NAT) who holds
    /// the invites of hosts `knows` — they do not know it yet. Returns its
    /// index.
    pub fn add_host(&mut self, name: &str, knows: &[usize], config: impl Fn(&mut Config)) -> usize {
        let i = self.hosts.len();
        let mut friends = Friends::default();
        for &j in knows {
            friends
                .add(&self.names[j], self.invite_of(j).into())
                .unwrap();
        }
        let state = State::new(identity(100 + i as u8), friends);
        self.add_host_with(name, state, config)
    }

    /// A new host running `state` (another device of a user, say), behind
    /// its own NAT. Returns its index.
    pub fn add_host_with(
        &mut self,
        name: &str,
        state: State,
        config: impl Fn(&mut Config),
    ) -> usize {
        let i = self.hosts.len();
        let mut c = Config::new(vec![sky()]);
        config(&mut c);
        self.hosts.push(Host {
            earth: Earth::new(c, state, [i as u8 + 150; 32], self.now),
            public: format!("203.0.113.{}:4{i}000", i + 1).parse().unwrap(),
            filtering: true,
            sent_to: HashSet::new(),
            events: Vec::new(),
            sockets: HashSet::from([SocketId::MAIN]),
            random: None,
            idle_timeout: None,
            last_used: Default::default(),
        });
        self.names.push(name.to_string());
        self.to_sky.push(0);
        i
    }

    pub fn send(&mut self, from: SocketAddr, to: SocketAddr, bytes: Vec<u8>) {
        self.counter += 1;
        let coin = (u64::from(self.counter).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 40) as u32;
        let random = self.random_loss.as_mut().is_some_and(RandomLoss::lose);
        if (self.loss != 0 && coin.is_multiple_of(self.loss)) || random {
            self.lost += 1;
            return;
        }
        let sky_side = self.is_sky(to) || self.is_sky(from);
        if self.block_peers && !sky_side {
            return;
        }
        let latency = Duration::from_millis(if sky_side { 10 } else { 20 });
        self.flight.push((self.now + latency, from, to, bytes));
    }

    pub fn flush(&mut self, i: usize) {
        while let Some(t) = self.hosts[i].earth.poll_transmit() {
            let h = &mut self.hosts[i];
            h.sockets.insert(t.socket);
            h.sent_to.insert((t.socket, t.dst));
            h.last_used.insert((t.socket, t.dst), self.now);
            let from = match h.random.as_mut() {
                Some(nat) => SocketAddr::new(h.public.ip(), nat.port(t.socket, t.dst)),
                None => h.public_of(t.socket),
            };
            if self.is_sky(t.dst) {
                self.to_sky[i] += 1;
            }
            self.send(from, t.dst, t.bytes);
        }
        while let Some(s) = self.hosts[i].earth.poll_released() {
            let h = &mut self.hosts[i];
            h.sockets.remove(&s);
            h.sent_to.retain(|(socket, _)| *socket != s);
            if let Some(nat) = h.random.as_mut() {
                nat.forget(s);
            }
        }
        while let Some(e) = self.hosts[i].earth.poll_event() {
            self.hosts[i].events.push(e);
        }
    }

    pub fn deliver(&mut self, from: SocketAddr, to: SocketAddr, mut bytes: Vec<u8>) {
        if let Some(s) = self.skies.iter().position(|s| s.addr == to) {
            if self.skies[s].down {
                return;
            }
            if let Ok(Message::Keepalive { ring, .. }) = Message::decode(&bytes) {
                self.keepalive_rings.push(ring);
            }
            if let (Some(log), Ok(m)) = (self.sky_log.as_mut(), Message::decode(&bytes)) {
                log.push((from, m));
            }
            let len = bytes.len();
            bytes.resize(2048, 0);
            let mut reply = [0u8; wire::MAX_MESSAGE_LEN];
            let now = self.sky_now();
            let out = self.skies[s]
                .shard
                .handle_datagram(now, from, &mut bytes, len, &mut reply);
            if let Some(n) = out.reply {
                let kind = Message::decode(&reply[..n]).unwrap().kind();
                self.replies.push((to, from, kind));
                self.sky_egress += n as u64;
                self.send(to, from, reply[..n].to_vec());
            }
            if let Some(t) = out.in_place {
                self.sky_egress += t.len as u64;
                self.send(to, t.dst, bytes[..t.len].to_vec());
            }
            return;
        }
        if self.deliver_gossip(from, to, &bytes) || self.check_port(from, to, &bytes) {
            return;
        }
        let found = self
            .hosts
            .iter()
            .enumerate()
            .find_map(|(i, h)| match &h.random {
                Some(nat) if h.public.ip() == to.ip() => {
                    nat.inbound(to.port(), from).map(|s| (i, s))
                }
                Some(_) => None,
                None => h
                    .sockets
                    .iter()
                    .find(|s| h.public_of(**s) == to)
                    .map(|s| (i, *s)),
            });
        let Some((i, socket)) = found else {
            return; // nobody there (a NAT mapping that is gone)
        };
        let h = &mut self.hosts[i];
        if h.filtering && !h.sent_to.contains(&(socket, from)) {
            return;
        }
        if let Some(timeout) = h.idle_timeout {
            let last = h.last_used.get(&(socket, from)).copied();
            if last.is_none_or(|t| self.now.saturating_duration_since(t) > timeout) {
                // The NAT forgot this mapping: it lets nothing in on it.
                h.sent_to.remove(&(socket, from));
                return;
            }
            h.last_used.insert((socket, from), self.now);
        }
        h.earth
            .handle_datagram_on(self.now, socket, from, &mut bytes);
        self.flush(i);
    }

    /// Runs the network until `until` (virtual time): datagrams arrive,
    /// and earth and sky timers fire, in time order.
    pub fn run_until(&mut self, until: UnixTime) {
        for i in 0..self.hosts.len() {
            self.flush(i);
        }
        for _ in 0..10_000_000 {
            let next_flight = self.flight.iter().map(|f| f.0).min();
            let next_timer = self
                .hosts
                .iter()
                .filter_map(|h| h.earth.poll_timeout())
                .min();
            let next_sky = self.next_sky_timer();
            let next = [next_flight, next_timer, next_sky]
                .into_iter()
                .flatten()
                .min();
            let Some(next) = next.filter(|n| *n <= until) else {
                self.now = until;
                return;
            };
            self.now = self.now.max(next);
            let (due, rest): (Vec<_>, Vec<_>) =
                self.flight.drain(..).partition(|f| f.0 <= self.now);
            self.flight = rest;
            for (_, from, to, bytes) in due {
                self.deliver(from, to, bytes);
            }
            for i in 0..self.hosts.len() {
                if self.hosts[i]
                    .earth
                    .poll_timeout()
                    .is_some_and(|t| t <= self.now)
                {
                    let now = self.now;
                    self.hosts[i].earth.handle_timeout(now);
                    self.flush(i);
                }
            }
            self.sky_timers();
        }
        panic!("the cores never went idle: a timer that does not move");
    }

    pub fn run_for(&mut self, d: Duration) {
        self.run_until(self.now + d);
    }

    /// Runs in steps of 10 ms until `done` holds or `limit` has passed;
    /// the virtual time it took, if it held.
    pub fn wait_for(&mut self, limit: Duration, done: impl Fn(&Net) -> bool) -> Option<Duration> {
        let start = self.now;
        loop {
            if done(self) {
                return Some(self.now.saturating_duration_since(start));
            }
            if self.now >= start + limit {
                return None;
            }
            self.run_for(Duration::from_millis(10));
        }
    }

    pub fn online(&mut self, i: usize) {
        let now = self.now;
        self.hosts[i].earth.go_online(now);
        self.flush(i);
    }

    pub fn lookup(&mut self, i: usize, friend: &str) -> Result<(SocketAddr, Flags), Failure> {
        let now = self.now;
        self.hosts[i].earth.lookup(now, friend);
        self.flush(i);
        self.run_for(Duration::from_secs(6));
        self.hosts[i]
            .events
            .iter()
            .rev()
            .find_map(|e| match e {
                Event::Lookup { friend: f, result } if f == friend => Some(result.clone()),
                _ => None,
            })
            .expect("a lookup answers within its time limit")
    }

    pub fn take_events(&mut self, i: usize) -> Vec<Event> {
        std::mem::take(&mut self.hosts[i].events)
    }

    /// The version of the view host `i` holds.
    pub fn version_held(&self, i: usize) -> Option<u32> {
        self.hosts[i].earth.ring().map(|(_, v)| v)
    }
}
