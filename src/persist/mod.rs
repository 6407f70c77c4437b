//! Persistence: effects are journaled, group-committed every FLUSH_MS, and folded into
//! snapshots in the background. The cost of persisting one op does not grow with the
//! graph: it is one appended record.
//!
//! Where the records go is a [`Backend`]: DATA_DIR files ([`files::FilesBackend`], the
//! default) or Postgres ([`pg::PgBackend`], when DATABASE_URL is set). The flusher
//! thread, its group commit, its bounded queue and its degraded mode are shared.

pub mod codec;
pub mod compactor;
pub mod error;
pub mod files;
mod merge;
mod metrics;
pub mod pg;
#[cfg(test)]
mod sync_tests;
mod syncer;

pub use error::{CompactReport, Loaded, StoreError};
pub use merge::{merge_effect, merge_into};

use crate::store::{Effect, EffectSink, Store};
use files::{JournalWriter, Layout};
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Journal bytes kept in memory while the disk refuses them. Past this the records are
/// dropped and the whole graph, which memory still holds, is written as one snapshot
/// once the disk is back: memory stays bounded and nothing is lost.
pub const MAX_UNWRITTEN_BYTES: usize = 256 << 20;
const SNAPSHOT_RETRY: Duration = Duration::from_secs(5);
const ERROR_LOG_EVERY: Duration = Duration::from_secs(10);

pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Records encoded by the merge path, waiting for the flusher.
#[derive(Default)]
struct Buffer {
    bytes: Vec<u8>,
    records: u64,
    overflowed: bool,
}

/// The store's effect sink: frames each effect into the shared buffer.
#[derive(Clone)]
pub struct PendingJournal {
    buf: Arc<Mutex<Buffer>>,
    max_bytes: usize,
}

impl EffectSink for PendingJournal {
    fn record(&mut self, effect: &Effect) {
        let mut buf = self.buf.lock().unwrap_or_else(|p| p.into_inner());
        if buf.overflowed {
            return;
        }
        if let Err(e) = codec::encode_record(effect, &mut buf.bytes) {
            // The reader would refuse this record, so it is never written: memory holds
            // the effect, and the whole graph is written as one snapshot instead.
            tracing::warn!(
                bytes = e.len,
                limit = codec::MAX_RECORD_LEN,
                "an effect is too large for one journal record; the graph will be written whole as a snapshot"
            );
            buf.bytes = Vec::new();
            buf.records = 0;
            buf.overflowed = true;
            return;
        }
        buf.records += 1;
        if buf.bytes.len() > self.max_bytes {
            buf.bytes = Vec::new();
            buf.records = 0;
            buf.overflowed = true;
        }
    }
}

impl PendingJournal {
    fn new(max_bytes: usize) -> Self {
        Self {
            buf: Arc::default(),
            max_bytes,
        }
    }

