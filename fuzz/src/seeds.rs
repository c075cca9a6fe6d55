//! Seed inputs for every target, made with the real encoders (so they
//! follow the code when the wire format changes): every sky message kind,
//! a real handshake and sealed frames, a real invite, and short sessions
//! of the shard, the earth client and gossip.
//!
//! `cargo run --example seed_corpus` writes them to `corpus/<target>/`;
//! the `checked_in_corpus_is_current` test says when that is needed.

use std::net::SocketAddr;

use sky_earth::invite::Invite;
use sky_node::gossip::{Gossip, GossipConfig, NodeId};
use sky_node::probe::AddrSecret;
use sky_proto::ring::RingConfig;
use sky_proto::time::MonoTime;
use sky_proto::wire::{
    AddrKey, Cookie, Flags, IntroKey, MAX_DATAGRAM_LEN, Mac, Message, Signature, Tag, VirtualAddr,
    emit_members_page,
};

use crate::chunk;

/// The seeds of `target`: (file name, bytes).
pub fn for_target(target: &str) -> Vec<(String, Vec<u8>)> {
    let seeds = match target {
        "wire_decode" => wire_decode(),
        "members_page" => members_page(),
        "earth_frames" => earth_frames(),
        "invite_decode" => invite_decode(),
        "shard_datagram" => shard_datagram(),
        "earth_stranger" => earth_stranger(),
        "gossip_datagram" => gossip_datagram(),
        _ => Vec::new(),
    };
    seeds
        .into_iter()
        .map(|(name, bytes)| (format!("seed-{name}"), bytes))
        .collect()
}

const TAG: Tag = Tag([0xa1, 0xa2, 0xa3, 0xa4]);
const V4: &str = "203.0.113.5:4000";
const V6: &str = "[2001:db8::5]:4000";

fn ep(s: &str) -> SocketAddr {
    s.parse().expect("fixed endpoint")
}

/// One message of every kind (endpoint kinds with IPv4 and IPv6), named.
pub fn every_message() -> Vec<(String, Message)> {
    let cookie = Cookie([0xc0; 8]);
    let a = VirtualAddr([0x11; 16]);
    let mut out = vec![
        ("ping", Message::Ping { tag: TAG, cookie }),
        (
            "register",
            Message::Register {
                tag: TAG,
                cookie,
                flags: Flags(Flags::METERED),
                key: AddrKey([0x22; 32]),
                sig: Signature([0x66; 64]),
            },
        ),
        (
            "keepalive",
            Message::Keepalive {
                tag: TAG,
                cookie,
                address: a,
                ring: 7,
            },
        ),
        (
            "lookup",
            Message::Lookup {
                tag: TAG,
                cookie,
                target: a,
                caller: VirtualAddr([0x33; 16]),
                hint: [0x44; 16],
            },
        ),
        (
            "unregister",
            Message::Unregister {
                tag: TAG,
                cookie,
                key: AddrKey([0x22; 32]),
                sig: Signature([0x66; 64]),
            },
        ),
        (
            "members",
            Message::Members {
                tag: TAG,
                cookie,
                start: 0,
                len: 64,
            },
        ),
        ("pong", Message::Pong { tag: TAG }),
        ("cookie", Message::CookieReply { tag: TAG, cookie }),
        ("not-registered", Message::NotRegistered { tag: TAG }),
        ("offline", Message::Offline { tag: TAG }),
        (
            "ring-changed",
            Message::RingChanged {
                tag: TAG,
                version: 0xdead_beef,
            },
        ),
    ]
    .into_iter()
    .map(|(n, m)| (n.to_string(), m))
    .collect::<Vec<_>>();
    for (family, e) in [("v4", ep(V4)), ("v6", ep(V6))] {
        out.push((
            format!("registered-{family}"),
            Message::Registered {
                tag: TAG,
                keepalive_secs: 25,
                intro_key: IntroKey([0x44; 32]),
                observed: e,
            },
        ));
        out.push((
            format!("online-{family}"),
            Message::Online {
                tag: TAG,
                flags: Flags(Flags::METERED),
                endpoint: e,
            },
        ));
        out.push((
            format!("introduction-{family}"),
            Message::Introduction {
                caller: VirtualAddr([0x33; 16]),
                mac: Mac([0x55; 8]),
                hint: [0x44; 16],
                endpoint: e,
            },
        ));
        out.push((
            format!("not-owner-{family}"),
            Message::NotOwner {
                tag: TAG,
                version: 7,
                hint: e,
            },
        ));
    }
    out
}

