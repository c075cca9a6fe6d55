//! The std driver of the earth core: its UDP sockets, the wall clock, and a
//! loop that feeds [`Earth`] and hands its events to the application.
//!
//! This is the earth's engine, the only earth module with a socket, a
//! thread or a clock. The core names the socket each datagram goes out of
//! ([`crate::client::SocketId`]): the main one, and fresh ones for cover
//! registrations and after an epoch boundary; the driver binds a socket
//! the first time it is named, reads every socket on a thread of its own,
//! and closes one when the core releases it. An application that has its
//! own event loop (tokio, mio, a game loop) drives [`Earth`] itself the
//! same way: `handle_datagram_on`, `handle_timeout`, then `poll_transmit`,
//! `poll_released` and `poll_event` until empty.

#![allow(clippy::disallowed_methods)] // the earth's engine: it owns the clock and threads

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::ops::ControlFlow;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::client::{Config, Earth, Event, SocketId};
use crate::state::State;
use sky_proto::time::UnixTime;

/// How long the loop sleeps at most, so that a stop flag is seen.
const TICK: Duration = Duration::from_millis(200);

/// The largest datagram read.
const BUF: usize = 2048;

/// A socket reader's stack: a receive buffer and a channel send.
const READER_STACK: usize = 64 * 1024;

/// The wall clock (what the ratchet's epochs count).
pub fn unix_now() -> UnixTime {
    UnixTime::from_duration(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default(),
    )
}

/// A datagram one of the reader threads received.
type Received = (SocketId, SocketAddr, Vec<u8>);

/// One bound socket and the flag that stops its reader.
struct Bound {
    socket: Arc<UdpSocket>,
    closed: Arc<AtomicBool>,
}

impl Drop for Bound {
    fn drop(&mut self) {
        self.closed.store(true, Ordering::Relaxed);
    }
}

/// An [`Earth`] core on UDP sockets of its own.
pub struct Driver {
    sockets: HashMap<SocketId, Bound>,
    /// The address every socket binds (port 0: a fresh port each).
    local: IpAddr,
    /// The address of the interface that routes to the sky: what a LAN
    /// neighbour reaches our sockets at (the core seals it into hints).
    lan: Option<IpAddr>,
    incoming: mpsc::Receiver<Received>,
    incoming_tx: mpsc::Sender<Received>,
    /// The core; call its API between runs (or from `run`'s callback).
    pub earth: Earth,
    /// The router's port mapping for the main socket, once asked for
    /// ([`Driver::map_port`]): which local port it maps, and what the core
    /// was last told.
    #[cfg(feature = "portmap")]
    mapper: Option<(
        crate::portmap::PortMapper,
        u16,
        Option<std::net::SocketAddrV4>,
    )>,
}

