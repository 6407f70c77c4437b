//! `/health` (and `/` for JSON clients): the daemon's status as JSON; 503 with
//! `"status":"starting"` until the daemon runs.

use super::{AppState, VERSION};
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use std::sync::Arc;
use std::sync::atomic::Ordering;

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Health {
    status: &'static str,
    db_name: String,
    peers: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    presence_peers: Option<usize>,
    uptime: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    nodes: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    oplog: Option<usize>,
    last_flush: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    storage: Option<&'static str>,
    /// Journal records merged but not written yet (only while degraded).
    #[serde(skip_serializing_if = "Option::is_none")]
    unwritten: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
    /// Why the daemon is degraded when its storage is fine: it can reach no relay.
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
    relays: Relays,
    #[serde(skip_serializing_if = "Option::is_none")]
    relay: Option<RelayHealth>,
    /// The SM_KEY address, when set.
    #[serde(skip_serializing_if = "Option::is_none")]
    signing_as: Option<String>,
    /// Cells mode: this peer's place in the sealed topology.
    #[serde(skip_serializing_if = "Option::is_none")]
    cells: Option<CellsHealth>,
    /// Cell envelopes arrive while CELLS is off: browsers use `rtc: {cells: true}`.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    cells_mismatch: bool,
    version: &'static str,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct CellsHealth {
    /// The daemon's peer id in the sync room.
    peer_id: String,
    cell: usize,
    cells: usize,
    bridge: bool,
    roster: usize,
}

#[derive(Serialize)]
struct RelayHealth {
    connections: usize,
    events: u64,
    dropped: u64,
}

#[derive(Serialize)]
struct Relays {
    connected: usize,
    total: usize,
}

pub(crate) async fn health(State(state): State<Arc<AppState>>) -> Response {
    let (code, body) = body(&state);
    (code, Json(body)).into_response()
}

/// `"starting"` until the daemon runs; then `"degraded"` while persistence fails or
/// no relay can be reached, else `"ok"`.
pub(crate) fn status_word(state: &AppState) -> &'static str {
    match state.running() {
        None => "starting",
        Some(r) if r.persist.degraded() || state.cut_off().is_some() => "degraded",
        Some(_) => "ok",
    }
}

/// What `/health` says, for it and the console.
pub(crate) fn body(state: &AppState) -> (StatusCode, Health) {
    let cut_off = state.cut_off();
    let running = state.running();
    let (status, nodes, oplog) = match running {
        None => ("starting", None, None),
        Some(r) => {
            let s = r.store.lock().unwrap_or_else(|p| p.into_inner());
            let degraded = r.persist.degraded() || cut_off.is_some();
            let status = if degraded { "degraded" } else { "ok" };
            (status, Some(s.len()), Some(s.oplog().len()))
        }
    };
    let persist = running.map(|r| &r.persist);
    let sync_room = state.sync_room();
    let body = Health {
        status,
        db_name: state.db_name.clone(),
        peers: state.peers.load(Ordering::Relaxed),
        presence_peers: sync_room
            .and_then(|s| s.presence_peers.as_ref())
            .map(|p| p.load(Ordering::Relaxed)),
        uptime: state.started.elapsed().as_secs(),
        nodes,
        oplog,
        last_flush: persist.and_then(|p| p.last_flush_ms()),
        storage: persist.map(|p| p.backend),
        unwritten: persist
            .filter(|p| p.degraded())
            .map(|p| p.unwritten_records.load(Ordering::Relaxed)),
        error: persist.and_then(|p| p.last_error()),
        reason: cut_off,
        relays: Relays {
            connected: state.relays_connected.load(Ordering::Relaxed),
            total: state.relays_total.load(Ordering::Relaxed),
        },
        relay: state.relay.as_ref().map(|r| RelayHealth {
            connections: r.stats.connections.load(Ordering::Relaxed),
            events: r.stats.events.load(Ordering::Relaxed),
            dropped: r.stats.dropped.load(Ordering::Relaxed),
        }),
        signing_as: running.and_then(|r| r.signing_as.clone()),
        cells: sync_room.and_then(|s| {
            let r = &s.room;
            r.cell_state()
                .map(|(cell, cells, bridge, roster)| CellsHealth {
                    peer_id: r.self_id.clone(),
                    cell,
                    cells,
                    bridge,
                    roster,
                })
        }),
        cells_mismatch: sync_room
            .is_some_and(|s| s.room_stats.cell_frames_unexpected.load(Ordering::Relaxed) > 0),
        version: VERSION,
    };
    let code = if status == "starting" {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    };
    (code, body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::Running;
    use crate::persist::PersistStatus;
    use crate::store::Store;
    use std::sync::Mutex;

    fn json(state: &AppState) -> (StatusCode, serde_json::Value) {
        let (code, h) = body(state);
        (code, serde_json::to_value(h).unwrap())
    }

    #[test]
    fn starting_until_the_daemon_runs_then_ok_and_the_first_running_holds() {
        let state = AppState::new("h", 2, None);
        let (code, h) = json(&state);
        assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(h["status"], "starting");
        assert_eq!(status_word(&state), "starting");
        for absent in ["nodes", "oplog", "storage", "signingAs", "presencePeers"] {
            assert!(h.get(absent).is_none(), "{absent} in {h}");
        }
        assert_eq!(h["relays"]["total"], 2);
        let persist = Arc::new(PersistStatus::default());
        state.set_running(Running {
            store: Arc::new(Mutex::new(Store::new(10))),
            persist: persist.clone(),
            signing_as: Some("0xabc".into()),
            sync_room: None,
        });
        state.set_running(Running {
            store: Arc::new(Mutex::new(Store::new(10))),
            persist: Arc::new(PersistStatus::default()),
            signing_as: Some("0xother".into()),
            sync_room: None,
        });
        let (code, h) = json(&state);
        assert_eq!(code, StatusCode::OK);
        assert_eq!(h["status"], "ok");
        assert_eq!(status_word(&state), "ok");
        assert_eq!(h["nodes"], 0);
        assert_eq!(h["storage"], "files");
        assert_eq!(h["signingAs"], "0xabc");
        // No room joined: never cut off, however long no relay has been up.
        state.relays_down_secs.store(3600, Ordering::Relaxed);
        assert_eq!(state.cut_off(), None);
        assert_eq!(json(&state).1["status"], "ok");
    }
}
