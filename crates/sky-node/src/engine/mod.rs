//! The engine: sockets, threads, the clock and every `unsafe` line.
//!
//! [`Node::start`] binds one `SO_REUSEPORT` UDP socket per packet shard on
//! the same address, starts a thread per shard (pinned to the second and
//! later CPUs the process was given) that
//! drives a sans-IO [`Shard`] with the chosen packet engine, a control
//! thread (the first CPU) that serves `/metrics`, sweeps expired presence and
//! hands off entries after ring changes, and a gossip thread (the first CPU) that
//! runs membership and swaps each new ring into the shards' snapshot, and
//! two NAT check threads on two ports of their own (`check.rs`).
//! [`Node::shutdown`] stops them all; each notices within [`WAKE_EVERY`],
//! and gossip leaves the sky before it exits.

#![allow(clippy::disallowed_methods)] // the engine owns the clock and threads

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use socket2::{Domain, Protocol, Socket, Type};

use crate::config::{Config, EngineChoice};
use crate::keys::NodeSecret;
use crate::metrics::{EngineStats, Metrics, ShardMetrics};
use crate::presence::Presence;
use crate::shard::{Ahead, Core, FIRST_AHEAD, SECOND_AHEAD, Shard};
use crate::snapshot::{self, SharedRing};
use sky_proto::ring::Ring;
use sky_proto::time::MonoTime;

pub mod batch;
pub mod calibrate;
mod check;
mod control;
mod gossip;
mod heartbeat;
mod mmsg;
mod outbox;
pub mod sys;
mod uring;

use heartbeat::Heartbeat;
pub use heartbeat::STALL_AFTER;

/// How long a shard may block waiting for datagrams before it looks at the
/// stop flag and its timers.
pub const WAKE_EVERY: Duration = Duration::from_millis(100);
/// How often shards move their counters into Prometheus.
pub const PUBLISH_EVERY: Duration = Duration::from_millis(100);

/// Whether io_uring can run here (what `--engine auto` checks): a ring and a
/// provided-buffer ring can be created.
pub fn uring_available() -> io::Result<()> {
    uring::probe()
}

/// The packet engine a node runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Engine {
    Uring,
    Mmsg,
}

impl Engine {
    /// The `engine` metric label.
    pub fn label(self) -> &'static str {
        match self {
            Engine::Uring => "uring",
            Engine::Mmsg => "mmsg",
        }
    }
}

/// Why a node did not start.
#[derive(Debug)]
pub enum StartError {
    /// The UDP address could not be bound (in use, not local, no permission).
    Bind(SocketAddr, io::Error),
    /// The gossip address could not be bound.
    Gossip(SocketAddr, io::Error),
    /// The metrics address could not be bound.
    Metrics(SocketAddr, String),
    /// `--engine uring` was asked for and io_uring is not available.
    Uring(io::Error),
    /// A thread or its engine could not be set up.
    Shard(io::Error),
    /// No randomness for the node secret.
    Random(io::Error),
    /// The NAT check ports (this one and the next) could not be bound.
    Check(u16, io::Error),
    /// The node's identity key file could not be read or created.
    Key(std::path::PathBuf, io::Error),
}

impl fmt::Display for StartError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StartError::Bind(a, e) => write!(f, "cannot listen on {a}/udp: {e}"),
            StartError::Gossip(a, e) => write!(
                f,
                "cannot bind the gossip socket on {a}/udp: {e} (another node on this IP? give \
                 each its own with --gossip HOST:PORT)"
            ),
            StartError::Metrics(a, e) => write!(f, "cannot serve metrics on {a}/tcp: {e}"),
            StartError::Uring(e) => write!(
                f,
                "io_uring is not available here ({e}); use --engine mmsg or auto"
            ),
            StartError::Shard(e) => write!(f, "cannot start a packet shard: {e}"),
            StartError::Random(e) => write!(f, "cannot read /dev/urandom: {e}"),
            StartError::Key(p, e) => write!(
                f,
                "cannot read or create the node key {}: {e} (set --node-key FILE)",
                p.display()
            ),
            StartError::Check(p, e) => write!(
                f,
                "cannot bind the NAT check ports {p} and {}/udp: {e} (set --check PORT or off)",
                p.wrapping_add(1)
            ),
        }
    }
}

