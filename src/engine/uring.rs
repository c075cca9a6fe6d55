//! The io_uring engine: one ring per shard, one multishot `recvmsg` into a
//! ring of provided buffers, sends batched into the same submission.
//!
//! Buffer life: the kernel picks a free buffer for each datagram; the shard
//! core writes an introduction over the request *in that buffer*, so the
//! buffer goes back to the kernel only when that send completes (or at once
//! when nothing was sent from it). Replies are written into the send slot's
//! own small buffer. Every buffer, slot and header is allocated before the
//! first datagram; the steady state allocates nothing.

#![allow(unsafe_code)]

use std::io;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, AtomicU16, Ordering};
use std::time::{Duration, Instant};

use io_uring::cqueue;
use io_uring::opcode;
use io_uring::squeue;
use io_uring::types::{self, BufRingEntry, RecvMsgOut, SubmitArgs, Timespec};
use io_uring::{IoUring, SubmissionQueue, Submitter};

use super::sys::{self, RawAddr};
use super::{PUBLISH_EVERY, WAKE_EVERY};
use crate::metrics::ShardMetrics;
use crate::shard::{Core, DropReason};
use crate::wire;

/// Bytes per provided buffer: recvmsg header, source address, payload.
const BUF_SIZE: usize = 2048;
/// Provided buffers per shard (a power of two, at most 32768).
const BUF_COUNT: u16 = 4096;
/// Sends in flight per shard.
const SEND_SLOTS: usize = 2048;
const SQ_ENTRIES: u32 = 1024;
const CQ_ENTRIES: u32 = 8192;
/// Completions handled per wake-up before submitting again.
const MAX_CQES_PER_WAKE: usize = 4096;
const BGID: u16 = 7;
const RECV: u64 = u64::MAX;
const CANCEL: u64 = u64::MAX - 1;
const NO_BUFFER: u16 = u16::MAX;
/// io_uring_recvmsg_out header size, then the address the kernel fills.
const PAYLOAD_OFFSET: usize = 16 + RawAddr::CAPACITY as usize;

/// Checks that this kernel and sandbox let us create a ring and register a
/// provided-buffer ring (what `auto` needs to pick this engine).
pub fn probe() -> io::Result<()> {
    let ring = IoUring::new(8)?;
    let bufs = BufRing::new(8)?;
    // SAFETY: the memory is page aligned, zeroed, 8 entries long, and
    // outlives the registration (unregistered just below).
    unsafe {
        ring.submitter()
            .register_buf_ring_with_flags(bufs.ptr as u64, 8, BGID, 0)?
    };
    ring.submitter().unregister_buf_ring(BGID)?;
    Ok(())
}

/// The ring of provided buffers shared with the kernel.
struct BufRing {
    ptr: *mut BufRingEntry,
    layout: std::alloc::Layout,
    mask: u16,
    /// Our producer tail, published to the kernel with `publish`.
    tail: u16,
}

impl BufRing {
    fn new(entries: u16) -> io::Result<BufRing> {
        let layout = std::alloc::Layout::from_size_align(
            entries as usize * std::mem::size_of::<BufRingEntry>(),
            4096,
        )
        .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
        // SAFETY: non-zero size; freed in Drop with the same layout.
        let ptr = unsafe { std::alloc::alloc_zeroed(layout) }.cast::<BufRingEntry>();
        if ptr.is_null() {
            return Err(io::Error::from_raw_os_error(libc::ENOMEM));
        }
        Ok(BufRing {
            ptr,
            layout,
            mask: entries - 1,
            tail: 0,
        })
    }

    /// Queues buffer `bid` at `addr` for the kernel (visible after publish).
    fn push(&mut self, bid: u16, addr: *mut u8, len: usize) {
        // SAFETY: index is masked into the ring; we are the only producer and
        // the kernel reads entries only up to the published tail.
        let entry = unsafe { &mut *self.ptr.add((self.tail & self.mask) as usize) };
        entry.set_addr(addr as u64);
        entry.set_len(len as u32);
        entry.set_bid(bid);
        self.tail = self.tail.wrapping_add(1);
    }

    fn publish(&self) {
        // SAFETY: the tail field lives in the first entry of our live ring;
        // the kernel reads it with acquire semantics, so a release store
        // orders the entry writes before it.
        unsafe {
            let tail = BufRingEntry::tail(self.ptr).cast::<AtomicU16>();
            (*tail).store(self.tail, Ordering::Release);
        }
    }
}

impl Drop for BufRing {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout.
        unsafe { std::alloc::dealloc(self.ptr.cast(), self.layout) }
    }
}

/// Everything one `sendmsg` needs to stay put until it completes.
#[repr(C)]
struct SendSlot {
    hdr: libc::msghdr,
    iov: libc::iovec,
    addr: RawAddr,
    /// The provided buffer this send reads from, to recycle on completion.
    buffer: u16,
    data: [u8; wire::MAX_MESSAGE_LEN],
}

