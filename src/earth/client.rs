//! The earth client's sans-IO core: the sky's members, registration with
//! every owner, keepalives, lookups, introductions, hole punching, the
//! friends' handshake, delivery and the address reset — every protocol
//! decision, and no socket, clock or randomness.
//!
//! It has the shape of the sky's shard (and of quinn-proto's `Endpoint`):
//! the driver feeds it what happened and asks it what to do.
//!
//! - [`Earth::handle_datagram`] for every datagram the socket received;
//! - [`Earth::handle_timeout`] once [`Earth::poll_timeout`] has passed;
//! - [`Earth::poll_transmit`] until `None`: datagrams to send, each with
//!   its destination;
//! - [`Earth::poll_event`] until `None`: what the application should know.
//!
//! Time is one `Duration` since the Unix epoch (the ratchet's epochs are
//! wall-clock), passed into every call. Randomness (handshake ephemerals,
//! request tags, cover traffic) comes from a BLAKE3 key stream seeded once
//! by the driver.
//!
//! **The sky** (SPEC §4, "one hop"). The client knows a few sky nodes
//! ([`Config::sky`], the bootstrap list), fetches the member list from the
//! first that answers, builds the same [`Ring`] the nodes use and computes
//! each address's owners itself. It registers every address it keeps with
//! all `k` owners (one registration, cookie and introduction key per node),
//! asks one owner at a time when it looks a friend up, and fetches the
//! members again when a node says the ring changed (`ring changed` to a
//! keepalive, `not owner` to a request). A standalone node (a members page
//! of version 0 and no members) is a ring of one.
//!
//! Persistence stays with the driver: when the core changes what must
//! survive a restart (a friend's reset adopted, a pending reset
//! acknowledged) it emits [`Event::SaveState`]; an acknowledgement that
//! depends on the save is held until the driver calls [`Earth::saved`].

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::time::Duration;

use super::handshake::{
    self, DATA, DATA_OVERHEAD, Initiator, MSG1, MSG1_LEN, MSG2, MSG2_LEN, Session,
};
use super::invite::Invite;
use super::ratchet::{ChainKey, DEFAULT_OVERLAP, Epoch};
use super::state::State;
use crate::keys;
use crate::ring::{Ring, RingConfig};
use crate::wire::{self, Cookie, Flags, IntroKey, Message, Packet, Tag, Token, VirtualAddr};

/// A datagram that only opens a NAT mapping; peers ignore it.
pub const PUNCH: u8 = 0x20;

/// How often a connection that has no answer yet looks the friend up
/// again (and so is introduced again).
const RELOOKUP: Duration = Duration::from_secs(1);

/// The length of a members request. A node writes its page over the
/// request and never makes it longer, so the request is padded to the
/// largest datagram the protocol allows: one page then holds about 170
/// IPv4 members.
pub const MEMBERS_REQUEST_LEN: u16 = wire::MAX_DATAGRAM_LEN as u16;

/// Members requests sent to one node without an answer before the next
/// node is asked.
const FETCH_TRIES: u32 = 3;

/// Times a members fetch starts over from the first page because the view
/// changed between pages, before the next node is asked.
const FETCH_RESTARTS: u32 = 3;

/// The least time between two member fetches that nodes' answers start:
/// nodes whose views disagree for a while cannot make the client fetch on
/// every datagram.
const REFETCH_EVERY: Duration = Duration::from_secs(1);

/// Introduction keys kept per sky node (keys of addresses long gone are of
/// no use).
const INTRO_KEYS_PER_NODE: usize = 16;

/// The first byte of a sealed payload between friends.
mod payload {
    /// Acknowledges the sealed datagram whose counter follows (8 bytes).
    pub const ACK: u8 = 0x00;
    /// Application data, delivered reliably (acknowledged, retried).
    pub const TEXT: u8 = 0x01;
    /// An address reset notice: the sender's new chain, as invite bytes.
    pub const RESET: u8 = 0x02;
    /// Application data, best effort (no acknowledgement).
    pub const DATAGRAM: u8 = 0x03;
}

/// The largest application payload [`Earth::send`] and
/// [`Earth::send_datagram`] take: a sealed datagram stays within
/// [`wire::MAX_DATAGRAM_LEN`].
pub const MAX_PAYLOAD: usize = wire::MAX_DATAGRAM_LEN - DATA_OVERHEAD - 1;

/// How the user stays findable across an epoch boundary (SPEC §2).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Overlap {
    /// Register only the current address; friends near the boundary also
    /// look up the neighbouring epoch's address.
    #[default]
    LookupSide,
    /// Also keep the previous epoch's address registered during the first
    /// `overlap` of an epoch. A sky operator holding both addresses can link
    /// them (`sky sim privacy` measures how much).
    Dual,
}

/// What the driver configures; [`Config::new`] has the defaults.
#[derive(Clone, Debug)]
pub struct Config {
    /// The bootstrap list: sky nodes to fetch the member list from, tried
    /// in this order until one answers. At least one; any node of the sky
    /// will do, and a standalone node is a sky of one.
    pub sky: Vec<SocketAddr>,
    /// Flag the registration as metered (friends go easy on this peer).
    pub metered: bool,
    /// The longest keepalive interval; the node's `registered` reply may
    /// ask for a shorter one. Default 25 s.
    pub keepalive: Duration,
    pub overlap: Overlap,
    /// `H`: how close to a boundary both epochs count. Default 1 h.
    pub overlap_window: Duration,
    /// How often a pending address reset is sent again. Default 60 s.
    pub reset_retry: Duration,
    /// Cover traffic: the mean time between random registrations while
    /// online. Default off.
    pub cover: Option<Duration>,
    /// How often a registration, a punch or a handshake message is sent
    /// again while unanswered; a lookup or members request waits three
    /// times this before it asks again (the next owner, for a lookup).
    /// Default 100 ms.
    pub retry: Duration,
    /// When a lookup, connection or delivery gives up. Default 5 s.
    pub give_up: Duration,
}

impl Config {
    /// Defaults, with `sky` as the bootstrap list.
    pub fn new(sky: Vec<SocketAddr>) -> Config {
        Config {
            sky,
            metered: false,
            keepalive: Duration::from_secs(25),
            overlap: Overlap::LookupSide,
            overlap_window: DEFAULT_OVERLAP,
            reset_retry: Duration::from_secs(60),
            cover: None,
            retry: Duration::from_millis(100),
            give_up: Duration::from_secs(5),
        }
    }
}

/// A datagram to send.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transmit {
    pub dst: SocketAddr,
    pub bytes: Vec<u8>,
}

/// Why a connection, delivery or lookup did not succeed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Failure {
    /// The sky says the friend is not online: every owner that answered
    /// said offline.
    Offline,
    /// No sky node answered within the time limit.
    SkySilent,
    /// The friend was online, but no handshake or acknowledgement came
    /// back within the time limit (a NAT pair that cannot be punched).
    Unreachable,
    /// No friend by that name.
    NoSuchFriend,
    /// The payload is larger than [`MAX_PAYLOAD`].
    TooLarge,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Failure::Offline => "offline",
            Failure::SkySilent => "the sky did not answer",
            Failure::Unreachable => "no answer on the punched path",
            Failure::NoSuchFriend => "no such friend",
            Failure::TooLarge => "the payload is too large",
        })
    }
}

/// What the application should know.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// The client holds a new view of the sky: `nodes` members, ring
    /// `version` (0: a standalone node, which owns every address).
    Sky { version: u32, nodes: usize },
    /// Registered (again) under `address`; the sky sees us at `observed`.
    /// Reported when the first owner holds the address, and again when an
    /// owner sees us at another endpoint, not once per owner.
    Registered {
        address: VirtualAddr,
        observed: SocketAddr,
    },
    /// No sky node held one of our addresses within the time limit (the
    /// members could not be fetched, or no owner answered a registration);
    /// the core keeps trying.
    SkySilent,
    /// The sky introduced a caller: a friend by name when the address is
    /// one of theirs. The core punches towards friends.
    Introduced {
        friend: Option<String>,
        caller: VirtualAddr,
        endpoint: SocketAddr,
    },
    /// An introduction that did not come from a sky node we registered
    /// with, or whose MAC did not verify under a key that node gave us:
    /// dropped.
    ForgedIntroduction,
    /// The answer to [`Earth::lookup`].
    Lookup {
        friend: String,
        result: Result<(SocketAddr, Flags), Failure>,
    },
    /// A session with a friend is up (either side started it).
    Connected { friend: String, peer: SocketAddr },
    /// A handshake from `from` was refused (a stranger or a forgery).
    HandshakeRefused {
        from: SocketAddr,
        error: handshake::HandshakeError,
    },
    /// A payload given to [`Earth::send`] was acknowledged. `elapsed` runs
    /// from the call, `sent` counts datagrams sent to the peer for it.
    Delivered {
        friend: String,
        id: u64,
        peer: SocketAddr,
        elapsed: Duration,
        sent: u32,
    },
    /// A payload given to [`Earth::send`] could not be delivered.
    Failed {
        friend: String,
        id: u64,
        why: Failure,
    },
    /// Application data from a friend.
    Message { friend: String, payload: Vec<u8> },
    /// A friend's address reset was adopted: their new chain is in the
    /// state (saved before it is acknowledged).
    ResetAdopted { friend: String },
    /// A friend acknowledged our address reset; they are no longer pending.
    ResetAcknowledged { friend: String },
    /// [`Earth::state`] changed in a way that must survive a restart: save
    /// it, then call [`Earth::saved`].
    SaveState,
}

/// A BLAKE3 key stream: the core's only source of randomness.
struct Rng {
    key: [u8; 32],
    counter: u64,
}

impl Rng {
    fn bytes(&mut self) -> [u8; 32] {
        self.counter += 1;
        *blake3::keyed_hash(&self.key, &self.counter.to_le_bytes()).as_bytes()
    }

    fn u64(&mut self) -> u64 {
        let b = self.bytes();
        u64::from_le_bytes(b[..8].try_into().expect("8 bytes"))
    }

