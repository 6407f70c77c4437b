//! Wires the layers together: HTTP first, then the store and its persistence, then
//! waiting for SIGTERM/SIGINT, then a clean flush.

use crate::config::Config;
use crate::http::{self, AppState};
use crate::persist::files::{self, StoreError};
use crate::persist::pg::PgBackend;
use crate::persist::{Persistence, unix_ms};
use crate::relay::Relay;
use crate::sm::SmConfig;
use crate::sm::policy::Policy;
use crate::store::Store;
use crate::sync::SyncConfig;
use crate::sync::governor::Governor;
use anyhow::Context;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio::sync::watch;

/// Heroku sends SIGKILL 30 s after SIGTERM; we promise to be gone within 10 s.
const SHUTDOWN_BUDGET: Duration = Duration::from_secs(8);

pub async fn run(cfg: Config) -> anyhow::Result<()> {
    // Listen before anything else: a SIGTERM during start-up must not kill us mid-write.
    let mut signals = Signals::install()?;
    log_config(&cfg);
    let relays = if cfg.rtc_enabled {
        cfg.relay_urls.len()
    } else {
        0
    };
    let relay = match cfg.relay {
        true => Some(
            Relay::with_own_threads(cfg.relay_limits)
                .context("cannot start the embedded relay's threads")?,
        ),
        false => None,
    };
    let state = AppState::new(&cfg.db_name, relays, relay);
    state.console.admin.set_token(&cfg.admin_token.0);

    let listener = TcpListener::bind((cfg.host, cfg.port))
        .await
        .with_context(|| format!("cannot bind {}:{} (HOST, PORT)", cfg.host, cfg.port))?;
    let addr = listener.local_addr()?;
    tracing::info!(%addr, relay = cfg.relay, "listening for /health and /metrics");
    let (stop_http, stopped) = watch::channel(false);
    let server = tokio::spawn(serve(listener, state.clone(), cfg.http_limits, stopped));

    let started = Instant::now();
    let opening = tokio::task::spawn_blocking({
        let cfg = cfg.clone();
        move || open_store(&cfg)
    });
    // Loading writes nothing that is not atomic, so a signal may cut it short.
    let opened = tokio::select! {
        opened = opening => opened??,
        signal = signals.recv() => {
            tracing::info!(signal, "stopped while loading the store");
            return Ok(());
        }
    };
    let (store, persistence, lock) = opened.start(&cfg, started)?;
    state.ready(store.clone(), persistence.status.clone());
    let sm = sm_config(&cfg, &state);
    let rtc = cfg.rtc_enabled.then(|| {
        let (rtc, events) =
            crate::rtc::daemon_room::start(&cfg, cfg.host, addr.port(), state.clone());
        let peers = state.clone();
        let sync = crate::sync::service::start(
            rtc.room.clone(),
            events,
            store.clone(),
            SyncConfig {
                sm,
                max_value_bytes: cfg.max_value_bytes,
                forward: cfg.forward,
                ..SyncConfig::default()
            },
            move |n, _| peers.peers.store(n, Ordering::Relaxed),
        );
        state.set_sync_stats(sync.stats.clone());
        state.set_sm_stats(sync.sm_stats.clone());
        if let (Some(signer), false) = (&cfg.sm_signer, cfg.sm_rules.is_empty()) {
            Governor::new(
                cfg.sm_rules.clone(),
                signer.address().to_owned(),
                &cfg.super_admins,
            )
            .start(store.clone(), sync.clone(), sync.sm_stats.clone());
        }
        rtc
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

/// The store as opened, before its flusher starts.
enum Opened {
    Files(files::DirLock, files::Loaded, files::JournalWriter),
    /// Postgres, loaded, or not reachable yet (then the error, and an empty store).
    Postgres(Box<PgBackend>, Result<files::Loaded, StoreError>),
}

/// Opens the store DATABASE_URL or DATA_DIR names. Postgres that cannot be read is not
/// an error: the daemon then serves from memory, degraded, until it can (see docs/OPERATIONS.md).
fn open_store(cfg: &Config) -> anyhow::Result<Opened> {
    match &cfg.database {
        None => {
            let (lock, loaded, writer) = files::open_for_daemon(&cfg.layout(), cfg.oplog_size)
                .context("cannot open the store")?;
            Ok(Opened::Files(lock, loaded, writer))
        }
        Some(target) => {
            let mut backend = PgBackend::new(target.clone(), &cfg.persist());
            let loaded = backend.load_now();
            if let Err(StoreError::Postgres(e)) = &loaded
                && !e.is_transient()
            {
                // Rows that do not decode are reported and left untouched, as files are.
                return Err(anyhow::anyhow!("{e}").context("cannot open the store"));
            }
            Ok(Opened::Postgres(Box::new(backend), loaded))
        }
    }
}

impl Opened {
    fn start(
        self,
        cfg: &Config,
        started: Instant,
    ) -> anyhow::Result<(Arc<Mutex<Store>>, Persistence, Option<files::DirLock>)> {
        let (loaded, lock, backend, pg_error) = match self {
            Opened::Files(lock, loaded, writer) => (Some(loaded), Some(lock), Err(writer), None),
            Opened::Postgres(backend, Ok(loaded)) => (Some(loaded), None, Ok(backend), None),
            Opened::Postgres(backend, Err(e)) => (None, None, Ok(backend), Some(e)),
        };
        let storage = if cfg.database.is_some() {
            "postgres"
        } else {
            "files"
        };
        let (mut store, next_seq) = match loaded {
            Some(loaded) => {
                tracing::info!(
                    storage,
                    dir = %cfg.data_dir.display(),
                    database = cfg.database.as_ref().map(|t| t.redacted()),
                    nodes = loaded.store.len(),
                    oplog = loaded.store.oplog().len(),
                    snapshot_bytes = loaded.snapshot_bytes,
                    journal_records = loaded.journal_records,
                    torn_bytes = loaded.torn_bytes,
                    took_ms = started.elapsed().as_millis() as u64,
                    "store loaded"
                );
                if loaded.torn_bytes > 0 {
                    tracing::warn!(
                        torn_bytes = loaded.torn_bytes,
                        "ignored a journal record torn by an earlier crash"
                    );
                }
                (loaded.store, loaded.next_seq)
            }
            None => {
                tracing::error!(
                    error = %pg_error.as_ref().map(|e| e.to_string()).unwrap_or_default(),
                    "cannot load the store from postgres; serving from memory (degraded) and retrying; nothing is written until it is loaded and merged"
                );
                (Store::new(cfg.oplog_size), 0)
            }
        };
        store.start_clock(unix_ms());
        let store = Arc::new(Mutex::new(store));
        let persistence = match backend {
            Err(writer) => Persistence::start(cfg.persist(), store.clone(), writer)?,
            Ok(backend) => Persistence::start_with(
                cfg.persist(),
                store.clone(),
                backend,
                next_seq,
                "postgres",
            )?,
        };
        if let Some(e) = &pg_error {
            persistence.status.failed(e);
        }
        Ok((store, persistence, lock))
    }
}

/// The Security Manager's settings for the sync layer, logged once.
fn sm_config(cfg: &Config, state: &AppState) -> SmConfig {
    if let Some(signer) = &cfg.sm_signer {
        let address = signer.address();
        tracing::info!(%address, "SM: signing as {address}");
        let _ = state.signing_as.set(address.to_owned());
    }
    if cfg.sm_strict && !cfg.sm_enabled {
        tracing::warn!("SM_STRICT has no effect without SM_ENABLED=true");
    }
    if cfg.sm_enabled {
        tracing::info!(
            super_admins = cfg.super_admins.len(),
            strict = cfg.sm_strict,
            "SM: verifying signed ops as browsers do"
        );
    }
    SmConfig {
        verify: cfg
            .sm_enabled
            .then(|| Policy::new(cfg.super_admins.clone(), cfg.sm_strict)),
        signer: cfg.sm_signer.clone(),
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
        data_dir = %cfg.data_dir.display(),
        database = cfg.database.as_ref().map(|t| t.redacted()),
        host = %cfg.host,
        port = cfg.port,
        rtc_enabled = cfg.rtc_enabled,
        relay = cfg.relay,
        room_presence = cfg.room_presence,
        cell_size = cfg.cells,
        forward_ms = cfg.forward.map(|d| d.as_millis() as u64),
        relay_max_connections = cfg.relay_limits.max_connections,
        relay_max_per_ip = cfg.relay_limits.max_per_ip,
        relay_max_message_bytes = cfg.relay_limits.max_message_bytes,
        relay_events_per_sec = cfg.relay_limits.events_per_sec,
        relay_event_burst = cfg.relay_limits.event_burst,
        relay_max_subs = cfg.relay_limits.max_subscriptions,
        relay_messages_per_sec = cfg.relay_limits.messages_per_sec,
        relay_queue_bytes = cfg.relay_limits.queue_bytes,
        relay_memory_bytes = cfg.relay_limits.memory_bytes,
        relay_max_filter_bytes = cfg.relay_limits.max_filter_bytes,
        http_max_connections = cfg.http_limits.max_connections,
        http_header_timeout_secs = cfg.http_limits.header_timeout.as_secs(),
        max_peers = cfg.peer_limits.max_peers,
        peer_msg_rate = cfg.peer_limits.msg_rate,
        peer_msg_burst = cfg.peer_limits.msg_burst,
        peer_bytes_rate = cfg.peer_limits.bytes_rate,
        peer_bytes_burst = cfg.peer_limits.bytes_burst,
        max_message_bytes = cfg.max_message_bytes,
        max_value_bytes = cfg.max_value_bytes,
        relays = %crate::redact::urls(&cfg.relay_urls).join(","),
        password_set = !cfg.password.0.is_empty(),
        stun = %crate::redact::urls(&cfg.ice.stun).join(","),
        turn = %crate::redact::urls(&cfg.ice.turn).join(","),
        turn_credentials_set = !cfg.ice.turn_username.is_empty(),
        sm_enabled = cfg.sm_enabled,
        super_admins = %cfg.super_admins.join(","),
        sm_strict = cfg.sm_strict,
        sm_key_set = cfg.sm_signer.is_some(),
        sm_rules = cfg.sm_rules.len(),
        flush_ms = cfg.flush_every.as_millis() as u64,
        oplog_size = cfg.oplog_size,
        compact_bytes = cfg.compact_bytes,
        "starting genosdb-fallback"
    );
}