fn emit(msg: &Message) -> Vec<u8> {
    let mut buf = vec![0u8; MAX_DATAGRAM_LEN];
    let n = msg.emit(&mut buf);
    buf.truncate(n);
    buf
}

fn page_header(total: u16, start: u16) -> Message {
    Message::MembersPage {
        tag: TAG,
        version: 0x0102_0304,
        config: RingConfig::default(),
        total,
        start,
    }
}

/// A members page listing `entries`.
fn page(tag: Tag, version: u32, config: RingConfig, entries: &[SocketAddr]) -> Vec<u8> {
    let header = Message::MembersPage {
        tag,
        version,
        config,
        total: entries.len() as u16,
        start: 0,
    };
    let mut buf = vec![0u8; MAX_DATAGRAM_LEN];
    let (n, count) = emit_members_page(&mut buf, MAX_DATAGRAM_LEN, header, entries.iter().copied());
    assert_eq!(count, entries.len());
    buf.truncate(n);
    buf
}

fn wire_decode() -> Vec<(String, Vec<u8>)> {
    let mut out: Vec<_> = every_message()
        .into_iter()
        .map(|(n, m)| (n, emit(&m)))
        .collect();
    let entries = [ep(V4), ep(V6), ep("198.51.100.9:7700")];
    out.push((
        "members-page".into(),
        page(TAG, 9, RingConfig::default(), &entries),
    ));
    out.push(("members-page-empty".into(), emit(&page_header(0, 0))));
    out
}

fn members_page() -> Vec<(String, Vec<u8>)> {
    let emit_mode = |limit: u16, entries: &[&str]| {
        let mut b = vec![0u8];
        b.extend_from_slice(&TAG.0);
        b.extend_from_slice(&9u32.to_be_bytes());
        b.extend_from_slice(&[2, 24, 48, 16]);
        b.extend_from_slice(&(entries.len() as u16).to_be_bytes());
        b.extend_from_slice(&0u16.to_be_bytes());
        b.extend_from_slice(&limit.to_be_bytes());
        b.extend_from_slice(&2048u16.to_be_bytes());
        for e in entries {
            match ep(e) {
                SocketAddr::V4(v4) => {
                    b.push(0);
                    b.extend_from_slice(&v4.ip().octets());
                    b.extend_from_slice(&v4.port().to_be_bytes());
                }
                SocketAddr::V6(v6) => {
                    b.push(1);
                    b.extend_from_slice(&v6.ip().octets());
                    b.extend_from_slice(&v6.port().to_be_bytes());
                }
            }
        }
        b
    };
    let all = [V4, V6, "[::ffff:192.0.2.7]:7700", "10.0.0.1:7700"];
    let mut out = vec![
        ("emit-fits".to_string(), emit_mode(1232, &all)),
        ("emit-cut".to_string(), emit_mode(40, &all)),
        ("emit-header-only".to_string(), emit_mode(10, &all[..1])),
    ];
    let body = page(TAG, 9, RingConfig::default(), &[ep(V4), ep(V6)]);
    let mut decode = vec![1u8];
    decode.extend_from_slice(&body[2..]);
    out.push(("decode".into(), decode));
    out
}

