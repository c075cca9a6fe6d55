//! Gossip nobody can forge, against real `sky node` processes (issue 14):
//! a spoofed announce adds no member and is answered with fewer bytes than
//! it took; a lying member's fake members and false downs change no ring;
//! no client sends a token to a node outside the validated ring.
//!
//! Each test runs three `sky node` processes on its own `127.0.N.1–3`
//! (`N`: 71, 72, 73), and plays the attacker from this process: plain UDP
//! sockets, a [`Gossip`] core of its own, and *honeypots* — sockets that
//! stand in for third parties, answer nothing and record what reaches
//! them. Traffic goes to 127.0.0.0/8 only; every loop is bounded in count
//! and time; every process and thread started is stopped on drop. Waits
//! have deadlines; nothing asserts a duration (the bounds computed from
//! elapsed time only widen with it).

use std::collections::HashSet;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use sky_node::gossip::{
    Gossip, GossipConfig, NodeId, PROBES_PER_IP, STRANGER_BUDGET, VOUCHED_BUDGET, public_key_of,
};
use sky_node::probe::Client;
use sky_proto::ring::RingConfig;
use sky_proto::time::MonoTime;
use sky_proto::wire::{Cookie, Message, Tag};

use crate::cli::{NodeProcess, SKY, earth};
use crate::common::{Scratch, emit, heavy, sample};

mod liar;
use liar::Liar;

/// How long a test waits for a view to form (a bound, not a target).
const CONVERGE: Duration = Duration::from_secs(20);

/// The most bytes of one gossip datagram (foca's `max_packet_size` plus
/// the prefix and the signature: `GossipConfig::default`).
const MAX_GOSSIP_DATAGRAM: usize = 1200;

/// A cookie reply: `C` and the cookie (`gossip/auth.rs`).
const COOKIE_REPLY_LEN: usize = 9;

/// How often a node announces to (and pings) an identity a member told it
/// of before it gives up on it: `ANNOUNCE_TRIES` in `gossip/auth.rs`
/// (private there). The tries are 0.5, 1, 2 and 4 s apart, and the
/// identity is forgotten 8 s after the last: one of the [`PROBES_PER_IP`]
/// slots of an IP turns over no sooner than every 15.5 s.
const ANNOUNCE_TRIES: usize = 5;
const SLOT_TURNOVER: Duration = Duration::from_millis(15_500);

/// Ring settings of every node here: each IP its own owner.
fn ring_config() -> RingConfig {
    RingConfig {
        prefix_v4: 32,
        ..RingConfig::default()
    }
}

fn addr(net: u8, host: u8) -> SocketAddr {
    SocketAddr::from(([127, 0, net, host], 0))
}

/// Three `sky node` processes on `127.0.NET.1–3`, the last two seeded
/// with the first.
struct RealSky {
    nodes: Vec<NodeProcess>,
    services: Vec<SocketAddr>,
    gossip: Vec<SocketAddr>,
    metrics: Vec<SocketAddr>,
}

/// A `key=value` field of a node's "ready" log line.
fn field(ready: &str, key: &str) -> SocketAddr {
    ready
        .split_whitespace()
        .find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
        .unwrap_or_else(|| panic!("no {key} in {ready}"))
        .parse()
        .unwrap()
}

impl RealSky {
    fn start(net: u8) -> RealSky {
        let mut sky = RealSky {
            nodes: Vec::new(),
            services: Vec::new(),
            gossip: Vec::new(),
            metrics: Vec::new(),
        };
        for host in 1..=3u8 {
            let ip = addr(net, host).to_string();
            let seeds = sky.gossip.first().map(|s| s.to_string());
            let env: Vec<(&str, &str)> = seeds.iter().map(|s| ("SKY_SEEDS", s.as_str())).collect();
            let args = [
                "--listen",
                &ip,
                "--gossip",
                &ip,
                "--check",
                "0",
                "--metrics",
                &ip,
                "--prefix-v4",
                "32",
                "--shards",
                "1",
            ];
            let node = NodeProcess::start(&args, &env);
            sky.services.push(field(&node.ready, "listen"));
            sky.gossip.push(field(&node.ready, "gossip"));
            sky.metrics.push(field(&node.ready, "metrics"));
            sky.nodes.push(node);
        }
        sky
    }

    /// Each node's members page (the ring clients fetch); `None` where a
    /// node did not answer within a second.
    fn pages(&self) -> Vec<Option<HashSet<SocketAddr>>> {
        self.services
            .iter()
            .map(|&s| {
                let view = Client::new(s, Duration::from_secs(1))
                    .ok()?
                    .members()
                    .ok()?;
                Some(view.members.into_iter().collect())
            })
            .collect()
    }

