//! The gossip thread (`sky-gossip`, on the first CPU beside the control thread):
//! one UDP socket, the wall clock, and the sans-IO [`Gossip`] core. Each new
//! ring it makes is swapped into the node's [`SharedRing`], which shards
//! read without waiting.
//!
//! On stop it leaves the sky gracefully (the members hear it is gone at
//! once instead of probing it for seconds), sends what that takes, and
//! exits.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use socket2::{Domain, Protocol, Socket, Type};

use crate::gossip::{Gossip, GossipConfig, GossipError, NodeId, describe_settings};
use crate::metrics::GossipMetrics;
use crate::snapshot::SharedRing;
use sky_proto::ring::RingConfig;

use super::WAKE_EVERY;
use sky_proto::time::MonoTime;

/// How often a node with other ring settings is named in the log.
const WARN_EVERY: Duration = Duration::from_secs(60);

/// Receive buffer: larger than any gossip datagram foca accepts (1200
/// bytes), so an oversized one is seen as such and counted.
const RECV_BUFFER: usize = 2048;

/// Binds the gossip socket. An IPv6 wildcard also serves IPv4, as the
/// listen socket does.
pub(super) fn bind(addr: SocketAddr) -> io::Result<UdpSocket> {
    let s = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if addr.is_ipv6() && addr.ip().is_unspecified() {
        s.set_only_v6(false)?;
    }
    s.bind(&addr.into())?;
    Ok(s.into())
}

/// What the gossip thread needs besides its socket.
pub(super) struct Setup {
    /// This node's service endpoint (the advertised one, or the bound
    /// listen address).
    pub service: SocketAddr,
    /// The gossip endpoint other nodes reach this one at (the advertised
    /// IP with the gossip port, or the bound gossip address): its identity.
    pub advertised: SocketAddr,
    pub seeds: Vec<SocketAddr>,
    pub ring_config: RingConfig,
    /// Seeds probe-target choice and fan-out.
    pub rng_seed: u64,
    /// The node's identity key secret (gossip datagrams are signed with it).
    pub secret: [u8; 32],
    /// A closed sky's member keys.
    pub closed_sky: Option<std::collections::HashSet<[u8; 32]>>,
}

