//! Peers: connections to friends on punched paths — punching towards
//! introduced callers, the handshake (as initiator after a lookup, or as
//! responder to a friend's msg1), and stop-and-wait delivery of sealed
//! payloads with retransmission and acknowledgements.
//!
//! Owns: one connection per friend (its phase and outbox), the punches
//! towards introduced callers, and the acknowledgements held until the
//! state is saved. Timers: [`Timer::Resend`], [`Timer::Relookup`],
//! [`Timer::PeerGiveUp`], [`Timer::Punch`]. It asks the caller for lookups
//! (a connection needs the friend's endpoint) and hands back what only the
//! caller can act on: an acknowledged payload and a friend's reset notice.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::Duration;

use sky_proto::frame::{self, DATA_OVERHEAD, MSG1_LEN, MSG2_LEN, Payload};
use sky_proto::time::UnixTime;

use super::MAX_PAYLOAD;
use super::event::{Event, Failure, Transmit};
use super::io::Io;
use super::timers::{PeerId, Timer};
use crate::handshake::{self, Initiator, Session};

/// How often a connection that has no answer yet looks the friend up
/// again (and so is introduced again).
const RELOOKUP: Duration = Duration::from_secs(1);

/// Where a friend's connection stands.
enum Phase {
    /// Waiting for the lookup's answer.
    Looking,
    /// msg1 sent on the retry schedule (it punches too); waiting for msg2.
    Handshaking {
        initiator: Initiator,
        msg1: [u8; MSG1_LEN],
    },
    Established {
        session: Session,
        /// The msg1 this side answered and its msg2, sent again if the same
        /// msg1 comes again (our msg2 was lost).
        answered: Option<([u8; MSG1_LEN], [u8; MSG2_LEN])>,
    },
}

/// A payload waiting for its acknowledgement.
pub(crate) struct Outgoing {
    pub(crate) id: u64,
    pub(crate) payload: Vec<u8>,
    pub(crate) queued: UnixTime,
    /// The sealed datagram in flight (retransmitted as is) and its counter.
    sealed: Option<(Vec<u8>, u64)>,
    pub(crate) sent: u32,
    /// When this payload gives up.
    deadline: UnixTime,
}

/// A connection to a friend.
struct Peer {
    id: PeerId,
    endpoint: Option<SocketAddr>,
    phase: Phase,
    outbox: VecDeque<Outgoing>,
    /// When the handshake gives up.
    deadline: UnixTime,
}

/// What a sealed datagram from a friend asks the caller to do.
pub(crate) enum Received {
    /// Nothing more (data delivered as an event, an acknowledgement sent).
    Nothing,
    /// Our payload was acknowledged.
    Acked {
        friend: String,
        peer: SocketAddr,
        outgoing: Outgoing,
    },
    /// The friend sent an address reset notice (invite bytes). `ack`
    /// acknowledges it: hold it until the state is saved, if adopted.
    ResetNotice {
        friend: String,
        notice: Vec<u8>,
        counter: u64,
        ack: Transmit,
    },
}

/// Every connection (see the module documentation).
pub(crate) struct Peers {
    peers: HashMap<String, Peer>,
    /// Introduced callers we punch towards, until when.
    punches: HashMap<SocketAddr, UnixTime>,
    next_payload: u64,
    next_peer: PeerId,
    /// Acknowledgements that wait for the state to be saved:
    /// (the counter acknowledged, the acknowledgement).
    held: Vec<(u64, Transmit)>,
    retry: Duration,
    give_up: Duration,
}

impl Peers {
    pub(crate) fn new(retry: Duration, give_up: Duration) -> Peers {
        Peers {
            peers: HashMap::new(),
            punches: HashMap::new(),
            next_payload: 0,
            next_peer: 0,
            held: Vec::new(),
            retry,
            give_up,
        }
    }

    /// Whether a connection to `friend` has a session.
    pub(crate) fn established(&self, friend: &str) -> bool {
        self.peers
            .get(friend)
            .is_some_and(|p| matches!(p.phase, Phase::Established { .. }))
    }

    fn handshaking(&self, friend: &str) -> bool {
        self.peers
            .get(friend)
            .is_some_and(|p| matches!(p.phase, Phase::Handshaking { .. }))
    }

    /// Whether a payload whose first byte is `kind` waits for `friend`.
    pub(crate) fn has_queued(&self, friend: &str, kind: Payload) -> bool {
        self.peers.get(friend).is_some_and(|p| {
            p.outbox
                .iter()
                .any(|o| o.payload.first() == Some(&(kind as u8)))
        })
    }

