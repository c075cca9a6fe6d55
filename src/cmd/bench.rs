//! `sky bench`: the load generator, and with `--serve-baseline` the
//! no-logic ceiling it measures a node against.

use std::process::ExitCode;
use std::time::Duration;

use clap::Args;

use sky_node::config::{EngineChoice, FileConfig};
use sky_node::probe;

#[derive(Args)]
pub(crate) struct BenchArgs {
    /// The node (or STUN server) to load, HOST:PORT. A member of a sky of
    /// several is loaded with its sky: registrations at every owner,
    /// lookups at the first, pings round the members.
    #[arg(long, value_name = "HOST:PORT", default_value = sky_node::config::DEFAULT_LISTEN)]
    sky: String,
    /// ping, register, lookup-online, lookup-offline, mixed or stun.
    #[arg(long, default_value = "lookup-online")]
    mode: sky_lab::bench::Mode,
    /// Seconds to measure.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Operations per second (default: as fast as answers come).
    #[arg(long)]
    rate: Option<u64>,
    /// Client sockets (source ports), split among the threads.
    #[arg(long, default_value_t = 32)]
    clients: usize,
    /// Generator threads, each with its own sockets and its own slice of
    /// the population; they measure together and the report sums them.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Addresses registered before measuring.
    #[arg(long, default_value_t = 10_000)]
    population: usize,
    /// Requests in flight per socket.
    #[arg(long, default_value_t = 32)]
    window: usize,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
    /// Pin generator thread T to core PIN + T.
    #[arg(long)]
    pin: Option<usize>,
    /// The server's process id: report the CPU it used while measuring.
    #[arg(long, value_name = "PID")]
    server_pid: Option<u32>,
    /// The population is already registered (by an earlier run): skip setup.
    #[arg(long)]
    registered: bool,
    /// Look up the synthetic population a `--serve-node` node holds (no
    /// keys, no setup).
    #[arg(long)]
    synthetic: bool,
    /// Spread the client sockets over this many loopback IPs (127.0.0.1
    /// and up), as many callers would: each caller IP gets a bounded number
    /// of introductions per target and second.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..))]
    source_ips: u8,
    /// Serve the no-logic baseline on --listen instead of generating load.
    #[arg(long)]
    serve_baseline: bool,
    /// Serve a real node on --listen whose table holds the synthetic
    /// population 0..PREFILL, filled in process (for lookups at 10^7
    /// entries; `--synthetic` looks them up).
    #[arg(long, value_name = "PREFILL", conflicts_with = "serve_baseline")]
    serve_node: Option<usize>,
    /// Served node or baseline: UDP address.
    #[arg(long, default_value = "127.0.0.1:7799")]
    listen: String,
    /// Served node or baseline: packet shards (0: one per core but one).
    #[arg(long, default_value_t = 0)]
    shards: usize,
    /// Served node or baseline: packet engine.
    #[arg(long, default_value = "auto")]
    engine: EngineChoice,
}

pub(crate) fn main(args: BenchArgs) -> ExitCode {
    let fail = |msg: String| {
        eprintln!("sky bench: {msg}");
        ExitCode::from(2)
    };
    if args.serve_baseline || args.serve_node.is_some() {
        let prefill = args.serve_node.unwrap_or(0);
        // A prefilled node: room for its population and 1% more, every
        // entry admitted from one endpoint, lookups introduced as often as
        // a node allows (255 a second per target).
        let capacity = prefill + prefill / 100 + 1024;
        let Ok(budget) = u32::try_from(capacity) else {
            return fail("--serve-node: more entries than a per-source budget counts (u32)".into());
        };
        let file = match args.serve_node {
            Some(_) => FileConfig {
                capacity: Some(capacity),
                max_per_ip: Some(budget),
                max_per_prefix: Some(budget),
                intros_per_second: Some(u8::MAX),
                check: Some("0".into()),
                ..FileConfig::default()
            },
            None => FileConfig::default(),
        };
        let mut config = match (FileConfig {
            listen: Some(args.listen.clone()),
            metrics: Some("off".into()),
            shards: Some(args.shards),
            engine: Some(args.engine),
            ..file
        })
        .resolve()
        {
            Ok(c) => c,
            Err(e) => return fail(e.to_string()),
        };
        // The baseline runs a (lonely) gossip thread like a node, on an
        // ephemeral port: it must not take a node's 7701 on this machine.
        config.gossip.set_port(0);
        let (what, node) = match args.serve_node {
            Some(n) => (
                format!("a node of {n} entries"),
                sky_lab::bench::serve_prefilled(&config, n),
            ),
            None => (
                "baseline".into(),
                sky_lab::baseline::start(&config).map_err(|e| e.to_string()),
            ),
        };
        let node = match node {
            Ok(n) => n,
            Err(e) => return fail(e),
        };
        eprintln!(
            "sky bench: {what} serving {} ({} engine, {} shards)",
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
    if args.threads == 0 || args.threads > args.clients || args.threads > args.population {
        return fail("--threads must be at least 1 and at most --clients and --population".into());
    }
    let config = sky_lab::bench::BenchConfig {
        target,
        mode: args.mode,
        duration,
        rate: args.rate,
        clients: args.clients,
        threads: args.threads,
        pin: args.pin,
        population: args.population,
        window: args.window,
        progress: !args.json,
        server_pid: args.server_pid,
        registered: args.registered,
        synthetic: args.synthetic,
        source_ips: args.source_ips,
        ..Default::default()
    };
    match sky_lab::bench::run(config) {
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
