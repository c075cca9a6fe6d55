//! The sky as the client sees it: the member list, fetched page by page
//! from the bootstrap list (then from the members it knows), the ring the
//! client computes owners with, and fetching again when a node says the
//! ring changed (`docs/PROTOCOL.md`, "Earth in a sky of many nodes").
//!
//! Owns: the view (ring and version), the fetch in flight, the refetch a
//! node's answer asked for, and when the next one may start. Timers:
//! [`Timer::Fetch`], [`Timer::Refetch`]. Tells [`super::Earth`] when a new
//! view is adopted, so that registrations and lookups follow it.

use std::collections::{HashSet, VecDeque};
use std::net::SocketAddr;
use std::time::Duration;

use sky_proto::ring::{Ring, RingConfig};
use sky_proto::time::UnixTime;
use sky_proto::wire::{self, Message, Packet, Tag, VirtualAddr};

use super::event::Event;
use super::io::Io;
use super::timers::Timer;

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
pub(crate) const REFETCH_EVERY: Duration = Duration::from_secs(1);

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
    /// Passes over the bootstrap list that found no node (while the client
    /// holds no view): the pause before the next pass doubles.
    passes: u32,
}

/// The member list and the ring (see the module documentation).
pub(crate) struct Members {
    /// The bootstrap list, in order, without duplicates.
    bootstrap: Vec<SocketAddr>,
    view: Option<View>,
    fetch: Option<Fetch>,
    /// A fetch a node's answer asked for while one was running or too
    /// recent: from that node, for that version.
    refetch: Option<(SocketAddr, u32)>,
    /// When the next fetch a node's answer asks for may start.
    fetch_allowed: UnixTime,
    /// A request is asked again after this long without an answer.
    period: Duration,
    /// The longest pause between passes over the bootstrap list.
    pause_cap: Duration,
}

impl Members {
    pub(crate) fn new(bootstrap: Vec<SocketAddr>, retry: Duration, keepalive: Duration) -> Members {
        Members {
            bootstrap,
            view: None,
            fetch: None,
            refetch: None,
            fetch_allowed: UnixTime::ZERO,
            period: retry * 3,
            pause_cap: keepalive,
        }
    }

    /// The ring and the version held (0: a standalone node).
    pub(crate) fn view(&self) -> Option<(&Ring, u32)> {
        self.view.as_ref().map(|v| (&v.ring, v.version))
    }

    /// The version keepalives carry: the view's, or 0 without one.
    pub(crate) fn version(&self) -> u32 {
        self.view.as_ref().map_or(0, |v| v.version)
    }

    /// The owners of `address` in the view held (none without one).
    pub(crate) fn owners_of(&self, address: &VirtualAddr) -> Vec<SocketAddr> {
        self.view
            .as_ref()
            .map(|v| v.ring.owners(address).as_slice().collect())
            .unwrap_or_default()
    }

    /// The nodes this machine still needs the cookies of.
    pub(crate) fn nodes_in_use(&self, used: &mut HashSet<SocketAddr>) {
        used.extend(self.bootstrap.iter().copied());
        if let Some(v) = &self.view {
            used.extend(v.ring.members().iter().map(|m| m.endpoint));
        }
        if let Some(f) = &self.fetch {
            used.insert(f.node);
            used.extend(f.queue.iter().copied());
        }
    }

    /// Fetches the members unless the client holds a view or is fetching.
    pub(crate) fn ensure(&mut self, now: UnixTime, io: &mut Io, needed: bool) {
        if self.view.is_none() && self.fetch.is_none() {
            self.start(now, io, None, needed);
        }
    }

