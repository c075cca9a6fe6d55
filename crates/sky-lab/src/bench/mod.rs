//! `sky bench`: a load generator for sky nodes (and, in `stun` mode, for
//! STUN servers), in its own process.
//!
//! It sends from many sockets (many source ports, as many users would) with
//! `sendmmsg` and reads with `recvmmsg`, keeps at most `window` requests in
//! flight per socket (closed loop) or paces them at `rate` per second (open
//! loop, still bounded by the window), and stops by itself after `duration`.
//! Before measuring it fetches a cookie per socket and registers the
//! population it will look up or register. Every answer is checked: a
//! reply must have the kind its request expects and its tag; anything else
//! (a `not owner` or a `refused` among them) counts as malformed. The report gives operations answered
//! per second, loss, round-trip percentiles, and bytes per operation
//! (request, reply and introduction separately).
//!
//! **Threads.** `threads` generator loops (`generator.rs`), each on its own
//! thread with its own sockets (`clients` and `rate` split among them) and
//! its own slice of the population, so that no two threads register one
//! address from different sockets (each would move the other's
//! registration). They set up (`setup.rs`: cookies, registrations), meet at
//! a barrier, and measure for the same `duration`; the report sums them.
//!
//! **Keys.** Member `i`'s address is that of an Ed25519 key pair from a
//! deterministic seed ([`seed`]). Creating or moving a registration
//! takes a signature, which a node checks (tens of µs, and a budget of
//! checks per source and second, whose refusals setup waits out);
//! refreshing one where it is does not. So member `j` of a thread's slice
//! is always registered from one socket, its home (`j % clients`), setup
//! signs each registration once with that socket's cookie (`keys.rs`, on
//! every core, before the thread is pinned), and the measured loop reuses
//! the signatures: in `register` mode every operation is a refresh, and
//! the generator never signs while it measures.
//!
//! **A sky.** Before anything the target's members page is read
//! (`targets.rs`). A member of a sky of several is loaded as the sky: every
//! population address registered with each of its owners, lookups at the
//! first owner, pings round the members, a cookie per socket from every
//! node. Against one node nothing differs from a single node's run.
//!
//! **A prefilled node.** Ten million signed registrations through a socket
//! take a node's core 7.7 minutes of signature checks, and the generator
//! about 5 minutes to derive and sign them, every run. To measure lookups
//! in a table that large, [`serve_prefilled`] starts a real node whose
//! table was filled in process with [`synthetic_address`]es, and the
//! generator (`synthetic`) looks those up without keys or setup.
//!
//! **Source IPs.** A node allows each caller IP a bounded number of
//! introductions per target and second; over a small population one IP
//! exhausts it and its lookups are answered without one (less work than
//! a real mix of callers). `source_ips` spreads the sockets over that
//! many loopback IPs (127.0.0.1, .2, ...).
//!
//! For the ceiling (`--serve-baseline`, see [`crate::baseline`]) the lookup's
//! `caller` field carries the target's endpoint in its first six bytes.

#![allow(clippy::disallowed_methods)] // a tool: it reads the clock

use std::net::SocketAddr;
use std::ops::Range;
use std::sync::Barrier;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;

mod generator;
mod keys;
mod report;
mod setup;
mod stun;
mod targets;

pub use report::{BenchError, Latency, Report};

use generator::{Generator, Measured, Progress};
use report::Counts;
use sky_node::probe::AddrSecret;
use sky_proto::wire::{AddrKey, VirtualAddr};
use targets::Targets;

/// What each operation is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    Ping,
    Register,
    LookupOnline,
    LookupOffline,
    /// 50% lookup-online, 20% lookup-offline, 20% register, 10% ping.
    Mixed,
    /// RFC 8489 Binding requests, for a STUN server.
    Stun,
}

