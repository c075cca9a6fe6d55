//! [`Message`]: the parsed value of one sky datagram, with `parse`, `emit`
//! and `buffer_len`.

use std::net::SocketAddr;

use super::{
    AddrKey, Cookie, ENDPOINT_V4_LEN, Error, Flags, IntroKey, Kind, MAX_DATAGRAM_LEN, Mac, Packet,
    Signature, Tag, VirtualAddr, endpoint_len, field,
};
use crate::addr::encode_endpoint;
use crate::hint::HINT_LEN;
use crate::ring::RingConfig;

/// The parsed value of one message, requests and replies alike.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Message {
    // Requests: every one carries a tag and a cookie (zero when the client
    // has none yet).
    /// A health probe; answered with `Pong` whatever the cookie.
    Ping {
        /// Echoed in the reply.
        tag: Tag,
        /// The cookie this node gave the source, or zeros.
        cookie: Cookie,
    },
    /// Registers the address of `key` at the source endpoint.
    Register {
        /// Echoed in the reply.
        tag: Tag,
        /// The cookie this node gave the source, or zeros.
        cookie: Cookie,
        /// Bit 0: metered.
        flags: Flags,
        /// The address key; the address is its hash.
        key: AddrKey,
        /// `key`'s signature over [`super::register_statement`] of the
        /// cookie and flags.
        sig: Signature,
    },
    /// Keeps `address` alive; no reply when it is registered here.
    Keepalive {
        /// Echoed in a reply.
        tag: Tag,
        /// The cookie this node gave the source, or zeros.
        cookie: Cookie,
        /// The address registered from this source.
        address: VirtualAddr,
        /// The ring version the client holds; 0 when it holds none.
        ring: u32,
    },
    /// Asks whether `target` is online, introducing `caller` if so.
    Lookup {
        /// Echoed in the reply.
        tag: Tag,
        /// The cookie this node gave the source, or zeros.
        cookie: Cookie,
        /// The address looked up.
        target: VirtualAddr,
        /// The caller's own address, passed on in the introduction.
        caller: VirtualAddr,
        /// The caller's sealed hint for the target, passed on unread.
        hint: [u8; HINT_LEN],
    },
    /// Drops the address of `key`; no reply.
    Unregister {
        /// Not echoed (there is no reply).
        tag: Tag,
        /// The cookie this node gave the source, or zeros.
        cookie: Cookie,
        /// The key whose address goes.
        key: AddrKey,
        /// `key`'s signature over [`super::unregister_statement`] of the
        /// cookie.
        sig: Signature,
    },
    /// Asks for the members from index `start`; `len` is the whole
    /// datagram's length (zero padding after `start`), which bounds the page.
    Members {
        /// Echoed in the page.
        tag: Tag,
        /// The cookie this node gave the source, or zeros.
        cookie: Cookie,
        /// Index of the first member wanted.
        start: u16,
        /// The request's whole length, padding included.
        len: u16,
    },
    /// Asks where the node sees the source (the NAT check, `sky earth
    /// netcheck`); answered with `Checked` whatever the cookie, never
    /// larger than the request (32 bytes, zero padded).
    Check {
        /// Echoed in the reply.
        tag: Tag,
        /// The cookie this node gave the source, or zeros.
        cookie: Cookie,
        /// Bit 0 ([`Message::CHECK_FROM_OTHER`]): answer from the other
        /// check port (a request to a check port only).
        flags: u8,
    },
    // Replies.
    /// Answers `Ping`.
    Pong {
        /// The request's tag.
        tag: Tag,
    },
    /// Answers a request without a valid cookie; nothing else happened.
    CookieReply {
        /// The request's tag.
        tag: Tag,
        /// The cookie to send the request again with.
        cookie: Cookie,
    },
    /// Answers `Register`.
    Registered {
        /// The request's tag.
        tag: Tag,
        /// The keepalive interval the node asks for, in seconds.
        keepalive_secs: u16,
        /// The key introductions to this address are MAC'd with.
        intro_key: IntroKey,
        /// The source endpoint the node saw (what STUN would say).
        observed: SocketAddr,
    },
    /// Answers a `Keepalive` of an address not registered at its source.
    NotRegistered {
        /// The request's tag.
        tag: Tag,
    },
    /// Answers a `Lookup` of an online address.
    Online {
        /// The request's tag.
        tag: Tag,
        /// The target's flags, and whether it was introduced.
        flags: Flags,
        /// The target's endpoint.
        endpoint: SocketAddr,
    },
    /// Answers a `Lookup` of an address not online here.
    Offline {
        /// The request's tag.
        tag: Tag,
    },
    /// Sent to a looked-up target: who calls from where.
    Introduction {
        /// The caller's virtual address (as the caller gave it).
        caller: VirtualAddr,
        /// MAC under the target's introduction key.
        mac: Mac,
        /// The caller's sealed hint, as the caller gave it.
        hint: [u8; HINT_LEN],
        /// The caller's observed endpoint.
        endpoint: SocketAddr,
    },
    /// The header of a members page; its entries are read with
    /// [`Packet::page_entries`] and written with [`super::emit_members_page`].
    MembersPage {
        /// The request's tag.
        tag: Tag,
        /// The ring version of the view listed (0: a standalone node).
        version: u32,
        /// The settings clients compute owners with.
        config: RingConfig,
        /// Members in the whole view.
        total: u16,
        /// Index of this page's first entry.
        start: u16,
    },
    /// The node does not own the address asked about; `hint` is the first
    /// owner in its view.
    NotOwner {
        /// The request's tag.
        tag: Tag,
        /// The node's ring version.
        version: u32,
        /// The first owner of the address in the node's view.
        hint: SocketAddr,
    },
    /// Answers a keepalive whose ring version is not the node's.
    RingChanged {
        /// The keepalive's tag.
        tag: Tag,
        /// The node's ring version.
        version: u32,
    },
    /// Answers a `Register` the node will not hold: why (1 the table is
    /// full, 2 the source IP holds its share, 3 its prefix does).
    Refused {
        /// The request's tag.
        tag: Tag,
        /// Why.
        reason: u8,
    },
    /// Answers `Check`: the source endpoint as this node saw it.
    Checked {
        /// The request's tag.
        tag: Tag,
        /// The node's first check port (the second is the next one); 0
        /// when it runs no check service.
        check_port: u16,
        /// The request's observed source endpoint.
        endpoint: SocketAddr,
    },
}

