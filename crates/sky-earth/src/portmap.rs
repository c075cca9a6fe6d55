//! Port mapping: asks the default gateway to forward a UDP port of this
//! host, through UPnP-IGD, NAT-PMP or PCP, keeps the mapping renewed, and
//! deletes it when dropped (feature `portmap`, on by default).
//!
//! A mapped endpoint is one a friend can reach without punching: the
//! gateway forwards every datagram sent to it, from anyone, to the local
//! port. It is worth having behind a NAT that would otherwise defeat
//! punching (a symmetric one), and it tells a network check whether the
//! gateway cooperates at all.
//!
//! The protocols are spoken by the [`portmapper`] crate (the one iroh
//! uses: gateway discovery, probing of all three protocols, renewal at half
//! the lifetime). It is asynchronous; [`PortMapper`] runs it on a
//! single-threaded tokio runtime on a thread of its own, so the std driver
//! needs nothing async: start it, read [`PortMapper::mapped`] when it wants
//! to, drop it to stop.
//!
//! ```no_run
//! use std::time::Duration;
//! use sky_earth::portmap::PortMapper;
//!
//! let socket = std::net::UdpSocket::bind("0.0.0.0:0")?;
//! let mapper = PortMapper::start(socket.local_addr()?.port())?;
//! match mapper.wait_mapped(Duration::from_secs(2)) {
//!     Some(endpoint) => println!("reachable at {endpoint} ({:?})", mapper.protocol()),
//!     None => println!("the gateway maps no port"),
//! }
//! // Dropping `mapper` deletes the mapping.
//! # Ok::<(), std::io::Error>(())
//! ```

#![allow(clippy::disallowed_methods)] // like the driver, it owns a thread and waits on the clock

use std::net::SocketAddrV4;
use std::num::NonZeroU16;
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

/// How long the first probe of the gateway may take before mapping starts
/// anyway (portmapper's own probes give up after 1 s for UPnP, 500 ms for
/// NAT-PMP and PCP).
const PROBE_TIMEOUT: Duration = Duration::from_millis(1500);

/// How long dropping a [`PortMapper`] waits for the gateway to confirm the
/// deletion before leaving it to the mapping's lifetime.
const RELEASE_TIMEOUT: Duration = Duration::from_secs(2);

/// Which port-mapping protocols a [`PortMapper`] may use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Protocols {
    /// UPnP Internet Gateway Device (SSDP discovery, SOAP over HTTP).
    pub upnp: bool,
    /// NAT-PMP (RFC 6886), UDP port 5351 of the gateway.
    pub nat_pmp: bool,
    /// PCP (RFC 6887), UDP port 5351 of the gateway.
    pub pcp: bool,
}

impl Protocols {
    /// All three (what [`PortMapper::start`] uses).
    pub const ALL: Protocols = Protocols {
        upnp: true,
        nat_pmp: true,
        pcp: true,
    };
}

/// What the mapper's thread shares with its owner.
#[derive(Debug, Default)]
struct Shared {
    /// The external endpoint the gateway gave, while it holds.
    mapped: Option<SocketAddrV4>,
    /// The protocol that gave it.
    protocol: Option<&'static str>,
    /// The first probe is done and found no protocol: no mapping will come
    /// unless the network changes (waiting for one is pointless).
    hopeless: bool,
    /// The thread has ended.
    stopped: bool,
}

#[derive(Debug)]
enum Command {
    SetLocalPort(NonZeroU16),
    Stop,
}

/// A UDP port mapping on the default gateway, kept alive by a thread of its
/// own until dropped.
///
/// Nothing here panics or blocks for long: the gateway is asked in the
/// background, [`mapped`](PortMapper::mapped) reads the latest answer, and
/// drop waits at most 2 s for the gateway to confirm the deletion.
#[derive(Debug)]
pub struct PortMapper {
    state: Arc<(Mutex<Shared>, Condvar)>,
    commands: mpsc::UnboundedSender<Command>,
    thread: Option<JoinHandle<()>>,
}

