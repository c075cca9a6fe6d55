//! `earth_stranger`: a real earth client (`Earth`, user "alice" with one
//! friend "bob") receiving arbitrary datagrams, through its public API
//! only: `Earth::new`, `handle_datagram`, `handle_timeout`,
//! `poll_transmit`, `poll_event`, `go_online`, `lookup`.
//!
//! Setup byte: bit 0 goes online, bit 1 looks bob up, bit 2 turns cover
//! traffic on, bit 3 adds a second bootstrap node. Then records: a mode
//! byte, a time step byte and a datagram. Mode (low two bits):
//! - 0: from a stranger: one of four fixed endpoints, or (bits 2–4 all
//!   set) one read from the input;
//! - 1: from an endpoint the client has sent to: its bootstrap node
//!   (bits 2–5 zero) or the n-th endpoint it contacted (the sky's members,
//!   punched peers). With bit 6, the tag of the client's last datagram to
//!   that endpoint is written into bytes 2..6, so replies match requests
//!   and the fuzzer reaches past tag checks;
//! - 2: time passes (`handle_timeout`), the datagram is unused;
//! - 3: `lookup("bob")` (bit 2 clear) or `go_online` (bit 2 set).
//!
//! Checks: nothing panics; every datagram the client sends fits
//! [`MAX_DATAGRAM_LEN`]; and a datagram from a stranger (an endpoint the
//! client never sent to) gets at most one datagram in answer, sent back to
//! its source, no longer than it, and only if it was a handshake msg1:
//! the client is no amplifier and no reflector. What `handle_datagram`
//! does today is stricter — it answers no stranger at all: a msg1 is
//! answered only if it proves a friend's static key, a msg2 or data is
//! taken only from a peer the client is handshaking with or connected to,
//! a punch is ignored, anything else dropped (an introduction from a
//! non-node is reported as forged). The bound leaves room for one short
//! refusal of a valid msg1 from a key that is no friend (a protocol change
//! under way), which is the most a stranger may ever get; the seed
//! `stranger-msg1` is such a handshake.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::Duration;

use sky_earth::client::{Config, Earth, Transmit};
use sky_earth::identity::{Friends, Identity};
use sky_earth::ratchet::DEFAULT_EPOCH;
use sky_earth::state::State;
use sky_proto::frame::{MSG1, MSG1_LEN};
use sky_proto::time::UnixTime;
use sky_proto::wire::{self, MAX_DATAGRAM_LEN};

use crate::{Input, endpoint, step};

/// The time every run starts at (2027), as in `sky-harness`.
pub const T0: UnixTime = UnixTime::from_secs(1_800_000_000);
/// The bootstrap node.
pub const SKY: &str = "198.51.100.1:7700";
/// The second bootstrap node (setup bit 3).
pub const SKY2: &str = "198.51.100.2:7700";
/// Strangers 0..4.
pub const STRANGERS: [&str; 4] = [
    "203.0.113.66:4000",
    "[2001:db8::66]:4000",
    "[::ffff:203.0.113.67]:5000",
    "0.0.0.0:0",
];

/// Alice's identity with bob as her friend, made once.
pub fn alice_state() -> &'static State {
    static STATE: OnceLock<State> = OnceLock::new();
    STATE.get_or_init(|| {
        let born = T0 - Duration::from_secs(86_400 * 3);
        let alice = Identity::generate([1; 64], DEFAULT_EPOCH, born);
        let mut bob = Identity::generate([2; 64], DEFAULT_EPOCH, born);
        let mut friends = Friends::default();
        friends
            .add("bob", bob.invite(T0).into())
            .expect("a new friend");
        State::new(alice, friends)
    })
}