/// One shard's ring and memory. Field order is drop order: the ring goes
/// first, so the kernel is done with every buffer before it is freed.
pub struct UringEngine {
    ring: IoUring,
    bufring: BufRing,
    bufs: Box<[u8]>,
    recv_hdr: Box<libc::msghdr>,
    slots: Box<[SendSlot]>,
    free: Vec<u16>,
    fd: RawFd,
    v6: bool,
}

impl UringEngine {
    pub fn new(fd: RawFd, v6: bool) -> io::Result<UringEngine> {
        // Single issuer with deferred task work (kernel 6.1+): completions
        // are run only when this thread waits for them, in a batch, with no
        // interrupts; older kernels get cooperative task running.
        let ring = IoUring::builder()
            .setup_cqsize(CQ_ENTRIES)
            .setup_single_issuer()
            .setup_defer_taskrun()
            .build(SQ_ENTRIES)
            .or_else(|_| {
                IoUring::builder()
                    .setup_cqsize(CQ_ENTRIES)
                    .setup_coop_taskrun()
                    .build(SQ_ENTRIES)
            })?;
        let mut bufring = BufRing::new(BUF_COUNT)?;
        let mut bufs = vec![0u8; BUF_SIZE * BUF_COUNT as usize].into_boxed_slice();
        for bid in 0..BUF_COUNT {
            let addr = bufs[bid as usize * BUF_SIZE..].as_mut_ptr();
            bufring.push(bid, addr, BUF_SIZE);
        }
        bufring.publish();
        // SAFETY: page-aligned ring of BUF_COUNT entries, alive as long as
        // the io_uring (field order), each entry pointing into `bufs`, which
        // lives as long too.
        unsafe {
            ring.submitter()
                .register_buf_ring_with_flags(bufring.ptr as u64, BUF_COUNT, BGID, 0)?
        };
        // SAFETY: msghdr is plain data; zeroed is a valid empty header.
        let mut recv_hdr: Box<libc::msghdr> = Box::new(unsafe { std::mem::zeroed() });
        recv_hdr.msg_namelen = RawAddr::CAPACITY;
        let slots = (0..SEND_SLOTS)
            .map(|_| SendSlot {
                // SAFETY: as above.
                hdr: unsafe { std::mem::zeroed() },
                iov: libc::iovec {
                    iov_base: std::ptr::null_mut(),
                    iov_len: 0,
                },
                addr: RawAddr::zeroed(),
                buffer: NO_BUFFER,
                data: [0; wire::MAX_MESSAGE_LEN],
            })
            .collect::<Vec<_>>()
            .into_boxed_slice();
        Ok(UringEngine {
            ring,
            bufring,
            bufs,
            recv_hdr,
            slots,
            free: (0..SEND_SLOTS as u16).rev().collect(),
            fd,
            v6,
        })
    }

