//! HTTP: `/health` (JSON), `/metrics` (Prometheus text), the operator's console and,
//! with RELAY=1, the embedded relay's WebSocket on `/`, served by axum.
//!
//! The listener is bound before anything slow starts, because Heroku kills a web dyno
//! that has not bound its port within 60 s; until the daemon hands over what it has
//! started ([`Running`], set once) `/health` answers 503 with `"status":"starting"`.
//!
//! - `state`: [`AppState`] and [`Running`].
//! - `health`: `/health`.
//! - `metrics`: `/metrics`, every part's [`crate::figures::Figures`] in one order.
//! - `serve`: the bounded listener and in-process connections.
//! - `console`: the status page, `/console/status`, `/events`, the ADMIN_TOKEN look.

pub mod console;
mod health;
mod metrics;
pub mod serve;
mod state;

pub use state::AppState;
pub(crate) use state::{Running, SyncRoom};

use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{ConnectInfo, FromRequestParts, Request, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use std::sync::Arc;
use std::sync::atomic::Ordering;

pub(crate) const VERSION: &str = env!("CARGO_PKG_VERSION");

/// In-process connections to this HTTP server, for the daemon's own relay client.
pub(crate) fn local_connector(state: Arc<AppState>) -> serve::LocalConnector {
    serve::LocalConnector::new(router(state))
}

pub fn router(state: Arc<AppState>) -> Router {
    let registry = Arc::new(metrics::registry(state.clone()));
    console::start(&state);
    Router::new()
        .route("/", get(root))
        .merge(console::routes())
        .route("/health", get(health::health))
        .route(
            "/metrics",
            get(move || {
                let registry = registry.clone();
                async move { metrics::text(&registry) }
            }),
        )
        .fallback(not_found)
        .with_state(state)
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
        return health::health(State(state)).await;
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

async fn not_found() -> Response {
    (
        StatusCode::NOT_FOUND,
        Json(serde_json::json!({"error": "not found"})),
    )
        .into_response()
}
