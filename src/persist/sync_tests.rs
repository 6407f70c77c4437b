//! The flusher with the file backend when the disk's sync is slow or fails.

use super::files::{self, FilesBackend, Layout};
use super::syncer::Syncer;
use super::{PersistConfig, Persistence};
use crate::store::{Hlc, Op, RawJson, Store, UpsertOp};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

fn upsert(i: u64) -> Op {
    Op::Upsert(UpsertOp {
        id: format!("n{i}"),
        value: Some(RawJson::parse(format!(r#"{{"i":{i}}}"#)).unwrap()),
        ts: Hlc::new(1_000 + i, 0),
    })
}

fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn start(
    dir: &std::path::Path,
    sync: super::syncer::SyncFn,
) -> (Layout, Arc<Mutex<Store>>, Persistence) {
    let layout = Layout::new(dir, "db");
    let (_lock, loaded, writer) = files::open_for_daemon(&layout, 1000).unwrap();
    let cfg = PersistConfig {
        layout: layout.clone(),
        oplog_size: 1000,
        flush_every: Duration::from_millis(10),
        compact_bytes: 1 << 40,
        max_unwritten_bytes: 1 << 20,
    };
    let next_seq = writer.next_seq();
    let backend = FilesBackend::with_syncer(&cfg, writer, Syncer::start_with(sync));
    let store = Arc::new(Mutex::new(loaded.store));
    let p = Persistence::start_with(cfg, store.clone(), Box::new(backend), next_seq).unwrap();
    (layout, store, p)
}

fn stored(layout: &Layout) -> usize {
    files::load(layout, 1000)
        .map(|l| l.store.len())
        .unwrap_or(0)
}

#[test]
fn records_are_written_while_a_sync_is_stuck() {
    let tmp = tempfile::tempdir().unwrap();
    let (release, stuck) = std::sync::mpsc::channel::<()>();
    let stuck = Mutex::new(stuck);
    let (layout, store, p) = start(
        tmp.path(),
        Box::new(move |_| {
            let _ = stuck.lock().unwrap().recv();
            Ok(())
        }),
    );
    for round in 0..3 {
        for i in 0..10 {
            store.lock().unwrap().apply(upsert(round * 10 + i), 0);
        }
        // Each batch reaches the file although the first sync never returns.
        let want = (round as usize + 1) * 10;
        wait_until("the batch in the journal", || stored(&layout) == want);
    }
    drop(release);
    p.shutdown();
    assert_eq!(stored(&layout), 30);
}

#[test]
fn a_failed_sync_writes_the_graph_whole_from_memory() {
    let tmp = tempfile::tempdir().unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    let seen = calls.clone();
    let (layout, store, p) = start(
        tmp.path(),
        Box::new(move |f| {
            if seen.fetch_add(1, Ordering::Relaxed) == 0 {
                return Err(std::io::Error::other("injected fdatasync failure"));
            }
            f.sync_data()
        }),
    );
    for i in 0..10 {
        store.lock().unwrap().apply(upsert(i), 0);
    }
    // The snapshot file appears before the rewrite has finished (the new journal, then
    // the status): wait for the store to be whole again, which a failed rewrite never is.
    wait_until(
        "the graph written from memory and the store whole again",
        || calls.load(Ordering::Relaxed) >= 1 && layout.snapshot().exists() && !p.status.degraded(),
    );
    let snap = files::load(&layout, 1000).unwrap();
    assert_eq!(snap.store.len(), 10);
    assert!(p.status.flush_failures.load(Ordering::Relaxed) >= 1);
    // And the journal goes on after it.
    for i in 10..15 {
        store.lock().unwrap().apply(upsert(i), 0);
    }
    wait_until("later records", || stored(&layout) == 15);
    p.shutdown();
}
