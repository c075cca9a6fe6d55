//! [`Earth`]: the core the driver talks to, wiring the state machines
//! together — a new view reconciles registrations and lookups, a lookup a
//! connection made answers that connection, a delivered reset notice is
//! the reset machine's, a `not owner` to a registration makes the members
//! fetch again. [`rendezvous`] wires the NAT, punch and peer machines
//! around introductions, hints and probes.

mod datagram;
mod rendezvous;

use std::collections::{HashMap, HashSet};
use std::net::{SocketAddr, SocketAddrV4};
use std::time::Duration;

use sky_proto::frame::Payload;
use sky_proto::ring::Ring;
use sky_proto::time::UnixTime;
use sky_proto::wire::{self, VirtualAddr};

use super::config::Config;
use super::config::Overlap;
use super::event::{Event, Failure, RegistrationInfo, SocketId, Transmit};
use super::idle::{Idle, Subject, Verdict};
use super::io::Io;
use super::lookups::{Done, Lookups, NewLookup, Purpose};
use super::members::Members;
use super::nat::{Nat, NatReport};
use super::peers::{PeerKey, Peers, Received};
use super::punch::Punch;
use super::registrations::{Registrations, Start};
use super::reset::Reset;
use super::timers::Timer;
use crate::identity::FriendError;
use crate::invite::Invite;
use crate::ratchet::ChainKey;
use crate::state::State;

/// At an epoch boundary, the new address is registered after a random
/// delay of up to this (`docs/PRIVACY.md`, `lookup-side-fresh-port`).
pub const ROTATION_DELAY: Duration = Duration::from_secs(60);

/// The earth client's core. See the module documentation of
/// [`crate::client`] for the calls and their order.
pub struct Earth {
    config: Config,
    state: State,
    online: bool,
    io: Io,
    members: Members,
    registrations: Registrations,
    lookups: Lookups,
    peers: Peers,
    reset: Reset,
    nat: Nat,
    punch: Punch,
    idle: Idle,
    /// Pair keys by the friend device's public key (one X25519 each).
    pair_keys: HashMap<[u8; 32], [u8; 32]>,
    /// When we last looked back at a friend device that called us.
    replied: HashMap<PeerKey, UnixTime>,
    /// What friend devices' hints told us (the latest).
    learned: HashMap<PeerKey, sky_proto::hint::Hint>,
    /// Whether the automatic NAT check has run.
    nat_checked: bool,
    /// Whether `go_online` sends pending resets (not for a one-shot).
    resets: bool,
}

impl Earth {
    /// A core for `state`, bootstrapping from `config.sky`, with randomness
    /// from `seed` (32 bytes from the operating system's random source).
    pub fn new(mut config: Config, state: State, seed: [u8; 32], now: UnixTime) -> Earth {
        let mut bootstrap = Vec::with_capacity(config.sky.len());
        for node in config.sky.iter().map(|n| wire::canonical(*n)) {
            if !bootstrap.contains(&node) {
                bootstrap.push(node);
            }
        }
        config.sky = bootstrap.clone();
        let mut io = Io::new(seed);
        let registrations = Registrations::new(&config);
        registrations.schedule_cover(now, &mut io);
        Earth {
            members: Members::new(bootstrap, config.retry, config.keepalive),
            registrations,
            lookups: Lookups::new(config.retry, config.give_up),
            peers: Peers::new(config.retry, config.give_up),
            reset: Reset::new(config.reset_retry),
            nat: Nat::new(),
            punch: Punch::new(config.retry, config.give_up),
            idle: Idle::new(config.idle_test),
            pair_keys: HashMap::new(),
            replied: HashMap::new(),
            learned: HashMap::new(),
            nat_checked: false,
            resets: true,
            config,
            state,
            online: false,
            io,
        }
    }

    /// The identity, friends and pending resets (what the driver saves).
    pub fn state(&self) -> &State {
        &self.state
    }

    /// The configuration the core runs with.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The sky as the client sees it: the ring it computes owners with and
    /// the version it holds (0: a standalone node). `None` until the first
    /// members fetch completes.
    pub fn ring(&self) -> Option<(&Ring, u32)> {
        self.members.view()
    }

