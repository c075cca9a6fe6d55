//! Registrations: every address the client keeps registered — the user's
//! own (the current epoch's; in dual mode the previous one's too during the
//! first `H`), and random cover addresses — each with every one of its
//! owners, kept alive with keepalives, and registered again when an owner
//! forgets it, sees a new NAT mapping, or says it no longer owns it.
//!
//! Owns: the registrations and, per owner, whether it is pending or
//! registered. Timers: [`Timer::Owner`] (retry / keepalive per owner),
//! [`Timer::Silent`], [`Timer::CoverEnd`], [`Timer::Cover`],
//! [`Timer::Boundary`]. Reads the view from [`Members`]; tells the caller
//! when an answer means the ring changed.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::time::Duration;

use sky_proto::time::UnixTime;
use sky_proto::wire::{Flags, Message, Tag, VirtualAddr};

use super::config::{Config, Overlap};
use super::event::{Event, RegistrationInfo, SocketId};
use super::io::Io;
use super::members::Members;
use super::timers::{RegId, Timer};
use crate::ratchet::{AddressKey, Epoch, Schedule};

/// One address the client keeps registered: the user's own of an epoch,
/// or a random cover address; registered with each of its owners.
struct Registration {
    id: RegId,
    /// The socket it is registered from (a cover registration has its own).
    via: SocketId,
    /// Signs its registrations and unregisters.
    key: AddressKey,
    address: VirtualAddr,
    kind: RegKind,
    owners: Vec<OwnerReg>,
    /// The endpoint the last [`Event::Registered`] reported; `None` while
    /// no owner holds the address.
    reported: Option<SocketAddr>,
    /// Whether [`Event::SkySilent`] was reported since no owner held it.
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
    Cover,
}

enum RegState {
    /// Sent, not answered yet; sent first at `first`.
    Pending { tag: Tag, first: UnixTime },
    Active {
        observed: SocketAddr,
        interval: Duration,
        keepalive_tag: Tag,
        /// When we last sent this owner something (its NAT mapping's last
        /// use from our side).
        sent: UnixTime,
    },
}

impl OwnerReg {
    fn keepalive_tag(&self) -> Option<Tag> {
        match self.state {
            RegState::Active { keepalive_tag, .. } => Some(keepalive_tag),
            RegState::Pending { .. } => None,
        }
    }

    fn pending_tag(&self) -> Option<Tag> {
        match self.state {
            RegState::Pending { tag, .. } => Some(tag),
            RegState::Active { .. } => None,
        }
    }
}

impl Registration {
    fn held(&self) -> bool {
        self.owners
            .iter()
            .any(|o| matches!(o.state, RegState::Active { .. }))
    }
}

/// How long a cover registration is held: as `docs/PRIVACY.md` models it.
const COVER_HOLD: (Duration, Duration) = (Duration::from_secs(30), Duration::from_secs(300));

/// Every registration (see the module documentation).
pub(crate) struct Registrations {
    regs: Vec<Registration>,
    next_id: RegId,
    metered: bool,
    keepalive: Duration,
    retry: Duration,
    give_up: Duration,
    overlap: Overlap,
    overlap_window: Duration,
    cover: Option<Duration>,
    fresh_sockets: bool,
}

impl Registrations {
    pub(crate) fn new(config: &Config) -> Registrations {
        Registrations {
            regs: Vec::new(),
            next_id: 0,
            metered: config.metered,
            keepalive: config.keepalive,
            retry: config.retry,
            give_up: config.give_up,
            overlap: config.overlap,
            overlap_window: config.overlap_window,
            cover: config.cover,
            fresh_sockets: config.fresh_sockets,
        }
    }

    /// Schedules the first cover registration (when cover traffic is on).
    pub(crate) fn schedule_cover(&self, now: UnixTime, io: &mut Io) {
        if let Some(mean) = self.cover {
            let at = now + io.rng.exponential(mean);
            io.timers.set(Timer::Cover, at);
        }
    }

