//! Registrations only the user can move (issue "Hostile internet", item 3;
//! `docs/PROTOCOL.md`, "register → registered"): tried as an owner's
//! operator or an on-path observer would, with every byte the user sent.

use std::net::{SocketAddr, UdpSocket};
use std::time::Instant;

use sky_node::config::EngineChoice;
use sky_node::engine::Node;
use sky_proto::wire::{Cookie, Flags, Message, Signature, Tag};

use crate::common::*;

fn node() -> Node {
    two_shard_node(config(EngineChoice::Mmsg, "127.0.0.1:0"))
}

fn ask(s: &UdpSocket, node: SocketAddr, msg: Message) -> Option<Message> {
    exchange(s, node, &emit(msg)).and_then(|r| Message::decode(&r).ok())
}

/// The same request under another cookie (what an attacker who captured
/// it can build: everything but a signature over its own cookie).
fn with_cookie(mut msg: Message, cookie: Cookie) -> Message {
    *msg.cookie_mut().expect("a request") = cookie;
    msg
}

/// The value of `series` once the node's metrics show it at `at_least`
/// (or after `wait_for_sample` gives up).
fn counted(n: &Node, series: &str, at_least: f64) -> f64 {
    sample(&wait_for_sample(n, series, at_least), series)
}

/// A user registers at two nodes (as with an address's two owners) and
/// once unregisters and registers again; an attacker on another address
/// holds every datagram the user sent. Replayed as they are, they earn a
/// cookie; under the attacker's own cookie the registrations are refused as
/// forged and the unregister is dropped; a keepalive from the attacker is
/// answered `not registered`. Through it all a friend's lookups at both
/// nodes find the user at the user's own endpoint.
#[test]
fn a_captured_registration_moves_refreshes_and_unregisters_nothing_at_either_node() {
    let (a, b) = (node(), node());
    let nodes = [a.local_addr(), b.local_addr()];
    let user = socket_on("127.0.0.1");
    let home = user.local_addr().unwrap();
    let key = secret(0x51);
    let mut captured: Vec<(SocketAddr, Message)> = Vec::new();
    for &n in &nodes {
        let msg = key.register(Tag([1; 4]), cookie(&user, n), Flags(0));
        match ask(&user, n, msg) {
            Some(Message::Registered { observed, .. }) => assert_eq!(observed, home),
            other => panic!("{other:?}"),
        }
        captured.push((n, msg));
    }
    // An unregister the user once sent (then registered again).
    let c = cookie(&user, nodes[0]);
    let un = key.unregister(Tag([2; 4]), c);
    user.send_to(&emit(un), nodes[0]).unwrap();
    let again = key.register(Tag([3; 4]), c, Flags(0));
    assert!(matches!(
        ask(&user, nodes[0], again),
        Some(Message::Registered { .. })
    ));
    captured.push((nodes[0], un));
    captured.push((nodes[0], again));

    let mallory = socket_on("127.0.0.66");
    let mut forged = [0u32; 2];
    for &(origin, msg) in &captured {
        for (i, &n) in nodes.iter().enumerate() {
            // As captured: the cookie is the user's, bound to the user's
            // endpoint (and to `origin`): only a cookie comes back.
            let reply = ask(&mallory, n, msg);
            assert!(
                matches!(reply, Some(Message::CookieReply { .. })),
                "replay at {}: {reply:?}",
                if n == origin { "its node" } else { "the other" }
            );
            // Under the attacker's own cookie the signature is worthless.
            let own = cookie(&mallory, n);
            let reply = ask(&mallory, n, with_cookie(msg, own));
            match msg {
                Message::Register { .. } => {
                    assert!(
                        matches!(reply, Some(Message::Refused { reason: 5, .. })),
                        "{reply:?}"
                    );
                    forged[i] += 1;
                }
                _ => assert_eq!(reply, None, "an unregister has no reply"),
            }
            // Nor does a keepalive from elsewhere refresh it.
            let keepalive = Message::Keepalive {
                tag: Tag([4; 4]),
                cookie: own,
                address: key.address(),
                ring: 0,
            };
            assert!(matches!(
                ask(&mallory, n, keepalive),
                Some(Message::NotRegistered { .. })
            ));
        }
    }
    // A bare signature of the right length from nowhere is no better.
    let own = cookie(&mallory, nodes[1]);
    let Message::Register { key: public, .. } = captured[0].1 else {
        unreachable!()
    };
    let blank = Message::Register {
        tag: Tag([5; 4]),
        cookie: own,
        flags: Flags(0),
        key: public,
        sig: Signature([0; 64]),
    };
    assert!(matches!(
        ask(&mallory, nodes[1], blank),
        Some(Message::Refused { reason: 5, .. })
    ));
    forged[1] += 1;

    // The user is still found where the user is, at both nodes.
    let friend = socket_on("127.0.0.77");
    for &n in &nodes {
        let lookup = Message::Lookup {
            tag: Tag([6; 4]),
            cookie: cookie(&friend, n),
            target: key.address(),
            caller: Default::default(),
            hint: [0; 16],
        };
        match ask(&friend, n, lookup) {
            Some(Message::Online { endpoint, .. }) => assert_eq!(endpoint, home),
            other => panic!("{other:?}"),
        }
    }
    // And each refusal and drop was counted, by reason.
    for (i, n) in [&a, &b].into_iter().enumerate() {
        let series = "sky_registrations_refused_total{reason=\"forged\"}";
        assert_eq!(
            counted(n, series, f64::from(forged[i])),
            f64::from(forged[i])
        );
    }
    let unproven = "sky_dropped_datagrams_total{reason=\"unproven\"}";
    assert_eq!(counted(&a, unproven, 1.0), 1.0, "the replayed unregister");
    assert_eq!(counted(&b, unproven, 1.0), 1.0);
    a.shutdown().unwrap();
    b.shutdown().unwrap();
}

