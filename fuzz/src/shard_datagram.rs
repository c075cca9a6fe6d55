//! `shard_datagram`: a real `Shard` fed arbitrary datagrams from arbitrary
//! sources on virtual time.
//!
//! Setup byte: bit 0 makes the shard a member of a five-node ring (bit 2:
//! a node that is not in its own ring), bit 1 a presence table of two
//! entries (so it fills). Then records: a source byte (one of seven fixed
//! endpoints — IPv4, IPv6, an IPv4-mapped form of the first, unspecified
//! ones — or an arbitrary one read from the input), a time step byte, a
//! flags byte (bit 0: write the source's valid cookie into the request,
//! so the fuzzer gets past the cookie check; bit 1: a buffer exactly as
//! long as the datagram instead of the engine's 2048 bytes; bit 2: call
//! `handle_timeout` first; bit 3: in a `register` or `unregister` of its
//! length, read the key field as the seed of a key pair and write that
//! pair's public key and its signature of the statement, cookie and flags
//! as they stand after bit 0, so the fuzzer gets past the signature
//! check), and the datagram.
//!
//! For every datagram:
//! - **never a reflector**: without a valid cookie for its source, the
//!   reply is no longer than the request and nothing is sent in place;
//! - a reply fits the reply buffer and decodes as a reply kind; a
//!   `registered` reply names the source;
//! - an in-place transmit fits the buffer and decodes: a members page
//!   goes to the source and is no longer than its request; an
//!   introduction goes to an endpoint that registered (with a cookie),
//!   and names the source as the caller's endpoint. Nothing else is sent.
//! - the lines the shard names for an engine to prefetch lie in its
//!   presence table (or are the caller's introduction counter), and none
//!   are named for a datagram that is not a well-formed lookup or
//!   keepalive.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;

use sky_node::keys::{CookieJar, NodeSecret};
use sky_node::presence::Presence;
use sky_node::probe::AddrSecret;
use sky_node::shard::{Ahead, Core, Shard, ShardConfig};
use sky_node::snapshot;
use sky_proto::ring::{Ring, RingConfig};
use sky_proto::time::MonoTime;
use sky_proto::wire::{self, Cookie, MAX_DATAGRAM_LEN, MAX_MESSAGE_LEN, Message};

use crate::{Input, endpoint, step};

/// The node's secret (the harness computes the same cookies).
pub const SECRET: [u8; 32] = [3; 32];

/// The engine's receive buffer.
const BUF: usize = 2048;

/// Sources 0..7; 7 reads an endpoint from the input.
pub const SOURCES: [&str; 7] = [
    "192.0.2.1:1000",
    "198.51.100.2:2000",
    "[2001:db8::1]:3000",
    "[::ffff:192.0.2.1]:1000",
    "0.0.0.0:0",
    "[::]:0",
    "203.0.113.7:65535",
];

/// Ring member `n`.
pub fn member(n: u8) -> SocketAddr {
    SocketAddr::new([10, 0, 0, n].into(), 7700)
}

