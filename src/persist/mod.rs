//! Persistence: effects are journaled, group-committed every FLUSH_MS, and folded into
//! snapshots in the background. The cost of persisting one op does not grow with the
//! graph: it is one appended record.

pub mod codec;
pub mod files;

use crate::store::{Effect, EffectSink, Store};
use files::{CompactReport, JournalWriter, Layout, StoreError};
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
const COMPACT_RETRY: Duration = Duration::from_secs(30);
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
        codec::encode_record(effect, &mut buf.bytes);
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

    fn failed(&self, err: &StoreError) {
        self.degraded.store(true, Ordering::Relaxed);
        self.flush_failures.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut e) = self.last_error.lock() {
            *e = Some(err.to_string());
        }
    }
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
    writer: Option<JournalWriter>,
    next_seq: u64,
    unwritten: Vec<u8>,
    unwritten_records: u64,
    need_snapshot: bool,
    last_snapshot_try: Option<Instant>,
    last_error_log: Option<Instant>,
    status: Arc<PersistStatus>,
    compactor: Option<JoinHandle<Result<Option<CompactReport>, StoreError>>>,
    cancel_compaction: Arc<AtomicBool>,
    last_compact_fail: Option<Instant>,
}

/// Handle to the running flusher. Dropping it without [`Persistence::shutdown`] leaves
/// the last FLUSH_MS of records unwritten, exactly as a crash would.
pub struct Persistence {
    stop: Sender<()>,
    thread: Option<JoinHandle<()>>,
    pub status: Arc<PersistStatus>,
}

