//! Tests of `sys`.

use super::*;

#[test]
fn raw_addresses_round_trip() {
    for (addr, v6) in [("192.0.2.1:7700", false), ("[2001:db8::5]:1", true)] {
        let addr: SocketAddr = addr.parse().unwrap();
        let mut raw = RawAddr::zeroed();
        raw.set(addr, v6);
        assert_eq!(raw.get(), Some(addr));
    }
    let mut raw = RawAddr::zeroed();
    raw.set("192.0.2.1:9".parse().unwrap(), true);
    assert_eq!(
        raw.get().map(sky_proto::wire::canonical),
        Some("192.0.2.1:9".parse().unwrap())
    );
}
