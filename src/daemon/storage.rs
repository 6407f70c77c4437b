//! Opens the store DATABASE_URL or DATA_DIR names, for the daemon and the tools alike:
//! the only place that chooses a backend. A further backend is one more arm here.

use crate::config::Config;
use crate::persist::files::{self, DirLock, FilesBackend};
use crate::persist::pg::{self, PgBackend};
use crate::persist::{Backend, Loaded, Persistence, StoreError, unix_ms};
use crate::store::Store;
use anyhow::Context;
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// A store as opened, before its flusher starts.
pub struct Opened {
    pub backend: Box<dyn Backend>,
    /// What the store held; an error when it cannot be read yet (Postgres not
    /// reachable): the daemon then serves from memory, degraded, until it can.
    pub loaded: Result<Loaded, StoreError>,
    /// The seq of the next journal record.
    pub next_seq: u64,
    /// DATA_DIR's lock, held while the store is open (files only).
    pub lock: Option<DirLock>,
}

/// Opens the store for writing. A file store that cannot be read fully is an error;
/// Postgres that cannot be read is kept in [`Opened::loaded`].
pub fn open(cfg: &Config) -> anyhow::Result<Opened> {
    let persist = cfg.persist();
    match &cfg.storage.database {
        None => {
            let (lock, loaded, writer) =
                files::open_for_daemon(&persist.layout, cfg.storage.oplog_size)
                    .context("cannot open the store")?;
            Ok(Opened {
                next_seq: writer.next_seq(),
                backend: Box::new(FilesBackend::new(&persist, writer)),
                loaded: Ok(loaded),
                lock: Some(lock),
            })
        }
        Some(target) => {
            let mut backend = PgBackend::new(target.clone(), &persist);
            let loaded = backend.load_now();
            Ok(Opened {
                next_seq: loaded.as_ref().map_or(0, |l| l.next_seq),
                backend: Box::new(backend),
                loaded,
                lock: None,
            })
        }
    }
}

/// Opens the store for the daemon: only a failure that waiting may cure (Postgres not
/// reachable) lets it start; stored rows that do not decode are reported and left
/// untouched, as files are (see docs/OPERATIONS.md).
pub fn open_for_daemon(cfg: &Config) -> anyhow::Result<Opened> {
    let opened = open(cfg)?;
    if let Err(e) = &opened.loaded
        && !e.is_transient()
    {
        return Err(anyhow::anyhow!("{e}").context("cannot open the store"));
    }
    Ok(opened)
}

/// Reads the whole store without its lock (export, backup): from DATA_DIR the read
/// retries until it sees one consistent state; from Postgres it is one transaction.
pub fn read(cfg: &Config) -> anyhow::Result<Loaded> {
    match &cfg.storage.database {
        Some(target) => pg::load_readonly(target, &cfg.db_name, cfg.storage.oplog_size)
            .context("cannot read the store from postgres"),
        None => files::load_consistent(&cfg.layout(), cfg.storage.oplog_size)
            .context("cannot read the store"),
    }
}

/// A running store: the graph, its flusher, and DATA_DIR's lock (files only).
pub struct Started {
    pub store: Arc<Mutex<Store>>,
    pub persistence: Persistence,
    pub lock: Option<DirLock>,
}

impl Opened {
    /// Starts the flusher on what was loaded (or on an empty store, degraded, when
    /// nothing could be loaded yet), logging what was found.
    pub fn start(self, cfg: &Config, started: Instant) -> anyhow::Result<Started> {
        let storage = self.backend.name();
        let (mut store, error) = match self.loaded {
            Ok(loaded) => {
                log_loaded(cfg, storage, &loaded, started);
                (loaded.store, None)
            }
            Err(e) => {
                tracing::error!(
                    error = %e,
                    "cannot load the store from {storage}; serving from memory (degraded) and retrying; nothing is written until it is loaded and merged"
                );
                (Store::new(cfg.storage.oplog_size), Some(e))
            }
        };
        store.start_clock(unix_ms());
        let store = Arc::new(Mutex::new(store));
        let persistence =
            Persistence::start_with(cfg.persist(), store.clone(), self.backend, self.next_seq)?;
        if let Some(e) = &error {
            persistence.status.failed(e);
        }
        Ok(Started {
            store,
            persistence,
            lock: self.lock,
        })
    }
}

fn log_loaded(cfg: &Config, storage: &str, loaded: &Loaded, started: Instant) {
    tracing::info!(
        storage,
        dir = %cfg.storage.data_dir.display(),
        database = cfg.storage.database.as_ref().map(|t| t.redacted()),
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
}
