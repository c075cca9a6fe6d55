//! `sky bench` smoke runs: two seconds in each mode at a low rate against
//! a real node (and the baseline, and coturn for `stun`), with one thread
//! and with two, against one node and against a sky of three, checking
//! correctness only: every answer well-formed, nothing lost, every
//! registration at exactly its owners. No timing is asserted.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use sky_node::config::{Config, EngineChoice};
use sky_node::engine::Node;
use sky_proto::ring::RingConfig;
use sky_proto::wire::VirtualAddr;

use crate::common::*;

const SKY: &str = env!("CARGO_BIN_EXE_sky");

/// The population of every smoke run.
const POPULATION: usize = 500;

fn smoke(target: &str, mode: &str) -> serde_json::Value {
    smoke_with(target, mode, &[])
}

/// A smoke run with `extra` arguments: everything sent is answered as
/// expected.
fn smoke_with(target: &str, mode: &str, extra: &[&str]) -> serde_json::Value {
    let out = Command::new(SKY)
        .args(["bench", "--sky", target, "--mode", mode, "--duration", "2"])
        .args(extra)
        .args([
            "--rate",
            "2000",
            "--clients",
            "4",
            "--population",
            &POPULATION.to_string(),
            "--json",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "sky bench --mode {mode}: {out:?}");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("--json parses");
    let n = |k: &str| {
        report[k]
            .as_u64()
            .unwrap_or_else(|| panic!("{k} in {report}"))
    };
    assert!(n("sent") >= 3000, "{mode}: too few sent: {report}");
    assert_eq!(n("answered"), n("sent"), "{mode}: {report}");
    assert_eq!(n("lost"), 0, "{mode}: {report}");
    assert_eq!(n("malformed"), 0, "{mode}: {report}");
    report
}

#[test]
fn sky_bench_smoke_runs_in_every_node_mode_lose_nothing() {
    let _heavy = heavy();
    for engine in engines() {
        let mut config = config(engine, "127.0.0.1:0");
        config.intros_per_second = 255;
        // The population comes from one IP: each new address costs one of
        // its signature checks, which a benchmark raises.
        config.checks_per_source = u16::MAX;
        let node = sky_node::engine::Node::start(&config).unwrap();
        let target = node.local_addr().to_string();
        for mode in [
            "ping",
            "register",
            "lookup-online",
            "lookup-offline",
            "mixed",
        ] {
            let r = smoke(&target, mode);
            if mode == "lookup-online" {
                assert_eq!(
                    r["introductions"], r["answered"],
                    "every lookup introduced: {r}"
                );
                assert_eq!(r["reply_bytes_per_op"].as_f64(), Some(13.0));
                assert_eq!(r["introduction_bytes_per_op"].as_f64(), Some(48.0));
            }
        }
        node.shutdown().unwrap();
    }
}

#[test]
fn the_baseline_answers_like_a_node() {
    let _heavy = heavy();
    for engine in engines() {
        let mut config = config(engine, "127.0.0.1:0");
        config.metrics = None;
        let baseline = sky_lab::baseline::start(&config).unwrap();
        let target = baseline.local_addr().to_string();
        for mode in ["ping", "register", "lookup-online", "mixed"] {
            // Same sizes, same destinations as the node.
            answers_like_a_node(mode, &smoke(&target, mode));
        }
        baseline.shutdown().unwrap();
    }
}

/// coturn, installed by .ci/test (Debian package `coturn`).
struct Coturn(Child);

impl Drop for Coturn {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn sky_bench_stun_mode_against_coturn() {
    if Command::new("turnserver").arg("--help").output().is_err() {
        if std::env::var_os("CI").is_some() {
            panic!("turnserver missing in CI: .ci/test installs it (apt package coturn)");
        }
        eprintln!("WARNING: coturn not found; run .ci/test (installs it) for the stun smoke run");
        return;
    }
    let _heavy = heavy();
    let port = {
        let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        s.local_addr().unwrap().port().to_string()
    };
    let _coturn = Coturn(
        Command::new("turnserver")
            .args([
                "-n",
                "--stun-only",
                "--listening-ip",
                "127.0.0.1",
                "--listening-port",
                &port,
            ])
            .args([
                "--no-cli",
                "--no-tls",
                "--no-dtls",
                "--no-tcp",
                "--log-file",
                "stdout",
            ])
            .args(["--simple-log", "--relay-threads", "1"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let target = format!("127.0.0.1:{port}");
    // Wait until coturn answers one Binding request.
    let probe = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    probe
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let mut req = [0u8; 20];
    req[1] = 1;
    req[4..8].copy_from_slice(&[0x21, 0x12, 0xa4, 0x42]);
    let ready = (0..100).any(|_| {
        probe.send_to(&req, &target).unwrap();
        recv(&probe).is_some()
    });
    assert!(ready, "coturn did not answer on {target}");
    let r = smoke(&target, "stun");
    assert_eq!(r["request_bytes_per_op"].as_f64(), Some(20.0));
}

/// Every online lookup introduced, and each answer the node's size.
fn answers_like_a_node(mode: &str, r: &serde_json::Value) {
    if mode == "lookup-online" {
        assert_eq!(r["introductions"], r["answered"], "{r}");
        assert_eq!(r["reply_bytes_per_op"].as_f64(), Some(13.0));
        assert_eq!(r["introduction_bytes_per_op"].as_f64(), Some(48.0));
    }
    if mode == "register" {
        assert_eq!(r["reply_bytes_per_op"].as_f64(), Some(46.0));
    }
}

/// Checks a `--threads 2` run in `mode` against `nodes` nodes.
fn threads_smoke(target: SocketAddr, mode: &str, nodes: u64) -> serde_json::Value {
    let r = smoke_with(&target.to_string(), mode, &["--threads", "2"]);
    assert_eq!(r["threads"], 2, "{r}");
    assert_eq!(r["nodes"], nodes, "{mode}: {r}");
    // Each lookup at the target's first owner, each introduction to the
    // socket of the thread that registered it.
    answers_like_a_node(mode, &r);
    r
}

/// Population member `i`'s address, as `sky bench` registers it.
fn member(i: usize) -> VirtualAddr {
    sky_lab::bench::secret(i).address()
}

/// Whether `node`'s presence table holds `address` (alive at any time).
fn holds(node: &Node, address: &VirtualAddr) -> bool {
    node.presence().peek(address, 0).is_some()
}

// The modes run in this order: lookup-online registers the population in
// its setup, and every later run must leave it where it is.
const MODES: [&str; 4] = ["lookup-online", "register", "lookup-offline", "mixed"];

#[test]
fn sky_bench_threads_load_a_two_shard_node_and_lose_nothing() {
    let _heavy = heavy();
    let engine = engines()[0];
    let node = Node::start(&Config {
        intros_per_second: 255,
        checks_per_source: u16::MAX,
        keepalive: Duration::from_secs(30),
        ..config(engine, "127.0.0.1:0")
    })
    .unwrap();
    assert_eq!(node.shards(), 2);
    for mode in MODES {
        threads_smoke(node.local_addr(), mode, 1);
        assert_eq!(
            node.presence().len(),
            POPULATION,
            "{mode}: each address once"
        );
        assert!((0..POPULATION).all(|i| holds(&node, &member(i))), "{mode}");
    }
    node.shutdown().unwrap();
}

/// A node of a sky on `127.0.0.N`, every IP its own operator.
fn sky_node(n: u8, seeds: Vec<SocketAddr>) -> Node {
    Node::start(&Config {
        seeds,
        shards: Some(1),
        ring: RingConfig {
            prefix_v4: 32,
            ..RingConfig::default()
        },
        intros_per_second: 255,
        checks_per_source: u16::MAX,
        keepalive: Duration::from_secs(30),
        ..config(EngineChoice::Mmsg, &format!("127.0.0.{n}:0"))
    })
    .expect("node starts")
}

#[test]
fn sky_bench_threads_load_a_sky_of_three_registering_at_exactly_the_owners() {
    let _heavy = heavy();
    let a = sky_node(1, Vec::new());
    let b = sky_node(2, vec![a.gossip_addr()]);
    let c = sky_node(3, vec![a.gossip_addr()]);
    let sky = [&a, &b, &c];
    // Every node serves one view of three members (bounded wait).
    let end = Instant::now() + Duration::from_secs(20);
    loop {
        let views: Vec<(u32, usize)> = sky
            .iter()
            .map(|n| (n.ring().load().version(), n.ring().load().len()))
            .collect();
        if views.iter().all(|&v| v == (views[0].0, 3)) {
            break;
        }
        assert!(Instant::now() < end, "no common view of three: {views:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
    let ring = a.ring().load_full();
    for mode in MODES {
        threads_smoke(a.local_addr(), mode, 3);
        // Each address at exactly its owners: k = 2 copies, none elsewhere.
        let total: usize = sky.iter().map(|n| n.presence().len()).sum();
        assert_eq!(total, 2 * POPULATION, "{mode}: entries in the sky");
        for i in 0..POPULATION {
            let address = member(i);
            let owners = ring.owners(&address);
            for node in sky {
                assert_eq!(
                    holds(node, &address),
                    owners.contains(node.service_addr()),
                    "{mode}: member {i} at {}",
                    node.local_addr()
                );
            }
        }
    }
    for node in [a, b, c] {
        node.shutdown().unwrap();
    }
}

/// A node filled in process (`sky bench --serve-node`) answers the
/// synthetic population's lookups online and introduces each (from four
/// loopback IPs), on both engines: what spec6.py's lookups at 10^7 entries
/// measure.
#[test]
fn synthetic_lookups_of_a_prefilled_node_are_all_online() {
    let _heavy = heavy();
    for engine in engines() {
        let mut config = config(engine, "127.0.0.1:0");
        config.metrics = None;
        config.capacity = 4096;
        config.max_per_ip = Some(4096);
        config.max_per_prefix = Some(4096);
        config.intros_per_second = u8::MAX;
        let node = sky_lab::bench::serve_prefilled(&config, POPULATION).unwrap();
        assert_eq!(node.presence().len(), POPULATION);
        let target = node.local_addr().to_string();
        let r = smoke_with(
            &target,
            "lookup-online",
            &["--synthetic", "--source-ips", "4"],
        );
        assert_eq!(r["introduced"], r["answered"], "{engine:?}: {r}");
        node.shutdown().unwrap();
    }
}
