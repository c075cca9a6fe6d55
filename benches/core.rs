//! Micro-benchmarks of the sans-IO parts: wire parse and emit per message
//! kind, and the shard core handling datagrams with no sockets at all.
//!
//! `cargo bench --bench core`; `cargo test --all-targets` runs each once.

use std::hint::black_box;
use std::net::SocketAddr;
use std::sync::Arc;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};

use sky_node::keys::NodeSecret;
use sky_node::presence::{Budgets, Presence};
use sky_node::probe::AddrSecret;
use sky_node::shard::{Shard, ShardConfig};
use sky_proto::time::MonoTime;
use sky_proto::wire::{
    self, AddrKey, Cookie, Flags, IntroKey, MAX_MESSAGE_LEN, Mac, Message, Signature, Tag,
    VirtualAddr,
};

fn messages() -> Vec<(&'static str, Message)> {
    let tag = Tag([1; 4]);
    let cookie = Cookie([2; 8]);
    let ep: SocketAddr = "192.0.2.1:4000".parse().unwrap();
    vec![
        ("ping", Message::Ping { tag, cookie }),
        (
            "register",
            Message::Register {
                tag,
                cookie,
                flags: Flags(1),
                key: AddrKey([3; 32]),
                sig: Signature([8; 64]),
            },
        ),
        (
            "keepalive",
            Message::Keepalive {
                ring: 0,
                tag,
                cookie,
                address: VirtualAddr([4; 16]),
            },
        ),
        (
            "lookup",
            Message::Lookup {
                tag,
                cookie,
                target: VirtualAddr([4; 16]),
                caller: VirtualAddr([5; 16]),
                hint: [0x5e; 16],
            },
        ),
        (
            "registered",
            Message::Registered {
                tag,
                keepalive_secs: 25,
                intro_key: IntroKey([6; 32]),
                observed: ep,
            },
        ),
        (
            "online",
            Message::Online {
                tag,
                flags: Flags(0),
                endpoint: ep,
            },
        ),
        (
            "introduction",
            Message::Introduction {
                caller: VirtualAddr([5; 16]),
                mac: Mac([7; 8]),
                hint: [0x5e; 16],
                endpoint: ep,
            },
        ),
    ]
}

fn wire(c: &mut Criterion) {
    let mut g = c.benchmark_group("wire");
    g.throughput(Throughput::Elements(1));
    for (name, msg) in messages() {
        let mut buf = [0u8; MAX_MESSAGE_LEN];
        let n = msg.emit(&mut buf);
        g.bench_function(format!("parse/{name}"), |b| {
            b.iter(|| Message::decode(black_box(&buf[..n])))
        });
        g.bench_function(format!("emit/{name}"), |b| {
            let mut out = [0u8; MAX_MESSAGE_LEN];
            b.iter(|| black_box(msg).emit(&mut out))
        });
    }
    g.finish();
}

