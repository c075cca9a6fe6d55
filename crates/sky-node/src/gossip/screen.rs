//! What a member may tell us about others. SWIM spreads every update by
//! piggybacking: any member relays what it heard about any other. An
//! honest relay is what makes failures known within seconds; a lying one
//! could add members that do not exist or keep a live node out of every
//! ring. So each update about a *third* node is screened before foca sees
//! it:
//!
//! | update about      | alive                          | suspect                 | down                     |
//! |-------------------|--------------------------------|-------------------------|--------------------------|
//! | the sender        | as is (it signed it)           | as is                   | as is (a signed leave)   |
//! | this node         | as is                          | at our incarnation      | suspect, at our incarnation |
//! | a member          | incarnation ≤ known + 1        | incarnation ≤ known     | suspect, incarnation ≤ known |
//! | a departed member | as is                          | as is                   | as is (its signed departure says so) |
//! | a stranger        | dropped; we prove it ourselves | dropped                 | dropped                  |
//!
//! "Down" about another node is thus only ever concluded by this node's
//! own suspicion timer: SWIM's suspicion, which the suspect refutes if it
//! lives, validates every report. A suspicion still spreads as before (it
//! must reach the suspect for it to refute), a member stays in the ring
//! while suspect, and a live node refutes within a round trip or two: a
//! false report leaves every ring as it was. Capping incarnations keeps a
//! refutation possible (a suspicion at the largest incarnation could never
//! be refuted, only escaped by a new identity). A stranger enters our view
//! only after it proved its endpoints to us (`auth.rs`).

use foca::{Header, Incarnation, Member, State};

use super::NodeId;

/// Updates read from one datagram, at most (foca's own limit is what fits
/// in a packet; this bounds the work a datagram can cause).
const MAX_UPDATES: usize = 256;

/// What this node knows about an identity.
pub(super) enum Known {
    /// Not a member.
    Stranger,
    /// A member, at this incarnation; `left` if its signed departure was
    /// heard.
    Member {
        incarnation: Incarnation,
        left: bool,
    },
}

/// A datagram's foca message, screened.
pub(super) struct Screened {
    /// The message to give foca: the header, the updates that passed (some
    /// rewritten), and the custom broadcasts as they came.
    pub body: Vec<u8>,
    /// Strangers reported alive: identities to prove ourselves.
    pub strangers: Vec<NodeId>,
}

/// Screens `body` (a foca message in the postcard codec; see the module
/// documentation). `me` is this node at `my_incarnation`; `known` says
/// what we know of any other identity, `departing` which identities the
/// datagram itself carries a signed departure of. `Err` if the message
/// does not decode.
pub(super) fn screen(
    body: &[u8],
    me: &NodeId,
    my_incarnation: Incarnation,
    known: impl Fn(&NodeId) -> Known,
    departing: impl Fn(&[u8]) -> Vec<NodeId>,
) -> Result<Screened, ()> {
    let (header, rest): (Header<NodeId>, &[u8]) =
        postcard::take_from_bytes(body).map_err(|_| ())?;
    let sender = header.src;
    let header_len = body.len() - rest.len();
    let mut out = Screened {
        body: Vec::with_capacity(body.len()),
        strangers: Vec::new(),
    };
    out.body.extend_from_slice(&body[..header_len]);
    // foca reads updates only when at least two bytes follow the header
    // and the message is not a broadcast; anything else is passed as is.
    if rest.len() < 2 || header.message == foca::Message::Broadcast {
        out.body.extend_from_slice(rest);
        return Ok(out);
    }
    let count = usize::from(u16::from_be_bytes([rest[0], rest[1]]));
    if count > MAX_UPDATES {
        return Err(());
    }
    let mut rest = &rest[2..];
    let mut updates = Vec::with_capacity(count);
    for _ in 0..count {
        let (m, after): (Member<NodeId>, &[u8]) =
            postcard::take_from_bytes(rest).map_err(|_| ())?;
        rest = after;
        updates.push(m);
    }
    // The custom broadcasts follow; a signed departure among them counts
    // for the updates before it.
    let departing = if updates.iter().any(|m| m.state() == State::Down) {
        departing(rest)
    } else {
        Vec::new()
    };
    let mut kept = Vec::with_capacity(count);
    for m in updates {
        if let Some(m) = judge(m, &sender, me, my_incarnation, &known, &departing, &mut out) {
            kept.push(m);
        }
    }
    let kept_len = u16::try_from(kept.len()).map_err(|_| ())?;
    out.body.extend_from_slice(&kept_len.to_be_bytes());
    for m in &kept {
        out.body
            .extend_from_slice(&postcard::to_allocvec(m).map_err(|_| ())?);
    }
    out.body.extend_from_slice(rest);
    Ok(out)
}

/// One update: kept (perhaps rewritten), or dropped (perhaps noting a
/// stranger to prove in `out`).
fn judge(
    m: Member<NodeId>,
    sender: &NodeId,
    me: &NodeId,
    my_incarnation: Incarnation,
    known: &impl Fn(&NodeId) -> Known,
    departing: &[NodeId],
    out: &mut Screened,
) -> Option<Member<NodeId>> {
    let (id, inc, state) = (*m.id(), m.incarnation(), m.state());
    if id == *sender {
        return Some(m);
    }
    if id == *me {
        return Some(match state {
            State::Alive => m,
            State::Suspect | State::Down => {
                Member::new(id, inc.min(my_incarnation), State::Suspect)
            }
        });
    }
    match known(&id) {
        Known::Stranger => {
            if state == State::Alive {
                out.strangers.push(id);
            }
            None
        }
        Known::Member { incarnation, left } => match state {
            State::Alive => Some(Member::new(
                id,
                inc.min(incarnation.saturating_add(1)),
                State::Alive,
            )),
            State::Down if left || departing.contains(&id) => Some(m),
            State::Suspect | State::Down => {
                Some(Member::new(id, inc.min(incarnation), State::Suspect))
            }
        },
    }
}
