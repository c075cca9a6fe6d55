//! The `sky` command: `sky node` runs a node, `sky probe` checks one.

#![allow(clippy::disallowed_methods)] // the binary drives the engine and tools

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Args, Parser, Subcommand};

use sky::config::{Config, ConfigError, EngineChoice, FileConfig};
use sky::earth::client::{Config as EarthConfig, Event as EarthEvent, Overlap};
use sky::earth::driver::Driver;
use sky::engine::Node;
use sky::probe::{self, Client, Incoming, Lookup, ProbeError};
use sky::wire::{self, Token, VirtualAddr};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "sky",
    version,
    about = "Sky: a rendezvous appliance for earth nodes behind NATs"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a sky node (defaults: 127.0.0.1:7700/udp, gossip on 127.0.0.1:7701/udp,
    /// metrics on 127.0.0.1:9770).
    Node(NodeArgs),
    /// Blackbox checks against a running node.
    #[command(subcommand)]
    Probe(ProbeCommand),
    /// Load generator (and, with --serve-baseline, the no-logic ceiling).
    Bench(BenchArgs),
    /// The earth client: identity, invites, friends, staying online,
    /// lookups, sending, address reset.
    Earth(EarthArgs),
    /// Simulators (deterministic, offline).
    #[command(subcommand)]
    Sim(sky::sim::SimCommand),
}

#[derive(Args)]
struct EarthArgs {
    /// State directory (default: $XDG_DATA_HOME/sky or ~/.local/share/sky),
    /// created owner-only.
    #[arg(long, global = true, value_name = "DIR", env = "SKY_EARTH_STATE")]
    state: Option<PathBuf>,
    #[command(subcommand)]
    command: EarthCommand,
}

#[derive(Subcommand)]
enum EarthCommand {
    /// Create a new identity (refuses to overwrite one).
    Init {
        /// Epoch length R, in hours.
        #[arg(long, default_value_t = 24)]
        epoch_hours: u64,
    },
    /// Print an invite for a friend (it carries this epoch's chain key).
    Invite,
    /// Add a friend from the invite they gave you.
    AddFriend { name: String, invite: String },
    /// Show the identity, the current address and epoch, and the friends.
    Status,
    /// Stay registered under the current address (moving to the next at
    /// each epoch), print the observed endpoint and every introduction.
    Online {
        /// A sky node to bootstrap from, HOST:PORT; repeat it to give
        /// more, tried in order until one answers.
        #[arg(long, value_name = "HOST:PORT", required = true)]
        sky: Vec<String>,
        /// Flag the registration as metered.
        #[arg(long)]
        metered: bool,
        /// Stop after this many seconds (default: on SIGINT/SIGTERM).
        #[arg(long)]
        hold: Option<u64>,
        /// Seconds between attempts to send a pending address reset.
        #[arg(long, default_value_t = 60)]
        reset_retry: u64,
        /// Also keep the previous epoch's address registered during the
        /// first hour of an epoch (linkable by the sky: docs/PRIVACY.md).
        #[arg(long)]
        dual: bool,
        /// Cover traffic: random registrations, on average every this many
        /// minutes.
        #[arg(long, value_name = "MINUTES")]
        cover: Option<u64>,
    },
    /// Remove a friend and reset the address: a fresh chain key, sent to
    /// every remaining friend (by `online`) until each acknowledges it.
    RemoveFriend { name: String },
    /// Connect to a friend (lookup, hole punching, handshake) and deliver
    /// one message; prints the round trip. The friend must be `online`.
    Send {
        name: String,
        text: String,
        /// A sky node to bootstrap from, HOST:PORT; repeat it to give
        /// more, tried in order until one answers.
        #[arg(long, value_name = "HOST:PORT", required = true)]
        sky: Vec<String>,
    },
    /// Look a friend up: `online <ip:port>` (exit 0) or `offline` (exit 1).
    Lookup {
        name: String,
        /// A sky node to bootstrap from, HOST:PORT; repeat it to give
        /// more, tried in order until one answers.
        #[arg(long, value_name = "HOST:PORT", required = true)]
        sky: Vec<String>,
    },
}