impl std::error::Error for StartError {}

/// A running sky node.
pub struct Node {
    local_addr: SocketAddr,
    /// The endpoint on the ring (the advertised one, or `local_addr`).
    service: SocketAddr,
    metrics_addr: Option<SocketAddr>,
    engine: Engine,
    shards: usize,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<io::Result<()>>>,
    presence: Arc<Presence>,
    metrics: Arc<Metrics>,
    ring: SharedRing,
    gossip_addr: SocketAddr,
    heartbeats: Arc<[Heartbeat]>,
    origin: Instant,
}

impl Node {
    /// Binds, starts every thread, and returns once all shards are ready.
    pub fn start(config: &Config) -> Result<Node, StartError> {
        let presence = Presence::with_budgets(config.capacity, config.budgets());
        Node::start_on(config, Arc::new(presence))
    }

    /// [`Node::start`] serving `presence` as it is: what a benchmark uses to
    /// measure lookups in a table it filled in process (ten million signed
    /// registrations through the socket take a core 7.7 minutes of
    /// signature checks).
    pub fn start_on(config: &Config, presence: Arc<Presence>) -> Result<Node, StartError> {
        let (start, len) = presence.memory();
        match sys::advise_huge_pages(start, len) {
            Ok(0) => {}
            Ok(huge) => tracing::info!(
                "presence table: {} of its {} MiB on huge pages",
                huge >> 20,
                len >> 20
            ),
            Err(e) => tracing::info!(
                "presence table on 4 KiB pages ({} MiB): the kernel refused huge pages: {e}",
                len >> 20
            ),
        }
        let secret = Arc::new(NodeSecret::new(
            sys::random_secret().map_err(StartError::Random)?,
        ));
        let mut shard_config = config.shard_config();
        // Ephemeral check ports are bound first (the shards tell their
        // number); fixed ones after the listen socket, so that a listen
        // port in use is the error an operator sees.
        let bind_check = |port: u16| {
            check::CheckService::bind(config.listen.ip(), port)
                .map_err(|e| StartError::Check(port, e))
        };
        let mut check = match config.check {
            Some(0) => {
                let service = bind_check(0)?;
                shard_config.check_port = service.port();
                Some(service)
            }
            _ => None,
        };
        let shared = presence.clone();
        let mut node = Node::start_with(config, presence, move |_, now, ring, local_addr| {
            Shard::new(secret.clone(), shared.clone(), shard_config, now)
                .with_ring(ring.clone(), local_addr)
        })?;
        if let Some(port) = config.check.filter(|&p| p != 0) {
            match bind_check(port) {
                Ok(service) => check = Some(service),
                Err(e) => {
                    let _ = node.shutdown();
                    return Err(e);
                }
            }
        }
        if let Some(service) = check {
            let port = service.port();
            match service.spawn(&node.metrics, &node.stop) {
                Ok(threads) => node.threads.extend(threads),
                Err(e) => {
                    let _ = node.shutdown();
                    return Err(StartError::Check(port, e));
                }
            }
            tracing::info!(
                port,
                second = port.wrapping_add(1),
                "NAT check service ready"
            );
        }
        Ok(node)
    }

