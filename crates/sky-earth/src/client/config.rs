//! What the application configures: the bootstrap list and the core's
//! intervals ([`Config::new`] has the defaults), and how the user stays
//! findable across an epoch boundary ([`Overlap`]).

use std::net::SocketAddr;
use std::time::Duration;

use crate::ratchet::DEFAULT_OVERLAP;

/// How the user stays findable across an epoch boundary (SPEC §2).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Overlap {
    /// Register only the current address; friends near the boundary also
    /// look up the neighbouring epoch's address.
    #[default]
    LookupSide,
    /// Also keep the previous epoch's address registered during the first
    /// `overlap` of an epoch. A sky operator holding both addresses can link
    /// them (`sky sim privacy` measures how much).
    Dual,
}

/// What the driver configures; [`Config::new`] has the defaults.
#[derive(Clone, Debug)]
pub struct Config {
    /// The bootstrap list: sky nodes to fetch the member list from, tried
    /// in this order until one answers. At least one; any node of the sky
    /// will do, and a standalone node is a sky of one.
    pub sky: Vec<SocketAddr>,
    /// Flag the registration as metered (friends go easy on this peer).
    pub metered: bool,
    /// The longest keepalive interval; the node's `registered` reply may
    /// ask for a shorter one. Default 25 s.
    pub keepalive: Duration,
    /// How the user stays findable across an epoch boundary. Default:
    /// [`Overlap::LookupSide`].
    pub overlap: Overlap,
    /// `H`: how close to a boundary both epochs count. Default 1 h.
    pub overlap_window: Duration,
    /// How often a pending address reset is sent again. Default 60 s.
    pub reset_retry: Duration,
    /// Cover traffic: the mean time between random registrations while
    /// online. Default off.
    pub cover: Option<Duration>,
    /// How often a registration, a punch or a handshake message is sent
    /// again while unanswered; a lookup or members request waits three
    /// times this before it asks again (the next owner, for a lookup).
    /// Default 100 ms.
    pub retry: Duration,
    /// When a lookup, connection or delivery gives up. Default 5 s.
    pub give_up: Duration,
    /// Cover registrations each go out of a socket of their own, and at an
    /// epoch boundary the client moves to a new socket (lookup-side only),
    /// so that nothing on the wire ties addresses together
    /// (`docs/PRIVACY.md`). The driver must then send from the socket each
    /// [`super::Transmit`] names. Default on; off, everything uses
    /// [`super::SocketId::MAIN`].
    pub fresh_sockets: bool,
    /// Test, while online, whether the NAT keeps an idle mapping for the
    /// keepalive interval, and shorten the interval when it does not
    /// (`client/idle.rs`). Default on.
    pub idle_test: bool,
}

impl Config {
    /// Defaults, with `sky` as the bootstrap list.
    pub fn new(sky: Vec<SocketAddr>) -> Config {
        Config {
            sky,
            metered: false,
            keepalive: Duration::from_secs(25),
            overlap: Overlap::LookupSide,
            overlap_window: DEFAULT_OVERLAP,
            reset_retry: Duration::from_secs(60),
            cover: None,
            retry: Duration::from_millis(100),
            give_up: Duration::from_secs(5),
            fresh_sockets: true,
            idle_test: true,
        }
    }
}
