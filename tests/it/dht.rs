//! The sky as a DHT under faults (SPEC §4, docs/DHT.md): five real
//! `sky node` processes, each on its own loopback IP with its own gossip
//! port, and real `sky earth` users registered with their owners.
//!
//! - `kill -9` of one node (127.0.0.x of the host, no root needed): every
//!   other node marks it dead within 5 s, and every online user stays
//!   findable throughout.
//! - a 2 + 3 partition for 30 s, then heal (root: a network namespace of
//!   its own and nftables): one view again within 30 s, no online user lost.
//! - 20% random loss on gossip for 60 s (root, same): no node falsely
//!   declared dead.
//! - every gossip datagram of a run with registered users, captured with
//!   tcpdump (root): none carries a user's IP, endpoint or virtual address.
//!
//! Every wait is bounded; every process and namespace is cleaned up on
//! drop. The tests run one at a time, and never beside the load
//! generator's smoke runs (`common::heavy`): failure detectors starved of
//! CPU would measure the machine, not the sky.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use sky_proto::ring::{Ring, RingConfig};
use sky_proto::wire::{self, VirtualAddr};

const SKY: &str = env!("CARGO_BIN_EXE_sky");

/// Keepalive the nodes give their users: short, so that handoffs (one
/// keepalive interval) fit in a test.
const KEEPALIVE_SECS: u64 = 5;

fn run(args: &[&str]) -> Output {
    Command::new(args[0]).args(&args[1..]).output().unwrap()
}

fn is_root() -> bool {
    run(&["id", "-u"]).stdout == b"0\n"
}

/// Whether a test that needs root and `tools` can run; in CI it must.
fn can_run_as_root(what: &str, tools: &[&str]) -> bool {
    let tools_ok = tools
        .iter()
        .all(|t| Command::new(t).arg("--version").output().is_ok());
    match (is_root() && tools_ok, std::env::var_os("CI").is_some()) {
        (true, _) => true,
        (false, true) => panic!("{what} needs root and {tools:?} in CI"),
        (false, false) => {
            eprintln!("WARNING: {what} skipped: it needs root and {tools:?}");
            false
        }
    }
}

/// A sky of `n` nodes and its users; everything is torn down on drop.
struct Sky {
    /// The network namespace the whole sky runs in, if any.
    ns: Option<String>,
    dir: PathBuf,
    ips: Vec<String>,
    nodes: Vec<Option<Child>>,
    users: Vec<Child>,
    extra: Vec<Child>,
}

impl Drop for Sky {
    fn drop(&mut self) {
        for c in self
            .nodes
            .iter_mut()
            .flatten()
            .chain(&mut self.users)
            .chain(&mut self.extra)
        {
            let _ = c.kill();
            let _ = c.wait();
        }
        if let Some(ns) = &self.ns {
            let _ = run(&["ip", "netns", "del", ns]);
        }
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        } else {
            eprintln!("logs kept in {}", self.dir.display());
        }
    }
}

impl Sky {
    /// Nodes on `{net}.{first}`, `{net}.{first + 1}`, …; with `netns`, in a
    /// namespace of their own (created here).
    fn new(name: &str, netns: bool, net: &str, first: u8, n: usize) -> Sky {
        let tag = format!("sky{}{name}", std::process::id() % 100_000);
        let dir = std::env::temp_dir().join(&tag);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let ns = netns.then(|| {
            let o = run(&["ip", "netns", "add", &tag]);
            assert!(o.status.success(), "{o:?}");
            tag.clone()
        });
        let sky = Sky {
            ns,
            dir,
            ips: (0..n)
                .map(|i| format!("{net}.{}", first + i as u8))
                .collect(),
            nodes: (0..n).map(|_| None).collect(),
            users: Vec::new(),
            extra: Vec::new(),
        };
        if sky.ns.is_some() {
            sky.must(&["ip", "link", "set", "lo", "up"]);
        }
        sky
    }

