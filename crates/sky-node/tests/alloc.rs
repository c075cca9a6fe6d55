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
use sky_node::shard::{Shard, ShardConfig};
use sky_proto::time::MonoTime;
use sky_proto::wire::{Cookie, Flags, MAX_MESSAGE_LEN, Message, Tag, Token, VirtualAddr};

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

const POPULATION: u8 = 64;

/// The steady-state mix for one client: ping, register again, keepalive,
/// lookup of an online and an offline address.
fn steady_mix(cookie: Cookie, i: u8) -> [Message; 5] {
    let tag = Tag([i; 4]);
    let token = Token([i; 16]);
    [
        Message::Ping { tag, cookie },
        Message::Register {
            tag,
            cookie,
            flags: Flags(0),
            token,
        },
        Message::Keepalive {
            ring: 0,
            tag,
            cookie,
            address: VirtualAddr::from_token(&token),
        },
        Message::Lookup {
            tag,
            cookie,
            target: VirtualAddr::from_token(&Token([(i + 1) % POPULATION; 16])),
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
    let mut run = |rounds: usize| {
        for r in 0..rounds {
            for i in 0..POPULATION {
                for msg in steady_mix(cookie, i) {
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
    // Every reply and introduction comes back to this one socket (it is
    // caller and target). Send a mix, then read until the node answers the
    // last ping, so every datagram was handled before we count again.
    let mut run = |rounds: u32| {
        for _ in 0..rounds {
            for i in 0..POPULATION {
                for msg in steady_mix(cookie, i) {
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