fn earth_frames() -> Vec<(String, Vec<u8>)> {
    let f = crate::earth_frames::fixed();
    let mode0 = |bytes: &[u8]| [&[0u8][..], bytes].concat();
    let (mut alice, _) = crate::earth_frames::sessions();
    let mut data = vec![0u8; 5 + sky_proto::frame::DATA_OVERHEAD];
    alice.seal(b"hello", &mut data);

    // A session: seal three, deliver 2, 1, 2 again (replayed), 3 with a
    // flipped bit, then arbitrary bytes.
    let mut ops = vec![1u8];
    for payload in [&b"one"[..], b"two", b"three"] {
        ops.push(0);
        ops.extend_from_slice(&(payload.len() as u16).to_be_bytes());
        ops.extend_from_slice(payload);
    }
    for i in [1u16, 0, 1] {
        ops.push(1);
        ops.extend_from_slice(&i.to_be_bytes());
    }
    ops.push(2);
    ops.extend_from_slice(&2u16.to_be_bytes());
    ops.extend_from_slice(&12u16.to_be_bytes());
    ops.push(3);
    ops.push(3);
    chunk(&mut ops, &data);
    vec![
        ("msg1".into(), mode0(&f.msg1)),
        ("msg2".into(), mode0(&f.msg2)),
        ("data".into(), mode0(&data)),
        ("punch".into(), mode0(&[sky_proto::frame::PUNCH])),
        ("session".into(), ops),
    ]
}

fn invite_decode() -> Vec<(String, Vec<u8>)> {
    let state = crate::earth_stranger::alice_state();
    let bob: Invite = {
        let friend = state.friends.0.get("bob").expect("bob");
        let mut chain = friend.chain.clone();
        let epoch = chain.origin();
        Invite {
            epoch,
            chain_key: chain.key_at(epoch).expect("origin key"),
            schedule: friend.schedule,
            keys: friend.keys.clone(),
        }
    };
    let text = bob.encode();
    vec![
        ("text".into(), [&[0u8][..], text.as_bytes()].concat()),
        (
            "text-spaces".into(),
            [&[0u8][..], format!("  {text}\n").as_bytes()].concat(),
        ),
        ("bytes".into(), [&[1u8][..], &bob.to_bytes()].concat()),
    ]
}

/// A shard record: source, step, flags, datagram.
fn shard_record(out: &mut Vec<u8>, source: u8, step: u8, flags: u8, msg: &Message) {
    out.extend_from_slice(&[source, step, flags]);
    chunk(out, &emit(msg));
}

fn shard_datagram() -> Vec<(String, Vec<u8>)> {
    let zero = Cookie::default();
    // The key field holds a seed: the sign flag (8) makes it a key pair
    // and signs (the harness, after writing the cookie).
    let register = |seed: u8| Message::Register {
        tag: TAG,
        cookie: zero,
        flags: Flags(Flags::METERED),
        key: AddrKey([seed; 32]),
        sig: Signature::default(),
    };
    let address = |seed: u8| AddrSecret::from_seed([seed; 32]).address();
    let lookup = |seed| Message::Lookup {
        tag: TAG,
        cookie: zero,
        target: address(seed),
        caller: VirtualAddr([0x33; 16]),
        hint: [0x44; 16],
    };
    let keepalive = |seed, ring| Message::Keepalive {
        tag: TAG,
        cookie: zero,
        address: address(seed),
        ring,
    };
    let members = Message::Members {
        tag: TAG,
        cookie: zero,
        start: 0,
        len: 200,
    };
    let with_cookie = 1;
    let signed = with_cookie | 8;

    // Standalone: register (cookie asked first, then given; unsigned, then
    // signed), refresh, keepalive, lookup from a second source
    // (introduction), a move to another source, members, unregister
    // (unsigned, then signed).
    let mut standalone = vec![0u8];
    shard_record(&mut standalone, 0, 1, 0, &register(1));
    shard_record(&mut standalone, 0, 1, with_cookie, &register(1));
    shard_record(&mut standalone, 0, 1, signed, &register(1));
    shard_record(&mut standalone, 0, 1, signed, &register(1));
    shard_record(&mut standalone, 0, 130, with_cookie, &keepalive(1, 0));
    shard_record(&mut standalone, 2, 1, with_cookie, &lookup(1));
    shard_record(&mut standalone, 1, 1, signed, &register(1));
    shard_record(&mut standalone, 1, 1, with_cookie, &members);
    let unregister = Message::Unregister {
        tag: TAG,
        cookie: zero,
        key: AddrKey([1; 32]),
        sig: Signature::default(),
    };
    shard_record(&mut standalone, 1, 1, with_cookie, &unregister);
    shard_record(&mut standalone, 1, 1, signed, &unregister);
    shard_record(
        &mut standalone,
        3,
        1,
        0,
        &Message::Ping {
            tag: TAG,
            cookie: zero,
        },
    );

    // A ring member: members page, registrations it owns or not, a
    // keepalive naming another ring version.
    let mut ring = vec![1u8];
    shard_record(&mut ring, 1, 1, with_cookie, &members);
    for t in 0..4u8 {
        shard_record(&mut ring, 0, 1, signed, &register(t));
        shard_record(&mut ring, 0, 1, with_cookie, &keepalive(t, 1));
        shard_record(&mut ring, 2, 1, with_cookie, &lookup(t));
    }

    // A full table, a tight buffer, garbage and a reply kind.
    let mut full = vec![2u8];
    for t in 0..3u8 {
        shard_record(&mut full, t, 1, signed | 2, &register(t));
    }
    shard_record(&mut full, 6, 1, 4, &Message::Pong { tag: TAG });
    full.extend_from_slice(&[7, 0, 0, 1]);
    full.extend_from_slice(&[192, 0, 2, 200, 0x1f, 0x90]);
    chunk(&mut full, &[1, 2, 3]);

    vec![
        ("standalone".into(), standalone),
        ("ring".into(), ring),
        ("full".into(), full),
    ]
}

