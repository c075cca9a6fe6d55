//! Membership: SWIM gossip among sky nodes (SPEC §4), the sans-IO core.
//!
//! [`Gossip`] wraps [`foca`] (SWIM with suspicion, incarnations and
//! dissemination by piggybacking); it does not re-implement the protocol.
//! Like the shard, it never opens a socket, reads a clock or spawns a
//! thread. The engine (`engine/gossip.rs`) drives it:
//!
//! 1. [`Gossip::join`]`(seeds, now)` once, with the seeds' gossip endpoints;
//! 2. [`Gossip::handle_datagram`]`(now, bytes)` for every datagram received
//!    on the gossip socket;
//! 3. [`Gossip::handle_timeout`]`(now)` whenever [`Gossip::poll_timeout`]
//!    has passed;
//! 4. after each of those, [`Gossip::poll_transmit`] until it says `None`,
//!    and [`Gossip::take_ring_change`] to publish a new [`Ring`];
//! 5. [`Gossip::leave`]`(now)` on a graceful stop, then a last flush.
//!
//! `now` is the time since any fixed origin, as in the shard.
//!
//! **The ring.** A node's ring is itself plus every member foca reports
//! active (alive or suspect), each by its *service* endpoint (the one earth
//! clients send to). A new ring is built, and signalled, only when that set
//! of endpoints changes: an identity renewal, a suspicion or a refutation
//! leaves the ring and its version as they are.
//!
//! **Identities.** A [`NodeId`] is a node's gossip endpoint, its service
//! endpoint and a `bump` that orders the identities one gossip endpoint has
//! had. foca keeps one identity per gossip endpoint (its `Identity::addr`,
//! what older foca called `has_same_prefix`): a restarted node, or one that
//! learns it was declared down, comes back under a newer bump and replaces
//! its former self without waiting for the cluster to forget it. The engine
//! starts the bump from the wall clock, so a restart wins over the identity
//! it replaces ([`NodeId::win_addr_conflict`]).
//!
//! **What gossip carries.** Gossip datagrams carry only node identities
//! (the gossip and service endpoints of sky nodes, and a bump) and foca's
//! own protocol fields (message kind, incarnations, member states, probe
//! numbers). Never any earth data: no earth IP, port, virtual address or
//! presence entry reaches this module, and [`NodeId`] has no field that
//! could hold one (SPEC §3 invariant 2).
//!
//! **Hostile input.** Garbage is rejected by foca's decoder and counted
//! ([`Gossip::take_errors`]); nothing here panics on any input (a property
//! test feeds arbitrary bytes). Gossip is not authenticated: whoever can
//! reach the gossip port can claim membership, so the port must be open
//! only to the sky's own nodes.

use std::cmp::{Ordering, Reverse};
use std::collections::{BinaryHeap, VecDeque};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::num::{NonZeroU8, NonZeroUsize};
use std::time::Duration;

use foca::{Foca, Identity, NoCustomBroadcast, Notification, PostcardCodec, Runtime, State, Timer};
use rand::SeedableRng;
use rand::rngs::SmallRng;
use serde::{Deserialize, Serialize};

use crate::ring::{Ring, RingConfig};
use crate::wire;

/// Datagrams queued for sending, at most; beyond it the oldest is dropped
/// (and counted as an error). The engine drains the queue after every
/// call, so this only bounds a caller that forgets to.
const MAX_QUEUED_TRANSMITS: usize = 1024;

/// One sky node as gossip knows it.
///
/// Serialized with postcard inside foca's messages: two socket addresses
/// and a `u16`, nothing else.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct NodeId {
    /// Where this node's gossip socket listens; one identity per gossip
    /// endpoint.
    pub gossip: SocketAddr,
    /// Where earth clients reach it: the endpoint that goes into the
    /// [`Ring`].
    pub service: SocketAddr,
    /// Orders the identities of one gossip endpoint; see
    /// [`NodeId::win_addr_conflict`].
    pub bump: u16,
}

impl NodeId {
    pub fn new(gossip: SocketAddr, service: SocketAddr, bump: u16) -> NodeId {
        NodeId {
            gossip: wire::canonical(gossip),
            service: wire::canonical(service),
            bump,
        }
    }

    /// The identity a seed is announced to before its real identity is
    /// known: its gossip endpoint, an unspecified service endpoint and bump
    /// zero. foca accepts an announce addressed to any identity with the
    /// receiver's gossip endpoint, and the receiver's answer carries its
    /// real identity. A placeholder never becomes a member; should one ever
    /// meet a real identity of the same endpoint, the real one wins (as the
    /// "well-known members" of foca's `bootstrap_with_wellknown` example do).
    pub fn seed(gossip: SocketAddr) -> NodeId {
        NodeId {
            gossip: wire::canonical(gossip),
            service: SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0),
            bump: 0,
        }
    }

    /// Whether this is a [`NodeId::seed`] placeholder.
    pub fn is_placeholder(&self) -> bool {
        self.service.ip().is_unspecified() && self.service.port() == 0
    }
}

/// Serial-number order of bumps (RFC 1982): `a` is newer than `b` when it
/// is less than half the `u16` space ahead, so the order survives wrapping.
/// Exactly half-way apart falls back to plain order, keeping the relation
/// antisymmetric.
fn bump_order(a: u16, b: u16) -> Ordering {
    match a.wrapping_sub(b) {
        0 => Ordering::Equal,
        d if d < 0x8000 => Ordering::Greater,
        d if d > 0x8000 => Ordering::Less,
        _ => a.cmp(&b),
    }
}

impl Identity for NodeId {
    type Addr = SocketAddr;

