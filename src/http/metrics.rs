//! Prometheus metrics, read at scrape time from the store and persistence status.

use super::AppState;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;
use std::sync::Arc;
use std::sync::atomic::Ordering;

pub fn registry(state: Arc<AppState>) -> Registry {
    let mut registry = Registry::with_prefix("genosdb");
    registry.register_collector(Box::new(Daemon(state)));
    registry
}

#[derive(Debug)]
struct Daemon(Arc<AppState>);

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState")
            .field("db_name", &self.db_name)
            .finish()
    }
}

fn gauge(enc: &mut DescriptorEncoder, name: &str, help: &str, v: i64) -> std::fmt::Result {
    let g = ConstGauge::new(v);
    g.encode(enc.encode_descriptor(name, help, None, g.metric_type())?)
}

fn counter(enc: &mut DescriptorEncoder, name: &str, help: &str, v: u64) -> std::fmt::Result {
    let c = ConstCounter::new(v);
    c.encode(enc.encode_descriptor(name, help, None, c.metric_type())?)
}

impl Collector for Daemon {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let state = &self.0;
        gauge(
            &mut enc,
            "peers",
            "Connected peers in the sync room",
            state.peers.load(Ordering::Relaxed) as i64,
        )?;
        gauge(
            &mut enc,
            "uptime_seconds",
            "Seconds since start",
            state.started.elapsed().as_secs() as i64,
        )?;
        gauge(
            &mut enc,
            "relays_connected",
            "Signalling relays connected now",
            state.relays_connected.load(Ordering::Relaxed) as i64,
        )?;
        gauge(
            &mut enc,
            "relays",
            "Signalling relays configured",
            state.relays_total.load(Ordering::Relaxed) as i64,
        )?;
        gauge(
            &mut enc,
            "relays_cut_off",
            "1 when RTC is on and no relay has been connected for the grace period (/health says degraded)",
            i64::from(state.cut_off().is_some()),
        )?;
        if let Some(rss) = resident_bytes() {
            gauge(
                &mut enc,
                "process_resident_bytes",
                "Resident memory of the daemon (VmRSS)",
                rss as i64,
            )?;
        }
        if let Some(store) = state.store() {
            let (nodes, oplog, merged) = {
                let s = store.lock().unwrap_or_else(|p| p.into_inner());
                (s.len(), s.oplog().len(), s.merged())
            };
            gauge(&mut enc, "nodes", "Nodes in the graph", nodes as i64)?;
            gauge(
                &mut enc,
                "oplog_entries",
                "Entries in the oplog window",
                oplog as i64,
            )?;
            let family = ConstCounter::new(0u64);
            let mut metric = enc.encode_descriptor(
                "ops_merged",
                "Operations merged into the graph, by type",
                None,
                family.metric_type(),
            )?;
            for (kind, n) in [
                ("upsert", merged.upsert),
                ("remove", merged.remove),
                ("link", merged.link),
                ("adopt", merged.adopt),
            ] {
                ConstCounter::new(n).encode(metric.encode_family(&[("type", kind)])?)?;
            }
        }
        if let Some(rs) = state.room_stats() {
            let load = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
            counter(
                &mut enc,
                "signals_in",
                "Signalling events received from relays",
                load(&rs.signals_in),
            )?;
            counter(
                &mut enc,
                "signals_out",
                "Signalling events published",
                load(&rs.signals_out),
            )?;
            counter(
                &mut enc,
                "frames_in",
                "Data-channel frames received",
                load(&rs.frames_in),
            )?;
            counter(
                &mut enc,
                "frames_out",
                "Data-channel frames sent",
                load(&rs.frames_out),
            )?;
            counter(
                &mut enc,
                "bytes_in",
                "Data-channel bytes received",
                load(&rs.bytes_in),
            )?;
            counter(
                &mut enc,
                "bytes_out",
                "Data-channel bytes sent",
                load(&rs.bytes_out),
            )?;
            counter(
                &mut enc,
                "peers_dropped_slow",
                "Peers dropped for not keeping up",
                load(&rs.dropped_slow),
            )?;
            counter(
                &mut enc,
                "bad_frames",
                "Frames refused (malformed or over a limit)",
                load(&rs.bad_frames),
            )?;
            gauge(
                &mut enc,
                "frames_partial",
                "Incomplete messages held for reassembly (dropped after 30 s or with their link)",
                load(&rs.partial_messages) as i64,
            )?;
            gauge(
                &mut enc,
                "links_being_built",
                "Links to peers being built (not open yet) in the sync room",
                load(&rs.pending_links) as i64,
            )?;
            counter(
                &mut enc,
                "impostor_signals",
                "Goodbyes for a linked peer signed by another Nostr key (ignored)",
                load(&rs.impostor_signals),
            )?;
            counter(
                &mut enc,
                "seal_failures",
                "Sealed SDPs that did not open (wrong password?)",
                load(&rs.seal_failures),
            )?;
            for (name, help, v) in [
                (
                    "cell_envelopes_in",
                    "Cells overlay envelopes received",
                    &rs.cell_envelopes_in,
                ),
                (
                    "cell_envelopes_out",
                    "Cells overlay envelopes sent (per peer)",
                    &rs.cell_envelopes_out,
                ),
                (
                    "cell_deliveries",
                    "Cells overlay messages delivered to the sync layer",
                    &rs.cell_deliveries,
                ),
                ("cell_seals", "Cells topologies sealed", &rs.cell_seals),
                (
                    "cell_pruned",
                    "Links closed because the cells topology does not admit them",
                    &rs.cell_pruned,
                ),
                (
                    "cell_frames_unexpected",
                    "Cells envelopes received while CELLS is off",
                    &rs.cell_frames_unexpected,
                ),
            ] {
                counter(&mut enc, name, help, load(v))?;
            }
            counter(
                &mut enc,
                "relay_reconnects",
                "Reconnects to signalling relays",
                state.relay_reconnects.load(Ordering::Relaxed),
            )?;
        }
        if let Some(ss) = state.sync_stats() {
            let load = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
            for (name, help, v) in [
                (
                    "sync_messages_in",
                    "syncGraph messages received",
                    &ss.messages_in,
                ),
                (
                    "sync_undecodable",
                    "syncGraph messages that were not JSON or MessagePack arrays",
                    &ss.undecodable,
                ),
                (
                    "sync_rejected",
                    "Malformed elements refused inside syncGraph messages",
                    &ss.rejected,
                ),
                (
                    "sync_unknown",
                    "syncGraph elements of an unknown type (ignored)",
                    &ss.unknown,
                ),
                (
                    "sync_merged",
                    "Ops and nodes from peers that changed the graph",
                    &ss.merged,
                ),
                (
                    "sync_requests_sent",
                    "sync requests sent to peers",
                    &ss.syncs_sent,
                ),
                ("sync_full_replies", "Full states served", &ss.full_replies),
                (
                    "sync_full_parts",
                    "Messages the full states served were split into",
                    &ss.full_parts,
                ),
                (
                    "sync_full_delivered",
                    "Full states the peer acknowledged to the last byte",
                    &ss.full_delivered,
                ),
                (
                    "sync_full_stalled",
                    "Full states whose delivery stalled: the link was dropped and the full state owed to the next one",
                    &ss.full_stalled,
                ),
                (
                    "sync_full_for_delta",
                    "Full states sent where a delta would not have carried every node to a peer not known to hold them",
                    &ss.full_for_delta,
                ),
                ("sync_delta_replies", "Deltas served", &ss.delta_replies),
                (
                    "sync_counter_replies",
                    "Full states sent because a peer's full state lacked our nodes",
                    &ss.counter_replies,
                ),
                (
                    "sync_messages_out",
                    "syncGraph messages sent",
                    &ss.messages_out,
                ),
                (
                    "sync_slow_peers",
                    "Peers dropped because their sync queue was full",
                    &ss.slow_peers,
                ),
                (
                    "sync_forwarded_ops",
                    "Live ops from peers forwarded to the other peers (FORWARD_OPS)",
                    &ss.forwarded_ops,
                ),
                (
                    "sync_forwarded_messages",
                    "Messages the forwarded ops were gathered into, each sent to every other peer",
                    &ss.forwarded_messages,
                ),
            ] {
                counter(&mut enc, name, help, load(v))?;
            }
        }
        if let Some(sm) = state.sm_stats() {
            let load = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
            counter(
                &mut enc,
                "sm_accepted",
                "Elements the Security Manager let through (SM_ENABLED)",
                load(&sm.accepted),
            )?;
            let family = ConstCounter::new(0u64);
            let mut metric = enc.encode_descriptor(
                "sm_rejected",
                "Elements the Security Manager refused, by reason",
                None,
                family.metric_type(),
            )?;
            for (reason, n) in sm.rejected() {
                ConstCounter::new(n).encode(metric.encode_family(&[("reason", reason)])?)?;
            }
            for (name, help, v) in [
                (
                    "sm_signed",
                    "Outgoing elements signed with SM_KEY",
                    &sm.signed,
                ),
                (
                    "sm_governance_writes",
                    "Role assignments written by SM_RULES",
                    &sm.governance_writes,
                ),
                (
                    "sm_governance_failures",
                    "Role assignments SM_RULES could not write",
                    &sm.governance_failures,
                ),
            ] {
                counter(&mut enc, name, help, load(v))?;
            }
        }
        if let Some(r) = &state.relay {
            let s = &r.stats;
            gauge(
                &mut enc,
                "relay_connections",
                "Open connections to the embedded relay",
                s.connections.load(Ordering::Relaxed) as i64,
            )?;
            counter(
                &mut enc,
                "relay_events",
                "Events the embedded relay accepted",
                s.events.load(Ordering::Relaxed),
            )?;
            counter(
                &mut enc,
                "relay_dropped",
                "Events the embedded relay refused (bad id, signature or kind)",
                s.dropped.load(Ordering::Relaxed),
            )?;
            counter(
                &mut enc,
                "relay_rate_limited",
                "Events refused for exceeding a connection's rate",
                s.rate_limited.load(Ordering::Relaxed),
            )?;
            counter(
                &mut enc,
                "relay_refused_connections",
                "Relay connections refused at the connection limits",
                s.refused_connections.load(Ordering::Relaxed),
            )?;
            counter(
                &mut enc,
                "relay_lagged",
                "Events a slow relay client missed",
                s.lagged.load(Ordering::Relaxed),
            )?;
            gauge(
                &mut enc,
                "relay_queued_bytes",
                "Bytes of events waiting for or being written to relay clients (RELAY_MEMORY_BYTES bounds it)",
                r.queued_bytes() as i64,
            )?;
        }
        gauge(
            &mut enc,
            "http_connections",
            "Open HTTP connections from the network, relay connections included",
            state.http.connections.load(Ordering::Relaxed) as i64,
        )?;
        limits_exceeded(&mut enc, state)?;
        if let Some(p) = state.persist() {
            gauge(
                &mut enc,
                "degraded",
                "1 while persistence is failing",
                p.degraded() as i64,
            )?;
            counter(
                &mut enc,
                "bytes_persisted",
                "Journal bytes written and fsynced",
                p.bytes_persisted.load(Ordering::Relaxed),
            )?;
            counter(
                &mut enc,
                "records_persisted",
                "Journal records written and fsynced",
                p.records_persisted.load(Ordering::Relaxed),
            )?;
            counter(
                &mut enc,
                "flush_failures",
                "Journal flushes the disk refused",
                p.flush_failures.load(Ordering::Relaxed),
            )?;
            gauge(
                &mut enc,
                "unwritten_bytes",
                "Journal bytes merged but not yet written (bounded; see docs/OPERATIONS.md)",
                p.unwritten_bytes.load(Ordering::Relaxed) as i64,
            )?;
            gauge(
                &mut enc,
                "unwritten_records",
                "Journal records merged but not yet written",
                p.unwritten_records.load(Ordering::Relaxed) as i64,
            )?;
            counter(
                &mut enc,
                "dropped_records",
                "Queued records given up when the queue was full; the graph is then written whole from memory",
                p.dropped_records.load(Ordering::Relaxed),
            )?;
            counter(
                &mut enc,
                "compactions",
                "Background compactions completed",
                p.compactions.load(Ordering::Relaxed),
            )?;
            p.flush_seconds.encode(enc.encode_descriptor(
                "flush_duration_seconds",
                "Time to write and fsync one group commit",
                None,
                p.flush_seconds.metric_type(),
            )?)?;
        }
        Ok(())
    }
}

