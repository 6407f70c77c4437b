//! The file backend: `<db>.bin` snapshot plus append-only journal segments in DATA_DIR.
//!
//! Layout:
//! - `<db>.bin`: the last compacted snapshot (graph, oplog, global timestamp), which
//!   covers journal records with seq below its `next_seq`.
//! - `<db>.journal`: the live segment, appended and fsynced by the flusher.
//! - `<db>.journal.<base>`: sealed segments waiting to be folded into the snapshot.
//! - `<db>.lock`: held while a daemon owns the store.
//!
//! Every file is created as `<name>.tmp`, fsynced, renamed into place and followed by
//! an fsync of the directory, so a crash leaves either the old file or the new one.
//! A file that cannot be read is reported and left untouched, never overwritten.

use super::codec::{self, CodecError, JOURNAL_HEADER_LEN};
use super::compactor::{Compactor, Reaped};
use super::error::{CompactReport, Loaded, StoreError};
use super::syncer::Syncer;
use crate::store::Store;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Where one database's files live.
#[derive(Clone, Debug)]
pub struct Layout {
    pub dir: PathBuf,
    pub db: String,
}

impl Layout {
    pub fn new(dir: impl Into<PathBuf>, db: &str) -> Self {
        Self {
            dir: dir.into(),
            db: db.to_owned(),
        }
    }

    pub fn snapshot(&self) -> PathBuf {
        self.dir.join(format!("{}.bin", self.db))
    }

    pub fn journal(&self) -> PathBuf {
        self.dir.join(format!("{}.journal", self.db))
    }

    pub fn sealed(&self, base: u64) -> PathBuf {
        self.dir.join(format!("{}.journal.{base:020}", self.db))
    }

    pub fn lock(&self) -> PathBuf {
        self.dir.join(format!("{}.lock", self.db))
    }

    /// Sealed segments, oldest first.
    pub fn sealed_segments(&self) -> Result<Vec<(u64, PathBuf)>, StoreError> {
        let prefix = format!("{}.journal.", self.db);
        let mut out = Vec::new();
        let entries = match fs::read_dir(&self.dir) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(out),
            Err(e) => return Err(io_err(&self.dir)(e)),
        };
        for entry in entries {
            let entry = entry.map_err(io_err(&self.dir))?;
            let name = entry.file_name();
            let Some(rest) = name.to_str().and_then(|n| n.strip_prefix(&prefix)) else {
                continue;
            };
            if rest.len() == 20
                && let Ok(base) = rest.parse::<u64>()
            {
                out.push((base, entry.path()));
            }
        }
        out.sort();
        Ok(out)
    }
}

/// Writes `bytes` to `path` atomically: temp file, fsync, rename, fsync of the directory.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    let tmp = tmp_path(path);
    let result = (|| {
        let mut f = File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        drop(f);
        fs::rename(&tmp, path)?;
        sync_dir(path.parent().unwrap_or(Path::new(".")))
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result.map_err(io_err(path))
}

fn tmp_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".tmp");
    path.with_file_name(name)
}

pub fn sync_dir(dir: &Path) -> io::Result<()> {
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    File::open(dir)?.sync_all()
}

/// Reads the snapshot alone.
fn load_snapshot(layout: &Layout, oplog_size: usize) -> Result<Loaded, StoreError> {
    let path = layout.snapshot();
    let (store, next_seq, snapshot_bytes) = match fs::read(&path) {
        Ok(bytes) => {
            let snap = codec::decode_snapshot(&bytes, oplog_size).map_err(|source| {
                StoreError::Unreadable {
                    path: path.clone(),
                    source,
                }
            })?;
            (snap.store, snap.next_seq, bytes.len() as u64)
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => (Store::new(oplog_size), 0, 0),
        Err(e) => return Err(io_err(&path)(e)),
    };
    Ok(Loaded {
        store,
        next_seq,
        snapshot_bytes,
        journal_records: 0,
        torn_bytes: 0,
        live: None,
    })
}

/// Reads the snapshot and every journal segment. Read-only.
pub fn load(layout: &Layout, oplog_size: usize) -> Result<Loaded, StoreError> {
    let mut loaded = load_snapshot(layout, oplog_size)?;
    for (_, path) in layout.sealed_segments()? {
        replay_segment(&path, &mut loaded, Segment::Sealed)?;
    }
    let live = layout.journal();
    if live.exists() {
        let (base, used) = replay_segment(&live, &mut loaded, Segment::Live)?;
        loaded.live = Some((base, used));
    }
    Ok(loaded)
}

/// Which segment a replay reads: only the live one, the last, may end torn.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Segment {
    Sealed,
    Live,
}

