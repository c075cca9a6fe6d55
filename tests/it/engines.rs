//! `--engine auto`: the node measures both packet engines at start-up,
//! runs the faster, and exports what it measured.

use sky_node::config::EngineChoice;
use sky_node::engine::Node;
use sky_node::metrics::ENGINE_PROBE;

use sky_proto::wire::{Cookie, Message, Tag};

use crate::common::{config, emit, engines, exchange, sample, scrape, socket_for};

#[test]
fn auto_measures_both_engines_at_start_and_runs_the_faster() {
    if engines().len() < 2 {
        eprintln!("SKIPPED: io_uring unavailable; auto has nothing to measure");
        return;
    }
    let node = Node::start(&config(EngineChoice::Auto, "127.0.0.1:0")).unwrap();
    let metrics = scrape(&node);
    let rate = |engine: &str| sample(&metrics, &format!("{ENGINE_PROBE}{{engine=\"{engine}\"}}"));
    let (uring, mmsg) = (rate("uring"), rate("mmsg"));
    assert!(uring > 0.0 && mmsg > 0.0, "uring {uring}/s, mmsg {mmsg}/s");
    let faster = if mmsg > uring * 1.02 { "mmsg" } else { "uring" };
    assert_eq!(
        node.engine().label(),
        faster,
        "uring {uring}/s, mmsg {mmsg}/s"
    );
    assert_eq!(
        sample(&metrics, &format!("sky_engine_info{{engine=\"{faster}\"}}")),
        1.0
    );
    // And the node it started serves.
    let ping = emit(Message::Ping {
        tag: Tag([1; 4]),
        cookie: Cookie::default(),
    });
    let sky = node.local_addr();
    assert!(exchange(&socket_for(sky), sky, &ping).is_some());
    node.shutdown().unwrap();
}

#[test]
fn a_fixed_engine_measures_nothing() {
    for engine in engines() {
        let node = Node::start(&config(engine, "127.0.0.1:0")).unwrap();
        let metrics = scrape(&node);
        assert!(
            !metrics.lines().any(|l| l.starts_with(ENGINE_PROBE)),
            "{engine:?}: {metrics}"
        );
        node.shutdown().unwrap();
    }
}

/// The CPUs a thread of this process may run on, as /proc lists them
/// (`Cpus_allowed_list: 0-1,4`).
fn allowed_cpus(status: &str) -> Vec<usize> {
    let list = status
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
        .expect("Cpus_allowed_list in /proc status")
        .trim();
    let mut cpus = Vec::new();
    for part in list.split(',') {
        match part.split_once('-') {
            Some((a, b)) => cpus.extend(a.parse::<usize>().unwrap()..=b.parse().unwrap()),
            None => cpus.push(part.parse().unwrap()),
        }
    }
    cpus
}

/// An operator who gives the node fewer CPUs than the machine has
/// (`taskset -c 1 sky node`, a cgroup cpuset, `podman --cpuset-cpus`)
/// gets a node that pins its threads within those CPUs. The node once
/// panicked here (a remainder by zero when one CPU was allowed) and pinned
/// shards to CPUs 1..=N whatever it was allowed.
#[test]
fn pinning_stays_within_the_cpus_the_node_was_given() {
    let here = allowed_cpus(&std::fs::read_to_string("/proc/thread-self/status").unwrap());
    // The last CPU alone, then (where there are three or more) all but
    // the first: a set that does not start at CPU 0.
    let mut sets = vec![vec![*here.last().unwrap()]];
    if here.len() >= 3 {
        sets.push(here[1..].to_vec());
    }
    for set in sets {
        let node = std::thread::spawn({
            let set = set.clone();
            move || {
                sky_node::engine::sys::set_allowed_cores(&set).unwrap();
                let mut c = config(EngineChoice::Mmsg, "127.0.0.1:0");
                c.pin_cores = true;
                c.shards = Some(3);
                Node::start(&c)
            }
        })
        .join()
        .expect("the node starts on the CPUs it was given")
        .unwrap();
        let mut seen = 0;
        for task in std::fs::read_dir("/proc/self/task").unwrap() {
            let dir = task.unwrap().path();
            let Ok(name) = std::fs::read_to_string(dir.join("comm")) else {
                continue;
            };
            if !name.starts_with("sky-shard") && !name.starts_with("sky-control") {
                continue;
            }
            // Other tests' nodes run in this process too: only threads
            // confined to a subset of this set can be this node's, and each
            // must be.
            let Ok(status) = std::fs::read_to_string(dir.join("status")) else {
                continue;
            };
            let cpus = allowed_cpus(&status);
            if cpus.iter().all(|c| set.contains(c)) {
                seen += 1;
                if set.len() > 1 {
                    assert_eq!(cpus.len(), 1, "{name}: pinned to one CPU of {set:?}");
                }
            }
        }
        assert!(seen >= 4, "3 shards and a control thread within {set:?}");
        let sky = node.local_addr();
        let ping = emit(Message::Ping {
            tag: Tag([2; 4]),
            cookie: Cookie::default(),
        });
        assert!(exchange(&socket_for(sky), sky, &ping).is_some());
        node.shutdown().unwrap();
    }
}