    /// Forgets the connection to `friend` (removed from the friends): what
    /// waited for them fails.
    pub(crate) fn remove(&mut self, io: &mut Io, friend: &str) {
        self.fail(io, friend, Failure::NoSuchFriend);
    }

    /// `from` is called `to` now.
    pub(crate) fn rename(&mut self, from: &str, to: &str) {
        if let Some(peer) = self.peers.remove(from) {
            self.peers.insert(to.to_string(), peer);
        }
    }

    /// The state was saved: the acknowledgements that waited on it go.
    pub(crate) fn saved(&mut self, io: &mut Io) {
        io.transmits.extend(self.held.drain(..).map(|(_, t)| t));
    }

    /// The state could not be saved: the held acknowledgements are dropped.
    pub(crate) fn save_failed(&mut self) {
        self.held.clear();
    }

    /// Holds `ack` (of `counter`, to `from`) until the state is saved; one
    /// per peer, the newest.
    pub(crate) fn hold(&mut self, counter: u64, ack: Transmit) {
        self.held.retain(|(_, t)| t.dst != ack.dst);
        self.held.push((counter, ack));
    }

    /// Queues `payload` (its first byte says what it is) for `friend`.
    /// Returns its id, and whether the caller must look the friend up to
    /// connect.
    pub(crate) fn enqueue(
        &mut self,
        now: UnixTime,
        io: &mut Io,
        friend: &str,
        payload: Vec<u8>,
        known: bool,
    ) -> (u64, bool) {
        self.next_payload += 1;
        let id = self.next_payload;
        let why = if !known {
            Some(Failure::NoSuchFriend)
        } else if payload.len() > MAX_PAYLOAD + 1 {
            Some(Failure::TooLarge)
        } else {
            None
        };
        if let Some(why) = why {
            io.event(Event::Failed {
                friend: friend.to_string(),
                id,
                why,
            });
            return (id, false);
        }
        let outgoing = Outgoing {
            id,
            payload,
            queued: now,
            sealed: None,
            sent: 0,
            deadline: now + self.give_up,
        };
        (id, self.push(now, io, friend, outgoing))
    }

    /// Queues `outgoing`; `true` when a new connection must look up.
    fn push(&mut self, now: UnixTime, io: &mut Io, friend: &str, outgoing: Outgoing) -> bool {
        match self.peers.get_mut(friend) {
            Some(peer) => {
                peer.outbox.push_back(outgoing);
                if peer.outbox.len() == 1 {
                    self.pump(now, io, friend);
                }
                false
            }
            None => {
                self.next_peer += 1;
                self.peers.insert(
                    friend.to_string(),
                    Peer {
                        id: self.next_peer,
                        endpoint: None,
                        phase: Phase::Looking,
                        outbox: VecDeque::from([outgoing]),
                        deadline: now + self.give_up,
                    },
                );
                true
            }
        }
    }

    /// Sends `payload` once, best effort, over an established session.
    pub(crate) fn send_datagram(&mut self, io: &mut Io, friend: &str, payload: &[u8]) -> bool {
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
        plain.push(Payload::Datagram as u8);
        plain.extend_from_slice(payload);
        io.send(dst, seal(session, &plain));
        true
    }

    /// A lookup a connection to `friend` made has answered. `keys` are our
    /// static secret and the friend's public key.
    pub(crate) fn lookup_done(
        &mut self,
        now: UnixTime,
        io: &mut Io,
        friend: &str,
        result: Result<SocketAddr, Failure>,
        keys: Option<([u8; 32], [u8; 32])>,
    ) {
        // A late answer to a lookup that a session made moot changes
        // nothing: restarting the handshake would strand what is in flight.
        if self.established(friend) {
            return;
        }
        match result {
            Ok(endpoint) => {
                let same = self.handshaking(friend)
                    && self.peers.get(friend).and_then(|p| p.endpoint) == Some(endpoint);
                if !same && let Some((ours, theirs)) = keys {
                    self.start_handshake(now, io, friend, endpoint, ours, theirs);
                }
            }
            Err(_) if self.handshaking(friend) => {}
            Err(why) => self.fail(io, friend, why),
        }
    }

