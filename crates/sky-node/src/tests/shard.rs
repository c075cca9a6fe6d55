//! Tests of `shard`.

use super::*;
use ed25519_dalek::Signer;
use sky_proto::wire::{AddrKey, Cookie, IntroKey, MAX_MESSAGE_LEN, Signature, Tag};

/// A node with one shard on virtual time, and a client helper.
struct Pair {
    shard: Shard,
    now: MonoTime,
}

const BUF: usize = 2048;

impl Pair {
    fn new() -> Pair {
        let secret = Arc::new(NodeSecret::new([3; 32]));
        let presence = Arc::new(Presence::new(1000));
        Pair {
            shard: Shard::new(secret, presence, ShardConfig::default(), MonoTime::ZERO),
            now: MonoTime::from_secs(1),
        }
    }

    /// Sends `msg` from `from`; returns (reply, introduction).
    fn send(
        &mut self,
        from: &str,
        msg: Message,
    ) -> (Option<Message>, Option<(SocketAddr, Message)>) {
        let mut buf = [0u8; BUF];
        let len = msg.emit(&mut buf);
        self.send_bytes(from, &mut buf, len)
    }

    fn send_bytes(
        &mut self,
        from: &str,
        buf: &mut [u8],
        len: usize,
    ) -> (Option<Message>, Option<(SocketAddr, Message)>) {
        let mut reply = [0u8; MAX_MESSAGE_LEN];
        let out = self
            .shard
            .handle_datagram(self.now, from.parse().unwrap(), buf, len, &mut reply);
        let reply = out.reply.map(|n| {
            assert!(n <= len.max(MAX_MESSAGE_LEN));
            Message::decode(&reply[..n]).unwrap()
        });
        let intro = out
            .in_place
            .map(|t| (t.dst, Message::decode(&buf[..t.len]).unwrap()));
        (reply, intro)
    }

    fn cookie(&mut self, from: &str) -> Cookie {
        match self.send(from, lookup(Cookie::default(), [0; 16])).0 {
            Some(Message::CookieReply { cookie, .. }) => cookie,
            other => panic!("{other:?}"),
        }
    }

    fn register(&mut self, from: &str, token: [u8; 16]) -> IntroKey {
        let cookie = self.cookie(from);
        match self.send(from, register(cookie, token)).0 {
            Some(Message::Registered {
                intro_key,
                observed,
                keepalive_secs,
                ..
            }) => {
                assert_eq!(observed, from.parse::<SocketAddr>().unwrap());
                assert_eq!(keepalive_secs, 25);
                intro_key
            }
            other => panic!("{other:?}"),
        }
    }
}

/// The address key pair of test user `seed`.
fn signing(seed: [u8; 16]) -> ed25519_dalek::SigningKey {
    let mut s = [0u8; 32];
    s[..16].copy_from_slice(&seed);
    ed25519_dalek::SigningKey::from_bytes(&s)
}

fn key_of(seed: [u8; 16]) -> AddrKey {
    AddrKey(signing(seed).verifying_key().to_bytes())
}

/// A registration of `seed`'s address, signed over `cookie`.
fn register(cookie: Cookie, seed: [u8; 16]) -> Message {
    let flags = Flags(Flags::METERED);
    let sig = signing(seed).sign(&wire::register_statement(&cookie, flags));
    Message::Register {
        tag: Tag([1; 4]),
        cookie,
        flags,
        key: key_of(seed),
        sig: Signature(sig.to_bytes()),
    }
}

/// An unregister of `seed`'s address, signed over `cookie`.
fn unregister(cookie: Cookie, seed: [u8; 16]) -> Message {
    let sig = signing(seed).sign(&wire::unregister_statement(&cookie));
    Message::Unregister {
        tag: Tag([0; 4]),
        cookie,
        key: key_of(seed),
        sig: Signature(sig.to_bytes()),
    }
}

fn lookup(cookie: Cookie, target: [u8; 16]) -> Message {
    Message::Lookup {
        tag: Tag([2; 4]),
        cookie,
        target: VirtualAddr(target),
        caller: VirtualAddr([0xca; 16]),
        hint: [0x5e; 16],
    }
}