/// Applies a segment's records that the state does not hold yet. Returns its base and
/// whether it holds anything beyond its header.
fn replay_segment(
    path: &Path,
    loaded: &mut Loaded,
    segment: Segment,
) -> Result<(u64, bool), StoreError> {
    let bytes = fs::read(path).map_err(io_err(path))?;
    let unreadable = |source| StoreError::Unreadable {
        path: path.to_owned(),
        source,
    };
    let scan = codec::scan_journal(&bytes).map_err(unreadable)?;
    if segment == Segment::Sealed && scan.torn_bytes > 0 {
        // A sealed segment was whole when it was sealed: what follows its last record
        // is damage, not a crash mid-append.
        return Err(unreadable(CodecError::Corrupt(format!(
            "a sealed journal segment ends with {} bytes that are not a whole record (after byte {}); only the live segment may end torn",
            scan.torn_bytes, scan.good_len
        ))));
    }
    if scan.base_seq > loaded.next_seq {
        return Err(StoreError::Gap {
            path: path.to_owned(),
            base: scan.base_seq,
            expected: loaded.next_seq,
        });
    }
    let used = !scan.records.is_empty() || scan.torn_bytes > 0;
    for (i, effect) in scan.records.into_iter().enumerate() {
        let seq = scan.base_seq + i as u64;
        if seq == loaded.next_seq {
            loaded.store.apply_effect(effect);
            loaded.next_seq += 1;
            loaded.journal_records += 1;
        }
    }
    loaded.torn_bytes += scan.torn_bytes;
    Ok((scan.base_seq, used))
}

/// Loads a consistent view while a daemon may be compacting or appending: a file that
/// vanishes or a seq gap caused by a concurrent compaction makes it read again.
pub fn load_consistent(layout: &Layout, oplog_size: usize) -> Result<Loaded, StoreError> {
    let mut last = StoreError::Unstable;
    for attempt in 0..20 {
        match load(layout, oplog_size) {
            Ok(l) => return Ok(l),
            Err(e @ (StoreError::Gap { .. } | StoreError::Io { .. })) => {
                last = e;
                std::thread::sleep(Duration::from_millis(20 * (attempt + 1)));
            }
            Err(e) => return Err(e),
        }
    }
    Err(last)
}

/// Exclusive ownership of a database's files for the life of the process.
pub struct DirLock {
    _file: File,
}

impl DirLock {
    pub fn acquire(layout: &Layout) -> Result<Self, StoreError> {
        fs::create_dir_all(&layout.dir).map_err(io_err(&layout.dir))?;
        let path = layout.lock();
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(io_err(&path))?;
        match file.try_lock() {
            Ok(()) => Ok(Self { _file: file }),
            Err(fs::TryLockError::WouldBlock) => Err(StoreError::Locked(path)),
            Err(fs::TryLockError::Error(e)) => Err(io_err(&path)(e)),
        }
    }
}

/// Removes temp files a crash may have left behind. They are never the only copy.
pub fn remove_stale_temps(layout: &Layout) {
    for path in [layout.snapshot(), layout.journal()] {
        let _ = fs::remove_file(tmp_path(&path));
    }
}

/// The live journal segment, appended by the flusher.
pub struct JournalWriter {
    path: PathBuf,
    file: Arc<File>,
    base: u64,
    /// Length of the durable prefix; anything past it after a failed write is cut off.
    len: u64,
    records: u64,
}

impl JournalWriter {
    /// Creates a fresh, empty live segment starting at `base` (atomically replacing any).
    pub fn create(layout: &Layout, base: u64) -> Result<Self, StoreError> {
        let path = layout.journal();
        write_atomic(&path, &codec::journal_header(base))?;
        Self::open(layout, base, JOURNAL_HEADER_LEN as u64, 0)
    }