    /// The sky nodes that hold `address` for us now (a registration
    /// answered and kept alive).
    pub fn holders(&self, address: &VirtualAddr) -> Vec<SocketAddr> {
        self.registrations.holders(address)
    }

    /// Where the sky sees us (our NAT's public endpoint), once registered.
    pub fn observed(&self) -> Option<SocketAddr> {
        self.registrations.observed()
    }

    /// The addresses the client keeps registered now: its own (one, or two
    /// during a dual overlap) and cover addresses, each with the sky nodes
    /// that hold it.
    pub fn registrations(&self) -> Vec<RegistrationInfo> {
        self.registrations.info()
    }

    /// Stays registered from now on (and sends pending resets).
    pub fn go_online(&mut self, now: UnixTime) {
        self.online = true;
        self.update_registrations(now);
        if self.resets {
            self.reset.arm(now, &mut self.io);
        }
        self.ensure_checked(now);
        self.handle_timeout(now);
    }

    /// Registers like [`Earth::go_online`] but sends no pending reset: for
    /// a client that runs only to reach a friend (a one-shot send), so that
    /// the friend's side can look back at it (`docs/NAT.md`).
    pub fn go_findable(&mut self, now: UnixTime) {
        self.resets = false;
        self.go_online(now);
    }

    /// What the client knows of its NAT now.
    pub fn nat(&self) -> NatReport {
        self.nat.report(self.io.main)
    }

    /// Measures the NAT against the first bootstrap node's check ports
    /// (`sky earth netcheck`); [`Event::Nat`] tells the result. The client
    /// also does this once by itself, when it first needs the sky.
    pub fn check_nat(&mut self, now: UnixTime) {
        self.nat_checked = true;
        if let Some(&node) = self.config.sky.first() {
            self.nat.start(now, &mut self.io, node);
        }
    }

    /// The owner mapping the idle test tests, while online.
    fn idle_subject(&self) -> Option<Subject> {
        if !self.online {
            return None;
        }
        let (via, node, address, last_sent, interval) = self.registrations.idle_subject()?;
        (via == self.io.main).then_some(Subject {
            node,
            address,
            last_sent,
            interval,
        })
    }

    fn ensure_checked(&mut self, now: UnixTime) {
        if !self.nat_checked {
            self.check_nat(now);
        }
    }

    /// The driver bound `socket` at `local` — its local address as a LAN
    /// neighbour reaches it (the address of the interface that routes to
    /// the sky, not the wildcard). Sealed into hints for friends behind the
    /// same public address; never sent in clear.
    pub fn set_local_addr(&mut self, socket: SocketId, local: SocketAddr) {
        self.nat.set_local(socket, wire::canonical(local));
    }

    /// The router mapped a public port to [`Earth::main_socket`] (UPnP,
    /// NAT-PMP or PCP), or no longer does (`None`). Sealed into hints;
    /// never sent in clear.
    pub fn set_port_mapping(&mut self, mapped: Option<SocketAddrV4>) {
        self.nat.set_mapped(mapped);
    }

    /// The socket the client's own traffic goes out of now (a port
    /// mapping belongs to it; it changes at a rotation).
    pub fn main_socket(&self) -> SocketId {
        self.io.main
    }

    /// Probes the birthday punch has sent so far (spray and scan).
    pub fn campaign_probes(&self) -> u64 {
        self.punch.campaign_probes
    }

    /// Unregisters every address at every owner.
    pub fn go_offline(&mut self) {
        self.online = false;
        self.registrations.clear(&mut self.io);
    }

    /// The state was saved: release what waited on it (acknowledgements of
    /// adopted resets; everything, after a reset of our own).
    pub fn saved(&mut self) {
        self.io.unsaved = false;
        self.io.hold_until_saved = false;
        self.peers.saved(&mut self.io);
    }

    /// The state could not be saved. The acknowledgements that waited on it
    /// are dropped, so each friend sends its notice again later and the
    /// change is saved then; after a reset of our own nothing is sent until
    /// a save succeeds ([`Earth::unsaved`] stays true: save again).
    pub fn save_failed(&mut self) {
        self.peers.save_failed();
    }

    /// Whether a [`Event::SaveState`] still waits for a successful save.
    pub fn unsaved(&self) -> bool {
        self.io.unsaved
    }

