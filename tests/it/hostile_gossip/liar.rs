//! The lying member of `a_lying_member_…` and `an_earth_client_…`: a
//! sky node that proves its endpoints honestly, is admitted, and then
//! signs updates no node's own code would send.

use std::collections::HashMap;
use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use ed25519_dalek::{Signer, SigningKey};
use foca::{Member, State};
use sky_node::gossip::{Gossip, GossipConfig, MemberState, NodeId, PREFIX_LEN, SIG_LEN};
use sky_proto::time::MonoTime;
use sky_proto::wire::Message;

use super::{addr, ring_config};
use crate::common::emit;

/// A gossip datagram from `src` to `dst`, signed with `key`, carrying
/// `updates`: what a lying member sends. `cookies` are the 16 cookie bytes
/// of the prefix (what the liar's own last datagram to `dst` carried).
fn forge(
    key: &SigningKey,
    cookies: &[u8],
    src: NodeId,
    src_incarnation: u16,
    dst: NodeId,
    updates: &[Member<NodeId>],
) -> Vec<u8> {
    let header = foca::Header {
        src,
        src_incarnation,
        dst,
        message: foca::Message::Gossip,
    };
    let c = ring_config();
    let mut out = vec![b'G', c.replicas, c.prefix_v4, c.prefix_v6, c.positions];
    out.extend_from_slice(cookies);
    assert_eq!(out.len(), PREFIX_LEN);
    out.extend_from_slice(&postcard::to_allocvec(&header).unwrap());
    out.extend_from_slice(&u16::try_from(updates.len()).unwrap().to_be_bytes());
    for m in updates {
        out.extend_from_slice(&postcard::to_allocvec(m).unwrap());
    }
    let sig = key.sign(&out).to_bytes();
    out.extend_from_slice(&sig);
    out
}

/// What the liar did.
#[derive(Debug, Default)]
pub(super) struct LiarReport {
    pub(super) lie_datagrams: usize,
    pub(super) lie_bytes: usize,
    pub(super) pongs: usize,
}

/// A member that is admitted honestly and then lies: a [`Gossip`] core on
/// its own gossip socket (driven as the engine's gossip thread drives it),
/// a service socket that answers sky pings (so that the nodes' proofs of
/// it succeed), and, while `lying`, every 100 ms to every member: `fakes`
/// alive, and every member down and suspect at the largest incarnation.
pub(super) struct Liar {
    pub(super) gossip: SocketAddr,
    pub(super) service: SocketAddr,
    lying: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<LiarReport>>,
}

impl Liar {
    pub(super) fn join(net: u8, seed: SocketAddr, fakes: Vec<NodeId>) -> Liar {
        let gossip_socket = UdpSocket::bind(addr(net, 30)).unwrap();
        let service_socket = UdpSocket::bind(addr(net, 31)).unwrap();
        let service = service_socket.local_addr().unwrap();
        let secret = [0x30; 32];
        let gossip_addr = gossip_socket.local_addr().unwrap();
        let me = NodeId::new(gossip_addr, service, 1);
        let core = Gossip::new(me, secret, ring_config(), 30, GossipConfig::default());
        let (lying, stop) = (
            Arc::new(AtomicBool::new(false)),
            Arc::new(AtomicBool::new(false)),
        );
        let (l, s) = (lying.clone(), stop.clone());
        let gossip = std::thread::spawn(move || {
            run_liar(&gossip_socket, core, secret, seed, &fakes, &l, &s)
        });
        let s = stop.clone();
        let pings = std::thread::spawn(move || answer_pings(&service_socket, &s));
        Liar {
            gossip: gossip_addr,
            service,
            lying,
            stop,
            threads: vec![gossip, pings],
        }
    }

    pub(super) fn lie(&self, on: bool) {
        self.lying.store(on, Ordering::Relaxed);
    }

    pub(super) fn stop(mut self) -> LiarReport {
        self.stop.store(true, Ordering::Relaxed);
        let mut total = LiarReport::default();
        for t in self.threads.drain(..) {
            let r = t.join().unwrap();
            total.lie_datagrams += r.lie_datagrams;
            total.lie_bytes += r.lie_bytes;
            total.pongs += r.pongs;
        }
        total
    }
}

