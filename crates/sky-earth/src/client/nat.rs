//! NAT: what the client knows of its own network — how its NAT maps and
//! filters (measured against a sky node's check ports), where the sky sees
//! it, its local address and the port mapping its router gave it (both
//! told by the driver) — and the hint it seals into every lookup from that
//! knowledge.
//!
//! The check (`docs/NAT.md`, "Netcheck"): from the main socket, a `check`
//! to the node's listen port and one to its first check port — the same
//! endpoint twice means a consistent mapping, two means the NAT gives each
//! destination its own port; from a fresh socket, a `check` to the first
//! check port asking for the answer from the second — it arrives only
//! through a NAT that does not filter by port. Nothing of it is secret
//! from the node (it sees our endpoint anyway), and nothing of the verdict
//! goes back to the sky: it travels only sealed, to friends.
//!
//! Owns: the check in flight and the measured behaviour. Timer:
//! [`Timer::Check`].

use std::net::{IpAddr, SocketAddr, SocketAddrV4};
use std::time::Duration;

use sky_proto::hint::{Hint, HintFlags};
use sky_proto::time::UnixTime;
use sky_proto::wire::{Message, Tag, canonical};

use super::event::{Event, SocketId};
use super::io::Io;
use super::timers::Timer;

/// How often an unanswered check request goes again.
const CHECK_RETRY: Duration = Duration::from_millis(300);
/// Requests sent per step before the step's answer counts as missing.
const CHECK_TRIES: u32 = 3;

/// How a NAT maps a socket's outgoing datagrams to public endpoints.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Mapping {
    /// Not measured (no check service answered).
    #[default]
    Unknown,
    /// One public endpoint for every destination (endpoint-independent):
    /// what the sky sees is what a friend sees.
    Consistent,
    /// A public port per destination (address- and port-dependent, a
    /// "symmetric" NAT): only the birthday punch finds a path to it.
    Random,
}

/// Which unsolicited datagrams a NAT lets in to a mapped endpoint.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Filtering {
    /// Not measured.
    #[default]
    Unknown,
    /// From any port (endpoint-independent, or address-dependent only):
    /// a friend reaches us at the endpoint the sky saw, unpunched.
    Open,
    /// Only from the endpoints we sent to (address- and port-dependent):
    /// both sides must punch.
    Restricted,
}

/// What the client knows of its network ([`super::Earth::nat`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NatReport {
    /// How the NAT maps.
    pub mapping: Mapping,
    /// How the NAT filters.
    pub filtering: Filtering,
    /// Where the sky sees the main socket.
    pub observed: Option<SocketAddr>,
    /// The port mapping the router gave the main socket, if any.
    pub mapped: Option<SocketAddrV4>,
    /// The main socket's local address, as the driver told it.
    pub local: Option<SocketAddr>,
    /// Whether a check service answered at all.
    pub checked: bool,
}

impl NatReport {
    /// The client holds no port mapping and its NAT gives each
    /// destination its own port.
    pub fn randomizing(&self) -> bool {
        self.mapping == Mapping::Random && self.mapped.is_none()
    }

    /// Unsolicited datagrams reach the client (open filtering, or a port
    /// mapping).
    pub fn open(&self) -> bool {
        self.filtering == Filtering::Open || self.mapped.is_some()
    }

    /// Behind no NAT at all: the sky sees the local address.
    pub fn no_nat(&self) -> bool {
        matches!((self.observed, self.local), (Some(o), Some(l)) if o == l)
    }

    /// One line: which friends can reach this client directly.
    pub fn verdict(&self) -> &'static str {
        if self.no_nat() {
            return "no NAT: every friend can reach you directly";
        }
        if self.mapped.is_some() {
            return "your router forwards a port to you: every friend can reach you directly";
        }
        match (self.mapping, self.filtering) {
            (Mapping::Consistent, Filtering::Open) => {
                "open NAT: every friend can reach you directly"
            }
            (Mapping::Consistent, _) => {
                "consistent NAT: friends reach you by punching (friends behind port-randomising \
                 NATs through the birthday punch)"
            }
            (Mapping::Random, _) => {
                "port-randomising NAT: friends behind open or consistent NATs reach you (the \
                 birthday punch); friends whose NATs also randomise ports cannot, unless one of \
                 you gets a port mapping"
            }
            (Mapping::Unknown, _) => {
                "unknown: no sky node answered the NAT check (friends may still reach you)"
            }
        }
    }
}