impl PortMapper {
    /// Starts mapping UDP `local_port` of this host (all protocols, the
    /// gateway discovered from the default route).
    ///
    /// Errors only if the mapper's thread or runtime cannot start, or the
    /// port is 0; a gateway that maps nothing is not an error
    /// ([`mapped`](PortMapper::mapped) stays `None`).
    pub fn start(local_port: u16) -> std::io::Result<PortMapper> {
        PortMapper::start_with(local_port, Protocols::ALL)
    }

    /// [`start`](PortMapper::start), with only the given protocols (a
    /// network check that wants to know which ones the gateway speaks, or a
    /// test).
    pub fn start_with(local_port: u16, protocols: Protocols) -> std::io::Result<PortMapper> {
        let port = NonZeroU16::new(local_port).ok_or_else(|| {
            std::io::Error::new(std::io::ErrorKind::InvalidInput, "cannot map port 0")
        })?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let state = Arc::new((Mutex::new(Shared::default()), Condvar::new()));
        let (commands, rx) = mpsc::unbounded_channel();
        let shared = state.clone();
        let thread = std::thread::Builder::new()
            .name("sky-portmap".into())
            .spawn(move || {
                runtime.block_on(serve(port, protocols, rx, &shared));
                update(&shared, |s| {
                    s.mapped = None;
                    s.protocol = None;
                    s.stopped = true;
                });
            })?;
        Ok(PortMapper {
            state,
            commands,
            thread: Some(thread),
        })
    }

    /// Moves the mapping to another local port (the old one is deleted; the
    /// gateway is asked for the same external port again). Port 0 is
    /// ignored.
    pub fn set_local_port(&self, port: u16) {
        if let Some(port) = NonZeroU16::new(port) {
            let _ = self.commands.send(Command::SetLocalPort(port));
        }
    }

    /// The mapped external endpoint, once the gateway gave one (`None` while
    /// there is none: not yet, refused, or being moved).
    pub fn mapped(&self) -> Option<SocketAddrV4> {
        self.lock().mapped
    }