/// The gossip loop; returns after a graceful leave once `stop` is set.
pub(super) fn run(
    socket: UdpSocket,
    setup: Setup,
    ring: &SharedRing,
    metrics: &GossipMetrics,
    stop: &AtomicBool,
    origin: Instant,
) -> io::Result<()> {
    let local = setup.advertised;
    let me = NodeId::new(local, setup.service, initial_bump());
    if !setup.seeds.is_empty()
        && (local.ip().is_unspecified() || setup.service.ip().is_unspecified())
    {
        tracing::warn!(
            gossip = %local,
            service = %setup.service,
            "gossip or listen address is a wildcard: other sky nodes cannot reach this one by it"
        );
    }
    let mut gossip = Gossip::new(
        me,
        setup.secret,
        setup.ring_config,
        setup.rng_seed,
        GossipConfig {
            closed_sky: setup.closed_sky.clone(),
            ..GossipConfig::default()
        },
    );
    tracing::info!(
        key = %sky_proto::wire::to_hex(&gossip.identity().key),
        closed = setup.closed_sky.is_some(),
        "gossip identity key (list it in the other nodes' closed_sky to admit this one)"
    );
    metrics.set_ring(gossip.ring());
    gossip.join(&setup.seeds, MonoTime::from_duration(origin.elapsed()));
    tracing::info!(gossip = %local, seeds = setup.seeds.len(), "gossip started");
    let v6 = socket.local_addr()?.is_ipv6();
    let settings = [
        setup.ring_config.replicas,
        setup.ring_config.prefix_v4,
        setup.ring_config.prefix_v6,
        setup.ring_config.positions,
    ];
    let mut warned: HashMap<SocketAddr, Instant> = HashMap::new();
    let mut buf = vec![0u8; RECV_BUFFER];
    loop {
        flush(&socket, v6, &mut gossip, metrics);
        publish(&mut gossip, ring, metrics);
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let now = MonoTime::from_duration(origin.elapsed());
        let wait = gossip
            .poll_timeout()
            .map_or(WAKE_EVERY, |at| at.saturating_duration_since(now))
            .clamp(Duration::from_millis(1), WAKE_EVERY);
        socket.set_read_timeout(Some(wait))?;
        match socket.recv_from(&mut buf) {
            Ok((n, from)) => {
                metrics.received(n);
                match gossip.handle_datagram(
                    MonoTime::from_duration(origin.elapsed()),
                    from,
                    &buf[..n],
                ) {
                    Ok(()) => {}
                    Err(GossipError::OtherSettings(theirs)) => {
                        metrics.refused_settings.inc();
                        // Loud, once a minute per node: two rule sets
                        // would split the sky's view.
                        let due = warned.get(&from).is_none_or(|t| t.elapsed() >= WARN_EVERY);
                        if due {
                            if warned.len() > 1024 {
                                warned.clear();
                            }
                            warned.insert(from, Instant::now());
                            tracing::error!(
                                node = %from,
                                ours = %describe_settings(settings),
                                theirs = %describe_settings(theirs),
                                "refusing gossip from a sky node with other ring settings: \
                                 one sky needs one rule set (replicas, prefix-v4, prefix-v6, \
                                 positions); fix the configuration of one of the two"
                            );
                        }
                    }
                    Err(e) => {
                        if e == GossipError::Spoofed {
                            metrics.refused_spoofed.inc();
                        }
                        tracing::debug!(error = ?e, "gossip datagram refused");
                    }
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock
                        | io::ErrorKind::TimedOut
                        | io::ErrorKind::Interrupted
                ) => {}
            Err(e) => {
                metrics.errors.inc();
                tracing::debug!(error = %e, "gossip receive failed");
            }
        }
        let now = MonoTime::from_duration(origin.elapsed());
        if gossip.poll_timeout().is_some_and(|at| at <= now) {
            gossip.handle_timeout(now);
        }
    }
    gossip.leave(MonoTime::from_duration(origin.elapsed()));
    flush(&socket, v6, &mut gossip, metrics);
    tracing::info!("left the sky");
    Ok(())
}

/// Sends every queued datagram.
fn flush(socket: &UdpSocket, v6: bool, gossip: &mut Gossip, metrics: &GossipMetrics) {
    while let Some((dst, bytes)) = gossip.poll_transmit() {
        // A dual-stack socket names IPv4 peers by their mapped address.
        let dst = match dst {
            SocketAddr::V4(v4) if v6 => {
                SocketAddr::new(IpAddr::V6(v4.ip().to_ipv6_mapped()), v4.port())
            }
            _ => dst,
        };
        match socket.send_to(&bytes, dst) {
            Ok(n) => metrics.sent(n),
            Err(e) => {
                metrics.errors.inc();
                tracing::debug!(error = %e, to = %dst, "gossip send failed");
            }
        }
    }
    metrics.errors.inc_by(gossip.take_errors());
}

/// Swaps a new ring in, and refreshes the member gauges.
fn publish(gossip: &mut Gossip, ring: &SharedRing, metrics: &GossipMetrics) {
    if let Some(new) = gossip.take_ring_change() {
        metrics.ring_changes.inc();
        metrics.set_ring(&new);
        tracing::info!(members = new.len(), version = new.version(), "ring changed");
        tracing::debug!(
            members = ?new.members().iter().map(|m| m.endpoint).collect::<Vec<_>>(),
            "ring members"
        );
        ring.store(Arc::new(new));
    }
    metrics.set_members(gossip.member_counts());
    let refused = gossip.take_refusals();
    metrics.refused_forged.inc_by(refused.forged);
    metrics.refused_unproven.inc_by(refused.unproven);
}

/// The first bump of this run's identity: the wall clock in seconds, so a
/// restarted node wins over the identity it had (bumps compare as serial
/// numbers: any restart within 9 hours is newer; the sky forgets a down
/// identity after one).
fn initial_bump() -> u16 {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    (secs % (1 << 16)) as u16
}