    fn open(layout: &Layout, base: u64, len: u64, records: u64) -> Result<Self, StoreError> {
        let path = layout.journal();
        let file = OpenOptions::new()
            .write(true)
            .open(&path)
            .map_err(io_err(&path))?;
        Ok(Self {
            path,
            file: Arc::new(file),
            base,
            len,
            records,
        })
    }

    /// Appends framed records and makes them durable.
    pub fn append(&mut self, bytes: &[u8], records: u64) -> Result<(), StoreError> {
        self.write(bytes, records)?;
        self.sync()
    }

    /// Appends framed records without waiting for the disk: from here they survive the
    /// process's death, and [`JournalWriter::sync`] (or a [`Syncer`]) makes them
    /// survive the machine's. On failure the segment is cut back to its last whole
    /// record, so a retry never leaves a broken record mid-file.
    pub fn write(&mut self, bytes: &[u8], records: u64) -> Result<(), StoreError> {
        match self.file.write_all_at(bytes, self.len) {
            Ok(()) => {
                self.len += bytes.len() as u64;
                self.records += records;
                Ok(())
            }
            Err(e) => {
                let _ = self.file.set_len(self.len);
                Err(io_err(&self.path)(e))
            }
        }
    }

    /// Waits until everything written is on the disk.
    pub fn sync(&self) -> Result<(), StoreError> {
        self.file.sync_data().map_err(io_err(&self.path))
    }

    /// The open segment, for a [`Syncer`].
    pub(crate) fn file(&self) -> &Arc<File> {
        &self.file
    }

    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.records == 0
    }

    pub fn next_seq(&self) -> u64 {
        self.base + self.records
    }

    /// Renames this segment to its sealed name and starts a new live one after it.
    /// If the new segment cannot be created the old handle must not be used again:
    /// the caller then calls [`JournalWriter::create`] until it succeeds.
    pub fn seal(self, layout: &Layout) -> Result<Self, (Option<Self>, StoreError)> {
        let next = self.next_seq();
        // A sealed segment is whole on disk: only the live one may end torn.
        if let Err(e) = self.sync() {
            return Err((Some(self), e));
        }
        if let Err(e) = seal_live(layout, self.base) {
            return Err((Some(self), e));
        }
        drop(self.file);
        Self::create(layout, next).map_err(|e| (None, e))
    }
}

fn seal_live(layout: &Layout, base: u64) -> Result<(), StoreError> {
    let sealed = layout.sealed(base);
    fs::rename(layout.journal(), &sealed).map_err(io_err(&sealed))?;
    sync_dir(&layout.dir).map_err(io_err(&layout.dir))
}

/// Opens the store for a daemon: lock, load, and leave a clean live segment to append
/// to. A live segment that holds records is sealed for compaction; one that holds only
/// a torn tail is replaced.
pub fn open_for_daemon(
    layout: &Layout,
    oplog_size: usize,
) -> Result<(DirLock, Loaded, JournalWriter), StoreError> {
    let lock = DirLock::acquire(layout)?;
    remove_stale_temps(layout);
    let loaded = load(layout, oplog_size)?;
    if loaded.torn_bytes > 0 {
        // Only the live segment may hold a torn tail (sealed ones are refused whole),
        // and the scan proved that no record follows it: drop it before the segment
        // is sealed, so no sealed segment ever ends torn.
        cut_torn_tail(&layout.journal(), loaded.torn_bytes)?;
    }
    let writer = match loaded.live {
        Some((base, false)) if base == loaded.next_seq => {
            JournalWriter::open(layout, base, JOURNAL_HEADER_LEN as u64, 0)?
        }
        Some((base, true)) if base < loaded.next_seq => {
            seal_live(layout, base)?;
            JournalWriter::create(layout, loaded.next_seq)?
        }
        _ => JournalWriter::create(layout, loaded.next_seq)?,
    };
    Ok((lock, loaded, writer))
}

