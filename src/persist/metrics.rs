//! Persistence's figures for `/metrics`, read from [`PersistStatus`].

use super::PersistStatus;
use crate::figures::{Figure, Figures};
use std::sync::atomic::Ordering;

impl Figures for PersistStatus {
    fn figures(&self, out: &mut Vec<Figure>) {
        let level = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed) as i64;
        out.extend([
            Figure::gauge(
                "degraded",
                "1 while persistence is failing",
                self.degraded() as i64,
            ),
            Figure::count(
                "bytes_persisted",
                "Journal bytes written and fsynced",
                &self.bytes_persisted,
            ),
            Figure::count(
                "records_persisted",
                "Journal records written and fsynced",
                &self.records_persisted,
            ),
            Figure::count(
                "flush_failures",
                "Journal flushes the disk refused",
                &self.flush_failures,
            ),
            Figure::gauge(
                "unwritten_bytes",
                "Journal bytes merged but not yet written (bounded; see docs/OPERATIONS.md)",
                level(&self.unwritten_bytes),
            ),
            Figure::gauge(
                "unwritten_records",
                "Journal records merged but not yet written",
                level(&self.unwritten_records),
            ),
            Figure::count(
                "dropped_records",
                "Queued records given up when the queue was full; the graph is then written whole from memory",
                &self.dropped_records,
            ),
            Figure::count(
                "compactions",
                "Background compactions completed",
                &self.compactions,
            ),
            Figure::histogram(
                "flush_duration_seconds",
                "Time to write and fsync one group commit",
                &self.flush_seconds,
            ),
        ]);
    }
}
