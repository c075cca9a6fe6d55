//! Gossip nobody can forge: a node's identity is a key pair, every gossip
//! datagram is signed by its sender, and an identity enters this node's
//! view only after it proved to *this node* that it receives at the gossip
//! and service endpoints it claims.
//!
//! ```text
//! gossip datagram  = G settings[4] cookie[8] offer[8] foca-message sig[64]
//!                    cookie: what the receiver issued to the sender (zeros before it did)
//!                    offer:  what the sender issues to the receiver, for its answers
//!                    sig:    Ed25519 by the sender's identity key, over every byte before it
//! cookie reply     = C cookie[8]        (only to a datagram at least as long)
//! ```
//!
//! **Proof of endpoints.** A datagram from an identity this node holds no
//! view of is not given to foca. Its source must return a cookie this node
//! issued to that source (a keyed MAC of its IP and port, two rotations
//! valid: a spoofed source never sees it; a first datagram without one is
//! answered with a cookie reply), and its signature must verify: the
//! gossip endpoint is proven. Its claimed service endpoint is sent a sky
//! `ping` and must answer with our tag (something that speaks the sky
//! protocol receives there). With both, the identity is *proven*: foca is
//! told to announce to it, and its datagrams are foca's. An identity a
//! member tells us of is proven the same way from our side: we announce to
//! it and ping its service endpoint at once (`screen.rs`); the offer in
//! our datagrams lets its first answer carry our cookie. In a closed sky
//! only the listed keys are considered at all.
//!
//! **What it bounds.** To an unproven source: at most a 9-byte cookie
//! reply, and only to a datagram at least that long. A service ping (17
//! bytes) goes once per identity at a time, at most [`PROBES_PER_IP`]
//! identities per source IP at a time, and only after the cookie round
//! trip. The engine's budgets (`poll_transmit`) cap the rate of all of it.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use sky_proto::time::MonoTime;
use sky_proto::wire::{self, Cookie, Message, Tag};

use super::NodeId;
use crate::keys::{CookieJar, NodeSecret};

/// Bytes of a signature at the end of every gossip datagram.
pub const SIG_LEN: usize = 64;
/// The first byte of a cookie reply.
pub(super) const COOKIE_MARKER: u8 = b'C';
/// A cookie reply: the marker and the cookie.
pub(super) const COOKIE_REPLY_LEN: usize = 9;
/// How long a proof ping is awaited.
const PROOF_WINDOW: Duration = Duration::from_secs(5);
/// A proof ping unanswered this long may be sent again (it or its pong
/// was lost).
const PING_AGAIN_AFTER: Duration = Duration::from_millis(500);
/// Announces to an identity being proven: the first retry after this,
/// each next one after twice as long, at most [`ANNOUNCE_EVERY_MAX`] apart.
const ANNOUNCE_AGAIN_AFTER: Duration = Duration::from_millis(500);
const ANNOUNCE_EVERY_MAX: Duration = Duration::from_secs(8);
/// Announces to an identity being proven before we give up on it (until a
/// member tells us of it again): over some 15 s.
const ANNOUNCE_TRIES: u32 = 5;
/// Identities from one source IP being proven at a time, at most.
pub const PROBES_PER_IP: usize = 4;
/// Entries of each table (cookies held, pings outstanding, identities we
/// announce to), at most: a full table forgets its oldest-looking entries
/// rather than grow.
const REMEMBERED: usize = 1024;

/// A node's identity key (Ed25519), from a 32-byte secret.
pub struct NodeKey(SigningKey);

impl NodeKey {
    pub fn from_secret(secret: [u8; 32]) -> NodeKey {
        NodeKey(SigningKey::from_bytes(&secret))
    }

    /// The public half: what a [`NodeId`] carries.
    pub fn public(&self) -> [u8; 32] {
        self.0.verifying_key().to_bytes()
    }

    pub(super) fn sign(&self, bytes: &[u8]) -> [u8; SIG_LEN] {
        self.0.sign(bytes).to_bytes()
    }
}