    /// The next bump: always wins over the identity it replaces.
    fn renew(&self) -> Option<Self> {
        Some(NodeId {
            bump: self.bump.wrapping_add(1),
            ..*self
        })
    }

    /// One identity per gossip endpoint.
    fn addr(&self) -> SocketAddr {
        self.gossip
    }

    /// A real identity beats a placeholder; otherwise the newer bump wins,
    /// and for equal bumps the larger service endpoint, so that every node
    /// decides the same way.
    fn win_addr_conflict(&self, adversary: &Self) -> bool {
        match (self.is_placeholder(), adversary.is_placeholder()) {
            (true, _) => false,
            (false, true) => true,
            (false, false) => match bump_order(self.bump, adversary.bump) {
                Ordering::Equal => endpoint_key(self.service) > endpoint_key(adversary.service),
                o => o == Ordering::Greater,
            },
        }
    }
}

fn endpoint_key(e: SocketAddr) -> ([u8; 16], u16) {
    let ip = match e.ip() {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    };
    (ip, e.port())
}

/// How a member looks from here.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemberState {
    Alive,
    /// Failed a probe; still in the ring until declared down.
    Suspect,
    /// Declared down (failed, or left) and not back since.
    Down,
}

impl MemberState {
    pub const ALL: [MemberState; 3] = [MemberState::Alive, MemberState::Suspect, MemberState::Down];

    /// The `state` metric label.
    pub fn label(self) -> &'static str {
        match self {
            MemberState::Alive => "alive",
            MemberState::Suspect => "suspect",
            MemberState::Down => "down",
        }
    }

    fn of(state: State) -> MemberState {
        match state {
            State::Alive => MemberState::Alive,
            State::Suspect => MemberState::Suspect,
            State::Down => MemberState::Down,
        }
    }
}

/// Members by state, this node included (as alive, until it leaves).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MemberCounts {
    pub alive: usize,
    pub suspect: usize,
    /// Declared down and not rejoined since; forgotten after
    /// `remove_down_after`.
    pub down: usize,
}

impl MemberCounts {
    pub fn get(&self, state: MemberState) -> usize {
        match state {
            MemberState::Alive => self.alive,
            MemberState::Suspect => self.suspect,
            MemberState::Down => self.down,
        }
    }
}

/// Why a datagram was not taken. foca's state is unchanged by any of them
/// except `Rejected`, which foca may have partly applied.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GossipError {
    /// Larger than `max_packet_size`.
    TooBig,
    /// Not a foca message in our codec (garbage, truncated, another
    /// protocol).
    Undecodable,
    /// Decoded, but foca refused it (from our own identity, an indirect
    /// probe of ourselves, …).
    Rejected,
    /// Its sender identity names a gossip endpoint other than the
    /// datagram's source: foca answers the identity, so accepting it would
    /// let anyone aim this node's replies at a third party.
    Spoofed,
}

impl GossipError {
    fn of(e: &foca::Error) -> GossipError {
        match e {
            foca::Error::DataTooBig => GossipError::TooBig,
            foca::Error::Decode(_) | foca::Error::MalformedPacket => GossipError::Undecodable,
            _ => GossipError::Rejected,
        }
    }
}

/// The SWIM settings, and how often seeds are re-announced to.
///
/// The defaults are tuned for the SPEC §6 target — a killed node declared
/// down by every other node within 5 s — while a loss of 20% of all
/// datagrams for a minute makes no live node down. The unit tests check
/// both on a simulated network of 5 nodes in virtual time; the ignored
/// test `many_seeds` repeats them over 2000 seeds (numbers below).
///
/// **Detection of a killed node** takes: the time until some survivor
/// probes it; one probe period until that probe counts as failed (the
/// member becomes *suspect*); `suspect_to_down_after`; and the spread of
/// the *down* update. Each node probes its members round-robin in shuffled
/// order, one every `probe_period` (400 ms): with 4 survivors each probing
/// one of 4 members per period, some survivor probes the dead node within
/// 0.2 s on average and within about one round (1.6 s) in bad cases. Then
/// 0.4 s to fail, 1.5 s of suspicion, and periodic gossip (every 200 ms
/// to 3 members) plus piggybacking spread the verdict in a few hundred ms:
/// ≈ 2.5 s typically, under 4 s at worst. Measured: mean 2.4 s, worst
/// 3.5 s.
///
/// **No false downs under 20% loss.** A probe of a live member fails only
/// if the direct round trip fails (1 − 0.8² = 0.36) *and* every indirect
/// probe fails: an indirect probe is 4 datagrams (ping-req, ping, ack,
/// forwarded ack), failing with 1 − 0.8⁴ ≈ 0.59, and all 3 fail with
/// 0.59³ ≈ 0.21. So ≈ 7.4% of probes raise a false suspicion: ≈ 55 a
/// minute among 5 nodes probing 2.5 times a second. A suspicion is
/// harmless unless the one node whose timer runs hears no refutation for
/// 1.5 s. Every node that learns the suspicion sends it in
/// `max_transmissions` (12) datagrams (all lost: 0.2¹² ≈ 4·10⁻⁹), gossip
/// every 200 ms to 3 of the 4 others brings it to the suspect within a few
/// hundred ms, and the suspect's raised incarnation then travels back in
/// every datagram it sends and every datagram of every node that relays
/// it: some 7 gossip rounds fit in 1.5 s. Measured: one false down in
/// 2000 one-minute runs, i.e. about one in 10⁵ suspicions. Raising
/// `suspect_to_down_after` would buy little more (the measured rate hardly
/// moved between 1.25 s and 2 s) and cost detection time; fewer
/// `max_transmissions` (8) made it five times worse.
///
/// **Partitions heal** three ways: foca announces every 5 s to 2 members
/// it holds down (`periodic_announce_to_down_members`) and tells a member
/// it holds down that it is (`notify_down_members`), which makes that
/// member renew its identity and rejoin; and [`Gossip`] announces every
/// `seed_announce_every` (2 s) to each seed that is not an active member,
/// which also retries a join whose first announce was lost. Down members
/// are remembered for `remove_down_after` (1 h), much longer than the
/// partitions this must heal. Measured: a 2 + 3 split of 30 s is one view
/// again within 4.1 s.
///
/// **Round trips.** A direct ack is awaited `probe_rtt` (150 ms); the
/// indirect probes (two round trips) must fit in the rest of the period
/// (250 ms): fine on loopback and within a continent (RTT ≲ 120 ms). A
/// sky spread around the globe needs longer periods, and gives up the 5 s
/// detection target for them.
#[derive(Clone, Debug)]
pub struct GossipConfig {
    /// foca's SWIM parameters.
    pub swim: foca::Config,
    /// How often seeds that are not active members are announced to again.
    pub seed_announce_every: Duration,
}

