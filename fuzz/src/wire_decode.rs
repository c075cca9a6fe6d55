//! `wire_decode`: arbitrary bytes through `Packet::new_checked` and
//! `Message::decode`.
//!
//! - the checked view and the decoder agree (same error, same kind);
//! - a decoded message emits into exactly `buffer_len` bytes, and those
//!   bytes decode to the same message (endpoints canonical) and emit again
//!   to the same bytes: decode ∘ emit is the identity on what decode gives;
//! - the emitted datagram is as long as the input, or 12 bytes shorter
//!   when an IPv4-mapped IPv6 endpoint became IPv4; a members request keeps
//!   its length;
//! - `page_entries()` iterates without panicking, only for a members page,
//!   and a page re-emitted from its entries decodes to the same entries.

use sky_proto::wire::{
    self, ENDPOINT_V4_LEN, ENDPOINT_V6_LEN, Kind, MAX_DATAGRAM_LEN, Message, Packet,
    emit_members_page,
};

use crate::canonical_message;

pub fn run(data: &[u8]) {
    let checked = Packet::new_checked(data);
    let decoded = Message::decode(data);
    let (packet, msg) = match (checked, decoded) {
        (Ok(p), Ok(m)) => (p, m),
        (Err(a), Err(b)) => {
            assert_eq!(a, b, "view and decoder disagree on the error");
            return;
        }
        (p, m) => panic!("view {p:?} but decoder {:?}", m.map(|m| m.kind())),
    };
    assert_eq!(packet.version(), wire::VERSION);
    assert_eq!(packet.kind(), msg.kind());
    assert_eq!(msg.kind().is_request(), data[1] & 0x80 == 0);
    assert!(data.len() >= msg.kind().min_len());

    let entries: Vec<_> = packet.page_entries().collect();
    if msg.kind() != Kind::MembersPage {
        assert!(entries.is_empty(), "entries outside a members page");
    }

    let mut buf = [0u8; MAX_DATAGRAM_LEN];
    let n = if msg.kind() == Kind::MembersPage {
        let (n, count) = emit_members_page(&mut buf, data.len(), msg, entries.iter().copied());
        assert_eq!(count, entries.len(), "a page re-emitted loses entries");
        n
    } else {
        let n = msg.emit(&mut buf);
        assert_eq!(n, msg.buffer_len());
        n
    };
    let shrunk = data.len() - n;
    assert!(
        shrunk.is_multiple_of(ENDPOINT_V6_LEN - ENDPOINT_V4_LEN),
        "{:?}: {} bytes became {n}",
        msg.kind(),
        data.len()
    );
    if msg.kind() == Kind::Members {
        assert_eq!(n, data.len(), "a members request keeps its length");
    }

    let again = Packet::new_checked(&buf[..n]).expect("own emit decodes");
    let msg2 = Message::parse(&again);
    assert_eq!(msg2, canonical_message(msg), "decode(emit(m)) != m");
    let entries2: Vec<_> = again.page_entries().collect();
    let canonical: Vec<_> = entries.iter().map(|e| wire::canonical(*e)).collect();
    assert_eq!(entries2, canonical, "page entries do not round-trip");

    // Canonical input is a fixed point: emitting again gives the same bytes.
    let mut buf2 = [0u8; MAX_DATAGRAM_LEN];
    let n2 = if msg2.kind() == Kind::MembersPage {
        emit_members_page(&mut buf2, n, msg2, entries2).0
    } else {
        msg2.emit(&mut buf2)
    };
    assert_eq!(buf[..n], buf2[..n2], "emit is not stable");
}