/// The public key of the identity key made from `secret`.
pub fn public_key_of(secret: [u8; 32]) -> [u8; 32] {
    NodeKey::from_secret(secret).public()
}

/// Whether `sig` is `key`'s signature of `bytes`.
pub(super) fn verify(key: &[u8; 32], bytes: &[u8], sig: &[u8]) -> bool {
    let (Ok(key), Ok(sig)) = (VerifyingKey::from_bytes(key), Signature::from_slice(sig)) else {
        return false;
    };
    key.verify(bytes, &sig).is_ok()
}

/// A proof ping awaiting its pong.
struct Outstanding {
    id: NodeId,
    sent: MonoTime,
}

/// An identity we announce to until it is in our view.
struct Pending {
    id: NodeId,
    next: MonoTime,
    tries: u32,
}

/// Cookies, proofs and checks (see the module documentation).
pub(super) struct Admission {
    secret: NodeSecret,
    jar: CookieJar,
    /// Cookies other nodes gave us, by their gossip endpoint.
    held: HashMap<SocketAddr, Cookie>,
    /// Identities we announced to and wait to hear from, by gossip
    /// endpoint: a cookie from there is worth a new announce, and silence
    /// one more after a while. Ordered, so that runs repeat.
    pending: BTreeMap<SocketAddr, Pending>,
    /// Proof pings awaiting their pong, by tag.
    pings: HashMap<u32, Outstanding>,
    /// Identities whose gossip endpoint is proven (cookie and signature).
    gossip_ok: HashSet<NodeId>,
    /// Identities whose service endpoint answered our ping.
    service_ok: HashSet<NodeId>,
    /// Identities that proved both endpoints.
    proven: HashSet<NodeId>,
    /// A closed sky's keys; `None`: any key may join.
    allowed: Option<HashSet<[u8; 32]>>,
    next_tag: u32,
}

impl Admission {
    pub(super) fn new(secret: [u8; 32], allowed: Option<HashSet<[u8; 32]>>) -> Admission {
        let secret = NodeSecret::new(blake3::derive_key("sky v1 gossip cookie secret", &secret));
        let jar = CookieJar::new(&secret, MonoTime::ZERO);
        Admission {
            secret,
            jar,
            held: HashMap::new(),
            pending: BTreeMap::new(),
            pings: HashMap::new(),
            gossip_ok: HashSet::new(),
            service_ok: HashSet::new(),
            proven: HashSet::new(),
            allowed,
            next_tag: 0,
        }
    }

    /// Whether `key` may be a member at all.
    pub(super) fn allowed(&self, key: &[u8; 32]) -> bool {
        self.allowed.as_ref().is_none_or(|keys| keys.contains(key))
    }

    /// The cookie to put on a datagram to `dst` (zeros before it gave one).
    pub(super) fn cookie_for(&self, dst: SocketAddr) -> Cookie {
        self.held.get(&dst).copied().unwrap_or_default()
    }

    /// The cookie we offer `dst`: it returns it in its answers.
    pub(super) fn offer_for(&mut self, now: MonoTime, dst: SocketAddr) -> Cookie {
        self.jar.rotate(&self.secret, now);
        self.jar.issue(&dst)
    }

    /// `from`, whose datagram verified, offers us `cookie`.
    pub(super) fn keep_offer(&mut self, from: SocketAddr, cookie: Cookie) {
        if self.held.len() >= REMEMBERED && !self.held.contains_key(&from) {
            self.held.clear();
        }
        self.held.insert(from, cookie);
    }