/// A flood of bogus proofs from one source (new addresses, signatures that
/// do not verify) spends only that source's checks: past its budget it is
/// told so without a check, and a user elsewhere registers at once.
#[test]
fn a_flood_of_bogus_proofs_is_refused_within_its_sources_budget() {
    let n = node();
    let sky = n.local_addr();
    let flood = socket_on("127.0.0.88");
    let c = cookie(&flood, sky);
    let (mut checked, mut over, mut silent) = (0u32, 0u32, 0u32);
    let mut user_ok = false;
    let began = Instant::now();
    for i in 0..600u32 {
        let mut seed = [0xb0u8; 32];
        seed[..4].copy_from_slice(&i.to_le_bytes());
        let k = sky_node::probe::AddrSecret::from_seed(seed);
        let Message::Register { key, .. } = k.register(Tag([7; 4]), c, Flags(0)) else {
            unreachable!()
        };
        let bogus = Message::Register {
            tag: Tag([7; 4]),
            cookie: c,
            flags: Flags(0),
            key,
            sig: Signature([0x42; 64]),
        };
        match ask(&flood, sky, bogus) {
            Some(Message::Refused { reason: 5, .. }) => checked += 1,
            Some(Message::Refused { reason: 4, .. }) => over += 1,
            Some(other) => panic!("{other:?}"),
            None => silent += 1,
        }
        if i == 300 {
            let user = socket_on("127.0.3.9");
            let uc = cookie(&user, sky);
            user_ok = matches!(
                ask(&user, sky, secret(0x52).register(Tag([8; 4]), uc, Flags(0))),
                Some(Message::Registered { .. })
            );
        }
    }
    eprintln!("bogus proofs: {checked} checked, {over} refused unchecked, {silent} unanswered");
    assert!(user_ok, "a user elsewhere registers during the flood");
    assert!(silent <= 10, "{silent} unanswered");
    // At most 64 checks a second per shard (two here), whole seconds
    // counted from the first: a bound that only loosens with time.
    let seconds = began.elapsed().as_secs() + 2;
    let most = u64::from(sky_node::proof::CHECKS_PER_SOURCE) * 2 * seconds;
    assert!(u64::from(checked) <= most, "{checked} checks > {most}");
    assert!(over > 0, "the budget was reached");
    assert_eq!(n.presence().len(), 1, "only the user");
    n.shutdown().unwrap();
}
