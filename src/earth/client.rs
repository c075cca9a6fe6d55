//! The earth client's sans-IO core: registration, keepalives, lookups,
//! introductions, hole punching, the friends' handshake, delivery and the
//! address reset — every protocol decision, and no socket, clock or
//! randomness.
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
//! Persistence stays with the driver: when the core changes what must
//! survive a restart (a friend's reset adopted, a pending reset
//! acknowledged) it emits [`Event::SaveState`]; an acknowledgement that
//! depends on the save is held until the driver calls [`Earth::saved`].

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::Duration;

use super::handshake::{
    self, DATA, DATA_OVERHEAD, Initiator, MSG1, MSG1_LEN, MSG2, MSG2_LEN, Session,
};
use super::invite::Invite;
use super::ratchet::{ChainKey, DEFAULT_OVERLAP, Epoch};
use super::state::State;
use crate::keys;
use crate::wire::{self, Cookie, Flags, IntroKey, Message, Tag, Token, VirtualAddr};

/// A datagram that only opens a NAT mapping; peers ignore it.
pub const PUNCH: u8 = 0x20;

/// How often a connection that has no answer yet looks the friend up
/// again (and so is introduced again).
const RELOOKUP: Duration = Duration::from_secs(1);

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
    /// The sky node.
    pub sky: SocketAddr,
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
    /// How often a request to the sky, a punch or a handshake message is
    /// sent again while unanswered. Default 100 ms.
    pub retry: Duration,
    /// When a lookup, connection or delivery gives up. Default 5 s.
    pub give_up: Duration,
}

impl Config {
    pub fn new(sky: SocketAddr) -> Config {
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
    /// The sky says the friend is not online.
    Offline,
    /// The sky did not answer within the time limit.
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
            Failure::SkySilent => "the sky node did not answer",
            Failure::Unreachable => "no answer on the punched path",
            Failure::NoSuchFriend => "no such friend",
            Failure::TooLarge => "the payload is too large",
        })
    }
}

/// What the application should know.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// Registered (again) under `address`; the sky sees us at `observed`.
    Registered {
        address: VirtualAddr,
        observed: SocketAddr,
    },
    /// The sky did not answer a registration within the time limit; the
    /// core keeps trying.
    SkySilent,
    /// The sky introduced a caller: a friend by name when the address is
    /// one of theirs. The core punches towards friends.
    Introduced {
        friend: Option<String>,
        caller: VirtualAddr,
        endpoint: SocketAddr,
    },
    /// An introduction that did not come from our sky node or whose MAC did
    /// not verify: dropped.
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
}

/// One registration with the sky: the user's own address of an epoch, or
/// a random cover address.
struct Registration {
    token: Token,
    address: VirtualAddr,
    kind: RegKind,
    state: RegState,
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
        silent_reported: bool,
    },
    Active {
        observed: SocketAddr,
        interval: Duration,
        next_keepalive: Duration,
        keepalive_tag: Tag,
    },
}

