//! Data that must never be lost (issue 17, items 5 and 6), through the real binary:
//! a damaged journal stops the start with every file byte-identical, and nothing is
//! written that the reader would refuse.

mod common;

use common::wait_until;

use genosdb_fallback::persist::codec::{JOURNAL_HEADER_LEN, MAX_RECORD_LEN, RECORD_HEADER_LEN};
use genosdb_fallback::persist::files::{self, Layout};
use genosdb_fallback::persist::{PersistConfig, Persistence};
use genosdb_fallback::store::{Hlc, Op, RawJson, Store, UpsertOp};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

const NOW: u64 = 1_800_000_000_000;

fn upsert(i: u64, value: String) -> Op {
    Op::Upsert(UpsertOp {
        id: format!("n{i:03}"),
        value: Some(RawJson::parse(value).unwrap()),
        ts: Hlc::new(1_000_000 + i, 0),
    })
}

fn start(layout: &Layout) -> (files::DirLock, Arc<Mutex<Store>>, Persistence) {
    let (lock, loaded, writer) = files::open_for_daemon(layout, 1000).unwrap();
    let store = Arc::new(Mutex::new(loaded.store));
    let p = Persistence::start(
        PersistConfig {
            layout: layout.clone(),
            oplog_size: 1000,
            flush_every: Duration::from_millis(10),
            compact_bytes: 1 << 30,
            max_unwritten_bytes: genosdb_fallback::persist::MAX_UNWRITTEN_BYTES,
        },
        store.clone(),
        writer,
    )
    .unwrap();
    (lock, store, p)
}

/// A live journal of `n` records, one node each; returns where each record starts.
fn journal_of(layout: &Layout, n: u64) -> Vec<usize> {
    let (lock, store, p) = start(layout);
    for i in 0..n {
        store.lock().unwrap().apply(
            upsert(i, format!(r#"{{"i":{i},"pad":"{}"}}"#, "p".repeat(60))),
            NOW,
        );
    }
    wait_until("records written", || {
        p.status.records_persisted.load(Ordering::Relaxed) == n
    });
    p.shutdown();
    drop(lock);
    let bytes = std::fs::read(layout.journal()).unwrap();
    let mut starts = vec![JOURNAL_HEADER_LEN];
    let mut pos = JOURNAL_HEADER_LEN;
    while pos < bytes.len() {
        pos += RECORD_HEADER_LEN
            + u32::from_le_bytes(bytes[pos..pos + 4].try_into().unwrap()) as usize;
        starts.push(pos);
    }
    assert_eq!(starts.len() as u64, n + 1);
    starts
}

/// Every file of the directory with its bytes.
fn files_in(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (
                e.file_name().to_string_lossy().into_owned(),
                std::fs::read(e.path()).unwrap(),
            )
        })
        .collect()
}

fn assert_untouched(dir: &Path, before: &BTreeMap<String, Vec<u8>>, what: &str) {
    let after = files_in(dir);
    assert_eq!(
        after.keys().collect::<Vec<_>>(),
        before.keys().collect::<Vec<_>>(),
        "{what}: files came or went"
    );
    for (name, bytes) in before {
        assert!(after[name] == *bytes, "{what}: {name} changed");
    }
}

/// The daemon, `export` and `backup` all refuse a damaged store with exit 1, naming
/// the damage, and leave every file byte-identical.
fn assert_refused_untouched(dir: &Path, needle: &str) {
    let before = files_in(dir);
    let mut d = common::Daemon::start(dir, &[]);
    let status = d.wait(Duration::from_secs(30));
    assert_eq!(status.code(), Some(1), "{}", d.lines.join("\n"));
    let log = d.lines.join("\n");
    assert!(
        log.contains(needle),
        "the error does not say {needle:?}:\n{log}"
    );
    assert!(!log.contains("ignored a journal record torn"), "{log}");
    // Compaction, had it started, would have needed this long and more.
    std::thread::sleep(Duration::from_millis(300));
    assert_untouched(dir, &before, "the daemon");
    for args in [&["export"][..], &["backup", "/dev/null"][..]] {
        let out = common::run(dir, args, &[]);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains(needle),
            "{args:?}"
        );
        assert_untouched(dir, &before, &format!("{args:?}"));
    }
}

