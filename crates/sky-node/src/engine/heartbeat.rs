//! Shard liveness, for a supervisor's watchdog (`sky node` feeds systemd's).
//!
//! A shard thread stamps its [`Heartbeat`] once as it starts, and then its
//! loop stamps it with the clock it already read for the wake-up, in the
//! branch that publishes its counters: at most once per `PUBLISH_EVERY`, so
//! a relaxed store every 100 ms and nothing per datagram. A loop wakes at
//! least every `WAKE_EVERY` even when idle, so a shard whose stamp is older
//! than [`STALL_AFTER`] is stuck, or its thread has stopped.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use sky_proto::time::MonoTime;

/// A shard whose last stamp is older than this is not alive: ten wake-ups
/// missed in a row.
pub const STALL_AFTER: Duration = Duration::from_secs(1);

/// One shard's last wake-up, in milliseconds of the node's clock.
#[derive(Debug, Default)]
pub(super) struct Heartbeat(AtomicU64);

impl Heartbeat {
    /// The shard is awake at `now`.
    pub(super) fn beat(&self, now: MonoTime) {
        self.0.store(millis(now), Ordering::Relaxed);
    }

    /// Whether the last stamp is within [`STALL_AFTER`] of `now`.
    pub(super) fn alive(&self, now: MonoTime) -> bool {
        millis(now).saturating_sub(self.0.load(Ordering::Relaxed)) <= STALL_AFTER.as_millis() as u64
    }
}

fn millis(t: MonoTime) -> u64 {
    t.as_duration().as_millis() as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_shard_is_alive_until_it_misses_ten_wake_ups() {
        let h = Heartbeat::default();
        h.beat(MonoTime::from_millis(5_000));
        assert!(h.alive(MonoTime::from_millis(5_000)));
        assert!(h.alive(MonoTime::from_millis(6_000)));
        assert!(!h.alive(MonoTime::from_millis(6_001)));
        h.beat(MonoTime::from_millis(6_001));
        assert!(h.alive(MonoTime::from_millis(6_001)));
    }
}
