//! `cargo bench --bench store`: merge throughput, the cost of persisting one op, and
//! cold start, each next to a baseline measured in the same run.
//!
//! Baselines: merging is compared with bare `HashMap` inserts of the same data (the
//! floor any in-memory store pays); persisting one op is compared with rewriting the
//! whole graph, which is what genossrv does every 200 ms under load.
//!
//! `BENCH_MAX_NODES` (default 1000000) caps the largest graph for quick runs.

use genosdb_fallback::persist::codec;
use genosdb_fallback::persist::files::{self, JournalWriter, Layout as Files};
use genosdb_fallback::store::{Effect, Hlc, Op, RawJson, Store, UpsertOp};
use std::alloc::{GlobalAlloc, Layout};
use std::collections::HashMap;
use std::hint::black_box;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

const NOW: u64 = 1_800_000_000_000;

/// Counts live heap bytes, so "bytes per node" is exact rather than an RSS guess. It
/// allocates with mimalloc, as the daemon does.
struct Counting;
static INNER: mimalloc::MiMalloc = mimalloc::MiMalloc;
static LIVE: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size(), Ordering::Relaxed);
        unsafe { INNER.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        unsafe { INNER.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(new_size, Ordering::Relaxed);
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        unsafe { INNER.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

fn value(i: u64, round: u64) -> String {
    format!(r#"{{"title":"note {i}","n":{i},"round":{round},"done":false}}"#)
}

fn upserts(n: u64, ids: u64, round: u64) -> Vec<Op> {
    // A cheap permutation so that updates land on scattered ids.
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

fn heap_bytes() -> u64 {
    LIVE.load(Ordering::Relaxed) as u64
}

struct Report {
    rows: Vec<(String, String, String)>,
}

impl Report {
    fn row(&mut self, name: &str, value: String, vs: String, json: String) {
        println!("{json}");
        self.rows.push((name.to_owned(), value, vs));
    }
}

fn merge_throughput(report: &mut Report, n: u64) {
    let mut store = filled(n);
    let ops = upserts(n.min(1_000_000), n, 1);
    let count = ops.len() as f64;
    let t = Instant::now();
    for op in ops {
        store.apply(op, NOW);
    }
    let ours = count / t.elapsed().as_secs_f64();
    black_box(&store);
    drop(store);

    // Baseline: the same ids and values into a bare HashMap<String, String> with the
    // same hasher the store uses.
    let mut map: HashMap<String, String, ahash::RandomState> =
        HashMap::with_capacity_and_hasher(n as usize, ahash::RandomState::new());
    for i in 0..n {
        map.insert(format!("node-{i:08}"), value(i, 0));
    }
    let pairs: Vec<(String, String)> = (0..n.min(1_000_000))
        .map(|k| {
            let i = (k.wrapping_mul(2_654_435_761)) % n;
            (format!("node-{i:08}"), value(i, 1))
        })
        .collect();
    let t = Instant::now();
    for (k, v) in pairs {
        map.insert(k, v);
    }
    let base = count / t.elapsed().as_secs_f64();
    black_box(&map);
    report.row(
        &format!("merge upserts, {n} nodes"),
        format!("{:.0} ops/s", ours),
        format!("{:.2}x of bare HashMap ({:.0}/s)", ours / base, base),
        format!(
            r#"{{"bench":"merge_upserts","nodes":{n},"ops_per_sec":{ours:.0},"baseline_hashmap_ops_per_sec":{base:.0},"ratio":{:.3}}}"#,
            ours / base
        ),
    );
}

/// One op journaled and fsynced on its own (the worst case of group commit), versus
/// rewriting the whole graph as one snapshot.
fn persist_one_op(report: &mut Report, n: u64, dir: &std::path::Path) -> (Duration, Duration) {
    let store = filled(n);
    let layout = Files::new(dir.join(format!("p{n}")), "bench");
    std::fs::create_dir_all(&layout.dir).unwrap();
    let mut writer = JournalWriter::create(&layout, 0).unwrap();
    let rounds = 200u64;
    let mut buf = Vec::new();
    let t = Instant::now();
    for k in 0..rounds {
        buf.clear();
        let effect = Effect::Upsert {
            id: format!("node-{:08}", k % n).into(),
            value: Some(RawJson::parse(value(k, 2)).unwrap()),
            ts: Hlc::new(1_800_000_000_000, k),
        };
        codec::encode_record(&effect, &mut buf).expect("a small record");
        writer.append(&buf, 1).unwrap();
    }
    let per_op = t.elapsed() / rounds as u32;

    let snaps = if n >= 1_000_000 { 3 } else { 20 };
    let t = Instant::now();
    for _ in 0..snaps {
        let bytes = codec::encode_snapshot(&store, 0);
        files::write_atomic(&layout.snapshot(), &bytes).unwrap();
    }
    let rewrite = t.elapsed() / snaps;
    report.row(
        &format!("persist one op, {n} nodes"),
        format!("{:.1} µs", per_op.as_secs_f64() * 1e6),
        format!("full rewrite {:.1} ms ({:.0}x)", rewrite.as_secs_f64() * 1e3, rewrite.as_secs_f64() / per_op.as_secs_f64()),
        format!(
            r#"{{"bench":"persist_one_op","nodes":{n},"journal_append_fsync_us":{:.1},"snapshot_rewrite_ms":{:.2}}}"#,
            per_op.as_secs_f64() * 1e6,
            rewrite.as_secs_f64() * 1e3
        ),
    );
    (per_op, rewrite)
}

fn cold_start(report: &mut Report, n: u64, dir: &std::path::Path) {
    let layout = Files::new(dir.join(format!("cold{n}")), "bench");
    std::fs::create_dir_all(&layout.dir).unwrap();
    let before = heap_bytes();
    let store = filled(n);
    let held = heap_bytes().saturating_sub(before);
    let bytes = codec::encode_snapshot(&store, 0);
    files::write_atomic(&layout.snapshot(), &bytes).unwrap();
    drop(store);
    let t = Instant::now();
    let snapshot_only = files::load(&layout, 1000).unwrap();
    let snapshot_took = t.elapsed();
    assert_eq!(snapshot_only.store.len() as u64, n);
    drop(snapshot_only);
    report.row(
        &format!("cold start, {n} nodes (snapshot only)"),
        format!("{:.0} ms", snapshot_took.as_secs_f64() * 1e3),
        format!(
            "{:.2} µs/node",
            snapshot_took.as_secs_f64() * 1e6 / n as f64
        ),
        format!(
            r#"{{"bench":"cold_start_snapshot","nodes":{n},"load_ms":{:.1}}}"#,
            snapshot_took.as_secs_f64() * 1e3
        ),
    );
    // Plus a journal of 100k records to replay on top.
    let mut writer = JournalWriter::create(&layout, 0).unwrap();
    let mut buf = Vec::new();
    for k in 0..100_000u64 {
        let effect = Effect::Upsert {
            id: format!("node-{:08}", (k * 7) % n).into(),
            value: Some(RawJson::parse(value(k, 3)).unwrap()),
            ts: Hlc::new(1_900_000_000_000, k),
        };
        codec::encode_record(&effect, &mut buf).expect("a small record");
    }
    writer.append(&buf, 100_000).unwrap();
    let took = daemon_load_ms(&layout.dir);
    report.row(
        &format!("cold start, {n} nodes + 100k journal records"),
        format!("{took:.0} ms"),
        format!(
            "fresh daemon process; snapshot {:.1} MB; graph held in {:.0} B/node",
            bytes.len() as f64 / 1e6,
            held as f64 / n as f64
        ),
        format!(
            r#"{{"bench":"cold_start","nodes":{n},"journal_records":100000,"load_ms":{took:.1},"snapshot_bytes":{},"heap_bytes_per_node":{:.0}}}"#,
            bytes.len(),
            held as f64 / n as f64
        ),
    );
}

/// Starts the real daemon on `dir` (loopback, no RTC) and reads how long it took to
/// load the store from its own log line, then stops it.
fn daemon_load_ms(dir: &std::path::Path) -> f64 {
    use std::io::{BufRead, BufReader};
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_genosdb-fallback"))
        .env_clear()
        .env("DB_NAME", "bench")
        .env("DATA_DIR", dir)
        .env("HOST", "127.0.0.1")
        .env("PORT", "0")
        .env("RTC_ENABLED", "false")
        .env("RELAY_URLS", "")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start the daemon");
    let stderr = child.stderr.take().unwrap();
    let mut took = None;
    for line in BufReader::new(stderr).lines().map_while(Result::ok) {
        if line.contains("store loaded") {
            took = line
                .split("took_ms=")
                .nth(1)
                .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok());
        }
        if line.contains(" ready") {
            break;
        }
    }
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let _ = child.wait();
    took.expect("the daemon logs its load time")
}

fn main() {
    // `cargo bench` passes --bench; any other argument filters nothing here.
    let max: u64 = std::env::var("BENCH_MAX_NODES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let sizes: Vec<u64> = [10_000, 100_000, 1_000_000]
        .into_iter()
        .filter(|&n| n <= max)
        .collect();
    let tmp = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let mut report = Report { rows: Vec::new() };

    // BENCH_ONLY=merge|persist|cold runs one group (for profiling).
    let only = std::env::var("BENCH_ONLY").unwrap_or_default();
    let runs = |group: &str| only.is_empty() || only == group;
    let big_n = *sizes.last().unwrap();
    if runs("merge") {
        for &n in &sizes {
            merge_throughput(&mut report, n);
        }
    }
    if runs("persist") {
        persist_ratio(&mut report, big_n, tmp.path());
    }
    if runs("cold") {
        cold_start(&mut report, big_n, tmp.path());
    }

    println!();
    println!("{:<46} {:>16}  against the baseline", "benchmark", "result");
    for (name, value, vs) in &report.rows {
        println!("{name:<46} {value:>16}  {vs}");
    }
}

fn persist_ratio(report: &mut Report, big_n: u64, dir: &std::path::Path) {
    let small = persist_one_op(report, 1_000, dir);
    let big = persist_one_op(report, big_n, dir);
    let ratio = big.0.as_secs_f64() / small.0.as_secs_f64();
    report.row(
        "persist one op: large / 1k",
        format!("{ratio:.2}x"),
        format!("full rewrite {:.0}x", big.1.as_secs_f64() / small.1.as_secs_f64()),
        format!(
            r#"{{"bench":"persist_one_op_ratio","small_nodes":1000,"large_nodes":{big_n},"journal_ratio":{ratio:.3},"rewrite_ratio":{:.1}}}"#,
            big.1.as_secs_f64() / small.1.as_secs_f64()
        ),
    );
}
