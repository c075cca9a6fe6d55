//! Every metric the node exports, in one place.
//!
//! Names follow Prometheus conventions: `sky_` prefix, base units, counters
//! end in `_total`. Label values come only from closed sets — message kind
//! ([`RecvKind`], [`SentKind`]), drop reason ([`DropReason`]), registration
//! refusal reason ([`Refused`]), gossip refusal reason, lookup outcome,
//! engine, shard number, build version and revision, member state
//! ([`MemberState`]), gossip direction — never from a peer: no IP, port or
//! virtual address can reach a label, not even a sky node's.
//!
//! Shards count in plain integers ([`Stats`], and the engine's own
//! [`EngineStats`]) and [`ShardMetrics::publish`] moves the counts into
//! Prometheus counters in batches, so the packet path touches no shared
//! cache line per datagram. The one histogram, [`DATAGRAM_DURATION`], is
//! filled the same way: an engine reads the clock once when a batch wakes
//! it and once when it sends the batch, records the difference once for
//! all the batch's datagrams ([`Durations::record`]), and publishes the
//! bucket counts with the rest.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use prometheus::core::{Collector, Desc};
use prometheus::proto;
use prometheus::{IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};

use crate::gossip::{MemberCounts, MemberState};
use crate::presence::Refused;
use crate::shard::{DropReason, RecvKind, SentKind, Stats};
use sky_proto::ring::Ring;

pub const BUILD_INFO: &str = "sky_build_info";
pub const ENGINE_INFO: &str = "sky_engine_info";
pub const ENGINE_PROBE: &str = "sky_engine_probe_datagrams_per_second";
pub const SHARDS: &str = "sky_shards";
pub const DATAGRAMS_RECEIVED: &str = "sky_datagrams_received_total";
pub const RECEIVED_BYTES: &str = "sky_received_bytes_total";
pub const DATAGRAMS_SENT: &str = "sky_datagrams_sent_total";
pub const SENT_BYTES: &str = "sky_sent_bytes_total";
pub const DROPPED: &str = "sky_dropped_datagrams_total";
pub const LOOKUPS: &str = "sky_lookups_total";
pub const INTRODUCTIONS_SENT: &str = "sky_introductions_sent_total";
pub const INTRODUCTIONS_RATE_LIMITED: &str = "sky_introductions_rate_limited_total";
pub const PRESENCE_ENTRIES: &str = "sky_presence_entries";
pub const PRESENCE_CAPACITY: &str = "sky_presence_capacity";
pub const PRESENCE_EXPIRED: &str = "sky_presence_expired_total";
pub const SHARD_RECEIVED: &str = "sky_shard_received_datagrams_total";
pub const MEMBERS: &str = "sky_members";
pub const RING_VERSION: &str = "sky_ring_version";
pub const RING_MEMBERS: &str = "sky_ring_members";
pub const RING_CHANGES: &str = "sky_ring_changes_total";
pub const GOSSIP_DATAGRAMS: &str = "sky_gossip_datagrams_total";
pub const GOSSIP_BYTES: &str = "sky_gossip_bytes_total";
pub const GOSSIP_ERRORS: &str = "sky_gossip_errors_total";
pub const HANDOFF_DROPPED: &str = "sky_handoff_dropped_entries_total";
pub const CHECKS: &str = "sky_checks_total";
pub const GOSSIP_REFUSED: &str = "sky_gossip_refused_total";
pub const REGISTRATIONS_REFUSED: &str = "sky_registrations_refused_total";
pub const DATAGRAM_DURATION: &str = "sky_datagram_duration_seconds";
pub const RECEIVE_QUEUE_DROPPED: &str = "sky_receive_queue_dropped_datagrams_total";
pub const URING_BUFFERS_EXHAUSTED: &str = "sky_uring_buffers_exhausted_total";

/// The upper bounds of [`DATAGRAM_DURATION`]'s buckets, in nanoseconds
/// (exported in seconds): 1-2-5 steps from 10 µs to 10 ms, around SPEC §6's
/// 200 µs round-trip target.
pub const DATAGRAM_DURATION_BUCKETS_NS: [u64; 10] = [
    10_000, 20_000, 50_000, 100_000, 200_000, 500_000, 1_000_000, 2_000_000, 5_000_000, 10_000_000,
];
const BUCKETS: usize = DATAGRAM_DURATION_BUCKETS_NS.len();

