//! Datagrams in: a sky node's reply or introduction goes to the machine
//! that asked (or to [`super::rendezvous`]); a friend's frame to the
//! peers, by the first-byte registry.

use std::net::SocketAddr;

use sky_proto::frame::{FrameKind, Registry};
use sky_proto::intro;
use sky_proto::time::UnixTime;
use sky_proto::wire::{self, Message, Packet};

use super::Earth;
use crate::client::event::{Event, SocketId};
use crate::client::lookups::Answer;
use crate::client::peers::PeerKey;

impl Earth {
    /// A datagram from `from`, received on `socket`: the sky's, or a
    /// friend's frame.
    pub(super) fn dispatch(
        &mut self,
        now: UnixTime,
        socket: SocketId,
        from: SocketAddr,
        datagram: &mut [u8],
    ) {
        let from = wire::canonical(from);
        if self.io.nodes.contains_key(&from) {
            self.sky_datagram(now, socket, from, datagram);
            return;
        }
        let connected = match Registry::of(datagram) {
            Registry::Frame(FrameKind::Msg1) => {
                let ours = (
                    self.state.identity.secret_bytes(),
                    self.state.identity.public_key(),
                );
                let devices: Vec<(PeerKey, [u8; 32])> = self
                    .state
                    .friends
                    .0
                    .iter()
                    .flat_map(|(n, f)| {
                        f.keys
                            .iter()
                            .enumerate()
                            .map(move |(d, k)| (PeerKey::new(n, Some(d as u8)), *k))
                    })
                    .collect();
                self.peers
                    .on_msg1(now, &mut self.io, (socket, from), datagram, ours, &devices)
            }
            Registry::Frame(FrameKind::Msg2) => self
                .peers
                .on_msg2(now, &mut self.io, (socket, from), datagram)
                .into_iter()
                .collect(),
            Registry::Frame(FrameKind::Refuse) => {
                self.peers.on_refuse(&mut self.io, (socket, from), datagram);
                Vec::new()
            }
            Registry::Frame(FrameKind::Probe) => {
                self.on_probe(now, socket, from, datagram);
                Vec::new()
            }
            Registry::Frame(FrameKind::Data) => {
                let received = self
                    .peers
                    .on_data(now, &mut self.io, (socket, from), datagram);
                self.received(now, received);
                Vec::new()
            }
            Registry::Frame(FrameKind::Punch) | Registry::Unknown => Vec::new(),
            Registry::Sky => {
                match Message::decode(datagram) {
                    // Introductions come only from sky nodes we registered
                    // with.
                    Ok(Message::Introduction { .. }) => self.io.event(Event::ForgedIntroduction),
                    // A check port's answer (the other port's, unasked).
                    Ok(reply @ Message::Checked { .. }) => {
                        self.nat.on_checked(now, &mut self.io, socket, from, reply);
                    }
                    _ => {}
                }
                Vec::new()
            }
        };
        // The lookups those connections may have started are moot now;
        // punching for them stops.
        if let Some(key) = connected.first() {
            self.session_up(key, socket, from);
        }
        for key in connected {
            self.lookups.cancel_connect(&mut self.io, &key);
        }
    }

    /// A reply or an introduction from the sky node `from`, on `socket`.
    fn sky_datagram(&mut self, now: UnixTime, socket: SocketId, from: SocketAddr, datagram: &[u8]) {
        let Ok(packet) = Packet::new_checked(datagram) else {
            return;
        };
        let needed = self.needed();
        let io = &mut self.io;
        match Message::parse(&packet) {
            Message::CookieReply { tag, cookie } => {
                io.nodes
                    .entry(from)
                    .or_default()
                    .cookies
                    .insert(socket, cookie);
                let ring = self.members.version();
                self.registrations.on_cookie(io, socket, from, tag, ring);
                if socket == io.main {
                    self.members.on_cookie(io, from, tag);
                    self.lookups.on_cookie(io, from, tag);
                }
                self.idle.on_cookie(io, socket, from, tag);
            }
            reply @ Message::Registered { .. } => {
                self.registrations.on_registered(now, io, from, reply);
                if let Message::Registered { observed, .. } = reply
                    && socket == io.main
                {
                    self.nat.observed(observed);
                    if let Some(subject) = self.idle_subject() {
                        self.idle.schedule(&mut self.io, &subject);
                    }
                }
            }
            reply @ Message::Checked { .. } => {
                self.nat.on_checked(now, io, socket, from, reply);
            }
            Message::Refused { tag, reason } if self.registrations.is_pending(from, tag) => {
                io.event(Event::RegistrationRefused { reason });
            }
            Message::NotRegistered { tag } => {
                self.registrations.on_not_registered(now, io, from, tag)
            }
            Message::Online {
                tag,
                flags,
                endpoint,
            } => self.lookup_answer(now, from, tag, Answer::Online(endpoint, flags)),
            Message::Offline { tag } => self.lookup_answer(now, from, tag, Answer::Offline),
            Message::NotOwner { tag, version, hint } => {
                let hint = wire::canonical(hint);
                if self.registrations.on_not_owner(now, io, from, tag, hint) {
                    self.members.ring_changed(now, io, from, version, needed);
                } else {
                    self.lookup_answer(now, from, tag, Answer::NotOwner { version, hint });
                }
            }
            // Only in answer to a keepalive we sent that node.
            Message::RingChanged { tag, version } if self.registrations.is_keepalive(from, tag) => {
                self.members.ring_changed(now, io, from, version, needed);
            }
            Message::MembersPage { .. } if self.members.on_page(now, io, from, &packet, needed) => {
                self.after_view(now);
            }
            Message::Introduction { .. } => {
                let keys = io.nodes.get(&from).map_or(&[][..], |n| &n.intro_keys);
                match intro::verify_introduction(keys, datagram) {
                    Ok((caller, endpoint, hint)) => {
                        self.introduced(now, socket, caller, wire::canonical(endpoint), hint)
                    }
                    Err(_) => io.event(Event::ForgedIntroduction),
                }
            }
            _ => {}
        }
    }

    fn lookup_answer(&mut self, now: UnixTime, from: SocketAddr, tag: wire::Tag, answer: Answer) {
        let (done, ring_changed) = self.lookups.on_answer(now, &mut self.io, from, tag, answer);
        if let Some(version) = ring_changed {
            let needed = self.needed();
            self.members
                .ring_changed(now, &mut self.io, from, version, needed);
        }
        if let Some(done) = done {
            self.lookup_finished(now, done);
        }
    }
}