/// The review's case: one flipped bit in the length field of record 50 of 100 made the
/// daemon call the rest a torn tail, compact it away, and lose 50 intact records.
#[test]
fn a_flipped_bit_mid_journal_stops_the_start_and_touches_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = common::data_dir(&tmp);
    let layout = Layout::new(&dir, common::DB);
    let starts = journal_of(&layout, 100);
    let clean = std::fs::read(layout.journal()).unwrap();
    for (record, byte, bit) in [(50, 1, 3), (50, 0, 0), (10, 2, 7), (98, 1, 1)] {
        let mut bytes = clean.clone();
        bytes[starts[record] + byte] ^= 1 << bit;
        std::fs::write(layout.journal(), &bytes).unwrap();
        assert_refused_untouched(&dir, "the segment is damaged, not torn");
    }
    // Damage in the payload, not the length, is refused the same way.
    let mut bytes = clean.clone();
    bytes[starts[50] + RECORD_HEADER_LEN + 5] ^= 0x01;
    std::fs::write(layout.journal(), &bytes).unwrap();
    assert_refused_untouched(&dir, "fails its checksum, yet a whole record follows");

    // Undamaged again, every record is there.
    std::fs::write(layout.journal(), &clean).unwrap();
    assert_eq!(common::export(&dir).len(), 100);
}

/// The same bit in the last record is a torn tail (a crash mid-append): the daemon
/// starts with the 99 whole records, cuts the tail off, and keeps them after restarts.
#[test]
fn damage_in_the_last_record_is_a_torn_tail_and_cut_off() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = common::data_dir(&tmp);
    let layout = Layout::new(&dir, common::DB);
    let starts = journal_of(&layout, 100);
    let mut bytes = std::fs::read(layout.journal()).unwrap();
    bytes[starts[99] + 1] ^= 0x08;
    std::fs::write(layout.journal(), &bytes).unwrap();
    for round in 0..2 {
        let mut d = common::Daemon::start_ready(&dir, &[]);
        let (_, body) = d.get("/health");
        assert!(body.contains("\"nodes\":99"), "round {round}: {body}");
        let torn_warned = d
            .lines
            .iter()
            .any(|l| l.contains("ignored a journal record torn"));
        assert_eq!(torn_warned, round == 0, "round {round}");
        assert_eq!(d.stop().code(), Some(0));
    }
    assert_eq!(common::export(&dir).len(), 99);
}

/// A sealed segment was whole when it was sealed: bytes after its last record are
/// damage, never a torn tail, and must not be compacted away.
#[test]
fn a_sealed_segment_that_ends_torn_is_refused_untouched() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = common::data_dir(&tmp);
    let layout = Layout::new(&dir, common::DB);
    journal_of(&layout, 20);
    let bytes = std::fs::read(layout.journal()).unwrap();
    std::fs::write(layout.journal(), &bytes[..bytes.len() - 7]).unwrap();
    std::fs::rename(layout.journal(), layout.sealed(0)).unwrap();
    assert_refused_untouched(&dir, "only the live segment may end torn");
}

