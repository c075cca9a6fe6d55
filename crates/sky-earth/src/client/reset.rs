//! The address reset (SPEC §2, the seed's "Address Reset Handling"): after
//! removing a friend the user moves to a fresh chain, and the new chain
//! goes to every remaining friend — sent again every `reset_retry` to each
//! friend who has not acknowledged it, across restarts (the pending set is
//! in the state). The other direction too: a friend's notice is adopted
//! only if it carries the key the handshake proved, and acknowledged only
//! once the state holding it is saved.
//!
//! Owns: the retry interval; the pending set lives in the [`State`] (it
//! must survive a restart). Timer: [`Timer::Reset`]. Sends through the
//! caller's delivery (the [`super::peers::Peers`] outbox).

use std::time::Duration;

use sky_proto::frame::Payload;
use sky_proto::time::UnixTime;

use super::event::Event;
use super::io::Io;
use super::timers::Timer;
use crate::invite::Invite;
use crate::state::State;

/// The reset machine (see the module documentation).
pub(crate) struct Reset {
    retry: Duration,
}

impl Reset {
    pub(crate) fn new(retry: Duration) -> Reset {
        Reset { retry }
    }

    /// Sends the pending notices now (and then every `retry`).
    pub(crate) fn arm(&self, now: UnixTime, io: &mut Io) {
        io.timers.set(Timer::Reset, now);
    }

    /// [`Timer::Reset`] is due: the notices to send, as (friend, payload);
    /// `in_flight` says whether a notice already waits for that friend.
    /// Friends removed since are no longer pending.
    pub(crate) fn on_timer(
        &self,
        now: UnixTime,
        io: &mut Io,
        state: &mut State,
        online: bool,
        in_flight: impl Fn(&str) -> bool,
    ) -> Vec<(String, Vec<u8>)> {
        if !online || state.pending_resets.is_empty() {
            return Vec::new();
        }
        io.timers.set(Timer::Reset, now + self.retry);
        let epoch = state.identity.schedule.epoch_at(now);
        let Some(chain_key) = state.identity.chain.key_at(epoch) else {
            return Vec::new();
        };
        let notice = Invite {
            epoch,
            chain_key,
            schedule: state.identity.schedule,
            public_key: state.identity.public_key(),
        };
        let mut bytes = vec![Payload::Reset as u8];
        bytes.extend_from_slice(&notice.to_bytes());
        let friends = &state.friends.0;
        state
            .pending_resets
            .retain(|name| friends.contains_key(name));
        state
            .pending_resets
            .iter()
            .filter(|name| !in_flight(name))
            .map(|name| (name.clone(), bytes.clone()))
            .collect()
    }

    /// A reset notice from `friend`, whose static key the session proved:
    /// adopted (into `state`) only if it carries that same key. The caller
    /// saves the state before it acknowledges.
    pub(crate) fn adopt(
        &self,
        io: &mut Io,
        state: &mut State,
        friend: &str,
        notice: &[u8],
    ) -> bool {
        let public = state.friends.0.get(friend).map(|f| f.public_key);
        match Invite::from_bytes(notice) {
            Ok(invite) if Some(invite.public_key) == public => {
                state.friends.0.insert(friend.to_string(), invite.into());
                io.event(Event::ResetAdopted {
                    friend: friend.to_string(),
                });
                io.event(Event::SaveState);
                true
            }
            _ => false,
        }
    }

    /// `friend` acknowledged our notice: no longer pending.
    pub(crate) fn acknowledged(&self, io: &mut Io, state: &mut State, friend: &str) {
        if state.pending_resets.remove(friend) {
            io.event(Event::ResetAcknowledged {
                friend: friend.to_string(),
            });
            io.event(Event::SaveState);
        }
    }
}
