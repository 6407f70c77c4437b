//! The flusher's Postgres backend: appends this daemon's group commits, tails what
//! the other daemons on the same DB_NAME commit, and compacts when its turn comes.

use super::client::{PgClient, Tail};
use super::target::PgTarget;
use super::{PgError, RETAIN, writer_id};
use crate::persist::codec;
use crate::persist::compactor::{Compactor, Reaped};
use crate::persist::error::{Loaded, StoreError};
use crate::persist::{Backend, PersistConfig, PersistStatus, Remote};
use crate::rate::Backoff;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, sync_channel};
use std::time::{Duration, Instant};

const BACKOFF_MIN: Duration = Duration::from_millis(250);
const BACKOFF_MAX: Duration = Duration::from_secs(10);
/// An idle session is checked this often, so that an unreachable database shows as
/// degraded without writes.
const HEARTBEAT: Duration = Duration::from_secs(10);
/// The other daemons' rows are read this often (or every FLUSH_MS, when longer).
const TAIL_EVERY: Duration = Duration::from_millis(250);

/// While the database does not answer, every call fails at once until the next retry
/// is due (backoff from 250 ms doubling to 10 s), and the flusher keeps the records
/// queued.
pub struct PgBackend {
    target: PgTarget,
    db: String,
    writer: String,
    oplog_size: usize,
    compact_bytes: u64,
    retain: Duration,
    tail_every: Duration,
    client: Option<PgClient>,
    /// Memory holds what the database holds; until then nothing is written.
    loaded: bool,
    /// The thread reading the other daemons' rows, on its own connection, so that
    /// reading never delays this daemon's own group commits.
    tailer: Option<Tailer>,
    backoff: Backoff,
    next_try: Option<Instant>,
    last_error: String,
    journal_bytes: u64,
    compactor: Compactor,
    /// The last time the session answered.
    last_answer: Instant,
}

impl PgBackend {
    pub fn new(target: PgTarget, cfg: &PersistConfig) -> Self {
        Self {
            target,
            db: cfg.layout.db.clone(),
            writer: writer_id(),
            oplog_size: cfg.oplog_size,
            compact_bytes: cfg.compact_bytes,
            retain: RETAIN,
            tail_every: TAIL_EVERY.max(cfg.flush_every),
            client: None,
            loaded: false,
            tailer: None,
            backoff: Backoff::new(BACKOFF_MIN, BACKOFF_MAX),
            next_try: None,
            last_error: String::new(),
            journal_bytes: 0,
            compactor: Compactor::new("pg-compactor"),
            last_answer: Instant::now(),
        }
    }

    /// How long folded rows stay ([`RETAIN`]); shorter in tests, to see them go.
    pub fn set_retain(&mut self, retain: Duration) {
        self.retain = retain;
    }

    /// The name this process's journal rows carry.
    pub fn writer(&self) -> &str {
        &self.writer
    }

    /// The session, opened (connect, migrate) when needed.
    fn client(&mut self) -> Result<&mut PgClient, PgError> {
        if self.client.as_ref().is_some_and(PgClient::is_closed) {
            tracing::warn!(database = %self.target.redacted(), "postgres connection lost; reconnecting");
            self.client = None;
        }
        if self.client.is_none() {
            if let Some(at) = self.next_try
                && let Some(left) = at.checked_duration_since(Instant::now())
            {
                return Err(PgError::Waiting {
                    target: self.target.redacted().to_owned(),
                    detail: self.last_error.clone(),
                    retry_ms: left.as_millis() as u64,
                });
            }
            match super::open_session(&self.target) {
                Ok(c) => {
                    if self.next_try.is_some() {
                        tracing::info!(database = %self.target.redacted(), "postgres reachable again");
                    }
                    self.next_try = None;
                    self.backoff.reset();
                    self.client = Some(c);
                }
                Err(e) => {
                    self.failed(&e);
                    return Err(e);
                }
            }
        }
        match self.client.as_mut() {
            Some(c) => Ok(c),
            None => Err(PgError::Setup("no connection".into())),
        }
    }