    /// The sky nodes that hold `address` for us now.
    pub(crate) fn holders(&self, address: &VirtualAddr) -> Vec<SocketAddr> {
        self.regs
            .iter()
            .filter(|r| r.address == *address)
            .flat_map(|r| &r.owners)
            .filter(|o| matches!(o.state, RegState::Active { .. }))
            .map(|o| o.node)
            .collect()
    }

    /// Where the sky sees us, once an own address is registered.
    pub(crate) fn observed(&self) -> Option<SocketAddr> {
        self.regs
            .iter()
            .filter(|r| matches!(r.kind, RegKind::Own(_)))
            .flat_map(|r| &r.owners)
            .find_map(|o| match o.state {
                RegState::Active { observed, .. } => Some(observed),
                RegState::Pending { .. } => None,
            })
    }

    pub(crate) fn info(&self) -> Vec<RegistrationInfo> {
        self.regs
            .iter()
            .map(|r| RegistrationInfo {
                address: r.address,
                cover: r.kind == RegKind::Cover,
                holders: self.holders(&r.address),
            })
            .collect()
    }

    /// The nodes this machine still needs the cookies of.
    pub(crate) fn nodes_in_use(&self, used: &mut HashSet<SocketAddr>) {
        for reg in &self.regs {
            used.extend(reg.owners.iter().map(|o| o.node));
        }
    }

    fn flags(&self) -> Flags {
        Flags(if self.metered { Flags::METERED } else { 0 })
    }

    /// The own addresses that should be registered at `now`: the current
    /// epoch's, and in dual mode the previous one's during the first `H`.
    pub(crate) fn wanted_epochs(&self, now: UnixTime, schedule: Schedule) -> Vec<Epoch> {
        let epoch = schedule.epoch_at(now);
        let mut epochs = vec![epoch];
        if self.overlap == Overlap::Dual
            && epoch.0 > 0
            && now < schedule.start_of(epoch) + self.overlap_window
        {
            epochs.push(Epoch(epoch.0 - 1));
        }
        epochs
    }

    /// Registers exactly the own addresses `wanted` (with their epochs),
    /// unregistering the others, and arms the next boundary.
    pub(crate) fn update(
        &mut self,
        now: UnixTime,
        io: &mut Io,
        members: &Members,
        wanted: &[(Epoch, AddressKey)],
        schedule: Schedule,
        start: Start,
    ) {
        let mut dropped = Vec::new();
        self.regs.retain(|r| {
            let keep = match r.kind {
                RegKind::Own(_) => wanted.iter().any(|(_, k)| *k == r.key),
                RegKind::Cover => true,
            };
            if !keep {
                let owners = r.owners.iter().map(|o| o.node).collect::<Vec<_>>();
                dropped.push((r.id, r.via, r.key.clone(), owners));
            }
            keep
        });
        for (id, via, key, owners) in dropped {
            cancel_timers(io, id);
            for node in owners {
                unregister(io, via, node, &key);
            }
        }
        for (epoch, key) in wanted {
            if !self.regs.iter().any(|r| r.key == *key) {
                self.start(now, io, members, key.clone(), RegKind::Own(*epoch), start);
            }
        }
        match self.next_boundary(schedule) {
            Some(at) => io.timers.set(Timer::Boundary, at),
            None => io.timers.cancel(Timer::Boundary),
        }
    }

    /// The next time the set of own addresses changes: the next epoch
    /// start, or the end of the current dual-registration window.
    fn next_boundary(&self, schedule: Schedule) -> Option<UnixTime> {
        let epoch = self
            .regs
            .iter()
            .filter_map(|r| match r.kind {
                RegKind::Own(e) => Some(e),
                RegKind::Cover => None,
            })
            .max()?;
        let start = schedule.start_of(epoch);
        let next = schedule.start_of(Epoch(epoch.0 + 1));
        if self.overlap == Overlap::Dual {
            let end = start + self.overlap_window;
            let has_previous = self
                .regs
                .iter()
                .any(|r| r.kind == RegKind::Own(Epoch(epoch.0.wrapping_sub(1))));
            if has_previous {
                return Some(end.min(next));
            }
        }
        Some(next)
    }

