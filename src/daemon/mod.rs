//! Wires the layers together: HTTP first, then the store and its persistence, then
//! waiting for SIGTERM/SIGINT, then a clean flush. The composition root: the only
//! module that reads [`Config`].

pub mod query;
pub mod room;
pub(crate) mod storage;
pub mod tools;

use crate::config::Config;
use crate::http::{self, AppState};
use crate::relay::Relay;
use crate::sm::SmConfig;
use crate::sm::policy::Policy;
use crate::sync::governor::Governor;
use crate::sync::{PeerChange, SyncConfig};
use anyhow::Context;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio::sync::watch;

/// Heroku sends SIGKILL 30 s after SIGTERM; we promise to be gone within 10 s.
const SHUTDOWN_BUDGET: Duration = Duration::from_secs(8);

pub async fn run(cfg: Config) -> anyhow::Result<()> {
    // Listen before anything else: a SIGTERM during start-up must not kill us mid-write.
    let mut signals = Signals::install()?;
    log_config(&cfg);
    let state = app_state(&cfg)?;

    let listener = bind_http(&cfg).await?;
    let addr = listener.local_addr()?;
    tracing::info!(%addr, relay = cfg.relay.enabled, "listening for /health and /metrics");
    let (stop_http, stopped) = watch::channel(false);
    let server = tokio::spawn(serve(listener, state.clone(), cfg.http.limits, stopped));

    let started = Instant::now();
    let opening = tokio::task::spawn_blocking({
        let cfg = cfg.clone();
        move || storage::open_for_daemon(&cfg)
    });
    // Loading writes nothing that is not atomic, so a signal may cut it short.
    let opened = tokio::select! {
        opened = opening => opened??,
        signal = signals.recv() => {
            tracing::info!(signal, "stopped while loading the store");
            return Ok(());
        }
    };
    let storage::Started {
        store,
        persistence,
        lock,
    } = opened.start(&cfg, started)?;
    let sm = sm_config(&cfg);
    let (rtc, sync_room) = cfg
        .rtc
        .enabled
        .then(|| start_rtc(&cfg, addr.port(), &state, &store, sm))
        .unzip();
    state.set_running(http::Running {
        store: store.clone(),
        persist: persistence.status.clone(),
        signing_as: cfg.sm.signer.as_ref().map(|s| s.address().to_owned()),
        sync_room,
    });
    tracing::info!("ready");

    let signal = signals.recv().await;
    tracing::info!(signal, "shutting down");
    if let Some(rtc) = &rtc {
        // bye on every relay and @_leave to every peer, so browsers drop us at once.
        let _ = tokio::time::timeout(Duration::from_secs(2), rtc.leave()).await;
    }
    tracing::info!("flushing the journal");
    let _ = stop_http.send(true);
    let flushed = tokio::time::timeout(
        SHUTDOWN_BUDGET,
        tokio::task::spawn_blocking(move || persistence.shutdown()),
    )
    .await;
    match flushed {
        Ok(_) => tracing::info!("journal flushed; bye"),
        Err(_) => tracing::error!("the final flush did not finish in time"),
    }
    let _ = tokio::time::timeout(Duration::from_secs(1), server).await;
    drop(lock);
    // Everything is on disk; freeing a large graph node by node would only delay exit.
    std::mem::forget(store);
    std::mem::forget(state);
    Ok(())
}

/// The state HTTP serves, with the embedded relay started when RELAY is on.
fn app_state(cfg: &Config) -> anyhow::Result<Arc<AppState>> {
    let relays = if cfg.rtc.enabled {
        cfg.rtc.relay_urls.len()
    } else {
        0
    };
    let relay = match cfg.relay.enabled {
        true => Some(
            Relay::with_own_threads(cfg.relay.limits)
                .context("cannot start the embedded relay's threads")?,
        ),
        false => None,
    };
    let state = AppState::new(&cfg.db_name, relays, relay);
    state.console.admin.set_token(&cfg.http.admin_token.0);
    Ok(state)
}

/// The HTTP listener on HOST:PORT.
async fn bind_http(cfg: &Config) -> anyhow::Result<TcpListener> {
    TcpListener::bind((cfg.http.host, cfg.http.port))
        .await
        .with_context(|| {
            format!(
                "cannot bind {}:{} (HOST, PORT)",
                cfg.http.host, cfg.http.port
            )
        })
}

/// Joins the room and runs sync (and the SM_RULES governor) on it.
fn start_rtc(
    cfg: &Config,
    port: u16,
    state: &Arc<AppState>,
    store: &Arc<std::sync::Mutex<crate::store::Store>>,
    sm: SmConfig,
) -> (room::Rtc, http::SyncRoom) {
    let (rtc, events) = room::start(cfg, cfg.http.host, port, state.clone());
    let peers = state.clone();
    // Joins and leaves reach the console (and `/events`) as they happen.
    state.console.push_peers();
    let sync = crate::sync::service::start(
        rtc.room.clone(),
        events,
        store.clone(),
        SyncConfig {
            sm,
            max_value_bytes: cfg.rtc.max_value_bytes,
            forward: cfg.rtc.forward,
            ..SyncConfig::default()
        },
        move |n, change| {
            peers.peers.store(n, Ordering::Relaxed);
            match change {
                PeerChange::Joined { peer, kind } => {
                    peers.console.peer_joined(peer, kind.as_deref(), n)
                }
                PeerChange::Left { peer } => peers.console.peer_left(peer, n),
            }
        },
    );
    if let (Some(signer), false) = (&cfg.sm.signer, cfg.sm.rules.is_empty()) {
        Governor::new(
            cfg.sm.rules.clone(),
            signer.address().to_owned(),
            &cfg.sm.super_admins,
        )
        .start(store.clone(), sync.clone(), sync.sm_stats.clone());
    }
    let sync_room = http::SyncRoom {
        room: rtc.room.clone(),
        room_stats: rtc.room.shared_stats(),
        pool: rtc.pool.clone(),
        sync_stats: sync.stats.clone(),
        sm_stats: sync.sm_stats.clone(),
        presence_peers: rtc.presence_peers.clone(),
    };
    (rtc, sync_room)
}

