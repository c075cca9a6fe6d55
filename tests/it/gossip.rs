//! Membership over real sockets: nodes on 127.0.0.1–3 find each other
//! through a seed, agree on one ring, and shrink it when one stops. Only
//! bounded waits, no timing assertions (the timing targets are checked in
//! virtual time by `src/gossip.rs`'s tests).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use sky_node::config::{Config, EngineChoice};
use sky_node::engine::Node;
use sky_proto::ring::RingConfig;

use crate::cli::NodeProcess;
use crate::common::*;

/// How long a test waits for gossip to converge.
const CONVERGE: Duration = Duration::from_secs(20);

/// Ring settings for nodes on 127.0.0.x: every IP its own operator.
fn one_owner_per_ip() -> RingConfig {
    RingConfig {
        prefix_v4: 32,
        ..RingConfig::default()
    }
}

/// A node on `127.0.0.N` (port 0: listen and gossip), one owner per IP.
fn node_on(n: u8, seeds: Vec<SocketAddr>) -> Node {
    let config = Config {
        seeds,
        shards: Some(1),
        ring: one_owner_per_ip(),
        ..config(EngineChoice::Mmsg, &format!("127.0.0.{n}:0"))
    };
    Node::start(&config).expect("node starts")
}

/// Polls until every node serves a ring of `members` with one version.
fn wait_for_one_view(nodes: &[&Node], members: usize) -> Option<u32> {
    let end = Instant::now() + CONVERGE;
    loop {
        let views: Vec<(u32, usize)> = nodes
            .iter()
            .map(|n| {
                let ring = n.ring().load_full();
                (ring.version(), ring.len())
            })
            .collect();
        if views.iter().all(|&v| v == (views[0].0, members)) {
            return Some(views[0].0);
        }
        if Instant::now() > end {
            eprintln!("views: {views:?}");
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn three_nodes_agree_on_one_ring_and_the_two_left_shrink_it_when_one_stops() {
    let a = node_on(1, Vec::new());
    let b = node_on(2, vec![a.gossip_addr()]);
    let c = node_on(3, vec![a.gossip_addr()]);
    let version = wait_for_one_view(&[&a, &b, &c], 3).expect("three nodes agree");
    let ring = a.ring().load_full();
    for n in [&a, &b, &c] {
        assert!(
            ring.contains(n.local_addr()),
            "{:?} on the ring",
            n.local_addr()
        );
        assert_ne!(n.gossip_addr().port(), 0);
        assert_eq!(n.gossip_addr().ip(), n.local_addr().ip());
    }
    // Garbage on the gossip port is counted, and changes nothing.
    socket_for(b.gossip_addr())
        .send_to(b"\x07not gossip", b.gossip_addr())
        .unwrap();
    let m = wait_until(&b, |m| sample(m, "sky_gossip_errors_total") >= 1.0);
    assert!(sample(&m, "sky_gossip_errors_total") >= 1.0);
    let m = wait_until(&b, |m| sample(m, "sky_ring_members") == 3.0);
    assert_eq!(sample(&m, "sky_ring_version"), f64::from(version));
    assert_eq!(sample(&m, "sky_members{state=\"alive\"}"), 3.0);
    assert!(sample(&m, "sky_ring_changes_total") >= 1.0);
    assert!(sample(&m, "sky_gossip_datagrams_total{direction=\"in\"}") > 0.0);
    assert!(sample(&m, "sky_gossip_bytes_total{direction=\"out\"}") > 0.0);

    c.shutdown().unwrap();
    let after = wait_for_one_view(&[&a, &b], 2).expect("the two left agree");
    assert_ne!(after, version);
    assert!(!a.ring().load().contains("127.0.0.3:0".parse().unwrap()));
    let m = wait_until(&a, |m| sample(m, "sky_members{state=\"down\"}") == 1.0);
    assert_eq!(sample(&m, "sky_members{state=\"alive\"}"), 2.0);
    assert_eq!(sample(&m, "sky_ring_members"), 2.0);
    a.shutdown().unwrap();
    b.shutdown().unwrap();
}

/// The gossip address a `sky node` logged as ready.
fn gossip_of(node: &NodeProcess) -> String {
    node.ready
        .split_whitespace()
        .find_map(|w| w.strip_prefix("gossip="))
        .unwrap_or_else(|| panic!("no gossip address in {}", node.ready))
        .to_string()
}

/// A `sky node` process of one shard on `ip` (ephemeral ports, every IP its
/// own operator, no metrics, no check ports), with `extra` arguments.
fn process_on(ip: &str, extra: &[&str], env: &[(&str, &str)]) -> NodeProcess {
    let (listen, gossip) = (format!("{ip}:0"), format!("{ip}:0"));
    let mut args = vec![
        "--listen",
        &listen,
        "--gossip",
        &gossip,
        "--check",
        "0",
        "--metrics",
        "off",
        "--prefix-v4",
        "32",
        "--shards",
        "1",
    ];
    args.extend_from_slice(extra);
    NodeProcess::start(&args, env)
}

/// Starts two `sky node` processes on 127.0.0.1 and .2, the second seeded
/// with the first (through `SKY_SEEDS`), and waits until both see both.
fn two_processes() -> (NodeProcess, NodeProcess) {
    let node = |ip: &str, env: &[(&str, &str)]| process_on(ip, &[], env);
    let mut first = node("127.0.0.1", &[]);
    let seed = gossip_of(&first);
    let mut second = node("127.0.0.2", &[("SKY_SEEDS", seed.as_str())]);
    first.wait_for("ring changed members=2");
    second.wait_for("ring changed members=2");
    (first, second)
}

/// `sky node --seed`: the second node joins the first; on SIGTERM it
/// leaves the sky before it exits, and the first shrinks its ring.
#[test]
fn sky_node_processes_join_by_seed_and_sigterm_leaves_the_sky() {
    let (mut first, second) = two_processes();
    // `sky probe members` prints the same view from either node.
    let view = |node: &NodeProcess| {
        let listen = node.listen_addr();
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_sky"))
            .args(["probe", "members", "--sky", &listen])
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        (listen, String::from_utf8_lossy(&out.stdout).to_string())
    };
    let ((l1, v1), (l2, v2)) = (view(&first), view(&second));
    assert_eq!(v1, v2, "one view");
    assert!(
        v1.starts_with("ring ") && v1.contains(" members 2 replicas 2 prefix_v4 /32"),
        "{v1}"
    );
    for listen in [l1, l2] {
        assert!(
            v1.lines().any(|l| l == format!("member {listen}")),
            "{listen}: {v1}"
        );
    }
    let (status, log) = second.terminate();
    assert!(status.success(), "{log}");
    assert!(log.contains("left the sky"), "{log}");
    first.wait_for("ring changed members=1");
}

/// A node killed with SIGKILL says nothing; the other finds it down by
/// failed probes and shrinks its ring (within `wait_for`'s 10 s bound).
#[test]
fn a_killed_sky_node_is_dropped_from_the_ring() {
    let (mut first, second) = two_processes();
    drop(second); // SIGKILL
    first.wait_for("ring changed members=1");
}

/// Handoff on a real node: after a ring change, an entry the node no longer
/// owns is still answered during the grace, then dropped (and counted);
/// entries it still owns stay.
#[test]
fn entries_no_longer_owned_are_answered_until_the_grace_then_dropped() {
    use std::sync::Arc;

    use sky_node::probe::AddrSecret;
    use sky_proto::ring::Ring;
    use sky_proto::wire::{Flags, Message, Tag, VirtualAddr};

    let config = Config {
        shards: Some(1),
        ring: one_owner_per_ip(),
        keepalive: Duration::from_secs(10),
        handoff_grace: Duration::from_secs(1),
        ..config(EngineChoice::Mmsg, "127.0.0.1:0")
    };
    let node = Node::start(&config).expect("node starts");
    let me = node.local_addr();
    // A view in which this node shares the ring with four others (only
    // payload: nothing is sent to them).
    let ring = Ring::new(
        config.ring,
        (2..=5u8)
            .map(|i| SocketAddr::from(([127, 0, 0, i], 7700)))
            .chain([me]),
    );
    let key_where = |owned: bool| {
        (0..=255u8)
            .map(secret)
            .find(|k| ring.is_owner(me, &k.address()) == owned)
            .expect("a key")
    };
    let (kept, moved) = (key_where(true), key_where(false));
    let client = socket_for(me);
    let cookie = cookie(&client, me);
    let tag = Tag([3; 4]);
    for key in [&kept, &moved] {
        client
            .send_to(&emit(key.register(tag, cookie, Flags(0))), me)
            .unwrap();
        let replies = drain(&client);
        assert!(
            matches!(
                Message::decode(&replies[0].0),
                Ok(Message::Registered { .. })
            ),
            "{replies:?}"
        );
    }
    let lookup = |key: &AddrSecret| {
        let msg = Message::Lookup {
            tag,
            cookie,
            target: key.address(),
            caller: VirtualAddr::default(),
            hint: [0; 16],
        };
        client.send_to(&emit(msg), me).unwrap();
        // The introduction goes to the registrant: the same socket here.
        drain(&client)
            .into_iter()
            .filter_map(|(bytes, _)| Message::decode(&bytes).ok())
            .find(|m| m.tag() == Some(tag))
            .expect("an answer")
    };
    node.ring().store(Arc::new(ring.clone()));
    let changed = Instant::now();
    assert!(
        matches!(lookup(&moved), Message::Online { .. }),
        "answered during the grace"
    );
    let dropped_at = loop {
        match lookup(&moved) {
            Message::NotOwner { hint, version, .. } => {
                assert_eq!(version, ring.version());
                assert_ne!(hint, me);
                break changed.elapsed();
            }
            Message::Online { .. } => {}
            other => panic!("{other:?}"),
        }
        assert!(
            changed.elapsed() < Duration::from_secs(8),
            "never handed off"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(
        dropped_at >= Duration::from_secs(1),
        "dropped before the grace: {dropped_at:?}"
    );
    assert!(
        matches!(lookup(&kept), Message::Online { .. }),
        "an owned entry stays"
    );
    let metrics = scrape(&node);
    assert!(
        metrics.contains("sky_handoff_dropped_entries_total 1"),
        "{metrics}"
    );
    node.shutdown().unwrap();
}

/// A planned stop is a departure, not a failure: the other node reports
/// it `left` (`sky_members{state="left"}`), never `down`, so
/// `SkyMemberDown` does not page on a scale-in.
#[test]
fn a_graceful_leave_shows_as_left_never_down() {
    let first = node_on(1, Vec::new());
    let second = node_on(2, vec![first.gossip_addr()]);
    assert!(wait_for_one_view(&[&first, &second], 2).is_some());
    second.shutdown().unwrap();
    let end = Instant::now() + CONVERGE;
    let metrics = loop {
        let m = scrape(&first);
        if sample(&m, "sky_members{state=\"left\"}") == 1.0 || Instant::now() > end {
            break m;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(
        sample(&metrics, "sky_members{state=\"left\"}"),
        1.0,
        "{metrics}"
    );
    assert_eq!(sample(&metrics, "sky_members{state=\"down\"}"), 0.0);
    first.shutdown().unwrap();
}

/// Two nodes whose ring settings differ never share a view: a node refuses
/// the other's gossip, says so in an error log naming both settings, and
/// counts it (`sky_gossip_refused_total{reason="ring_settings"}`).
#[test]
fn nodes_with_other_ring_settings_refuse_each_other_loudly() {
    let node = |ip: &str, replicas: &str, env: &[(&str, &str)]| {
        process_on(ip, &["--replicas", replicas], env)
    };
    let mut first = node("127.0.0.1", "2", &[]);
    let seed = gossip_of(&first);
    let second = node("127.0.0.2", "3", &[("SKY_SEEDS", seed.as_str())]);
    let line = first.wait_for("refusing gossip from a sky node with other ring settings");
    assert!(
        line.contains("ours=replicas 2") && line.contains("theirs=replicas 3"),
        "{line}"
    );
    // (The first answers nothing, so the second hears nothing to refuse.)
    // Each still serves a ring of one.
    for node in [&first, &second] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_sky"))
            .args(["probe", "members", "--sky", &node.listen_addr()])
            .output()
            .unwrap();
        assert!(String::from_utf8_lossy(&out.stdout).contains(" members 1 "));
    }
    // `sky probe members --also` shows the split, and exits 1.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sky"))
        .args(["probe", "members", "--sky", &first.listen_addr()])
        .args(["--also", &second.listen_addr()])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        text.contains("differs ") && text.contains("replicas 3"),
        "{text}"
    );
    // In process, the refusal is counted.
    let a = node_on(3, Vec::new());
    let b = Node::start(&Config {
        seeds: vec![a.gossip_addr()],
        ring: RingConfig {
            replicas: 3,
            ..one_owner_per_ip()
        },
        shards: Some(1),
        ..config(EngineChoice::Mmsg, "127.0.0.4:0")
    })
    .unwrap();
    let end = Instant::now() + CONVERGE;
    while sample(
        &scrape(&a),
        "sky_gossip_refused_total{reason=\"ring_settings\"}",
    ) == 0.0
        && Instant::now() < end
    {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        sample(
            &scrape(&a),
            "sky_gossip_refused_total{reason=\"ring_settings\"}"
        ) > 0.0
    );
    assert_eq!(a.ring().load().len(), 1);
    b.shutdown().unwrap();
    a.shutdown().unwrap();
}
