//! A disk that refuses writes, made real with RLIMIT_FSIZE: past the limit every
//! write(2) to a regular file fails (EFBIG), as on a full disk. This file holds one
//! test because the limit is per process.

mod common;

use common::wait_until;
use genosdb_fallback::persist::files::{self, Layout};
use genosdb_fallback::persist::{PersistConfig, Persistence};
use genosdb_fallback::store::{Hlc, Op, RawJson, Store, UpsertOp};
use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

fn set_file_size_limit(bytes: Option<u64>) {
    let limit = libc::rlimit {
        rlim_cur: bytes.unwrap_or(libc::RLIM_INFINITY),
        rlim_max: libc::RLIM_INFINITY,
    };
    assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_FSIZE, &limit) }, 0);
}

fn upsert(i: u64) -> Op {
    Op::Upsert(UpsertOp {
        id: format!("n{}", i % 300),
        value: Some(RawJson::parse(format!(r#"{{"i":{i},"pad":"{}"}}"#, "y".repeat(60))).unwrap()),
        ts: Hlc::new(1_000 + i, 0),
    })
}

fn nodes(s: &Store) -> BTreeMap<String, String> {
    s.nodes()
        .iter()
        .map(|(k, n)| (k.to_string(), n.to_json(k)))
        .collect()
}

#[test]
fn full_disk_degrades_keeps_good_data_and_recovers() {
    // Without this the kernel kills the process at the limit instead of failing the write.
    unsafe { libc::signal(libc::SIGXFSZ, libc::SIG_IGN) };
    let tmp = tempfile::tempdir().unwrap();
    let layout = Layout::new(tmp.path(), "db");
    let (_lock, loaded, writer) = files::open_for_daemon(&layout, 1000).unwrap();
    let store = Arc::new(Mutex::new(loaded.store));
    let p = Persistence::start(
        PersistConfig {
            layout: layout.clone(),
            oplog_size: 1000,
            flush_every: Duration::from_millis(10),
            compact_bytes: 1 << 40,
            // Small, so that the long outage below also exercises the rewrite from memory.
            max_unwritten_bytes: 64 << 10,
        },
        store.clone(),
        writer,
    )
    .unwrap();
    let mut i = 0;
    let mut write = |n: u64| {
        for _ in 0..n {
            store.lock().unwrap().apply(upsert(i), 0);
            i += 1;
        }
    };

    write(200);
    wait_until("the first records", || {
        p.status.records_persisted.load(Ordering::Relaxed) >= 200
    });
    let good_len = std::fs::metadata(layout.journal()).unwrap().len();
    let good = files::load(&layout, 1000).unwrap();

    // Short outage: records wait in memory and go out when space returns.
    set_file_size_limit(Some(good_len + 500));
    write(100);
    wait_until("degraded", || p.status.degraded());
    assert!(p.status.last_error().unwrap().contains("db.journal"));
    let during = files::load(&layout, 1000).unwrap();
    assert!(during.next_seq >= good.next_seq, "good records were lost");
    assert!(std::fs::metadata(layout.journal()).unwrap().len() <= good_len + 500);
    set_file_size_limit(None);
    wait_until("recovery", || !p.status.degraded());
    wait_until("all 300 records", || {
        p.status.records_persisted.load(Ordering::Relaxed) >= 300
    });
    assert_eq!(
        nodes(&files::load(&layout, 1000).unwrap().store),
        nodes(&store.lock().unwrap())
    );

    // Long outage: more than max_unwritten_bytes pile up, are dropped from the queue,
    // and the graph is written from memory once the disk is back.
    // The limit is below any snapshot, so the rewrite also fails until it is lifted.
    set_file_size_limit(Some(64));
    write(3_000);
    wait_until("degraded again", || p.status.degraded());
    std::thread::sleep(Duration::from_millis(200));
    let during = files::load(&layout, 1000).unwrap();
    assert!(
        during.store.len() >= 200,
        "the store on disk still loads whole"
    );
    set_file_size_limit(None);
    write(10);
    wait_until("recovery from memory", || !p.status.degraded());
    p.shutdown();
    let after = files::load(&layout, 1000).unwrap();
    // Only the rewrite from memory writes a snapshot in this test.
    assert!(after.snapshot_bytes > 0);
    assert_eq!(nodes(&after.store), nodes(&store.lock().unwrap()));
    assert_eq!(after.store.delta_json(), store.lock().unwrap().delta_json());
}
