//! Lookups: asking the sky whether a friend is online, under each address
//! they may have now (the neighbouring epoch's too near a boundary), one
//! owner after another — the next at once on `offline` or `not owner`,
//! after `3 × retry` of silence — until one says online or every owner has
//! answered.
//!
//! Owns: the lookups in flight. Timers: [`Timer::GiveUp`],
//! [`Timer::NextOwner`]. Reads owners from [`Members`]; hands each finished
//! lookup back to the caller ([`Done`]), which gives it to the application
//! or to the connection that asked.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::time::Duration;

use sky_proto::hint::HINT_LEN;
use sky_proto::time::UnixTime;
use sky_proto::wire::{Flags, Message, Tag, VirtualAddr};

use super::event::Failure;
use super::io::Io;
use super::members::Members;
use super::peers::PeerKey;
use super::timers::{QueryId, Timer};

/// Who a lookup answers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Purpose {
    /// The application ([`super::Event::Lookup`]).
    App,
    /// A connection that needs the friend's endpoint.
    Connect(PeerKey),
    /// Answers an introduction by that friend's device: the lookup only
    /// carries our sealed hint to them (its answer is not needed).
    Reply(PeerKey),
}

/// A lookup in flight: one target per candidate address (the friend's
/// devices, in each epoch they may be in).
struct Query {
    id: QueryId,
    friend: String,
    caller: VirtualAddr,
    targets: Vec<Target>,
    purpose: Purpose,
}