    /// Drops the session after a failure and schedules the next try.
    fn failed(&mut self, e: &PgError) {
        self.client = None;
        self.last_error = e.to_string();
        self.next_try = Some(Instant::now() + self.backoff.next_delay());
    }

    fn with_client<T>(
        &mut self,
        f: impl FnOnce(&mut PgClient, &str, &str) -> Result<T, PgError>,
    ) -> Result<T, StoreError> {
        let db = self.db.clone();
        let writer = self.writer.clone();
        let result = self.client().and_then(|c| f(c, &db, &writer));
        match &result {
            Ok(_) => self.last_answer = Instant::now(),
            Err(e) if self.client.is_some() => self.failed(e),
            Err(_) => {}
        }
        result.map_err(StoreError::from)
    }

    /// Loads `db` now; on success the backend writes from then on.
    pub fn load_now(&mut self) -> Result<Loaded, StoreError> {
        let oplog_size = self.oplog_size;
        let (loaded, tail, journal_bytes) = self.with_client(|c, db, _| c.load(db, oplog_size))?;
        self.loaded = true;
        self.journal_bytes = journal_bytes;
        if let Some(t) = self.tailer.take() {
            t.stop.store(true, Ordering::Relaxed);
        }
        self.tailer = Tailer::start(
            self.target.clone(),
            self.db.clone(),
            self.writer.clone(),
            self.oplog_size,
            self.tail_every,
            self.retain,
            tail,
        );
        Ok(loaded)
    }

    fn reap_compactor(&mut self, status: &PersistStatus) {
        match self.compactor.reap(status) {
            None | Some(Reaped::Nothing) => {}
            Some(Reaped::Compacted(r)) => tracing::info!(
                rows = r.segments,
                nodes = r.nodes,
                snapshot_bytes = r.snapshot_bytes,
                took_ms = r.took.as_millis() as u64,
                "compacted the postgres journal into a new snapshot"
            ),
            Some(Reaped::Failed(e)) => {
                self.journal_bytes = self.journal_bytes.max(self.compact_bytes);
                tracing::error!(error = %e, "postgres compaction failed; the journal rows are kept");
            }
            Some(Reaped::Panicked) => {
                tracing::error!("the compactor thread panicked; the journal rows are kept")
            }
        }
    }
}

impl Backend for PgBackend {
    fn name(&self) -> &'static str {
        "postgres"
    }

    fn needs_load(&self) -> bool {
        !self.loaded
    }

    fn load(&mut self, _oplog_size: usize) -> Result<Loaded, StoreError> {
        self.load_now()
    }

    fn append(&mut self, first_seq: u64, bytes: &[u8], records: u64) -> Result<(), StoreError> {
        self.with_client(|c, db, writer| c.append(db, writer, first_seq, bytes, records))?;
        self.journal_bytes += bytes.len() as u64;
        Ok(())
    }

    /// Writes the graph memory holds, merged with everything stored (other daemons
    /// may have written meanwhile), as the new snapshot; waits for the compaction lock.
    fn rewrite(
        &mut self,
        snapshot: &[u8],
        _next_seq: u64,
        _nodes: usize,
    ) -> Result<(), StoreError> {
        let memory = codec::decode_snapshot(snapshot, self.oplog_size)
            .map_err(|e| PgError::Setup(format!("the graph from memory does not decode: {e}")))?
            .store;
        let (oplog_size, retain) = (self.oplog_size, self.retain);
        self.with_client(|c, db, _| c.compact(db, oplog_size, Some(&memory), true, retain))?;
        self.journal_bytes = 0;
        Ok(())
    }

    fn poll(&mut self, _status: &PersistStatus) -> Option<Remote> {
        self.tailer.as_ref()?.rx.try_recv().ok()
    }

    fn maintain(&mut self, _next_seq: u64, idle: bool, status: &PersistStatus) {
        self.reap_compactor(status);
        // Without writes nothing else would notice the database going or coming back.
        if idle && (self.client.is_none() || self.last_answer.elapsed() >= HEARTBEAT) {
            let was_down = self.client.is_none();
            match self.with_client(|c, _, _| c.ping()) {
                Ok(()) if was_down || status.degraded() => {
                    if status.degraded() {
                        tracing::info!("postgres answers again; nothing was waiting");
                    }
                    status.recovered();
                }
                Ok(()) => {}
                Err(e) => {
                    if !status.degraded() {
                        tracing::error!(error = %e, "postgres does not answer; retrying");
                    }
                    status.failed(&e);
                }
            }
        }
        let due = self.journal_bytes >= self.compact_bytes && self.compactor.may_start();
        if !due {
            return;
        }
        let target = self.target.clone();
        let db = self.db.clone();
        let (oplog_size, retain) = (self.oplog_size, self.retain);
        let started = self.compactor.start(move |_| {
            let mut c = PgClient::connect(&target)?;
            Ok(c.compact(&db, oplog_size, None, false, retain)?)
        });
        if started {
            self.journal_bytes = 0;
        }
    }

    /// A compaction still running is left to finish on its own: it writes only what
    /// is already stored, in one transaction, which rolls back if the process exits.
    fn stop(&mut self) {
        self.compactor.detach();
        if let Some(t) = self.tailer.take() {
            t.stop.store(true, Ordering::Relaxed);
        }
    }
}