impl Default for GossipConfig {
    fn default() -> Self {
        let nz = |n: usize| NonZeroUsize::new(n).expect("non-zero");
        GossipConfig {
            swim: foca::Config {
                probe_period: Duration::from_millis(400),
                probe_rtt: Duration::from_millis(150),
                num_indirect_probes: nz(3),
                max_transmissions: NonZeroU8::new(12).expect("non-zero"),
                suspect_to_down_after: Duration::from_millis(1500),
                remove_down_after: Some(Duration::from_secs(3600)),
                // Below the IPv6 minimum MTU (1280) less headers: never
                // fragmented.
                max_packet_size: nz(1200),
                notify_down_members: true,
                periodic_announce: Some(foca::PeriodicParams {
                    frequency: Duration::from_secs(10),
                    num_members: nz(1),
                }),
                periodic_announce_to_down_members: Some(foca::PeriodicParams {
                    frequency: Duration::from_secs(5),
                    num_members: nz(2),
                }),
                periodic_gossip: Some(foca::PeriodicParams {
                    frequency: Duration::from_millis(200),
                    num_members: nz(3),
                }),
            },
            seed_announce_every: Duration::from_secs(2),
        }
    }
}

/// A timer foca asked for, at an absolute time.
struct Scheduled {
    at: Duration,
    seq: u64,
    timer: Timer<NodeId>,
}

impl PartialEq for Scheduled {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}

impl Eq for Scheduled {}

impl PartialOrd for Scheduled {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Scheduled {
    /// By deadline, then in the order foca asked.
    fn cmp(&self, other: &Self) -> Ordering {
        (self.at, self.seq).cmp(&(other.at, other.seq))
    }
}

/// foca's [`Runtime`]: queues what foca asks for until the caller polls.
struct Io {
    /// The time of the call in progress; `submit_after` is relative to it.
    now: Duration,
    seq: u64,
    timers: BinaryHeap<Reverse<Scheduled>>,
    transmits: VecDeque<(SocketAddr, Vec<u8>)>,
    /// Set by every membership notification; the ring is rebuilt then.
    membership_changed: bool,
    dropped_transmits: u64,
}

impl Runtime<NodeId> for Io {
    fn notify(&mut self, _notification: Notification<'_, NodeId>) {
        self.membership_changed = true;
    }

    fn send_to(&mut self, to: NodeId, data: &[u8]) {
        if self.transmits.len() >= MAX_QUEUED_TRANSMITS {
            self.transmits.pop_front();
            self.dropped_transmits += 1;
        }
        self.transmits.push_back((to.gossip, data.to_vec()));
    }

    fn submit_after(&mut self, timer: Timer<NodeId>, after: Duration) {
        self.seq += 1;
        self.timers.push(Reverse(Scheduled {
            at: self.now.saturating_add(after),
            seq: self.seq,
            timer,
        }));
    }
}

/// This node's membership view: foca, its timers and outgoing datagrams,
/// and the ring the view makes.
pub struct Gossip {
    foca: Foca<NodeId, PostcardCodec, SmallRng, NoCustomBroadcast>,
    io: Io,
    config: GossipConfig,
    ring: Ring,
    ring_changed: bool,
    seeds: Vec<SocketAddr>,
    next_seed_announce: Option<Duration>,
    left: bool,
    errors: u64,
    stranger_tokens: f64,
    stranger_refilled: Duration,
    dropped_to_strangers: u64,
}

/// Datagrams a second a node sends to endpoints that are neither members
/// nor seeds (see [`Gossip::poll_transmit`]).
pub const STRANGER_BUDGET: u32 = 16;

impl Gossip {
    /// A node that knows only itself. `seed` seeds the random choices of
    /// probe targets and gossip fan-out.
    pub fn new(me: NodeId, ring_config: RingConfig, seed: u64, config: GossipConfig) -> Gossip {
        let foca = Foca::new(
            me,
            config.swim.clone(),
            SmallRng::seed_from_u64(seed),
            PostcardCodec,
        );
        Gossip {
            foca,
            io: Io {
                now: Duration::ZERO,
                seq: 0,
                timers: BinaryHeap::new(),
                transmits: VecDeque::new(),
                membership_changed: false,
                dropped_transmits: 0,
            },
            config,
            ring: Ring::new(ring_config, [me.service]),
            ring_changed: false,
            seeds: Vec::new(),
            next_seed_announce: None,
            left: false,
            errors: 0,
            stranger_tokens: f64::from(STRANGER_BUDGET),
            stranger_refilled: Duration::ZERO,
            dropped_to_strangers: 0,
        }
    }

