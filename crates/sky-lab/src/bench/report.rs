//! What a run measured ([`Report`], `--json` prints it as one object), and
//! why a run could not measure ([`BenchError`]).

use std::fmt;
use std::io;

use serde::Serialize;

use super::Mode;

/// Round-trip percentiles, microseconds.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Latency {
    pub p50_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub max_us: f64,
}

/// What a run measured. `--json` prints it as one object.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub mode: Mode,
    pub target: String,
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
    pub introduction_bytes_per_op: f64,
    /// CPU the server process used while measuring, in cores (with
    /// `server_pid`): below 1.0 per shard, the generator was the limit.
    pub server_cpu: Option<f64>,
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "mode {:?} against {}: {} clients, population {}",
            self.mode, self.target, self.clients, self.population
        )?;
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
