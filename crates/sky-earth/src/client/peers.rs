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
use super::event::{Event, Failure, SocketId, Transmit};
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

/// Who a connection is with: one of a friend's devices, or — until the
/// lookup it made answers — whichever of them answers first.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct PeerKey {
    pub(crate) friend: String,
    pub(crate) device: Option<u8>,
}

impl PeerKey {
    pub(crate) fn new(friend: &str, device: Option<u8>) -> PeerKey {
        PeerKey {
            friend: friend.to_string(),
            device,
        }
    }
}

/// A connection to a friend's device.
struct Peer {
    id: PeerId,
    /// The socket the session runs on.
    via: SocketId,
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
        key: PeerKey,
        peer: SocketAddr,
        outgoing: Outgoing,
    },
    /// The friend's device sent an address reset notice (invite bytes).
    /// `ack` acknowledges it: hold it until the state is saved, if adopted.
    ResetNotice {
        key: PeerKey,
        notice: Vec<u8>,
        counter: u64,
        ack: Transmit,
    },
}

/// Every connection (see the module documentation).
pub(crate) struct Peers {
    peers: HashMap<PeerKey, Peer>,
    /// Introduced callers we punch towards (from the socket the
    /// introduction came to), until when.
    punches: HashMap<(SocketId, SocketAddr), UnixTime>,
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

    fn phase_is(&self, key: &PeerKey, phase: fn(&Phase) -> bool) -> bool {
        self.peers.get(key).is_some_and(|p| phase(&p.phase))
    }

    fn established(&self, key: &PeerKey) -> bool {
        self.phase_is(key, |p| matches!(p, Phase::Established { .. }))
    }

    fn handshaking(&self, key: &PeerKey) -> bool {
        self.phase_is(key, |p| matches!(p, Phase::Handshaking { .. }))
    }

    /// Whether a payload whose first byte is `kind` waits for `key`.
    pub(crate) fn has_queued(&self, key: &PeerKey, kind: Payload) -> bool {
        self.peers.get(key).is_some_and(|p| {
            p.outbox
                .iter()
                .any(|o| o.payload.first() == Some(&(kind as u8)))
        })
    }

    fn keys_of(&self, friend: &str) -> Vec<PeerKey> {
        self.peers
            .keys()
            .filter(|k| k.friend == friend)
            .cloned()
            .collect()
    }

    /// Forgets every connection to `friend` (removed from the friends):
    /// what waited for them fails.
    pub(crate) fn remove(&mut self, io: &mut Io, friend: &str) {
        for key in self.keys_of(friend) {
            self.fail(io, &key, Failure::NoSuchFriend);
        }
    }

