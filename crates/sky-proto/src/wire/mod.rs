//! Wire format v1: every sky message is one UDP datagram.
//!
//! Two layers, as in smoltcp:
//! - [`Packet`] is a *checked view* over untrusted bytes. [`Packet::new_checked`]
//!   validates the version, the kind and the exact length for that kind; after
//!   that every accessor is in bounds.
//! - [`Message`] is the *parsed value*, a small `Copy` enum. [`Message::parse`]
//!   reads one from a checked packet, [`Message::emit`] writes one into a caller
//!   buffer of at least [`Message::buffer_len`] bytes.
//!
//! Decoding never panics and never allocates, whatever the input (a property
//! test feeds it arbitrary bytes, and every truncation of every message). The
//! byte layout is documented, with sizes, in `docs/PROTOCOL.md`; the constants
//! here are the single source for those numbers.
//!
//! ```
//! use sky_proto::wire::{Cookie, Message, Tag, VirtualAddr, MAX_MESSAGE_LEN};
//!
//! let lookup = Message::Lookup {
//!     tag: Tag([1, 2, 3, 4]),
//!     cookie: Cookie::default(),
//!     target: VirtualAddr([0x11; 16]),
//!     caller: VirtualAddr([0x22; 16]),
//!     hint: [0x33; 16],
//! };
//! let mut buf = [0u8; MAX_MESSAGE_LEN];
//! let len = lookup.emit(&mut buf);
//! assert_eq!(len, 62);
//! assert_eq!(Message::decode(&buf[..len]), Ok(lookup));
//! assert!(Message::decode(&buf[..len - 1]).is_err());
//! ```

use std::fmt;
use std::net::SocketAddr;

use crate::addr::encode_endpoint;
pub use crate::addr::{
    AddrKey, Cookie, ENDPOINT_V4_LEN, ENDPOINT_V6_LEN, Flags, IntroKey, Mac, Signature, Tag,
    VirtualAddr, canonical, decode_endpoint, endpoint_len, from_hex, to_hex,
};

mod message;

pub use message::Message;

/// The protocol version carried in byte 0 of every datagram.
pub const VERSION: u8 = 1;

/// Datagrams longer than this are dropped as oversized (IPv6 minimum MTU
/// minus IPv6 and UDP headers). No v1 message comes close.
pub const MAX_DATAGRAM_LEN: usize = 1232;

/// Length of the header every request carries: version, kind, tag, cookie.
pub const REQUEST_HEADER_LEN: usize = 14;

/// Length of the header every tagged reply carries: version, kind, tag.
pub const REPLY_HEADER_LEN: usize = 6;

/// The longest message v1 defines but a members request or page (a
/// register: key and signature).
pub const MAX_MESSAGE_LEN: usize = 111;

/// What a `register` signs: a domain, the cookie (which binds this node,
/// the source's IP and port, and a 5-minute generation) and the flags. A
/// captured registration therefore proves nothing from another source, at
/// another node, or ten minutes later.
pub fn register_statement(cookie: &Cookie, flags: Flags) -> [u8; 25] {
    let mut s = [0u8; 25];
    s[..16].copy_from_slice(b"sky v1 register\0");
    s[16..24].copy_from_slice(&cookie.0);
    s[24] = flags.0;
    s
}

/// The presence-table address a `keepalive` or `lookup` names, and which
/// of the two it is, read from their fixed places after checking only the
/// version, the kind and the exact length (nothing is parsed or verified):
/// a hint for a node that wants the table's memory for it on the way while
/// it handles the datagrams before it (a wrong hint costs a wasted
/// prefetch, never an answer; junk of another length costs nothing).
/// `None` for anything else.
pub fn named_address(datagram: &[u8]) -> Option<(Kind, VirtualAddr)> {
    if datagram.first() != Some(&VERSION) {
        return None;
    }
    let (kind, range) = match *datagram.get(field::KIND)? {
        k if k == Kind::Keepalive as u8 => (Kind::Keepalive, field::KEEPALIVE_ADDRESS),
        k if k == Kind::Lookup as u8 => (Kind::Lookup, field::LOOKUP_TARGET),
        _ => return None,
    };
    (datagram.len() == kind.min_len()).then(|| (kind, VirtualAddr::read(&datagram[range])))
}

