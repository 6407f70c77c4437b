//! Once a second, reads the daemon's counters and turns their changes into console
//! events; every 10 s, one chart sample (an hour of them is kept). Joins and leaves
//! are pushed where they happen when the daemon wires them ([`super::Console::push_peers`]);
//! only then does this stop diffing the peer table for them.

use super::super::AppState;
use crate::redact;
use serde::Serialize;
use serde_json::json;
use std::collections::{HashMap, VecDeque};
use std::sync::Weak;
use std::sync::atomic::Ordering;
use std::time::Duration;

/// Seconds per chart sample.
pub const SAMPLE_SECS: u64 = 10;
/// Samples kept: one hour.
pub const SAMPLES: usize = 360;
/// Catch-up times kept for one sample's median and max; past it, the rest of the
/// interval is counted but not timed.
const TIMES_PER_SAMPLE: usize = 4096;
/// Catch-ups listed, each with its time, in `/console/status`.
pub const CATCHUP_ROWS: usize = 20;

/// One chart point: the state at `at`, and rates over the `SAMPLE_SECS` before it.
#[derive(Debug, Clone, Copy, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Sample {
    pub at: u64,
    pub peers: usize,
    pub merged_per_sec: f64,
    pub bytes_in_per_sec: f64,
    pub bytes_out_per_sec: f64,
    /// Catch-ups served in the interval: full states the peer acknowledged to the last
    /// byte, deltas handed to the link.
    pub catchups_full: u64,
    pub catchups_delta: u64,
    /// Their times, from the peer's sync to served (see `sync::catchups`), in ms:
    /// the median and the max over the interval; `null` when there was none.
    pub catchup_median_ms: Option<u64>,
    pub catchup_max_ms: Option<u64>,
}

#[derive(Debug, Default)]
pub struct History {
    pub samples: VecDeque<Sample>,
}

/// The counters one tick compares with the last.
#[derive(Debug, Default, Clone)]
struct Seen {
    peers: HashMap<String, Option<String>>,
    peer_count: usize,
    status: &'static str,
    relays: Vec<bool>,
    reconnects: Vec<u64>,
    limits: HashMap<&'static str, u64>,
    sm: HashMap<&'static str, u64>,
    full: u64,
    delta: u64,
    merged: u64,
    bytes_in: u64,
    bytes_out: u64,
}

pub async fn run(state: Weak<AppState>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut seen: Option<Seen> = None;
    let mut at_sample: Option<Seen> = None;
    let mut n: u64 = 0;
    // The last catch-up read, and the times of those served since the last sample.
    let mut catchup_seq: u64 = 0;
    let mut times: Vec<u64> = Vec::new();
    loop {
        tick.tick().await;
        let Some(state) = state.upgrade() else {
            return;
        };
        let mut now = read(&state);
        let new: Vec<u64> = match state.sync_room() {
            Some(sr) => {
                let (full, delta, new) = sr.sync_stats.catchups.read_since(catchup_seq);
                (now.full, now.delta) = (full, delta);
                catchup_seq = new.last().map_or(catchup_seq, |c| c.seq);
                new.into_iter().map(|c| c.ms).collect()
            }
            None => Vec::new(),
        };
        let room = TIMES_PER_SAMPLE.saturating_sub(times.len());
        times.extend(new.iter().take(room));
        if let Some(before) = &seen {
            diff(&state, before, &now, &new);
        }
        if n.is_multiple_of(SAMPLE_SECS) {
            if let Some(before) = &at_sample {
                let s = sample(before, &now, SAMPLE_SECS as f64, &mut times);
                {
                    let mut h = state
                        .console
                        .history
                        .lock()
                        .unwrap_or_else(|p| p.into_inner());
                    if h.samples.len() == SAMPLES {
                        h.samples.pop_front();
                    }
                    h.samples.push_back(s);
                }
                state
                    .console
                    .publish("sample", serde_json::to_value(s).unwrap_or_default());
            }
            at_sample = Some(now.clone());
            times.clear();
        }
        seen = Some(now);
        n += 1;
    }
}

/// The median and the max of `times` (sorted in place).
fn median_max(times: &mut [u64]) -> (Option<u64>, Option<u64>) {
    times.sort_unstable();
    (times.get(times.len() / 2).copied(), times.last().copied())
}

fn sample(before: &Seen, now: &Seen, secs: f64, times: &mut [u64]) -> Sample {
    let rate = |a: u64, b: u64| b.saturating_sub(a) as f64 / secs;
    let (catchup_median_ms, catchup_max_ms) = median_max(times);
    Sample {
        at: super::now_ms(),
        peers: now.peer_count,
        merged_per_sec: rate(before.merged, now.merged),
        bytes_in_per_sec: rate(before.bytes_in, now.bytes_in),
        bytes_out_per_sec: rate(before.bytes_out, now.bytes_out),
        catchups_full: now.full.saturating_sub(before.full),
        catchups_delta: now.delta.saturating_sub(before.delta),
        catchup_median_ms,
        catchup_max_ms,
    }
}

