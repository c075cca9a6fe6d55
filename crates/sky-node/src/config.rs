//! The node's configuration: defaults, then a TOML file, then `SKY_*`
//! environment variables, then command-line flags — each overriding the
//! one before. `deploy/sky.toml` documents every field.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use serde::Deserialize;

use crate::shard::ShardConfig;
use sky_proto::ring::RingConfig;
use sky_proto::wire;

/// Which packet engine runs the shards.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum EngineChoice {
    /// The faster of the two, measured at start-up (`engine::calibrate`);
    /// `mmsg` if no io_uring ring can be created here.
    #[default]
    Auto,
    /// io_uring: multishot `recvmsg` into provided buffers.
    Uring,
    /// `recvmmsg`/`sendmmsg`.
    Mmsg,
}

impl FromStr for EngineChoice {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(EngineChoice::Auto),
            "uring" => Ok(EngineChoice::Uring),
            "mmsg" => Ok(EngineChoice::Mmsg),
            other => Err(format!(
                "unknown engine `{other}` (expected auto, uring or mmsg)"
            )),
        }
    }
}

/// How the node writes its log lines (to stderr).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One human-readable line per event.
    #[default]
    Text,
    /// One JSON object per line, for a log shipper.
    Json,
}

impl FromStr for LogFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            other => Err(format!(
                "unknown log format `{other}` (expected text or json)"
            )),
        }
    }
}

/// Where `/metrics` is served, or nowhere.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MetricsAddr(pub Option<SocketAddr>);

impl FromStr for MetricsAddr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s == "off" {
            return Ok(MetricsAddr(None));
        }
        s.parse()
            .map(|a| MetricsAddr(Some(a)))
            .map_err(|_| format!("metrics: `{s}` is not HOST:PORT or `off`"))
    }
}

/// The whole node configuration, after merging.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    /// UDP address the sky protocol listens on.
    pub listen: SocketAddr,
    /// TCP address of `/metrics`; `None` serves no metrics.
    pub metrics: Option<SocketAddr>,
    /// Packet shards; `None` means one per core but one, at least one.
    pub shards: Option<usize>,
    pub engine: EngineChoice,
    /// Pin each shard to a CPU of its own, of those the process was given
    /// (the first is left for control and gossip).
    pub pin_cores: bool,
    /// Presence table capacity, in entries.
    pub capacity: usize,
    pub keepalive: Duration,
    pub intros_per_second: u8,
    /// Signature checks one source (IPv4 address, IPv6 /64) may spend per
    /// second on each shard: registrations that create or move an entry,
    /// and unregisters ([`crate::proof`]).
    pub checks_per_source: u16,
    /// UDP address of the gossip socket (membership among sky nodes).
    pub gossip: SocketAddr,
    /// Gossip addresses of sky nodes to join through; empty: a sky of one
    /// until another node names this one as its seed.
    pub seeds: Vec<SocketAddr>,
    /// How the ring chooses owners (replicas, operator prefixes,
    /// positions per IP); every node of a sky must agree.
    pub ring: RingConfig,
    /// How long entries a node no longer owns are kept after a ring
    /// change, for clients to re-register with their new owners.
    pub handoff_grace: Duration,
    /// The first of the NAT check service's two UDP ports (the second is
    /// the next one; `Some(0)`: two ephemeral ports); `None`: no check
    /// service.
    pub check: Option<u16>,
    /// The address other sky nodes and earth clients reach this node at,
    /// when it is not the listen address (a cloud instance behind 1:1 NAT
    /// listens on its private interface address): its service endpoint,
    /// on the ring and in members pages; gossip is advertised at the same
    /// IP with the gossip port. `None`: the listen address.
    pub advertise: Option<SocketAddr>,
    /// Presence entries one source IP, and one source prefix, may hold
    /// (`None`: 1% and 5% of the capacity, at least 64 and 256), and the
    /// prefix lengths that count as one source network.
    pub max_per_ip: Option<u32>,
    pub max_per_prefix: Option<u32>,
    pub source_prefix_v4: u8,
    pub source_prefix_v6: u8,
    /// Bytes of `SO_RCVBUF` and `SO_SNDBUF` asked for on each shard's
    /// socket; the kernel grants at most `net.core.rmem_max` /
    /// `wmem_max`, and the node logs what it got when that is less.
    pub socket_buffer: usize,
    pub log_format: LogFormat,
    /// Where the node's gossip identity key is kept (created if missing);
    /// `None`: a fresh key each start.
    pub node_key: Option<std::path::PathBuf>,
    /// A closed sky: the gossip identity keys of every node allowed in;
    /// `None`: any node that proves its endpoints.
    pub closed_sky: Option<std::collections::HashSet<[u8; 32]>>,
}

