//! The io_uring engine: one ring per shard, one multishot `recvmsg` into a
//! ring of provided buffers, sends batched into one `sendmmsg` per wake-up.
//!
//! Sends go out through the [`Outbox`]: one `sendmmsg` per wake-up for
//! every reply and introduction the batch produced. Measured here, this beat
//! one `SendMsg` submission (and completion) per datagram: UDP sends finish
//! inline, so the ring only added per-datagram bookkeeping.
//!
//! Buffer life: the kernel picks a free buffer for each datagram; the shard
//! core writes an introduction over the request *in that buffer*, so the
//! buffer goes back to the kernel only after the flush that sends it (at
//! once when nothing is sent from it). Replies are written into the
//! outbox's own small buffers. Everything is allocated before the first
//! datagram; the steady state allocates nothing.
//!
//! Measurement: the clock is read once per wake-up (the `now` the core
//! sees) and once per flush; the datagrams a flush sends are recorded with
//! that difference. A receive that completes with `ENOBUFS` (every provided
//! buffer in use) is counted; the socket's drop counter is read when the
//! counters are published.

#![allow(unsafe_code)]

use std::io;
use std::net::SocketAddr;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, AtomicU16, Ordering};
use std::time::{Duration, Instant};

use io_uring::cqueue;
use io_uring::opcode;
use io_uring::squeue;
use io_uring::types::{self, BufRingEntry, RecvMsgOut, SubmitArgs, Timespec};
use io_uring::{IoUring, SubmissionQueue, Submitter};

use super::heartbeat::Heartbeat;
use super::outbox::Outbox;
use super::sys::{self, RawAddr};
use super::{PUBLISH_EVERY, WAKE_EVERY, prefetch_schedule, publish};
use crate::metrics::{EngineStats, ShardMetrics};
use crate::shard::{Ahead, Core};
use sky_proto::time::MonoTime;

/// Bytes per provided buffer: recvmsg header, source address, payload.
const BUF_SIZE: usize = 2048;
/// Provided buffers per shard (a power of two, at most 32768).
const BUF_COUNT: u16 = 4096;
/// Datagrams queued for one `sendmmsg`.
const OUTBOX: usize = 1024;
const SQ_ENTRIES: u32 = 1024;
const CQ_ENTRIES: u32 = 8192;
/// Completions handled per wake-up before submitting again.
const MAX_CQES_PER_WAKE: usize = 4096;
const BGID: u16 = 7;
const RECV: u64 = u64::MAX;
const CANCEL: u64 = u64::MAX - 1;
/// io_uring_recvmsg_out header size, then the address the kernel fills
/// (no control messages are asked for).
const PAYLOAD_OFFSET: usize = 16 + RawAddr::CAPACITY as usize;