/// The writer enforces the reader's record limit on the daemon's own path: an effect
/// over it is never journaled (once it was, and the store was bricked); the graph is
/// written whole as a snapshot instead, and both nodes read back.
#[test]
fn an_effect_over_the_record_limit_is_written_as_a_snapshot_not_a_record() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = common::data_dir(&tmp);
    let layout = Layout::new(&dir, common::DB);
    let (lock, store, p) = start(&layout);
    let big = format!("\"{}\"", "b".repeat(MAX_RECORD_LEN + 1024));
    store.lock().unwrap().apply(upsert(1, big), NOW);
    store
        .lock()
        .unwrap()
        .apply(upsert(2, "\"small\"".into()), NOW);
    wait_until("the snapshot from memory", || {
        std::fs::metadata(layout.snapshot()).is_ok() && !p.status.degraded()
    });
    p.shutdown();
    drop(lock);
    let journal = std::fs::metadata(layout.journal()).unwrap().len();
    assert!(
        journal < MAX_RECORD_LEN as u64,
        "the journal holds {journal} bytes: the big record was written"
    );
    for _ in 0..2 {
        let loaded = files::load(&layout, 1000).expect("the store reads back");
        let s = &loaded.store;
        assert_eq!(s.len(), 2);
        let v = s.get("n001").unwrap().value.as_ref().unwrap().get().len();
        assert_eq!(v, MAX_RECORD_LEN + 1026);
        assert_eq!(
            s.get("n002").unwrap().value.as_ref().unwrap().get(),
            "\"small\""
        );
    }
    let out = common::run(&dir, &["export"], &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 2);
}

fn import(dir: &Path, text: &str, envs: &[(&str, &str)]) -> std::process::Output {
    let file = dir.parent().unwrap().join("import.jsonl");
    std::fs::write(&file, text).unwrap();
    common::run(dir, &["import", file.to_str().unwrap()], envs)
}

const TS: &str = r#""timestamp":{"physical":1700000000000,"logical":0}"#;

/// `import` refuses what the daemon refuses from a peer, and what no reader could read
/// back, with a clear error and the store byte-identical: once a 100 MB node reported
/// `adopted=1`, was never readable, and bricked the store.
#[test]
fn import_refuses_nodes_the_store_could_not_keep_and_changes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = common::data_dir(&tmp);
    let good: String = (0..3)
        .map(|i| format!("{{\"id\":\"ok{i}\",\"value\":{i},\"edges\":[],{TS}}}\n"))
        .collect();
    let out = import(&dir, &good, &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let before = files_in(&dir);

    let over_value = format!(
        "{good}{{\"id\":\"big\",\"value\":\"{}\",{TS}}}\n",
        "v".repeat((1 << 20) + 1)
    );
    let huge = format!(
        "{good}{{\"id\":\"huge\",\"value\":\"{}\",{TS}}}\n",
        "h".repeat(MAX_RECORD_LEN + 16)
    );
    type Env<'a> = &'a [(&'a str, &'a str)];
    let cases: [(&str, &str, Env); 4] = [
        (
            &over_value,
            "line 4: the value of node \"big\" is 1048579 bytes, over MAX_VALUE_BYTES (1048576)",
            &[],
        ),
        (
            "{\"id\":\"x\"}\n",
            "line 1: node \"x\" has neither a value nor a timestamp",
            &[],
        ),
        (
            &format!("{good}{{\"id\":\"e\",\"edges\":[\"a\"]}}\n"),
            "line 4: node \"e\" has neither",
            &[],
        ),
        (
            &huge,
            "line 4: node \"huge\" is too large to store",
            &[("MAX_VALUE_BYTES", "1073741824")],
        ),
    ];
    for (text, needle, envs) in cases {
        let out = import(&dir, text, envs);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{needle}: {stderr}");
        assert!(stderr.contains(needle), "wanted {needle:?} in:\n{stderr}");
        assert!(stderr.contains("nothing was imported"), "{stderr}");
        assert!(!stderr.contains("imported read="), "{stderr}");
        assert_untouched(&dir, &before, needle);
    }
    // The store still starts, exports and backs up.
    assert_eq!(common::export(&dir).len(), 3);
    let mut d = common::Daemon::start_ready(&dir, &[]);
    assert!(d.get("/health").1.contains("\"nodes\":3"));
    assert_eq!(d.stop().code(), Some(0));
}
