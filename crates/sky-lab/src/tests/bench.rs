//! Tests of `bench`.

use super::stun::{stun_request, stun_response};

#[test]
fn stun_request_is_a_binding_request() {
    let mut b = [0u8; 64];
    let n = stun_request(7, &mut b);
    assert_eq!(n, 20);
    assert_eq!(&b[..8], &[0, 1, 0, 0, 0x21, 0x12, 0xa4, 0x42]);
    let mut resp = b;
    resp[0..2].copy_from_slice(&[1, 1]);
    assert_eq!(stun_response(&resp[..20]), Some(7));
    assert_eq!(stun_response(&b[..20]), None);
}