/// `limit_exceeded_total{limit}`: one family for every limit of SECURITY.md's table,
/// labelled with its variable's name in lower case.
fn limits_exceeded(enc: &mut DescriptorEncoder, state: &AppState) -> std::fmt::Result {
    let mut counts: Vec<(&str, u64)> = Vec::new();
    if let Some(rs) = state.room_stats() {
        counts.extend(rs.limits_exceeded());
    }
    if let Some(ss) = state.sync_stats() {
        counts.push((
            "max_value_bytes",
            ss.oversized_values.load(Ordering::Relaxed),
        ));
    }
    if let Some(r) = &state.relay {
        counts.extend(r.stats.limits_exceeded());
    }
    counts.extend(state.http.limits_exceeded());
    if counts.is_empty() {
        return Ok(());
    }
    let family = ConstCounter::new(0u64);
    let mut metric = enc.encode_descriptor(
        "limit_exceeded",
        "Peers refused or dropped, messages and values refused, at a configured limit",
        None,
        family.metric_type(),
    )?;
    for (limit, n) in counts {
        ConstCounter::new(n).encode(metric.encode_family(&[("limit", limit)])?)?;
    }
    Ok(())
}

/// VmRSS from /proc/self/status, in bytes (Linux).
pub fn resident_bytes() -> Option<u64> {
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