pub fn run(data: &[u8]) {
    let mut input = Input::new(data);
    let setup = input.u8();
    let sky: SocketAddr = SKY.parse().expect("fixed endpoint");
    let mut bootstrap = vec![sky];
    if setup & 8 != 0 {
        bootstrap.push(SKY2.parse().expect("fixed endpoint"));
    }
    let mut config = Config::new(bootstrap.clone());
    if setup & 4 != 0 {
        config.cover = Some(Duration::from_secs(10));
    }
    let mut now = T0;
    let mut earth = Earth::new(config, alice_state().clone(), [50; 32], now);
    let mut seen = Contacted {
        endpoints: bootstrap.clone(),
        last_tag: HashMap::new(),
    };

    if setup & 1 != 0 {
        earth.go_online(now);
    }
    if setup & 2 != 0 {
        earth.lookup(now, "bob");
    }
    seen.drain(&mut earth);

    let mut records = 0;
    while !input.is_empty() && records < 200 {
        records += 1;
        let mode = input.u8();
        now += step(input.u8());
        match mode & 3 {
            0 => {
                let from = match (mode >> 2) & 7 {
                    7 => endpoint(&mut input),
                    i => STRANGERS[usize::from(i) % STRANGERS.len()]
                        .parse()
                        .expect("fixed endpoint"),
                };
                let mut datagram = input.chunk().to_vec();
                let request = datagram.clone();
                let stranger = !seen.endpoints.contains(&wire::canonical(from));
                earth.handle_datagram(now, from, &mut datagram);
                let sent = seen.drain(&mut earth);
                if stranger {
                    check_answer_to_stranger(from, &request, &sent);
                }
            }
            1 => {
                let from = match usize::from((mode >> 2) & 15) {
                    0 => sky,
                    n => seen.endpoints[(n - 1) % seen.endpoints.len()],
                };
                let mut datagram = input.chunk().to_vec();
                if mode & 0x40 != 0
                    && datagram.len() >= 6
                    && let Some(tag) = seen.last_tag.get(&from)
                {
                    datagram[2..6].copy_from_slice(tag);
                }
                earth.handle_datagram(now, from, &mut datagram);
                seen.drain(&mut earth);
            }
            2 => {
                earth.handle_timeout(now);
                seen.drain(&mut earth);
            }
            _ => {
                if mode & 4 == 0 {
                    earth.lookup(now, "bob");
                } else {
                    earth.go_online(now);
                }
                seen.drain(&mut earth);
            }
        }
    }
}

/// At most one datagram in answer to a stranger: to its source, no longer
/// than what it sent, and only to a handshake msg1.
fn check_answer_to_stranger(from: SocketAddr, request: &[u8], sent: &[Transmit]) {
    match sent {
        [] => {}
        [answer] => {
            assert_eq!(
                wire::canonical(answer.dst),
                wire::canonical(from),
                "answer to a stranger sent elsewhere"
            );
            assert!(
                answer.bytes.len() <= request.len(),
                "{}-byte answer to a {}-byte datagram from a stranger",
                answer.bytes.len(),
                request.len()
            );
            assert!(
                request.len() == MSG1_LEN && request[0] == MSG1,
                "answered a stranger's datagram that is no msg1"
            );
        }
        many => panic!("{} datagrams in answer to a stranger", many.len()),
    }
}

/// Every endpoint the client has sent to, in order of first contact
/// (the bootstrap nodes first), with the tag bytes of its last datagram
/// there.
struct Contacted {
    endpoints: Vec<SocketAddr>,
    last_tag: HashMap<SocketAddr, [u8; 4]>,
}

impl Contacted {
    /// Takes every datagram and event the client has; checks each
    /// datagram's size and returns the datagrams.
    fn drain(&mut self, earth: &mut Earth) -> Vec<Transmit> {
        let mut sent = Vec::new();
        while let Some(t) = earth.poll_transmit() {
            assert!(t.bytes.len() <= MAX_DATAGRAM_LEN, "{} bytes", t.bytes.len());
            let dst = wire::canonical(t.dst);
            if !self.endpoints.contains(&dst) {
                self.endpoints.push(dst);
            }
            if let Some(tag) = t.bytes.get(2..6) {
                self.last_tag.insert(dst, tag.try_into().expect("4 bytes"));
            }
            sent.push(t);
        }
        while earth.poll_event().is_some() {}
        sent
    }
}