impl Message {
    /// `Check` flag: answer from the other check port.
    pub const CHECK_FROM_OTHER: u8 = 0x01;

    /// Parses untrusted bytes: `Packet::new_checked` then `parse`.
    pub fn decode(bytes: &[u8]) -> Result<Message, Error> {
        Packet::new_checked(bytes).map(|p| Message::parse(&p))
    }

    /// Reads the value of a checked packet.
    pub fn parse<T: AsRef<[u8]>>(p: &Packet<T>) -> Message {
        let b = p.bytes();
        match p.kind() {
            Kind::Ping => Message::Ping {
                tag: p.tag(),
                cookie: p.cookie(),
            },
            Kind::Register => Message::Register {
                tag: p.tag(),
                cookie: p.cookie(),
                flags: Flags(b[field::REGISTER_FLAGS]),
                key: AddrKey::read(&b[field::REGISTER_KEY]),
                sig: Signature::read(&b[field::REGISTER_SIG]),
            },
            Kind::Keepalive => Message::Keepalive {
                tag: p.tag(),
                cookie: p.cookie(),
                address: VirtualAddr::read(&b[field::KEEPALIVE_ADDRESS]),
                ring: read_u32(&b[field::KEEPALIVE_RING]),
            },
            Kind::Lookup => Message::Lookup {
                tag: p.tag(),
                cookie: p.cookie(),
                target: VirtualAddr::read(&b[field::LOOKUP_TARGET]),
                caller: VirtualAddr::read(&b[field::LOOKUP_CALLER]),
                hint: read_hint(&b[field::LOOKUP_HINT]),
            },
            Kind::Unregister => Message::Unregister {
                tag: p.tag(),
                cookie: p.cookie(),
                key: AddrKey::read(&b[field::UNREGISTER_KEY]),
                sig: Signature::read(&b[field::UNREGISTER_SIG]),
            },
            Kind::Members => Message::Members {
                tag: p.tag(),
                cookie: p.cookie(),
                start: read_u16(&b[field::MEMBERS_START]),
                len: b.len() as u16,
            },
            Kind::Check => Message::Check {
                tag: p.tag(),
                cookie: p.cookie(),
                flags: b[field::CHECK_FLAGS],
            },
            Kind::Checked => Message::Checked {
                tag: p.tag(),
                check_port: read_u16(&b[field::CHECKED_PORT]),
                endpoint: p.read_endpoint(field::CHECKED_ENDPOINT.start),
            },
            Kind::Refused => Message::Refused {
                tag: p.tag(),
                reason: b[field::REFUSED_REASON],
            },
            Kind::Pong => Message::Pong { tag: p.tag() },
            Kind::Cookie => Message::CookieReply {
                tag: p.tag(),
                cookie: Cookie::read(&b[field::COOKIE_VALUE]),
            },
            Kind::Registered => Message::Registered {
                tag: p.tag(),
                keepalive_secs: u16::from_be_bytes([
                    b[field::REGISTERED_KEEPALIVE.start],
                    b[field::REGISTERED_KEEPALIVE.start + 1],
                ]),
                intro_key: IntroKey::read(&b[field::REGISTERED_INTRO_KEY]),
                observed: p.read_endpoint(field::REGISTERED_ENDPOINT.start),
            },
            Kind::NotRegistered => Message::NotRegistered { tag: p.tag() },
            Kind::Online => Message::Online {
                tag: p.tag(),
                flags: Flags(b[field::ONLINE_FLAGS]),
                endpoint: p.read_endpoint(field::ONLINE_ENDPOINT.start),
            },
            Kind::Offline => Message::Offline { tag: p.tag() },
            Kind::Introduction => Message::Introduction {
                caller: VirtualAddr::read(&b[field::INTRO_CALLER]),
                mac: Mac::read(&b[field::INTRO_MAC]),
                hint: read_hint(&b[field::INTRO_HINT]),
                endpoint: p.read_endpoint(field::INTRO_ENDPOINT.start),
            },
            Kind::MembersPage => Message::MembersPage {
                tag: p.tag(),
                version: read_u32(&b[field::PAGE_VERSION]),
                config: RingConfig {
                    replicas: b[field::PAGE_REPLICAS],
                    prefix_v4: b[field::PAGE_PREFIX_V4],
                    prefix_v6: b[field::PAGE_PREFIX_V6],
                    positions: b[field::PAGE_POSITIONS],
                },
                total: read_u16(&b[field::PAGE_TOTAL]),
                start: read_u16(&b[field::PAGE_START]),
            },
            Kind::NotOwner => Message::NotOwner {
                tag: p.tag(),
                version: read_u32(&b[field::NOT_OWNER_VERSION]),
                hint: p.read_endpoint(field::NOT_OWNER_HINT.start),
            },
            Kind::RingChanged => Message::RingChanged {
                tag: p.tag(),
                version: read_u32(&b[field::RING_VERSION]),
            },
        }
    }

