//! Joins the daemon's sync room and keeps /health in step with it.

use crate::config::Config;
use crate::http::AppState;
use crate::rtc::nostr::{LocalRelay, PoolConfig, RelayPool};
use crate::rtc::peer::PeerConfig;
use crate::rtc::room::{Room, RoomConfig, RoomEvent};
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio::sync::mpsc;
use webrtc::peer_connection::RTCIceServer;

/// The joined sync room and the relays it signals through.
pub struct Rtc {
    pub room: Arc<Room>,
    pub pool: Arc<RelayPool>,
    /// `app-sync-<DB_NAME>`, when ROOM_PRESENCE=1.
    pub presence: Option<Arc<Room>>,
    /// Connected peers in the presence room, kept by its event task.
    pub presence_peers: Option<Arc<AtomicUsize>>,
}

impl Rtc {
    /// Says goodbye in every room joined.
    pub async fn leave(&self) {
        match &self.presence {
            Some(p) => {
                tokio::join!(self.room.leave(), p.leave());
            }
            None => self.room.leave().await,
        }
    }
}

/// Relays to use: RELAY_URLS, plus our own embedded relay when RELAY=1.
pub fn relay_urls(cfg: &Config, host: IpAddr, port: u16) -> Vec<String> {
    let mut urls = cfg.rtc.relay_urls.clone();
    if let Some(own) = own_relay_url(cfg, host, port)
        && !urls.contains(&own)
    {
        urls.push(own);
    }
    urls
}

/// The embedded relay's URL as the daemon reaches it (RELAY=1).
fn own_relay_url(cfg: &Config, host: IpAddr, port: u16) -> Option<String> {
    if !cfg.relay.enabled {
        return None;
    }
    let host = if host.is_unspecified() {
        IpAddr::V4(Ipv4Addr::LOCALHOST)
    } else {
        host
    };
    Some(match host {
        IpAddr::V6(h) => format!("ws://[{h}]:{port}"),
        IpAddr::V4(h) => format!("ws://{h}:{port}"),
    })
}

/// The embedded relay (RELAY=1), reached in process: only through it is the daemon's
/// connection its own (no rate limit, told who published what). Nothing a network
/// client sends can earn that.
fn own_relay(cfg: &Config, host: IpAddr, port: u16, state: &Arc<AppState>) -> Option<LocalRelay> {
    let url = own_relay_url(cfg, host, port)?;
    state.relay.as_ref()?;
    let connector = crate::http::local_connector(state.clone());
    Some(LocalRelay {
        url,
        connect: Arc::new(move || connector.connect()),
    })
}

pub fn ice_servers(cfg: &Config) -> Vec<RTCIceServer> {
    let mut servers: Vec<RTCIceServer> = cfg
        .rtc
        .ice
        .stun
        .iter()
        .map(|u| RTCIceServer {
            urls: vec![u.clone()],
            ..Default::default()
        })
        .collect();
    if !cfg.rtc.ice.turn.is_empty() {
        servers.push(RTCIceServer {
            urls: cfg.rtc.ice.turn.clone(),
            username: cfg.rtc.ice.turn_username.clone(),
            credential: cfg.rtc.ice.turn_credential.clone(),
        });
    }
    servers
}

/// Joins `graph-sync-room-<DB_NAME>` as a superpeer.
pub fn start(
    cfg: &Config,
    host: IpAddr,
    port: u16,
    state: Arc<AppState>,
) -> (Rtc, mpsc::Receiver<RoomEvent>) {
    let urls = relay_urls(cfg, host, port);
    if urls.is_empty() {
        tracing::warn!(
            "RTC is enabled but there is no relay: set RELAY_URLS or RELAY=1; no peer can find the daemon"
        );
    }
    state.relays_total.store(urls.len(), Ordering::Relaxed);
    let own = own_relay(cfg, host, port, &state);
    let mut pool_cfg = PoolConfig::new(urls.clone());
    pool_cfg.local = own.clone();
    let (pool, inbound) = RelayPool::start(pool_cfg);
    let pool = Arc::new(pool);
    let mut sync_cfg = room_config(cfg, &cfg.sync_room());
    sync_cfg.cells = cfg.rtc.cells;
    let (room, events) = Room::join(sync_cfg, pool.clone(), inbound);
    tracing::info!(peer_id = %room.self_id, room = %cfg.sync_room(), cell_size = cfg.rtc.cells, "joined the sync room");
    let room = Arc::new(room);
    let (presence, presence_peers) = cfg
        .rtc
        .room_presence
        .then(|| join_presence(cfg, urls, own))
        .unzip();
    tokio::spawn(watch_relays(pool.clone(), state));
    (
        Rtc {
            room,
            pool,
            presence,
            presence_peers,
        },
        events,
    )
}