    /// `from` is called `to` now.
    pub(crate) fn rename(&mut self, from: &str, to: &str) {
        for key in self.keys_of(from) {
            if let Some(peer) = self.peers.remove(&key) {
                self.peers.insert(PeerKey::new(to, key.device), peer);
            }
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

    /// Queues `payload` (its first byte says what it is) for `friend`'s
    /// device `device`, or for any of their devices (an established session
    /// first). Returns its id, and the connection that must look the friend
    /// up, if a new one does.
    pub(crate) fn enqueue(
        &mut self,
        now: UnixTime,
        io: &mut Io,
        friend: &str,
        device: Option<u8>,
        payload: Vec<u8>,
        known: bool,
    ) -> (u64, Option<PeerKey>) {
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
            return (id, None);
        }
        let outgoing = Outgoing {
            id,
            payload,
            queued: now,
            sealed: None,
            sent: 0,
            deadline: now + self.give_up,
        };
        let key = match device {
            Some(_) => PeerKey::new(friend, device),
            // Any device: the one with a session, else one being reached.
            None => {
                let keys = self.keys_of(friend);
                keys.iter()
                    .find(|k| self.established(k))
                    .or_else(|| keys.first())
                    .cloned()
                    .unwrap_or_else(|| PeerKey::new(friend, None))
            }
        };
        let lookup = self.push(now, io, &key, outgoing).then_some(key);
        (id, lookup)
    }

    /// Queues `outgoing` for `key`; `true` when a new connection must look
    /// up.
    fn push(&mut self, now: UnixTime, io: &mut Io, key: &PeerKey, outgoing: Outgoing) -> bool {
        match self.peers.get_mut(key) {
            Some(peer) => {
                peer.outbox.push_back(outgoing);
                if peer.outbox.len() == 1 {
                    self.pump(now, io, key);
                }
                false
            }
            None => {
                self.next_peer += 1;
                self.peers.insert(
                    key.clone(),
                    Peer {
                        id: self.next_peer,
                        via: io.main,
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

    /// Sends `payload` once, best effort, over an established session
    /// with any of `friend`'s devices.
    pub(crate) fn send_datagram(&mut self, io: &mut Io, friend: &str, payload: &[u8]) -> bool {
        if payload.len() > MAX_PAYLOAD {
            return false;
        }
        let Some(peer) = self.peers.iter_mut().find_map(|(k, p)| {
            (k.friend == friend && matches!(p.phase, Phase::Established { .. })).then_some(p)
        }) else {
            return false;
        };
        let (Phase::Established { session, .. }, Some(dst)) = (&mut peer.phase, peer.endpoint)
        else {
            return false;
        };
        let mut plain = Vec::with_capacity(payload.len() + 1);
        plain.push(Payload::Datagram as u8);
        plain.extend_from_slice(payload);
        io.send(peer.via, dst, seal(session, &plain));
        true
    }

    /// The lookup the connection `key` made has answered: the endpoint of
    /// the friend's device that is online. `keys`: our static secret, and
    /// the friend's device keys.
    pub(crate) fn lookup_done(
        &mut self,
        now: UnixTime,
        io: &mut Io,
        key: &PeerKey,
        result: Result<(SocketAddr, u8), Failure>,
        keys: Option<([u8; 32], &[[u8; 32]])>,
    ) {
        // A late answer to a lookup that a session made moot changes
        // nothing: restarting the handshake would strand what is in flight.
        if self.established(key) {
            return;
        }
        match result {
            Ok((endpoint, device)) => {
                // "Any device": the connection is with the device found.
                let key = match key.device {
                    Some(_) => key.clone(),
                    None => match self.settle_device(now, io, key, device) {
                        Some(k) => k,
                        None => return,
                    },
                };
                let same = self.handshaking(&key)
                    && self.peers.get(&key).and_then(|p| p.endpoint) == Some(endpoint);
                if let (false, Some((ours, theirs))) = (same, keys)
                    && let Some(&theirs) = theirs.get(usize::from(device))
                {
                    self.start_handshake(now, io, &key, endpoint, ours, theirs);
                }
            }
            Err(_) if self.handshaking(key) => {}
            Err(why) => self.fail(io, key, why),
        }
    }

    /// The any-device connection `key` is now with device `device`: moved
    /// to that key, or merged into the connection already there (which
    /// then takes it on). `None` when there is nothing left to connect.
    fn settle_device(
        &mut self,
        now: UnixTime,
        io: &mut Io,
        key: &PeerKey,
        device: u8,
    ) -> Option<PeerKey> {
        let found = PeerKey::new(&key.friend, Some(device));
        let peer = self.peers.remove(key)?;
        match self.peers.get_mut(&found) {
            None => {
                self.peers.insert(found.clone(), peer);
                Some(found)
            }
            Some(there) => {
                cancel_timers(io, peer.id);
                let was_empty = there.outbox.is_empty();
                there.outbox.extend(peer.outbox);
                let looking = matches!(there.phase, Phase::Looking);
                if was_empty {
                    self.pump(now, io, &found);
                }
                looking.then_some(found)
            }
        }
    }

    fn start_handshake(
        &mut self,
        now: UnixTime,
        io: &mut Io,
        key: &PeerKey,
        endpoint: SocketAddr,
        ours: [u8; 32],
        theirs: [u8; 32],
    ) {
        let ephemeral = io.rng.bytes();
        let Some(peer) = self.peers.get_mut(key) else {
            return;
        };
        let mut msg1 = [0u8; MSG1_LEN];
        let initiator = Initiator::start(ours, theirs, ephemeral, &mut msg1);
        peer.via = io.main;
        peer.endpoint = Some(endpoint);
        peer.phase = Phase::Handshaking { initiator, msg1 };
        io.timers.set(Timer::Relookup(peer.id), now + RELOOKUP);
        io.timers.set(Timer::PeerGiveUp(peer.id), peer.deadline);
        let id = peer.id;
        self.resend(now, io, id);
    }

    /// Every outgoing payload of `key` fails with `why`; the peer goes.
    fn fail(&mut self, io: &mut Io, key: &PeerKey, why: Failure) {
        if let Some(peer) = self.peers.remove(key) {
            cancel_timers(io, peer.id);
            for o in peer.outbox {
                io.event(Event::Failed {
                    friend: key.friend.clone(),
                    id: o.id,
                    why: why.clone(),
                });
            }
        }
    }

    fn key_of(&self, id: PeerId) -> Option<PeerKey> {
        self.peers
            .iter()
            .find(|(_, p)| p.id == id)
            .map(|(k, _)| k.clone())
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
        let via = peer.via;
        match &mut peer.phase {
            Phase::Looking => return,
            Phase::Handshaking { msg1, .. } => {
                io.send(via, dst, msg1.to_vec());
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
                io.send(via, dst, sealed.0.clone());
                o.sent += 1;
            }
        }
        io.timers.set(Timer::Resend(id), now + retry);
    }

    /// The front payload of an established connection: it fails when its
    /// time is up (the rest connect afresh), else it goes now. Returns the
    /// friends that must be looked up again.
    fn pump(&mut self, now: UnixTime, io: &mut Io, key: &PeerKey) -> Vec<PeerKey> {
        let Some(peer) = self.peers.get(key) else {
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
            return self.fail_front(now, io, key);
        }
        io.timers.set(Timer::PeerGiveUp(id), front.deadline);
        self.resend(now, io, id);
        Vec::new()
    }

    /// The payload in flight on an established path timed out: it fails,
    /// the path is dropped and the rest of the outbox connects afresh.
    fn fail_front(&mut self, now: UnixTime, io: &mut Io, key: &PeerKey) -> Vec<PeerKey> {
        let Some(mut peer) = self.peers.remove(key) else {
            return Vec::new();
        };
        cancel_timers(io, peer.id);
        if let Some(o) = peer.outbox.pop_front() {
            io.event(Event::Failed {
                friend: key.friend.clone(),
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
            if self.push(now, io, key, again) {
                lookups.push(key.clone());
            }
        }
        lookups
    }

    /// [`Timer::PeerGiveUp`] is due. Returns the friends that must be
    /// looked up again.
    pub(crate) fn on_give_up(&mut self, now: UnixTime, io: &mut Io, id: PeerId) -> Vec<PeerKey> {
        let Some(key) = self.key_of(id) else {
            return Vec::new();
        };
        if self.handshaking(&key) {
            // Handshake timed out: everything queued fails.
            self.fail(io, &key, Failure::Unreachable);
            return Vec::new();
        }
        self.pump(now, io, &key)
    }

    /// [`Timer::Relookup`] is due: the friend to look up again (so the sky
    /// introduces us again, in case that introduction was lost).
    pub(crate) fn on_relookup(
        &mut self,
        now: UnixTime,
        io: &mut Io,
        id: PeerId,
    ) -> Option<PeerKey> {
        let key = self.key_of(id)?;
        if !self.handshaking(&key) {
            return None;
        }
        io.timers.set(Timer::Relookup(id), now + RELOOKUP);
        Some(key)
    }

    /// The sky introduced a caller at `endpoint` (on `via`, the socket
    /// registered where the introduction came): open our NAT towards it
    /// until their handshake comes. The sky vouched for the caller and
    /// already told them where we are; a caller we cannot name may be a
    /// friend whose address reset is on its way to us.
    pub(crate) fn punch_towards(
        &mut self,
        now: UnixTime,
        io: &mut Io,
        via: SocketId,
        endpoint: SocketAddr,
    ) {
        self.punches.insert((via, endpoint), now + self.give_up);
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
        match self.punches.get(&(via, endpoint)) {
            Some(&until) if now < until => {
                io.send(via, endpoint, vec![frame::PUNCH]);
                io.timers.set(Timer::Punch(via, endpoint), now + self.retry);
            }
            _ => {
                self.punches.remove(&(via, endpoint));
                io.timers.cancel(Timer::Punch(via, endpoint));
            }
        }
    }

    /// The driver is about to close `socket`: connections on it end (what
    /// waited on them fails; the next payload connects afresh).
    pub(crate) fn drop_socket(&mut self, io: &mut Io, socket: SocketId) {
        let on_it: Vec<PeerKey> = self
            .peers
            .iter()
            .filter(|(_, p)| p.via == socket && p.endpoint.is_some())
            .map(|(k, _)| k.clone())
            .collect();
        for key in on_it {
            self.fail(io, &key, Failure::Unreachable);
        }
        self.punches.retain(|(via, _), _| *via != socket);
        io.timers
            .cancel_where(|t| matches!(t, Timer::Punch(via, _) if *via == socket));
    }

    /// Someone's msg1: answer it if it comes from a friend's device
    /// (`devices`: each friend device's key; `ours`: our static secret and
    /// public key). Returns the connections a session is now up with (the
    /// device's, and an any-device connection to that friend it took over):
    /// their lookups are moot.
    pub(crate) fn on_msg1(
        &mut self,
        now: UnixTime,
        io: &mut Io,
        (via, from): (SocketId, SocketAddr),
        datagram: &[u8],
        ours: ([u8; 32], [u8; 32]),
        devices: &[(PeerKey, [u8; 32])],
    ) -> Vec<PeerKey> {
        // The same msg1 again: our msg2 was lost; send it again.
        for peer in self.peers.values() {
            if let Phase::Established {
                answered: Some((m1, m2)),
                ..
            } = &peer.phase
                && peer.endpoint == Some(from)
                && m1[..] == *datagram
            {
                io.send(peer.via, from, m2.to_vec());
                return Vec::new();
            }
        }
        let keys: Vec<[u8; 32]> = devices.iter().map(|(_, k)| *k).collect();
        let mut msg2 = [0u8; MSG2_LEN];
        let ephemeral = io.rng.bytes();
        let (session, i) = match handshake::answer(ours.0, &keys, datagram, ephemeral, &mut msg2) {
            handshake::Answer::Accepted(session, i) => (session, i),
            handshake::Answer::Refused(refusal) => {
                // A valid msg1 from a key we do not know: say so, to them
                // only (smaller than what they sent).
                io.send(via, from, refusal.to_vec());
                io.event(Event::HandshakeRefused {
                    from,
                    error: handshake::HandshakeError::Stranger,
                });
                return Vec::new();
            }
            handshake::Answer::Invalid(error) => {
                io.event(Event::HandshakeRefused { from, error });
                return Vec::new();
            }
        };
        let key = devices[i].0.clone();
        // Both sides started at once: the side with the lower public key
        // stays the initiator; the other answers.
        if self.handshaking(&key) && ours.1 < keys[i] {
            return Vec::new();
        }
        self.punches.remove(&(via, from));
        io.timers.cancel(Timer::Punch(via, from));
        let mut m1 = [0u8; MSG1_LEN];
        m1.copy_from_slice(datagram);
        self.next_peer += 1;
        let fresh = self.next_peer;
        // What waited for "any of their devices" goes to this one.
        let any = PeerKey::new(&key.friend, None);
        let waiting = match self.peers.get(&any) {
            Some(p) if !matches!(p.phase, Phase::Established { .. }) => self.peers.remove(&any),
            _ => None,
        };
        let peer = self.peers.entry(key.clone()).or_insert_with(|| Peer {
            id: fresh,
            via,
            endpoint: None,
            phase: Phase::Looking,
            outbox: VecDeque::new(),
            deadline: now,
        });
        io.timers.cancel(Timer::Relookup(peer.id));
        peer.via = via;
        peer.endpoint = Some(from);
        peer.phase = Phase::Established {
            session,
            answered: Some((m1, msg2)),
        };
        // A payload sealed under an old session is sealed again.
        for o in &mut peer.outbox {
            o.sealed = None;
        }
        let mut moot = vec![key.clone()];
        if let Some(waiting) = waiting {
            cancel_timers(io, waiting.id);
            peer.outbox.extend(waiting.outbox);
            moot.push(any);
        }
        io.send(via, from, msg2.to_vec());
        io.event(Event::Connected {
            friend: key.friend.clone(),
            peer: from,
        });
        self.pump(now, io, &key);
        moot
    }

    /// A refusal from `from`: if it is the friend we are handshaking with,
    /// and it proves their key, they do not know us — everything queued for
    /// them fails at once with [`Failure::Refused`].
    pub(crate) fn on_refuse(&mut self, io: &mut Io, from: SocketAddr, datagram: &[u8]) {
        let refused = self.peers.iter().find_map(|(key, p)| match &p.phase {
            Phase::Handshaking { initiator, .. }
                if p.endpoint == Some(from) && initiator.refused(datagram) =>
            {
                Some(key.clone())
            }
            _ => None,
        });
        if let Some(key) = refused {
            self.fail(io, &key, Failure::Refused);
        }
    }

    /// A msg2 from `from`: our handshake with that friend completes.
    /// Returns the connection a session is now up with.
    pub(crate) fn on_msg2(
        &mut self,
        now: UnixTime,
        io: &mut Io,
        from: SocketAddr,
        datagram: &[u8],
    ) -> Option<PeerKey> {
        let (key, peer) = self.peers.iter_mut().find(|(_, p)| {
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
                let key = key.clone();
                io.event(Event::Connected {
                    friend: key.friend.clone(),
                    peer: from,
                });
                self.pump(now, io, &key);
                Some(key)
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
        let Some((key, peer)) = self.peers.iter_mut().find(|(_, p)| {
            p.endpoint == Some(from) && matches!(p.phase, Phase::Established { .. })
        }) else {
            return Received::Nothing;
        };
        let key = key.clone();
        let via = peer.via;
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
                io.send(via, from, seal(session, &frame::ack_payload(counter)));
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
                self.pump(now, io, &key);
                Received::Acked {
                    key,
                    peer: from,
                    outgoing,
                }
            }
            Some(kind @ (Payload::Text | Payload::Datagram)) => {
                if kind == Payload::Text {
                    io.send(via, from, seal(session, &frame::ack_payload(counter)));
                }
                io.event(Event::Message {
                    friend: key.friend,
                    payload: body.to_vec(),
                });
                Received::Nothing
            }
            Some(Payload::Reset) => Received::ResetNotice {
                ack: Transmit {
                    socket: via,
                    dst: from,
                    bytes: seal(session, &frame::ack_payload(counter)),
                },
                key,
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
