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

use sky_proto::time::UnixTime;

use crate::handshake::{
    self, DATA, DATA_OVERHEAD, Initiator, MSG1, MSG1_LEN, MSG2, MSG2_LEN, Session,
};
use crate::invite::Invite;
use crate::ratchet::{ChainKey, DEFAULT_OVERLAP, Epoch};
use crate::state::State;
use sky_proto::intro;
use sky_proto::ring::{Ring, RingConfig};
use sky_proto::wire::{self, Cookie, Flags, IntroKey, Message, Packet, Tag, Token, VirtualAddr};

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
    pub(super) const ACK: u8 = 0x00;
    /// Application data, delivered reliably (acknowledged, retried).
    pub(super) const TEXT: u8 = 0x01;
    /// An address reset notice: the sender's new chain, as invite bytes.
    pub(super) const RESET: u8 = 0x02;
    /// Application data, best effort (no acknowledgement).
    pub(super) const DATAGRAM: u8 = 0x03;
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

/// One address the client keeps registered ([`Earth::registrations`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RegistrationInfo {
    /// The virtual address.
    pub address: VirtualAddr,
    /// A cover address (random, not the user's).
    pub cover: bool,
    /// The sky nodes that hold it now.
    pub holders: Vec<SocketAddr>,
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
    next: UnixTime,
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
    unheld_since: Option<UnixTime>,
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
        until: UnixTime,
    },
}

