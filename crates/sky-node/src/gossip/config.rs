//! The gossip settings: foca's SWIM parameters and how they were chosen.

use std::num::{NonZeroU8, NonZeroUsize};
use std::time::Duration;

use super::{PREFIX_LEN, SIG_LEN};

/// The SWIM settings, and how often seeds are re-announced to.
///
/// The defaults are tuned for the SPEC §6 target — a killed node declared
/// down by every other node within 5 s — while a loss of 20% of all
/// datagrams for a minute makes no live node down. The unit tests check
/// both on a simulated network of 5 nodes in virtual time; the ignored
/// test `many_seeds` repeats them over 2000 seeds (numbers below).
///
/// **Detection of a killed node** takes: the time until some survivor
/// probes it; one probe period until that probe counts as failed (the
/// member becomes *suspect*); `suspect_to_down_after`; and the spread of
/// the *down* update. Each node probes its members round-robin in shuffled
/// order, one every `probe_period` (400 ms): with 4 survivors each probing
/// one of 4 members per period, some survivor probes the dead node within
/// 0.2 s on average and within about one round (1.6 s) in bad cases. Then
/// 0.4 s to fail, 1.5 s of suspicion, and periodic gossip (every 200 ms
/// to 3 members) plus piggybacking spread the verdict in a few hundred ms:
/// ≈ 2.5 s typically, under 4 s at worst. Measured: mean 2.4 s, worst
/// 3.5 s.
///
/// **No false downs under 20% loss.** A probe of a live member fails only
/// if the direct round trip fails (1 − 0.8² = 0.36) *and* every indirect
/// probe fails: an indirect probe is 4 datagrams (ping-req, ping, ack,
/// forwarded ack), failing with 1 − 0.8⁴ ≈ 0.59, and all 3 fail with
/// 0.59³ ≈ 0.21. So ≈ 7.4% of probes raise a false suspicion: ≈ 55 a
/// minute among 5 nodes probing 2.5 times a second. A suspicion is
/// harmless unless the one node whose timer runs hears no refutation for
/// 1.5 s. Every node that learns the suspicion sends it in
/// `max_transmissions` (12) datagrams (all lost: 0.2¹² ≈ 4·10⁻⁹), gossip
/// every 200 ms to 3 of the 4 others brings it to the suspect within a few
/// hundred ms, and the suspect's raised incarnation then travels back in
/// every datagram it sends and every datagram of every node that relays
/// it: some 7 gossip rounds fit in 1.5 s. Measured: one false down in
/// 2000 one-minute runs, i.e. about one in 10⁵ suspicions. Raising
/// `suspect_to_down_after` would buy little more (the measured rate hardly
/// moved between 1.25 s and 2 s) and cost detection time; fewer
/// `max_transmissions` (8) made it five times worse.
///
/// **Partitions heal** three ways: foca announces every 5 s to 2 members
/// it holds down (`periodic_announce_to_down_members`) and tells a member
/// it holds down that it is (`notify_down_members`), which makes that
/// member renew its identity and rejoin; and [`super::Gossip`] announces every
/// `seed_announce_every` (1 s) to each seed that is not an active member,
/// which also retries a join whose first announce was lost. Down members
/// are remembered for `remove_down_after` (1 h), much longer than the
/// partitions this must heal. Measured: a 2 + 3 split of 30 s is one view
/// again within 4.1 s.
///
/// **Round trips.** A direct ack is awaited `probe_rtt` (150 ms); the
/// indirect probes (two round trips) must fit in the rest of the period
/// (250 ms): fine on loopback and within a continent (RTT ≲ 120 ms). A
/// sky spread around the globe needs longer periods, and gives up the 5 s
/// detection target for them.
#[derive(Clone, Debug)]
pub struct GossipConfig {
    /// foca's SWIM parameters.
    pub swim: foca::Config,
    /// How often seeds that are not active members are announced to again.
    pub seed_announce_every: Duration,
    /// A closed sky: only nodes with these public identity keys may join
    /// (`None`: any node that proves its endpoints).
    pub closed_sky: Option<std::collections::HashSet<[u8; 32]>>,
}

impl Default for GossipConfig {
    fn default() -> Self {
        let nz = |n: usize| NonZeroUsize::new(n).expect("non-zero");
        GossipConfig {
            swim: foca::Config {
                probe_period: Duration::from_millis(400),
                probe_rtt: Duration::from_millis(150),
                num_indirect_probes: nz(3),
                max_transmissions: NonZeroU8::new(12).expect("non-zero"),
                suspect_to_down_after: Duration::from_millis(1500),
                remove_down_after: Some(Duration::from_secs(3600)),
                // With our 13-byte prefix and 64-byte signature, below the
                // IPv6 minimum MTU (1280) less headers: never fragmented.
                max_packet_size: nz(1200 - PREFIX_LEN - SIG_LEN),
                notify_down_members: true,
                periodic_announce: Some(foca::PeriodicParams {
                    frequency: Duration::from_secs(10),
                    num_members: nz(1),
                }),
                periodic_announce_to_down_members: Some(foca::PeriodicParams {
                    frequency: Duration::from_secs(5),
                    num_members: nz(2),
                }),
                periodic_gossip: Some(foca::PeriodicParams {
                    frequency: Duration::from_millis(200),
                    num_members: nz(3),
                }),
            },
            seed_announce_every: Duration::from_secs(1),
            closed_sky: None,
        }
    }
}
