//! Idle: does our NAT keep an idle mapping as long as the keepalive
//! interval? Many mobile and carrier NATs forget a UDP mapping after 10 to
//! 30 s of silence; behind one, the sky's entry points at a port that no
//! longer leads to us until the next keepalive, and a friend's
//! introduction in between is lost.
//!
//! The test: when the mapping towards one of our owners has been idle for
//! [`TEST_AT`] of the keepalive interval, a fresh socket looks our own
//! address up at that owner; the owner introduces the "caller" to our
//! registered endpoint, through that idle mapping. The introduction comes
//! back: the NAT kept it (tested again an hour later). It does not, twice:
//! the NAT forgets sooner, the keepalive interval becomes under half the
//! idle time that failed (down to
//! [`FLOOR`]) and every owner gets a keepalive at once; then the test runs
//! again at the new interval. The owner learns nothing new (a lookup of an
//! address from the IP registered under it), and the look-up socket is
//! released at once.
//!
//! Owns: the test in flight and its socket. Timer: [`Timer::Idle`].

use std::net::SocketAddr;
use std::time::Duration;

use sky_proto::time::UnixTime;
use sky_proto::wire::{Message, Tag, VirtualAddr};

use super::event::SocketId;
use super::io::Io;
use super::timers::Timer;

/// The share of the keepalive interval an owner's mapping is left idle
/// before it is tested.
pub(crate) const TEST_AT: f64 = 0.8;
/// The shortest keepalive interval the test leads to.
pub(crate) const FLOOR: Duration = Duration::from_secs(5);
/// How long the introduction may take to come back.
const WAIT: Duration = Duration::from_secs(2);
/// How long a passed test holds before the next.
const RETEST: Duration = Duration::from_secs(3600);
/// Failed tests in a row before the interval is shortened (one datagram
/// lost is not a NAT).
const FAILURES: u32 = 2;

/// What the registrations say about the mapping to test.
pub(crate) struct Subject {
    pub(crate) node: SocketAddr,
    pub(crate) address: VirtualAddr,
    pub(crate) last_sent: UnixTime,
    pub(crate) interval: Duration,
}

struct Test {
    socket: SocketId,
    node: SocketAddr,
    tag: Tag,
    target: VirtualAddr,
    /// The caller address the owner will introduce: ours to recognise.
    marker: VirtualAddr,
    /// How long the mapping had been idle when the lookup went.
    idle: Duration,
    passed: bool,
    /// Random bytes where a friend's lookup has its sealed hint.
    hint: [u8; 16],
}

/// What [`Idle::on_timer`] asks the caller to do.
pub(crate) enum Verdict {
    /// Nothing (a test started, or waits).
    Nothing,
    /// The NAT forgets sooner: keepalives every this long.
    Shorten(Duration),
}

/// The machine (see the module documentation).
pub(crate) struct Idle {
    test: Option<Test>,
    failures: u32,
    enabled: bool,
    /// Tests that passed, and intervals shortened, for the record.
    pub(crate) passed: u32,
    pub(crate) shortened: u32,
}

impl Idle {
    pub(crate) fn new(enabled: bool) -> Idle {
        Idle {
            test: None,
            failures: 0,
            enabled,
            passed: 0,
            shortened: 0,
        }
    }

    /// Registered (again): test when the mapping has been idle long
    /// enough, unless a test is already due.
    pub(crate) fn schedule(&mut self, io: &mut Io, subject: &Subject) {
        if !self.enabled || self.test.is_some() || io.timers.get(Timer::Idle).is_some() {
            return;
        }
        io.timers.set(
            Timer::Idle,
            subject.last_sent + subject.interval.mul_f64(TEST_AT),
        );
    }

    /// [`Timer::Idle`]: start a test (`subject`: what to test now), or
    /// judge the one in flight.
    pub(crate) fn on_timer(
        &mut self,
        now: UnixTime,
        io: &mut Io,
        subject: Option<Subject>,
    ) -> Verdict {
        if let Some(test) = self.test.take() {
            io.release(test.socket);
            if test.passed {
                self.failures = 0;
                self.passed += 1;
                io.timers.set(Timer::Idle, now + RETEST);
                return Verdict::Nothing;
            }
            self.failures += 1;
            if self.failures >= FAILURES {
                self.failures = 0;
                self.shortened += 1;
                // Under half of what failed: a margin for the NAT's own timer.
                let shorter = test.idle.mul_f64(0.45).max(FLOOR);
                return Verdict::Shorten(shorter);
            }
            // Once more, at the next chance.
        }
        let Some(s) = subject else {
            return Verdict::Nothing;
        };
        let idle = now.saturating_duration_since(s.last_sent);
        let due = s.interval.mul_f64(TEST_AT);
        if idle < due.mul_f64(0.9) || s.interval <= FLOOR {
            // A keepalive went since: wait for the mapping to idle again.
            if s.interval > FLOOR {
                io.timers.set(Timer::Idle, s.last_sent + due);
            }
            return Verdict::Nothing;
        }
        let b = io.rng.bytes();
        let mut marker = [0u8; 16];
        let mut hint = [0u8; 16];
        marker.copy_from_slice(&b[..16]);
        hint.copy_from_slice(&b[16..]);
        let test = Test {
            socket: io.new_socket(),
            node: s.node,
            tag: io.tag(),
            target: s.address,
            marker: VirtualAddr(marker),
            idle,
            passed: false,
            hint,
        };
        send(io, &test);
        self.test = Some(test);
        io.timers.set(Timer::Idle, now + WAIT);
        Verdict::Nothing
    }

    /// The keepalive interval is now `interval`: test again once the
    /// mapping has idled that long.
    pub(crate) fn after_shorten(&mut self, now: UnixTime, io: &mut Io, interval: Duration) {
        if interval > FLOOR {
            io.timers.set(Timer::Idle, now + interval.mul_f64(TEST_AT));
        }
    }

    /// An introduction of `caller`: `true` if it is our test's (consumed).
    pub(crate) fn introduced(&mut self, caller: &VirtualAddr) -> bool {
        match self.test.as_mut() {
            Some(t) if t.marker == *caller => {
                t.passed = true;
                true
            }
            _ => false,
        }
    }

    /// A cookie reply on `socket` from `node` to `tag`: the test's lookup
    /// goes again with it.
    pub(crate) fn on_cookie(&self, io: &mut Io, socket: SocketId, node: SocketAddr, tag: Tag) {
        if let Some(t) = &self.test
            && (t.socket, t.node, t.tag) == (socket, node, tag)
        {
            send(io, t);
        }
    }
}

fn send(io: &mut Io, t: &Test) {
    let (tag, target, caller, hint) = (t.tag, t.target, t.marker, t.hint);
    io.request(t.socket, t.node, |cookie| Message::Lookup {
        tag,
        cookie,
        target,
        caller,
        hint,
    });
}
