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

/// The drop counter reads what the kernel dropped on a full receive
/// queue, the same count as /proc/net/udp's `drops` column.
#[test]
fn the_drop_counter_reads_the_kernels_count() {
    use std::os::fd::AsRawFd;
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    assert_eq!(socket_drops(socket.as_raw_fd()).unwrap(), 0);
    let small = socket2::SockRef::from(&socket);
    small.set_recv_buffer_size(1).unwrap();
    let to = socket.local_addr().unwrap();
    let sender = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    for _ in 0..2_000 {
        sender.send_to(&[0u8; 512], to).unwrap();
    }
    let drops = socket_drops(socket.as_raw_fd()).unwrap();
    assert!(drops > 0, "a queue of the smallest size dropped nothing");
    let port = format!(":{:04X} ", to.port());
    let table = std::fs::read_to_string("/proc/net/udp").unwrap();
    let line = table.lines().find(|l| l.contains(&port)).unwrap();
    let kernel: u32 = line.split_whitespace().last().unwrap().parse().unwrap();
    assert_eq!(drops, kernel, "{line}");
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

/// The node's shard sockets, as the engine binds them, take Don't Fragment
/// without path-MTU discovery on both families (an IPv6 socket also for
/// the IPv4 peers it reaches mapped).
#[test]
fn shard_sockets_of_both_families_carry_dont_fragment() {
    use std::os::fd::AsRawFd;
    let get = |fd, level, name| {
        let mut v: libc::c_int = -1;
        let mut len = size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: getsockopt writes at most `len` bytes into `v`.
        let r = unsafe { libc::getsockopt(fd, level, name, (&raw mut v).cast(), &mut len) };
        assert_eq!(r, 0, "{}", io::Error::last_os_error());
        v
    };
    for listen in ["127.0.0.1:0", "[::1]:0"] {
        let listen: SocketAddr = listen.parse().unwrap();
        let sockets =
            crate::engine::bind_shard_sockets(listen, 2, crate::engine::Engine::Mmsg, 4096)
                .unwrap();
        assert_eq!(sockets.len(), 2);
        for s in &sockets {
            let fd = s.as_raw_fd();
            assert_eq!(
                get(fd, libc::IPPROTO_IP, libc::IP_MTU_DISCOVER),
                libc::IP_PMTUDISC_PROBE,
                "{listen}"
            );
            if listen.is_ipv6() {
                assert_eq!(
                    get(fd, libc::IPPROTO_IPV6, libc::IPV6_MTU_DISCOVER),
                    libc::IPV6_PMTUDISC_PROBE
                );
            }
        }
    }
}

/// Huge pages for a table: the advice covers the whole 2 MiB pages inside
/// the allocation, the kernel backs them with huge pages at once
/// (`AnonHugePages` in /proc/self/smaps), and not a byte changes. Skipped,
/// saying why, where the kernel has transparent huge pages off.
#[test]
fn huge_page_advice_collapses_the_table_in_place() {
    let len = 16 << 20;
    let mut table: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
    let start = table.as_mut_ptr();
    assert_eq!(
        advise_huge_pages(start, 1 << 20).unwrap(),
        0,
        "less than a page"
    );
    let advised = match advise_huge_pages(start, len) {
        Ok(n) => n,
        Err(e) => {
            eprintln!("SKIPPED: this kernel gives no transparent huge pages: {e}");
            return;
        }
    };
    assert!(
        advised >= len - (4 << 20) && advised % (2 << 20) == 0,
        "{advised}"
    );
    assert!(table.iter().enumerate().all(|(i, &b)| b == (i % 251) as u8));
    assert!(
        huge_bytes_in(start as usize, len) >= advised,
        "smaps shows no huge pages"
    );
}

/// `AnonHugePages` of the mappings of this process that overlap `start..start + len`.
fn huge_bytes_in(start: usize, len: usize) -> usize {
    let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
    let mut overlaps = false;
    let mut total = 0;
    for line in smaps.lines() {
        if let Some((range, _)) = line.split_once(' ')
            && let Some((a, b)) = range.split_once('-')
            && let (Ok(a), Ok(b)) = (usize::from_str_radix(a, 16), usize::from_str_radix(b, 16))
        {
            overlaps = a < start + len && start < b;
        } else if overlaps && let Some(kb) = line.strip_prefix("AnonHugePages:") {
            total += kb
                .trim()
                .trim_end_matches(" kB")
                .trim()
                .parse::<usize>()
                .unwrap()
                << 10;
        }
    }
    total
}