    /// Uniform in `[0, 1)`.
    fn unit(&mut self) -> f64 {
        (self.u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Exponentially distributed with mean `mean` (at most 20 means).
    fn exponential(&mut self, mean: Duration) -> Duration {
        mean.mul_f64((-(1.0 - self.unit()).ln()).min(20.0))
    }

    fn tag(&mut self) -> Tag {
        let b = self.bytes();
        Tag([b[0], b[1], b[2], b[3]])
    }
}

/// What the client keeps per sky node it talks to.
#[derive(Default)]
struct Node {
    /// The cookie this node gave our endpoint (zeros until it gives one).
    cookie: Cookie,
    /// The introduction keys this node gave us in `registered` replies: an
    /// introduction from this node must verify under one of them.
    intro_keys: Vec<IntroKey>,
}

/// The sky as the client sees it.
struct View {
    ring: Ring,
    /// The version the members page carried (0: a standalone node); what
    /// keepalives carry.
    version: u32,
}

/// Reading the member list, page by page, from one node after another.
struct Fetch {
    /// The node asked now.
    node: SocketAddr,
    /// The nodes to ask next, in order.
    queue: VecDeque<SocketAddr>,
    tag: Tag,
    /// Index of the first member asked for.
    start: u16,
    /// From the view's first page: its version, settings and size.
    reading: Option<(u32, RingConfig, u16)>,
    entries: Vec<SocketAddr>,
    /// Requests sent to `node` since it last answered.
    tries: u32,
    restarts: u32,
    next: Duration,
    /// Passes over the bootstrap list that found no node (while the client
    /// holds no view): the pause before the next pass doubles.
    passes: u32,
}

/// One address the client keeps registered: the user's own of an epoch,
/// or a random cover address; registered with each of its owners.
struct Registration {
    token: Token,
    address: VirtualAddr,
    kind: RegKind,
    owners: Vec<OwnerReg>,
    /// The endpoint the last [`Event::Registered`] reported; `None` while
    /// no owner holds the address.
    reported: Option<SocketAddr>,
    /// Since when no owner has held the address, and whether
    /// [`Event::SkySilent`] was reported for it.
    unheld_since: Option<Duration>,
    silent_reported: bool,
}

/// The registration of one address with one owner.
struct OwnerReg {
    node: SocketAddr,
    state: RegState,
    /// Registered on a `not owner` hint rather than from the view: a
    /// second `not owner` is not followed further.
    via_hint: bool,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum RegKind {
    Own(Epoch),
    /// Cover traffic: unregistered at `until`.
    Cover {
        until: Duration,
    },
}

enum RegState {
    /// Sent, not answered yet.
    Pending {
        tag: Tag,
        first: Duration,
        next: Duration,
    },
    Active {
        observed: SocketAddr,
        interval: Duration,
        next_keepalive: Duration,
        keepalive_tag: Tag,
    },
}

impl Registration {
    fn held(&self) -> bool {
        self.owners
            .iter()
            .any(|o| matches!(o.state, RegState::Active { .. }))
    }

    /// Brings `reported` and `unheld_since` up to date after the owners'
    /// states changed.
    fn settle(&mut self, now: Duration) {
        if self.held() {
            self.unheld_since = None;
            self.silent_reported = false;
        } else {
            self.reported = None;
            self.unheld_since.get_or_insert(now);
        }
    }
}

/// A lookup in flight: one target per candidate epoch's address.
struct Query {
    friend: String,
    caller: VirtualAddr,
    targets: Vec<Target>,
    first: Duration,
    /// Started by `connect`: its answer goes to the peer, not to the app.
    for_connect: bool,
}

/// One address a lookup asks the owners about, one owner at a time.
struct Target {
    address: VirtualAddr,
    tag: Tag,
    /// The owners to ask, in ring order; hints and a newer view add more.
    asks: Vec<Ask>,
    /// The ask in flight (index into `asks`).
    current: Option<usize>,
    /// When the ask in flight is given up for the next owner.
    next: Option<Duration>,
}

struct Ask {
    node: SocketAddr,
    said: Option<Said>,
}

/// A final answer from one owner about one target.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Said {
    Offline,
    NotOwner,
}

/// What an owner answered to a lookup.
enum Answer {
    Online(SocketAddr, Flags),
    Offline,
    NotOwner { version: u32, hint: SocketAddr },
}

impl Target {
    /// Asks the next owner that has not answered (after the current one,
    /// round the list: with one owner left, that owner again). Returns the
    /// node to send the lookup to.
    fn advance(&mut self, now: Duration, period: Duration) -> Option<SocketAddr> {
        let n = self.asks.len();
        let from = self.current.map_or(0, |c| c + 1);
        let pick = (0..n)
            .map(|i| (from + i) % n)
            .find(|&i| self.asks[i].said.is_none());
        self.current = pick;
        self.next = pick.map(|_| now + period);
        pick.map(|i| self.asks[i].node)
    }

    /// Every owner listed has given a final answer.
    fn exhausted(&self) -> bool {
        self.asks.iter().all(|a| a.said.is_some())
    }

    fn said_offline(&self) -> bool {
        self.asks.iter().any(|a| a.said == Some(Said::Offline))
    }

    /// Whether the ask in flight still waits for its answer.
    fn waiting(&self) -> bool {
        self.current.is_some_and(|c| self.asks[c].said.is_none())
    }
}

/// Where a friend's connection stands.
enum Phase {
    /// Waiting for the lookup's answer.
    Looking,
    /// msg1 sent on the retry schedule (it punches too); waiting for msg2.
    Handshaking {
        initiator: Initiator,
        msg1: [u8; MSG1_LEN],
        next: Duration,
        /// When to look the friend up again: the lookup makes the sky
        /// introduce us again, in case that introduction was lost.
        relookup: Duration,
    },
    Established {
        session: Session,
        /// The msg1 this side answered and its msg2, sent again if the same
        /// msg1 comes again (our msg2 was lost).
        answered: Option<([u8; MSG1_LEN], [u8; MSG2_LEN])>,
    },
}

/// A payload waiting for its acknowledgement.
struct Outgoing {
    id: u64,
    payload: Vec<u8>,
    queued: Duration,
    /// The sealed datagram in flight (retransmitted as is) and its counter.
    sealed: Option<(Vec<u8>, u64)>,
    next: Duration,
    sent: u32,
    deadline: Duration,
}

/// A connection to a friend.
struct Peer {
    endpoint: Option<SocketAddr>,
    phase: Phase,
    outbox: VecDeque<Outgoing>,
    deadline: Duration,
}

/// Punching towards an introduced friend until their handshake arrives.
struct Punch {
    endpoint: SocketAddr,
    next: Duration,
    until: Duration,
}

/// The earth client's core. See the module documentation for the calls.
pub struct Earth {
    config: Config,
    state: State,
    online: bool,
    rng: Rng,
    /// Every sky node we have sent to: cookies and introduction keys. A
    /// datagram from one of them is the sky's; anything else is a peer's.
    nodes: HashMap<SocketAddr, Node>,
    view: Option<View>,
    fetch: Option<Fetch>,
    /// A fetch a node's answer asked for while one was running or too
    /// recent: from that node, for that version.
    refetch: Option<(SocketAddr, u32)>,
    /// When the next fetch a node's answer asks for may start.
    fetch_allowed: Duration,
    registrations: Vec<Registration>,
    queries: Vec<Query>,
    peers: HashMap<String, Peer>,
    punches: Vec<Punch>,
    next_reset: Duration,
    next_cover: Option<Duration>,
    next_id: u64,
    /// Acknowledgements that wait for the state to be saved.
    /// (the counter acknowledged, the acknowledgement)
    held: Vec<(u64, Transmit)>,
    transmits: VecDeque<Transmit>,
    events: VecDeque<Event>,
}

impl Earth {
    /// A core for `state`, bootstrapping from `config.sky`, with randomness
    /// from `seed` (32 bytes from the operating system's random source).
    pub fn new(mut config: Config, state: State, seed: [u8; 32], now: Duration) -> Earth {
        let mut rng = Rng {
            key: seed,
            counter: 0,
        };
        let mut bootstrap = Vec::with_capacity(config.sky.len());
        for node in config.sky.iter().map(|n| wire::canonical(*n)) {
            if !bootstrap.contains(&node) {
                bootstrap.push(node);
            }
        }
        config.sky = bootstrap;
        let next_cover = config.cover.map(|mean| now + rng.exponential(mean));
        Earth {
            config,
            state,
            online: false,
            rng,
            nodes: HashMap::new(),
            view: None,
            fetch: None,
            refetch: None,
            fetch_allowed: now,
            registrations: Vec::new(),
            queries: Vec::new(),
            peers: HashMap::new(),
            punches: Vec::new(),
            next_reset: now,
            next_cover,
            next_id: 0,
            held: Vec::new(),
            transmits: VecDeque::new(),
            events: VecDeque::new(),
        }
    }

    /// The identity, friends and pending resets (what the driver saves).
    pub fn state(&self) -> &State {
        &self.state
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The sky as the client sees it: the ring it computes owners with and
    /// the version it holds (0: a standalone node). `None` until the first
    /// members fetch completes.
    pub fn ring(&self) -> Option<(&Ring, u32)> {
        self.view.as_ref().map(|v| (&v.ring, v.version))
    }

    /// The sky nodes that hold `address` for us now (a registration
    /// answered and kept alive).
    pub fn holders(&self, address: &VirtualAddr) -> Vec<SocketAddr> {
        self.registrations
            .iter()
            .filter(|r| r.address == *address)
            .flat_map(|r| &r.owners)
            .filter(|o| matches!(o.state, RegState::Active { .. }))
            .map(|o| o.node)
            .collect()
    }

    /// Where the sky sees us (our NAT's public endpoint), once registered.
    pub fn observed(&self) -> Option<SocketAddr> {
        self.registrations
            .iter()
            .filter(|r| matches!(r.kind, RegKind::Own(_)))
            .flat_map(|r| &r.owners)
            .find_map(|o| match o.state {
                RegState::Active { observed, .. } => Some(observed),
                RegState::Pending { .. } => None,
            })
    }

    /// Stays registered from now on (and sends pending resets).
    pub fn go_online(&mut self, now: Duration) {
        self.online = true;
        self.next_reset = now;
        self.handle_timeout(now);
    }

    /// Unregisters every address at every owner.
    pub fn go_offline(&mut self) {
        self.online = false;
        for reg in std::mem::take(&mut self.registrations) {
            for o in &reg.owners {
                self.unregister(o.node, reg.token);
            }
        }
    }

    /// The state was saved: release the acknowledgements that waited on it.
    pub fn saved(&mut self) {
        self.transmits.extend(self.held.drain(..).map(|(_, t)| t));
    }

    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// Looks `friend` up under each address they may have now (within `H`
    /// of a boundary, the neighbouring epoch's too), asking each address's
    /// owners one after the other; answers with [`Event::Lookup`]. The
    /// owner that finds them introduces us to them.
    pub fn lookup(&mut self, now: Duration, friend: &str) {
        if !self.start_query(now, friend, false) {
            self.events.push_back(Event::Lookup {
                friend: friend.to_string(),
                result: Err(Failure::NoSuchFriend),
            });
        }
    }

    /// Delivers `payload` to `friend` reliably: connects first when there
    /// is no session (lookup, punching, handshake), then sends until it is
    /// acknowledged. Answers with [`Event::Delivered`] or [`Event::Failed`]
    /// carrying the returned id.
    pub fn send(&mut self, now: Duration, friend: &str, payload: &[u8]) -> u64 {
        let mut bytes = Vec::with_capacity(payload.len() + 1);
        bytes.push(payload::TEXT);
        bytes.extend_from_slice(payload);
        self.enqueue(now, friend, bytes)
    }

    /// Sends `payload` to `friend` once, best effort, over an established
    /// session. `false` when there is none (call [`Earth::send`] or wait
    /// for [`Event::Connected`]) or the payload is too large.
    pub fn send_datagram(&mut self, friend: &str, payload: &[u8]) -> bool {
        if payload.len() > MAX_PAYLOAD {
            return false;
        }
        let Some(peer) = self.peers.get_mut(friend) else {
            return false;
        };
        let (Phase::Established { session, .. }, Some(dst)) = (&mut peer.phase, peer.endpoint)
        else {
            return false;
        };
        let mut plain = Vec::with_capacity(payload.len() + 1);
        plain.push(payload::DATAGRAM);
        plain.extend_from_slice(payload);
        let bytes = seal(session, &plain);
        self.transmits.push_back(Transmit { dst, bytes });
        true
    }

    /// Address reset (SPEC §2): removes `friend`, moves the user to a fresh
    /// chain from `key`, and marks every remaining friend pending; the core
    /// sends them the new chain while online until each acknowledges it.
    pub fn remove_friend(
        &mut self,
        now: Duration,
        friend: &str,
        key: ChainKey,
    ) -> Result<(), super::identity::FriendError> {
        self.state.reset_address(friend, key, now)?;
        self.peers.remove(friend);
        self.next_reset = now;
        self.events.push_back(Event::SaveState);
        self.handle_timeout(now);
        Ok(())
    }

    /// When [`Earth::handle_timeout`] should be called next.
    pub fn poll_timeout(&self) -> Option<Duration> {
        let mut t: Option<Duration> = None;
        let mut at = |d: Duration| t = Some(t.map_or(d, |t| t.min(d)));
        if let Some(f) = &self.fetch {
            at(f.next);
        } else if self.refetch.is_some() {
            at(self.fetch_allowed);
        }
        for reg in &self.registrations {
            for o in &reg.owners {
                match o.state {
                    RegState::Pending { next, .. } => at(next),
                    RegState::Active { next_keepalive, .. } => at(next_keepalive),
                }
            }
            if let (Some(since), false, RegKind::Own(_)) =
                (reg.unheld_since, reg.silent_reported, reg.kind)
            {
                at(since + self.config.give_up);
            }
            if let RegKind::Cover { until } = reg.kind {
                at(until);
            }
        }
        for q in &self.queries {
            at(q.first + self.config.give_up);
            for target in &q.targets {
                if let Some(next) = target.next {
                    at(next);
                }
            }
        }
        for peer in self.peers.values() {
            if let Phase::Handshaking { next, relookup, .. } = peer.phase {
                at(next.min(relookup));
            }
            match peer.phase {
                Phase::Established { .. } => {
                    if let Some(o) = peer.outbox.front() {
                        at(o.next.min(o.deadline));
                    }
                }
                _ => at(peer.deadline),
            }
        }
        for p in &self.punches {
            at(p.next.min(p.until));
        }
        if self.online {
            if let Some(next) = self.next_boundary(self.state.identity.schedule) {
                at(next);
            }
            if !self.state.pending_resets.is_empty() {
                at(self.next_reset);
            }
            if let Some(c) = self.next_cover {
                at(c);
            }
        }
        t
    }

    /// The next time the set of registered addresses changes: the next
    /// epoch start, or the end of the current dual-registration window.
    fn next_boundary(&self, schedule: super::ratchet::Schedule) -> Option<Duration> {
        let epoch = self.registrations.iter().find_map(|r| match r.kind {
            RegKind::Own(e) => Some(e),
            RegKind::Cover { .. } => None,
        })?;
        let epoch = self
            .registrations
            .iter()
            .filter_map(|r| match r.kind {
                RegKind::Own(e) => Some(e),
                RegKind::Cover { .. } => None,
            })
            .fold(epoch, Epoch::max);
        let start = schedule.start_of(epoch);
        let next = schedule.start_of(Epoch(epoch.0 + 1));
        if self.config.overlap == Overlap::Dual {
            let end = start + self.config.overlap_window;
            let has_previous = self
                .registrations
                .iter()
                .any(|r| r.kind == RegKind::Own(Epoch(epoch.0.wrapping_sub(1))));
            if has_previous {
                return Some(end.min(next));
            }
        }
        Some(next)
    }

    /// Everything that is due at `now`.
    pub fn handle_timeout(&mut self, now: Duration) {
        if self.online {
            self.update_registrations(now);
            if !self.state.pending_resets.is_empty() && now >= self.next_reset {
                self.next_reset = now + self.config.reset_retry;
                self.send_pending_resets(now);
            }
            if let (Some(mean), Some(at)) = (self.config.cover, self.next_cover)
                && now >= at
            {
                self.next_cover = Some(now + self.rng.exponential(mean));
                self.register_cover(now);
            }
        }
        if self.fetch.is_none()
            && now >= self.fetch_allowed
            && let Some((node, _)) = self.refetch.take()
        {
            self.start_fetch(now, Some(node));
        }
        self.fetch_timer(now);
        self.registration_timers(now);
        self.query_timers(now);
        self.peer_timers(now);
        self.punch_timers(now);
    }

    /// A datagram from `from`. Datagrams from a sky node we talk to are
    /// protocol replies and introductions; anything else is a peer's.
    pub fn handle_datagram(&mut self, now: Duration, from: SocketAddr, datagram: &mut [u8]) {
        let from = wire::canonical(from);
        if self.nodes.contains_key(&from) {
            self.sky_datagram(now, from, datagram);
            return;
        }
        match datagram.first().copied() {
            Some(MSG1) => self.msg1(now, from, datagram),
            Some(MSG2) => self.msg2(now, from, datagram),
            Some(DATA) => self.data(now, from, datagram),
            Some(PUNCH) => {}
            _ => {
                // Introductions come only from sky nodes we registered
                // with.
                if let Ok(Message::Introduction { .. }) = Message::decode(datagram) {
                    self.events.push_back(Event::ForgedIntroduction);
                }
            }
        }
    }

    // ---- the sky: requests ----

    fn tag(&mut self) -> Tag {
        self.rng.tag()
    }

    /// Sends a request to `node` with the cookie it gave us.
    fn request(&mut self, node: SocketAddr, build: impl FnOnce(Cookie) -> Message) {
        let cookie = self.nodes.entry(node).or_default().cookie;
        let msg = build(cookie);
        let mut bytes = vec![0u8; msg.buffer_len()];
        let n = msg.emit(&mut bytes);
        bytes.truncate(n);
        self.transmits.push_back(Transmit { dst: node, bytes });
    }

    fn flags(&self) -> Flags {
        Flags(if self.config.metered {
            Flags::METERED
        } else {
            0
        })
    }

    fn send_register(&mut self, node: SocketAddr, tag: Tag, token: Token) {
        let flags = self.flags();
        self.request(node, |cookie| Message::Register {
            tag,
            cookie,
            flags,
            token,
        });
    }

    fn send_keepalive(&mut self, node: SocketAddr, tag: Tag, address: VirtualAddr) {
        let ring = self.view.as_ref().map_or(0, |v| v.version);
        self.request(node, |cookie| Message::Keepalive {
            tag,
            cookie,
            address,
            ring,
        });
    }

    fn send_lookup(
        &mut self,
        node: SocketAddr,
        tag: Tag,
        target: VirtualAddr,
        caller: VirtualAddr,
    ) {
        self.request(node, |cookie| Message::Lookup {
            tag,
            cookie,
            target,
            caller,
        });
    }

    fn send_members(&mut self, node: SocketAddr, tag: Tag, start: u16) {
        self.request(node, |cookie| Message::Members {
            tag,
            cookie,
            start,
            len: MEMBERS_REQUEST_LEN,
        });
    }

    /// Unregistering costs the node nothing to answer: there is no reply,
    /// and none is waited for.
    fn unregister(&mut self, node: SocketAddr, token: Token) {
        let tag = self.tag();
        self.request(node, |cookie| Message::Unregister { tag, cookie, token });
    }

    // ---- the sky: members ----

    /// Starts fetching the members: from `first` (a node that said the ring
    /// changed), then the bootstrap list, then the members we know.
    fn start_fetch(&mut self, now: Duration, first: Option<SocketAddr>) {
        let mut queue = VecDeque::new();
        let known = self.view.iter().flat_map(|v| v.ring.members());
        for node in first
            .into_iter()
            .chain(self.config.sky.iter().copied())
            .chain(known.map(|m| m.endpoint))
        {
            if !queue.contains(&node) {
                queue.push_back(node);
            }
        }
        let Some(node) = queue.pop_front() else {
            return; // no bootstrap node at all
        };
        let tag = self.tag();
        self.fetch = Some(Fetch {
            node,
            queue,
            tag,
            start: 0,
            reading: None,
            entries: Vec::new(),
            tries: 0,
            restarts: 0,
            next: now,
            passes: 0,
        });
        self.fetch_timer(now);
    }

    /// Fetches the members unless the client holds a view or is fetching.
    fn ensure_view(&mut self, now: Duration) {
        if self.view.is_none() && self.fetch.is_none() {
            self.start_fetch(now, None);
        }
    }

    /// A node's answer says the sky's view is `version`: fetch it from
    /// `from` unless it is the view we hold (at most every
    /// [`REFETCH_EVERY`], one fetch at a time).
    fn ring_changed(&mut self, now: Duration, from: SocketAddr, version: u32) {
        if self.view.as_ref().is_some_and(|v| v.version == version) {
            return;
        }
        if self.fetch.is_some() || now < self.fetch_allowed {
            self.refetch = Some((from, version));
            return;
        }
        self.refetch = None;
        self.start_fetch(now, Some(from));
    }

    fn fetch_timer(&mut self, now: Duration) {
        let period = self.config.retry * 3;
        let Some(f) = self.fetch.as_ref() else {
            return;
        };
        if now < f.next {
            return;
        }
        if f.tries >= FETCH_TRIES && !self.fetch_next_node(now) {
            return;
        }
        let Some(f) = self.fetch.as_mut() else {
            return;
        };
        if now < f.next {
            return;
        }
        f.tries += 1;
        f.next = now + period;
        let (node, tag, start) = (f.node, f.tag, f.start);
        self.send_members(node, tag, start);
    }

    /// Moves the fetch on to the next node. `false` when it gave up: the
    /// client keeps the view it holds, or, holding none and needing none,
    /// waits until it does.
    fn fetch_next_node(&mut self, now: Duration) -> bool {
        let tag = self.tag();
        let period = self.config.retry * 3;
        let keepalive = self.config.keepalive;
        let has_view = self.view.is_some();
        let needed = self.online || !self.queries.is_empty();
        let Some(f) = self.fetch.as_mut() else {
            return false;
        };
        let (node, pause) = match f.queue.pop_front() {
            Some(node) => (node, Duration::ZERO),
            None if has_view || !needed => {
                self.fetch = None;
                return false;
            }
            None => {
                // Nobody answered: go round the bootstrap list again, after
                // a pause that doubles up to the keepalive interval.
                f.passes += 1;
                f.queue = self.config.sky.iter().copied().collect();
                let Some(node) = f.queue.pop_front() else {
                    self.fetch = None;
                    return false;
                };
                let pause = period.saturating_mul(1 << f.passes.min(16)).min(keepalive);
                (node, pause)
            }
        };
        f.node = node;
        f.tag = tag;
        f.start = 0;
        f.reading = None;
        f.entries.clear();
        f.tries = 0;
        f.restarts = 0;
        f.next = now + pause;
        true
    }

    /// The node asked now does not give a usable view: ask the next.
    fn fetch_failed(&mut self, now: Duration) {
        if self.fetch_next_node(now) {
            self.fetch_timer(now);
        }
    }

    fn members_page(&mut self, now: Duration, from: SocketAddr, page: &Packet<&[u8]>) {
        let Message::MembersPage {
            tag,
            version,
            config,
            total,
            start,
        } = Message::parse(page)
        else {
            return;
        };
        let Some(f) = self.fetch.as_mut() else {
            return;
        };
        if from != f.node || tag != f.tag || start != f.start {
            return; // not the page asked for (late, or a duplicate)
        }
        if version == 0 && total == 0 {
            // A standalone node: a sky of one, owner of every address.
            self.fetch = None;
            let config = RingConfig {
                replicas: 1,
                ..RingConfig::default()
            };
            self.set_view(now, Ring::new(config, [from]), 0);
            return;
        }
        if version == 0 || total == 0 || config.validate().is_err() {
            self.fetch_failed(now);
            return;
        }
        match f.reading {
            None => f.reading = Some((version, config, total)),
            Some(reading) if reading != (version, config, total) => {
                // The view changed between pages: start over.
                f.restarts += 1;
                if f.restarts > FETCH_RESTARTS {
                    self.fetch_failed(now);
                    return;
                }
                f.reading = None;
                f.entries.clear();
                f.start = 0;
                f.tries = 0;
                f.next = now;
                f.tag = self.rng.tag();
                self.fetch_timer(now);
                return;
            }
            Some(_) => {}
        }
        let before = f.entries.len();
        let wanted = usize::from(total) - before;
        // A member without an address stands for the node that sent the
        // page (a node that knows itself only by its wildcard address).
        f.entries.extend(page.page_entries().take(wanted).map(|e| {
            if e.ip().is_unspecified() {
                SocketAddr::new(from.ip(), e.port())
            } else {
                wire::canonical(e)
            }
        }));
        if f.entries.len() == usize::from(total) {
            let Some(f) = self.fetch.take() else {
                return;
            };
            self.set_view(now, Ring::new(config, f.entries), version);
            return;
        }
        if f.entries.len() == before {
            self.fetch_failed(now); // an empty page before the end
            return;
        }
        f.start = f.entries.len() as u16;
        f.tries = 0;
        f.next = now;
        f.tag = self.rng.tag();
        self.fetch_timer(now);
    }

    /// Adopts a view: registers with owners that are new, unregisters at
    /// nodes that no longer own, and asks new owners in lookups in flight.
    fn set_view(&mut self, now: Duration, ring: Ring, version: u32) {
        let changed = self
            .view
            .as_ref()
            .is_none_or(|v| v.version != version || v.ring != ring);
        self.fetch_allowed = now + REFETCH_EVERY;
        if self.refetch.is_some_and(|(_, v)| v == version) {
            self.refetch = None;
        }
        let nodes = ring.len();
        self.view = Some(View { ring, version });
        if changed {
            self.events.push_back(Event::Sky { version, nodes });
        }
        self.reconcile_registrations(now);
        self.reconcile_queries(now);
        self.prune_nodes();
    }

    /// Forgets the cookies and keys of nodes the client no longer uses.
    fn prune_nodes(&mut self) {
        let mut used: HashSet<SocketAddr> = self.config.sky.iter().copied().collect();
        if let Some(v) = &self.view {
            used.extend(v.ring.members().iter().map(|m| m.endpoint));
        }
        for reg in &self.registrations {
            used.extend(reg.owners.iter().map(|o| o.node));
        }
        for q in &self.queries {
            for t in &q.targets {
                used.extend(t.asks.iter().map(|a| a.node));
            }
        }
        if let Some(f) = &self.fetch {
            used.insert(f.node);
            used.extend(f.queue.iter().copied());
        }
        self.nodes.retain(|node, _| used.contains(node));
    }

    // ---- the sky: registrations ----

    /// The owners of `address` in the view held (none without one).
    fn owners_of(&self, address: &VirtualAddr) -> Vec<SocketAddr> {
        self.view
            .as_ref()
            .map(|v| v.ring.owners(address).as_slice().collect())
            .unwrap_or_default()
    }

    fn start_registration(&mut self, now: Duration, token: Token, kind: RegKind) {
        let address = VirtualAddr::from_token(&token);
        self.registrations.push(Registration {
            token,
            address,
            kind,
            owners: Vec::new(),
            reported: None,
            unheld_since: Some(now),
            silent_reported: false,
        });
        let i = self.registrations.len() - 1;
        for node in self.owners_of(&address) {
            self.register_with(now, i, node, false);
        }
        self.ensure_view(now);
    }

    /// Registers registration `i` with `node` (one more owner).
    fn register_with(&mut self, now: Duration, i: usize, node: SocketAddr, via_hint: bool) {
        let tag = self.tag();
        let reg = &mut self.registrations[i];
        reg.owners.push(OwnerReg {
            node,
            state: RegState::Pending {
                tag,
                first: now,
                next: now + self.config.retry,
            },
            via_hint,
        });
        let token = reg.token;
        self.send_register(node, tag, token);
    }

    /// After a new view: every registration with exactly its owners.
    fn reconcile_registrations(&mut self, now: Duration) {
        for i in 0..self.registrations.len() {
            let owners = self.owners_of(&self.registrations[i].address);
            let reg = &mut self.registrations[i];
            let token = reg.token;
            let mut gone = Vec::new();
            reg.owners.retain(|o| {
                let keep = owners.contains(&o.node);
                if !keep {
                    gone.push(o.node);
                }
                keep
            });
            let new: Vec<SocketAddr> = owners
                .into_iter()
                .filter(|n| !reg.owners.iter().any(|o| o.node == *n))
                .collect();
            for node in gone {
                self.unregister(node, token);
            }
            for node in new {
                self.register_with(now, i, node, false);
            }
            self.registrations[i].settle(now);
        }
    }

    /// The own addresses that should be registered at `now`: the current
    /// epoch's, and in dual mode the previous one's during the first `H`.
    fn wanted(&mut self, now: Duration) -> Vec<(Epoch, Token)> {
        let schedule = self.state.identity.schedule;
        let epoch = schedule.epoch_at(now);
        let mut epochs = vec![epoch];
        if self.config.overlap == Overlap::Dual
            && epoch.0 > 0
            && now < schedule.start_of(epoch) + self.config.overlap_window
        {
            epochs.push(Epoch(epoch.0 - 1));
        }
        let chain = &mut self.state.identity.chain;
        epochs
            .into_iter()
            .filter_map(|e| chain.token_at(e).map(|t| (e, t)))
            .collect()
    }

    fn update_registrations(&mut self, now: Duration) {
        let wanted = self.wanted(now);
        let mut dropped = Vec::new();
        self.registrations.retain(|r| {
            let keep = match r.kind {
                RegKind::Own(_) => wanted.iter().any(|(_, t)| *t == r.token),
                RegKind::Cover { until } => now < until,
            };
            if !keep {
                dropped.extend(r.owners.iter().map(|o| (o.node, r.token)));
            }
            keep
        });
        for (epoch, token) in wanted {
            if !self.registrations.iter().any(|r| r.token == token) {
                self.start_registration(now, token, RegKind::Own(epoch));
            }
        }
        for (node, token) in dropped {
            self.unregister(node, token);
        }
    }

    fn register_cover(&mut self, now: Duration) {
        let mut token = [0u8; 16];
        token.copy_from_slice(&self.rng.bytes()[..16]);
        // Held like a real one: a few keepalive intervals, at random.
        let hold = self.config.keepalive.mul_f64(1.0 + 4.0 * self.rng.unit());
        self.start_registration(now, Token(token), RegKind::Cover { until: now + hold });
    }

    fn registration_timers(&mut self, now: Duration) {
        let retry_cap = self.config.keepalive;
        let give_up = self.config.give_up;
        let mut registers = Vec::new();
        let mut keepalives = Vec::new();
        for reg in &mut self.registrations {
            for o in &mut reg.owners {
                match &mut o.state {
                    RegState::Pending { tag, first, next } if now >= *next => {
                        // Backs off from `retry` up to the keepalive interval.
                        let waited = now.saturating_sub(*first);
                        *next = now + waited.clamp(self.config.retry, retry_cap);
                        registers.push((o.node, *tag, reg.token));
                    }
                    RegState::Active {
                        interval,
                        next_keepalive,
                        keepalive_tag,
                        ..
                    } if now >= *next_keepalive => {
                        *next_keepalive = now + *interval;
                        *keepalive_tag = self.rng.tag();
                        keepalives.push((o.node, *keepalive_tag, reg.address));
                    }
                    _ => {}
                }
            }
            if let (Some(since), false, RegKind::Own(_)) =
                (reg.unheld_since, reg.silent_reported, reg.kind)
                && now >= since + give_up
            {
                reg.silent_reported = true;
                self.events.push_back(Event::SkySilent);
            }
        }
        for (node, tag, token) in registers {
            self.send_register(node, tag, token);
        }
        for (node, tag, address) in keepalives {
            self.send_keepalive(node, tag, address);
        }
    }

    fn sky_datagram(&mut self, now: Duration, from: SocketAddr, datagram: &[u8]) {
        let Ok(packet) = Packet::new_checked(datagram) else {
            return;
        };
        match Message::parse(&packet) {
            Message::CookieReply { tag, cookie } => {
                self.nodes.entry(from).or_default().cookie = cookie;
                self.resend_with_cookie(from, tag);
            }
            Message::Registered {
                tag,
                keepalive_secs,
                intro_key,
                observed,
            } => self.registered(now, from, tag, keepalive_secs, intro_key, observed),
            Message::NotRegistered { tag } => self.not_registered(now, from, tag),
            Message::Online {
                tag,
                flags,
                endpoint,
            } => self.lookup_answer(now, from, tag, Answer::Online(endpoint, flags)),
            Message::Offline { tag } => self.lookup_answer(now, from, tag, Answer::Offline),
            Message::NotOwner { tag, version, hint } => {
                let hint = wire::canonical(hint);
                if !self.register_not_owner(now, from, tag, version, hint) {
                    self.lookup_answer(now, from, tag, Answer::NotOwner { version, hint });
                }
            }
            Message::RingChanged { tag, version } => {
                // Only in answer to a keepalive we sent that node.
                let ours = self.registrations.iter().any(|r| {
                    r.owners
                        .iter()
                        .any(|o| o.node == from && keepalive_tag(o) == Some(tag))
                });
                if ours {
                    self.ring_changed(now, from, version);
                }
            }
            Message::MembersPage { .. } => self.members_page(now, from, &packet),
            Message::Introduction { .. } => {
                let intro_keys = self.nodes.get(&from).map_or(&[][..], |n| &n.intro_keys);
                match keys::verify_introduction(intro_keys, datagram) {
                    Ok((caller, endpoint)) => self.introduced(now, caller, endpoint),
                    Err(_) => self.events.push_back(Event::ForgedIntroduction),
                }
            }
            _ => {}
        }
    }

    /// A cookie reply from `node` to request `tag`: send that request
    /// again with it.
    fn resend_with_cookie(&mut self, node: SocketAddr, tag: Tag) {
        if let Some(f) = &self.fetch
            && f.node == node
            && f.tag == tag
        {
            let start = f.start;
            self.send_members(node, tag, start);
        }
        let mut registers = Vec::new();
        let mut keepalives = Vec::new();
        for reg in &self.registrations {
            for o in reg.owners.iter().filter(|o| o.node == node) {
                match o.state {
                    RegState::Pending { tag: t, .. } if t == tag => registers.push(reg.token),
                    RegState::Active {
                        keepalive_tag: t, ..
                    } if t == tag => keepalives.push(reg.address),
                    _ => {}
                }
            }
        }
        for token in registers {
            self.send_register(node, tag, token);
        }
        for address in keepalives {
            self.send_keepalive(node, tag, address);
        }
        let mut lookups = Vec::new();
        for q in &self.queries {
            for t in &q.targets {
                if t.tag == tag && t.current.is_some_and(|c| t.asks[c].node == node) {
                    lookups.push((t.address, q.caller));
                }
            }
        }
        for (target, caller) in lookups {
            self.send_lookup(node, tag, target, caller);
        }
    }

    fn registered(
        &mut self,
        now: Duration,
        from: SocketAddr,
        tag: Tag,
        keepalive_secs: u16,
        intro_key: IntroKey,
        observed: SocketAddr,
    ) {
        let Some((reg, o)) = self.registrations.iter_mut().find_map(|r| {
            let i = r.owners.iter().position(|o| {
                o.node == from && matches!(o.state, RegState::Pending { tag: t, .. } if t == tag)
            })?;
            Some((r, i))
        }) else {
            return; // a late answer to a retransmission
        };
        let interval = match keepalive_secs {
            0 => self.config.keepalive,
            s => self.config.keepalive.min(Duration::from_secs(s.into())),
        };
        reg.owners[o].state = RegState::Active {
            observed,
            interval,
            next_keepalive: now + interval,
            keepalive_tag: tag,
        };
        reg.settle(now);
        if let RegKind::Own(_) = reg.kind
            && reg.reported != Some(observed)
        {
            reg.reported = Some(observed);
            self.events.push_back(Event::Registered {
                address: reg.address,
                observed,
            });
        }
        let keys = &mut self.nodes.entry(from).or_default().intro_keys;
        if !keys.contains(&intro_key) {
            keys.push(intro_key);
            if keys.len() > INTRO_KEYS_PER_NODE {
                keys.remove(0);
            }
        }
    }

    /// `node` does not hold the address a keepalive named: it expired
    /// there, or the NAT mapping changed (the node saw the keepalive from a
    /// new endpoint). Register again with that node.
    fn not_registered(&mut self, now: Duration, node: SocketAddr, tag: Tag) {
        let any = self.registrations.iter().any(|r| {
            r.owners
                .iter()
                .any(|o| o.node == node && keepalive_tag(o) == Some(tag))
        });
        let mut again = Vec::new();
        for reg in &mut self.registrations {
            for o in reg.owners.iter_mut().filter(|o| o.node == node) {
                if (!any || keepalive_tag(o) == Some(tag))
                    && matches!(o.state, RegState::Active { .. })
                {
                    let tag = self.rng.tag();
                    o.state = RegState::Pending {
                        tag,
                        first: now,
                        next: now + self.config.retry,
                    };
                    again.push((tag, reg.token));
                }
            }
            reg.settle(now);
        }
        for (tag, token) in again {
            self.send_register(node, tag, token);
        }
    }

    /// A `not owner` answer to a registration: register with the hint at
    /// once (unless this owner came from a hint itself) and fetch the
    /// members again. `false` when `tag` names no registration.
    fn register_not_owner(
        &mut self,
        now: Duration,
        from: SocketAddr,
        tag: Tag,
        version: u32,
        hint: SocketAddr,
    ) -> bool {
        let Some((i, o)) = self.registrations.iter().enumerate().find_map(|(i, r)| {
            let o = r.owners.iter().position(|o| {
                o.node == from && matches!(o.state, RegState::Pending { tag: t, .. } if t == tag)
            })?;
            Some((i, o))
        }) else {
            return false;
        };
        let reg = &mut self.registrations[i];
        let gone = reg.owners.remove(o);
        let follow = !gone.via_hint && hint != from && !reg.owners.iter().any(|o| o.node == hint);
        if follow {
            self.register_with(now, i, hint, true);
        }
        self.registrations[i].settle(now);
        self.ring_changed(now, from, version);
        true
    }

    fn introduced(&mut self, now: Duration, caller: VirtualAddr, endpoint: SocketAddr) {
        let overlap = self.config.overlap_window;
        let friend = self.state.friends.0.iter_mut().find_map(|(name, f)| {
            f.schedule
                .lookup_epochs(now, overlap)
                .into_iter()
                .any(|e| f.chain.address_at(e) == Some(caller))
                .then(|| name.clone())
        });
        // Open our NAT towards the caller until their handshake comes: the
        // sky vouched for the caller, and it already told them where we
        // are. A caller we cannot name may be a friend whose address reset
        // is on its way to us.
        {
            self.punches.retain(|p| p.endpoint != endpoint);
            self.punches.push(Punch {
                endpoint,
                next: now,
                until: now + self.config.give_up,
            });
            self.punch_timers(now);
        }
        self.events.push_back(Event::Introduced {
            friend,
            caller,
            endpoint,
        });
    }

    fn punch_timers(&mut self, now: Duration) {
        let retry = self.config.retry;
        self.punches.retain(|p| now < p.until);
        for p in &mut self.punches {
            if now >= p.next {
                p.next = now + retry;
                self.transmits.push_back(Transmit {
                    dst: p.endpoint,
                    bytes: vec![PUNCH],
                });
            }
        }
    }

    // ---- lookups ----

    /// Starts a lookup of `friend`; `false` when there is no such friend.
    fn start_query(&mut self, now: Duration, friend: &str, for_connect: bool) -> bool {
        let own_epoch = self.state.identity.schedule.epoch_at(now);
        let caller = self
            .state
            .identity
            .chain
            .address_at(own_epoch)
            .unwrap_or_default();
        let overlap = self.config.overlap_window;
        let Some(f) = self.state.friends.0.get_mut(friend) else {
            return false;
        };
        let addresses: Vec<VirtualAddr> = f
            .schedule
            .lookup_epochs(now, overlap)
            .into_iter()
            .filter_map(|e| f.chain.address_at(e))
            .collect();
        let mut targets = Vec::with_capacity(addresses.len());
        for address in addresses {
            let asks = self
                .owners_of(&address)
                .into_iter()
                .map(|node| Ask { node, said: None })
                .collect();
            targets.push(Target {
                address,
                tag: self.rng.tag(),
                asks,
                current: None,
                next: None,
            });
        }
        self.queries.push(Query {
            friend: friend.to_string(),
            caller,
            targets,
            first: now,
            for_connect,
        });
        let q = self.queries.len() - 1;
        for t in 0..self.queries[q].targets.len() {
            self.ask_next(now, q, t);
        }
        self.ensure_view(now);
        true
    }

    /// Asks target `t` of query `q` of its next owner.
    fn ask_next(&mut self, now: Duration, q: usize, t: usize) {
        let period = self.config.retry * 3;
        let query = &mut self.queries[q];
        let caller = query.caller;
        let target = &mut query.targets[t];
        if let Some(node) = target.advance(now, period) {
            let (tag, address) = (target.tag, target.address);
            self.send_lookup(node, tag, address, caller);
        }
    }

    /// After a new view: owners a lookup in flight has not asked yet are
    /// added, and asked when nothing else is in flight.
    fn reconcile_queries(&mut self, now: Duration) {
        for q in 0..self.queries.len() {
            for t in 0..self.queries[q].targets.len() {
                let owners = self.owners_of(&self.queries[q].targets[t].address);
                let target = &mut self.queries[q].targets[t];
                for node in owners {
                    if !target.asks.iter().any(|a| a.node == node) {
                        target.asks.push(Ask { node, said: None });
                    }
                }
                if !target.waiting() {
                    self.ask_next(now, q, t);
                }
            }
        }
    }

    fn query_timers(&mut self, now: Duration) {
        let give_up = self.config.give_up;
        let mut failed = Vec::new();
        let mut i = 0;
        while i < self.queries.len() {
            let q = &self.queries[i];
            if now >= q.first + give_up {
                // Owners that said offline count; owners that did not answer
                // in time count for nothing.
                let why = if q.targets.iter().any(Target::said_offline) {
                    Failure::Offline
                } else {
                    Failure::SkySilent
                };
                let q = self.queries.swap_remove(i);
                failed.push((q.friend, q.for_connect, why));
                continue;
            }
            for t in 0..self.queries[i].targets.len() {
                if self.queries[i].targets[t].next.is_some_and(|n| now >= n) {
                    self.ask_next(now, i, t);
                }
            }
            i += 1;
        }
        for (friend, for_connect, why) in failed {
            self.query_done(now, &friend, for_connect, Err(why));
        }
    }

    /// A lookup answer from owner `from`.
    fn lookup_answer(&mut self, now: Duration, from: SocketAddr, tag: Tag, answer: Answer) {
        let Some((q, t)) = self.queries.iter().enumerate().find_map(|(q, query)| {
            let t = query
                .targets
                .iter()
                .position(|t| t.tag == tag && t.asks.iter().any(|a| a.node == from))?;
            Some((q, t))
        }) else {
            return;
        };
        let target = &mut self.queries[q].targets[t];
        let Some(a) = target.asks.iter().position(|a| a.node == from) else {
            return;
        };
        match answer {
            Answer::Online(endpoint, flags) => {
                let query = self.queries.swap_remove(q);
                self.query_done(now, &query.friend, query.for_connect, Ok((endpoint, flags)));
                return;
            }
            Answer::Offline => target.asks[a].said = Some(Said::Offline),
            Answer::NotOwner { version, hint } => {
                target.asks[a].said = Some(Said::NotOwner);
                if !target.asks.iter().any(|a| a.node == hint) {
                    target.asks.push(Ask {
                        node: hint,
                        said: None,
                    });
                }
                self.ring_changed(now, from, version);
            }
        }
        let target = &self.queries[q].targets[t];
        if !target.waiting() {
            self.ask_next(now, q, t);
        }
        let query = &self.queries[q];
        if query.targets.iter().all(Target::exhausted)
            && query.targets.iter().any(Target::said_offline)
        {
            let query = self.queries.swap_remove(q);
            self.query_done(now, &query.friend, query.for_connect, Err(Failure::Offline));
        }
    }

    fn query_done(
        &mut self,
        now: Duration,
        friend: &str,
        for_connect: bool,
        result: Result<(SocketAddr, Flags), Failure>,
    ) {
        if !for_connect {
            self.events.push_back(Event::Lookup {
                friend: friend.to_string(),
                result,
            });
            return;
        }
        // A late answer to a lookup that a session made moot changes
        // nothing: restarting the handshake would strand what is in flight.
        if self
            .peers
            .get(friend)
            .is_some_and(|p| matches!(p.phase, Phase::Established { .. }))
        {
            return;
        }
        match result {
            Ok((endpoint, _)) => {
                let same = self.peers.get(friend).is_some_and(|p| {
                    p.endpoint == Some(endpoint) && matches!(p.phase, Phase::Handshaking { .. })
                });
                if !same {
                    self.start_handshake(now, friend, endpoint);
                }
            }
            Err(_)
                if self
                    .peers
                    .get(friend)
                    .is_some_and(|p| matches!(p.phase, Phase::Handshaking { .. })) => {}
            Err(why) => self.fail_peer(friend, why),
        }
    }

    // ---- connections ----

    fn enqueue(&mut self, now: Duration, friend: &str, payload: Vec<u8>) -> u64 {
        self.next_id += 1;
        let id = self.next_id;
        let why = if !self.state.friends.0.contains_key(friend) {
            Some(Failure::NoSuchFriend)
        } else if payload.len() > MAX_PAYLOAD + 1 {
            Some(Failure::TooLarge)
        } else {
            None
        };
        if let Some(why) = why {
            self.events.push_back(Event::Failed {
                friend: friend.to_string(),
                id,
                why,
            });
            return id;
        }
        let outgoing = Outgoing {
            id,
            payload,
            queued: now,
            sealed: None,
            next: now,
            sent: 0,
            deadline: now + self.config.give_up,
        };
        let deadline = now + self.config.give_up;
        match self.peers.get_mut(friend) {
            Some(peer) => peer.outbox.push_back(outgoing),
            None => {
                self.peers.insert(
                    friend.to_string(),
                    Peer {
                        endpoint: None,
                        phase: Phase::Looking,
                        outbox: VecDeque::from([outgoing]),
                        deadline,
                    },
                );
                self.start_query(now, friend, true);
            }
        }
        self.peer_timers(now);
        id
    }

    fn start_handshake(&mut self, now: Duration, friend: &str, endpoint: SocketAddr) {
        let Some(public) = self.state.friends.0.get(friend).map(|f| f.public_key) else {
            return;
        };
        let ephemeral = self.rng.bytes();
        let Some(peer) = self.peers.get_mut(friend) else {
            return;
        };
        let mut msg1 = [0u8; MSG1_LEN];
        let initiator = Initiator::start(
            self.state.identity.secret_bytes(),
            public,
            ephemeral,
            &mut msg1,
        );
        peer.endpoint = Some(endpoint);
        peer.phase = Phase::Handshaking {
            initiator,
            msg1,
            next: now,
            relookup: now + RELOOKUP,
        };
        self.peer_timers(now);
    }

    /// Every outgoing payload of `friend` fails with `why`; the peer goes.
    fn fail_peer(&mut self, friend: &str, why: Failure) {
        if let Some(peer) = self.peers.remove(friend) {
            for o in peer.outbox {
                self.events.push_back(Event::Failed {
                    friend: friend.to_string(),
                    id: o.id,
                    why: why.clone(),
                });
            }
        }
    }

    fn peer_timers(&mut self, now: Duration) {
        let retry = self.config.retry;
        let mut failed = Vec::new();
        let mut lookups = Vec::new();
        for (name, peer) in &mut self.peers {
            match &mut peer.phase {
                Phase::Looking => {}
                Phase::Handshaking {
                    msg1,
                    next,
                    relookup,
                    ..
                } => {
                    if now >= peer.deadline {
                        failed.push((name.clone(), None));
                        continue;
                    }
                    if now >= *relookup {
                        *relookup = now + RELOOKUP;
                        lookups.push(name.clone());
                    }
                    if now >= *next
                        && let Some(dst) = peer.endpoint
                    {
                        *next = now + retry;
                        self.transmits.push_back(Transmit {
                            dst,
                            bytes: msg1.to_vec(),
                        });
                        if let Some(o) = peer.outbox.front_mut() {
                            o.sent += 1;
                        }
                    }
                }
                Phase::Established { session, .. } => {
                    let Some(dst) = peer.endpoint else { continue };
                    let Some(o) = peer.outbox.front_mut() else {
                        continue;
                    };
                    if now >= o.deadline {
                        failed.push((name.clone(), Some(o.id)));
                        continue;
                    }
                    if now >= o.next {
                        let sealed = o.sealed.get_or_insert_with(|| {
                            let bytes = seal(session, &o.payload);
                            let counter =
                                u64::from_be_bytes(bytes[1..9].try_into().expect("8 bytes"));
                            (bytes, counter)
                        });
                        self.transmits.push_back(Transmit {
                            dst,
                            bytes: sealed.0.clone(),
                        });
                        o.sent += 1;
                        o.next = now + retry;
                    }
                }
            }
        }
        for name in lookups {
            if !self.queries.iter().any(|q| q.friend == name) {
                self.start_query(now, &name, true);
            }
        }
        for (name, id) in failed {
            match id {
                // Handshake timed out: everything queued fails.
                None => self.fail_peer(&name, Failure::Unreachable),
                Some(id) => {
                    let Some(peer) = self.peers.get_mut(&name) else {
                        continue;
                    };
                    peer.outbox.retain(|o| o.id != id);
                    self.events.push_back(Event::Failed {
                        friend: name.clone(),
                        id,
                        why: Failure::Unreachable,
                    });
                    // The path is gone: the next payload connects afresh.
                    let rest = std::mem::take(&mut peer.outbox);
                    self.peers.remove(&name);
                    for o in rest {
                        self.enqueue_again(now, &name, o);
                    }
                }
            }
        }
    }

    fn enqueue_again(&mut self, now: Duration, friend: &str, o: Outgoing) {
        let id = self.enqueue(now, friend, o.payload);
        // Keep the caller's id.
        for p in self.peers.values_mut() {
            for q in &mut p.outbox {
                if q.id == id {
                    q.id = o.id;
                    q.queued = o.queued;
                }
            }
        }
    }

    /// Someone's msg1: answer it if it comes from a friend.
    fn msg1(&mut self, now: Duration, from: SocketAddr, datagram: &[u8]) {
        // The same msg1 again: our msg2 was lost; send it again.
        for peer in self.peers.values() {
            if let Phase::Established {
                answered: Some((m1, m2)),
                ..
            } = &peer.phase
                && peer.endpoint == Some(from)
                && m1[..] == *datagram
            {
                self.transmits.push_back(Transmit {
                    dst: from,
                    bytes: m2.to_vec(),
                });
                return;
            }
        }
        let names: Vec<&String> = self.state.friends.0.keys().collect();
        let keys: Vec<[u8; 32]> = self
            .state
            .friends
            .0
            .values()
            .map(|f| f.public_key)
            .collect();
        let mut msg2 = [0u8; MSG2_LEN];
        let ephemeral = self.rng.bytes();
        let secret = self.state.identity.secret_bytes();
        let (session, i) = match handshake::respond(secret, &keys, datagram, ephemeral, &mut msg2) {
            Ok(r) => r,
            Err(error) => {
                self.events
                    .push_back(Event::HandshakeRefused { from, error });
                return;
            }
        };
        let name = names[i].clone();
        // Both sides started at once: the side with the lower public key
        // stays the initiator; the other answers.
        if let Some(Phase::Handshaking { .. }) = self.peers.get(&name).map(|p| &p.phase)
            && self.state.identity.public_key() < keys[i]
        {
            return;
        }
        self.punches.retain(|p| p.endpoint != from);
        let mut m1 = [0u8; MSG1_LEN];
        m1.copy_from_slice(datagram);
        let peer = self.peers.entry(name.clone()).or_insert_with(|| Peer {
            endpoint: None,
            phase: Phase::Looking,
            outbox: VecDeque::new(),
            deadline: now,
        });
        peer.endpoint = Some(from);
        peer.phase = Phase::Established {
            session,
            answered: Some((m1, msg2)),
        };
        // A payload sealed under an old session is sealed again.
        for o in &mut peer.outbox {
            o.sealed = None;
            o.next = now;
        }
        self.transmits.push_back(Transmit {
            dst: from,
            bytes: msg2.to_vec(),
        });
        // The lookup we may have started is moot now.
        self.queries
            .retain(|q| !(q.for_connect && q.friend == name));
        self.events.push_back(Event::Connected {
            friend: name,
            peer: from,
        });
        self.peer_timers(now);
    }

    fn msg2(&mut self, now: Duration, from: SocketAddr, datagram: &[u8]) {
        let Some(name) = self
            .peers
            .iter()
            .find(|(_, p)| p.endpoint == Some(from) && matches!(p.phase, Phase::Handshaking { .. }))
            .map(|(n, _)| n.clone())
        else {
            return;
        };
        let peer = self.peers.get_mut(&name).expect("found above");
        let Phase::Handshaking { initiator, .. } = &peer.phase else {
            unreachable!("matched above");
        };
        match initiator.finish(datagram) {
            Ok(session) => {
                peer.phase = Phase::Established {
                    session,
                    answered: None,
                };
                // The lookup that may still be asking is moot now.
                self.queries
                    .retain(|q| !(q.for_connect && q.friend == name));
                self.events.push_back(Event::Connected {
                    friend: name,
                    peer: from,
                });
                self.peer_timers(now);
            }
            Err(error) => {
                // Not our friend's answer: keep waiting for the real one.
                self.events
                    .push_back(Event::HandshakeRefused { from, error });
            }
        }
    }

    fn data(&mut self, now: Duration, from: SocketAddr, datagram: &mut [u8]) {
        let Some((name, peer)) = self.peers.iter_mut().find(|(_, p)| {
            p.endpoint == Some(from) && matches!(p.phase, Phase::Established { .. })
        }) else {
            return;
        };
        let name = name.clone();
        let Phase::Established { session, .. } = &mut peer.phase else {
            unreachable!("matched above");
        };
        let counter = match datagram.get(1..9) {
            Some(c) => u64::from_be_bytes(c.try_into().expect("8 bytes")),
            None => return,
        };
        let range = match session.open(datagram) {
            Ok(r) => r,
            Err(handshake::HandshakeError::Replayed) => {
                // A retransmission whose acknowledgement was lost: only the
                // peer's sealed bytes get this far; acknowledge again —
                // unless the acknowledgement waits for a save.
                if self
                    .held
                    .iter()
                    .any(|(c, t)| *c == counter && t.dst == from)
                {
                    return;
                }
                let ack = seal(session, &ack_payload(counter));
                self.transmits.push_back(Transmit {
                    dst: from,
                    bytes: ack,
                });
                return;
            }
            Err(_) => return,
        };
        let plain = datagram[range].to_vec();
        let Some((&kind, body)) = plain.split_first() else {
            return;
        };
        match kind {
            payload::ACK => {
                let Ok(acked) = <[u8; 8]>::try_from(body) else {
                    return;
                };
                let acked = u64::from_be_bytes(acked);
                let done = matches!(peer.outbox.front(), Some(Outgoing { sealed: Some((_, c)), .. }) if *c == acked);
                if done {
                    let o = peer.outbox.pop_front().expect("front");
                    self.delivered(now, &name, from, o);
                    self.peer_timers(now);
                }
            }
            payload::TEXT | payload::DATAGRAM => {
                if kind == payload::TEXT {
                    let ack = seal(session, &ack_payload(counter));
                    self.transmits.push_back(Transmit {
                        dst: from,
                        bytes: ack,
                    });
                }
                self.events.push_back(Event::Message {
                    friend: name,
                    payload: body.to_vec(),
                });
            }
            payload::RESET => {
                let ack = seal(session, &ack_payload(counter));
                let public = self.state.friends.0.get(&name).map(|f| f.public_key);
                match Invite::from_bytes(body) {
                    // The session proved the sender's key; the notice must
                    // carry that same key.
                    Ok(invite) if Some(invite.public_key) == public => {
                        self.state.friends.0.insert(name.clone(), invite.into());
                        self.held.retain(|(_, t)| t.dst != from);
                        self.held.push((
                            counter,
                            Transmit {
                                dst: from,
                                bytes: ack,
                            },
                        ));
                        self.events.push_back(Event::ResetAdopted { friend: name });
                        self.events.push_back(Event::SaveState);
                    }
                    _ => {}
                }
            }
            _ => {}
        }
    }

    fn delivered(&mut self, now: Duration, friend: &str, peer: SocketAddr, o: Outgoing) {
        if o.payload.first() == Some(&payload::RESET) {
            if self.state.pending_resets.remove(friend) {
                self.events.push_back(Event::ResetAcknowledged {
                    friend: friend.to_string(),
                });
                self.events.push_back(Event::SaveState);
            }
            return;
        }
        self.events.push_back(Event::Delivered {
            friend: friend.to_string(),
            id: o.id,
            peer,
            elapsed: now.saturating_sub(o.queued),
            sent: o.sent,
        });
    }

    // ---- address reset ----

    fn send_pending_resets(&mut self, now: Duration) {
        let epoch = self.state.identity.schedule.epoch_at(now);
        let Some(chain_key) = self.state.identity.chain.key_at(epoch) else {
            return;
        };
        let notice = Invite {
            epoch,
            chain_key,
            schedule: self.state.identity.schedule,
            public_key: self.state.identity.public_key(),
        };
        let mut bytes = vec![payload::RESET];
        bytes.extend_from_slice(&notice.to_bytes());
        let pending: Vec<String> = self.state.pending_resets.iter().cloned().collect();
        for name in pending {
            if !self.state.friends.0.contains_key(&name) {
                self.state.pending_resets.remove(&name); // removed since
                continue;
            }
            let in_flight = self.peers.get(&name).is_some_and(|p| {
                p.outbox
                    .iter()
                    .any(|o| o.payload.first() == Some(&payload::RESET))
            });
            if !in_flight {
                self.enqueue(now, &name, bytes.clone());
            }
        }
    }
}

fn keepalive_tag(o: &OwnerReg) -> Option<Tag> {
    match o.state {
        RegState::Active { keepalive_tag, .. } => Some(keepalive_tag),
        RegState::Pending { .. } => None,
    }
}

fn ack_payload(counter: u64) -> [u8; 9] {
    let mut p = [0u8; 9];
    p[0] = payload::ACK;
    p[1..].copy_from_slice(&counter.to_be_bytes());
    p
}

fn seal(session: &mut Session, plain: &[u8]) -> Vec<u8> {
    let mut out = vec![0u8; plain.len() + DATA_OVERHEAD];
    let n = session.seal(plain, &mut out);
    out.truncate(n);
    out
}

#[cfg(test)]
mod tests {
    //! Earth cores and real shard cores (the sky: one standalone node, or
    //! several ring-aware nodes sharing one ring) on one simulated network
    //! in virtual time: endpoints behind NATs that filter like home routers,
    //! rebinding, loss, silent nodes, ring changes, epochs passing.

    use super::*;
    use crate::earth::identity::{Friends, Identity};
    use crate::earth::ratchet::DEFAULT_EPOCH;
    use crate::keys::NodeSecret;
    use crate::presence::Presence;
    use crate::ring::{self, SharedRing};
    use crate::shard::{Shard, ShardConfig};
    use crate::wire::Kind;
    use std::sync::Arc;

    const SKY: &str = "198.51.100.1:7700";
    const T0: Duration = Duration::from_secs(1_800_000_000);

    /// One earth core behind a NAT: `public` is its mapping; with
    /// `filtering` it drops what comes from an endpoint it never sent to.
    struct Host {
        earth: Earth,
        public: SocketAddr,
        filtering: bool,
        sent_to: HashSet<SocketAddr>,
        events: Vec<Event>,
    }

    /// One sky node: a real shard with its own secret and presence table.
    struct SkyNode {
        addr: SocketAddr,
        secret: [u8; 32],
        shard: Shard,
        presence: Arc<Presence>,
        /// Drops every datagram sent to it (a node that stopped answering).
        down: bool,
    }

    impl SkyNode {
        fn new(
            addr: SocketAddr,
            secret: [u8; 32],
            ring: Option<&SharedRing>,
            now: Duration,
        ) -> Self {
            let presence = Arc::new(Presence::new(1000));
            let shard = Shard::new(
                Arc::new(NodeSecret::new(secret)),
                presence.clone(),
                ShardConfig::default(),
                now,
            );
            let shard = match ring {
                Some(ring) => shard.with_ring(ring.clone(), addr),
                None => shard,
            };
            SkyNode {
                addr,
                secret,
                shard,
                presence,
                down: false,
            }
        }
    }

    struct Net {
        now: Duration,
        skies: Vec<SkyNode>,
        /// The ring every node reads (`None`: one standalone node).
        ring: Option<SharedRing>,
        hosts: Vec<Host>,
        /// (arrival, from, to, bytes)
        flight: Vec<(Duration, SocketAddr, SocketAddr, Vec<u8>)>,
        /// Every `loss`-th datagram is dropped (0: none).
        loss: u32,
        counter: u32,
        /// Drops everything between earth hosts (an unpunchable pair).
        block_peers: bool,
        /// Datagrams each host sent to the sky.
        to_sky: Vec<u32>,
        /// Every reply a sky node sent: (node, to, kind).
        replies: Vec<(SocketAddr, SocketAddr, Kind)>,
        /// The ring version of every keepalive the sky received.
        keepalive_rings: Vec<u32>,
    }

    fn sky() -> SocketAddr {
        SKY.parse().unwrap()
    }

    /// Sky node `n` of a ring: 198.51.100.n:7700 (node 1 is `SKY`).
    fn node(n: u8) -> SocketAddr {
        SocketAddr::new([198, 51, 100, n].into(), 7700)
    }

    /// Every address its own operator, so five nodes give five prefixes.
    fn slash32() -> RingConfig {
        RingConfig {
            prefix_v4: 32,
            ..RingConfig::default()
        }
    }

    fn identity(seed: u8) -> Identity {
        Identity::generate(
            [seed; 64],
            DEFAULT_EPOCH,
            T0 - Duration::from_secs(86_400 * 3),
        )
    }

    fn sorted(mut v: Vec<SocketAddr>) -> Vec<SocketAddr> {
        v.sort();
        v
    }

    /// `names.len()` users, all friends of each other, bootstrapping from
    /// `sky()`.
    fn hosts(names: &[&str], config: impl Fn(&mut Config)) -> Vec<Host> {
        let mut ids: Vec<Identity> = (0..names.len()).map(|i| identity(i as u8 + 1)).collect();
        let invites: Vec<Invite> = ids.iter_mut().map(|id| id.invite(T0)).collect();
        names
            .iter()
            .enumerate()
            .map(|(i, _)| {
                let mut friends = Friends::default();
                for (j, name) in names.iter().enumerate() {
                    if j != i {
                        friends.add(name, invites[j].clone().into()).unwrap();
                    }
                }
                let state = State {
                    identity: ids[i].clone(),
                    friends,
                    pending_resets: Default::default(),
                };
                let mut c = Config::new(vec![sky()]);
                config(&mut c);
                Host {
                    earth: Earth::new(c, state, [i as u8 + 50; 32], T0),
                    public: format!("203.0.113.{}:4{i}000", i + 1).parse().unwrap(),
                    filtering: true,
                    sent_to: HashSet::new(),
                    events: Vec::new(),
                }
            })
            .collect()
    }

    impl Net {
        /// The users and one standalone sky node (no ring) at `sky()`.
        fn new(names: &[&str], config: impl Fn(&mut Config)) -> Net {
            Net {
                now: T0,
                skies: vec![SkyNode::new(sky(), [7; 32], None, Duration::ZERO)],
                ring: None,
                hosts: hosts(names, config),
                flight: Vec::new(),
                loss: 0,
                counter: 0,
                block_peers: false,
                to_sky: vec![0; names.len()],
                replies: Vec::new(),
                keepalive_rings: Vec::new(),
            }
        }

        /// The users and a sky of `n` ring-aware nodes, `node(1..=n)`,
        /// sharing one ring (k = 2, /32); the users bootstrap from node 1.
        fn with_ring(names: &[&str], n: u8, config: impl Fn(&mut Config)) -> Net {
            let shared = ring::shared(Ring::new(slash32(), (1..=n).map(node)));
            let mut net = Net::new(names, config);
            net.skies = (1..=n)
                .map(|i| SkyNode::new(node(i), [i; 32], Some(&shared), Duration::ZERO))
                .collect();
            net.ring = Some(shared);
            net
        }

        /// The ring the sky holds now.
        fn sky_ring(&self) -> Arc<Ring> {
            self.ring.as_ref().expect("a ring").load_full()
        }

        /// Every node now reads a ring of `members`.
        fn set_ring(&mut self, members: impl IntoIterator<Item = SocketAddr>) -> Ring {
            let ring = Ring::new(slash32(), members);
            self.ring
                .as_ref()
                .expect("a ring")
                .store(Arc::new(ring.clone()));
            ring
        }

        /// A new node at `addr` that reads the sky's ring.
        fn add_node(&mut self, addr: SocketAddr, secret: u8) {
            let node = SkyNode::new(addr, [secret; 32], self.ring.as_ref(), self.now - T0);
            self.skies.push(node);
        }

        fn sky_node(&mut self, addr: SocketAddr) -> &mut SkyNode {
            self.skies
                .iter_mut()
                .find(|s| s.addr == addr)
                .expect("a sky node")
        }

        fn is_sky(&self, addr: SocketAddr) -> bool {
            self.skies.iter().any(|s| s.addr == addr)
        }

        /// The sky nodes that have `address` online now.
        fn holders(&self, address: &VirtualAddr) -> Vec<SocketAddr> {
            let now = (self.now - T0).as_secs() as u32;
            let found = self.skies.iter().filter(|s| {
                matches!(
                    s.presence.lookup(address, now, u8::MAX),
                    crate::presence::Found::Online { .. }
                )
            });
            sorted(found.map(|s| s.addr).collect())
        }

        /// Whether the sky has `address` online now.
        fn present(&self, address: &VirtualAddr) -> bool {
            !self.holders(address).is_empty()
        }

        /// The first sky node forgets everything (it restarted).
        fn restart_sky(&mut self) {
            let addr = self.skies[0].addr;
            self.restart_node(addr);
        }

        /// Sky node `addr` forgets everything and draws a new secret.
        fn restart_node(&mut self, addr: SocketAddr) {
            let (ring, now) = (self.ring.clone(), self.now - T0);
            let node = self.sky_node(addr);
            *node = SkyNode::new(addr, [node.secret[0] ^ 0xff; 32], ring.as_ref(), now);
        }

        fn send(&mut self, from: SocketAddr, to: SocketAddr, bytes: Vec<u8>) {
            self.counter += 1;
            let coin = (u64::from(self.counter).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 40) as u32;
            if self.loss != 0 && coin.is_multiple_of(self.loss) {
                return;
            }
            let sky_side = self.is_sky(to) || self.is_sky(from);
            if self.block_peers && !sky_side {
                return;
            }
            let latency = Duration::from_millis(if sky_side { 10 } else { 20 });
            self.flight.push((self.now + latency, from, to, bytes));
        }

        fn flush(&mut self, i: usize) {
            let from = self.hosts[i].public;
            while let Some(t) = self.hosts[i].earth.poll_transmit() {
                self.hosts[i].sent_to.insert(t.dst);
                if self.is_sky(t.dst) {
                    self.to_sky[i] += 1;
                }
                self.send(from, t.dst, t.bytes);
            }
            while let Some(e) = self.hosts[i].earth.poll_event() {
                self.hosts[i].events.push(e);
            }
        }

        fn deliver(&mut self, from: SocketAddr, to: SocketAddr, mut bytes: Vec<u8>) {
            if let Some(s) = self.skies.iter().position(|s| s.addr == to) {
                if self.skies[s].down {
                    return;
                }
                if let Ok(Message::Keepalive { ring, .. }) = Message::decode(&bytes) {
                    self.keepalive_rings.push(ring);
                }
                let len = bytes.len();
                bytes.resize(2048, 0);
                let mut reply = [0u8; wire::MAX_MESSAGE_LEN];
                let now = self.now - T0;
                let out = self.skies[s]
                    .shard
                    .handle_datagram(now, from, &mut bytes, len, &mut reply);
                if let Some(n) = out.reply {
                    let kind = Message::decode(&reply[..n]).unwrap().kind();
                    self.replies.push((to, from, kind));
                    self.send(to, from, reply[..n].to_vec());
                }
                if let Some(t) = out.in_place {
                    self.send(to, t.dst, bytes[..t.len].to_vec());
                }
                return;
            }
            let Some(i) = self.hosts.iter().position(|h| h.public == to) else {
                return; // nobody there (a NAT mapping that is gone)
            };
            let h = &mut self.hosts[i];
            if h.filtering && !h.sent_to.contains(&from) {
                return;
            }
            h.earth.handle_datagram(self.now, from, &mut bytes);
            self.flush(i);
        }

        /// Runs the network until `until` (virtual time).
        fn run_until(&mut self, until: Duration) {
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
                let next = [next_flight, next_timer].into_iter().flatten().min();
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
            }
            panic!("the cores never went idle: a timer that does not move");
        }

        fn run_for(&mut self, d: Duration) {
            self.run_until(self.now + d);
        }

        fn online(&mut self, i: usize) {
            let now = self.now;
            self.hosts[i].earth.go_online(now);
            self.flush(i);
        }

        fn lookup(&mut self, i: usize, friend: &str) -> Result<(SocketAddr, Flags), Failure> {
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

        fn take_events(&mut self, i: usize) -> Vec<Event> {
            std::mem::take(&mut self.hosts[i].events)
        }

        /// The version of the view host `i` holds.
        fn version_held(&self, i: usize) -> Option<u32> {
            self.hosts[i].earth.ring().map(|(_, v)| v)
        }
    }

    fn registered(events: &[Event]) -> Vec<(VirtualAddr, SocketAddr)> {
        events
            .iter()
            .filter_map(|e| match e {
                Event::Registered { address, observed } => Some((*address, *observed)),
                _ => None,
            })
            .collect()
    }

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[test]
    fn registers_keeps_alive_and_is_found() {
        let mut net = Net::new(&["alice", "bob"], |_| {});
        net.online(0);
        net.run_for(secs(1));
        let regs = registered(&net.take_events(0));
        assert_eq!(regs.len(), 1);
        assert_eq!(regs[0].1, net.hosts[0].public, "the observed endpoint");
        assert_eq!(net.hosts[0].earth.observed(), Some(net.hosts[0].public));
        let sent_before = net.to_sky[0];
        // Ten minutes later she is still there: keepalives, every 25 s.
        net.run_for(secs(600));
        let keepalives = net.to_sky[0] - sent_before;
        assert!((23..=25).contains(&keepalives), "{keepalives} keepalives");
        assert_eq!(net.lookup(1, "alice").unwrap().0, net.hosts[0].public);
        // The sky introduced bob to alice, by name.
        assert!(net.take_events(0).iter().any(|e| matches!(e,
            Event::Introduced { friend: Some(f), endpoint, .. } if f == "bob" && *endpoint == net.hosts[1].public)));
        net.hosts[0].earth.go_offline();
        net.flush(0);
        net.run_for(secs(1));
        assert_eq!(net.lookup(1, "alice"), Err(Failure::Offline));
    }

    #[test]
    fn lookup_of_a_silent_sky_fails_in_bounded_time() {
        let mut net = Net::new(&["alice", "bob"], |_| {});
        net.loss = 1; // everything lost
        assert_eq!(net.lookup(1, "alice"), Err(Failure::SkySilent));
        let now = net.now;
        net.hosts[1].earth.lookup(now, "nobody");
        net.flush(1);
        assert!(net.take_events(1).contains(&Event::Lookup {
            friend: "nobody".into(),
            result: Err(Failure::NoSuchFriend)
        }));
    }

    #[test]
    fn registers_again_when_the_nat_mapping_changes() {
        let mut net = Net::new(&["alice", "bob"], |_| {});
        net.online(0);
        net.run_for(secs(1));
        net.take_events(0);
        // Her NAT gives her a new public port.
        let moved: SocketAddr = "203.0.113.1:40999".parse().unwrap();
        net.hosts[0].public = moved;
        net.run_for(secs(30));
        let regs = registered(&net.take_events(0));
        assert_eq!(regs.len(), 1, "registered again after one keepalive");
        assert_eq!(regs[0].1, moved);
        assert_eq!(net.lookup(1, "alice").unwrap().0, moved);
    }

    #[test]
    fn registers_again_when_the_node_forgot() {
        let mut net = Net::new(&["alice", "bob"], |_| {});
        net.online(0);
        net.run_for(secs(1));
        net.take_events(0);
        net.restart_sky();
        assert_eq!(net.lookup(1, "alice"), Err(Failure::Offline));
        net.run_for(secs(30));
        assert_eq!(registered(&net.take_events(0)).len(), 1);
        assert!(net.lookup(1, "alice").is_ok());
    }

    #[test]
    fn moves_to_the_next_address_at_the_boundary() {
        let mut net = Net::new(&["alice", "bob"], |_| {});
        net.online(0);
        net.run_for(secs(1));
        let first = registered(&net.take_events(0))[0].0;
        let schedule = net.hosts[0].earth.state().identity.schedule;
        let next = schedule.start_of(Epoch(schedule.epoch_at(net.now).0 + 1));
        net.run_until(next + secs(1));
        let regs = registered(&net.take_events(0));
        assert_eq!(regs.len(), 1);
        assert_ne!(regs[0].0, first);
        // The old address is gone at once; bob finds her under the new one.
        assert!(!net.present(&first));
        assert!(net.present(&regs[0].0));
        assert!(net.lookup(1, "alice").is_ok());
    }

    #[test]
    fn dual_registration_keeps_the_previous_address_for_h() {
        let mut net = Net::new(&["alice", "bob"], |c| c.overlap = Overlap::Dual);
        net.online(0);
        net.run_for(secs(1));
        let schedule = net.hosts[0].earth.state().identity.schedule;
        let next = schedule.start_of(Epoch(schedule.epoch_at(net.now).0 + 1));
        net.run_until(next - secs(60));
        let regs = registered(&net.take_events(0));
        let old = regs.last().unwrap().0;
        net.run_until(next + secs(60));
        let new = registered(&net.take_events(0)).last().unwrap().0;
        assert_ne!(old, new);
        assert!(net.present(&old), "previous address kept during H");
        assert!(net.present(&new));
        net.run_until(next + DEFAULT_OVERLAP + secs(60));
        assert!(!net.present(&old), "and dropped after H");
        assert!(net.present(&new));
    }

    fn delivered(events: &[Event], id: u64) -> Option<(SocketAddr, u32)> {
        events.iter().find_map(|e| match e {
            Event::Delivered {
                id: i, peer, sent, ..
            } if *i == id => Some((*peer, *sent)),
            _ => None,
        })
    }

    fn messages(events: &[Event]) -> Vec<(String, Vec<u8>)> {
        events
            .iter()
            .filter_map(|e| match e {
                Event::Message { friend, payload } => Some((friend.clone(), payload.clone())),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn send_punches_through_filtering_nats_and_delivers() {
        let mut net = Net::new(&["alice", "bob"], |_| {});
        net.online(0);
        net.run_for(secs(1));
        let now = net.now;
        let id = net.hosts[1].earth.send(now, "alice", b"hello");
        net.flush(1);
        net.run_for(secs(6));
        let bob = net.take_events(1);
        let (peer, sent) = delivered(&bob, id).expect("delivered");
        assert_eq!(peer, net.hosts[0].public);
        assert!(sent <= 4, "{sent} datagrams");
        let alice = net.take_events(0);
        assert_eq!(
            messages(&alice),
            vec![("alice".replace("alice", "bob"), b"hello".to_vec())]
        );
        assert!(
            alice
                .iter()
                .any(|e| matches!(e, Event::Connected { friend, .. } if friend == "bob"))
        );
        // Over the session: best-effort datagrams both ways, and a second
        // reliable message needs no new handshake.
        assert!(net.hosts[0].earth.send_datagram("bob", b"ping"));
        net.flush(0);
        let now = net.now;
        let id2 = net.hosts[1].earth.send(now, "alice", b"again");
        net.flush(1);
        net.run_for(secs(1));
        let bob = net.take_events(1);
        assert_eq!(delivered(&bob, id2).unwrap().1, 1);
        assert_eq!(
            messages(&bob),
            vec![("alice".to_string(), b"ping".to_vec())]
        );
    }

    #[test]
    fn delivery_survives_loss() {
        for loss in [2, 3, 5] {
            let mut net = Net::new(&["alice", "bob"], |_| {});
            net.loss = loss;
            net.online(0);
            net.run_for(secs(30));
            let now = net.now;
            let id = net.hosts[1].earth.send(now, "alice", b"through loss");
            net.flush(1);
            net.run_for(secs(6));
            let bob = net.take_events(1);
            assert!(delivered(&bob, id).is_some(), "loss 1/{loss}: {bob:?}");
            let got = messages(&net.take_events(0));
            assert_eq!(
                got.len(),
                1,
                "delivered exactly once despite retries: {got:?}"
            );
        }
    }

    #[test]
    fn both_sending_at_once_both_deliver() {
        let mut net = Net::new(&["alice", "bob"], |_| {});
        net.online(0);
        net.online(1);
        net.run_for(secs(1));
        let now = net.now;
        let a = net.hosts[0].earth.send(now, "bob", b"from alice");
        let b = net.hosts[1].earth.send(now, "alice", b"from bob");
        net.flush(0);
        net.flush(1);
        net.run_for(secs(6));
        let (ea, eb) = (net.take_events(0), net.take_events(1));
        assert!(delivered(&ea, a).is_some(), "{ea:?}");
        assert!(delivered(&eb, b).is_some(), "{eb:?}");
        assert_eq!(
            messages(&ea),
            vec![("bob".to_string(), b"from bob".to_vec())]
        );
        assert_eq!(
            messages(&eb),
            vec![("alice".to_string(), b"from alice".to_vec())]
        );
    }

    #[test]
    fn an_offline_friend_fails_and_a_silent_path_gives_up() {
        let mut net = Net::new(&["alice", "bob"], |_| {});
        let now = net.now;
        let id = net.hosts[1].earth.send(now, "alice", b"x");
        net.flush(1);
        net.run_for(secs(6));
        assert!(net.take_events(1).contains(&Event::Failed {
            friend: "alice".into(),
            id,
            why: Failure::Offline
        }));
        // Online, but the path drops everything between the two.
        net.online(0);
        net.run_for(secs(1));
        net.block_peers = true;
        let now = net.now;
        let id = net.hosts[1].earth.send(now, "alice", b"x");
        net.flush(1);
        net.run_for(secs(6));
        assert!(net.take_events(1).contains(&Event::Failed {
            friend: "alice".into(),
            id,
            why: Failure::Unreachable
        }));
        assert!(
            net.hosts[1]
                .earth
                .poll_timeout()
                .is_none_or(|t| t > net.now)
        );
    }

    #[test]
    fn strangers_and_forged_introductions_are_refused() {
        let mut net = Net::new(&["alice", "bob"], |_| {});
        net.online(0);
        net.run_for(secs(1));
        // A forged introduction from somewhere else than the sky.
        let intro = Message::Introduction {
            caller: VirtualAddr([1; 16]),
            mac: wire::Mac([0; 8]),
            endpoint: "192.0.2.7:9".parse().unwrap(),
        };
        let mut buf = [0u8; 64];
        let n = intro.emit(&mut buf);
        let now = net.now;
        let stranger: SocketAddr = "192.0.2.7:9".parse().unwrap();
        net.hosts[0]
            .earth
            .handle_datagram(now, stranger, &mut buf[..n]);
        net.hosts[0]
            .earth
            .handle_datagram(now, sky(), &mut buf[..n]);
        // A stranger's handshake: a valid msg1 from a key alice does not know.
        let mut msg1 = [0u8; MSG1_LEN];
        let alice_pub = net.hosts[0].earth.state().identity.public_key();
        let _ = Initiator::start([99; 32], alice_pub, [98; 32], &mut msg1);
        net.hosts[0].earth.handle_datagram(now, stranger, &mut msg1);
        net.flush(0);
        let events = net.take_events(0);
        assert_eq!(
            events
                .iter()
                .filter(|e| **e == Event::ForgedIntroduction)
                .count(),
            2,
            "{events:?}"
        );
        assert!(events.iter().any(|e| matches!(
            e,
            Event::HandshakeRefused {
                error: handshake::HandshakeError::Stranger,
                ..
            }
        )));
        assert!(
            net.flight.iter().all(|f| f.2 != stranger),
            "nothing sent to the stranger"
        );
    }

    #[test]
    fn address_reset_reaches_friends_and_is_acknowledged_after_the_save() {
        let mut net = Net::new(&["alice", "bob", "carol"], |c| c.reset_retry = secs(60));
        net.online(1);
        net.run_for(secs(1));
        let now = net.now;
        let old_alice = net.hosts[2].earth.state.friends.0["alice"].clone();
        net.hosts[0]
            .earth
            .remove_friend(now, "carol", ChainKey::from_bytes([77; 32]))
            .unwrap();
        net.flush(0);
        assert!(net.take_events(0).contains(&Event::SaveState));
        assert_eq!(
            net.hosts[0].earth.state().pending_resets,
            ["bob".to_string()].into()
        );
        net.online(0);
        net.run_for(secs(6));
        let bob = net.take_events(1);
        assert!(
            bob.contains(&Event::ResetAdopted {
                friend: "alice".into()
            }),
            "{bob:?}"
        );
        // Bob has not saved yet: no acknowledgement, alice still pending.
        assert!(
            !net.take_events(0)
                .iter()
                .any(|e| matches!(e, Event::ResetAcknowledged { .. }))
        );
        // Bob's save failed and he never acknowledges that notice: alice
        // sends it again a minute later; this time bob saves.
        net.hosts[1].earth.held.clear();
        let mut saved = false;
        for _ in 0..700 {
            net.run_for(Duration::from_millis(100));
            if net.take_events(1).contains(&Event::SaveState) {
                net.hosts[1].earth.saved();
                net.flush(1);
                saved = true;
                break;
            }
        }
        assert!(saved, "the notice came again");
        net.run_for(secs(2));
        let alice = net.take_events(0);
        assert!(
            alice.contains(&Event::ResetAcknowledged {
                friend: "bob".into()
            }),
            "{alice:?}"
        );
        assert!(net.hosts[0].earth.state().pending_resets.is_empty());
        // Bob finds alice under her new chain; carol, under the old, does not.
        assert!(net.lookup(1, "alice").is_ok());
        assert_eq!(net.lookup(2, "alice"), Err(Failure::Offline));
        let mut old = old_alice;
        let e = old.schedule.epoch_at(net.now);
        assert!(!net.present(&old.chain.address_at(e).unwrap()));
    }

    #[test]
    fn a_forged_reset_notice_is_ignored() {
        // A notice carrying another key than the one the session proved.
        let mut net = Net::new(&["alice", "bob"], |_| {});
        net.online(0);
        net.run_for(secs(1));
        let mut other = identity(42);
        let mut forged = vec![payload::RESET];
        forged.extend_from_slice(&other.invite(net.now).to_bytes());
        let now = net.now;
        net.hosts[1].earth.enqueue(now, "alice", forged);
        net.flush(1);
        net.run_for(secs(6));
        let alice = net.take_events(0);
        assert!(
            !alice
                .iter()
                .any(|e| matches!(e, Event::ResetAdopted { .. } | Event::SaveState)),
            "{alice:?}"
        );
        let bob_key = net.hosts[1].earth.state().identity.public_key();
        assert_eq!(
            net.hosts[0].earth.state().friends.0["bob"].public_key,
            bob_key
        );
    }

    #[test]
    fn cover_traffic_registers_random_addresses_and_drops_them() {
        let mut net = Net::new(&["alice"], |c| c.cover = Some(secs(120)));
        net.online(0);
        net.run_for(secs(3600));
        let now = net.now;
        let id = &mut net.hosts[0].earth.state.identity;
        let own = id.chain.address_at(id.schedule.epoch_at(now)).unwrap();
        // Registrations seen by the sky: hers plus cover ones, and no cover
        // one outlives its hold (at most 5 keepalive intervals).
        let covers = net.hosts[0]
            .earth
            .registrations
            .iter()
            .filter(|r| matches!(r.kind, RegKind::Cover { .. }))
            .count();
        assert!(net.present(&own));
        assert!(
            net.skies[0].presence.len() <= 1 + covers,
            "cover entries are unregistered when done"
        );
        assert!(
            net.to_sky[0] > 160 + 10,
            "cover registrations and their keepalives were sent"
        );
        // Without cover traffic the same hour is only her keepalives.
        let mut quiet = Net::new(&["alice"], |_| {});
        quiet.online(0);
        quiet.run_for(secs(3600));
        // (keepalives, plus a few sent again with a rotated cookie)
        assert!(quiet.to_sky[0] <= 160, "{}", quiet.to_sky[0]);
        assert_eq!(quiet.skies[0].presence.len(), 1);
    }

    // ---- a sky of many nodes ----

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn owners(ring: &Ring, address: &VirtualAddr) -> Vec<SocketAddr> {
        sorted(ring.owners(address).as_slice().collect())
    }

    /// Alice online in a sky of five; her address and its owners.
    fn alice_in_five() -> (Net, VirtualAddr) {
        let mut net = Net::with_ring(&["alice", "bob"], 5, |_| {});
        net.online(0);
        net.run_for(secs(1));
        let regs = registered(&net.hosts[0].events);
        assert_eq!(regs.len(), 1, "{:?}", net.hosts[0].events);
        (net, regs[0].0)
    }

    #[test]
    fn registers_with_both_owners_in_a_sky_of_five_and_is_found() {
        let (mut net, address) = alice_in_five();
        let events = net.take_events(0);
        let ring = net.sky_ring();
        assert!(events.contains(&Event::Sky {
            version: ring.version(),
            nodes: 5
        }));
        assert_eq!(
            registered(&events),
            vec![(address, net.hosts[0].public)],
            "one event for the address, not one per owner"
        );
        let owners = owners(&ring, &address);
        assert_eq!(owners.len(), 2);
        assert_eq!(net.holders(&address), owners, "both owners, no other node");
        assert_eq!(sorted(net.hosts[0].earth.holders(&address)), owners);
        // Keepalives to both owners carry the ring version; nobody asks her
        // to register again.
        net.run_for(secs(60));
        assert!(registered(&net.take_events(0)).is_empty());
        assert!(net.keepalive_rings.len() >= 4, "{:?}", net.keepalive_rings);
        assert!(net.keepalive_rings.iter().all(|&r| r == ring.version()));
        assert_eq!(net.holders(&address), owners);
        // Bob finds her through her first owner, which introduces him.
        assert_eq!(net.lookup(1, "alice").unwrap().0, net.hosts[0].public);
        let first = ring.owners(&address).first().unwrap();
        let bob = net.hosts[1].public;
        assert!(net.replies.contains(&(first, bob, Kind::Online)));
        assert!(net.take_events(0).iter().any(|e| matches!(e,
            Event::Introduced { friend: Some(f), .. } if f == "bob")));
    }

    #[test]
    fn a_silent_owner_loses_no_one() {
        let (mut net, address) = alice_in_five();
        let ring = net.sky_ring();
        let owners = owners(&ring, &address);
        // The owner a lookup asks first stops answering anything.
        let first = ring.owners(&address).first().unwrap();
        net.sky_node(first).down = true;
        for _ in 0..3 {
            assert_eq!(net.lookup(1, "alice").unwrap().0, net.hosts[0].public);
            net.run_for(secs(30));
        }
        let bob = net.take_events(1);
        assert!(
            !bob.iter()
                .any(|e| matches!(e, Event::Lookup { result: Err(_), .. })),
            "{bob:?}"
        );
        let alice = net.take_events(0);
        assert!(!alice.contains(&Event::SkySilent), "{alice:?}");
        let other = owners.iter().find(|o| **o != first).unwrap();
        assert!(net.holders(&address).contains(other));
    }

    #[test]
    fn a_joining_node_gets_the_address_within_one_keepalive_interval() {
        let (mut net, address) = alice_in_five();
        net.take_events(0);
        let before = owners(&net.sky_ring(), &address);
        // A sixth node whose position makes it an owner of her address.
        let five = || (1..=5).map(node);
        let newcomer = (6..=254)
            .map(node)
            .find(|n| {
                Ring::new(slash32(), five().chain([*n]))
                    .owners(&address)
                    .contains(*n)
            })
            .expect("some position owns it");
        net.add_node(newcomer, 6);
        let six = net.set_ring(five().chain([newcomer]));
        let after = owners(&six, &address);
        assert_ne!(before, after);
        net.run_for(secs(25)); // one keepalive interval
        let alice = net.hosts[0].public;
        assert!(
            net.replies
                .iter()
                .any(|(_, to, k)| *to == alice && *k == Kind::RingChanged)
        );
        assert_eq!(net.version_held(0), Some(six.version()));
        assert_eq!(
            net.holders(&address),
            after,
            "registered with the new owner, unregistered at the old"
        );
        assert!(registered(&net.take_events(0)).is_empty(), "held all along");
        // Bob, who never fetched before, computes owners on the new ring
        // and finds her at its first owner.
        assert_eq!(net.lookup(1, "alice").unwrap().0, alice);
        assert_eq!(net.version_held(1), Some(six.version()));
        let first = six.owners(&address).first().unwrap();
        let bob = net.hosts[1].public;
        assert!(net.replies.contains(&(first, bob, Kind::Online)));
    }

    #[test]
    fn a_stale_view_is_told_not_owner_fetches_again_and_finds() {
        let (mut net, address) = alice_in_five();
        // Bob fetches the view of five.
        assert!(net.lookup(1, "alice").is_ok());
        let five = net.sky_ring();
        assert_eq!(net.version_held(1), Some(five.version()));
        // Both of her owners leave the ring (they keep running); she moves.
        let leaving: Vec<SocketAddr> = five.owners(&address).as_slice().collect();
        let three = net.set_ring((1..=5).map(node).filter(|n| !leaving.contains(n)));
        net.run_for(secs(26));
        assert_eq!(net.holders(&address), owners(&three, &address));
        // Bob still holds five: the node he asks says it does not own her.
        assert_eq!(net.version_held(1), Some(five.version()));
        net.replies.clear();
        assert_eq!(net.lookup(1, "alice").unwrap().0, net.hosts[0].public);
        let bob = net.hosts[1].public;
        assert!(
            net.replies
                .iter()
                .any(|r| *r == (leaving[0], bob, Kind::NotOwner)),
            "{:?}",
            net.replies
        );
        assert!(
            net.replies
                .iter()
                .any(|r| r.1 == bob && r.2 == Kind::Online && !leaving.contains(&r.0))
        );
        assert_eq!(net.version_held(1), Some(three.version()), "fetched again");
        assert!(
            !net.take_events(1)
                .iter()
                .any(|e| matches!(e, Event::Lookup { result: Err(_), .. }))
        );
    }

    #[test]
    fn an_introduction_is_checked_with_the_key_of_the_node_it_came_from() {
        let (mut net, address) = alice_in_five();
        net.take_events(0);
        let owners: Vec<SocketAddr> = net.sky_ring().owners(&address).as_slice().collect();
        let (a, b) = (owners[0], owners[1]);
        let key_b =
            keys::IntroKeys::new(&NodeSecret::new(net.sky_node(b).secret)).key_for(&address);
        let caller = VirtualAddr([9; 16]);
        let endpoint: SocketAddr = "192.0.2.9:9999".parse().unwrap();
        let intro = Message::Introduction {
            caller,
            mac: keys::introduction_mac(&key_b, &caller, &endpoint),
            endpoint,
        };
        let mut bytes = vec![0u8; intro.buffer_len()];
        intro.emit(&mut bytes);
        let stranger = (1..=5).map(node).find(|n| !owners.contains(n)).unwrap();
        let now = net.now;
        // B's key, but from A or from a node she never registered with.
        for from in [a, stranger] {
            net.hosts[0]
                .earth
                .handle_datagram(now, from, &mut bytes.clone());
            net.flush(0);
            let events = net.take_events(0);
            assert_eq!(events, vec![Event::ForgedIntroduction], "from {from}");
        }
        // From B itself it is an introduction.
        net.hosts[0]
            .earth
            .handle_datagram(now, b, &mut bytes.clone());
        net.flush(0);
        assert!(net.take_events(0).contains(&Event::Introduced {
            friend: None,
            caller,
            endpoint
        }));
    }

    #[test]
    fn an_owner_that_forgot_is_registered_with_again_alone() {
        let (mut net, address) = alice_in_five();
        net.take_events(0);
        let owners = owners(&net.sky_ring(), &address);
        net.restart_node(owners[1]);
        assert_eq!(net.holders(&address), vec![owners[0]]);
        net.run_for(secs(26));
        assert_eq!(net.holders(&address), owners);
        assert!(registered(&net.take_events(0)).is_empty(), "held all along");
        // The new secret's introduction key replaced nothing: both work.
        assert!(net.lookup(1, "alice").is_ok());
    }

    #[test]
    fn bootstrap_moves_on_to_the_next_node_that_answers() {
        let dead: SocketAddr = "192.0.2.99:7700".parse().unwrap();
        let mut net = Net::with_ring(&["alice", "bob"], 5, |c| c.sky = vec![dead, node(3)]);
        net.online(0);
        net.run_for(secs(3));
        assert_eq!(registered(&net.take_events(0)).len(), 1);
        assert!(net.lookup(1, "alice").is_ok());
    }

    #[test]
    fn a_standalone_node_is_a_sky_of_one() {
        let mut net = Net::new(&["alice", "bob"], |_| {});
        net.online(0);
        net.run_for(secs(60));
        let events = net.take_events(0);
        assert!(events.contains(&Event::Sky {
            version: 0,
            nodes: 1
        }));
        assert_eq!(registered(&events).len(), 1);
        assert!(!net.keepalive_rings.is_empty());
        assert!(
            net.keepalive_rings.iter().all(|&r| r == 0),
            "keepalives carry no ring version"
        );
        assert!(net.lookup(1, "alice").is_ok());
    }

    #[test]
    fn a_silent_sky_is_reported_once_and_tried_again() {
        let mut net = Net::new(&["alice", "bob"], |_| {});
        net.skies[0].down = true;
        net.online(0);
        net.run_for(secs(60));
        let events = net.take_events(0);
        assert_eq!(
            events.iter().filter(|e| **e == Event::SkySilent).count(),
            1,
            "{events:?}"
        );
        assert!(net.to_sky[0] < 100, "backs off: {}", net.to_sky[0]);
        net.skies[0].down = false;
        net.run_for(secs(60));
        assert_eq!(registered(&net.take_events(0)).len(), 1);
    }

    // ---- the members fetch, driven by hand ----

    /// Alice's core (friend "bob") bootstrapping from `bootstrap`.
    fn lone(bootstrap: Vec<SocketAddr>) -> Earth {
        hosts(&["alice", "bob"], |c| c.sky = bootstrap.clone())
            .swap_remove(0)
            .earth
    }

    fn drain(earth: &mut Earth) -> Vec<(SocketAddr, Message)> {
        let mut out = Vec::new();
        while let Some(t) = earth.poll_transmit() {
            if let Ok(m) = Message::decode(&t.bytes) {
                out.push((t.dst, m));
            }
        }
        out
    }

    /// The members request among `sent`: (node, tag, start).
    fn members_request(sent: &[(SocketAddr, Message)]) -> Option<(SocketAddr, Tag, u16)> {
        sent.iter().find_map(|(dst, m)| match *m {
            Message::Members {
                tag, start, len, ..
            } => {
                assert_eq!(len, MEMBERS_REQUEST_LEN);
                Some((*dst, tag, start))
            }
            _ => None,
        })
    }

    fn registers(sent: &[(SocketAddr, Message)]) -> Vec<(SocketAddr, Tag)> {
        sent.iter()
            .filter_map(|(dst, m)| match *m {
                Message::Register { tag, .. } => Some((*dst, tag)),
                _ => None,
            })
            .collect()
    }

    /// A members page as a node writes it, from index `start` of `members`.
    fn page(tag: Tag, version: u32, start: u16, members: &[SocketAddr]) -> Vec<u8> {
        let mut buf = vec![0u8; wire::MAX_DATAGRAM_LEN];
        let header = Message::MembersPage {
            tag,
            version,
            config: slash32(),
            total: members.len() as u16,
            start,
        };
        let rest = members.iter().skip(start.into()).copied();
        let (n, _) = wire::emit_members_page(&mut buf, MEMBERS_REQUEST_LEN.into(), header, rest);
        buf.truncate(n);
        buf
    }

    fn own_address(earth: &mut Earth, now: Duration) -> VirtualAddr {
        let id = &mut earth.state.identity;
        id.chain.address_at(id.schedule.epoch_at(now)).unwrap()
    }

    #[test]
    fn members_are_read_page_by_page_and_again_when_the_view_changes_meanwhile() {
        let mut earth = lone(vec![sky()]);
        earth.go_online(T0);
        let sent = drain(&mut earth);
        let (dst, tag, start) = members_request(&sent).expect("a members request");
        assert_eq!((dst, start), (sky(), 0));
        assert!(registers(&sent).is_empty(), "no owners before the view");
        let many: Vec<SocketAddr> = (1..=200).map(node).collect();
        let fewer = &many[..199];
        earth.handle_datagram(T0, sky(), &mut page(tag, 111, 0, &many));
        let (_, tag, second) = members_request(&drain(&mut earth)).unwrap();
        assert!((100..200).contains(&second), "{second}");
        // A page from elsewhere, or for another start, is not the answer.
        earth.handle_datagram(T0, node(2), &mut page(tag, 111, second, &many));
        earth.handle_datagram(T0, sky(), &mut page(tag, 111, 0, &many));
        assert!(drain(&mut earth).is_empty());
        // The view changes before the second page: start over.
        earth.handle_datagram(T0, sky(), &mut page(tag, 222, second, fewer));
        let (_, tag, start) = members_request(&drain(&mut earth)).unwrap();
        assert_eq!(start, 0);
        earth.handle_datagram(T0, sky(), &mut page(tag, 222, 0, fewer));
        let (_, tag, start) = members_request(&drain(&mut earth)).unwrap();
        assert_eq!(start, second);
        earth.handle_datagram(T0, sky(), &mut page(tag, 222, start, fewer));
        let sent = drain(&mut earth);
        assert_eq!(members_request(&sent), None);
        let expected = Ring::new(slash32(), fewer.iter().copied());
        let (ring, version) = earth.ring().unwrap();
        assert_eq!((ring, version), (&expected, 222));
        let address = own_address(&mut earth, T0);
        let to: Vec<SocketAddr> = registers(&sent).into_iter().map(|r| r.0).collect();
        assert_eq!(sorted(to), owners(&expected, &address));
        let events: Vec<Event> = std::iter::from_fn(|| earth.poll_event()).collect();
        assert!(events.contains(&Event::Sky {
            version: 222,
            nodes: 199
        }));
    }

    #[test]
    fn a_member_without_an_address_stands_for_the_node_that_sent_the_page() {
        let mut earth = lone(vec![sky()]);
        earth.lookup(T0, "bob");
        let (_, tag, _) = members_request(&drain(&mut earth)).unwrap();
        let wildcard: SocketAddr = "0.0.0.0:7700".parse().unwrap();
        earth.handle_datagram(T0, sky(), &mut page(tag, 7, 0, &[wildcard, node(9)]));
        let (ring, _) = earth.ring().unwrap();
        assert!(ring.contains(sky()) && ring.contains(node(9)));
        assert!(!ring.contains(wildcard));
        // The lookup went on to bob's owners in that view.
        assert!(
            drain(&mut earth)
                .iter()
                .any(|(_, m)| matches!(m, Message::Lookup { .. }))
        );
    }

    #[test]
    fn a_not_owner_answer_to_a_registration_registers_with_the_hint_at_once() {
        let mut earth = lone(vec![sky()]);
        earth.go_online(T0);
        let (_, tag, _) = members_request(&drain(&mut earth)).unwrap();
        earth.handle_datagram(T0, sky(), &mut page(tag, 5, 0, &[node(1), node(2)]));
        let regs = registers(&drain(&mut earth));
        assert_eq!(
            sorted(regs.iter().map(|r| r.0).collect()),
            vec![node(1), node(2)]
        );
        // Node 2 has left the sky: it says so and names node 3.
        let t2 = regs.iter().find(|r| r.0 == node(2)).unwrap().1;
        let not_owner = Message::NotOwner {
            tag: t2,
            version: 6,
            hint: node(3),
        };
        let mut bytes = vec![0u8; not_owner.buffer_len()];
        not_owner.emit(&mut bytes);
        earth.handle_datagram(T0 + ms(20), node(2), &mut bytes);
        let sent = drain(&mut earth);
        assert_eq!(
            registers(&sent).iter().map(|r| r.0).collect::<Vec<_>>(),
            vec![node(3)]
        );
        // The members again, from the node that said so, once a second
        // has passed since the last fetch.
        assert_eq!(members_request(&sent), None);
        let at = earth.poll_timeout().unwrap();
        assert!(at <= T0 + REFETCH_EVERY, "{at:?}");
        earth.handle_timeout(T0 + REFETCH_EVERY);
        let (from, _, start) = members_request(&drain(&mut earth)).expect("a refetch");
        assert_eq!((from, start), (node(2), 0));
    }
}