    /// The message's kind (byte 1).
    pub fn kind(&self) -> Kind {
        match self {
            Message::Ping { .. } => Kind::Ping,
            Message::Register { .. } => Kind::Register,
            Message::Keepalive { .. } => Kind::Keepalive,
            Message::Lookup { .. } => Kind::Lookup,
            Message::Unregister { .. } => Kind::Unregister,
            Message::Pong { .. } => Kind::Pong,
            Message::CookieReply { .. } => Kind::Cookie,
            Message::Registered { .. } => Kind::Registered,
            Message::NotRegistered { .. } => Kind::NotRegistered,
            Message::Online { .. } => Kind::Online,
            Message::Offline { .. } => Kind::Offline,
            Message::Introduction { .. } => Kind::Introduction,
            Message::Members { .. } => Kind::Members,
            Message::MembersPage { .. } => Kind::MembersPage,
            Message::NotOwner { .. } => Kind::NotOwner,
            Message::RingChanged { .. } => Kind::RingChanged,
            Message::Check { .. } => Kind::Check,
            Message::Checked { .. } => Kind::Checked,
            Message::Refused { .. } => Kind::Refused,
        }
    }

    /// The tag of a request or of a tagged reply (introductions have none).
    pub fn tag(&self) -> Option<Tag> {
        match *self {
            Message::Ping { tag, .. }
            | Message::Register { tag, .. }
            | Message::Keepalive { tag, .. }
            | Message::Lookup { tag, .. }
            | Message::Unregister { tag, .. }
            | Message::Pong { tag }
            | Message::CookieReply { tag, .. }
            | Message::Registered { tag, .. }
            | Message::NotRegistered { tag }
            | Message::Online { tag, .. }
            | Message::Offline { tag }
            | Message::Members { tag, .. }
            | Message::MembersPage { tag, .. }
            | Message::NotOwner { tag, .. }
            | Message::RingChanged { tag, .. }
            | Message::Check { tag, .. }
            | Message::Checked { tag, .. }
            | Message::Refused { tag, .. } => Some(tag),
            Message::Introduction { .. } => None,
        }
    }