/// The git commit the node was built from (`build.rs`), or "unknown".
pub const REVISION: &str = env!("SKY_REVISION");

/// The `direction` label of gossip traffic.
const DIRECTIONS: [&str; 2] = ["in", "out"];

/// The node's registry and the metrics the control thread sets directly.
pub struct Metrics {
    pub registry: Registry,
    received: IntCounterVec,
    received_bytes: IntCounterVec,
    sent: IntCounterVec,
    sent_bytes: IntCounterVec,
    dropped: IntCounterVec,
    lookups: IntCounterVec,
    intros_sent: IntCounter,
    intros_rate_limited: IntCounter,
    shard_received: IntCounterVec,
    pub presence_entries: IntGauge,
    pub presence_capacity: IntGauge,
    pub presence_expired: IntCounter,
    engine: IntGaugeVec,
    engine_probe: IntGaugeVec,
    pub shards: IntGauge,
    members: IntGaugeVec,
    ring_version: IntGauge,
    ring_members: IntGauge,
    ring_changes: IntCounter,
    gossip_datagrams: IntCounterVec,
    gossip_bytes: IntCounterVec,
    gossip_errors: IntCounter,
    gossip_refused: IntCounterVec,
    registrations_refused: IntCounterVec,
    pub handoff_dropped: IntCounter,
    /// NAT checks on the check ports, by outcome (answered, answered from
    /// the other port, rate limited, invalid).
    pub checks: IntCounterVec,
    queue_dropped: IntCounterVec,
    buffers_exhausted: IntCounterVec,
    durations: DurationHistogram,
}

fn counter_vec(registry: &Registry, name: &str, help: &str, label: &str) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), &[label]).expect("valid metric");
    registry
        .register(Box::new(c.clone()))
        .expect("unique metric");
    c
}

fn counter(registry: &Registry, name: &str, help: &str) -> IntCounter {
    let c = IntCounter::new(name, help).expect("valid metric");
    registry
        .register(Box::new(c.clone()))
        .expect("unique metric");
    c
}

fn gauge(registry: &Registry, name: &str, help: &str) -> IntGauge {
    let g = IntGauge::new(name, help).expect("valid metric");
    registry
        .register(Box::new(g.clone()))
        .expect("unique metric");
    g
}