pub fn run(data: &[u8]) {
    let mut input = Input::new(data);
    let setup = input.u8();
    let secret = Arc::new(NodeSecret::new(SECRET));
    let presence = Arc::new(Presence::new(if setup & 2 != 0 { 2 } else { 1000 }));
    let mut now = MonoTime::from_secs(1);
    let (table_start, table_len) = presence.memory();
    let in_table = |line: *const u8| {
        (table_start as usize..table_start as usize + table_len).contains(&(line as usize))
    };
    let mut shard = Shard::new(secret, presence, ShardConfig::default(), MonoTime::ZERO);
    if setup & 1 != 0 {
        let config = RingConfig {
            prefix_v4: 32,
            ..RingConfig::default()
        };
        let ring = snapshot::shared(Ring::new(config, (1..=5).map(member)));
        let me = if setup & 4 != 0 { member(9) } else { member(1) };
        shard = shard.with_ring(ring, me);
    }
    let harness_secret = NodeSecret::new(SECRET);
    let mut jar = CookieJar::new(&harness_secret, MonoTime::ZERO);
    let mut registered: HashSet<SocketAddr> = HashSet::new();

    while !input.is_empty() {
        let source = input.u8() % 8;
        let from: SocketAddr = match SOURCES.get(usize::from(source)) {
            Some(s) => s.parse().expect("fixed endpoint"),
            None => endpoint(&mut input),
        };
        now += step(input.u8());
        let flags = input.u8();
        let datagram = input.chunk();

        jar.rotate(&harness_secret, now);
        if flags & 4 != 0 {
            shard.handle_timeout(now);
        }
        let buf_len = if flags & 2 != 0 {
            datagram.len().max(MAX_MESSAGE_LEN)
        } else {
            BUF
        };
        let mut buf = vec![0u8; buf_len];
        let copied = datagram.len().min(buf_len);
        buf[..copied].copy_from_slice(&datagram[..copied]);
        let len = copied;
        if flags & 1 != 0 && len >= 14 {
            let cookie = jar.issue(&from);
            buf[6..14].copy_from_slice(&cookie.0);
        }
        if flags & 8 != 0 {
            sign(&mut buf[..len]);
        }
        let cookie_ok = len >= 14 && jar.check(&from, &Cookie(buf[6..14].try_into().unwrap()));
        let request = buf[..len].to_vec();
        let canonical_from = wire::canonical(from);

        // What an engine prefetches for it: table lines only (and the
        // caller's counter, First's third), nothing for other kinds.
        let first = shard.lines_ahead(&buf[..len], from, Ahead::First);
        let second = shard.lines_ahead(&buf[..len], from, Ahead::Second);
        if wire::named_address(&buf[..len]).is_none() {
            assert!(first.iter().chain(&second).all(|l| l.is_null()));
        }
        assert!(
            first[..2]
                .iter()
                .chain(&second)
                .all(|&l| l.is_null() || in_table(l))
        );

        let mut reply = [0u8; MAX_MESSAGE_LEN];
        let out = shard.handle_datagram(now, from, &mut buf, datagram.len(), &mut reply);

        if !cookie_ok {
            if let Some(n) = out.reply {
                assert!(
                    n <= len,
                    "{n}-byte reply to a {len}-byte request without cookie"
                );
            }
            assert_eq!(out.in_place, None, "in-place send without a cookie");
        }
        let decoded_request = Message::decode(&request).ok();
        if let Some(n) = out.reply {
            assert!(n <= MAX_MESSAGE_LEN);
            let msg = Message::decode(&reply[..n]).expect("a reply decodes");
            assert!(!msg.kind().is_request(), "the shard sent a request");
            assert_eq!(
                msg.tag(),
                decoded_request.and_then(|m| m.tag()),
                "tag not echoed"
            );
            if let Message::Registered { observed, .. } = msg {
                assert_eq!(observed, canonical_from);
                registered.insert(canonical_from);
            }
            if let Message::Online { flags, .. } = msg {
                assert_eq!(
                    out.in_place.is_some(),
                    flags.introduced(),
                    "online says introduced exactly when an introduction goes out"
                );
            }
        }
        if let Some(t) = out.in_place {
            assert!(t.len <= buf_len, "in-place transmit over the buffer");
            assert!(t.len <= MAX_DATAGRAM_LEN);
            match Message::decode(&buf[..t.len]).expect("an in-place transmit decodes") {
                Message::MembersPage { .. } => {
                    assert_eq!(t.dst, canonical_from, "a members page to a third party");
                    assert!(t.len <= len, "page of {} bytes for {len}", t.len);
                }
                Message::Introduction { endpoint, .. } => {
                    assert!(registered.contains(&t.dst), "introduction to {}", t.dst);
                    assert_eq!(endpoint, canonical_from);
                    assert!(matches!(
                        out.reply.map(|n| Message::decode(&reply[..n])),
                        Some(Ok(Message::Online { .. }))
                    ));
                }
                other => panic!("in-place {:?}", other.kind()),
            }
        }
    }
}

/// Signs a `register` or `unregister` in place with the key pair whose seed
/// its key field holds (flags bit 3); anything else is left as it is.
pub fn sign(datagram: &mut [u8]) {
    let signed = match Message::decode(datagram) {
        Ok(Message::Register {
            tag,
            cookie,
            flags,
            key,
            ..
        }) => AddrSecret::from_seed(key.0).register(tag, cookie, flags),
        Ok(Message::Unregister {
            tag, cookie, key, ..
        }) => AddrSecret::from_seed(key.0).unregister(tag, cookie),
        _ => return,
    };
    let n = signed.emit(datagram);
    debug_assert_eq!(n, datagram.len());
}
