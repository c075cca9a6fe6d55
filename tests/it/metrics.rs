//! `/metrics` as Prometheus sees it: `promtool check metrics` passes, every
//! metric has HELP, no label value can carry a peer, the engines' own
//! measurements (time in node, kernel queue drops) count what happened, the
//! HTTP server stays small under many idle connections, and (`dashboard.rs`)
//! every query of the dashboard and the alerts runs on a real Prometheus
//! scraping a real node.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use sky_node::config::EngineChoice;
use sky_node::engine::Node;
use sky_node::metrics;
use sky_node::presence::Presence;
use sky_node::probe::Client;
use sky_node::shard::{Core, Output, Stats};
use sky_proto::time::MonoTime;
use sky_proto::wire::{Cookie, Message, Tag, VirtualAddr};

use crate::cli::{EPHEMERAL, NodeProcess};
use crate::common::*;

mod dashboard;

/// promtool comes from Debian's `prometheus` package, which the test
/// command (`.ci/test`) installs. Without it the test fails in CI and
/// says so loudly elsewhere.
fn promtool() -> Option<&'static str> {
    let found = Command::new("promtool").arg("--version").output().is_ok();
    match (found, std::env::var_os("CI").is_some()) {
        (true, _) => Some("promtool"),
        (false, true) => {
            panic!("promtool missing in CI: .ci/test installs it (apt package prometheus)")
        }
        (false, false) => {
            eprintln!("WARNING: promtool not found; run .ci/test (installs it) to check /metrics");
            None
        }
    }
}

/// A node that has seen every kind of traffic, with its metrics text and
/// the client endpoints and addresses that must not appear in labels.
fn busy_node_metrics() -> Vec<(String, BTreeSet<String>)> {
    let mut out = Vec::new();
    for engine in engines() {
        let node = start(engine);
        let sky = node.local_addr();
        let mut alice = Client::new(sky, QUIET * 4).unwrap();
        let mut bob = Client::new(sky, QUIET * 4).unwrap();
        let reg = alice.register(&secret(0xab), true).unwrap();
        bob.lookup(reg.address, VirtualAddr([0xcd; 16])).unwrap();
        bob.lookup(VirtualAddr([0xef; 16]), VirtualAddr([0xcd; 16]))
            .unwrap();
        bob.ping().unwrap();
        let garbage = socket_for(sky);
        garbage.send_to(b"\x07garbage", sky).unwrap();
        let m = wait_for_sample(&node, "sky_lookups_total{outcome=\"offline\"}", 1.0);
        let mut secrets = BTreeSet::new();
        for c in [&alice, &bob] {
            let a = c.local_addr().unwrap();
            secrets.insert(a.to_string());
            secrets.insert(a.port().to_string());
        }
        secrets.insert(reg.address.to_hex());
        secrets.insert(VirtualAddr([0xcd; 16]).to_hex());
        out.push((m, secrets));
        node.shutdown().unwrap();
    }
    out
}

#[test]
fn metrics_pass_promtool_check_metrics() {
    let Some(promtool) = promtool() else { return };
    for (text, _) in busy_node_metrics() {
        let mut child = Command::new(promtool)
            .args(["check", "metrics"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        let complaints = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "promtool failed:\n{complaints}");
        assert!(
            complaints.trim().is_empty(),
            "promtool complained:\n{complaints}"
        );
    }
}

#[test]
fn every_sky_metric_has_help_and_a_conventional_name() {
    for (text, _) in busy_node_metrics() {
        let helped: BTreeSet<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("# HELP "))
            .filter_map(|l| l.split_whitespace().next())
            .collect();
        let histograms: BTreeSet<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE ")?.strip_suffix(" histogram"))
            .collect();
        for line in text.lines().filter(|l| l.starts_with("sky_")) {
            let series = line.split(['{', ' ']).next().unwrap();
            // A histogram's series are its name and a suffix.
            let name = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| series.strip_suffix(s).filter(|h| histograms.contains(h)))
                .unwrap_or(series);
            assert!(helped.contains(name), "{name} has no HELP");
        }
        for h in &histograms {
            assert!(
                h.ends_with("_seconds") || h.ends_with("_bytes"),
                "{h}: a unit"
            );
        }
        for (name, kind) in text
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE sky_"))
            .filter_map(|l| l.split_once(' '))
        {
            assert_eq!(
                name.ends_with("_total"),
                kind == "counter",
                "sky_{name} is a {kind}"
            );
        }
    }
}

