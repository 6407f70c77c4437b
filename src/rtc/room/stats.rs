//! The room's counters, for /metrics.

use std::sync::atomic::{AtomicU64, Ordering};

/// Counters for /metrics.
#[derive(Debug, Default)]
pub struct RoomStats {
    pub signals_in: AtomicU64,
    pub signals_out: AtomicU64,
    pub frames_in: AtomicU64,
    pub frames_out: AtomicU64,
    pub bytes_in: AtomicU64,
    pub bytes_out: AtomicU64,
    pub dropped_slow: AtomicU64,
    pub bad_frames: AtomicU64,
    /// Incomplete messages held in the links' reassembly buffers right now (a gauge).
    pub partial_messages: AtomicU64,
    pub seal_failures: AtomicU64,
    /// Cell envelopes received while cells mode is off (CELLS mismatch).
    pub cell_frames_unexpected: AtomicU64,
    pub cell_envelopes_in: AtomicU64,
    pub cell_envelopes_out: AtomicU64,
    pub cell_deliveries: AtomicU64,
    pub cell_seals: AtomicU64,
    pub cell_pruned: AtomicU64,
    /// Peers not answered or dialled because MAX_PEERS were linked or being linked.
    pub refused_max_peers: AtomicU64,
    /// Peers dropped for sending more than PEER_MSG_RATE or PEER_BYTES_RATE.
    pub dropped_msg_rate: AtomicU64,
    pub dropped_bytes_rate: AtomicU64,
    /// Messages dropped for passing MAX_MESSAGE_BYTES.
    pub dropped_message_bytes: AtomicU64,
    /// Offers and announces not acted on: their key or relay connection already had
    /// PENDING_PER_KEY or PENDING_PER_CONNECTION links being built.
    pub refused_pending_source: AtomicU64,
    /// Links being built that were closed to make room for a newcomer: unopened links
    /// may hold at most half of MAX_PEERS, and never a slot a link that opens needs.
    pub evicted_pending: AtomicU64,
    /// Signals naming a peer whose link another Nostr key made (replays), ignored.
    pub impostor_signals: AtomicU64,
    /// Links being built right now (a gauge).
    pub pending_links: AtomicU64,
}

impl RoomStats {
    /// `(limit, times exceeded)` for `genosdb_limit_exceeded_total{limit}`.
    pub fn limits_exceeded(&self) -> [(&'static str, u64); 6] {
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        [
            ("max_peers", load(&self.refused_max_peers)),
            ("pending_per_source", load(&self.refused_pending_source)),
            ("pending_links", load(&self.evicted_pending)),
            ("peer_msg_rate", load(&self.dropped_msg_rate)),
            ("peer_bytes_rate", load(&self.dropped_bytes_rate)),
            ("max_message_bytes", load(&self.dropped_message_bytes)),
        ]
    }
}
