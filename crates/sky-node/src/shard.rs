//! The sans-IO shard core: what a sky node does with one datagram.
//!
//! A [`Shard`] never opens a socket, reads a clock or spawns a thread. The
//! engine drives it:
//!
//! 1. [`Shard::handle_datagram`]`(now, from, buf, len, reply)` for every
//!    datagram received; it returns an [`Output`] saying what to send;
//! 2. [`Shard::handle_timeout`]`(now)` at least every [`Shard::poll_timeout`];
//! 3. [`Shard::take_stats`] whenever the engine publishes metrics.
//!
//! **Where it sends.** A reply (and a members page) always goes to `from`,
//! the observed source of the datagram being handled; an introduction always
//! goes to the endpoint of a registration that was itself validated by
//! cookie. [`Output`] has no
//! way to name any other destination, and no v1 request carries an endpoint
//! the core could be tricked into using (SPEC §3 invariant 1).
//!
//! **Never a reflector.** Before a source shows a valid cookie, the only
//! replies are `pong` (6 bytes) and `cookie` (14 bytes); every request is at
//! least 14 bytes.
//!
//! **Hostile input.** Every datagram is checked by [`wire::Packet`]; failures
//! are counted in [`Stats::dropped`] by [`DropReason`], never propagated.
//! Nothing here allocates.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use sky_proto::time::MonoTime;

use crate::keys::{self, CookieJar, IntroKeys, NodeSecret};
pub use crate::presence::{Ahead, Lines};
use crate::presence::{Found, Place, Presence, Refused};
use crate::proof::{self, CheckBudget};
use crate::snapshot::SharedRing;
use sky_proto::ring::Ring;
use sky_proto::wire::{self, Flags, Kind, Message, VirtualAddr};

/// Settings a shard needs; the engine builds it from the node config.
#[derive(Clone, Copy, Debug)]
pub struct ShardConfig {
    /// The keepalive interval clients are told to use; entries expire after
    /// three of them.
    pub keepalive: Duration,
    /// Introductions sent to one target per second, at most.
    pub intros_per_second: u8,
    /// Introductions one caller IP gets towards one target per second, at
    /// most (a share of the target's).
    pub intros_per_caller: u8,
    /// Signature checks one source may spend per second ([`proof`]).
    pub checks_per_source: u16,
    /// The node's first check port, told in `checked` replies (0: none).
    pub check_port: u16,
}

impl Default for ShardConfig {
    fn default() -> Self {
        ShardConfig {
            keepalive: Duration::from_secs(25),
            intros_per_second: 5,
            intros_per_caller: 2,
            checks_per_source: proof::CHECKS_PER_SOURCE,
            check_port: 0,
        }
    }
}

/// A datagram to send, already written into a caller buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Transmit {
    pub dst: SocketAddr,
    pub len: usize,
}

/// What to send after one datagram.
#[must_use]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Output {
    /// Bytes written at the front of `reply`, to send back to `from`.
    pub reply: Option<usize>,
    /// A datagram written over the request in `buf`: an introduction to a
    /// registered endpoint, or a members page back to `from` (never larger
    /// than the request it overwrote).
    pub in_place: Option<Transmit>,
}

/// Kinds of datagram received, for metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecvKind {
    Ping,
    Register,
    Keepalive,
    Lookup,
    Unregister,
    Members,
    Check,
    /// Anything that is not a valid v1 request.
    Invalid,
}

impl RecvKind {
    pub const ALL: [RecvKind; 8] = [
        RecvKind::Ping,
        RecvKind::Register,
        RecvKind::Keepalive,
        RecvKind::Lookup,
        RecvKind::Unregister,
        RecvKind::Members,
        RecvKind::Check,
        RecvKind::Invalid,
    ];

    pub fn label(self) -> &'static str {
        match self {
            RecvKind::Ping => "ping",
            RecvKind::Register => "register",
            RecvKind::Keepalive => "keepalive",
            RecvKind::Lookup => "lookup",
            RecvKind::Unregister => "unregister",
            RecvKind::Members => "members",
            RecvKind::Check => "check",
            RecvKind::Invalid => "invalid",
        }
    }
}

/// Kinds of datagram sent, for metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SentKind {
    Pong,
    Cookie,
    Registered,
    NotRegistered,
    Online,
    Offline,
    Introduction,
    MembersPage,
    NotOwner,
    RingChanged,
    Checked,
    Refused,
}

