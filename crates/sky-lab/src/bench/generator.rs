//! The generator's loop, one per thread: operations built and sent in
//! batches (each batch to one node), answers read and checked, the
//! round-trip histogram.

use std::io::{self, IsTerminal, Write};
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use sky_node::engine::batch::{self, RecvBatch, SendBatch};
use sky_proto::hint::HINT_LEN;
use sky_proto::wire::{self, Cookie, Kind, Message, Tag, VirtualAddr};

use super::keys::Proofs;
use super::report::Counts;
use super::stun::{stun_request, stun_response};
use super::targets::{Slice, Targets};
use super::{BATCH, BenchConfig, HISTOGRAM_US, IDLE_WAIT, Mode, Share};
use crate::rng::Rng;

/// What kind of answer a request expects.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Expect {
    Pong,
    Registered,
    Online,
    Offline,
    Stun,
}

#[derive(Clone, Copy)]
pub(super) struct Inflight {
    seq: u32,
    expect: Expect,
    sent: Instant,
    /// The node it went to.
    node: u16,
    /// Setup's registrations: which ([`NO_ITEM`] otherwise).
    item: u32,
}

/// An operation that is not one of setup's registrations.
pub(super) const NO_ITEM: usize = u32::MAX as usize;

/// How long a socket waits before it sends a node another registration
/// that takes a signature check, after that node refused one for want of
/// checks (the budget is per source and second).
const BACKOFF: Duration = Duration::from_secs(1);

/// One client socket, its cookie from each node, and its requests in
/// flight (to any node: a reply is matched by its tag).
pub(super) struct Client {
    pub(super) socket: UdpSocket,
    pub(super) cookies: Vec<Cookie>,
    pub(super) inflight: Vec<Inflight>,
}

/// One generator thread's state.
pub(super) struct Generator<'a> {
    pub(super) cfg: &'a BenchConfig,
    pub(super) targets: &'a Targets,
    pub(super) share: Share,
    pub(super) clients: Vec<Client>,
    /// The thread's population members, and the endpoint each was
    /// registered from (by slice index).
    pub(super) slice: Slice,
    /// The slice's keys, and its registrations signed.
    pub(super) proofs: Proofs,
    pub(super) homes: Vec<SocketAddr>,
    /// Setup only: which registrations (by item) were answered, and when
    /// the last one was.
    pub(super) registered: Vec<bool>,
    pub(super) progress: Instant,
    /// Setup only: by `socket * nodes + node`, when that socket may send
    /// that node registrations again (after a `refused` reason 4).
    pub(super) backoff: Vec<Instant>,
    pub(super) rng: Rng,
    pub(super) seq: u32,
    pub(super) counts: Counts,
    pub(super) histogram: Vec<u32>,
    pub(super) measuring: bool,
    /// The node the next batch goes to.
    pub(super) next_node: usize,
    // sendmmsg / recvmmsg arrays, allocated once.
    pub(super) out: SendBatch,
    pub(super) inbox: RecvBatch,
}

/// What one thread measured.
pub(super) struct Measured {
    pub(super) counts: Counts,
    pub(super) histogram: Vec<u32>,
    pub(super) start: Instant,
    pub(super) end: Instant,
    /// Thread 0 only: the server's CPU over its window, in cores.
    pub(super) server_cpu: Option<f64>,
}

/// The threads' running totals, for the progress bar thread 0 draws.
#[derive(Default)]
pub(super) struct Progress {
    answered: AtomicU64,
    lost: AtomicU64,
}