/// Cuts the last `torn` bytes off the live segment, durably.
fn cut_torn_tail(path: &Path, torn: u64) -> Result<(), StoreError> {
    let file = OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(io_err(path))?;
    let len = file.metadata().map_err(io_err(path))?.len();
    let good = len.checked_sub(torn).ok_or(StoreError::Unstable)?;
    file.set_len(good).map_err(io_err(path))?;
    file.sync_all().map_err(io_err(path))
}

/// Folds every sealed segment into a new snapshot, then deletes them. The snapshot is
/// rebuilt from the files, not from the live graph, so merges never pause for it.
///
/// `cancel` is checked between phases: a cancelled compaction writes nothing. Once the
/// new snapshot is in place the old segments are removed regardless, which is quick.
pub fn compact(
    layout: &Layout,
    oplog_size: usize,
    cancel: &AtomicBool,
) -> Result<Option<CompactReport>, StoreError> {
    let cancelled = || cancel.load(Ordering::Relaxed);
    let sealed = layout.sealed_segments()?;
    if sealed.is_empty() || cancelled() {
        return Ok(None);
    }
    let started = std::time::Instant::now();
    let mut loaded = load_snapshot(layout, oplog_size)?;
    for (_, path) in &sealed {
        replay_segment(path, &mut loaded, Segment::Sealed)?;
    }
    if cancelled() {
        return Ok(None);
    }
    let bytes = codec::encode_snapshot(&loaded.store, loaded.next_seq);
    if cancelled() {
        return Ok(None);
    }
    write_atomic(&layout.snapshot(), &bytes)?;
    for (_, path) in &sealed {
        fs::remove_file(path).map_err(io_err(path))?;
    }
    sync_dir(&layout.dir).map_err(io_err(&layout.dir))?;
    Ok(Some(CompactReport {
        segments: sealed.len(),
        nodes: loaded.store.len(),
        snapshot_bytes: bytes.len() as u64,
        took: started.elapsed(),
    }))
}

/// Replaces every file with one snapshot of `store` at `next_seq` and an empty live
/// segment: the way back after records could not be journaled (disk full for long).
pub fn rewrite_from_memory(
    layout: &Layout,
    snapshot: &[u8],
    next_seq: u64,
) -> Result<JournalWriter, StoreError> {
    write_atomic(&layout.snapshot(), snapshot)?;
    let writer = JournalWriter::create(layout, next_seq)?;
    for (_, path) in layout.sealed_segments()? {
        fs::remove_file(&path).map_err(io_err(&path))?;
    }
    sync_dir(&layout.dir).map_err(io_err(&layout.dir))?;
    Ok(writer)
}

/// The file backend of the flusher: the live journal segment, its rotation, and the
/// compactor thread that folds sealed segments into the snapshot.
pub struct FilesBackend {
    layout: Layout,
    oplog_size: usize,
    compact_bytes: u64,
    writer: Option<JournalWriter>,
    /// Syncs what `append` wrote, so that the next append never waits for the disk.
    syncer: Option<Syncer>,
    compactor: Compactor,
    /// Sealed segments left by an earlier run are folded in at the first maintenance.
    checked_sealed: bool,
}

impl FilesBackend {
    pub fn new(cfg: &super::PersistConfig, writer: JournalWriter) -> Self {
        Self::with_syncer(cfg, writer, Syncer::start())
    }

    pub(crate) fn with_syncer(
        cfg: &super::PersistConfig,
        writer: JournalWriter,
        syncer: io::Result<Syncer>,
    ) -> Self {
        Self {
            layout: cfg.layout.clone(),
            oplog_size: cfg.oplog_size,
            compact_bytes: cfg.compact_bytes,
            writer: Some(writer),
            syncer: syncer
                .map_err(|e| tracing::warn!(error = %e, "no journal sync thread; each flush waits for the disk"))
                .ok(),
            compactor: Compactor::new("compactor"),
            checked_sealed: false,
        }
    }

    /// Appends, then syncs on the sync thread (or here, when there is none).
    fn write(&mut self, first_seq: u64, bytes: &[u8], records: u64) -> Result<(), StoreError> {
        let w = match self.writer.as_mut() {
            Some(w) => w,
            None => self
                .writer
                .insert(JournalWriter::create(&self.layout, first_seq)?),
        };
        match &self.syncer {
            Some(syncer) => {
                w.write(bytes, records)?;
                syncer.dirty(w.file());
                Ok(())
            }
            None => w.append(bytes, records),
        }
    }