#[derive(Args)]
struct BenchArgs {
    /// The node (or STUN server) to load, HOST:PORT.
    #[arg(long, value_name = "HOST:PORT", default_value = sky::config::DEFAULT_LISTEN)]
    sky: String,
    /// ping, register, lookup-online, lookup-offline, mixed or stun.
    #[arg(long, default_value = "lookup-online")]
    mode: sky::bench::Mode,
    /// Seconds to measure.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Operations per second (default: as fast as answers come).
    #[arg(long)]
    rate: Option<u64>,
    /// Client sockets (source ports).
    #[arg(long, default_value_t = 32)]
    clients: usize,
    /// Addresses registered before measuring.
    #[arg(long, default_value_t = 10_000)]
    population: usize,
    /// Requests in flight per socket.
    #[arg(long, default_value_t = 32)]
    window: usize,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
    /// Pin the generator to this core.
    #[arg(long)]
    pin: Option<usize>,
    /// The server's process id: report the CPU it used while measuring.
    #[arg(long, value_name = "PID")]
    server_pid: Option<u32>,
    /// The population is already registered (by an earlier run): skip setup.
    #[arg(long)]
    registered: bool,
    /// Serve the no-logic baseline on --listen instead of generating load.
    #[arg(long)]
    serve_baseline: bool,
    /// Baseline: UDP address.
    #[arg(long, default_value = "127.0.0.1:7799")]
    listen: String,
    /// Baseline: packet shards (0: one per core but one).
    #[arg(long, default_value_t = 0)]
    shards: usize,
    /// Baseline: packet engine.
    #[arg(long, default_value = "auto")]
    engine: EngineChoice,
}

/// Flags override `SKY_*` environment variables, which override the file.
#[derive(Args)]
struct NodeArgs {
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
    /// Pin shards to cores.
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
    /// UDP address for gossip with other sky nodes [default: the listen IP,
    /// port 7701; port 0 when the listen port is 0].
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
    /// TOML configuration file (see deploy/sky.toml).
    #[arg(long, env = "SKY_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    /// Validate FILE (merged with environment and flags) and exit.
    #[arg(long, value_name = "FILE", conflicts_with = "config")]
    check_config: Option<PathBuf>,
}

#[derive(Subcommand)]
enum ProbeCommand {
    /// Ping a node and print the round trip.
    Ping {
        #[command(flatten)]
        target: Target,
        /// Pings to send.
        #[arg(long, default_value_t = 1)]
        count: u32,
    },
    /// Register a token's address, print it and the observed endpoint, and
    /// hold it (printing introductions) for --hold seconds.
    Register {
        #[command(flatten)]
        target: Target,
        /// 16-byte registration token, hex.
        #[arg(long, value_name = "HEX")]
        token: String,
        /// Seconds to stay registered, sending keepalives.
        #[arg(long, default_value_t = 0)]
        hold: u64,
        /// Flag the registration as metered.
        #[arg(long)]
        metered: bool,
    },
    /// Look an address up: `online <ip:port>` (exit 0) or `offline` (exit 1).
    Lookup {
        #[command(flatten)]
        target: Target,
        /// 16-byte virtual address, hex.
        #[arg(long, value_name = "HEX")]
        address: String,
        /// The caller's own virtual address, passed on in the introduction.
        #[arg(long = "as", value_name = "HEX")]
        caller: Option<String>,
    },
    /// Print the node's view of the sky: ring version and settings, then
    /// one member (service endpoint) per line, in ring order.
    Members {
        #[command(flatten)]
        target: Target,
    },
}