pub const DEFAULT_LISTEN: &str = "127.0.0.1:7700";
pub const DEFAULT_METRICS: &str = "127.0.0.1:9770";
/// The gossip port when none is configured, for the default listen port:
/// the listen port plus one (port 0, ephemeral, when the listen port is 0),
/// so that nodes on one IP with their own listen ports get their own
/// gossip ports too.
pub const DEFAULT_GOSSIP_PORT: u16 = 7701;
/// The NAT check service's first port when none is configured, for the
/// default listen port: the listen port plus two (the second is plus three;
/// ephemeral ports when the listen port is 0).
pub const DEFAULT_CHECK_PORT: u16 = 7702;
/// The socket buffer asked for by default: what `deploy/sysctl.d/60-sky.conf`
/// raises `net.core.rmem_max` and `wmem_max` to (32 MiB), so that a
/// shard's socket absorbs a burst of ~100k small datagrams while its
/// thread is busy.
pub const DEFAULT_SOCKET_BUFFER: usize = 32 << 20;
/// The smallest and largest `socket_buffer` accepted.
pub const SOCKET_BUFFER_RANGE: std::ops::RangeInclusive<usize> = 4096..=1 << 30;

/// `port + n`, or 0 (ephemeral) when `port` is 0 or that is past 65535.
fn next_port(port: u16, n: u16) -> u16 {
    match port {
        0 => 0,
        p => p.checked_add(n).unwrap_or(0),
    }
}

/// The default check port for a listen address: two ports on.
pub fn default_check(listen: SocketAddr) -> Option<u16> {
    Some(match next_port(listen.port(), 3) {
        0 => 0,
        _ => listen.port() + 2,
    })
}

/// The default gossip address for a listen address: its IP, the next port.
pub fn default_gossip(listen: SocketAddr) -> SocketAddr {
    SocketAddr::new(listen.ip(), next_port(listen.port(), 1))
}

impl Default for Config {
    fn default() -> Self {
        let listen = DEFAULT_LISTEN.parse().expect("valid default");
        let keepalive = Duration::from_secs(25);
        let ring = RingConfig::default();
        Config {
            listen,
            metrics: Some(DEFAULT_METRICS.parse().expect("valid default")),
            shards: None,
            engine: EngineChoice::Auto,
            pin_cores: true,
            capacity: 1_000_000,
            keepalive,
            intros_per_second: 5,
            checks_per_source: crate::proof::CHECKS_PER_SOURCE,
            gossip: default_gossip(listen),
            seeds: Vec::new(),
            ring,
            handoff_grace: 2 * keepalive,
            check: default_check(listen),
            advertise: None,
            max_per_ip: None,
            max_per_prefix: None,
            source_prefix_v4: 24,
            source_prefix_v6: 56,
            socket_buffer: DEFAULT_SOCKET_BUFFER,
            log_format: LogFormat::Text,
            node_key: None,
            closed_sky: None,
        }
    }
}

