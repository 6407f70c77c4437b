//! The sync layer's figures for `/metrics`, read from [`SyncStats`].

use super::SyncStats;
use crate::figures::{Figure, Figures};
use std::sync::atomic::Ordering;

impl Figures for SyncStats {
    fn figures(&self, out: &mut Vec<Figure>) {
        out.extend([
            Figure::count(
                "sync_messages_in",
                "syncGraph messages received",
                &self.messages_in,
            ),
            Figure::count(
                "sync_undecodable",
                "syncGraph messages that were not JSON or MessagePack arrays",
                &self.undecodable,
            ),
            Figure::count(
                "sync_rejected",
                "Malformed elements refused inside syncGraph messages",
                &self.rejected,
            ),
            Figure::count(
                "sync_unknown",
                "syncGraph elements of an unknown type (ignored)",
                &self.unknown,
            ),
            Figure::count(
                "sync_merged",
                "Ops and nodes from peers that changed the graph",
                &self.merged,
            ),
            Figure::count(
                "sync_requests_sent",
                "sync requests sent to peers",
                &self.syncs_sent,
            ),
            Figure::count("sync_full_replies", "Full states served", &self.full_replies),
            Figure::count(
                "sync_full_parts",
                "Messages the full states served were split into",
                &self.full_parts,
            ),
            Figure::count(
                "sync_full_prebuilt",
                "Full states written ahead of a catch-up once the graph stood still",
                &self.full_prebuilt,
            ),
            Figure::count(
                "sync_full_delivered",
                "Full states the peer acknowledged to the last byte",
                &self.full_delivered,
            ),
            Figure::count(
                "sync_full_stalled",
                "Full states whose delivery stalled: the link was dropped and the full state owed to the next one",
                &self.full_stalled,
            ),
            Figure::count(
                "sync_full_for_delta",
                "Full states sent where a delta would not have carried every node to a peer not known to hold them",
                &self.full_for_delta,
            ),
            Figure::count("sync_delta_replies", "Deltas served", &self.delta_replies),
            Figure::histogram(
                "sync_catchup_duration_seconds",
                "Catch-ups served, from the peer's sync to its full state acknowledged to the last byte or its delta handed to the link",
                &self.catchups.seconds,
            ),
            Figure::count(
                "sync_counter_replies",
                "Full states sent because a peer's full state lacked our nodes",
                &self.counter_replies,
            ),
            Figure::count(
                "sync_messages_out",
                "syncGraph messages sent",
                &self.messages_out,
            ),
            Figure::count(
                "sync_slow_peers",
                "Peers dropped because their sync queue was full",
                &self.slow_peers,
            ),
            Figure::count(
                "sync_forwarded_ops",
                "Live ops from peers forwarded to the other peers (FORWARD_OPS)",
                &self.forwarded_ops,
            ),
            Figure::count(
                "sync_forwarded_messages",
                "Messages the forwarded ops were gathered into, each sent to every other peer",
                &self.forwarded_messages,
            ),
        ]);
    }
}

impl SyncStats {
    /// `(limit, times exceeded)` for `genosdb_limit_exceeded_total{limit}`.
    pub fn limits_exceeded(&self) -> [(&'static str, u64); 1] {
        [(
            "max_value_bytes",
            self.oversized_values.load(Ordering::Relaxed),
        )]
    }
}