/// Reads what the other daemons commit, every `every`, and hands it to the flusher.
struct Tailer {
    rx: Receiver<Remote>,
    stop: Arc<AtomicBool>,
}

impl Tailer {
    #[allow(clippy::too_many_arguments)]
    fn start(
        target: PgTarget,
        db: String,
        writer: String,
        oplog_size: usize,
        every: Duration,
        retain: Duration,
        mut tail: Tail,
    ) -> Option<Self> {
        let (tx, rx) = sync_channel(16);
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let run = move || {
            let mut client: Option<PgClient> = None;
            let mut tailed_at = Instant::now();
            let mut backoff = Backoff::new(BACKOFF_MIN, BACKOFF_MAX);
            while !stopped.load(Ordering::Relaxed) {
                std::thread::sleep(every);
                if client.as_ref().is_none_or(PgClient::is_closed) {
                    match PgClient::connect(&target) {
                        Ok(c) => {
                            client = Some(c);
                            backoff.reset();
                        }
                        Err(e) => {
                            tracing::debug!(error = %e, "tail: postgres unreachable; retrying");
                            std::thread::sleep(backoff.next_delay());
                            continue;
                        }
                    }
                }
                let Some(c) = client.as_mut() else { continue };
                let since = tailed_at.elapsed();
                // Folded rows go after `retain`: a tail that stalled for a third of it
                // may have missed some, so it reads everything again instead.
                let got = if since > retain / 3 {
                    c.load(&db, oplog_size).map(|(loaded, next, _)| {
                        tracing::info!(
                            stalled_ms = since.as_millis() as u64,
                            nodes = loaded.store.len(),
                            "read the whole postgres store again after the tail stalled"
                        );
                        (Some(Remote::Whole(Box::new(loaded.store))), next)
                    })
                } else {
                    c.tail(&db, &writer, &tail).map(|(effects, next)| {
                        (
                            (!effects.is_empty()).then_some(Remote::Effects(effects)),
                            next,
                        )
                    })
                };
                match got {
                    Ok((remote, next)) => {
                        tail = next;
                        tailed_at = Instant::now();
                        if let Some(r) = remote
                            && tx.send(r).is_err()
                        {
                            return;
                        }
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, "reading the other daemons' rows failed; retrying");
                        client = None;
                    }
                }
            }
        };
        match std::thread::Builder::new()
            .name("pg-tail".into())
            .spawn(run)
        {
            Ok(_) => Some(Self { rx, stop }),
            Err(e) => {
                tracing::error!(error = %e, "could not start the postgres tail thread");
                None
            }
        }
    }
}
