//! SPEC §3 behaviours over real sockets on loopback, on both engines.

use std::time::Duration;

use sky_node::engine::Node;
use sky_node::probe::{Client, Incoming, Lookup};
use sky_proto::wire::{Mac, Message, Tag, VirtualAddr};

use crate::common::*;

const TIMEOUT: Duration = Duration::from_secs(2);

fn client(node: &Node) -> Client {
    Client::new(node.local_addr(), TIMEOUT).unwrap()
}

#[test]
fn register_then_lookup_says_online_and_introduces_the_caller() {
    for engine in engines() {
        let node = start(engine);
        let mut alice = client(&node);
        let mut bob = client(&node);
        let key = secret(0xa1);
        let reg = alice.register(&key, true).unwrap();
        assert_eq!(reg.observed, alice.local_addr().unwrap(), "{engine:?}");
        assert_eq!(reg.address, key.address());

        let bob_addr = VirtualAddr([0xb0; 16]);
        match bob.lookup(reg.address, bob_addr).unwrap() {
            Lookup::Online { endpoint, flags } => {
                assert_eq!(endpoint, alice.local_addr().unwrap(), "{engine:?}");
                assert!(flags.metered() && flags.introduced());
            }
            Lookup::Offline => panic!("{engine:?}: registered address looked up offline"),
        }
        match alice.receive(TIMEOUT).unwrap() {
            Some(Incoming::Introduction { caller, endpoint }) => {
                assert_eq!(caller, bob_addr, "{engine:?}");
                assert_eq!(endpoint, bob.local_addr().unwrap(), "{engine:?}");
            }
            other => panic!("{engine:?}: expected an introduction, got {other:?}"),
        }
        node.shutdown().unwrap();
    }
}

#[test]
fn lookup_of_unregistered_or_expired_address_says_offline() {
    for engine in engines() {
        let node = start(engine); // keepalive 1 s: entries expire after 3 s
        let mut alice = client(&node);
        let mut bob = client(&node);
        let never = VirtualAddr([0x42; 16]);
        assert_eq!(
            bob.lookup(never, never).unwrap(),
            Lookup::Offline,
            "{engine:?}"
        );

        let reg = alice.register(&secret(0xa2), false).unwrap();
        assert!(matches!(
            bob.lookup(reg.address, never).unwrap(),
            Lookup::Online { .. }
        ));
        std::thread::sleep(Duration::from_millis(3500));
        assert_eq!(
            bob.lookup(reg.address, never).unwrap(),
            Lookup::Offline,
            "{engine:?}"
        );
        node.shutdown().unwrap();
    }
}

#[test]
fn keepalive_produces_no_datagram_and_keeps_the_address_online() {
    for engine in engines() {
        let node = start(engine);
        let sky = node.local_addr();
        let mut alice = client(&node);
        let mut bob = client(&node);
        let key = secret(0xa3);
        let reg = alice.register(&key, false).unwrap();

        // The same keepalive from a raw socket that holds a cookie but no
        // registration is told to register; from the registrant, silence.
        let raw = socket_for(sky);
        let cookie = cookie(&raw, sky);
        let keepalive = |cookie| {
            emit(Message::Keepalive {
                ring: 0,
                tag: Tag([1; 4]),
                cookie,
                address: reg.address,
            })
        };
        let answer = exchange(&raw, sky, &keepalive(cookie)).map(|r| Message::decode(&r));
        assert!(
            matches!(answer, Some(Ok(Message::NotRegistered { .. }))),
            "{engine:?}"
        );

        // Over 4 s (past the 3 s expiry) the registrant's keepalives keep it
        // online, and not one datagram comes back for them.
        for _ in 0..8 {
            alice.keepalive(reg.address).unwrap();
            assert_eq!(
                alice.receive(Duration::from_millis(500)).unwrap(),
                None,
                "{engine:?}"
            );
        }
        assert!(
            matches!(
                bob.lookup(reg.address, VirtualAddr::default()).unwrap(),
                Lookup::Online { .. }
            ),
            "{engine:?}: keepalives did not keep the address online"
        );
        node.shutdown().unwrap();
    }
}

