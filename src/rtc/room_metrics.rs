//! The sync room's figures for `/metrics`, read from [`RoomStats`].

use super::room::RoomStats;
use crate::figures::{Figure, Figures};
use std::sync::atomic::Ordering;

impl Figures for RoomStats {
    fn figures(&self, out: &mut Vec<Figure>) {
        let level = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed) as i64;
        out.extend([
            Figure::count(
                "signals_in",
                "Signalling events received from relays",
                &self.signals_in,
            ),
            Figure::count(
                "signals_out",
                "Signalling events published",
                &self.signals_out,
            ),
            Figure::count("frames_in", "Data-channel frames received", &self.frames_in),
            Figure::count("frames_out", "Data-channel frames sent", &self.frames_out),
            Figure::count("bytes_in", "Data-channel bytes received", &self.bytes_in),
            Figure::count("bytes_out", "Data-channel bytes sent", &self.bytes_out),
            Figure::count(
                "peers_dropped_slow",
                "Peers dropped for not keeping up",
                &self.dropped_slow,
            ),
            Figure::count(
                "bad_frames",
                "Frames refused (malformed or over a limit)",
                &self.bad_frames,
            ),
            Figure::gauge(
                "frames_partial",
                "Incomplete messages held for reassembly (dropped after 30 s or with their link)",
                level(&self.partial_messages),
            ),
            Figure::gauge(
                "links_being_built",
                "Links to peers being built (not open yet) in the sync room",
                level(&self.pending_links),
            ),
            Figure::count(
                "impostor_signals",
                "Goodbyes for a linked peer signed by another Nostr key (ignored)",
                &self.impostor_signals,
            ),
            Figure::count(
                "seal_failures",
                "Sealed SDPs that did not open (wrong password?)",
                &self.seal_failures,
            ),
            Figure::count(
                "cell_envelopes_in",
                "Cells overlay envelopes received",
                &self.cell_envelopes_in,
            ),
            Figure::count(
                "cell_envelopes_out",
                "Cells overlay envelopes sent (per peer)",
                &self.cell_envelopes_out,
            ),
            Figure::count(
                "cell_deliveries",
                "Cells overlay messages delivered to the sync layer",
                &self.cell_deliveries,
            ),
            Figure::count("cell_seals", "Cells topologies sealed", &self.cell_seals),
            Figure::count(
                "cell_pruned",
                "Links closed because the cells topology does not admit them",
                &self.cell_pruned,
            ),
            Figure::count(
                "cell_frames_unexpected",
                "Cells envelopes received while CELLS is off",
                &self.cell_frames_unexpected,
            ),
        ]);
    }
}
