//! `sky bench`: a load generator for sky nodes (and, in `stun` mode, for
//! STUN servers), in its own process.
//!
//! It sends from many sockets (many source ports, as many users would) with
//! `sendmmsg` and reads with `recvmmsg`, keeps at most `window` requests in
//! flight per socket (closed loop) or paces them at `rate` per second (open
//! loop, still bounded by the window), and stops by itself after `duration`.
//! Before measuring it fetches a cookie per socket and registers the
//! population it will look up. Every answer is checked: a reply must have
//! the kind its request expects and its tag; anything else counts as
//! malformed. The report gives operations answered per second, loss,
//! round-trip percentiles, and bytes per operation (request, reply and
//! introduction separately).
//!
//! For the ceiling (`--serve-baseline`, see [`crate::baseline`]) the lookup's
//! `caller` field carries the target's endpoint in its first six bytes.

#![allow(clippy::disallowed_methods)] // a tool: it reads the clock

use std::io::{self, IsTerminal, Write};
use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::rng::Rng;

mod report;
mod stun;

pub use report::{BenchError, Latency, Report};
use stun::{stun_request, stun_response};

use sky_node::engine::batch::{self, RecvBatch, SendBatch};
use sky_proto::hint::HINT_LEN;
use sky_proto::wire::{self, Cookie, Flags, Kind, Message, Tag, Token, VirtualAddr};

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
    /// Operations per second; `None` runs closed-loop as fast as answers come.
    pub rate: Option<u64>,
    /// Sockets (source ports).
    pub clients: usize,
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
}

impl Default for BenchConfig {
    fn default() -> Self {
        BenchConfig {
            target: "127.0.0.1:7700".parse().expect("literal"),
            mode: Mode::Ping,
            duration: Duration::from_secs(10),
            rate: None,
            clients: 32,
            population: 10_000,
            window: 32,
            timeout: Duration::from_secs(1),
            progress: true,
            server_pid: None,
            registered: false,
        }
    }
}

const BATCH: usize = 64;
const BUF: usize = 2048;
/// RTT histogram: 1 µs buckets up to 100 ms; slower answers land in the last.
const HISTOGRAM_US: usize = 100_000;
/// Longest idle wait between loop turns.
const IDLE_WAIT: Duration = Duration::from_millis(1);

/// The token of population member `i` (deterministic, so a run can be
/// repeated).
fn token(i: usize) -> Token {
    let mut t = [0u8; 16];
    t[..8].copy_from_slice(&(i as u64).to_le_bytes());
    t[8..].copy_from_slice(b"sky-bnch");
    Token(t)
}

/// xorshift64*: cheap, seeded, good enough to pick targets.
/// What kind of answer a request expects.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Expect {
    Pong,
    Registered,
    Online,
    Offline,
    Stun,
}

#[derive(Clone, Copy)]
struct Inflight {
    seq: u32,
    expect: Expect,
    sent: Instant,
}

/// One client socket and its requests in flight.
struct Client {
    socket: UdpSocket,
    cookie: Cookie,
    inflight: Vec<Inflight>,
}

#[derive(Default)]
struct Counts {
    sent: u64,
    answered: u64,
    lost: u64,
    malformed: u64,
    request_bytes: u64,
    reply_bytes: u64,
    intros: u64,
    intro_bytes: u64,
}

/// The load generator's state.
struct Generator {
    cfg: BenchConfig,
    clients: Vec<Client>,
    /// Population addresses, and the endpoint each is registered from.
    addresses: Vec<VirtualAddr>,
    homes: Vec<SocketAddr>,
    rng: Rng,
    seq: u32,
    counts: Counts,
    histogram: Vec<u32>,
    measuring: bool,
    // sendmmsg / recvmmsg arrays, allocated once.
    out: SendBatch,
    inbox: RecvBatch,
}

