//! Two kinds of time, as two types that cannot be passed for each other.
//!
//! - [`MonoTime`]: a monotonic clock reading, time since an origin the
//!   driver chose (a node's start). What a sky node's shards, cookies,
//!   presence expiry and gossip timers run on: it never goes back, and it
//!   says nothing about the calendar.
//! - [`UnixTime`]: wall-clock time since the Unix epoch. What the earth
//!   client runs on, because a user's epochs and phase are calendar time
//!   that friends on other machines compute too.
//!
//! Sans-IO cores take one of them as `now`; only drivers and engines read a
//! clock. Both are a [`Duration`] inside; arithmetic with a `Duration`
//! saturates at zero instead of panicking.
//!
//! One cannot be passed for the other (this does not compile):
//!
//! ```compile_fail
//! use sky_proto::time::{MonoTime, UnixTime};
//! fn expire(_now: MonoTime) {}
//! expire(UnixTime::ZERO);
//! ```

use std::fmt;
use std::ops::{Add, AddAssign, Sub};
use std::time::Duration;

macro_rules! time_newtype {
    ($(#[$doc:meta])* $name:ident, $origin:literal) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name(Duration);

        impl $name {
            #[doc = concat!("The origin: ", $origin, ".")]
            pub const ZERO: $name = $name(Duration::ZERO);

            #[doc = concat!("The time `d` after ", $origin, ".")]
            pub const fn from_duration(d: Duration) -> $name {
                $name(d)
            }

            #[doc = concat!("`secs` seconds after ", $origin, ".")]
            pub const fn from_secs(secs: u64) -> $name {
                $name(Duration::from_secs(secs))
            }

            #[doc = concat!("`ms` milliseconds after ", $origin, ".")]
            pub const fn from_millis(ms: u64) -> $name {
                $name(Duration::from_millis(ms))
            }

            #[doc = concat!("The time since ", $origin, ".")]
            pub const fn as_duration(self) -> Duration {
                self.0
            }

            #[doc = concat!("Whole seconds since ", $origin, ".")]
            pub const fn as_secs(self) -> u64 {
                self.0.as_secs()
            }

            /// The time from `earlier` to `self`, zero if `earlier` is later.
            pub fn saturating_duration_since(self, earlier: $name) -> Duration {
                self.0.saturating_sub(earlier.0)
            }

            /// `d` before `self`, or `None` before the origin.
            pub fn checked_sub(self, d: Duration) -> Option<$name> {
                self.0.checked_sub(d).map($name)
            }
        }

        impl Add<Duration> for $name {
            type Output = $name;
            fn add(self, d: Duration) -> $name {
                $name(self.0.saturating_add(d))
            }
        }

        impl AddAssign<Duration> for $name {
            fn add_assign(&mut self, d: Duration) {
                self.0 = self.0.saturating_add(d);
            }
        }

        /// Saturates at the origin.
        impl Sub<Duration> for $name {
            type Output = $name;
            fn sub(self, d: Duration) -> $name {
                $name(self.0.saturating_sub(d))
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!(stringify!($name), "({:?})"), self.0)
            }
        }
    };
}

time_newtype!(
    /// A monotonic clock reading: time since the driver's origin (a node's
    /// start). Never compared with a [`UnixTime`].
    MonoTime,
    "the driver's origin"
);

time_newtype!(
    /// Wall-clock time since the Unix epoch (1970-01-01 UTC). Never
    /// compared with a [`MonoTime`].
    UnixTime,
    "the Unix epoch"
);

#[cfg(test)]
#[path = "tests/time.rs"]
mod tests;
