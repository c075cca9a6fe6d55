//! Punch: opening the NATs between two friends — probes towards an
//! introduced caller and the candidates its hint names, and the birthday
//! punch when one side's NAT gives every destination its own port
//! (`docs/NAT.md`, "Punching").
//!
//! - **Towards**: every `retry`, a probe from the socket the introduction
//!   came to, to each endpoint worth trying, until the caller's handshake
//!   comes or the time is up. A probe under the pair key (frame `0x25`)
//!   tells the friend where we are even when it arrives from a port the
//!   sky never saw; towards a caller we cannot name, a bare punch (`0x20`).
//! - **Spray** (our NAT randomises ports, theirs does not): [`SPRAY_SOCKETS`]
//!   fresh sockets each send a probe to the friend's endpoint, so our NAT
//!   holds that many mappings towards it.
//! - **Scan** (their NAT randomises, ours does not): probes from the
//!   socket the friend sprays towards, to random ports of the friend's IP,
//!   [`SCAN_BATCH`] every [`SCAN_TICK`], at most [`SCAN_MAX`]. One lands on
//!   one of the friend's mappings with probability `256 / 64512` per
//!   probe; the friend answers it from that socket and the path is open.
//!
//! Owns: the endpoints punched towards, the campaigns, and the spray
//! sockets (released when a campaign ends, except the one a session
//! took). Timers: [`Timer::Punch`], [`Timer::Campaign`].

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use sky_proto::frame;
use sky_proto::hint;
use sky_proto::time::UnixTime;

use super::event::SocketId;
use super::io::Io;
use super::peers::PeerKey;
use super::timers::Timer;

/// Sockets the randomising side opens for the birthday punch (HyperDHT's
/// number: with [`SCAN_MAX`] probes from the other side, a path is found
/// with probability 1 − (1 − 256/64512)^2500 ≈ 0.99995).
pub const SPRAY_SOCKETS: usize = 256;
/// Probes the consistent side sends per [`SCAN_TICK`].
pub const SCAN_BATCH: u32 = 5;
/// How often a batch of scanning probes goes.
pub const SCAN_TICK: Duration = Duration::from_millis(10);
/// Probes one scan sends at most.
pub const SCAN_MAX: u32 = 2500;
/// The ports a port-randomising Linux NAT picks from (1024..=65535).
const PORT_BASE: u32 = 1024;
const PORT_SPAN: u32 = 65536 - PORT_BASE;
/// Spray campaigns at once (each holds [`SPRAY_SOCKETS`] sockets).
const MAX_SPRAYS: usize = 2;
/// Scan campaigns at once.
const MAX_SCANS: usize = 4;
/// Endpoints punched towards at once (a bound on what introductions and
/// hints can make us send).
const MAX_TOWARDS: usize = 64;

/// A friend's device and what probes to and from it are made under.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Pair {
    pub(crate) key: PeerKey,
    /// The pair key (from both static keys; the sky never holds it).
    pub(crate) secret: [u8; 32],
    /// Whether our static public key is the lower of the two.
    pub(crate) lower: bool,
}

impl Pair {
    /// A probe from us.
    pub(crate) fn probe(&self, io: &mut Io) -> Vec<u8> {
        let b = io.rng.bytes();
        hint::probe(&self.secret, [b[0], b[1], b[2], b[3]], self.lower).to_vec()
    }

    /// Whether `datagram` is a probe from the friend.
    pub(crate) fn verify(&self, datagram: &[u8]) -> bool {
        hint::verify_probe(&self.secret, datagram, !self.lower)
    }
}

struct Towards {
    until: UnixTime,
    pair: Option<Pair>,
}

enum Kind {
    Spray {
        dst: SocketAddr,
        sockets: Vec<SocketId>,
        rounds: u32,
    },
    Scan {
        via: SocketId,
        ip: IpAddr,
        /// Ports `PORT_BASE + (start + i · stride) mod PORT_SPAN`, i < sent:
        /// a permutation, so no port is probed twice.
        start: u32,
        stride: u32,
        sent: u32,
    },
}