/// One shard core, 1 000 registered addresses, handling each kind of
/// steady-state request from a validated source (a registration again
/// from where it is: a refresh, no signature checked).
fn shard(c: &mut Criterion) {
    let secret = Arc::new(NodeSecret::new([1; 32]));
    let presence = Arc::new(Presence::with_budgets(1 << 20, Budgets::unlimited()));
    let config = ShardConfig {
        intros_per_second: 255,
        ..ShardConfig::default()
    };
    let mut shard = Shard::new(secret, presence, config, MonoTime::ZERO);
    let from: SocketAddr = "192.0.2.1:4000".parse().unwrap();
    // Registering 1 000 new addresses takes 1 000 signature checks: the
    // source's budget of them spreads those over the seconds before `now`.
    let now = MonoTime::from_secs(20);
    let per_second = u32::from(sky_node::proof::CHECKS_PER_SOURCE);
    let mut buf = [0u8; 2048];
    let mut reply = [0u8; MAX_MESSAGE_LEN];
    let send = |shard: &mut Shard,
                at: MonoTime,
                msg: Message,
                buf: &mut [u8; 2048],
                reply: &mut [u8; MAX_MESSAGE_LEN]| {
        let n = msg.emit(buf);
        shard.handle_datagram(at, from, buf, n, reply)
    };
    let probe = Message::Keepalive {
        ring: 0,
        tag: Tag([0; 4]),
        cookie: Cookie::default(),
        address: VirtualAddr::default(),
    };
    let _ = send(&mut shard, MonoTime::ZERO, probe, &mut buf, &mut reply);
    let cookie = match Message::decode(&reply[..14]) {
        Ok(Message::CookieReply { cookie, .. }) => cookie,
        other => panic!("{other:?}"),
    };
    let member = |i: u32| {
        let mut seed = [0u8; 32];
        seed[..4].copy_from_slice(&i.to_le_bytes());
        AddrSecret::from_seed(seed)
    };
    for i in 0..1000u32 {
        let reg = member(i).register(Tag([0; 4]), cookie, Flags(0));
        let at = MonoTime::from_secs(u64::from(1 + i / per_second));
        let _ = send(&mut shard, at, reg, &mut buf, &mut reply);
        assert!(
            matches!(
                Message::decode(&reply[..46]),
                Ok(Message::Registered { .. })
            ),
            "registration {i}"
        );
    }
    let online = member(0).address();
    let tag = Tag([1; 4]);
    let cases = [
        ("ping", Message::Ping { tag, cookie }),
        (
            "keepalive",
            Message::Keepalive {
                ring: 0,
                tag,
                cookie,
                address: online,
            },
        ),
        (
            "lookup_online",
            Message::Lookup {
                tag,
                cookie,
                target: online,
                caller: VirtualAddr([9; 16]),
                hint: [0x5e; 16],
            },
        ),
        (
            "lookup_offline",
            Message::Lookup {
                tag,
                cookie,
                target: VirtualAddr([9; 16]),
                caller: online,
                hint: [0x5e; 16],
            },
        ),
        ("register_again", member(0).register(tag, cookie, Flags(0))),
        (
            "no_cookie",
            Message::Lookup {
                tag,
                cookie: Cookie::default(),
                target: online,
                caller: online,
                hint: [0x5e; 16],
            },
        ),
    ];
    let mut g = c.benchmark_group("shard");
    g.throughput(Throughput::Elements(1));
    for (name, msg) in cases {
        let mut bytes = [0u8; 2048];
        let n = msg.emit(&mut bytes);
        g.bench_function(name, |b| {
            b.iter(|| {
                buf[..n].copy_from_slice(&bytes[..n]);
                shard.handle_datagram(now, from, &mut buf, n, &mut reply)
            })
        });
    }
    g.finish();
}