/// What an `unregister` signs: a domain and the cookie.
pub fn unregister_statement(cookie: &Cookie) -> [u8; 25] {
    let mut s = [0u8; 25];
    s[..17].copy_from_slice(b"sky v1 unregister");
    s[17..25].copy_from_slice(&cookie.0);
    s
}

/// Byte offsets of every field, by message kind.
pub(crate) mod field {
    use std::ops::{Range, RangeFrom};

    pub(crate) const VERSION: usize = 0;
    pub(crate) const KIND: usize = 1;
    /// Client-chosen request tag, echoed in the reply (matching and
    /// anti-spoofing).
    pub(crate) const TAG: Range<usize> = 2..6;
    /// Requests only.
    pub(crate) const COOKIE: Range<usize> = 6..14;

    // Request bodies.
    pub(crate) const REGISTER_FLAGS: usize = 14;
    pub(crate) const REGISTER_KEY: Range<usize> = 15..47;
    pub(crate) const REGISTER_SIG: Range<usize> = 47..111;
    pub(crate) const KEEPALIVE_ADDRESS: Range<usize> = 14..30;
    /// The ring version the client holds (0: none).
    pub(crate) const KEEPALIVE_RING: Range<usize> = 30..34;
    pub(crate) const LOOKUP_TARGET: Range<usize> = 14..30;
    pub(crate) const LOOKUP_CALLER: Range<usize> = 30..46;
    /// The caller's sealed hint, passed on unread ([`crate::hint`]).
    pub(crate) const LOOKUP_HINT: Range<usize> = 46..62;
    pub(crate) const UNREGISTER_KEY: Range<usize> = 14..46;
    pub(crate) const UNREGISTER_SIG: Range<usize> = 46..110;
    /// Index of the first member wanted; padding follows.
    pub(crate) const MEMBERS_START: Range<usize> = 14..16;
    /// Bit 0: answer from the other check port. Padding follows up to
    /// [`CHECK_LEN`].
    pub(crate) const CHECK_FLAGS: usize = 14;
    pub(crate) const CHECK_LEN: usize = 32;

    // Reply bodies.
    pub(crate) const COOKIE_VALUE: Range<usize> = 6..14;
    pub(crate) const REGISTERED_KEEPALIVE: Range<usize> = 6..8;
    pub(crate) const REGISTERED_INTRO_KEY: Range<usize> = 8..40;
    pub(crate) const REGISTERED_ENDPOINT: RangeFrom<usize> = 40..;
    pub(crate) const ONLINE_FLAGS: usize = 6;
    pub(crate) const ONLINE_ENDPOINT: RangeFrom<usize> = 7..;
    pub(crate) const PAGE_VERSION: Range<usize> = 6..10;
    pub(crate) const PAGE_REPLICAS: usize = 10;
    pub(crate) const PAGE_PREFIX_V4: usize = 11;
    pub(crate) const PAGE_PREFIX_V6: usize = 12;
    pub(crate) const PAGE_POSITIONS: usize = 13;
    pub(crate) const PAGE_TOTAL: Range<usize> = 14..16;
    pub(crate) const PAGE_START: Range<usize> = 16..18;
    pub(crate) const PAGE_ENTRIES: RangeFrom<usize> = 18..;
    pub(crate) const NOT_OWNER_VERSION: Range<usize> = 6..10;
    pub(crate) const NOT_OWNER_HINT: RangeFrom<usize> = 10..;
    pub(crate) const RING_VERSION: Range<usize> = 6..10;
    /// Why a registration was refused.
    pub(crate) const REFUSED_REASON: usize = 6;
    /// The node's first check port (0: no check service).
    pub(crate) const CHECKED_PORT: Range<usize> = 6..8;
    pub(crate) const CHECKED_ENDPOINT: RangeFrom<usize> = 8..;

