//! Before measuring, in each generator thread: its sockets, a cookie per
//! socket from every node, and its slice of the population registered
//! with each address's owners.

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use sky_node::engine::batch::{RecvBatch, SendBatch};
use sky_proto::wire::{self, Cookie, Flags, Message, Tag, VirtualAddr};

use super::generator::{Client, Expect, Generator};
use super::report::Counts;
use super::targets::{Slice, Targets};
use super::{BATCH, BUF, BenchConfig, BenchError, HISTOGRAM_US, IDLE_WAIT, Mode, Share, token};
use crate::rng::Rng;

impl<'a> Generator<'a> {
    /// Opens the thread's sockets, fetches their cookies and registers its
    /// slice of the population; returns the generator and how long that
    /// took.
    pub(super) fn set_up(
        cfg: &'a BenchConfig,
        targets: &'a Targets,
        share: Share,
    ) -> Result<(Generator<'a>, f64), BenchError> {
        let setup = Instant::now();
        let loopback = targets.nodes.iter().all(|n| n.ip().is_loopback());
        let local: SocketAddr = match (cfg.target.is_ipv4(), loopback) {
            (true, true) => "127.0.0.1:0",
            (false, true) => "[::1]:0",
            (true, false) => "0.0.0.0:0",
            (false, false) => "[::]:0",
        }
        .parse()
        .expect("literal");
        let mut clients = Vec::with_capacity(share.clients);
        for _ in 0..share.clients.max(1) {
            let socket = UdpSocket::bind(local)?;
            socket.set_nonblocking(true)?;
            let s2 = socket2::SockRef::from(&socket);
            let _ = s2.set_recv_buffer_size(4 << 20);
            let _ = s2.set_send_buffer_size(4 << 20);
            clients.push(Client {
                socket,
                cookies: vec![Cookie::default(); targets.nodes.len()],
                inflight: Vec::with_capacity(cfg.window),
            });
        }
        // Registrations need an address's owners only in a sky; lookups
        // always name one.
        let addresses = matches!(cfg.mode, Mode::LookupOnline | Mode::Mixed)
            || (cfg.mode == Mode::Register && targets.is_sky());
        let slice = Slice::new(targets, share.population.clone(), addresses);
        // Thread 0 draws what a single-threaded run always drew.
        let labels: &[u64] = if share.thread == 0 {
            &[]
        } else {
            &[share.thread as u64]
        };
        let mut g = Generator {
            clients,
            slice,
            homes: Vec::new(),
            rng: Rng::stream(0x5eed, labels),
            seq: 0,
            counts: Counts::default(),
            histogram: vec![0; HISTOGRAM_US + 1],
            measuring: false,
            intros_due: 0,
            next_node: 0,
            out: SendBatch::new(BATCH, wire::MAX_MESSAGE_LEN),
            inbox: RecvBatch::new(BATCH, BUF),
            cfg,
            targets,
            share,
        };
        if g.cfg.mode != Mode::Stun {
            g.fetch_cookies()?;
        }
        // With `registered`, an earlier run registered the same addresses;
        // their introductions go to that run's ports.
        if matches!(g.cfg.mode, Mode::LookupOnline | Mode::Mixed) && !g.cfg.registered {
            g.register_population()?;
        }
        Ok((g, setup.elapsed().as_secs_f64()))
    }

