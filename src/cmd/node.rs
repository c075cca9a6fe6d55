//! `sky node`: run a sky node until SIGINT or SIGTERM.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;

use sky_node::config::{Config, ConfigError, EngineChoice, FileConfig, LogFormat};
use sky_node::engine::{Node, StartError};

/// The exit status of a configuration the node cannot run with: the unit's
/// `RestartPreventExitStatus=` (deploy/sky.service), so that systemd does
/// not restart what would fail again.
const CONFIG_ERROR: u8 = 2;

/// Flags override `SKY_*` environment variables, which override the file.
#[derive(Args)]
pub(crate) struct NodeArgs {
    /// UDP address to serve the sky protocol on.
    #[arg(long, env = "SKY_LISTEN", value_name = "HOST:PORT")]
    listen: Option<String>,
    /// TCP address for /metrics, or `off`.
    #[arg(long, env = "SKY_METRICS", value_name = "HOST:PORT|off")]
    metrics: Option<String>,
    /// Packet shards (0: one per core but one).
    #[arg(long, env = "SKY_SHARDS")]
    shards: Option<usize>,
    /// Packet engine.
    #[arg(long, env = "SKY_ENGINE", value_name = "auto|uring|mmsg")]
    engine: Option<EngineChoice>,
    /// Pin each shard to a CPU of those the process was given (the first
    /// runs control and gossip).
    #[arg(long, env = "SKY_PIN_CORES", value_name = "true|false")]
    pin_cores: Option<bool>,
    /// Presence table capacity, in entries.
    #[arg(long, env = "SKY_CAPACITY")]
    capacity: Option<usize>,
    /// Keepalive interval told to clients, in seconds.
    #[arg(long, env = "SKY_KEEPALIVE_SECS")]
    keepalive_secs: Option<u64>,
    /// Introductions per target per second.
    #[arg(long, env = "SKY_INTROS_PER_SECOND")]
    intros_per_second: Option<u8>,
    /// Signature checks one source IP (IPv6: /64) may spend per second on
    /// each shard, for registrations that create or move an address and
    /// for unregisters [default: 64].
    #[arg(long, env = "SKY_CHECKS_PER_SOURCE")]
    checks_per_source: Option<u16>,
    /// UDP address for gossip with other sky nodes [default: the listen IP,
    /// the listen port plus one (7701); port 0 when the listen port is 0].
    #[arg(long, env = "SKY_GOSSIP", value_name = "HOST:PORT")]
    gossip: Option<String>,
    /// Gossip address of a sky node to join through; repeat for more
    /// (environment: comma-separated).
    #[arg(
        long = "seed",
        env = "SKY_SEEDS",
        value_name = "HOST:PORT",
        value_delimiter = ','
    )]
    seeds: Vec<String>,
    /// Owners per virtual address, 1..=8 [default: 2]; the same on every
    /// node of a sky.
    #[arg(long, env = "SKY_REPLICAS")]
    replicas: Option<u8>,
    /// IPv4 prefix length that counts as one operator on the ring
    /// [default: 24].
    #[arg(long, env = "SKY_PREFIX_V4")]
    prefix_v4: Option<u8>,
    /// IPv6 prefix length that counts as one operator on the ring
    /// [default: 48].
    #[arg(long, env = "SKY_PREFIX_V6")]
    prefix_v6: Option<u8>,
    /// Positions each IP takes on the ring, 1..=64 [default: 16]; the same
    /// on every node of a sky (docs/DHT.md).
    #[arg(long, env = "SKY_POSITIONS")]
    positions: Option<u8>,
    /// Seconds to keep entries this node no longer owns after a ring
    /// change [default: 2 × keepalive].
    #[arg(long = "handoff-grace", env = "SKY_HANDOFF_GRACE", value_name = "SECS")]
    handoff_grace: Option<u64>,
    /// First of the two UDP ports of the NAT check service (clients ask
    /// where they are seen from here, for `sky earth netcheck`), or `off`
    /// [default: the listen port plus two and three (7702, 7703); ephemeral
    /// when the listen port is 0].
    #[arg(long, env = "SKY_CHECK", value_name = "PORT|off")]
    check: Option<String>,
    /// The address other sky nodes and clients reach this node at, IP or
    /// IP:PORT, when it is not the listen address (a cloud instance
    /// behind 1:1 NAT listens on its private address) [default: the
    /// listen address; PORT defaults to the listen port].
    #[arg(long, env = "SKY_ADVERTISE", value_name = "IP[:PORT]")]
    advertise: Option<String>,
    /// Presence entries one source IP may hold [default: 1% of the
    /// capacity, at least 64].
    #[arg(long, env = "SKY_MAX_PER_IP", value_name = "N")]
    max_per_ip: Option<u32>,
    /// Presence entries one source prefix may hold [default: 5% of the
    /// capacity, at least 256].
    #[arg(long, env = "SKY_MAX_PER_PREFIX", value_name = "N")]
    max_per_prefix: Option<u32>,
    /// IPv4 prefix length that counts as one source network for
    /// --max-per-prefix [default: 24].
    #[arg(long, env = "SKY_SOURCE_PREFIX_V4")]
    source_prefix_v4: Option<u8>,
    /// IPv6 prefix length that counts as one source network for
    /// --max-per-prefix [default: 56].
    #[arg(long, env = "SKY_SOURCE_PREFIX_V6")]
    source_prefix_v6: Option<u8>,
    /// Bytes of receive and send buffer to ask for on each shard's socket
    /// [default: 33554432, what deploy/sysctl.d/60-sky.conf allows].
    #[arg(long, env = "SKY_SOCKET_BUFFER", value_name = "BYTES")]
    socket_buffer: Option<usize>,
    /// Log lines on stderr: text, or one JSON object per line [default: text].
    #[arg(long, env = "SKY_LOG_FORMAT", value_name = "text|json")]
    log_format: Option<LogFormat>,
    /// File holding this node's gossip identity key (created owner-only if
    /// missing) [default: a fresh key each start].
    #[arg(long, env = "SKY_NODE_KEY", value_name = "FILE")]
    node_key: Option<String>,
    /// A closed sky: the gossip identity key (hex) of a node allowed in;
    /// repeat it (environment: comma-separated) [default: any node that
    /// proves its endpoints].
    #[arg(
        long = "closed-sky",
        env = "SKY_CLOSED_SKY",
        value_name = "HEX",
        value_delimiter = ','
    )]
    closed_sky: Vec<String>,
    /// Print the public gossip identity key of --node-key (creating the
    /// file if missing) and exit: what the other nodes of a closed sky list.
    #[arg(long, requires = "node_key")]
    show_key: bool,
    /// TOML configuration file (see deploy/sky.toml).
    #[arg(long, env = "SKY_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    /// Validate FILE (merged with environment and flags) and exit.
    #[arg(long, value_name = "FILE", conflicts_with = "config")]
    check_config: Option<PathBuf>,
}