    fn command(&self, program: &str) -> Command {
        match &self.ns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, program]);
                c
            }
            None => Command::new(program),
        }
    }

    fn must(&self, args: &[&str]) {
        let o = self.command(args[0]).args(&args[1..]).output().unwrap();
        assert!(o.status.success(), "{args:?}: {o:?}");
    }

    fn endpoint(&self, i: usize) -> String {
        format!("{}:7700", self.ips[i])
    }

    fn gossip(&self, i: usize) -> String {
        format!("{}:7701", self.ips[i])
    }

    fn bootstrap(&self) -> Vec<String> {
        (0..self.ips.len())
            .flat_map(|i| ["--sky".to_string(), self.endpoint(i)])
            .collect()
    }

    /// Starts node `i`, seeded with every other node.
    fn start_node(&mut self, i: usize) {
        let log = std::fs::File::create(self.dir.join(format!("node{i}.log"))).unwrap();
        let mut args: Vec<String> = [
            "node",
            "--listen",
            &self.endpoint(i),
            "--gossip",
            &self.gossip(i),
            "--check",
            "0",
            "--metrics",
            "off",
            "--shards",
            "1",
            "--prefix-v4",
            "32",
            "--keepalive-secs",
            &KEEPALIVE_SECS.to_string(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        for j in (0..self.ips.len()).filter(|&j| j != i) {
            args.push("--seed".into());
            args.push(self.gossip(j));
        }
        let child = self
            .command(SKY)
            .args(&args)
            .env("SKY_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.nodes[i] = Some(child);
    }

    fn start_all(&mut self) {
        for i in 0..self.ips.len() {
            self.start_node(i);
        }
    }

    /// `kill -9` of node `i`.
    fn kill(&mut self, i: usize) {
        let mut child = self.nodes[i].take().expect("running");
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
    }

    /// What `sky probe members` prints for node `i`, or None if it is
    /// silent.
    fn members(&self, i: usize) -> Option<String> {
        let o = self
            .command(SKY)
            .args([
                "probe",
                "members",
                "--sky",
                &self.endpoint(i),
                "--timeout",
                "0.3",
            ])
            .output()
            .unwrap();
        o.status
            .success()
            .then(|| String::from_utf8_lossy(&o.stdout).into_owned())
    }

    /// Node `i`'s view: (ring version, members), or None if it is silent.
    fn view(&self, i: usize) -> Option<(String, usize)> {
        let text = self.members(i)?;
        // "ring 1a2b3c4d members 5 replicas 2 ..."
        let words: Vec<&str> = text.lines().next()?.split_whitespace().collect();
        Some((words.get(1)?.to_string(), words.get(3)?.parse().ok()?))
    }

    /// Waits until every node of `nodes` reports the same version with
    /// `members` members; returns how long that took, or None after
    /// `within`.
    fn wait_one_view(&self, nodes: &[usize], members: usize, within: Duration) -> Option<Duration> {
        let start = Instant::now();
        while start.elapsed() < within {
            let views: Vec<Option<(String, usize)>> = nodes.iter().map(|&i| self.view(i)).collect();
            if views
                .iter()
                .all(|v| matches!(v, Some((_, m)) if *m == members))
                && views.windows(2).all(|w| w[0] == w[1])
            {
                return Some(start.elapsed());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        None
    }

    fn state(&self, who: &str) -> PathBuf {
        self.dir.join(who)
    }

    fn earth(&self, who: &str, args: &[&str]) -> Output {
        let state = self.state(who);
        self.command(SKY)
            .arg("earth")
            .arg("--state")
            .arg(&state)
            .args(args)
            .output()
            .unwrap()
    }

    fn earth_ok(&self, who: &str, args: &[&str]) -> String {
        let o = self.earth(who, args);
        assert!(o.status.success(), "earth {who} {args:?}: {o:?}");
        String::from_utf8_lossy(&o.stdout).trim().to_string()
    }

    /// Users `names`, and a `checker` who is friends with each of them.
    fn make_users(&self, names: &[&str], checker: &str) {
        self.earth_ok(checker, &["init"]);
        let checker_invite = self.earth_ok(checker, &["invite"]);
        for name in names {
            self.earth_ok(name, &["init"]);
            let invite = self.earth_ok(name, &["invite"]);
            self.earth_ok(checker, &["add-friend", name, &invite]);
            self.earth_ok(name, &["add-friend", checker, &checker_invite]);
        }
    }

    /// Brings `who` online for `hold` seconds, bootstrapping from every
    /// node.
    fn online(&mut self, who: &str, hold: u64) {
        let log = std::fs::File::create(self.dir.join(format!("{who}.log"))).unwrap();
        let mut args: Vec<String> = vec![
            "earth".into(),
            "--state".into(),
            self.state(who).display().to_string(),
            "online".into(),
            "--hold".into(),
            hold.to_string(),
        ];
        args.extend(self.bootstrap());
        let child = self
            .command(SKY)
            .args(&args)
            .env("SKY_LOG", "info")
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.users.push(child);
    }

    /// Whether `checker` finds `who` online.
    fn finds(&self, checker: &str, who: &str) -> bool {
        let mut args = vec!["lookup", who];
        let boot = self.bootstrap();
        args.extend(boot.iter().map(String::as_str));
        let o = self.earth(checker, &args);
        o.status.success() && String::from_utf8_lossy(&o.stdout).starts_with("online")
    }

    /// Waits until `checker` finds every one of `users`.
    fn wait_found(&self, checker: &str, users: &[&str], within: Duration) -> Option<Duration> {
        let start = Instant::now();
        while start.elapsed() < within {
            if users.iter().all(|u| self.finds(checker, u)) {
                return Some(start.elapsed());
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        None
    }

    /// The virtual addresses `who` is registered under now (`status`).
    fn addresses(&self, who: &str) -> Vec<VirtualAddr> {
        let status = self.earth_ok(who, &["status"]);
        let found: Vec<VirtualAddr> = status
            .lines()
            .filter_map(|l| l.strip_prefix("address "))
            .filter_map(|hex| wire::from_hex::<16>(hex.trim()).map(VirtualAddr))
            .collect();
        assert!(!found.is_empty(), "no address in {status}");
        found
    }

    /// Node `i`'s ring, rebuilt here from its members page the way clients
    /// do (and checked against the version it reports).
    fn ring(&self, i: usize) -> Option<Ring> {
        let text = self.members(i)?;
        let version = text.split_whitespace().nth(1)?.to_string();
        let members: Vec<SocketAddr> = text
            .lines()
            .filter_map(|l| l.strip_prefix("member "))
            .filter_map(|e| e.parse().ok())
            .collect();
        let config = RingConfig {
            prefix_v4: 32,
            ..RingConfig::default()
        };
        let ring = Ring::new(config, members);
        assert_eq!(format!("{:08x}", ring.version()), version, "{text}");
        Some(ring)
    }

    /// Whether every owner of every one of `addresses`, in node `i`'s view,
    /// holds it (`sky probe lookup` says online there).
    fn owners_hold(&self, i: usize, addresses: &[VirtualAddr]) -> bool {
        let Some(ring) = self.ring(i) else {
            return false;
        };
        addresses.iter().all(|a| {
            ring.owners(a).as_slice().all(|owner| {
                let o = self
                    .command(SKY)
                    .args(["probe", "lookup", "--sky", &owner.to_string(), "--address"])
                    .arg(a.to_hex())
                    .args(["--timeout", "0.3"])
                    .output()
                    .unwrap();
                o.status.success()
            })
        })
    }

    /// Loads an nftables ruleset in the sky's namespace.
    fn nft(&self, rules: &str) {
        let file = self.dir.join("rules.nft");
        std::fs::write(&file, rules).unwrap();
        self.must(&["nft", "-f", file.to_str().unwrap()]);
    }

    /// Packets the `counter` rules of table `inet {table}` matched.
    fn nft_counted(&self, table: &str) -> u64 {
        let o = self
            .command("nft")
            .args(["list", "table", "inet", table])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&o.stdout);
        let words: Vec<&str> = text.split_whitespace().collect();
        words
            .windows(2)
            .filter(|w| w[0] == "packets")
            .filter_map(|w| w[1].parse::<u64>().ok())
            .sum()
    }

    fn node_log(&self, i: usize) -> String {
        std::fs::read_to_string(self.dir.join(format!("node{i}.log"))).unwrap_or_default()
    }
}

const USERS: [&str; 3] = ["alice", "bob", "carol"];

/// A sky of five converged nodes with three users online and found.
fn converged_sky(name: &str, netns: bool, net: &str, first: u8, hold: u64) -> Sky {
    let mut sky = Sky::new(name, netns, net, first, 5);
    sky.start_all();
    let took = sky.wait_one_view(&[0, 1, 2, 3, 4], 5, Duration::from_secs(30));
    assert!(took.is_some(), "five nodes did not converge on one view");
    eprintln!("{name}: one view of 5 after {:?}", took.unwrap());
    sky.make_users(&USERS, "dave");
    for u in USERS {
        sky.online(u, hold);
    }
    let found = sky.wait_found("dave", &USERS, Duration::from_secs(20));
    assert!(found.is_some(), "users not found after going online");
    sky
}

#[test]
fn a_killed_node_is_declared_dead_within_5s_and_every_user_stays_findable() {
    let _serial = crate::common::heavy();
    // Loopback addresses of the host: no root needed.
    let mut sky = converged_sky("kill", false, "127.0.3", 1, 120);
    let victim = 2;
    sky.kill(victim);
    let killed = Instant::now();
    let survivors = [0, 1, 3, 4];
    let mut dead_after = [None; 5];
    let mut moved_after = None;
    let mut lookups = 0;
    let addresses: Vec<VirtualAddr> = USERS.iter().flat_map(|u| sky.addresses(u)).collect();
    // For 3 keepalive intervals after the kill: every survivor must drop
    // the victim within 5 s, every user must be found every time, and the
    // users must move to their new owners (handoff).
    while killed.elapsed() < Duration::from_secs(3 * KEEPALIVE_SECS + 5) {
        for &i in &survivors {
            if dead_after[i].is_none() && matches!(sky.view(i), Some((_, 4))) {
                dead_after[i] = Some(killed.elapsed());
            }
        }
        if moved_after.is_none()
            && dead_after.iter().flatten().count() == survivors.len()
            && sky.owners_hold(0, &addresses)
        {
            moved_after = Some(killed.elapsed());
        }
        for u in USERS {
            assert!(
                sky.finds("dave", u),
                "{u} not found {:?} after the kill",
                killed.elapsed()
            );
            lookups += 1;
        }
    }
    eprintln!(
        "kill: victim dropped after {dead_after:?}; {lookups} lookups, all online; \
         every user registered at all its new owners {moved_after:?} after the kill"
    );
    let dropped = survivors.map(|i| {
        let t = dead_after[i].unwrap_or_else(|| panic!("node {i} never dropped the victim"));
        assert!(t <= Duration::from_secs(5), "node {i} took {t:?}");
        t
    });
    // Handoff: clients move within one keepalive interval of the change
    // (the exact bound is checked in virtual time by the client's tests;
    // here, real processes on a shared machine, with one interval of slack).
    let moved = moved_after.expect("users never registered with their new owners");
    let latest = dropped.into_iter().max().unwrap();
    assert!(
        moved <= latest + Duration::from_secs(2 * KEEPALIVE_SECS),
        "users moved {moved:?} after the kill, the ring changed at {latest:?}"
    );
}

#[test]
fn a_partition_of_2_and_3_heals_into_one_view_and_loses_no_user() {
    if !can_run_as_root("the partition test", &["ip", "nft"]) {
        return;
    }
    let _serial = crate::common::heavy();
    let mut sky = converged_sky("part", true, "127.0.0", 11, 200);
    let (a, b) = (
        "127.0.0.11, 127.0.0.12",
        "127.0.0.13, 127.0.0.14, 127.0.0.15",
    );
    sky.nft(&format!(
        "table inet skypart {{\n  chain out {{\n    type filter hook output priority 0;\n    \
         ip saddr {{ {a} }} ip daddr {{ {b} }} counter drop\n    \
         ip saddr {{ {b} }} ip daddr {{ {a} }} counter drop\n  }}\n}}\n"
    ));
    let cut = Instant::now();
    // Each side sees only itself (bounded: the partition lasts 30 s).
    let split_a = sky.wait_one_view(&[0, 1], 2, Duration::from_secs(25));
    let split_b = sky.wait_one_view(&[2, 3, 4], 3, Duration::from_secs(25));
    eprintln!("partition: sides saw 2 and 3 after {split_a:?} / {split_b:?}");
    assert!(
        split_a.is_some() && split_b.is_some(),
        "the partition did not split the views"
    );
    std::thread::sleep(Duration::from_secs(30).saturating_sub(cut.elapsed()));
    let dropped = sky.nft_counted("skypart");
    assert!(dropped > 0, "the partition dropped nothing");
    sky.must(&["nft", "delete", "table", "inet", "skypart"]);
    eprintln!("partition: {dropped} datagrams between the sides dropped");
    let healed = sky.wait_one_view(&[0, 1, 2, 3, 4], 5, Duration::from_secs(30));
    eprintln!("partition: one view of 5 again {healed:?} after the heal");
    assert!(healed.is_some(), "no single view within 30 s of the heal");
    // Users move to their owners within one keepalive interval.
    let found = sky.wait_found("dave", &USERS, Duration::from_secs(2 * KEEPALIVE_SECS + 5));
    eprintln!("partition: every user found {found:?} after the view healed");
    assert!(found.is_some(), "an online user was lost");
    let _ = &mut sky;
}

#[test]
fn twenty_percent_gossip_loss_for_60s_declares_no_node_dead() {
    if !can_run_as_root("the loss test", &["ip", "nft"]) {
        return;
    }
    let _serial = crate::common::heavy();
    let mut sky = Sky::new("loss", true, "127.0.0", 21, 5);
    sky.start_all();
    assert!(
        sky.wait_one_view(&[0, 1, 2, 3, 4], 5, Duration::from_secs(30))
            .is_some()
    );
    let before: Vec<String> = (0..5).map(|i| sky.node_log(i)).collect();
    let version = sky.view(0).unwrap().0;
    sky.nft(
        "table inet skyloss {\n  chain out {\n    type filter hook output priority 0;\n    \
         udp dport 7701 numgen random mod 100 < 20 counter drop\n  }\n}\n",
    );
    let start = Instant::now();
    let mut polls = 0;
    while start.elapsed() < Duration::from_secs(60) {
        for i in 0..5 {
            // A node may miss a probe in the loss; one that answers must
            // still see all five.
            if let Some((v, m)) = sky.view(i) {
                assert_eq!(
                    (m, &v),
                    (5, &version),
                    "node {i} lost a member under 20% loss"
                );
                polls += 1;
            }
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let dropped = sky.nft_counted("skyloss");
    sky.must(&["nft", "delete", "table", "inet", "skyloss"]);
    assert!(dropped > 0, "the loss rule dropped nothing");
    for i in 0..5 {
        let log = sky.node_log(i);
        let during = &log[before[i].len().min(log.len())..];
        assert!(
            !during.contains("ring changed"),
            "node {i} changed its ring under loss:\n{during}"
        );
    }
    eprintln!(
        "loss: {dropped} gossip datagrams dropped; {polls} views over 60 s, all five members, \
         version {version}"
    );
}

/// Reads the UDP payloads to or from `port` in a pcap file (Linux
/// loopback: Ethernet framing, IPv4).
fn udp_payloads(pcap: &Path, port: u16) -> Vec<Vec<u8>> {
    let bytes = std::fs::read(pcap).unwrap();
    assert!(bytes.len() >= 24, "pcap too short");
    let le = bytes[..4] == [0xd4, 0xc3, 0xb2, 0xa1];
    let u32_at = |b: &[u8], i: usize| {
        let a = [b[i], b[i + 1], b[i + 2], b[i + 3]];
        if le {
            u32::from_le_bytes(a)
        } else {
            u32::from_be_bytes(a)
        }
    };
    let linktype = u32_at(&bytes, 20);
    let mut out = Vec::new();
    let mut at = 24;
    while at + 16 <= bytes.len() {
        let caplen = u32_at(&bytes, at + 8) as usize;
        let frame = &bytes[at + 16..(at + 16 + caplen).min(bytes.len())];
        at += 16 + caplen;
        let ip = match linktype {
            1 if frame.len() > 14 && frame[12..14] == [0x08, 0x00] => &frame[14..],
            113 if frame.len() > 16 && frame[14..16] == [0x08, 0x00] => &frame[16..], // cooked
            _ => continue,
        };
        if ip.len() < 20 || ip[0] >> 4 != 4 || ip[9] != 17 {
            continue;
        }
        let ihl = usize::from(ip[0] & 0x0f) * 4;
        let udp = &ip[ihl.min(ip.len())..];
        if udp.len() < 8 {
            continue;
        }
        let (src, dst) = (
            u16::from_be_bytes([udp[0], udp[1]]),
            u16::from_be_bytes([udp[2], udp[3]]),
        );
        if src == port || dst == port {
            out.push(udp[8..].to_vec());
        }
    }
    out
}

#[test]
fn gossip_carries_no_earth_data() {
    if !can_run_as_root("the gossip capture test", &["ip", "tcpdump"]) {
        return;
    }
    let _serial = crate::common::heavy();
    let mut sky = Sky::new("cap", true, "127.0.0", 31, 3);
    let pcap = sky.dir.join("gossip.pcap");
    let tcpdump = sky
        .command("tcpdump")
        .args(["-i", "lo", "-U", "-n", "-w"])
        .arg(&pcap)
        .args(["udp", "port", "7701"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    sky.extra.push(tcpdump);
    std::thread::sleep(Duration::from_millis(500));
    sky.start_all();
    assert!(
        sky.wait_one_view(&[0, 1, 2], 3, Duration::from_secs(30))
            .is_some()
    );
    sky.make_users(&USERS, "dave");
    for u in USERS {
        sky.online(u, 60);
    }
    assert!(
        sky.wait_found("dave", &USERS, Duration::from_secs(20))
            .is_some()
    );
    // Gossip keeps running while the users are registered and looked up.
    let until = Instant::now() + Duration::from_secs(8);
    while Instant::now() < until {
        for u in USERS {
            assert!(sky.finds("dave", u));
        }
    }
    // What to look for: each user's virtual addresses (this epoch's and
    // its neighbours', from `status`) and the endpoints users were seen at
    // (the introductions dave received name them: the lookup prints them).
    let mut secrets: Vec<(String, Vec<u8>)> = Vec::new();
    for u in USERS {
        let status = sky.earth_ok(u, &["status"]);
        for hex in status
            .split_whitespace()
            .filter(|w| w.len() == 32 && w.chars().all(|c| c.is_ascii_hexdigit()))
        {
            let bytes: Vec<u8> = (0..16)
                .map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap())
                .collect();
            secrets.push((format!("{u}'s address {hex}"), bytes));
        }
        let mut args = vec!["lookup", u];
        let boot = sky.bootstrap();
        args.extend(boot.iter().map(String::as_str));
        let found = sky.earth_ok("dave", &args);
        // "online 127.0.0.1:40000 ..."
        let endpoint: std::net::SocketAddr = found
            .split_whitespace()
            .nth(1)
            .and_then(|e| e.parse().ok())
            .unwrap_or_else(|| panic!("no endpoint in {found}"));
        let std::net::IpAddr::V4(ip) = endpoint.ip() else {
            panic!("IPv4 expected")
        };
        let mut ep = ip.octets().to_vec();
        ep.extend_from_slice(&endpoint.port().to_be_bytes());
        secrets.push((format!("{u}'s endpoint {endpoint}"), ep));
        assert!(
            !sky.ips.contains(&ip.to_string()),
            "users must not share a node's IP for this test to mean anything"
        );
        secrets.push((format!("{u}'s IP {ip}"), ip.octets().to_vec()));
    }
    assert!(secrets.len() >= 9, "{secrets:?}");
    std::thread::sleep(Duration::from_millis(500));
    let payloads = udp_payloads(&pcap, 7701);
    assert!(
        payloads.len() > 50,
        "too few gossip datagrams captured: {}",
        payloads.len()
    );
    for (i, p) in payloads.iter().enumerate() {
        for (what, needle) in &secrets {
            assert!(
                !p.windows(needle.len()).any(|w| w == needle.as_slice()),
                "gossip datagram {i} contains {what}"
            );
        }
    }
    eprintln!(
        "capture: {} gossip datagrams, {} bytes, none with any of {} user values",
        payloads.len(),
        payloads.iter().map(Vec::len).sum::<usize>(),
        secrets.len()
    );
}
