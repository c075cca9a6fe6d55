//! The NAT check service (`sky-check` threads): two UDP sockets on two
//! ports beside the listen port, answering `check` with where the source
//! is seen — from the socket asked, or, when the request says so, from the
//! other one. A client compares what the listen port and a check port saw
//! (does its NAT give each destination its own port?) and whether an
//! answer from a port it never sent to reaches it (does its NAT filter by
//! port?): `sky earth netcheck`, and the punching strategy of every
//! client (`docs/NAT.md`).
//!
//! Like STUN, and unlike everything else on a node, a check needs no
//! cookie: the answer goes to the datagram's own source and is never
//! larger than the request (32 bytes). A per-thread budget bounds the
//! answers per second, so a flood costs these threads and nothing else.

use std::io;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Instant;

use prometheus::IntCounter;

use super::WAKE_EVERY;
use crate::metrics::Metrics;
use sky_proto::wire::{self, Message};

/// Answers per second, per check socket, at most.
const BUDGET_PER_SECOND: u32 = 20_000;

/// The two bound check sockets.
pub(super) struct CheckService {
    sockets: [Arc<UdpSocket>; 2],
}

impl CheckService {
    /// Binds `port` and `port + 1` on `ip` (port 0: two ephemeral ports).
    pub(super) fn bind(ip: IpAddr, port: u16) -> io::Result<CheckService> {
        let first = super::gossip::bind(SocketAddr::new(ip, port))?;
        let second_port = if port == 0 { 0 } else { port + 1 };
        let second = super::gossip::bind(SocketAddr::new(ip, second_port))?;
        Ok(CheckService {
            sockets: [Arc::new(first), Arc::new(second)],
        })
    }

    /// The first check port, told to clients in every `checked` reply.
    pub(super) fn port(&self) -> u16 {
        self.sockets[0].local_addr().map_or(0, |a| a.port())
    }

    /// Starts one thread per socket, until `stop`.
    pub(super) fn spawn(
        self,
        metrics: &Metrics,
        stop: &Arc<AtomicBool>,
    ) -> io::Result<Vec<JoinHandle<io::Result<()>>>> {
        let port = self.port();
        let mut threads = Vec::with_capacity(2);
        for i in 0..2 {
            let me = self.sockets[i].clone();
            let other = self.sockets[1 - i].clone();
            let stop = stop.clone();
            let counters = Counters {
                answered: metrics.checks.with_label_values(&["answered"]),
                answered_other: metrics.checks.with_label_values(&["answered_other"]),
                rate_limited: metrics.checks.with_label_values(&["rate_limited"]),
                invalid: metrics.checks.with_label_values(&["invalid"]),
            };
            threads.push(
                std::thread::Builder::new()
                    .name(format!("sky-check-{i}"))
                    .spawn(move || serve(&me, &other, port, &counters, &stop))?,
            );
        }
        Ok(threads)
    }
}

struct Counters {
    answered: IntCounter,
    answered_other: IntCounter,
    rate_limited: IntCounter,
    invalid: IntCounter,
}

/// Answers checks on `me` until `stop`.
fn serve(
    me: &UdpSocket,
    other: &UdpSocket,
    port: u16,
    counters: &Counters,
    stop: &AtomicBool,
) -> io::Result<()> {
    me.set_read_timeout(Some(WAKE_EVERY))?;
    let mut buf = [0u8; 64];
    let mut reply = [0u8; wire::MAX_MESSAGE_LEN];
    let mut second = Instant::now();
    let mut spent = 0u32;
    while !stop.load(Ordering::Relaxed) {
        let (len, from) = match me.recv_from(&mut buf) {
            Ok(r) => r,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock
                        | io::ErrorKind::TimedOut
                        | io::ErrorKind::Interrupted
                        | io::ErrorKind::ConnectionRefused
                        | io::ErrorKind::ConnectionReset
                ) =>
            {
                continue;
            }
            Err(e) => return Err(e),
        };
        let Ok(Message::Check { tag, flags, .. }) = Message::decode(&buf[..len.min(buf.len())])
        else {
            counters.invalid.inc();
            continue;
        };
        if second.elapsed() >= std::time::Duration::from_secs(1) {
            second = Instant::now();
            spent = 0;
        }
        if spent >= BUDGET_PER_SECOND {
            counters.rate_limited.inc();
            continue;
        }
        spent += 1;
        let n = Message::Checked {
            tag,
            check_port: port,
            endpoint: wire::canonical(from),
        }
        .emit(&mut reply);
        let (via, counter) = match flags & Message::CHECK_FROM_OTHER != 0 {
            true => (other, &counters.answered_other),
            false => (me, &counters.answered),
        };
        // A send the kernel refuses is a datagram lost, as UDP may.
        if via.send_to(&reply[..n], from).is_ok() {
            counter.inc();
        }
    }
    Ok(())
}