impl Driver {
    /// Binds the main socket on a fresh ephemeral port and seeds the core
    /// from the operating system's random source. The sockets are on
    /// loopback when every bootstrap node is, else on the wildcard; of the
    /// family the bootstrap nodes share, or dual-stack IPv6 when they mix
    /// families (so that ring members of either family can be reached).
    pub fn bind(config: Config, state: State) -> io::Result<Driver> {
        if config.sky.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "no sky node to bootstrap from",
            ));
        }
        let all = |f: fn(&SocketAddr) -> bool| config.sky.iter().all(f);
        let loopback = all(|a| a.ip().is_loopback());
        let local: IpAddr = match (all(SocketAddr::is_ipv4), all(SocketAddr::is_ipv6), loopback) {
            (true, _, true) => Ipv4Addr::LOCALHOST.into(),
            (true, _, false) => Ipv4Addr::UNSPECIFIED.into(),
            (_, true, true) => Ipv6Addr::LOCALHOST.into(),
            _ => Ipv6Addr::UNSPECIFIED.into(),
        };
        let (incoming_tx, incoming) = mpsc::channel();
        let lan = route_source(local, config.sky[0]);
        let earth = Earth::new(config, state, random_seed()?, unix_now());
        let mut driver = Driver {
            sockets: HashMap::new(),
            local,
            lan,
            incoming,
            incoming_tx,
            earth,
            #[cfg(feature = "portmap")]
            mapper: None,
        };
        driver.open(SocketId::MAIN)?;
        Ok(driver)
    }

    /// Binds socket `id` on a fresh port and starts its reader (a small
    /// thread: the birthday punch opens a few hundred sockets at once).
    fn open(&mut self, id: SocketId) -> io::Result<&Bound> {
        let socket = Arc::new(UdpSocket::bind(SocketAddr::new(self.local, 0))?);
        socket.set_read_timeout(Some(TICK))?;
        if let (Some(lan), Ok(bound)) = (self.lan, socket.local_addr()) {
            self.earth
                .set_local_addr(id, SocketAddr::new(lan, bound.port()));
        }
        let closed = Arc::new(AtomicBool::new(false));
        let (reader, stop, tx) = (socket.clone(), closed.clone(), self.incoming_tx.clone());
        std::thread::Builder::new()
            .name(format!("sky-earth-socket-{}", id.0))
            .stack_size(READER_STACK)
            .spawn(move || read(id, &reader, &stop, &tx))?;
        Ok(self.sockets.entry(id).or_insert(Bound { socket, closed }))
    }

    /// Asks the router for a port mapping of the main socket (UPnP-IGD,
    /// NAT-PMP or PCP; [`crate::portmap`]), kept renewed, moved with the
    /// main socket, deleted when the driver is dropped. The core learns the
    /// mapped endpoint as soon as the router gives it, and seals it into
    /// hints (never in clear). Returns the mapper, to wait on or ask.
    #[cfg(feature = "portmap")]
    pub fn map_port(&mut self) -> io::Result<&crate::portmap::PortMapper> {
        if self.mapper.is_none() {
            let port = self.local_addr()?.port();
            let mapper = crate::portmap::PortMapper::start(port)?;
            self.mapper = Some((mapper, port, None));
        }
        self.sync_mapping();
        Ok(&self.mapper.as_ref().expect("set above").0)
    }

    /// Tells the core what the router maps now; follows the main socket.
    fn sync_mapping(&mut self) {
        #[cfg(feature = "portmap")]
        {
            let main = self.earth.main_socket();
            let port = self
                .sockets
                .get(&main)
                .and_then(|b| b.socket.local_addr().ok())
                .map(|a| a.port());
            let Some((mapper, mapped_port, told)) = self.mapper.as_mut() else {
                return;
            };
            if let Some(port) = port
                && port != *mapped_port
            {
                // A rotation: the old mapping goes, the new socket's comes.
                mapper.set_local_port(port);
                *mapped_port = port;
                *told = None;
                self.earth.set_port_mapping(None);
                return;
            }
            let now = mapper.mapped();
            if now != *told {
                *told = now;
                self.earth.set_port_mapping(now);
            }
        }
    }

    /// The main socket's local address.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        match self.sockets.get(&SocketId::MAIN) {
            Some(b) => b.socket.local_addr(),
            None => Err(io::Error::other("the main socket is closed")),
        }
    }

    /// Sends everything the core has queued, from the socket each names
    /// (binding a fresh one the first time), then closes the sockets the
    /// core released. A datagram the kernel refuses is dropped, as the
    /// network might have: the core retries.
    pub fn flush(&mut self) {
        let v6 = self.local.is_ipv6();
        while let Some(t) = self.earth.poll_transmit() {
            let dst = match t.dst {
                // A dual-stack socket reaches IPv4 through mapped addresses.
                SocketAddr::V4(v4) if v6 => {
                    SocketAddr::new(v4.ip().to_ipv6_mapped().into(), v4.port())
                }
                dst => dst,
            };
            let bound = match self.sockets.contains_key(&t.socket) {
                true => self.sockets.get(&t.socket),
                false => self.open(t.socket).ok(),
            };
            if let Some(b) = bound {
                let _ = b.socket.send_to(&t.bytes, dst);
            }
        }
        while let Some(id) = self.earth.poll_released() {
            self.sockets.remove(&id);
        }
    }

    /// Runs the core until `on_event` breaks, `stop` is set or `until`
    /// passes. `on_event` gets the core too: it may answer an event (save
    /// the state and call [`Earth::saved`], send, look up).
    pub fn run(
        &mut self,
        until: Option<Instant>,
        stop: &AtomicBool,
        on_event: impl FnMut(&mut Earth, Event) -> ControlFlow<()>,
    ) -> io::Result<()> {
        struct Events<F>(F);
        impl<F: FnMut(&mut Earth, Event) -> ControlFlow<()>> App for Events<F> {
            fn event(&mut self, earth: &mut Earth, event: Event) -> ControlFlow<()> {
                (self.0)(earth, event)
            }
        }
        self.run_app(until, stop, &mut Events(on_event))
    }

    /// Runs the core with `app` until it breaks, `stop` is set or `until`
    /// passes: `app` gets every event, and a [`App::tick`] on every turn of
    /// the loop (at least every 200 ms) to hand the core work that came
    /// from elsewhere.
    pub fn run_app(
        &mut self,
        until: Option<Instant>,
        stop: &AtomicBool,
        app: &mut impl App,
    ) -> io::Result<()> {
        loop {
            self.sync_mapping();
            if app.tick(&mut self.earth).is_break() {
                self.flush();
                return Ok(());
            }
            self.flush();
            while let Some(event) = self.earth.poll_event() {
                let flow = app.event(&mut self.earth, event);
                self.flush();
                if flow.is_break() {
                    return Ok(());
                }
            }
            if stop.load(Ordering::Relaxed) || until.is_some_and(|u| Instant::now() >= u) {
                return Ok(());
            }
            let now = unix_now();
            let mut wait = self
                .earth
                .poll_timeout()
                .map_or(TICK, |t| t.saturating_duration_since(now))
                .min(TICK);
            if let Some(u) = until {
                wait = wait.min(u.saturating_duration_since(Instant::now()));
            }
            if !wait.is_zero() {
                match self.incoming.recv_timeout(wait) {
                    Ok((socket, from, mut bytes)) => {
                        self.earth
                            .handle_datagram_on(unix_now(), socket, from, &mut bytes);
                        continue;
                    }
                    Err(mpsc::RecvTimeoutError::Timeout) => {}
                    Err(mpsc::RecvTimeoutError::Disconnected) => {
                        return Err(io::Error::other("every socket reader stopped"));
                    }
                }
            }
            if self.earth.poll_timeout().is_some_and(|t| t <= unix_now()) {
                self.earth.handle_timeout(unix_now());
            }
        }
    }
}