fn addr_of(seed: [u8; 16]) -> [u8; 16] {
    VirtualAddr::from_key(&key_of(seed)).0
}

const ALICE: &str = "192.0.2.1:1000";
const BOB: &str = "198.51.100.2:2000";

#[test]
fn request_without_cookie_gets_only_a_cookie() {
    let mut p = Pair::new();
    let (reply, intro) = p.send(ALICE, register(Cookie([9; 8]), [1; 16]));
    assert!(matches!(reply, Some(Message::CookieReply { .. })));
    assert!(intro.is_none());
    assert!(p.shard.presence.is_empty());
}

#[test]
fn lookup_of_registered_target_says_online_and_introduces_the_caller() {
    let mut p = Pair::new();
    let key = p.register(ALICE, [1; 16]);
    let cookie = p.cookie(BOB);
    let (reply, intro) = p.send(BOB, lookup(cookie, addr_of([1; 16])));
    match reply {
        Some(Message::Online {
            endpoint, flags, ..
        }) => {
            assert_eq!(endpoint, ALICE.parse::<SocketAddr>().unwrap());
            assert!(flags.metered() && flags.introduced());
        }
        other => panic!("{other:?}"),
    }
    let (dst, intro) = intro.expect("introduction");
    assert_eq!(dst, ALICE.parse::<SocketAddr>().unwrap());
    let mut bytes = [0u8; MAX_MESSAGE_LEN];
    let n = intro.emit(&mut bytes);
    let (caller, endpoint, hint) =
        sky_proto::intro::verify_introduction(&[key], &bytes[..n]).unwrap();
    assert_eq!(caller, VirtualAddr([0xca; 16]));
    assert_eq!(endpoint, BOB.parse::<SocketAddr>().unwrap());
    // The caller's sealed hint is passed on as it came, unread.
    assert_eq!(hint, [0x5e; 16]);
    // 48 bytes to an IPv4 target: SPEC §3's introduction budget.
    assert_eq!(n, 48);
}

