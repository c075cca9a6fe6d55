//! Hostile input is normal input (SPEC §3 invariants 1 and 4), over real
//! sockets on both engines.

use std::net::{IpAddr, SocketAddr};

use sky_node::probe::Client;
use sky_proto::wire::{
    self, AddrKey, Cookie, Flags, MAX_MESSAGE_LEN, Message, Signature, Tag, VirtualAddr,
};

use crate::common::*;

/// Every request kind, with the given cookie.
fn every_request(cookie: Cookie) -> Vec<Message> {
    let tag = Tag([7; 4]);
    vec![
        Message::Ping { tag, cookie },
        secret(1).register(tag, cookie, Flags(0)),
        Message::Keepalive {
            ring: 0,
            tag,
            cookie,
            address: VirtualAddr([1; 16]),
        },
        Message::Lookup {
            tag,
            cookie,
            target: VirtualAddr([1; 16]),
            caller: VirtualAddr([2; 16]),
            hint: [0; 16],
        },
        secret(1).unregister(tag, cookie),
    ]
}

#[test]
fn a_source_without_a_valid_cookie_gets_back_no_more_than_it_sent() {
    for engine in engines() {
        let node = start(engine);
        let sky = node.local_addr();
        // A registered target, so that a lookup *would* introduce.
        let mut target = Client::new(sky, QUIET * 4).unwrap();
        target.register(&secret(1), false).unwrap();

        let other = socket_for(sky);
        let stolen = cookie(&other, sky); // valid, but for another source
        for bad_cookie in [Cookie::default(), Cookie([0x5a; 8]), stolen] {
            for msg in every_request(bad_cookie) {
                let attacker = socket_for(sky);
                let req = emit(msg);
                attacker.send_to(&req, sky).unwrap();
                let replies = drain(&attacker);
                assert!(replies.len() <= 1, "{engine:?} {msg:?}: {replies:?}");
                for (reply, _) in &replies {
                    assert!(
                        reply.len() <= req.len(),
                        "{engine:?}: {} bytes back for a {}-byte {:?}",
                        reply.len(),
                        req.len(),
                        msg.kind()
                    );
                }
            }
        }
        // And nothing reached the target: no introduction without a cookie.
        assert_eq!(target.receive(QUIET).unwrap(), None, "{engine:?}");
        node.shutdown().unwrap();
    }
}

/// The bytes of an endpoint as a payload might smuggle them.
fn endpoint_bytes(addr: SocketAddr) -> Vec<u8> {
    let mut v = match addr.ip() {
        IpAddr::V4(ip) => ip.octets().to_vec(),
        IpAddr::V6(ip) => ip.octets().to_vec(),
    };
    v.extend_from_slice(&addr.port().to_be_bytes());
    v
}

#[test]
fn nothing_is_sent_to_an_address_read_from_a_payload() {
    for engine in engines() {
        let node = start(engine);
        let sky = node.local_addr();
        let victim = socket_for(sky);
        let mut smuggled = [0u8; 16];
        let e = endpoint_bytes(victim.local_addr().unwrap());
        for (i, b) in smuggled.iter_mut().enumerate() {
            *b = e[i % e.len()];
        }
        // A validated attacker registers and looks up with the victim's
        // endpoint in every field that could carry one.
        let attacker = socket_for(sky);
        let cookie = cookie(&attacker, sky);
        let mut requests = every_request(cookie);
        // A key and a signature made of the endpoint (refused: forged), and
        // a genuine key whose seed is made of it (registered here).
        let (mut key, mut sig) = ([0u8; 32], [0u8; 64]);
        for (i, b) in key.iter_mut().chain(sig.iter_mut()).enumerate() {
            *b = smuggled[i % smuggled.len()];
        }
        let genuine = sky_node::probe::AddrSecret::from_seed(key);
        requests.extend([
            Message::Register {
                tag: Tag([0; 4]),
                cookie,
                flags: Flags(0xff),
                key: AddrKey(key),
                sig: Signature(sig),
            },
            Message::Unregister {
                tag: Tag([0; 4]),
                cookie,
                key: AddrKey(key),
                sig: Signature(sig),
            },
            genuine.register(Tag([0; 4]), cookie, Flags(0xff)),
            Message::Lookup {
                tag: Tag([0; 4]),
                cookie,
                target: genuine.address(),
                caller: VirtualAddr(smuggled),
                hint: smuggled,
            },
            Message::Keepalive {
                ring: 0,
                tag: Tag([0; 4]),
                cookie,
                address: VirtualAddr(smuggled),
            },
        ]);
        for msg in requests {
            attacker.send_to(&emit(msg), sky).unwrap();
        }
        // Replies and introductions may come to the attacker (it registered
        // itself), never to the victim.
        let _ = drain(&attacker);
        assert!(
            drain(&victim).is_empty(),
            "{engine:?}: the victim received a datagram"
        );
        node.shutdown().unwrap();
    }
}

/// A deterministic generator for the random datagrams (xorshift64*).
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

