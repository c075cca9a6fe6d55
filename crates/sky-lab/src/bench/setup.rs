//! Before measuring, in each generator thread: its sockets, a cookie per
//! socket from every node, its slice of the population's keys (and their
//! registrations signed, `keys.rs`), and the slice registered with each
//! address's owners.

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use sky_node::engine::batch::{RecvBatch, SendBatch};
use sky_proto::wire::{self, Cookie, Message, Tag, VirtualAddr};

use super::generator::{Client, Expect, Generator};
use super::keys::{self, Plan, Proofs};
use super::report::Counts;
use super::targets::{Slice, Targets};
use super::{BATCH, BUF, BenchConfig, BenchError, HISTOGRAM_US, IDLE_WAIT, Mode, Share};
use crate::rng::Rng;

/// Setup gives up when no new registration was answered for this long
/// (plus the request timeout).
const STALL: Duration = Duration::from_secs(10);

impl<'a> Generator<'a> {
    /// Opens the thread's sockets, fetches their cookies, derives its slice
    /// of the population's keys and registers them; returns the generator
    /// and how long that took.
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
        for i in 0..share.clients.max(1) {
            let mut local = local;
            if let SocketAddr::V4(v4) = &mut local
                && loopback
            {
                // 127.0.0.1, .2, ...: socket i of thread t on the
                // (t + i)-th, so that every thread spreads its own.
                let n = (share.thread + i) % usize::from(cfg.source_ips.max(1));
                v4.set_ip(std::net::Ipv4Addr::from(u32::from(*v4.ip()) + n as u32));
            }
            let socket = UdpSocket::bind(local)?;
            socket.set_nonblocking(true)?;
            let s2 = socket2::SockRef::from(&socket);
            let _ = s2.set_recv_buffer_size(4 << 20);
            let _ = s2.set_send_buffer_size(4 << 20);
            // What the node does (DF, so no IP identification to compute
            // per datagram): without it the generator spends 5% of its core
            // in `__ip_select_ident` and runs out of core before a node
            // answering pings does (perf, `sky bench --mode ping`).
            sky_node::engine::sys::set_dont_fragment(
                std::os::fd::AsRawFd::as_raw_fd(&socket),
                local.is_ipv6(),
            )?;
            clients.push(Client {
                socket,
                cookies: vec![Cookie::default(); targets.nodes.len()],
                inflight: Vec::with_capacity(cfg.window),
            });
        }
        let sockets = clients.len();
        // Thread 0 draws what a single-threaded run always drew.
        let labels: &[u64] = if share.thread == 0 {
            &[]
        } else {
            &[share.thread as u64]
        };
        let mut g = Generator {
            clients,
            slice: Slice::new(targets, share.population.clone(), Vec::new(), sockets),
            proofs: Proofs::default(),
            homes: Vec::new(),
            registered: Vec::new(),
            progress: setup,
            backoff: Vec::new(),
            rng: Rng::stream(0x5eed, labels),
            seq: 0,
            counts: Counts::default(),
            histogram: vec![0; HISTOGRAM_US + 1],
            measuring: false,
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
        // Which modes need the population's addresses, register it now
        // (with `registered`, an earlier run registered the same addresses;
        // their introductions go to that run's ports), and register it
        // while measuring (keys and signatures kept).
        let addresses = matches!(
            g.cfg.mode,
            Mode::LookupOnline | Mode::Mixed | Mode::Register
        );
        let register = addresses && !g.cfg.registered && !g.cfg.synthetic;
        let keep = matches!(g.cfg.mode, Mode::Mixed | Mode::Register);
        if addresses && g.cfg.synthetic {
            let addresses = g.share.population.clone().map(super::synthetic_address);
            g.slice = Slice::new(
                targets,
                g.share.population.clone(),
                addresses.collect(),
                sockets,
            );
        } else if addresses {
            let cookies: Vec<Vec<Cookie>> = g.clients.iter().map(|c| c.cookies.clone()).collect();
            let plan = Plan {
                keys: keep,
                sign: (register || keep).then_some(&cookies[..]),
            };
            // Every core the process may use (the thread is not pinned
            // yet), shared among the generator threads.
            let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
            let workers = (cores / cfg.threads).max(1);
            let (addresses, proofs) =
                keys::derive(targets, g.share.population.clone(), &plan, workers);
            g.slice = Slice::new(targets, g.share.population.clone(), addresses, sockets);
            g.proofs = proofs;
        }
        if register {
            g.register_population()?;
        }
        if !keep {
            g.proofs.clear();
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
    /// pipelined, in passes until every registration is answered. A
    /// `refused` for want of signature checks (reason 4: the source spent
    /// its budget for this second) holds that socket back from that node
    /// for a second, and the next pass sends it again; a registration
    /// answered is sent again in every later pass too (a refresh, which
    /// takes no check), so that none expires while the others wait for the
    /// budget. Lost ones are sent again at most three passes; setup gives
    /// up when no new registration was answered for [`STALL`].
    fn register_population(&mut self) -> Result<(), BenchError> {
        let n = self.slice.addresses.len();
        let per = Proofs::per_member(self.targets);
        let started = Instant::now();
        self.homes = (0..n)
            .map(|j| self.clients[j % self.clients.len()].socket.local_addr())
            .collect::<std::io::Result<_>>()?;
        // Slots past an address's owners are never sent: done already.
        self.registered = vec![true; n * per];
        for (j, address) in self.slice.addresses.iter().enumerate() {
            let owners = self.targets.owners(address).as_slice().len();
            self.registered[j * per..j * per + owners].fill(false);
        }
        self.backoff = vec![started; self.clients.len() * self.targets.nodes.len()];
        // New registrations come as fast as the nodes' budgets of
        // signature checks allow: setup gives up only when none came for a
        // while.
        let stall = STALL + self.cfg.timeout;
        self.progress = started;
        let mut lossy = 0;
        loop {
            self.counts = Counts::default();
            // Registrations held back this pass (their socket's budget at
            // that node is spent).
            let mut held_back = 0u64;
            // The next registration to send: slice index, and which of its
            // owners.
            let (mut j, mut k) = (0usize, 0usize);
            let mut owners = self.slice.addresses.first().map(|a| self.targets.owners(a));
            loop {
                if j >= n && self.clients.iter().all(|c| c.inflight.is_empty()) {
                    break;
                }
                let now = Instant::now();
                if now.duration_since(self.progress) > stall {
                    let pending = self.registered.iter().filter(|&&d| !d).count();
                    return Err(BenchError::Setup(format!(
                        "{pending} registrations of {n} addresses with their owners unanswered, none answered for {stall:?}: the sky is not keeping up"
                    )));
                }
                let before = self.counts.answered + self.counts.later;
                let mut sent_any = false;
                while let Some(o) = owners {
                    if let Some(&node) = o.as_slice().get(k) {
                        let c = j % self.clients.len();
                        let item = j * per + k;
                        if !self.registered[item]
                            && now < self.backoff[c * self.targets.nodes.len() + node]
                        {
                            held_back += 1;
                            k += 1;
                            continue;
                        }
                        if self.clients[c].inflight.len() >= self.cfg.window {
                            break;
                        }
                        let msg = self.register_msg(c, node, j, k);
                        if !self.send_one(c, node, msg, Expect::Registered, item)? {
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
                if !sent_any && self.counts.answered + self.counts.later == before {
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
            if self.registered.iter().all(|&d| d) {
                self.counts = Counts::default();
                self.registered = Vec::new();
                return Ok(());
            }
            if held_back > 0 || self.counts.later > 0 {
                // Wait for the first socket held back to be let go.
                let now = Instant::now();
                let next = self.backoff.iter().filter(|&&b| b > now).min();
                std::thread::sleep(next.map_or(Duration::ZERO, |&b| b - now));
                continue;
            }
            lossy += 1;
            if lossy == 3 {
                break;
            }
        }
        Err(BenchError::Setup(format!(
            "{} of {} registrations still lost after three passes",
            self.counts.lost, self.counts.sent
        )))
    }

    /// The registration of slice member `j` to `node`, its `k`-th owner,
    /// from socket `c`: signed at setup with that socket's cookie (signed
    /// again only if the cookie changed).
    pub(super) fn register_msg(&mut self, c: usize, node: usize, j: usize, k: usize) -> Message {
        let cookie = self.clients[c].cookies[node];
        let (key, sig) = self.proofs.register(j, k, cookie);
        Message::Register {
            tag: Tag([0; 4]),
            cookie,
            flags: keys::FLAGS,
            key,
            sig,
        }
    }
}
