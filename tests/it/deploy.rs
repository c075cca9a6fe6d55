//! deploy/ as an operator uses it, checked with the operators' own tools:
//! the systemd unit under `systemd-analyze`.
//!
//! Each test names the programs it needs; `.ci/test` installs them (Debian
//! package `systemd`). Without one a test says so loudly and skips; in CI
//! (`CI` set) it fails instead.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::cli::SKY;
use crate::common::{Scratch, can_run};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// Runs `cmd`, panics with its output unless it succeeds.
fn ok(cmd: &mut Command) -> Output {
    let o = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        o.status.success(),
        "{cmd:?} failed: {}\n{}{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    o
}

fn text(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn deploy(file: &str) -> PathBuf {
    Path::new(ROOT).join("deploy").join(file)
}

// --- systemd -------------------------------------------------------------

/// The unit stays hardened (an exposure of at most 2.0 of 10), parses
/// without a warning, keeps the syscalls the node needs, and is a
/// notify service with a watchdog that does not restart on a bad config.
#[test]
fn the_unit_scores_at_most_2_0_and_keeps_io_uring_and_pinning() {
    if !can_run("the systemd unit check", false, &["systemd-analyze"]) {
        return;
    }
    let unit = deploy("sky.service");
    let o = Command::new("systemd-analyze")
        .args(["security", "--offline=yes", "--no-pager"])
        .arg(&unit)
        .output()
        .unwrap();
    let report = text(&o);
    let score: f64 = report
        .lines()
        .find_map(|l| l.split("Overall exposure level for sky.service: ").nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no overall exposure in:\n{report}"));
    assert!(score <= 2.0, "exposure {score} > 2.0:\n{report}");

    // Every directive known to this systemd: verify a copy whose ExecStart
    // exists (verify insists on it).
    let dir = Scratch::new("unit");
    let copy = dir.0.join("sky.service");
    let body = std::fs::read_to_string(&unit).unwrap();
    std::fs::write(&copy, body.replace("/usr/local/bin/sky", SKY)).unwrap();
    let o = ok(Command::new("systemd-analyze").arg("verify").arg(&copy));
    let said = format!("{}{}", text(&o), String::from_utf8_lossy(&o.stderr));
    assert!(said.trim().is_empty(), "systemd-analyze verify:\n{said}");

    // systemd merges SystemCallFilter= lines in order: an allow-list line
    // after the last deny line keeps what it names, whatever the groups.
    let filters: Vec<&str> = body
        .lines()
        .filter_map(|l| l.strip_prefix("SystemCallFilter="))
        .collect();
    let last = filters.last().expect("a SystemCallFilter=");
    assert!(filters[0].starts_with('@'), "an allow-list: {filters:?}");
    assert!(!last.starts_with('~'), "{filters:?}");
    for call in [
        "io_uring_setup",
        "io_uring_enter",
        "io_uring_register",
        "sched_setaffinity",
    ] {
        assert!(last.split_whitespace().any(|c| c == call), "{call}: {last}");
    }
    for line in [
        "Type=notify",
        "NotifyAccess=main",
        "RestartPreventExitStatus=2",
    ] {
        assert!(body.lines().any(|l| l == line), "{line} missing");
    }
    assert!(body.lines().any(|l| l.starts_with("WatchdogSec=")));
}
