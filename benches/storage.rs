//! `cargo bench --bench storage`: the file backend next to the Postgres backend, in the
//! same run, on the same data:
//! - ops/s persisted: upserts merged as fast as one thread can, group-committed every
//!   FLUSH_MS (200 ms, the default), until the last one is durable;
//! - load time of 100k and 1M nodes: a compacted snapshot plus 100k journal records
//!   on top, read back into a store as the daemon does at start;
//! - ops/s persisted by 1, 2 and 4 daemons sharing one DB_NAME in Postgres (each
//!   merges its share and tails the others' rows), against one daemon in the same run.
//!
//! Postgres is the server at PG_BENCH_URL (or PG_TEST_URL); without one only the
//! file backend runs. `BENCH_MAX_NODES` (default 1000000) caps the largest graph.

use genosdb_fallback::persist::codec;
use genosdb_fallback::persist::files::{self, JournalWriter, Layout};
use genosdb_fallback::persist::pg::{self, PgBackend, PgTarget};
use genosdb_fallback::persist::{MAX_UNWRITTEN_BYTES, PersistConfig, Persistence};
use genosdb_fallback::store::{Effect, Hlc, Op, RawJson, Store, UpsertOp};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

const NOW: u64 = 1_800_000_000_000;

fn value(i: u64, round: u64) -> String {
    format!(r#"{{"title":"note {i}","n":{i},"round":{round},"done":false}}"#)
}

fn upserts(n: u64, ids: u64, round: u64) -> Vec<Op> {
    (0..n)
        .map(|k| {
            let i = (k.wrapping_mul(2_654_435_761)) % ids;
            Op::Upsert(UpsertOp {
                id: format!("node-{i:08}"),
                value: Some(RawJson::parse(value(i, round)).unwrap()),
                ts: Hlc::new(1_700_000_000_000 + round, k),
            })
        })
        .collect()
}

fn filled(n: u64) -> Store {
    let mut s = Store::new(1000);
    for op in upserts(n, n, 0) {
        s.apply(op, NOW);
    }
    s
}

fn journal_records(n: u64, count: u64) -> Vec<u8> {
    let mut buf = Vec::new();
    for k in 0..count {
        let effect = Effect::Upsert {
            id: format!("node-{:08}", (k * 7) % n).into(),
            value: Some(RawJson::parse(value(k, 3)).unwrap()),
            ts: Hlc::new(1_900_000_000_000, k),
        };
        codec::encode_record(&effect, &mut buf).expect("a small record");
    }
    buf
}

#[derive(Clone)]
enum Backend {
    Files(std::path::PathBuf),
    Pg(Box<PgTarget>),
}

impl Backend {
    fn name(&self) -> &'static str {
        match self {
            Backend::Files(_) => "files",
            Backend::Pg(_) => "postgres",
        }
    }
}

fn db_name(what: &str) -> String {
    format!("bench-{what}-{}", std::process::id())
}

fn config(dir: &std::path::Path, db: &str) -> PersistConfig {
    PersistConfig {
        layout: Layout::new(dir, db),
        oplog_size: 1000,
        flush_every: Duration::from_millis(200),
        compact_bytes: 64 << 20,
        max_unwritten_bytes: MAX_UNWRITTEN_BYTES,
    }
}