impl SentKind {
    pub const ALL: [SentKind; 12] = [
        SentKind::Pong,
        SentKind::Cookie,
        SentKind::Registered,
        SentKind::NotRegistered,
        SentKind::Online,
        SentKind::Offline,
        SentKind::Introduction,
        SentKind::MembersPage,
        SentKind::NotOwner,
        SentKind::RingChanged,
        SentKind::Checked,
        SentKind::Refused,
    ];

    pub fn label(self) -> &'static str {
        match self {
            SentKind::Pong => "pong",
            SentKind::Cookie => "cookie",
            SentKind::Registered => "registered",
            SentKind::NotRegistered => "not_registered",
            SentKind::Online => "online",
            SentKind::Offline => "offline",
            SentKind::Introduction => "introduction",
            SentKind::MembersPage => "members_page",
            SentKind::NotOwner => "not_owner",
            SentKind::RingChanged => "ring_changed",
            SentKind::Checked => "checked",
            SentKind::Refused => "refused",
        }
    }

    fn of(kind: Kind) -> SentKind {
        match kind {
            Kind::Pong => SentKind::Pong,
            Kind::Cookie => SentKind::Cookie,
            Kind::Registered => SentKind::Registered,
            Kind::NotRegistered => SentKind::NotRegistered,
            Kind::Online => SentKind::Online,
            Kind::Offline => SentKind::Offline,
            Kind::MembersPage => SentKind::MembersPage,
            Kind::NotOwner => SentKind::NotOwner,
            Kind::RingChanged => SentKind::RingChanged,
            Kind::Checked => SentKind::Checked,
            Kind::Refused => SentKind::Refused,
            _ => SentKind::Introduction,
        }
    }
}

/// Why a datagram was dropped without an answer. A closed set: these are
/// the values of the `reason` metric label.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DropReason {
    Truncated,
    Oversized,
    BadVersion,
    UnknownKind,
    BadLength,
    /// A valid message, but a reply kind: the sky answers only requests.
    NotARequest,
    /// The kernel refused a send (engine).
    SendFailed,
    /// An `unregister` whose signature does not verify, or that came past
    /// its source's budget of signature checks.
    Unproven,
}

impl DropReason {
    pub const ALL: [DropReason; 8] = [
        DropReason::Truncated,
        DropReason::Oversized,
        DropReason::BadVersion,
        DropReason::UnknownKind,
        DropReason::BadLength,
        DropReason::NotARequest,
        DropReason::SendFailed,
        DropReason::Unproven,
    ];

    pub fn label(self) -> &'static str {
        match self {
            DropReason::Truncated => "truncated",
            DropReason::Oversized => "oversized",
            DropReason::BadVersion => "bad_version",
            DropReason::UnknownKind => "unknown_kind",
            DropReason::BadLength => "bad_length",
            DropReason::NotARequest => "not_a_request",
            DropReason::SendFailed => "send_failed",
            DropReason::Unproven => "unproven",
        }
    }

    fn of(e: wire::Error) -> DropReason {
        match e {
            wire::Error::Truncated => DropReason::Truncated,
            wire::Error::BadVersion => DropReason::BadVersion,
            wire::Error::UnknownKind => DropReason::UnknownKind,
            wire::Error::BadLength => DropReason::BadLength,
            wire::Error::Oversized => DropReason::Oversized,
            // Entries that do not fill the page's length exactly.
            wire::Error::BadEntry => DropReason::BadLength,
        }
    }
}

/// Counters a shard keeps in plain integers (no atomics on the packet path);
/// the engine moves them into Prometheus in batches.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    pub received: [u64; RecvKind::ALL.len()],
    pub received_bytes: [u64; RecvKind::ALL.len()],
    pub sent: [u64; SentKind::ALL.len()],
    pub sent_bytes: [u64; SentKind::ALL.len()],
    pub dropped: [u64; DropReason::ALL.len()],
    /// Registrations refused, by [`Refused`] reason (`refused` replies).
    pub refused: [u64; Refused::ALL.len()],
    pub lookups_online: u64,
    pub lookups_offline: u64,
    pub intros_rate_limited: u64,
}