    /// Runs until `stop` is set; the core sees the clock once per wake-up.
    pub fn run(
        mut self,
        shard: &mut impl Core,
        metrics: &ShardMetrics,
        stop: &AtomicBool,
        origin: Instant,
    ) -> io::Result<()> {
        let UringEngine {
            ring,
            bufring,
            bufs,
            recv_hdr,
            slots,
            free,
            fd,
            v6,
        } = &mut self;
        let recv = opcode::RecvMsgMulti::new(types::Fd(*fd), &**recv_hdr, BGID)
            .build()
            .user_data(RECV);
        let (submitter, mut sq, mut cq) = ring.split();
        push(&mut sq, &submitter, &recv)?;
        let ts = Timespec::new().nsec(WAKE_EVERY.as_nanos() as u32);
        let args = SubmitArgs::new().timespec(&ts);
        let mut last_publish = origin.elapsed();

        while !stop.load(Ordering::Relaxed) {
            sq.sync();
            match submitter.submit_with_args(1, &args) {
                Ok(_) => {}
                Err(e)
                    if matches!(
                        e.raw_os_error(),
                        Some(libc::ETIME | libc::EINTR | libc::EBUSY)
                    ) => {}
                Err(e) => return Err(e),
            }
            let now = origin.elapsed();
            let mut rearm = false;
            cq.sync();
            for cqe in (&mut cq).take(MAX_CQES_PER_WAKE) {
                let (res, flags) = (cqe.result(), cqe.flags());
                if cqe.user_data() != RECV {
                    // A send completed.
                    let i = cqe.user_data() as usize;
                    if res < 0 {
                        shard.stats_mut().record_drop(DropReason::SendFailed);
                    }
                    let b = std::mem::replace(&mut slots[i].buffer, NO_BUFFER);
                    if b != NO_BUFFER {
                        recycle(bufring, bufs, b);
                    }
                    free.push(i as u16);
                    continue;
                }
                if !cqueue::more(flags) {
                    rearm = true;
                }
                let Some(bid) = cqueue::buffer_select(flags) else {
                    continue; // e.g. ENOBUFS: re-armed below once buffers return
                };
                let start = bid as usize * BUF_SIZE;
                let buf = &mut bufs[start..start + BUF_SIZE];
                let parsed = RecvMsgOut::parse(buf, recv_hdr).ok().map(|m| {
                    (
                        sys::decode_sockaddr(m.name_data()),
                        m.payload_data().len(),
                        m.is_payload_truncated(),
                    )
                });
                let (from, len) = match parsed {
                    Some((Some(from), len, false)) => (from, len),
                    Some((_, len, true)) => {
                        shard.drop_oversized(len);
                        recycle(bufring, bufs, bid);
                        continue;
                    }
                    _ => {
                        recycle(bufring, bufs, bid);
                        continue;
                    }
                };
                let Some(r) = free.pop() else {
                    shard.stats_mut().record_drop(DropReason::SendQueueFull);
                    recycle(bufring, bufs, bid);
                    continue;
                };
                let payload = &mut buf[PAYLOAD_OFFSET..];
                let out =
                    shard.handle_datagram(now, from, payload, len, &mut slots[r as usize].data);
                let payload_ptr = payload.as_mut_ptr();
                match out.reply {
                    Some(n) => {
                        let slot = &mut slots[r as usize];
                        let ptr = slot.data.as_mut_ptr();
                        let sqe = slot.prepare(from, *v6, ptr, n, NO_BUFFER, *fd, r);
                        push(&mut sq, &submitter, &sqe)?;
                    }
                    None => free.push(r),
                }
                match out.introduction {
                    None => recycle(bufring, bufs, bid),
                    Some(t) => match free.pop() {
                        Some(i) => {
                            let slot = &mut slots[i as usize];
                            let sqe = slot.prepare(t.dst, *v6, payload_ptr, t.len, bid, *fd, i);
                            push(&mut sq, &submitter, &sqe)?;
                        }
                        None => {
                            shard.stats_mut().record_drop(DropReason::SendQueueFull);
                            recycle(bufring, bufs, bid);
                        }
                    },
                }
            }
            bufring.publish();
            if rearm {
                push(&mut sq, &submitter, &recv)?;
            }
            if now.saturating_sub(last_publish) >= PUBLISH_EVERY {
                shard.handle_timeout(now);
                metrics.publish(&shard.take_stats());
                last_publish = now;
            }
        }
        metrics.publish(&shard.take_stats());

        // Cancel the multishot receive and wait until the kernel has let go
        // of it and of every send, so the socket (and its port) is released
        // when this thread closes it, not later when the kernel tears the
        // ring down, and no send still reads memory we are about to free.
        let cancel = opcode::AsyncCancel::new(RECV).build().user_data(CANCEL);
        push(&mut sq, &submitter, &cancel)?;
        let deadline = origin.elapsed() + Duration::from_secs(1);
        let mut recv_done = false;
        while !(recv_done && free.len() == SEND_SLOTS) && origin.elapsed() < deadline {
            sq.sync();
            match submitter.submit_with_args(1, &args) {
                Ok(_) => {}
                Err(e) if matches!(e.raw_os_error(), Some(libc::ETIME | libc::EINTR | libc::EBUSY)) => {}
                Err(e) => return Err(e),
            }
            cq.sync();
            for cqe in &mut cq {
                match cqe.user_data() {
                    RECV => recv_done |= !cqueue::more(cqe.flags()),
                    CANCEL => {}
                    i => free.push(i as u16),
                }
            }
        }
        Ok(())
    }
}

fn recycle(bufring: &mut BufRing, bufs: &mut [u8], bid: u16) {
    let addr = bufs[bid as usize * BUF_SIZE..].as_mut_ptr();
    bufring.push(bid, addr, BUF_SIZE);
}

impl SendSlot {
    /// Fills the slot for one `sendmsg` of `len` bytes at `data` to `dst`.
    #[allow(clippy::too_many_arguments)]
    fn prepare(
        &mut self,
        dst: std::net::SocketAddr,
        v6: bool,
        data: *mut u8,
        len: usize,
        buffer: u16,
        fd: RawFd,
        index: u16,
    ) -> squeue::Entry {
        let namelen = self.addr.set(dst, v6);
        self.iov = libc::iovec {
            iov_base: data.cast(),
            iov_len: len,
        };
        self.hdr.msg_name = self.addr.as_mut_ptr();
        self.hdr.msg_namelen = namelen;
        self.hdr.msg_iov = &mut self.iov;
        self.hdr.msg_iovlen = 1;
        self.buffer = buffer;
        opcode::SendMsg::new(types::Fd(fd), &self.hdr)
            .build()
            .user_data(u64::from(index))
    }
}

/// Pushes one entry, submitting first if the queue is full.
fn push(
    sq: &mut SubmissionQueue<'_>,
    submitter: &Submitter<'_>,
    entry: &squeue::Entry,
) -> io::Result<()> {
    loop {
        // SAFETY: every pointer in our entries (msghdr, iovec, address,
        // data, provided buffers) lives in memory owned by UringEngine, which
        // outlives the ring, and is not reused until its completion arrives.
        if unsafe { sq.push(entry) }.is_ok() {
            return Ok(());
        }
        sq.sync();
        match submitter.submit() {
            Ok(_) => {}
            Err(e) if matches!(e.raw_os_error(), Some(libc::EINTR | libc::EBUSY)) => {}
            Err(e) => return Err(e),
        }
        sq.sync();
    }
}
