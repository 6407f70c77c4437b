//! The embedded relay's figures for `/metrics`, read from [`RelayStats`] and its
//! mailboxes.

use super::Relay;
use crate::figures::{Figure, Figures};
use std::sync::atomic::Ordering;

impl Figures for Relay {
    fn figures(&self, out: &mut Vec<Figure>) {
        let s = &self.stats;
        out.extend([
            Figure::gauge(
                "relay_connections",
                "Open connections to the embedded relay",
                s.connections.load(Ordering::Relaxed) as i64,
            ),
            Figure::count(
                "relay_events",
                "Events the embedded relay accepted",
                &s.events,
            ),
            Figure::count(
                "relay_dropped",
                "Events the embedded relay refused (bad id, signature or kind)",
                &s.dropped,
            ),
            Figure::count(
                "relay_rate_limited",
                "Events refused for exceeding a connection's rate",
                &s.rate_limited,
            ),
            Figure::count(
                "relay_refused_connections",
                "Relay connections refused at the connection limits",
                &s.refused_connections,
            ),
            Figure::count(
                "relay_lagged",
                "Events a slow relay client missed",
                &s.lagged,
            ),
            Figure::gauge(
                "relay_queued_bytes",
                "Bytes of events waiting for or being written to relay clients (RELAY_MEMORY_BYTES bounds it)",
                self.queued_bytes() as i64,
            ),
        ]);
    }
}