    /// Announces this node to each seed (gossip endpoints; our own is
    /// skipped), and keeps announcing every `seed_announce_every` to those
    /// that are not active members: a lost announce, a seed that starts
    /// later, or a partition that ended all heal by it.
    pub fn join(&mut self, seeds: &[SocketAddr], now: Duration) {
        let me = self.foca.identity().gossip;
        self.seeds.clear();
        for s in seeds.iter().map(|&s| wire::canonical(s)) {
            if s != me && !self.seeds.contains(&s) {
                self.seeds.push(s);
            }
        }
        if self.seeds.is_empty() || self.left {
            return;
        }
        self.io.now = now;
        self.announce_to_seeds();
        self.next_seed_announce = Some(now.saturating_add(self.config.seed_announce_every));
        self.after_call();
    }

    /// Takes one datagram received on the gossip socket.
    ///
    /// `from` is the datagram's source: a datagram whose sender identity
    /// claims another gossip endpoint is refused ([`GossipError::Spoofed`]),
    /// because foca sends its answers to the claimed identity.
    pub fn handle_datagram(
        &mut self,
        now: Duration,
        from: SocketAddr,
        bytes: &[u8],
    ) -> Result<(), GossipError> {
        self.io.now = now;
        let mut codec = PostcardCodec;
        if let Ok(header) = foca::Codec::<NodeId>::decode_header(&mut codec, bytes)
            && wire::canonical(header.src.gossip) != wire::canonical(from)
        {
            self.errors += 1;
            return Err(GossipError::Spoofed);
        }
        let result = self.foca.handle_data(bytes, &mut self.io);
        self.after_call();
        result.map_err(|e| {
            self.errors += 1;
            GossipError::of(&e)
        })
    }

    /// Runs every timer due at `now`.
    pub fn handle_timeout(&mut self, now: Duration) {
        self.io.now = now;
        while self.io.timers.peek().is_some_and(|t| t.0.at <= now) {
            let Some(Reverse(due)) = self.io.timers.pop() else {
                break;
            };
            if self.foca.handle_timer(due.timer, &mut self.io).is_err() {
                self.errors += 1;
            }
        }
        if let Some(at) = self.next_seed_announce
            && at <= now
        {
            self.announce_to_seeds();
            self.next_seed_announce = Some(now.saturating_add(self.config.seed_announce_every));
        }
        self.after_call();
    }