    /// Starts fetching the members: from `first` (a node that said the ring
    /// changed), then the bootstrap list, then the members we know.
    fn start(&mut self, now: UnixTime, io: &mut Io, first: Option<SocketAddr>, needed: bool) {
        let mut queue = VecDeque::new();
        let known = self.view.iter().flat_map(|v| v.ring.members());
        for node in first
            .into_iter()
            .chain(self.bootstrap.iter().copied())
            .chain(known.map(|m| m.endpoint))
        {
            if !queue.contains(&node) {
                queue.push_back(node);
            }
        }
        let Some(node) = queue.pop_front() else {
            return; // no bootstrap node at all
        };
        self.fetch = Some(Fetch {
            node,
            queue,
            tag: io.tag(),
            start: 0,
            reading: None,
            entries: Vec::new(),
            tries: 0,
            restarts: 0,
            passes: 0,
        });
        self.ask(now, io, needed);
    }

    /// A node's answer says the sky's view is `version`: fetch it from
    /// `from` unless it is the view we hold (at most every
    /// [`REFETCH_EVERY`], one fetch at a time).
    pub(crate) fn ring_changed(
        &mut self,
        now: UnixTime,
        io: &mut Io,
        from: SocketAddr,
        version: u32,
        needed: bool,
    ) {
        if self.view.as_ref().is_some_and(|v| v.version == version) {
            return;
        }
        if self.fetch.is_some() || now < self.fetch_allowed {
            self.refetch = Some((from, version));
            self.arm_refetch(io);
            return;
        }
        self.refetch = None;
        io.timers.cancel(Timer::Refetch);
        self.start(now, io, Some(from), needed);
    }

    /// A refetch waits for the fetch in flight to end and for
    /// `fetch_allowed`.
    fn arm_refetch(&self, io: &mut Io) {
        if self.refetch.is_some() && self.fetch.is_none() {
            io.timers.set(Timer::Refetch, self.fetch_allowed);
        }
    }

    /// [`Timer::Refetch`] is due.
    pub(crate) fn on_refetch(&mut self, now: UnixTime, io: &mut Io, needed: bool) {
        if self.fetch.is_none()
            && now >= self.fetch_allowed
            && let Some((node, _)) = self.refetch.take()
        {
            self.start(now, io, Some(node), needed);
        }
    }

    /// [`Timer::Fetch`] is due: ask again, or the next node.
    pub(crate) fn on_fetch(&mut self, now: UnixTime, io: &mut Io, needed: bool) {
        self.ask(now, io, needed);
    }

    /// Sends the members request of the fetch in flight, moving on to the
    /// next node once this one had its tries.
    fn ask(&mut self, now: UnixTime, io: &mut Io, needed: bool) {
        let Some(f) = self.fetch.as_ref() else {
            return;
        };
        if f.tries >= FETCH_TRIES {
            match self.next_node(io, needed) {
                None => return,
                Some(pause) if !pause.is_zero() => {
                    io.timers.set(Timer::Fetch, now + pause);
                    return;
                }
                Some(_) => {}
            }
        }
        let Some(f) = self.fetch.as_mut() else {
            return;
        };
        f.tries += 1;
        io.timers.set(Timer::Fetch, now + self.period);
        let (node, tag, start) = (f.node, f.tag, f.start);
        send_members(io, node, tag, start);
    }