impl Stats {
    pub fn record_drop(&mut self, reason: DropReason) {
        self.dropped[reason as usize] += 1;
    }

    fn record_sent(&mut self, kind: SentKind, len: usize) {
        self.sent[kind as usize] += 1;
        self.sent_bytes[kind as usize] += len as u64;
    }
}

/// What an engine drives for each datagram: the sky [`Shard`], or the
/// benchmark's no-logic baseline (`sky_lab::baseline`). Same contract as
/// [`Shard::handle_datagram`]: a reply goes to `from`, an introduction
/// (written over the request in `buf`) to its `Transmit::dst`.
pub trait Core: Send + 'static {
    fn handle_datagram(
        &mut self,
        now: MonoTime,
        from: SocketAddr,
        buf: &mut [u8],
        len: usize,
        reply: &mut [u8],
    ) -> Output;
    /// Timers (a core without any need not say so).
    fn handle_timeout(&mut self, _now: MonoTime) {}
    /// The counters since the last call, emptied.
    fn take_stats(&mut self) -> Stats {
        std::mem::take(self.stats_mut())
    }
    fn stats_mut(&mut self) -> &mut Stats;
    /// A datagram the kernel truncated (larger than the engine's buffers).
    fn drop_oversized(&mut self, len: usize);
    /// The memory that handling a datagram from `from`, which the engine
    /// will hand to [`Core::handle_datagram`] soon (a few datagrams from
    /// now, in the same wake-up), reads: the presence table's lines, for
    /// the engine to prefetch so that their misses overlap with the
    /// handling of the datagrams before it. Asked twice per datagram: for
    /// [`Ahead::First`] ([`FIRST_AHEAD`] datagrams before its turn) and
    /// [`Ahead::Second`] ([`SECOND_AHEAD`] before), whose lines are found
    /// through the first ones. A hint: what it computes on the way (a
    /// shard keeps the table's hashes for the handling) changes no
    /// answer, and an engine may ignore it.
    fn lines_ahead(&mut self, _datagram: &[u8], _from: SocketAddr, _ahead: Ahead) -> Lines {
        [std::ptr::null(); 3]
    }
}

/// How many datagrams ahead of its turn an engine asks a core for a
/// datagram's [`Ahead::First`] lines: far enough that a miss to memory is
/// over by then, near enough that the lines are still in the cache.
pub const FIRST_AHEAD: usize = 4;
/// ... and for its [`Ahead::Second`] lines.
pub const SECOND_AHEAD: usize = 2;

impl Core for Shard {
    fn handle_datagram(
        &mut self,
        now: MonoTime,
        from: SocketAddr,
        buf: &mut [u8],
        len: usize,
        reply: &mut [u8],
    ) -> Output {
        Shard::handle_datagram(self, now, from, buf, len, reply)
    }
    fn handle_timeout(&mut self, now: MonoTime) {
        Shard::handle_timeout(self, now)
    }
    fn take_stats(&mut self) -> Stats {
        Shard::take_stats(self)
    }
    fn stats_mut(&mut self) -> &mut Stats {
        Shard::stats_mut(self)
    }
    fn drop_oversized(&mut self, len: usize) {
        Shard::drop_oversized(self, len)
    }
    fn lines_ahead(&mut self, datagram: &[u8], from: SocketAddr, ahead: Ahead) -> Lines {
        match wire::named_address(datagram) {
            Some((kind, address)) => {
                let caller = (kind == Kind::Lookup).then(|| wire::canonical(from).ip());
                let place = self.place(&address, caller);
                self.presence.lines_of(&place, ahead)
            }
            None => [std::ptr::null(); 3],
        }
    }
}

/// One packet shard's logic.
pub struct Shard {
    secret: Arc<NodeSecret>,
    cookies: CookieJar,
    intro_keys: IntroKeys,
    checks: CheckBudget,
    presence: Arc<Presence>,
    config: ShardConfig,
    stats: Stats,
    /// The sky's view and this node's own endpoint in it; `None` for a
    /// standalone shard (tests, benchmarks), which owns every address.
    ring: Option<(arc_swap::Cache<SharedRing, Arc<Ring>>, SocketAddr)>,
    /// The places ([`Presence::place`]) of the addresses named lately, by
    /// their first byte: an engine's two prefetch stages and the handling
    /// take a datagram's table hashes from here instead of each hashing
    /// again. Each entry is what `place` gave for its address and caller,
    /// checked against both before use: a collision costs a hash, never an
    /// answer.
    places: Box<[(VirtualAddr, Option<IpAddr>, Place)]>,
}