pub(crate) fn main(args: NodeArgs) -> ExitCode {
    let config = match merged_config(&args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!(
                "sky node: invalid configuration: {}",
                one_line(&e.to_string())
            );
            return ExitCode::from(CONFIG_ERROR);
        }
    };
    crate::init_logging(config.log_format);
    if let Some(path) = &args.check_config {
        println!(
            "{}: ok (listen {}, metrics {}, shards {}, engine {:?}, capacity {}, keepalive {}s, \
             gossip {}, seeds {}, replicas {}, prefixes /{} /{}, positions {}, handoff grace {}s, \
             socket buffer {} bytes, log format {:?})",
            path.display(),
            config.listen,
            config.metrics.map_or("off".into(), |a| a.to_string()),
            config.shards.map_or("auto".into(), |n| n.to_string()),
            config.engine,
            config.capacity,
            config.keepalive.as_secs(),
            config.gossip,
            config.seeds.len(),
            config.ring.replicas,
            config.ring.prefix_v4,
            config.ring.prefix_v6,
            config.ring.positions,
            config.handoff_grace.as_secs(),
            config.socket_buffer,
            config.log_format
        );
        return ExitCode::SUCCESS;
    }
    if args.show_key {
        let Some(path) = &config.node_key else {
            unreachable!("clap requires --node-key with --show-key")
        };
        return match sky_node::engine::sys::load_or_create_key(path) {
            Ok(secret) => {
                let public = sky_node::gossip::public_key_of(secret);
                println!("{}", sky_proto::wire::to_hex(&public));
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!(
                    "sky node: cannot read or create the node key {}: {e}",
                    path.display()
                );
                ExitCode::FAILURE
            }
        };
    }
    let node = match Node::start(&config) {
        Ok(n) => n,
        Err(e) => {
            // Once, where the logs go (journald, a file, the terminal).
            tracing::error!("sky node: {e}");
            // Asking for io_uring where there is none is the configuration's
            // fault: restarting would not help.
            return match e {
                StartError::Uring(_) => ExitCode::from(CONFIG_ERROR),
                _ => ExitCode::FAILURE,
            };
        }
    };
    let stop = node.stop_flag();
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        if let Err(e) = signal_hook::flag::register(signal, stop.clone()) {
            eprintln!("sky node: cannot handle signal {signal}: {e}");
            let _ = node.shutdown();
            return ExitCode::FAILURE;
        }
    }
    // Ready, in the log and to systemd (`READY=1`, in `supervise`), only
    // now: whoever acts on either may send SIGTERM at once, and it must
    // stop the node gracefully rather than kill it the default way.
    tracing::info!(
        listen = %node.local_addr(),
        advertise = %node.service_addr(),
        gossip = %node.gossip_addr(),
        metrics = %node.metrics_addr().map_or("off".into(), |a| a.to_string()),
        engine = node.engine().label(),
        shards = node.shards(),
        capacity = config.capacity,
        "sky node ready"
    );
    super::notify::supervise(&node, &stop);
    match node.shutdown() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sky node: stopped on an error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn merged_config(args: &NodeArgs) -> Result<Config, ConfigError> {
    let file = match args.check_config.as_ref().or(args.config.as_ref()) {
        Some(path) => FileConfig::load(path)?,
        None => FileConfig::default(),
    };
    let overrides = FileConfig {
        listen: args.listen.clone(),
        metrics: args.metrics.clone(),
        shards: args.shards,
        engine: args.engine,
        pin_cores: args.pin_cores,
        capacity: args.capacity,
        keepalive_secs: args.keepalive_secs,
        intros_per_second: args.intros_per_second,
        checks_per_source: args.checks_per_source,
        gossip: args.gossip.clone(),
        check: args.check.clone(),
        advertise: args.advertise.clone(),
        max_per_ip: args.max_per_ip,
        max_per_prefix: args.max_per_prefix,
        source_prefix_v4: args.source_prefix_v4,
        source_prefix_v6: args.source_prefix_v6,
        node_key: args.node_key.clone(),
        closed_sky: (!args.closed_sky.is_empty()).then(|| args.closed_sky.clone()),
        seeds: (!args.seeds.is_empty()).then(|| args.seeds.clone()),
        replicas: args.replicas,
        prefix_v4: args.prefix_v4,
        prefix_v6: args.prefix_v6,
        positions: args.positions,
        handoff_grace_secs: args.handoff_grace,
        socket_buffer: args.socket_buffer,
        log_format: args.log_format,
    };
    file.overlay(overrides).resolve()
}

/// An error as one log line: TOML's multi-line report (the source line and
/// a caret under it) becomes "…, column C: what is wrong".
fn one_line(error: &str) -> String {
    let is_snippet = |l: &str| {
        l.trim_start_matches(|c: char| c.is_ascii_digit() || c == ' ')
            .starts_with('|')
    };
    error
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !is_snippet(l))
        .collect::<Vec<_>>()
        .join(": ")
}