/// One step of the check: a request to `to` from `socket`, until answered.
struct Step {
    tag: Tag,
    socket: SocketId,
    to: SocketAddr,
    flags: u8,
    tries: u32,
    /// The answer's observed endpoint.
    answer: Option<SocketAddr>,
}

/// A check in flight.
struct Run {
    node: SocketAddr,
    listen: Step,
    /// The first check port's answer, and the one from the other port
    /// (started once the node told its check port).
    port: Option<Step>,
    other: Option<Step>,
}

/// The machine (see the module documentation).
pub(crate) struct Nat {
    report: NatReport,
    run: Option<Run>,
    /// The local address of each socket the driver told us of.
    locals: Vec<(SocketId, SocketAddr)>,
}

impl Nat {
    pub(crate) fn new() -> Nat {
        Nat {
            report: NatReport::default(),
            run: None,
            locals: Vec::new(),
        }
    }

    /// What is known now (the main socket's local address filled in).
    pub(crate) fn report(&self, main: SocketId) -> NatReport {
        NatReport {
            local: self.local_of(main),
            ..self.report
        }
    }

    fn local_of(&self, socket: SocketId) -> Option<SocketAddr> {
        self.locals
            .iter()
            .find(|(s, _)| *s == socket)
            .map(|(_, a)| *a)
    }

    /// The driver bound `socket` at `local` (the address a LAN neighbour
    /// reaches it at).
    pub(crate) fn set_local(&mut self, socket: SocketId, local: SocketAddr) {
        self.locals.retain(|(s, _)| *s != socket);
        self.locals.push((socket, local));
    }

    /// The driver closed `socket`.
    pub(crate) fn forget_socket(&mut self, socket: SocketId) {
        self.locals.retain(|(s, _)| *s != socket);
    }

    /// The router's port mapping for the main socket (or none now).
    pub(crate) fn set_mapped(&mut self, mapped: Option<SocketAddrV4>) {
        self.report.mapped = mapped;
    }

    /// Where a sky node saw the main socket (a `registered` reply).
    pub(crate) fn observed(&mut self, observed: SocketAddr) {
        self.report.observed = Some(canonical(observed));
    }

    /// Whether `ip` is our own public IP (a friend behind the same NAT).
    pub(crate) fn same_ip(&self, ip: IpAddr) -> bool {
        self.report
            .observed
            .is_some_and(|o| canonical(SocketAddr::new(ip, 0)).ip() == o.ip())
    }

    /// Starts a check against `node` (a sky node's listen endpoint).
    pub(crate) fn start(&mut self, now: UnixTime, io: &mut Io, node: SocketAddr) {
        let listen = Step {
            tag: io.tag(),
            socket: io.main,
            to: node,
            flags: 0,
            tries: 0,
            answer: None,
        };
        self.run = Some(Run {
            node,
            listen,
            port: None,
            other: None,
        });
        self.on_timer(now, io);
    }

    /// [`Timer::Check`]: send what is unanswered again, or conclude.
    pub(crate) fn on_timer(&mut self, now: UnixTime, io: &mut Io) {
        let Some(run) = self.run.as_mut() else {
            return;
        };
        let mut pending = false;
        for step in [Some(&mut run.listen), run.port.as_mut(), run.other.as_mut()]
            .into_iter()
            .flatten()
        {
            if step.answer.is_none() && step.tries < CHECK_TRIES {
                step.tries += 1;
                let (tag, flags) = (step.tag, step.flags);
                io.request(step.socket, step.to, |cookie| Message::Check {
                    tag,
                    cookie,
                    flags,
                });
                pending = true;
            }
        }
        if pending {
            io.timers.set(Timer::Check, now + CHECK_RETRY);
        } else {
            self.conclude(io);
        }
    }