impl Drop for Liar {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// The liar's gossip loop (bounded by `stop` and by a minute).
fn run_liar(
    socket: &UdpSocket,
    mut core: Gossip,
    secret: [u8; 32],
    seed: SocketAddr,
    fakes: &[NodeId],
    lying: &AtomicBool,
    stop: &AtomicBool,
) -> LiarReport {
    let key = SigningKey::from_bytes(&secret);
    let origin = Instant::now();
    let now = || MonoTime::from_duration(origin.elapsed());
    let mut report = LiarReport::default();
    // Per member: the cookies and our incarnation our last datagram to it
    // carried, which a lie repeats.
    let mut last: HashMap<SocketAddr, (Vec<u8>, u16)> = HashMap::new();
    let mut next_lie = Instant::now();
    let mut buf = [0u8; 2048];
    core.join(&[seed], now());
    while !stop.load(Ordering::Relaxed) && origin.elapsed() < Duration::from_secs(60) {
        while let Some((dst, bytes)) = core.poll_transmit() {
            if bytes.first() == Some(&b'G')
                && let Some(body) = bytes.get(PREFIX_LEN..bytes.len().saturating_sub(SIG_LEN))
                && let Ok((h, _)) = postcard::take_from_bytes::<foca::Header<NodeId>>(body)
            {
                last.insert(dst, (bytes[5..PREFIX_LEN].to_vec(), h.src_incarnation));
            }
            let _ = socket.send_to(&bytes, dst);
        }
        let wait = core
            .poll_timeout()
            .map_or(Duration::from_millis(10), |at| {
                at.saturating_duration_since(now())
            })
            .clamp(Duration::from_millis(1), Duration::from_millis(10));
        socket.set_read_timeout(Some(wait)).unwrap();
        if let Ok((n, from)) = socket.recv_from(&mut buf) {
            let _ = core.handle_datagram(now(), from, &buf[..n]);
        }
        if core.poll_timeout().is_some_and(|at| at <= now()) {
            core.handle_timeout(now());
        }
        if lying.load(Ordering::Relaxed) && Instant::now() >= next_lie {
            next_lie = Instant::now() + Duration::from_millis(100);
            let members: Vec<NodeId> = core
                .members()
                .filter(|(_, s)| matches!(s, MemberState::Alive | MemberState::Suspect))
                .map(|(id, _)| id)
                .collect();
            let mut lies: Vec<Member<NodeId>> = fakes.iter().map(|f| Member::alive(*f)).collect();
            for m in &members {
                lies.push(Member::new(*m, u16::MAX, State::Down));
                lies.push(Member::new(*m, u16::MAX, State::Suspect));
            }
            let me = core.identity();
            for dst in &members {
                let Some((cookies, incarnation)) = last.get(&dst.gossip) else {
                    continue;
                };
                for chunk in lies.chunks(10) {
                    let bytes = forge(&key, cookies, me, *incarnation, *dst, chunk);
                    if socket.send_to(&bytes, dst.gossip).is_ok() {
                        report.lie_datagrams += 1;
                        report.lie_bytes += bytes.len();
                    }
                }
            }
        }
    }
    report
}

/// The liar's service endpoint: a `pong` to every sky `ping`, as a shard
/// answers it; nothing else.
fn answer_pings(socket: &UdpSocket, stop: &AtomicBool) -> LiarReport {
    let mut report = LiarReport::default();
    let mut buf = [0u8; 2048];
    socket
        .set_read_timeout(Some(Duration::from_millis(20)))
        .unwrap();
    let end = Instant::now() + Duration::from_secs(60);
    while !stop.load(Ordering::Relaxed) && Instant::now() < end {
        if let Ok((n, from)) = socket.recv_from(&mut buf)
            && let Ok(Message::Ping { tag, .. }) = Message::decode(&buf[..n])
            && socket.send_to(&emit(Message::Pong { tag }), from).is_ok()
        {
            report.pongs += 1;
        }
    }
    report
}
