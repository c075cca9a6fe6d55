//! Zero heap allocations per datagram in a shard's steady state (SPEC §5,
//! §6), counted by a global allocator wrapper: first the sans-IO core alone,
//! then each real engine serving real sockets.
//!
//! Its own test binary because it replaces the global allocator, and a
//! single #[test] so that no other test allocates while it counts.

#![allow(clippy::disallowed_methods)] // tests drive real time and threads
#![allow(unsafe_code)] // a global allocator is an unsafe trait (sky-node is the crate with unsafe)

use std::alloc::{GlobalAlloc, Layout, System};
use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use sky_node::config::{Config, EngineChoice};
use sky_node::engine::Node;
use sky_node::keys::NodeSecret;
use sky_node::presence::Presence;
use sky_node::probe::AddrSecret;
use sky_node::shard::{Shard, ShardConfig};
use sky_proto::time::MonoTime;
use sky_proto::wire::{Cookie, Flags, Kind, MAX_MESSAGE_LEN, Message, Tag, VirtualAddr};

struct Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

// SAFETY: forwards every call to the system allocator unchanged.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: the caller's contract for `alloc` is passed on as is.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `System` through this wrapper, with `layout`.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: the caller's contract for `alloc_zeroed` is passed on as is.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: `ptr` came from `System` through this wrapper, with `layout`.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn allocations() -> u64 {
    ALLOCATIONS.load(Ordering::Relaxed)
}

fn emit(msg: Message, buf: &mut [u8]) -> usize {
    msg.emit(buf)
}

/// Addresses registered (from one source: the warm-up's new registrations
/// each take a signature check, within the source's budget for a second).
const POPULATION: u8 = 64;
const _: () = assert!(POPULATION as u16 <= sky_node::proof::CHECKS_PER_SOURCE);

/// The population's key pairs (derived and signed before counting: the
/// client's work, not the node's).
fn population() -> Vec<AddrSecret> {
    (0..POPULATION)
        .map(|i| AddrSecret::from_seed([i; 32]))
        .collect()
}

/// The steady-state mix for every client: ping, register again (signed;
/// from where it is, so a refresh), keepalive, lookup of an online and an
/// offline address.
fn steady_mixes(population: &[AddrSecret], cookie: Cookie) -> Vec<[Message; 5]> {
    (0..POPULATION)
        .map(|i| steady_mix(population, cookie, i))
        .collect()
}

fn steady_mix(population: &[AddrSecret], cookie: Cookie, i: u8) -> [Message; 5] {
    let tag = Tag([i; 4]);
    let key = &population[usize::from(i)];
    [
        Message::Ping { tag, cookie },
        key.register(tag, cookie, Flags(0)),
        Message::Keepalive {
            ring: 0,
            tag,
            cookie,
            address: key.address(),
        },
        Message::Lookup {
            tag,
            cookie,
            target: population[usize::from((i + 1) % POPULATION)].address(),
            caller: VirtualAddr([i; 16]),
            hint: [i; 16],
        },
        Message::Lookup {
            tag,
            cookie,
            target: VirtualAddr([0xff; 16]),
            caller: VirtualAddr([i; 16]),
            hint: [i; 16],
        },
    ]
}

fn core_steady_state_allocations() -> u64 {
    let secret = Arc::new(NodeSecret::new([1; 32]));
    let presence = Arc::new(Presence::new(1 << 16));
    let config = ShardConfig {
        intros_per_second: 255,
        ..ShardConfig::default()
    };
    let mut shard = Shard::new(secret, presence, config, MonoTime::ZERO);
    let from: SocketAddr = "192.0.2.1:4000".parse().unwrap();
    let mut buf = [0u8; 2048];
    let mut reply = [0u8; MAX_MESSAGE_LEN];
    let now = MonoTime::from_secs(10);
    let n = emit(
        Message::Ping {
            tag: Tag([0; 4]),
            cookie: Cookie::default(),
        },
        &mut buf,
    );
    let _ = shard.handle_datagram(now, from, &mut buf, n, &mut reply);
    let n = emit(
        Message::Keepalive {
            ring: 0,
            tag: Tag([0; 4]),
            cookie: Cookie::default(),
            address: VirtualAddr::default(),
        },
        &mut buf,
    );
    let _ = shard.handle_datagram(now, from, &mut buf, n, &mut reply);
    let cookie = match Message::decode(&reply[..14]) {
        Ok(Message::CookieReply { cookie, .. }) => cookie,
        other => panic!("{other:?}"),
    };
    let population = population();
    let mixes = steady_mixes(&population, cookie);
    let mut run = |rounds: usize| {
        for r in 0..rounds {
            for mix in &mixes {
                for &msg in mix {
                    let n = emit(msg, &mut buf);
                    let now = now + Duration::from_millis(r as u64);
                    let _ = shard.handle_datagram(now, from, &mut buf, n, &mut reply);
                }
            }
        }
    };
    run(2); // warm-up: the table holds the population
    let before = allocations();
    run(200); // 64 000 datagrams
    let during = allocations() - before;
    let _ = shard.take_stats();
    during
}

