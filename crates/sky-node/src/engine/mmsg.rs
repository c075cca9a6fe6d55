//! The fallback engine: `recvmmsg` a batch, handle it, `sendmmsg` the
//! replies and introductions. Used where io_uring is unavailable.
//!
//! As in the io_uring engine, an introduction is written over its request
//! in the receive buffer and sent from there; every array is allocated once.
//! The clock is read when `recvmmsg` returns and once more after the batch
//! is sent: every datagram of the batch the core handled is recorded with
//! that difference.
//! The socket's drop counter is read when the counters are published.

#![allow(unsafe_code)]

use std::io;
use std::net::SocketAddr;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use super::heartbeat::Heartbeat;
use super::outbox::Outbox;
use super::sys::{self, RawAddr};
use super::{PUBLISH_EVERY, prefetch_schedule, publish};
use crate::metrics::{EngineStats, ShardMetrics};
use crate::shard::{Ahead, Core};
use sky_proto::time::MonoTime;

/// Datagrams per `recvmmsg`.
const BATCH: usize = 64;
const BUF_SIZE: usize = 2048;

pub(super) struct MmsgEngine {
    fd: RawFd,
    bufs: Box<[[u8; BUF_SIZE]]>,
    names: Box<[RawAddr]>,
    /// `names` decoded, for the batch just received.
    froms: Box<[Option<SocketAddr>]>,
    iovs: Box<[libc::iovec]>,
    hdrs: Box<[libc::mmsghdr]>,
    outbox: Outbox,
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
    pub(super) fn new(fd: RawFd, v6: bool) -> MmsgEngine {
        MmsgEngine {
            fd,
            bufs: vec![[0u8; BUF_SIZE]; BATCH].into_boxed_slice(),
            names: vec![RawAddr::zeroed(); BATCH].into_boxed_slice(),
            froms: vec![None; BATCH].into_boxed_slice(),
            iovs: vec![empty_iov(); BATCH].into_boxed_slice(),
            hdrs: vec![zeroed_mmsghdr(); BATCH].into_boxed_slice(),
            outbox: Outbox::new(fd, v6, 2 * BATCH),
        }
    }

    pub(super) fn run(
        mut self,
        shard: &mut impl Core,
        metrics: &ShardMetrics,
        stop: &AtomicBool,
        origin: Instant,
        heartbeat: &Heartbeat,
    ) -> io::Result<()> {
        let mut last_publish = MonoTime::from_duration(origin.elapsed());
        let mut engine = EngineStats::default();
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
            // declared, without control messages; the kernel writes at most
            // msg_namelen and iov_len bytes.
            let n = unsafe {
                libc::recvmmsg(
                    self.fd,
                    self.hdrs.as_mut_ptr(),
                    BATCH as libc::c_uint,
                    libc::MSG_WAITFORONE,
                    std::ptr::null_mut(),
                )
            };
            let now = MonoTime::from_duration(origin.elapsed());
            if n < 0 {
                let e = io::Error::last_os_error();
                match e.raw_os_error() {
                    Some(libc::EAGAIN | libc::EINTR) => {}
                    _ => return Err(e),
                }
            }
            let n = n.max(0) as usize;
            // Each source read once, for the prefetch ahead and the handling.
            for i in 0..n {
                self.froms[i] = self.names[i].get();
            }
            let mut handled = 0;
            for i in 0..n {
                for (j, ahead) in prefetch_schedule(i, n) {
                    self.prefetch(shard, j, ahead);
                }
                let len = self.hdrs[i].msg_len as usize;
                let Some(from) = self.froms[i] else {
                    continue;
                };
                if self.hdrs[i].msg_hdr.msg_flags & libc::MSG_TRUNC != 0 {
                    shard.drop_oversized(len);
                    continue;
                }
                handled += 1;
                let buf = &mut self.bufs[i];
                let o = shard.handle_datagram(now, from, buf, len, self.outbox.reply_buf());
                if let Some(n) = o.reply {
                    self.outbox.push_reply(from, n);
                }
                if let Some(t) = o.in_place {
                    // The introduction is sent from the receive buffer, which
                    // stays untouched until the flush below.
                    self.outbox.push(t.dst, buf.as_mut_ptr(), t.len);
                }
            }
            self.outbox.flush(shard);
            if handled > 0 {
                let sent = MonoTime::from_duration(origin.elapsed());
                engine
                    .durations
                    .record(sent.saturating_duration_since(now), handled);
            }
            if now.saturating_duration_since(last_publish) >= PUBLISH_EVERY {
                shard.handle_timeout(now);
                publish(metrics, shard, &mut engine, self.fd);
                heartbeat.beat(now);
                last_publish = now;
            }
        }
        publish(metrics, shard, &mut engine, self.fd);
        Ok(())
    }

    /// Prefetches what the core will read for datagram `i` of the batch.
    fn prefetch(&self, shard: &mut impl Core, i: usize, ahead: Ahead) {
        let len = (self.hdrs[i].msg_len as usize).min(BUF_SIZE);
        if let Some(from) = self.froms[i] {
            sys::prefetch(shard.lines_ahead(&self.bufs[i][..len], from, ahead));
        }
    }
}