#[test]
fn unregister_makes_the_address_offline() {
    for engine in engines() {
        let node = start(engine);
        let mut alice = client(&node);
        let mut bob = client(&node);
        let key = secret(0xa4);
        let reg = alice.register(&key, false).unwrap();
        assert!(matches!(
            bob.lookup(reg.address, reg.address).unwrap(),
            Lookup::Online { .. }
        ));
        assert!(matches!(
            alice.receive(TIMEOUT).unwrap(),
            Some(Incoming::Introduction { .. })
        ));
        alice.unregister(&key).unwrap();
        assert_eq!(
            alice.receive(QUIET).unwrap(),
            None,
            "unregister is not answered"
        );
        assert_eq!(
            bob.lookup(reg.address, reg.address).unwrap(),
            Lookup::Offline,
            "{engine:?}"
        );
        node.shutdown().unwrap();
    }
}

#[test]
fn forged_introduction_is_rejected_by_the_client() {
    for engine in engines() {
        let node = start(engine);
        let sky = node.local_addr();
        let mut alice = client(&node);
        alice.register(&secret(0xa5), false).unwrap();
        let attacker = socket_for(sky);
        let forged = emit(Message::Introduction {
            caller: VirtualAddr([0xee; 16]),
            mac: Mac([0x5a; 8]),
            hint: [0x5e; 16],
            endpoint: attacker.local_addr().unwrap(),
        });
        attacker
            .send_to(&forged, alice.local_addr().unwrap())
            .unwrap();
        assert_eq!(
            alice.receive(TIMEOUT).unwrap(),
            Some(Incoming::Forged),
            "{engine:?}"
        );

        // A genuine one still passes afterwards.
        let mut bob = client(&node);
        bob.lookup(secret(0xa5).address(), VirtualAddr([0xb1; 16]))
            .unwrap();
        assert!(matches!(
            alice.receive(TIMEOUT).unwrap(),
            Some(Incoming::Introduction { .. })
        ));
        node.shutdown().unwrap();
    }
}

#[test]
fn ipv6_clients_are_served() {
    if std::net::UdpSocket::bind("[::1]:0").is_err() {
        eprintln!("WARNING: no IPv6 loopback here; skipping the IPv6 test");
        return;
    }
    for engine in engines() {
        let node = Node::start(&config(engine, "[::1]:0")).unwrap();
        let mut alice = client(&node);
        let mut bob = client(&node);
        let reg = alice.register(&secret(0xa6), false).unwrap();
        assert_eq!(reg.observed, alice.local_addr().unwrap());
        match bob.lookup(reg.address, VirtualAddr([0xb6; 16])).unwrap() {
            Lookup::Online { endpoint, .. } => assert_eq!(endpoint, alice.local_addr().unwrap()),
            Lookup::Offline => panic!("{engine:?}: offline over IPv6"),
        }
        assert!(matches!(
            alice.receive(TIMEOUT).unwrap(),
            Some(Incoming::Introduction { .. })
        ));
        node.shutdown().unwrap();
    }
}

#[test]
fn shards_of_one_node_share_cookies_and_presence() {
    // Many client sockets spread over both shards by SO_REUSEPORT hashing.
    for engine in engines() {
        let node = start(engine);
        let mut clients: Vec<Client> = (0..32).map(|_| client(&node)).collect();
        let addresses: Vec<_> = clients
            .iter_mut()
            .enumerate()
            .map(|(i, c)| c.register(&secret(i as u8), false).unwrap().address)
            .collect();
        for (i, c) in clients.iter_mut().enumerate() {
            let target = addresses[(i + 1) % addresses.len()];
            assert!(matches!(
                c.lookup(target, target).unwrap(),
                Lookup::Online { .. }
            ));
        }
        // 32 sources all hashed to one shard would be a 1-in-2^31 event.
        let per_shard = |m: &str, s: u8| {
            sample(
                m,
                &format!("sky_shard_received_datagrams_total{{shard=\"{s}\"}}"),
            )
        };
        let m = wait_until(&node, |m| {
            sample(m, "sky_lookups_total{outcome=\"online\"}") >= 32.0
                && per_shard(m, 0) > 0.0
                && per_shard(m, 1) > 0.0
        });
        assert_eq!(
            sample(&m, "sky_lookups_total{outcome=\"online\"}"),
            32.0,
            "{engine:?}"
        );
        assert!(per_shard(&m, 0) > 0.0, "{engine:?}: shard 0 got nothing");
        assert!(per_shard(&m, 1) > 0.0, "{engine:?}: shard 1 got nothing");
        node.shutdown().unwrap();
    }
}
