//! The ring snapshot a node's shards read and its gossip thread replaces.
//!
//! `ArcSwap::load` is lock-free and wait-free for readers; shards keep an
//! `arc_swap::Cache`, which costs one atomic load per datagram while the
//! ring is unchanged.

use std::sync::Arc;

use sky_proto::ring::Ring;

/// The ring every shard of a node reads; gossip stores each new one.
pub type SharedRing = Arc<arc_swap::ArcSwap<Ring>>;

/// A shared ring holding `ring`.
pub fn shared(ring: Ring) -> SharedRing {
    Arc::new(arc_swap::ArcSwap::from_pointee(ring))
}
