//! `sky sim ring`: how evenly IP-hash placement spreads addresses over the
//! sky's nodes (SPEC §4). The table of the default run is in `docs/DHT.md`.
//!
//! # The model
//!
//! For each sky size `N` (`--nodes`, repeatable; default 10, 100, 1 000 and
//! 10 000) and each of `T` trials (`--trials`, 20), `N` nodes get distinct
//! public IPv4 addresses drawn uniformly at random, `--per-prefix` of them
//! in each /24 (default 1: every node its own operator's block; 4 models
//! operators that each run four nodes in one /24). The ring is the real
//! [`Ring`] (the node's BLAKE3 position, the `k` owners skipping shared
//! prefixes, `--replicas`, default 2). Addresses are uniform on the ring
//! (they are hash outputs), so a node's load is exactly the fraction of the
//! 2^64 ring positions it owns — computed from the ring's arcs, no sampling.
//!
//! The report gives, per `N`, over all trials: the mean share of the ring a
//! node is first owner of (always `1/N`) and of which it is one of the `k`
//! owners (`k/N` when every node has a distinct prefix), the largest share
//! seen, and that largest share over the mean — the factor by which the
//! busiest node is busier than average, which is what an operator must
//! provision for.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use crate::rng::Rng;
use sky_proto::ring::{Ring, RingConfig};

/// `sky sim ring` arguments.
#[derive(clap::Args, Clone, Debug)]
pub struct RingArgs {
    /// Sky sizes to simulate (repeatable).
    #[arg(long = "nodes", default_values_t = [10usize, 100, 1_000, 10_000])]
    pub nodes: Vec<usize>,
    /// Owners per address, k.
    #[arg(long, default_value_t = 2)]
    pub replicas: u8,
    /// Nodes sharing each /24 (one operator's block).
    #[arg(long, default_value_t = 1)]
    pub per_prefix: usize,
    /// Positions per IP (repeatable: one table block each).
    #[arg(long = "positions", default_values_t = [1u8, sky_proto::ring::DEFAULT_POSITIONS])]
    pub positions: Vec<u8>,
    /// Independent rings per size.
    #[arg(long, default_value_t = 20)]
    pub trials: usize,
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
}

/// One row of the report.
#[derive(Clone, Debug, PartialEq)]
pub struct Row {
    pub positions: u8,
    pub nodes: usize,
    pub mean_primary: f64,
    pub max_primary: f64,
    pub mean_owned: f64,
    pub max_owned: f64,
}

impl Row {
    pub fn primary_ratio(&self) -> f64 {
        self.max_primary / self.mean_primary
    }

    pub fn owned_ratio(&self) -> f64 {
        self.max_owned / self.mean_owned
    }
}

/// The shares of the ring each member owns, as first owner and as any of
/// the `k` owners, by member index.
pub fn shares(ring: &Ring) -> (Vec<f64>, Vec<f64>) {
    let members = ring.members();
    let n = members.len();
    let index: HashMap<SocketAddr, usize> = members
        .iter()
        .enumerate()
        .map(|(i, m)| (m.endpoint, i))
        .collect();
    let mut owned = vec![0f64; n];
    for (end, share) in ring.arcs() {
        for owner in ring.owners_of_position(end).as_slice() {
            owned[index[&owner]] += share;
        }
    }
    (ring.primary_shares(), owned)
}

fn random_ring(config: RingConfig, nodes: usize, per_prefix: usize, rng: &mut Rng) -> Ring {
    let per_prefix = per_prefix.max(1);
    let mut blocks = std::collections::HashSet::new();
    let mut endpoints = Vec::with_capacity(nodes);
    while endpoints.len() < nodes {
        let block = (rng.next_u64() as u32) & 0xffff_ff00;
        if !blocks.insert(block) {
            continue;
        }
        let mut hosts = std::collections::HashSet::new();
        while hosts.len() < per_prefix.min(254) && endpoints.len() < nodes {
            let host = 1 + rng.below(254) as u32;
            if hosts.insert(host) {
                let ip = Ipv4Addr::from(block | host);
                endpoints.push(SocketAddr::new(IpAddr::V4(ip), 7700));
            }
        }
    }
    Ring::new(config, endpoints)
}

/// Runs the simulation: one row per positions setting and sky size. The
/// same IPs are drawn for every positions setting.
pub fn simulate(args: &RingArgs) -> Result<Vec<Row>, String> {
    if args.trials == 0 || args.nodes.iter().any(|&n| n == 0 || n > 100_000) {
        return Err("--trials must be at least 1 and --nodes 1..=100000".into());
    }
    if args.per_prefix == 0 || args.per_prefix > 254 {
        return Err("--per-prefix must be 1..=254".into());
    }
    let mut rows = Vec::new();
    for &positions in &args.positions {
        let config = RingConfig {
            replicas: args.replicas,
            positions,
            ..RingConfig::default()
        };
        config.validate()?;
        for &n in &args.nodes {
            rows.push(simulate_one(args, config, n));
        }
    }
    Ok(rows)
}

fn simulate_one(args: &RingArgs, config: RingConfig, n: usize) -> Row {
    let (mut sum_primary, mut sum_owned, mut count) = (0.0, 0.0, 0usize);
    let (mut max_primary, mut max_owned) = (0f64, 0f64);
    for t in 0..args.trials {
        let mut rng = Rng::stream(args.seed, &[n as u64, t as u64]);
        let ring = random_ring(config, n, args.per_prefix, &mut rng);
        let (primary, owned) = shares(&ring);
        sum_primary += primary.iter().sum::<f64>();
        sum_owned += owned.iter().sum::<f64>();
        count += primary.len();
        max_primary = primary.iter().fold(max_primary, |a, &b| a.max(b));
        max_owned = owned.iter().fold(max_owned, |a, &b| a.max(b));
    }
    Row {
        positions: config.positions,
        nodes: n,
        mean_primary: sum_primary / count as f64,
        max_primary,
        mean_owned: sum_owned / count as f64,
        max_owned,
    }
}

/// The Markdown report.
pub fn run(args: &RingArgs) -> Result<String, String> {
    let rows = simulate(args)?;
    let mut out = format!(
        "Ring load balance: k = {}, {} node(s) per /24, {} trial(s) per size, seed {}.\n\
         Shares are fractions of the ring (of all addresses).\n\n\
         | positions per IP | nodes | mean share, first owner | max | max / mean | mean share, any of k | max | max / mean |\n\
         | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n",
        args.replicas, args.per_prefix, args.trials, args.seed
    );
    for r in &rows {
        out.push_str(&format!(
            "| {} | {} | {} | {} | {:.2} | {} | {} | {:.2} |\n",
            r.positions,
            r.nodes,
            pct(r.mean_primary),
            pct(r.max_primary),
            r.primary_ratio(),
            pct(r.mean_owned),
            pct(r.max_owned),
            r.owned_ratio(),
        ));
    }
    Ok(out)
}

fn pct(x: f64) -> String {
    if x >= 0.01 {
        format!("{:.2}%", 100.0 * x)
    } else {
        format!("{:.4}%", 100.0 * x)
    }
}

#[cfg(test)]
#[path = "tests/ring.rs"]
mod tests;