    /// [`Timer::Cover`] is due: a cover registration, held like a real one
    /// (a few keepalive intervals, at random), and the next one scheduled.
    pub(crate) fn on_cover(&mut self, now: UnixTime, io: &mut Io, members: &Members, online: bool) {
        let Some(mean) = self.cover else {
            return;
        };
        let next = now + io.rng.exponential(mean);
        io.timers.set(Timer::Cover, next);
        if !online {
            return;
        }
        let key = AddressKey::from_seed(io.rng.bytes());
        let (shortest, longest) = COVER_HOLD;
        let hold = shortest + (longest - shortest).mul_f64(io.rng.unit());
        // Its own socket: nothing ties it to the user's own registration.
        let via = if self.fresh_sockets {
            io.new_socket()
        } else {
            io.main
        };
        let start = Start {
            via,
            after: Duration::ZERO,
        };
        let id = self.start(now, io, members, key, RegKind::Cover, start);
        io.timers.set(Timer::CoverEnd(id), now + hold);
    }

    /// Whether an own address other than `wanted`'s is registered (the
    /// client crosses an epoch boundary, or reset its chain).
    pub(crate) fn own_other_than(&self, wanted: &[(Epoch, AddressKey)]) -> bool {
        self.regs
            .iter()
            .any(|r| matches!(r.kind, RegKind::Own(_)) && !wanted.iter().any(|(_, k)| *k == r.key))
    }

    /// Whether an own address of an epoch not in `wanted` is registered
    /// (the client crosses an epoch boundary).
    pub(crate) fn own_of_another_epoch(&self, wanted: &[(Epoch, AddressKey)]) -> bool {
        self.regs
            .iter()
            .any(|r| matches!(r.kind, RegKind::Own(e) if !wanted.iter().any(|(w, _)| *w == e)))
    }

    /// Whether any registration still uses `socket`.
    pub(crate) fn uses(&self, socket: SocketId) -> bool {
        self.regs.iter().any(|r| r.via == socket)
    }

    /// [`Timer::CoverEnd`] is due: the cover registration goes.
    pub(crate) fn on_cover_end(&mut self, io: &mut Io, id: RegId) {
        if let Some(i) = self.regs.iter().position(|r| r.id == id) {
            let reg = self.regs.remove(i);
            cancel_timers(io, id);
            for o in &reg.owners {
                unregister(io, reg.via, o.node, &reg.key);
            }
            if reg.via != io.main {
                io.release(reg.via);
            }
        }
    }

    /// Unregisters everything at every owner and forgets it.
    pub(crate) fn clear(&mut self, io: &mut Io) {
        for reg in std::mem::take(&mut self.regs) {
            for o in &reg.owners {
                unregister(io, reg.via, o.node, &reg.key);
            }
            cancel_timers(io, reg.id);
            if reg.kind == RegKind::Cover {
                io.release(reg.via);
            }
        }
        io.timers.cancel(Timer::Boundary);
    }

    fn start(
        &mut self,
        now: UnixTime,
        io: &mut Io,
        members: &Members,
        key: AddressKey,
        kind: RegKind,
        start: Start,
    ) -> RegId {
        self.next_id += 1;
        let id = self.next_id;
        let address = key.address();
        self.regs.push(Registration {
            id,
            via: start.via,
            key,
            address,
            kind,
            owners: Vec::new(),
            reported: None,
            silent_reported: false,
        });
        let i = self.regs.len() - 1;
        // Later (a rotation's random delay): the owners' timers send the
        // first registration then.
        let at = now + start.after;
        for node in members.owners_of(&address) {
            self.register_with(at, io, i, node, false, !start.after.is_zero());
        }
        self.settle(at, io, i);
        id
    }