impl std::str::FromStr for Mode {
    type Err = String;
    fn from_str(s: &str) -> Result<Mode, String> {
        Ok(match s {
            "ping" => Mode::Ping,
            "register" => Mode::Register,
            "lookup-online" => Mode::LookupOnline,
            "lookup-offline" => Mode::LookupOffline,
            "mixed" => Mode::Mixed,
            "stun" => Mode::Stun,
            _ => {
                return Err(format!(
                    "unknown mode `{s}` (ping, register, lookup-online, lookup-offline, mixed, stun)"
                ));
            }
        })
    }
}

#[derive(Clone, Debug)]
pub struct BenchConfig {
    pub target: SocketAddr,
    pub mode: Mode,
    pub duration: Duration,
    /// Operations per second (all threads together); `None` runs
    /// closed-loop as fast as answers come.
    pub rate: Option<u64>,
    /// Sockets (source ports), split among the threads.
    pub clients: usize,
    /// Generator threads, each with its own sockets and its own slice of
    /// the population (at most `clients`).
    pub threads: usize,
    /// Pin thread `t` to core `pin + t` (once it has set up).
    pub pin: Option<usize>,
    /// Addresses registered before measuring (and registered, in `register`).
    pub population: usize,
    /// Requests in flight per socket, at most.
    pub window: usize,
    /// A request unanswered after this long is lost.
    pub timeout: Duration,
    /// Draw a progress bar on stderr (when it is a terminal).
    pub progress: bool,
    /// The server's process id, to report the CPU it used while measuring.
    pub server_pid: Option<u32>,
    /// The population was registered by an earlier run against this node:
    /// skip the setup (for repeated runs against 10^7 entries). The node
    /// must keep the entries alive that long (`--keepalive-secs`).
    pub registered: bool,
    /// The population is [`synthetic_address`]`(i)`, held by a node that
    /// [`serve_prefilled`] filled: no keys, no setup (lookups only).
    pub synthetic: bool,
    /// Client sockets spread over this many loopback IPv4 addresses
    /// (127.0.0.1 and up; against an IPv4 loopback node only).
    pub source_ips: u8,
}

impl Default for BenchConfig {
    fn default() -> Self {
        BenchConfig {
            target: "127.0.0.1:7700".parse().expect("literal"),
            mode: Mode::Ping,
            duration: Duration::from_secs(10),
            rate: None,
            clients: 32,
            threads: 1,
            pin: None,
            population: 10_000,
            window: 32,
            timeout: Duration::from_secs(1),
            progress: true,
            server_pid: None,
            registered: false,
            synthetic: false,
            source_ips: 1,
        }
    }
}

const BATCH: usize = 64;
const BUF: usize = 2048;
/// RTT histogram: 1 µs buckets up to 100 ms; slower answers land in the last.
const HISTOGRAM_US: usize = 100_000;
/// Longest idle wait between loop turns.
const IDLE_WAIT: Duration = Duration::from_millis(1);

/// The address-key seed of population member `i` (deterministic, so a
/// run can be repeated, and a test can find the addresses a run
/// registered).
pub fn seed(i: usize) -> [u8; 32] {
    let mut t = [0u8; 32];
    t[..8].copy_from_slice(&(i as u64).to_le_bytes());
    t[8..16].copy_from_slice(b"sky-bnch");
    t
}

/// Population member `i`'s key pair (about 15 µs to derive); its address
/// is `secret(i).address()`.
pub fn secret(i: usize) -> AddrSecret {
    AddrSecret::from_seed(seed(i))
}

/// Population member `i`'s address in a synthetic population (see the
/// module's doc): the address of its seed taken as a public key, no key
/// pair behind it (one hash, not a key derivation).
pub fn synthetic_address(i: usize) -> VirtualAddr {
    VirtualAddr::from_key(&AddrKey(seed(i)))
}

