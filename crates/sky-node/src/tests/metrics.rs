//! Tests of `metrics`.

use super::*;

fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("{series} missing:\n{text}"))
        .parse()
        .unwrap()
}

#[test]
fn a_batch_is_recorded_once_for_all_its_datagrams() {
    let mut d = Durations::default();
    d.record(Duration::from_micros(15), 64);
    d.record(Duration::from_micros(10), 1);
    d.record(Duration::from_millis(50), 2);
    d.record(Duration::from_micros(1), 0);
    assert_eq!(d.count(), 67);
    assert_eq!(
        d.counts[0], 1,
        "10 µs is in the 10 µs bucket (le is inclusive)"
    );
    assert_eq!(d.counts[1], 64);
    assert_eq!(d.counts[BUCKETS], 2, "beyond 10 ms");
    assert_eq!(d.sum_ns, 64 * 15_000 + 10_000 + 2 * 50_000_000);
}

#[test]
fn the_duration_histogram_exports_cumulative_buckets_in_seconds() {
    let metrics = Metrics::new();
    let shard = metrics.for_shard(0);
    let mut engine = EngineStats::default();
    engine.durations.record(Duration::from_micros(30), 10);
    engine.durations.record(Duration::from_millis(3), 1);
    shard.publish(&Stats::default(), &mut engine);
    assert_eq!(
        engine.durations.count(),
        0,
        "publish empties the engine's counts"
    );
    let other = metrics.for_shard(1);
    let mut engine = EngineStats::default();
    engine.durations.record(Duration::from_micros(5), 4);
    other.publish(&Stats::default(), &mut engine);

    let text = metrics.render();
    let bucket = |le: &str| sample(&text, &format!("{DATAGRAM_DURATION}_bucket{{le=\"{le}\"}}"));
    assert_eq!(bucket("0.00001"), 4.0);
    assert_eq!(bucket("0.00002"), 4.0);
    assert_eq!(bucket("0.00005"), 14.0);
    assert_eq!(bucket("0.002"), 14.0);
    assert_eq!(bucket("0.005"), 15.0);
    assert_eq!(bucket("0.01"), 15.0);
    assert_eq!(bucket("+Inf"), 15.0);
    assert_eq!(sample(&text, &format!("{DATAGRAM_DURATION}_count")), 15.0);
    let sum = sample(&text, &format!("{DATAGRAM_DURATION}_sum"));
    assert!(
        (sum - (10.0 * 30e-6 + 3e-3 + 4.0 * 5e-6)).abs() < 1e-12,
        "{sum}"
    );
    assert!(text.contains(&format!("# TYPE {DATAGRAM_DURATION} histogram")));
}

#[test]
fn queue_drops_are_published_as_the_growth_of_the_kernel_counter() {
    let metrics = Metrics::new();
    let shard = metrics.for_shard(3);
    let series = format!("{RECEIVE_QUEUE_DROPPED}{{shard=\"3\"}}");
    let mut engine = EngineStats::default();
    shard.publish(&Stats::default(), &mut engine);
    assert_eq!(sample(&metrics.render(), &series), 0.0);
    engine.saw_queue_drops(7);
    engine.saw_queue_drops(12);
    shard.publish(&Stats::default(), &mut engine);
    shard.publish(&Stats::default(), &mut engine);
    assert_eq!(sample(&metrics.render(), &series), 12.0);
    // The kernel's counter is a u32 that wraps.
    let mut engine = EngineStats {
        queue_drops_seen: u32::MAX - 1,
        queue_drops_published: u32::MAX - 1,
        ..EngineStats::default()
    };
    engine.saw_queue_drops(3);
    shard.publish(&Stats::default(), &mut engine);
    assert_eq!(sample(&metrics.render(), &series), 12.0 + 5.0);
}

#[test]
fn build_info_names_version_and_revision() {
    let text = Metrics::new().render();
    let line = text
        .lines()
        .find(|l| l.starts_with(BUILD_INFO))
        .expect("build info");
    assert!(
        line.contains(&format!("version=\"{}\"", env!("CARGO_PKG_VERSION"))),
        "{line}"
    );
    assert!(line.contains(&format!("revision=\"{REVISION}\"")), "{line}");
    // A commit (or whatever SKY_REVISION said, sanitised), or "unknown".
    assert!(
        !REVISION.is_empty()
            && REVISION.len() <= 40
            && REVISION
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_')),
        "{REVISION}"
    );
}
