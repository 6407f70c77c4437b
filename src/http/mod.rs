//! HTTP: `/health` (JSON) and `/metrics` (Prometheus text), served by axum.
//!
//! The listener is bound before anything slow starts, because Heroku kills a web dyno
//! that has not bound its port within 60 s; until the store is loaded `/health` answers
//! 503 with `"status":"starting"`.

pub mod console;
pub mod metrics;
pub mod serve;

use crate::persist::PersistStatus;
use crate::relay::Relay;
use crate::store::Store;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{ConnectInfo, FromRequestParts, Request, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Everything the HTTP handlers read. Later layers (peers, relays) write the counters.
pub struct AppState {
    pub db_name: String,
    pub started: Instant,
    store: OnceLock<Arc<Mutex<Store>>>,
    persist: OnceLock<Arc<PersistStatus>>,
    /// Connected peers in the sync room.
    pub peers: AtomicUsize,
    /// Connected peers in the presence room, when ROOM_PRESENCE=1.
    pub presence_peers: OnceLock<AtomicUsize>,
    pub relays_connected: AtomicUsize,
    pub relays_total: AtomicUsize,
    /// Whole seconds for which no signalling relay has been connected (since start, or
    /// since the last one closed); 0 while one is. Kept by the relay watcher.
    pub relays_down_secs: std::sync::atomic::AtomicU64,
    /// The embedded relay, when RELAY=1.
    pub relay: Option<Arc<Relay>>,
    pub relay_reconnects: std::sync::atomic::AtomicU64,
    room_stats: OnceLock<Arc<crate::rtc::room::RoomStats>>,
    sync_stats: OnceLock<Arc<crate::sync::SyncStats>>,
    sm_stats: OnceLock<Arc<crate::sm::SmStats>>,
    /// The address SM_KEY signs as.
    pub signing_as: OnceLock<String>,
    /// The joined sync room, for the cells state.
    pub sync_room: OnceLock<Arc<crate::rtc::room::Room>>,
    /// The HTTP listener's connection counters.
    pub http: Arc<serve::HttpStats>,
    /// The operator's console: its events, charts and ADMIN_TOKEN.
    pub console: console::Console,
    /// The sync room's relay pool, for the console's relay list.
    pub relay_pool: OnceLock<Arc<crate::rtc::nostr::RelayPool>>,
}

impl AppState {
    pub fn new(db_name: &str, relays_total: usize, relay: Option<Arc<Relay>>) -> Arc<Self> {
        Arc::new(Self {
            db_name: db_name.to_owned(),
            started: Instant::now(),
            store: OnceLock::new(),
            persist: OnceLock::new(),
            peers: AtomicUsize::new(0),
            presence_peers: OnceLock::new(),
            relays_connected: AtomicUsize::new(0),
            relays_total: AtomicUsize::new(relays_total),
            relays_down_secs: Default::default(),
            relay,
            relay_reconnects: Default::default(),
            room_stats: OnceLock::new(),
            sync_stats: OnceLock::new(),
            sm_stats: OnceLock::new(),
            signing_as: OnceLock::new(),
            sync_room: OnceLock::new(),
            http: Arc::default(),
            console: console::Console::default(),
            relay_pool: OnceLock::new(),
        })
    }

    /// Marks the daemon ready: the store is loaded and persistence runs.
    pub fn ready(&self, store: Arc<Mutex<Store>>, persist: Arc<PersistStatus>) {
        let _ = self.store.set(store);
        let _ = self.persist.set(persist);
    }

    pub fn set_room_stats(&self, stats: Arc<crate::rtc::room::RoomStats>) {
        let _ = self.room_stats.set(stats);
    }

    pub fn room_stats(&self) -> Option<&Arc<crate::rtc::room::RoomStats>> {
        self.room_stats.get()
    }

    pub fn set_sync_stats(&self, stats: Arc<crate::sync::SyncStats>) {
        let _ = self.sync_stats.set(stats);
    }

    pub fn sync_stats(&self) -> Option<&Arc<crate::sync::SyncStats>> {
        self.sync_stats.get()
    }

    pub fn set_sm_stats(&self, stats: Arc<crate::sm::SmStats>) {
        let _ = self.sm_stats.set(stats);
    }

    pub fn sm_stats(&self) -> Option<&Arc<crate::sm::SmStats>> {
        self.sm_stats.get()
    }

    pub fn store(&self) -> Option<&Arc<Mutex<Store>>> {
        self.store.get()
    }

    pub fn persist(&self) -> Option<&Arc<PersistStatus>> {
        self.persist.get()
    }

    /// Why no browser can find the daemon, when it has joined the room over RTC and
    /// for [`RELAY_GRACE`] no relay has been connected.
    pub fn cut_off(&self) -> Option<String> {
        self.sync_room.get()?;
        let down = self.relays_down_secs.load(Ordering::Relaxed);
        if down < RELAY_GRACE.as_secs() {
            return None;
        }
        let total = self.relays_total.load(Ordering::Relaxed);
        Some(if total == 0 {
            "RTC is enabled but no relay is configured (RELAY_URLS is empty and RELAY is off): no peer can find the daemon".to_owned()
        } else {
            format!(
                "no signalling relay reachable for {down} s (0 of {total} connected): no peer can find the daemon"
            )
        })
    }
}

/// How long the daemon may have no relay connected, at start or later, before it calls
/// itself cut off: a connect may take up to 10 s, and the first retry follows about
/// 3 s later.
pub const RELAY_GRACE: std::time::Duration = std::time::Duration::from_secs(20);

/// In-process connections to this HTTP server, for the daemon's own relay client.
pub fn local_connector(state: Arc<AppState>) -> serve::LocalConnector {
    serve::LocalConnector::new(router(state))
}

pub fn router(state: Arc<AppState>) -> Router {
    let registry = Arc::new(metrics::registry(state.clone()));
    console::start(&state);
    Router::new()
        .route("/", get(root))
        .merge(console::routes())
        .route("/health", get(health))
        .route(
            "/metrics",
            get(move || {
                let registry = registry.clone();
                async move { metrics_text(&registry) }
            }),
        )
        .fallback(not_found)
        .with_state(state)
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Health {
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

async fn health(State(state): State<Arc<AppState>>) -> Response {
    let (code, body) = health_body(&state);
    (code, Json(body)).into_response()
}

/// What `/health` says, for it and the console.
fn health_body(state: &AppState) -> (StatusCode, Health) {
    let cut_off = state.cut_off();
    let (status, nodes, oplog) = match state.store() {
        None => ("starting", None, None),
        Some(store) => {
            let s = store.lock().unwrap_or_else(|p| p.into_inner());
            let degraded = state.persist().is_some_and(|p| p.degraded()) || cut_off.is_some();
            let status = if degraded { "degraded" } else { "ok" };
            (status, Some(s.len()), Some(s.oplog().len()))
        }
    };
    let persist = state.persist();
    let body = Health {
        status,
        db_name: state.db_name.clone(),
        peers: state.peers.load(Ordering::Relaxed),
        presence_peers: state
            .presence_peers
            .get()
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
        signing_as: state.signing_as.get().cloned(),
        cells: state.sync_room.get().and_then(|r| {
            r.cell_state()
                .map(|(cell, cells, bridge, roster)| CellsHealth {
                    peer_id: r.self_id.clone(),
                    cell,
                    cells,
                    bridge,
                    roster,
                })
        }),
        cells_mismatch: state
            .room_stats()
            .is_some_and(|s| s.cell_frames_unexpected.load(Ordering::Relaxed) > 0),
        version: VERSION,
    };
    let code = if status == "starting" {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    };
    (code, body)
}

/// `/`: a WebSocket upgrade is a relay connection (RELAY=1); a browser (`Accept:
/// text/html`) gets the operator's console; anything else gets the health JSON, as
/// genossrv's embedded relay answers.
async fn root(
    State(state): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<std::net::SocketAddr>,
    req: Request,
) -> Response {
    let wants_upgrade = req
        .headers()
        .get(header::UPGRADE)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"websocket"));
    if !wants_upgrade {
        if console::wants_html(req.headers()) {
            return console::page();
        }
        return health(State(state)).await;
    }
    let Some(relay) = state.relay.clone() else {
        return (StatusCode::NOT_FOUND, "no relay here (RELAY=0)").into_response();
    };
    let origin = req.extensions().get::<serve::Origin>().copied();
    if origin == Some(serve::Origin::Network { reserved: true }) {
        state
            .http
            .reserve_upgrades_refused
            .fetch_add(1, Ordering::Relaxed);
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "too many connections; only /health is served now",
        )
            .into_response();
    }
    let slot = req.extensions().get::<serve::ConnSlot>().cloned();
    let (mut parts, _) = req.into_parts();
    match WebSocketUpgrade::from_request_parts(&mut parts, &state).await {
        Ok(ws) => relay.accept(ws, peer.ip(), origin == Some(serve::Origin::Local), slot),
        Err(rejection) => rejection.into_response(),
    }
}

fn metrics_text(registry: &prometheus_client::registry::Registry) -> Response {
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

async fn not_found() -> Response {
    (
        StatusCode::NOT_FOUND,
        Json(serde_json::json!({"error": "not found"})),
    )
        .into_response()
}
