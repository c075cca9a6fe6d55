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
