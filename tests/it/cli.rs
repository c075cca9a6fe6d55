//! The `sky` binary as an operator runs it.

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

/// `sky earth`: two users, an invite, and the friend computes the user's
/// current address — from state kept owner-only on disk.
#[test]
fn earth_init_invite_add_friend_and_status() {
    use std::os::unix::fs::PermissionsExt;
    let root = std::env::temp_dir().join(format!("sky-earth-cli-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    let (alice, bob) = (root.join("alice"), root.join("bob"));
    for dir in [&alice, &bob] {
        let o = earth(dir, &["init"]);
        assert!(o.status.success(), "{o:?}");
        let mode = std::fs::metadata(dir).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
    }
    let again = earth(&alice, &["init"]);
    assert_eq!(
        again.status.code(),
        Some(2),
        "init never overwrites an identity"
    );

    let invite = stdout(&earth(&alice, &["invite"])).trim().to_string();
    assert!(invite.starts_with("sky1-"), "{invite}");
    let added = earth(&bob, &["add-friend", "alice", &invite]);
    assert!(added.status.success(), "{added:?}");
    let mut damaged = invite.clone();
    damaged.replace_range(20..21, if &invite[20..21] == "0" { "1" } else { "0" });
    let refused = earth(&bob, &["add-friend", "carol", &damaged]);
    assert_eq!(refused.status.code(), Some(2), "{refused:?}");

    let alice_status = stdout(&earth(&alice, &["status"]));
    let own = alice_status
        .lines()
        .find_map(|l| l.strip_prefix("address "))
        .expect(&alice_status)
        .to_string();
    let bob_status = stdout(&earth(&bob, &["status"]));
    assert!(
        bob_status.contains(&format!("friend alice address {own}")),
        "{bob_status}\nvs {alice_status}"
    );
    std::fs::remove_dir_all(&root).unwrap();
}

/// Two friends through a real sky node on loopback: one stays online, the
/// other looks them up by name and is introduced, by name.
#[test]
fn earth_friends_find_each_other_through_a_sky_node() {
    let root = std::env::temp_dir().join(format!("sky-earth-online-{}", std::process::id()));
    earth_users(
        &root,
        &["alice", "bob"],
        &[("bob", "alice"), ("alice", "bob")],
    );
    let (alice, bob) = (root.join("alice"), root.join("bob"));

    let node = NodeProcess::start(
        &[
            "--listen",
            "127.0.0.1:7795",
            "--metrics",
            "off",
            "--gossip",
            EPHEMERAL,
            "--check",
            "0",
        ],
        &[],
    );
    let offline = earth(&bob, &["lookup", "alice", "--sky", "127.0.0.1:7795"]);
    assert_eq!(offline.status.code(), Some(1), "{offline:?}");
    assert_eq!(stdout(&offline).trim(), "offline");

    let online = Command::new(SKY)
        .args(["earth", "--state", alice.to_str().unwrap(), "online"])
        .args(["--sky", "127.0.0.1:7795", "--hold", "4"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(600));
    let found = earth(&bob, &["lookup", "alice", "--sky", "127.0.0.1:7795"]);
    assert_eq!(found.status.code(), Some(0), "{found:?}");
    assert!(
        stdout(&found).starts_with("online 127.0.0.1:"),
        "{}",
        stdout(&found)
    );
    // `--sky` repeated is the bootstrap list: a node that does not answer
    // is passed over for the next.
    let started = std::time::Instant::now();
    let via_second = earth(
        &bob,
        &[
            "lookup",
            "alice",
            "--sky",
            "127.0.0.1:7798",
            "--sky",
            "127.0.0.1:7795",
        ],
    );
    assert_eq!(via_second.status.code(), Some(0), "{via_second:?}");
    assert!(started.elapsed() < Duration::from_secs(3), "{started:?}");

    let out = stdout(&online.wait_with_output().unwrap());
    assert!(
        out.lines().any(|l| l.starts_with("registered 127.0.0.1:")),
        "{out}"
    );
    assert!(
        out.lines()
            .any(|l| l.starts_with("introduced bob 127.0.0.1:")),
        "alice is told it is bob calling: {out}"
    );
    // Her hold ended and she unregistered.
    let after = earth(&bob, &["lookup", "alice", "--sky", "127.0.0.1:7795"]);
    assert_eq!(after.status.code(), Some(1), "{after:?}");
    drop(node);
    std::fs::remove_dir_all(&root).unwrap();
}

/// `send`: lookup, introduction, punch, handshake with the friends' keys,
/// one sealed message and its acknowledgement — over loopback (the NAT
/// test bed is still to come).
#[test]
fn earth_send_delivers_a_message_over_an_authenticated_path() {
    let root = std::env::temp_dir().join(format!("sky-earth-send-{}", std::process::id()));
    // Carol has alice's invite, but alice does not have carol's.
    earth_users(
        &root,
        &["alice", "bob", "carol"],
        &[("bob", "alice"), ("alice", "bob"), ("carol", "alice")],
    );
    let (alice, bob, carol) = (root.join("alice"), root.join("bob"), root.join("carol"));

    let node = NodeProcess::start(
        &[
            "--listen",
            "127.0.0.1:7796",
            "--metrics",
            "off",
            "--gossip",
            EPHEMERAL,
            "--check",
            "0",
        ],
        &[],
    );
    let online = Command::new(SKY)
        .args(["earth", "--state", alice.to_str().unwrap(), "online"])
        .args(["--sky", "127.0.0.1:7796", "--hold", "4"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(600));
    let sent = earth(
        &bob,
        &["send", "alice", "hello from bob", "--sky", "127.0.0.1:7796"],
    );
    assert_eq!(sent.status.code(), Some(0), "{sent:?}");
    assert!(
        stdout(&sent).starts_with("delivered to alice at 127.0.0.1:"),
        "{}",
        stdout(&sent)
    );

    // A stranger's handshake is refused, and told so: exit 2, at once.
    let started = std::time::Instant::now();
    let refused = earth(&carol, &["send", "alice", "hi", "--sky", "127.0.0.1:7796"]);
    assert_eq!(refused.status.code(), Some(2), "{refused:?}");
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("alice does not know you"),
        "{refused:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "not the 5 s give-up"
    );

    let out = online.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.lines().any(|l| l == "message bob hello from bob"),
        "{text}"
    );
    assert!(
        !text.contains("message carol") && !text.contains(" hi"),
        "{text}"
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("refused a handshake"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    drop(node);
    std::fs::remove_dir_all(&root).unwrap();
}

/// Address reset (SPEC §2): removing a friend moves the user to a fresh
/// chain; a remaining friend who was offline during the reset gets it when
/// they come online — even though the client was killed in between — and
/// finds the user at the new address; the removed friend does not.
#[test]
fn remove_friend_resets_the_address_for_every_remaining_friend_across_a_crash() {
    let root = std::env::temp_dir().join(format!("sky-earth-reset-{}", std::process::id()));
    earth_users(
        &root,
        &["alice", "bob", "carol"],
        &[
            ("bob", "alice"),
            ("carol", "alice"),
            ("alice", "bob"),
            ("alice", "carol"),
        ],
    );
    let (alice, bob, carol) = (root.join("alice"), root.join("bob"), root.join("carol"));
    let sky_addr = "127.0.0.1:7797";
    let node = NodeProcess::start(
        &[
            "--listen",
            sky_addr,
            "--metrics",
            "off",
            "--gossip",
            EPHEMERAL,
            "--check",
            "0",
        ],
        &[],
    );
    let online = |dir: &std::path::Path, hold: &str| {
        Command::new(SKY)
            .args([
                "earth",
                "--state",
                dir.to_str().unwrap(),
                "online",
                "--sky",
                sky_addr,
            ])
            .args(["--hold", hold, "--reset-retry", "1"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    };

    let removed = earth(&alice, &["remove-friend", "carol"]);
    assert!(removed.status.success(), "{removed:?}");
    let state = || std::fs::read_to_string(alice.join("state.toml")).unwrap();
    let status = stdout(&earth(&alice, &["status"]));
    assert!(status.lines().any(|l| l == "reset pending bob"), "{status}");
    assert!(!status.contains("friend carol"), "{status}");
    assert!(
        state().contains("pending_resets = [\"bob\"]"),
        "{}",
        state()
    );

    // Alice goes online while bob is offline, and is killed mid-reset.
    let mut first = online(&alice, "30");
    std::thread::sleep(Duration::from_millis(1500));
    first.kill().unwrap();
    first.wait().unwrap();
    assert!(
        state().contains("pending_resets = [\"bob\"]"),
        "lost the pending friend: {}",
        state()
    );

    // She comes back; bob comes online later; the reset reaches him.
    let second = online(&alice, "10");
    std::thread::sleep(Duration::from_millis(800));
    let bob_online = online(&bob, "4");
    let bob_out = stdout(&bob_online.wait_with_output().unwrap());
    assert!(
        bob_out.lines().any(|l| l == "reset alice"),
        "bob never got the reset: {bob_out}"
    );

    let found = earth(&bob, &["lookup", "alice", "--sky", sky_addr]);
    assert_eq!(
        found.status.code(),
        Some(0),
        "bob finds alice at her new address: {found:?}"
    );
    let removed_friend = earth(&carol, &["lookup", "alice", "--sky", sky_addr]);
    assert_eq!(
        removed_friend.status.code(),
        Some(1),
        "carol must not find alice: {removed_friend:?}"
    );

    let alice_out = stdout(&second.wait_with_output().unwrap());
    assert!(
        alice_out.contains("reset acknowledged by bob"),
        "{alice_out}"
    );
    assert!(state().contains("pending_resets = []"), "{}", state());
    drop(node);
    std::fs::remove_dir_all(&root).unwrap();
}

/// `sky sim privacy` prints its table (small, fast parameters) and refuses
/// a bad argument with exit 2 and the flag's name.
#[test]
fn sim_privacy_prints_a_row_per_mode_and_adversary() {
    let out = sky(&[
        "sim", "privacy", "--users", "200", "--days", "2", "--nodes", "20",
    ]);
    assert!(out.status.success(), "{out:?}");
    let text = stdout(&out);
    for mode in ["lookup-side", "lookup-side-fresh-port", "dual", "cover"] {
        let rows = text
            .lines()
            .filter(|l| l.starts_with(&format!("| {mode} |")))
            .count();
        assert_eq!(rows, 2, "{mode}: {text}");
    }
    let bad = sky(&["sim", "privacy", "--owners", "0"]);
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--owners"));
}

/// `sky sim ring` reproduces the rows docs/DHT.md shows for the small sky
/// sizes (same seeds: each size's rings do not depend on the other sizes).
#[test]
fn sim_ring_reproduces_the_documented_rows() {
    let out = sky(&["sim", "ring", "--nodes", "10", "--nodes", "100"]);
    assert!(out.status.success(), "{out:?}");
    let text = stdout(&out);
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/DHT.md"))
        .expect("docs/DHT.md");
    let rows: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("| 1") && l.contains('%'))
        .collect();
    assert_eq!(rows.len(), 4, "{text}");
    for row in rows {
        assert!(doc.contains(row), "docs/DHT.md lacks the row {row}");
    }
    let bad = sky(&["sim", "ring", "--replicas", "0"]);
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("replicas"));
}

/// Logs into a pipe or a file carry no colour codes (the tests' other
/// processes set NO_COLOR; this one does not).
#[test]
fn logs_into_a_pipe_carry_no_escape_codes() {
    let mut child = Command::new(SKY)
        .args([
            "node",
            "--listen",
            "127.0.0.1:0",
            "--gossip",
            EPHEMERAL,
            "--check",
            "0",
        ])
        .args(["--metrics", "off", "--shards", "1"])
        .env_remove("NO_COLOR")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let ready = lines
        .find(|l| l.as_ref().is_ok_and(|l| l.contains("sky node ready")))
        .expect("a ready line")
        .unwrap();
    let _ = child.kill();
    let _ = child.wait();
    assert!(!ready.contains('\u{1b}'), "{ready:?}");
    assert!(ready.contains(" INFO "), "{ready:?}");
}

/// docs/PRIVACY.md's table is the simulator's output as the code now runs
/// (its modes are what the client does: see the doc).
#[test]
fn the_privacy_table_is_what_the_simulator_prints() {
    let out = sky(&["sim", "privacy"]);
    assert!(out.status.success(), "{out:?}");
    let printed = stdout(&out);
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/PRIVACY.md"))
        .expect("docs/PRIVACY.md");
    let rows: Vec<&str> = printed.lines().filter(|l| l.starts_with("| ")).collect();
    assert!(rows.len() >= 10, "{printed}");
    for row in rows {
        assert!(doc.contains(row), "docs/PRIVACY.md lacks the row {row}");
    }
}

/// The malicious invite (epoch 0, R = 1 s) and an ancient one are
/// refused with a clear message; a state others can read is refused, not
/// used; `status` on what is accepted walks a bounded ratchet.
#[test]
fn malicious_invites_and_exposed_state_are_refused() {
    use sky_earth::invite::Invite;
    use sky_earth::ratchet::{ChainKey, Epoch, MIN_EPOCH, Schedule};
    use std::os::unix::fs::PermissionsExt;
    let root = std::env::temp_dir().join(format!("sky-earth-evil-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    let bob = root.join("bob");
    assert!(earth(&bob, &["init"]).status.success());
    let forged = |length: std::time::Duration, epoch: u64| {
        Invite {
            epoch: Epoch(epoch),
            chain_key: ChainKey::from_bytes([7; 32]),
            schedule: Schedule {
                length,
                phase: std::time::Duration::ZERO,
            },
            keys: vec![[9; 32]],
        }
        .encode()
    };
    let one_second = earth(
        &bob,
        &[
            "add-friend",
            "mallory",
            &forged(std::time::Duration::from_secs(1), 0),
        ],
    );
    assert_eq!(one_second.status.code(), Some(2), "{one_second:?}");
    assert!(
        String::from_utf8_lossy(&one_second.stderr).contains("epoch schedule is invalid"),
        "{one_second:?}"
    );
    let ancient = earth(&bob, &["add-friend", "mallory", &forged(MIN_EPOCH, 0)]);
    assert_eq!(ancient.status.code(), Some(2), "{ancient:?}");
    assert!(
        String::from_utf8_lossy(&ancient.stderr).contains("too far from now"),
        "{ancient:?}"
    );
    // What is accepted: status walks at most the bound, and finishes.
    let started = std::time::Instant::now();
    let status = earth(&bob, &["status"]);
    assert!(status.status.success(), "{status:?}");
    eprintln!("status in {:?}", started.elapsed());
    // Exposed state: refused with the fix, until it is owner-only again.
    let file = bob.join("state.toml");
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let exposed = earth(&bob, &["status"]);
    assert_eq!(exposed.status.code(), Some(2), "{exposed:?}");
    assert!(String::from_utf8_lossy(&exposed.stderr).contains("chmod 600"));
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
    assert!(earth(&bob, &["status"]).status.success());
    std::fs::remove_dir_all(&root).unwrap();
}

/// Runs `sky node ARGS` (loopback, ephemeral ports, one shard, no
/// metrics) with stderr into a file until it is ready, stops it with
/// SIGTERM, and returns everything it logged.
fn node_log(name: &str, args: &[&str], env: &[(&str, &str)]) -> String {
    let path = std::env::temp_dir().join(format!("sky-log-{}-{name}.log", std::process::id()));
    let mut child = Command::new(SKY)
        .args(["node", "--listen", "127.0.0.1:0", "--gossip", EPHEMERAL])
        .args(["--check", "0", "--metrics", "off", "--shards", "1"])
        .args(args)
        .env_remove("NO_COLOR")
        .env_remove("SKY_LOG")
        .env_remove("SKY_LOG_FORMAT")
        .envs(env.iter().copied())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&path).unwrap())
        .spawn()
        .unwrap();
    let end = std::time::Instant::now() + Duration::from_secs(10);
    while !std::fs::read_to_string(&path)
        .unwrap()
        .contains("sky node ready")
    {
        if std::time::Instant::now() > end || child.try_wait().unwrap().is_some() {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "{name}: never ready:\n{}",
                std::fs::read_to_string(&path).unwrap()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_handles_sigterm(child.id());
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(child.wait().unwrap().success(), "{name}");
    let log = std::fs::read_to_string(&path).unwrap();
    std::fs::remove_file(&path).unwrap();
    log
}

/// `--log-format json`, `SKY_LOG_FORMAT=json` and `log_format = "json"`
/// write one JSON object per line; text is the default and a flag beats
/// the environment; no escape code reaches a file in either format (this
/// process's NO_COLOR is removed: the file alone must keep them out).
#[test]
fn log_format_json_writes_one_object_per_line_and_files_get_no_escape_codes() {
    let dir = std::env::temp_dir().join(format!("sky-logfmt-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("json.toml");
    std::fs::write(&file, "log_format = \"json\"\n").unwrap();
    let file = file.to_str().unwrap();
    /// A name, flags, environment, and whether the log is JSON.
    type Case<'a> = (&'a str, &'a [&'a str], &'a [(&'a str, &'a str)], bool);
    let cases: [Case; 5] = [
        ("default", &[], &[], false),
        ("flag", &["--log-format", "json"], &[], true),
        ("env", &[], &[("SKY_LOG_FORMAT", "json")], true),
        ("file", &["--config", file], &[], true),
        (
            "flag-over-env",
            &["--log-format", "text"],
            &[("SKY_LOG_FORMAT", "json")],
            false,
        ),
    ];
    for (name, args, env, json) in cases {
        let log = node_log(name, args, env);
        assert!(!log.contains('\u{1b}'), "{name}: an escape code:\n{log:?}");
        let lines: Vec<&str> = log.lines().filter(|l| !l.trim().is_empty()).collect();
        assert!(lines.len() >= 2, "{name}:\n{log}");
        if !json {
            assert!(lines.iter().all(|l| !l.starts_with('{')), "{name}:\n{log}");
            assert!(
                log.contains(" INFO ") && log.contains("sky node stopped"),
                "{name}:\n{log}"
            );
            continue;
        }
        let events: Vec<serde_json::Value> = lines
            .iter()
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l)
                    .unwrap_or_else(|e| panic!("{name}: not JSON ({e}): {l}"));
                assert!(v.is_object(), "{name}: not an object: {l}");
                v
            })
            .collect();
        let ready = events
            .iter()
            .find(|e| e["message"] == "sky node ready")
            .unwrap_or_else(|| panic!("{name}: no ready event:\n{log}"));
        assert_eq!(ready["level"], "INFO", "{ready}");
        assert!(
            ready["listen"]
                .as_str()
                .is_some_and(|l| l.starts_with("127.0.0.1:")),
            "{ready}"
        );
        assert!(ready["timestamp"].is_string(), "{ready}");
        assert!(
            events.iter().any(|e| e["message"] == "sky node stopped"),
            "{name}:\n{log}"
        );
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A socket buffer larger than the kernel allows is not silently capped:
/// the node logs what it asked for and what it got.
#[test]
fn the_node_says_when_the_kernel_grants_smaller_socket_buffers() {
    let max = |key: &str| -> usize {
        std::fs::read_to_string(format!("/proc/sys/net/core/{key}"))
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    };
    let limit = max("rmem_max").min(max("wmem_max"));
    let asked = 1usize << 30;
    if limit >= asked {
        eprintln!("WARNING: net.core.[rw]mem_max allow 1 GiB here; nothing to warn about");
        return;
    }
    let log = node_log("buffers", &["--socket-buffer", &asked.to_string()], &[]);
    let warning = log
        .lines()
        .find(|l| l.contains("WARN") && l.contains("socket buffers"))
        .unwrap_or_else(|| panic!("no warning:\n{log}"));
    assert!(warning.contains(&format!("asked={asked}")), "{warning}");
    assert!(warning.contains(&format!("granted={limit}")), "{warning}");
    assert!(warning.contains("60-sky.conf"), "{warning}");
    // Asked for no more than the kernel allows: no warning.
    let log = node_log("fits", &["--socket-buffer", &limit.to_string()], &[]);
    assert!(!log.contains("socket buffers"), "{log}");
}

/// On a terminal (a pseudo-terminal from util-linux `script`), text logs
/// are coloured unless NO_COLOR is set, and JSON logs never are.
#[test]
fn on_a_terminal_colour_only_without_no_color_and_never_in_json() {
    if Command::new("script").arg("--version").output().is_err() {
        eprintln!("WARNING: util-linux `script` not found; terminal colours untested");
        return;
    }
    let cases = [
        ("text", None, true),
        ("text", Some("1"), false),
        ("json", None, false),
    ];
    for (format, no_color, coloured) in cases {
        let node = format!(
            "'{SKY}' node --listen 127.0.0.1:0 --gossip {EPHEMERAL} --check 0 --metrics off \
             --shards 1 --log-format {format}"
        );
        let mut cmd = Command::new("script");
        cmd.args(["-qfec", &node, "/dev/null"])
            .env_remove("NO_COLOR")
            .env_remove("SKY_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        if let Some(v) = no_color {
            cmd.env("NO_COLOR", v);
        }
        let mut script = cmd.spawn().unwrap();
        let (tx, rx) = mpsc::channel();
        let out = script.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let mut seen = Vec::new();
        while !seen.iter().any(|l: &String| l.contains("sky node ready")) {
            match rx.recv_timeout(Duration::from_secs(10)) {
                Ok(line) => seen.push(line),
                Err(_) => panic!("{format} {no_color:?}: never ready: {seen:?}"),
            }
        }
        // Closing the terminal hangs the node up.
        let _ = script.kill();
        let _ = script.wait();
        let escapes = seen.iter().any(|l| l.contains('\u{1b}'));
        assert_eq!(
            escapes, coloured,
            "{format}, NO_COLOR {no_color:?}: {seen:?}"
        );
        if format == "json" {
            for line in &seen {
                let v: serde_json::Value = serde_json::from_str(line.trim_end_matches('\r'))
                    .unwrap_or_else(|e| panic!("not JSON ({e}): {line:?}"));
                assert!(v.is_object());
            }
        }
    }
}