    fn start_handshake(
        &mut self,
        now: UnixTime,
        io: &mut Io,
        friend: &str,
        endpoint: SocketAddr,
        ours: [u8; 32],
        theirs: [u8; 32],
    ) {
        let ephemeral = io.rng.bytes();
        let Some(peer) = self.peers.get_mut(friend) else {
            return;
        };
        let mut msg1 = [0u8; MSG1_LEN];
        let initiator = Initiator::start(ours, theirs, ephemeral, &mut msg1);
        peer.endpoint = Some(endpoint);
        peer.phase = Phase::Handshaking { initiator, msg1 };
        io.timers.set(Timer::Relookup(peer.id), now + RELOOKUP);
        io.timers.set(Timer::PeerGiveUp(peer.id), peer.deadline);
        let id = peer.id;
        self.resend(now, io, id);
    }

    /// Every outgoing payload of `friend` fails with `why`; the peer goes.
    fn fail(&mut self, io: &mut Io, friend: &str, why: Failure) {
        if let Some(peer) = self.peers.remove(friend) {
            cancel_timers(io, peer.id);
            for o in peer.outbox {
                io.event(Event::Failed {
                    friend: friend.to_string(),
                    id: o.id,
                    why: why.clone(),
                });
            }
        }
    }

    fn name_of(&self, id: PeerId) -> Option<String> {
        self.peers
            .iter()
            .find(|(_, p)| p.id == id)
            .map(|(n, _)| n.clone())
    }

    /// [`Timer::Resend`] is due: msg1, or the sealed datagram in flight,
    /// goes again.
    pub(crate) fn on_resend(&mut self, now: UnixTime, io: &mut Io, id: PeerId) {
        self.resend(now, io, id);
    }

    fn resend(&mut self, now: UnixTime, io: &mut Io, id: PeerId) {
        let retry = self.retry;
        let Some(peer) = self.peers.values_mut().find(|p| p.id == id) else {
            return;
        };
        let Some(dst) = peer.endpoint else { return };
        match &mut peer.phase {
            Phase::Looking => return,
            Phase::Handshaking { msg1, .. } => {
                io.send(dst, msg1.to_vec());
                if let Some(o) = peer.outbox.front_mut() {
                    o.sent += 1;
                }
            }
            Phase::Established { session, .. } => {
                let Some(o) = peer.outbox.front_mut() else {
                    return;
                };
                let sealed = o.sealed.get_or_insert_with(|| {
                    let bytes = seal(session, &o.payload);
                    let counter = u64::from_be_bytes(bytes[1..9].try_into().expect("8 bytes"));
                    (bytes, counter)
                });
                io.send(dst, sealed.0.clone());
                o.sent += 1;
            }
        }
        io.timers.set(Timer::Resend(id), now + retry);
    }

    /// The front payload of an established connection: it fails when its
    /// time is up (the rest connect afresh), else it goes now. Returns the
    /// friends that must be looked up again.
    fn pump(&mut self, now: UnixTime, io: &mut Io, friend: &str) -> Vec<String> {
        let Some(peer) = self.peers.get(friend) else {
            return Vec::new();
        };
        if !matches!(peer.phase, Phase::Established { .. }) {
            return Vec::new();
        }
        let id = peer.id;
        let Some(front) = peer.outbox.front() else {
            io.timers.cancel(Timer::Resend(id));
            io.timers.cancel(Timer::PeerGiveUp(id));
            return Vec::new();
        };
        if now >= front.deadline {
            return self.fail_front(now, io, friend);
        }
        io.timers.set(Timer::PeerGiveUp(id), front.deadline);
        self.resend(now, io, id);
        Vec::new()
    }

    /// The payload in flight on an established path timed out: it fails,
    /// the path is dropped and the rest of the outbox connects afresh.
    fn fail_front(&mut self, now: UnixTime, io: &mut Io, friend: &str) -> Vec<String> {
        let Some(mut peer) = self.peers.remove(friend) else {
            return Vec::new();
        };
        cancel_timers(io, peer.id);
        if let Some(o) = peer.outbox.pop_front() {
            io.event(Event::Failed {
                friend: friend.to_string(),
                id: o.id,
                why: Failure::Unreachable,
            });
        }
        let mut lookups = Vec::new();
        for o in peer.outbox {
            // Keeps the caller's id and the time it was queued.
            let again = Outgoing {
                sealed: None,
                sent: 0,
                deadline: now + self.give_up,
                ..o
            };
            if self.push(now, io, friend, again) {
                lookups.push(friend.to_string());
            }
        }
        lookups
    }

    /// [`Timer::PeerGiveUp`] is due. Returns the friends that must be
    /// looked up again.
    pub(crate) fn on_give_up(&mut self, now: UnixTime, io: &mut Io, id: PeerId) -> Vec<String> {
        let Some(name) = self.name_of(id) else {
            return Vec::new();
        };
        if self.handshaking(&name) {
            // Handshake timed out: everything queued fails.
            self.fail(io, &name, Failure::Unreachable);
            return Vec::new();
        }
        self.pump(now, io, &name)
    }