/// Runs one benchmark.
pub fn run(cfg: BenchConfig) -> Result<Report, BenchError> {
    let local = if cfg.target.is_ipv4() {
        "127.0.0.1:0"
    } else {
        "[::1]:0"
    };
    let local: SocketAddr = if cfg.target.ip().is_loopback() {
        local.parse().expect("literal")
    } else if cfg.target.is_ipv4() {
        "0.0.0.0:0".parse().expect("literal")
    } else {
        "[::]:0".parse().expect("literal")
    };
    let mut clients = Vec::with_capacity(cfg.clients);
    for _ in 0..cfg.clients.max(1) {
        let socket = UdpSocket::bind(local)?;
        socket.set_nonblocking(true)?;
        let s2 = socket2::SockRef::from(&socket);
        let _ = s2.set_recv_buffer_size(4 << 20);
        let _ = s2.set_send_buffer_size(4 << 20);
        clients.push(Client {
            socket,
            cookie: Cookie::default(),
            inflight: Vec::with_capacity(cfg.window),
        });
    }
    let mut g = Generator {
        clients,
        addresses: Vec::new(),
        homes: Vec::new(),
        rng: Rng::stream(0x5eed, &[]),
        seq: 0,
        counts: Counts::default(),
        histogram: vec![0; HISTOGRAM_US + 1],
        measuring: false,
        out: SendBatch::new(BATCH, wire::MAX_MESSAGE_LEN),
        inbox: RecvBatch::new(BATCH, BUF),
        cfg,
    };
    let setup = Instant::now();
    if g.cfg.mode != Mode::Stun {
        g.fetch_cookies()?;
    }
    if matches!(g.cfg.mode, Mode::LookupOnline | Mode::Mixed) && !g.cfg.registered {
        g.register_population()?;
    } else if matches!(
        g.cfg.mode,
        Mode::Register | Mode::LookupOnline | Mode::Mixed
    ) {
        // Already registered by an earlier run (`registered`): the same
        // addresses; their introductions go to that run's ports.
        g.addresses = (0..g.cfg.population)
            .map(|i| VirtualAddr::from_token(&token(i)))
            .collect();
    }
    let setup_s = setup.elapsed().as_secs_f64();
    g.measure(setup_s)
}

impl Generator {
    /// One cookie per socket: a keepalive without one is answered with one.
    fn fetch_cookies(&mut self) -> Result<(), BenchError> {
        let deadline = Instant::now() + Duration::from_secs(3);
        let target = self.cfg.target;
        let mut missing: Vec<usize> = (0..self.clients.len()).collect();
        let mut buf = [0u8; BUF];
        while !missing.is_empty() {
            if Instant::now() > deadline {
                return Err(BenchError::Setup(format!(
                    "{target} gave no cookie to {} of {} sockets within 3 s: is a sky node there?",
                    missing.len(),
                    self.clients.len()
                )));
            }
            for &i in &missing {
                let msg = Message::Keepalive {
                    ring: 0,
                    tag: Tag([0xc0, 0x0c, 0, 0]),
                    cookie: Cookie::default(),
                    address: VirtualAddr::default(),
                };
                let mut out = [0u8; wire::MAX_MESSAGE_LEN];
                let n = msg.emit(&mut out);
                self.clients[i].socket.send_to(&out[..n], target)?;
            }
            std::thread::sleep(Duration::from_millis(20));
            missing.retain(|&i| {
                let c = &mut self.clients[i];
                while let Ok((n, _)) = c.socket.recv_from(&mut buf) {
                    if let Ok(Message::CookieReply { cookie, .. }) = Message::decode(&buf[..n]) {
                        c.cookie = cookie;
                    }
                }
                c.cookie == Cookie::default()
            });
        }
        Ok(())
    }

    /// Registers every population address from socket `i % clients`,
    /// pipelined. If any registration is lost, the whole population is sent
    /// again (a repeat only refreshes an entry), at most three passes.
    fn register_population(&mut self) -> Result<(), BenchError> {
        let n = self.cfg.population;
        let started = Instant::now();
        self.addresses = (0..n).map(|i| VirtualAddr::from_token(&token(i))).collect();
        self.homes = (0..n)
            .map(|i| self.clients[i % self.clients.len()].socket.local_addr())
            .collect::<io::Result<_>>()?;
        let limit = Duration::from_secs(120).max(Duration::from_micros(20 * n as u64));
        for pass in 1..=3 {
            self.counts = Counts::default();
            let mut next = 0usize;
            while (self.counts.answered + self.counts.lost) < n as u64 {
                if started.elapsed() > limit {
                    return Err(BenchError::Setup(format!(
                        "registered {} of {n} addresses in {limit:?}; the node is not keeping up",
                        self.counts.answered
                    )));
                }
                let before = self.counts.answered;
                let mut sent_any = false;
                while next < n {
                    let c = next % self.clients.len();
                    if self.clients[c].inflight.len() >= self.cfg.window {
                        break;
                    }
                    let msg = self.register_msg(c, next);
                    if !self.send_one(c, msg, Expect::Registered)? {
                        break; // socket buffer full: the next turn sends it
                    }
                    next += 1;
                    sent_any = true;
                }
                self.receive_all()?;
                self.expire(Instant::now());
                if !sent_any && self.counts.answered == before {
                    self.idle_wait(IDLE_WAIT);
                }
            }
            if self.counts.lost == 0 {
                self.counts = Counts::default();
                return Ok(());
            }
            if pass == 3 {
                break;
            }
        }
        Err(BenchError::Setup(format!(
            "{} of {n} registrations still lost after three passes",
            self.counts.lost
        )))
    }