impl Metrics {
    pub fn new() -> Metrics {
        let r = Registry::new();
        let build = IntGaugeVec::new(
            Opts::new(
                BUILD_INFO,
                "Build of the running node (version, and the git commit it was built from); \
                 always 1.",
            ),
            &["version", "revision"],
        )
        .expect("valid metric");
        r.register(Box::new(build.clone())).expect("unique metric");
        build
            .with_label_values(&[env!("CARGO_PKG_VERSION"), REVISION])
            .set(1);
        let durations = DurationHistogram::new();
        r.register(Box::new(durations.clone()))
            .expect("unique metric");
        let engine = IntGaugeVec::new(
            Opts::new(
                ENGINE_INFO,
                "Packet engine in use (uring or mmsg); 1 for the running one.",
            ),
            &["engine"],
        )
        .expect("valid metric");
        r.register(Box::new(engine.clone())).expect("unique metric");
        let engine_probe = IntGaugeVec::new(
            Opts::new(
                ENGINE_PROBE,
                "Datagrams a second each packet engine answered on the loopback in the \
                 start-up measurement of --engine auto (absent under a fixed engine).",
            ),
            &["engine"],
        )
        .expect("valid metric");
        r.register(Box::new(engine_probe.clone()))
            .expect("unique metric");
        let members = IntGaugeVec::new(
            Opts::new(
                MEMBERS,
                "Sky nodes in this node's membership view by state (alive, suspect, down, \
                 left); alive includes this node.",
            ),
            &["state"],
        )
        .expect("valid metric");
        r.register(Box::new(members.clone()))
            .expect("unique metric");

        #[cfg(target_os = "linux")]
        r.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))
        .expect("unique metric");

        let m = Metrics {
            received: counter_vec(
                &r,
                DATAGRAMS_RECEIVED,
                "Datagrams received, by kind.",
                "kind",
            ),
            received_bytes: counter_vec(
                &r,
                RECEIVED_BYTES,
                "UDP payload bytes received, by kind.",
                "kind",
            ),
            sent: counter_vec(&r, DATAGRAMS_SENT, "Datagrams sent, by kind.", "kind"),
            sent_bytes: counter_vec(&r, SENT_BYTES, "UDP payload bytes sent, by kind.", "kind"),
            dropped: counter_vec(
                &r,
                DROPPED,
                "Datagrams dropped without an answer, by reason.",
                "reason",
            ),
            lookups: counter_vec(&r, LOOKUPS, "Lookups answered, by outcome.", "outcome"),
            intros_sent: counter(&r, INTRODUCTIONS_SENT, "Introductions sent to targets."),
            intros_rate_limited: counter(
                &r,
                INTRODUCTIONS_RATE_LIMITED,
                "Introductions not sent because the target's rate limit was reached.",
            ),
            shard_received: counter_vec(
                &r,
                SHARD_RECEIVED,
                "Datagrams received, by packet shard.",
                "shard",
            ),
            presence_entries: gauge(&r, PRESENCE_ENTRIES, "Entries in the presence table."),
            presence_capacity: gauge(
                &r,
                PRESENCE_CAPACITY,
                "Capacity of the presence table; new registrations are refused beyond it.",
            ),
            presence_expired: counter(
                &r,
                PRESENCE_EXPIRED,
                "Presence entries removed because they expired.",
            ),
            engine,
            engine_probe,
            shards: gauge(&r, SHARDS, "Packet shards running."),
            members,
            ring_version: gauge(
                &r,
                RING_VERSION,
                "Version of the ring this node serves (a hash of its members and settings).",
            ),
            ring_members: gauge(&r, RING_MEMBERS, "Sky nodes on the ring this node serves."),
            ring_changes: counter(
                &r,
                RING_CHANGES,
                "Times the ring changed (a node joined, left or was declared down).",
            ),
            gossip_datagrams: counter_vec(
                &r,
                GOSSIP_DATAGRAMS,
                "Gossip datagrams, by direction (in, out).",
                "direction",
            ),
            gossip_bytes: counter_vec(
                &r,
                GOSSIP_BYTES,
                "Gossip UDP payload bytes, by direction (in, out).",
                "direction",
            ),
            gossip_errors: counter(
                &r,
                GOSSIP_ERRORS,
                "Gossip datagrams that could not be decoded or were refused, and failed sends.",
            ),
            registrations_refused: counter_vec(
                &r,
                REGISTRATIONS_REFUSED,
                "Registrations refused with a `refused` reply, by reason: table_full (capacity \
                 live entries), source_limit (the source IP holds its share), prefix_limit (its \
                 prefix does).",
                "reason",
            ),
            gossip_refused: counter_vec(
                &r,
                GOSSIP_REFUSED,
                "Gossip datagrams refused, by reason: ring_settings (a node whose replicas, prefixes \
                 or positions differ from ours), spoofed (a sender identity that is not its \
                 source), forged (a signature that does not verify), unproven (an identity that \
                 has not proven its endpoints yet: a few per join, or one a closed sky does not \
                 list).",
                "reason",
            ),
            checks: counter_vec(
                &r,
                CHECKS,
                "Datagrams on the NAT check ports, by outcome (answered, answered_other, \
                 rate_limited, invalid).",
                "outcome",
            ),
            handoff_dropped: counter(
                &r,
                HANDOFF_DROPPED,
                "Presence entries dropped after a ring change because this node no longer owns them.",
            ),
            queue_dropped: counter_vec(
                &r,
                RECEIVE_QUEUE_DROPPED,
                "Datagrams the kernel dropped because a packet shard's socket receive queue was \
                 full, by shard (the kernel's count, read every 100 ms).",
                "shard",
            ),
            buffers_exhausted: counter_vec(
                &r,
                URING_BUFFERS_EXHAUSTED,
                "Times a shard's io_uring receive found every provided buffer in use (ENOBUFS); \
                 datagrams wait in the socket queue until buffers return. By shard.",
                "shard",
            ),
            durations,
            registry: r,
        };
        // Create every series up front so that rates exist from the start.
        for k in RecvKind::ALL {
            m.received.with_label_values(&[k.label()]);
            m.received_bytes.with_label_values(&[k.label()]);
        }
        for k in SentKind::ALL {
            m.sent.with_label_values(&[k.label()]);
            m.sent_bytes.with_label_values(&[k.label()]);
        }
        for r in DropReason::ALL {
            m.dropped.with_label_values(&[r.label()]);
        }
        for r in Refused::ALL {
            m.registrations_refused.with_label_values(&[r.label()]);
        }
        for o in ["online", "offline"] {
            m.lookups.with_label_values(&[o]);
        }
        for s in MemberState::ALL {
            m.members.with_label_values(&[s.label()]);
        }
        for d in DIRECTIONS {
            m.gossip_datagrams.with_label_values(&[d]);
            m.gossip_bytes.with_label_values(&[d]);
        }
        m
    }

    /// The handles the gossip thread updates, resolved once.
    pub fn for_gossip(&self) -> GossipMetrics {
        GossipMetrics {
            members: MemberState::ALL.map(|s| self.members.with_label_values(&[s.label()])),
            ring_version: self.ring_version.clone(),
            ring_members: self.ring_members.clone(),
            ring_changes: self.ring_changes.clone(),
            datagrams_in: self.gossip_datagrams.with_label_values(&["in"]),
            datagrams_out: self.gossip_datagrams.with_label_values(&["out"]),
            bytes_in: self.gossip_bytes.with_label_values(&["in"]),
            bytes_out: self.gossip_bytes.with_label_values(&["out"]),
            errors: self.gossip_errors.clone(),
            refused_settings: self.gossip_refused.with_label_values(&["ring_settings"]),
            refused_spoofed: self.gossip_refused.with_label_values(&["spoofed"]),
            refused_forged: self.gossip_refused.with_label_values(&["forged"]),
            refused_unproven: self.gossip_refused.with_label_values(&["unproven"]),
        }
    }

    /// Marks `engine` ("uring" or "mmsg") as the one running.
    pub fn set_engine(&self, engine: &str) {
        self.engine.with_label_values(&[engine]).set(1);
    }

    /// What `--engine auto` measured `engine` ("uring" or "mmsg") at.
    pub fn set_engine_probe(&self, engine: &str, datagrams_per_second: f64) {
        self.engine_probe
            .with_label_values(&[engine])
            .set(datagrams_per_second.round() as i64);
    }

    /// The counters one shard publishes into. Resolved once, so publishing
    /// does not allocate.
    pub fn for_shard(&self, shard: usize) -> ShardMetrics {
        let each = |vec: &IntCounterVec, labels: &[&str]| -> Vec<IntCounter> {
            labels
                .iter()
                .map(|l| vec.with_label_values(&[*l]))
                .collect()
        };
        let shard = shard.to_string();
        let recv: Vec<_> = RecvKind::ALL.iter().map(|k| k.label()).collect();
        let sent: Vec<_> = SentKind::ALL.iter().map(|k| k.label()).collect();
        let drops: Vec<_> = DropReason::ALL.iter().map(|k| k.label()).collect();
        ShardMetrics {
            received: each(&self.received, &recv),
            received_bytes: each(&self.received_bytes, &recv),
            sent: each(&self.sent, &sent),
            sent_bytes: each(&self.sent_bytes, &sent),
            dropped: each(&self.dropped, &drops),
            refused: each(
                &self.registrations_refused,
                &Refused::ALL.map(|r| r.label()),
            ),
            online: self.lookups.with_label_values(&["online"]),
            offline: self.lookups.with_label_values(&["offline"]),
            intros_sent: self.intros_sent.clone(),
            intros_rate_limited: self.intros_rate_limited.clone(),
            shard_received: self.shard_received.with_label_values(&[&shard]),
            queue_dropped: self.queue_dropped.with_label_values(&[&shard]),
            buffers_exhausted: self.buffers_exhausted.with_label_values(&[&shard]),
            durations: self.durations.clone(),
        }
    }

    /// The text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = String::new();
        prometheus::TextEncoder::new()
            .encode_utf8(&self.registry.gather(), &mut out)
            .expect("text encoding of gathered metrics");
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