#[derive(Args)]
struct Target {
    /// The node, HOST:PORT.
    #[arg(long, value_name = "HOST:PORT", default_value = sky::config::DEFAULT_LISTEN)]
    sky: String,
    /// Seconds to wait for each answer.
    #[arg(long, default_value_t = 2.0)]
    timeout: f64,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("SKY_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    match cli.command {
        Command::Node(args) => node(args),
        Command::Probe(cmd) => probe_main(cmd),
        Command::Bench(args) => bench_main(args),
        Command::Earth(args) => earth_main(args),
        Command::Sim(cmd) => match sky::sim::run(cmd) {
            Ok(report) => {
                print!("{report}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("sky sim: {e}");
                ExitCode::from(2)
            }
        },
    }
}

fn earth_fail(msg: String) -> ExitCode {
    eprintln!("sky earth: {msg}");
    ExitCode::from(2)
}

/// An earth core on its own socket, bootstrapping from the sky nodes at
/// `sky_addrs` (in order).
fn earth_driver(
    sky_addrs: &[String],
    state: sky::earth::state::State,
    configure: impl FnOnce(&mut EarthConfig),
) -> Result<Driver, ExitCode> {
    let mut bootstrap = Vec::with_capacity(sky_addrs.len());
    for addr in sky_addrs {
        let node =
            probe::resolve(addr).map_err(|e| earth_fail(format!("cannot resolve {addr}: {e}")))?;
        bootstrap.push(node);
    }
    let mut config = EarthConfig::new(bootstrap);
    configure(&mut config);
    Driver::bind(config, state).map_err(|e| earth_fail(format!("cannot open a socket: {e}")))
}

/// A stop flag set by SIGINT and SIGTERM.
fn stop_on_signals() -> std::sync::Arc<std::sync::atomic::AtomicBool> {
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        let _ = signal_hook::flag::register(signal, stop.clone());
    }
    stop
}

/// `sky earth online`: stays registered (moving to each new epoch's
/// address), prints the observed endpoint, introductions and messages,
/// answers handshakes and reset notices, and sends pending resets.
fn earth_online(
    state: sky::earth::state::State,
    dir: &std::path::Path,
    sky_addrs: &[String],
    configure: impl FnOnce(&mut EarthConfig),
    hold: Option<Duration>,
) -> ExitCode {
    let sky_list = sky_addrs.join(", ");
    let mut driver = match earth_driver(sky_addrs, state, configure) {
        Ok(d) => d,
        Err(code) => return code,
    };
    let stop = stop_on_signals();
    driver.earth.go_online(earth_now());
    // Lines printed once the state they report is on disk.
    let mut after_save: Vec<String> = Vec::new();
    let result = driver.run(hold.map(|h| Instant::now() + h), &stop, |earth, event| {
        match event {
            EarthEvent::Registered { address, observed } => {
                println!("address {}", address.to_hex());
                println!("registered {observed}");
            }
            EarthEvent::SkySilent => eprintln!("sky earth: no answer from {sky_list}; retrying"),
            EarthEvent::Sky { version, nodes } => {
                eprintln!("sky earth: the sky has {nodes} nodes (ring version {version:08x})")
            }
            EarthEvent::Introduced {
                friend,
                caller,
                endpoint,
            } => println!(
                "introduced {} {endpoint}",
                friend.unwrap_or_else(|| caller.to_hex())
            ),
            EarthEvent::ForgedIntroduction => {
                eprintln!("sky earth: rejected a forged introduction")
            }
            EarthEvent::HandshakeRefused { from, error } => {
                eprintln!("sky earth: refused a handshake from {from}: {error}")
            }
            EarthEvent::Message { friend, payload } => {
                println!("message {friend} {}", String::from_utf8_lossy(&payload))
            }
            EarthEvent::ResetAdopted { friend } => after_save.push(format!("reset {friend}")),
            EarthEvent::ResetAcknowledged { friend } => {
                after_save.push(format!("reset acknowledged by {friend}"))
            }
            EarthEvent::SaveState => match earth.state().save(dir) {
                Ok(()) => {
                    earth.saved();
                    for line in after_save.drain(..) {
                        println!("{line}");
                    }
                }
                // Not acknowledged: the friend sends it again.
                Err(e) => eprintln!("sky earth: cannot save the state: {e}"),
            },
            EarthEvent::Failed { friend, why, .. } => {
                eprintln!("sky earth: cannot reach {friend}: {why}")
            }
            EarthEvent::Connected { .. }
            | EarthEvent::Delivered { .. }
            | EarthEvent::Lookup { .. } => {}
        }
        let _ = std::io::stdout().flush();
        std::ops::ControlFlow::Continue(())
    });
    driver.earth.go_offline();
    driver.flush();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => earth_fail(e.to_string()),
    }
}

fn earth_now() -> Duration {
    sky::earth::driver::unix_now()
}