#[test]
fn garbage_truncations_wrong_versions_and_oversized_datagrams_are_dropped_by_reason() {
    for engine in engines() {
        let node = start(engine);
        let sky = node.local_addr();
        let s = socket_for(sky);
        let cookie = cookie(&s, sky);
        let mut sent = 1u64;
        // Datagrams from one socket reach one shard in order: a ping answered
        // means everything before it was read, so the socket buffer never
        // overflows and every datagram is counted.
        let mut sync_tag = 0u32;
        let mut send = |bytes: &[u8], sent: &mut u64| {
            s.send_to(bytes, sky).unwrap();
            *sent += 1;
            if (*sent).is_multiple_of(64) {
                sync_tag += 1;
                let tag = Tag(sync_tag.to_be_bytes());
                s.send_to(&emit(Message::Ping { tag, cookie }), sky)
                    .unwrap();
                *sent += 1;
                while let Some((d, _)) = recv(&s) {
                    if Message::decode(&d) == Ok(Message::Pong { tag }) {
                        break;
                    }
                }
            }
        };

        // Random datagrams, seeded.
        let mut rng = Rng(0x05ee_d0f5_c1e5);
        for _ in 0..2000 {
            let len = (rng.next() % 1400) as usize;
            let bytes: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
            send(&bytes, &mut sent);
        }
        // Every truncation of every valid message (replies included), and
        // every one with a wrong version.
        let mut all = every_request(cookie);
        let ep: SocketAddr = "192.0.2.1:9".parse().unwrap();
        all.extend([
            Message::Pong { tag: Tag([0; 4]) },
            Message::CookieReply {
                tag: Tag([0; 4]),
                cookie,
            },
            Message::Registered {
                tag: Tag([0; 4]),
                keepalive_secs: 25,
                intro_key: Default::default(),
                observed: ep,
            },
            Message::Online {
                tag: Tag([0; 4]),
                flags: Flags(0),
                endpoint: ep,
            },
            Message::Offline { tag: Tag([0; 4]) },
            Message::Introduction {
                caller: VirtualAddr([3; 16]),
                mac: Default::default(),
                hint: [0; 16],
                endpoint: ep,
            },
        ]);
        for msg in all {
            let bytes = emit(msg);
            for cut in 0..bytes.len() {
                send(&bytes[..cut], &mut sent);
            }
            let mut wrong = bytes.clone();
            for v in [0u8, 2, 0x7f, 0xff] {
                wrong[0] = v;
                send(&wrong, &mut sent);
            }
            let mut long = bytes.clone();
            long.push(0);
            send(&long, &mut sent);
            if !msg.kind().is_request() {
                send(&bytes, &mut sent); // a whole reply, sent to the sky
            }
        }
        // Unknown kinds, and oversized datagrams: past the protocol limit,
        // and past the engine's buffers (the kernel truncates those).
        for kind in [0x00u8, 0x06, 0x7f, 0x88, 0x89, 0xff] {
            send(&[wire::VERSION, kind, 0, 0], &mut sent);
        }
        for len in [wire::MAX_DATAGRAM_LEN + 1, 1500, 4000, 65_000] {
            send(&vec![wire::VERSION; len], &mut sent);
        }
        let _ = drain(&s);

        // Still serving, and every drop counted by its reason.
        let mut probe = Client::new(sky, QUIET * 4).unwrap();
        probe
            .ping()
            .unwrap_or_else(|e| panic!("{engine:?}: node silent after hostile input: {e}"));
        let received = |m: &str| -> f64 {
            [
                "ping",
                "register",
                "keepalive",
                "lookup",
                "unregister",
                "invalid",
            ]
            .iter()
            .map(|k| sample(m, &format!("sky_datagrams_received_total{{kind=\"{k}\"}}")))
            .sum()
        };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        let mut m = scrape(&node);
        while received(&m) < sent as f64 && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(50));
            m = scrape(&node);
        }
        let received = received(&m);
        assert!(
            received >= sent as f64,
            "{engine:?}: {received} counted of {sent} sent"
        );
        for reason in [
            "truncated",
            "bad_version",
            "unknown_kind",
            "bad_length",
            "oversized",
            "not_a_request",
        ] {
            let n = sample(
                &m,
                &format!("sky_dropped_datagrams_total{{reason=\"{reason}\"}}"),
            );
            assert!(n > 0.0, "{engine:?}: no drops counted as {reason}");
        }
        assert!(
            sample(&m, "sky_dropped_datagrams_total{reason=\"oversized\"}") >= 4.0,
            "{engine:?}: oversized datagrams not all counted"
        );
        node.shutdown().unwrap();
    }
}

#[test]
fn replies_fit_the_largest_message() {
    // Every reply buffer in the engines is MAX_MESSAGE_LEN bytes (the
    // longest request, a register), and an introduction is written over
    // the lookup it answers.
    let ep6: SocketAddr = "[2001:db8::1]:9".parse().unwrap();
    let reg = Message::Registered {
        tag: Tag([0; 4]),
        keepalive_secs: 1,
        intro_key: Default::default(),
        observed: ep6,
    };
    assert!(reg.buffer_len() <= MAX_MESSAGE_LEN);
    let intro = Message::Introduction {
        caller: VirtualAddr([0; 16]),
        mac: Default::default(),
        hint: [0; 16],
        endpoint: ep6,
    };
    let lookup = Message::Lookup {
        tag: Tag([0; 4]),
        cookie: Default::default(),
        target: VirtualAddr([0; 16]),
        caller: VirtualAddr([0; 16]),
        hint: [0; 16],
    };
    assert!(intro.buffer_len() <= lookup.buffer_len());
    let register = secret(1).register(Tag([0; 4]), Cookie::default(), Flags(0));
    assert_eq!(register.buffer_len(), MAX_MESSAGE_LEN);
    assert!(lookup.buffer_len() <= MAX_MESSAGE_LEN);
}
