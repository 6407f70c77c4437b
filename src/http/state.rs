//! What the HTTP handlers read: [`AppState`], made before the listener binds, and
//! [`Running`], the handles of everything the daemon starts, set once when all of it
//! runs. Until then `/health` says `"starting"`.

use super::console::Console;
use super::serve::HttpStats;
use crate::persist::PersistStatus;
use crate::relay::Relay;
use crate::rtc::nostr::RelayPool;
use crate::rtc::room::{Room, RoomStats};
use crate::sm::SmStats;
use crate::store::Store;
use crate::sync::SyncStats;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// How long the daemon may have no relay connected, at start or later, before it calls
/// itself cut off: a connect may take up to 10 s, and the first retry follows about
/// 3 s later.
pub(crate) const RELAY_GRACE: Duration = Duration::from_secs(20);

/// Everything the HTTP handlers read. The counters here are written by the daemon's
/// tasks from the start; what exists only once the daemon runs is in [`Running`].
pub struct AppState {
    pub(crate) db_name: String,
    pub(crate) started: Instant,
    /// Set once, by the daemon, when the store is loaded and the rooms are joined.
    running: OnceLock<Running>,
    /// Connected peers in the sync room (kept by the sync service's callback).
    pub(crate) peers: AtomicUsize,
    /// Signalling relays connected now, and configured (kept by the relay watcher).
    pub(crate) relays_connected: AtomicUsize,
    pub(crate) relays_total: AtomicUsize,
    /// Whole seconds for which no signalling relay has been connected (since start, or
    /// since the last one closed); 0 while one is. Kept by the relay watcher.
    pub(crate) relays_down_secs: AtomicU64,
    /// Reconnects of every signalling relay, summed by the relay watcher.
    pub(crate) relay_reconnects: AtomicU64,
    /// The embedded relay, when RELAY=1: it serves WebSocket upgrades on `/` from the
    /// start, before the store is loaded.
    pub(crate) relay: Option<Arc<Relay>>,
    /// The HTTP listener's connection counters.
    pub http: Arc<HttpStats>,
    /// The operator's console: its events, charts and ADMIN_TOKEN.
    pub console: Console,
}

/// The handles of what the daemon has started, for `/health`, `/metrics` and the
/// console. Set once ([`AppState::set_running`]).
pub(crate) struct Running {
    /// The graph: its size for `/health`, its merge counts, the console's look.
    pub store: Arc<Mutex<Store>>,
    /// Persistence: degraded or not, the last flush and error, its counters.
    pub persist: Arc<PersistStatus>,
    /// The address SM_KEY signs as, when set.
    pub signing_as: Option<String>,
    /// The sync room and what runs on it, when RTC_ENABLED.
    pub sync_room: Option<SyncRoom>,
}

/// The joined sync room and the services on it.
pub(crate) struct SyncRoom {
    /// Its peers (the console's table) and its cells state (`/health`).
    pub room: Arc<Room>,
    pub room_stats: Arc<RoomStats>,
    /// The relays it signals through, for the console's relay list.
    pub pool: Arc<RelayPool>,
    pub sync_stats: Arc<SyncStats>,
    pub sm_stats: Arc<SmStats>,
    /// Connected peers in the presence room, when ROOM_PRESENCE=1.
    pub presence_peers: Option<Arc<AtomicUsize>>,
}

impl AppState {
    pub fn new(db_name: &str, relays_total: usize, relay: Option<Arc<Relay>>) -> Arc<Self> {
        Arc::new(Self {
            db_name: db_name.to_owned(),
            started: Instant::now(),
            running: OnceLock::new(),
            peers: AtomicUsize::new(0),
            relays_connected: AtomicUsize::new(0),
            relays_total: AtomicUsize::new(relays_total),
            relays_down_secs: AtomicU64::new(0),
            relay_reconnects: AtomicU64::new(0),
            relay,
            http: Arc::default(),
            console: Console::default(),
        })
    }

    /// Marks the daemon ready: the store is loaded, persistence runs, and the rooms
    /// (when RTC is on) are joined. Only the first call counts.
    pub(crate) fn set_running(&self, running: Running) {
        if self.running.set(running).is_err() {
            tracing::warn!("the daemon was marked running twice; the first holds");
        }
    }

    pub(crate) fn running(&self) -> Option<&Running> {
        self.running.get()
    }

    pub(crate) fn store(&self) -> Option<&Arc<Mutex<Store>>> {
        self.running().map(|r| &r.store)
    }

    pub(crate) fn persist(&self) -> Option<&Arc<PersistStatus>> {
        self.running().map(|r| &r.persist)
    }

    pub(crate) fn sync_room(&self) -> Option<&SyncRoom> {
        self.running()?.sync_room.as_ref()
    }

    /// Why no browser can find the daemon, when it has joined the room over RTC and
    /// for [`RELAY_GRACE`] no relay has been connected.
    pub(crate) fn cut_off(&self) -> Option<String> {
        self.sync_room()?;
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

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState")
            .field("db_name", &self.db_name)
            .finish()
    }
}
