//! Once a second, reads the daemon's counters and turns their changes into console
//! events; every 10 s, one chart sample (an hour of them is kept).

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

/// One chart point: the state at `at`, and rates over the `SAMPLE_SECS` before it.
#[derive(Debug, Clone, Copy, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Sample {
    pub at: u64,
    pub peers: usize,
    pub merged_per_sec: f64,
    pub bytes_in_per_sec: f64,
    pub bytes_out_per_sec: f64,
    /// Full states and deltas served in the interval.
    pub catchups_full: u64,
    pub catchups_delta: u64,
}

#[derive(Debug, Default)]
pub struct History {
    pub samples: VecDeque<Sample>,
}

/// The counters one tick compares with the last.
#[derive(Debug, Default, Clone)]
struct Seen {
    peers: HashMap<String, Option<String>>,
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
    loop {
        tick.tick().await;
        let Some(state) = state.upgrade() else {
            return;
        };
        let now = read(&state);
        if let Some(before) = &seen {
            diff(&state, before, &now);
        }
        if n.is_multiple_of(SAMPLE_SECS) {
            if let Some(before) = &at_sample {
                let s = sample(before, &now, SAMPLE_SECS as f64);
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
        }
        seen = Some(now);
        n += 1;
    }
}

fn sample(before: &Seen, now: &Seen, secs: f64) -> Sample {
    let rate = |a: u64, b: u64| b.saturating_sub(a) as f64 / secs;
    Sample {
        at: super::now_ms(),
        peers: now.peers.len(),
        merged_per_sec: rate(before.merged, now.merged),
        bytes_in_per_sec: rate(before.bytes_in, now.bytes_in),
        bytes_out_per_sec: rate(before.bytes_out, now.bytes_out),
        catchups_full: now.full.saturating_sub(before.full),
        catchups_delta: now.delta.saturating_sub(before.delta),
    }
}

fn read(state: &AppState) -> Seen {
    let mut s = Seen {
        status: super::super::health::status_word(state),
        ..Seen::default()
    };
    let mut limits: Vec<(&'static str, u64)> = state.http.limits_exceeded().to_vec();
    if let Some(sr) = state.sync_room() {
        s.peers = sr
            .room
            .peer_table()
            .into_iter()
            .map(|p| (p.id, p.kind))
            .collect();
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
        let ss = &sr.sync_stats;
        s.full = ss.full_replies.load(Ordering::Relaxed);
        s.delta = ss.delta_replies.load(Ordering::Relaxed);
        s.merged = ss.merged.load(Ordering::Relaxed);
    }
    s
}

/// Publishes what changed between two ticks.
fn diff(state: &AppState, before: &Seen, now: &Seen) {
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
        c.publish("catchup", json!({"full": full, "delta": delta}));
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
        "events": events,
        "admin": state.console.admin.enabled(),
        "eventClients": state.console.clients.load(Ordering::Relaxed),
    })
    .to_string()
}