fn earth_stranger() -> Vec<(String, Vec<u8>)> {
    let f = crate::earth_frames::fixed();
    let echo = 0x40;
    let from_sky = 1;
    // The sky: a standalone node's empty members page, then replies with
    // the tag of the client's last request to it.
    let standalone = page(Tag([0; 4]), 0, RingConfig::default(), &[]);
    let registered = emit(&Message::Registered {
        tag: Tag([0; 4]),
        keepalive_secs: 25,
        intro_key: IntroKey([0x44; 32]),
        observed: ep(V4),
    });
    let online = emit(&Message::Online {
        tag: Tag([0; 4]),
        flags: Flags(0),
        endpoint: ep("203.0.113.9:4000"),
    });
    let cookie = emit(&Message::CookieReply {
        tag: Tag([0; 4]),
        cookie: Cookie([0xc0; 8]),
    });
    let intro = emit(&Message::Introduction {
        caller: VirtualAddr([0x33; 16]),
        mac: Mac([0x55; 8]),
        hint: [0x44; 16],
        endpoint: ep(V4),
    });

    let mut session = vec![3u8]; // online, looking bob up
    for (msg, step) in [
        (&cookie, 1u8),
        (&standalone, 1),
        (&registered, 1),
        (&online, 1),
    ] {
        session.extend_from_slice(&[from_sky | echo, step]);
        chunk(&mut session, msg);
    }
    session.extend_from_slice(&[2, 20]);
    chunk(&mut session, &[]);
    // Strangers: msg1 from someone who is no friend, a punch, a forged
    // introduction, a msg2 and data out of nowhere.
    for (i, bytes) in [
        &f.msg1[..],
        &[sky_proto::frame::PUNCH],
        &intro,
        &f.msg2,
        &[0x23; 40],
    ]
    .into_iter()
    .enumerate()
    {
        session.extend_from_slice(&[(i as u8 % 4) << 2, 1]);
        chunk(&mut session, bytes);
    }

    let mut ring = vec![1u8 | 8]; // online, two bootstrap nodes
    let members = page(
        Tag([0; 4]),
        9,
        RingConfig::default(),
        &[
            ep("198.51.100.1:7700"),
            ep("198.51.100.2:7700"),
            ep("198.51.100.3:7700"),
        ],
    );
    ring.extend_from_slice(&[from_sky | echo, 1]);
    chunk(&mut ring, &members);
    for n in 1..4u8 {
        ring.extend_from_slice(&[from_sky | echo | (n << 2), 1]);
        chunk(&mut ring, &registered);
    }
    ring.extend_from_slice(&[3, 1]); // lookup
    chunk(&mut ring, &[]);

    let mut strangers = vec![0u8];
    strangers.extend_from_slice(&[7 << 2, 1, 0]);
    strangers.extend_from_slice(&[192, 0, 2, 99, 0x0f, 0xa0]);
    chunk(&mut strangers, &f.msg1);
    strangers.extend_from_slice(&[1 << 2, 1]);
    chunk(&mut strangers, &intro);

    // A genuine handshake to alice from a key that is no friend's.
    let alice = crate::earth_stranger::alice_state().identity.public_key();
    let mut msg1 = [0u8; sky_proto::frame::MSG1_LEN];
    let _ = sky_earth::handshake::Initiator::start([7; 32], alice, [8; 32], &mut msg1);
    let mut stranger_msg1 = vec![1u8]; // online
    stranger_msg1.extend_from_slice(&[0, 1]);
    chunk(&mut stranger_msg1, &msg1);
    stranger_msg1.extend_from_slice(&[0, 1]); // the same again
    chunk(&mut stranger_msg1, &msg1);

    vec![
        ("session".into(), session),
        ("ring".into(), ring),
        ("strangers".into(), strangers),
        ("stranger-msg1".into(), stranger_msg1),
    ]
}