    /// Registers registration `i` with `node` (one more owner), at `now`
    /// or, `later`, when `Timer::Owner` fires at `now`.
    fn register_with(
        &mut self,
        now: UnixTime,
        io: &mut Io,
        i: usize,
        node: SocketAddr,
        via_hint: bool,
        later: bool,
    ) {
        let tag = io.tag();
        let flags = self.flags();
        let reg = &mut self.regs[i];
        reg.owners.push(OwnerReg {
            node,
            state: RegState::Pending { tag, first: now },
            via_hint,
        });
        if later {
            io.timers.set(Timer::Owner(reg.id, node), now);
            return;
        }
        io.timers.set(Timer::Owner(reg.id, node), now + self.retry);
        send_register(io, reg.via, node, tag, &reg.key, flags);
    }

    /// Brings `reported` and the silence timer up to date after the owners'
    /// states of registration `i` changed.
    fn settle(&mut self, now: UnixTime, io: &mut Io, i: usize) {
        let give_up = self.give_up;
        let reg = &mut self.regs[i];
        if reg.held() {
            reg.silent_reported = false;
            io.timers.cancel(Timer::Silent(reg.id));
        } else {
            reg.reported = None;
            let own = matches!(reg.kind, RegKind::Own(_));
            if own && !reg.silent_reported && io.timers.get(Timer::Silent(reg.id)).is_none() {
                io.timers.set(Timer::Silent(reg.id), now + give_up);
            }
        }
    }

