//! `--engine auto`: which packet engine is faster on the running kernel,
//! measured at start-up (about half a second) rather than assumed.
//!
//! Each engine serves a socket on the loopback with a core that answers
//! every datagram with six bytes, while a sender thread floods it with
//! `sendmmsg` bursts of ping-sized datagrams; the rate is what the core
//! handled over a fixed window. The engines take turns (io_uring, recvmmsg,
//! recvmmsg, io_uring) so that a machine growing busier or quieter during
//! the measurement favours neither, and each engine's two windows are
//! added. The faster one runs the node; a tie within 2% goes to io_uring
//! (what SPEC §4 prefers). The result is logged and exported
//! (`sky_engine_probe_datagrams_per_second{engine}`).
//!
//! Everything stays on the loopback of the node's own network namespace;
//! the sender is bounded by the window. If the measurement cannot run
//! (no loopback, no socket), the node takes io_uring and says why.

use std::io;
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use socket2::{Domain, Protocol, Socket, Type};

use super::heartbeat::Heartbeat;
use super::{Engine, WAKE_EVERY, mmsg, sys, uring};
use crate::metrics::Metrics;
use crate::shard::{Core, Output, Stats};
use sky_proto::time::MonoTime;

/// Each engine's window, twice.
const WINDOW: Duration = Duration::from_millis(100);
/// A ping's size: what the measurement sends.
const PAYLOAD: [u8; 14] = [1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
/// io_uring unless recvmmsg is faster by more than this share.
const TIE: f64 = 0.02;

/// What the start-up measurement found: datagrams a second per engine.
#[derive(Clone, Copy, Debug)]
pub struct Measured {
    pub uring: f64,
    pub mmsg: f64,
    pub took: Duration,
}

impl Measured {
    /// The faster engine (io_uring on a tie).
    pub fn faster(&self) -> Engine {
        if self.mmsg > self.uring * (1.0 + TIE) {
            Engine::Mmsg
        } else {
            Engine::Uring
        }
    }

    /// Exports both rates.
    pub fn export(&self, metrics: &Metrics) {
        metrics.set_engine_probe("uring", self.uring);
        metrics.set_engine_probe("mmsg", self.mmsg);
    }
}

/// Measures both engines (io_uring must be available).
pub fn measure() -> io::Result<Measured> {
    let start = Instant::now();
    // Counters the probe engines publish into, thrown away after.
    let metrics = Metrics::new();
    let mut handled = [0u64; 2];
    let mut spent = [Duration::ZERO; 2];
    for engine in [Engine::Uring, Engine::Mmsg, Engine::Mmsg, Engine::Uring] {
        let i = usize::from(engine == Engine::Mmsg);
        let (n, took) = window(engine, &metrics)?;
        handled[i] += n;
        spent[i] += took;
    }
    let rate = |i: usize| handled[i] as f64 / spent[i].as_secs_f64().max(1e-9);
    Ok(Measured {
        uring: rate(0),
        mmsg: rate(1),
        took: start.elapsed(),
    })
}

/// Answers every datagram with six bytes and counts it.
struct Echo {
    handled: Arc<AtomicU64>,
    stats: Stats,
}

impl Core for Echo {
    fn handle_datagram(
        &mut self,
        _now: MonoTime,
        _from: SocketAddr,
        _buf: &mut [u8],
        _len: usize,
        reply: &mut [u8],
    ) -> Output {
        self.handled.fetch_add(1, Ordering::Relaxed);
        reply[..6].copy_from_slice(&[1, 0x81, 0, 0, 0, 0]);
        Output {
            reply: Some(6),
            in_place: None,
        }
    }
    fn stats_mut(&mut self) -> &mut Stats {
        &mut self.stats
    }
    fn drop_oversized(&mut self, _len: usize) {}
}

/// One engine's window: what its core handled, and over how long.
fn window(engine: Engine, metrics: &Metrics) -> io::Result<(u64, Duration)> {
    let loopback = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
    let server = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
    if engine == Engine::Mmsg {
        server.set_read_timeout(Some(WAKE_EVERY))?;
    }
    server.bind(&loopback.into())?;
    let addr = server
        .local_addr()?
        .as_socket()
        .ok_or_else(|| io::Error::other("no address"))?;
    let sender = UdpSocket::bind(loopback)?;
    sender.connect(addr)?;

    let handled = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let thread = {
        let (handled, stop) = (handled.clone(), stop.clone());
        let shard_metrics = metrics.for_shard(0);
        std::thread::Builder::new()
            .name("sky-engine-probe".into())
            .spawn(move || -> io::Result<()> {
                let mut core = Echo {
                    handled,
                    stats: Stats::default(),
                };
                let fd = server.as_raw_fd();
                let origin = Instant::now();
                let beat = Heartbeat::default();
                match engine {
                    Engine::Uring => uring::UringEngine::new(fd, false)?.run(
                        &mut core,
                        &shard_metrics,
                        &stop,
                        origin,
                        &beat,
                    ),
                    Engine::Mmsg => mmsg::MmsgEngine::new(fd, false).run(
                        &mut core,
                        &shard_metrics,
                        &stop,
                        origin,
                        &beat,
                    ),
                }
            })?
    };
    // The engine is up once it answers.
    let fd = sender.as_raw_fd();
    sender.set_read_timeout(Some(Duration::from_millis(200)))?;
    let mut answer = [0u8; 16];
    let mut up = false;
    for _ in 0..10 {
        sys::send_copies(fd, &PAYLOAD, 1)?;
        if sender.recv(&mut answer).is_ok() {
            up = true;
            break;
        }
    }
    let result = if up {
        let before = handled.load(Ordering::Relaxed);
        let start = Instant::now();
        while start.elapsed() < WINDOW {
            // A full send buffer or queue only loses datagrams.
            let _ = sys::send_copies(fd, &PAYLOAD, 64);
        }
        let took = start.elapsed();
        Ok((handled.load(Ordering::Relaxed) - before, took))
    } else {
        Err(io::Error::other(format!(
            "the {} engine did not answer on the loopback",
            engine.label()
        )))
    };
    stop.store(true, Ordering::Relaxed);
    // Wake it (it may be waiting for a datagram) so that it sees the stop.
    let _ = sys::send_copies(fd, &PAYLOAD, 1);
    thread
        .join()
        .map_err(|_| io::Error::other("the probe engine panicked"))??;
    result
}