fn read(state: &AppState) -> Seen {
    let mut s = Seen {
        status: super::super::health::status_word(state),
        ..Seen::default()
    };
    let mut limits: Vec<(&'static str, u64)> = state.http.limits_exceeded().to_vec();
    if let Some(sr) = state.sync_room() {
        // Pushed joins and leaves keep the count; the table is read only to diff it.
        if state.console.peers_pushed() {
            s.peer_count = state.peers.load(Ordering::Relaxed);
        } else {
            s.peers = sr
                .room
                .peer_table()
                .into_iter()
                .map(|p| (p.id, p.kind))
                .collect();
            s.peer_count = s.peers.len();
        }
        let pool = &sr.pool;
        for i in 0..pool.len() {
            if let Some(st) = pool.status(i) {
                s.relays.push(st.connected.load(Ordering::Relaxed));
                s.reconnects.push(st.reconnects.load(Ordering::Relaxed));
            }
        }
        let rs = &sr.room_stats;
        limits.extend(rs.limits_exceeded());
        s.bytes_in = rs.bytes_in.load(Ordering::Relaxed);
        s.bytes_out = rs.bytes_out.load(Ordering::Relaxed);
    }
    if let Some(relay) = &state.relay {
        limits.push(("relay_dropped", relay.stats.dropped.load(Ordering::Relaxed)));
    }
    for (k, v) in limits {
        *s.limits.entry(k).or_default() += v;
    }
    if let Some(sr) = state.sync_room() {
        s.sm = sr.sm_stats.rejected().into_iter().collect();
        // Catch-ups (`full`, `delta`) are read in `run`, with their times.
        s.merged = sr.sync_stats.merged.load(Ordering::Relaxed);
    }
    s
}

/// Publishes what changed between two ticks; `times` are the catch-ups' times read
/// this tick.
fn diff(state: &AppState, before: &Seen, now: &Seen, times: &[u64]) {
    let c = &state.console;
    for (id, kind) in &now.peers {
        if !before.peers.contains_key(id) {
            c.publish(
                "join",
                json!({"peer": id, "type": kind, "peers": now.peers.len()}),
            );
        }
    }
    for id in before.peers.keys() {
        if !now.peers.contains_key(id) {
            c.publish("leave", json!({"peer": id, "peers": now.peers.len()}));
        }
    }
    if before.status != now.status {
        let reason = match now.status {
            "degraded" => state
                .persist()
                .and_then(|p| p.last_error())
                .or_else(|| state.cut_off()),
            _ => None,
        };
        let kind = match (before.status, now.status) {
            (_, "degraded") => "degraded",
            ("degraded", _) => "recovered",
            _ => "status",
        };
        c.publish(kind, json!({"status": now.status, "reason": reason}));
    }
    let urls: Vec<String> = state
        .sync_room()
        .map(|s| s.pool.urls().map(|u| redact::url(u).into_owned()).collect())
        .unwrap_or_default();
    for (i, up) in now.relays.iter().enumerate() {
        let was = before.relays.get(i).copied().unwrap_or(false);
        let url = urls.get(i).cloned().unwrap_or_default();
        if *up != was {
            let kind = if *up { "relay_connected" } else { "relay_lost" };
            c.publish(kind, json!({"relay": url}));
        }
        let (r0, r1) = (
            before.reconnects.get(i).copied().unwrap_or(0),
            now.reconnects.get(i).copied().unwrap_or(0),
        );
        if r1 > r0 {
            c.publish(
                "relay_reconnect",
                json!({"relay": url, "reconnects": r1, "new": r1 - r0}),
            );
        }
    }
    for (k, v) in &now.limits {
        let was = before.limits.get(k).copied().unwrap_or(0);
        if *v > was {
            c.publish("limit", json!({"limit": k, "times": v - was, "total": v}));
        }
    }
    for (k, v) in &now.sm {
        let was = before.sm.get(k).copied().unwrap_or(0);
        if *v > was {
            c.publish(
                "sm_refused",
                json!({"reason": k, "times": v - was, "total": v}),
            );
        }
    }
    let (full, delta) = (
        now.full.saturating_sub(before.full),
        now.delta.saturating_sub(before.delta),
    );
    if full + delta > 0 {
        let (median_ms, max_ms) = median_max(&mut times.to_vec());
        c.publish(
            "catchup",
            json!({"full": full, "delta": delta, "medianMs": median_ms, "maxMs": max_ms}),
        );
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct RelayRow {
    url: String,
    connected: bool,
    reconnects: u64,
}

/// `/console/status` as JSON text.
pub fn status(state: &AppState) -> String {
    let (_, health) = super::super::health::body(state);
    let (mut peers, total) = match state.sync_room() {
        Some(s) => {
            let t = s.room.peer_table();
            let n = t.len();
            (t, n)
        }
        None => (Vec::new(), 0),
    };
    peers.sort_by(|a, b| a.since.cmp(&b.since).then_with(|| a.id.cmp(&b.id)));
    peers.truncate(super::MAX_PEER_ROWS);
    let relays: Vec<RelayRow> = state
        .sync_room()
        .map(|s| &s.pool)
        .map(|pool| {
            pool.urls()
                .enumerate()
                .map(|(i, u)| RelayRow {
                    url: redact::url(u).into_owned(),
                    connected: pool
                        .status(i)
                        .is_some_and(|s| s.connected.load(Ordering::Relaxed)),
                    reconnects: pool
                        .status(i)
                        .map_or(0, |s| s.reconnects.load(Ordering::Relaxed)),
                })
                .collect()
        })
        .unwrap_or_default();
    let samples: Vec<Sample> = state
        .console
        .history
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .samples
        .iter()
        .copied()
        .collect();
    let catchups = state
        .sync_room()
        .map(|s| s.sync_stats.catchups.last(CATCHUP_ROWS))
        .unwrap_or_default();
    let events: Vec<serde_json::Value> = state
        .console
        .recent()
        .iter()
        .filter_map(|e| serde_json::from_str(e).ok())
        .collect();
    json!({
        "health": health,
        "peers": peers,
        "peerCount": total,
        "relays": relays,
        "samples": samples,
        "sampleSecs": SAMPLE_SECS,
        "catchups": catchups,
        "events": events,
        "admin": state.console.admin.enabled(),
        "eventClients": state.console.clients.load(Ordering::Relaxed),
    })
    .to_string()
}