impl Generator<'_> {
    /// The next operation for socket `c`, to `node`. An operation `node`
    /// cannot be given (no member of the slice that it owns; in a sky,
    /// with a small population) is a ping instead.
    fn next_op(&mut self, c: usize, node: usize) -> (Message, Expect) {
        let cookie = self.clients[c].cookies[node];
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
        let ping = (Message::Ping { tag, cookie }, Expect::Pong);
        match mode {
            Mode::Ping | Mode::Stun | Mode::Mixed => ping,
            // A member that lives on this socket: a refresh, never a move.
            Mode::Register => match self.slice.owned_by(&mut self.rng, node, c) {
                Some((j, k)) => (self.register_msg(c, node, j, k), Expect::Registered),
                None => ping,
            },
            Mode::LookupOnline => {
                let Some(j) = self.slice.first_owned_by(&mut self.rng, node) else {
                    return ping;
                };
                // For the baseline, which has no presence table: the
                // target's endpoint, where it sends the introduction.
                let mut caller = [0u8; 16];
                if let Some(SocketAddr::V4(home)) = self.homes.get(j) {
                    caller[..4].copy_from_slice(&home.ip().octets());
                    caller[4..6].copy_from_slice(&home.port().to_be_bytes());
                }
                let msg = Message::Lookup {
                    tag,
                    cookie,
                    target: self.slice.addresses[j],
                    caller: VirtualAddr(caller),
                    hint: [0x5e; HINT_LEN],
                };
                (msg, Expect::Online)
            }
            Mode::LookupOffline => {
                let Some(target) = self.targets.offline_address(&mut self.rng, node) else {
                    return ping;
                };
                let msg = Message::Lookup {
                    tag,
                    cookie,
                    target,
                    caller: VirtualAddr::default(),
                    hint: [0x5e; HINT_LEN],
                };
                (msg, Expect::Offline)
            }
        }
    }

    /// Loads the nodes for `duration`, then waits up to `timeout` for the
    /// answers in flight.
    pub(super) fn measure(mut self, progress: &Progress) -> io::Result<Measured> {
        self.counts = Counts::default();
        self.measuring = true;
        let start = Instant::now();
        let end = start + self.cfg.duration;
        let mut last_progress = start;
        let mut published = (0u64, 0u64);
        let draw = self.share.thread == 0 && self.cfg.progress && io::stderr().is_terminal();
        let server_pid = self.cfg.server_pid.filter(|_| self.share.thread == 0);
        let server_cpu0 = server_pid.and_then(cpu_seconds);
        let mut sent_total = 0u64;
        let mut next_socket = 0usize;
        loop {
            let now = Instant::now();
            if now >= end {
                break;
            }
            let elapsed = now.duration_since(start).as_secs_f64();
            let mut did = false;
            match self.share.rate {
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
                let wait = match self.share.rate {
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
            if now.duration_since(last_progress) >= Duration::from_millis(500) {
                progress.add(&mut published, &self.counts);
                if draw {
                    progress.draw(elapsed, self.cfg.duration);
                }
                last_progress = now;
            }
        }
        let end = Instant::now();
        let server_cpu = match (server_cpu0, server_pid.and_then(cpu_seconds)) {
            (Some(a), Some(b)) => Some((b - a) / end.duration_since(start).as_secs_f64()),
            _ => None,
        };
        // Stragglers: wait for answers to what is in flight, then count the
        // rest as lost.
        let drain_end = Instant::now() + self.cfg.timeout;
        while (self.clients.iter().any(|c| !c.inflight.is_empty())
            || (!self.cfg.synthetic && self.counts.intros < self.counts.introduced))
            && Instant::now() < drain_end
        {
            if !self.receive_all()? {
                self.idle_wait(IDLE_WAIT);
            }
        }
        for c in &mut self.clients {
            self.counts.lost += c.inflight.len() as u64;
            c.inflight.clear();
        }
        if draw {
            eprintln!();
        }
        Ok(Measured {
            counts: self.counts,
            histogram: self.histogram,
            start,
            end,
            server_cpu,
        })
    }

    /// Sends one request; false if the socket buffer was full.
    pub(super) fn send_one(
        &mut self,
        c: usize,
        node: usize,
        msg: Message,
        expect: Expect,
        item: usize,
    ) -> io::Result<bool> {
        let seq = self.next_seq();
        let mut out = [0u8; wire::MAX_MESSAGE_LEN];
        let n = with_tag(msg, seq).emit(&mut out);
        match self.clients[c]
            .socket
            .send_to(&out[..n], self.targets.nodes[node])
        {
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
            node: node as u16,
            item: item as u32,
        });
        Ok(true)
    }

    pub(super) fn next_seq(&mut self) -> u32 {
        self.seq = self.seq.wrapping_add(1);
        self.seq
    }

    /// Builds `count` operations for socket `c` to the next node in turn,
    /// and sends them with one `sendmmsg`.
    fn send_batch(&mut self, c: usize, count: usize, now: Instant) -> io::Result<usize> {
        let node = self.next_node;
        self.next_node = (node + 1) % self.targets.nodes.len();
        let mut expects = [Expect::Pong; BATCH];
        let mut seqs = [0u32; BATCH];
        let mut lens = [0usize; BATCH];
        for k in 0..count {
            seqs[k] = self.next_seq();
            lens[k] = if self.cfg.mode == Mode::Stun {
                expects[k] = Expect::Stun;
                stun_request(seqs[k], self.out.buf(k))
            } else {
                let (msg, e) = self.next_op(c, node);
                expects[k] = e;
                with_tag(msg, seqs[k]).emit(self.out.buf(k))
            };
        }
        let done = self.out.send(
            &self.clients[c].socket,
            self.targets.nodes[node],
            &lens[..count],
        )?;
        for k in 0..done {
            self.counts.sent += 1;
            self.counts.request_bytes += lens[k] as u64;
            self.clients[c].inflight.push(Inflight {
                seq: seqs[k],
                expect: expects[k],
                sent: now,
                node: node as u16,
                item: NO_ITEM as u32,
            });
        }
        Ok(done)
    }

    /// Reads every socket until it is empty; true if anything came.
    pub(super) fn receive_all(&mut self) -> io::Result<bool> {
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
        let mut introduced = false;
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
                Ok(Message::Refused { tag, reason: 4 }) if !self.measuring => {
                    self.held_back(c, u32::from_be_bytes(tag.0), now);
                    return;
                }
                Ok(m) => match (m.tag(), expect_of(&m)) {
                    (Some(tag), Some(e)) => {
                        introduced =
                            matches!(m, Message::Online { flags, .. } if flags.introduced());
                        (u32::from_be_bytes(tag.0), e)
                    }
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
        if let Some(done) = self.registered.get_mut(f.item as usize) {
            if !*done {
                self.progress = now;
            }
            *done = true;
        }
        if introduced && self.measuring {
            self.counts.introduced += 1;
        }
        let us = now
            .duration_since(f.sent)
            .as_micros()
            .min(HISTOGRAM_US as u128) as usize;
        self.histogram[us] += 1;
    }

    /// Setup's registration `seq` from socket `c` was refused for want of
    /// signature checks: hold the socket back from that node for a while.
    fn held_back(&mut self, c: usize, seq: u32, now: Instant) {
        let inflight = &mut self.clients[c].inflight;
        let Some(pos) = inflight.iter().position(|f| f.seq == seq) else {
            return;
        };
        let f = inflight.swap_remove(pos);
        if f.expect != Expect::Registered {
            self.counts.malformed += 1;
            return;
        }
        self.counts.later += 1;
        if let Some(done) = self.registered.get_mut(f.item as usize) {
            *done = false; // it expired meanwhile: not a refresh after all
        }
        let nodes = self.targets.nodes.len();
        if let Some(until) = self.backoff.get_mut(c * nodes + usize::from(f.node)) {
            *until = now + BACKOFF;
        }
    }

    /// Requests in flight longer than the timeout are lost.
    pub(super) fn expire(&mut self, now: Instant) {
        let timeout = self.cfg.timeout;
        for c in &mut self.clients {
            let before = c.inflight.len();
            c.inflight.retain(|f| now.duration_since(f.sent) < timeout);
            self.counts.lost += (before - c.inflight.len()) as u64;
        }
    }

    /// Nothing to send or read: wait up to `wait` for a socket to be readable.
    pub(super) fn idle_wait(&self, wait: Duration) {
        batch::wait_readable(self.clients.iter().map(|c| &c.socket), wait);
    }
}

impl Progress {
    /// Adds what `counts` gained since `published`.
    fn add(&self, published: &mut (u64, u64), counts: &Counts) {
        self.answered
            .fetch_add(counts.answered - published.0, Ordering::Relaxed);
        self.lost
            .fetch_add(counts.lost - published.1, Ordering::Relaxed);
        *published = (counts.answered, counts.lost);
    }

    fn draw(&self, elapsed: f64, duration: Duration) {
        let total = duration.as_secs_f64();
        let width = 30;
        let done = ((elapsed / total) * width as f64) as usize;
        let rate = self.answered.load(Ordering::Relaxed) as f64 / elapsed.max(1e-9);
        let mut err = io::stderr().lock();
        let _ = write!(
            err,
            "\r[{}{}] {:>5.1}/{:.0} s {:>10.0} ops/s  lost {}   ",
            "=".repeat(done.min(width)),
            " ".repeat(width - done.min(width)),
            elapsed,
            total,
            rate,
            self.lost.load(Ordering::Relaxed)
        );
        let _ = err.flush();
    }
}

/// User and system CPU seconds of a process, all threads.
fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    Some(ticks / batch::clock_ticks_per_second() as f64)
}

/// `msg` numbered `seq` (its tag), as every request the generator sends.
fn with_tag(mut msg: Message, seq: u32) -> Message {
    if let Some(tag) = msg.tag_mut() {
        *tag = Tag(seq.to_be_bytes());
    }
    msg
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