/// The presence table at 10^3, 10^5 and 10^7 entries (10^7 only under
/// `cargo bench`: under `cargo test` each size is built in a debug build).
fn presence(c: &mut Criterion) {
    let full = std::env::args().any(|a| a == "--bench");
    let sizes: &[usize] = if full {
        &[1_000, 100_000, 10_000_000]
    } else {
        &[1_000]
    };
    let ep: SocketAddr = "192.0.2.1:4000".parse().unwrap();
    // Any 32 bytes make an address (no key pair: the table checks nothing).
    let address = |i: usize| {
        let mut t = [0u8; 32];
        t[..8].copy_from_slice(&(i as u64).to_le_bytes());
        VirtualAddr::from_key(&AddrKey(t))
    };
    let mut g = c.benchmark_group("presence");
    g.throughput(Throughput::Elements(1));
    for &n in sizes {
        let table = Presence::with_budgets(n + 1024, Budgets::unlimited());
        let addresses: Vec<VirtualAddr> = (0..n).map(address).collect();
        for a in &addresses {
            table.register(*a, ep, Flags(0), 0, 1000).unwrap();
        }
        let mut i = 0usize;
        g.bench_function(format!("lookup/{n}"), |b| {
            b.iter(|| {
                i = (i + 7919) % n;
                table.lookup(&addresses[i], ep.ip(), 10, (255, 255))
            })
        });
        g.bench_function(format!("peek/{n}"), |b| {
            b.iter(|| {
                i = (i + 7919) % n;
                table.peek(&addresses[i], 10)
            })
        });
        g.bench_function(format!("refresh/{n}"), |b| {
            b.iter(|| {
                i = (i + 7919) % n;
                table.refresh(&addresses[i], ep, 10, 1000)
            })
        });
        let fresh = address(usize::MAX / 2);
        g.bench_function(format!("insert_remove/{n}"), |b| {
            b.iter(|| {
                table.register(fresh, ep, Flags(0), 0, 1000).unwrap();
                table.remove(&fresh)
            })
        });
        // A lookup while another thread inserts and removes entries as fast
        // as it can (registrations arriving on another shard): what the
        // writers' shared words cost the readers. Bounded: the writer stops
        // when the benchmark is done, or after 10^8 pairs.
        if n == 1_000 {
            let stop = std::sync::atomic::AtomicBool::new(false);
            std::thread::scope(|s| {
                s.spawn(|| {
                    let mut j = 0usize;
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) && j < 100_000_000 {
                        let a = address(usize::MAX / 4 + j % 64);
                        let _ = table.register(a, ep, Flags(0), 0, 1000);
                        table.remove(&a);
                        j += 1;
                    }
                });
                g.bench_function(format!("lookup_while_writing/{n}"), |b| {
                    b.iter(|| {
                        i = (i + 7919) % n;
                        table.lookup(&addresses[i], ep.ip(), 10, (255, 255))
                    })
                });
                stop.store(true, std::sync::atomic::Ordering::Relaxed);
            });
        }
        // The sweep's cost per entry scanned (nothing expires).
        g.throughput(Throughput::Elements(n as u64));
        g.bench_function(format!("sweep_scan/{n}"), |b| b.iter(|| table.sweep(10)));
        g.throughput(Throughput::Elements(1));
        drop(table);
        let key = |a: &VirtualAddr| {
            let mut k = [0u8; 12];
            k.copy_from_slice(&a.0[..12]);
            k
        };
        // The table v1 was: a DashMap (256 lock shards, SipHash) of the
        // same 12-byte keys and 24-byte entries, read under a shard lock.
        let map: dashmap::DashMap<[u8; 12], [u8; 24], std::hash::RandomState> =
            dashmap::DashMap::with_hasher_and_shard_amount(Default::default(), 256);
        for a in &addresses {
            map.insert(key(a), [1; 24]);
        }
        g.bench_function(format!("dashmap_lookup/{n}"), |b| {
            b.iter(|| {
                i = (i + 7919) % n;
                map.get(&key(&addresses[i])).map(|e| e[0])
            })
        });
        g.bench_function(format!("dashmap_refresh/{n}"), |b| {
            b.iter(|| {
                i = (i + 7919) % n;
                if let Some(mut e) = map.get_mut(&key(&addresses[i])) {
                    e[20] = e[20].wrapping_add(1);
                }
            })
        });
        drop(map);
        // papaya: lock-free reads under an epoch guard; a value is
        // immutable, so a refresh is an update that allocates a new one.
        let map: papaya::HashMap<[u8; 12], [u8; 24], std::hash::RandomState> =
            papaya::HashMap::with_capacity_and_hasher(n, Default::default());
        for a in &addresses {
            map.pin().insert(key(a), [1; 24]);
        }
        g.bench_function(format!("papaya_lookup/{n}"), |b| {
            b.iter(|| {
                i = (i + 7919) % n;
                map.pin().get(&key(&addresses[i])).map(|e| e[0])
            })
        });
        g.bench_function(format!("papaya_refresh/{n}"), |b| {
            b.iter(|| {
                i = (i + 7919) % n;
                map.pin().update(key(&addresses[i]), |e| {
                    let mut e = *e;
                    e[20] = e[20].wrapping_add(1);
                    e
                });
            })
        });
        drop(map);
        // scc: buckets with a per-bucket lock for writers.
        let map: scc::HashMap<[u8; 12], [u8; 24], std::hash::RandomState> =
            scc::HashMap::with_capacity_and_hasher(n, Default::default());
        for a in &addresses {
            let _ = map.insert_sync(key(a), [1; 24]);
        }
        g.bench_function(format!("scc_lookup/{n}"), |b| {
            b.iter(|| {
                i = (i + 7919) % n;
                map.read_sync(&key(&addresses[i]), |_, e| e[0])
            })
        });
        g.bench_function(format!("scc_refresh/{n}"), |b| {
            b.iter(|| {
                i = (i + 7919) % n;
                map.update_sync(&key(&addresses[i]), |_, e| {
                    e[20] = e[20].wrapping_add(1);
                })
            })
        });
        drop(map);
    }
    g.finish();
}

/// The check of a registration's signature that creating or moving an
/// entry takes (and every unregister): what a refresh saves.
fn proof(c: &mut Criterion) {
    let secret = AddrSecret::from_seed([7; 32]);
    let statement = wire::register_statement(&Cookie([2; 8]), Flags(0));
    let sig = secret.sign_register(&Cookie([2; 8]), Flags(0));
    let mut g = c.benchmark_group("proof");
    g.throughput(Throughput::Elements(1));
    g.bench_function("verify", |b| {
        b.iter(|| sky_node::proof::verify(black_box(&secret.key()), &statement, &sig))
    });
    g.bench_function("sign", |b| {
        b.iter(|| secret.sign_register(black_box(&Cookie([2; 8])), Flags(0)))
    });
    g.finish();
}

criterion_group!(benches, wire, shard, presence, proof);
criterion_main!(benches);
