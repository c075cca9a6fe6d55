//! Peers: connections to friends on punched paths — the handshake (as
//! initiator after a lookup, on every path a probe or a hint showed; or as
//! responder to a friend's msg1), and stop-and-wait delivery of sealed
//! payloads with retransmission and acknowledgements.
//!
//! Owns: one connection per friend device (its phase, paths and outbox),
//! and the acknowledgements held until the state is saved. Timers:
//! [`Timer::Resend`], [`Timer::Relookup`], [`Timer::PeerGiveUp`]. It asks
//! the caller for lookups (a connection needs the friend's endpoint) and
//! hands back what only the caller can act on: an acknowledged payload and
//! a friend's reset notice. Punching is [`super::punch`]'s.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::Duration;

use sky_proto::frame::{MSG1_LEN, MSG2_LEN, Payload};
use sky_proto::time::UnixTime;

use super::event::{Event, Failure, SocketId, Transmit};
use super::io::Io;
use super::timers::{PeerId, Timer};
use crate::handshake::{self, Initiator, Session};

mod delivery;

/// How often a connection that has no answer yet looks the friend up
/// again (and so is introduced again).
pub(crate) const RELOOKUP: Duration = Duration::from_secs(1);
/// Paths msg1 goes on at once, besides the endpoint the sky reported.
const MAX_PATHS: usize = 8;

