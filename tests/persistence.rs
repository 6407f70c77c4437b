//! Persistence against real files: durability of group commits, compaction while
//! merges go on, and torn journals read through the real binary.

mod common;

use common::wait_until;

use genosdb_fallback::persist::files::{self, Layout};
use genosdb_fallback::persist::{PersistConfig, Persistence};
use genosdb_fallback::store::{Hlc, Op, RawJson, Store, UpsertOp};
use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

const NOW: u64 = 1_800_000_000_000;

fn upsert(i: u64, round: u64) -> Op {
    Op::Upsert(UpsertOp {
        id: format!("n{}", i % 5_000),
        value: Some(
            RawJson::parse(format!(
                r#"{{"i":{i},"round":{round},"pad":"{}"}}"#,
                "x".repeat(40)
            ))
            .unwrap(),
        ),
        ts: Hlc::new(1_000_000 + i, round),
    })
}

fn fingerprint(s: &Store) -> (BTreeMap<String, String>, String, Option<Hlc>) {
    (
        s.nodes()
            .iter()
            .map(|(k, n)| (k.to_string(), n.to_json(k)))
            .collect(),
        s.delta_json(),
        s.global_ts(),
    )
}

fn start(layout: &Layout, compact_bytes: u64) -> (files::DirLock, Arc<Mutex<Store>>, Persistence) {
    let (lock, loaded, writer) = files::open_for_daemon(layout, 1000).unwrap();
    let store = Arc::new(Mutex::new(loaded.store));
    let p = Persistence::start(
        PersistConfig {
            layout: layout.clone(),
            oplog_size: 1000,
            flush_every: Duration::from_millis(20),
            compact_bytes,
            max_unwritten_bytes: genosdb_fallback::persist::MAX_UNWRITTEN_BYTES,
        },
        store.clone(),
        writer,
    )
    .unwrap();
    (lock, store, p)
}

#[test]
fn merged_ops_reach_disk_while_the_daemon_runs() {
    let tmp = tempfile::tempdir().unwrap();
    let layout = Layout::new(tmp.path(), "db");
    let (_lock, store, p) = start(&layout, 64 << 20);
    for i in 0..3_000 {
        store.lock().unwrap().apply(upsert(i, 1), NOW);
    }
    wait_until("3000 records persisted", || {
        p.status.records_persisted.load(Ordering::Relaxed) >= 3_000
    });
    // Read the files as a crash would leave them: no shutdown, flusher still running.
    let on_disk = files::load_consistent(&layout, 1000).unwrap();
    assert_eq!(
        fingerprint(&on_disk.store),
        fingerprint(&store.lock().unwrap())
    );
    assert!(p.status.last_flush_ms().is_some());
    assert!(!p.status.degraded());
    p.shutdown();
}

#[test]
fn compaction_runs_in_the_background_and_loses_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let layout = Layout::new(tmp.path(), "db");
    let (lock, store, p) = start(&layout, 16 << 10);
    for round in 1..=6 {
        for i in 0..4_000 {
            store.lock().unwrap().apply(upsert(i, round), NOW);
        }
        std::thread::sleep(Duration::from_millis(30));
    }
    wait_until("a compaction", || {
        p.status.compactions.load(Ordering::Relaxed) >= 1
    });
    let status = p.status.clone();
    p.shutdown();
    drop(lock);
    assert!(layout.snapshot().exists());
    let reloaded = files::load(&layout, 1000).unwrap();
    assert_eq!(
        fingerprint(&reloaded.store),
        fingerprint(&store.lock().unwrap())
    );
    assert_eq!(
        reloaded.next_seq,
        status.records_persisted.load(Ordering::Relaxed)
    );

    // A restart seals what the live journal holds and folds it in at once.
    let (_lock, store2, p2) = start(&layout, 64 << 20);
    wait_until("start-up compaction", || {
        layout.sealed_segments().unwrap().is_empty()
    });
    p2.shutdown();
    assert_eq!(
        fingerprint(&store2.lock().unwrap()),
        fingerprint(&store.lock().unwrap())
    );
    let reloaded = files::load(&layout, 1000).unwrap();
    assert_eq!(
        reloaded.journal_records, 0,
        "everything is in the snapshot now"
    );
    assert_eq!(
        fingerprint(&reloaded.store),
        fingerprint(&store.lock().unwrap())
    );
}

/// Every prefix of a journal, as a crash mid-append would leave it, loads in the real
/// binary and yields exactly the records that were complete.
#[test]
fn every_torn_journal_prefix_loads_its_complete_records() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let layout = Layout::new(&dir, common::DB);
    let (lock, store, p) = start(&layout, 64 << 20);
    let mut record_ends = Vec::new();
    for i in 0..5 {
        store.lock().unwrap().apply(upsert(i, 1), NOW);
        wait_until("record written", || {
            p.status.records_persisted.load(Ordering::Relaxed) > i
        });
        record_ends.push(std::fs::metadata(layout.journal()).unwrap().len());
    }
    p.shutdown();
    drop(lock);
    let full = std::fs::read(layout.journal()).unwrap();
    let header = 32;
    for cut in header..=full.len() {
        std::fs::write(layout.journal(), &full[..cut]).unwrap();
        let out = common::run(&dir, &["export"], &[]);
        assert!(
            out.status.success(),
            "cut {cut}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let complete = record_ends.iter().filter(|&&e| e as usize <= cut).count();
        let lines = String::from_utf8(out.stdout).unwrap().lines().count();
        assert_eq!(lines, complete, "cut {cut}");
    }
    // And the daemon itself starts on a torn journal, keeping the complete records.
    std::fs::write(layout.journal(), &full[..full.len() - 3]).unwrap();
    let mut d = common::Daemon::start_ready(&dir, &[]);
    let (_, body) = d.get("/health");
    assert!(body.contains("\"nodes\":4"), "{body}");
    assert!(d.lines.iter().any(|l| l.contains("torn")));
    assert_eq!(d.stop().code(), Some(0));
}

/// A journal rotation whose new segment cannot be created (a full disk, here a
/// directory squatting on the temp file's name) leaves the daemon without a live
/// segment. Once creating it works again, an idle daemon must get one back and stop
/// reporting `degraded` on its own, without waiting for another write.
#[test]
fn a_rotation_that_cannot_create_its_segment_recovers_without_new_writes() {
    let tmp = tempfile::tempdir().unwrap();
    let layout = Layout::new(tmp.path(), "db");
    let (_lock, store, p) = start(&layout, 4096);
    let squatter = tmp.path().join("db.journal.tmp");
    std::fs::create_dir(&squatter).unwrap();
    for i in 0..200 {
        store.lock().unwrap().apply(upsert(i, 1), NOW);
    }
    wait_until("all 200 records written", || {
        p.status.records_persisted.load(Ordering::Relaxed) >= 200
    });
    wait_until("degraded by the rotation", || p.status.degraded());
    assert!(!layout.journal().exists(), "the live segment was sealed");

    std::fs::remove_dir(&squatter).unwrap();
    wait_until("recovered with no new write", || !p.status.degraded());
    wait_until("a new live segment", || layout.journal().exists());
    store.lock().unwrap().apply(upsert(200, 1), NOW);
    wait_until("the next record written", || {
        p.status.records_persisted.load(Ordering::Relaxed) >= 201
    });
    p.shutdown();
    let on_disk = files::load(&layout, 1000).unwrap();
    assert_eq!(
        fingerprint(&on_disk.store),
        fingerprint(&store.lock().unwrap())
    );
}