/// Checks that this kernel and sandbox let us create a ring and register a
/// provided-buffer ring (what `auto` needs to pick this engine).
pub(super) fn probe() -> io::Result<()> {
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

/// One shard's ring and memory. Field order is drop order: the ring goes
/// first, so the kernel is done with every buffer before it is freed.
pub(super) struct UringEngine {
    ring: IoUring,
    bufring: BufRing,
    bufs: Box<[u8]>,
    recv_hdr: Box<libc::msghdr>,
    outbox: Outbox,
    /// Buffers holding an introduction queued in the outbox: recycled after
    /// the flush that sends it.
    held: Vec<u16>,
    fd: RawFd,
}

impl UringEngine {
    pub(super) fn new(fd: RawFd, v6: bool) -> io::Result<UringEngine> {
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
        Ok(UringEngine {
            ring,
            bufring,
            bufs,
            recv_hdr,
            outbox: Outbox::new(fd, v6, OUTBOX),
            held: Vec::with_capacity(OUTBOX),
            fd,
        })
    }

    /// Runs until `stop` is set; the core sees the clock once per wake-up.
    pub(super) fn run(
        mut self,
        shard: &mut impl Core,
        metrics: &ShardMetrics,
        stop: &AtomicBool,
        origin: Instant,
        heartbeat: &Heartbeat,
    ) -> io::Result<()> {
        let UringEngine {
            ring,
            bufring,
            bufs,
            recv_hdr,
            outbox,
            held,
            fd,
        } = &mut self;
        let recv = opcode::RecvMsgMulti::new(types::Fd(*fd), &**recv_hdr, BGID)
            .build()
            .user_data(RECV);
        let mut received: Vec<Received> = Vec::with_capacity(MAX_CQES_PER_WAKE);
        let (submitter, mut sq, mut cq) = ring.split();
        push(&mut sq, &submitter, &recv)?;
        let ts = Timespec::new().nsec(WAKE_EVERY.as_nanos() as u32);
        let args = SubmitArgs::new().timespec(&ts);
        let mut last_publish = MonoTime::from_duration(origin.elapsed());
        let mut engine = EngineStats::default();

        while !stop.load(Ordering::Relaxed) {
            sq.sync();
            wait(&submitter, &args)?;
            let now = MonoTime::from_duration(origin.elapsed());
            let mut rearm = false;
            // Datagrams taken since the last flush, which sends their answers.
            let mut batch = Batch { now, datagrams: 0 };
            cq.sync();
            // Taken off the ring and read first, once, so that the core's
            // lines for the datagrams a few places ahead can be prefetched.
            received.clear();
            received.extend(
                (&mut cq)
                    .take(MAX_CQES_PER_WAKE)
                    .map(|cqe| Received::read(&cqe, bufs, recv_hdr)),
            );
            for i in 0..received.len() {
                for (j, ahead) in prefetch_schedule(i, received.len()) {
                    prefetch(shard, &received[j], bufs, ahead);
                }
                let (bid, len, from) = match received[i] {
                    Received::Other => continue,
                    Received::Empty { more, exhausted } => {
                        rearm |= !more;
                        engine.buffers_exhausted += u64::from(exhausted);
                        continue; // re-armed below once buffers return
                    }
                    Received::Datagram {
                        more,
                        bid,
                        len,
                        from,
                        truncated,
                    } => {
                        rearm |= !more;
                        match from {
                            Some(from) if !truncated => (bid, len, from),
                            _ => {
                                if truncated {
                                    shard.drop_oversized(len);
                                }
                                recycle(bufring, bufs, bid);
                                continue;
                            }
                        }
                    }
                };
                if outbox.needs_flush(2) {
                    flush(outbox, held, bufring, bufs, shard);
                    batch.sent(origin, &mut engine);
                }
                batch.datagrams += 1;
                let start = bid as usize * BUF_SIZE;
                let payload = &mut bufs[start + PAYLOAD_OFFSET..start + BUF_SIZE];
                let out = shard.handle_datagram(now, from, payload, len, outbox.reply_buf());
                if let Some(n) = out.reply {
                    outbox.push_reply(from, n);
                }
                match out.in_place {
                    Some(t) => {
                        // Sent from this buffer: it goes back after the flush.
                        outbox.push(t.dst, payload.as_mut_ptr(), t.len);
                        held.push(bid);
                    }
                    None => recycle(bufring, bufs, bid),
                }
            }
            flush(outbox, held, bufring, bufs, shard);
            batch.sent(origin, &mut engine);
            bufring.publish();
            if rearm {
                push(&mut sq, &submitter, &recv)?;
            }
            if now.saturating_duration_since(last_publish) >= PUBLISH_EVERY {
                shard.handle_timeout(now);
                publish(metrics, shard, &mut engine, *fd);
                heartbeat.beat(now);
                last_publish = now;
            }
        }
        publish(metrics, shard, &mut engine, *fd);

        // Cancel the multishot receive and wait until the kernel has let go
        // of it, so the socket (and its port) is released when this thread
        // closes it, not later when the kernel tears the ring down.
        let cancel = opcode::AsyncCancel::new(RECV).build().user_data(CANCEL);
        push(&mut sq, &submitter, &cancel)?;
        let deadline = MonoTime::from_duration(origin.elapsed()) + Duration::from_secs(1);
        let mut recv_done = false;
        while !recv_done && MonoTime::from_duration(origin.elapsed()) < deadline {
            sq.sync();
            wait(&submitter, &args)?;
            cq.sync();
            for cqe in &mut cq {
                recv_done |= cqe.user_data() == RECV && !cqueue::more(cqe.flags());
            }
        }
        Ok(())
    }
}

/// The datagrams of one wake-up that the core handled and whose answers
/// wait in the outbox.
struct Batch {
    /// The wake-up that took them.
    now: MonoTime,
    datagrams: u64,
}

impl Batch {
    /// After a flush: records how long its datagrams were in the node
    /// (one clock read for all of them; none when there were none).
    fn sent(&mut self, origin: Instant, engine: &mut EngineStats) {
        if self.datagrams > 0 {
            let sent = MonoTime::from_duration(origin.elapsed());
            engine
                .durations
                .record(sent.saturating_duration_since(self.now), self.datagrams);
            self.datagrams = 0;
        }
    }
}

/// Sends what the outbox holds, then gives the buffers it read from back
/// to the kernel.
fn flush(
    outbox: &mut Outbox,
    held: &mut Vec<u16>,
    bufring: &mut BufRing,
    bufs: &mut [u8],
    shard: &mut impl Core,
) {
    outbox.flush(shard);
    for bid in held.drain(..) {
        recycle(bufring, bufs, bid);
    }
}

/// One completion of a wake-up, read once: the prefetch ahead and the
/// handling both use it.
#[derive(Clone, Copy)]
enum Received {
    /// Not the receive's (the cancel's).
    Other,
    /// The receive's, without a datagram: no buffer was free
    /// (`exhausted`: `ENOBUFS`) or it failed.
    Empty { more: bool, exhausted: bool },
    /// A datagram of `len` payload bytes in buffer `bid`, from `from`
    /// (`None` where the header did not parse), cut short by the kernel
    /// when `truncated`.
    Datagram {
        more: bool,
        bid: u16,
        len: usize,
        from: Option<SocketAddr>,
        truncated: bool,
    },
}

impl Received {
    fn read(cqe: &cqueue::Entry, bufs: &[u8], recv_hdr: &libc::msghdr) -> Received {
        let flags = cqe.flags();
        if cqe.user_data() != RECV {
            return Received::Other;
        }
        let more = cqueue::more(flags);
        let Some(bid) = cqueue::buffer_select(flags) else {
            return Received::Empty {
                more,
                exhausted: cqe.result() == -libc::ENOBUFS,
            };
        };
        let start = bid as usize * BUF_SIZE;
        let (len, from, truncated) =
            match RecvMsgOut::parse(&bufs[start..start + BUF_SIZE], recv_hdr) {
                Ok(m) => (
                    m.payload_data().len(),
                    sys::decode_sockaddr(m.name_data()),
                    m.is_payload_truncated(),
                ),
                Err(()) => (0, None, false),
            };
        Received::Datagram {
            more,
            bid,
            len,
            from,
            truncated,
        }
    }
}

/// Prefetches what the core will read for a datagram to come.
fn prefetch(shard: &mut impl Core, received: &Received, bufs: &[u8], ahead: Ahead) {
    if let Received::Datagram {
        bid,
        len,
        from: Some(from),
        truncated: false,
        ..
    } = *received
    {
        let payload = bid as usize * BUF_SIZE + PAYLOAD_OFFSET;
        sys::prefetch(shard.lines_ahead(&bufs[payload..payload + len], from, ahead));
    }
}

fn recycle(bufring: &mut BufRing, bufs: &mut [u8], bid: u16) {
    let addr = bufs[bid as usize * BUF_SIZE..].as_mut_ptr();
    bufring.push(bid, addr, BUF_SIZE);
}

/// Submits what is queued and waits for a completion or the timeout in
/// `args`; a timeout or an interrupted wait is not an error.
fn wait(submitter: &Submitter<'_>, args: &SubmitArgs<'_, '_>) -> io::Result<()> {
    match submitter.submit_with_args(1, args) {
        Ok(_) => Ok(()),
        Err(e)
            if matches!(
                e.raw_os_error(),
                Some(libc::ETIME | libc::EINTR | libc::EBUSY)
            ) =>
        {
            Ok(())
        }
        Err(e) => Err(e),
    }
}

/// Pushes one entry, submitting first if the queue is full.
fn push(
    sq: &mut SubmissionQueue<'_>,
    submitter: &Submitter<'_>,
    entry: &squeue::Entry,
) -> io::Result<()> {
    loop {
        // SAFETY: every pointer in our entries (the receive msghdr, the
        // provided buffers) lives in memory owned by UringEngine, which
        // outlives the ring.
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
