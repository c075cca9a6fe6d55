//! The fallback engine: `recvmmsg` a batch, handle it, `sendmmsg` the
//! replies and introductions. Used where io_uring is unavailable.
//!
//! As in the io_uring engine, an introduction is written over its request
//! in the receive buffer and sent from there; every array is allocated once.

#![allow(unsafe_code)]

use std::io;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use super::PUBLISH_EVERY;
use super::sys::RawAddr;
use crate::metrics::ShardMetrics;
use crate::shard::{Core, DropReason};
use crate::wire;

/// Datagrams per `recvmmsg`.
const BATCH: usize = 64;
const BUF_SIZE: usize = 2048;

pub struct MmsgEngine {
    fd: RawFd,
    v6: bool,
    bufs: Box<[[u8; BUF_SIZE]]>,
    names: Box<[RawAddr]>,
    iovs: Box<[libc::iovec]>,
    hdrs: Box<[libc::mmsghdr]>,
    replies: Box<[[u8; wire::MAX_MESSAGE_LEN]]>,
    out_names: Box<[RawAddr]>,
    out_iovs: Box<[libc::iovec]>,
    out_hdrs: Box<[libc::mmsghdr]>,
}

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

impl MmsgEngine {
    /// `fd` must have a receive timeout set, so that the loop wakes to see
    /// `stop`.
    pub fn new(fd: RawFd, v6: bool) -> MmsgEngine {
        MmsgEngine {
            fd,
            v6,
            bufs: vec![[0u8; BUF_SIZE]; BATCH].into_boxed_slice(),
            names: vec![RawAddr::zeroed(); BATCH].into_boxed_slice(),
            iovs: vec![empty_iov(); BATCH].into_boxed_slice(),
            hdrs: vec![zeroed_mmsghdr(); BATCH].into_boxed_slice(),
            replies: vec![[0u8; wire::MAX_MESSAGE_LEN]; BATCH].into_boxed_slice(),
            out_names: vec![RawAddr::zeroed(); 2 * BATCH].into_boxed_slice(),
            out_iovs: vec![empty_iov(); 2 * BATCH].into_boxed_slice(),
            out_hdrs: vec![zeroed_mmsghdr(); 2 * BATCH].into_boxed_slice(),
        }
    }

    pub fn run(
        mut self,
        shard: &mut impl Core,
        metrics: &ShardMetrics,
        stop: &AtomicBool,
        origin: Instant,
    ) -> io::Result<()> {
        let mut last_publish = origin.elapsed();
        while !stop.load(Ordering::Relaxed) {
            for i in 0..BATCH {
                self.iovs[i] = libc::iovec {
                    iov_base: self.bufs[i].as_mut_ptr().cast(),
                    iov_len: BUF_SIZE,
                };
                let h = &mut self.hdrs[i].msg_hdr;
                h.msg_name = self.names[i].as_mut_ptr();
                h.msg_namelen = RawAddr::CAPACITY;
                h.msg_iov = &mut self.iovs[i];
                h.msg_iovlen = 1;
                h.msg_flags = 0;
            }
            // SAFETY: every header points into arrays owned by self, sized as
            // declared; the kernel writes at most msg_namelen and iov_len.
            let n = unsafe {
                libc::recvmmsg(
                    self.fd,
                    self.hdrs.as_mut_ptr(),
                    BATCH as libc::c_uint,
                    libc::MSG_WAITFORONE,
                    std::ptr::null_mut(),
                )
            };
            let now = origin.elapsed();
            if n < 0 {
                let e = io::Error::last_os_error();
                match e.raw_os_error() {
                    Some(libc::EAGAIN | libc::EINTR) => {}
                    _ => return Err(e),
                }
            }
            let mut out = 0;
            for i in 0..n.max(0) as usize {
                let len = self.hdrs[i].msg_len as usize;
                let Some(from) = self.names[i].get() else {
                    continue;
                };
                if self.hdrs[i].msg_hdr.msg_flags & libc::MSG_TRUNC != 0 {
                    shard.drop_oversized(len);
                    continue;
                }
                let o =
                    shard.handle_datagram(now, from, &mut self.bufs[i], len, &mut self.replies[i]);
                if let Some(n) = o.reply {
                    let ptr = self.replies[i].as_mut_ptr();
                    self.queue(out, from, ptr, n);
                    out += 1;
                }
                if let Some(t) = o.introduction {
                    let ptr = self.bufs[i].as_mut_ptr();
                    self.queue(out, t.dst, ptr, t.len);
                    out += 1;
                }
            }
            self.flush(out, shard);
            if now.saturating_sub(last_publish) >= PUBLISH_EVERY {
                shard.handle_timeout(now);
                metrics.publish(&shard.take_stats());
                last_publish = now;
            }
        }
        metrics.publish(&shard.take_stats());
        Ok(())
    }

    fn queue(&mut self, i: usize, dst: std::net::SocketAddr, data: *mut u8, len: usize) {
        let namelen = self.out_names[i].set(dst, self.v6);
        self.out_iovs[i] = libc::iovec {
            iov_base: data.cast(),
            iov_len: len,
        };
        let h = &mut self.out_hdrs[i].msg_hdr;
        h.msg_name = self.out_names[i].as_mut_ptr();
        h.msg_namelen = namelen;
        h.msg_iov = &mut self.out_iovs[i];
        h.msg_iovlen = 1;
    }

    /// Sends the first `count` queued datagrams; one the kernel refuses is
    /// counted and skipped.
    fn flush(&mut self, count: usize, shard: &mut impl Core) {
        let mut sent = 0;
        while sent < count {
            // SAFETY: headers sent..count were filled by `queue` and point
            // into buffers owned by self that are untouched until we return.
            let r = unsafe {
                libc::sendmmsg(
                    self.fd,
                    self.out_hdrs[sent..].as_mut_ptr(),
                    (count - sent) as libc::c_uint,
                    0,
                )
            };
            if r > 0 {
                sent += r as usize;
            } else if io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
                continue;
            } else {
                shard.stats_mut().record_drop(DropReason::SendFailed);
                sent += 1;
            }
        }
    }
}
