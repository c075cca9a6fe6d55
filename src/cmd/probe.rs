//! `sky probe`: the operator's blackbox checks against a running node.

use std::io::Write;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Args, Subcommand};

use sky_node::probe::{self, AddrSecret, Client, Incoming, Lookup, ProbeError};
use sky_proto::wire::{self, VirtualAddr};

#[derive(Subcommand)]
pub(crate) enum ProbeCommand {
    /// Ping a node and print the round trip.
    Ping {
        #[command(flatten)]
        target: Target,
        /// Pings to send.
        #[arg(long, default_value_t = 1)]
        count: u32,
    },
    /// Register the address of a key (from --seed or --name), print it and
    /// the observed endpoint, and hold it (printing introductions) for
    /// --hold seconds. The registration and the unregister are signed.
    #[command(group = clap::ArgGroup::new("secret").required(true))]
    Register {
        #[command(flatten)]
        target: Target,
        /// The address key's 32-byte private seed, hex (64 digits).
        #[arg(long, value_name = "HEX", group = "secret")]
        seed: Option<String>,
        /// Derive the seed from a name instead: anyone who knows the name
        /// holds the address.
        #[arg(long, value_name = "NAME", group = "secret")]
        name: Option<String>,
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
    /// one member (service endpoint) per line, in ring order. With
    /// `--also`, compare other nodes' views: a ring version or ring
    /// settings that differ (a split sky, or nodes that refuse each other)
    /// are printed and exit 1.
    Members {
        #[command(flatten)]
        target: Target,
        /// Another node, HOST:PORT, whose view must be the same; repeat it.
        #[arg(long, value_name = "HOST:PORT")]
        also: Vec<String>,
    },
}

#[derive(Args)]
pub(crate) struct Target {
    /// The node, HOST:PORT.
    #[arg(long, value_name = "HOST:PORT", default_value = sky_node::config::DEFAULT_LISTEN)]
    sky: String,
    /// Seconds to wait for each answer.
    #[arg(long, default_value_t = 2.0)]
    timeout: f64,
}

/// A members view as one line: version, size, settings.
fn view_line(view: &probe::Members) -> String {
    format!(
        "ring {:08x} members {} replicas {} prefix_v4 /{} prefix_v6 /{} positions {}",
        view.version,
        view.members.len(),
        view.config.replicas,
        view.config.prefix_v4,
        view.config.prefix_v6,
        view.config.positions,
    )
}

/// Exit codes: 0 success, 1 negative answer (offline), 2 no answer or a
/// usage error.
pub(crate) fn main(cmd: ProbeCommand) -> ExitCode {
    let target = match &cmd {
        ProbeCommand::Ping { target, .. }
        | ProbeCommand::Register { target, .. }
        | ProbeCommand::Lookup { target, .. }
        | ProbeCommand::Members { target, .. } => target,
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
        ProbeCommand::Members { also, .. } => match client.members() {
            Ok(view) => {
                println!("{}", view_line(&view));
                for m in &view.members {
                    println!("member {m}");
                }
                let mut split = false;
                for other in &also {
                    let node = match probe::resolve(other) {
                        Ok(a) => a,
                        Err(e) => return fail(format!("cannot resolve {other}: {e}")),
                    };
                    let theirs = match Client::new(node, timeout) {
                        Ok(mut c) => match c.members() {
                            Ok(v) => v,
                            Err(e) => return fail(format!("{node}: {e}")),
                        },
                        Err(e) => return fail(format!("cannot open a socket: {e}")),
                    };
                    let same = theirs.version == view.version && theirs.config == view.config;
                    println!(
                        "{} {node}: {}",
                        if same { "same" } else { "differs" },
                        view_line(&theirs)
                    );
                    split |= !same;
                }
                if split {
                    eprintln!(
                        "sky probe: the views differ: a sky split, or nodes with other ring \
                         settings (replicas, prefixes, positions) that refuse each other"
                    );
                    return ExitCode::from(1);
                }
                ExitCode::SUCCESS
            }
            Err(e) => no_answer(e),
        },
        ProbeCommand::Register {
            seed,
            name,
            hold,
            metered,
            ..
        } => {
            let secret = match (seed, name) {
                (Some(seed), _) => match wire::from_hex::<32>(&seed) {
                    Some(seed) => AddrSecret::from_seed(seed),
                    None => return fail("--seed must be 64 hex digits".into()),
                },
                (None, Some(name)) => AddrSecret::from_name(&name),
                (None, None) => return fail("give --seed or --name".into()),
            };
            println!("address {}", secret.address().to_hex());
            let reg = match client.register(&secret, metered) {
                Ok(r) => r,
                Err(e) => return no_answer(e),
            };
            println!("registered {}", reg.observed);
            let _ = std::io::stdout().flush();
            hold_registration(
                &mut client,
                &secret,
                metered,
                reg,
                Duration::from_secs(hold),
            )
        }
    }
}

/// Keeps a registration alive for `hold`, printing what arrives.
fn hold_registration(
    client: &mut Client,
    secret: &AddrSecret,
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
                if let Err(e) = client.register(secret, metered) {
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
        let _ = client.unregister(secret);
    }
    ExitCode::SUCCESS
}