#[test]
fn no_label_value_is_an_ip_port_or_address() {
    let allowed_labels = [
        "kind",
        "reason",
        "outcome",
        "engine",
        "shard",
        "version",
        "revision",
        "state",
        "direction",
        "le",
    ];
    for (text, secrets) in busy_node_metrics() {
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let Some(labels) = line.split_once('{').and_then(|(_, r)| r.split_once('}')) else {
                continue;
            };
            for pair in labels.0.split(',').filter(|p| !p.is_empty()) {
                let (name, value) = pair.split_once('=').unwrap();
                let value = value.trim_matches('"');
                if line.starts_with("sky_") {
                    assert!(
                        allowed_labels.contains(&name),
                        "unexpected label {name} in {line}"
                    );
                }
                assert!(value.parse::<IpAddr>().is_err(), "IP in a label: {line}");
                assert!(
                    value.parse::<SocketAddr>().is_err(),
                    "endpoint in a label: {line}"
                );
                assert!(
                    !secrets.contains(value),
                    "a peer's value in a label: {line}"
                );
                // The build's git revision is hex, and nobody's address.
                let hexish = value.len() >= 8 && value.chars().all(|c| c.is_ascii_hexdigit());
                assert!(!hexish || name == "revision", "hex in a label: {line}");
                if name == "shard" {
                    assert!(value.parse::<usize>().is_ok_and(|n| n < 1024), "{line}");
                }
            }
        }
    }
}

/// `sky_build_info` names the commit the node was built from.
#[test]
fn build_info_carries_the_git_revision() {
    let (text, _) = busy_node_metrics().remove(0);
    let line = text
        .lines()
        .find(|l| l.starts_with(metrics::BUILD_INFO))
        .expect("sky_build_info");
    let git = Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
    let expected = match (std::env::var_os("SKY_REVISION"), git) {
        (Some(_), _) => return, // set by whoever builds: taken as given
        (None, Some(rev)) => rev,
        (None, None) => "unknown".into(),
    };
    assert!(
        line.contains(&format!("revision=\"{expected}\"")),
        "{line}, expected revision {expected}"
    );
    assert_eq!(metrics::REVISION, expected);
}

/// Every datagram the core handles is in `sky_datagram_duration_seconds`
/// exactly once, on both engines (the engines record a batch at a time).
#[test]
fn the_time_in_node_histogram_counts_every_handled_datagram_once() {
    for engine in engines() {
        let node = start(engine);
        let sky = node.local_addr();
        let mut alice = Client::new(sky, QUIET * 4).unwrap();
        let reg = alice.register(&secret(0x5a), true).unwrap();
        for _ in 0..20 {
            alice.lookup(reg.address, VirtualAddr([1; 16])).unwrap();
        }
        alice.ping().unwrap();
        let count = format!("{}_count", metrics::DATAGRAM_DURATION);
        let received = |m: &str| -> f64 {
            m.lines()
                .filter(|l| l.starts_with(metrics::DATAGRAMS_RECEIVED))
                .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
                .sum()
        };
        let m = wait_until(&node, |m| {
            received(m) > 0.0 && sample(m, &count) == received(m)
        });
        assert!(received(&m) >= 23.0, "{engine:?}: {m}");
        assert_eq!(sample(&m, &count), received(&m), "{engine:?}: {m}");
        let inf = sample(
            &m,
            &format!("{}_bucket{{le=\"+Inf\"}}", metrics::DATAGRAM_DURATION),
        );
        assert_eq!(inf, sample(&m, &count), "{engine:?}");
        assert!(
            sample(&m, &format!("{}_sum", metrics::DATAGRAM_DURATION)) > 0.0,
            "{engine:?}"
        );
        node.shutdown().unwrap();
    }
}