    /// One cookie per socket and node (a cookie binds the source IP and
    /// port, and each node has its own secret): a keepalive without one is
    /// answered with one. Its tag names the node.
    fn fetch_cookies(&mut self) -> Result<(), BenchError> {
        let deadline = Instant::now() + Duration::from_secs(3);
        let nodes = &self.targets.nodes;
        let mut missing: Vec<(usize, usize)> = (0..self.clients.len())
            .flat_map(|c| (0..nodes.len()).map(move |n| (c, n)))
            .collect();
        let mut buf = [0u8; BUF];
        while !missing.is_empty() {
            if Instant::now() > deadline {
                let (_, n) = missing[0];
                return Err(BenchError::Setup(format!(
                    "{} gave no cookie to {} of {} sockets within 3 s: is a sky node there?",
                    nodes[n],
                    missing.iter().filter(|&&(_, m)| m == n).count(),
                    self.clients.len()
                )));
            }
            for &(c, n) in &missing {
                let [hi, lo] = (n as u16).to_be_bytes();
                let msg = Message::Keepalive {
                    ring: 0,
                    tag: Tag([0xc0, 0x0c, hi, lo]),
                    cookie: Cookie::default(),
                    address: VirtualAddr::default(),
                };
                let mut out = [0u8; wire::MAX_MESSAGE_LEN];
                let len = msg.emit(&mut out);
                self.clients[c].socket.send_to(&out[..len], nodes[n])?;
            }
            std::thread::sleep(Duration::from_millis(20));
            for c in &mut self.clients {
                while let Ok((len, _)) = c.socket.recv_from(&mut buf) {
                    if let Ok(Message::CookieReply {
                        tag: Tag([0xc0, 0x0c, hi, lo]),
                        cookie,
                    }) = Message::decode(&buf[..len])
                        && let Some(slot) =
                            c.cookies.get_mut(usize::from(u16::from_be_bytes([hi, lo])))
                    {
                        *slot = cookie;
                    }
                }
            }
            missing.retain(|&(c, n)| self.clients[c].cookies[n] == Cookie::default());
        }
        Ok(())
    }

    /// Registers every address of the slice with each of its owners, from
    /// its home socket (slice index `j` lives on socket `j % clients`),
    /// pipelined. If any registration is lost, the whole slice is sent
    /// again (a repeat only refreshes an entry), at most three passes.
    fn register_population(&mut self) -> Result<(), BenchError> {
        let n = self.slice.addresses.len();
        let started = Instant::now();
        self.homes = (0..n)
            .map(|j| self.clients[j % self.clients.len()].socket.local_addr())
            .collect::<std::io::Result<_>>()?;
        let limit = Duration::from_secs(120).max(Duration::from_micros(40 * n as u64));
        for pass in 1..=3 {
            self.counts = Counts::default();
            // The next registration to send: slice index, and which of its
            // owners.
            let (mut j, mut k) = (0usize, 0usize);
            let mut owners = self.slice.addresses.first().map(|a| self.targets.owners(a));
            loop {
                if j >= n && self.clients.iter().all(|c| c.inflight.is_empty()) {
                    break;
                }
                if started.elapsed() > limit {
                    return Err(BenchError::Setup(format!(
                        "{} of {n} addresses registered with their owners in {limit:?}; the sky is not keeping up",
                        self.counts.answered
                    )));
                }
                let before = self.counts.answered;
                let mut sent_any = false;
                while let Some(o) = owners {
                    if let Some(&node) = o.as_slice().get(k) {
                        let c = j % self.clients.len();
                        if self.clients[c].inflight.len() >= self.cfg.window {
                            break;
                        }
                        let msg = self.register_msg(c, node, j);
                        if !self.send_one(c, node, msg, Expect::Registered)? {
                            break; // socket buffer full: the next turn sends it
                        }
                        sent_any = true;
                        k += 1;
                    } else {
                        (j, k) = (j + 1, 0);
                        owners = self.slice.addresses.get(j).map(|a| self.targets.owners(a));
                    }
                }
                self.receive_all()?;
                self.expire(Instant::now());
                if !sent_any && self.counts.answered == before {
                    self.idle_wait(IDLE_WAIT);
                }
            }
            let total = self.counts.sent;
            if self.counts.malformed > 0 {
                return Err(BenchError::Setup(format!(
                    "{} of {total} registrations were refused: is the node's per-source budget (--max-per-ip, --max-per-prefix) below the population, or did the sky's ring change during setup?",
                    self.counts.malformed
                )));
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
            "{} of {} registrations still lost after three passes",
            self.counts.lost, self.counts.sent
        )))
    }

    /// The registration of slice member `j` to `node`, from socket `c`.
    pub(super) fn register_msg(&self, c: usize, node: usize, j: usize) -> Message {
        Message::Register {
            tag: Tag([0; 4]),
            cookie: self.clients[c].cookies[node],
            flags: Flags(0),
            token: token(self.slice.range.start + j),
        }
    }
}
