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
//! `now` is a [`MonoTime`]: time since the engine's origin, as in the shard.
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
//! **One sky, one rule set.** Every gossip datagram starts with
//! [`PREFIX_LEN`] bytes: a marker and the sender's ring settings (replicas,
//! prefixes, positions). A node refuses gossip from a node whose settings
//! differ ([`GossipError::OtherSettings`]), so two nodes that would compute
//! different owners never share a view; the engine logs both settings and
//! counts it.
//!
//! **Leave is not death.** A node that stops gracefully disseminates its
//! departure first (`departures.rs`); the others report it as
//! [`MemberState::Left`], not down.
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

use sky_proto::time::MonoTime;

use foca::{Foca, Identity, Notification, PostcardCodec, Runtime, State, Timer};
use rand::SeedableRng;
use rand::rngs::SmallRng;
use serde::{Deserialize, Serialize};

use sky_proto::ring::{Ring, RingConfig};
use sky_proto::wire;

mod departures;

use departures::{Departed, Departures, Leaving};

/// The first byte of every gossip datagram (`G`), then the ring settings.
const MARKER: u8 = b'G';
/// Bytes before foca's message: the marker and the four ring settings.
pub const PREFIX_LEN: usize = 5;

/// The ring settings as gossip carries them.
fn settings_of(c: &RingConfig) -> [u8; 4] {
    [c.replicas, c.prefix_v4, c.prefix_v6, c.positions]
}

/// Ring settings, as an operator reads them in a log line.
pub fn describe_settings(s: [u8; 4]) -> String {
    format!(
        "replicas {}, prefixes /{} /{}, positions {}",
        s[0], s[1], s[2], s[3]
    )
}

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
    /// Declared down (it failed) and not back since.
    Down,
    /// Left gracefully (it said so before it stopped) and not back since.
    Left,
}

impl MemberState {
    pub const ALL: [MemberState; 4] = [
        MemberState::Alive,
        MemberState::Suspect,
        MemberState::Down,
        MemberState::Left,
    ];

    /// The `state` metric label.
    pub fn label(self) -> &'static str {
        match self {
            MemberState::Alive => "alive",
            MemberState::Suspect => "suspect",
            MemberState::Down => "down",
            MemberState::Left => "left",
        }
    }

    fn of(state: State, left: bool) -> MemberState {
        match state {
            State::Alive => MemberState::Alive,
            State::Suspect => MemberState::Suspect,
            State::Down if left => MemberState::Left,
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
    /// Left gracefully and not rejoined since; forgotten likewise.
    pub left: usize,
}

impl MemberCounts {
    pub fn get(&self, state: MemberState) -> usize {
        match state {
            MemberState::Alive => self.alive,
            MemberState::Suspect => self.suspect,
            MemberState::Down => self.down,
            MemberState::Left => self.left,
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
    /// From a node whose ring settings (replicas, prefixes, positions)
    /// are not ours: these settings.
    OtherSettings([u8; 4]),
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
    at: MonoTime,
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
    now: MonoTime,
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
            at: self.now + after,
            seq: self.seq,
            timer,
        }));
    }
}

/// This node's membership view: foca, its timers and outgoing datagrams,
/// and the ring the view makes.
pub struct Gossip {
    foca: Foca<NodeId, PostcardCodec, SmallRng, Departures>,
    /// The identities that left (shared with foca's broadcast handler).
    departed: Departed,
    /// Our ring settings, in front of every datagram.
    settings: [u8; 4],
    io: Io,
    config: GossipConfig,
    ring: Ring,
    ring_changed: bool,
    seeds: Vec<SocketAddr>,
    next_seed_announce: Option<MonoTime>,
    left: bool,
    errors: u64,
    stranger_tokens: f64,
    stranger_refilled: MonoTime,
    dropped_to_strangers: u64,
}

/// Datagrams a second a node sends to endpoints that are neither members
/// nor seeds (see [`Gossip::poll_transmit`]).
pub const STRANGER_BUDGET: u32 = 16;

impl Gossip {
    /// A node that knows only itself. `seed` seeds the random choices of
    /// probe targets and gossip fan-out.
    pub fn new(me: NodeId, ring_config: RingConfig, seed: u64, config: GossipConfig) -> Gossip {
        let departed = Departed::default();
        let foca = Foca::with_custom_broadcast(
            me,
            config.swim.clone(),
            SmallRng::seed_from_u64(seed),
            PostcardCodec,
            Departures(departed.clone()),
        );
        Gossip {
            foca,
            departed,
            settings: settings_of(&ring_config),
            io: Io {
                now: MonoTime::ZERO,
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
            stranger_refilled: MonoTime::ZERO,
            dropped_to_strangers: 0,
        }
    }

    /// Announces this node to each seed (gossip endpoints; our own is
    /// skipped), and keeps announcing every `seed_announce_every` to those
    /// that are not active members: a lost announce, a seed that starts
    /// later, or a partition that ended all heal by it.
    pub fn join(&mut self, seeds: &[SocketAddr], now: MonoTime) {
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
        self.next_seed_announce = Some(now + self.config.seed_announce_every);
        self.after_call();
    }

    /// Takes one datagram received on the gossip socket.
    ///
    /// `from` is the datagram's source: a datagram whose sender identity
    /// claims another gossip endpoint is refused ([`GossipError::Spoofed`]),
    /// because foca sends its answers to the claimed identity.
    pub fn handle_datagram(
        &mut self,
        now: MonoTime,
        from: SocketAddr,
        bytes: &[u8],
    ) -> Result<(), GossipError> {
        self.io.now = now;
        let bytes = match bytes.split_first_chunk::<PREFIX_LEN>() {
            Some(([MARKER, settings @ ..], rest)) => {
                if *settings != self.settings {
                    self.errors += 1;
                    return Err(GossipError::OtherSettings(*settings));
                }
                rest
            }
            _ => {
                self.errors += 1;
                return Err(GossipError::Undecodable);
            }
        };
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
    pub fn handle_timeout(&mut self, now: MonoTime) {
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
            self.next_seed_announce = Some(now + self.config.seed_announce_every);
        }
        self.after_call();
    }

    /// When [`Gossip::handle_timeout`] must next be called; `None` before
    /// anything was scheduled.
    pub fn poll_timeout(&self) -> Option<MonoTime> {
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
            let mut out = Vec::with_capacity(PREFIX_LEN + bytes.len());
            out.push(MARKER);
            out.extend_from_slice(&self.settings);
            out.extend_from_slice(&bytes);
            return Some((dst, out));
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
        let elapsed = now.saturating_duration_since(self.stranger_refilled);
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
    pub fn leave(&mut self, now: MonoTime) {
        if self.left {
            return;
        }
        self.io.now = now;
        // Said first, so the others tell a departure from a failure.
        let leaving = Leaving::of(self.foca.identity()).encode();
        if self.foca.add_broadcast(&leaving).is_err() {
            self.errors += 1;
        }
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
        self.foca.iter_membership_state().map(|m| {
            let left = m.state() == State::Down && self.departed.left(m.id());
            (*m.id(), MemberState::of(m.state(), left))
        })
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
                MemberState::Left => counts.left += 1,
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
#[path = "../tests/gossip.rs"]
mod tests;
