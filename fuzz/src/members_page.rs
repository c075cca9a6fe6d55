//! `members_page`: `emit_members_page` with an arbitrary header, entries,
//! limit and buffer, and the decoder on arbitrary page bodies.
//!
//! Mode 0 (first byte even): a header, a limit, a buffer length and
//! endpoints are read from the input and emitted. The page
//! - is never longer than the limit (nor the buffer, nor
//!   [`MAX_DATAGRAM_LEN`]), except that the 18-byte header is always
//!   written: a limit below it gives a bare header (a node's limit is a
//!   members request's length, never below 18);
//! - holds a prefix of the entries, as many as fit: the next one would
//!   not;
//! - decodes to the same header and the same entries (canonical).
//!
//! Mode 1 (first byte odd): the rest of the input, prefixed with `01 88`,
//! is decoded as a members page. If it decodes, its entries iterate,
//! every byte is accounted for by the header and the entries, and
//! re-emitting header and entries gives a page that decodes equal.

use std::net::SocketAddr;

use sky_proto::ring::RingConfig;
use sky_proto::wire::{
    self, Kind, MAX_DATAGRAM_LEN, Message, Packet, Tag, emit_members_page, endpoint_len,
};

use crate::{Input, endpoint};

/// Bytes of a members page header.
const HEADER_LEN: usize = 18;

pub fn run(data: &[u8]) {
    let mut input = Input::new(data);
    if input.u8() & 1 == 0 {
        emit_then_decode(&mut input);
    } else {
        decode_prefixed(input.rest());
    }
}

fn emit_then_decode(input: &mut Input<'_>) {
    let header = Message::MembersPage {
        tag: Tag(input.array()),
        version: input.u32(),
        config: RingConfig {
            replicas: input.u8(),
            prefix_v4: input.u8(),
            prefix_v6: input.u8(),
            positions: input.u8(),
        },
        total: input.u16(),
        start: input.u16(),
    };
    let limit = usize::from(input.u16());
    let buf_len = usize::from(input.u16()).clamp(HEADER_LEN, 2048);
    let mut entries: Vec<SocketAddr> = Vec::new();
    while !input.is_empty() {
        entries.push(endpoint(input));
    }

    let mut buf = vec![0u8; buf_len];
    let (n, count) = emit_members_page(&mut buf, limit, header, entries.iter().copied());
    let room = limit.min(buf_len).min(MAX_DATAGRAM_LEN);
    if room < HEADER_LEN {
        assert_eq!((n, count), (HEADER_LEN, 0), "limit {room} below a header");
    } else {
        assert!(n <= room, "page of {n} bytes over a limit of {room}");
    }
    assert!(count <= entries.len());
    if let Some(next) = entries.get(count) {
        assert!(
            n + 1 + endpoint_len(next) > room,
            "entry {count} would have fitted ({n} of {room} bytes)"
        );
    }

    let packet = Packet::new_checked(&buf[..n]).expect("an emitted page decodes");
    assert_eq!(packet.kind(), Kind::MembersPage);
    assert_eq!(Message::parse(&packet), header);
    let decoded: Vec<SocketAddr> = packet.page_entries().collect();
    let expected: Vec<SocketAddr> = entries[..count]
        .iter()
        .map(|e| wire::canonical(*e))
        .collect();
    assert_eq!(decoded, expected, "entries do not round-trip");
}

fn decode_prefixed(body: &[u8]) {
    let mut bytes = Vec::with_capacity(body.len() + 2);
    bytes.extend_from_slice(&[wire::VERSION, Kind::MembersPage as u8]);
    bytes.extend_from_slice(body);
    let Ok(packet) = Packet::new_checked(&bytes[..]) else {
        return;
    };
    let header = Message::parse(&packet);
    let entries: Vec<SocketAddr> = packet.page_entries().collect();
    let accounted: usize = HEADER_LEN
        + entries
            .iter()
            .map(|e| match e {
                SocketAddr::V4(_) => 7,
                SocketAddr::V6(_) => 19,
            })
            .sum::<usize>();
    assert_eq!(accounted, bytes.len(), "bytes not covered by entries");

    let mut buf = [0u8; MAX_DATAGRAM_LEN];
    let (n, count) = emit_members_page(&mut buf, bytes.len(), header, entries.iter().copied());
    assert_eq!(count, entries.len());
    let again = Packet::new_checked(&buf[..n]).expect("re-emitted page decodes");
    assert_eq!(Message::parse(&again), header);
    let canonical: Vec<SocketAddr> = entries.iter().map(|e| wire::canonical(*e)).collect();
    assert_eq!(again.page_entries().collect::<Vec<_>>(), canonical);
}