    // Introduction (sky to target, unsolicited: no tag).
    pub(crate) const INTRO_CALLER: Range<usize> = 2..18;
    pub(crate) const INTRO_MAC: Range<usize> = 18..26;
    pub(crate) const INTRO_HINT: Range<usize> = 26..42;
    pub(crate) const INTRO_ENDPOINT: RangeFrom<usize> = 42..;
}

/// Message kinds (byte 1). Requests have the high bit clear, replies set.
///
/// `0x06` (members), `0x88` (members page), `0x89` (not owner) and `0x8a`
/// (ring changed) are the DHT's (SPEC §4, `docs/PROTOCOL.md`); `0x07`
/// (check) and `0x8b` (checked) are the NAT check's.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Kind {
    /// `0x01`: ping.
    Ping = 0x01,
    /// `0x02`: register.
    Register = 0x02,
    /// `0x03`: keepalive.
    Keepalive = 0x03,
    /// `0x04`: lookup.
    Lookup = 0x04,
    /// `0x05`: unregister.
    Unregister = 0x05,
    /// `0x06`: members request.
    Members = 0x06,
    /// `0x07`: check (where do you see me?).
    Check = 0x07,
    /// `0x81`: pong.
    Pong = 0x81,
    /// `0x82`: cookie.
    Cookie = 0x82,
    /// `0x83`: registered.
    Registered = 0x83,
    /// `0x84`: not registered.
    NotRegistered = 0x84,
    /// `0x85`: online.
    Online = 0x85,
    /// `0x86`: offline.
    Offline = 0x86,
    /// `0x87`: introduction.
    Introduction = 0x87,
    /// `0x88`: members page.
    MembersPage = 0x88,
    /// `0x89`: not owner.
    NotOwner = 0x89,
    /// `0x8a`: ring changed.
    RingChanged = 0x8a,
    /// `0x8b`: checked (the observed endpoint).
    Checked = 0x8b,
    /// `0x8c`: refused (a registration, and why).
    Refused = 0x8c,
}

/// The lengths a datagram of one kind may have.
#[derive(Clone, Copy, Debug)]
enum Lengths {
    Fixed(usize),
    /// A base plus an IPv4 or an IPv6 endpoint.
    Endpoint(usize, usize),
    /// At least this many bytes, up to [`MAX_DATAGRAM_LEN`].
    AtLeast(usize),
}

impl Kind {
    /// Every kind, in wire order.
    pub const ALL: [Kind; 19] = [
        Kind::Ping,
        Kind::Register,
        Kind::Keepalive,
        Kind::Lookup,
        Kind::Unregister,
        Kind::Members,
        Kind::Check,
        Kind::Pong,
        Kind::Cookie,
        Kind::Registered,
        Kind::NotRegistered,
        Kind::Online,
        Kind::Offline,
        Kind::Introduction,
        Kind::MembersPage,
        Kind::NotOwner,
        Kind::RingChanged,
        Kind::Checked,
        Kind::Refused,
    ];