    fn register_msg(&mut self, c: usize, i: usize) -> Message {
        Message::Register {
            tag: Tag([0; 4]),
            cookie: self.clients[c].cookie,
            flags: Flags(0),
            token: token(i),
        }
    }

    /// The next operation for socket `c`.
    fn next_op(&mut self, c: usize) -> (Message, Expect) {
        let cookie = self.clients[c].cookie;
        let tag = Tag([0; 4]);
        let mode = match self.cfg.mode {
            Mode::Mixed => match self.rng.below(10) {
                0..=4 => Mode::LookupOnline,
                5 | 6 => Mode::LookupOffline,
                7 | 8 => Mode::Register,
                _ => Mode::Ping,
            },
            m => m,
        };
        match mode {
            Mode::Ping | Mode::Stun | Mode::Mixed => (Message::Ping { tag, cookie }, Expect::Pong),
            Mode::Register => {
                let i = self.rng.below(self.cfg.population as u64) as usize;
                (self.register_msg(c, i), Expect::Registered)
            }
            Mode::LookupOnline => {
                let i = self.rng.below(self.addresses.len() as u64) as usize;
                let mut caller = [0u8; 16];
                if let Some(SocketAddr::V4(home)) = self.homes.get(i) {
                    caller[..4].copy_from_slice(&home.ip().octets());
                    caller[4..6].copy_from_slice(&home.port().to_be_bytes());
                }
                let msg = Message::Lookup {
                    tag,
                    cookie,
                    target: self.addresses[i],
                    caller: VirtualAddr(caller),
                    hint: [0x5e; HINT_LEN],
                };
                (msg, Expect::Online)
            }
            Mode::LookupOffline => {
                let mut target = [0u8; 16];
                target[..8].copy_from_slice(&self.rng.next_u64().to_le_bytes());
                let msg = Message::Lookup {
                    tag,
                    cookie,
                    target: VirtualAddr(target),
                    caller: VirtualAddr::default(),
                    hint: [0x5e; HINT_LEN],
                };
                (msg, Expect::Offline)
            }
        }
    }

    fn measure(mut self, setup_s: f64) -> Result<Report, BenchError> {
        self.counts = Counts::default();
        self.measuring = true;
        let start = Instant::now();
        let end = start + self.cfg.duration;
        let mut last_progress = start;
        let progress = self.cfg.progress && io::stderr().is_terminal();
        let server_cpu0 = self.cfg.server_pid.and_then(cpu_seconds);
        let mut sent_total = 0u64;
        let mut next_socket = 0usize;
        loop {
            let now = Instant::now();
            if now >= end {
                break;
            }
            let elapsed = now.duration_since(start).as_secs_f64();
            let mut did = false;
            match self.cfg.rate {
                // Closed loop: fill every socket's window.
                None => {
                    for c in 0..self.clients.len() {
                        let budget = (self.cfg.window - self.clients[c].inflight.len()).min(BATCH);
                        if budget > 0 {
                            sent_total += self.send_batch(c, budget, now)? as u64;
                            did = true;
                        }
                    }
                }
                // Paced: what is due now, spread over the sockets in turn, so
                // that no socket sends a burst.
                Some(rate) => {
                    let due = ((rate as f64 * elapsed).ceil() as u64).saturating_sub(sent_total);
                    let mut left = due.min(BATCH as u64) as usize;
                    let mut tries = 0;
                    while left > 0 && tries < self.clients.len() {
                        let c = next_socket;
                        next_socket = (next_socket + 1) % self.clients.len();
                        if self.clients[c].inflight.len() < self.cfg.window {
                            sent_total += self.send_batch(c, 1, now)? as u64;
                            left -= 1;
                            tries = 0;
                            did = true;
                        } else {
                            tries += 1;
                        }
                    }
                }
            }
            did |= self.receive_all()?;
            self.expire(Instant::now());
            if !did {
                // Paced: sleep no longer than until the next send is due.
                let wait = match self.cfg.rate {
                    Some(rate) => {
                        let next =
                            start + Duration::from_secs_f64((sent_total + 1) as f64 / rate as f64);
                        next.saturating_duration_since(Instant::now())
                            .min(IDLE_WAIT)
                    }
                    None => IDLE_WAIT,
                };
                self.idle_wait(wait);
            }
            if progress && now.duration_since(last_progress) >= Duration::from_millis(500) {
                self.draw_progress(elapsed);
                last_progress = now;
            }
        }
        let duration = start.elapsed();
        let server_cpu = match (server_cpu0, self.cfg.server_pid.and_then(cpu_seconds)) {
            (Some(a), Some(b)) => Some((b - a) / duration.as_secs_f64()),
            _ => None,
        };
        // Stragglers: wait for answers to what is in flight, then count the
        // rest as lost.
        let drain_end = Instant::now() + self.cfg.timeout;
        while self.clients.iter().any(|c| !c.inflight.is_empty()) && Instant::now() < drain_end {
            if !self.receive_all()? {
                self.idle_wait(IDLE_WAIT);
            }
        }
        for c in &mut self.clients {
            self.counts.lost += c.inflight.len() as u64;
            c.inflight.clear();
        }
        if progress {
            eprintln!();
        }
        Ok(self.report(setup_s, duration, server_cpu))
    }

