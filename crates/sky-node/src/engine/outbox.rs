//! Batched sends: every datagram a batch of work produces goes out with one
//! `sendmmsg`. Both engines use it; the io_uring engine receives through its
//! ring and sends through this (UDP sends complete inline, and one syscall
//! for a whole batch costs less than a submission and a completion each).

#![allow(unsafe_code)]

use std::io;
use std::net::SocketAddr;
use std::os::fd::RawFd;

use super::sys::RawAddr;
use crate::shard::{Core, DropReason};
use sky_proto::wire;

pub(super) struct Outbox {
    fd: RawFd,
    v6: bool,
    names: Box<[RawAddr]>,
    iovs: Box<[libc::iovec]>,
    hdrs: Box<[libc::mmsghdr]>,
    replies: Box<[[u8; wire::MAX_MESSAGE_LEN]]>,
    len: usize,
}

impl Outbox {
    pub(super) fn new(fd: RawFd, v6: bool, capacity: usize) -> Outbox {
        let iov = libc::iovec {
            iov_base: std::ptr::null_mut(),
            iov_len: 0,
        };
        Outbox {
            fd,
            v6,
            names: vec![RawAddr::zeroed(); capacity].into_boxed_slice(),
            iovs: vec![iov; capacity].into_boxed_slice(),
            // SAFETY: mmsghdr is plain data; all-zero is an empty header.
            hdrs: vec![unsafe { std::mem::zeroed::<libc::mmsghdr>() }; capacity].into_boxed_slice(),
            replies: vec![[0u8; wire::MAX_MESSAGE_LEN]; capacity].into_boxed_slice(),
            len: 0,
        }
    }

    /// True when fewer than `room` more datagrams fit: flush first.
    pub(super) fn needs_flush(&self, room: usize) -> bool {
        self.len + room > self.hdrs.len()
    }

    /// Where the core writes its reply; `push_reply` then queues it.
    pub(super) fn reply_buf(&mut self) -> &mut [u8] {
        &mut self.replies[self.len]
    }

    /// Queues the `len` bytes written into `reply_buf` for `dst`.
    pub(super) fn push_reply(&mut self, dst: SocketAddr, len: usize) {
        let ptr = self.replies[self.len].as_mut_ptr();
        self.push(dst, ptr, len);
    }

    /// Queues `len` bytes at `data` for `dst`. The caller keeps that memory
    /// unchanged until the next `flush` returns.
    pub(super) fn push(&mut self, dst: SocketAddr, data: *mut u8, len: usize) {
        let i = self.len;
        let namelen = self.names[i].set(dst, self.v6);
        self.iovs[i] = libc::iovec {
            iov_base: data.cast(),
            iov_len: len,
        };
        let h = &mut self.hdrs[i].msg_hdr;
        h.msg_name = self.names[i].as_mut_ptr();
        h.msg_namelen = namelen;
        h.msg_iov = &mut self.iovs[i];
        h.msg_iovlen = 1;
        self.len += 1;
    }

    /// Sends everything queued; a datagram the kernel refuses is counted
    /// and skipped.
    pub(super) fn flush(&mut self, core: &mut impl Core) {
        let count = self.len;
        let mut sent = 0;
        while sent < count {
            // SAFETY: headers sent..count were filled by `push` and point
            // into memory owned by self or kept by the caller until now.
            let r = unsafe {
                libc::sendmmsg(
                    self.fd,
                    self.hdrs[sent..].as_mut_ptr(),
                    (count - sent) as libc::c_uint,
                    0,
                )
            };
            if r > 0 {
                sent += r as usize;
            } else if io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
                continue;
            } else {
                core.stats_mut().record_drop(DropReason::SendFailed);
                sent += 1;
            }
        }
        self.len = 0;
    }
}
