//! The workspace's layering, checked on `cargo metadata`: the earth SDK
//! builds without any server crate, and nothing on the sky side can name
//! the earth client (where chain keys live).

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;

/// Every package's normal (non-dev, non-build) dependencies, by name.
fn normal_dependencies() -> BTreeMap<String, BTreeSet<String>> {
    let out = Command::new(env!("CARGO"))
        .args(["metadata", "--format-version", "1", "--locked"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("cargo metadata runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let names: BTreeMap<&str, &str> = meta["packages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["id"].as_str().unwrap(), p["name"].as_str().unwrap()))
        .collect();
    meta["resolve"]["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| {
            let deps = n["deps"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|d| {
                    d["dep_kinds"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .any(|k| k["kind"].is_null())
                })
                .map(|d| names[d["pkg"].as_str().unwrap()].to_string())
                .collect();
            (names[n["id"].as_str().unwrap()].to_string(), deps)
        })
        .collect()
}

/// Everything `package` pulls in to build (normal dependencies, all
/// platforms), itself excluded.
fn closure(graph: &BTreeMap<String, BTreeSet<String>>, package: &str) -> BTreeSet<String> {
    let mut seen = BTreeSet::new();
    let mut todo = vec![package.to_string()];
    while let Some(p) = todo.pop() {
        for d in graph.get(&p).into_iter().flatten() {
            if seen.insert(d.clone()) {
                todo.push(d.clone());
            }
        }
    }
    seen
}

/// What the sky side builds on and the earth client must not: server crates
/// and Linux-only ones.
const SERVER_CRATES: [&str; 9] = [
    "sky-node",
    "io-uring",
    "prometheus",
    "dashmap",
    "foca",
    "mimalloc",
    "socket2",
    "arc-swap",
    "signal-hook",
];

#[test]
fn the_earth_sdk_pulls_in_no_server_or_linux_only_crate() {
    let graph = normal_dependencies();
    let earth = closure(&graph, "sky-earth");
    // With its default feature `portmap` the SDK runs tokio (portmapper's
    // runtime), whose sockets come from socket2: a portable crate (Windows,
    // macOS, iOS, Android, the BSDs), here for that reason only. Without
    // the feature it is still kept out (the test below).
    for server in SERVER_CRATES.into_iter().filter(|c| *c != "socket2") {
        assert!(
            !earth.contains(server),
            "sky-earth depends on {server}: {earth:?}"
        );
    }
    assert!(earth.contains("sky-proto"));
}

#[test]
fn the_earth_sdk_without_default_features_pulls_in_no_async_runtime() {
    let out = Command::new(env!("CARGO"))
        .args(["tree", "--locked", "-p", "sky-earth", "-e", "normal"])
        .args([
            "--no-default-features",
            "--target",
            "all",
            "--prefix",
            "none",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("cargo tree runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let tree = String::from_utf8_lossy(&out.stdout);
    let crates: BTreeSet<&str> = tree
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert!(crates.contains("sky-proto"), "{crates:?}");
    for banned in SERVER_CRATES
        .into_iter()
        .chain(["tokio", "portmapper", "mio"])
    {
        assert!(
            !crates.contains(banned),
            "sky-earth --no-default-features depends on {banned}: {crates:?}"
        );
    }
}

#[test]
fn the_protocol_crate_depends_on_blake3_alone() {
    let graph = normal_dependencies();
    let direct: Vec<&String> = graph["sky-proto"].iter().collect();
    assert_eq!(direct, ["blake3"], "sky-proto must stay pure and portable");
}

#[test]
fn no_sky_side_crate_can_name_the_earth_client() {
    let graph = normal_dependencies();
    for sky_side in ["sky-proto", "sky-node", "sky-lab"] {
        assert!(
            !closure(&graph, sky_side).contains("sky-earth"),
            "{sky_side} depends on sky-earth: sky-side code could name a chain key"
        );
    }
}
