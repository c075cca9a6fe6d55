//! `/metrics` as Prometheus sees it: `promtool check metrics` passes, every
//! metric has HELP, and no label value can carry a peer.

use std::collections::BTreeSet;
use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::process::{Command, Stdio};

use sky_node::probe::Client;
use sky_proto::wire::{Token, VirtualAddr};

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
        let reg = alice.register(Token([0xab; 16]), true).unwrap();
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
        for line in text.lines().filter(|l| l.starts_with("sky_")) {
            let name = line.split(['{', ' ']).next().unwrap();
            assert!(helped.contains(name), "{name} has no HELP");
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
        "state",
        "direction",
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
                let hexish = value.len() >= 8 && value.chars().all(|c| c.is_ascii_hexdigit());
                assert!(!hexish, "hex in a label: {line}");
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
    let exported: BTreeSet<&str> = text
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split(['{', ' ']).next())
        .collect();
    let reasons: BTreeSet<&str> = sky_node::shard::DropReason::ALL
        .iter()
        .map(|r| r.label())
        .collect();
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
            // Histogram-free: every name is a series as exported.
            if name.len() > 4 && !name.ends_with('_') {
                assert!(
                    exported.contains(name.as_str()),
                    "{file} uses {name}, not exported"
                );
            }
        }
        for part in body.split("reason").skip(1) {
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
                    reasons.contains(v),
                    "{file} uses reason {v}, not a drop reason"
                );
            }
        }
    }
}