/// A core that holds its first datagram until told to go on, so that a
/// test can fill the socket's receive queue behind it.
struct Stalling<C> {
    core: C,
    stalled: Option<(mpsc::Sender<()>, mpsc::Receiver<()>)>,
}

impl<C: Core> Core for Stalling<C> {
    fn handle_datagram(
        &mut self,
        now: MonoTime,
        from: SocketAddr,
        buf: &mut [u8],
        len: usize,
        reply: &mut [u8],
    ) -> Output {
        if let Some((stalled, go_on)) = self.stalled.take() {
            stalled.send(()).unwrap();
            go_on.recv().unwrap();
        }
        self.core.handle_datagram(now, from, buf, len, reply)
    }
    fn handle_timeout(&mut self, now: MonoTime) {
        self.core.handle_timeout(now)
    }
    fn take_stats(&mut self) -> Stats {
        self.core.take_stats()
    }
    fn stats_mut(&mut self) -> &mut Stats {
        self.core.stats_mut()
    }
    fn drop_oversized(&mut self, len: usize) {
        self.core.drop_oversized(len)
    }
}

/// The drops column of /proc/net/udp for the IPv4 socket on `port`.
fn kernel_drops(port: u16) -> u64 {
    let table = std::fs::read_to_string("/proc/net/udp").unwrap();
    let local = format!(":{port:04X}");
    table
        .lines()
        .skip(1)
        .filter(|l| {
            l.split_whitespace()
                .nth(1)
                .is_some_and(|a| a.ends_with(&local))
        })
        .map(|l| l.split_whitespace().last().unwrap().parse::<u64>().unwrap())
        .sum()
}

fn ping(tag: u8) -> Vec<u8> {
    emit(Message::Ping {
        tag: Tag([tag; 4]),
        cookie: Cookie::default(),
    })
}

/// What the kernel drops on a full receive queue reaches
/// `sky_receive_queue_dropped_datagrams_total{shard}` exactly — the same
/// count the kernel shows in /proc/net/udp — on both engines. The core
/// stalls on its first datagram while 20 000 more arrive at a socket of
/// 4 KiB (and, on io_uring, 4096 provided buffers).
#[test]
fn kernel_receive_queue_drops_are_counted_per_shard() {
    for engine in engines() {
        let mut config = config(engine, "127.0.0.1:0");
        config.shards = Some(1);
        config.socket_buffer = 4096;
        let (stalled_tx, stalled) = mpsc::channel();
        let (go_on, go_on_rx) = mpsc::channel();
        let gate = Mutex::new(Some((stalled_tx, go_on_rx)));
        let node = Node::start_with(&config, Arc::new(Presence::new(16)), move |_, _, _, _| {
            Stalling {
                core: sky_lab::baseline::Baseline::default(),
                stalled: gate.lock().unwrap().take(),
            }
        })
        .unwrap();
        let sky = node.local_addr();
        let client = UdpSocket::bind("127.0.0.1:0").unwrap();
        client.send_to(&ping(0), sky).unwrap();
        stalled
            .recv_timeout(Duration::from_secs(10))
            .expect("the core takes the first datagram");
        let flood = ping(1);
        for _ in 0..20_000 {
            client.send_to(&flood, sky).unwrap();
        }
        go_on.send(()).unwrap();
        // Until a last ping is answered: the flood is over.
        let last = UdpSocket::bind("127.0.0.1:0").unwrap();
        last.set_read_timeout(Some(QUIET)).unwrap();
        let answered = (0..50).any(|_| {
            last.send_to(&ping(0xee), sky).unwrap();
            std::iter::from_fn(|| recv(&last)).any(|(d, _)| d[2..6] == [0xee; 4])
        });
        assert!(
            answered,
            "{engine:?}: the node never answered the last ping"
        );
        let dropped = kernel_drops(sky.port());
        assert!(dropped > 0, "{engine:?}: the kernel dropped nothing");
        let series = format!("{}{{shard=\"0\"}}", metrics::RECEIVE_QUEUE_DROPPED);
        let m = wait_until(&node, |m| sample(m, &series) >= dropped as f64);
        assert_eq!(sample(&m, &series), dropped as f64, "{engine:?}");
        let exhausted = sample(
            &m,
            &format!("{}{{shard=\"0\"}}", metrics::URING_BUFFERS_EXHAUSTED),
        );
        // Whether the ring ran out of buffers too depends on when the
        // kernel ran the receive (before or after the stall ended).
        eprintln!("{engine:?}: {dropped} dropped by the kernel, ENOBUFS {exhausted} times");
        if engine == EngineChoice::Mmsg {
            assert_eq!(exhausted, 0.0);
        }
        node.shutdown().unwrap();
    }
}