/// `sky earth send`: connects (lookup, punching, handshake) and delivers
/// one message; bounded by the core's time limit.
fn earth_send(
    state: sky::earth::state::State,
    name: &str,
    text: &str,
    sky_addrs: &[String],
) -> ExitCode {
    if text.len() > 1000 {
        return earth_fail("a message is at most 1000 bytes".into());
    }
    if !state.friends.0.contains_key(name) {
        return earth_fail(format!("no friend named `{name}`"));
    }
    let mut driver = match earth_driver(sky_addrs, state, |_| {}) {
        Ok(d) => d,
        Err(code) => return code,
    };
    let id = driver.earth.send(earth_now(), name, text.as_bytes());
    let mut outcome = None;
    let stop = stop_on_signals();
    let result = driver.run(None, &stop, |_, event| match event {
        EarthEvent::Delivered {
            id: i,
            peer,
            elapsed,
            sent,
            ..
        } if i == id => {
            println!(
                "delivered to {name} at {peer} in {:.1} ms ({sent} datagrams sent)",
                elapsed.as_secs_f64() * 1e3
            );
            outcome = Some(ExitCode::SUCCESS);
            std::ops::ControlFlow::Break(())
        }
        EarthEvent::Failed { id: i, why, .. } if i == id => {
            outcome = Some(match why {
                sky::earth::client::Failure::Offline => {
                    println!("offline");
                    ExitCode::from(1)
                }
                why => earth_fail(format!("cannot reach {name}: {why}")),
            });
            std::ops::ControlFlow::Break(())
        }
        _ => std::ops::ControlFlow::Continue(()),
    });
    earth_outcome(result, outcome)
}

/// The exit of a one-shot earth command: its outcome, or why the driver
/// stopped without one.
fn earth_outcome(result: std::io::Result<()>, outcome: Option<ExitCode>) -> ExitCode {
    match (result, outcome) {
        (Err(e), _) => earth_fail(e.to_string()),
        (Ok(()), Some(code)) => code,
        (Ok(()), None) => earth_fail("interrupted".into()),
    }
}

/// `sky earth lookup`: under each address the friend may have now (SPEC §2:
/// the neighbouring epoch too, within H of a boundary).
fn earth_lookup(state: sky::earth::state::State, name: &str, sky_addrs: &[String]) -> ExitCode {
    if !state.friends.0.contains_key(name) {
        return earth_fail(format!("no friend named `{name}`"));
    }
    let mut driver = match earth_driver(sky_addrs, state, |_| {}) {
        Ok(d) => d,
        Err(code) => return code,
    };
    driver.earth.lookup(earth_now(), name);
    let mut outcome = None;
    let stop = stop_on_signals();
    let result = driver.run(None, &stop, |_, event| match event {
        EarthEvent::Lookup { result, .. } => {
            outcome = Some(match result {
                Ok((endpoint, flags)) => {
                    let metered = if flags.metered() { " metered" } else { "" };
                    println!("online {endpoint}{metered}");
                    ExitCode::SUCCESS
                }
                Err(sky::earth::client::Failure::Offline) => {
                    println!("offline");
                    ExitCode::from(1)
                }
                Err(why) => earth_fail(format!("{}: {why}", sky_addrs.join(", "))),
            });
            std::ops::ControlFlow::Break(())
        }
        _ => std::ops::ControlFlow::Continue(()),
    });
    earth_outcome(result, outcome)
}