/// One shard's handles into the node's counters.
pub struct ShardMetrics {
    received: Vec<IntCounter>,
    received_bytes: Vec<IntCounter>,
    sent: Vec<IntCounter>,
    sent_bytes: Vec<IntCounter>,
    dropped: Vec<IntCounter>,
    refused: Vec<IntCounter>,
    online: IntCounter,
    offline: IntCounter,
    intros_sent: IntCounter,
    intros_rate_limited: IntCounter,
    shard_received: IntCounter,
    queue_dropped: IntCounter,
    buffers_exhausted: IntCounter,
    durations: DurationHistogram,
}

impl ShardMetrics {
    /// Adds a shard's counts since its last publish: the core's `s`, and
    /// what its engine counted itself (which `publish` empties).
    pub fn publish(&self, s: &Stats, engine: &mut EngineStats) {
        self.publish_core(s);
        let queue_dropped = engine
            .queue_drops_seen
            .wrapping_sub(engine.queue_drops_published);
        if queue_dropped != 0 {
            self.queue_dropped.inc_by(u64::from(queue_dropped));
            engine.queue_drops_published = engine.queue_drops_seen;
        }
        if engine.buffers_exhausted != 0 {
            self.buffers_exhausted.inc_by(engine.buffers_exhausted);
            engine.buffers_exhausted = 0;
        }
        self.durations.add(&engine.durations);
        engine.durations = Durations::default();
    }