    fn rotate_if_large(&mut self, status: &super::PersistStatus) {
        let large = self
            .writer
            .as_ref()
            .is_some_and(|w| w.len() > self.compact_bytes && !w.is_empty());
        if !large || self.compactor.is_running() {
            return;
        }
        let Some(writer) = self.writer.take() else {
            return;
        };
        match writer.seal(&self.layout) {
            Ok(w) => {
                self.writer = Some(w);
                self.start_compaction_if_sealed();
            }
            Err((w, e)) => {
                self.writer = w;
                tracing::error!(error = %e, "could not seal the journal for compaction");
                status.failed(&e);
            }
        }
    }

    /// A rotation sealed the live segment but could not create the next one (a full
    /// disk): everything is durable in the sealed segment, yet nothing would create a
    /// live one, or clear `degraded`, before the next write. An idle flusher retries
    /// here; a busy one creates it in `append`.
    fn restore_live_segment(&mut self, next_seq: u64, status: &super::PersistStatus) {
        if self.writer.is_some() {
            return;
        }
        match JournalWriter::create(&self.layout, next_seq) {
            Ok(w) => {
                self.writer = Some(w);
                tracing::info!("the live journal segment exists again");
                if !self.compactor.has_failed() {
                    status.recovered();
                }
            }
            Err(e) => status.failed(&e),
        }
    }

    fn start_compaction_if_sealed(&mut self) {
        if !self.compactor.may_start() {
            return;
        }
        let has_sealed = self.layout.sealed_segments().is_ok_and(|s| !s.is_empty());
        if !has_sealed {
            return;
        }
        let layout = self.layout.clone();
        let oplog_size = self.oplog_size;
        self.compactor
            .start(move |cancel| compact(&layout, oplog_size, cancel));
    }

    fn reap_compactor(&mut self, status: &super::PersistStatus) {
        let Some(reaped) = self.compactor.reap(status) else {
            if !self.compactor.is_running() && self.compactor.has_failed() {
                self.start_compaction_if_sealed();
            }
            return;
        };
        match reaped {
            Reaped::Compacted(r) => tracing::info!(
                segments = r.segments,
                nodes = r.nodes,
                snapshot_bytes = r.snapshot_bytes,
                took_ms = r.took.as_millis() as u64,
                "compacted the journal into a new snapshot"
            ),
            Reaped::Nothing => {}
            Reaped::Failed(e) => {
                status.failed(&e);
                tracing::error!(error = %e, "compaction failed; the journal segments are kept");
            }
            Reaped::Panicked => {
                tracing::error!("the compactor thread panicked; the journal segments are kept")
            }
        }
    }
}

impl super::Backend for FilesBackend {
    fn append(&mut self, first_seq: u64, bytes: &[u8], records: u64) -> Result<(), StoreError> {
        self.write(first_seq, bytes, records)
    }

    fn take_sync_failure(&mut self) -> Option<StoreError> {
        let e = self.syncer.as_ref()?.take_failure()?;
        Some(StoreError::Io {
            path: self.layout.journal(),
            source: e,
        })
    }

    fn rewrite(&mut self, snapshot: &[u8], next_seq: u64, _nodes: usize) -> Result<(), StoreError> {
        self.compactor.wait();
        if let Some(s) = &self.syncer {
            s.wait_idle();
        }
        self.writer = None;
        self.writer = Some(rewrite_from_memory(&self.layout, snapshot, next_seq)?);
        Ok(())
    }

    fn maintain(&mut self, next_seq: u64, idle: bool, status: &super::PersistStatus) {
        if !self.checked_sealed {
            self.checked_sealed = true;
            self.start_compaction_if_sealed();
        }
        if idle {
            self.restore_live_segment(next_seq, status);
        }
        self.rotate_if_large(status);
        self.reap_compactor(status);
    }

    fn name(&self) -> &'static str {
        "files"
    }

    fn stop(&mut self) {
        self.compactor.cancel_and_wait();
        if let Some(s) = self.syncer.as_mut() {
            s.stop();
        }
    }
}
