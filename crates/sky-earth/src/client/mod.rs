//! The earth client's sans-IO core, [`Earth`]: the sky's members,
//! registration with every owner, keepalives, lookups, introductions, hole
//! punching, the friends' handshake, delivery and the address reset —
//! every protocol decision, and no socket, clock or randomness.
//!
//! It has the shape of the sky's shard (and of quinn-proto's `Endpoint`):
//! the driver feeds it what happened and asks it what to do.
//!
//! - [`Earth::handle_datagram`] for every datagram the socket received;
//! - [`Earth::handle_timeout`] once [`Earth::poll_timeout`] has passed;
//! - [`Earth::poll_transmit`] until `None`: datagrams to send, each with
//!   its destination;
//! - [`Earth::poll_event`] until `None`: what the application should know.
//!
//! Time is a [`UnixTime`](sky_proto::time::UnixTime) (the ratchet's epochs
//! are calendar time), passed into every call. Randomness (handshake
//! ephemerals, request tags, cover traffic) comes from a BLAKE3 key stream
//! seeded once by the driver.
//!
//! **Inside: cooperating state machines.** Each owns its state, takes
//! `now`, and keeps its deadlines in the one typed timer table
//! (`timers::Timer`); `Earth` wires their outputs together:
//!
//! | machine | owns | tells |
//! | --- | --- | --- |
//! | `members` | the view (ring, version), the fetch in flight | a new view → registrations and lookups reconcile |
//! | `registrations` | own and cover addresses, per owner pending / registered | `not owner` → members fetch again |
//! | `lookups` | lookups in flight, owner after owner | a finished lookup → the app, or the connection that asked |
//! | `peers` | connections: punches, handshakes, outboxes | needs a lookup; an acknowledged reset → reset; a reset notice → reset |
//! | `reset` | notices to friends until acknowledged (pending set in the state) | notices → peers' outboxes |
//!
//! **The sky** (SPEC §4, "one hop"). The client knows a few sky nodes
//! ([`Config::sky`], the bootstrap list), fetches the member list from the
//! first that answers, builds the same ring the nodes use and computes
//! each address's owners itself. It registers every address it keeps with
//! all `k` owners (one registration, cookie and introduction key per node),
//! asks one owner at a time when it looks a friend up, and fetches the
//! members again when a node says the ring changed (`ring changed` to a
//! keepalive, `not owner` to a request). A standalone node (a members page
//! of version 0 and no members) is a ring of one.
//!
//! Persistence stays with the driver: when the core changes what must
//! survive a restart (a friend's reset adopted, a pending reset
//! acknowledged) it emits [`Event::SaveState`]; an acknowledgement that
//! depends on the save is held until the driver calls [`Earth::saved`].

mod config;
mod earth;
mod event;
mod idle;
mod io;
mod lookups;
mod members;
mod nat;
mod peers;
mod punch;
mod registrations;
mod reset;
mod timers;

pub use config::{Config, Overlap};
pub use earth::{Earth, ROTATION_DELAY};
pub use event::{Event, Failure, RegistrationInfo, SocketId, Transmit};
pub use members::MEMBERS_REQUEST_LEN;
pub use nat::{Filtering, Mapping, NatReport};
pub use punch::{SCAN_BATCH, SCAN_MAX, SCAN_TICK, SPRAY_SOCKETS};

/// The largest application payload [`Earth::send`] and
/// [`Earth::send_datagram`] take: a sealed datagram stays within
/// [`sky_proto::wire::MAX_DATAGRAM_LEN`].
pub const MAX_PAYLOAD: usize =
    sky_proto::wire::MAX_DATAGRAM_LEN - sky_proto::frame::DATA_OVERHEAD - 1;
