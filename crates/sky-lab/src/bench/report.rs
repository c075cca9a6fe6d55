//! What a run measured ([`Report`], `--json` prints it as one object), and
//! why a run could not measure ([`BenchError`]).

use std::fmt;
use std::io;

use serde::Serialize;

use super::{HISTOGRAM_US, Mode};

/// Round-trip percentiles, microseconds.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Latency {
    pub p50_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub max_us: f64,
}

impl Latency {
    /// The percentiles of a histogram of 1 µs buckets (the last one holds
    /// everything slower).
    pub(super) fn of(histogram: &[u32]) -> Latency {
        let total: u64 = histogram.iter().map(|&n| u64::from(n)).sum();
        let pct = |q: f64| -> f64 {
            if total == 0 {
                return 0.0;
            }
            let want = (q * total as f64).ceil() as u64;
            let mut seen = 0u64;
            for (us, &n) in histogram.iter().enumerate() {
                seen += u64::from(n);
                if seen >= want {
                    return us as f64;
                }
            }
            HISTOGRAM_US as f64
        };
        Latency {
            p50_us: pct(0.50),
            p99_us: pct(0.99),
            p999_us: pct(0.999),
            max_us: histogram.iter().rposition(|&n| n > 0).unwrap_or(0) as f64,
        }
    }
}

/// What one generator thread counted; a run's counts are their sum.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct Counts {
    pub(super) sent: u64,
    pub(super) answered: u64,
    pub(super) lost: u64,
    pub(super) malformed: u64,
    pub(super) request_bytes: u64,
    pub(super) reply_bytes: u64,
    pub(super) intros: u64,
    pub(super) intro_bytes: u64,
    /// Lookups answered as introduced (the introduction is due to the
    /// target's endpoint: the generator's own sockets, but for `synthetic`).
    pub(super) introduced: u64,
    /// Setup's registrations refused for want of signature checks (sent
    /// again later).
    pub(super) later: u64,
}

impl std::ops::AddAssign for Counts {
    fn add_assign(&mut self, o: Counts) {
        self.sent += o.sent;
        self.answered += o.answered;
        self.lost += o.lost;
        self.malformed += o.malformed;
        self.request_bytes += o.request_bytes;
        self.reply_bytes += o.reply_bytes;
        self.intros += o.intros;
        self.intro_bytes += o.intro_bytes;
        self.introduced += o.introduced;
        self.later += o.later;
    }
}

/// What a run measured, summed over its generator threads (the
/// percentiles are those of their merged histograms; `ops_per_sec` is
/// over the window from the first thread's start to the last one's end).
/// `--json` prints it as one object.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub mode: Mode,
    pub target: String,
    /// The nodes loaded: 1, or every member of the target's sky.
    pub nodes: usize,
    pub threads: usize,
    pub clients: usize,
    pub population: usize,
    pub rate_asked: Option<u64>,
    pub setup_s: f64,
    pub duration_s: f64,
    pub sent: u64,
    pub answered: u64,
    pub lost: u64,
    pub malformed: u64,
    pub loss_ratio: f64,
    pub ops_per_sec: f64,
    pub rtt: Latency,
    pub request_bytes_per_op: f64,
    pub reply_bytes_per_op: f64,
    pub introductions: u64,
    /// Lookups the node said it introduced (the rest it answered with
    /// `not introduced`: the caller's allowance for that target was spent).
    pub introduced: u64,
    pub introduction_bytes_per_op: f64,
    /// CPU the server process used while measuring, in cores (with
    /// `server_pid`): below 1.0 per shard, the generator was the limit.
    pub server_cpu: Option<f64>,
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "mode {:?} against {}: {} clients, population {}",
            self.mode, self.target, self.clients, self.population
        )?;
        if self.threads > 1 {
            write!(f, ", {} threads", self.threads)?;
        }
        if self.nodes > 1 {
            write!(f, ", a sky of {} nodes", self.nodes)?;
        }
        writeln!(f)?;
        writeln!(
            f,
            "answered {:.0} ops/s over {:.1} s ({} sent, {} answered, {} lost = {:.3}%, {} malformed)",
            self.ops_per_sec,
            self.duration_s,
            self.sent,
            self.answered,
            self.lost,
            self.loss_ratio * 100.0,
            self.malformed
        )?;
        writeln!(
            f,
            "round trip p50 {:.1} us, p99 {:.1} us, p99.9 {:.1} us, max {:.1} us",
            self.rtt.p50_us, self.rtt.p99_us, self.rtt.p999_us, self.rtt.max_us
        )?;
        write!(
            f,
            "bytes per op: request {:.1}, reply {:.1}, introduction {:.1} ({} introductions)",
            self.request_bytes_per_op,
            self.reply_bytes_per_op,
            self.introduction_bytes_per_op,
            self.introductions
        )
    }
}

#[derive(Debug)]
pub enum BenchError {
    Io(io::Error),
    /// The node did not answer the setup (cookies, registrations).
    Setup(String),
}

impl fmt::Display for BenchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BenchError::Io(e) => write!(f, "{e}"),
            BenchError::Setup(s) => f.write_str(s),
        }
    }
}

impl std::error::Error for BenchError {}

impl From<io::Error> for BenchError {
    fn from(e: io::Error) -> Self {
        BenchError::Io(e)
    }
}