    /// Starts `shards` threads, each driving the core
    /// `make_core(i, now, ring, local_addr)`: what [`Node::start`] does with
    /// the sky's [`Shard`], and what the benchmark's no-logic baseline
    /// (`sky_lab::baseline`) does with its own core, so that both run on the
    /// very same engine, sockets and threads (gossip included).
    pub fn start_with<C: Core>(
        config: &Config,
        presence: Arc<Presence>,
        make_core: impl Fn(usize, MonoTime, &SharedRing, SocketAddr) -> C,
    ) -> Result<Node, StartError> {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let shards = config.shard_count(cores);
        // The CPUs this process was given (all of them, or what taskset, a
        // cgroup cpuset or a container's --cpuset-cpus left it): control and
        // gossip on the first, shard i on the (i + 1)th, wrapping; with one
        // CPU nothing is pinned.
        let allowed = match config.pin_cores {
            true => sys::allowed_cores().unwrap_or_default(),
            false => Vec::new(),
        };
        let first_cpu = (allowed.len() > 1).then(|| allowed[0]);
        let shard_cpu = |i: usize| first_cpu.map(|_| allowed[1 + i % (allowed.len() - 1)]);
        let mut measured = None;
        let engine = match config.engine {
            EngineChoice::Mmsg => Engine::Mmsg,
            EngineChoice::Uring => {
                uring::probe().map_err(StartError::Uring)?;
                Engine::Uring
            }
            EngineChoice::Auto => match uring::probe() {
                Ok(()) => match calibrate::measure() {
                    Ok(m) => {
                        tracing::info!(
                            uring_datagrams_per_second = m.uring.round() as u64,
                            mmsg_datagrams_per_second = m.mmsg.round() as u64,
                            took_ms = m.took.as_millis() as u64,
                            engine = m.faster().label(),
                            "measured both packet engines on the loopback; running the faster"
                        );
                        measured = Some(m);
                        m.faster()
                    }
                    Err(e) => {
                        tracing::warn!(
                            error = %e,
                            "cannot measure the packet engines on the loopback; running io_uring"
                        );
                        Engine::Uring
                    }
                },
                Err(e) => {
                    tracing::warn!(
                        error = %e,
                        "io_uring unavailable; falling back to recvmmsg (a seccomp profile or kernel.io_uring_disabled blocks io_uring: deploy/README.md)"
                    );
                    Engine::Mmsg
                }
            },
        };
        let sockets = bind_shard_sockets(config.listen, shards, engine, config.socket_buffer)?;
        let local_addr = sockets[0]
            .local_addr()
            .ok()
            .and_then(|a| a.as_socket())
            .unwrap_or(config.listen);
        // Where everyone else reaches it: on the ring, in members pages, in
        // gossip (behind a cloud's 1:1 NAT, not the listen address).
        let service = config.service(local_addr);
        // The node serves its own ring until gossip finds others.
        let ring = snapshot::shared(Ring::new(config.ring, [service]));
        let gossip_socket =
            gossip::bind(config.gossip).map_err(|e| StartError::Gossip(config.gossip, e))?;
        let gossip_addr = gossip_socket
            .local_addr()
            .map_err(|e| StartError::Gossip(config.gossip, e))?;
        let gossip_secret = match &config.node_key {
            Some(path) => {
                sys::load_or_create_key(path).map_err(|e| StartError::Key(path.clone(), e))?
            }
            None => sys::random_secret().map_err(StartError::Random)?,
        };
        let gossip_seed = u64::from_le_bytes(
            sys::random_secret().map_err(StartError::Random)?[..8]
                .try_into()
                .expect("8 bytes"),
        );

        let metrics = Arc::new(Metrics::new());
        metrics.set_engine(engine.label());
        if let Some(m) = measured {
            m.export(&metrics);
        }
        metrics.shards.set(shards as i64);
        metrics.presence_capacity.set(config.capacity as i64);
        let http = match config.metrics {
            Some(addr) => {
                Some(control::listen(addr).map_err(|e| StartError::Metrics(addr, e.to_string()))?)
            }
            None => None,
        };
        let metrics_addr = http.as_ref().and_then(|l| l.local_addr().ok());

        let stop = Arc::new(AtomicBool::new(false));
        let origin = Instant::now();
        let mut threads = Vec::with_capacity(shards + 1);
        let (ready_tx, ready_rx) = mpsc::channel::<io::Result<()>>();
        let heartbeats: Arc<[Heartbeat]> = (0..shards).map(|_| Heartbeat::default()).collect();

        for (i, socket) in sockets.into_iter().enumerate() {
            let mut shard = make_core(i, MonoTime::from_duration(origin.elapsed()), &ring, service);
            let shard_metrics = metrics.for_shard(i);
            let stop = stop.clone();
            let ready = ready_tx.clone();
            let heartbeats = heartbeats.clone();
            let pin = shard_cpu(i);
            let v6 = local_addr.is_ipv6();
            let spawned = std::thread::Builder::new()
                .name(format!("sky-shard-{i}"))
                .spawn(move || {
                    if let Some(core) = pin
                        && let Err(e) = sys::pin_to_core(core)
                    {
                        tracing::warn!(shard = i, core, error = %e, "cannot pin shard to its core");
                    }
                    let fd = socket.as_raw_fd();
                    let beat = &heartbeats[i];
                    beat.beat(MonoTime::from_duration(origin.elapsed()));
                    let result = match engine {
                        Engine::Uring => match uring::UringEngine::new(fd, v6) {
                            Ok(e) => {
                                let _ = ready.send(Ok(()));
                                e.run(&mut shard, &shard_metrics, &stop, origin, beat)
                            }
                            Err(e) => {
                                let _ = ready.send(Err(io::Error::new(e.kind(), e.to_string())));
                                Err(e)
                            }
                        },
                        Engine::Mmsg => {
                            let e = mmsg::MmsgEngine::new(fd, v6);
                            let _ = ready.send(Ok(()));
                            e.run(&mut shard, &shard_metrics, &stop, origin, beat)
                        }
                    };
                    if let Err(e) = &result {
                        tracing::error!(shard = i, error = %e, "packet shard stopped on an error");
                    }
                    drop(socket);
                    result
                })
                .map_err(StartError::Shard)?;
            threads.push(spawned);
        }
        drop(ready_tx);
        let mut failure = None;
        for _ in 0..shards {
            match ready_rx.recv() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => failure = Some(e),
                Err(_) => failure = Some(io::Error::other("a shard thread exited during start")),
            }
        }
        let pin = first_cpu;
        let control = {
            let presence = presence.clone();
            let metrics = metrics.clone();
            let stop = stop.clone();
            let keepalive = config.keepalive;
            let handoff = control::Handoff {
                ring: ring.clone(),
                me: service,
                grace: config.handoff_grace,
            };
            std::thread::Builder::new()
                .name("sky-control".into())
                .spawn(move || {
                    if let Some(core) = pin
                        && let Err(e) = sys::pin_to_core(core)
                    {
                        tracing::warn!(core, error = %e, "cannot pin control thread to its core");
                    }
                    control::run(http, metrics, presence, &stop, origin, keepalive, handoff)
                })
                .map_err(StartError::Shard)?
        };
        threads.push(control);

