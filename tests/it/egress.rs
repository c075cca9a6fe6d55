//! The egress table of docs/PROTOCOL.md, checked against the bytes that
//! real nodes put on the wire, and against the SPEC §3 budgets it states.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::sync::Arc;

use sky_node::engine::Node;
use sky_proto::ring::{Ring, RingConfig};
use sky_proto::wire::{self, Cookie, Flags, Message, Tag, VirtualAddr};

use crate::common::*;

/// (IPv4 bytes, IPv6 bytes, IPv4 budget) by message name.
fn egress_table() -> BTreeMap<String, (usize, usize, usize)> {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/PROTOCOL.md"))
        .expect("docs/PROTOCOL.md");
    let section = doc
        .split("## Egress table")
        .nth(1)
        .expect("egress table section");
    section
        .lines()
        .filter(|l| l.starts_with("| `"))
        .map(|l| {
            let cells: Vec<&str> = l.split('|').map(str::trim).collect();
            let num = |i: usize| cells[i].parse::<usize>().unwrap_or_else(|_| panic!("{l}"));
            (
                cells[1].trim_matches('`').to_string(),
                (num(3), num(4), num(5)),
            )
        })
        .collect()
}

/// `config` with 8 entries per source IP, so that a `refused` is quick to
/// provoke.
fn budgeted(config: sky_node::config::Config) -> sky_node::config::Config {
    sky_node::config::Config {
        max_per_ip: Some(8),
        ..config
    }
}

/// Measures every row on a node listening on `listen`.
fn measure(node: &Node) -> BTreeMap<String, usize> {
    let sky = node.local_addr();
    let mut got = BTreeMap::new();
    let reply_len = |s: &UdpSocket, msg: Message| -> usize {
        s.send_to(&emit(msg), sky).unwrap();
        let replies = drain(s);
        assert!(replies.len() <= 1, "{msg:?}: {replies:?}");
        replies.first().map_or(0, |(r, _)| r.len())
    };
    let tag = Tag([1; 4]);
    let target = socket_for(sky);
    let caller = socket_for(sky);
    let none = Cookie::default();
    got.insert(
        "pong".into(),
        reply_len(&caller, Message::Ping { tag, cookie: none }),
    );
    got.insert(
        "checked".into(),
        reply_len(
            &caller,
            Message::Check {
                tag,
                cookie: none,
                flags: 0,
            },
        ),
    );
    got.insert(
        "cookie".into(),
        reply_len(&caller, Message::Ping { tag, cookie: none }).max(reply_len(
            &caller,
            Message::Keepalive {
                ring: 0,
                tag,
                cookie: none,
                address: Default::default(),
            },
        )),
    );
    let tc = cookie(&target, sky);
    let cc = cookie(&caller, sky);
    let key = secret(0xee);
    let address = key.address();
    got.insert(
        "registered".into(),
        reply_len(&target, key.register(tag, tc, Flags(0))),
    );
    got.insert(
        "keepalive".into(),
        reply_len(
            &target,
            Message::Keepalive {
                ring: 0,
                tag,
                cookie: tc,
                address,
            },
        ),
    );
    got.insert(
        "not_registered".into(),
        reply_len(
            &caller,
            Message::Keepalive {
                ring: 0,
                tag,
                cookie: cc,
                address,
            },
        ),
    );
    let lookup = |target| Message::Lookup {
        tag,
        cookie: cc,
        target,
        caller: VirtualAddr([7; 16]),
        hint: [0x5e; 16],
    };
    let online = reply_len(&caller, lookup(address));
    let intro = drain(&target);
    assert_eq!(intro.len(), 1, "one introduction");
    got.insert("online".into(), online);
    got.insert("introduction".into(), intro[0].0.len());
    got.insert("online_total".into(), online + intro[0].0.len());
    got.insert(
        "offline".into(),
        reply_len(&caller, lookup(VirtualAddr([9; 16]))),
    );
    got.insert(
        "unregister".into(),
        reply_len(&target, key.unregister(tag, tc)),
    );
    // A registration the node will not hold: the source at its budget
    // (the test nodes allow 8 entries per IP).
    let flood = socket_for(sky);
    let fc = cookie(&flood, sky);
    let mut refused = 0;
    let mut held = Vec::new();
    for i in 0..16u8 {
        let len = reply_len(&flood, secret(i).register(tag, fc, Flags(0)));
        if len != 46 && len != 58 {
            refused = len;
            break;
        }
        held.push(secret(i));
    }
    got.insert("refused".into(), refused);
    // Give the source its budget back: the rows below register from the
    // same IP (on IPv6 loopback there is no other), and must not depend on
    // which keys the ring happens to give this node.
    for key in held {
        assert_eq!(reply_len(&flood, key.unregister(tag, fc)), 0, "unregister");
    }
    measure_in_a_sky(node, &mut got);
    got
}