    fn take(&self) -> Buffer {
        std::mem::take(&mut *self.buf.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

/// What /health and /metrics read about persistence.
pub struct PersistStatus {
    degraded: AtomicBool,
    last_flush_ms: AtomicU64,
    last_error: Mutex<Option<String>>,
    pub bytes_persisted: AtomicU64,
    pub records_persisted: AtomicU64,
    pub flush_failures: AtomicU64,
    pub compactions: AtomicU64,
    pub flush_seconds: Histogram,
    /// Journal bytes and records merged but not yet written (the bounded queue).
    pub unwritten_bytes: AtomicU64,
    pub unwritten_records: AtomicU64,
    /// Records dropped from the full queue; the graph is then written whole from memory.
    pub dropped_records: AtomicU64,
    /// "files" or "postgres".
    pub backend: &'static str,
}

impl Default for PersistStatus {
    fn default() -> Self {
        Self {
            degraded: AtomicBool::new(false),
            last_flush_ms: AtomicU64::new(0),
            last_error: Mutex::new(None),
            bytes_persisted: AtomicU64::new(0),
            records_persisted: AtomicU64::new(0),
            flush_failures: AtomicU64::new(0),
            compactions: AtomicU64::new(0),
            // 50 µs .. ~1.6 s
            flush_seconds: Histogram::new(exponential_buckets(0.000_05, 2.0, 16)),
            unwritten_bytes: AtomicU64::new(0),
            unwritten_records: AtomicU64::new(0),
            dropped_records: AtomicU64::new(0),
            backend: "files",
        }
    }
}

impl PersistStatus {
    pub fn degraded(&self) -> bool {
        self.degraded.load(Ordering::Relaxed)
    }

    pub fn last_flush_ms(&self) -> Option<u64> {
        match self.last_flush_ms.load(Ordering::Relaxed) {
            0 => None,
            ms => Some(ms),
        }
    }

    pub fn last_error(&self) -> Option<String> {
        self.last_error.lock().ok().and_then(|e| e.clone())
    }

    fn ok(&self) {
        self.degraded.store(false, Ordering::Relaxed);
        self.last_flush_ms.store(unix_ms(), Ordering::Relaxed);
        if let Ok(mut e) = self.last_error.lock() {
            *e = None;
        }
    }

    /// The storage answers again and nothing waits to be written: no longer degraded.
    /// Unlike a write, this leaves `last_flush` as it is.
    pub fn recovered(&self) {
        self.degraded.store(false, Ordering::Relaxed);
        if let Ok(mut e) = self.last_error.lock() {
            *e = None;
        }
    }

    /// Marks persistence failing with `err` (shown in /health as `error`).
    pub fn failed(&self, err: &StoreError) {
        self.degraded.store(true, Ordering::Relaxed);
        self.flush_failures.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut e) = self.last_error.lock() {
            *e = Some(err.to_string());
        }
    }
}

/// Where the flusher writes. Every call comes from the flusher thread; a backend may
/// run its own background work (compaction) between calls.
pub trait Backend: Send {
    /// What /health and /metrics call it: "files", "postgres".
    fn name(&self) -> &'static str;

    /// True while the store in memory does not yet hold what the backend holds: the
    /// daemon started without reading it (Postgres unreachable). Nothing is written then.
    fn needs_load(&self) -> bool {
        false
    }

    /// Reads everything the backend holds; called while [`Backend::needs_load`] is true.
    /// May refuse at once while a retry is not due yet.
    fn load(&mut self, _oplog_size: usize) -> Result<Loaded, StoreError> {
        Err(StoreError::Unstable)
    }

    /// Appends framed records whose seqs start at `first_seq`. When this returns they
    /// survive the process's death; a backend may make them survive the machine's a
    /// little later (see [`Backend::take_sync_failure`]).
    fn append(&mut self, first_seq: u64, bytes: &[u8], records: u64) -> Result<(), StoreError>;

    /// Records that an append reported written could not be made durable after it
    /// (a failed fdatasync). The flusher then writes the whole graph from memory.
    fn take_sync_failure(&mut self) -> Option<StoreError> {
        None
    }

    /// Replaces everything stored with one snapshot (of `nodes` nodes) covering seqs
    /// below `next_seq`.
    fn rewrite(&mut self, snapshot: &[u8], next_seq: u64, nodes: usize) -> Result<(), StoreError>;

    /// Runs after each flush: journal rotation, background compaction, and checking
    /// that the storage still answers. `idle` is true when nothing waits to be written.
    fn maintain(&mut self, next_seq: u64, idle: bool, status: &PersistStatus);

    /// What other writers of the same store added since the last call (several
    /// daemons on one Postgres database); merged into memory by the merge rules.
    fn poll(&mut self, _status: &PersistStatus) -> Option<Remote> {
        None
    }

    /// Cancels and waits for background work; nothing is written after this returns.
    fn stop(&mut self);
}

/// What another writer of the same store added: records to merge one by one, or, when
/// the backend lost track of them, everything it holds, to merge as a full state.
pub enum Remote {
    Effects(Vec<Effect>),
    Whole(Box<Store>),
}

#[derive(Clone, Debug)]
pub struct PersistConfig {
    pub layout: Layout,
    pub oplog_size: usize,
    pub flush_every: Duration,
    /// Seal the live journal for compaction once it grows past this.
    pub compact_bytes: u64,
    /// Journal bytes kept while the disk refuses them ([`MAX_UNWRITTEN_BYTES`]).
    pub max_unwritten_bytes: usize,
}

/// The flusher thread's state.
struct Flusher {
    cfg: PersistConfig,
    store: Arc<Mutex<Store>>,
    pending: PendingJournal,
    backend: Box<dyn Backend>,
    next_seq: u64,
    unwritten: Vec<u8>,
    unwritten_records: u64,
    need_snapshot: bool,
    last_snapshot_try: Option<Instant>,
    last_error_log: Option<Instant>,
    status: Arc<PersistStatus>,
}

/// Handle to the running flusher. Dropping it without [`Persistence::shutdown`] leaves
/// the last FLUSH_MS of records unwritten, exactly as a crash would.
pub struct Persistence {
    stop: Sender<()>,
    thread: Option<JoinHandle<()>>,
    pub status: Arc<PersistStatus>,
}

impl Persistence {
    /// Attaches the file journal to `store` and starts flushing it.
    pub fn start(
        cfg: PersistConfig,
        store: Arc<Mutex<Store>>,
        writer: JournalWriter,
    ) -> std::io::Result<Self> {
        let next_seq = writer.next_seq();
        let backend = files::FilesBackend::new(&cfg, writer);
        Self::start_with(cfg, store, Box::new(backend), next_seq)
    }

    /// Attaches `backend` to `store` and starts flushing; `next_seq` is the seq of the
    /// next record (what the load returned; anything while the backend needs a load).
    pub fn start_with(
        cfg: PersistConfig,
        store: Arc<Mutex<Store>>,
        backend: Box<dyn Backend>,
        next_seq: u64,
    ) -> std::io::Result<Self> {
        let pending = PendingJournal::new(cfg.max_unwritten_bytes);
        store
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .set_sink(Box::new(pending.clone()));
        let status = Arc::new(PersistStatus {
            backend: backend.name(),
            ..PersistStatus::default()
        });
        let (stop, stopped) = std::sync::mpsc::channel();
        let mut flusher = Flusher {
            next_seq,
            cfg,
            store,
            pending,
            backend,
            unwritten: Vec::new(),
            unwritten_records: 0,
            need_snapshot: false,
            last_snapshot_try: None,
            last_error_log: None,
            status: status.clone(),
        };
        let thread = std::thread::Builder::new()
            .name("flusher".into())
            .spawn(move || flusher.run(stopped))?;
        Ok(Self {
            stop,
            thread: Some(thread),
            status,
        })
    }

    /// Flushes what is pending and stops. Background compaction is cancelled at its
    /// next phase and waited for, so nothing is written after this returns.
    pub fn shutdown(mut self) {
        let _ = self.stop.send(());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Flusher {
    fn run(&mut self, stopped: Receiver<()>) {
        // Half the period: a record is written at most FLUSH_MS after it was merged.
        let period = (self.cfg.flush_every / 2).max(Duration::from_millis(1));
        if !self.backend.needs_load() {
            self.backend.maintain(self.next_seq, true, &self.status);
        }
        let mut due = Instant::now() + period;
        loop {
            let wait = due.saturating_duration_since(Instant::now());
            let stopping = match stopped.recv_timeout(wait) {
                Ok(()) | Err(RecvTimeoutError::Disconnected) => true,
                Err(RecvTimeoutError::Timeout) => false,
            };
            due = next_tick(due, period, Instant::now());
            self.tick();
            if stopping {
                self.backend.stop();
                if !self.unwritten.is_empty() || self.need_snapshot || self.backend.needs_load() {
                    tracing::error!(
                        unwritten_bytes = self.unwritten.len(),
                        unwritten_records = self.unwritten_records,
                        "stopping with records the storage refused; they are lost"
                    );
                }
                return;
            }
        }
    }

    fn tick(&mut self) {
        if let Some(e) = self.backend.take_sync_failure() {
            self.status.failed(&e);
            tracing::error!(error = %e, backend = self.status.backend, "written records may not be on disk; writing the graph whole from memory");
            self.drop_queue();
        }
        let taken = self.pending.take();
        if taken.overflowed {
            self.drop_queue();
        }
        self.queue(taken);
        if self.backend.needs_load() {
            self.try_load();
        } else if self.need_snapshot {
            self.snapshot_from_memory();
        } else {
            if !self.unwritten.is_empty() {
                self.write_unwritten();
            }
            let idle = self.unwritten.is_empty();
            self.backend.maintain(self.next_seq, idle, &self.status);
            self.pull();
        }
        self.publish_queue();
    }

    /// Merges what other writers of the store added. Their records are stored
    /// already: nothing of this reaches the journal again.
    fn pull(&mut self) {
        for _ in 0..16 {
            let Some(remote) = self.backend.poll(&self.status) else {
                return;
            };
            self.merge_remote(remote);
        }
    }

    fn merge_remote(&mut self, remote: Remote) {
        let mut store = self.store.lock().unwrap_or_else(|p| p.into_inner());
        match remote {
            Remote::Effects(effects) => {
                let count = effects.len();
                let merged = effects
                    .into_iter()
                    .map(|e| merge_effect(&mut store, e) as usize)
                    .sum::<usize>();
                tracing::debug!(
                    records = count,
                    merged,
                    "merged records other daemons stored"
                );
            }
            Remote::Whole(stored) => {
                let sink = store.take_sink();
                merge_into(&mut store, &stored);
                if let Some(sink) = sink {
                    store.set_sink(sink);
                }
            }
        }
    }

    fn queue(&mut self, taken: Buffer) {
        if self.need_snapshot {
            self.status
                .dropped_records
                .fetch_add(taken.records, Ordering::Relaxed);
            return;
        }
        if self.unwritten.is_empty() {
            self.unwritten = taken.bytes;
        } else {
            self.unwritten.extend_from_slice(&taken.bytes);
        }
        self.unwritten_records += taken.records;
        if self.unwritten.len() > self.cfg.max_unwritten_bytes {
            tracing::error!(
                unwritten_bytes = self.unwritten.len(),
                "too much unwritten journal; the graph will be written whole from memory once the storage is back"
            );
            self.drop_queue();
        }
    }

    /// Gives up the queued records: memory holds their effect, and the next write is
    /// a snapshot of the whole graph.
    fn drop_queue(&mut self) {
        self.status
            .dropped_records
            .fetch_add(self.unwritten_records, Ordering::Relaxed);
        self.need_snapshot = true;
        self.unwritten = Vec::new();
        self.unwritten_records = 0;
    }

    fn publish_queue(&self) {
        let s = &self.status;
        s.unwritten_bytes
            .store(self.unwritten.len() as u64, Ordering::Relaxed);
        s.unwritten_records
            .store(self.unwritten_records, Ordering::Relaxed);
    }

    /// The daemon started without reading the backend. Once it answers: merge what it
    /// holds with what memory gathered since (the full-state rules: the newer node
    /// wins, tombstones hold), and write the merged graph as one snapshot.
    fn try_load(&mut self) {
        let loaded = match self.backend.load(self.cfg.oplog_size) {
            Ok(l) => l,
            Err(e) => {
                self.status.failed(&e);
                self.log_failure("storage not loaded yet; serving from memory", &e);
                return;
            }
        };
        let started = Instant::now();
        let (bytes, nodes) = {
            let mut store = self.store.lock().unwrap_or_else(|p| p.into_inner());
            let sink = store.take_sink();
            let memory = std::mem::replace(&mut *store, loaded.store);
            merge_into(&mut store, &memory);
            store.start_clock(unix_ms());
            if let Some(sink) = sink {
                store.set_sink(sink);
            }
            // Everything queued so far is in the snapshot we are about to take.
            let _ = self.pending.take();
            (codec::encode_snapshot(&store, loaded.next_seq), store.len())
        };
        self.unwritten = Vec::new();
        self.unwritten_records = 0;
        self.next_seq = loaded.next_seq;
        tracing::info!(
            nodes,
            journal_records = loaded.journal_records,
            took_ms = started.elapsed().as_millis() as u64,
            "storage loaded late and merged with what memory gathered meanwhile"
        );
        match self.backend.rewrite(&bytes, self.next_seq, nodes) {
            Ok(()) => {
                self.need_snapshot = false;
                self.status.ok();
            }
            Err(e) => {
                self.need_snapshot = true;
                self.status.failed(&e);
                self.log_failure("writing the merged graph failed; retrying", &e);
            }
        }
    }

    fn write_unwritten(&mut self) {
        let started = Instant::now();
        let result = self
            .backend
            .append(self.next_seq, &self.unwritten, self.unwritten_records);
        match result {
            Ok(()) => {
                let s = &self.status;
                s.bytes_persisted
                    .fetch_add(self.unwritten.len() as u64, Ordering::Relaxed);
                s.records_persisted
                    .fetch_add(self.unwritten_records, Ordering::Relaxed);
                s.flush_seconds.observe(started.elapsed().as_secs_f64());
                tracing::debug!(
                    records = self.unwritten_records,
                    bytes = self.unwritten.len(),
                    next_seq = self.next_seq + self.unwritten_records,
                    took_us = started.elapsed().as_micros() as u64,
                    "journal flushed"
                );
                if s.degraded() {
                    tracing::info!("journal writes succeed again");
                }
                s.ok();
                self.next_seq += self.unwritten_records;
                self.unwritten.clear();
                if self.unwritten.capacity() > (4 << 20) {
                    self.unwritten = Vec::new();
                }
                self.unwritten_records = 0;
            }
            Err(e) => {
                self.status.failed(&e);
                self.log_failure(
                    "journal write failed; keeping records in memory and retrying",
                    &e,
                );
            }
        }
    }

    fn log_failure(&mut self, what: &str, err: &StoreError) {
        let due = self
            .last_error_log
            .is_none_or(|t| t.elapsed() >= ERROR_LOG_EVERY);
        if due {
            tracing::error!(error = %err, backend = self.status.backend, "{what}");
            self.last_error_log = Some(Instant::now());
        }
    }

    /// Writes the whole graph as one snapshot, under the store lock. Only used after
    /// records had to be dropped because the storage refused them for too long.
    fn snapshot_from_memory(&mut self) {
        if self
            .last_snapshot_try
            .is_some_and(|t| t.elapsed() < SNAPSHOT_RETRY)
        {
            return;
        }
        self.last_snapshot_try = Some(Instant::now());
        let next_seq = self.next_seq;
        let (bytes, nodes) = {
            let store = self.store.lock().unwrap_or_else(|p| p.into_inner());
            // Everything buffered so far is in the snapshot we are about to take.
            let _ = self.pending.take();
            (codec::encode_snapshot(&store, next_seq), store.len())
        };
        match self.backend.rewrite(&bytes, next_seq, nodes) {
            Ok(()) => {
                self.need_snapshot = false;
                self.status.ok();
                tracing::info!(
                    bytes = bytes.len(),
                    "wrote the graph from memory; the store is whole again"
                );
            }
            Err(e) => {
                self.status.failed(&e);
                self.log_failure("snapshot from memory failed; retrying", &e);
            }
        }
    }
}

/// When the tick after the one due at `due` is due. Ticks keep a fixed rate, so the
/// time a tick spends writing (an fsync, a journal rotation) does not push every later
/// tick back: a record merged just after one tick took the buffer waits one period, not
/// one period plus that tick's work. A tick that ran late is followed at once, and the
/// ones it missed are not made up for.
fn next_tick(due: Instant, period: Duration, now: Instant) -> Instant {
    (due + period).max(now)
}

#[cfg(test)]
mod schedule_tests {
    use super::next_tick;
    use std::time::{Duration, Instant};

    #[test]
    fn ticks_keep_their_rate_whatever_a_tick_costs() {
        let period = Duration::from_millis(25);
        let t0 = Instant::now();
        // A tick that took 10 ms does not delay the next one.
        assert_eq!(
            next_tick(t0, period, t0 + Duration::from_millis(10)),
            t0 + period
        );
        // One that overran the period is followed at once, without a burst to catch up.
        let late = t0 + Duration::from_millis(70);
        assert_eq!(next_tick(t0, period, late), late);
    }
}