/// Entries in [`Shard`]'s places: a datagram's are taken [`FIRST_AHEAD`]
/// datagrams after they were made, and each of those in between evicts
/// them with a chance of 1 in `PLACES`.
const PLACES: usize = 32;

impl Shard {
    /// `now` is time since the engine's origin, shared by every shard.
    pub fn new(
        secret: Arc<NodeSecret>,
        presence: Arc<Presence>,
        config: ShardConfig,
        now: MonoTime,
    ) -> Shard {
        let none = VirtualAddr([0; 16]);
        let places = vec![(none, None, presence.place(&none, None)); PLACES].into_boxed_slice();
        Shard {
            cookies: CookieJar::new(&secret, now),
            intro_keys: IntroKeys::new(&secret),
            checks: CheckBudget::new(config.checks_per_source),
            secret,
            presence,
            config,
            stats: Stats::default(),
            ring: None,
            places,
        }
    }

    /// Where `address` is in the table, and a lookup's caller counter
    /// ([`Presence::place`]), from `places` if it was placed lately.
    fn place(&mut self, address: &VirtualAddr, caller: Option<IpAddr>) -> Place {
        let entry = &mut self.places[usize::from(address.0[0]) % PLACES];
        if entry.0 != *address || entry.1 != caller {
            *entry = (*address, caller, self.presence.place(address, caller));
        }
        entry.2
    }

    /// Makes this shard one member of a sky: it answers members requests
    /// from `ring`, registers only addresses `me` owns in it, and tells a
    /// client whose keepalive names another ring version. The ring is read
    /// through an `arc_swap::Cache`: one atomic load per datagram while it
    /// is unchanged, and never a lock.
    pub fn with_ring(mut self, ring: SharedRing, me: SocketAddr) -> Shard {
        self.ring = Some((arc_swap::Cache::new(ring), wire::canonical(me)));
        self
    }

    /// `Some(version)` with the first owner if this node is a member of a
    /// ring and does not own `address`; `None` if it owns it.
    fn not_owner(&mut self, address: &VirtualAddr) -> Option<(u32, SocketAddr)> {
        let (cache, me) = self.ring.as_mut()?;
        let ring = cache.load();
        let owners = ring.owners(address);
        if owners.contains(*me) {
            return None;
        }
        Some((ring.version(), owners.first().unwrap_or(*me)))
    }

    fn ring_version(&mut self) -> Option<u32> {
        self.ring.as_mut().map(|(cache, _)| cache.load().version())
    }