struct Campaign {
    pair: Pair,
    kind: Kind,
    until: UnixTime,
}

/// The machine (see the module documentation).
pub(crate) struct Punch {
    towards: HashMap<(SocketId, SocketAddr), Towards>,
    campaigns: HashMap<u64, Campaign>,
    next_campaign: u64,
    /// When we last answered a probe on each path (one answer per retry).
    answered: HashMap<(SocketId, SocketAddr), UnixTime>,
    retry: Duration,
    give_up: Duration,
    /// Probes sent by campaigns (spray and scan), for the record.
    pub(crate) campaign_probes: u64,
    /// When the last campaign of each kind started for a friend device:
    /// one per `give_up`, however often it calls (a bound on packets).
    started: HashMap<(PeerKey, bool), UnixTime>,
}

impl Punch {
    pub(crate) fn new(retry: Duration, give_up: Duration) -> Punch {
        Punch {
            towards: HashMap::new(),
            campaigns: HashMap::new(),
            next_campaign: 0,
            answered: HashMap::new(),
            retry,
            give_up,
            campaign_probes: 0,
            started: HashMap::new(),
        }
    }

    /// Probe (or punch, without a pair) towards `endpoint` from `via`
    /// every retry until the time is up or a session starts.
    pub(crate) fn towards(
        &mut self,
        now: UnixTime,
        io: &mut Io,
        via: SocketId,
        endpoint: SocketAddr,
        pair: Option<Pair>,
    ) {
        if self.towards.len() >= MAX_TOWARDS && !self.towards.contains_key(&(via, endpoint)) {
            return;
        }
        self.towards.insert(
            (via, endpoint),
            Towards {
                until: now + self.give_up,
                pair,
            },
        );
        self.on_punch(now, io, via, endpoint);
    }

    /// [`Timer::Punch`] is due.
    pub(crate) fn on_punch(
        &mut self,
        now: UnixTime,
        io: &mut Io,
        via: SocketId,
        endpoint: SocketAddr,
    ) {
        match self.towards.get(&(via, endpoint)) {
            Some(t) if now < t.until => {
                let bytes = match &t.pair {
                    Some(pair) => pair.probe(io),
                    None => vec![frame::PUNCH],
                };
                io.send(via, endpoint, bytes);
                io.timers.set(Timer::Punch(via, endpoint), now + self.retry);
            }
            _ => {
                self.towards.remove(&(via, endpoint));
                io.timers.cancel(Timer::Punch(via, endpoint));
            }
        }
    }

    /// The pairs we punch for now (whose probes we expect).
    pub(crate) fn pairs(&self) -> Vec<Pair> {
        let mut out: Vec<Pair> = Vec::new();
        let all = self
            .towards
            .values()
            .filter_map(|t| t.pair.as_ref())
            .chain(self.campaigns.values().map(|c| &c.pair));
        for p in all {
            if !out.contains(p) {
                out.push(p.clone());
            }
        }
        out
    }

    /// Whether a campaign of this kind may start for `key` now (none runs
    /// or ran within `give_up`); if so, it counts as started.
    fn may_start(&mut self, now: UnixTime, key: &PeerKey, spray: bool) -> bool {
        let running = self
            .campaigns
            .values()
            .any(|c| c.pair.key == *key && matches!(c.kind, Kind::Spray { .. }) == spray);
        let recent = self
            .started
            .get(&(key.clone(), spray))
            .is_some_and(|&t| now < t + self.give_up);
        if running || recent {
            return false;
        }
        let give_up = self.give_up;
        self.started.retain(|_, t| now < *t + give_up);
        self.started.insert((key.clone(), spray), now);
        true
    }

    /// Whether any campaign runs for `key` (the birthday punch is on).
    pub(crate) fn birthday(&self, key: &PeerKey) -> bool {
        self.campaigns.values().any(|c| c.pair.key == *key)
    }

