//! Rendezvous: how the core turns an introduction, a lookup answer and a
//! probe into a path (`docs/NAT.md`, "How two friends find a path").
//!
//! Both sides know their own NAT ([`super::super::nat`]) and tell it to
//! the other only sealed: the caller in the hint of its lookup, which the
//! owner copies into the introduction; the side called, when what it
//! knows matters to the caller (a NAT that randomises ports on either
//! side, one public address for both, a port mapping), in the hint of a
//! lookup back at the caller (a *look back*: an introduction the other
//! way, carrying its hint). From the two NATs each side decides alone and
//! the same way:
//!
//! | us | them | we do |
//! | --- | --- | --- |
//! | any | any | probe their endpoint (and a candidate: a port mapping, or a local address when the public address is ours too) |
//! | consistent, filtering | randomising | scan their IP's ports ([`super::super::punch`]) |
//! | randomising | consistent, filtering | spray: 256 sockets probe their endpoint |
//! | randomising | randomising | nothing reaches: fail at once with [`Failure::BothRandomizing`] |
//!
//! A probe from the friend names a path: the caller sends msg1 on it, the
//! side called answers it with a probe from the socket it came to.

use std::net::SocketAddr;

use sky_proto::hint::{HINT_LEN, Hint, HintFlags};
use sky_proto::time::UnixTime;
use sky_proto::wire::VirtualAddr;

use super::Earth;
use crate::client::event::{Event, Failure, SocketId};
use crate::client::lookups::Purpose;
use crate::client::nat::{Mapping, NatReport};
use crate::client::peers::{PeerKey, RELOOKUP};
use crate::client::punch::Pair;

/// What the two NATs call for, from one side.
#[derive(Debug, Default, PartialEq, Eq)]
struct Plan {
    scan: bool,
    spray: bool,
    hopeless: bool,
}

fn plan(me: &NatReport, them: &Hint, same_ip: bool) -> Plan {
    if same_ip {
        // Behind one public address the randomising is the shared NAT's:
        // only local paths and mappings help, and they are probed anyway.
        return Plan::default();
    }
    let known = them.flags.has(HintFlags::KNOWN);
    let they_random = known && them.flags.has(HintFlags::RANDOM);
    let they_open = them.flags.has(HintFlags::OPEN);
    let mapped_candidate = them.flags.has(HintFlags::MAPPED) && them.candidate.is_some();
    Plan {
        scan: they_random && me.mapping == Mapping::Consistent && !me.open(),
        spray: me.randomizing() && known && !they_random && !they_open && !mapped_candidate,
        hopeless: me.randomizing() && they_random && !mapped_candidate,
    }
}

impl Earth {
    /// The pair of our device and `key`'s (a friend device we know).
    pub(super) fn pair(&mut self, key: &PeerKey) -> Option<Pair> {
        let device = usize::from(key.device?);
        let theirs = *self.state.friends.0.get(&key.friend)?.keys.get(device)?;
        let ours = self.state.identity.public_key();
        let secret = self.state.identity.secret_bytes();
        let pair = *self
            .pair_keys
            .entry(theirs)
            .or_insert_with(|| crate::handshake::pair_key(secret, theirs));
        Some(Pair {
            key: key.clone(),
            secret: pair,
            lower: ours < theirs,
        })
    }

    /// Our hint for a lookup of `target` (an address of `key`'s device) as
    /// `caller`, sealed for that device; random bytes when we have no pair
    /// with it (the sky cannot tell the two apart).
    pub(super) fn seal_hint(
        &mut self,
        key: &PeerKey,
        caller: VirtualAddr,
        target: VirtualAddr,
        reply: bool,
    ) -> [u8; HINT_LEN] {
        let b = self.io.rng.bytes();
        let Some(pair) = self.pair(key) else {
            let mut out = [0u8; HINT_LEN];
            out.copy_from_slice(&b[..HINT_LEN]);
            return out;
        };
        // Sharing their public address, a local path is as likely as a
        // mapping on the carrier's side: alternate lookup after lookup.
        let same_ip = self
            .peers
            .endpoint_of(key)
            .is_some_and(|e| self.nat.same_ip(e.ip()));
        let prefer_local = same_ip && b[20] & 1 == 0;
        let hint = self.nat.hint(self.io.main, prefer_local, reply);
        hint.seal(&pair.secret, [b[16], b[17], b[18]], &caller, &target)
    }

