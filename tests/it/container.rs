//! The container image (deploy/Containerfile, deploy/build-image.sh) and
//! its seccomp profile (deploy/seccomp-sky.json), with Debian's podman and
//! runc. Needs root, podman and runc (`.ci/test` installs them); without
//! them the tests say so loudly and skip, and in CI fail.
//!
//! The binary: `SKY_IMAGE_BINARY` when set, which `.ci/run` points at the
//! target/release/sky its `cargo bench --no-run` has just built (the
//! bench profile is the release profile), so CI builds no extra release
//! copy; otherwise the `sky` this test binary was built with
//! (`CARGO_BIN_EXE_sky`, the test profile: a bigger image, the same
//! staging, libraries, seccomp behaviour and engine choice).
//!
//! The containers run as Debian's podman runs them on these machines:
//! `--runtime runc`, `--network host` (on loopback ports of their own),
//! `--read-only`, and file-descriptor and process limits below the host's
//! hard limits (podman's defaults ask for more, which needs
//! CAP_SYS_RESOURCE).

use std::io::{Read, Write};
use std::net::{TcpStream, UdpSocket};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use crate::cli::SKY;
use crate::common::can_run;
use sky_node::metrics::ENGINE_PROBE;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// A podman object (image or container) removed when dropped.
struct Podman {
    kind: &'static str,
    name: String,
}

impl Drop for Podman {
    fn drop(&mut self) {
        let _ = Command::new("podman")
            .args([self.kind, "rm", "--force", &self.name])
            .output();
    }
}

fn podman(args: &[&str]) -> Output {
    let o = Command::new("podman").args(args).output().unwrap();
    assert!(
        o.status.success(),
        "podman {args:?}: {}\n{}{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    o
}

/// A port free on loopback now (UDP and TCP ports are separate spaces;
/// the caller binds the kind it asked for).
fn free_udp() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn free_tcp() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// GET /metrics, or `None` while nothing answers.
fn scrape(port: u16) -> Option<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    Some(text.split_once("\r\n\r\n")?.1.to_string())
}