    /// Starts the randomising side's birthday punch towards `dst`.
    pub(crate) fn spray(&mut self, now: UnixTime, io: &mut Io, pair: Pair, dst: SocketAddr) {
        let sprays = self
            .campaigns
            .values()
            .filter(|c| matches!(c.kind, Kind::Spray { .. }))
            .count();
        if sprays >= MAX_SPRAYS || !self.may_start(now, &pair.key, true) {
            return;
        }
        let sockets = (0..SPRAY_SOCKETS).map(|_| io.new_socket()).collect();
        self.start(
            now,
            io,
            Campaign {
                pair,
                kind: Kind::Spray {
                    dst,
                    sockets,
                    rounds: 0,
                },
                until: now + self.give_up,
            },
        );
    }

    /// Starts the consistent side's birthday punch: probes from `via` to
    /// random ports of `ip`.
    pub(crate) fn scan(
        &mut self,
        now: UnixTime,
        io: &mut Io,
        pair: Pair,
        via: SocketId,
        ip: IpAddr,
    ) {
        let scans = self
            .campaigns
            .values()
            .filter(|c| matches!(c.kind, Kind::Scan { .. }))
            .count();
        if scans >= MAX_SCANS || !self.may_start(now, &pair.key, false) {
            return;
        }
        let b = io.rng.bytes();
        let start = u32::from_le_bytes([b[0], b[1], b[2], b[3]]) % PORT_SPAN;
        // Odd and not a multiple of 3 or 7: coprime to 64512 = 2^10 · 3^2 · 7.
        let mut stride = (u32::from_le_bytes([b[4], b[5], b[6], b[7]]) % PORT_SPAN) | 1;
        while stride.is_multiple_of(3) || stride.is_multiple_of(7) {
            stride += 2;
        }
        self.start(
            now,
            io,
            Campaign {
                pair,
                kind: Kind::Scan {
                    via,
                    ip,
                    start,
                    stride,
                    sent: 0,
                },
                until: now + self.give_up,
            },
        );
    }

    fn start(&mut self, now: UnixTime, io: &mut Io, campaign: Campaign) {
        self.next_campaign += 1;
        let id = self.next_campaign;
        self.campaigns.insert(id, campaign);
        self.on_campaign(now, io, id);
    }

    /// [`Timer::Campaign`] is due: the next round or batch, or the end.
    pub(crate) fn on_campaign(&mut self, now: UnixTime, io: &mut Io, id: u64) {
        let Some(c) = self.campaigns.get_mut(&id) else {
            return;
        };
        if now >= c.until {
            self.end(io, id, None);
            return;
        }
        let next = match &mut c.kind {
            Kind::Spray {
                dst,
                sockets,
                rounds,
            } => {
                // Twice, a second apart: a lost probe leaves a mapping
                // unopened; the second round also refreshes them.
                for &s in sockets.iter() {
                    let p = c.pair.probe(io);
                    io.send(s, *dst, p);
                }
                self.campaign_probes += sockets.len() as u64;
                *rounds += 1;
                (*rounds < 2).then_some(now + Duration::from_secs(1))
            }
            Kind::Scan {
                via,
                ip,
                start,
                stride,
                sent,
            } => {
                let batch = SCAN_BATCH.min(SCAN_MAX - *sent);
                for _ in 0..batch {
                    let port = PORT_BASE
                        + ((u64::from(*start) + u64::from(*sent) * u64::from(*stride))
                            % u64::from(PORT_SPAN)) as u32;
                    let p = c.pair.probe(io);
                    io.send(*via, SocketAddr::new(*ip, port as u16), p);
                    *sent += 1;
                }
                self.campaign_probes += u64::from(batch);
                (*sent < SCAN_MAX).then_some(now + SCAN_TICK)
            }
        };
        match next {
            Some(at) => io.timers.set(Timer::Campaign(id), at),
            // Out of probes: the sockets stay open for answers until then.
            None => io.timers.set(Timer::Campaign(id), c.until),
        }
    }