    /// After a new view: every registration with exactly its owners.
    pub(crate) fn reconcile(&mut self, now: UnixTime, io: &mut Io, members: &Members) {
        for i in 0..self.regs.len() {
            let owners = members.owners_of(&self.regs[i].address);
            let reg = &mut self.regs[i];
            let (id, via) = (reg.id, reg.via);
            let key = reg.key.clone();
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
                io.timers.cancel(Timer::Owner(id, node));
                unregister(io, via, node, &key);
            }
            for node in new {
                self.register_with(now, io, i, node, false, false);
            }
            self.settle(now, io, i);
        }
    }

    /// [`Timer::Owner`] is due: register again with that owner (backing off
    /// from `retry` up to the keepalive interval), or send its keepalive.
    pub(crate) fn on_owner(
        &mut self,
        now: UnixTime,
        io: &mut Io,
        id: RegId,
        node: SocketAddr,
        ring: u32,
    ) {
        let (retry, cap, flags) = (self.retry, self.keepalive, self.flags());
        let Some(reg) = self.regs.iter_mut().find(|r| r.id == id) else {
            return;
        };
        let (via, address) = (reg.via, reg.address);
        let key = reg.key.clone();
        let Some(o) = reg.owners.iter_mut().find(|o| o.node == node) else {
            return;
        };
        match &mut o.state {
            RegState::Pending { tag, first } => {
                let waited = now.saturating_duration_since(*first);
                io.timers
                    .set(Timer::Owner(id, node), now + waited.clamp(retry, cap));
                let tag = *tag;
                send_register(io, via, node, tag, &key, flags);
            }
            RegState::Active {
                interval,
                keepalive_tag,
                sent,
                ..
            } => {
                io.timers.set(Timer::Owner(id, node), now + *interval);
                *sent = now;
                *keepalive_tag = io.rng.tag();
                let tag = *keepalive_tag;
                send_keepalive(io, via, node, tag, address, ring);
            }
        }
    }

    /// [`Timer::Silent`] is due: no owner has held the address for the
    /// give-up time.
    pub(crate) fn on_silent(&mut self, io: &mut Io, id: RegId) {
        if let Some(reg) = self.regs.iter_mut().find(|r| r.id == id)
            && !reg.held()
            && !reg.silent_reported
        {
            reg.silent_reported = true;
            io.event(Event::SkySilent);
        }
    }

    /// A cookie reply from `node` on `socket` to request `tag`: a
    /// registration or keepalive from that socket with that tag goes again
    /// with it.
    pub(crate) fn on_cookie(
        &self,
        io: &mut Io,
        socket: SocketId,
        node: SocketAddr,
        tag: Tag,
        ring: u32,
    ) {
        let flags = self.flags();
        for reg in self.regs.iter().filter(|r| r.via == socket) {
            for o in reg.owners.iter().filter(|o| o.node == node) {
                if o.pending_tag() == Some(tag) {
                    send_register(io, socket, node, tag, &reg.key, flags);
                } else if o.keepalive_tag() == Some(tag) {
                    send_keepalive(io, socket, node, tag, reg.address, ring);
                }
            }
        }
    }

    /// An own address held by an owner, for the NAT idle test: (our
    /// socket, the owner, the address, when we last sent that owner
    /// something, the keepalive interval).
    pub(crate) fn idle_subject(
        &self,
    ) -> Option<(SocketId, SocketAddr, VirtualAddr, UnixTime, Duration)> {
        self.regs
            .iter()
            .filter(|r| matches!(r.kind, RegKind::Own(_)))
            .find_map(|r| {
                r.owners.iter().find_map(|o| match o.state {
                    RegState::Active { sent, interval, .. } => {
                        Some((r.via, o.node, r.address, sent, interval))
                    }
                    RegState::Pending { .. } => None,
                })
            })
    }

    /// Keepalives every `interval` at most from now on (the NAT forgets
    /// idle mappings sooner than the interval in use); every owner gets
    /// one at once, which makes a mapping the NAT dropped again.
    pub(crate) fn shorten_keepalive(&mut self, now: UnixTime, io: &mut Io, interval: Duration) {
        self.keepalive = self.keepalive.min(interval);
        for reg in &mut self.regs {
            for o in &mut reg.owners {
                if let RegState::Active { interval: i, .. } = &mut o.state {
                    *i = (*i).min(interval);
                    io.timers.set(Timer::Owner(reg.id, o.node), now);
                }
            }
        }
    }

    /// A `registered` reply from `from`.
    pub(crate) fn on_registered(
        &mut self,
        now: UnixTime,
        io: &mut Io,
        from: SocketAddr,
        reply: Message,
    ) {
        let Message::Registered {
            tag,
            keepalive_secs,
            intro_key,
            observed,
        } = reply
        else {
            return;
        };
        let Some((i, o)) = self.find_pending(from, tag) else {
            return; // a late answer to a retransmission
        };
        let interval = match keepalive_secs {
            0 => self.keepalive,
            s => self.keepalive.min(Duration::from_secs(s.into())),
        };
        let reg = &mut self.regs[i];
        reg.owners[o].state = RegState::Active {
            observed,
            interval,
            keepalive_tag: tag,
            sent: now,
        };
        io.timers.set(Timer::Owner(reg.id, from), now + interval);
        if let RegKind::Own(_) = reg.kind
            && reg.reported != Some(observed)
        {
            reg.reported = Some(observed);
            io.event(Event::Registered {
                address: reg.address,
                observed,
            });
        }
        self.settle(now, io, i);
        io.keep_intro_key(from, intro_key);
    }

    fn find_pending(&self, from: SocketAddr, tag: Tag) -> Option<(usize, usize)> {
        self.regs.iter().enumerate().find_map(|(i, r)| {
            let o = r
                .owners
                .iter()
                .position(|o| o.node == from && o.pending_tag() == Some(tag))?;
            Some((i, o))
        })
    }

    /// Whether `tag` is a registration we sent `from` and it has not
    /// answered yet (a `refused` is only believed in answer to one).
    pub(crate) fn is_pending(&self, from: SocketAddr, tag: Tag) -> bool {
        self.find_pending(from, tag).is_some()
    }

    /// Whether `tag` is a keepalive we sent `from` (a `ring changed` is
    /// only believed in answer to one).
    pub(crate) fn is_keepalive(&self, from: SocketAddr, tag: Tag) -> bool {
        self.regs.iter().any(|r| {
            r.owners
                .iter()
                .any(|o| o.node == from && o.keepalive_tag() == Some(tag))
        })
    }

    /// `node` does not hold the address a keepalive named: it expired
    /// there, or the NAT mapping changed (the node saw the keepalive from a
    /// new endpoint). Register again with that node.
    pub(crate) fn on_not_registered(
        &mut self,
        now: UnixTime,
        io: &mut Io,
        node: SocketAddr,
        tag: Tag,
    ) {
        let any = self.is_keepalive(node, tag);
        let (retry, flags) = (self.retry, self.flags());
        for i in 0..self.regs.len() {
            let reg = &mut self.regs[i];
            let (id, via) = (reg.id, reg.via);
            for o in reg.owners.iter_mut().filter(|o| o.node == node) {
                if (!any || o.keepalive_tag() == Some(tag))
                    && matches!(o.state, RegState::Active { .. })
                {
                    let tag = io.rng.tag();
                    o.state = RegState::Pending { tag, first: now };
                    io.timers.set(Timer::Owner(id, node), now + retry);
                    send_register(io, via, node, tag, &reg.key, flags);
                }
            }
            self.settle(now, io, i);
        }
    }

    /// A `not owner` answer to a registration: register with the hint at
    /// once (unless this owner came from a hint itself). `false` when `tag`
    /// names no registration (the caller then tries the lookups); `true`
    /// means the caller should fetch the members again.
    pub(crate) fn on_not_owner(
        &mut self,
        now: UnixTime,
        io: &mut Io,
        from: SocketAddr,
        tag: Tag,
        hint: SocketAddr,
    ) -> bool {
        let Some((i, o)) = self.find_pending(from, tag) else {
            return false;
        };
        let reg = &mut self.regs[i];
        let gone = reg.owners.remove(o);
        io.timers.cancel(Timer::Owner(reg.id, from));
        let follow = !gone.via_hint && hint != from && !reg.owners.iter().any(|o| o.node == hint);
        if follow {
            self.register_with(now, io, i, hint, true, false);
        }
        self.settle(now, io, i);
        true
    }
}

