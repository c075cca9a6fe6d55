//! Delivery on an established session: stop-and-wait sealed payloads,
//! retransmitted every `retry` until acknowledged, each with its own
//! deadline; acknowledgements of a reset held until the state is saved;
//! best-effort datagrams; and what a sealed datagram from the friend asks
//! of the caller ([`Received`]).

use std::collections::VecDeque;
use std::net::SocketAddr;

use sky_proto::frame::{self, DATA_OVERHEAD, Payload};
use sky_proto::time::UnixTime;

use super::{Outgoing, Peer, PeerKey, Peers, Phase, Received, cancel_timers};
use crate::client::MAX_PAYLOAD;
use crate::client::event::{Event, Failure, SocketId, Transmit};
use crate::client::io::Io;
use crate::client::timers::{PeerId, Timer};
use crate::handshake::{self, Session};

/// Unacknowledged sends on a session before it counts as gone (500 ms at
/// the default retry).
const STALE_AFTER: u32 = 5;

impl Peers {
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
            on_session: 0,
            rerouted: false,
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
    pub(super) fn push(
        &mut self,
        now: UnixTime,
        io: &mut Io,
        key: &PeerKey,
        outgoing: Outgoing,
    ) -> bool {
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
                        why: Failure::Unreachable,
                        owns_via: false,
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

    /// [`Timer::Resend`] is due: msg1, or the sealed datagram in flight,
    /// goes again.
    /// Returns the connection to look up again, when its session stopped
    /// answering.
    pub(crate) fn on_resend(&mut self, now: UnixTime, io: &mut Io, id: PeerId) -> Vec<PeerKey> {
        if !self.resend(now, io, id) {
            return Vec::new();
        }
        match self.key_of(id) {
            Some(key) => self.reconnect(now, io, &key),
            None => Vec::new(),
        }
    }

    /// Sends msg1, or the sealed datagram in flight, (again). Returns
    /// `true` when a session stopped answering: the datagram went
    /// [`STALE_AFTER`] times unacknowledged (a NAT may have forgotten the
    /// path while it idled), so the connection should start afresh.
    pub(super) fn resend(&mut self, now: UnixTime, io: &mut Io, id: PeerId) -> bool {
        let retry = self.retry;
        let Some(peer) = self.peers.values_mut().find(|p| p.id == id) else {
            return false;
        };
        let Some(dst) = peer.endpoint else {
            return false;
        };
        let via = peer.via;
        match &mut peer.phase {
            Phase::Looking => return false,
            Phase::Handshaking { msg1, paths, .. } => {
                io.send(via, dst, msg1.to_vec());
                for &(via, to) in paths.iter() {
                    io.send(via, to, msg1.to_vec());
                }
                if let Some(o) = peer.outbox.front_mut() {
                    o.sent += 1;
                }
            }
            Phase::Established { session, .. } => {
                let Some(o) = peer.outbox.front_mut() else {
                    return false;
                };
                if o.on_session >= STALE_AFTER && !o.rerouted {
                    return true;
                }
                o.on_session += 1;
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
        false
    }

    /// A session stopped answering: it is dropped, and what waited on it
    /// connects afresh (a lookup, so an introduction, so new punches),
    /// keeping its time. Once per payload. Returns the connection to look
    /// up.
    pub(super) fn reconnect(&mut self, now: UnixTime, io: &mut Io, key: &PeerKey) -> Vec<PeerKey> {
        let Some(peer) = self.peers.remove(key) else {
            return Vec::new();
        };
        cancel_timers(io, peer.id);
        if peer.owns_via {
            io.release(peer.via);
        }
        let mut lookups = Vec::new();
        for (i, o) in peer.outbox.into_iter().enumerate() {
            let again = Outgoing {
                sealed: None,
                on_session: 0,
                rerouted: o.rerouted || i == 0,
                ..o
            };
            if self.push(now, io, key, again) {
                lookups.push(key.clone());
            }
        }
        lookups
    }

    /// The front payload of an established connection: it fails when its
    /// time is up (the rest connect afresh), else it goes now. Returns the
    /// friends that must be looked up again.
    pub(super) fn pump(&mut self, now: UnixTime, io: &mut Io, key: &PeerKey) -> Vec<PeerKey> {
        let give_up = self.give_up;
        let Some(peer) = self.peers.get_mut(key) else {
            return Vec::new();
        };
        if !matches!(peer.phase, Phase::Established { .. }) {
            return Vec::new();
        }
        let id = peer.id;
        let Some(front) = peer.outbox.front_mut() else {
            io.timers.cancel(Timer::Resend(id));
            io.timers.cancel(Timer::PeerGiveUp(id));
            return Vec::new();
        };
        // A payload has its whole time on the session, however long the
        // lookup and the handshake before it took (each has its own).
        if front.sealed.is_none() {
            front.deadline = front.deadline.max(now + give_up);
        }
        if now >= front.deadline {
            return self.fail_front(now, io, key);
        }
        io.timers.set(Timer::PeerGiveUp(id), front.deadline);
        if self.resend(now, io, id) {
            return self.reconnect(now, io, key);
        }
        Vec::new()
    }

    /// The payload in flight on an established path timed out: it fails,
    /// the path is dropped and the rest of the outbox connects afresh.
    pub(super) fn fail_front(&mut self, now: UnixTime, io: &mut Io, key: &PeerKey) -> Vec<PeerKey> {
        let Some(mut peer) = self.peers.remove(key) else {
            return Vec::new();
        };
        cancel_timers(io, peer.id);
        if peer.owns_via {
            io.release(peer.via);
        }
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
                on_session: 0,
                ..o
            };
            if self.push(now, io, key, again) {
                lookups.push(key.clone());
            }
        }
        lookups
    }

    /// A sealed datagram from `from`.
    pub(crate) fn on_data(
        &mut self,
        now: UnixTime,
        io: &mut Io,
        (via, from): (SocketId, SocketAddr),
        datagram: &mut [u8],
    ) -> Received {
        let Some((key, peer)) = self.peers.iter_mut().find(|(_, p)| match &p.phase {
            Phase::Established { alternates, .. } => {
                p.endpoint == Some(from) || alternates.contains(&(via, from))
            }
            _ => false,
        }) else {
            return Received::Nothing;
        };
        let key = key.clone();
        let moved = peer.endpoint != Some(from);
        let Phase::Established {
            session,
            alternates,
            ..
        } = &mut peer.phase
        else {
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
        if moved {
            // Sealed under this session, on another of its paths: the
            // friend uses that one, and so do we from now on.
            alternates.retain(|&p| p != (via, from));
            if let Some(old) = peer.endpoint {
                alternates.push((peer.via, old));
            }
            peer.via = via;
            peer.endpoint = Some(from);
        }
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

pub(super) fn seal(session: &mut Session, plain: &[u8]) -> Vec<u8> {
    let mut out = vec![0u8; plain.len() + DATA_OVERHEAD];
    let n = session.seal(plain, &mut out);
    out.truncate(n);
    out
}