/// The TOML file, every field optional. Unknown fields are errors, so a
/// typo does not silently leave a default in place.
#[derive(Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub listen: Option<String>,
    pub metrics: Option<String>,
    pub shards: Option<usize>,
    pub engine: Option<EngineChoice>,
    pub pin_cores: Option<bool>,
    pub capacity: Option<usize>,
    pub keepalive_secs: Option<u64>,
    pub intros_per_second: Option<u8>,
    pub checks_per_source: Option<u16>,
    pub gossip: Option<String>,
    pub seeds: Option<Vec<String>>,
    pub replicas: Option<u8>,
    pub prefix_v4: Option<u8>,
    pub prefix_v6: Option<u8>,
    pub positions: Option<u8>,
    pub handoff_grace_secs: Option<u64>,
    /// `PORT` or `off`.
    pub check: Option<String>,
    /// `IP` or `IP:PORT`.
    pub advertise: Option<String>,
    pub max_per_ip: Option<u32>,
    pub max_per_prefix: Option<u32>,
    pub source_prefix_v4: Option<u8>,
    pub source_prefix_v6: Option<u8>,
    /// Bytes.
    pub socket_buffer: Option<usize>,
    pub log_format: Option<LogFormat>,
    pub node_key: Option<String>,
    /// Hex public keys.
    pub closed_sky: Option<Vec<String>>,
}

/// A configuration that cannot run, and why.
#[derive(Debug)]
pub struct ConfigError(pub String);

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

