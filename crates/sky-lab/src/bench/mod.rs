//! `sky bench`: a load generator for sky nodes (and, in `stun` mode, for
//! STUN servers), in its own process.
//!
//! It sends from many sockets (many source ports, as many users would) with
//! `sendmmsg` and reads with `recvmmsg`, keeps at most `window` requests in
//! flight per socket (closed loop) or paces them at `rate` per second (open
//! loop, still bounded by the window), and stops by itself after `duration`.
//! Before measuring it fetches a cookie per socket and registers the
//! population it will look up. Every answer is checked: a reply must have
//! the kind its request expects and its tag; anything else counts as
//! malformed. The report gives operations answered per second, loss,
//! round-trip percentiles, and bytes per operation (request, reply and
//! introduction separately).
//!
//! For the ceiling (`--serve-baseline`, see [`crate::baseline`]) the lookup's
//! `caller` field carries the target's endpoint in its first six bytes.

#![allow(clippy::disallowed_methods)] // a tool: it reads the clock

use std::net::SocketAddr;
use std::time::Duration;

use serde::Serialize;

mod generator;
mod report;
mod setup;
mod stun;

pub use report::{BenchError, Latency, Report};

use generator::Generator;
use sky_proto::wire::Token;

/// What each operation is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    Ping,
    Register,
    LookupOnline,
    LookupOffline,
    /// 50% lookup-online, 20% lookup-offline, 20% register, 10% ping.
    Mixed,
    /// RFC 8489 Binding requests, for a STUN server.
    Stun,
}

impl std::str::FromStr for Mode {
    type Err = String;
    fn from_str(s: &str) -> Result<Mode, String> {
        Ok(match s {
            "ping" => Mode::Ping,
            "register" => Mode::Register,
            "lookup-online" => Mode::LookupOnline,
            "lookup-offline" => Mode::LookupOffline,
            "mixed" => Mode::Mixed,
            "stun" => Mode::Stun,
            _ => {
                return Err(format!(
                    "unknown mode `{s}` (ping, register, lookup-online, lookup-offline, mixed, stun)"
                ));
            }
        })
    }
}

#[derive(Clone, Debug)]
pub struct BenchConfig {
    pub target: SocketAddr,
    pub mode: Mode,
    pub duration: Duration,
    /// Operations per second; `None` runs closed-loop as fast as answers come.
    pub rate: Option<u64>,
    /// Sockets (source ports).
    pub clients: usize,
    /// Addresses registered before measuring (and registered, in `register`).
    pub population: usize,
    /// Requests in flight per socket, at most.
    pub window: usize,
    /// A request unanswered after this long is lost.
    pub timeout: Duration,
    /// Draw a progress bar on stderr (when it is a terminal).
    pub progress: bool,
    /// The server's process id, to report the CPU it used while measuring.
    pub server_pid: Option<u32>,
    /// The population was registered by an earlier run against this node:
    /// skip the setup (for repeated runs against 10^7 entries). The node
    /// must keep the entries alive that long (`--keepalive-secs`).
    pub registered: bool,
}

impl Default for BenchConfig {
    fn default() -> Self {
        BenchConfig {
            target: "127.0.0.1:7700".parse().expect("literal"),
            mode: Mode::Ping,
            duration: Duration::from_secs(10),
            rate: None,
            clients: 32,
            population: 10_000,
            window: 32,
            timeout: Duration::from_secs(1),
            progress: true,
            server_pid: None,
            registered: false,
        }
    }
}

const BATCH: usize = 64;
const BUF: usize = 2048;
/// RTT histogram: 1 µs buckets up to 100 ms; slower answers land in the last.
const HISTOGRAM_US: usize = 100_000;
/// Longest idle wait between loop turns.
const IDLE_WAIT: Duration = Duration::from_millis(1);

/// The token of population member `i` (deterministic, so a run can be
/// repeated).
fn token(i: usize) -> Token {
    let mut t = [0u8; 16];
    t[..8].copy_from_slice(&(i as u64).to_le_bytes());
    t[8..].copy_from_slice(b"sky-bnch");
    Token(t)
}

/// Runs one benchmark.
pub fn run(cfg: BenchConfig) -> Result<Report, BenchError> {
    let (g, setup_s) = Generator::set_up(cfg)?;
    g.measure(setup_s)
}

#[cfg(test)]
#[path = "../tests/bench.rs"]
mod tests;
