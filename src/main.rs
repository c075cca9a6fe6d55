//! The `sky` command: `sky node` runs a node, `sky probe` checks one.

#![allow(clippy::disallowed_methods)] // the binary drives the engine and tools

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use sky_node::config::LogFormat;

mod cmd;

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
    Node(Box<cmd::node::NodeArgs>),
    /// Blackbox checks against a running node.
    #[command(subcommand)]
    Probe(cmd::probe::ProbeCommand),
    /// Load generator (and, with --serve-baseline, the no-logic ceiling).
    Bench(cmd::bench::BenchArgs),
    /// The earth client: identity, invites, friends, staying online,
    /// lookups, sending, address reset.
    Earth(cmd::earth::EarthArgs),
    /// Simulators (deterministic, offline).
    #[command(subcommand)]
    Sim(sky_lab::sim::SimCommand),
}

/// Colour codes only for a person at a terminal: never into a file, a
/// pipe or journald, and never with `NO_COLOR` set (no-color.org).
fn colour() -> bool {
    use std::io::IsTerminal;
    std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

/// Logs to stderr, filtered by `SKY_LOG` (`info` by default): text lines,
/// or one JSON object per line (never with colour codes).
pub(crate) fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("SKY_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let fmt = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => fmt.with_ansi(colour()).init(),
        LogFormat::Json => fmt.json().flatten_event(true).with_ansi(false).init(),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The node logs in the format its configuration names, so it sets up
    // logging itself once that is merged.
    if !matches!(cli.command, Command::Node(_)) {
        init_logging(LogFormat::Text);
    }
    match cli.command {
        Command::Node(args) => cmd::node::main(*args),
        Command::Probe(c) => cmd::probe::main(c),
        Command::Bench(args) => cmd::bench::main(args),
        Command::Earth(args) => cmd::earth::main(args),
        Command::Sim(c) => cmd::sim::main(c),
    }
}
