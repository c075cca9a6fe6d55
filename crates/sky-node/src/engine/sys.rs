//! Small system helpers for the engines: socket addresses as the kernel
//! wants them, the receive-queue drop counter, core pinning, the node
//! secret, the prefetch of a core's lines ahead.

#![allow(unsafe_code)]

use std::io::{self, Read};
use std::mem::size_of;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV6};
use std::os::fd::RawFd;

use crate::shard::Lines;

/// Prefetches the lines a core named for a datagram to come (nothing on
/// other architectures).
#[inline]
pub fn prefetch(lines: Lines) {
    #[cfg(target_arch = "x86_64")]
    for line in lines.into_iter().filter(|l| !l.is_null()) {
        // SAFETY: a prefetch is a hint that never faults or reads into the
        // program, whatever the address; SSE is part of x86_64.
        unsafe {
            std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(line.cast())
        };
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = lines;
}

/// Transparent huge pages are this large on x86_64 and most aarch64
/// kernels; on others the advice below covers less, never too much.
const HUGE_PAGE: usize = 2 << 20;

/// Asks the kernel to back the whole 2 MiB pages inside `start..start+len`
/// (memory of this process that stays allocated while it is used, such as
/// the presence table) with transparent huge pages: `MADV_HUGEPAGE` for
/// pages faulted later, then `MADV_COLLAPSE` (Linux 6.1) to move what is
/// already there onto huge pages now. Neither changes a byte of the
/// contents. Returns the bytes advised (0 for less than one huge page).
///
/// Why: a lookup in a table of hundreds of megabytes misses the TLB on
/// almost every bucket, and the page walk (two-dimensional under a
/// hypervisor) costs more than the cache miss; a table on 2 MiB pages needs
/// a few hundred TLB entries instead of a hundred thousand.
pub fn advise_huge_pages(start: *const u8, len: usize) -> io::Result<usize> {
    // Linux's value; musl's libc crate does not name it.
    const MADV_COLLAPSE: libc::c_int = 25;
    let first = (start as usize).next_multiple_of(HUGE_PAGE);
    let end = (start as usize).saturating_add(len) / HUGE_PAGE * HUGE_PAGE;
    if end <= first {
        return Ok(0);
    }
    for advice in [libc::MADV_HUGEPAGE, MADV_COLLAPSE] {
        // SAFETY: the range lies inside memory this process has mapped
        // (the caller's allocation); both advices keep its contents.
        if unsafe { libc::madvise(first as *mut libc::c_void, end - first, advice) } != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(end - first)
}

/// A socket address in the kernel's layout, big enough for IPv4 and IPv6.
/// Writing a union field is safe; the kernel reads it through a pointer.
#[repr(C)]
#[derive(Clone, Copy)]
pub union RawAddr {
    v4: libc::sockaddr_in,
    v6: libc::sockaddr_in6,
}

impl RawAddr {
    pub fn zeroed() -> RawAddr {
        RawAddr {
            v6: libc::sockaddr_in6 {
                sin6_family: 0,
                sin6_port: 0,
                sin6_flowinfo: 0,
                sin6_addr: libc::in6_addr { s6_addr: [0; 16] },
                sin6_scope_id: 0,
            },
        }
    }

    /// Capacity handed to the kernel for a received source address.
    pub const CAPACITY: libc::socklen_t = std::mem::size_of::<libc::sockaddr_in6>() as _;

    /// Writes `addr` for a socket of family IPv6 (`v6_socket`) or IPv4, and
    /// returns the length to pass to the kernel. An IPv4 destination on an
    /// IPv6 socket is written IPv4-mapped.
    pub fn set(&mut self, addr: SocketAddr, v6_socket: bool) -> libc::socklen_t {
        match (addr, v6_socket) {
            (SocketAddr::V4(a), false) => {
                self.v4 = libc::sockaddr_in {
                    sin_family: libc::AF_INET as libc::sa_family_t,
                    sin_port: a.port().to_be(),
                    sin_addr: libc::in_addr {
                        s_addr: u32::from_ne_bytes(a.ip().octets()),
                    },
                    sin_zero: [0; 8],
                };
                std::mem::size_of::<libc::sockaddr_in>() as _
            }
            (SocketAddr::V4(a), true) => self.set_v6(a.ip().to_ipv6_mapped(), a.port()),
            (SocketAddr::V6(a), _) => self.set_v6(*a.ip(), a.port()),
        }
    }

    fn set_v6(&mut self, ip: Ipv6Addr, port: u16) -> libc::socklen_t {
        self.v6 = libc::sockaddr_in6 {
            sin6_family: libc::AF_INET6 as libc::sa_family_t,
            sin6_port: port.to_be(),
            sin6_flowinfo: 0,
            sin6_addr: libc::in6_addr {
                s6_addr: ip.octets(),
            },
            sin6_scope_id: 0,
        };
        Self::CAPACITY
    }

    pub fn as_mut_ptr(&mut self) -> *mut libc::c_void {
        (self as *mut RawAddr).cast()
    }

    /// Reads what the kernel wrote.
    pub fn get(&self) -> Option<SocketAddr> {
        // SAFETY: RawAddr is plain old data of exactly this size; any bit
        // pattern is a valid byte array.
        let bytes: &[u8; std::mem::size_of::<RawAddr>()] =
            unsafe { &*(self as *const RawAddr).cast() };
        decode_sockaddr(bytes)
    }
}

/// Parses a `sockaddr_in` or `sockaddr_in6` from its bytes (as io_uring
/// hands them back). Safe: plain byte reads.
pub fn decode_sockaddr(b: &[u8]) -> Option<SocketAddr> {
    let family = u16::from_ne_bytes([*b.first()?, *b.get(1)?]);
    let port = u16::from_be_bytes([*b.get(2)?, *b.get(3)?]);
    if i32::from(family) == libc::AF_INET {
        let ip: [u8; 4] = b.get(4..8)?.try_into().ok()?;
        Some(SocketAddr::new(IpAddr::V4(Ipv4Addr::from(ip)), port))
    } else if i32::from(family) == libc::AF_INET6 {
        let ip: [u8; 16] = b.get(8..24)?.try_into().ok()?;
        let scope = u32::from_ne_bytes(b.get(24..28)?.try_into().ok()?);
        Some(SocketAddr::V6(SocketAddrV6::new(
            Ipv6Addr::from(ip),
            port,
            0,
            scope,
        )))
    } else {
        None
    }
}

/// The socket's receive-queue drop counter: datagrams the kernel dropped
/// because the queue was full, since the socket was made (the `drops`
/// column of `/proc/net/udp`, in a `u32` that wraps), read with
/// `SO_MEMINFO`. The engines read it when they publish their counters
/// (every 100 ms), not per datagram: asking the kernel to attach it to
/// each datagram (`SO_RXQ_OVFL`) cost 3% of a shard's time answering
/// pings, in `__sock_recv_cmsgs`, measured with perf.
pub fn socket_drops(fd: RawFd) -> io::Result<u32> {
    // SK_MEMINFO_VARS is 9 since Linux 4.6; a newer kernel that grows the
    // array writes only what `len` allows.
    let mut info = [0u32; 9];
    let mut len = size_of_val(&info) as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `info`, which is
    // that long and alive, and stores the written length in `len`.
    let r = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_MEMINFO,
            info.as_mut_ptr().cast(),
            &mut len,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    let drops = libc::SK_MEMINFO_DROPS as usize;
    if (len as usize) < (drops + 1) * size_of::<u32>() {
        return Err(io::Error::other("SO_MEMINFO without a drop counter"));
    }
    Ok(info[drops])
}

/// Asks for `size` bytes of receive and send buffer on `socket` and
/// returns what the kernel granted (the smaller of the two). Linux caps a
/// request at `net.core.rmem_max` / `wmem_max` and reports double what it
/// granted (its bookkeeping share), so the grant is half the reading.
pub fn set_buffers(socket: &socket2::Socket, size: usize) -> io::Result<usize> {
    socket.set_recv_buffer_size(size)?;
    socket.set_send_buffer_size(size)?;
    let granted = socket.recv_buffer_size()?.min(socket.send_buffer_size()?);
    Ok(granted / 2)
}

/// Sets Don't Fragment on what the socket sends to IPv4 peers without
/// following path-MTU discovery (`IP_PMTUDISC_PROBE`, as QUIC stacks do).
/// Every sky datagram is far below any path's MTU, and a datagram marked DF
/// needs no IP identification: without it the kernel computes one per
/// datagram from a shared table of counters (`__ip_select_ident`, 3% of a
/// shard's time answering pings, measured with perf).
pub fn set_dont_fragment(fd: RawFd, v6: bool) -> io::Result<()> {
    let set = |level, name, probe: libc::c_int| {
        // SAFETY: setsockopt reads exactly `optlen` bytes from the pointer,
        // which points at a live c_int of that size.
        let r = unsafe {
            libc::setsockopt(
                fd,
                level,
                name,
                (&raw const probe).cast(),
                size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if r == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    };
    // An IPv6 socket sends to IPv4 peers (v4-mapped) through the IPv4
    // path, which reads the IPv4 option.
    set(
        libc::IPPROTO_IP,
        libc::IP_MTU_DISCOVER,
        libc::IP_PMTUDISC_PROBE,
    )?;
    if v6 {
        set(
            libc::IPPROTO_IPV6,
            libc::IPV6_MTU_DISCOVER,
            libc::IPV6_PMTUDISC_PROBE,
        )?;
    }
    Ok(())
}

/// Pins the calling thread to `core`. Best effort: the caller logs failure.
pub fn pin_to_core(core: usize) -> io::Result<()> {
    set_allowed_cores(&[core])
}

/// Confines the calling thread to `cores` (what `taskset` does).
pub fn set_allowed_cores(cores: &[usize]) -> io::Result<()> {
    if cores.is_empty() || cores.iter().any(|&c| c >= libc::CPU_SETSIZE as usize) {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    // SAFETY: cpu_set_t is plain data; zeroed is the empty set, CPU_SET
    // writes within it for core < CPU_SETSIZE (checked above), and
    // sched_setaffinity(0, ..) reads it for the calling thread only.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        for &core in cores {
            libc::CPU_SET(core, &mut set);
        }
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// The CPUs the calling thread may run on, in order: what `taskset`, a
/// cgroup cpuset or `podman --cpuset-cpus` gave the process.
pub fn allowed_cores() -> io::Result<Vec<usize>> {
    // SAFETY: as above; sched_getaffinity(0, ..) writes the calling
    // thread's mask into `set`, and CPU_ISSET reads within it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok((0..libc::CPU_SETSIZE as usize)
            .filter(|&c| libc::CPU_ISSET(c, &set))
            .collect())
    }
}

/// 32 bytes from the kernel's random source.
pub fn random_secret() -> io::Result<[u8; 32]> {
    let mut out = [0u8; 32];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut out)?;
    Ok(out)
}

#[cfg(test)]
#[path = "tests/sys.rs"]
mod tests;

/// The node's identity key secret from `path` (64 hex digits), created
/// owner-only with fresh randomness when the file does not exist. A file
/// that others may read is refused: whoever reads it can speak for this
/// node in gossip.
pub fn load_or_create_key(path: &std::path::Path) -> io::Result<[u8; 32]> {
    use std::io::Write;
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let mode = std::fs::metadata(path)?.permissions().mode();
            if mode & 0o077 != 0 {
                return Err(io::Error::new(
                    io::ErrorKind::PermissionDenied,
                    format!("readable by others (mode {:o}): chmod 600 it", mode & 0o777),
                ));
            }
            sky_proto::wire::from_hex::<32>(text.trim())
                .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "not 64 hex digits"))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let secret = random_secret()?;
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path)?;
            writeln!(file, "{}", sky_proto::wire::to_hex(&secret))?;
            file.sync_all()?;
            Ok(secret)
        }
        Err(e) => Err(e),
    }
}

/// Sends `copies` (at most 64) datagrams of `payload` on the connected
/// socket `fd` with one `sendmmsg`; how many the kernel took.
pub fn send_copies(fd: RawFd, payload: &[u8], copies: usize) -> io::Result<usize> {
    const MAX: usize = 64;
    let copies = copies.min(MAX);
    let mut iov = libc::iovec {
        iov_base: payload.as_ptr() as *mut libc::c_void,
        iov_len: payload.len(),
    };
    // SAFETY: mmsghdr is plain data; all-zero is an empty header.
    let mut hdrs: [libc::mmsghdr; MAX] = unsafe { std::mem::zeroed() };
    for h in &mut hdrs[..copies] {
        h.msg_hdr.msg_iov = &mut iov;
        h.msg_hdr.msg_iovlen = 1;
    }
    // SAFETY: the first `copies` headers each point at one live iovec over
    // `payload`, which the kernel only reads; no name (a connected socket).
    let sent = unsafe { libc::sendmmsg(fd, hdrs.as_mut_ptr(), copies as libc::c_uint, 0) };
    if sent < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(sent as usize)
    }
}