    /// The tag of a request, to change (a sender numbering its requests).
    pub fn tag_mut(&mut self) -> Option<&mut Tag> {
        match self {
            Message::Ping { tag, .. }
            | Message::Register { tag, .. }
            | Message::Keepalive { tag, .. }
            | Message::Lookup { tag, .. }
            | Message::Unregister { tag, .. }
            | Message::Members { tag, .. }
            | Message::Check { tag, .. } => Some(tag),
            _ => None,
        }
    }

    /// The cookie of a request, to change (a request sent again under
    /// another cookie).
    pub fn cookie_mut(&mut self) -> Option<&mut Cookie> {
        match self {
            Message::Ping { cookie, .. }
            | Message::Register { cookie, .. }
            | Message::Keepalive { cookie, .. }
            | Message::Lookup { cookie, .. }
            | Message::Unregister { cookie, .. }
            | Message::Members { cookie, .. }
            | Message::Check { cookie, .. } => Some(cookie),
            _ => None,
        }
    }

    /// The number of bytes `emit` writes.
    /// A members request is as long as its `len` (at least its minimum); a
    /// members page header is 18 bytes (its entries are not part of the
    /// value).
    pub fn buffer_len(&self) -> usize {
        let short = self.kind().min_len();
        if let Message::Members { len, .. } = *self {
            return usize::from(len).clamp(short, MAX_DATAGRAM_LEN);
        }
        let endpoint = match self {
            Message::Registered { observed: e, .. }
            | Message::Online { endpoint: e, .. }
            | Message::Introduction { endpoint: e, .. }
            | Message::NotOwner { hint: e, .. }
            | Message::Checked { endpoint: e, .. } => Some(e),
            _ => None,
        };
        match endpoint {
            Some(e) => short - ENDPOINT_V4_LEN + endpoint_len(e),
            None => short,
        }
    }