/// Merges `ops` into a fresh store and returns ops/s until the last is persisted.
fn ops_persisted(backend: &Backend, ops: Vec<Op>) -> (f64, u64) {
    let db = db_name("ops");
    let tmp = tempfile::tempdir().unwrap();
    let cfg = config(tmp.path(), &db);
    let (store, p, _lock) = match backend {
        Backend::Files(_) => {
            let (lock, loaded, writer) = files::open_for_daemon(&cfg.layout, 1000).unwrap();
            let store = Arc::new(Mutex::new(loaded.store));
            let p = Persistence::start(cfg, store.clone(), writer).unwrap();
            (store, p, Some(lock))
        }
        Backend::Pg(target) => {
            let mut b = PgBackend::new((**target).clone(), &cfg);
            let loaded = b.load_now().unwrap();
            let next = loaded.next_seq;
            let store = Arc::new(Mutex::new(loaded.store));
            let p = Persistence::start_with(cfg, store.clone(), Box::new(b), next).unwrap();
            (store, p, None)
        }
    };
    let t = Instant::now();
    let mut applied = 0u64;
    for chunk in ops.chunks(1000) {
        let mut s = store.lock().unwrap();
        for op in chunk {
            applied += s.apply(op.clone(), NOW) as u64;
        }
    }
    while p.status.records_persisted.load(Ordering::Relaxed) < applied {
        std::thread::sleep(Duration::from_millis(1));
    }
    let took = t.elapsed().as_secs_f64();
    let bytes = p.status.bytes_persisted.load(Ordering::Relaxed);
    p.shutdown();
    if let Backend::Pg(target) = backend {
        cleanup(target, &db);
    }
    (applied as f64 / took, bytes)
}

/// Stores a snapshot of `n` nodes plus 100k journal records, then times a load.
fn load_time(backend: &Backend, n: u64, store: &Store) -> (Duration, u64) {
    let db = db_name(&format!("load{n}"));
    let snapshot = codec::encode_snapshot(store, 0);
    let journal = journal_records(n, 100_000);
    match backend {
        Backend::Files(dir) => {
            let layout = Layout::new(dir.join(format!("load{n}")), &db);
            std::fs::create_dir_all(&layout.dir).unwrap();
            files::write_atomic(&layout.snapshot(), &snapshot).unwrap();
            let mut w = JournalWriter::create(&layout, 0).unwrap();
            w.append(&journal, 100_000).unwrap();
            let t = Instant::now();
            let loaded = files::load(&layout, 1000).unwrap();
            let took = t.elapsed();
            assert_eq!(loaded.store.len() as u64, n);
            assert_eq!(loaded.next_seq, 100_000);
            (took, snapshot.len() as u64)
        }
        Backend::Pg(target) => {
            let mut c = pg::open_session(target).unwrap();
            c.compact(&db, 1000, Some(store), true, pg::RETAIN).unwrap();
            // As the flusher leaves it: one row per group commit, here 1000 records each.
            let mut rest = &journal[..];
            let mut seq = 0u64;
            while !rest.is_empty() {
                let mut end = 0;
                for _ in 0..1000 {
                    if end >= rest.len() {
                        break;
                    }
                    let len = u32::from_le_bytes(rest[end..end + 4].try_into().unwrap()) as usize;
                    end += codec::RECORD_HEADER_LEN + len;
                }
                let records = 1000.min(100_000 - seq);
                c.append(&db, "bench", seq, &rest[..end], records).unwrap();
                seq += records;
                rest = &rest[end..];
            }
            drop(c);
            let t = Instant::now();
            let loaded = pg::load_readonly(target, &db, 1000).unwrap();
            let took = t.elapsed();
            assert_eq!(loaded.store.len() as u64, n);
            assert_eq!(loaded.journal_records, 100_000);
            cleanup(target, &db);
            (took, snapshot.len() as u64)
        }
    }
}

fn cleanup(target: &PgTarget, db: &str) {
    if let Ok(mut c) = pg::open_session(target) {
        let _ = c.delete_all(db);
    }
}

