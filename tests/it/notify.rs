//! `sky node` under a service manager, without one: the sd_notify messages
//! on a socket of the test's own (`Type=notify`, `WatchdogSec=` in
//! deploy/sky.service), the shards' liveness behind the watchdog, and the
//! exit status of a configuration error (`RestartPreventExitStatus=2`).

use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::process::Command;
use std::time::{Duration, Instant};

use sky_node::config::EngineChoice;

use crate::cli::{EPHEMERAL, NodeProcess, SKY};
use crate::common::{self, Scratch};

/// The flags of a node on ephemeral loopback ports only.
const LOOPBACK: [&str; 8] = [
    "--listen",
    "127.0.0.1:0",
    "--gossip",
    EPHEMERAL,
    "--metrics",
    "off",
    "--check",
    "off",
];

/// The next message on `socket`, waiting up to 10 s (a loaded machine).
fn next(socket: &UnixDatagram) -> String {
    socket
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut buf = [0u8; 4096];
    let n = socket.recv(&mut buf).expect("a notification within 10 s");
    String::from_utf8(buf[..n].to_vec()).unwrap()
}

#[test]
fn sky_node_says_ready_then_feeds_the_watchdog_then_says_stopping() {
    let dir = Scratch::new("notify-path");
    let path = dir.0.join("notify.sock");
    let socket = UnixDatagram::bind(&path).unwrap();
    let node = NodeProcess::start(
        &LOOPBACK,
        &[
            ("NOTIFY_SOCKET", path.to_str().unwrap()),
            ("WATCHDOG_USEC", "200000"),
        ],
    );
    let ready = next(&socket);
    assert!(ready.starts_with("READY=1\n"), "{ready:?}");
    // Ready means a SIGTERM now stops it gracefully.
    crate::cli::assert_handles_sigterm(node.pid());
    assert!(ready.contains("STATUS=serving on 127.0.0.1:"), "{ready:?}");
    for _ in 0..3 {
        assert_eq!(next(&socket), "WATCHDOG=1");
    }
    let (status, log) = node.terminate();
    assert!(status.success(), "{status:?}\n{log}");
    let mut last = next(&socket);
    while last == "WATCHDOG=1" {
        last = next(&socket);
    }
    assert_eq!(last, "STOPPING=1");
}

/// systemd may name a socket in the abstract namespace (`@name`).
#[test]
fn sky_node_notifies_an_abstract_socket_and_no_watchdog_unless_asked() {
    let name = format!("sky-it-notify-{}", std::process::id());
    let socket =
        UnixDatagram::bind_addr(&SocketAddr::from_abstract_name(name.as_bytes()).unwrap()).unwrap();
    let node = NodeProcess::start(&LOOPBACK, &[("NOTIFY_SOCKET", &format!("@{name}"))]);
    assert!(next(&socket).starts_with("READY=1\n"));
    let (status, log) = node.terminate();
    assert!(status.success(), "{status:?}\n{log}");
    // No WATCHDOG_USEC, no watchdog messages: the next one is the last.
    assert_eq!(next(&socket), "STOPPING=1");
}

/// What the watchdog is fed on: true while the shards run, false once
/// they have stopped (here by the stop flag, without the rest of a
/// shutdown).
#[test]
fn shards_alive_turns_false_once_the_shards_stop() {
    let node = common::start(EngineChoice::Mmsg);
    assert!(node.shards_alive());
    node.stop_flag()
        .store(true, std::sync::atomic::Ordering::Relaxed);
    let give_up = Instant::now() + Duration::from_secs(30);
    while node.shards_alive() {
        assert!(
            Instant::now() < give_up,
            "shards still alive 30 s after stop"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    node.shutdown().unwrap();
}

/// systemd's `RestartPreventExitStatus=2` relies on it: a configuration
/// the node cannot run with exits 2, with one line that says what is wrong.
#[test]
fn a_bad_configuration_exits_2_with_one_error_line() {
    let dir = Scratch::new("bad-config");
    // What each line must name: the file and place of a syntax error, the
    // field of a bad value or an unknown field.
    let cases = [
        (
            "syntax.toml",
            "listen = \"127.0.0.1:7700\nshards = 2\n",
            "syntax.toml: TOML parse error at line 1",
        ),
        ("value.toml", "keepalive_secs = 0\n", "keepalive_secs"),
        ("field.toml", "listne = \"127.0.0.1:7700\"\n", "listne"),
    ];
    for (file, text, names) in cases {
        let path = dir.0.join(file);
        std::fs::write(&path, text).unwrap();
        let o = Command::new(SKY)
            .args(["node", "--config", path.to_str().unwrap()])
            .args(LOOPBACK)
            .env("NO_COLOR", "1")
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(2), "{file}: {o:?}");
        let stderr = String::from_utf8_lossy(&o.stderr);
        let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
        assert_eq!(lines.len(), 1, "{file}: one line, got:\n{stderr}");
        assert!(
            lines[0].starts_with("sky node: invalid configuration: ") && lines[0].contains(names),
            "{file}: {}",
            lines[0]
        );
    }
}