    /// `from` gave us a cookie; kept only from an endpoint we talk to
    /// (`expected`: a seed or member). Returns the identity we announced
    /// to there, if any, when the cookie is news: announce again, with it.
    pub(super) fn keep_cookie(
        &mut self,
        from: SocketAddr,
        cookie: Cookie,
        expected: bool,
    ) -> Option<Option<NodeId>> {
        let pending = self.pending.get(&from).map(|p| p.id);
        if !expected && pending.is_none() {
            return None;
        }
        if self.held.len() >= REMEMBERED && !self.held.contains_key(&from) {
            self.held.clear();
        }
        (self.held.insert(from, cookie) != Some(cookie)).then_some(pending)
    }

    /// We announce to `id` at `now` (a seed's stand-in is not recorded).
    pub(super) fn announcing_to(&mut self, now: MonoTime, id: NodeId) {
        if self.pending.len() >= REMEMBERED && !self.pending.contains_key(&id.gossip) {
            self.pending.clear();
        }
        let tries = match self.pending.get(&id.gossip) {
            Some(p) if p.id == id => p.tries + 1,
            _ => 1,
        };
        let wait = ANNOUNCE_AGAIN_AFTER
            .saturating_mul(1 << (tries - 1).min(8))
            .min(ANNOUNCE_EVERY_MAX);
        self.pending.insert(
            id.gossip,
            Pending {
                id,
                next: now + wait,
                tries,
            },
        );
    }

    /// Whether we announced to an identity at `gossip` and wait for it.
    pub(super) fn is_pending(&self, gossip: SocketAddr) -> bool {
        self.pending.contains_key(&gossip)
    }

    /// Whether `id`, which a member told us of, should be announced to now:
    /// not while an announce to it awaits its answer, nor while
    /// [`PROBES_PER_IP`] identities at its IP are being proven (a member
    /// that lies makes us send at most that much to any one address).
    pub(super) fn may_announce(&self, now: MonoTime, id: &NodeId) -> bool {
        match self.pending.get(&id.gossip) {
            Some(p) if p.id == *id => p.next <= now,
            _ => {
                let ip = id.gossip.ip();
                self.pending.keys().filter(|k| k.ip() == ip).count() < PROBES_PER_IP
            }
        }
    }

    /// Identities whose announce went unanswered long enough to send
    /// another; those tried [`ANNOUNCE_TRIES`] times are given up.
    pub(super) fn due_announces(&mut self, now: MonoTime) -> Vec<NodeId> {
        self.pending
            .retain(|_, p| p.next > now || p.tries < ANNOUNCE_TRIES);
        self.pending
            .values()
            .filter(|p| p.next <= now)
            .map(|p| p.id)
            .collect()
    }

    /// When the next announce is due.
    pub(super) fn next_announce(&self) -> Option<MonoTime> {
        self.pending.values().map(|p| p.next).min()
    }

    /// `id` is in our view now.
    pub(super) fn joined(&mut self, id: &NodeId) {
        if self.pending.get(&id.gossip).is_some_and(|p| p.id == *id) {
            self.pending.remove(&id.gossip);
        }
    }

    /// Whether `id` has proven both its endpoints to us.
    pub(super) fn proven(&self, id: &NodeId) -> bool {
        self.proven.contains(id)
    }

    /// `id` proved its gossip endpoint (its datagram carried our cookie
    /// and verified). Returns whether it is now proven.
    pub(super) fn gossip_proven(&mut self, id: &NodeId) -> bool {
        if self.service_ok.remove(id) {
            self.prove_both(id);
            return true;
        }
        if self.gossip_ok.len() >= REMEMBERED {
            self.gossip_ok.clear();
        }
        self.gossip_ok.insert(*id);
        false
    }

    fn prove_both(&mut self, id: &NodeId) {
        self.gossip_ok.remove(id);
        self.service_ok.remove(id);
        if self.proven.len() >= REMEMBERED * 8 {
            self.proven.clear();
        }
        self.proven.insert(*id);
    }

    /// Forgets proofs of identities `keep` says are gone, once the table
    /// is full.
    pub(super) fn prune_proven(&mut self, keep: impl Fn(&NodeId) -> bool) {
        if self.proven.len() >= REMEMBERED * 4 {
            self.proven.retain(|id| keep(id));
        }
    }