/// The Security Manager's settings for the sync layer, logged once.
fn sm_config(cfg: &Config) -> SmConfig {
    if let Some(signer) = &cfg.sm.signer {
        let address = signer.address();
        tracing::info!(%address, "SM: signing as {address}");
    }
    if cfg.sm.strict && !cfg.sm.enabled {
        tracing::warn!("SM_STRICT has no effect without SM_ENABLED=true");
    }
    if cfg.sm.enabled {
        tracing::info!(
            super_admins = cfg.sm.super_admins.len(),
            strict = cfg.sm.strict,
            "SM: verifying signed ops as browsers do"
        );
    }
    SmConfig {
        verify: cfg
            .sm
            .enabled
            .then(|| Policy::new(cfg.sm.super_admins.clone(), cfg.sm.strict)),
        signer: cfg.sm.signer.clone(),
    }
}

async fn serve(
    listener: TcpListener,
    state: Arc<AppState>,
    limits: http::serve::HttpLimits,
    stopped: watch::Receiver<bool>,
) {
    let stats = state.http.clone();
    http::serve::serve(listener, http::router(state), stats, limits, stopped).await;
}

struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> anyhow::Result<Self> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Self {
            term: signal(SignalKind::terminate()).context("cannot listen for SIGTERM")?,
            int: signal(SignalKind::interrupt()).context("cannot listen for SIGINT")?,
        })
    }

    async fn recv(&mut self) -> &'static str {
        tokio::select! {
            _ = self.term.recv() => "SIGTERM",
            _ = self.int.recv() => "SIGINT",
        }
    }
}

/// The start-up configuration. Nothing here is secret.
fn log_config(cfg: &Config) {
    tracing::info!(
        version = http::VERSION,
        db_name = %cfg.db_name,
        room = %cfg.sync_room(),
        data_dir = %cfg.storage.data_dir.display(),
        database = cfg.storage.database.as_ref().map(|t| t.redacted()),
        host = %cfg.http.host,
        port = cfg.http.port,
        rtc_enabled = cfg.rtc.enabled,
        relay = cfg.relay.enabled,
        room_presence = cfg.rtc.room_presence,
        cell_size = cfg.rtc.cells,
        forward_ms = cfg.rtc.forward.map(|d| d.as_millis() as u64),
        relay_max_connections = cfg.relay.limits.max_connections,
        relay_max_per_ip = cfg.relay.limits.max_per_ip,
        relay_max_message_bytes = cfg.relay.limits.max_message_bytes,
        relay_events_per_sec = cfg.relay.limits.events_per_sec,
        relay_event_burst = cfg.relay.limits.event_burst,
        relay_max_subs = cfg.relay.limits.max_subscriptions,
        relay_messages_per_sec = cfg.relay.limits.messages_per_sec,
        relay_queue_bytes = cfg.relay.limits.queue_bytes,
        relay_memory_bytes = cfg.relay.limits.memory_bytes,
        relay_max_filter_bytes = cfg.relay.limits.max_filter_bytes,
        http_max_connections = cfg.http.limits.max_connections,
        http_header_timeout_secs = cfg.http.limits.header_timeout.as_secs(),
        max_peers = cfg.rtc.peer_limits.max_peers,
        peer_msg_rate = cfg.rtc.peer_limits.msg_rate,
        peer_msg_burst = cfg.rtc.peer_limits.msg_burst,
        peer_bytes_rate = cfg.rtc.peer_limits.bytes_rate,
        peer_bytes_burst = cfg.rtc.peer_limits.bytes_burst,
        max_message_bytes = cfg.rtc.max_message_bytes,
        max_value_bytes = cfg.rtc.max_value_bytes,
        relays = %crate::redact::urls(&cfg.rtc.relay_urls).join(","),
        password_set = !cfg.rtc.password.0.is_empty(),
        stun = %crate::redact::urls(&cfg.rtc.ice.stun).join(","),
        turn = %crate::redact::urls(&cfg.rtc.ice.turn).join(","),
        turn_credentials_set = !cfg.rtc.ice.turn_username.is_empty(),
        sm_enabled = cfg.sm.enabled,
        super_admins = %cfg.sm.super_admins.join(","),
        sm_strict = cfg.sm.strict,
        sm_key_set = cfg.sm.signer.is_some(),
        sm_rules = cfg.sm.rules.len(),
        flush_ms = cfg.storage.flush_every.as_millis() as u64,
        oplog_size = cfg.storage.oplog_size,
        compact_bytes = cfg.storage.compact_bytes,
        "starting genosdb-fallback"
    );
}