    /// Moves the fetch on to the next node; returns the pause before it is
    /// asked, or `None` when the fetch gave up: the client keeps the view it
    /// holds, or, holding none and needing none, waits until it does.
    fn next_node(&mut self, io: &mut Io, needed: bool) -> Option<Duration> {
        let has_view = self.view.is_some();
        let tag = io.tag();
        let f = self.fetch.as_mut()?;
        let (node, pause) = match f.queue.pop_front() {
            Some(node) => (node, Duration::ZERO),
            None if has_view || !needed => {
                self.stop(io);
                return None;
            }
            None => {
                // Nobody answered: go round the bootstrap list again, after
                // a pause that doubles up to the keepalive interval.
                f.passes += 1;
                f.queue = self.bootstrap.iter().copied().collect();
                let Some(node) = f.queue.pop_front() else {
                    self.stop(io);
                    return None;
                };
                let pause = self
                    .period
                    .saturating_mul(1 << f.passes.min(16))
                    .min(self.pause_cap);
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
        Some(pause)
    }

    /// The fetch ends (done or given up).
    fn stop(&mut self, io: &mut Io) {
        self.fetch = None;
        io.timers.cancel(Timer::Fetch);
        self.arm_refetch(io);
    }

    /// The node asked now does not give a usable view: ask the next.
    fn failed(&mut self, now: UnixTime, io: &mut Io, needed: bool) {
        if let Some(f) = self.fetch.as_mut() {
            f.tries = FETCH_TRIES;
        }
        self.ask(now, io, needed);
    }

    /// A cookie reply from `node` to request `tag`: the members request
    /// goes again with it.
    pub(crate) fn on_cookie(&self, io: &mut Io, node: SocketAddr, tag: Tag) {
        if let Some(f) = &self.fetch
            && f.node == node
            && f.tag == tag
        {
            send_members(io, node, tag, f.start);
        }
    }

    /// A members page from `from`. Returns `true` when it completed a new
    /// view (the caller reconciles registrations and lookups with it).
    pub(crate) fn on_page(
        &mut self,
        now: UnixTime,
        io: &mut Io,
        from: SocketAddr,
        page: &Packet<&[u8]>,
        needed: bool,
    ) -> bool {
        let Message::MembersPage {
            tag,
            version,
            config,
            total,
            start,
        } = Message::parse(page)
        else {
            return false;
        };
        let Some(f) = self.fetch.as_mut() else {
            return false;
        };
        if from != f.node || tag != f.tag || start != f.start {
            return false; // not the page asked for (late, or a duplicate)
        }
        if version == 0 && total == 0 {
            // A standalone node: a sky of one, owner of every address.
            self.stop(io);
            let config = RingConfig {
                replicas: 1,
                ..RingConfig::default()
            };
            self.adopt(now, io, Ring::new(config, [from]), 0);
            return true;
        }
        if version == 0 || total == 0 || config.validate().is_err() {
            self.failed(now, io, needed);
            return false;
        }
        match f.reading {
            None => f.reading = Some((version, config, total)),
            Some(reading) if reading != (version, config, total) => {
                // The view changed between pages: start over.
                f.restarts += 1;
                if f.restarts > FETCH_RESTARTS {
                    self.failed(now, io, needed);
                    return false;
                }
                f.reading = None;
                f.entries.clear();
                f.start = 0;
                f.tries = 0;
                f.tag = io.tag();
                self.ask(now, io, needed);
                return false;
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
            let entries = std::mem::take(&mut f.entries);
            self.stop(io);
            self.adopt(now, io, Ring::new(config, entries), version);
            return true;
        }
        if f.entries.len() == before {
            self.failed(now, io, needed); // an empty page before the end
            return false;
        }
        f.start = f.entries.len() as u16;
        f.tries = 0;
        f.tag = io.tag();
        self.ask(now, io, needed);
        false
    }

    /// Holds `ring` as the view from now on.
    fn adopt(&mut self, now: UnixTime, io: &mut Io, ring: Ring, version: u32) {
        let changed = self
            .view
            .as_ref()
            .is_none_or(|v| v.version != version || v.ring != ring);
        self.fetch_allowed = now + REFETCH_EVERY;
        if self.refetch.is_some_and(|(_, v)| v == version) {
            self.refetch = None;
            io.timers.cancel(Timer::Refetch);
        }
        self.arm_refetch(io);
        let nodes = ring.len();
        self.view = Some(View { ring, version });
        if changed {
            io.event(Event::Sky { version, nodes });
        }
    }
}

fn send_members(io: &mut Io, node: SocketAddr, tag: Tag, start: u16) {
    let main = io.main;
    io.request(main, node, |cookie| Message::Members {
        tag,
        cookie,
        start,
        len: MEMBERS_REQUEST_LEN,
    });
}

#[cfg(test)]
#[path = "tests/members.rs"]
mod tests;