    /// Whether `cookie` is the one we issued to `from`.
    pub(super) fn cookie_ok(&mut self, now: MonoTime, from: SocketAddr, cookie: Cookie) -> bool {
        self.jar.rotate(&self.secret, now);
        self.jar.check(&from, &cookie)
    }

    /// The cookie reply to a datagram of `len` bytes from `from`: none to
    /// a datagram shorter than the reply.
    pub(super) fn cookie_reply(&self, from: SocketAddr, len: usize) -> Option<Vec<u8>> {
        (len >= COOKIE_REPLY_LEN).then(|| {
            let mut reply = vec![COOKIE_MARKER; COOKIE_REPLY_LEN];
            reply[1..].copy_from_slice(&self.jar.issue(&from).0);
            reply
        })
    }

    /// A ping to prove `id`'s service endpoint; `None` if it proved it,
    /// if one is out already (sent less than a second ago), or if its
    /// source IP has [`PROBES_PER_IP`] out.
    pub(super) fn prove(&mut self, now: MonoTime, id: &NodeId) -> Option<(SocketAddr, Vec<u8>)> {
        if self.service_ok.contains(id) || self.proven.contains(id) {
            return None;
        }
        self.pings.retain(|_, o| {
            let age = now.saturating_duration_since(o.sent);
            age < PROOF_WINDOW && !(o.id == *id && age >= PING_AGAIN_AFTER)
        });
        let ip: IpAddr = id.gossip.ip();
        let mut from_ip = 0;
        for o in self.pings.values() {
            if o.id == *id {
                return None;
            }
            if o.id.gossip.ip() == ip {
                from_ip += 1;
            }
        }
        if from_ip >= PROBES_PER_IP {
            return None;
        }
        if self.pings.len() >= REMEMBERED {
            self.pings.clear();
        }
        self.next_tag = self.next_tag.wrapping_add(1);
        let tag = Tag(self.next_tag.to_be_bytes());
        self.pings
            .insert(self.next_tag, Outstanding { id: *id, sent: now });
        let ping = Message::Ping {
            tag,
            cookie: Cookie::default(),
        };
        let mut bytes = vec![0u8; ping.buffer_len()];
        let n = ping.emit(&mut bytes);
        bytes.truncate(n);
        Some((id.service, bytes))
    }

    /// A sky `pong` with `tag` from `from`: the identity whose service
    /// endpoint that is, and that we pinged with that tag, proved it.
    /// Returns it if it is now proven (its gossip endpoint was already).
    pub(super) fn on_pong(&mut self, from: SocketAddr, tag: Tag) -> Option<NodeId> {
        let from = wire::canonical(from);
        let key = u32::from_be_bytes(tag.0);
        if self.pings.get(&key).is_none_or(|o| o.id.service != from) {
            return None;
        }
        let o = self.pings.remove(&key)?;
        if self.gossip_ok.contains(&o.id) {
            self.prove_both(&o.id);
            return Some(o.id);
        }
        if self.service_ok.len() >= REMEMBERED {
            self.service_ok.clear();
        }
        self.service_ok.insert(o.id);
        None
    }
}

/// A token bucket: `rate` datagrams a second, as deep.
pub(super) struct Bucket {
    rate: u32,
    tokens: f64,
    refilled: MonoTime,
}

impl Bucket {
    pub(super) fn new(rate: u32) -> Bucket {
        Bucket {
            rate,
            tokens: f64::from(rate),
            refilled: MonoTime::ZERO,
        }
    }

    /// Takes a token if one is left at `now`.
    pub(super) fn take(&mut self, now: MonoTime) -> bool {
        let elapsed = now.saturating_duration_since(self.refilled);
        let refill = elapsed.as_secs_f64() * f64::from(self.rate);
        if refill >= 1.0 {
            self.tokens = (self.tokens + refill).min(f64::from(self.rate));
            self.refilled = now;
        }
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}