/// The application's side of [`Driver::run_app`].
pub trait App {
    /// An event from the core; `Break` stops the loop.
    fn event(&mut self, earth: &mut Earth, event: Event) -> ControlFlow<()>;

    /// Called on every turn of the loop, at least every 200 ms; `Break`
    /// stops it.
    fn tick(&mut self, _earth: &mut Earth) -> ControlFlow<()> {
        ControlFlow::Continue(())
    }
}

/// Reads `socket` until `closed`, handing every datagram to the driver's
/// loop.
fn read(id: SocketId, socket: &UdpSocket, closed: &AtomicBool, tx: &mpsc::Sender<Received>) {
    let mut buf = [0u8; BUF];
    while !closed.load(Ordering::Relaxed) {
        match socket.recv_from(&mut buf) {
            Ok((n, from)) => {
                if tx.send((id, from, buf[..n].to_vec())).is_err() {
                    return; // the driver is gone
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock
                        | io::ErrorKind::TimedOut
                        | io::ErrorKind::Interrupted
                        // An ICMP error from a punch that found no one.
                        | io::ErrorKind::ConnectionRefused
                        | io::ErrorKind::ConnectionReset
                ) => {}
            Err(_) => return,
        }
    }
}

/// The local address the system would send to `sky` from, when the
/// sockets bind `local`: the interface address a LAN neighbour reaches us
/// at. Connecting a UDP socket sends nothing; it only asks the routing
/// table.
fn route_source(local: IpAddr, sky: SocketAddr) -> Option<IpAddr> {
    if !local.is_unspecified() {
        return Some(local);
    }
    let probe = UdpSocket::bind(SocketAddr::new(local, 0)).ok()?;
    let dst = match (local, sky) {
        (IpAddr::V6(_), SocketAddr::V4(v4)) => {
            SocketAddr::new(v4.ip().to_ipv6_mapped().into(), v4.port())
        }
        _ => sky,
    };
    probe.connect(dst).ok()?;
    let ip = probe.local_addr().ok()?.ip();
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    };
    (!ip.is_unspecified()).then_some(ip)
}

/// 32 bytes from the operating system's random source.
pub fn random_seed() -> io::Result<[u8; 32]> {
    let mut out = [0u8; 32];
    getrandom::fill(&mut out).map_err(io::Error::other)?;
    Ok(out)
}