    /// The next datagram to send, until `None`. While a change that must be
    /// on disk first is unsaved, nothing comes out.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        if self.io.hold_until_saved {
            return None;
        }
        self.io.transmits.pop_front()
    }

    /// The next socket the driver may close (a cover registration's, or
    /// the one left at an epoch boundary), until `None`. Call it after
    /// draining [`Earth::poll_transmit`]: what still had to go out of it
    /// has gone.
    pub fn poll_released(&mut self) -> Option<SocketId> {
        if let Some(&id) = self.io.released.front() {
            self.nat.forget_socket(id);
        }
        self.io.released.pop_front()
    }

    /// The next event for the application, until `None`.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.io.events.pop_front()
    }

    /// When [`Earth::handle_timeout`] should be called next.
    pub fn poll_timeout(&self) -> Option<UnixTime> {
        self.io.timers.next()
    }

    /// Looks `friend` up under each address they may have now (within `H`
    /// of a boundary, the neighbouring epoch's too), asking each address's
    /// owners one after the other; answers with [`Event::Lookup`]. The
    /// owner that finds them introduces us to them.
    pub fn lookup(&mut self, now: UnixTime, friend: &str) {
        self.lookup_of(now, friend, None);
    }

    /// [`Earth::lookup`] of one of the friend's devices (0 is their first).
    pub fn lookup_device(&mut self, now: UnixTime, friend: &str, device: u8) {
        self.lookup_of(now, friend, Some(device));
    }

    fn lookup_of(&mut self, now: UnixTime, friend: &str, device: Option<u8>) {
        if !self.start_lookup(now, friend, Purpose::App, device) {
            self.io.event(Event::Lookup {
                friend: friend.to_string(),
                result: Err(Failure::NoSuchFriend),
            });
        }
    }

    /// Delivers `payload` to `friend` reliably: connects first when there
    /// is no session (lookup, punching, handshake), then sends until it is
    /// acknowledged. Answers with [`Event::Delivered`] or [`Event::Failed`]
    /// carrying the returned id.
    /// A friend with several devices gets it on one: the one a session is
    /// up with, else the first that answers.
    pub fn send(&mut self, now: UnixTime, friend: &str, payload: &[u8]) -> u64 {
        self.send_to(now, friend, None, payload)
    }

    /// [`Earth::send`] to one of the friend's devices (0 is their first).
    pub fn send_to_device(
        &mut self,
        now: UnixTime,
        friend: &str,
        device: u8,
        payload: &[u8],
    ) -> u64 {
        self.send_to(now, friend, Some(device), payload)
    }

    fn send_to(&mut self, now: UnixTime, friend: &str, device: Option<u8>, payload: &[u8]) -> u64 {
        let mut bytes = Vec::with_capacity(payload.len() + 1);
        bytes.push(Payload::Text as u8);
        bytes.extend_from_slice(payload);
        self.enqueue(now, friend, device, bytes)
    }

    /// Sends `payload` to `friend` once, best effort, over an established
    /// session. `false` when there is none (call [`Earth::send`] or wait
    /// for [`Event::Connected`]) or the payload is too large.
    pub fn send_datagram(&mut self, friend: &str, payload: &[u8]) -> bool {
        self.peers.send_datagram(&mut self.io, friend, payload)
    }

    /// Queues a sealed payload of any kind to `friend`, as [`Earth::send`]
    /// does for text: for tests of what a friend's client does with
    /// payloads the real client never sends (a forged reset).
    #[cfg(feature = "test-support")]
    pub fn send_raw_payload_for_test(
        &mut self,
        now: UnixTime,
        friend: &str,
        payload: Vec<u8>,
    ) -> u64 {
        self.enqueue(now, friend, None, payload)
    }

    /// Adds a friend from their invite, at once: their handshakes are
    /// accepted from now on. Refuses one's own invite, and a name, key or
    /// chain already a friend's. Asks for a save ([`Event::SaveState`]).
    pub fn add_friend(&mut self, name: &str, invite: Invite) -> Result<(), FriendError> {
        self.state.add_friend(name, invite)?;
        self.io.event(Event::SaveState);
        Ok(())
    }

    /// Renames a friend (their connection, lookups and pending reset
    /// follow). Asks for a save.
    pub fn rename_friend(&mut self, from: &str, to: &str) -> Result<(), FriendError> {
        self.state.rename_friend(from, to)?;
        self.peers.rename(from, to);
        self.lookups.rename(from, to);
        self.io.event(Event::SaveState);
        Ok(())
    }

    /// Adds a device to this user (its long-term X25519 secret is
    /// `secret`, 32 random bytes): every friend is sent the new list of
    /// device keys until they acknowledge it; nothing is sent before the
    /// state holding it is saved. Returns the state the new device starts
    /// from (carry it there; it holds the chain key).
    pub fn add_device(&mut self, now: UnixTime, secret: [u8; 32]) -> Result<State, FriendError> {
        let for_device = self.state.add_device(secret, now)?;
        self.reset.arm(now, &mut self.io);
        self.io.hold_until_saved = true;
        self.io.event(Event::SaveState);
        self.handle_timeout(now);
        Ok(for_device)
    }

    /// Address reset (SPEC §2), at once: removes `friend` (their session
    /// goes; their handshakes are refused), moves the user to a fresh chain
    /// from `key`, and marks every remaining friend pending. Once the state
    /// holding the new chain is saved (nothing is sent before: see
    /// [`Earth::saved`]), the old address is unregistered at every owner,
    /// the new one registered, and the remaining friends are sent the new
    /// chain until each acknowledges it.
    pub fn remove_friend(
        &mut self,
        now: UnixTime,
        friend: &str,
        key: ChainKey,
    ) -> Result<(), FriendError> {
        self.state.reset_address(friend, key, now)?;
        self.peers.remove(&mut self.io, friend);
        for done in self.lookups.forget(&mut self.io, friend) {
            self.lookup_finished(now, done);
        }
        self.reset.arm(now, &mut self.io);
        self.io.hold_until_saved = true;
        self.io.event(Event::SaveState);
        if self.online {
            self.update_registrations(now);
        }
        self.handle_timeout(now);
        Ok(())
    }

    /// Everything that is due at `now`.
    pub fn handle_timeout(&mut self, now: UnixTime) {
        while let Some(timer) = self.io.timers.pop_due(now) {
            self.fire(now, timer);
        }
    }

    /// A datagram from `from`, received on [`SocketId::MAIN`]. Datagrams
    /// from a sky node we talk to are protocol replies and introductions;
    /// anything else is a peer's.
    pub fn handle_datagram(&mut self, now: UnixTime, from: SocketAddr, datagram: &mut [u8]) {
        self.handle_datagram_on(now, SocketId::MAIN, from, datagram);
    }

    /// A datagram from `from`, received on `socket`.
    pub fn handle_datagram_on(
        &mut self,
        now: UnixTime,
        socket: SocketId,
        from: SocketAddr,
        datagram: &mut [u8],
    ) {
        self.dispatch(now, socket, from, datagram);
    }

    // ---- wiring ----

    /// Whether the member list is needed now.
    fn needed(&self) -> bool {
        self.online || self.lookups.any()
    }

    fn fire(&mut self, now: UnixTime, timer: Timer) {
        let needed = self.needed();
        let io = &mut self.io;
        match timer {
            Timer::Fetch => self.members.on_fetch(now, io, needed),
            Timer::Refetch => self.members.on_refetch(now, io, needed),
            Timer::Boundary => {
                if self.online {
                    self.update_registrations(now);
                }
            }
            Timer::Cover => {
                self.registrations
                    .on_cover(now, io, &self.members, self.online);
                self.members.ensure(now, io, needed);
            }
            Timer::Owner(id, node) => {
                let ring = self.members.version();
                self.registrations.on_owner(now, io, id, node, ring);
            }
            Timer::Silent(id) => self.registrations.on_silent(io, id),
            Timer::CoverEnd(id) => self.registrations.on_cover_end(io, id),
            Timer::GiveUp(q) => {
                if let Some(done) = self.lookups.on_give_up(io, q) {
                    self.lookup_finished(now, done);
                }
            }
            Timer::NextOwner(q, t) => self.lookups.on_next_owner(now, io, q, t),
            Timer::PeerGiveUp(p) => {
                for key in self.peers.on_give_up(now, io, p) {
                    self.connect_lookup(now, key);
                }
            }
            Timer::Resend(p) => {
                for key in self.peers.on_resend(now, io, p) {
                    self.connect_lookup(now, key);
                }
            }
            Timer::Relookup(p) => {
                if let Some(key) = self.peers.on_relookup(now, io, p) {
                    self.still_handshaking(now, &key);
                    if !self.lookups.looking_up(&key) {
                        self.connect_lookup(now, key);
                    }
                }
            }
            Timer::Punch(via, endpoint) => self.punch.on_punch(now, io, via, endpoint),
            Timer::Campaign(id) => self.punch.on_campaign(now, io, id),
            Timer::Check => self.nat.on_timer(now, io),
            Timer::Idle => {
                let subject = self.idle_subject();
                if let Verdict::Shorten(interval) = self.idle.on_timer(now, &mut self.io, subject) {
                    self.registrations
                        .shorten_keepalive(now, &mut self.io, interval);
                    self.idle.after_shorten(now, &mut self.io, interval);
                    self.io.event(Event::KeepaliveShortened { interval });
                }
            }
            Timer::Release(socket) => {
                self.peers.drop_socket(io, socket);
                self.punch.drop_socket(io, socket);
                if !self.registrations.uses(socket) {
                    io.release(socket);
                }
            }
            Timer::Reset => {
                let peers = &self.peers;
                let notices = self
                    .reset
                    .on_timer(now, io, &mut self.state, self.online, |k| {
                        peers.has_queued(k, Payload::Reset)
                    });
                for (key, payload) in notices {
                    self.enqueue(now, &key.friend, key.device, payload);
                }
            }
        }
    }

    /// Registers exactly the own addresses of `now` (and fetches the
    /// members if the client holds no view). Moving to a new address (an
    /// epoch boundary, lookup-side; or an address reset) with fresh
    /// sockets, the new address goes out of a new socket — at a boundary
    /// after a random delay of up to [`ROTATION_DELAY`], as
    /// `docs/PRIVACY.md` models it — so nothing on the wire ties it to the
    /// old one.
    fn update_registrations(&mut self, now: UnixTime) {
        let schedule = self.state.identity.schedule;
        let device = self.state.identity.device();
        let epochs = self.registrations.wanted_epochs(now, schedule);
        let chain = &mut self.state.identity.chain;
        let wanted: Vec<_> = epochs
            .iter()
            .filter_map(|&e| chain.address_key_at(e, device).map(|k| (e, k)))
            .collect();
        let mut start = Start {
            via: self.io.main,
            after: Duration::ZERO,
        };
        let rotate = self.config.fresh_sockets
            && self.config.overlap == Overlap::LookupSide
            && self.registrations.own_other_than(&wanted);
        if rotate {
            // At a boundary the new address waits a random while (the
            // model's); after a reset it goes at once.
            let after = match self.registrations.own_of_another_epoch(&wanted) {
                true => ROTATION_DELAY.mul_f64(self.io.rng.unit()),
                false => Duration::ZERO,
            };
            let old = self.io.main;
            self.io.main = self.io.new_socket();
            start = Start {
                via: self.io.main,
                after,
            };
            // Sessions on the old socket may finish; then it closes.
            self.io
                .timers
                .set(Timer::Release(old), now + self.config.give_up * 2);
        }
        self.registrations
            .update(now, &mut self.io, &self.members, &wanted, schedule, start);
        let needed = self.needed();
        self.members.ensure(now, &mut self.io, needed);
    }

    /// Starts a lookup of `friend` (one device of theirs, or all); `false`
    /// when there is no such friend.
    fn start_lookup(
        &mut self,
        now: UnixTime,
        friend: &str,
        purpose: Purpose,
        device: Option<u8>,
    ) -> bool {
        let own_epoch = self.state.identity.schedule.epoch_at(now);
        let own_device = self.state.identity.device();
        let caller = self
            .state
            .identity
            .chain
            .device_address_at(own_epoch, own_device)
            .unwrap_or_default();
        let overlap = self.config.overlap_window;
        let Some(f) = self.state.friends.0.get_mut(friend) else {
            return false;
        };
        let devices: Vec<u8> = match device {
            Some(d) => vec![d],
            None => (0..f.keys.len() as u8).collect(),
        };
        let mut addresses = Vec::new();
        for e in f.schedule.lookup_epochs(now, overlap) {
            for &d in &devices {
                if let Some(a) = f.chain.device_address_at(e, d) {
                    addresses.push((a, d));
                }
            }
        }
        let reply = matches!(purpose, Purpose::Reply(_));
        let friend = friend.to_string();
        let addresses = addresses
            .into_iter()
            .map(|(a, d)| {
                let key = PeerKey::new(&friend, Some(d));
                (a, d, self.seal_hint(&key, caller, a, reply))
            })
            .collect();
        let query = NewLookup {
            friend,
            caller,
            addresses,
            purpose,
        };
        self.lookups.start(now, &mut self.io, &self.members, query);
        self.members.ensure(now, &mut self.io, true);
        self.ensure_checked(now);
        true
    }

    /// The lookup the connection `key` needs.
    fn connect_lookup(&mut self, now: UnixTime, key: PeerKey) {
        let (friend, device) = (key.friend.clone(), key.device);
        self.start_lookup(now, &friend, Purpose::Connect(key), device);
    }

    /// A lookup is over: its answer goes to the application, or to the
    /// connection that asked.
    fn lookup_finished(&mut self, now: UnixTime, done: Done) {
        let key = match done.purpose {
            Purpose::App => {
                self.io.event(Event::Lookup {
                    friend: done.friend,
                    result: done.result.map(|(endpoint, flags, _)| (endpoint, flags)),
                });
                return;
            }
            Purpose::Connect(key) => key,
            // A look back: it carried our hint; the answer is not needed.
            Purpose::Reply(_) => return,
        };
        let secret = self.state.identity.secret_bytes();
        let keys = self
            .state
            .friends
            .0
            .get(&key.friend)
            .map(|f| (secret, f.keys.as_slice()));
        let result = done.result.map(|(endpoint, _, device)| (endpoint, device));
        let found = result
            .as_ref()
            .ok()
            .map(|&(e, d)| (PeerKey::new(&key.friend, Some(d)), e));
        self.peers
            .lookup_done(now, &mut self.io, &key, result, keys);
        if let Some((key, endpoint)) = found {
            self.answered(now, &key, endpoint);
        }
    }

    /// Queues a sealed payload for `friend` (one device, or any),
    /// connecting first if needed.
    fn enqueue(
        &mut self,
        now: UnixTime,
        friend: &str,
        device: Option<u8>,
        payload: Vec<u8>,
    ) -> u64 {
        let known = self.state.friends.0.contains_key(friend);
        let (id, lookup) = self
            .peers
            .enqueue(now, &mut self.io, friend, device, payload, known);
        if let Some(key) = lookup {
            self.connect_lookup(now, key);
        }
        id
    }

    /// What a friend's sealed datagram asks of the other machines.
    fn received(&mut self, now: UnixTime, received: Received) {
        match received {
            Received::Nothing => {}
            Received::Acked {
                key,
                peer,
                outgoing,
            } => {
                if outgoing.payload.first() == Some(&(Payload::Reset as u8)) {
                    self.reset.acknowledged(&mut self.io, &mut self.state, &key);
                    return;
                }
                self.io.event(Event::Delivered {
                    friend: key.friend,
                    id: outgoing.id,
                    peer,
                    elapsed: now.saturating_duration_since(outgoing.queued),
                    sent: outgoing.sent,
                });
            }
            Received::ResetNotice {
                key,
                notice,
                counter,
                ack,
            } => {
                if self
                    .reset
                    .adopt(&mut self.io, &mut self.state, &key, &notice)
                {
                    self.peers.hold(counter, ack);
                }
            }
        }
    }

    /// A new view: registrations and lookups follow it, and the cookies of
    /// nodes no longer used are forgotten.
    fn after_view(&mut self, now: UnixTime) {
        self.registrations
            .reconcile(now, &mut self.io, &self.members);
        self.lookups.reconcile(now, &mut self.io, &self.members);
        let mut used = HashSet::new();
        self.members.nodes_in_use(&mut used);
        self.registrations.nodes_in_use(&mut used);
        self.lookups.nodes_in_use(&mut used);
        self.io.nodes.retain(|node, _| used.contains(node));
    }
}