impl FileConfig {
    pub fn load(path: &Path) -> Result<FileConfig, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError(format!("cannot read {}: {e}", path.display())))?;
        toml::from_str(&text).map_err(|e| ConfigError(format!("{}: {e}", path.display())))
    }

    /// Applies `other` on top of `self`: its set fields win.
    pub fn overlay(self, other: FileConfig) -> FileConfig {
        FileConfig {
            listen: other.listen.or(self.listen),
            metrics: other.metrics.or(self.metrics),
            shards: other.shards.or(self.shards),
            engine: other.engine.or(self.engine),
            pin_cores: other.pin_cores.or(self.pin_cores),
            capacity: other.capacity.or(self.capacity),
            keepalive_secs: other.keepalive_secs.or(self.keepalive_secs),
            intros_per_second: other.intros_per_second.or(self.intros_per_second),
            checks_per_source: other.checks_per_source.or(self.checks_per_source),
            gossip: other.gossip.or(self.gossip),
            seeds: other.seeds.or(self.seeds),
            replicas: other.replicas.or(self.replicas),
            prefix_v4: other.prefix_v4.or(self.prefix_v4),
            prefix_v6: other.prefix_v6.or(self.prefix_v6),
            positions: other.positions.or(self.positions),
            handoff_grace_secs: other.handoff_grace_secs.or(self.handoff_grace_secs),
            check: other.check.or(self.check),
            advertise: other.advertise.or(self.advertise),
            max_per_ip: other.max_per_ip.or(self.max_per_ip),
            max_per_prefix: other.max_per_prefix.or(self.max_per_prefix),
            source_prefix_v4: other.source_prefix_v4.or(self.source_prefix_v4),
            source_prefix_v6: other.source_prefix_v6.or(self.source_prefix_v6),
            socket_buffer: other.socket_buffer.or(self.socket_buffer),
            log_format: other.log_format.or(self.log_format),
            node_key: other.node_key.or(self.node_key),
            closed_sky: other.closed_sky.or(self.closed_sky),
        }
    }

    /// Fills in defaults and checks every value.
    pub fn resolve(self) -> Result<Config, ConfigError> {
        let d = Config::default();
        let listen = match self.listen {
            Some(s) => s
                .parse()
                .map_err(|_| ConfigError(format!("listen: `{s}` is not HOST:PORT")))?,
            None => d.listen,
        };
        let metrics = match self.metrics {
            Some(s) => s.parse::<MetricsAddr>().map_err(ConfigError)?.0,
            None => d.metrics,
        };
        let shards = match self.shards {
            Some(0) | None => None,
            Some(n) if n > 1024 => {
                return Err(ConfigError(format!("shards: {n} is more than 1024")));
            }
            Some(n) => Some(n),
        };
        let capacity = self.capacity.unwrap_or(d.capacity);
        if capacity == 0 {
            return Err(ConfigError("capacity: must be at least 1".into()));
        }
        let keepalive = match self.keepalive_secs {
            None => d.keepalive,
            Some(s @ 1..=3600) => Duration::from_secs(s),
            Some(s) => {
                return Err(ConfigError(format!(
                    "keepalive_secs: {s} is outside 1..=3600"
                )));
            }
        };
        let intros_per_second = match self.intros_per_second {
            None => d.intros_per_second,
            Some(0) => return Err(ConfigError("intros_per_second: must be at least 1".into())),
            Some(n) => n,
        };
        let checks_per_source = match self.checks_per_source {
            None => d.checks_per_source,
            Some(0) => return Err(ConfigError("checks_per_source: must be at least 1".into())),
            Some(n) => n,
        };
        let gossip = match self.gossip {
            Some(s) => s
                .parse()
                .map_err(|_| ConfigError(format!("gossip: `{s}` is not HOST:PORT")))?,
            None => default_gossip(listen),
        };
        if gossip == listen && gossip.port() != 0 {
            return Err(ConfigError(format!(
                "gossip: {gossip} is the listen address; gossip needs its own port"
            )));
        }
        let seeds = self
            .seeds
            .unwrap_or_default()
            .iter()
            .map(|s| {
                s.parse()
                    .map_err(|_| ConfigError(format!("seeds: `{s}` is not HOST:PORT")))
            })
            .collect::<Result<Vec<SocketAddr>, _>>()?;
        let ring = RingConfig {
            replicas: self.replicas.unwrap_or(d.ring.replicas),
            prefix_v4: self.prefix_v4.unwrap_or(d.ring.prefix_v4),
            prefix_v6: self.prefix_v6.unwrap_or(d.ring.prefix_v6),
            positions: self.positions.unwrap_or(d.ring.positions),
        };
        ring.validate().map_err(ConfigError)?;
        let handoff_grace = match self.handoff_grace_secs {
            None => 2 * keepalive,
            Some(s @ 0..=86_400) => Duration::from_secs(s),
            Some(s) => {
                return Err(ConfigError(format!(
                    "handoff_grace_secs: {s} is outside 0..=86400"
                )));
            }
        };
        let check = match self.check.as_deref() {
            None => default_check(listen),
            Some("off") => None,
            Some(s) => match s.parse::<u16>() {
                Ok(65535) => {
                    return Err(ConfigError(
                        "check: 65535 leaves no port for the second check socket".into(),
                    ));
                }
                Ok(p) => Some(p),
                Err(_) => return Err(ConfigError(format!("check: `{s}` is not a PORT or `off`"))),
            },
        };
        if let Some(p) = check.filter(|&p| p != 0)
            && [listen, gossip]
                .iter()
                .any(|a| a.ip() == listen.ip() && (a.port() == p || a.port() == p + 1))
        {
            return Err(ConfigError(format!(
                "check: ports {p} and {} must differ from the listen and gossip ports",
                p + 1
            )));
        }
        let advertise = match self.advertise.as_deref() {
            None => None,
            Some(s) => Some(parse_advertise(s, listen.port())?),
        };
        for (name, n) in [
            ("max_per_ip", self.max_per_ip),
            ("max_per_prefix", self.max_per_prefix),
        ] {
            if n == Some(0) {
                return Err(ConfigError(format!("{name}: must be at least 1")));
            }
        }
        let source_prefix_v4 = self.source_prefix_v4.unwrap_or(d.source_prefix_v4);
        let source_prefix_v6 = self.source_prefix_v6.unwrap_or(d.source_prefix_v6);
        if !(8..=32).contains(&source_prefix_v4) || !(16..=128).contains(&source_prefix_v6) {
            return Err(ConfigError(format!(
                "source prefixes: /{source_prefix_v4} and /{source_prefix_v6} are outside /8../32 and /16../128"
            )));
        }
        let socket_buffer = match self.socket_buffer {
            None => d.socket_buffer,
            Some(n) if SOCKET_BUFFER_RANGE.contains(&n) => n,
            Some(n) => {
                return Err(ConfigError(format!(
                    "socket_buffer: {n} is outside {}..={} bytes",
                    SOCKET_BUFFER_RANGE.start(),
                    SOCKET_BUFFER_RANGE.end()
                )));
            }
        };
        let closed_sky = match self.closed_sky {
            None => None,
            Some(keys) => Some(
                keys.iter()
                    .map(|k| {
                        wire::from_hex::<32>(k).ok_or_else(|| {
                            ConfigError(format!("closed_sky: `{k}` is not a 64-hex-digit key"))
                        })
                    })
                    .collect::<Result<std::collections::HashSet<_>, _>>()?,
            ),
        };
        Ok(Config {
            node_key: self.node_key.map(std::path::PathBuf::from),
            closed_sky,
            max_per_ip: self.max_per_ip,
            max_per_prefix: self.max_per_prefix,
            source_prefix_v4,
            source_prefix_v6,
            advertise,
            check,
            socket_buffer,
            log_format: self.log_format.unwrap_or(d.log_format),
            listen,
            metrics,
            shards,
            engine: self.engine.unwrap_or(d.engine),
            pin_cores: self.pin_cores.unwrap_or(d.pin_cores),
            capacity,
            keepalive,
            intros_per_second,
            checks_per_source,
            gossip,
            seeds,
            ring,
            handoff_grace,
        })
    }
}