/// A lookup in flight: one request per candidate epoch's address.
struct Query {
    friend: String,
    requests: Vec<(Tag, Message)>,
    offline: usize,
    asked: usize,
    first: Duration,
    next: Duration,
    /// Started by `connect`: its answer goes to the peer, not to the app.
    for_connect: bool,
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
    cookie: Cookie,
    intro_keys: Vec<IntroKey>,
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
    /// A core for `state`, talking to `config.sky`, with randomness from
    /// `seed` (32 bytes from the operating system's random source).
    pub fn new(config: Config, state: State, seed: [u8; 32], now: Duration) -> Earth {
        let mut rng = Rng {
            key: seed,
            counter: 0,
        };
        let next_cover = config.cover.map(|mean| now + rng.exponential(mean));
        Earth {
            config,
            state,
            online: false,
            rng,
            cookie: Cookie::default(),
            intro_keys: Vec::new(),
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

    /// Where the sky sees us (our NAT's public endpoint), once registered.
    pub fn observed(&self) -> Option<SocketAddr> {
        self.registrations
            .iter()
            .find_map(|r| match (r.kind, &r.state) {
                (RegKind::Own(_), RegState::Active { observed, .. }) => Some(*observed),
                _ => None,
            })
    }

    /// Stays registered from now on (and sends pending resets).
    pub fn go_online(&mut self, now: Duration) {
        self.online = true;
        self.next_reset = now;
        self.handle_timeout(now);
    }

    /// Unregisters every address.
    pub fn go_offline(&mut self) {
        self.online = false;
        for reg in std::mem::take(&mut self.registrations) {
            self.unregister(reg.token);
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
    /// of a boundary, the neighbouring epoch's too); answers with
    /// [`Event::Lookup`]. The sky introduces us to them when online.
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
        for reg in &self.registrations {
            match (&reg.state, reg.kind) {
                (RegState::Pending { next, .. }, _) => at(*next),
                (RegState::Active { next_keepalive, .. }, _) => at(*next_keepalive),
            }
            if let RegKind::Cover { until } = reg.kind {
                at(until);
            }
        }
        for q in &self.queries {
            at(q.next.min(q.first + self.config.give_up));
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
        self.registration_timers(now);
        self.query_timers(now);
        self.peer_timers(now);
        self.punch_timers(now);
    }

    /// A datagram from `from`. Datagrams from the sky node are protocol
    /// replies and introductions; anything else is a peer's.
    pub fn handle_datagram(&mut self, now: Duration, from: SocketAddr, datagram: &mut [u8]) {
        let from = wire::canonical(from);
        if from == wire::canonical(self.config.sky) {
            self.sky_datagram(now, datagram);
            return;
        }
        match datagram.first().copied() {
            Some(MSG1) => self.msg1(now, from, datagram),
            Some(MSG2) => self.msg2(now, from, datagram),
            Some(DATA) => self.data(now, from, datagram),
            Some(PUNCH) => {}
            _ => {
                // Introductions come only from the sky node we registered
                // with.
                if let Ok(Message::Introduction { .. }) = Message::decode(datagram) {
                    self.events.push_back(Event::ForgedIntroduction);
                }
            }
        }
    }

    // ---- the sky ----

    fn tag(&mut self) -> Tag {
        let b = self.rng.bytes();
        Tag([b[0], b[1], b[2], b[3]])
    }

    fn send_to_sky(&mut self, msg: Message) {
        let mut buf = [0u8; wire::MAX_MESSAGE_LEN];
        let n = msg.emit(&mut buf);
        self.transmits.push_back(Transmit {
            dst: self.config.sky,
            bytes: buf[..n].to_vec(),
        });
    }

    fn flags(&self) -> Flags {
        Flags(if self.config.metered {
            Flags::METERED
        } else {
            0
        })
    }

    fn register_msg(&self, tag: Tag, token: Token) -> Message {
        Message::Register {
            tag,
            cookie: self.cookie,
            flags: self.flags(),
            token,
        }
    }

    fn unregister(&mut self, token: Token) {
        let tag = self.tag();
        let cookie = self.cookie;
        self.send_to_sky(Message::Unregister { tag, cookie, token });
    }

    fn start_registration(&mut self, now: Duration, token: Token, kind: RegKind) {
        let tag = self.tag();
        self.send_to_sky(self.register_msg(tag, token));
        self.registrations.push(Registration {
            token,
            address: VirtualAddr::from_token(&token),
            kind,
            state: RegState::Pending {
                tag,
                first: now,
                next: now + self.config.retry,
                silent_reported: false,
            },
        });
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
                dropped.push(r.token);
            }
            keep
        });
        for (epoch, token) in wanted {
            if !self.registrations.iter().any(|r| r.token == token) {
                self.start_registration(now, token, RegKind::Own(epoch));
            }
        }
        for token in dropped {
            self.unregister(token);
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
        let mut resend = Vec::new();
        let mut keepalives = Vec::new();
        for reg in &mut self.registrations {
            match &mut reg.state {
                RegState::Pending {
                    tag,
                    first,
                    next,
                    silent_reported,
                } if now >= *next => {
                    // Backs off from `retry` up to the keepalive interval.
                    let waited = now.saturating_sub(*first);
                    *next = now + waited.clamp(self.config.retry, retry_cap);
                    resend.push((*tag, reg.token));
                    if waited >= give_up && !*silent_reported && matches!(reg.kind, RegKind::Own(_))
                    {
                        *silent_reported = true;
                        self.events.push_back(Event::SkySilent);
                    }
                }
                RegState::Active {
                    interval,
                    next_keepalive,
                    keepalive_tag,
                    ..
                } if now >= *next_keepalive => {
                    *next_keepalive = now + *interval;
                    let tag = Tag(self.rng.bytes()[..4].try_into().expect("4 bytes"));
                    *keepalive_tag = tag;
                    keepalives.push((tag, reg.address));
                }
                _ => {}
            }
        }
        for (tag, token) in resend {
            self.send_to_sky(self.register_msg(tag, token));
        }
        for (tag, address) in keepalives {
            let cookie = self.cookie;
            self.send_to_sky(Message::Keepalive {
                ring: 0,
                tag,
                cookie,
                address,
            });
        }
    }

    fn sky_datagram(&mut self, now: Duration, datagram: &[u8]) {
        let Ok(msg) = Message::decode(datagram) else {
            return;
        };
        match msg {
            Message::CookieReply { tag, cookie } => {
                self.cookie = cookie;
                self.resend_with_cookie(tag);
            }
            Message::Registered {
                tag,
                keepalive_secs,
                intro_key,
                observed,
            } => self.registered(now, tag, keepalive_secs, intro_key, observed),
            Message::NotRegistered { tag } => {
                // Our entry expired, or the NAT mapping changed (the node saw
                // the keepalive from a new endpoint): register again.
                let any = self
                    .registrations
                    .iter()
                    .any(|r| keepalive_tag(r) == Some(tag));
                let mut again = Vec::new();
                for reg in &mut self.registrations {
                    if (!any || keepalive_tag(reg) == Some(tag))
                        && matches!(reg.state, RegState::Active { .. })
                    {
                        let tag = Tag(self.rng.bytes()[..4].try_into().expect("4 bytes"));
                        reg.state = RegState::Pending {
                            tag,
                            first: now,
                            next: now + self.config.retry,
                            silent_reported: false,
                        };
                        again.push((tag, reg.token));
                    }
                }
                for (tag, token) in again {
                    self.send_to_sky(self.register_msg(tag, token));
                }
            }
            Message::Online {
                tag,
                flags,
                endpoint,
            } => self.answer(now, tag, Some((endpoint, flags))),
            Message::Offline { tag } => self.answer(now, tag, None),
            Message::Introduction { .. } => {
                match keys::verify_introduction(&self.intro_keys, datagram) {
                    Ok((caller, endpoint)) => self.introduced(now, caller, endpoint),
                    Err(_) => self.events.push_back(Event::ForgedIntroduction),
                }
            }
            _ => {}
        }
    }

    /// A cookie reply to request `tag`: send that request again with it.
    fn resend_with_cookie(&mut self, tag: Tag) {
        let cookie = self.cookie;
        let mut again = Vec::new();
        for reg in &self.registrations {
            if let RegState::Pending { tag: t, .. } = reg.state
                && t == tag
            {
                again.push(self.register_msg(tag, reg.token));
            }
        }
        for reg in &self.registrations {
            if keepalive_tag(reg) == Some(tag) {
                again.push(Message::Keepalive {
                    ring: 0,
                    tag,
                    cookie,
                    address: reg.address,
                });
            }
        }
        for q in &mut self.queries {
            for (t, msg) in &mut q.requests {
                if *t == tag
                    && let Message::Lookup { cookie: c, .. } = msg
                {
                    *c = cookie;
                    again.push(*msg);
                }
            }
        }
        for msg in again {
            self.send_to_sky(msg);
        }
    }

    fn registered(
        &mut self,
        now: Duration,
        tag: Tag,
        keepalive_secs: u16,
        intro_key: IntroKey,
        observed: SocketAddr,
    ) {
        let Some(reg) = self
            .registrations
            .iter_mut()
            .find(|r| matches!(r.state, RegState::Pending { tag: t, .. } if t == tag))
        else {
            return; // a late answer to a retransmission
        };
        let interval = match keepalive_secs {
            0 => self.config.keepalive,
            s => self.config.keepalive.min(Duration::from_secs(s.into())),
        };
        reg.state = RegState::Active {
            observed,
            interval,
            next_keepalive: now + interval,
            keepalive_tag: tag,
        };
        if let RegKind::Own(_) = reg.kind {
            self.events.push_back(Event::Registered {
                address: reg.address,
                observed,
            });
        }
        if !self.intro_keys.contains(&intro_key) {
            self.intro_keys.push(intro_key);
            // Keys of addresses long gone are of no use.
            if self.intro_keys.len() > 16 {
                self.intro_keys.remove(0);
            }
        }
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
        let targets: Vec<VirtualAddr> = f
            .schedule
            .lookup_epochs(now, overlap)
            .into_iter()
            .filter_map(|e| f.chain.address_at(e))
            .collect();
        let mut requests = Vec::with_capacity(targets.len());
        for target in targets {
            let tag = self.tag();
            let msg = Message::Lookup {
                tag,
                cookie: self.cookie,
                target,
                caller,
            };
            self.send_to_sky(msg);
            requests.push((tag, msg));
        }
        self.queries.push(Query {
            friend: friend.to_string(),
            asked: requests.len(),
            requests,
            offline: 0,
            first: now,
            next: now + self.config.retry * 3,
            for_connect,
        });
        true
    }

    fn query_timers(&mut self, now: Duration) {
        let give_up = self.config.give_up;
        let retry = self.config.retry * 3;
        let mut failed = Vec::new();
        let mut again = Vec::new();
        self.queries.retain_mut(|q| {
            if now >= q.first + give_up {
                failed.push((q.friend.clone(), q.for_connect));
                return false;
            }
            if now >= q.next {
                q.next = now + retry;
                again.extend(q.requests.iter().map(|(_, m)| *m));
            }
            true
        });
        for msg in again {
            self.send_to_sky(msg);
        }
        for (friend, for_connect) in failed {
            self.query_done(now, &friend, for_connect, Err(Failure::SkySilent));
        }
    }

    /// A lookup reply: `Some` online, `None` offline.
    fn answer(&mut self, now: Duration, tag: Tag, online: Option<(SocketAddr, Flags)>) {
        let Some(i) = self
            .queries
            .iter()
            .position(|q| q.requests.iter().any(|(t, _)| *t == tag))
        else {
            return;
        };
        let q = &mut self.queries[i];
        q.requests.retain(|(t, _)| *t != tag);
        let result = match online {
            Some(found) => Ok(found),
            None => {
                q.offline += 1;
                if q.offline < q.asked {
                    return; // another epoch's address may be online
                }
                Err(Failure::Offline)
            }
        };
        let q = self.queries.swap_remove(i);
        self.query_done(now, &q.friend, q.for_connect, result);
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

fn keepalive_tag(reg: &Registration) -> Option<Tag> {
    match reg.state {
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
    //! Earth cores and a real shard core (the sky) on one simulated network
    //! in virtual time: endpoints behind NATs that filter like home routers,
    //! rebinding, loss, epochs passing.

    use super::*;
    use crate::earth::identity::{Friends, Identity};
    use crate::earth::ratchet::DEFAULT_EPOCH;
    use crate::keys::NodeSecret;
    use crate::presence::Presence;
    use crate::shard::{Shard, ShardConfig};
    use std::collections::HashSet;
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

    struct Net {
        now: Duration,
        sky: Shard,
        presence: Arc<Presence>,
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
    }

    fn sky() -> SocketAddr {
        SKY.parse().unwrap()
    }

    fn identity(seed: u8) -> Identity {
        Identity::generate(
            [seed; 64],
            DEFAULT_EPOCH,
            T0 - Duration::from_secs(86_400 * 3),
        )
    }

    impl Net {
        /// `names.len()` users, all friends of each other.
        fn new(names: &[&str], config: impl Fn(&mut Config)) -> Net {
            let mut ids: Vec<Identity> = (0..names.len()).map(|i| identity(i as u8 + 1)).collect();
            let invites: Vec<Invite> = ids.iter_mut().map(|id| id.invite(T0)).collect();
            let hosts = names
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
                    let mut c = Config::new(sky());
                    config(&mut c);
                    Host {
                        earth: Earth::new(c, state, [i as u8 + 50; 32], T0),
                        public: format!("203.0.113.{}:4{i}000", i + 1).parse().unwrap(),
                        filtering: true,
                        sent_to: HashSet::new(),
                        events: Vec::new(),
                    }
                })
                .collect();
            let presence = Arc::new(Presence::new(1000));
            Net {
                now: T0,
                sky: Shard::new(
                    Arc::new(NodeSecret::new([7; 32])),
                    presence.clone(),
                    ShardConfig::default(),
                    Duration::ZERO,
                ),
                presence,
                hosts,
                flight: Vec::new(),
                loss: 0,
                counter: 0,
                block_peers: false,
                to_sky: vec![0; names.len()],
            }
        }

        /// Whether the sky has `address` online now.
        fn present(&self, address: &VirtualAddr) -> bool {
            let now = (self.now - T0).as_secs() as u32;
            matches!(
                self.presence.lookup(address, now, u8::MAX),
                crate::presence::Found::Online { .. }
            )
        }

        /// The sky forgets everything (a node restarted).
        fn restart_sky(&mut self) {
            self.presence = Arc::new(Presence::new(1000));
            self.sky = Shard::new(
                Arc::new(NodeSecret::new([8; 32])),
                self.presence.clone(),
                ShardConfig::default(),
                self.now - T0,
            );
        }

        fn send(&mut self, from: SocketAddr, to: SocketAddr, bytes: Vec<u8>) {
            self.counter += 1;
            let coin = (u64::from(self.counter).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 40) as u32;
            if self.loss != 0 && coin.is_multiple_of(self.loss) {
                return;
            }
            if self.block_peers && from != sky() && to != sky() {
                return;
            }
            let latency = Duration::from_millis(if to == sky() || from == sky() { 10 } else { 20 });
            self.flight.push((self.now + latency, from, to, bytes));
        }

        fn flush(&mut self, i: usize) {
            let from = self.hosts[i].public;
            while let Some(t) = self.hosts[i].earth.poll_transmit() {
                self.hosts[i].sent_to.insert(t.dst);
                if t.dst == sky() {
                    self.to_sky[i] += 1;
                }
                self.send(from, t.dst, t.bytes);
            }
            while let Some(e) = self.hosts[i].earth.poll_event() {
                self.hosts[i].events.push(e);
            }
        }

        fn deliver(&mut self, from: SocketAddr, to: SocketAddr, mut bytes: Vec<u8>) {
            if to == sky() {
                let len = bytes.len();
                bytes.resize(2048, 0);
                let mut reply = [0u8; wire::MAX_MESSAGE_LEN];
                let out =
                    self.sky
                        .handle_datagram(self.now - T0, from, &mut bytes, len, &mut reply);
                if let Some(n) = out.reply {
                    self.send(sky(), from, reply[..n].to_vec());
                }
                if let Some(t) = out.in_place {
                    self.send(sky(), t.dst, bytes[..t.len].to_vec());
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
            net.presence.len() <= 1 + covers,
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
        assert_eq!(quiet.presence.len(), 1);
    }
}