/// Runs the image as a node on loopback ports, with `security` options,
/// until its /metrics names the engine; returns the engine line and the
/// node's log so far.
fn run_node(image: &str, name: &str, security: &[&str]) -> (String, String) {
    let listen = format!("127.0.0.1:{}", free_udp());
    let metrics_port = free_tcp();
    let metrics = format!("127.0.0.1:{metrics_port}");
    // The socket buffers this host allows (net.core.rmem_max and wmem_max
    // are the host's, in any container): the default 32 MiB would add a
    // warning on an untuned host, and the runs below count warnings.
    let allowed = ["rmem_max", "wmem_max"]
        .iter()
        .map(|k| {
            std::fs::read_to_string(format!("/proc/sys/net/core/{k}"))
                .ok()
                .and_then(|v| v.trim().parse::<usize>().ok())
                .unwrap_or(usize::MAX)
        })
        .min()
        .unwrap()
        .min(sky_node::config::DEFAULT_SOCKET_BUFFER)
        .to_string();
    let _container = Podman {
        kind: "container",
        name: name.to_string(),
    };
    let mut args = vec![
        "run",
        "--detach",
        "--name",
        name,
        "--runtime",
        "runc",
        "--network",
        "host",
        "--read-only",
        "--ulimit",
        "nofile=4096:4096",
        "--ulimit",
        "nproc=4096:4096",
    ];
    args.extend_from_slice(security);
    args.extend_from_slice(&[
        image,
        "--listen",
        &listen,
        "--gossip",
        "127.0.0.1:0",
        "--check",
        "off",
        "--metrics",
        &metrics,
        "--shards",
        "1",
        "--socket-buffer",
        &allowed,
    ]);
    podman(&args);
    let give_up = Instant::now() + Duration::from_secs(30);
    let metrics = loop {
        if let Some(m) = scrape(metrics_port).filter(|m| m.contains("sky_engine_info{")) {
            break m;
        }
        if Instant::now() > give_up {
            let logs = podman(&["logs", name]);
            panic!(
                "the node in {name} never served /metrics; its log:\n{}",
                String::from_utf8_lossy(&logs.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let logs = podman(&["logs", name]);
    let log = format!(
        "{}{}",
        String::from_utf8_lossy(&logs.stdout),
        String::from_utf8_lossy(&logs.stderr)
    );
    (metrics, log)
}

/// The value of the sample of `metrics` whose line starts with `series`.
fn sample(metrics: &str, series: &str) -> Option<f64> {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
}

/// The image holds the binary and its libraries and nothing else, runs
/// unprivileged on a read-only root, runs io_uring under
/// deploy/seccomp-sky.json (`auto` measures it against recvmmsg and runs
/// the faster), and under podman's default profile falls back to recvmmsg
/// with exactly one warning.
#[test]
fn the_image_runs_io_uring_with_the_sky_profile_and_falls_back_with_one_warning_without() {
    if !can_run(
        "the container image check",
        true,
        &["podman", "runc", "ldd"],
    ) {
        return;
    }
    let binary = std::env::var("SKY_IMAGE_BINARY").unwrap_or_else(|_| SKY.to_string());
    assert!(
        std::path::Path::new(&binary).is_file(),
        "SKY_IMAGE_BINARY={binary} is not a file"
    );
    let tag = format!("localhost/sky-it:{}", std::process::id());
    let _image = Podman {
        kind: "image",
        name: tag.clone(),
    };
    let built = Command::new("sh")
        .arg(format!("{ROOT}/deploy/build-image.sh"))
        .args([&binary, &tag])
        .output()
        .unwrap();
    assert!(
        built.status.success(),
        "build-image.sh: {}",
        String::from_utf8_lossy(&built.stderr)
    );
    let config = podman(&[
        "image",
        "inspect",
        "--format",
        "{{.Config.User}} {{.Size}}",
        &tag,
    ]);
    let config = String::from_utf8_lossy(&config.stdout).into_owned();
    let (user, size) = config.trim().split_once(' ').unwrap();
    assert_eq!(user, "65532:65532", "a numeric, unprivileged user");
    eprintln!("image {tag} from {binary}: {size} bytes");
    // No shell, no package manager: only the binary, its libraries and
    // the loader.
    let no_shell = Command::new("podman")
        .args([
            "run",
            "--rm",
            "--runtime",
            "runc",
            "--entrypoint",
            "/bin/sh",
        ])
        .args(["--network", "none", "--ulimit", "nofile=4096:4096"])
        .args(["--ulimit", "nproc=4096:4096", &tag])
        .output()
        .unwrap();
    assert!(!no_shell.status.success(), "the image has a /bin/sh");

    let profile = format!("seccomp={ROOT}/deploy/seccomp-sky.json");
    let id = std::process::id();
    let (metrics, log) = run_node(
        &tag,
        &format!("sky-it-uring-{id}"),
        &["--security-opt", &profile],
    );
    // io_uring ran under the profile: `auto` measured it against recvmmsg
    // (and runs the faster).
    let rate = |engine| sample(&metrics, &format!("{ENGINE_PROBE}{{engine=\"{engine}\"}}"));
    let (uring, mmsg) = (rate("uring"), rate("mmsg"));
    assert!(uring.is_some_and(|r| r > 0.0), "{metrics}\n{log}");
    assert!(mmsg.is_some_and(|r| r > 0.0), "{metrics}\n{log}");
    assert!(log.contains("measured both packet engines"), "{log}");
    let faster = if mmsg > uring.map(|u| u * 1.02) {
        "mmsg"
    } else {
        "uring"
    };
    assert_eq!(
        sample(&metrics, &format!("sky_engine_info{{engine=\"{faster}\"}}")),
        Some(1.0),
        "{metrics}"
    );
    assert!(!log.contains(" WARN "), "no warning with io_uring:\n{log}");

    let (metrics, log) = run_node(&tag, &format!("sky-it-mmsg-{id}"), &[]);
    assert_eq!(
        sample(&metrics, r#"sky_engine_info{engine="mmsg"}"#),
        Some(1.0),
        "{log}"
    );
    let warnings: Vec<&str> = log.lines().filter(|l| l.contains(" WARN ")).collect();
    assert_eq!(warnings.len(), 1, "exactly one warning:\n{log}");
    assert!(
        warnings[0].contains("io_uring unavailable; falling back to recvmmsg"),
        "{}",
        warnings[0]
    );
}

/// deploy/seccomp-sky.json is the container runtime's default profile
/// (containers-common's, as Debian's podman ships it) plus one rule that
/// allows io_uring_setup, io_uring_enter and io_uring_register, nothing
/// else. When containers-common changes its profile, regenerate ours
/// (deploy/README.md says how).
#[test]
fn the_seccomp_profile_is_the_default_plus_io_uring() {
    let default = "/usr/share/containers/seccomp.json";
    if !can_run("the seccomp profile check", false, &["podman"]) {
        return;
    }
    let ours = std::fs::read_to_string(format!("{ROOT}/deploy/seccomp-sky.json")).unwrap();
    let theirs = std::fs::read_to_string(default).unwrap();
    let ours: serde_json::Value = serde_json::from_str(&ours).unwrap();
    let theirs: serde_json::Value = serde_json::from_str(&theirs).unwrap();
    let rules = |v: &serde_json::Value| v["syscalls"].as_array().unwrap().clone();
    let (mut ours_rules, theirs_rules) = (rules(&ours), rules(&theirs));
    let added: Vec<serde_json::Value> = ours_rules
        .iter()
        .filter(|r| !theirs_rules.contains(r))
        .cloned()
        .collect();
    assert_eq!(added.len(), 1, "one rule added: {added:?}");
    assert_eq!(
        added[0]["names"],
        serde_json::json!(["io_uring_enter", "io_uring_register", "io_uring_setup"])
    );
    assert_eq!(added[0]["action"], "SCMP_ACT_ALLOW");
    assert_eq!(added[0]["args"], serde_json::json!([]));
    ours_rules.retain(|r| *r != added[0]);
    assert_eq!(
        ours_rules, theirs_rules,
        "the rest is {default}: regenerate deploy/seccomp-sky.json"
    );
    let mut ours = ours;
    let mut theirs = theirs;
    ours.as_object_mut().unwrap().remove("syscalls");
    theirs.as_object_mut().unwrap().remove("syscalls");
    assert_eq!(ours, theirs, "defaultAction, archMap, ... as in {default}");
}