    /// A `checked` reply from `from` on `socket`: `true` if it was ours.
    pub(crate) fn on_checked(
        &mut self,
        now: UnixTime,
        io: &mut Io,
        socket: SocketId,
        from: SocketAddr,
        reply: Message,
    ) -> bool {
        let Message::Checked {
            tag,
            check_port,
            endpoint,
        } = reply
        else {
            return false;
        };
        let Some(run) = self.run.as_mut() else {
            return false;
        };
        if from.ip() != run.node.ip() {
            return false;
        }
        let endpoint = canonical(endpoint);
        let first = tag == run.listen.tag && socket == run.listen.socket;
        let step = [Some(&mut run.listen), run.port.as_mut(), run.other.as_mut()]
            .into_iter()
            .flatten()
            .find(|s| s.tag == tag && s.socket == socket);
        let Some(step) = step else {
            return false;
        };
        if step.answer.is_some() {
            return true;
        }
        step.answer = Some(endpoint);
        if first {
            self.report.observed = Some(endpoint);
            if check_port != 0 && run.port.is_none() {
                let to = SocketAddr::new(run.node.ip(), check_port);
                run.port = Some(Step {
                    tag: io.tag(),
                    socket: io.main,
                    to,
                    flags: 0,
                    tries: 0,
                    answer: None,
                });
                // From a socket that never sent to the other port.
                run.other = Some(Step {
                    tag: io.tag(),
                    socket: io.new_socket(),
                    to,
                    flags: Message::CHECK_FROM_OTHER,
                    tries: 0,
                    answer: None,
                });
                self.on_timer(now, io);
                return true;
            }
        }
        let done = [Some(&run.listen), run.port.as_ref(), run.other.as_ref()]
            .into_iter()
            .flatten()
            .all(|s| s.answer.is_some());
        if done {
            io.timers.cancel(Timer::Check);
            self.conclude(io);
        }
        true
    }

    /// The check is over: what it showed becomes the report.
    fn conclude(&mut self, io: &mut Io) {
        let Some(run) = self.run.take() else {
            return;
        };
        let listen = run.listen.answer;
        let port = run.port.as_ref().and_then(|s| s.answer);
        self.report.checked = port.is_some();
        self.report.mapping = match (listen, port) {
            (Some(a), Some(b)) if a == b => Mapping::Consistent,
            (Some(_), Some(_)) => Mapping::Random,
            _ => self.report.mapping,
        };
        if port.is_some() {
            // The check port answered that socket; whether the other port's
            // answer came through is the filtering.
            self.report.filtering = match run.other.as_ref().and_then(|s| s.answer) {
                Some(_) => Filtering::Open,
                None => Filtering::Restricted,
            };
        }
        if let Some(other) = run.other {
            io.release(other.socket);
        }
        let report = self.report(io.main);
        io.event(Event::Nat(report));
    }

    /// The hint for a lookup: our NAT and one candidate — the port mapping
    /// when it is another way in than the endpoint the sky sees (a router
    /// that keeps the mapping apart, or an inner router of a double NAT),
    /// else the local address; the local address always when the friend
    /// shares our public IP (`same_ip`). `reply`: the lookup answers an
    /// introduction.
    pub(crate) fn hint(&self, main: SocketId, same_ip: bool, reply: bool) -> Hint {
        let r = self.report(main);
        let mut flags = 0;
        if r.mapping != Mapping::Unknown {
            flags |= HintFlags::KNOWN;
        }
        if r.randomizing() {
            flags |= HintFlags::RANDOM;
        }
        if r.open() {
            flags |= HintFlags::OPEN;
        }
        if reply {
            flags |= HintFlags::REPLY;
        }
        let local = match r.local {
            Some(SocketAddr::V4(l)) if !l.ip().is_unspecified() => Some(l),
            _ => None,
        };
        let mapped_apart = r
            .mapped
            .filter(|m| r.observed != Some(SocketAddr::V4(*m)) && !same_ip);
        let candidate = match (mapped_apart, local) {
            (Some(m), _) => Some((HintFlags::MAPPED, m)),
            (None, Some(l)) => Some((HintFlags::LOCAL, l)),
            (None, None) => r.mapped.map(|m| (HintFlags::MAPPED, m)),
        };
        if let Some((kind, _)) = candidate {
            flags |= kind;
        }
        Hint {
            flags: HintFlags(flags),
            candidate: candidate.map(|(_, c)| c),
        }
    }
}
