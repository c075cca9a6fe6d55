//! Before measuring: a socket per client, a cookie per socket, and the
//! population registered.

use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use sky_proto::wire::{self, Cookie, Flags, Message, Tag, VirtualAddr};

use super::generator::{Client, Counts, Expect, Generator};
use super::{BATCH, BUF, BenchConfig, BenchError, HISTOGRAM_US, IDLE_WAIT, Mode, token};
use crate::rng::Rng;
use sky_node::engine::batch::{RecvBatch, SendBatch};

impl Generator {
    /// Opens the sockets, fetches their cookies and registers the
    /// population; returns the generator and how long that took.
    pub(super) fn set_up(cfg: BenchConfig) -> Result<(Generator, f64), BenchError> {
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
        Ok((g, setup_s))
    }

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

    pub(super) fn register_msg(&mut self, c: usize, i: usize) -> Message {
        Message::Register {
            tag: Tag([0; 4]),
            cookie: self.clients[c].cookie,
            flags: Flags(0),
            token: token(i),
        }
    }
}