    fn publish_core(&self, s: &Stats) {
        fn add(counters: &[IntCounter], values: &[u64]) {
            for (c, v) in counters.iter().zip(values) {
                if *v != 0 {
                    c.inc_by(*v);
                }
            }
        }
        add(&self.received, &s.received);
        add(&self.received_bytes, &s.received_bytes);
        add(&self.sent, &s.sent);
        add(&self.sent_bytes, &s.sent_bytes);
        add(&self.dropped, &s.dropped);
        add(&self.refused, &s.refused);
        for (c, v) in [
            (&self.online, s.lookups_online),
            (&self.offline, s.lookups_offline),
            (&self.intros_rate_limited, s.intros_rate_limited),
        ] {
            if v != 0 {
                c.inc_by(v);
            }
        }
        let intros = s.sent[SentKind::Introduction as usize];
        if intros != 0 {
            self.intros_sent.inc_by(intros);
        }
        let total: u64 = s.received.iter().sum();
        if total != 0 {
            self.shard_received.inc_by(total);
        }
    }
}

/// The gossip thread's handles into the node's metrics.
pub struct GossipMetrics {
    members: [IntGauge; 4],
    ring_version: IntGauge,
    ring_members: IntGauge,
    pub ring_changes: IntCounter,
    datagrams_in: IntCounter,
    datagrams_out: IntCounter,
    bytes_in: IntCounter,
    bytes_out: IntCounter,
    pub errors: IntCounter,
    pub refused_settings: IntCounter,
    pub refused_spoofed: IntCounter,
    pub refused_forged: IntCounter,
    pub refused_unproven: IntCounter,
}

impl GossipMetrics {
    pub fn set_members(&self, counts: MemberCounts) {
        for (gauge, state) in self.members.iter().zip(MemberState::ALL) {
            gauge.set(counts.get(state) as i64);
        }
    }

    /// The ring now served.
    pub fn set_ring(&self, ring: &Ring) {
        self.ring_version.set(i64::from(ring.version()));
        self.ring_members.set(ring.len() as i64);
    }

    pub fn received(&self, bytes: usize) {
        self.datagrams_in.inc();
        self.bytes_in.inc_by(bytes as u64);
    }

    pub fn sent(&self, bytes: usize) {
        self.datagrams_out.inc();
        self.bytes_out.inc_by(bytes as u64);
    }
}

/// What an engine counts itself (its core counts the rest, in [`Stats`]):
/// plain integers on the shard's own thread, moved into the node's metrics
/// by [`ShardMetrics::publish`].
#[derive(Debug, Default)]
pub struct EngineStats {
    /// Time in the node of the datagrams handled since the last publish.
    pub durations: Durations,
    /// Datagrams whose `io_uring` receive completed with `ENOBUFS`.
    pub buffers_exhausted: u64,
    /// The socket's receive-queue drop counter (`SO_MEMINFO`) as last read,
    /// and as last published: the kernel counts since the socket was made,
    /// in a `u32` that wraps.
    queue_drops_seen: u32,
    queue_drops_published: u32,
}

