//! The operator's console: a status page on `/` for browsers, `/console/status` (the
//! JSON it draws), `/events` (Server-Sent Events) and, behind ADMIN_TOKEN, a read-only
//! look at the graph (see [`admin`]).
//!
//! Nothing here adds work to the hot paths. Joins and leaves are pushed as they happen
//! (the daemon wires the sync layer's peer callback to [`Console::peer_joined`] and
//! [`Console::peer_left`]); one task ([`sampler`]) reads the counters the daemon keeps
//! anyway once a second, turns their changes into events (relay reconnects, limits
//! hit, SM refusals, degraded and recovered, catch-ups served with their times; joins
//! and leaves too where nothing pushes them) and keeps a ring of 10 s samples for the
//! charts of the last hour. What the
//! page and `/events` show is what `/health` and `/metrics` already say, plus the peer
//! ids of the room (public in the room itself) and relay URLs with their credentials
//! redacted: never a secret, never graph content.

pub(crate) mod admin;
pub(crate) mod look;
pub(crate) mod sampler;

use super::AppState;
use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{broadcast, mpsc};

/// The page, served from the binary: inline CSS and JS, no external request.
pub(crate) const PAGE: &str = include_str!("page.html");
/// Events kept for the page and for a new `/events` client.
pub const EVENT_RING: usize = 100;
/// Events one `/events` client may have queued; past it the client is dropped.
pub(crate) const CLIENT_QUEUE: usize = 256;
/// `/events` clients at once; more get 503.
pub(crate) const MAX_EVENT_CLIENTS: usize = 32;
/// Peers listed in `/console/status` (the count is always whole).
pub(crate) const MAX_PEER_ROWS: usize = 500;

/// The console's shared state, in [`AppState`].
pub struct Console {
    /// Every event as its JSON text; sending with no receiver costs a failed send.
    tx: broadcast::Sender<Arc<str>>,
    ring: Mutex<VecDeque<Arc<str>>>,
    seq: AtomicU64,
    pub(crate) history: Mutex<sampler::History>,
    started: AtomicBool,
    /// Joins and leaves are pushed ([`Console::push_peers`]): the sampler does not
    /// diff the peer table for them.
    pushed: AtomicBool,
    /// `/events` clients now.
    pub clients: AtomicUsize,
    /// `/events` clients dropped for not reading.
    pub clients_dropped: AtomicU64,
    /// ADMIN_TOKEN and its attempt limiter.
    pub(crate) admin: admin::Admin,
}

impl Default for Console {
    fn default() -> Self {
        Self {
            tx: broadcast::channel(CLIENT_QUEUE).0,
            ring: Mutex::new(VecDeque::with_capacity(EVENT_RING)),
            seq: AtomicU64::new(0),
            history: Mutex::default(),
            started: AtomicBool::new(false),
            pushed: AtomicBool::new(false),
            clients: AtomicUsize::new(0),
            clients_dropped: AtomicU64::new(0),
            admin: admin::Admin::default(),
        }
    }
}

impl Console {
    /// Publishes one event `{seq, at, kind, ...fields}`; kept in the ring unless it is a
    /// chart sample.
    pub fn publish(&self, kind: &str, fields: serde_json::Value) {
        let mut obj = serde_json::Map::new();
        obj.insert(
            "seq".into(),
            (self.seq.fetch_add(1, Ordering::Relaxed) + 1).into(),
        );
        obj.insert("at".into(), now_ms().into());
        obj.insert("kind".into(), kind.into());
        if let serde_json::Value::Object(f) = fields {
            obj.extend(f);
        }
        let text: Arc<str> = serde_json::Value::Object(obj).to_string().into();
        if kind != "sample" {
            let mut ring = self.ring.lock().unwrap_or_else(|p| p.into_inner());
            if ring.len() == EVENT_RING {
                ring.pop_front();
            }
            ring.push_back(text.clone());
        }
        let _ = self.tx.send(text);
    }