    /// Which protocol gave the mapping: `"upnp"`, `"nat-pmp"` or `"pcp"`
    /// (`None` while there is no mapping).
    pub fn protocol(&self) -> Option<&'static str> {
        let s = self.lock();
        s.mapped.and(s.protocol)
    }

    /// Waits up to `timeout` for a mapping and returns it; returns `None`
    /// at once when the gateway was found to speak none of the protocols
    /// (or the mapper stopped), else when the time is up.
    pub fn wait_mapped(&self, timeout: Duration) -> Option<SocketAddrV4> {
        let deadline = Instant::now() + timeout;
        let (lock, cond) = &*self.state;
        let mut s = lock.lock().unwrap_or_else(PoisonError::into_inner);
        loop {
            if s.mapped.is_some() || s.hopeless || s.stopped {
                return s.mapped;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            s = cond
                .wait_timeout(s, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Shared> {
        self.state.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Drop for PortMapper {
    /// Deletes the mapping (waits up to 2 s for the gateway) and stops the
    /// thread.
    fn drop(&mut self) {
        let _ = self.commands.send(Command::Stop);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn update(state: &(Mutex<Shared>, Condvar), f: impl FnOnce(&mut Shared)) {
    let (lock, cond) = state;
    f(&mut lock.lock().unwrap_or_else(PoisonError::into_inner));
    cond.notify_all();
}

/// The protocol portmapper 0.20 will use, given what its probe found: it
/// prefers PCP, then NAT-PMP, then UPnP among the available ones, and falls
/// back to UPnP (if enabled), then PCP, then NAT-PMP when none answered
/// (`Service::get_mapping`). Its client does not say which one a mapping
/// came from, so we follow the same rule.
fn chosen(probe: Option<&portmapper::ProbeOutput>, protocols: Protocols) -> Option<&'static str> {
    let found = probe.cloned().unwrap_or(portmapper::ProbeOutput {
        upnp: false,
        pcp: false,
        nat_pmp: false,
    });
    if found.pcp && protocols.pcp {
        Some("pcp")
    } else if found.nat_pmp && protocols.nat_pmp {
        Some("nat-pmp")
    } else if protocols.upnp {
        Some("upnp")
    } else if protocols.pcp {
        Some("pcp")
    } else if protocols.nat_pmp {
        Some("nat-pmp")
    } else {
        None
    }
}

/// The mapper's thread: probe the gateway, map the port, mirror the
/// mapping into `state` until told to stop, then delete it.
async fn serve(
    port: NonZeroU16,
    protocols: Protocols,
    mut commands: mpsc::UnboundedReceiver<Command>,
    state: &(Mutex<Shared>, Condvar),
) {
    let client = portmapper::Client::new(portmapper::Config {
        enable_upnp: protocols.upnp,
        enable_pcp: protocols.pcp,
        enable_nat_pmp: protocols.nat_pmp,
        protocol: portmapper::Protocol::Udp,
    });
    // Probe first, so that the mapping is asked of the best protocol the
    // gateway speaks (without a probe portmapper starts with UPnP).
    let (probe, failed) = match tokio::time::timeout(PROBE_TIMEOUT, client.probe()).await {
        Ok(Ok(Ok(output))) => (Some(output), false),
        // No gateway (no default route), or an IPv6 one: nothing to ask.
        Ok(Ok(Err(_))) => (None, true),
        _ => (None, false),
    };
    let hopeless = failed
        || probe.as_ref().is_some_and(|p| {
            !(p.upnp && protocols.upnp || p.pcp && protocols.pcp || p.nat_pmp && protocols.nat_pmp)
        });
    let protocol = chosen(probe.as_ref(), protocols);
    update(state, |s| {
        s.hopeless = hopeless;
        s.protocol = protocol;
    });
    let mut external = client.watch_external_address();
    client.update_local_port(port);
    loop {
        tokio::select! {
            changed = external.changed() => {
                if changed.is_err() {
                    break; // the service ended
                }
                let mapped = *external.borrow_and_update();
                update(state, |s| s.mapped = mapped);
            }
            command = commands.recv() => match command {
                Some(Command::SetLocalPort(port)) => {
                    client.update_local_port(port);
                }
                Some(Command::Stop) | None => break,
            }
        }
    }
    update(state, |s| s.mapped = None);
    // Deleting the mapping: the service handles its messages one at a
    // time, and deactivating awaits the gateway's answer before the next
    // one; the probe's answer after it therefore says the deletion is done.
    client.deactivate();
    let _ = tokio::time::timeout(RELEASE_TIMEOUT, client.probe()).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_protocol_follows_portmappers_preference() {
        let found = |upnp, nat_pmp, pcp| portmapper::ProbeOutput { upnp, pcp, nat_pmp };
        assert_eq!(
            chosen(Some(&found(true, true, true)), Protocols::ALL),
            Some("pcp")
        );
        assert_eq!(
            chosen(Some(&found(true, true, false)), Protocols::ALL),
            Some("nat-pmp")
        );
        assert_eq!(chosen(None, Protocols::ALL), Some("upnp"));
        let only_pmp = Protocols {
            upnp: false,
            nat_pmp: true,
            pcp: false,
        };
        assert_eq!(
            chosen(Some(&found(true, true, true)), only_pmp),
            Some("nat-pmp")
        );
        assert_eq!(chosen(None, only_pmp), Some("nat-pmp"));
    }

    #[test]
    fn port_zero_is_refused() {
        assert_eq!(
            PortMapper::start(0).unwrap_err().kind(),
            std::io::ErrorKind::InvalidInput
        );
    }
}