/// One address a lookup asks the owners about, one owner at a time.
struct Target {
    address: VirtualAddr,
    /// The friend's device this address is of.
    device: u8,
    /// Our sealed hint for that device ([`sky_proto::hint`]).
    hint: [u8; HINT_LEN],
    tag: Tag,
    /// The owners to ask, in ring order; hints and a newer view add more.
    asks: Vec<Ask>,
    /// The ask in flight (index into `asks`).
    current: Option<usize>,
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
pub(crate) enum Answer {
    Online(SocketAddr, Flags),
    Offline,
    NotOwner { version: u32, hint: SocketAddr },
}

/// A lookup to start: `friend` under each of `addresses` (each of one of
/// their devices, with our sealed hint for it), as `caller`.
pub(crate) struct NewLookup {
    pub(crate) friend: String,
    pub(crate) caller: VirtualAddr,
    pub(crate) addresses: Vec<(VirtualAddr, u8, [u8; HINT_LEN])>,
    pub(crate) purpose: Purpose,
}

/// A finished lookup: where the friend's device that answered is.
pub(crate) struct Done {
    pub(crate) friend: String,
    pub(crate) purpose: Purpose,
    pub(crate) result: Result<(SocketAddr, Flags, u8), Failure>,
}

impl Target {
    /// Asks the next owner that has not answered (after the current one,
    /// round the list: with one owner left, that owner again). Returns the
    /// node to send the lookup to.
    fn advance(&mut self) -> Option<SocketAddr> {
        let n = self.asks.len();
        let from = self.current.map_or(0, |c| c + 1);
        let pick = (0..n)
            .map(|i| (from + i) % n)
            .find(|&i| self.asks[i].said.is_none());
        self.current = pick;
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

/// Every lookup in flight (see the module documentation).
pub(crate) struct Lookups {
    queries: Vec<Query>,
    next_id: QueryId,
    /// An owner is given up for the next after this long.
    period: Duration,
    give_up: Duration,
}

impl Lookups {
    pub(crate) fn new(retry: Duration, give_up: Duration) -> Lookups {
        Lookups {
            queries: Vec::new(),
            next_id: 0,
            period: retry * 3,
            give_up,
        }
    }

    /// Whether any lookup is in flight (the member list is needed).
    pub(crate) fn any(&self) -> bool {
        !self.queries.is_empty()
    }

    /// Whether the connection `key` has a lookup in flight.
    pub(crate) fn looking_up(&self, key: &PeerKey) -> bool {
        self.queries
            .iter()
            .any(|q| q.purpose == Purpose::Connect(key.clone()))
    }

    /// The nodes this machine still needs the cookies of.
    pub(crate) fn nodes_in_use(&self, used: &mut HashSet<SocketAddr>) {
        for q in &self.queries {
            for t in &q.targets {
                used.extend(t.asks.iter().map(|a| a.node));
            }
        }
    }

    /// Starts a lookup.
    pub(crate) fn start(&mut self, now: UnixTime, io: &mut Io, members: &Members, new: NewLookup) {
        let NewLookup {
            friend,
            caller,
            addresses,
            purpose,
        } = new;
        self.next_id += 1;
        let id = self.next_id;
        let targets = addresses
            .into_iter()
            .map(|(address, device, hint)| Target {
                address,
                device,
                hint,
                tag: io.rng.tag(),
                asks: members
                    .owners_of(&address)
                    .into_iter()
                    .map(|node| Ask { node, said: None })
                    .collect(),
                current: None,
            })
            .collect::<Vec<_>>();
        let n = targets.len();
        self.queries.push(Query {
            id,
            friend,
            caller,
            targets,
            purpose,
        });
        io.timers.set(Timer::GiveUp(id), now + self.give_up);
        let q = self.queries.len() - 1;
        for t in 0..n {
            self.ask_next(now, io, q, t);
        }
    }

    /// Asks target `t` of query `q` of its next owner.
    fn ask_next(&mut self, now: UnixTime, io: &mut Io, q: usize, t: usize) {
        let query = &mut self.queries[q];
        let (id, caller) = (query.id, query.caller);
        let target = &mut query.targets[t];
        match target.advance() {
            Some(node) => {
                io.timers.set(Timer::NextOwner(id, t), now + self.period);
                let (tag, address) = (target.tag, target.address);
                send_lookup(io, node, tag, (address, caller, target.hint));
            }
            None => io.timers.cancel(Timer::NextOwner(id, t)),
        }
    }

    /// After a new view: owners a lookup in flight has not asked yet are
    /// added, and asked when nothing else is in flight.
    pub(crate) fn reconcile(&mut self, now: UnixTime, io: &mut Io, members: &Members) {
        for q in 0..self.queries.len() {
            for t in 0..self.queries[q].targets.len() {
                let owners = members.owners_of(&self.queries[q].targets[t].address);
                let target = &mut self.queries[q].targets[t];
                for node in owners {
                    if !target.asks.iter().any(|a| a.node == node) {
                        target.asks.push(Ask { node, said: None });
                    }
                }
                if !target.waiting() {
                    self.ask_next(now, io, q, t);
                }
            }
        }
    }

    /// [`Timer::NextOwner`] is due: the owner asked did not answer in time.
    pub(crate) fn on_next_owner(&mut self, now: UnixTime, io: &mut Io, id: QueryId, t: usize) {
        if let Some(q) = self.queries.iter().position(|q| q.id == id) {
            self.ask_next(now, io, q, t);
        }
    }

    /// [`Timer::GiveUp`] is due: owners that said offline count; owners
    /// that did not answer in time count for nothing.
    pub(crate) fn on_give_up(&mut self, io: &mut Io, id: QueryId) -> Option<Done> {
        let q = self.queries.iter().position(|q| q.id == id)?;
        let why = if self.queries[q].targets.iter().any(Target::said_offline) {
            Failure::Offline
        } else {
            Failure::SkySilent
        };
        Some(self.finish(io, q, Err(why)))
    }

    /// Removes query `q` and its timers.
    fn finish(
        &mut self,
        io: &mut Io,
        q: usize,
        result: Result<(SocketAddr, Flags, u8), Failure>,
    ) -> Done {
        let query = self.queries.swap_remove(q);
        let id = query.id;
        io.timers
            .cancel_where(|t| matches!(t, Timer::GiveUp(i) | Timer::NextOwner(i, _) if *i == id));
        Done {
            friend: query.friend,
            purpose: query.purpose,
            result,
        }
    }

    /// Ends every lookup of `friend` (no longer a friend).
    pub(crate) fn forget(&mut self, io: &mut Io, friend: &str) -> Vec<Done> {
        let mut done = Vec::new();
        while let Some(q) = self.queries.iter().position(|q| q.friend == friend) {
            done.push(self.finish(io, q, Err(Failure::NoSuchFriend)));
        }
        done
    }

    /// `from` is called `to` now.
    pub(crate) fn rename(&mut self, from: &str, to: &str) {
        for q in self.queries.iter_mut().filter(|q| q.friend == from) {
            q.friend = to.to_string();
            if let Purpose::Connect(key) | Purpose::Reply(key) = &mut q.purpose {
                key.friend = to.to_string();
            }
        }
    }

    /// Drops the lookups the connection `key` started (its session is up:
    /// they are moot).
    pub(crate) fn cancel_connect(&mut self, io: &mut Io, key: &PeerKey) {
        let purpose = Purpose::Connect(key.clone());
        while let Some(q) = self.queries.iter().position(|q| q.purpose == purpose) {
            self.finish(io, q, Err(Failure::Unreachable));
        }
    }

    /// A lookup answer from owner `from`. Returns the finished lookup, if
    /// this answer finished one, and the version a `not owner` named (the
    /// caller fetches the members again).
    pub(crate) fn on_answer(
        &mut self,
        now: UnixTime,
        io: &mut Io,
        from: SocketAddr,
        tag: Tag,
        answer: Answer,
    ) -> (Option<Done>, Option<u32>) {
        let Some((q, t)) = self.queries.iter().enumerate().find_map(|(q, query)| {
            let t = query
                .targets
                .iter()
                .position(|t| t.tag == tag && t.asks.iter().any(|a| a.node == from))?;
            Some((q, t))
        }) else {
            return (None, None);
        };
        let target = &mut self.queries[q].targets[t];
        let Some(a) = target.asks.iter().position(|a| a.node == from) else {
            return (None, None);
        };
        let mut ring_changed = None;
        match answer {
            Answer::Online(endpoint, flags) => {
                let device = target.device;
                return (
                    Some(self.finish(io, q, Ok((endpoint, flags, device)))),
                    None,
                );
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
                ring_changed = Some(version);
            }
        }
        if !self.queries[q].targets[t].waiting() {
            self.ask_next(now, io, q, t);
        }
        let query = &self.queries[q];
        if query.targets.iter().all(Target::exhausted)
            && query.targets.iter().any(Target::said_offline)
        {
            return (
                Some(self.finish(io, q, Err(Failure::Offline))),
                ring_changed,
            );
        }
        (None, ring_changed)
    }

    /// A cookie reply from `node` to request `tag`: the lookup in flight
    /// with that tag goes again with it.
    pub(crate) fn on_cookie(&self, io: &mut Io, node: SocketAddr, tag: Tag) {
        for q in &self.queries {
            for t in &q.targets {
                if t.tag == tag && t.current.is_some_and(|c| t.asks[c].node == node) {
                    send_lookup(io, node, tag, (t.address, q.caller, t.hint));
                }
            }
        }
    }
}

fn send_lookup(
    io: &mut Io,
    node: SocketAddr,
    tag: Tag,
    (target, caller, hint): (VirtualAddr, VirtualAddr, [u8; HINT_LEN]),
) {
    let main = io.main;
    io.request(main, node, |cookie| Message::Lookup {
        tag,
        cookie,
        target,
        caller,
        hint,
    });
}