/// The DHT's replies, on a node made one of five members: the other four
/// endpoints are only payload here (nothing is sent to them).
fn measure_in_a_sky(node: &Node, got: &mut BTreeMap<String, usize>) {
    let sky = node.local_addr();
    let me = sky;
    let others = (2..=5u8).map(|i| match me.ip() {
        IpAddr::V4(_) => SocketAddr::new(IpAddr::from([127, 0, 0, i]), 7700),
        IpAddr::V6(_) => SocketAddr::new(IpAddr::from([0, 0, 0, 0, 0, 0, 0, u16::from(i)]), 7700),
    });
    let config = RingConfig {
        prefix_v4: 32,
        prefix_v6: 128,
        ..RingConfig::default()
    };
    let ring = Ring::new(config, others.chain([me]));
    node.ring().store(Arc::new(ring.clone()));
    let reply_len = |s: &UdpSocket, msg: Message| -> usize {
        let mut buf = [0u8; wire::MAX_DATAGRAM_LEN];
        let n = msg.emit(&mut buf);
        s.send_to(&buf[..n], sky).unwrap();
        let replies = drain(s);
        assert!(replies.len() <= 1, "{msg:?}: {replies:?}");
        replies.first().map_or(0, |(r, _)| r.len())
    };
    let client = socket_for(sky);
    let cookie = cookie(&client, sky);
    let tag = Tag([2; 4]);
    let key_where = |owned: bool| {
        (0..=255u8)
            .map(secret)
            .find(|k| ring.is_owner(me, &k.address()) == owned)
            .expect("a key")
    };
    let register = |key: &sky_node::probe::AddrSecret| key.register(tag, cookie, Flags(0));
    got.insert(
        "not_owner".into(),
        reply_len(&client, register(&key_where(false))),
    );
    let owned = key_where(true);
    let registered = reply_len(&client, register(&owned));
    assert!(
        registered == 46 || registered == 58,
        "registered, not refused: {registered} B"
    );
    got.insert(
        "ring_changed".into(),
        reply_len(
            &client,
            Message::Keepalive {
                tag,
                cookie,
                address: owned.address(),
                ring: ring.version() ^ 1,
            },
        ),
    );
    got.insert(
        "members_page".into(),
        reply_len(
            &client,
            Message::Members {
                tag,
                cookie,
                start: 0,
                len: wire::MAX_DATAGRAM_LEN as u16,
            },
        ),
    );
}

#[test]
fn egress_table_matches_the_wire_and_the_budgets() {
    let table = egress_table();
    assert!(table.len() >= 10, "egress table rows: {table:?}");
    let ipv6 = UdpSocket::bind("[::1]:0").is_ok();
    if !ipv6 {
        eprintln!("WARNING: no IPv6 loopback here; checking only the IPv4 column");
    }
    for engine in engines() {
        let v4 = Node::start(&budgeted(config(engine, "127.0.0.1:0"))).unwrap();
        let got4 = measure(&v4);
        v4.shutdown().unwrap();
        let got6 = ipv6.then(|| {
            let v6 = Node::start(&budgeted(config(engine, "[::1]:0"))).unwrap();
            let g = measure(&v6);
            v6.shutdown().unwrap();
            g
        });
        assert_eq!(
            got4.keys().collect::<Vec<_>>(),
            table.keys().collect::<Vec<_>>(),
            "every measured message has a row, and every row is measured"
        );
        for (name, (bytes4, bytes6, budget)) in &table {
            assert_eq!(
                got4[name], *bytes4,
                "{engine:?} {name}: IPv4 bytes on the wire"
            );
            if let Some(got6) = &got6 {
                assert_eq!(
                    got6[name], *bytes6,
                    "{engine:?} {name}: IPv6 bytes on the wire"
                );
            }
            assert!(
                bytes4 <= budget,
                "{name}: {bytes4} B over its {budget} B budget"
            );
        }
    }
}