    /// The kind byte 1 names, if any.
    pub fn from_byte(byte: u8) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| *k as u8 == byte)
    }

    /// True for the kinds a client sends to a sky node.
    pub fn is_request(self) -> bool {
        (self as u8) & 0x80 == 0
    }

    /// The lengths a datagram of this kind may have.
    fn lengths(self) -> Lengths {
        use Lengths::{AtLeast, Fixed};
        let with_endpoint =
            |base| Lengths::Endpoint(base + ENDPOINT_V4_LEN, base + ENDPOINT_V6_LEN);
        match self {
            Kind::Ping => Fixed(REQUEST_HEADER_LEN),
            Kind::Register => Fixed(field::REGISTER_SIG.end),
            Kind::Keepalive => Fixed(field::KEEPALIVE_RING.end),
            Kind::Lookup => Fixed(field::LOOKUP_HINT.end),
            Kind::Unregister => Fixed(field::UNREGISTER_SIG.end),
            // At least as long as a page header: no page outgrows its request.
            Kind::Members => AtLeast(field::PAGE_ENTRIES.start),
            Kind::Pong | Kind::NotRegistered | Kind::Offline => Fixed(REPLY_HEADER_LEN),
            Kind::Cookie => Fixed(field::COOKIE_VALUE.end),
            Kind::Registered => with_endpoint(field::REGISTERED_ENDPOINT.start),
            Kind::Online => with_endpoint(field::ONLINE_ENDPOINT.start),
            Kind::Introduction => with_endpoint(field::INTRO_ENDPOINT.start),
            Kind::MembersPage => AtLeast(field::PAGE_ENTRIES.start),
            Kind::NotOwner => with_endpoint(field::NOT_OWNER_HINT.start),
            Kind::RingChanged => Fixed(field::RING_VERSION.end),
            Kind::Check => Fixed(field::CHECK_LEN),
            Kind::Checked => with_endpoint(field::CHECKED_ENDPOINT.start),
            Kind::Refused => Fixed(field::REFUSED_REASON + 1),
        }
    }

    /// The shortest datagram of this kind.
    pub fn min_len(self) -> usize {
        match self.lengths() {
            Lengths::Fixed(n) | Lengths::Endpoint(n, _) | Lengths::AtLeast(n) => n,
        }
    }
}

/// Why a datagram is not a valid v1 message. Small and `Copy`: drops are
/// counted by this reason, never propagated as strings.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Error {
    /// Shorter than its kind requires (or empty).
    Truncated,
    /// Byte 0 is not [`VERSION`].
    BadVersion,
    /// Byte 1 names no v1 kind.
    UnknownKind,
    /// A members page whose entries do not parse.
    BadEntry,
    /// Longer than its kind allows, or between the IPv4 and IPv6 sizes.
    BadLength,
    /// Longer than [`MAX_DATAGRAM_LEN`].
    Oversized,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Error::Truncated => "datagram shorter than its kind requires",
            Error::BadVersion => "unsupported protocol version",
            Error::UnknownKind => "unknown message kind",
            Error::BadEntry => "members page entry does not parse",
            Error::BadLength => "datagram length does not fit its kind",
            Error::Oversized => "datagram longer than any message",
        })
    }
}

impl std::error::Error for Error {}
/// A checked view over the bytes of one datagram.
///
/// `new_checked` is the only constructor from untrusted bytes; once it
/// returns `Ok`, every field accessor is in bounds for the packet's kind.
/// Accessors of fields the kind does not have panic (a bug in the caller,
/// never reachable from input).
#[derive(Debug, Clone, Copy)]
pub struct Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Packet<T> {
    /// Wraps a buffer without checking it (for emitting into it).
    pub fn new_unchecked(buffer: T) -> Packet<T> {
        Packet { buffer }
    }

    /// Wraps untrusted bytes, checking version, kind and length.
    pub fn new_checked(buffer: T) -> Result<Packet<T>, Error> {
        let bytes = buffer.as_ref();
        if bytes.len() > MAX_DATAGRAM_LEN {
            return Err(Error::Oversized);
        }
        match bytes.first() {
            None => return Err(Error::Truncated),
            Some(&v) if v != VERSION => return Err(Error::BadVersion),
            Some(_) => {}
        }
        let kind = match bytes.get(field::KIND) {
            None => return Err(Error::Truncated),
            Some(&k) => Kind::from_byte(k).ok_or(Error::UnknownKind)?,
        };
        let len = bytes.len();
        if len < kind.min_len() {
            return Err(Error::Truncated);
        }
        match kind.lengths() {
            Lengths::Fixed(n) if len != n => return Err(Error::BadLength),
            Lengths::Endpoint(v4, v6) if len != v4 && len != v6 => return Err(Error::BadLength),
            _ => {}
        }
        if kind == Kind::MembersPage {
            let mut entries = PageEntries {
                rest: &bytes[field::PAGE_ENTRIES],
            };
            while !entries.rest.is_empty() {
                if entries.next().is_none() {
                    return Err(Error::BadEntry);
                }
            }
        }
        Ok(Packet { buffer })
    }

