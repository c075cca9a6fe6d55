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
use super::peers::PeerKey;
use super::timers::Timer;
use crate::invite::Invite;
use crate::state::{State, parse_pending_entry, pending_entry};

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

    /// [`Timer::Reset`] is due: the notices to send, as (the friend's
    /// device, payload); `in_flight` says whether a notice already waits
    /// for that device. Entries of friends (or devices) gone since are no
    /// longer pending.
    pub(crate) fn on_timer(
        &self,
        now: UnixTime,
        io: &mut Io,
        state: &mut State,
        online: bool,
        in_flight: impl Fn(&PeerKey) -> bool,
    ) -> Vec<(PeerKey, Vec<u8>)> {
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
            keys: state.identity.devices().to_vec(),
        };
        let mut bytes = vec![Payload::Reset as u8];
        bytes.extend_from_slice(&notice.to_bytes());
        let friends = &state.friends.0;
        state.pending_resets.retain(|entry| {
            let (name, device) = parse_pending_entry(entry);
            friends
                .get(name)
                .is_some_and(|f| usize::from(device) < f.keys.len())
        });
        state
            .pending_resets
            .iter()
            .map(|entry| {
                let (name, device) = parse_pending_entry(entry);
                PeerKey::new(name, Some(device))
            })
            .filter(|key| !in_flight(key))
            .map(|key| (key, bytes.clone()))
            .collect()
    }

    /// A notice from the friend's device `key`, whose key the session
    /// proved: adopted (into `state`) only if that key is one the friend
    /// had and one the notice carries — so a friend can add a device, but
    /// nobody can take a friend's place. The caller saves the state before
    /// it acknowledges.
    pub(crate) fn adopt(
        &self,
        io: &mut Io,
        state: &mut State,
        key: &PeerKey,
        notice: &[u8],
    ) -> bool {
        let proven = key.device.and_then(|d| {
            state
                .friends
                .0
                .get(&key.friend)?
                .keys
                .get(usize::from(d))
                .copied()
        });
        match (Invite::from_bytes(notice), proven) {
            (Ok(invite), Some(proven)) if invite.keys.contains(&proven) => {
                state.friends.0.insert(key.friend.clone(), invite.into());
                io.event(Event::ResetAdopted {
                    friend: key.friend.clone(),
                });
                io.event(Event::SaveState);
                true
            }
            _ => false,
        }
    }

    /// The friend's device `key` acknowledged our notice: no longer
    /// pending.
    pub(crate) fn acknowledged(&self, io: &mut Io, state: &mut State, key: &PeerKey) {
        let entry = pending_entry(&key.friend, key.device.unwrap_or(0));
        if state.pending_resets.remove(&entry) {
            io.event(Event::ResetAcknowledged { friend: entry });
            io.event(Event::SaveState);
        }
    }
}