    /// Handles one datagram of `len` bytes at the front of `buf`.
    ///
    /// A reply is written into `reply` (at least [`wire::MAX_MESSAGE_LEN`]
    /// bytes) and goes to `from`; an introduction is written over the request
    /// in `buf` (which must be at least [`wire::MAX_MESSAGE_LEN`] bytes) and
    /// goes to [`Transmit::dst`].
    pub fn handle_datagram(
        &mut self,
        now: MonoTime,
        from: SocketAddr,
        buf: &mut [u8],
        len: usize,
        reply: &mut [u8],
    ) -> Output {
        let from = wire::canonical(from);
        let len = len.min(buf.len());
        let msg = match wire::Message::decode(&buf[..len]) {
            Ok(m) if m.kind().is_request() => m,
            Ok(_) => {
                self.drop_invalid(len, DropReason::NotARequest);
                return Output::default();
            }
            Err(e) => {
                self.drop_invalid(len, DropReason::of(e));
                return Output::default();
            }
        };
        let recv = match msg.kind() {
            Kind::Ping => RecvKind::Ping,
            Kind::Register => RecvKind::Register,
            Kind::Keepalive => RecvKind::Keepalive,
            Kind::Lookup => RecvKind::Lookup,
            Kind::Members => RecvKind::Members,
            Kind::Check => RecvKind::Check,
            _ => RecvKind::Unregister,
        };
        self.stats.received[recv as usize] += 1;
        self.stats.received_bytes[recv as usize] += len as u64;

        let (tag, cookie) = match msg {
            Message::Ping { tag, .. } => return self.reply(Message::Pong { tag }, reply),
            // Like STUN: where the node sees the source, no cookie needed
            // (the reply is never larger than the request).
            Message::Check { tag, .. } => {
                let checked = Message::Checked {
                    tag,
                    check_port: self.config.check_port,
                    endpoint: from,
                };
                return self.reply(checked, reply);
            }
            Message::Register { tag, cookie, .. }
            | Message::Keepalive { tag, cookie, .. }
            | Message::Lookup { tag, cookie, .. }
            | Message::Unregister { tag, cookie, .. }
            | Message::Members { tag, cookie, .. } => (tag, cookie),
            _ => unreachable!("requests only"),
        };
        self.cookies.rotate(&self.secret, now);
        if !self.cookies.check(&from, &cookie) {
            let cookie = self.cookies.issue(&from);
            return self.reply(Message::CookieReply { tag, cookie }, reply);
        }

        let now_secs = secs(now.as_duration());
        let expires = now_secs.saturating_add(3 * secs(self.config.keepalive));
        match msg {
            Message::Register {
                flags, key, sig, ..
            } => {
                let address = VirtualAddr::from_key(&key);
                if let Some((version, hint)) = self.not_owner(&address) {
                    return self.reply(Message::NotOwner { tag, version, hint }, reply);
                }
                // The common path: alive at this very endpoint, nothing
                // moves, nothing to prove. Creating or moving an entry
                // takes the key's signature over this source's cookie.
                let outcome = if self
                    .presence
                    .renew(&address, from, flags, now_secs, expires)
                {
                    Ok(())
                } else if !self.checks.take(from.ip(), now_secs) {
                    Err(Refused::ProofBudget)
                } else if !proof::verify(&key, &wire::register_statement(&cookie, flags), &sig) {
                    Err(Refused::Forged)
                } else {
                    self.presence
                        .register(address, from, flags, now_secs, expires)
                };
                match outcome {
                    Err(why) => {
                        // Said, not dropped: the client can tell a full or
                        // refusing node from loss (7 bytes, less than asked).
                        self.stats.refused[why as usize - 1] += 1;
                        self.reply(
                            Message::Refused {
                                tag,
                                reason: why as u8,
                            },
                            reply,
                        )
                    }
                    Ok(()) => self.reply(
                        Message::Registered {
                            tag,
                            keepalive_secs: secs(self.config.keepalive).min(u16::MAX.into()) as u16,
                            intro_key: self.intro_keys.key_for(&address),
                            observed: from,
                        },
                        reply,
                    ),
                }
            }
            Message::Keepalive { address, ring, .. } => {
                let place = self.place(&address, None);
                if !self.presence.refresh_at(&place, from, now_secs, expires) {
                    return self.reply(Message::NotRegistered { tag }, reply);
                }
                match self.ring_version() {
                    // The client holds another view: four bytes tell it to
                    // fetch the members again. Silence otherwise.
                    Some(version) if ring != 0 && ring != version => {
                        self.reply(Message::RingChanged { tag, version }, reply)
                    }
                    _ => Output::default(),
                }
            }
            Message::Lookup {
                target,
                caller,
                hint,
                ..
            } => self.lookup(tag, (target, caller, hint), from, now_secs, buf, reply),
            Message::Unregister { key, sig, .. } => {
                // From any source, but only by the key's holder.
                if self.checks.take(from.ip(), now_secs)
                    && proof::verify(&key, &wire::unregister_statement(&cookie), &sig)
                {
                    self.presence.remove(&VirtualAddr::from_key(&key));
                } else {
                    self.stats.record_drop(DropReason::Unproven);
                }
                Output::default()
            }
            Message::Members { start, len, .. } => self.members_page(tag, start, len, from, buf),
            _ => unreachable!("requests only"),
        }
    }

