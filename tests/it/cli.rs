//! The `sky` binary as an operator runs it: `sky node`, the probes and
//! `--check-config` here; `sky earth` in `earth.rs`; what it prints (logs,
//! the simulator's tables) in `output.rs`.

mod earth;
mod output;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

pub(crate) const SKY: &str = env!("CARGO_BIN_EXE_sky");
/// The gossip address of every node here but the defaults test's: an
/// ephemeral port, so that nodes started at once do not all want 7701.
pub(crate) const EPHEMERAL: &str = "127.0.0.1:0";

/// A `sky node` child process, killed if the test fails.
pub(crate) struct NodeProcess {
    child: Child,
    stderr: mpsc::Receiver<String>,
    /// The node's "sky node ready" log line.
    pub ready: String,
}

impl NodeProcess {
    /// Starts `sky node ARGS` and waits for its "ready" log line.
    pub(crate) fn start(args: &[&str], env: &[(&str, &str)]) -> NodeProcess {
        let mut cmd = Command::new(SKY);
        cmd.arg("node")
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.env("NO_COLOR", "1");
        let mut child = cmd.spawn().expect("sky node starts");
        let (tx, rx) = mpsc::channel();
        let stderr = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let mut node = NodeProcess {
            child,
            stderr: rx,
            ready: String::new(),
        };
        node.ready = node.wait_for("sky node ready");
        assert_handles_sigterm(node.child.id());
        node
    }

    /// The service address from the "ready" line (`listen=HOST:PORT`).
    pub(crate) fn listen_addr(&self) -> String {
        self.ready_field("listen")
    }

