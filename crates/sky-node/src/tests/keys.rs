//! Tests of `keys`.

use super::*;

fn secret() -> NodeSecret {
    NodeSecret::new([7; 32])
}

#[test]
fn cookie_is_bound_to_ip_and_port() {
    let jar = CookieJar::new(&secret(), MonoTime::ZERO);
    let a: SocketAddr = "192.0.2.1:5000".parse().unwrap();
    let cookie = jar.issue(&a);
    assert!(jar.check(&a, &cookie));
    assert!(!jar.check(&"192.0.2.1:5001".parse().unwrap(), &cookie));
    assert!(!jar.check(&"192.0.2.2:5000".parse().unwrap(), &cookie));
    // The mapped form of the same endpoint is the same endpoint.
    assert!(jar.check(&"[::ffff:192.0.2.1]:5000".parse().unwrap(), &cookie));
}

#[test]
fn cookie_survives_one_rotation_but_not_two() {
    let s = secret();
    let mut jar = CookieJar::new(&s, MonoTime::ZERO);
    let a: SocketAddr = "[2001:db8::1]:9".parse().unwrap();
    let cookie = jar.issue(&a);
    jar.rotate(&s, MonoTime::ZERO + COOKIE_ROTATION);
    assert!(jar.check(&a, &cookie));
    jar.rotate(&s, MonoTime::ZERO + COOKIE_ROTATION * 2);
    assert!(!jar.check(&a, &cookie));
}

#[test]
fn shards_of_one_node_agree_on_cookies() {
    let s = secret();
    let mut one = CookieJar::new(&s, MonoTime::ZERO);
    let two = CookieJar::new(&s, MonoTime::ZERO + COOKIE_ROTATION * 5);
    one.rotate(&s, MonoTime::ZERO + COOKIE_ROTATION * 5);
    let a: SocketAddr = "192.0.2.1:1".parse().unwrap();
    assert!(two.check(&a, &one.issue(&a)));
}

#[test]
fn forged_introduction_is_rejected() {
    let keys = IntroKeys::new(&secret());
    let target = VirtualAddr([1; 16]);
    let key = keys.key_for(&target);
    let caller = VirtualAddr([2; 16]);
    let endpoint: SocketAddr = "192.0.2.9:4444".parse().unwrap();
    let mut buf = [0u8; wire::MAX_MESSAGE_LEN];
    let good = wire::Message::Introduction {
        caller,
        mac: introduction_mac(&key, &caller, &endpoint),
        hint: [5; 16],
        endpoint,
    };
    let n = good.emit(&mut buf);
    assert_eq!(
        verify_introduction(&[key], &buf[..n]),
        Ok((caller, endpoint, [5; 16]))
    );
    // Same caller, attacker's endpoint: the MAC no longer verifies.
    let forged = wire::Message::Introduction {
        caller,
        mac: introduction_mac(&key, &caller, &endpoint),
        hint: [5; 16],
        endpoint: "203.0.113.66:1".parse().unwrap(),
    };
    let n = forged.emit(&mut buf);
    assert_eq!(
        verify_introduction(&[key], &buf[..n]),
        Err(IntroError::Forged)
    );
}