    /// Writes the message into the front of `buf` and returns its length.
    ///
    /// # Panics
    /// If `buf` is shorter than [`Message::buffer_len`] (a caller bug: every
    /// buffer in this crate is at least [`super::MAX_MESSAGE_LEN`], and a padded
    /// members request's buffer at least its `len`).
    pub fn emit(&self, buf: &mut [u8]) -> usize {
        let len = self.buffer_len();
        let mut p = Packet::new_unchecked(&mut buf[..len]);
        p.set_header(self.kind());
        let b = p.bytes_mut();
        match *self {
            Message::Ping { tag, cookie } => write_request_header(b, tag, cookie),
            Message::Register {
                tag,
                cookie,
                flags,
                key,
                sig,
            } => {
                write_request_header(b, tag, cookie);
                b[field::REGISTER_FLAGS] = flags.0;
                b[field::REGISTER_KEY].copy_from_slice(&key.0);
                b[field::REGISTER_SIG].copy_from_slice(&sig.0);
            }
            Message::Keepalive {
                tag,
                cookie,
                address,
                ring,
            } => {
                write_request_header(b, tag, cookie);
                b[field::KEEPALIVE_ADDRESS].copy_from_slice(&address.0);
                b[field::KEEPALIVE_RING].copy_from_slice(&ring.to_be_bytes());
            }
            Message::Lookup {
                tag,
                cookie,
                target,
                caller,
                hint,
            } => {
                write_request_header(b, tag, cookie);
                b[field::LOOKUP_TARGET].copy_from_slice(&target.0);
                b[field::LOOKUP_CALLER].copy_from_slice(&caller.0);
                b[field::LOOKUP_HINT].copy_from_slice(&hint);
            }
            Message::Check { tag, cookie, flags } => {
                write_request_header(b, tag, cookie);
                b[field::CHECK_FLAGS] = flags;
                b[field::CHECK_FLAGS + 1..].fill(0);
            }
            Message::Refused { tag, reason } => {
                b[field::TAG].copy_from_slice(&tag.0);
                b[field::REFUSED_REASON] = reason;
            }
            Message::Checked {
                tag,
                check_port,
                endpoint,
            } => {
                b[field::TAG].copy_from_slice(&tag.0);
                b[field::CHECKED_PORT].copy_from_slice(&check_port.to_be_bytes());
                encode_endpoint(&endpoint, &mut b[field::CHECKED_ENDPOINT]);
            }
            Message::Unregister {
                tag,
                cookie,
                key,
                sig,
            } => {
                write_request_header(b, tag, cookie);
                b[field::UNREGISTER_KEY].copy_from_slice(&key.0);
                b[field::UNREGISTER_SIG].copy_from_slice(&sig.0);
            }
            Message::Members {
                tag, cookie, start, ..
            } => {
                write_request_header(b, tag, cookie);
                b[field::MEMBERS_START].copy_from_slice(&start.to_be_bytes());
                b[field::MEMBERS_START.end..].fill(0);
            }
            Message::MembersPage {
                tag,
                version,
                config,
                total,
                start,
            } => {
                b[field::TAG].copy_from_slice(&tag.0);
                b[field::PAGE_VERSION].copy_from_slice(&version.to_be_bytes());
                b[field::PAGE_REPLICAS] = config.replicas;
                b[field::PAGE_PREFIX_V4] = config.prefix_v4;
                b[field::PAGE_PREFIX_V6] = config.prefix_v6;
                b[field::PAGE_POSITIONS] = config.positions;
                b[field::PAGE_TOTAL].copy_from_slice(&total.to_be_bytes());
                b[field::PAGE_START].copy_from_slice(&start.to_be_bytes());
            }
            Message::NotOwner { tag, version, hint } => {
                b[field::TAG].copy_from_slice(&tag.0);
                b[field::NOT_OWNER_VERSION].copy_from_slice(&version.to_be_bytes());
                encode_endpoint(&hint, &mut b[field::NOT_OWNER_HINT]);
            }
            Message::RingChanged { tag, version } => {
                b[field::TAG].copy_from_slice(&tag.0);
                b[field::RING_VERSION].copy_from_slice(&version.to_be_bytes());
            }
            Message::Pong { tag } | Message::NotRegistered { tag } | Message::Offline { tag } => {
                b[field::TAG].copy_from_slice(&tag.0)
            }
            Message::CookieReply { tag, cookie } => {
                b[field::TAG].copy_from_slice(&tag.0);
                b[field::COOKIE_VALUE].copy_from_slice(&cookie.0);
            }
            Message::Registered {
                tag,
                keepalive_secs,
                intro_key,
                observed,
            } => {
                b[field::TAG].copy_from_slice(&tag.0);
                b[field::REGISTERED_KEEPALIVE].copy_from_slice(&keepalive_secs.to_be_bytes());
                b[field::REGISTERED_INTRO_KEY].copy_from_slice(&intro_key.0);
                encode_endpoint(&observed, &mut b[field::REGISTERED_ENDPOINT]);
            }
            Message::Online {
                tag,
                flags,
                endpoint,
            } => {
                b[field::TAG].copy_from_slice(&tag.0);
                b[field::ONLINE_FLAGS] = flags.0;
                encode_endpoint(&endpoint, &mut b[field::ONLINE_ENDPOINT]);
            }
            Message::Introduction {
                caller,
                mac,
                hint,
                endpoint,
            } => {
                b[field::INTRO_CALLER].copy_from_slice(&caller.0);
                b[field::INTRO_MAC].copy_from_slice(&mac.0);
                b[field::INTRO_HINT].copy_from_slice(&hint);
                encode_endpoint(&endpoint, &mut b[field::INTRO_ENDPOINT]);
            }
        }
        len
    }
}
fn read_hint(b: &[u8]) -> [u8; HINT_LEN] {
    let mut h = [0u8; HINT_LEN];
    h.copy_from_slice(b);
    h
}

fn read_u16(b: &[u8]) -> u16 {
    u16::from_be_bytes([b[0], b[1]])
}

fn read_u32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

fn write_request_header(b: &mut [u8], tag: Tag, cookie: Cookie) {
    b[field::TAG].copy_from_slice(&tag.0);
    b[field::COOKIE].copy_from_slice(&cookie.0);
}