/// A real node (`Node::start_on`) whose presence table holds the synthetic
/// population `0..population` before it serves: each entry at endpoint
/// 127.0.0.1:9 (nobody listens: introductions to it are sent and dropped,
/// as they are to an earlier run's closed ports), alive until the node
/// stops. The configuration's per-source budgets must admit them.
pub fn serve_prefilled(
    config: &sky_node::config::Config,
    population: usize,
) -> Result<sky_node::engine::Node, String> {
    use sky_node::presence::Presence;
    let presence = Presence::with_budgets(config.capacity, config.budgets());
    let endpoint: SocketAddr = "127.0.0.1:9".parse().expect("literal");
    for i in 0..population {
        presence
            .register(synthetic_address(i), endpoint, keys::FLAGS, 0, u32::MAX)
            .map_err(|why| format!("entry {i} of {population} refused: {why:?}"))?;
    }
    sky_node::engine::Node::start_on(config, std::sync::Arc::new(presence))
        .map_err(|e| e.to_string())
}

/// One generator thread's share of a run.
pub(super) struct Share {
    thread: usize,
    clients: usize,
    rate: Option<u64>,
    /// Its population members.
    population: Range<usize>,
}

impl Share {
    /// Thread `t`'s share of `cfg`: `clients` and `rate` split as evenly as
    /// whole numbers allow, the population in contiguous slices.
    fn of(cfg: &BenchConfig, t: usize) -> Share {
        let n = cfg.threads;
        let split = |total: u64| total / n as u64 + u64::from((t as u64) < total % n as u64);
        Share {
            thread: t,
            clients: split(cfg.clients as u64) as usize,
            rate: cfg.rate.map(split),
            population: cfg.population * t / n..cfg.population * (t + 1) / n,
        }
    }
}

/// Runs one benchmark.
pub fn run(cfg: BenchConfig) -> Result<Report, BenchError> {
    let setup = Instant::now();
    check(&cfg)?;
    let targets = if cfg.mode == Mode::Stun {
        Targets::alone(cfg.target)
    } else {
        Targets::discover(cfg.target)?
    };
    let discovery = setup.elapsed();
    let barrier = Barrier::new(cfg.threads);
    let failed = AtomicBool::new(false);
    let progress = Progress::default();
    let results: Vec<Result<Option<(Measured, f64)>, BenchError>> = std::thread::scope(|s| {
        let threads: Vec<_> = (0..cfg.threads)
            .map(|t| {
                let (cfg, targets) = (&cfg, &targets);
                let (barrier, failed, progress) = (&barrier, &failed, &progress);
                std::thread::Builder::new()
                    .name(format!("sky-bench-{t}"))
                    .spawn_scoped(s, move || {
                        let mut arrive = Arrival {
                            barrier,
                            failed,
                            arrived: false,
                        };
                        // Pinned once set up: setup derives keys on every core.
                        let ready = Generator::set_up(cfg, targets, Share::of(cfg, t))
                            .and_then(|ready| pin(cfg, t).map(|()| ready));
                        if !arrive.wait(ready.is_ok()) {
                            return ready.map(|_| None);
                        }
                        let (g, setup_s) = ready?;
                        Ok(Some((g.measure(progress)?, setup_s)))
                    })
            })
            .collect();
        threads
            .into_iter()
            .map(|t| match t {
                Ok(t) => t.join().unwrap_or_else(|_| {
                    Err(BenchError::Setup("a generator thread panicked".into()))
                }),
                Err(e) => Err(BenchError::Io(e)),
            })
            .collect()
    });
    let mut measured = Vec::with_capacity(results.len());
    let mut aborted = false;
    for r in results {
        match r? {
            Some(m) => measured.push(m),
            None => aborted = true,
        }
    }
    if aborted || measured.is_empty() {
        return Err(BenchError::Setup(
            "a generator thread could not start".into(),
        ));
    }
    // The members page, then the slowest thread's setup.
    let setup_s = discovery.as_secs_f64() + measured.iter().map(|m| m.1).fold(0.0, f64::max);
    Ok(report(&cfg, &targets, &measured, setup_s))
}