    /// [`Timer::Relookup`] is due: the friend to look up again (so the sky
    /// introduces us again, in case that introduction was lost).
    pub(crate) fn on_relookup(&mut self, now: UnixTime, io: &mut Io, id: PeerId) -> Option<String> {
        let name = self.name_of(id)?;
        if !self.handshaking(&name) {
            return None;
        }
        io.timers.set(Timer::Relookup(id), now + RELOOKUP);
        Some(name)
    }

    /// The sky introduced a caller at `endpoint`: open our NAT towards it
    /// until their handshake comes. The sky vouched for the caller and
    /// already told them where we are; a caller we cannot name may be a
    /// friend whose address reset is on its way to us.
    pub(crate) fn punch_towards(&mut self, now: UnixTime, io: &mut Io, endpoint: SocketAddr) {
        self.punches.insert(endpoint, now + self.give_up);
        self.on_punch(now, io, endpoint);
    }

    /// [`Timer::Punch`] is due.
    pub(crate) fn on_punch(&mut self, now: UnixTime, io: &mut Io, endpoint: SocketAddr) {
        match self.punches.get(&endpoint) {
            Some(&until) if now < until => {
                io.send(endpoint, vec![frame::PUNCH]);
                io.timers.set(Timer::Punch(endpoint), now + self.retry);
            }
            _ => {
                self.punches.remove(&endpoint);
                io.timers.cancel(Timer::Punch(endpoint));
            }
        }
    }

    /// Someone's msg1: answer it if it comes from a friend (`friends`:
    /// names and static public keys; `ours`: our static secret and public
    /// key). Returns the friend a session is now up with.
    pub(crate) fn on_msg1(
        &mut self,
        now: UnixTime,
        io: &mut Io,
        from: SocketAddr,
        datagram: &[u8],
        ours: ([u8; 32], [u8; 32]),
        friends: &[(String, [u8; 32])],
    ) -> Option<String> {
        // The same msg1 again: our msg2 was lost; send it again.
        for peer in self.peers.values() {
            if let Phase::Established {
                answered: Some((m1, m2)),
                ..
            } = &peer.phase
                && peer.endpoint == Some(from)
                && m1[..] == *datagram
            {
                io.send(from, m2.to_vec());
                return None;
            }
        }
        let keys: Vec<[u8; 32]> = friends.iter().map(|(_, k)| *k).collect();
        let mut msg2 = [0u8; MSG2_LEN];
        let ephemeral = io.rng.bytes();
        let (session, i) = match handshake::answer(ours.0, &keys, datagram, ephemeral, &mut msg2) {
            handshake::Answer::Accepted(session, i) => (session, i),
            handshake::Answer::Refused(refusal) => {
                // A valid msg1 from a key we do not know: say so, to them
                // only (smaller than what they sent).
                io.send(from, refusal.to_vec());
                io.event(Event::HandshakeRefused {
                    from,
                    error: handshake::HandshakeError::Stranger,
                });
                return None;
            }
            handshake::Answer::Invalid(error) => {
                io.event(Event::HandshakeRefused { from, error });
                return None;
            }
        };
        let name = friends[i].0.clone();
        // Both sides started at once: the side with the lower public key
        // stays the initiator; the other answers.
        if self.handshaking(&name) && ours.1 < keys[i] {
            return None;
        }
        self.punches.remove(&from);
        io.timers.cancel(Timer::Punch(from));
        let mut m1 = [0u8; MSG1_LEN];
        m1.copy_from_slice(datagram);
        self.next_peer += 1;
        let fresh = self.next_peer;
        let peer = self.peers.entry(name.clone()).or_insert_with(|| Peer {
            id: fresh,
            endpoint: None,
            phase: Phase::Looking,
            outbox: VecDeque::new(),
            deadline: now,
        });
        io.timers.cancel(Timer::Relookup(peer.id));
        peer.endpoint = Some(from);
        peer.phase = Phase::Established {
            session,
            answered: Some((m1, msg2)),
        };
        // A payload sealed under an old session is sealed again.
        for o in &mut peer.outbox {
            o.sealed = None;
        }
        io.send(from, msg2.to_vec());
        io.event(Event::Connected {
            friend: name.clone(),
            peer: from,
        });
        self.pump(now, io, &name);
        Some(name)
    }

