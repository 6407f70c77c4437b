//! A GenosDB peer built from this crate: a room, a store, and the sync layer, joined
//! through a relay on 127.0.0.1. It plays the browsers of the harness's B scenarios.

use genosdb_fallback::rtc::nostr::{PoolConfig, RelayPool};
use genosdb_fallback::rtc::peer::PeerConfig;
use genosdb_fallback::rtc::room::{Room, RoomConfig, RoomEvent};
use genosdb_fallback::sm::SmConfig;
use genosdb_fallback::store::Store;
use genosdb_fallback::sync::{PeerChange, SyncConfig, SyncHandle, service};
use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

pub struct TestPeer {
    pub room: Arc<Room>,
    pub store: Arc<Mutex<Store>>,
    pub sync: SyncHandle,
    superpeers: Arc<Mutex<HashSet<String>>>,
    joins: Arc<AtomicU64>,
}

/// A browser-like room member: no `type`, loopback only, quick announces.
pub fn room_config(room: &str) -> RoomConfig {
    let mut cfg = RoomConfig::new(room);
    cfg.peer_type = None;
    cfg.peer = PeerConfig {
        udp_addrs: vec!["127.0.0.1:0".into()],
        include_loopback: true,
        ..PeerConfig::default()
    };
    cfg.announce_every = Duration::from_millis(300);
    cfg
}

/// Joins a room through the relay on `relay_port`, reconnecting quickly.
pub fn join_room(relay_port: u16, cfg: RoomConfig) -> (Room, mpsc::Receiver<RoomEvent>) {
    join_room_via(vec![format!("ws://127.0.0.1:{relay_port}")], cfg)
}

/// Joins a room through every relay in `urls`, reconnecting quickly.
pub fn join_room_via(urls: Vec<String>, cfg: RoomConfig) -> (Room, mpsc::Receiver<RoomEvent>) {
    let mut pool_cfg = PoolConfig::new(urls);
    pool_cfg.backoff_base = Duration::from_millis(100);
    let (pool, inbound) = RelayPool::start(pool_cfg);
    Room::join(cfg, Arc::new(pool), inbound)
}

impl TestPeer {
    /// Joins `graph-sync-room-<db>` through the relay on `relay_port` with a fresh store.
    pub fn join(relay_port: u16, db: &str) -> Self {
        Self::join_with(relay_port, db, Arc::new(Mutex::new(Store::new(1000))))
    }

    /// Joins with a store kept from an earlier session (a returning browser).
    pub fn join_with(relay_port: u16, db: &str, store: Arc<Mutex<Store>>) -> Self {
        Self::join_tweaked(relay_port, db, store, |_| {})
    }

    /// Joins with a changed room configuration (a peer that misbehaves on purpose).
    pub fn join_tweaked(
        relay_port: u16,
        db: &str,
        store: Arc<Mutex<Store>>,
        tweak: impl FnOnce(&mut RoomConfig),
    ) -> Self {
        Self::join_configured(relay_port, db, store, tweak, SyncConfig::default())
    }

    /// Joins as an SM browser: signing with `sm.signer`, verifying with `sm.verify`.
    pub fn join_sm(relay_port: u16, db: &str, sm: SmConfig) -> Self {
        let cfg = SyncConfig {
            sm,
            ..SyncConfig::default()
        };
        let store = Arc::new(Mutex::new(Store::new(1000)));
        Self::join_configured(relay_port, db, store, |_| {}, cfg)
    }

    pub fn join_configured(
        relay_port: u16,
        db: &str,
        store: Arc<Mutex<Store>>,
        tweak: impl FnOnce(&mut RoomConfig),
        sync_cfg: SyncConfig,
    ) -> Self {
        let urls = vec![format!("ws://127.0.0.1:{relay_port}")];
        Self::join_via(urls, db, store, tweak, sync_cfg)
    }

