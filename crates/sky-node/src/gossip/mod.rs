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
//! it replaces (`NodeId::win_addr_conflict`, foca's `Identity`).
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
//! **Nobody can forge it.** Every datagram is signed with the sender's
//! identity key, and an identity enters this node's view only after it
//! proved its gossip endpoint (a cookie round trip) and its service
//! endpoint (a sky `ping`) to this node (`auth.rs`). Updates about third
//! nodes are screened before foca sees them (`screen.rs`): nobody but a
//! node's own failure detector concludes "down", and a member's word about
//! a stranger only starts our own proof of it.
//!
//! **Hostile input.** Garbage is rejected by foca's decoder and counted
//! ([`Gossip::take_errors`]), forged and unproven datagrams separately
//! ([`Gossip::take_refusals`]); nothing here panics on any input (a
//! property test feeds arbitrary bytes).

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashSet, VecDeque};
use std::net::SocketAddr;

use sky_proto::time::MonoTime;

use foca::{Foca, PostcardCodec, State};
use rand::SeedableRng;
use rand::rngs::SmallRng;

use sky_proto::ring::{Ring, RingConfig};
use sky_proto::wire;

mod auth;
mod config;
mod departures;
mod id;
mod io;
mod screen;

pub use config::GossipConfig;
pub use id::NodeId;

use auth::{Admission, Bucket, COOKIE_MARKER, COOKIE_REPLY_LEN, verify};
pub use auth::{NodeKey, PROBES_PER_IP, SIG_LEN, public_key_of};
use departures::{Departed, Departures, Leaving};
use io::Io;
use screen::{Known, screen};

/// The first byte of every gossip datagram (`G`), then the ring settings.
const MARKER: u8 = b'G';
/// Bytes before foca's message: the marker, the four ring settings, the
/// cookie the receiver gave the sender (zeros before it gave one) and the
/// cookie the sender offers the receiver (`auth.rs`).
pub const PREFIX_LEN: usize = 21;

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
    /// Its signature does not verify under the sender identity's key.
    Forged,
    /// From an identity that has not proven its endpoints yet (it was sent
    /// a cookie, or its service endpoint a ping), or one a closed sky does
    /// not list.
    Unproven,
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

/// This node's membership view: foca, its timers and outgoing datagrams,
/// and the ring the view makes.
pub struct Gossip {
    foca: Foca<NodeId, PostcardCodec, SmallRng, Departures>,
    /// Signs every datagram we send.
    key: NodeKey,
    /// Cookies, proofs of endpoints, checks, a closed sky (`auth.rs`).
    admission: Admission,
    /// Datagrams admission asks to send (cookie replies, pings), sent
    /// before foca's, with the budget each draws on.
    proofs: VecDeque<(SocketAddr, Vec<u8>, Spend)>,
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
    refused: Refusals,
    /// What may go to strangers: answers to unproven sources, and feeds.
    strangers: Bucket,
    /// What may go to identities members told us of, to prove them.
    vouched: Bucket,
    dropped_to_strangers: u64,
    /// Our incarnation as our last datagram said it (foca does not tell).
    my_incarnation: foca::Incarnation,
}

/// Which budget a datagram draws on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Spend {
    Nothing,
    Strangers,
    Vouched,
}

/// Datagrams a second a node sends to endpoints that are neither members
/// nor seeds in answer to what they sent (see [`Gossip::poll_transmit`]).
pub const STRANGER_BUDGET: u32 = 16;

/// Datagrams a second a node sends to prove identities its members told it
/// of (announces, pings): a node joining a sky of 2 000 proves them all in
/// about half a minute; a lying member makes it send at most this much to
/// a third party.
pub const VOUCHED_BUDGET: u32 = 256;

/// Updates about strangers proven per datagram, at most.
const PROVE_PER_DATAGRAM: usize = 32;

/// Datagrams refused since the last call, by reason.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Refusals {
    /// Signatures that did not verify.
    pub forged: u64,
    /// From identities that have not proven their endpoints (they were
    /// sent a cookie or a ping), or that a closed sky does not list.
    pub unproven: u64,
}