    /// When [`Gossip::handle_timeout`] must next be called; `None` before
    /// anything was scheduled.
    pub fn poll_timeout(&self) -> Option<Duration> {
        let timer = self.io.timers.peek().map(|t| t.0.at);
        match (timer, self.next_seed_announce) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// The next datagram to send: the destination's gossip endpoint and
    /// the payload.
    ///
    /// `Feed`s (the answer to an announce, the one gossip message much
    /// larger than what asks for it) and datagrams to endpoints that are
    /// neither active members nor seeds draw on a small budget,
    /// [`STRANGER_BUDGET`] a second: an attacker who spoofs its source
    /// address can make a node send at most that much to a third party,
    /// whatever it sends. Joins are rare; the budget does not slow them.
    pub fn poll_transmit(&mut self) -> Option<(SocketAddr, Vec<u8>)> {
        while let Some((dst, bytes)) = self.io.transmits.pop_front() {
            // Our own encoding: one header read serves both checks.
            let header = foca::Codec::<NodeId>::decode_header(&mut PostcardCodec, &bytes[..]).ok();
            let message = header.as_ref().map(|h| &h.message);
            // foca 2.0.0 sends `TurnUndead` ("you are down") when a suspicion's
            // timer runs out even if the member refuted the suspicion in time
            // (`handle_timer`, `ChangeSuspectToDown`: the message is sent whether
            // or not the member was declared down). The member would then renew
            // its identity, and the cluster would hear its old identity declared
            // down: under loss, a live node flaps out of rings. A `TurnUndead` to
            // a member this node holds active is that case, and is not sent; one
            // to a member held down (or to an identity since replaced) is sent, as
            // it is what lets partitions heal.
            if message == Some(&foca::Message::TurnUndead)
                && header.as_ref().is_some_and(|h| self.is_active(&h.dst))
            {
                continue;
            }
            let feed = message == Some(&foca::Message::Feed);
            if (feed || !self.is_known(dst)) && !self.take_stranger_token() {
                self.dropped_to_strangers += 1;
                self.errors += 1;
                continue;
            }
            return Some((dst, bytes));
        }
        None
    }

    /// Datagrams not sent because the budget for strangers was spent.
    pub fn dropped_to_strangers(&self) -> u64 {
        self.dropped_to_strangers
    }

    fn is_known(&self, dst: SocketAddr) -> bool {
        let dst = wire::canonical(dst);
        self.seeds.iter().any(|s| wire::canonical(*s) == dst)
            || self
                .foca
                .iter_members()
                .any(|m| wire::canonical(m.id().gossip) == dst)
    }

    /// A token bucket of [`STRANGER_BUDGET`] datagrams a second, as deep.
    fn take_stranger_token(&mut self) -> bool {
        let now = self.io.now;
        let elapsed = now.saturating_sub(self.stranger_refilled);
        let refill = elapsed.as_secs_f64() * f64::from(STRANGER_BUDGET);
        if refill >= 1.0 {
            self.stranger_tokens = (self.stranger_tokens + refill).min(f64::from(STRANGER_BUDGET));
            self.stranger_refilled = now;
        }
        if self.stranger_tokens >= 1.0 {
            self.stranger_tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Whether foca holds `id` as an active (alive or suspect) member.
    fn is_active(&self, id: &NodeId) -> bool {
        self.foca.iter_members().any(|m| m.id() == id)
    }

    /// Leaves the sky gracefully: tells a few members this identity is
    /// down, so the rest learn it by gossip instead of by failed probes.
    /// Nothing more is announced afterwards; flush, then stop.
    pub fn leave(&mut self, now: Duration) {
        if self.left {
            return;
        }
        self.io.now = now;
        if self.foca.leave_cluster(&mut self.io).is_err() {
            self.errors += 1;
        }
        self.left = true;
        self.next_seed_announce = None;
        // Our own ring does not change by leaving: the node is stopping.
        self.io.membership_changed = false;
    }

    /// The current ring: this node and every active member.
    pub fn ring(&self) -> &Ring {
        &self.ring
    }

    /// The new ring, once, if the set of members changed since the last
    /// call.
    pub fn take_ring_change(&mut self) -> Option<Ring> {
        if std::mem::take(&mut self.ring_changed) {
            Some(self.ring.clone())
        } else {
            None
        }
    }

    /// This node's current identity (its bump changes when it renews).
    pub fn identity(&self) -> NodeId {
        *self.foca.identity()
    }

    /// Every member known, active or down, with its state; not this node.
    pub fn members(&self) -> impl Iterator<Item = (NodeId, MemberState)> + '_ {
        self.foca
            .iter_membership_state()
            .map(|m| (*m.id(), MemberState::of(m.state())))
    }

    /// The state of the member whose gossip endpoint is `gossip`.
    pub fn member_state(&self, gossip: SocketAddr) -> Option<MemberState> {
        let gossip = wire::canonical(gossip);
        self.members()
            .find(|(id, _)| id.gossip == gossip)
            .map(|(_, s)| s)
    }

    /// Members by state, this node counted as alive until it leaves.
    pub fn member_counts(&self) -> MemberCounts {
        let mut counts = MemberCounts {
            alive: usize::from(!self.left),
            ..MemberCounts::default()
        };
        for (_, state) in self.members() {
            match state {
                MemberState::Alive => counts.alive += 1,
                MemberState::Suspect => counts.suspect += 1,
                MemberState::Down => counts.down += 1,
            }
        }
        counts
    }

    /// Errors since the last call: datagrams refused (garbage, too big,
    /// refused by foca), timers foca failed on, transmits dropped from a
    /// full queue.
    pub fn take_errors(&mut self) -> u64 {
        std::mem::take(&mut self.errors) + std::mem::take(&mut self.io.dropped_transmits)
    }

    fn announce_to_seeds(&mut self) {
        if self.left {
            return;
        }
        for i in 0..self.seeds.len() {
            let seed = self.seeds[i];
            let active = self.foca.iter_members().any(|m| m.id().gossip == seed);
            if !active
                && self
                    .foca
                    .announce(NodeId::seed(seed), &mut self.io)
                    .is_err()
            {
                self.errors += 1;
            }
        }
    }

    /// Rebuilds the ring after a membership notification; signals a change
    /// only if the set of service endpoints differs.
    fn after_call(&mut self) {
        if !std::mem::take(&mut self.io.membership_changed) || self.left {
            return;
        }
        let me = self.foca.identity().service;
        let ring = Ring::new(
            self.ring.config(),
            std::iter::once(me).chain(self.foca.iter_members().map(|m| m.id().service)),
        );
        if ring != self.ring {
            self.ring = ring;
            self.ring_changed = true;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use foca::Codec;
    use rand::RngExt;
    use std::collections::HashMap;

    fn node_id(i: usize, bump: u16) -> NodeId {
        let ip = IpAddr::V4(Ipv4Addr::new(10, 0, 0, i as u8 + 1));
        NodeId::new(SocketAddr::new(ip, 7701), SocketAddr::new(ip, 7700), bump)
    }

    fn slash32() -> RingConfig {
        RingConfig {
            prefix_v4: 32,
            ..RingConfig::default()
        }
    }

    struct Sim {
        gossip: Gossip,
        up: bool,
    }

    /// Datagram in flight: (arrival, sequence, destination, source,
    /// payload).
    type InFlight = Reverse<(Duration, u64, usize, SocketAddr, Vec<u8>)>;

    /// Nodes on a simulated network in virtual time: 1–5 ms latency,
    /// optional random loss from a seeded generator, optional partition.
    struct Net {
        nodes: Vec<Sim>,
        by_gossip: HashMap<SocketAddr, usize>,
        now: Duration,
        in_flight: BinaryHeap<InFlight>,
        seq: u64,
        rng: SmallRng,
        loss: f64,
        /// The side of the partition each node is on, if partitioned.
        sides: Option<Vec<u8>>,
        /// Identities seen in any datagram header.
        seen: Vec<NodeId>,
    }

    impl Net {
        /// `n` nodes, each seeded with node 0, joined at time zero.
        fn new(n: usize, seed: u64) -> Net {
            Net::with_config(n, seed, GossipConfig::default())
        }

        fn with_config(n: usize, seed: u64, config: GossipConfig) -> Net {
            let mut net = Net {
                nodes: Vec::new(),
                by_gossip: HashMap::new(),
                now: Duration::ZERO,
                in_flight: BinaryHeap::new(),
                seq: 0,
                rng: SmallRng::seed_from_u64(seed),
                loss: 0.0,
                sides: None,
                seen: Vec::new(),
            };
            for i in 0..n {
                let id = node_id(i, 1);
                let gossip = Gossip::new(
                    id,
                    slash32(),
                    seed.wrapping_mul(1000) + i as u64,
                    config.clone(),
                );
                net.by_gossip.insert(id.gossip, i);
                net.nodes.push(Sim { gossip, up: true });
            }
            let seeds = [node_id(0, 1).gossip];
            for i in 0..n {
                net.nodes[i].gossip.join(&seeds, Duration::ZERO);
            }
            net
        }

        fn flush(&mut self) {
            for i in 0..self.nodes.len() {
                while let Some((dst, bytes)) = self.nodes[i].gossip.poll_transmit() {
                    let header: foca::Header<NodeId> =
                        PostcardCodec.decode_header(&bytes[..]).expect("a header");
                    for id in [header.src, header.dst] {
                        if !self.seen.contains(&id) {
                            self.seen.push(id);
                        }
                    }
                    let Some(&to) = self.by_gossip.get(&dst) else {
                        continue;
                    };
                    let lost = self.loss > 0.0 && self.rng.random::<f64>() < self.loss;
                    let cut = self.sides.as_ref().is_some_and(|s| s[i] != s[to]);
                    if lost || cut {
                        continue;
                    }
                    let latency = Duration::from_micros(self.rng.random_range(1000..5000));
                    self.seq += 1;
                    let from = self.nodes[i].gossip.identity().gossip;
                    self.in_flight
                        .push(Reverse((self.now + latency, self.seq, to, from, bytes)));
                }
            }
        }

        /// Runs every event up to `now + d`, calling `each` after each one.
        fn run_for(&mut self, d: Duration, mut each: impl FnMut(&Net)) {
            let end = self.now + d;
            loop {
                self.flush();
                let timer = self
                    .nodes
                    .iter()
                    .filter(|n| n.up)
                    .filter_map(|n| n.gossip.poll_timeout())
                    .min();
                let datagram = self.in_flight.peek().map(|d| d.0.0);
                let next = match (timer, datagram) {
                    (Some(a), Some(b)) => a.min(b),
                    (a, b) => a.or(b).unwrap_or(end),
                };
                if next > end {
                    self.now = end;
                    return;
                }
                self.now = next;
                if datagram == Some(next) {
                    let Reverse((_, _, to, from, bytes)) = self.in_flight.pop().unwrap();
                    if self.nodes[to].up {
                        let _ = self.nodes[to].gossip.handle_datagram(next, from, &bytes);
                    }
                } else {
                    for n in self.nodes.iter_mut().filter(|n| n.up) {
                        if n.gossip.poll_timeout().is_some_and(|t| t <= next) {
                            n.gossip.handle_timeout(next);
                        }
                    }
                }
                each(self);
            }
        }

        /// Runs until `done` holds (checked after every event) or `limit`
        /// passes; returns the virtual time it took.
        fn run_until(&mut self, limit: Duration, done: impl Fn(&Net) -> bool) -> Option<Duration> {
            let start = self.now;
            let end = start + limit;
            while self.now < end {
                if done(self) {
                    return Some(self.now - start);
                }
                self.run_for(Duration::from_millis(10), |_| {});
            }
            done(self).then(|| self.now - start)
        }

        fn live(&self) -> impl Iterator<Item = &Gossip> {
            self.nodes.iter().filter(|n| n.up).map(|n| &n.gossip)
        }

        /// Every live node has a ring of `members` with one version.
        fn one_view(&self, members: usize) -> bool {
            let mut versions = self.live().map(|g| (g.ring().version(), g.ring().len()));
            let first = versions.next().unwrap();
            first.1 == members && versions.all(|v| v == first)
        }

        fn joined(n: usize, seed: u64) -> Net {
            let mut net = Net::new(n, seed);
            let took = net.run_until(Duration::from_secs(10), |net| net.one_view(n));
            assert!(took.is_some(), "seed {seed}: {n} nodes never agreed");
            net
        }

        fn stop(&mut self, i: usize) {
            self.nodes[i].up = false;
        }
    }

    #[test]
    fn five_nodes_join_through_one_seed_and_agree_on_the_ring() {
        for seed in 0..10 {
            let mut net = Net::new(5, seed);
            let took = net.run_until(Duration::from_secs(10), |net| net.one_view(5));
            let took = took.unwrap_or_else(|| panic!("seed {seed}: no agreement"));
            assert!(took < Duration::from_secs(3), "seed {seed}: took {took:?}");
            let ring = net.nodes[3].gossip.ring().clone();
            for i in 0..5 {
                assert!(ring.contains(node_id(i, 1).service));
                let counts = net.nodes[i].gossip.member_counts();
                assert_eq!(
                    counts,
                    MemberCounts {
                        alive: 5,
                        suspect: 0,
                        down: 0
                    }
                );
            }
            // Every change was signalled, the last one being this ring.
            for n in &mut net.nodes {
                let mut last = None;
                while let Some(r) = n.gossip.take_ring_change() {
                    last = Some(r);
                }
                assert_eq!(last.as_ref(), Some(&ring));
                assert_eq!(n.gossip.take_ring_change(), None);
            }
            // Datagrams named sky nodes only: their real identities, or the
            // placeholder a seed is first announced to.
            for id in &net.seen {
                let i = net.by_gossip[&id.gossip];
                assert!(*id == node_id(i, 1) || *id == NodeId::seed(node_id(i, 1).gossip));
            }
        }
    }

    #[test]
    fn a_stopped_node_is_declared_down_by_every_other_within_5_s() {
        for seed in 0..40 {
            let mut net = Net::joined(5, seed);
            net.run_for(Duration::from_secs(5), |_| {});
            let dead = (seed % 5) as usize;
            let gone = node_id(dead, 1);
            net.stop(dead);
            let took = net.run_until(Duration::from_secs(10), |net| {
                net.live()
                    .all(|g| g.member_state(gone.gossip) == Some(MemberState::Down))
            });
            let took = took.unwrap_or_else(|| panic!("seed {seed}: never declared down"));
            assert!(
                took <= Duration::from_secs(5),
                "seed {seed}: declared down by all after {took:?}"
            );
            assert!(net.one_view(4), "seed {seed}");
            assert!(net.live().all(|g| !g.ring().contains(gone.service)));
            assert!(net.live().all(|g| g.member_counts().down == 1));
        }
    }

    #[test]
    fn a_node_that_leaves_is_dropped_by_the_others_at_once() {
        for seed in 0..10 {
            let mut net = Net::joined(5, seed);
            net.run_for(Duration::from_secs(2), |_| {});
            let leaving = 4;
            let gone = node_id(leaving, 1);
            net.nodes[leaving].gossip.leave(net.now);
            net.flush();
            net.stop(leaving);
            let took = net.run_until(Duration::from_secs(5), |net| {
                net.live().all(|g| !g.ring().contains(gone.service))
            });
            let took = took.unwrap_or_else(|| panic!("seed {seed}: never dropped"));
            assert!(took < Duration::from_secs(1), "seed {seed}: took {took:?}");
            assert!(net.one_view(4));
        }
    }

    #[test]
    fn twenty_percent_loss_for_a_minute_makes_no_live_node_down() {
        for seed in 0..10 {
            let mut net = Net::joined(5, seed);
            net.loss = 0.2;
            let mut downs = 0;
            net.run_for(Duration::from_secs(60), |net| {
                downs = downs.max(net.live().map(|g| g.member_counts().down).sum::<usize>());
            });
            assert_eq!(downs, 0, "seed {seed}: a live node was declared down");
            net.loss = 0.0;
            assert!(
                net.run_until(Duration::from_secs(5), |net| net.one_view(5))
                    .is_some()
            );
        }
    }

    #[test]
    fn a_partition_of_two_and_three_heals_into_one_view_within_30_s() {
        for seed in 0..10 {
            let mut net = Net::joined(5, seed);
            net.sides = Some(vec![0, 0, 1, 1, 1]);
            net.run_for(Duration::from_secs(30), |_| {});
            // Each side has its own view by now.
            for i in 0..5 {
                let side = if i < 2 { 2 } else { 3 };
                assert_eq!(net.nodes[i].gossip.ring().len(), side, "seed {seed}");
            }
            net.sides = None;
            let took = net.run_until(Duration::from_secs(30), |net| net.one_view(5));
            assert!(took.is_some(), "seed {seed}: never healed");
            assert!(net.live().all(|g| g.member_counts().down == 0));
        }
    }

    #[test]
    fn a_restarted_node_replaces_its_former_identity() {
        for seed in 0..10 {
            let mut net = Net::joined(5, seed);
            let old = node_id(2, 1);
            net.stop(2);
            // Declared down first, or restarted before anyone noticed.
            let downtime = if seed % 2 == 0 { 6 } else { 0 };
            net.run_for(Duration::from_secs(downtime), |_| {});
            let restarted = node_id(2, 2);
            let mut gossip = Gossip::new(restarted, slash32(), seed + 77, GossipConfig::default());
            gossip.join(&[node_id(0, 1).gossip], net.now);
            net.nodes[2] = Sim { gossip, up: true };
            let took = net.run_until(Duration::from_secs(5), |net| {
                net.one_view(5)
                    && net.live().all(|g| g.member_counts().down == 0)
                    && net
                        .live()
                        .filter(|g| g.identity() != restarted)
                        .all(|g| g.members().any(|(id, _)| id == restarted))
            });
            assert!(took.is_some(), "seed {seed}: the restart never took over");
            for (i, n) in net.nodes.iter().enumerate().filter(|(i, _)| *i != 2) {
                let state = n.gossip.member_state(old.gossip);
                assert_eq!(state, Some(MemberState::Alive), "node {i}");
                assert!(n.gossip.members().all(|(id, _)| id != old));
            }
        }
    }

    #[test]
    fn a_node_joins_a_seed_that_starts_later() {
        let mut net = Net::new(2, 7);
        net.stop(0);
        net.run_for(Duration::from_secs(5), |_| {});
        net.nodes[0].up = true;
        let took = net.run_until(Duration::from_secs(5), |net| net.one_view(2));
        assert!(took.is_some());
    }

    /// The tuning check behind [`GossipConfig`]'s numbers, over many more
    /// seeds than the tests above (about a minute in release):
    /// `cargo test --release --lib gossip::tests::many_seeds -- --ignored --nocapture`
    #[test]
    #[ignore]
    fn many_seeds() {
        let runs = 2000;
        let (mut false_downs, mut worst, mut total, mut heal) =
            (0, Duration::ZERO, Duration::ZERO, Duration::ZERO);
        for seed in 0..runs {
            let mut net = Net::joined(5, seed);
            net.loss = 0.2;
            let mut downs = 0;
            net.run_for(Duration::from_secs(60), |net| {
                downs = downs.max(net.live().map(|g| g.member_counts().down).sum::<usize>());
            });
            false_downs += usize::from(downs > 0);

            let mut net = Net::joined(5, seed + runs);
            net.run_for(Duration::from_secs(3), |_| {});
            let gone = node_id((seed % 5) as usize, 1);
            net.stop((seed % 5) as usize);
            let took = net.run_until(Duration::from_secs(20), |net| {
                net.live()
                    .all(|g| g.member_state(gone.gossip) == Some(MemberState::Down))
            });
            let took = took.expect("declared down");
            worst = worst.max(took);
            total += took;

            let mut net = Net::joined(5, seed + 2 * runs);
            net.sides = Some(vec![0, 0, 1, 1, 1]);
            net.run_for(Duration::from_secs(30), |_| {});
            net.sides = None;
            let took = net.run_until(Duration::from_secs(60), |net| net.one_view(5));
            heal = heal.max(took.expect("healed"));
        }
        eprintln!(
            "{runs} seeds: runs with a false down under 20% loss {false_downs}; \
             detection mean {:?}, worst {worst:?}; partition healed within {heal:?}",
            total / runs as u32
        );
        assert!(worst <= Duration::from_secs(5));
        assert!(heal <= Duration::from_secs(30));
        assert!(false_downs * 200 <= runs as usize, "more than 0.5%");
    }

    #[test]
    fn identities_order_by_bump_and_placeholders_lose() {
        let a = node_id(0, 1);
        let renewed = a.renew().unwrap();
        assert!(renewed.win_addr_conflict(&a));
        assert!(!a.win_addr_conflict(&renewed));
        let wrapped = node_id(0, u16::MAX);
        assert!(wrapped.renew().unwrap().win_addr_conflict(&wrapped));
        let seed = NodeId::seed(a.gossip);
        assert!(seed.is_placeholder() && !a.is_placeholder());
        assert!(a.win_addr_conflict(&seed));
        assert!(!seed.win_addr_conflict(&a));
        assert_eq!(seed.addr(), a.addr());
        // Half-way apart still decides one way.
        let (x, y) = (node_id(0, 0), node_id(0, 0x8000));
        assert_ne!(x.win_addr_conflict(&y), y.win_addr_conflict(&x));
        // Equal bumps, different service endpoints: one way too.
        let other = NodeId::new(a.gossip, "10.9.9.9:7700".parse().unwrap(), 1);
        assert_ne!(a.win_addr_conflict(&other), other.win_addr_conflict(&a));
    }

    #[test]
    fn an_identity_that_is_not_its_source_is_refused_and_not_answered() {
        let mut a = Gossip::new(node_id(0, 1), slash32(), 1, GossipConfig::default());
        let mut b = Gossip::new(node_id(1, 1), slash32(), 2, GossipConfig::default());
        b.join(&[node_id(0, 1).gossip], Duration::ZERO);
        let (dst, announce) = b.poll_transmit().expect("an announce");
        assert_eq!(dst, node_id(0, 1).gossip);
        // Sent from elsewhere (a spoofer aiming a's answer at b).
        let victim: SocketAddr = "192.0.2.9:7701".parse().unwrap();
        assert_eq!(
            a.handle_datagram(Duration::ZERO, victim, &announce),
            Err(GossipError::Spoofed)
        );
        assert_eq!(
            a.poll_transmit(),
            None,
            "nothing sent for a spoofed announce"
        );
        assert_eq!(a.take_errors(), 1);
        assert_eq!(a.ring().len(), 1, "and nobody joined");
        // From its real source it joins.
        a.handle_datagram(Duration::ZERO, node_id(1, 1).gossip, &announce)
            .unwrap();
        assert_eq!(a.poll_transmit().map(|t| t.0), Some(node_id(1, 1).gossip));
    }

    #[test]
    fn answers_to_announces_are_held_to_the_strangers_budget() {
        let mut a = Gossip::new(node_id(0, 1), slash32(), 1, GossipConfig::default());
        // 200 distinct joiners announce in the same second.
        let mut sent = 0;
        for i in 1..=200 {
            let id = node_id(i, 1);
            let mut b = Gossip::new(id, slash32(), i as u64, GossipConfig::default());
            b.join(&[node_id(0, 1).gossip], Duration::ZERO);
            let (_, announce) = b.poll_transmit().expect("an announce");
            let now = Duration::from_millis(i as u64);
            a.handle_datagram(now, id.gossip, &announce).unwrap();
            while a.poll_transmit().is_some() {
                sent += 1;
            }
        }
        // A full bucket plus what refilled in 200 ms.
        let most = STRANGER_BUDGET as usize + (STRANGER_BUDGET as usize / 5) + 1;
        assert!(sent <= most, "{sent} feeds in 0.2 s");
        assert!(sent >= STRANGER_BUDGET as usize);
        assert_eq!(a.dropped_to_strangers() as usize, 200 - sent);
    }

    #[test]
    fn a_lone_node_rings_itself_and_asks_its_seeds_again() {
        let me = node_id(0, 1);
        let mut g = Gossip::new(me, slash32(), 1, GossipConfig::default());
        assert_eq!(g.ring().members().len(), 1);
        assert!(g.ring().contains(me.service));
        assert_eq!(g.poll_timeout(), None);
        g.join(&[me.gossip, node_id(1, 1).gossip], Duration::ZERO);
        let (dst, _) = g.poll_transmit().expect("an announce");
        assert_eq!(dst, node_id(1, 1).gossip, "never to itself");
        assert_eq!(g.poll_transmit(), None);
        let next = g.poll_timeout().unwrap();
        g.handle_timeout(next);
        assert_eq!(g.poll_transmit().map(|t| t.0), Some(node_id(1, 1).gossip));
        assert_eq!(g.take_ring_change(), None);
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..1400)) {
            let mut g = Gossip::new(node_id(0, 1), slash32(), 1, GossipConfig::default());
            let r = g.handle_datagram(Duration::ZERO, node_id(1, 1).gossip, &bytes);
            let errors = g.take_errors();
            proptest::prop_assert_eq!(errors, u64::from(r.is_err()));
        }
    }
}