/// What the shard core allocates on the paths that check a signature: a
/// new address registered, moved to another source, unregistered, and a
/// registration whose signature does not verify (refused).
fn core_proof_allocations() -> u64 {
    let secret = Arc::new(NodeSecret::new([1; 32]));
    let presence = Arc::new(Presence::new(1 << 16));
    let mut shard = Shard::new(secret, presence, ShardConfig::default(), MonoTime::ZERO);
    let (a, b): (SocketAddr, SocketAddr) = (
        "192.0.2.1:4000".parse().unwrap(),
        "192.0.2.2:4000".parse().unwrap(),
    );
    let mut buf = [0u8; 2048];
    let mut reply = [0u8; MAX_MESSAGE_LEN];
    let start = MonoTime::from_secs(10);
    let mut cookie_of = |from| {
        let probe = Message::Keepalive {
            ring: 0,
            tag: Tag([0; 4]),
            cookie: Cookie::default(),
            address: VirtualAddr::default(),
        };
        let n = emit(probe, &mut buf);
        let _ = shard.handle_datagram(start, from, &mut buf, n, &mut reply);
        match Message::decode(&reply[..14]) {
            Ok(Message::CookieReply { cookie, .. }) => cookie,
            other => panic!("{other:?}"),
        }
    };
    let (ca, cb) = (cookie_of(a), cookie_of(b));
    let key = AddrSecret::from_seed([0xab; 32]);
    let tag = Tag([1; 4]);
    let forged = match key.register(tag, ca, Flags(0)) {
        Message::Register {
            tag,
            cookie,
            flags,
            key,
            mut sig,
        } => {
            sig.0[0] ^= 1;
            Message::Register {
                tag,
                cookie,
                flags,
                key,
                sig,
            }
        }
        _ => unreachable!(),
    };
    // Registered at a, moved to b, dropped from b; a forgery from a. Each
    // round a second later: 4 checks of each source's budget at most.
    // (source, datagram, the reply's kind and refusal reason)
    type Step = (SocketAddr, Message, Option<(Kind, u8)>);
    let round: [Step; 4] = [
        (
            a,
            key.register(tag, ca, Flags(0)),
            Some((Kind::Registered, 0)),
        ),
        (
            b,
            key.register(tag, cb, Flags(0)),
            Some((Kind::Registered, 0)),
        ),
        (b, key.unregister(tag, cb), None),
        // Refused: forged (reason 5).
        (a, forged, Some((Kind::Refused, 5))),
    ];
    let mut run = |rounds: u64| {
        for r in 0..rounds {
            let now = start + Duration::from_secs(r);
            for (from, msg, expected) in round {
                let n = emit(msg, &mut buf);
                let out = shard.handle_datagram(now, from, &mut buf, n, &mut reply);
                let got = out.reply.map(|len| {
                    let reason = if reply[1] == Kind::Refused as u8 {
                        reply[len - 1]
                    } else {
                        0
                    };
                    (Kind::from_byte(reply[1]).expect("a kind"), reason)
                });
                assert_eq!(got, expected, "{:?} in round {r}", msg.kind());
            }
        }
    };
    run(2); // warm-up
    let before = allocations();
    run(100); // 400 datagrams, 400 signature checks
    let during = allocations() - before;
    let _ = shard.take_stats();
    during
}

fn engine_steady_state_allocations(engine: EngineChoice) -> u64 {
    let node = Node::start(&Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        gossip: "127.0.0.1:0".parse().unwrap(),
        check: Some(0),
        metrics: None,
        shards: Some(1),
        engine,
        pin_cores: false,
        intros_per_second: 255,
        ..Config::default()
    })
    .unwrap();
    let sky = node.local_addr();
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    let mut buf = [0u8; 2048];
    let mut out = [0u8; MAX_MESSAGE_LEN];

    let n = emit(
        Message::Keepalive {
            ring: 0,
            tag: Tag([0; 4]),
            cookie: Cookie::default(),
            address: VirtualAddr::default(),
        },
        &mut out,
    );
    socket.send_to(&out[..n], sky).unwrap();
    let (len, _) = socket.recv_from(&mut buf).unwrap();
    let cookie = match Message::decode(&buf[..len]) {
        Ok(Message::CookieReply { cookie, .. }) => cookie,
        other => panic!("{other:?}"),
    };
    let population = population();
    let mixes = steady_mixes(&population, cookie);
    // Every reply and introduction comes back to this one socket (it is
    // caller and target). Send a mix, then read until the node answers the
    // last ping, so every datagram was handled before we count again.
    let mut run = |rounds: u32| {
        for _ in 0..rounds {
            for mix in &mixes {
                for &msg in mix {
                    let n = emit(msg, &mut out);
                    socket.send_to(&out[..n], sky).unwrap();
                }
                let n = emit(
                    Message::Ping {
                        tag: Tag([0xee; 4]),
                        cookie,
                    },
                    &mut out,
                );
                socket.send_to(&out[..n], sky).unwrap();
                loop {
                    let len = match socket.recv_from(&mut buf) {
                        Ok((len, _)) => len,
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                        Err(e) => panic!("the node does not answer: {e}"),
                    };
                    if buf[..len] == [1, 0x81, 0xee, 0xee, 0xee, 0xee] {
                        break;
                    }
                }
            }
        }
    };
    run(3); // warm-up
    let before = allocations();
    run(50); // 19 200 datagrams
    let during = allocations() - before;
    node.shutdown().unwrap();
    during
}

#[test]
fn zero_heap_allocations_per_datagram_in_steady_state() {
    let core = core_steady_state_allocations();
    assert_eq!(
        core, 0,
        "the shard core allocated {core} times for 64 000 datagrams"
    );
    let proofs = core_proof_allocations();
    assert_eq!(
        proofs, 0,
        "the shard core allocated {proofs} times checking 400 signatures"
    );

    let mut engines = vec![EngineChoice::Mmsg];
    match sky_node::engine::uring_available() {
        Ok(()) => engines.push(EngineChoice::Uring),
        Err(e) if std::env::var_os("CI").is_some() => panic!("io_uring unavailable in CI: {e}"),
        Err(e) => eprintln!("WARNING: io_uring unavailable ({e}); counting only the mmsg engine"),
    }
    for engine in engines {
        let n = engine_steady_state_allocations(engine);
        assert_eq!(n, 0, "{engine:?}: {n} allocations for 19 200 datagrams");
    }
}