    /// From now on joins and leaves come through [`Console::peer_joined`] and
    /// [`Console::peer_left`], called where they happen; call it before the first.
    pub fn push_peers(&self) {
        self.pushed.store(true, Ordering::Relaxed);
    }

    pub(crate) fn peers_pushed(&self) -> bool {
        self.pushed.load(Ordering::Relaxed)
    }

    /// A peer joined; `peers` connected now.
    pub fn peer_joined(&self, peer: &str, kind: Option<&str>, peers: usize) {
        self.publish(
            "join",
            serde_json::json!({"peer": peer, "type": kind, "peers": peers}),
        );
    }

    /// A peer left; `peers` connected now.
    pub fn peer_left(&self, peer: &str, peers: usize) {
        self.publish("leave", serde_json::json!({"peer": peer, "peers": peers}));
    }

    /// The last [`EVENT_RING`] events, oldest first.
    pub fn recent(&self) -> Vec<Arc<str>> {
        let ring = self.ring.lock().unwrap_or_else(|p| p.into_inner());
        ring.iter().cloned().collect()
    }
}

pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Starts the sampler once, when there is a runtime.
pub(crate) fn start(state: &Arc<AppState>) {
    if tokio::runtime::Handle::try_current().is_err()
        || state.console.started.swap(true, Ordering::Relaxed)
    {
        return;
    }
    tokio::spawn(sampler::run(Arc::downgrade(state)));
}

pub(crate) fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/console/status", get(status))
        .route("/events", get(events))
        .route("/admin/node", post(admin::node))
        .route("/admin/query", post(admin::query))
        .route("/admin/oplog", post(admin::oplog))
        .layer(axum::extract::DefaultBodyLimit::max(admin::MAX_BODY))
}

/// A browser asking for a page: `text/html` in Accept.
pub(crate) fn wants_html(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.split(',').any(|t| t.trim().starts_with("text/html")))
}

pub(crate) fn page() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
            // The page may only talk to this daemon.
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
            ),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::REFERRER_POLICY, "no-referrer"),
        ],
        PAGE,
    )
        .into_response()
}

/// `/console/status`: health, peers, relays, the charts' samples and the last events.
async fn status(State(state): State<Arc<AppState>>) -> Response {
    let body = sampler::status(&state);
    (
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        body,
    )
        .into_response()
}

/// `/events`: the ring first, then every event as it comes. A client whose queue fills
/// (it does not read) is dropped, its connection closed.
async fn events(State(state): State<Arc<AppState>>, req: axum::extract::Request) -> Response {
    let console = &state.console;
    if console.clients.fetch_add(1, Ordering::Relaxed) >= MAX_EVENT_CLIENTS {
        console.clients.fetch_sub(1, Ordering::Relaxed);
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "too many /events clients; try later",
        )
            .into_response();
    }
    let slot = req.extensions().get::<super::serve::ConnSlot>().cloned();
    let mut sub = console.tx.subscribe();
    let (tx, rx) = mpsc::channel::<Arc<str>>(CLIENT_QUEUE);
    for e in console.recent() {
        let _ = tx.try_send(e);
    }
    let watched = state.clone();
    tokio::spawn(async move {
        let console = &watched.console;
        let slow = loop {
            match sub.recv().await {
                Ok(e) => match tx.try_send(e) {
                    Ok(()) => {}
                    Err(mpsc::error::TrySendError::Full(_)) => break true,
                    Err(mpsc::error::TrySendError::Closed(_)) => break false,
                },
                Err(broadcast::error::RecvError::Lagged(_)) => break true,
                Err(broadcast::error::RecvError::Closed) => break false,
            }
        };
        console.clients.fetch_sub(1, Ordering::Relaxed);
        if slow {
            console.clients_dropped.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                limit = "events_client_queue",
                value = CLIENT_QUEUE,
                "/events client dropped: it does not read its events"
            );
            drop(tx);
            if let Some(slot) = slot {
                slot.close();
            }
        }
    });
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        let e = rx.recv().await?;
        Some((Ok::<_, Infallible>(Event::default().data(&*e)), rx))
    });
    Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response()
}
