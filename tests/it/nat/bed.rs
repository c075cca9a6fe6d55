//! The test bed's machinery: network namespaces joined by veth pairs and
//! bridges, nftables routers, processes started inside them, and one
//! `Drop` that kills every process and deletes every namespace.
//!
//! Every namespace is named `{prefix}{name}`; the prefix holds the test
//! process's id and a tag per layout, so layouts of one run and runs at once
//! never collide. The public side is the bridge `br0` in namespace `pub`
//! (203.0.113.0/24, the sky node on 203.0.113.1). A router has `out` (its
//! upstream link) and the bridge `lan` (its inside, `.1` of its subnet);
//! what is behind it is attached to `lan` from `.2` on.

use std::io::{BufRead, BufReader};
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The `sky` binary under test.
pub(crate) const SKY: &str = env!("CARGO_BIN_EXE_sky");

/// The sky node's address on the public side.
pub(crate) const SKY_NODE: &str = "203.0.113.1:7700";

/// How a router translates and filters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Nat {
    /// Endpoint-independent mapping, address-and-port-dependent filtering
    /// (`masquerade`: the common home router; also the carrier-grade NAT).
    Home,
    /// Endpoint-independent mapping and filtering (masquerade plus a DNAT
    /// of every inbound port to the first device behind it).
    Cone,
    /// Address-and-port-dependent mapping (`masquerade random`).
    Symmetric,
}

impl Nat {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Nat::Home => "home",
            Nat::Cone => "cone",
            Nat::Symmetric => "symmetric",
        }
    }
}

/// A router of the bed, as [`Bed::router`] made it.
#[derive(Clone, Debug)]
pub(crate) struct Router {
    /// Its namespace's short name.
    pub(crate) name: String,
    pub(crate) nat: Nat,
    /// Its address on its upstream link.
    pub(crate) outer: Ipv4Addr,
    /// Its inside subnet's first three octets (`.1` is the router) and
    /// prefix length.
    pub(crate) lan: (Ipv4Addr, u8),
}

/// Where a router's `out` link goes.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Upstream<'a> {
    /// The public bridge.
    Public,
    /// The inside of another router (a carrier-grade NAT).
    Behind(&'a Router),
}

/// A host behind a router.
#[derive(Clone, Debug)]
pub(crate) struct Host {
    pub(crate) name: String,
    pub(crate) ip: Ipv4Addr,
}

/// The insides a router can have: two home LANs (documentation ranges) and
/// the shared address space of a carrier-grade NAT (RFC 6598).
const HOME_LANS: [Ipv4Addr; 2] = [Ipv4Addr::new(198, 51, 100, 0), Ipv4Addr::new(192, 0, 2, 0)];
const CGN_LAN: Ipv4Addr = Ipv4Addr::new(100, 64, 0, 0);

pub(crate) fn run(args: &[&str]) -> Output {
    Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("{args:?}: {e}"))
}