fn room_config(cfg: &Config, room: &str) -> RoomConfig {
    let mut room_cfg = RoomConfig::new(room);
    room_cfg.password = cfg.rtc.password.0.clone();
    room_cfg.limits = cfg.rtc.peer_limits;
    room_cfg.frames.max_bytes = cfg.rtc.max_message_bytes;
    room_cfg.dial_wait = cfg.rtc.dial_wait;
    room_cfg.peer = PeerConfig {
        ice_servers: ice_servers(cfg),
        // Loopback candidates too: single-host setups and loopback-only sandboxes need them.
        include_loopback: true,
        send_buffer_limit: cfg.rtc.send_window,
        ..PeerConfig::default()
    };
    room_cfg
}

/// Joins `app-sync-<DB_NAME>` as a superpeer (genossrv's `--room`). Presence is nothing
/// more than being there: browsers see our announces (`peer:seen`), connect
/// (`peer:join` with type `superpeer`) and get our `bye` (`peer:lost`). Its own relay
/// connections keep its signalling apart from the sync room's. Nothing is synced here.
fn join_presence(
    cfg: &Config,
    urls: Vec<String>,
    own: Option<LocalRelay>,
) -> (Arc<Room>, Arc<AtomicUsize>) {
    let mut pool_cfg = PoolConfig::new(urls);
    pool_cfg.local = own;
    let (pool, inbound) = RelayPool::start(pool_cfg);
    let name = cfg.presence_room();
    let (room, mut events) = Room::join(room_config(cfg, &name), Arc::new(pool), inbound);
    tracing::info!(peer_id = %room.self_id, room = %name, "joined the presence room");
    let room = Arc::new(room);
    let count = Arc::new(AtomicUsize::new(0));
    let watched = room.clone();
    let counted = count.clone();
    tokio::spawn(async move {
        while let Some(ev) = events.recv().await {
            let peers = watched.peers().len();
            counted.store(peers, Ordering::Relaxed);
            match ev {
                RoomEvent::Joined { peer, .. } => {
                    tracing::info!(%peer, peers, "presence peer joined")
                }
                RoomEvent::Left { peer } => tracing::info!(%peer, peers, "presence peer left"),
                RoomEvent::Message { .. } => {}
            }
        }
    });
    (room, count)
}

async fn watch_relays(pool: Arc<RelayPool>, state: Arc<AppState>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut last_connected = tokio::time::Instant::now();
    let mut was_cut_off = false;
    loop {
        tick.tick().await;
        let connected = pool.connected();
        state.relays_connected.store(connected, Ordering::Relaxed);
        if connected > 0 {
            last_connected = tokio::time::Instant::now();
        }
        state
            .relays_down_secs
            .store(last_connected.elapsed().as_secs(), Ordering::Relaxed);
        let reconnects = (0..pool.len())
            .filter_map(|i| pool.status(i))
            .map(|s| s.reconnects.load(Ordering::Relaxed))
            .sum();
        state.relay_reconnects.store(reconnects, Ordering::Relaxed);
        let cut_off = state.cut_off();
        match (&cut_off, was_cut_off) {
            (Some(reason), false) => tracing::warn!(%reason, "degraded: cut off from every relay"),
            (None, true) => {
                tracing::info!(connected, "a relay is connected again; no longer cut off")
            }
            _ => {}
        }
        was_cut_off = cut_off.is_some();
    }
}