    /// The buffer back.
    pub fn into_inner(self) -> T {
        self.buffer
    }

    pub(crate) fn bytes(&self) -> &[u8] {
        self.buffer.as_ref()
    }

    /// Byte 0.
    pub fn version(&self) -> u8 {
        self.bytes()[field::VERSION]
    }

    /// The kind; valid on a checked packet.
    pub fn kind(&self) -> Kind {
        Kind::from_byte(self.bytes()[field::KIND]).expect("checked packet")
    }

    /// The tag (requests and tagged replies).
    pub fn tag(&self) -> Tag {
        Tag::read(&self.bytes()[field::TAG])
    }

    /// The cookie (requests).
    pub fn cookie(&self) -> Cookie {
        Cookie::read(&self.bytes()[field::COOKIE])
    }

    pub(crate) fn read_endpoint(&self, from: usize) -> SocketAddr {
        decode_endpoint(&self.bytes()[from..]).expect("checked length")
    }

    /// The members a members page lists; empty for any other kind.
    pub fn page_entries(&self) -> PageEntries<'_> {
        let rest = match self.kind() {
            Kind::MembersPage => &self.bytes()[field::PAGE_ENTRIES],
            _ => &[],
        };
        PageEntries { rest }
    }
}

/// Family byte of a members page entry followed by an IPv4 endpoint.
const ENTRY_V4: u8 = 4;
/// Family byte of a members page entry followed by an IPv6 endpoint.
const ENTRY_V6: u8 = 6;

/// The endpoints of a members page, in order.
#[derive(Clone, Debug)]
pub struct PageEntries<'a> {
    rest: &'a [u8],
}

impl Iterator for PageEntries<'_> {
    type Item = SocketAddr;

    fn next(&mut self) -> Option<SocketAddr> {
        let n = match *self.rest.first()? {
            ENTRY_V4 => ENDPOINT_V4_LEN,
            ENTRY_V6 => ENDPOINT_V6_LEN,
            _ => return None,
        };
        let entry = self.rest.get(1..1 + n)?;
        self.rest = &self.rest[1 + n..];
        decode_endpoint(entry)
    }
}

/// Bytes one members page entry takes.
fn page_entry_len(endpoint: &SocketAddr) -> usize {
    1 + endpoint_len(endpoint)
}

/// Writes a members page into `buf`: the header, then as many of
/// `entries` as fit in `limit` bytes (a node passes the request's length,
/// so a page is never larger than the request that asked for it). Returns
/// the length written and the number of entries in it.
pub fn emit_members_page(
    buf: &mut [u8],
    limit: usize,
    header: Message,
    entries: impl IntoIterator<Item = SocketAddr>,
) -> (usize, usize) {
    debug_assert!(matches!(header, Message::MembersPage { .. }));
    let limit = limit.min(buf.len()).min(MAX_DATAGRAM_LEN);
    let mut len = header.emit(buf);
    let mut count = 0;
    for endpoint in entries {
        let endpoint = canonical(endpoint);
        let n = page_entry_len(&endpoint);
        if len + n > limit {
            break;
        }
        buf[len] = if n == 1 + ENDPOINT_V4_LEN {
            ENTRY_V4
        } else {
            ENTRY_V6
        };
        encode_endpoint(&endpoint, &mut buf[len + 1..len + n]);
        len += n;
        count += 1;
    }
    (len, count)
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    pub(crate) fn bytes_mut(&mut self) -> &mut [u8] {
        self.buffer.as_mut()
    }

    pub(crate) fn set_header(&mut self, kind: Kind) {
        let bytes = self.bytes_mut();
        bytes[field::VERSION] = VERSION;
        bytes[field::KIND] = kind as u8;
    }
}

#[cfg(test)]
#[path = "../tests/wire.rs"]
mod tests;