/// Threads in a process, and its resident memory in KiB.
fn threads_and_rss(pid: u32) -> (usize, u64) {
    let threads = std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .count();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap();
    (threads, rss)
}

/// An HTTP GET, answered in full (the server closes: HTTP/1.0).
fn http_get(addr: SocketAddr, path: &str) -> (String, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(s, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").expect("an HTTP response");
    (head.to_string(), body.to_string())
}

/// 500 idle connections to `/metrics` cost no thread and little memory, and
/// the next scrape is answered. The node runs the server on its control
/// thread and keeps at most 64 connections (64 × hyper's 16 KiB buffers is
/// 1 MiB); the bounds below leave room for the allocator. tiny_http, before,
/// took a thread per connection: 11 threads became 498 here, and 25 MiB of
/// RSS became 37 MiB, then 82–98 MiB once the connections closed.
#[test]
fn idle_metrics_connections_cost_no_threads_and_bounded_memory() {
    let node = NodeProcess::start(
        &[
            "--listen",
            "127.0.0.1:0",
            "--gossip",
            EPHEMERAL,
            "--check",
            "0",
            "--metrics",
            "127.0.0.1:0",
            "--shards",
            "1",
        ],
        &[],
    );
    let addr: SocketAddr = node.ready_field("metrics").parse().unwrap();
    let pid = node.pid();
    assert!(http_get(addr, "/metrics").0.contains(" 200 "));
    let (threads, rss) = threads_and_rss(pid);

    let idle: Vec<TcpStream> = (0..500)
        .map(|_| TcpStream::connect(addr).unwrap())
        .collect();
    // The server accepts in order: once this one is answered, all 500
    // were accepted (and all but the newest closed again).
    let (head, body) = http_get(addr, "/metrics");
    assert!(head.contains(" 200 "), "{head}");
    assert!(body.contains(metrics::BUILD_INFO));
    let (threads_held, rss_held) = threads_and_rss(pid);
    drop(idle);
    assert!(http_get(addr, "/healthz").1 == "ok\n");
    let (threads_after, rss_after) = threads_and_rss(pid);

    eprintln!(
        "threads {threads} / {threads_held} / {threads_after}, \
         RSS {rss} / {rss_held} / {rss_after} KiB (idle / 500 open / closed)"
    );
    assert_eq!(threads_held, threads, "a thread per connection");
    assert_eq!(threads_after, threads);
    for (when, kib) in [("with 500 open", rss_held), ("after", rss_after)] {
        assert!(
            kib < rss + 8 * 1024,
            "RSS grew from {rss} to {kib} KiB {when}"
        );
    }
}