/// `daemons` Postgres backends on one DB_NAME, as several daemons run them, each
/// merging its share of `ops` into its own store at once: aggregate ops/s until every
/// one is persisted. Each also tails the others' rows meanwhile, as daemons do.
fn ops_persisted_shared(target: &PgTarget, ops: &[Op], daemons: usize) -> f64 {
    let db = db_name(&format!("shared{daemons}"));
    let tmp = tempfile::tempdir().unwrap();
    let opened: Vec<_> = (0..daemons)
        .map(|_| {
            let cfg = config(tmp.path(), &db);
            let mut b = PgBackend::new(target.clone(), &cfg);
            let loaded = b.load_now().unwrap();
            let store = Arc::new(Mutex::new(loaded.store));
            let p = Persistence::start_with(cfg, store.clone(), Box::new(b), 0).unwrap();
            (store, p)
        })
        .collect();
    let share = ops.len().div_ceil(daemons);
    let t = Instant::now();
    std::thread::scope(|s| {
        for ((store, p), part) in opened.iter().zip(ops.chunks(share)) {
            s.spawn(move || {
                let mut applied = 0u64;
                for chunk in part.chunks(1000) {
                    let mut st = store.lock().unwrap();
                    for op in chunk {
                        applied += st.apply(op.clone(), NOW) as u64;
                    }
                }
                while p.status.records_persisted.load(Ordering::Relaxed) < applied {
                    std::thread::sleep(Duration::from_millis(1));
                }
            });
        }
    });
    let took = t.elapsed().as_secs_f64();
    for (_, p) in opened {
        p.shutdown();
    }
    cleanup(target, &db);
    ops.len() as f64 / took
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let max: u64 = std::env::var("BENCH_MAX_NODES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let tmp = tempfile::tempdir().unwrap();
    let mut backends = vec![Backend::Files(tmp.path().to_owned())];
    match std::env::var("PG_BENCH_URL").or_else(|_| std::env::var("PG_TEST_URL")) {
        Ok(url) if !url.is_empty() => backends.push(Backend::Pg(Box::new(
            PgTarget::parse(&url).expect("PG_BENCH_URL is a postgres:// URL"),
        ))),
        _ => println!("no PG_BENCH_URL or PG_TEST_URL: the file backend only"),
    }
    let mut table = Vec::new();

    let ops_n = 1_000_000u64.min(max.max(10_000));
    let ops = upserts(ops_n, (ops_n / 10).max(1), 1);
    for b in &backends {
        let (rate, bytes) = ops_persisted(b, ops.clone());
        println!(
            r#"{{"bench":"ops_persisted","backend":"{}","ops":{ops_n},"ops_per_s":{rate:.0},"bytes":{bytes}}}"#,
            b.name()
        );
        table.push((
            format!("ops/s persisted ({ops_n} upserts, FLUSH_MS=200)"),
            b.name(),
            format!("{rate:.0} ops/s"),
        ));
    }
    if let Some(Backend::Pg(target)) = backends.get(1) {
        // Distinct ids, so that each daemon's share is all merged (persisted) by it.
        let shared = upserts(ops_n, ops_n, 2);
        let mut one = 0.0;
        for daemons in [1usize, 2, 4] {
            // The median of three runs: the machine is shared, a run is short.
            let mut runs: Vec<f64> = (0..3)
                .map(|_| ops_persisted_shared(target, &shared, daemons))
                .collect();
            runs.sort_by(f64::total_cmp);
            let rate = runs[1];
            if daemons == 1 {
                one = rate;
            }
            println!(
                r#"{{"bench":"ops_persisted_shared","backend":"postgres","daemons":{daemons},"ops":{},"ops_per_s":{rate:.0},"vs_one":{:.2}}}"#,
                shared.len(),
                rate / one
            );
            table.push((
                format!(
                    "ops/s persisted, {daemons} daemon(s) on one DB_NAME ({} upserts)",
                    shared.len()
                ),
                "postgres",
                format!("{rate:.0} ops/s ({:.2}x one daemon)", rate / one),
            ));
        }
    }
    drop(ops);

    for n in [100_000u64, 1_000_000].into_iter().filter(|&n| n <= max) {
        let store = filled(n);
        for b in &backends {
            let (took, snapshot_bytes) = load_time(b, n, &store);
            let ms = took.as_secs_f64() * 1e3;
            println!(
                r#"{{"bench":"load","backend":"{}","nodes":{n},"journal_records":100000,"load_ms":{ms:.1},"snapshot_bytes":{snapshot_bytes}}}"#,
                b.name()
            );
            table.push((
                format!("load {n} nodes + 100k journal records"),
                b.name(),
                format!(
                    "{ms:.0} ms (snapshot {:.1} MB)",
                    snapshot_bytes as f64 / 1e6
                ),
            ));
        }
    }

    println!();
    println!("| measure | backend | result |");
    println!("| --- | --- | --- |");
    for (what, backend, result) in table {
        println!("| {what} | {backend} | {result} |");
    }
}