#[test]
fn a_check_is_answered_with_the_observed_endpoint_without_a_cookie() {
    let mut p = Pair::new();
    let check = Message::Check {
        tag: Tag([7; 4]),
        cookie: Cookie::default(),
        flags: 0,
    };
    let (reply, intro) = p.send(BOB, check);
    assert!(intro.is_none());
    match reply {
        Some(Message::Checked { tag, endpoint, .. }) => {
            assert_eq!(tag, Tag([7; 4]));
            assert_eq!(endpoint, BOB.parse::<SocketAddr>().unwrap());
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn lookup_of_expired_target_says_offline() {
    let mut p = Pair::new();
    p.register(ALICE, [1; 16]);
    p.now += Duration::from_secs(75);
    let cookie = p.cookie(BOB);
    let (reply, intro) = p.send(BOB, lookup(cookie, addr_of([1; 16])));
    assert!(matches!(reply, Some(Message::Offline { .. })));
    assert!(intro.is_none());
}

#[test]
fn keepalive_is_silent_and_extends_presence() {
    let mut p = Pair::new();
    p.register(ALICE, [1; 16]);
    let cookie = p.cookie(ALICE);
    for _ in 0..4 {
        p.now += Duration::from_secs(25);
        let ka = Message::Keepalive {
            ring: 0,
            tag: Tag([0; 4]),
            cookie,
            address: VirtualAddr(addr_of([1; 16])),
        };
        assert_eq!(p.send(ALICE, ka), (None, None));
    }
    let cookie = p.cookie(BOB);
    let (reply, _) = p.send(BOB, lookup(cookie, addr_of([1; 16])));
    assert!(matches!(reply, Some(Message::Online { .. })));
}

#[test]
fn keepalive_after_nat_rebinding_asks_to_register_again() {
    let mut p = Pair::new();
    p.register(ALICE, [1; 16]);
    let moved = "192.0.2.1:1001";
    let cookie = p.cookie(moved);
    let ka = Message::Keepalive {
        ring: 0,
        tag: Tag([5; 4]),
        cookie,
        address: VirtualAddr(addr_of([1; 16])),
    };
    assert_eq!(
        p.send(moved, ka).0,
        Some(Message::NotRegistered { tag: Tag([5; 4]) })
    );
}

#[test]
fn unregister_makes_the_address_offline() {
    let mut p = Pair::new();
    p.register(ALICE, [1; 16]);
    let cookie = p.cookie(ALICE);
    assert_eq!(p.send(ALICE, unregister(cookie, [1; 16])), (None, None));
    let cookie = p.cookie(BOB);
    let (reply, _) = p.send(BOB, lookup(cookie, addr_of([1; 16])));
    assert!(matches!(reply, Some(Message::Offline { .. })));
}

#[test]
fn introductions_beyond_the_rate_limit_are_not_sent() {
    let mut p = Pair::new();
    p.register(ALICE, [1; 16]);
    let cookie = p.cookie(BOB);
    let mut introduced = 0;
    for _ in 0..20 {
        let (reply, intro) = p.send(BOB, lookup(cookie, addr_of([1; 16])));
        introduced += usize::from(intro.is_some());
        match reply {
            Some(Message::Online { flags, .. }) => {
                assert_eq!(flags.introduced(), intro.is_some())
            }
            other => panic!("{other:?}"),
        }
    }
    // One caller gets its share of the target's 5 a second.
    assert_eq!(introduced, 2);
    assert_eq!(p.shard.take_stats().intros_rate_limited, 18);
    // Callers from four more places share the rest: 3 more, then none.
    let mut more = 0;
    for i in 1..=4 {
        let from = format!("198.51.100.{}:2000", 10 + i);
        let cookie = p.cookie(&from);
        let (_, intro) = p.send(&from, lookup(cookie, addr_of([1; 16])));
        let (_, again) = p.send(&from, lookup(cookie, addr_of([1; 16])));
        more += usize::from(intro.is_some()) + usize::from(again.is_some());
    }
    assert_eq!(more, 3, "the target's allowance caps them all");
}

/// Names `msg`'s lines ahead, both stages, as an engine does a few
/// datagrams before handling it.
fn name_ahead(p: &mut Pair, from: &str, msg: &Message) {
    let mut buf = [0u8; BUF];
    let len = msg.emit(&mut buf);
    for ahead in [Ahead::First, Ahead::Second] {
        p.shard
            .lines_ahead(&buf[..len], from.parse().unwrap(), ahead);
    }
}

/// The table hashes a shard keeps from naming lines ahead, for the
/// handling, are used only for their own address and caller: addresses
/// that share an entry, named in any order, are each answered from their
/// own entry, and a caller's introductions come from its own allowance.
#[test]
fn places_kept_from_naming_ahead_answer_only_their_own_address_and_caller() {
    let mut p = Pair::new();
    let entry = |seed: [u8; 16]| usize::from(addr_of(seed)[0]) % PLACES;
    let seeds: Vec<[u8; 16]> = (0..=255u8)
        .map(|i| [i; 16])
        .filter(|&s| entry(s) == entry([0; 16]))
        .take(3)
        .collect();
    assert_eq!(seeds.len(), 3, "three addresses that share an entry");
    const CAROL: &str = "192.0.2.7:7000";
    p.register(ALICE, seeds[0]);
    p.register(CAROL, seeds[1]);
    let cookie = p.cookie(BOB);
    let lookups: Vec<Message> = [0, 1, 2, 0, 1, 2]
        .iter()
        .map(|&i| lookup(cookie, addr_of(seeds[i])))
        .collect();
    // All named before any is handled: each naming evicts the one before.
    for m in &lookups {
        name_ahead(&mut p, BOB, m);
    }
    let expected = [Some(ALICE), Some(CAROL), None];
    for (i, m) in lookups.iter().enumerate() {
        match (p.send(BOB, *m).0, expected[i % 3]) {
            (Some(Message::Online { endpoint, .. }), Some(at)) => {
                assert_eq!(endpoint, at.parse::<SocketAddr>().unwrap(), "lookup {i}")
            }
            (Some(Message::Offline { .. }), None) => {}
            (other, want) => panic!("lookup {i}: {other:?}, expected {want:?}"),
        }
    }
    // Another caller's lookups of ALICE, named as BOB's: EVE spends her
    // own allowance (2), and BOB's for ALICE is untouched by it.
    const EVE: &str = "203.0.113.5:5000";
    let fresh = lookup(cookie, addr_of(seeds[0]));
    p.now += Duration::from_secs(1);
    let eve = p.cookie(EVE);
    let from_eve = lookup(eve, addr_of(seeds[0]));
    let introduced = |p: &mut Pair, from: &str, m: &Message| {
        name_ahead(p, BOB, &fresh);
        usize::from(p.send(from, *m).1.is_some())
    };
    let eves: usize = (0..3).map(|_| introduced(&mut p, EVE, &from_eve)).sum();
    let bobs: usize = (0..3).map(|_| introduced(&mut p, BOB, &fresh)).sum();
    assert_eq!((eves, bobs), (2, 2));
}

#[test]
fn every_reply_before_a_valid_cookie_is_no_larger_than_the_request() {
    let mut p = Pair::new();
    let cookie = Cookie([0xee; 8]);
    let tag = Tag([0; 4]);
    for msg in [
        Message::Ping { tag, cookie },
        register(cookie, [1; 16]),
        Message::Keepalive {
            ring: 0,
            tag,
            cookie,
            address: VirtualAddr([1; 16]),
        },
        lookup(cookie, [1; 16]),
        unregister(cookie, [1; 16]),
    ] {
        let mut buf = [0u8; BUF];
        let len = msg.emit(&mut buf);
        let mut reply = [0u8; MAX_MESSAGE_LEN];
        let out = p
            .shard
            .handle_datagram(p.now, ALICE.parse().unwrap(), &mut buf, len, &mut reply);
        assert!(out.in_place.is_none());
        assert!(out.reply.unwrap_or(0) <= len, "{msg:?}");
    }
}

#[test]
fn every_drop_is_counted_by_reason() {
    let mut p = Pair::new();
    let mut buf = [0u8; BUF];
    let cases: [(&[u8], DropReason); 5] = [
        (&[], DropReason::Truncated),
        (&[9, 1], DropReason::BadVersion),
        (&[1, 0x77], DropReason::UnknownKind),
        (
            &[1, 0x01, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            DropReason::BadLength,
        ),
        (&[1, 0x81, 0, 0, 0, 0], DropReason::NotARequest),
    ];
    for (bytes, _) in cases {
        buf[..bytes.len()].copy_from_slice(bytes);
        assert_eq!(p.send_bytes(ALICE, &mut buf, bytes.len()), (None, None));
    }
    assert_eq!(p.send_bytes(ALICE, &mut buf, 1500), (None, None));
    let stats = p.shard.take_stats();
    for (_, reason) in cases {
        assert_eq!(stats.dropped[reason as usize], 1, "{reason:?}");
    }
    assert_eq!(stats.dropped[DropReason::Oversized as usize], 1);
    assert_eq!(stats.received[RecvKind::Invalid as usize], 6);
}

/// Where a lookup from a third place says `seed`'s address is.
fn online_at(p: &mut Pair, seed: [u8; 16]) -> Option<SocketAddr> {
    let from = "203.0.113.77:7777";
    let cookie = p.cookie(from);
    match p.send(from, lookup(cookie, addr_of(seed))).0 {
        Some(Message::Online { endpoint, .. }) => Some(endpoint),
        _ => None,
    }
}

fn refused(reply: Option<Message>) -> Option<u8> {
    match reply {
        Some(Message::Refused { reason, .. }) => Some(reason),
        _ => None,
    }
}

const MALLORY: &str = "203.0.113.66:6666";

#[test]
fn a_captured_registration_moves_nothing_from_another_endpoint_or_node_or_later() {
    let mut p = Pair::new();
    let cookie = p.cookie(ALICE);
    let captured = register(cookie, [1; 16]);
    assert!(matches!(
        p.send(ALICE, captured).0,
        Some(Message::Registered { .. })
    ));
    // Replayed as is from elsewhere: the cookie is Alice's, so only a
    // cookie comes back.
    assert!(matches!(
        p.send(MALLORY, captured).0,
        Some(Message::CookieReply { .. })
    ));
    // With Mallory's own cookie the signature no longer verifies.
    let Message::Register {
        key, sig, flags, ..
    } = captured
    else {
        unreachable!()
    };
    let mine = p.cookie(MALLORY);
    let moved = Message::Register {
        tag: Tag([9; 4]),
        cookie: mine,
        flags,
        key,
        sig,
    };
    assert_eq!(refused(p.send(MALLORY, moved).0), Some(5), "forged");
    assert_eq!(online_at(&mut p, [1; 16]), Some(ALICE.parse().unwrap()));
    // Nor can it unregister with what it saw.
    let un = unregister(cookie, [1; 16]);
    assert!(matches!(
        p.send(MALLORY, un).0,
        Some(Message::CookieReply { .. })
    ));
    let Message::Unregister { key, sig, .. } = un else {
        unreachable!()
    };
    let replayed = Message::Unregister {
        tag: Tag([0; 4]),
        cookie: mine,
        key,
        sig,
    };
    assert_eq!(p.send(MALLORY, replayed), (None, None));
    assert_eq!(online_at(&mut p, [1; 16]), Some(ALICE.parse().unwrap()));
    assert_eq!(
        p.shard.take_stats().dropped[DropReason::Unproven as usize],
        1,
        "the replay with another's cookie; the first got a cookie"
    );
    // At another node (another secret), the same.
    let mut other = Pair {
        shard: Shard::new(
            Arc::new(NodeSecret::new([4; 32])),
            Arc::new(Presence::new(1000)),
            ShardConfig::default(),
            MonoTime::ZERO,
        ),
        now: MonoTime::from_secs(1),
    };
    assert!(matches!(
        other.send(MALLORY, captured).0,
        Some(Message::CookieReply { .. })
    ));
    let theirs = other.cookie(MALLORY);
    let elsewhere = Message::Register {
        tag: Tag([9; 4]),
        cookie: theirs,
        flags,
        key,
        sig,
    };
    assert_eq!(refused(other.send(MALLORY, elsewhere).0), Some(5));
    assert_eq!(online_at(&mut other, [1; 16]), None);
    // Later: once the entry has expired and the cookie with it, the very
    // datagram from Alice's own endpoint earns only a fresh cookie.
    p.now = MonoTime::from_secs(1 + 11 * 60);
    assert!(matches!(
        p.send(ALICE, captured).0,
        Some(Message::CookieReply { .. })
    ));
    assert_eq!(online_at(&mut p, [1; 16]), None);
}

#[test]
fn a_refresh_where_the_address_is_needs_no_check_and_a_move_does() {
    let mut p = Pair::new();
    p.register(ALICE, [1; 16]);
    let cookie = p.cookie(ALICE);
    let Message::Register { key, flags, .. } = register(cookie, [1; 16]) else {
        unreachable!()
    };
    // Far more re-registrations than the checks a source may spend in a
    // second, from where the address is: no check, all registered.
    let unsigned = |cookie| Message::Register {
        tag: Tag([3; 4]),
        cookie,
        flags,
        key,
        sig: Signature([0; 64]),
    };
    for _ in 0..3 * proof::CHECKS_PER_SOURCE {
        assert!(matches!(
            p.send(ALICE, unsigned(cookie)).0,
            Some(Message::Registered { .. })
        ));
    }
    // A move to Alice's new endpoint needs her signature, and gets it.
    let rebound = "192.0.2.1:1001";
    let cookie = p.cookie(rebound);
    assert_eq!(refused(p.send(rebound, unsigned(cookie)).0), Some(5));
    assert!(matches!(
        p.send(rebound, register(cookie, [1; 16])).0,
        Some(Message::Registered { .. })
    ));
    assert_eq!(online_at(&mut p, [1; 16]), Some(rebound.parse().unwrap()));
    let stats = p.shard.take_stats();
    assert_eq!(stats.refused[Refused::Forged as usize - 1], 1);
}

#[test]
fn a_flood_of_bogus_proofs_spends_only_its_sources_checks() {
    let mut p = Pair::new();
    let cookie = p.cookie(MALLORY);
    let mut reasons = [0usize; 6];
    for i in 0..200u32 {
        let mut seed = [7u8; 16];
        seed[..4].copy_from_slice(&i.to_be_bytes());
        let Message::Register { key, flags, .. } = register(cookie, seed) else {
            unreachable!()
        };
        let bogus = Message::Register {
            tag: Tag([5; 4]),
            cookie,
            flags,
            key,
            sig: Signature([0x42; 64]),
        };
        let reason = refused(p.send(MALLORY, bogus).0).expect("refused, said");
        reasons[reason as usize] += 1;
    }
    let checks = usize::from(proof::CHECKS_PER_SOURCE);
    assert_eq!(reasons[5], checks, "checked, forged");
    assert_eq!(reasons[4], 200 - checks, "not checked: over budget");
    // Another source is checked as ever; the next second Mallory is too.
    p.register(ALICE, [1; 16]);
    p.now = MonoTime::from_secs(2);
    let again = register(cookie, [8; 16]);
    assert!(matches!(
        p.send(MALLORY, again).0,
        Some(Message::Registered { .. })
    ));
}

mod dht {
    use super::*;
    use crate::snapshot;
    use sky_proto::ring::{Ring, RingConfig};

    fn slash32() -> RingConfig {
        RingConfig {
            prefix_v4: 32,
            ..RingConfig::default()
        }
    }

    fn node(n: u8) -> SocketAddr {
        SocketAddr::new([127, 0, 0, n].into(), 7700)
    }

    /// A shard of node 1 in a ring of nodes 1..=5.
    fn member() -> (Pair, SharedRing, Ring) {
        let view = Ring::new(slash32(), (1..=5).map(node));
        let shared = snapshot::shared(view.clone());
        let mut p = Pair::new();
        p.shard = std::mem::replace(
            &mut p.shard,
            Shard::new(
                Arc::new(NodeSecret::new([0; 32])),
                Arc::new(Presence::new(1)),
                ShardConfig::default(),
                MonoTime::ZERO,
            ),
        )
        .with_ring(shared.clone(), node(1));
        (p, shared, view)
    }

    /// A test seed whose address node 1 owns (`true`) or not.
    fn token(view: &Ring, owned: bool) -> [u8; 16] {
        (0..=255u8)
            .map(|i| [i; 16])
            .find(|t| view.is_owner(node(1), &VirtualAddr(addr_of(*t))) == owned)
            .expect("some seed")
    }

    #[test]
    fn registration_and_lookup_of_an_address_not_owned_say_not_owner() {
        let (mut p, _, view) = member();
        let foreign = token(&view, false);
        let cookie = p.cookie(ALICE);
        let first_owner = view.owners(&VirtualAddr(addr_of(foreign))).first().unwrap();
        let expected = Message::NotOwner {
            tag: Tag([1; 4]),
            version: view.version(),
            hint: first_owner,
        };
        assert_eq!(p.send(ALICE, register(cookie, foreign)).0, Some(expected));
        assert!(p.shard.presence.is_empty());
        let (reply, _) = p.send(ALICE, lookup(cookie, addr_of(foreign)));
        assert!(matches!(reply, Some(Message::NotOwner { hint, .. }) if hint == first_owner));
        // An owned address registers and an owned miss is "offline".
        p.register(BOB, token(&view, true));
        let (reply, _) = p.send(ALICE, lookup(cookie, addr_of(token(&view, true))));
        assert!(matches!(reply, Some(Message::Online { .. })));
        let mut unknown = [0u8; 16];
        for i in 0..=255u8 {
            unknown = [i; 16];
            if view.is_owner(node(1), &VirtualAddr(unknown)) {
                break;
            }
        }
        let (reply, _) = p.send(ALICE, lookup(cookie, unknown));
        assert!(matches!(reply, Some(Message::Offline { .. })));
    }

    #[test]
    fn entries_kept_through_a_ring_change_are_still_answered() {
        let (mut p, shared, view) = member();
        let t = token(&view, true);
        p.register(BOB, t);
        // Node 1 leaves every address to the others...
        shared.store(Arc::new(Ring::new(slash32(), (2..=5).map(node))));
        let cookie = p.cookie(ALICE);
        // ...but until the handoff sweep the entry is answered.
        let (reply, _) = p.send(ALICE, lookup(cookie, addr_of(t)));
        assert!(matches!(reply, Some(Message::Online { .. })));
    }

    #[test]
    fn a_keepalive_with_another_ring_version_is_told_and_otherwise_silent() {
        let (mut p, shared, view) = member();
        let t = token(&view, true);
        p.register(BOB, t);
        let cookie = p.cookie(BOB);
        let ka = |ring| Message::Keepalive {
            tag: Tag([4; 4]),
            cookie,
            address: VirtualAddr(addr_of(t)),
            ring,
        };
        assert_eq!(p.send(BOB, ka(view.version())), (None, None));
        assert_eq!(p.send(BOB, ka(0)), (None, None), "0: no ring known");
        let newer = Ring::new(slash32(), (1..=6).map(node));
        shared.store(Arc::new(newer.clone()));
        let (reply, _) = p.send(BOB, ka(view.version()));
        assert_eq!(
            reply,
            Some(Message::RingChanged {
                tag: Tag([4; 4]),
                version: newer.version()
            })
        );
        assert_eq!(p.send(BOB, ka(newer.version())), (None, None));
    }

    #[test]
    fn members_pages_are_never_larger_than_their_request_and_cover_the_ring() {
        let many = Ring::new(slash32(), (1..=200).map(node));
        let (mut p, shared, _) = member();
        shared.store(Arc::new(many.clone()));
        let cookie = p.cookie(ALICE);
        for pad in [18u16, 24, 25, 30, 100, 1232] {
            let mut got = Vec::new();
            let mut start = 0u16;
            let mut rounds = 0;
            loop {
                let req = Message::Members {
                    tag: Tag([6; 4]),
                    cookie,
                    start,
                    len: pad,
                };
                let mut buf = [0u8; BUF];
                let len = req.emit(&mut buf);
                let mut reply = [0u8; MAX_MESSAGE_LEN];
                let out = p.shard.handle_datagram(
                    p.now,
                    ALICE.parse().unwrap(),
                    &mut buf,
                    len,
                    &mut reply,
                );
                assert_eq!(out.reply, None);
                let t = out.in_place.expect("a page");
                assert_eq!(t.dst, ALICE.parse::<SocketAddr>().unwrap());
                assert!(t.len <= len, "page {} > request {len}", t.len);
                let page = wire::Packet::new_checked(&buf[..t.len]).unwrap();
                let Message::MembersPage {
                    version,
                    total,
                    start: s,
                    config,
                    ..
                } = Message::parse(&page)
                else {
                    panic!("not a page");
                };
                assert_eq!(
                    (version, total, s, config),
                    (many.version(), 200, start, slash32())
                );
                let entries: Vec<SocketAddr> = page.page_entries().collect();
                if entries.is_empty() {
                    break;
                }
                start += entries.len() as u16;
                got.extend(entries);
                rounds += 1;
                assert!(rounds < 1000);
            }
            if pad >= 18 + 7 {
                let expected: Vec<SocketAddr> = many.members().iter().map(|m| m.endpoint).collect();
                assert_eq!(got, expected, "pad {pad}");
            } else {
                assert!(got.is_empty(), "no room for an entry in {pad} bytes");
            }
        }
    }

    #[test]
    fn members_need_a_cookie() {
        let (mut p, _, _) = member();
        let req = Message::Members {
            tag: Tag([6; 4]),
            cookie: Cookie::default(),
            start: 0,
            len: 1232,
        };
        let (reply, page) = p.send(ALICE, req);
        assert!(matches!(reply, Some(Message::CookieReply { .. })));
        assert!(page.is_none());
    }
}