    /// Ends campaign `id`: its sockets are released, but `keep`.
    fn end(&mut self, io: &mut Io, id: u64, keep: Option<SocketId>) {
        io.timers.cancel(Timer::Campaign(id));
        if let Some(c) = self.campaigns.remove(&id)
            && let Kind::Spray { sockets, .. } = c.kind
        {
            for s in sockets {
                if Some(s) != keep {
                    io.release(s);
                }
            }
        }
    }

    /// Whether `socket` is one of a spray's.
    pub(crate) fn is_spray_socket(&self, socket: SocketId) -> bool {
        self.campaigns.values().any(|c| match &c.kind {
            Kind::Spray { sockets, .. } => sockets.contains(&socket),
            Kind::Scan { .. } => false,
        })
    }

    /// A probe from `pair`'s friend came to `socket` from `from`. As the
    /// side being called, answer it there (once per retry), so that the
    /// caller learns the path; scanning stops — the path is found.
    pub(crate) fn answer(
        &mut self,
        now: UnixTime,
        io: &mut Io,
        pair: &Pair,
        socket: SocketId,
        from: SocketAddr,
    ) {
        let last = self.answered.get(&(socket, from));
        if last.is_some_and(|&t| now < t + self.retry) {
            return;
        }
        self.answered.retain(|_, t| now < *t + self.give_up);
        self.answered.insert((socket, from), now);
        let p = pair.probe(io);
        io.send(socket, from, p);
        self.stop_scans(io, &pair.key);
    }

    /// A path to `key` is found: its scans stop (sprays keep their sockets
    /// open: the handshake comes to one of them).
    pub(crate) fn stop_scans(&mut self, io: &mut Io, key: &PeerKey) {
        let scans: Vec<u64> = self
            .campaigns
            .iter()
            .filter(|(_, c)| c.pair.key == *key && matches!(c.kind, Kind::Scan { .. }))
            .map(|(id, _)| *id)
            .collect();
        for id in scans {
            self.end(io, id, None);
        }
    }

    /// A session with `key` is up on `socket` (or `key` is gone: `None`):
    /// punching for it stops, every campaign ends and its sockets close —
    /// but `socket`, which the session keeps. Returns whether `socket` was
    /// a spray's (the session owns it now, and closes it when it ends).
    pub(crate) fn done(&mut self, io: &mut Io, key: &PeerKey, socket: Option<SocketId>) -> bool {
        let adopted = socket.is_some_and(|s| self.is_spray_socket(s));
        let ids: Vec<u64> = self
            .campaigns
            .iter()
            .filter(|(_, c)| c.pair.key == *key)
            .map(|(id, _)| *id)
            .collect();
        for id in ids {
            self.end(io, id, socket);
        }
        let paths: Vec<(SocketId, SocketAddr)> = self
            .towards
            .iter()
            .filter(|(_, t)| t.pair.as_ref().is_some_and(|p| p.key == *key))
            .map(|(k, _)| *k)
            .collect();
        for (via, endpoint) in paths {
            self.towards.remove(&(via, endpoint));
            io.timers.cancel(Timer::Punch(via, endpoint));
        }
        adopted
    }

    /// A session started with a caller at `from` on `via` (a bare punch's
    /// target): stop punching there.
    pub(crate) fn stop_towards(&mut self, io: &mut Io, via: SocketId, from: SocketAddr) {
        self.towards.remove(&(via, from));
        io.timers.cancel(Timer::Punch(via, from));
    }

    /// The driver is about to close `socket`: nothing punches from it.
    pub(crate) fn drop_socket(&mut self, io: &mut Io, socket: SocketId) {
        self.towards.retain(|(via, _), _| *via != socket);
        io.timers
            .cancel_where(|t| matches!(t, Timer::Punch(via, _) if *via == socket));
        let scans: Vec<u64> = self
            .campaigns
            .iter()
            .filter(|(_, c)| matches!(c.kind, Kind::Scan { via, .. } if via == socket))
            .map(|(id, _)| *id)
            .collect();
        for id in scans {
            self.end(io, id, None);
        }
    }
}