fn earth_main(args: EarthArgs) -> ExitCode {
    use sky::earth::{identity::Friends, identity::Identity, invite::Invite, state::State};
    let fail = |msg: String| {
        eprintln!("sky earth: {msg}");
        ExitCode::from(2)
    };
    let dir = match args.state.or_else(|| {
        std::env::var_os("XDG_DATA_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share")))
            .map(|d| d.join("sky"))
    }) {
        Some(d) => d,
        None => return fail("no --state DIR and no HOME to put the state in".into()),
    };
    let now = match std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
        Ok(t) => t,
        Err(_) => return fail("the system clock is before 1970".into()),
    };
    if let EarthCommand::Init { epoch_hours } = args.command {
        if !(1..=24 * 365).contains(&epoch_hours) {
            return fail("--epoch-hours must be between 1 and 8760".into());
        }
        match State::load(&dir) {
            Err(sky::earth::state::StateError::Missing(_)) => {}
            Ok(_) => return fail(format!("{} already holds an identity", dir.display())),
            Err(e) => return fail(e.to_string()),
        }
        let mut random = [0u8; 64];
        for half in random.chunks_mut(32) {
            match sky::engine::sys::random_secret() {
                Ok(r) => half.copy_from_slice(&r),
                Err(e) => return fail(format!("no randomness: {e}")),
            }
        }
        let length = Duration::from_secs(epoch_hours * 3600);
        let state = State {
            identity: Identity::generate(random, length, now),
            friends: Friends::default(),
            pending_resets: Default::default(),
        };
        if let Err(e) = state.save(&dir) {
            return fail(e.to_string());
        }
        println!("initialized {}", dir.display());
        return ExitCode::SUCCESS;
    }
    let mut state = match State::load(&dir) {
        Ok(s) => s,
        Err(e) => return fail(e.to_string()),
    };
    match args.command {
        EarthCommand::Init { .. } => unreachable!("handled above"),
        EarthCommand::Invite => println!("{}", state.identity.invite(now).encode()),
        EarthCommand::AddFriend { name, invite } => {
            let invite = match Invite::decode(&invite) {
                Ok(i) => i,
                Err(e) => return fail(e.to_string()),
            };
            if let Err(e) = state.friends.add(&name, invite.into()) {
                return fail(e.to_string());
            }
            if let Err(e) = state.save(&dir) {
                return fail(e.to_string());
            }
            println!("added {name}");
        }
        EarthCommand::Online {
            sky,
            metered,
            hold,
            reset_retry,
            dual,
            cover,
        } => {
            let hold = hold.map(Duration::from_secs);
            let configure = |c: &mut EarthConfig| {
                c.metered = metered;
                c.reset_retry = Duration::from_secs(reset_retry.max(1));
                c.overlap = if dual {
                    Overlap::Dual
                } else {
                    Overlap::LookupSide
                };
                c.cover = cover.map(|m| Duration::from_secs(m.max(1) * 60));
            };
            return earth_online(state, &dir, &sky, configure, hold);
        }
        EarthCommand::RemoveFriend { name } => {
            let key = match sky::engine::sys::random_secret() {
                Ok(k) => sky::earth::ratchet::ChainKey::from_bytes(k),
                Err(e) => return fail(format!("no randomness: {e}")),
            };
            if let Err(e) = state.reset_address(&name, key, now) {
                return fail(e.to_string());
            }
            if let Err(e) = state.save(&dir) {
                return fail(e.to_string());
            }
            println!(
                "removed {name}; new address pending for {} friends (sent by `sky earth online`)",
                state.pending_resets.len()
            );
        }
        EarthCommand::Lookup { name, sky } => return earth_lookup(state, &name, &sky),
        EarthCommand::Send { name, text, sky } => {
            return earth_send(state, &name, &text, &sky);
        }
        EarthCommand::Status => {
            let id = &mut state.identity;
            let epoch = id.schedule.epoch_at(now);
            let address = id
                .chain
                .address_at(epoch)
                .map_or("-".into(), |a| a.to_hex());
            println!(
                "epoch {} (every {} h)",
                epoch.0,
                id.schedule.length.as_secs() / 3600
            );
            println!("address {address}");
            println!("public key {}", wire::to_hex(&id.public_key()));
            for (name, friend) in &mut state.friends.0 {
                let e = friend.schedule.epoch_at(now);
                let a = friend
                    .chain
                    .address_at(e)
                    .map_or("-".into(), |a| a.to_hex());
                println!("friend {name} address {a}");
            }
            for name in &state.pending_resets {
                println!("reset pending {name}");
            }
        }
    }
    ExitCode::SUCCESS
}

