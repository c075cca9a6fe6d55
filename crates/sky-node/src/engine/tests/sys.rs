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

#[test]
fn the_node_key_is_created_owner_only_kept_and_refused_when_others_may_read_it() {
    use std::os::unix::fs::PermissionsExt;
    let dir = std::env::temp_dir().join(format!("sky-key-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("node.key");
    let _ = std::fs::remove_file(&path);
    let first = load_or_create_key(&path).unwrap();
    let mode = std::fs::metadata(&path).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    assert_eq!(
        load_or_create_key(&path).unwrap(),
        first,
        "kept across starts"
    );
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let err = load_or_create_key(&path).unwrap_err();
    assert!(err.to_string().contains("chmod 600"), "{err}");
    std::fs::write(&path, "not hex").unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    assert!(load_or_create_key(&path).is_err());
    std::fs::remove_dir_all(&dir).unwrap();
}
