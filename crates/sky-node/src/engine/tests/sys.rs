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

/// One control message as the kernel writes it: header, data, padding.
fn cmsg(level: libc::c_int, ty: libc::c_int, data: &[u8]) -> Vec<u8> {
    let header = std::mem::size_of::<libc::cmsghdr>();
    let mut out = Vec::new();
    out.extend_from_slice(&(header + data.len()).to_ne_bytes());
    out.extend_from_slice(&level.to_ne_bytes());
    out.extend_from_slice(&ty.to_ne_bytes());
    out.resize(header, 0);
    out.extend_from_slice(data);
    out.resize(out.len().next_multiple_of(std::mem::size_of::<usize>()), 0);
    out
}

#[test]
fn the_drop_counter_is_read_from_its_control_message() {
    let drops = cmsg(libc::SOL_SOCKET, 40, &1234u32.to_ne_bytes());
    assert_eq!(rxq_ovfl(&drops), Some(1234));
    assert!(drops.len() <= CONTROL_LEN);
    // After another control message.
    let mut both = cmsg(libc::IPPROTO_IP, libc::IP_TTL, &64i32.to_ne_bytes());
    both.extend_from_slice(&drops);
    assert_eq!(rxq_ovfl(&both), Some(1234));
    // None before the first drop, none of another kind.
    assert_eq!(rxq_ovfl(&[]), None);
    assert_eq!(rxq_ovfl(&both[..both.len() - drops.len()]), None);
}

#[test]
fn hostile_control_bytes_never_panic() {
    let drops = cmsg(libc::SOL_SOCKET, 40, &7u32.to_ne_bytes());
    let whole = std::mem::size_of::<libc::cmsghdr>() + 4;
    for cut in 0..drops.len() {
        let expected = (cut >= whole).then_some(7);
        assert_eq!(rxq_ovfl(&drops[..cut]), expected, "cut at {cut}");
    }
    for len in [0usize, 1, 15, usize::MAX, usize::MAX - 3] {
        let mut bad = drops.clone();
        bad[..8].copy_from_slice(&len.to_ne_bytes());
        let _ = rxq_ovfl(&bad);
    }
}

#[test]
fn the_drop_counter_option_can_be_enabled() {
    use std::os::fd::AsRawFd;
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    enable_rxq_ovfl(socket.as_raw_fd()).unwrap();
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