    fn draw_progress(&self, elapsed: f64) {
        let total = self.cfg.duration.as_secs_f64();
        let width = 30;
        let done = ((elapsed / total) * width as f64) as usize;
        let rate = self.counts.answered as f64 / elapsed.max(1e-9);
        let mut err = io::stderr().lock();
        let _ = write!(
            err,
            "\r[{}{}] {:>5.1}/{:.0} s {:>10.0} ops/s  lost {}   ",
            "=".repeat(done.min(width)),
            " ".repeat(width - done.min(width)),
            elapsed,
            total,
            rate,
            self.counts.lost
        );
        let _ = err.flush();
    }

    fn report(&self, setup_s: f64, duration: Duration, server_cpu: Option<f64>) -> Report {
        let c = &self.counts;
        let answered = c.answered.max(1) as f64;
        let pct = |q: f64| -> f64 {
            let total: u64 = self.histogram.iter().map(|&n| n as u64).sum();
            if total == 0 {
                return 0.0;
            }
            let want = (q * total as f64).ceil() as u64;
            let mut seen = 0u64;
            for (us, &n) in self.histogram.iter().enumerate() {
                seen += n as u64;
                if seen >= want {
                    return us as f64;
                }
            }
            HISTOGRAM_US as f64
        };
        let max = self.histogram.iter().rposition(|&n| n > 0).unwrap_or(0) as f64;
        Report {
            mode: self.cfg.mode,
            target: self.cfg.target.to_string(),
            clients: self.clients.len(),
            population: self.cfg.population,
            rate_asked: self.cfg.rate,
            setup_s,
            duration_s: duration.as_secs_f64(),
            sent: c.sent,
            answered: c.answered,
            lost: c.lost,
            malformed: c.malformed,
            loss_ratio: if c.sent == 0 {
                0.0
            } else {
                c.lost as f64 / c.sent as f64
            },
            ops_per_sec: c.answered as f64 / duration.as_secs_f64(),
            rtt: Latency {
                p50_us: pct(0.50),
                p99_us: pct(0.99),
                p999_us: pct(0.999),
                max_us: max,
            },
            request_bytes_per_op: c.request_bytes as f64 / c.sent.max(1) as f64,
            reply_bytes_per_op: c.reply_bytes as f64 / answered,
            introductions: c.intros,
            introduction_bytes_per_op: c.intro_bytes as f64 / answered,
            server_cpu,
        }
    }

    /// Sends one request; false if the socket buffer was full.
    fn send_one(&mut self, c: usize, msg: Message, expect: Expect) -> io::Result<bool> {
        let seq = self.next_seq();
        let mut out = [0u8; wire::MAX_MESSAGE_LEN];
        let n = with_tag(msg, seq).emit(&mut out);
        match self.clients[c].socket.send_to(&out[..n], self.cfg.target) {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
            Err(e) => return Err(e),
        }
        self.counts.sent += 1;
        self.counts.request_bytes += n as u64;
        self.clients[c].inflight.push(Inflight {
            seq,
            expect,
            sent: Instant::now(),
        });
        Ok(true)
    }

    fn next_seq(&mut self) -> u32 {
        self.seq = self.seq.wrapping_add(1);
        self.seq
    }