    /// The friend device whose address `caller` is (in an epoch near now).
    fn caller_device(&mut self, now: UnixTime, caller: VirtualAddr) -> Option<PeerKey> {
        let overlap = self.config.overlap_window;
        self.state.friends.0.iter_mut().find_map(|(name, f)| {
            let devices = f.keys.len() as u8;
            f.schedule
                .lookup_epochs(now, overlap)
                .into_iter()
                .find_map(|e| {
                    (0..devices).find(|&d| f.chain.device_address_at(e, d) == Some(caller))
                })
                .map(|d| PeerKey::new(name, Some(d)))
        })
    }

    /// Opens `sealed` as a hint to us from `pair`'s device for a lookup
    /// of one of our addresses now.
    fn open_hint(
        &mut self,
        now: UnixTime,
        pair: &Pair,
        caller: VirtualAddr,
        sealed: &[u8; HINT_LEN],
    ) -> Option<Hint> {
        let me = &mut self.state.identity;
        let device = me.device();
        let epochs = me.schedule.lookup_epochs(now, self.config.overlap_window);
        epochs
            .into_iter()
            .filter_map(|e| me.chain.device_address_at(e, device))
            .find_map(|ours| Hint::open(&pair.secret, sealed, &caller, &ours))
    }

    /// The sky introduced `caller` at `endpoint` on `socket`, with its
    /// sealed hint: a friend by name when the address is one of theirs.
    pub(super) fn introduced(
        &mut self,
        now: UnixTime,
        socket: SocketId,
        caller: VirtualAddr,
        endpoint: SocketAddr,
        sealed: [u8; HINT_LEN],
    ) {
        if self.idle.introduced(&caller) {
            return; // our own idle test: the mapping held
        }
        let key = self.caller_device(now, caller);
        let pair = key.as_ref().and_then(|k| self.pair(k));
        let hint = match &pair {
            Some(p) => self.open_hint(now, p, caller, &sealed),
            None => None,
        };
        self.io.event(Event::Introduced {
            friend: key.as_ref().map(|k| k.friend.clone()),
            caller,
            endpoint,
        });
        // A caller we cannot name may be a friend whose address reset is on
        // its way to us: a bare punch opens our NAT for its handshake.
        let (pair, hint) = match (pair, hint) {
            (Some(p), Some(h)) => (p, h),
            (pair, _) => {
                self.punch
                    .towards(now, &mut self.io, socket, endpoint, pair);
                return;
            }
        };
        let key = pair.key.clone();
        let same_ip = self.nat.same_ip(endpoint.ip());
        self.punch
            .towards(now, &mut self.io, socket, endpoint, Some(pair.clone()));
        if self.peers.established(&key) {
            // A late call of a session already up (its lookup was in
            // flight): the punch above is all it may need.
            return;
        }
        self.learned.insert(key.clone(), hint);
        if let Some(c) = worth_probing(&hint, same_ip) {
            self.punch
                .towards(now, &mut self.io, socket, c, Some(pair.clone()));
        }
        let me = self.nat.report(self.io.main);
        if hint.flags.has(HintFlags::REPLY) {
            // They looked back at us: we are the caller.
            self.looked_back(now, &pair, &hint, endpoint, same_ip);
            return;
        }
        let plan = plan(&me, &hint, same_ip);
        if plan.scan {
            self.punch
                .scan(now, &mut self.io, pair.clone(), socket, endpoint.ip());
        }
        if plan.spray {
            self.punch.spray(now, &mut self.io, pair.clone(), endpoint);
        }
        let they_random = hint.flags.has(HintFlags::KNOWN | HintFlags::RANDOM);
        if me.randomizing() || they_random || same_ip || me.mapped.is_some() {
            self.look_back(now, key);
        }
    }

    /// Looks back at a friend device that called us, so that our hint
    /// reaches it: at most once per [`RELOOKUP`] (it calls again as often).
    fn look_back(&mut self, now: UnixTime, key: PeerKey) {
        if self
            .replied
            .get(&key)
            .is_some_and(|&at| now < at + RELOOKUP)
        {
            return;
        }
        self.replied.retain(|_, &mut at| now < at + RELOOKUP * 10);
        self.replied.insert(key.clone(), now);
        let (friend, device) = (key.friend.clone(), key.device);
        self.start_lookup(now, &friend, Purpose::Reply(key), device);
    }