/// `IP` (the listen port) or `IP:PORT`, IPv6 bare or in brackets; a
/// wildcard or a port 0 cannot be reached at.
fn parse_advertise(s: &str, listen_port: u16) -> Result<SocketAddr, ConfigError> {
    let addr = match s.parse::<SocketAddr>() {
        Ok(a) => a,
        Err(_) => match s
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<IpAddr>()
        {
            Ok(ip) => SocketAddr::new(ip, listen_port),
            Err(_) => {
                return Err(ConfigError(format!(
                    "advertise: `{s}` is not IP or IP:PORT"
                )));
            }
        },
    };
    if addr.ip().is_unspecified() || addr.port() == 0 {
        return Err(ConfigError(format!(
            "advertise: {addr} cannot be reached at; give the address clients and other nodes use"
        )));
    }
    Ok(addr)
}

impl Config {
    /// The endpoint this node serves at for everyone else, once the listen
    /// socket is bound at `bound`: the advertised one, or `bound`.
    pub fn service(&self, bound: SocketAddr) -> SocketAddr {
        self.advertise.unwrap_or(bound)
    }

    /// The gossip endpoint other nodes reach this one at, once the gossip
    /// socket is bound at `bound`: the advertised IP with the bound port.
    pub fn gossip_advertised(&self, bound: SocketAddr) -> SocketAddr {
        match self.advertise {
            Some(a) => SocketAddr::new(a.ip(), bound.port()),
            None => bound,
        }
    }

    /// How much of the presence table one source may hold.
    pub fn budgets(&self) -> crate::presence::Budgets {
        let d = crate::presence::Budgets::for_capacity(self.capacity);
        crate::presence::Budgets {
            per_ip: self.max_per_ip.unwrap_or(d.per_ip),
            per_prefix: self.max_per_prefix.unwrap_or(d.per_prefix),
            prefix_v4: self.source_prefix_v4,
            prefix_v6: self.source_prefix_v6,
        }
    }

    /// Shards to run on a machine with `cores` cores: the configured number,
    /// or one per core but one (left for gossip, metrics and control), at
    /// least one.
    pub fn shard_count(&self, cores: usize) -> usize {
        self.shards.unwrap_or(cores.saturating_sub(1).max(1))
    }

    pub fn shard_config(&self) -> ShardConfig {
        ShardConfig {
            keepalive: self.keepalive,
            intros_per_second: self.intros_per_second,
            intros_per_caller: (self.intros_per_second / 2).max(1),
            checks_per_source: self.checks_per_source,
            // An ephemeral port is told once bound (`Node::start`).
            check_port: self.check.unwrap_or(0),
        }
    }
}

#[cfg(test)]
#[path = "tests/config.rs"]
mod tests;
