//! `/metrics`: Prometheus text, read at scrape time. The daemon's own figures are
//! listed here; every part lists its own next to its counters ([`Figures`]: the room,
//! sync, the Security Manager, the embedded relay, the HTTP listener, persistence),
//! and this module writes them out in one order.

use super::AppState;
use crate::figures::{Figure, Figures, Value};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;
use std::sync::Arc;
use std::sync::atomic::Ordering;

pub(crate) fn registry(state: Arc<AppState>) -> Registry {
    let mut registry = Registry::with_prefix("genosdb");
    registry.register_collector(Box::new(Daemon(state)));
    registry
}

/// The `/metrics` answer.
pub(crate) fn text(registry: &Registry) -> Response {
    let mut body = String::new();
    match prometheus_client::encoding::text::encode(&mut body, registry) {
        Ok(()) => (
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            body,
        )
            .into_response(),
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

#[derive(Debug)]
struct Daemon(Arc<AppState>);

impl Collector for Daemon {
    fn encode(&self, mut enc: DescriptorEncoder) -> std::fmt::Result {
        let mut figures = Vec::with_capacity(128);
        self.0.figures(&mut figures);
        figures.iter().try_for_each(|f| encode(&mut enc, f))
    }
}

/// One figure as its metric family.
fn encode(enc: &mut DescriptorEncoder, f: &Figure) -> std::fmt::Result {
    match &f.value {
        Value::Counter(v) => {
            let c = ConstCounter::new(*v);
            c.encode(enc.encode_descriptor(f.name, f.help, None, c.metric_type())?)
        }
        Value::Gauge(v) => {
            let g = ConstGauge::new(*v);
            g.encode(enc.encode_descriptor(f.name, f.help, None, g.metric_type())?)
        }
        Value::Counters(label, rows) => {
            let mut family = enc.encode_descriptor(f.name, f.help, None, MetricType::Counter)?;
            for (value, n) in rows {
                ConstCounter::new(*n).encode(family.encode_family(&[(*label, *value)])?)?;
            }
            Ok(())
        }
        Value::Histogram(h) => {
            h.encode(enc.encode_descriptor(f.name, f.help, None, h.metric_type())?)
        }
    }
}

/// Everything `/metrics` shows, in its order: the daemon's own figures, the store's,
/// the sync room's (room, relay reconnects, sync, SM), the embedded relay's, the
/// listener's, every limit hit, and persistence's.
impl Figures for AppState {
    fn figures(&self, out: &mut Vec<Figure>) {
        let level = |a: &std::sync::atomic::AtomicUsize| a.load(Ordering::Relaxed) as i64;
        out.extend([
            Figure::gauge(
                "peers",
                "Connected peers in the sync room",
                level(&self.peers),
            ),
            Figure::gauge(
                "uptime_seconds",
                "Seconds since start",
                self.started.elapsed().as_secs() as i64,
            ),
            Figure::gauge(
                "relays_connected",
                "Signalling relays connected now",
                level(&self.relays_connected),
            ),
            Figure::gauge(
                "relays",
                "Signalling relays configured",
                level(&self.relays_total),
            ),
            Figure::gauge(
                "relays_cut_off",
                "1 when RTC is on and no relay has been connected for the grace period (/health says degraded)",
                i64::from(self.cut_off().is_some()),
            ),
        ]);
        if let Some(rss) = resident_bytes() {
            out.push(Figure::gauge(
                "process_resident_bytes",
                "Resident memory of the daemon (VmRSS)",
                rss as i64,
            ));
        }
        if let Some(store) = self.store() {
            store_figures(&store.lock().unwrap_or_else(|p| p.into_inner()), out);
        }
        if let Some(s) = self.sync_room() {
            s.room_stats.figures(out);
            out.push(Figure::count(
                "relay_reconnects",
                "Reconnects to signalling relays",
                &self.relay_reconnects,
            ));
            s.sync_stats.figures(out);
            s.sm_stats.figures(out);
        }
        if let Some(relay) = &self.relay {
            relay.figures(out);
        }
        self.http.figures(out);
        out.extend(limits_exceeded(self));
        if let Some(p) = self.persist() {
            p.figures(out);
        }
    }
}

/// The graph's size and its merges.
fn store_figures(s: &crate::store::Store, out: &mut Vec<Figure>) {
    let merged = s.merged();
    out.extend([
        Figure::gauge("nodes", "Nodes in the graph", s.len() as i64),
        Figure::gauge(
            "oplog_entries",
            "Entries in the oplog window",
            s.oplog().len() as i64,
        ),
        Figure::counters(
            "ops_merged",
            "Operations merged into the graph, by type",
            "type",
            vec![
                ("upsert", merged.upsert),
                ("remove", merged.remove),
                ("link", merged.link),
                ("adopt", merged.adopt),
            ],
        ),
    ]);
}

/// `limit_exceeded_total{limit}`: one family for every limit of SECURITY.md's table,
/// labelled with its variable's name in lower case; each part counts its own.
fn limits_exceeded(state: &AppState) -> Option<Figure> {
    let mut counts: Vec<(&'static str, u64)> = Vec::new();
    if let Some(s) = state.sync_room() {
        counts.extend(s.room_stats.limits_exceeded());
        counts.extend(s.sync_stats.limits_exceeded());
    }
    if let Some(r) = &state.relay {
        counts.extend(r.stats.limits_exceeded());
    }
    counts.extend(state.http.limits_exceeded());
    (!counts.is_empty()).then(|| {
        Figure::counters(
            "limit_exceeded",
            "Peers refused or dropped, messages and values refused, at a configured limit",
            "limit",
            counts,
        )
    })
}

/// VmRSS from /proc/self/status, in bytes (Linux).
pub(crate) fn resident_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kb: u64 = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some(kb * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::Running;
    use crate::persist::PersistStatus;
    use crate::store::Store;
    use std::sync::Mutex;

    fn names(state: &AppState) -> Vec<&'static str> {
        let mut out = Vec::new();
        state.figures(&mut out);
        out.iter().map(|f| f.name).collect()
    }

    fn running() -> Running {
        Running {
            store: Arc::new(Mutex::new(Store::new(100))),
            persist: Arc::new(PersistStatus::default()),
            signing_as: Some("0xabc".into()),
            sync_room: None,
        }
    }

    #[test]
    fn the_store_and_persistence_appear_once_the_daemon_runs() {
        let state = AppState::new("m", 0, None);
        let before = names(&state);
        assert!(before.contains(&"peers") && before.contains(&"http_connections"));
        assert!(!before.contains(&"nodes") && !before.contains(&"degraded"));
        state.set_running(running());
        let after = names(&state);
        for name in ["nodes", "oplog_entries", "ops_merged", "degraded"] {
            assert!(after.contains(&name), "{name} missing: {after:?}");
        }
        assert_eq!(after.last(), Some(&"flush_duration_seconds"));
        // No room: none of its figures, nor the relay watcher's.
        assert!(!after.contains(&"signals_in") && !after.contains(&"relay_reconnects"));
    }

    #[test]
    fn every_family_is_named_once_and_encodes() {
        let relay = crate::relay::Relay::new(Default::default());
        let state = AppState::new("m", 0, Some(relay));
        state.set_running(running());
        let all = names(&state);
        let mut unique = all.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), all.len(), "{all:?}");
        let mut body = String::new();
        prometheus_client::encoding::text::encode(&mut body, &registry(state.clone())).unwrap();
        for name in all {
            assert!(
                body.contains(&format!("# HELP genosdb_{name} ")),
                "{name} not in {body}"
            );
        }
        assert!(body.contains("genosdb_limit_exceeded_total{limit=\"relay_max_per_ip\"} 0"));
        assert!(body.contains("genosdb_ops_merged_total{type=\"upsert\"} 0"));
    }
}