        let mut node = Node {
            local_addr,
            service,
            metrics_addr,
            engine,
            shards,
            stop,
            threads,
            presence,
            metrics,
            ring,
            gossip_addr,
            heartbeats,
            origin,
        };
        if let Some(e) = failure {
            let _ = node.shutdown();
            return Err(StartError::Shard(e));
        }
        let gossip_thread = {
            let setup = gossip::Setup {
                service,
                advertised: config.gossip_advertised(gossip_addr),
                seeds: config.seeds.clone(),
                ring_config: config.ring,
                rng_seed: gossip_seed,
                secret: gossip_secret,
                closed_sky: config.closed_sky.clone(),
            };
            let ring = node.ring.clone();
            let metrics = node.metrics.for_gossip();
            let stop = node.stop.clone();
            std::thread::Builder::new()
                .name("sky-gossip".into())
                .spawn(move || {
                    if let Some(core) = pin
                        && let Err(e) = sys::pin_to_core(core)
                    {
                        tracing::warn!(core, error = %e, "cannot pin gossip thread to its core");
                    }
                    let result = gossip::run(gossip_socket, setup, &ring, &metrics, &stop, origin);
                    if let Err(e) = &result {
                        tracing::error!(error = %e, "gossip stopped on an error");
                    }
                    result
                })
        };
        match gossip_thread {
            Ok(t) => node.threads.push(t),
            Err(e) => {
                let _ = node.shutdown();
                return Err(StartError::Shard(e));
            }
        }
        // No "ready" log here: `sky node` says it once its signal handlers
        // are installed too, so that whoever acts on it can stop the node
        // gracefully.
        Ok(node)
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The endpoint clients and other nodes reach this node at: what it
    /// puts on the ring ([`Config::advertise`], or the listen address).
    pub fn service_addr(&self) -> SocketAddr {
        self.service
    }

    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_addr
    }

    pub fn engine(&self) -> Engine {
        self.engine
    }

    pub fn shards(&self) -> usize {
        self.shards
    }

    pub fn presence(&self) -> &Presence {
        &self.presence
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// The ring snapshot the shards read; gossip swaps in each new one.
    pub fn ring(&self) -> SharedRing {
        self.ring.clone()
    }

    /// The bound gossip address (the one other nodes name as a seed).
    pub fn gossip_addr(&self) -> SocketAddr {
        self.gossip_addr
    }

    /// Whether every packet shard has woken within [`STALL_AFTER`]: false
    /// once one is stuck or its thread has stopped (what `sky node` feeds
    /// systemd's watchdog on). Reads one atomic per shard.
    pub fn shards_alive(&self) -> bool {
        let now = MonoTime::from_duration(self.origin.elapsed());
        self.heartbeats.iter().all(|h| h.alive(now))
    }

    /// Setting this flag stops the node (e.g. from a signal handler).
    pub fn stop_flag(&self) -> Arc<AtomicBool> {
        self.stop.clone()
    }

    /// Blocks until the stop flag is set, then stops every thread.
    pub fn wait(self) -> io::Result<()> {
        while !self.stop.load(Ordering::Relaxed) {
            std::thread::sleep(WAKE_EVERY);
        }
        self.shutdown()
    }

    /// Stops every thread and waits for them. Returns the first error a
    /// thread stopped with.
    pub fn shutdown(self) -> io::Result<()> {
        self.stop.store(true, Ordering::Relaxed);
        let mut first = Ok(());
        for t in self.threads {
            let r = t
                .join()
                .unwrap_or_else(|_| Err(io::Error::other("a node thread panicked")));
            if first.is_ok() {
                first = r;
            }
        }
        tracing::info!("sky node stopped");
        first
    }
}

