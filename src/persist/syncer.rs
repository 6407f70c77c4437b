//! Makes the live journal segment durable off the flusher's path.
//!
//! The flusher writes each batch of records with one `write`, and this thread follows
//! with `fdatasync`. A record that `write` has handed to the kernel survives the
//! daemon's own death (a crash, `kill -9`, the OOM killer): the page cache is the
//! kernel's, not ours. Only a crash of the machine needs the `fdatasync` too. Were
//! the two in one thread, a slow `fdatasync` (a disk busy with other work can take
//! hundreds of milliseconds) would hold back the next batch's `write`, and records
//! merged meanwhile would die with the process: the FLUSH_MS promise would hold only
//! on an idle disk. Here the next `write` goes out on time whatever the disk does.
//!
//! A failed `fdatasync` cannot be retried (the kernel may already have dropped the
//! dirty pages and report success next time): the flusher takes the failure and
//! writes the whole graph again from memory.

use std::fs::File;
use std::io;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;

#[derive(Default)]
struct State {
    /// The file with bytes written and not yet synced, if any.
    dirty: Option<Arc<File>>,
    /// A sync is running (its file is no longer in `dirty`).
    syncing: bool,
    failed: Option<io::Error>,
    stop: bool,
}

type Shared = Arc<(Mutex<State>, Condvar)>;

/// How a file is made durable: `File::sync_data`, or a stand-in in tests.
pub(crate) type SyncFn = Box<dyn Fn(&File) -> io::Result<()> + Send>;

pub(crate) struct Syncer {
    shared: Shared,
    thread: Option<JoinHandle<()>>,
}

impl Syncer {
    pub(crate) fn start() -> io::Result<Self> {
        Self::start_with(Box::new(|f| f.sync_data()))
    }

    pub(crate) fn start_with(sync: SyncFn) -> io::Result<Self> {
        let shared: Shared = Arc::default();
        let worker = shared.clone();
        let thread = std::thread::Builder::new()
            .name("journal-sync".into())
            .spawn(move || run(&worker, sync))?;
        Ok(Self {
            shared,
            thread: Some(thread),
        })
    }

    fn state(&self) -> MutexGuard<'_, State> {
        lock(&self.shared)
    }

    /// `file` holds written bytes that must reach the disk; syncs it soon.
    pub(crate) fn dirty(&self, file: &Arc<File>) {
        self.state().dirty = Some(file.clone());
        self.shared.1.notify_all();
    }

    /// Waits until everything marked dirty so far has been synced (or failed).
    pub(crate) fn wait_idle(&self) {
        let mut s = self.state();
        while s.dirty.is_some() || s.syncing {
            s = self.shared.1.wait(s).unwrap_or_else(|p| p.into_inner());
        }
    }

    /// The error of a sync that failed since the last call, if one did.
    pub(crate) fn take_failure(&self) -> Option<io::Error> {
        self.state().failed.take()
    }

    /// Syncs what is dirty, then stops the thread.
    pub(crate) fn stop(&mut self) {
        self.state().stop = true;
        self.shared.1.notify_all();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Syncer {
    fn drop(&mut self) {
        self.stop();
    }
}

fn lock(shared: &Shared) -> MutexGuard<'_, State> {
    shared.0.lock().unwrap_or_else(|p| p.into_inner())
}

fn run(shared: &Shared, sync: SyncFn) {
    let cond = &shared.1;
    let mut s = lock(shared);
    loop {
        let Some(file) = s.dirty.take() else {
            if s.stop {
                return;
            }
            s = cond.wait(s).unwrap_or_else(|p| p.into_inner());
            continue;
        };
        s.syncing = true;
        drop(s);
        let result = sync(&file);
        s = lock(shared);
        s.syncing = false;
        if let Err(e) = result {
            tracing::error!(error = %e, "syncing the journal to disk failed; the graph will be written again from memory");
            s.failed = Some(e);
        }
        cond.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn syncs_what_is_marked_and_stops_after_syncing() {
        let tmp = tempfile::tempdir().unwrap();
        let file = Arc::new(File::create(tmp.path().join("j")).unwrap());
        let mut syncer = Syncer::start().unwrap();
        for i in 0..100u8 {
            (&*file).write_all(&[i]).unwrap();
            syncer.dirty(&file);
        }
        syncer.wait_idle();
        assert!(syncer.state().dirty.is_none() && !syncer.state().syncing);
        assert!(syncer.take_failure().is_none());
        syncer.dirty(&file);
        syncer.stop();
        assert!(
            syncer.state().dirty.is_none(),
            "stop syncs what was marked first"
        );
        assert_eq!(std::fs::read(tmp.path().join("j")).unwrap().len(), 100);
    }

    #[test]
    fn marking_never_waits_for_a_slow_sync() {
        let tmp = tempfile::tempdir().unwrap();
        let file = Arc::new(File::create(tmp.path().join("j")).unwrap());
        let (release, blocked) = std::sync::mpsc::channel::<()>();
        let blocked = Mutex::new(blocked);
        let syncer = Syncer::start_with(Box::new(move |_| {
            let _ = blocked.lock().unwrap().recv();
            Ok(())
        }))
        .unwrap();
        syncer.dirty(&file);
        // The first sync is stuck; marking and writing go on meanwhile.
        for i in 0..50u8 {
            (&*file).write_all(&[i]).unwrap();
            syncer.dirty(&file);
        }
        assert_eq!(std::fs::read(tmp.path().join("j")).unwrap().len(), 50);
        drop(release);
        syncer.wait_idle();
    }

    #[test]
    fn a_failed_sync_is_reported_once() {
        // fdatasync of a read-only descriptor of a pipe fails with EINVAL.
        let (reader, _writer) = std::io::pipe().unwrap();
        let file = Arc::new(File::from(std::os::fd::OwnedFd::from(reader)));
        let syncer = Syncer::start().unwrap();
        syncer.dirty(&file);
        syncer.wait_idle();
        assert!(syncer.take_failure().is_some());
        assert!(syncer.take_failure().is_none());
    }
}