    /// A lookup of `target` by `caller`, whose sealed `hint` goes into the
    /// introduction unread.
    fn lookup(
        &mut self,
        tag: wire::Tag,
        (target, caller, hint): (VirtualAddr, VirtualAddr, [u8; sky_proto::hint::HINT_LEN]),
        from: SocketAddr,
        now_secs: u32,
        buf: &mut [u8],
        reply: &mut [u8],
    ) -> Output {
        let place = self.place(&target, Some(from.ip()));
        match self.presence.lookup_at(
            &place,
            from.ip(),
            now_secs,
            (self.config.intros_per_second, self.config.intros_per_caller),
        ) {
            Found::Offline => {
                // Entries a node no longer owns are still answered during
                // the handoff grace; only a miss asks whether we own it.
                if let Some((version, hint)) = self.not_owner(&target) {
                    return self.reply(Message::NotOwner { tag, version, hint }, reply);
                }
                self.stats.lookups_offline += 1;
                self.reply(Message::Offline { tag }, reply)
            }
            Found::Online {
                endpoint,
                flags,
                introduce,
            } => {
                self.stats.lookups_online += 1;
                let mut flags = flags;
                let introduction = if introduce {
                    let key = self.intro_keys.key_for(&target);
                    let intro = Message::Introduction {
                        caller,
                        mac: sky_proto::intro::introduction_mac(&key, &caller, &from),
                        hint,
                        endpoint: from,
                    };
                    let len = intro.emit(buf);
                    self.stats.record_sent(SentKind::Introduction, len);
                    Some(Transmit { dst: endpoint, len })
                } else {
                    self.stats.intros_rate_limited += 1;
                    flags.0 |= Flags::NOT_INTRODUCED;
                    None
                };
                let out = self.reply(
                    Message::Online {
                        tag,
                        flags,
                        endpoint,
                    },
                    reply,
                );
                Output {
                    in_place: introduction,
                    ..out
                }
            }
        }
    }

    /// A page of this node's view, written over the request (`len` bytes,
    /// so the page is never larger than what asked for it) and sent back.
    fn members_page(
        &mut self,
        tag: wire::Tag,
        start: u16,
        len: u16,
        from: SocketAddr,
        buf: &mut [u8],
    ) -> Output {
        // A standalone shard is a ring of one whose endpoint it does not
        // know: version 0 and no members say "ask nobody else".
        let ring = self.ring.as_mut().map(|(cache, _)| cache.load());
        let members = ring.map_or(&[][..], |r| r.members());
        let header = Message::MembersPage {
            tag,
            version: ring.map_or(0, |r| r.version()),
            config: ring.map_or_else(Default::default, |r| r.config()),
            total: members.len().min(u16::MAX.into()) as u16,
            start,
        };
        let rest = members.iter().skip(start.into()).map(|m| m.endpoint);
        let (n, _) = wire::emit_members_page(buf, len.into(), header, rest);
        self.stats.record_sent(SentKind::MembersPage, n);
        Output {
            reply: None,
            in_place: Some(Transmit { dst: from, len: n }),
        }
    }

    /// Periodic work; the engine calls it at least every `poll_timeout`.
    pub fn handle_timeout(&mut self, now: MonoTime) {
        self.cookies.rotate(&self.secret, now);
    }

    /// How long the engine may wait before calling `handle_timeout`.
    pub fn poll_timeout(&self) -> Duration {
        keys::COOKIE_ROTATION / 4
    }

    /// The counters since the last call, leaving zeros behind.
    pub fn take_stats(&mut self) -> Stats {
        std::mem::take(&mut self.stats)
    }

    /// For the engine's own drops (send failures, full queues).
    pub fn stats_mut(&mut self) -> &mut Stats {
        &mut self.stats
    }

    /// A datagram the engine saw truncated by the kernel (larger than its
    /// buffers): counted as received and dropped as oversized.
    pub fn drop_oversized(&mut self, len: usize) {
        self.drop_invalid(len, DropReason::Oversized);
    }

    fn drop_invalid(&mut self, len: usize, reason: DropReason) {
        let i = RecvKind::Invalid as usize;
        self.stats.received[i] += 1;
        self.stats.received_bytes[i] += len as u64;
        self.stats.record_drop(reason);
    }

    fn reply(&mut self, msg: Message, reply: &mut [u8]) -> Output {
        let len = msg.emit(reply);
        self.stats.record_sent(SentKind::of(msg.kind()), len);
        Output {
            reply: Some(len),
            in_place: None,
        }
    }
}

fn secs(d: Duration) -> u32 {
    d.as_secs().min(u32::MAX.into()) as u32
}

#[cfg(test)]
#[path = "tests/shard.rs"]
mod tests;