/// What an engine prefetches just before it handles datagram `i` of a
/// batch of `n` it holds: the [`Ahead::First`] lines of the datagram
/// [`FIRST_AHEAD`] places on and the [`Ahead::Second`] lines of the one
/// [`SECOND_AHEAD`] on (before the first datagram, also those of every
/// datagram before them, which have no earlier turn to be named in). Each
/// datagram of the batch is named once at each stage, `First` first.
fn prefetch_schedule(i: usize, n: usize) -> impl Iterator<Item = (usize, Ahead)> {
    let from = |ahead: usize| if i == 0 { 0 } else { i + ahead };
    let first = (from(FIRST_AHEAD)..=i + FIRST_AHEAD).map(|j| (j, Ahead::First));
    let second = (from(SECOND_AHEAD)..=i + SECOND_AHEAD).map(|j| (j, Ahead::Second));
    first.chain(second).filter(move |&(j, _)| j < n)
}

/// Moves a shard's counters into the node's metrics, with its socket's
/// receive-queue drop counter as the kernel counts it now.
fn publish(metrics: &ShardMetrics, shard: &mut impl Core, engine: &mut EngineStats, fd: RawFd) {
    if let Ok(drops) = sys::socket_drops(fd) {
        engine.saw_queue_drops(drops);
    }
    metrics.publish(&shard.take_stats(), engine);
}