impl Gossip {
    /// A node that knows only itself, signing with `secret`'s identity key
    /// (`me.key` is set to its public half). `seed` seeds the random
    /// choices of probe targets and gossip fan-out.
    pub fn new(
        me: NodeId,
        secret: [u8; 32],
        ring_config: RingConfig,
        seed: u64,
        config: GossipConfig,
    ) -> Gossip {
        let key = NodeKey::from_secret(secret);
        let me = me.with_key(key.public());
        let admission = Admission::new(secret, config.closed_sky.clone());
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
            key,
            admission,
            proofs: VecDeque::new(),
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
            refused: Refusals::default(),
            strangers: Bucket::new(STRANGER_BUDGET),
            vouched: Bucket::new(VOUCHED_BUDGET),
            dropped_to_strangers: 0,
            my_incarnation: 0,
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

    /// Takes one datagram received on the gossip socket: a gossip datagram,
    /// a cookie another node gave us, or a node's `pong` to our ping.
    ///
    /// `from` is the datagram's source: a datagram whose sender identity
    /// claims another gossip endpoint is refused ([`GossipError::Spoofed`]),
    /// because foca sends its answers to the claimed identity. One whose
    /// signature fails is [`GossipError::Forged`]; one from an identity
    /// not yet proven is [`GossipError::Unproven`] (and starts its proof).
    pub fn handle_datagram(
        &mut self,
        now: MonoTime,
        from: SocketAddr,
        bytes: &[u8],
    ) -> Result<(), GossipError> {
        self.io.now = now;
        let from = wire::canonical(from);
        match bytes.first() {
            Some(&COOKIE_MARKER) if bytes.len() == COOKIE_REPLY_LEN => {
                self.on_cookie(from, bytes);
                return Ok(());
            }
            Some(&wire::VERSION) => {
                if let Ok(wire::Message::Pong { tag }) = wire::Message::decode(bytes) {
                    self.on_pong(from, tag);
                }
                return Ok(());
            }
            _ => {}
        }
        let result = self.take_gossip(now, from, bytes);
        match result {
            Err(GossipError::Forged) => self.refused.forged += 1,
            Err(GossipError::Unproven) => self.refused.unproven += 1,
            Err(_) => self.errors += 1,
            Ok(()) => {}
        }
        result
    }

    fn take_gossip(
        &mut self,
        now: MonoTime,
        from: SocketAddr,
        bytes: &[u8],
    ) -> Result<(), GossipError> {
        let Some((signed, sig)) = bytes.split_last_chunk::<SIG_LEN>() else {
            return Err(GossipError::Undecodable);
        };
        let (cookie, offer, body) = match signed.split_first_chunk::<PREFIX_LEN>() {
            Some(([MARKER, a, b, c, d, cookies @ ..], rest)) => {
                if [*a, *b, *c, *d] != self.settings {
                    return Err(GossipError::OtherSettings([*a, *b, *c, *d]));
                }
                let (cookie, offer) = cookies.split_at(8);
                let cookie = wire::Cookie(cookie.try_into().unwrap_or_default());
                let offer = wire::Cookie(offer.try_into().unwrap_or_default());
                (cookie, offer, rest)
            }
            _ => return Err(GossipError::Undecodable),
        };
        if body.len() > self.config.swim.max_packet_size.get() {
            return Err(GossipError::TooBig);
        }
        let Ok(header) = foca::Codec::<NodeId>::decode_header(&mut PostcardCodec, body) else {
            return Err(GossipError::Undecodable);
        };
        let src = header.src;
        if wire::canonical(src.gossip) != from {
            return Err(GossipError::Spoofed);
        }
        if !self.admission.allowed(&src.key) {
            return Err(GossipError::Unproven);
        }
        // An identity outside our view must prove its endpoints: first
        // the cookie (cheap, before any signature is checked).
        let in_view = self.admission.proven(&src)
            || self.foca.iter_membership_state().any(|m| *m.id() == src);
        if !in_view && !self.admission.cookie_ok(now, from, cookie) {
            if let Some(reply) = self.admission.cookie_reply(from, bytes.len()) {
                self.proofs.push_back((from, reply, Spend::Strangers));
            }
            return Err(GossipError::Unproven);
        }
        if !verify(&src.key, signed, sig) {
            return Err(GossipError::Forged);
        }
        self.admission.keep_offer(from, offer);
        if !in_view && !self.admission.gossip_proven(&src) {
            if let Some((dst, ping)) = self.admission.prove(now, &src) {
                self.proofs.push_back((dst, ping, Spend::Strangers));
            }
            return Err(GossipError::Unproven);
        }
        let me = *self.foca.identity();
        let known = |id: &NodeId| self.known(id);
        let Ok(screened) = screen(body, &me, self.my_incarnation, known, departures::departing)
        else {
            return Err(GossipError::Undecodable);
        };
        let result = self.foca.handle_data(&screened.body, &mut self.io);
        for id in screened.strangers.into_iter().take(PROVE_PER_DATAGRAM) {
            self.prove_stranger(id);
        }
        self.after_call();
        result.map_err(|e| GossipError::of(&e))
    }

    /// What this node holds about `id`, for the screen.
    fn known(&self, id: &NodeId) -> Known {
        match self.foca.iter_membership_state().find(|m| m.id() == id) {
            Some(m) => Known::Member {
                incarnation: m.incarnation(),
                left: self.departed.left(id),
            },
            None => Known::Stranger,
        }
    }

    /// A member told us of `id`: ping its service endpoint and announce to
    /// it, which starts both proofs (it sends us a cookie, we answer with
    /// it, and it pings our service endpoint; then it announces to us with
    /// the cookie we offered).
    fn prove_stranger(&mut self, id: NodeId) {
        if self.left
            || !self.admission.allowed(&id.key)
            || !self.admission.may_announce(self.io.now, &id)
            || id.gossip == self.foca.identity().gossip
        {
            return;
        }
        self.prove_vouched(id);
    }

    /// Pings `id`'s service endpoint (unless it proved it) and announces.
    fn prove_vouched(&mut self, id: NodeId) {
        if let Some((dst, ping)) = self.admission.prove(self.io.now, &id) {
            self.proofs.push_back((dst, ping, Spend::Vouched));
        }
        self.announce_to(id);
    }

    fn announce_to(&mut self, id: NodeId) {
        self.admission.announcing_to(self.io.now, id);
        if self.foca.announce(id, &mut self.io).is_err() {
            self.errors += 1;
        }
    }

    /// A cookie another node gave us: our next datagrams to it carry it;
    /// an identity we announce to (a seed, one being proven) hears from us
    /// again at once.
    fn on_cookie(&mut self, from: SocketAddr, bytes: &[u8]) {
        let mut c = [0u8; 8];
        c.copy_from_slice(&bytes[1..]);
        let expected = self.seeds.contains(&from) || self.is_member(from);
        match self.admission.keep_cookie(from, wire::Cookie(c), expected) {
            Some(Some(id)) => self.announce_to(id),
            Some(None) if self.seeds.contains(&from) => self.announce_to_seeds(),
            _ => return,
        }
        self.after_call();
    }

    /// A node's service endpoint answered our ping: its proof is complete,
    /// the identity is in our view from now on: we announce to it.
    fn on_pong(&mut self, from: SocketAddr, tag: wire::Tag) {
        if let Some(id) = self.admission.on_pong(from, tag)
            && !self.left
        {
            self.announce_to(id);
            self.after_call();
        }
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
        // Identities being proven that did not answer: a datagram of the
        // exchange was lost; announce again.
        if !self.left {
            for id in self.admission.due_announces(now) {
                self.prove_vouched(id);
            }
        }
        self.after_call();
    }

    /// When [`Gossip::handle_timeout`] must next be called; `None` before
    /// anything was scheduled.
    pub fn poll_timeout(&self) -> Option<MonoTime> {
        [
            self.io.timers.peek().map(|t| t.0.at),
            self.next_seed_announce,
            self.admission.next_announce(),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// The next datagram to send: the destination's gossip endpoint and
    /// the payload.
    ///
    /// Two budgets bound what this node sends where it was not asked by a
    /// member. Cookie replies, proof pings, `Feed`s (the answer to an
    /// announce, much larger than what asks for it) and datagrams to
    /// endpoints that are neither members, seeds nor identities being
    /// proven draw on [`STRANGER_BUDGET`] a second: an attacker who spoofs
    /// its source address can make a node send at most that much to a
    /// third party, whatever it sends. Announces to identities members told
    /// us of draw on [`VOUCHED_BUDGET`].
    pub fn poll_transmit(&mut self) -> Option<(SocketAddr, Vec<u8>)> {
        let now = self.io.now;
        while let Some((dst, bytes, spend)) = self.proofs.pop_front() {
            if self.spend(now, spend) {
                return Some((dst, bytes));
            }
        }
        while let Some((dst, bytes)) = self.io.transmits.pop_front() {
            // Our own encoding: one header read serves both checks.
            let header = foca::Codec::<NodeId>::decode_header(&mut PostcardCodec, &bytes[..]).ok();
            let message = header.as_ref().map(|h| &h.message);
            if let Some(h) = &header {
                self.my_incarnation = h.src_incarnation;
            }
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
            let spend = if message == Some(&foca::Message::Feed) {
                Spend::Strangers
            } else if self.seeds.contains(&dst) || self.is_member(dst) {
                Spend::Nothing
            } else if self.admission.is_pending(dst) {
                Spend::Vouched
            } else {
                Spend::Strangers
            };
            if !self.spend(now, spend) {
                self.errors += 1;
                continue;
            }
            let mut out = Vec::with_capacity(PREFIX_LEN + bytes.len() + SIG_LEN);
            out.push(MARKER);
            out.extend_from_slice(&self.settings);
            out.extend_from_slice(&self.admission.cookie_for(dst).0);
            out.extend_from_slice(&self.admission.offer_for(now, dst).0);
            out.extend_from_slice(&bytes);
            let sig = self.key.sign(&out);
            out.extend_from_slice(&sig);
            return Some((dst, out));
        }
        None
    }

    fn spend(&mut self, now: MonoTime, spend: Spend) -> bool {
        let ok = match spend {
            Spend::Nothing => true,
            Spend::Strangers => self.strangers.take(now),
            Spend::Vouched => self.vouched.take(now),
        };
        if !ok {
            self.dropped_to_strangers += 1;
        }
        ok
    }

    /// Datagrams not sent because a budget was spent.
    pub fn dropped_to_strangers(&self) -> u64 {
        self.dropped_to_strangers
    }

    /// Whether `gossip` is the endpoint of a member (any state).
    fn is_member(&self, gossip: SocketAddr) -> bool {
        let gossip = wire::canonical(gossip);
        self.foca
            .iter_membership_state()
            .any(|m| m.id().gossip == gossip)
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
        let leaving = Leaving::signed(self.foca.identity(), &self.key).encode();
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

    /// Errors since the last call: datagrams refused as undecodable, too
    /// big, spoofed, of other settings or by foca, timers foca failed on,
    /// transmits dropped from a full queue or for want of budget.
    pub fn take_errors(&mut self) -> u64 {
        std::mem::take(&mut self.errors) + std::mem::take(&mut self.io.dropped_transmits)
    }

    /// Datagrams refused as forged or unproven since the last call.
    pub fn take_refusals(&mut self) -> Refusals {
        std::mem::take(&mut self.refused)
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
        for m in self.foca.iter_membership_state() {
            self.admission.joined(m.id());
        }
        let members: HashSet<NodeId> = self.foca.iter_membership_state().map(|m| *m.id()).collect();
        self.admission.prune_proven(|id| members.contains(id));
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