fn cancel_timers(io: &mut Io, id: RegId) {
    io.timers.cancel_where(
        |t| matches!(t, Timer::Owner(r, _) | Timer::Silent(r) | Timer::CoverEnd(r) if *r == id),
    );
}

/// Where and when a new registration starts.
#[derive(Clone, Copy)]
pub(crate) struct Start {
    /// The socket it goes out of.
    pub(crate) via: SocketId,
    /// How long after now its first `register` goes.
    pub(crate) after: Duration,
}

fn send_register(
    io: &mut Io,
    via: SocketId,
    node: SocketAddr,
    tag: Tag,
    key: &AddressKey,
    flags: Flags,
) {
    // Signed over the cookie it goes with: worth nothing from another
    // source, at another node, or once the cookie has expired.
    io.request(via, node, |cookie| Message::Register {
        tag,
        cookie,
        flags,
        key: key.public(),
        sig: key.sign_register(&cookie, flags),
    });
}

fn send_keepalive(
    io: &mut Io,
    via: SocketId,
    node: SocketAddr,
    tag: Tag,
    address: VirtualAddr,
    ring: u32,
) {
    io.request(via, node, |cookie| Message::Keepalive {
        tag,
        cookie,
        address,
        ring,
    });
}

/// Unregistering costs the node nothing to answer: there is no reply, and
/// none is waited for.
pub(crate) fn unregister(io: &mut Io, via: SocketId, node: SocketAddr, key: &AddressKey) {
    let tag = io.tag();
    io.request(via, node, |cookie| Message::Unregister {
        tag,
        cookie,
        key: key.public(),
        sig: key.sign_unregister(&cookie),
    });
}
