//! RFC 8489 Binding requests and responses, for `--mode stun` against a
//! STUN server (coturn, in `benches/peer-coturn.sh`).

const STUN_MAGIC: [u8; 4] = [0x21, 0x12, 0xA4, 0x42];

/// An RFC 8489 Binding request (20 bytes) whose transaction id carries `seq`.
pub(super) fn stun_request(seq: u32, out: &mut [u8]) -> usize {
    out[0..2].copy_from_slice(&0x0001u16.to_be_bytes());
    out[2..4].copy_from_slice(&0u16.to_be_bytes());
    out[4..8].copy_from_slice(&STUN_MAGIC);
    out[8..12].copy_from_slice(&seq.to_be_bytes());
    out[12..20].copy_from_slice(b"sky-bnch");
    20
}

/// The `seq` of a Binding success response to one of our requests.
pub(super) fn stun_response(b: &[u8]) -> Option<u32> {
    if b.len() < 20 || b[0..2] != [0x01, 0x01] || b[4..8] != STUN_MAGIC || &b[12..20] != b"sky-bnch"
    {
        return None;
    }
    let len = u16::from_be_bytes([b[2], b[3]]) as usize;
    if 20 + len != b.len() {
        return None;
    }
    Some(u32::from_be_bytes([b[8], b[9], b[10], b[11]]))
}
