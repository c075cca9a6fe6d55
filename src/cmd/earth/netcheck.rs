//! `sky earth netcheck`: what the NAT in front of this machine does, and
//! which friends can reach it directly. A throwaway client (no identity of
//! the user's is used, nothing is registered) asks the first sky node's
//! check ports where they see it and the router for a port mapping; the
//! verdict is the earth client's own (`NatReport::verdict`), the one it
//! punches by.

use std::ops::ControlFlow;
use std::path::Path;
use std::time::{Duration, Instant};

use sky_earth::client::{Event as EarthEvent, Filtering, Mapping, NatReport};
use sky_earth::driver::{random_seed, unix_now};
use sky_earth::identity::{Friends, Identity};
use sky_earth::state::State;

use super::commands;
use super::control::Out;

/// How long the check may take (its requests go three times, 300 ms apart).
const CHECK_WAIT: Duration = Duration::from_secs(3);
/// How long the router has to answer a port mapping request.
const MAPPING_WAIT: Duration = Duration::from_secs(2);

pub(super) fn run(dir: &Path, sky: &[String], port_mapping: bool, out: &mut impl Out) -> u8 {
    let sky = if sky.is_empty() {
        State::load(dir).map(|s| s.sky).unwrap_or_default()
    } else {
        sky.to_vec()
    };
    if sky.is_empty() {
        return commands::fail(
            out,
            "no sky node to check against: give --sky HOST:PORT (once `online` has been given one, it is remembered)",
        );
    }
    let mut random = [0u8; 64];
    for half in random.chunks_mut(32) {
        match random_seed() {
            Ok(r) => half.copy_from_slice(&r),
            Err(e) => return commands::fail(out, format!("no randomness: {e}")),
        }
    }
    let throwaway = State::new(
        Identity::generate(random, Duration::from_secs(24 * 3600), unix_now()),
        Friends::default(),
    );
    let mut driver = match commands::driver(&sky, throwaway, |_| {}) {
        Ok(d) => d,
        Err(e) => return commands::fail(out, e),
    };
    let mut protocol = None;
    if port_mapping {
        match driver.map_port() {
            Ok(mapper) => {
                if mapper.wait_mapped(MAPPING_WAIT).is_some() {
                    protocol = mapper.protocol();
                }
            }
            Err(e) => eprintln!("sky earth: no port mapping: {e}"),
        }
    }
    driver.earth.check_nat(unix_now());
    let stop = crate::cmd::stop_on_signals();
    let mut report = None;
    let result = driver.run(
        Some(Instant::now() + CHECK_WAIT),
        &stop,
        |_, event| match event {
            EarthEvent::Nat(r) => {
                report = Some(r);
                ControlFlow::Break(())
            }
            _ => ControlFlow::Continue(()),
        },
    );
    if let Err(e) = result {
        return commands::fail(out, e.to_string());
    }
    let Some(mut r) = report else {
        return commands::fail(out, format!("no answer from {}", sky.join(", ")));
    };
    // The driver tells the core about the mapping as it runs; be sure the
    // report has the latest.
    r.mapped = driver.earth.nat().mapped;
    print(&r, protocol, out);
    0
}

fn print(r: &NatReport, protocol: Option<&str>, out: &mut impl Out) {
    if let Some(o) = r.observed {
        let local = r.local.map_or(String::new(), |l| format!(" (local {l})"));
        out.out(format!("observed {o}{local}"));
    }
    out.out(format!(
        "mapping: {}",
        match r.mapping {
            Mapping::Consistent => "consistent (one public endpoint for every destination)",
            Mapping::Random => "port-randomising (a public port per destination)",
            Mapping::Unknown => "unknown (the sky node runs no check service)",
        }
    ));
    out.out(format!(
        "filtering: {}",
        match r.filtering {
            Filtering::Open => "open (datagrams from anyone reach a mapped endpoint)",
            Filtering::Restricted =>
                "port-restricted (only from the endpoints this machine sent to)",
            Filtering::Unknown => "unknown",
        }
    ));
    out.out(match (r.mapped, protocol) {
        (Some(m), Some(p)) => format!("port mapping: {m} ({p})"),
        (Some(m), None) => format!("port mapping: {m}"),
        (None, _) => {
            "port mapping: none (the router speaks no UPnP-IGD, NAT-PMP or PCP, or refused)".into()
        }
    });
    out.out(format!("verdict: {}", r.verdict()));
}
