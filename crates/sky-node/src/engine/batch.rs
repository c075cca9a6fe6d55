//! Batched UDP I/O for the operator's tools (`sky bench`): `sendmmsg` and
//! `recvmmsg` behind a safe API, waiting on many sockets with `ppoll`, and
//! the kernel's clock tick. The load generator lives in `sky-lab`; its
//! system calls live here, with every other `unsafe` line of the workspace.

#![allow(unsafe_code)]

use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::time::Duration;

use super::sys::RawAddr;

fn zeroed_mmsghdr() -> libc::mmsghdr {
    // SAFETY: mmsghdr is plain data; all-zero is an empty header.
    unsafe { std::mem::zeroed() }
}

fn empty_iov() -> libc::iovec {
    libc::iovec {
        iov_base: std::ptr::null_mut(),
        iov_len: 0,
    }
}

/// Datagrams to one destination, sent with one `sendmmsg`. Every buffer and
/// header is allocated once, in [`SendBatch::new`].
pub struct SendBatch {
    bufs: Vec<Vec<u8>>,
    iovs: Vec<libc::iovec>,
    hdrs: Vec<libc::mmsghdr>,
    addr: RawAddr,
}

impl SendBatch {
    /// Room for `capacity` datagrams of at most `buf_len` bytes each.
    pub fn new(capacity: usize, buf_len: usize) -> SendBatch {
        SendBatch {
            bufs: vec![vec![0u8; buf_len]; capacity],
            iovs: vec![empty_iov(); capacity],
            hdrs: vec![zeroed_mmsghdr(); capacity],
            addr: RawAddr::zeroed(),
        }
    }

    /// How many datagrams one batch holds.
    pub fn capacity(&self) -> usize {
        self.bufs.len()
    }

    /// The buffer of datagram `k`, to write it into.
    pub fn buf(&mut self, k: usize) -> &mut [u8] {
        &mut self.bufs[k]
    }

    /// Sends datagrams `0..lens.len()` (datagram `k` is the first
    /// `lens[k]` bytes of its buffer) to `dst` from `socket`, which must be
    /// non-blocking. Returns how many the kernel took; it stops early when
    /// the socket's buffer is full.
    ///
    /// # Panics
    /// If `lens` is longer than the batch or a length longer than its buffer.
    pub fn send(
        &mut self,
        socket: &UdpSocket,
        dst: SocketAddr,
        lens: &[usize],
    ) -> io::Result<usize> {
        let count = lens.len();
        assert!(
            count <= self.bufs.len(),
            "more datagrams than the batch holds"
        );
        let v6 = socket.local_addr()?.is_ipv6();
        let namelen = self.addr.set(dst, v6);
        for (k, &len) in lens.iter().enumerate() {
            assert!(len <= self.bufs[k].len(), "datagram longer than its buffer");
            self.iovs[k] = libc::iovec {
                iov_base: self.bufs[k].as_mut_ptr().cast(),
                iov_len: len,
            };
            let h = &mut self.hdrs[k].msg_hdr;
            h.msg_name = self.addr.as_mut_ptr();
            h.msg_namelen = namelen;
            h.msg_iov = &mut self.iovs[k];
            h.msg_iovlen = 1;
        }
        let fd = socket.as_raw_fd();
        let mut done = 0;
        while done < count {
            // SAFETY: headers done..count point into iovecs, buffers and the
            // address owned by self, all alive and unmoved across the call;
            // the kernel reads at most `iov_len` bytes of each buffer.
            let r = unsafe {
                libc::sendmmsg(
                    fd,
                    self.hdrs[done..].as_mut_ptr(),
                    (count - done) as libc::c_uint,
                    0,
                )
            };
            if r <= 0 {
                let e = io::Error::last_os_error();
                match e.kind() {
                    io::ErrorKind::Interrupted => continue,
                    io::ErrorKind::WouldBlock => break,
                    _ => return Err(e),
                }
            }
            done += r as usize;
        }
        Ok(done)
    }
}

/// Datagrams received with one `recvmmsg`, into buffers allocated once.
pub struct RecvBatch {
    bufs: Vec<Vec<u8>>,
    lens: Vec<usize>,
    iovs: Vec<libc::iovec>,
    hdrs: Vec<libc::mmsghdr>,
}

impl RecvBatch {
    /// Room for `capacity` datagrams of at most `buf_len` bytes each.
    pub fn new(capacity: usize, buf_len: usize) -> RecvBatch {
        RecvBatch {
            bufs: vec![vec![0u8; buf_len]; capacity],
            lens: vec![0; capacity],
            iovs: vec![empty_iov(); capacity],
            hdrs: vec![zeroed_mmsghdr(); capacity],
        }
    }

    /// How many datagrams one batch holds.
    pub fn capacity(&self) -> usize {
        self.bufs.len()
    }

    /// Reads what `socket` holds now, without waiting: the number of
    /// datagrams received (0 when there is nothing, or on an error such as
    /// an ICMP refusal, which a load generator does not stop for).
    pub fn recv(&mut self, socket: &UdpSocket) -> usize {
        let capacity = self.bufs.len();
        for k in 0..capacity {
            self.iovs[k] = libc::iovec {
                iov_base: self.bufs[k].as_mut_ptr().cast(),
                iov_len: self.bufs[k].len(),
            };
            let h = &mut self.hdrs[k].msg_hdr;
            h.msg_name = std::ptr::null_mut();
            h.msg_namelen = 0;
            h.msg_iov = &mut self.iovs[k];
            h.msg_iovlen = 1;
        }
        let fd = socket.as_raw_fd();
        loop {
            // SAFETY: the headers point into iovecs and buffers owned by
            // self, sized as declared; MSG_DONTWAIT never blocks; no
            // timeout pointer.
            let n = unsafe {
                libc::recvmmsg(
                    fd,
                    self.hdrs.as_mut_ptr(),
                    capacity as libc::c_uint,
                    libc::MSG_DONTWAIT,
                    std::ptr::null_mut(),
                )
            };
            if n < 0 && io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
                continue;
            }
            if n <= 0 {
                return 0;
            }
            let n = n as usize;
            for k in 0..n {
                self.lens[k] = self.hdrs[k].msg_len as usize;
            }
            return n;
        }
    }

    /// Datagram `k` of the last [`RecvBatch::recv`].
    pub fn datagram(&self, k: usize) -> &[u8] {
        &self.bufs[k][..self.lens[k]]
    }
}

/// Waits up to `wait` (at most one second) for any of `sockets` to be
/// readable.
pub fn wait_readable<'a>(sockets: impl IntoIterator<Item = &'a UdpSocket>, wait: Duration) {
    let mut fds: Vec<libc::pollfd> = sockets
        .into_iter()
        .map(|s| libc::pollfd {
            fd: s.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    let ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: wait.as_nanos().min(999_999_999) as libc::c_long,
    };
    // SAFETY: fds is a valid array of fds.len() pollfd structs; ts lives
    // across the call; a null sigmask leaves the mask alone.
    unsafe {
        libc::ppoll(
            fds.as_mut_ptr(),
            fds.len() as libc::nfds_t,
            &ts,
            std::ptr::null(),
        )
    };
}

/// The kernel's clock ticks per second (what `/proc/PID/stat` counts CPU
/// time in).
pub fn clock_ticks_per_second() -> u64 {
    // SAFETY: sysconf has no memory effects.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    hz.max(1) as u64
}