/// Where a friend's connection stands.
enum Phase {
    /// Waiting for the lookup's answer.
    Looking,
    /// msg1 sent on the retry schedule (it punches too); waiting for msg2.
    Handshaking {
        initiator: Initiator,
        msg1: [u8; MSG1_LEN],
        /// More paths to send msg1 on: where probes from the friend came
        /// from, and the candidates its hint named.
        paths: Vec<(SocketId, SocketAddr)>,
    },
    Established {
        session: Session,
        /// The msg1 this side answered and its msg2, sent again if the same
        /// msg1 comes again (our msg2 was lost, or it came on another path).
        answered: Option<([u8; MSG1_LEN], [u8; MSG2_LEN])>,
        /// Other paths the same msg1 came on: the initiator keeps whichever
        /// its msg2 reached first, so the session moves to the path its
        /// sealed datagrams come on.
        alternates: Vec<(SocketId, SocketAddr)>,
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
    /// Sends on the current session without an acknowledgement.
    on_session: u32,
    /// It has already made the connection start afresh once.
    rerouted: bool,
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
    /// What a failed handshake is told as (what we learned of the NATs).
    why: Failure,
    /// `via` is a socket this connection owns (a spray's it took): it
    /// closes with the connection.
    owns_via: bool,
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

    pub(crate) fn established(&self, key: &PeerKey) -> bool {
        self.phase_is(key, |p| matches!(p, Phase::Established { .. }))
    }

    pub(crate) fn handshaking(&self, key: &PeerKey) -> bool {
        self.phase_is(key, |p| matches!(p, Phase::Handshaking { .. }))
    }

    /// The connections whose handshake waits for an answer.
    pub(crate) fn handshaking_keys(&self) -> Vec<PeerKey> {
        self.peers
            .iter()
            .filter(|(_, p)| matches!(p.phase, Phase::Handshaking { .. }))
            .map(|(k, _)| k.clone())
            .collect()
    }

    /// The endpoint the sky reported for `key` (the handshake's first path).
    pub(crate) fn endpoint_of(&self, key: &PeerKey) -> Option<SocketAddr> {
        self.peers.get(key).and_then(|p| p.endpoint)
    }

    /// The socket `key`'s handshake or session runs on.
    pub(crate) fn via_of(&self, key: &PeerKey) -> Option<SocketId> {
        self.peers.get(key).map(|p| p.via)
    }

    /// A failed handshake with `key` is told as `why` from now on.
    pub(crate) fn explain(&mut self, key: &PeerKey, why: Failure) {
        if let Some(p) = self.peers.get_mut(key) {
            p.why = why;
        }
    }

    /// Fails the handshake with `key` now, as `why` (nothing can reach
    /// the friend).
    pub(crate) fn give_up_now(&mut self, io: &mut Io, key: &PeerKey, why: Failure) {
        if self.handshaking(key) {
            self.fail(io, key, why);
        }
    }

    /// The session with `key` owns its socket (a spray's), and closes it
    /// when it ends.
    pub(crate) fn own_via(&mut self, key: &PeerKey) {
        if let Some(p) = self.peers.get_mut(key) {
            p.owns_via = true;
        }
    }

    /// msg1 also goes to `to` from `via` (a probe from the friend came
    /// from there, or its hint names it): now and on every retry.
    pub(crate) fn add_path(&mut self, io: &mut Io, key: &PeerKey, via: SocketId, to: SocketAddr) {
        let Some(peer) = self.peers.get_mut(key) else {
            return;
        };
        let first = (peer.via, peer.endpoint);
        if let Phase::Handshaking { msg1, paths, .. } = &mut peer.phase
            && first != (via, Some(to))
            && !paths.contains(&(via, to))
            && paths.len() < MAX_PATHS
        {
            paths.push((via, to));
            io.send(via, to, msg1.to_vec());
        }
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
        // The handshake has its whole time from the first msg1, however
        // long the lookup took (a later endpoint does not extend it).
        if matches!(peer.phase, Phase::Looking) {
            peer.deadline = peer.deadline.max(now + self.give_up);
        }
        peer.via = io.main;
        peer.endpoint = Some(endpoint);
        peer.phase = Phase::Handshaking {
            initiator,
            msg1,
            paths: Vec::new(),
        };
        io.timers.set(Timer::Relookup(peer.id), now + RELOOKUP);
        io.timers.set(Timer::PeerGiveUp(peer.id), peer.deadline);
        let id = peer.id;
        let _ = self.resend(now, io, id);
    }

    /// Every outgoing payload of `key` fails with `why`; the peer goes.
    fn fail(&mut self, io: &mut Io, key: &PeerKey, why: Failure) {
        if let Some(peer) = self.peers.remove(key) {
            cancel_timers(io, peer.id);
            if peer.owns_via {
                io.release(peer.via);
            }
            for o in peer.outbox {
                io.event(Event::Failed {
                    friend: key.friend.clone(),
                    id: o.id,
                    why: why.clone(),
                });
            }
        }
    }

    pub(super) fn key_of(&self, id: PeerId) -> Option<PeerKey> {
        self.peers
            .iter()
            .find(|(_, p)| p.id == id)
            .map(|(k, _)| k.clone())
    }

    /// [`Timer::PeerGiveUp`] is due. Returns the friends that must be
    /// looked up again.
    pub(crate) fn on_give_up(&mut self, now: UnixTime, io: &mut Io, id: PeerId) -> Vec<PeerKey> {
        let Some(key) = self.key_of(id) else {
            return Vec::new();
        };
        if self.handshaking(&key) {
            // Handshake timed out: everything queued fails, told as what we
            // learned of the NATs on the way.
            let why = self
                .peers
                .get(&key)
                .map_or(Failure::Unreachable, |p| p.why.clone());
            self.fail(io, &key, why);
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
        // The same msg1 again: our msg2 was lost, or the friend sent it on
        // several paths; answer it again where it came from.
        for peer in self.peers.values_mut() {
            let first = (peer.via, peer.endpoint);
            if let Phase::Established {
                answered: Some((m1, m2)),
                alternates,
                ..
            } = &mut peer.phase
                && m1[..] == *datagram
            {
                if first != (via, Some(from))
                    && !alternates.contains(&(via, from))
                    && alternates.len() < MAX_PATHS
                {
                    alternates.push((via, from));
                }
                io.send(via, from, m2.to_vec());
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
            why: Failure::Unreachable,
            owns_via: false,
        });
        io.timers.cancel(Timer::Relookup(peer.id));
        if peer.owns_via && peer.via != via {
            io.release(peer.via);
            peer.owns_via = false;
        }
        peer.via = via;
        peer.endpoint = Some(from);
        peer.phase = Phase::Established {
            session,
            answered: Some((m1, msg2)),
            alternates: Vec::new(),
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
    pub(crate) fn on_refuse(
        &mut self,
        io: &mut Io,
        (via, from): (SocketId, SocketAddr),
        datagram: &[u8],
    ) {
        let refused = self.peers.iter().find_map(|(key, p)| match &p.phase {
            Phase::Handshaking {
                initiator, paths, ..
            } if on_path(p, paths, via, from) && initiator.refused(datagram) => Some(key.clone()),
            _ => None,
        });
        if let Some(key) = refused {
            self.fail(io, &key, Failure::Refused);
        }
    }

    /// A msg2 from `from` on `via`: our handshake with that friend
    /// completes, on this path. Returns the connection a session is now up
    /// with.
    pub(crate) fn on_msg2(
        &mut self,
        now: UnixTime,
        io: &mut Io,
        (via, from): (SocketId, SocketAddr),
        datagram: &[u8],
    ) -> Option<PeerKey> {
        let (key, peer) = self.peers.iter_mut().find(|(_, p)| match &p.phase {
            Phase::Handshaking { paths, .. } => on_path(p, paths, via, from),
            _ => false,
        })?;
        let Phase::Handshaking { initiator, .. } = &peer.phase else {
            unreachable!("matched above");
        };
        match initiator.finish(datagram) {
            Ok(session) => {
                peer.via = via;
                peer.endpoint = Some(from);
                peer.phase = Phase::Established {
                    session,
                    answered: None,
                    alternates: Vec::new(),
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
}

/// Whether `(via, from)` is one of a handshaking peer's paths.
fn on_path(p: &Peer, paths: &[(SocketId, SocketAddr)], via: SocketId, from: SocketAddr) -> bool {
    (p.via == via && p.endpoint == Some(from)) || paths.contains(&(via, from))
}

fn cancel_timers(io: &mut Io, id: PeerId) {
    io.timers.cancel_where(
        |t| matches!(t, Timer::Resend(p) | Timer::Relookup(p) | Timer::PeerGiveUp(p) if *p == id),
    );
}