impl EngineStats {
    /// The socket's drop counter as the engine read it (`SO_MEMINFO`).
    pub fn saw_queue_drops(&mut self, total: u32) {
        self.queue_drops_seen = total;
    }
}

/// A histogram of durations on one thread, in plain integers: the
/// engine's side of [`DATAGRAM_DURATION`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Durations {
    /// Per bucket, not cumulative; the last is beyond the largest bound.
    counts: [u64; BUCKETS + 1],
    sum_ns: u64,
}

impl Durations {
    /// Records `n` datagrams that each spent `d` in the node: one bucket
    /// search however many datagrams a batch held.
    pub fn record(&mut self, d: Duration, n: u64) {
        if n == 0 {
            return;
        }
        let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        let i = DATAGRAM_DURATION_BUCKETS_NS
            .iter()
            .position(|&bound| ns <= bound)
            .unwrap_or(BUCKETS);
        self.counts[i] += n;
        self.sum_ns = self.sum_ns.saturating_add(ns.saturating_mul(n));
    }

    /// Datagrams recorded.
    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }
}

/// [`DATAGRAM_DURATION`] as the node exports it: the sum of every shard's
/// [`Durations`], added on each publish (every 100 ms per shard, never per
/// datagram). The prometheus crate's own histogram takes one observation
/// at a time, which would be a shared atomic write per datagram.
#[derive(Clone)]
struct DurationHistogram(Arc<DurationTotals>);

struct DurationTotals {
    desc: Desc,
    counts: [AtomicU64; BUCKETS + 1],
    sum_ns: AtomicU64,
}

impl DurationHistogram {
    fn new() -> DurationHistogram {
        DurationHistogram(Arc::new(DurationTotals {
            desc: Desc::new(
                DATAGRAM_DURATION.into(),
                "Time a datagram spends in the node: from the engine's wake-up that received \
                 it to the send of its batch's answers (for a datagram without an answer, to \
                 the end of its batch). One clock read per batch and one per send, none per \
                 datagram."
                    .into(),
                Vec::new(),
                HashMap::new(),
            )
            .expect("valid metric"),
            counts: std::array::from_fn(|_| AtomicU64::new(0)),
            sum_ns: AtomicU64::new(0),
        }))
    }

    fn add(&self, d: &Durations) {
        for (total, &n) in self.0.counts.iter().zip(&d.counts) {
            if n != 0 {
                total.fetch_add(n, Ordering::Relaxed);
            }
        }
        if d.sum_ns != 0 {
            self.0.sum_ns.fetch_add(d.sum_ns, Ordering::Relaxed);
        }
    }
}

impl Collector for DurationHistogram {
    fn desc(&self) -> Vec<&Desc> {
        vec![&self.0.desc]
    }

    fn collect(&self) -> Vec<proto::MetricFamily> {
        let totals = &self.0;
        let mut h = proto::Histogram::default();
        let mut cumulative = 0;
        let mut buckets = Vec::with_capacity(BUCKETS);
        for (bound, count) in DATAGRAM_DURATION_BUCKETS_NS.iter().zip(&totals.counts) {
            cumulative += count.load(Ordering::Relaxed);
            let mut b = proto::Bucket::default();
            b.set_cumulative_count(cumulative);
            b.set_upper_bound(*bound as f64 / 1e9);
            buckets.push(b);
        }
        cumulative += totals.counts[BUCKETS].load(Ordering::Relaxed);
        h.set_bucket(buckets);
        h.set_sample_count(cumulative);
        h.set_sample_sum(totals.sum_ns.load(Ordering::Relaxed) as f64 / 1e9);
        let mut m = proto::Metric::default();
        m.set_histogram(h);
        let mut family = proto::MetricFamily::default();
        family.set_name(DATAGRAM_DURATION.into());
        family.set_help(totals.desc.help.clone());
        family.set_field_type(proto::MetricType::HISTOGRAM);
        family.set_metric(vec![m]);
        vec![family]
    }
}

#[cfg(test)]
#[path = "tests/metrics.rs"]
mod tests;