/// One socket per shard on the same address. The address is first bound
/// *without* `SO_REUSEPORT`, so that a port already served by another
/// process is an error rather than a silent share, and so that port 0
/// resolves to one port for every shard.
///
/// Each socket asks for `buffer` bytes of receive and send buffer (a
/// warning names what the kernel granted when that is less), and sets
/// Don't Fragment (`sys::set_dont_fragment`).
fn bind_shard_sockets(
    listen: SocketAddr,
    shards: usize,
    engine: Engine,
    buffer: usize,
) -> Result<Vec<Socket>, StartError> {
    let new_socket = |reuse: bool| -> io::Result<Socket> {
        let s = Socket::new(
            Domain::for_address(listen),
            Type::DGRAM,
            Some(Protocol::UDP),
        )?;
        if listen.is_ipv6() && listen.ip().is_unspecified() {
            s.set_only_v6(false)?;
        }
        if reuse {
            s.set_reuse_port(true)?;
        }
        Ok(s)
    };
    let err = |e| StartError::Bind(listen, e);
    let probe = new_socket(false).map_err(err)?;
    probe.bind(&listen.into()).map_err(err)?;
    let addr = probe.local_addr().map_err(err)?;
    drop(probe);
    let sockets = (0..shards)
        .map(|_| {
            let s = new_socket(true)?;
            let granted = sys::set_buffers(&s, buffer)?;
            sys::set_dont_fragment(s.as_raw_fd(), listen.is_ipv6())?;
            if engine == Engine::Mmsg {
                s.set_read_timeout(Some(WAKE_EVERY))?;
            }
            s.bind(&addr)?;
            Ok((s, granted))
        })
        .collect::<io::Result<Vec<_>>>()
        .map_err(err)?;
    let granted = sockets.iter().map(|(_, g)| *g).min().unwrap_or(buffer);
    if granted < buffer {
        tracing::warn!(
            asked = buffer,
            granted,
            "the kernel granted smaller socket buffers than asked for; raise \
             net.core.rmem_max and net.core.wmem_max (deploy/sysctl.d/60-sky.conf) \
             or lower socket_buffer"
        );
    }
    Ok(sockets.into_iter().map(|(s, _)| s).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every datagram of a batch of any size is named once at each stage,
    /// `First` before `Second`, at the distance ahead the constants say (or
    /// before the first datagram, where it has no earlier turn), and never
    /// after its own turn.
    #[test]
    fn the_prefetch_schedule_names_each_datagram_once_per_stage_ahead_of_its_turn() {
        for n in 0..3 * FIRST_AHEAD {
            let mut named = Vec::new();
            for i in 0..n {
                named.extend(prefetch_schedule(i, n).map(|(j, ahead)| (i, j, ahead)));
            }
            for j in 0..n {
                let when = |stage| {
                    let at: Vec<(usize, usize)> = named
                        .iter()
                        .enumerate()
                        .filter(|(_, (_, k, a))| *k == j && *a == stage)
                        .map(|(order, (i, _, _))| (*i, order))
                        .collect();
                    assert_eq!(at.len(), 1, "datagram {j} of {n}, {stage:?}: {at:?}");
                    at[0]
                };
                let (first, first_order) = when(Ahead::First);
                let (second, second_order) = when(Ahead::Second);
                assert_eq!(first, j.saturating_sub(FIRST_AHEAD), "{j} of {n}");
                assert_eq!(second, j.saturating_sub(SECOND_AHEAD), "{j} of {n}");
                assert!(first_order < second_order, "{j} of {n}");
            }
            assert!(named.iter().all(|&(_, j, _)| j < n));
        }
    }
}