    /// As the caller: the friend looked back, and its hint says what its
    /// NAT is.
    fn looked_back(
        &mut self,
        now: UnixTime,
        pair: &Pair,
        hint: &Hint,
        endpoint: SocketAddr,
        same_ip: bool,
    ) {
        let key = &pair.key;
        if !self.peers.handshaking(key) {
            return;
        }
        let via = self.peers.via_of(key).unwrap_or(self.io.main);
        // Their registered endpoint (what the lookup answered) is where
        // they scan from; the introduction's is their NAT towards our
        // owner.
        let theirs = self.peers.endpoint_of(key).unwrap_or(endpoint);
        if let Some(c) = worth_probing(hint, same_ip) {
            self.peers.add_path(&mut self.io, key, via, c);
        }
        let me = self.nat.report(self.io.main);
        let plan = plan(&me, hint, same_ip);
        if plan.hopeless {
            self.peers
                .give_up_now(&mut self.io, key, Failure::BothRandomizing);
            self.punch.done(&mut self.io, key, None);
            return;
        }
        if plan.scan {
            self.punch
                .scan(now, &mut self.io, pair.clone(), via, theirs.ip());
        }
        if plan.spray {
            self.punch.spray(now, &mut self.io, pair.clone(), theirs);
        }
        let they_random = hint.flags.has(HintFlags::KNOWN | HintFlags::RANDOM);
        if me.randomizing() && they_random {
            self.peers.explain(key, Failure::BothRandomizing);
        }
    }

    /// As the caller: a lookup answered with the friend device's endpoint.
    pub(super) fn answered(&mut self, _now: UnixTime, key: &PeerKey, endpoint: SocketAddr) {
        if self.nat.same_ip(endpoint.ip()) {
            self.peers.explain(key, Failure::SharedAddress);
        }
    }

    /// As the caller, a second after the handshake started without an
    /// answer: behind a randomising NAT with no word from the friend (it
    /// did not look back), spray anyway — a consistent NAT on their side
    /// scans only if it knows, but an open one lets the spray through.
    pub(super) fn still_handshaking(&mut self, now: UnixTime, key: &PeerKey) {
        let me = self.nat.report(self.io.main);
        if !me.randomizing() || self.punch.birthday(key) || self.learned.contains_key(key) {
            return;
        }
        let Some(theirs) = self.peers.endpoint_of(key) else {
            return;
        };
        if self.nat.same_ip(theirs.ip()) {
            return;
        }
        if let Some(pair) = self.pair(key) {
            self.punch.spray(now, &mut self.io, pair, theirs);
        }
    }

    /// A probe came to `socket` from `from`: from a friend we are calling
    /// (msg1 goes there too), or from one calling us (answer it there).
    pub(super) fn on_probe(
        &mut self,
        now: UnixTime,
        socket: SocketId,
        from: SocketAddr,
        datagram: &[u8],
    ) {
        for key in self.peers.handshaking_keys() {
            if let Some(pair) = self.pair(&key)
                && pair.verify(datagram)
            {
                self.peers.add_path(&mut self.io, &key, socket, from);
                self.punch.stop_scans(&mut self.io, &key);
                return;
            }
        }
        for pair in self.punch.pairs() {
            if pair.verify(datagram) {
                self.punch.answer(now, &mut self.io, &pair, socket, from);
                return;
            }
        }
    }

    /// A session with `key` is up on `socket` with `from`: punching for it
    /// stops; a spray's socket it runs on is the session's now.
    pub(super) fn session_up(&mut self, key: &PeerKey, socket: SocketId, from: SocketAddr) {
        self.punch.stop_towards(&mut self.io, socket, from);
        if self.punch.done(&mut self.io, key, Some(socket)) {
            self.peers.own_via(key);
        }
        self.learned.remove(key);
    }
}

/// The candidate of `hint` worth probing: a port mapping always, a local
/// address only behind the same public address (anywhere else it is
/// somebody else's network).
fn worth_probing(hint: &Hint, same_ip: bool) -> Option<SocketAddr> {
    let c = hint.candidate?;
    let local = hint.flags.has(HintFlags::LOCAL);
    let mapped = hint.flags.has(HintFlags::MAPPED);
    (mapped || (local && same_ip)).then_some(SocketAddr::V4(c))
}