    /// A refusal from `from`: if it is the friend we are handshaking with,
    /// and it proves their key, they do not know us — everything queued for
    /// them fails at once with [`Failure::Refused`].
    pub(crate) fn on_refuse(&mut self, io: &mut Io, from: SocketAddr, datagram: &[u8]) {
        let refused = self.peers.iter().find_map(|(name, p)| match &p.phase {
            Phase::Handshaking { initiator, .. }
                if p.endpoint == Some(from) && initiator.refused(datagram) =>
            {
                Some(name.clone())
            }
            _ => None,
        });
        if let Some(name) = refused {
            self.fail(io, &name, Failure::Refused);
        }
    }

    /// A msg2 from `from`: our handshake with that friend completes.
    /// Returns the friend a session is now up with.
    pub(crate) fn on_msg2(
        &mut self,
        now: UnixTime,
        io: &mut Io,
        from: SocketAddr,
        datagram: &[u8],
    ) -> Option<String> {
        let (name, peer) = self.peers.iter_mut().find(|(_, p)| {
            p.endpoint == Some(from) && matches!(p.phase, Phase::Handshaking { .. })
        })?;
        let Phase::Handshaking { initiator, .. } = &peer.phase else {
            unreachable!("matched above");
        };
        match initiator.finish(datagram) {
            Ok(session) => {
                peer.phase = Phase::Established {
                    session,
                    answered: None,
                };
                io.timers.cancel(Timer::Relookup(peer.id));
                let name = name.clone();
                io.event(Event::Connected {
                    friend: name.clone(),
                    peer: from,
                });
                self.pump(now, io, &name);
                Some(name)
            }
            Err(error) => {
                // Not our friend's answer: keep waiting for the real one.
                io.event(Event::HandshakeRefused { from, error });
                None
            }
        }
    }

    /// A sealed datagram from `from`.
    pub(crate) fn on_data(
        &mut self,
        now: UnixTime,
        io: &mut Io,
        from: SocketAddr,
        datagram: &mut [u8],
    ) -> Received {
        let Some((name, peer)) = self.peers.iter_mut().find(|(_, p)| {
            p.endpoint == Some(from) && matches!(p.phase, Phase::Established { .. })
        }) else {
            return Received::Nothing;
        };
        let name = name.clone();
        let Phase::Established { session, .. } = &mut peer.phase else {
            unreachable!("matched above");
        };
        let Ok(frame) = frame::Frame::new_checked(&*datagram) else {
            return Received::Nothing;
        };
        let counter = frame.counter();
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
                    return Received::Nothing;
                }
                io.send(from, seal(session, &frame::ack_payload(counter)));
                return Received::Nothing;
            }
            Err(_) => return Received::Nothing,
        };
        let plain = datagram[range].to_vec();
        let Some((&kind, body)) = plain.split_first() else {
            return Received::Nothing;
        };
        match Payload::from_byte(kind) {
            Some(Payload::Ack) => {
                let Some(acked) = frame::parse_ack(body) else {
                    return Received::Nothing;
                };
                let done = matches!(peer.outbox.front(), Some(Outgoing { sealed: Some((_, c)), .. }) if *c == acked);
                if !done {
                    return Received::Nothing;
                }
                let outgoing = peer.outbox.pop_front().expect("front");
                self.pump(now, io, &name);
                Received::Acked {
                    friend: name,
                    peer: from,
                    outgoing,
                }
            }
            Some(kind @ (Payload::Text | Payload::Datagram)) => {
                if kind == Payload::Text {
                    io.send(from, seal(session, &frame::ack_payload(counter)));
                }
                io.event(Event::Message {
                    friend: name,
                    payload: body.to_vec(),
                });
                Received::Nothing
            }
            Some(Payload::Reset) => Received::ResetNotice {
                ack: Transmit {
                    dst: from,
                    bytes: seal(session, &frame::ack_payload(counter)),
                },
                friend: name,
                notice: body.to_vec(),
                counter,
            },
            None => Received::Nothing,
        }
    }
}

fn cancel_timers(io: &mut Io, id: PeerId) {
    io.timers.cancel_where(
        |t| matches!(t, Timer::Resend(p) | Timer::Relookup(p) | Timer::PeerGiveUp(p) if *p == id),
    );
}

fn seal(session: &mut Session, plain: &[u8]) -> Vec<u8> {
    let mut out = vec![0u8; plain.len() + DATA_OVERHEAD];
    let n = session.seal(plain, &mut out);
    out.truncate(n);
    out
}
