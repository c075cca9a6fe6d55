//! Tests of `bench`.

use super::stun::{stun_request, stun_response};
use super::*;

#[test]
fn stun_request_is_a_binding_request() {
    let mut b = [0u8; 64];
    let n = stun_request(7, &mut b);
    assert_eq!(n, 20);
    assert_eq!(&b[..8], &[0, 1, 0, 0, 0x21, 0x12, 0xa4, 0x42]);
    let mut resp = b;
    resp[0..2].copy_from_slice(&[1, 1]);
    assert_eq!(stun_response(&resp[..20]), Some(7));
    assert_eq!(stun_response(&b[..20]), None);
}

#[test]
fn threads_share_clients_rate_and_population_without_overlap() {
    let cfg = BenchConfig {
        clients: 33,
        threads: 4,
        rate: Some(10_003),
        population: 1_001,
        ..BenchConfig::default()
    };
    let shares: Vec<Share> = (0..4).map(|t| Share::of(&cfg, t)).collect();
    assert_eq!(shares.iter().map(|s| s.clients).sum::<usize>(), 33);
    assert_eq!(shares.iter().map(|s| s.rate.unwrap()).sum::<u64>(), 10_003);
    assert!(shares.iter().all(|s| s.clients >= 8 && s.clients <= 9));
    assert_eq!(shares[0].population.start, 0);
    for w in shares.windows(2) {
        assert_eq!(w[0].population.end, w[1].population.start);
    }
    assert_eq!(shares[3].population.end, 1_001);
    // One thread: everything, as before threads.
    let one = Share::of(&BenchConfig::default(), 0);
    assert_eq!((one.clients, one.rate), (32, None));
    assert_eq!(one.population, 0..10_000);
}

#[test]
fn a_run_that_cannot_share_is_refused_before_it_starts() {
    for cfg in [
        BenchConfig {
            threads: 0,
            ..BenchConfig::default()
        },
        BenchConfig {
            threads: 4,
            clients: 3,
            ..BenchConfig::default()
        },
        BenchConfig {
            threads: 4,
            population: 3,
            ..BenchConfig::default()
        },
        BenchConfig {
            threads: 4,
            rate: Some(3),
            ..BenchConfig::default()
        },
    ] {
        assert!(matches!(check(&cfg), Err(BenchError::Setup(_))));
    }
}

#[test]
fn percentiles_come_from_the_merged_histogram() {
    let mut h = vec![0u32; HISTOGRAM_US + 1];
    h[10] = 98;
    h[20] = 1;
    h[3000] = 1;
    let l = Latency::of(&h);
    assert_eq!(
        (l.p50_us, l.p99_us, l.p999_us, l.max_us),
        (10.0, 20.0, 3000.0, 3000.0)
    );
    assert_eq!(Latency::of(&[0; 4]).p50_us, 0.0);
}

#[test]
fn a_thread_that_fails_before_the_barrier_releases_the_others() {
    let barrier = std::sync::Barrier::new(3);
    let failed = std::sync::atomic::AtomicBool::new(false);
    let started: Vec<bool> = std::thread::scope(|s| {
        let threads: Vec<_> = (0..3)
            .map(|t| {
                let (barrier, failed) = (&barrier, &failed);
                s.spawn(move || {
                    let mut arrival = Arrival {
                        barrier,
                        failed,
                        arrived: false,
                    };
                    if t == 1 {
                        return false; // gone without waiting: the drop arrives
                    }
                    arrival.wait(true)
                })
            })
            .collect();
        threads.into_iter().map(|t| t.join().unwrap()).collect()
    });
    assert_eq!(started, [false, false, false]);
}

#[test]
fn member_keys_are_derived_alike_on_any_number_of_workers_and_sign_their_home_cookie() {
    use sky_proto::wire::{self, Cookie};

    let t = targets::Targets::alone("127.0.0.1:7700".parse().unwrap());
    // Two sockets, one node: member j's registration carries socket j % 2's
    // cookie.
    let cookies = vec![vec![Cookie([1; 8])], vec![Cookie([2; 8])]];
    let plan = keys::Plan {
        keys: true,
        sign: Some(&cookies),
    };
    let range = 5000..5000 + 9000;
    let (one, _) = keys::derive(&t, range.clone(), &plan, 1);
    let (four, mut proofs) = keys::derive(&t, range.clone(), &plan, 4);
    assert_eq!(one, four);
    for j in [0, 1, 4095, 4096, 8999] {
        assert_eq!(four[j], secret(range.start + j).address());
        let cookie = cookies[j % 2][0];
        let (key, sig) = proofs.register(j, 0, cookie);
        assert_eq!(key, secret(range.start + j).key());
        let statement = wire::register_statement(&cookie, keys::FLAGS);
        assert!(
            sky_node::proof::verify(&key, &statement, &sig),
            "member {j}"
        );
        // Another cookie (a new one for that socket): signed again.
        let other = Cookie([3; 8]);
        let (_, again) = proofs.register(j, 0, other);
        assert_ne!(again, sig);
        let statement = wire::register_statement(&other, keys::FLAGS);
        assert!(sky_node::proof::verify(&key, &statement, &again));
    }
    // Without signatures nothing but the addresses.
    let bare = keys::Plan {
        keys: false,
        sign: None,
    };
    let (addresses, mut proofs) = keys::derive(&t, 0..3, &bare, 2);
    assert_eq!(addresses[2], secret(2).address());
    let (key, sig) = proofs.register(2, 0, Cookie([1; 8]));
    assert_eq!(key, secret(2).key());
    let statement = wire::register_statement(&Cookie([1; 8]), keys::FLAGS);
    assert!(sky_node::proof::verify(&key, &statement, &sig));
}
