//! `/metrics` as Prometheus sees it: `promtool check metrics` passes, every
//! metric has HELP, no label value can carry a peer, the engines' own
//! measurements (time in node, kernel queue drops) count what happened, the
//! HTTP server stays small under many idle connections, and every query of
//! the dashboard and the alerts runs on a real Prometheus scraping a real
//! node.

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

#[test]
fn alert_rules_and_scrape_config_pass_promtool() {
    let Some(promtool) = promtool() else { return };
    let root = env!("CARGO_MANIFEST_DIR");
    for args in [
        &["check", "config", "deploy/prometheus/scrape.yml"][..],
        &["check", "rules", "deploy/prometheus/alerts.yml"][..],
        &["test", "rules", "deploy/prometheus/alerts_test.yml"][..],
    ] {
        let out = Command::new(promtool)
            .args(args)
            .current_dir(root)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "promtool {args:?}:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// The alert rules and the dashboard name only metrics and label values the
/// node exports: a rename cannot silently blind them.
#[test]
fn alerts_and_dashboard_use_only_exported_names() {
    let (text, _) = busy_node_metrics().remove(0);
    let mut exported: BTreeSet<&str> = text
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split(['{', ' ']).next())
        .collect();
    // A histogram by its own name too (its series add _bucket, _sum, _count).
    exported.extend(
        text.lines()
            .filter_map(|l| l.strip_prefix("# TYPE ")?.strip_suffix(" histogram")),
    );
    // The `reason` values each metric exports (every one is resolved at
    // start, so a busy node shows them all, at 0 or more).
    let mut reasons: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((name, labels)) = line.split_once('{') else {
            continue;
        };
        if let Some(value) = labels
            .split_once("reason=\"")
            .and_then(|(_, v)| v.split_once('"'))
            .map(|(v, _)| v)
        {
            reasons.entry(name).or_default().insert(value);
        }
    }
    // The drop reasons are the core's closed set, and table_full is no
    // longer one of them: a full table refuses, it does not drop.
    assert_eq!(
        reasons.get(metrics::DROPPED),
        Some(
            &sky_node::shard::DropReason::ALL
                .iter()
                .map(|r| r.label())
                .collect()
        )
    );
    assert_eq!(
        reasons.get(metrics::REGISTRATIONS_REFUSED),
        Some(
            &sky_node::presence::Refused::ALL
                .iter()
                .map(|r| r.label())
                .collect()
        )
    );
    let root = env!("CARGO_MANIFEST_DIR");
    for file in [
        "deploy/prometheus/alerts.yml",
        "grafana/dashboards/sky.json",
    ] {
        let body = std::fs::read_to_string(format!("{root}/{file}")).unwrap();
        let mut rest = body.as_str();
        while let Some(i) = rest.find("sky_") {
            let name: String = rest[i..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            rest = &rest[i + name.len()..];
            // Every name is a series as exported (a histogram's too: its
            // _bucket, _sum and _count).
            if name.len() > 4 && !name.ends_with('_') {
                assert!(
                    exported.contains(name.as_str()),
                    "{file} uses {name}, not exported"
                );
            }
        }
        let parts: Vec<&str> = body.split("reason").collect();
        for (i, part) in parts.iter().enumerate().skip(1) {
            // The metric a `reason` matcher filters: the last name before it.
            let before = parts[..i].concat();
            let metric: String = before
                .rfind("sky_")
                .map(|j| {
                    before[j..]
                        .chars()
                        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                        .collect()
                })
                .unwrap_or_default();
            let Some(values) = part
                .strip_prefix("=~\\\"")
                .or_else(|| part.strip_prefix("=~\""))
                .or_else(|| part.strip_prefix("=\\\""))
                .or_else(|| part.strip_prefix("=\""))
            else {
                continue;
            };
            let values = values.split(['"', '\\']).next().unwrap();
            for v in values.split('|') {
                assert!(
                    reasons.get(metric.as_str()).is_some_and(|r| r.contains(v)),
                    "{file} uses reason {v} on {metric}, which exports {:?}",
                    reasons.get(metric.as_str())
                );
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

/// Every query of the dashboard filters on the `job` variable (and so
/// serves several skies scraped as several jobs).
#[test]
fn every_dashboard_query_filters_on_job() {
    let root = env!("CARGO_MANIFEST_DIR");
    let text = std::fs::read_to_string(format!("{root}/grafana/dashboards/sky.json")).unwrap();
    let dashboard: serde_json::Value = serde_json::from_str(&text).unwrap();
    let variables: Vec<&str> = dashboard["templating"]["list"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|v| v["name"].as_str())
        .collect();
    assert!(variables.contains(&"job"), "{variables:?}");
    let exprs = dashboard_exprs(&dashboard);
    assert!(exprs.len() > 30);
    for expr in &exprs {
        for selector in selectors(expr) {
            assert!(
                selector.contains("job=~\"$job\""),
                "`{selector}` in `{expr}` does not filter on $job"
            );
        }
    }
}

/// Every metric selector in a PromQL expression: a name and its braces.
fn selectors(expr: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = expr;
    while let Some(i) = rest.find(|c: char| c.is_ascii_alphabetic()) {
        rest = &rest[i..];
        let name: String = rest
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        rest = &rest[name.len()..];
        let metric = name.starts_with("sky_") || name.starts_with("process_") || name == "up";
        if !metric {
            continue;
        }
        let braces = rest
            .strip_prefix('{')
            .and_then(|r| r.split_once('}'))
            .map(|(inside, _)| inside);
        out.push(format!("{name}{{{}}}", braces.unwrap_or("")));
    }
    out
}

fn dashboard_exprs(dashboard: &serde_json::Value) -> Vec<String> {
    dashboard["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["targets"].as_array().cloned().unwrap_or_default())
        .filter_map(|t| t["expr"].as_str().map(str::to_string))
        .collect()
}

/// The expressions of alerts.yml (one line, or a folded block).
fn alert_exprs(rules: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut alert = String::new();
    let mut lines = rules.lines().peekable();
    while let Some(line) = lines.next() {
        if let Some(name) = line.trim().strip_prefix("- alert: ") {
            alert = name.to_string();
        }
        let Some(expr) = line.trim().strip_prefix("expr: ") else {
            continue;
        };
        if expr != ">-" {
            out.push((alert.clone(), expr.to_string()));
            continue;
        }
        let indent = line.len() - line.trim_start().len();
        let mut block = Vec::new();
        while let Some(next) = lines.next_if(|l| l.len() - l.trim_start().len() > indent) {
            block.push(next.trim());
        }
        out.push((alert.clone(), block.join(" ")));
    }
    out
}

/// GitHub's anchor for a Markdown heading.
fn anchor(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || *c == ' ' || *c == '-' || *c == '_')
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

/// Every alert names a runbook, and the runbook is a section of
/// deploy/README.md.
#[test]
fn every_alert_has_a_runbook_section() {
    let root = env!("CARGO_MANIFEST_DIR");
    let rules = std::fs::read_to_string(format!("{root}/deploy/prometheus/alerts.yml")).unwrap();
    let readme = std::fs::read_to_string(format!("{root}/deploy/README.md")).unwrap();
    let anchors: BTreeSet<String> = readme
        .lines()
        .filter_map(|l| l.strip_prefix('#'))
        .map(|h| anchor(h.trim_start_matches('#')))
        .collect();
    let blocks: Vec<&str> = rules.split("- alert: ").skip(1).collect();
    assert!(blocks.len() >= 13, "{} alerts", blocks.len());
    for block in blocks {
        let name = block.lines().next().unwrap().trim();
        let url = block
            .lines()
            .find_map(|l| l.trim().strip_prefix("runbook_url: "))
            .unwrap_or_else(|| panic!("{name} has no runbook_url"))
            .trim_matches('"');
        let section = url
            .strip_prefix("deploy/README.md#")
            .unwrap_or_else(|| panic!("{name}: {url} is not a section of deploy/README.md"));
        assert_eq!(section, name.to_lowercase(), "{name}: {url}");
        assert!(
            anchors.contains(section),
            "deploy/README.md has no #{section}"
        );
    }
}

/// A Prometheus server of our own, killed when dropped.
struct Prometheus {
    child: Child,
    addr: SocketAddr,
    dir: std::path::PathBuf,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Prometheus {
    /// Scrapes `target` every second, as job `sky`.
    fn start(target: SocketAddr) -> Prometheus {
        let dir = std::env::temp_dir().join(format!("sky-prometheus-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let config = dir.join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global: {{scrape_interval: 1s, evaluation_interval: 1s}}\n\
                 scrape_configs:\n  - job_name: sky\n    static_configs:\n      \
                 - targets: ['{target}']\n"
            ),
        )
        .unwrap();
        // A free port, told to Prometheus (which cannot say which it took).
        let addr = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .arg("--log.level=warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("prometheus starts");
        Prometheus { child, addr, dir }
    }

    /// `/api/v1/query`: the result vector, or the error Prometheus gave.
    fn query(&self, promql: &str) -> Result<Vec<serde_json::Value>, String> {
        let encoded: String = promql
            .bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                    (b as char).to_string()
                }
                _ => format!("%{b:02X}"),
            })
            .collect();
        let mut s = TcpStream::connect(self.addr).map_err(|e| e.to_string())?;
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        write!(
            s,
            "GET /api/v1/query?query={encoded} HTTP/1.0\r\nHost: localhost\r\n\r\n"
        )
        .map_err(|e| e.to_string())?;
        let mut text = String::new();
        s.read_to_string(&mut text).map_err(|e| e.to_string())?;
        let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
        let v: serde_json::Value =
            serde_json::from_str(body).map_err(|e| format!("{e}: {text}"))?;
        if v["status"] != "success" {
            return Err(format!("{}: {}", v["errorType"], v["error"]));
        }
        Ok(v["data"]["result"].as_array().cloned().unwrap_or_default())
    }
}

fn prometheus_binary() -> bool {
    let found = Command::new("prometheus").arg("--version").output().is_ok();
    match (found, std::env::var_os("CI").is_some()) {
        (true, _) => true,
        (false, true) => {
            panic!("prometheus missing in CI: .ci/test installs it (apt package prometheus)")
        }
        (false, false) => {
            eprintln!(
                "WARNING: prometheus not found; run .ci/test (installs it) to check the dashboard's queries"
            );
            false
        }
    }
}

/// Every panel query of the dashboard returns data from a real Prometheus
/// scraping a real, busy node, with the dashboard's variables as Grafana
/// fills them; every alert expression evaluates without error.
#[test]
fn dashboard_and_alert_queries_run_on_a_live_prometheus() {
    if !prometheus_binary() {
        return;
    }
    let node = start(engines()[0]);
    let sky = node.local_addr();
    let prometheus = Prometheus::start(node.metrics_addr().unwrap());
    let mut alice = Client::new(sky, QUIET * 4).unwrap();
    let reg = alice.register(&secret(0x3c), true).unwrap();
    // Traffic while Prometheus takes its first scrapes, until it has a few
    // (rates need two samples).
    let end = Instant::now() + Duration::from_secs(60);
    loop {
        alice.lookup(reg.address, VirtualAddr([2; 16])).unwrap();
        alice.ping().unwrap();
        let scrapes = prometheus
            .query("count_over_time(up{job=\"sky\"}[1m]) and up{job=\"sky\"} == 1")
            .ok()
            .and_then(|r| r.first().cloned())
            .and_then(|s| s["value"][1].as_str()?.parse::<f64>().ok());
        if scrapes.is_some_and(|n| n >= 4.0) {
            break;
        }
        assert!(Instant::now() < end, "prometheus never scraped the node");
        std::thread::sleep(Duration::from_millis(250));
    }

    let root = env!("CARGO_MANIFEST_DIR");
    let text = std::fs::read_to_string(format!("{root}/grafana/dashboards/sky.json")).unwrap();
    let dashboard: serde_json::Value = serde_json::from_str(&text).unwrap();
    let grafana = |expr: &str| {
        expr.replace("$job", "sky")
            .replace("$instance", ".*")
            .replace("$__rate_interval", "10s")
            .replace("$__range", "1m")
    };
    let mut empty = Vec::new();
    for expr in dashboard_exprs(&dashboard) {
        match prometheus.query(&grafana(&expr)) {
            Ok(result) if result.is_empty() => empty.push(expr),
            Ok(_) => {}
            Err(e) => panic!("`{expr}` fails: {e}"),
        }
    }
    assert!(
        empty.is_empty(),
        "queries without data:\n{}",
        empty.join("\n")
    );
    for variable in ["sky_build_info", "sky_build_info{job=~\"sky\"}"] {
        assert!(
            !prometheus.query(variable).unwrap().is_empty(),
            "{variable}"
        );
    }
    let rules = std::fs::read_to_string(format!("{root}/deploy/prometheus/alerts.yml")).unwrap();
    let alerts = alert_exprs(&rules);
    assert!(alerts.len() >= 13, "{alerts:?}");
    for (alert, expr) in alerts {
        if let Err(e) = prometheus.query(&expr) {
            panic!("{alert}: `{expr}` fails: {e}");
        }
    }
    drop(prometheus);
    node.shutdown().unwrap();
}