    /// A `NAME=VALUE` field of the "ready" line (text logs).
    pub(crate) fn ready_field(&self, name: &str) -> String {
        let prefix = format!("{name}=");
        self.ready
            .split_whitespace()
            .find_map(|w| w.strip_prefix(prefix.as_str()))
            .unwrap_or_else(|| panic!("{name} in the ready line: {}", self.ready))
            .to_string()
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    pub(crate) fn wait_for(&mut self, needle: &str) -> String {
        let mut seen = Vec::new();
        loop {
            match self.stderr.recv_timeout(Duration::from_secs(10)) {
                Ok(line) if line.contains(needle) => return line,
                Ok(line) => seen.push(line),
                Err(_) => panic!(
                    "sky node never logged `{needle}`; it logged:\n{}",
                    seen.join("\n")
                ),
            }
        }
    }

    /// SIGTERM, then the exit status and the rest of the log.
    pub(crate) fn terminate(mut self) -> (std::process::ExitStatus, String) {
        let pid = self.child.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        let status = self.child.wait().unwrap();
        let rest: Vec<String> = self.stderr.try_iter().collect();
        (status, rest.join("\n"))
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Asserts that process `pid` handles SIGTERM. The node says it is ready
/// (its log line, systemd's `READY=1`) only once its handler is installed,
/// so whoever acts on that may send SIGTERM at once: it must stop the node
/// gracefully, not kill it the default way.
pub(crate) fn assert_handles_sigterm(pid: u32) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let caught = status
        .lines()
        .find_map(|l| l.strip_prefix("SigCgt:"))
        .and_then(|m| u64::from_str_radix(m.trim(), 16).ok())
        .unwrap_or(0);
    assert!(
        caught & (1 << (libc::SIGTERM - 1)) != 0,
        "sky node (pid {pid}) said it was ready before it handled SIGTERM:\n{status}"
    );
}

fn sky(args: &[&str]) -> Output {
    Command::new(SKY)
        .args(args)
        .env("NO_COLOR", "1")
        .output()
        .unwrap()
}

/// `sky earth --state DIR ARGS`.
pub(crate) fn earth(dir: &std::path::Path, args: &[&str]) -> Output {
    let mut a = vec!["earth", "--state", dir.to_str().unwrap()];
    a.extend_from_slice(args);
    sky(&a)
}

/// Initializes each user under `root` and applies `adds`: (who, friend).
pub(crate) fn earth_users(root: &std::path::Path, users: &[&str], adds: &[(&str, &str)]) {
    let _ = std::fs::remove_dir_all(root);
    for u in users {
        assert!(earth(&root.join(u), &["init"]).status.success());
    }
    for (who, friend) in adds {
        let invite = stdout(&earth(&root.join(friend), &["invite"]))
            .trim()
            .to_string();
        let o = earth(&root.join(who), &["add-friend", friend, &invite]);
        assert!(o.status.success(), "{o:?}");
    }
}

pub(crate) fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// README's Quick start: `cargo run --release -- node` serves the defaults,
/// 127.0.0.1:7700/udp, and answers a probe with a one-second timeout.
#[test]
fn sky_node_on_its_defaults_answers_probe_ping_within_a_second_and_stops_on_sigterm() {
    let node = NodeProcess::start(&[], &[]);
    let ping = sky(&["probe", "ping", "--sky", "127.0.0.1:7700", "--timeout", "1"]);
    assert!(ping.status.success(), "{ping:?}");
    assert!(
        stdout(&ping).starts_with("pong from 127.0.0.1:7700 in "),
        "{}",
        stdout(&ping)
    );
    // README's next example, the five-node sky, runs beside it as written
    // (its own IPs; gossip and NAT check ports follow the listen port).
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let lines: Vec<&str> = readme.lines().collect();
    let at = lines
        .iter()
        .position(|l| l.starts_with("for i in ") && l.ends_with("; do"))
        .expect("README's sky of several nodes");
    let ids: Vec<&str> = lines[at]["for i in ".len()..lines[at].len() - "; do".len()]
        .split_whitespace()
        .collect();
    let template = lines[at + 1]
        .trim()
        .trim_start_matches("sky ")
        .trim_end_matches(" &");
    let sky_of_five: Vec<NodeProcess> = ids
        .iter()
        .map(|i| {
            let command = template.replace("$i", i);
            let args: Vec<&str> = command.split_whitespace().collect();
            assert_eq!(args[0], "node", "{command}");
            NodeProcess::start(&args[1..], &[])
        })
        .collect();
    // A second node on the quick-start node's IP, on its own listen port:
    // its gossip and NAT check ports follow, so nothing collides.
    let beside = NodeProcess::start(&["--listen", "127.0.0.1:7780", "--metrics", "off"], &[]);
    assert!(
        beside.ready.contains("gossip=127.0.0.1:7781"),
        "{}",
        beside.ready
    );
    drop(beside);
    let members = sky(&[
        "probe",
        "members",
        "--sky",
        &format!("127.0.0.{}:7700", ids[0]),
    ]);
    assert!(members.status.success(), "{members:?}");
    drop(sky_of_five);
    let (status, log) = node.terminate();
    assert!(status.success(), "graceful stop exits 0: {status:?}\n{log}");
    assert!(log.contains("sky node stopped"), "{log}");
}

/// Two nodes on one IP asked for one gossip port: the second fails once,
/// with an error that names `--gossip`.
#[test]
fn a_gossip_port_in_use_is_one_error_naming_the_flag() {
    let first = NodeProcess::start(
        &[
            "--listen",
            "127.0.0.1:7795",
            "--metrics",
            "off",
            "--check",
            "0",
        ],
        &[],
    );
    let second = sky(&[
        "node",
        "--listen",
        "127.0.0.1:7797",
        "--gossip",
        "127.0.0.1:7796",
        "--metrics",
        "off",
        "--check",
        "0",
    ]);
    assert_eq!(second.status.code(), Some(1), "{second:?}");
    let err = String::from_utf8_lossy(&second.stderr);
    let lines: Vec<&str> = err
        .lines()
        .filter(|l| l.contains("gossip socket"))
        .collect();
    assert_eq!(lines.len(), 1, "printed once: {err}");
    assert!(lines[0].contains("--gossip"), "{err}");
    drop(first);
}

#[test]
fn probe_register_lookup_and_introduction_through_the_cli() {
    let node = NodeProcess::start(
        &[
            "--listen",
            "127.0.0.1:7791",
            "--metrics",
            "off",
            "--gossip",
            EPHEMERAL,
            "--check",
            "0",
        ],
        &[],
    );
    let seed = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";
    let holder = Command::new(SKY)
        .args([
            "probe",
            "register",
            "--sky",
            "127.0.0.1:7791",
            "--seed",
            seed,
            "--hold",
            "2",
        ])
        .args(["--metered"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let address =
        sky_node::probe::AddrSecret::from_seed(sky_proto::wire::from_hex::<32>(seed).unwrap())
            .address()
            .to_hex();
    let caller = "0123456789abcdef0123456789abcdef";
    let lookup = sky(&[
        "probe",
        "lookup",
        "--sky",
        "127.0.0.1:7791",
        "--address",
        &address,
        "--as",
        caller,
    ]);
    assert_eq!(lookup.status.code(), Some(0), "{lookup:?}");
    assert!(
        stdout(&lookup).starts_with("online 127.0.0.1:"),
        "{}",
        stdout(&lookup)
    );
    assert!(stdout(&lookup).trim_end().ends_with(" metered"));

    let held = holder.wait_with_output().unwrap();
    let out = stdout(&held);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], format!("address {address}"));
    assert!(lines[1].starts_with("registered 127.0.0.1:"), "{out}");
    let introduced = lines
        .iter()
        .find(|l| l.starts_with("introduced "))
        .expect(&out);
    assert!(
        introduced.starts_with(&format!("introduced {caller} 127.0.0.1:")),
        "{out}"
    );

    // After the hold ends the probe unregisters: offline, exit 1.
    let after = sky(&[
        "probe",
        "lookup",
        "--sky",
        "127.0.0.1:7791",
        "--address",
        &address,
    ]);
    assert_eq!(after.status.code(), Some(1), "{after:?}");
    assert_eq!(stdout(&after).trim(), "offline");
    drop(node);
}

#[test]
fn probes_give_up_with_exit_2_when_nothing_answers() {
    // A bound socket that never answers.
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = silent.local_addr().unwrap().to_string();
    for args in [
        vec!["probe", "ping", "--sky", &addr, "--timeout", "0.3"],
        vec![
            "probe",
            "lookup",
            "--sky",
            &addr,
            "--timeout",
            "0.3",
            "--address",
            "00000000000000000000000000000000",
        ],
        vec![
            "probe",
            "register",
            "--sky",
            &addr,
            "--timeout",
            "0.3",
            "--name",
            "nobody",
        ],
    ] {
        let o = sky(&args);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {o:?}");
        assert!(
            String::from_utf8_lossy(&o.stderr).contains("no answer from"),
            "{o:?}"
        );
    }
}

#[test]
fn check_config_validates_the_example_and_names_the_bad_field() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/sky.toml");
    let ok = sky(&["node", "--check-config", example]);
    assert!(ok.status.success(), "{ok:?}");
    assert!(stdout(&ok).contains("ok (listen 127.0.0.1:7700, metrics 127.0.0.1:9770"));

    let dir = std::env::temp_dir().join(format!("sky-check-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bad = dir.join("bad.toml");
    std::fs::write(&bad, "keepalive_secs = 0\n").unwrap();
    let o = sky(&["node", "--check-config", bad.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2), "{o:?}");
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("keepalive_secs"),
        "{o:?}"
    );

    // Environment overrides the file; flags override the environment.
    let file = dir.join("file.toml");
    std::fs::write(&file, "listen = \"127.0.0.1:1111\"\ncapacity = 7\n").unwrap();
    let o = Command::new(SKY)
        .args(["node", "--check-config", file.to_str().unwrap()])
        .env("SKY_LISTEN", "127.0.0.1:2222")
        .output()
        .unwrap();
    assert!(stdout(&o).contains("listen 127.0.0.1:2222"), "{o:?}");
    assert!(stdout(&o).contains("capacity 7"), "{o:?}");
    let o = Command::new(SKY)
        .args([
            "node",
            "--check-config",
            file.to_str().unwrap(),
            "--listen",
            "127.0.0.1:3333",
        ])
        .env("SKY_LISTEN", "127.0.0.1:2222")
        .output()
        .unwrap();
    assert!(stdout(&o).contains("listen 127.0.0.1:3333"), "{o:?}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_port_already_served_is_a_clear_error_not_a_silent_share() {
    let node = NodeProcess::start(
        &[
            "--listen",
            "127.0.0.1:7792",
            "--metrics",
            "off",
            "--gossip",
            EPHEMERAL,
            "--check",
            "0",
        ],
        &[],
    );
    let second = sky(&["node", "--listen", "127.0.0.1:7792", "--metrics", "off"]);
    assert_eq!(second.status.code(), Some(1), "{second:?}");
    assert!(
        String::from_utf8_lossy(&second.stderr).contains("cannot listen on 127.0.0.1:7792/udp"),
        "{second:?}"
    );
    drop(node);
}

/// SPEC §3 invariant 2, for one node: at the default log level nothing
/// about an earth node reaches the log, and nothing is written to disk.
#[test]
fn no_earth_endpoint_or_address_reaches_the_log_or_the_disk() {
    use sky_node::probe::AddrSecret;
    use sky_node::probe::Client;
    use sky_proto::wire::VirtualAddr;

    let dir = std::env::temp_dir().join(format!("sky-privacy-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut cmd_node = {
        let mut cmd = Command::new(SKY);
        cmd.current_dir(&dir)
            .args([
                "node",
                "--listen",
                "127.0.0.1:7793",
                "--metrics",
                "127.0.0.1:0",
                "--gossip",
                EPHEMERAL,
                "--check",
                "0",
            ])
            .env_remove("SKY_LOG")
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        cmd
    };
    let mut child = cmd_node.spawn().unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut log = vec![rx.recv_timeout(Duration::from_secs(10)).expect("node logs")];

    let sky: std::net::SocketAddr = "127.0.0.1:7793".parse().unwrap();
    let mut alice = Client::new(sky, Duration::from_secs(2)).unwrap();
    let mut bob = Client::new(sky, Duration::from_secs(2)).unwrap();
    let seed = [0x77; 32];
    let secret = AddrSecret::from_seed(seed);
    let reg = alice.register(&secret, true).unwrap();
    let caller = VirtualAddr([0x99; 16]);
    bob.lookup(reg.address, caller).unwrap();
    bob.lookup(VirtualAddr([0x55; 16]), caller).unwrap();
    alice.unregister(&secret).unwrap();
    let garbage = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    garbage.send_to(b"\x01\x02garbage", sky).unwrap();
    std::thread::sleep(Duration::from_millis(300));

    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(child.wait().unwrap().success());
    log.extend(rx.iter());
    // Without timestamps, whose digits could match a port by chance.
    let log: Vec<&str> = log
        .iter()
        .map(|l| l.split_once(' ').map_or(l.as_str(), |(_, r)| r))
        .collect();
    let log = log.join("\n");
    assert!(log.contains("sky node stopped"), "{log}");
    let secrets = [
        alice.local_addr().unwrap().port().to_string(),
        bob.local_addr().unwrap().port().to_string(),
        garbage.local_addr().unwrap().port().to_string(),
        reg.address.to_hex(),
        caller.to_hex(),
        sky_proto::wire::to_hex(&seed),
        sky_proto::wire::to_hex(&secret.key().0),
    ];
    for s in &secrets {
        assert!(
            !log.contains(s.as_str()),
            "`{s}` appears in the log:\n{log}"
        );
    }
    let written: Vec<_> = std::fs::read_dir(&dir).unwrap().collect();
    assert!(written.is_empty(), "the node wrote {written:?}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_stopped_node_frees_its_port_for_an_immediate_restart() {
    for engine in ["uring", "mmsg"] {
        if engine == "uring" && sky_node::engine::uring_available().is_err() {
            continue;
        }
        for _ in 0..3 {
            let node = NodeProcess::start(
                &[
                    "--listen",
                    "127.0.0.1:7794",
                    "--metrics",
                    "off",
                    "--engine",
                    engine,
                    "--gossip",
                    EPHEMERAL,
                    "--check",
                    "0",
                ],
                &[],
            );
            let ping = sky(&["probe", "ping", "--sky", "127.0.0.1:7794", "--timeout", "1"]);
            assert!(ping.status.success(), "{engine}: {ping:?}");
            let (status, log) = node.terminate();
            assert!(status.success(), "{engine}: {log}");
        }
    }
}