fn gossip_datagram() -> Vec<(String, Vec<u8>)> {
    use crate::gossip_datagram::{me, node, ring_config, secret, sources};
    // Three nodes on a lossless network, 10 ms steps: the datagrams that
    // reach node 1 (the target's node) are the seed, in arrival order. A
    // sky `ping` to a node's service endpoint is answered with a `pong`,
    // as its shard would (the proofs of endpoints).
    let ids: [NodeId; 3] = [me(), node(2), node(3)];
    let seeds = [node(2).gossip];
    let mut nodes: Vec<Gossip> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| {
            let seed = if i == 0 { 7 } else { 100 + i as u64 };
            let key = secret(i as u8 + 1);
            Gossip::new(*id, key, ring_config(), seed, GossipConfig::default())
        })
        .collect();
    for g in &mut nodes {
        g.join(&seeds, MonoTime::ZERO);
    }
    // A fixed source's index; any other endpoint (a service endpoint's
    // pong) as source 6 followed by the endpoint.
    let src_record = |from: SocketAddr| match sources().iter().position(|s| *s == from) {
        Some(i) => vec![i as u8],
        None => {
            let SocketAddr::V4(v4) = from else {
                panic!("the nodes are IPv4")
            };
            let mut r = vec![6u8, 0];
            r.extend_from_slice(&v4.ip().octets());
            r.extend_from_slice(&v4.port().to_be_bytes());
            r
        }
    };
    let mut records = vec![1u8]; // joined, like the nodes here
    let mut in_flight: Vec<(usize, SocketAddr, Vec<u8>)> = Vec::new();
    let mut last = MonoTime::ZERO;
    let mut count = 0;
    for tick in 0..150u64 {
        let now = MonoTime::from_millis(tick * 10);
        for (to, from, bytes) in std::mem::take(&mut in_flight) {
            if to == 0 && count < 24 {
                let step = (now.saturating_duration_since(last).as_millis() / 10) as u8;
                records.extend_from_slice(&src_record(from));
                records.extend_from_slice(&[step, 1]);
                chunk(&mut records, &bytes);
                last = now;
                count += 1;
            }
            let _ = nodes[to].handle_datagram(now, from, &bytes);
        }
        for (i, g) in nodes.iter_mut().enumerate() {
            g.handle_timeout(now);
            while let Some((dst, bytes)) = g.poll_transmit() {
                if let Some(to) = ids.iter().position(|id| id.gossip == dst) {
                    in_flight.push((to, ids[i].gossip, bytes));
                } else if ids.iter().any(|id| id.service == dst)
                    && let Ok(sky_proto::wire::Message::Ping { tag, .. }) =
                        sky_proto::wire::Message::decode(&bytes)
                {
                    let pong = sky_proto::wire::Message::Pong { tag };
                    let mut out = vec![0; pong.buffer_len()];
                    let n = pong.emit(&mut out);
                    out.truncate(n);
                    in_flight.push((i, dst, out));
                }
            }
        }
    }
    // Garbage from a stranger, and a datagram claiming another source.
    records.extend_from_slice(&[2, 1, 1]);
    chunk(&mut records, b"not foca");
    vec![("three-nodes".into(), records)]
}