fn bench_main(args: BenchArgs) -> ExitCode {
    let fail = |msg: String| {
        eprintln!("sky bench: {msg}");
        ExitCode::from(2)
    };
    if args.serve_baseline {
        let mut config = match (FileConfig {
            listen: Some(args.listen.clone()),
            metrics: Some("off".into()),
            shards: Some(args.shards),
            engine: Some(args.engine),
            ..FileConfig::default()
        })
        .resolve()
        {
            Ok(c) => c,
            Err(e) => return fail(e.to_string()),
        };
        // The baseline runs a (lonely) gossip thread like a node, on an
        // ephemeral port: it must not take a node's 7701 on this machine.
        config.gossip.set_port(0);
        let node = match Node::start_baseline(&config) {
            Ok(n) => n,
            Err(e) => return fail(e.to_string()),
        };
        eprintln!(
            "sky bench: baseline serving {} ({} engine, {} shards)",
            node.local_addr(),
            node.engine().label(),
            node.shards()
        );
        let stop = node.stop_flag();
        for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
            let _ = signal_hook::flag::register(signal, stop.clone());
        }
        return match node.wait() {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => fail(e.to_string()),
        };
    }
    let duration = match Duration::try_from_secs_f64(args.duration) {
        Ok(d) if !d.is_zero() && d <= Duration::from_secs(3600) => d,
        _ => return fail("--duration must be between 0 and 3600 seconds".into()),
    };
    let target = match probe::resolve(&args.sky) {
        Ok(a) => a,
        Err(e) => return fail(format!("cannot resolve {}: {e}", args.sky)),
    };
    if args.clients == 0 || args.window == 0 || args.population == 0 {
        return fail("--clients, --window and --population must be at least 1".into());
    }
    if let Some(core) = args.pin
        && let Err(e) = sky::engine::sys::pin_to_core(core)
    {
        return fail(format!("cannot pin to core {core}: {e}"));
    }
    let config = sky::bench::BenchConfig {
        target,
        mode: args.mode,
        duration,
        rate: args.rate,
        clients: args.clients,
        population: args.population,
        window: args.window,
        progress: !args.json,
        server_pid: args.server_pid,
        registered: args.registered,
        ..Default::default()
    };
    match sky::bench::run(config) {
        Ok(report) => {
            if args.json {
                println!(
                    "{}",
                    serde_json::to_string(&report).expect("serializable report")
                );
            } else {
                println!("{report}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => fail(e.to_string()),
    }
}

fn node(args: NodeArgs) -> ExitCode {
    let config = match merged_config(&args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("sky node: invalid configuration: {e}");
            return ExitCode::from(2);
        }
    };
    if let Some(path) = &args.check_config {
        println!(
            "{}: ok (listen {}, metrics {}, shards {}, engine {:?}, capacity {}, keepalive {}s, \
             gossip {}, seeds {}, replicas {}, prefixes /{} /{}, positions {}, handoff grace {}s)",
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
            config.handoff_grace.as_secs()
        );
        return ExitCode::SUCCESS;
    }
    let node = match Node::start(&config) {
        Ok(n) => n,
        Err(e) => {
            tracing::error!("{e}");
            eprintln!("sky node: {e}");
            return ExitCode::FAILURE;
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
    match node.wait() {
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
        gossip: args.gossip.clone(),
        seeds: (!args.seeds.is_empty()).then(|| args.seeds.clone()),
        replicas: args.replicas,
        prefix_v4: args.prefix_v4,
        prefix_v6: args.prefix_v6,
        positions: args.positions,
        handoff_grace_secs: args.handoff_grace,
    };
    file.overlay(overrides).resolve()
}

/// Exit codes: 0 success, 1 negative answer (offline), 2 no answer or a
/// usage error.
fn probe_main(cmd: ProbeCommand) -> ExitCode {
    let target = match &cmd {
        ProbeCommand::Ping { target, .. }
        | ProbeCommand::Register { target, .. }
        | ProbeCommand::Lookup { target, .. }
        | ProbeCommand::Members { target } => target,
    };
    let fail = |msg: String| {
        eprintln!("sky probe: {msg}");
        ExitCode::from(2)
    };
    let timeout = match Duration::try_from_secs_f64(target.timeout) {
        Ok(t) if !t.is_zero() => t,
        _ => {
            return fail(format!(
                "--timeout {} is not a positive number",
                target.timeout
            ));
        }
    };
    let sky = match probe::resolve(&target.sky) {
        Ok(a) => a,
        Err(e) => return fail(format!("cannot resolve {}: {e}", target.sky)),
    };
    let mut client = match Client::new(sky, timeout) {
        Ok(c) => c,
        Err(e) => return fail(format!("cannot open a socket: {e}")),
    };
    let no_answer = |e: ProbeError| match e {
        ProbeError::Timeout => fail(format!(
            "no answer from {sky} within {:.1}s",
            timeout.as_secs_f64()
        )),
        e => fail(format!("{sky}: {e}")),
    };
    match cmd {
        ProbeCommand::Ping { count, .. } => {
            for _ in 0..count.max(1) {
                match client.ping() {
                    Ok(rtt) => println!("pong from {sky} in {:.3} ms", rtt.as_secs_f64() * 1e3),
                    Err(e) => return no_answer(e),
                }
            }
            ExitCode::SUCCESS
        }
        ProbeCommand::Lookup {
            address, caller, ..
        } => {
            let Some(target) = wire::from_hex::<16>(&address).map(VirtualAddr) else {
                return fail("--address must be 32 hex digits".into());
            };
            let caller = match caller.map(|c| wire::from_hex::<16>(&c)) {
                None => VirtualAddr::default(),
                Some(Some(c)) => VirtualAddr(c),
                Some(None) => return fail("--as must be 32 hex digits".into()),
            };
            match client.lookup(target, caller) {
                Ok(Lookup::Online { endpoint, flags }) => {
                    let metered = if flags.metered() { " metered" } else { "" };
                    println!("online {endpoint}{metered}");
                    ExitCode::SUCCESS
                }
                Ok(Lookup::Offline) => {
                    println!("offline");
                    ExitCode::from(1)
                }
                Err(e) => no_answer(e),
            }
        }
        ProbeCommand::Members { .. } => match client.members() {
            Ok(view) => {
                println!(
                    "ring {:08x} members {} replicas {} prefix_v4 /{} prefix_v6 /{} positions {}",
                    view.version,
                    view.members.len(),
                    view.config.replicas,
                    view.config.prefix_v4,
                    view.config.prefix_v6,
                    view.config.positions,
                );
                for m in &view.members {
                    println!("member {m}");
                }
                ExitCode::SUCCESS
            }
            Err(e) => no_answer(e),
        },
        ProbeCommand::Register {
            token,
            hold,
            metered,
            ..
        } => {
            let Some(token) = wire::from_hex::<16>(&token).map(Token) else {
                return fail("--token must be 32 hex digits".into());
            };
            println!("address {}", VirtualAddr::from_token(&token).to_hex());
            let reg = match client.register(token, metered) {
                Ok(r) => r,
                Err(e) => return no_answer(e),
            };
            println!("registered {}", reg.observed);
            let _ = std::io::stdout().flush();
            hold_registration(&mut client, token, metered, reg, Duration::from_secs(hold))
        }
    }
}

/// Keeps a registration alive for `hold`, printing what arrives.
fn hold_registration(
    client: &mut Client,
    token: Token,
    metered: bool,
    reg: probe::Registration,
    hold: Duration,
) -> ExitCode {
    let end = Instant::now() + hold;
    let mut next_keepalive = Instant::now() + reg.keepalive;
    while Instant::now() < end {
        let wait = next_keepalive
            .min(end)
            .saturating_duration_since(Instant::now());
        match client.receive(wait) {
            Ok(Some(Incoming::Introduction { caller, endpoint })) => {
                println!("introduced {} {endpoint}", caller.to_hex());
            }
            Ok(Some(Incoming::Forged)) => eprintln!("sky probe: rejected a forged introduction"),
            Ok(Some(Incoming::NotRegistered)) => {
                if let Err(e) = client.register(token, metered) {
                    eprintln!("sky probe: re-registration failed: {e}");
                    return ExitCode::from(2);
                }
                println!("registered again");
            }
            Ok(None) => {}
            Err(e) => {
                eprintln!("sky probe: {e}");
                return ExitCode::from(2);
            }
        }
        let _ = std::io::stdout().flush();
        if Instant::now() >= next_keepalive {
            if let Err(e) = client.keepalive(reg.address) {
                eprintln!("sky probe: keepalive failed: {e}");
            }
            next_keepalive = Instant::now() + reg.keepalive;
        }
    }
    if !hold.is_zero() {
        let _ = client.unregister(token);
    }
    ExitCode::SUCCESS
}