pub(crate) fn must(args: &[&str]) -> Output {
    let o = run(args);
    assert!(
        o.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    o
}

/// The namespaces, processes and files of one layout; all gone on drop.
pub(crate) struct Bed {
    prefix: String,
    namespaces: Vec<String>,
    children: Vec<(String, Child)>,
    /// Config files, logs, captures.
    pub(crate) dir: PathBuf,
    /// Next free address per upstream bridge: the public one, then each
    /// router's inside, by router name.
    next_addr: Vec<(String, u8)>,
    home_lans: usize,
    started: Instant,
}

impl Drop for Bed {
    fn drop(&mut self) {
        for (_, c) in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        for ns in &self.namespaces {
            let _ = run(&["ip", "netns", "del", ns]);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Bed {
    /// An empty bed: the public bridge only (203.0.113.1/24, the sky
    /// node's address). `tag` names this layout among the run's.
    pub(crate) fn new(tag: &str) -> Bed {
        let prefix = format!("sky{}{tag}", std::process::id() % 100_000);
        let dir = std::env::temp_dir().join(format!("{prefix}-bed"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let mut bed = Bed {
            prefix,
            namespaces: Vec::new(),
            children: Vec::new(),
            dir,
            next_addr: vec![("pub".into(), 2)],
            home_lans: 0,
            started: Instant::now(),
        };
        bed.namespace("pub");
        bed.exec("pub", &["ip", "link", "add", "br0", "type", "bridge"]);
        bed.exec(
            "pub",
            &["ip", "addr", "add", "203.0.113.1/24", "dev", "br0"],
        );
        bed.exec("pub", &["ip", "link", "set", "br0", "up"]);
        bed
    }

    /// The full name of namespace `name`.
    pub(crate) fn ns(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    fn namespace(&mut self, name: &str) {
        let ns = self.ns(name);
        must(&["ip", "netns", "add", &ns]);
        self.namespaces.push(ns);
        self.exec(name, &["ip", "link", "set", "lo", "up"]);
    }

    /// Runs `args` in namespace `ns`; panics unless it succeeds.
    pub(crate) fn exec(&self, ns: &str, args: &[&str]) -> Output {
        let ns = self.ns(ns);
        let mut all = vec!["ip", "netns", "exec", &ns];
        all.extend_from_slice(args);
        must(&all)
    }

    /// Runs `args` in namespace `ns` and returns what it did, whatever it
    /// did.
    pub(crate) fn output(&self, ns: &str, args: &[&str]) -> Output {
        let ns = self.ns(ns);
        let mut all = vec!["ip", "netns", "exec", &ns];
        all.extend_from_slice(args);
        run(&all)
    }

    /// Runs `sky args` in namespace `ns`.
    pub(crate) fn sky(&self, ns: &str, args: &[&str]) -> Output {
        let mut all = vec![SKY];
        all.extend_from_slice(args);
        self.output(ns, &all)
    }

    /// Starts `args` in namespace `ns`, its output in `{dir}/{log}.log`;
    /// killed on drop (or by [`Bed::kill`]).
    pub(crate) fn spawn(&mut self, ns: &str, log: &str, args: &[&str]) {
        let path = self.dir.join(format!("{log}.log"));
        let file = std::fs::File::create(&path).unwrap();
        let child = Command::new("ip")
            .args(["netns", "exec", &self.ns(ns)])
            .args(args)
            .stdin(Stdio::null())
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .spawn()
            .unwrap_or_else(|e| panic!("{args:?}: {e}"));
        self.children.push((log.to_string(), child));
    }

    /// Starts `args` in namespace `ns` with piped stdin and stdout (stderr
    /// inherited) and `env` added to its environment; the bed kills it on drop.
    pub(crate) fn spawn_piped(
        &mut self,
        ns: &str,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> &mut Child {
        let child = Command::new("ip")
            .args(["netns", "exec", &self.ns(ns)])
            .args(args)
            .envs(env.iter().copied())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("{args:?}: {e}"));
        self.children
            .push((format!("piped{}", self.children.len()), child));
        &mut self.children.last_mut().unwrap().1
    }

    /// Starts `sky args` in namespace `ns` (its output in `{log}.log`).
    pub(crate) fn spawn_sky(&mut self, ns: &str, log: &str, args: &[&str]) {
        let mut all = vec![SKY];
        all.extend_from_slice(args);
        self.spawn(ns, log, &all);
    }

    /// What a process started with [`Bed::spawn`] wrote so far.
    pub(crate) fn log(&self, log: &str) -> String {
        std::fs::read_to_string(self.dir.join(format!("{log}.log"))).unwrap_or_default()
    }

    /// Waits until the process started as `log` has written `line` (or
    /// panics after `timeout`, with its log).
    pub(crate) fn wait_for_log(&self, log: &str, line: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while !self.log(log).contains(line) {
            assert!(
                Instant::now() < deadline,
                "{log} did not say {line:?}:\n{}",
                self.log(log)
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn next_addr(&mut self, bridge: &str) -> u8 {
        let slot = self
            .next_addr
            .iter_mut()
            .find(|(b, _)| b == bridge)
            .expect("a bridge of the bed");
        let n = slot.1;
        assert!(n < 250, "bridge {bridge} is full");
        slot.1 += 1;
        n
    }

    /// Joins namespace `name`'s interface `iface` to the bridge of
    /// `upstream` (`None`: the public one) and returns its address there,
    /// with the route to take for the rest of the world.
    fn attach(
        &mut self,
        name: &str,
        iface: &str,
        upstream: Option<&Router>,
    ) -> (Ipv4Addr, Option<Ipv4Addr>) {
        let (bridge_ns, bridge, net, len) = match upstream {
            None => ("pub".to_string(), "br0", Ipv4Addr::new(203, 0, 113, 0), 24),
            Some(r) => (r.name.clone(), "lan", r.lan.0, r.lan.1),
        };
        let n = self.next_addr(&bridge_ns);
        let o = net.octets();
        let ip = Ipv4Addr::new(o[0], o[1], o[2], n);
        let peer = format!("v{name}");
        must(&[
            "ip",
            "link",
            "add",
            iface,
            "netns",
            &self.ns(name),
            "type",
            "veth",
            "peer",
            "name",
            &peer,
            "netns",
            &self.ns(&bridge_ns),
        ]);
        self.exec(
            &bridge_ns,
            &["ip", "link", "set", &peer, "master", bridge, "up"],
        );
        self.exec(
            name,
            &["ip", "addr", "add", &format!("{ip}/{len}"), "dev", iface],
        );
        self.exec(name, &["ip", "link", "set", iface, "up"]);
        let gateway = upstream.map(|r| {
            let o = r.lan.0.octets();
            Ipv4Addr::new(o[0], o[1], o[2], 1)
        });
        if let Some(gw) = gateway {
            self.exec(
                name,
                &["ip", "route", "add", "default", "via", &gw.to_string()],
            );
        }
        (ip, gateway)
    }

    /// A router `name` doing `nat` on its `out` link towards `upstream`,
    /// with a home LAN (198.51.100.0/24, then 192.0.2.0/24) inside, or a
    /// carrier-grade NAT's 100.64.0.0/10 when `cgn`. No router hairpins
    /// (Linux's masquerade does not, and the bed adds no rule that would).
    pub(crate) fn router(&mut self, name: &str, nat: Nat, upstream: Upstream, cgn: bool) -> Router {
        self.namespace(name);
        let up = match upstream {
            Upstream::Public => None,
            Upstream::Behind(r) => Some(r),
        };
        let (outer, _) = self.attach(name, "out", up);
        let lan = if cgn {
            (CGN_LAN, 10)
        } else {
            let lan = *HOME_LANS
                .get(self.home_lans)
                .expect("the bed has two home LANs");
            self.home_lans += 1;
            (lan, 24)
        };
        let o = lan.0.octets();
        let inside = Ipv4Addr::new(o[0], o[1], o[2], 1);
        self.exec(name, &["ip", "link", "add", "lan", "type", "bridge"]);
        self.exec(
            name,
            &[
                "ip",
                "addr",
                "add",
                &format!("{inside}/{}", lan.1),
                "dev",
                "lan",
            ],
        );
        self.exec(name, &["ip", "link", "set", "lan", "up"]);
        self.exec(name, &["sysctl", "-qw", "net.ipv4.ip_forward=1"]);
        self.next_addr.push((name.to_string(), 2));
        let router = Router {
            name: name.to_string(),
            nat,
            outer,
            lan,
        };
        self.nft(name, &rules(&router));
        router
    }

    /// Loads an nftables ruleset into namespace `ns`.
    pub(crate) fn nft(&self, ns: &str, ruleset: &str) {
        let path = self.dir.join(format!("{ns}.nft"));
        std::fs::write(&path, ruleset).unwrap();
        self.exec(ns, &["nft", "-f", path.to_str().unwrap()]);
    }

    /// A host `name` behind `router` (its first is `.2`, which a cone
    /// router forwards every inbound port to).
    pub(crate) fn host(&mut self, name: &str, router: &Router) -> Host {
        self.namespace(name);
        let (ip, _) = self.attach(name, "eth0", Some(router));
        Host {
            name: name.to_string(),
            ip,
        }
    }

    /// A host `name` on the public side itself (203.0.113.x, no NAT).
    pub(crate) fn public_host(&mut self, name: &str) -> Host {
        self.namespace(name);
        let (ip, _) = self.attach(name, "eth0", None);
        Host {
            name: name.to_string(),
            ip,
        }
    }

    /// Adds `ip/24` to the public bridge (a server of the bed: a STUN
    /// server's second address, say).
    pub(crate) fn public_address(&self, ip: &str) {
        self.exec(
            "pub",
            &["ip", "addr", "add", &format!("{ip}/24"), "dev", "br0"],
        );
    }

    /// Starts a sky node on the public side (203.0.113.1:7700) and waits
    /// until it answers.
    pub(crate) fn sky_node(&mut self) {
        self.spawn_sky(
            "pub",
            "node",
            &["node", "--listen", SKY_NODE, "--metrics", "off"],
        );
        let ready = Instant::now() + Duration::from_secs(10);
        while self
            .sky(
                "pub",
                &["probe", "ping", "--sky", SKY_NODE, "--timeout", "0.2"],
            )
            .status
            .code()
            != Some(0)
        {
            assert!(
                Instant::now() < ready,
                "sky node did not start in the test bed: {}",
                self.log("node")
            );
        }
    }

    /// Says how long building the layout took (printed by each layout).
    pub(crate) fn built(&self, layout: &str) {
        eprintln!(
            "bed: layout {layout} ({}) built in {:.2} s",
            self.prefix,
            self.started.elapsed().as_secs_f64()
        );
    }

    /// Starts recording what crosses interface `iface` of namespace `ns`
    /// (tcpdump, text, no name resolution, each packet as it comes) and
    /// returns once tcpdump listens; [`Capture::stop`] returns the lines.
    pub(crate) fn capture(&mut self, ns: &str, iface: &str, filter: &str) -> Capture {
        let mut child = Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.ns(ns),
                "tcpdump",
                "-l",
                "-n",
                "--immediate-mode",
                "-i",
                iface,
            ])
            .args(filter.split_whitespace())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("tcpdump runs (.ci/test installs it)");
        // tcpdump says "listening on …" on stderr once it captures.
        let mut err = BufReader::new(child.stderr.take().unwrap());
        let mut line = String::new();
        while err.read_line(&mut line).unwrap_or(0) > 0 && !line.contains("listening on") {
            line.clear();
        }
        // Keep reading: the statistics it writes when stopped must not meet
        // a closed pipe (SIGPIPE before it has written every packet).
        std::thread::spawn(move || std::io::copy(&mut err, &mut std::io::sink()));
        let stdout = child.stdout.take().unwrap();
        let lines = std::thread::spawn(move || {
            BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
                .collect::<Vec<_>>()
        });
        Capture {
            child,
            lines: Some(lines),
        }
    }
}

/// A running tcpdump; stopped (and waited for) on drop too.
pub(crate) struct Capture {
    child: Child,
    lines: Option<std::thread::JoinHandle<Vec<String>>>,
}

impl Capture {
    /// Stops the capture and returns one line per packet.
    pub(crate) fn stop(mut self) -> Vec<String> {
        // SIGINT, so that tcpdump flushes what it has (its own id only).
        let _ = run(&["kill", "-INT", &self.child.id().to_string()]);
        let _ = self.child.wait();
        self.lines.take().unwrap().join().unwrap_or_default()
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The nftables ruleset of `router`. Like a home router's firewall, every
/// router drops unsolicited datagrams to itself; dropped before its
/// conntrack entry is confirmed, such a datagram cannot take the port a
/// later outbound flow needs (which would make Linux pick another: a
/// symmetric NAT).
pub(crate) fn rules(router: &Router) -> String {
    let masquerade = match router.nat {
        Nat::Symmetric => "masquerade random",
        _ => "masquerade",
    };
    let inbound = match router.nat {
        Nat::Cone => {
            let o = router.lan.0.octets();
            let first = Ipv4Addr::new(o[0], o[1], o[2], 2);
            format!("iifname \"out\" udp dport 1024-65535 dnat to {first}")
        }
        _ => String::new(),
    };
    format!(
        "table ip nat {{\n  chain pre {{\n    type nat hook prerouting priority -100;\n    {inbound}\n  }}\n  \
         chain post {{\n    type nat hook postrouting priority 100;\n    oifname \"out\" {masquerade}\n  }}\n}}\n\
         table ip filter {{\n  chain input {{\n    type filter hook input priority 0;\n    \
         iifname \"out\" ct state new drop\n  }}\n}}\n"
    )
}

/// Root (namespaces, nftables) and the tools, or a loud skip; in CI (`CI`
/// set) their absence fails the test. `extra` names further programs the
/// test needs (`miniupnpd`, `turnserver`, …).
pub(crate) fn can_run(extra: &[&str]) -> bool {
    let root = run(&["id", "-u"]).stdout == b"0\n";
    let has = |p: &str| {
        Command::new("sh")
            .args(["-c", &format!("command -v {p}")])
            .output()
            .is_ok_and(|o| o.status.success())
    };
    let mut missing: Vec<&str> = ["ip", "nft"].into_iter().filter(|p| !has(p)).collect();
    missing.extend(extra.iter().filter(|p| !has(p)));
    let mut lacks = Vec::new();
    if !root {
        lacks.push("root".to_string());
    }
    if !missing.is_empty() {
        lacks.push(format!("{} (.ci/test installs them)", missing.join(", ")));
    }
    let lacks = lacks.join(" and ");
    match (lacks.is_empty(), std::env::var_os("CI").is_some()) {
        (true, _) => true,
        (false, true) => panic!("the NAT test bed cannot run in CI: it lacks {lacks}"),
        (false, false) => {
            eprintln!("WARNING: NAT test bed skipped: it lacks {lacks}");
            false
        }
    }
}
