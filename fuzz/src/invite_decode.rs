//! `invite_decode`: `Invite::decode` on arbitrary text and
//! `Invite::from_bytes` on arbitrary bytes.
//!
//! Mode 0 (first byte even): the rest, as UTF-8 (lossily, when it is not),
//! through `Invite::decode`. A decoded invite re-encodes to a string that
//! decodes equal, is a fixed point of encode ∘ decode, and its bytes read
//! back equal.
//!
//! Mode 1 (first byte odd): the rest through `Invite::from_bytes`. A
//! decoded invite's `to_bytes` gives back exactly the input (the byte form
//! has one encoding), and its string decodes equal.

use sky_earth::invite::Invite;

use crate::Input;

pub fn run(data: &[u8]) {
    let mut input = Input::new(data);
    let text_mode = input.u8() & 1 == 0;
    let rest = input.rest();
    if text_mode {
        let text = String::from_utf8_lossy(rest);
        if let Ok(invite) = Invite::decode(&text) {
            round_trips(&invite);
        }
    } else if let Ok(invite) = Invite::from_bytes(rest) {
        assert_eq!(invite.to_bytes(), rest, "bytes do not round-trip");
        round_trips(&invite);
    }
}

fn round_trips(invite: &Invite) {
    let text = invite.encode();
    let again = Invite::decode(&text).expect("an encoded invite decodes");
    assert_eq!(&again, invite, "decode(encode(i)) != i");
    assert_eq!(again.encode(), text, "encode is not stable");
    let bytes = invite.to_bytes();
    assert_eq!(
        Invite::from_bytes(&bytes).as_ref(),
        Ok(invite),
        "from_bytes(to_bytes(i)) != i"
    );
}