impl Persistence {
    /// Attaches the journal to `store` and starts flushing it.
    pub fn start(
        cfg: PersistConfig,
        store: Arc<Mutex<Store>>,
        writer: JournalWriter,
    ) -> std::io::Result<Self> {
        let pending = PendingJournal::new(cfg.max_unwritten_bytes);
        store
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .set_sink(Box::new(pending.clone()));
        let status = Arc::new(PersistStatus::default());
        let (stop, stopped) = std::sync::mpsc::channel();
        let mut flusher = Flusher {
            next_seq: writer.next_seq(),
            cfg,
            store,
            pending,
            writer: Some(writer),
            unwritten: Vec::new(),
            unwritten_records: 0,
            need_snapshot: false,
            last_snapshot_try: None,
            last_error_log: None,
            status: status.clone(),
            compactor: None,
            cancel_compaction: Arc::new(AtomicBool::new(false)),
            last_compact_fail: None,
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

    /// Flushes what is pending and stops. A compaction still running is cancelled at its
    /// next phase and waited for, so nothing writes to DATA_DIR after this returns.
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
        self.start_compaction_if_sealed();
        loop {
            let stopping = match stopped.recv_timeout(period) {
                Ok(()) | Err(RecvTimeoutError::Disconnected) => true,
                Err(RecvTimeoutError::Timeout) => false,
            };
            self.tick();
            if stopping {
                self.cancel_compaction.store(true, Ordering::Relaxed);
                if let Some(c) = self.compactor.take() {
                    let _ = c.join();
                }
                if !self.unwritten.is_empty() || self.need_snapshot {
                    tracing::error!(
                        unwritten_bytes = self.unwritten.len(),
                        "stopping with records the disk refused; they are lost"
                    );
                }
                return;
            }
        }
    }

    fn tick(&mut self) {
        let taken = self.pending.take();
        if taken.overflowed {
            self.need_snapshot = true;
        }
        if self.need_snapshot {
            self.unwritten = Vec::new();
            self.unwritten_records = 0;
            self.snapshot_from_memory();
            return;
        }
        if self.unwritten.is_empty() {
            self.unwritten = taken.bytes;
        } else {
            self.unwritten.extend_from_slice(&taken.bytes);
        }
        self.unwritten_records += taken.records;
        if !self.unwritten.is_empty() {
            self.write_unwritten();
        }
        self.rotate_if_large();
        self.reap_compactor();
    }

    fn write_unwritten(&mut self) {
        let started = Instant::now();
        let result = match self.writer.as_mut() {
            Some(w) => w.append(&self.unwritten, self.unwritten_records),
            None => JournalWriter::create(&self.cfg.layout, self.next_seq).and_then(|mut w| {
                let r = w.append(&self.unwritten, self.unwritten_records);
                self.writer = Some(w);
                r
            }),
        };
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
                if self.unwritten.len() > self.cfg.max_unwritten_bytes {
                    tracing::error!(
                        unwritten_bytes = self.unwritten.len(),
                        "too much unwritten journal; will write one snapshot from memory when the disk is back"
                    );
                    self.need_snapshot = true;
                    self.unwritten = Vec::new();
                    self.unwritten_records = 0;
                }
            }
        }
    }

    fn log_failure(&mut self, what: &str, err: &StoreError) {
        let due = self
            .last_error_log
            .is_none_or(|t| t.elapsed() >= ERROR_LOG_EVERY);
        if due {
            tracing::error!(error = %err, "{what}");
            self.last_error_log = Some(Instant::now());
        }
    }

    /// Writes the whole graph as one snapshot, under the store lock. Only used after
    /// records had to be dropped because the disk refused them for too long.
    fn snapshot_from_memory(&mut self) {
        if self
            .last_snapshot_try
            .is_some_and(|t| t.elapsed() < SNAPSHOT_RETRY)
        {
            return;
        }
        self.last_snapshot_try = Some(Instant::now());
        if let Some(c) = self.compactor.take() {
            let _ = c.join();
        }
        let next_seq = self.next_seq;
        let bytes = {
            let store = self.store.lock().unwrap_or_else(|p| p.into_inner());
            // Everything buffered so far is in the snapshot we are about to take.
            let _ = self.pending.take();
            codec::encode_snapshot(&store, next_seq)
        };
        self.writer = None;
        match files::rewrite_from_memory(&self.cfg.layout, &bytes, next_seq) {
            Ok(writer) => {
                self.writer = Some(writer);
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

    fn rotate_if_large(&mut self) {
        let large = self
            .writer
            .as_ref()
            .is_some_and(|w| w.len() > self.cfg.compact_bytes && !w.is_empty());
        if !large || self.compactor.is_some() {
            return;
        }
        let Some(writer) = self.writer.take() else {
            return;
        };
        match writer.seal(&self.cfg.layout) {
            Ok(w) => {
                self.writer = Some(w);
                self.start_compaction_if_sealed();
            }
            Err((w, e)) => {
                self.writer = w;
                self.status.failed(&e);
                self.log_failure("could not seal the journal for compaction", &e);
            }
        }
    }

    fn start_compaction_if_sealed(&mut self) {
        if self.compactor.is_some()
            || self
                .last_compact_fail
                .is_some_and(|t| t.elapsed() < COMPACT_RETRY)
        {
            return;
        }
        let has_sealed = self
            .cfg
            .layout
            .sealed_segments()
            .is_ok_and(|s| !s.is_empty());
        if !has_sealed {
            return;
        }
        let layout = self.cfg.layout.clone();
        let oplog_size = self.cfg.oplog_size;
        let cancel = self.cancel_compaction.clone();
        let spawned = std::thread::Builder::new()
            .name("compactor".into())
            .spawn(move || files::compact(&layout, oplog_size, &cancel));
        match spawned {
            Ok(handle) => self.compactor = Some(handle),
            Err(e) => tracing::error!(error = %e, "could not start the compactor thread"),
        }
    }

    fn reap_compactor(&mut self) {
        if !self.compactor.as_ref().is_some_and(|c| c.is_finished()) {
            if self.compactor.is_none() && self.last_compact_fail.is_some() {
                self.start_compaction_if_sealed();
            }
            return;
        }
        let Some(handle) = self.compactor.take() else {
            return;
        };
        match handle.join() {
            Ok(Ok(Some(r))) => {
                self.last_compact_fail = None;
                self.status.compactions.fetch_add(1, Ordering::Relaxed);
                tracing::info!(
                    segments = r.segments,
                    nodes = r.nodes,
                    snapshot_bytes = r.snapshot_bytes,
                    took_ms = r.took.as_millis() as u64,
                    "compacted the journal into a new snapshot"
                );
            }
            Ok(Ok(None)) => {}
            Ok(Err(e)) => {
                self.last_compact_fail = Some(Instant::now());
                self.status.failed(&e);
                tracing::error!(error = %e, "compaction failed; the journal segments are kept");
            }
            Err(_) => {
                self.last_compact_fail = Some(Instant::now());
                tracing::error!("the compactor thread panicked; the journal segments are kept");
            }
        }
    }
}