    /// Joins through every relay in `urls` (several relays, or a proxy in front of one).
    pub fn join_via(
        urls: Vec<String>,
        db: &str,
        store: Arc<Mutex<Store>>,
        tweak: impl FnOnce(&mut RoomConfig),
        sync_cfg: SyncConfig,
    ) -> Self {
        // TEST_LOG=genosdb_fallback=debug shows what the test peers do.
        if let Ok(filter) = std::env::var("TEST_LOG") {
            let _ = tracing_subscriber::fmt()
                .with_env_filter(filter)
                .with_test_writer()
                .try_init();
        }
        let mut cfg = room_config(&format!("graph-sync-room-{db}"));
        tweak(&mut cfg);
        let (room, events) = join_room_via(urls, cfg);
        let room = Arc::new(room);
        let superpeers: Arc<Mutex<HashSet<String>>> = Arc::default();
        let seen = superpeers.clone();
        let joins: Arc<AtomicU64> = Arc::default();
        let joined = joins.clone();
        let sync = service::start(
            room.clone(),
            events,
            store.clone(),
            sync_cfg,
            move |_, change| {
                let mut s = seen.lock().unwrap();
                if matches!(change, PeerChange::Joined { .. }) {
                    joined.fetch_add(1, Ordering::Relaxed);
                }
                match change {
                    PeerChange::Joined { peer, kind } if kind.as_deref() == Some("superpeer") => {
                        s.insert(peer.clone());
                    }
                    PeerChange::Left { peer } => {
                        s.remove(peer);
                    }
                    _ => {}
                }
            },
        );
        Self {
            room,
            store,
            sync,
            superpeers,
            joins,
        }
    }

    pub fn superpeers(&self) -> usize {
        self.superpeers.lock().unwrap().len()
    }

    /// Whether the superpeer with room id `id` is connected now.
    #[allow(dead_code)]
    pub fn has_superpeer(&self, id: &str) -> bool {
        self.superpeers.lock().unwrap().contains(id)
    }

    /// How many times a peer joined this one (a link that comes up again counts again).
    #[allow(dead_code)]
    pub fn joins(&self) -> u64 {
        self.joins.load(Ordering::Relaxed)
    }

    /// Waits until `n` superpeers are connected.
    pub async fn wait_superpeers(&self, n: usize) {
        wait_async(&format!("{n} superpeer(s) connected"), || {
            self.superpeers() >= n
        })
        .await;
    }

    /// Waits until the store satisfies `cond`.
    pub async fn wait_store(&self, what: &str, cond: impl Fn(&Store) -> bool) {
        wait_async(what, || cond(&self.store.lock().unwrap())).await;
    }

    /// Says goodbye and hands back the store, as a closed browser keeps its profile.
    pub async fn leave(self) -> Arc<Mutex<Store>> {
        self.room.leave().await;
        self.store
    }

    pub fn value(&self, id: &str) -> Option<String> {
        value_of(&self.store.lock().unwrap(), id)
    }

    /// Every node as `export` prints it, sorted by id.
    pub fn export(&self) -> Vec<String> {
        export_of(&self.store.lock().unwrap())
    }
}

/// A store's nodes as the daemon's `export` prints them, sorted by id.
pub fn export_of(store: &Store) -> Vec<String> {
    let mut ids: Vec<&str> = store.nodes().keys().map(|k| k.as_ref()).collect();
    ids.sort_unstable();
    ids.iter()
        .filter_map(|id| store.get(id).map(|n| n.to_json(id)))
        .collect()
}

pub fn value_of(store: &Store, id: &str) -> Option<String> {
    store
        .get(id)
        .and_then(|n| n.value.as_ref())
        .map(|v| v.get().to_owned())
}

/// Polls `cond` for up to 30 s; never a speed check.
pub async fn wait_async(what: &str, cond: impl FnMut() -> bool) {
    wait_async_for(what, Duration::from_secs(30), cond).await
}

/// Polls `cond` for up to `limit` (for conditions that lossy signalling delays).
pub async fn wait_async_for(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