    /// Waits until every node's members page is `expected`.
    fn wait_for_pages(&self, expected: &HashSet<SocketAddr>) {
        let end = Instant::now() + CONVERGE;
        loop {
            let pages = self.pages();
            if pages.iter().all(|p| p.as_ref() == Some(expected)) {
                return;
            }
            assert!(
                Instant::now() < end,
                "pages never became {expected:?}: {pages:?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// For `period`, every 200 ms: every node's members page is exactly
    /// `expected`, and no node holds any member down. Returns the checks
    /// made and the most members one node held suspect at once.
    fn watch(&self, expected: &HashSet<SocketAddr>, period: Duration) -> (usize, f64) {
        let (end, mut checks, mut suspects) = (Instant::now() + period, 0, 0.0f64);
        while Instant::now() < end {
            for (i, page) in self.pages().into_iter().enumerate() {
                let page = page.unwrap_or_else(|| panic!("node {i} sent no members page"));
                assert_eq!(&page, expected, "node {i}'s ring changed (check {checks})");
                let m = scrape(self.metrics[i]);
                let down = sample(&m, "sky_members{state=\"down\"}");
                assert_eq!(down, 0.0, "node {i} holds a member down (check {checks})");
                suspects = suspects.max(sample(&m, "sky_members{state=\"suspect\"}"));
            }
            checks += 1;
            std::thread::sleep(Duration::from_millis(200));
        }
        (checks, suspects)
    }
}

/// GET /metrics from a node process.
fn scrape(at: SocketAddr) -> String {
    let mut s = TcpStream::connect_timeout(&at, Duration::from_secs(2)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    text.split_once("\r\n\r\n")
        .expect("an http response")
        .1
        .to_string()
}

/// One datagram a honeypot received.
#[derive(Clone, Copy, Debug)]
struct Catch {
    to: SocketAddr,
    from: SocketAddr,
    len: usize,
}

/// Sockets standing in for third parties: they answer nothing and record
/// every datagram that reaches them.
struct Honeypots {
    addrs: Vec<SocketAddr>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<Vec<Catch>>>,
}

impl Honeypots {
    /// `count` sockets on each of `ips` (ephemeral ports).
    fn open(ips: &[SocketAddr], count: usize) -> Honeypots {
        let sockets: Vec<UdpSocket> = ips
            .iter()
            .flat_map(|&ip| (0..count).map(move |_| UdpSocket::bind(ip).unwrap()))
            .collect();
        let addrs = sockets.iter().map(|s| s.local_addr().unwrap()).collect();
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut caught = Vec::new();
            let mut buf = [0u8; 2048];
            for s in &sockets {
                s.set_nonblocking(true).unwrap();
            }
            // Bounded: the test stops it long before.
            let end = Instant::now() + Duration::from_secs(120);
            while !flag.load(Ordering::Relaxed) && Instant::now() < end {
                for s in &sockets {
                    while let Ok((len, from)) = s.recv_from(&mut buf) {
                        let to = s.local_addr().unwrap();
                        caught.push(Catch { to, from, len });
                    }
                }
                std::thread::sleep(Duration::from_millis(2));
            }
            caught
        });
        Honeypots {
            addrs,
            stop,
            thread: Some(thread),
        }
    }

    fn stop(mut self) -> Vec<Catch> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.take().unwrap().join().unwrap()
    }
}

impl Drop for Honeypots {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// 50 identities that do not exist: each a real key, its gossip endpoint
/// a honeypot on `127.0.NET.40`, its service endpoint one on `.41`.
fn fakes(gossip: &[SocketAddr], service: &[SocketAddr]) -> Vec<NodeId> {
    gossip
        .iter()
        .zip(service)
        .enumerate()
        .map(|(k, (&g, &s))| NodeId::new(g, s, 1).with_key(public_key_of([100 + k as u8; 32])))
        .collect()
}

/// A sky of three, honeypots for 50 fake members, and a liar admitted as
/// a fourth member; returns them and the ring of four.
fn lying_sky(net: u8) -> (RealSky, Honeypots, Liar, HashSet<SocketAddr>) {
    let honeypots = Honeypots::open(&[addr(net, 40), addr(net, 41)], 50);
    let (g, s) = honeypots.addrs.split_at(50);
    let fakes = fakes(g, s);
    let sky = RealSky::start(net);
    let real: HashSet<SocketAddr> = sky.services.iter().copied().collect();
    sky.wait_for_pages(&real);
    let liar = Liar::join(net, sky.gossip[0], fakes);
    let mut four = real.clone();
    four.insert(liar.service);
    // Admitted honestly: it proved both endpoints to every node.
    sky.wait_for_pages(&four);
    (sky, honeypots, liar, four)
}

/// Whether a honeypot datagram came from one of the real nodes' gossip
/// sockets (their proofs of the identities the liar vouched for).
fn from_real_gossip(sky: &RealSky, c: &Catch) -> bool {
    sky.gossip.contains(&c.from)
}

/// A tiny deterministic byte stream for garbage datagrams.
fn garbage(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// The announce a fresh core claiming `(gossip, service)` sends to `seed`.
fn announce(gossip: SocketAddr, service: SocketAddr, seed: SocketAddr, key: u8) -> Vec<u8> {
    let me = NodeId::new(gossip, service, 1);
    let mut core = Gossip::new(
        me,
        [key; 32],
        ring_config(),
        u64::from(key),
        GossipConfig::default(),
    );
    core.join(&[seed], MonoTime::ZERO);
    let (dst, bytes) = core.poll_transmit().expect("an announce");
    assert_eq!(dst, seed);
    bytes
}

/// Datagrams an attacker at `attacker` sends node `n` of `sky`: announces
/// from an identity that claims its own source but never returns the
/// cookie (what a spoofed source experiences), with a wrong cookie, from
/// identities that claim another source (the honeypot, a real member),
/// truncated announces, and garbage. Each is marked `true` if it is an
/// announce from the attacker's own identity (with or without a wrong
/// cookie): the only datagrams a node may answer at all.
fn attack(
    sky: &RealSky,
    n: usize,
    attacker: SocketAddr,
    honeypot: SocketAddr,
) -> Vec<(bool, Vec<u8>)> {
    let seed = sky.gossip[n];
    let own = announce(attacker, honeypot, seed, 50);
    let third_party = announce(honeypot, honeypot, seed, 51);
    let member = announce(sky.gossip[(n + 1) % 3], sky.services[(n + 1) % 3], seed, 52);
    let c = ring_config();
    (0..200usize)
        .map(|i| match i % 10 {
            0..=2 => (true, own.clone()),
            3 => {
                let mut b = own.clone();
                b[5..13].copy_from_slice(&[(i as u8) | 1; 8]);
                (true, b)
            }
            4 => (false, third_party.clone()),
            5 => (false, member.clone()),
            6 => (false, own[..(i * 7) % own.len()].to_vec()),
            7 => (false, garbage(i as u64, 1 + (i * 13) % 300)),
            8 => {
                let mut b = vec![b'G', c.replicas, c.prefix_v4, c.prefix_v6, c.positions];
                b.extend(garbage(i as u64, 150));
                (false, b)
            }
            _ if i % 20 == 9 => (false, [&[b'C'][..], &garbage(i as u64, 8)].concat()),
            _ => (
                false,
                emit(Message::Pong {
                    tag: Tag([i as u8; 4]),
                }),
            ),
        })
        .collect()
}

#[test]
fn a_spoofed_announce_gets_back_no_more_than_it_sent_and_adds_no_member() {
    let _heavy = heavy();
    let net = 71;
    let honeypot = Honeypots::open(&[addr(net, 51)], 1);
    let third = honeypot.addrs[0];
    let sky = RealSky::start(net);
    let real: HashSet<SocketAddr> = sky.services.iter().copied().collect();
    sky.wait_for_pages(&real);

    let attacker = UdpSocket::bind(addr(net, 50)).unwrap();
    let me = attacker.local_addr().unwrap();
    let mut batches: Vec<_> = (0..3)
        .map(|n| attack(&sky, n, me, third).into_iter())
        .collect();
    // What comes back, read beside the sending (bounded by `done` and a
    // minute).
    let done = Arc::new(AtomicBool::new(false));
    let reader = {
        let (socket, done) = (attacker.try_clone().unwrap(), done.clone());
        std::thread::spawn(move || {
            socket
                .set_read_timeout(Some(Duration::from_millis(20)))
                .unwrap();
            let mut got: Vec<(SocketAddr, Vec<u8>)> = Vec::new();
            let mut buf = [0u8; 2048];
            let end = Instant::now() + Duration::from_secs(60);
            while !done.load(Ordering::Relaxed) && Instant::now() < end {
                if let Ok((n, from)) = socket.recv_from(&mut buf) {
                    got.push((from, buf[..n].to_vec()));
                }
            }
            got
        })
    };
    let started = Instant::now();
    let (mut sent, mut announces) = ([0usize; 3], [0usize; 3]);
    for _ in 0..200 {
        for (n, batch) in batches.iter_mut().enumerate() {
            let (announce, bytes) = batch.next().expect("200 datagrams");
            attacker.send_to(&bytes, sky.gossip[n]).unwrap();
            sent[n] += bytes.len();
            if announce {
                announces[n] += bytes.len();
            }
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    // A few gossip rounds (200 ms each) and probe periods (400 ms): the
    // rings stay the three real nodes throughout.
    sky.watch(&real, Duration::from_secs(2));
    done.store(true, Ordering::Relaxed);
    let got = reader.join().unwrap();
    let elapsed = started.elapsed();
    let third_party = honeypot.stop();

    let mut received = [0usize; 3];
    for (from, bytes) in &got {
        let n = sky
            .gossip
            .iter()
            .position(|g| g == from)
            .unwrap_or_else(|| panic!("a datagram from {from}, not a node's gossip socket"));
        received[n] += bytes.len();
    }
    // The strangers' budget: a full bucket and what the elapsed time
    // refilled, per node.
    let budget = (f64::from(STRANGER_BUDGET) * (1.0 + elapsed.as_secs_f64())).ceil() as usize;
    eprintln!(
        "spoofed announces: sent {sent:?} bytes ({announces:?} in answerable announces), \
         received {received:?} bytes ({} datagrams) in {elapsed:?}; third party got {} datagrams",
        got.len(),
        third_party.len()
    );
    for n in 0..3 {
        assert!(
            received[n] <= sent[n],
            "node {n}: {} bytes back for {} sent",
            received[n],
            sent[n]
        );
        // Even counted against the announces alone (garbage is never
        // answered), no more comes back than went out.
        assert!(
            received[n] <= announces[n],
            "node {n}: {} bytes back for {} bytes of announces",
            received[n],
            announces[n]
        );
        assert!(
            received[n] <= budget * COOKIE_REPLY_LEN,
            "node {n}: {} bytes over the strangers' budget",
            received[n]
        );
    }
    for (_, bytes) in &got {
        assert!(
            bytes.len() == COOKIE_REPLY_LEN && bytes[0] == b'C',
            "only cookie replies go to an unproven source: {bytes:?}"
        );
    }
    assert!(
        received.iter().all(|&r| r > 0),
        "each node answered the unproven announces with cookies: {received:?}"
    );
    assert!(
        third_party.is_empty(),
        "nothing to the claimed third party: {third_party:?}"
    );
    let pages = sky.pages();
    assert!(pages.iter().all(|p| p.as_ref() == Some(&real)), "{pages:?}");
}

#[test]
fn a_lying_member_adds_no_fake_member_and_keeps_no_live_node_out() {
    let _heavy = heavy();
    let (sky, honeypots, liar, four) = lying_sky(72);
    let attack_started = Instant::now();
    liar.lie(true);
    let (during, suspects) = sky.watch(&four, Duration::from_secs(8));
    liar.lie(false);
    let (after, _) = sky.watch(&four, Duration::from_secs(2));
    let caught = honeypots.stop();
    let elapsed = attack_started.elapsed();
    let report = liar.stop();

    let bytes: usize = caught.iter().map(|c| c.len).sum();
    let fakes_reached: HashSet<SocketAddr> = caught.iter().map(|c| c.to).collect();
    eprintln!(
        "lying member: {} lies ({} bytes) to 3 nodes; {during} + {after} checks of 3 pages, \
         at most {suspects} suspect at once; honeypots got {} datagrams, {bytes} bytes, at {} \
         endpoints, in {elapsed:?}",
        report.lie_datagrams,
        report.lie_bytes,
        caught.len(),
        fakes_reached.len()
    );
    assert!(report.lie_datagrams > 0 && report.pongs >= 3, "{report:?}");
    assert!(
        caught.iter().all(|c| from_real_gossip(&sky, c)),
        "only the nodes' own proofs reach a fake's endpoints: {caught:?}"
    );
    assert!(
        !caught.is_empty(),
        "the nodes heard the lies (and tried to prove the fakes)"
    );
    // The bound: each node proves at most PROBES_PER_IP identities of one
    // IP at a time (all fakes' gossip endpoints share one), each with at
    // most ANNOUNCE_TRIES announces and as many pings, and a slot turns
    // over no sooner than every 15.5 s; all of it within VOUCHED_BUDGET
    // a second. Bytes: an announce is one gossip datagram at most, a ping
    // a sky ping.
    let turnovers = 1 + (elapsed.as_millis() / SLOT_TURNOVER.as_millis()) as usize;
    let by_slots = 3 * turnovers * PROBES_PER_IP * ANNOUNCE_TRIES * 2;
    let by_budget = 3 * VOUCHED_BUDGET as usize * (1 + elapsed.as_secs() as usize);
    let most = by_slots.min(by_budget);
    assert!(
        caught.len() <= most,
        "{} datagrams to the fakes, more than {most}",
        caught.len()
    );
    let ping = emit(Message::Ping {
        tag: Tag::default(),
        cookie: Cookie::default(),
    });
    assert!(
        bytes <= most / 2 * (MAX_GOSSIP_DATAGRAM + ping.len()),
        "{bytes} bytes to the fakes"
    );
}

/// A running `sky earth online`: its stdout and stderr, line by line.
struct Online {
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Online {
    fn start(dir: &std::path::Path, sky: SocketAddr) -> Online {
        let mut child = Command::new(SKY)
            .args(["earth", "--state", dir.to_str().unwrap(), "online"])
            .args([
                "--sky",
                &sky.to_string(),
                "--hold",
                "60",
                "--no-port-mapping",
            ])
            .env("NO_COLOR", "1")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let (tx, lines) = mpsc::channel();
        let out = BufReader::new(child.stdout.take().unwrap());
        let err = BufReader::new(child.stderr.take().unwrap());
        for r in [Box::new(out) as Box<dyn BufRead + Send>, Box::new(err)] {
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in r.lines().map_while(Result::ok) {
                    let _ = tx.send(line);
                }
            });
        }
        Online {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// Waits (up to 15 s) for a line starting with `prefix`.
    fn wait_for(&mut self, prefix: &str) -> String {
        if let Some(l) = self.seen.iter().find(|l| l.starts_with(prefix)) {
            return l.clone();
        }
        let end = Instant::now() + Duration::from_secs(15);
        while let Some(left) = end.checked_duration_since(Instant::now()) {
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if line.starts_with(prefix) {
                        return line;
                    }
                }
                Err(_) => break,
            }
        }
        panic!(
            "never printed `{prefix}`; printed:\n{}",
            self.seen.join("\n")
        );
    }
}

impl Drop for Online {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn an_earth_client_sends_no_token_to_a_node_outside_the_validated_ring() {
    let _heavy = heavy();
    let scratch = Scratch::new("hostile-gossip-earth");
    let dir = scratch.0.join("alice");
    let init = earth(&dir, &["init"]);
    assert!(init.status.success(), "{init:?}");
    let (sky, honeypots, liar, four) = lying_sky(73);
    liar.lie(true);
    // The lies are out before the client fetches its first view.
    std::thread::sleep(Duration::from_millis(500));
    let mut client = Online::start(&dir, sky.services[0]);
    let view = client.wait_for("sky earth: the sky has ");
    let registered = client.wait_for("registered ");
    // Registered, keepalives and refetches go on while the liar lies.
    let (checks, _) = sky.watch(&four, Duration::from_secs(3));
    client.seen.extend(client.lines.try_iter());
    let client_seen = std::mem::take(&mut client.seen);
    drop(client);
    liar.lie(false);
    let caught = honeypots.stop();
    let liar_gossip = liar.gossip;
    let report = liar.stop();

    // The nodes' proofs come from their gossip sockets (and the liar's
    // core never hears of the fakes: it is told no lies); anything else
    // is the client's.
    let (ours, theirs): (Vec<Catch>, Vec<Catch>) = caught
        .iter()
        .filter(|c| c.from != liar_gossip)
        .partition(|c| from_real_gossip(&sky, c));
    eprintln!(
        "earth client: `{view}`, `{registered}`; {} lies; honeypots got {} datagrams from the \
         nodes' proofs and {} from anyone else; {checks} checks of 3 pages",
        report.lie_datagrams,
        ours.len(),
        theirs.len()
    );
    assert!(
        theirs.is_empty(),
        "a datagram reached a fake member's endpoint from outside the nodes' proofs: {theirs:?}"
    );
    assert!(
        !ours.is_empty(),
        "the nodes heard of the fakes (and tried to prove them)"
    );
    // The client's view is the validated ring: the three and the liar,
    // never a fake, in every view it took.
    assert!(view.contains("the sky has 4 nodes"), "{view}");
    for line in client_seen.iter().filter(|l| l.contains("the sky has ")) {
        assert!(line.contains("the sky has 4 nodes"), "{line}");
    }
}