    /// Builds `count` operations for socket `c` and sends them with one
    /// `sendmmsg`.
    fn send_batch(&mut self, c: usize, count: usize, now: Instant) -> io::Result<usize> {
        let mut expects = [Expect::Pong; BATCH];
        let mut seqs = [0u32; BATCH];
        let mut lens = [0usize; BATCH];
        for k in 0..count {
            seqs[k] = self.next_seq();
            lens[k] = if self.cfg.mode == Mode::Stun {
                expects[k] = Expect::Stun;
                stun_request(seqs[k], self.out.buf(k))
            } else {
                let (msg, e) = self.next_op(c);
                expects[k] = e;
                with_tag(msg, seqs[k]).emit(self.out.buf(k))
            };
        }
        let done = self
            .out
            .send(&self.clients[c].socket, self.cfg.target, &lens[..count])?;
        for k in 0..done {
            self.counts.sent += 1;
            self.counts.request_bytes += lens[k] as u64;
            self.clients[c].inflight.push(Inflight {
                seq: seqs[k],
                expect: expects[k],
                sent: now,
            });
        }
        Ok(done)
    }

    /// Reads every socket until it is empty; true if anything came.
    fn receive_all(&mut self) -> io::Result<bool> {
        let mut any = false;
        for c in 0..self.clients.len() {
            loop {
                let n = self.inbox.recv(&self.clients[c].socket);
                if n == 0 {
                    break;
                }
                any = true;
                let now = Instant::now();
                for k in 0..n {
                    self.answer(c, k, now);
                }
                if n < BATCH {
                    break;
                }
            }
        }
        Ok(any)
    }

    /// Matches one received datagram to its request.
    fn answer(&mut self, c: usize, k: usize, now: Instant) {
        let bytes = self.inbox.datagram(k);
        let len = bytes.len();
        let (seq, kind) = if self.cfg.mode == Mode::Stun {
            match stun_response(bytes) {
                Some(seq) => (seq, Expect::Stun),
                None => {
                    self.counts.malformed += 1;
                    return;
                }
            }
        } else {
            match Message::decode(bytes) {
                Ok(Message::Introduction { .. }) => {
                    if self.measuring {
                        self.counts.intros += 1;
                        self.counts.intro_bytes += len as u64;
                    }
                    return;
                }
                Ok(m) => match (m.tag(), expect_of(&m)) {
                    (Some(tag), Some(e)) => (u32::from_be_bytes(tag.0), e),
                    _ => {
                        self.counts.malformed += 1;
                        return;
                    }
                },
                Err(_) => {
                    self.counts.malformed += 1;
                    return;
                }
            }
        };
        let inflight = &mut self.clients[c].inflight;
        let Some(pos) = inflight.iter().position(|f| f.seq == seq) else {
            return; // late: already counted as lost
        };
        let f = inflight.swap_remove(pos);
        if f.expect != kind {
            self.counts.malformed += 1;
            return;
        }
        self.counts.answered += 1;
        self.counts.reply_bytes += len as u64;
        let us = now
            .duration_since(f.sent)
            .as_micros()
            .min(HISTOGRAM_US as u128) as usize;
        self.histogram[us] += 1;
    }

    /// Requests in flight longer than the timeout are lost.
    fn expire(&mut self, now: Instant) {
        let timeout = self.cfg.timeout;
        for c in &mut self.clients {
            let before = c.inflight.len();
            c.inflight.retain(|f| now.duration_since(f.sent) < timeout);
            self.counts.lost += (before - c.inflight.len()) as u64;
        }
    }

    /// Nothing to send or read: wait up to `wait` for a socket to be readable.
    fn idle_wait(&self, wait: Duration) {
        batch::wait_readable(self.clients.iter().map(|c| &c.socket), wait);
    }
}

/// User and system CPU seconds of a process, all threads.
fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    Some(ticks / batch::clock_ticks_per_second() as f64)
}

fn with_tag(msg: Message, seq: u32) -> Message {
    let tag = Tag(seq.to_be_bytes());
    match msg {
        Message::Ping { cookie, .. } => Message::Ping { tag, cookie },
        Message::Register {
            cookie,
            flags,
            token,
            ..
        } => Message::Register {
            tag,
            cookie,
            flags,
            token,
        },
        Message::Keepalive {
            cookie, address, ..
        } => Message::Keepalive {
            ring: 0,
            tag,
            cookie,
            address,
        },
        Message::Lookup {
            cookie,
            target,
            caller,
            hint,
            ..
        } => Message::Lookup {
            tag,
            cookie,
            target,
            caller,
            hint,
        },
        other => other,
    }
}

fn expect_of(m: &Message) -> Option<Expect> {
    match m.kind() {
        Kind::Pong => Some(Expect::Pong),
        Kind::Registered => Some(Expect::Registered),
        Kind::Online => Some(Expect::Online),
        Kind::Offline => Some(Expect::Offline),
        _ => None,
    }
}

#[cfg(test)]
#[path = "../tests/bench.rs"]
mod tests;
