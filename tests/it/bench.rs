//! `sky bench` smoke runs: two seconds in each mode at a low rate against
//! a real node (and the baseline, and coturn for `stun`), checking
//! correctness only: every answer well-formed, nothing lost. No timing is
//! asserted.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::common::*;

const SKY: &str = env!("CARGO_BIN_EXE_sky");

fn smoke(target: &str, mode: &str) -> serde_json::Value {
    let out = Command::new(SKY)
        .args(["bench", "--sky", target, "--mode", mode, "--duration", "2"])
        .args([
            "--rate",
            "2000",
            "--clients",
            "4",
            "--population",
            "500",
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
            let r = smoke(&target, mode);
            if mode == "lookup-online" {
                // Same sizes, same destinations as the node.
                assert_eq!(r["introductions"], r["answered"], "{r}");
                assert_eq!(r["reply_bytes_per_op"].as_f64(), Some(13.0));
                assert_eq!(r["introduction_bytes_per_op"].as_f64(), Some(48.0));
            }
            if mode == "register" {
                assert_eq!(r["reply_bytes_per_op"].as_f64(), Some(46.0));
            }
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