enum RegState {
    /// Sent, not answered yet.
    Pending {
        tag: Tag,
        first: UnixTime,
        next: UnixTime,
    },
    Active {
        observed: SocketAddr,
        interval: Duration,
        next_keepalive: UnixTime,
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
    fn settle(&mut self, now: UnixTime) {
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
    first: UnixTime,
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
    next: Option<UnixTime>,
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
    fn advance(&mut self, now: UnixTime, period: Duration) -> Option<SocketAddr> {
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
        next: UnixTime,
        /// When to look the friend up again: the lookup makes the sky
        /// introduce us again, in case that introduction was lost.
        relookup: UnixTime,
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
    queued: UnixTime,
    /// The sealed datagram in flight (retransmitted as is) and its counter.
    sealed: Option<(Vec<u8>, u64)>,
    next: UnixTime,
    sent: u32,
    deadline: UnixTime,
}

/// A connection to a friend.
struct Peer {
    endpoint: Option<SocketAddr>,
    phase: Phase,
    outbox: VecDeque<Outgoing>,
    deadline: UnixTime,
}

/// Punching towards an introduced friend until their handshake arrives.
struct Punch {
    endpoint: SocketAddr,
    next: UnixTime,
    until: UnixTime,
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
    fetch_allowed: UnixTime,
    registrations: Vec<Registration>,
    queries: Vec<Query>,
    peers: HashMap<String, Peer>,
    punches: Vec<Punch>,
    next_reset: UnixTime,
    next_cover: Option<UnixTime>,
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
    pub fn new(mut config: Config, state: State, seed: [u8; 32], now: UnixTime) -> Earth {
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
    pub fn go_online(&mut self, now: UnixTime) {
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

    /// The state could not be saved: the acknowledgements that waited on it
    /// are dropped, so each friend sends its notice again later and the
    /// change is saved then.
    pub fn save_failed(&mut self) {
        self.held.clear();
    }

    /// The addresses the client keeps registered now: its own (one, or two
    /// during a dual overlap) and cover addresses, each with the sky nodes
    /// that hold it.
    pub fn registrations(&self) -> Vec<RegistrationInfo> {
        self.registrations
            .iter()
            .map(|r| RegistrationInfo {
                address: r.address,
                cover: matches!(r.kind, RegKind::Cover { .. }),
                holders: self.holders(&r.address),
            })
            .collect()
    }

    /// Queues a sealed payload of any kind to `friend`, as
    /// [`Earth::send`] does for text: for tests of what a friend's client
    /// does with payloads the real client never sends (a forged reset).
    #[cfg(feature = "test-support")]
    pub fn send_raw_payload_for_test(
        &mut self,
        now: UnixTime,
        friend: &str,
        payload: Vec<u8>,
    ) -> u64 {
        self.enqueue(now, friend, payload)
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
    pub fn lookup(&mut self, now: UnixTime, friend: &str) {
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
    pub fn send(&mut self, now: UnixTime, friend: &str, payload: &[u8]) -> u64 {
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
        now: UnixTime,
        friend: &str,
        key: ChainKey,
    ) -> Result<(), crate::identity::FriendError> {
        self.state.reset_address(friend, key, now)?;
        self.peers.remove(friend);
        self.next_reset = now;
        self.events.push_back(Event::SaveState);
        self.handle_timeout(now);
        Ok(())
    }

    /// When [`Earth::handle_timeout`] should be called next.
    pub fn poll_timeout(&self) -> Option<UnixTime> {
        let mut t: Option<UnixTime> = None;
        let mut at = |d: UnixTime| t = Some(t.map_or(d, |t| t.min(d)));
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
    fn next_boundary(&self, schedule: crate::ratchet::Schedule) -> Option<UnixTime> {
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
    pub fn handle_timeout(&mut self, now: UnixTime) {
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
    pub fn handle_datagram(&mut self, now: UnixTime, from: SocketAddr, datagram: &mut [u8]) {
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
    fn start_fetch(&mut self, now: UnixTime, first: Option<SocketAddr>) {
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
    fn ensure_view(&mut self, now: UnixTime) {
        if self.view.is_none() && self.fetch.is_none() {
            self.start_fetch(now, None);
        }
    }

    /// A node's answer says the sky's view is `version`: fetch it from
    /// `from` unless it is the view we hold (at most every
    /// [`REFETCH_EVERY`], one fetch at a time).
    fn ring_changed(&mut self, now: UnixTime, from: SocketAddr, version: u32) {
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

    fn fetch_timer(&mut self, now: UnixTime) {
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
    fn fetch_next_node(&mut self, now: UnixTime) -> bool {
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
    fn fetch_failed(&mut self, now: UnixTime) {
        if self.fetch_next_node(now) {
            self.fetch_timer(now);
        }
    }

    fn members_page(&mut self, now: UnixTime, from: SocketAddr, page: &Packet<&[u8]>) {
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
    fn set_view(&mut self, now: UnixTime, ring: Ring, version: u32) {
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

    fn start_registration(&mut self, now: UnixTime, token: Token, kind: RegKind) {
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
    fn register_with(&mut self, now: UnixTime, i: usize, node: SocketAddr, via_hint: bool) {
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
    fn reconcile_registrations(&mut self, now: UnixTime) {
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
    fn wanted(&mut self, now: UnixTime) -> Vec<(Epoch, Token)> {
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

    fn update_registrations(&mut self, now: UnixTime) {
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

    fn register_cover(&mut self, now: UnixTime) {
        let mut token = [0u8; 16];
        token.copy_from_slice(&self.rng.bytes()[..16]);
        // Held like a real one: a few keepalive intervals, at random.
        let hold = self.config.keepalive.mul_f64(1.0 + 4.0 * self.rng.unit());
        self.start_registration(now, Token(token), RegKind::Cover { until: now + hold });
    }

    fn registration_timers(&mut self, now: UnixTime) {
        let retry_cap = self.config.keepalive;
        let give_up = self.config.give_up;
        let mut registers = Vec::new();
        let mut keepalives = Vec::new();
        for reg in &mut self.registrations {
            for o in &mut reg.owners {
                match &mut o.state {
                    RegState::Pending { tag, first, next } if now >= *next => {
                        // Backs off from `retry` up to the keepalive interval.
                        let waited = now.saturating_duration_since(*first);
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

    fn sky_datagram(&mut self, now: UnixTime, from: SocketAddr, datagram: &[u8]) {
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
                match intro::verify_introduction(intro_keys, datagram) {
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
        now: UnixTime,
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
    fn not_registered(&mut self, now: UnixTime, node: SocketAddr, tag: Tag) {
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
        now: UnixTime,
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

    fn introduced(&mut self, now: UnixTime, caller: VirtualAddr, endpoint: SocketAddr) {
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

    fn punch_timers(&mut self, now: UnixTime) {
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
    fn start_query(&mut self, now: UnixTime, friend: &str, for_connect: bool) -> bool {
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
    fn ask_next(&mut self, now: UnixTime, q: usize, t: usize) {
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
    fn reconcile_queries(&mut self, now: UnixTime) {
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

    fn query_timers(&mut self, now: UnixTime) {
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
    fn lookup_answer(&mut self, now: UnixTime, from: SocketAddr, tag: Tag, answer: Answer) {
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
        now: UnixTime,
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

    fn enqueue(&mut self, now: UnixTime, friend: &str, payload: Vec<u8>) -> u64 {
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

    fn start_handshake(&mut self, now: UnixTime, friend: &str, endpoint: SocketAddr) {
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

    fn peer_timers(&mut self, now: UnixTime) {
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

    fn enqueue_again(&mut self, now: UnixTime, friend: &str, o: Outgoing) {
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
    fn msg1(&mut self, now: UnixTime, from: SocketAddr, datagram: &[u8]) {
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

    fn msg2(&mut self, now: UnixTime, from: SocketAddr, datagram: &[u8]) {
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

    fn data(&mut self, now: UnixTime, from: SocketAddr, datagram: &mut [u8]) {
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

    fn delivered(&mut self, now: UnixTime, friend: &str, peer: SocketAddr, o: Outgoing) {
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
            elapsed: now.saturating_duration_since(o.queued),
            sent: o.sent,
        });
    }

    // ---- address reset ----

    fn send_pending_resets(&mut self, now: UnixTime) {
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
#[path = "tests/client.rs"]
mod tests;
