//! The background compaction every backend runs: one thread at a time, a cancel flag
//! checked between its phases, a pause after a failure, and its outcome collected by
//! the flusher. What a compaction does is the backend's; its thread life is here.

use super::PersistStatus;
use super::error::{CompactReport, StoreError};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// A failed compaction is tried again after this long.
pub const COMPACT_RETRY: Duration = Duration::from_secs(30);

type Job = Result<Option<CompactReport>, StoreError>;

/// How a finished compaction ended; the backend logs it in its own words.
pub enum Reaped {
    /// A new snapshot is in place (counted in `compactions`).
    Compacted(CompactReport),
    /// Nothing to fold, or cancelled.
    Nothing,
    Failed(StoreError),
    Panicked,
}

pub struct Compactor {
    thread_name: &'static str,
    running: Option<JoinHandle<Job>>,
    cancel: Arc<AtomicBool>,
    last_fail: Option<Instant>,
}

impl Compactor {
    pub fn new(thread_name: &'static str) -> Self {
        Self {
            thread_name,
            running: None,
            cancel: Arc::new(AtomicBool::new(false)),
            last_fail: None,
        }
    }

    pub fn is_running(&self) -> bool {
        self.running.is_some()
    }

    /// The last compaction failed (and none has succeeded since).
    pub fn has_failed(&self) -> bool {
        self.last_fail.is_some()
    }

    /// Nothing runs, and no failure is recent enough to wait for.
    pub fn may_start(&self) -> bool {
        self.running.is_none() && self.last_fail.is_none_or(|t| t.elapsed() >= COMPACT_RETRY)
    }

    /// Runs `job` on its own thread; `job` gets the cancel flag to check between its
    /// phases. False when the thread could not start (logged).
    pub fn start(&mut self, job: impl FnOnce(&AtomicBool) -> Job + Send + 'static) -> bool {
        let cancel = self.cancel.clone();
        let spawned = std::thread::Builder::new()
            .name(self.thread_name.into())
            .spawn(move || job(&cancel));
        match spawned {
            Ok(handle) => {
                self.running = Some(handle);
                true
            }
            Err(e) => {
                tracing::error!(error = %e, "could not start the compactor thread");
                false
            }
        }
    }

    /// The outcome of a compaction that has finished; None while one runs or none did.
    pub fn reap(&mut self, status: &PersistStatus) -> Option<Reaped> {
        if !self.running.as_ref().is_some_and(|c| c.is_finished()) {
            return None;
        }
        let handle = self.running.take()?;
        Some(match handle.join() {
            Ok(Ok(Some(report))) => {
                self.last_fail = None;
                status.compactions.fetch_add(1, Ordering::Relaxed);
                Reaped::Compacted(report)
            }
            Ok(Ok(None)) => Reaped::Nothing,
            Ok(Err(e)) => {
                self.last_fail = Some(Instant::now());
                Reaped::Failed(e)
            }
            Err(_) => {
                self.last_fail = Some(Instant::now());
                Reaped::Panicked
            }
        })
    }

    /// Waits for a running compaction to finish.
    pub fn wait(&mut self) {
        if let Some(c) = self.running.take() {
            let _ = c.join();
        }
    }

    /// Cancels a running compaction at its next phase and waits for it.
    pub fn cancel_and_wait(&mut self) {
        self.cancel.store(true, Ordering::Relaxed);
        self.wait();
    }

    /// Lets a running compaction finish on its own, unwatched.
    pub fn detach(&mut self) {
        self.running = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reaped(c: &mut Compactor, status: &PersistStatus) -> Reaped {
        loop {
            if let Some(r) = c.reap(status) {
                return r;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    #[test]
    fn a_failure_pauses_the_next_start_and_a_success_counts() {
        let status = PersistStatus::default();
        let mut c = Compactor::new("test-compactor");
        assert!(c.may_start() && c.reap(&status).is_none());
        assert!(c.start(|_| Err(StoreError::Unstable)));
        assert!(!c.may_start(), "one at a time");
        assert!(matches!(reaped(&mut c, &status), Reaped::Failed(_)));
        assert!(
            c.has_failed() && !c.may_start(),
            "waits COMPACT_RETRY after a failure"
        );
        c.start(|_| {
            Ok(Some(CompactReport {
                segments: 1,
                nodes: 2,
                snapshot_bytes: 3,
                took: Duration::ZERO,
            }))
        });
        assert!(matches!(reaped(&mut c, &status), Reaped::Compacted(r) if r.nodes == 2));
        assert!(!c.has_failed());
        assert_eq!(status.compactions.load(Ordering::Relaxed), 1);
        c.start(|_| panic!("compactor test panic"));
        assert!(matches!(reaped(&mut c, &status), Reaped::Panicked));
    }

    #[test]
    fn cancel_reaches_the_job() {
        let status = PersistStatus::default();
        let mut c = Compactor::new("test-compactor");
        c.start(|cancel| {
            while !cancel.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(1));
            }
            Ok(None)
        });
        c.cancel_and_wait();
        assert!(!c.is_running() && c.reap(&status).is_none());
    }
}
