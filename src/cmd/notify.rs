//! systemd's readiness and watchdog protocol (`sd_notify(3)`) for `sky node`,
//! spoken directly: one datagram per message to the Unix socket named by
//! `$NOTIFY_SOCKET` (a path, or `@name` in the abstract namespace). Outside
//! a `Type=notify` service the variable is unset and nothing is sent.
//!
//! `READY=1` goes out once [`Node::start`] has returned, that is once every
//! packet shard is up, and `sky node` has installed its SIGINT and SIGTERM
//! handlers (it calls [`supervise`] only then); `WATCHDOG=1` every half of `$WATCHDOG_USEC`, and only
//! while [`Node::shards_alive`]: a stuck or stopped shard lets the watchdog
//! run out, and systemd restarts the node (`deploy/sky.service`).

use std::io;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use sky_node::engine::{Node, STALL_AFTER, WAKE_EVERY};

/// Reports to the service manager until `stop` is set: ready now, the
/// watchdog while every shard lives, stopping at the end. Returns when
/// `stop` is set; the caller then shuts the node down.
pub(crate) fn supervise(node: &Node, stop: &AtomicBool) {
    let Some(manager) = Manager::from_env() else {
        while !stop.load(Ordering::Relaxed) {
            std::thread::sleep(WAKE_EVERY);
        }
        return;
    };
    manager.send(&format!(
        "READY=1\nSTATUS=serving on {} ({} engine, {} shards)",
        node.local_addr(),
        node.engine().label(),
        node.shards()
    ));
    let mut due = Instant::now();
    let mut alive = true;
    while !stop.load(Ordering::Relaxed) {
        if let Some(every) = manager.watchdog.map(|w| w / 2)
            && Instant::now() >= due
        {
            if node.shards_alive() {
                manager.send("WATCHDOG=1");
                due = Instant::now() + every;
                if !alive {
                    tracing::info!("every packet shard is awake again; feeding the watchdog");
                }
                alive = true;
            } else if alive {
                tracing::error!(
                    stalled_for_more_than = ?STALL_AFTER,
                    "a packet shard is stuck or has stopped; no longer feeding the watchdog"
                );
                alive = false;
            }
        }
        std::thread::sleep(WAKE_EVERY);
    }
    manager.send("STOPPING=1");
}

/// The service manager's notification socket, and the watchdog interval
/// it asked for.
struct Manager {
    socket: UnixDatagram,
    addr: SocketAddr,
    watchdog: Option<Duration>,
}

impl Manager {
    /// `None` when not run as a `Type=notify` service, or (logged) when the
    /// socket cannot be used.
    fn from_env() -> Option<Manager> {
        let name = std::env::var_os("NOTIFY_SOCKET")?;
        let addr = match notify_addr(name.as_encoded_bytes()) {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(notify_socket = ?name, error = %e, "cannot use NOTIFY_SOCKET; not notifying systemd");
                return None;
            }
        };
        let socket = match UnixDatagram::unbound() {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "cannot open a Unix socket; not notifying systemd");
                return None;
            }
        };
        Some(Manager {
            socket,
            addr,
            watchdog: watchdog_from_env(),
        })
    }

    /// One message; a failure is logged, never fatal (the watchdog, if
    /// any, then tells systemd).
    fn send(&self, message: &str) {
        if let Err(e) = self.socket.send_to_addr(message.as_bytes(), &self.addr) {
            tracing::warn!(error = %e, message, "cannot notify systemd");
        }
    }
}

/// `$NOTIFY_SOCKET`: an absolute path, or `@` and a name in the abstract
/// namespace.
fn notify_addr(name: &[u8]) -> io::Result<SocketAddr> {
    match name {
        [b'@', abstract_name @ ..] => SocketAddr::from_abstract_name(abstract_name),
        [b'/', ..] => SocketAddr::from_pathname(std::ffi::OsStr::from_bytes(name)),
        _ => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "neither an absolute path nor an @abstract name",
        )),
    }
}

/// `$WATCHDOG_USEC`, when set, positive, and meant for this process
/// (`$WATCHDOG_PID` absent or ours).
fn watchdog_from_env() -> Option<Duration> {
    if let Some(pid) = std::env::var_os("WATCHDOG_PID")
        && pid.to_str().and_then(|p| p.parse::<u32>().ok()) != Some(std::process::id())
    {
        return None;
    }
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    (usec > 0).then(|| Duration::from_micros(usec))
}