/// The limits a run needs to be meaningful.
fn check(cfg: &BenchConfig) -> Result<(), BenchError> {
    let bad = |s: &str| Err(BenchError::Setup(s.into()));
    if cfg.threads == 0 || cfg.clients < cfg.threads {
        return bad("--threads must be at least 1 and at most --clients");
    }
    if cfg.window == 0 || cfg.population < cfg.threads {
        return bad("--window must be at least 1, and --population at least --threads");
    }
    if cfg.rate.is_some_and(|r| r < cfg.threads as u64) {
        return bad("--rate must be at least --threads");
    }
    if cfg.synthetic && !matches!(cfg.mode, Mode::LookupOnline | Mode::LookupOffline) {
        return bad("--synthetic looks up a prefilled population: lookup modes only");
    }
    let v4_loopback = matches!(cfg.target, SocketAddr::V4(a) if a.ip().is_loopback());
    if cfg.source_ips > 1 && !v4_loopback {
        return bad("--source-ips needs a node on an IPv4 loopback address");
    }
    Ok(())
}

/// Pins thread `t` to core `pin + t`, if asked.
fn pin(cfg: &BenchConfig, t: usize) -> Result<(), BenchError> {
    let Some(first) = cfg.pin else {
        return Ok(());
    };
    sky_node::engine::sys::pin_to_core(first + t)
        .map_err(|e| BenchError::Setup(format!("cannot pin thread {t} to core {}: {e}", first + t)))
}

/// A thread's arrival at the barrier where measuring starts: every thread
/// arrives once, having set up or failed to (and, if it panics, when it
/// unwinds), so that no thread waits for one that will never come.
struct Arrival<'a> {
    barrier: &'a Barrier,
    failed: &'a AtomicBool,
    arrived: bool,
}

impl Arrival<'_> {
    /// Arrives; true if every thread set up.
    fn wait(&mut self, ready: bool) -> bool {
        if !ready {
            self.failed.store(true, Ordering::SeqCst);
        }
        self.arrived = true;
        self.barrier.wait();
        !self.failed.load(Ordering::SeqCst)
    }
}

impl Drop for Arrival<'_> {
    fn drop(&mut self) {
        if !self.arrived {
            self.wait(false);
        }
    }
}

/// The threads' measurements as one report.
fn report(
    cfg: &BenchConfig,
    targets: &Targets,
    measured: &[(Measured, f64)],
    setup_s: f64,
) -> Report {
    let mut c = Counts::default();
    let mut histogram = vec![0u32; HISTOGRAM_US + 1];
    for (m, _) in measured {
        c += m.counts;
        for (sum, &n) in histogram.iter_mut().zip(&m.histogram) {
            *sum = sum.saturating_add(n);
        }
    }
    let start = measured.iter().map(|(m, _)| m.start).min();
    let end = measured.iter().map(|(m, _)| m.end).max();
    let window = match (start, end) {
        (Some(s), Some(e)) => e.duration_since(s).as_secs_f64(),
        _ => 0.0,
    };
    let answered = c.answered.max(1) as f64;
    Report {
        mode: cfg.mode,
        target: cfg.target.to_string(),
        nodes: targets.nodes.len(),
        threads: cfg.threads,
        clients: cfg.clients,
        population: cfg.population,
        rate_asked: cfg.rate,
        setup_s,
        duration_s: window,
        sent: c.sent,
        answered: c.answered,
        lost: c.lost,
        malformed: c.malformed,
        loss_ratio: if c.sent == 0 {
            0.0
        } else {
            c.lost as f64 / c.sent as f64
        },
        ops_per_sec: c.answered as f64 / window.max(1e-9),
        rtt: Latency::of(&histogram),
        request_bytes_per_op: c.request_bytes as f64 / c.sent.max(1) as f64,
        reply_bytes_per_op: c.reply_bytes as f64 / answered,
        introductions: c.intros,
        introduced: c.introduced,
        introduction_bytes_per_op: c.intro_bytes as f64 / answered,
        server_cpu: measured.first().and_then(|(m, _)| m.server_cpu),
    }
}

#[cfg(test)]
#[path = "../tests/bench.rs"]
mod tests;
