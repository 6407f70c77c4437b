//! The store suite on both backends, against a real Postgres server on 127.0.0.1
//! (PG_TEST_URL, or one the tests start themselves where Postgres is installed: see
//! tests/common/pg.rs).
//!
//! Outages are made with a TCP proxy between the daemon and the server: closing it
//! refuses new connections and cuts the open ones, as a database that went away.

mod common;

use common::{Daemon, wait_until};
use genosdb_fallback::persist::Loaded;
use genosdb_fallback::persist::files::{self, DirLock, Layout};
use genosdb_fallback::persist::pg::{self, PgBackend, PgTarget};
use genosdb_fallback::persist::{MAX_UNWRITTEN_BYTES, PersistConfig, Persistence};
use genosdb_fallback::store::{Hlc, Op, RawJson, RemoveOp, Store, UpsertOp};
use std::collections::{BTreeMap, HashSet};
use std::io::{BufRead, BufReader};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::Path;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const NOW: u64 = 1_800_000_000_000;

fn pg_url() -> Option<String> {
    common::pg::url()
}

/// A DB_NAME no other test (or earlier run) uses.
fn unique_db(what: &str) -> String {
    let mut b = [0u8; 6];
    getrandom::fill(&mut b).unwrap();
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!("t-{what}-{hex}")
}

fn password(url: &str) -> String {
    url.split("://")
        .nth(1)
        .and_then(|r| r.split('@').next())
        .and_then(|u| u.split(':').nth(1))
        .unwrap_or("")
        .to_owned()
}

/// `url` pointing at 127.0.0.1:`port` instead (the proxy).
fn via_port(url: &str, port: u16) -> String {
    let (head, rest) = url.split_once('@').unwrap();
    let path = &rest[rest.find('/').unwrap()..];
    format!("{head}@127.0.0.1:{port}{path}")
}

fn upstream_port(url: &str) -> u16 {
    let rest = url.split_once('@').unwrap().1;
    let hostport = &rest[..rest.find('/').unwrap()];
    hostport.rsplit(':').next().unwrap().parse().unwrap()
}

#[derive(Clone)]
enum Kind {
    Files,
    Pg(String),
}

/// Test output names the backend, never the password.
impl std::fmt::Debug for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Kind::Files => f.write_str("files"),
            Kind::Pg(url) => write!(f, "postgres {:?}", PgTarget::parse(url).unwrap()),
        }
    }
}

impl Kind {
    fn all() -> Vec<Kind> {
        let mut v = vec![Kind::Files];
        if let Some(url) = pg_url() {
            v.push(Kind::Pg(url));
        }
        v
    }

    fn env(&self) -> Vec<(&'static str, String)> {
        match self {
            Kind::Files => vec![],
            Kind::Pg(url) => vec![("DATABASE_URL", url.clone())],
        }
    }
}

/// A store to test: its backend, DB_NAME and DATA_DIR.
struct Case {
    kind: Kind,
    db: String,
    tmp: tempfile::TempDir,
}

impl Case {
    fn new(kind: &Kind, what: &str) -> Case {
        Case {
            kind: kind.clone(),
            db: unique_db(what),
            tmp: tempfile::tempdir().unwrap(),
        }
    }

    fn dir(&self) -> std::path::PathBuf {
        self.tmp.path().join("data")
    }

    fn envs(&self) -> Vec<(&'static str, String)> {
        let mut v = self.kind.env();
        v.push(("DB_NAME", self.db.clone()));
        v
    }

    fn run(&self, args: &[&str], extra: &[(&str, &str)]) -> std::process::Output {
        let envs = self.envs();
        let mut all: Vec<(&str, &str)> = envs.iter().map(|(k, v)| (*k, v.as_str())).collect();
        all.extend_from_slice(extra);
        common::run(&self.dir(), args, &all)
    }

    fn export(&self) -> Vec<String> {
        let out = self.run(&["export"], &[]);
        assert!(
            out.status.success(),
            "export: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    fn import(&self, file: &Path) {
        let out = self.run(&["import", file.to_str().unwrap()], &[]);
        assert!(
            out.status.success(),
            "import: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn daemon(&self, extra: &[(&str, &str)]) -> Daemon {
        let envs = self.envs();
        let mut all: Vec<(&str, &str)> = envs.iter().map(|(k, v)| (*k, v.as_str())).collect();
        all.extend_from_slice(extra);
        Daemon::start_ready(&self.dir(), &all)
    }

    fn persist_config(&self, flush_ms: u64, compact_bytes: u64) -> PersistConfig {
        PersistConfig {
            layout: Layout::new(self.dir(), &self.db),
            oplog_size: 1000,
            flush_every: Duration::from_millis(flush_ms),
            compact_bytes,
            max_unwritten_bytes: MAX_UNWRITTEN_BYTES,
        }
    }

    /// Opens the store in this process, as the daemon does.
    fn open(&self, flush_ms: u64, compact_bytes: u64) -> Open {
        let cfg = self.persist_config(flush_ms, compact_bytes);
        match &self.kind {
            Kind::Files => {
                let (lock, loaded, writer) = files::open_for_daemon(&cfg.layout, 1000).unwrap();
                let store = Arc::new(Mutex::new(loaded.store));
                let p = Persistence::start(cfg, store.clone(), writer).unwrap();
                Open {
                    store,
                    p,
                    _lock: Some(lock),
                }
            }
            Kind::Pg(url) => {
                let mut backend = PgBackend::new(PgTarget::parse(url).unwrap(), &cfg);
                let loaded = backend.load_now().unwrap();
                let next_seq = loaded.next_seq;
                let store = Arc::new(Mutex::new(loaded.store));
                let p = Persistence::start_with(cfg, store.clone(), Box::new(backend), next_seq)
                    .unwrap();
                Open {
                    store,
                    p,
                    _lock: None,
                }
            }
        }
    }

    /// What the storage holds now, read as export does (no lock, no shutdown first).
    fn stored(&self) -> Loaded {
        match &self.kind {
            Kind::Files => {
                files::load_consistent(&Layout::new(self.dir(), &self.db), 1000).unwrap()
            }
            Kind::Pg(url) => {
                pg::load_readonly(&PgTarget::parse(url).unwrap(), &self.db, 1000).unwrap()
            }
        }
    }
}

struct Open {
    store: Arc<Mutex<Store>>,
    p: Persistence,
    _lock: Option<DirLock>,
}

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

type Fingerprint = (BTreeMap<String, String>, String, Option<Hlc>);

fn fingerprint(s: &Store) -> Fingerprint {
    (
        s.nodes()
            .iter()
            .map(|(k, n)| (k.to_string(), n.to_json(k)))
            .collect(),
        s.delta_json(),
        s.global_ts(),
    )
}

fn node_lines(n: usize, tag: &str) -> Vec<String> {
    (0..n)
        .map(|i| {
            format!(
                r#"{{"id":"{tag}{i:06}","value":{{"i":{i},"pad":"{}"}},"edges":[],"timestamp":{{"physical":1795591854021,"logical":{i}}}}}"#,
                "z".repeat(i % 50)
            )
        })
        .collect()
}

fn write_lines(dir: &Path, name: &str, lines: &[String]) -> std::path::PathBuf {
    let file = dir.join(name);
    std::fs::write(&file, lines.join("\n")).unwrap();
    file
}

// ---- the same suite on both backends -----------------------------------------------

#[test]
fn merged_ops_reach_storage_while_running_and_compaction_loses_nothing() {
    for kind in Kind::all() {
        let case = Case::new(&kind, "merge");
        let o = case.open(20, 16 << 10);
        for round in 1..=4 {
            for i in 0..3_000 {
                o.store.lock().unwrap().apply(upsert(i, round), NOW);
            }
            o.store.lock().unwrap().remove(RemoveOp {
                id: format!("n{round}"),
                ts: Hlc::new(9_000_000, round),
            });
        }
        let total = o.store.lock().unwrap().merged();
        let total = total.upsert + total.remove;
        wait_until("every record persisted", || {
            o.p.status.records_persisted.load(Ordering::Relaxed) >= total
        });
        wait_until("a compaction", || {
            o.p.status.compactions.load(Ordering::Relaxed) >= 1
        });
        // Read as a crash would leave it: no shutdown, flusher still running.
        let stored = case.stored();
        let (a, b) = (
            fingerprint(&stored.store),
            fingerprint(&o.store.lock().unwrap()),
        );
        assert!(a.0 == b.0, "{kind:?}: nodes differ");
        assert!(a.2 == b.2, "{kind:?}: global ts differ {:?} {:?}", a.2, b.2);
        assert!(a.1 == b.1, "{kind:?}: oplog differs");
        assert!(
            stored.snapshot_bytes > 0,
            "{kind:?}: compaction wrote a snapshot"
        );
        assert!(!o.p.status.degraded());
        let memory = fingerprint(&o.store.lock().unwrap());
        o.p.shutdown();
        drop(o._lock);
        // Reopen: the same graph, oplog and global timestamp.
        let again = case.open(20, 64 << 20);
        assert_eq!(
            fingerprint(&again.store.lock().unwrap()),
            memory,
            "{kind:?}"
        );
        again.p.shutdown();
    }
}

#[test]
fn restart_keeps_everything() {
    for kind in Kind::all() {
        let case = Case::new(&kind, "restart");
        let lines = node_lines(2_000, "r");
        let file = write_lines(case.tmp.path(), "in.jsonl", &lines);
        case.import(&file);
        let mut d = case.daemon(&[]);
        let (_, body) = d.get("/health");
        assert!(body.contains("\"nodes\":2000"), "{kind:?}: {body}");
        assert!(body.contains("\"status\":\"ok\""), "{kind:?}: {body}");
        assert_eq!(d.stop().code(), Some(0));
        let mut d = case.daemon(&[]);
        let (_, body) = d.get("/health");
        assert!(body.contains("\"nodes\":2000"), "{kind:?}: {body}");
        assert_eq!(d.stop().code(), Some(0));
        let mut out = case.export();
        out.sort();
        assert_eq!(out, lines, "{kind:?}");
        if let Kind::Pg(url) = &kind {
            let pw = password(url);
            assert!(!pw.is_empty());
            assert!(
                d.lines.iter().all(|l| !l.contains(&pw)),
                "the password reached the log"
            );
            assert!(body.contains("\"storage\":\"postgres\""), "{body}");
        }
    }
}

/// SIGKILL while `import` streams writes: every record the process reported flushed
/// (its `journal flushed … next_seq=N` lines, written after the commit returned) is
/// there afterwards, nothing else is, and the store keeps loading.
#[test]
fn kill_9_during_a_write_stream_keeps_every_flushed_op() {
    for kind in Kind::all() {
        let case = Case::new(&kind, "kill");
        let all = node_lines(40_000, "k");
        let expected: HashSet<&String> = all.iter().collect();
        let file = write_lines(case.tmp.path(), "in.jsonl", &all);
        let mut survived_before = 0;
        let mut killed_mid_write = 0;
        for round in 0..4u64 {
            let mut cmd = common::command(&case.dir());
            for (k, v) in case.envs() {
                cmd.env(k, v);
            }
            let mut child = cmd
                .args(["import", file.to_str().unwrap()])
                .env("FLUSH_MS", "5")
                .env("COMPACT_BYTES", "65536")
                .env("RUST_LOG", "genosdb_fallback::persist=debug")
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            let mut acked = 0u64;
            let stderr = BufReader::new(child.stderr.take().unwrap());
            let want = 1_000 * (round + 1);
            for line in stderr.lines().map_while(Result::ok) {
                if let Some(n) = line
                    .split("next_seq=")
                    .nth(1)
                    .and_then(|s| s.split_whitespace().next())
                    .and_then(|s| s.parse::<u64>().ok())
                    && line.contains("journal flushed")
                {
                    acked = n;
                }
                if acked >= survived_before as u64 + want {
                    break;
                }
            }
            if child.try_wait().unwrap().is_none() {
                killed_mid_write += 1;
            }
            unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
            let _ = child.wait();
            let survived = case.export();
            for line in &survived {
                assert!(expected.contains(line), "{kind:?}: unexpected {line}");
            }
            // One record per node here: import adopts each node once.
            assert!(
                survived.len() as u64 >= acked,
                "{kind:?} round {round}: {} nodes after kill, {acked} were flushed",
                survived.len()
            );
            println!(
                "{kind:?} round {round}: killed after {acked} flushed records; {} nodes survived",
                survived.len()
            );
            survived_before = survived.len();
        }
        assert!(
            killed_mid_write >= 2,
            "{kind:?}: only {killed_mid_write} kills landed mid-write"
        );
        let mut d = case.daemon(&[]);
        assert_eq!(d.stop().code(), Some(0));
        case.import(&file);
        let mut out = case.export();
        out.sort();
        assert_eq!(out, all, "{kind:?}");
    }
}

#[test]
fn export_and_backup_work_on_both_backends() {
    for kind in Kind::all() {
        let case = Case::new(&kind, "backup");
        let lines = node_lines(500, "b");
        case.import(&write_lines(case.tmp.path(), "in.jsonl", &lines));
        let backup = case.tmp.path().join("backup.bin");
        let out = case.run(&["backup", backup.to_str().unwrap()], &[]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        // The backup is a file snapshot whatever the backend: restore it into files.
        let restored = tempfile::tempdir().unwrap();
        let rdir = restored.path().join("data");
        std::fs::create_dir_all(&rdir).unwrap();
        std::fs::copy(&backup, rdir.join(format!("{}.bin", common::DB))).unwrap();
        let mut back = common::export(&rdir);
        back.sort();
        assert_eq!(back, lines, "{kind:?}");
    }
}

// ---- Postgres only ---------------------------------------------------------------

#[test]
fn migrate_files_to_postgres_and_back() {
    let Some(url) = pg_url() else { return };
    let files_case = Case::new(&Kind::Files, "mig");
    let lines = node_lines(3_000, "m");
    files_case.import(&write_lines(files_case.tmp.path(), "in.jsonl", &lines));
    let from_files = files_case.export();
    let db = files_case.db.clone();
    let migrate = |dir: &Path, to: &str| {
        common::run(
            dir,
            &["migrate", "--to", to],
            &[("DB_NAME", db.as_str()), ("DATABASE_URL", url.as_str())],
        )
    };
    let out = migrate(&files_case.dir(), "postgres");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let pg_case = Case {
        kind: Kind::Pg(url.clone()),
        db: db.clone(),
        tmp: tempfile::tempdir().unwrap(),
    };
    assert_eq!(pg_case.export(), from_files);
    // A second migration would overwrite: refused, and nothing changes.
    let out = migrate(&files_case.dir(), "postgres");
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("refusing to overwrite"));
    assert!(!String::from_utf8_lossy(&out.stderr).contains(&password(&url)));
    // And back into an empty DATA_DIR.
    let back = tempfile::tempdir().unwrap();
    let back_dir = back.path().join("data");
    let out = migrate(&back_dir, "files");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = common::run(&back_dir, &["export"], &[("DB_NAME", db.as_str())]);
    assert_eq!(
        String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .collect::<Vec<_>>(),
        from_files
    );
    let out = migrate(&back_dir, "files");
    assert_eq!(
        out.status.code(),
        Some(1),
        "a non-empty DATA_DIR is refused"
    );
}

#[test]
fn two_db_names_in_one_database_stay_apart() {
    let Some(url) = pg_url() else { return };
    let kind = Kind::Pg(url.clone());
    let a = Case::new(&kind, "iso-a");
    let b = Case::new(&kind, "iso-b");
    let la = node_lines(300, "a");
    let lb = node_lines(200, "b");
    a.import(&write_lines(a.tmp.path(), "a.jsonl", &la));
    let mut da = a.daemon(&[]);
    // B's import runs while A's daemon holds A.
    b.import(&write_lines(b.tmp.path(), "b.jsonl", &lb));
    let mut db = b.daemon(&[]);
    assert!(da.get("/health").1.contains("\"nodes\":300"));
    assert!(db.get("/health").1.contains("\"nodes\":200"));
    // A second writer of A's DB_NAME is one more equal: its nodes reach A's daemon.
    let more = node_lines(20, "z");
    a.import(&write_lines(a.tmp.path(), "more.jsonl", &more));
    wait_until("A's daemon reads the import's rows", || {
        da.get("/health").1.contains("\"nodes\":320")
    });
    assert!(db.get("/health").1.contains("\"nodes\":200"));
    assert_eq!(da.stop().code(), Some(0));
    assert_eq!(db.stop().code(), Some(0));
    let mut ea = a.export();
    ea.sort();
    let mut eb = b.export();
    eb.sort();
    let mut la = la;
    la.extend(more);
    la.sort();
    assert_eq!(ea, la);
    assert_eq!(eb, lb);
}

#[test]
fn bad_database_url_exits_2_without_showing_the_password() {
    let tmp = tempfile::tempdir().unwrap();
    for bad in [
        "mysql://u:hunter2@h/d",
        "postgres://u:hunter2@h/d?sslmode=maybe",
        // 17.8: not a URL (a one-slash typo, no scheme, key/value with a bad value).
        "postgres:/u:hunter2@h/d",
        "u:hunter2@h/d",
        "host=h user=u password=hunter2 sslmode=maybe",
        "host=h user=u password='hunter2",
        "host=h hunter2=x",
        // 17.7: a password holding / ? # and an unencoded @.
        "postgres://u:PG/hunter2?x#y@h/d?bogus=1",
        "postgres://u:hun@ter2@h/d",
    ] {
        let out = common::run(&common::data_dir(&tmp), &[], &[("DATABASE_URL", bad)]);
        assert_eq!(out.status.code(), Some(2), "{bad}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("invalid DATABASE_URL"), "{err}");
        assert!(err.contains("postgres://user:pass@host:port/db"), "{err}");
        assert!(!err.contains("hunter2"), "{err}");
        assert!(!err.contains("hun"), "{err}");
    }
}

/// Forwards 127.0.0.1:port to the real server; `down` refuses new connections and
/// cuts the open ones, `up` serves again on the same port.
struct Proxy {
    port: u16,
    up: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<TcpStream>>>,
    stop: Arc<AtomicBool>,
}

impl Proxy {
    fn start(upstream: u16, up: bool) -> Proxy {
        let first = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = first.local_addr().unwrap().port();
        // Serving from the first instant when up; otherwise the port is free until `up`.
        let first = if up {
            first.set_nonblocking(true).unwrap();
            Some(first)
        } else {
            None
        };
        let p = Proxy {
            port,
            up: Arc::new(AtomicBool::new(up)),
            conns: Arc::default(),
            stop: Arc::default(),
        };
        let (upf, conns, stop) = (p.up.clone(), p.conns.clone(), p.stop.clone());
        std::thread::spawn(move || {
            let mut listener: Option<TcpListener> = first;
            while !stop.load(Ordering::Relaxed) {
                if !upf.load(Ordering::Relaxed) {
                    listener = None;
                    std::thread::sleep(Duration::from_millis(5));
                    continue;
                }
                if listener.is_none() {
                    match TcpListener::bind(("127.0.0.1", port)) {
                        Ok(l) => {
                            l.set_nonblocking(true).unwrap();
                            listener = Some(l);
                        }
                        Err(_) => {
                            std::thread::sleep(Duration::from_millis(20));
                            continue;
                        }
                    }
                }
                match listener.as_ref().unwrap().accept() {
                    Ok((client, _)) => {
                        client.set_nonblocking(false).unwrap();
                        let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)) else {
                            continue;
                        };
                        let mut c = conns.lock().unwrap();
                        c.push(client.try_clone().unwrap());
                        c.push(server.try_clone().unwrap());
                        for (mut from, mut to) in [
                            (client.try_clone().unwrap(), server.try_clone().unwrap()),
                            (server, client),
                        ] {
                            std::thread::spawn(move || {
                                let _ = std::io::copy(&mut from, &mut to);
                                let _ = to.shutdown(Shutdown::Both);
                                let _ = from.shutdown(Shutdown::Both);
                            });
                        }
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        p
    }

    fn down(&self) {
        self.up.store(false, Ordering::Relaxed);
        for c in self.conns.lock().unwrap().drain(..) {
            let _ = c.shutdown(Shutdown::Both);
        }
    }

    fn up(&self) {
        self.up.store(true, Ordering::Relaxed);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        self.down();
    }
}

#[test]
fn database_down_and_back_mid_stream_loses_nothing() {
    let Some(url) = pg_url() else { return };
    let proxy = Proxy::start(upstream_port(&url), true);
    let case = Case::new(&Kind::Pg(via_port(&url, proxy.port)), "outage");
    let o = case.open(10, 64 << 20);
    let mut i = 0;
    let mut write = |n: u64| {
        for _ in 0..n {
            o.store.lock().unwrap().apply(upsert(i, 1), NOW);
            i += 1;
        }
    };
    write(1_000);
    wait_until("the first records", || {
        o.p.status.records_persisted.load(Ordering::Relaxed) >= 1_000
    });
    proxy.down();
    write(2_000);
    wait_until("degraded", || o.p.status.degraded());
    write(2_000);
    wait_until("records queued", || {
        o.p.status.unwritten_records.load(Ordering::Relaxed) > 0
    });
    assert!(o.p.status.last_error().unwrap().contains("postgres"));
    assert!(!o.p.status.last_error().unwrap().contains(&password(&url)));
    proxy.up();
    write(1_000);
    wait_until("recovered", || !o.p.status.degraded());
    wait_until("every record persisted", || {
        o.p.status.records_persisted.load(Ordering::Relaxed) >= 6_000
    });
    // Read straight from the server, not through the proxy.
    let stored = pg::load_readonly(&PgTarget::parse(&url).unwrap(), &case.db, 1000).unwrap();
    assert_eq!(
        fingerprint(&stored.store),
        fingerprint(&o.store.lock().unwrap())
    );
    assert_eq!(o.p.status.dropped_records.load(Ordering::Relaxed), 0);
    o.p.shutdown();
}

/// The database is unreachable when the daemon starts: it serves from memory,
/// degraded, writes nothing, and once the database answers merges what it holds with
/// what memory gathered (the newer node wins) and writes the result.
#[test]
fn unreachable_at_start_then_loaded_and_merged() {
    let Some(url) = pg_url() else { return };
    let db = unique_db("late");
    let direct = Case {
        kind: Kind::Pg(url.clone()),
        db: db.clone(),
        tmp: tempfile::tempdir().unwrap(),
    };
    // What the database already holds: n0..n99 and d0..d9 at ts (2_000_000, 0).
    {
        let o = direct.open(10, 64 << 20);
        for k in 0..10u64 {
            o.store.lock().unwrap().apply(
                Op::Upsert(UpsertOp {
                    id: format!("d{k}"),
                    value: Some(RawJson::parse(format!(r#"{{"db":{k}}}"#)).unwrap()),
                    ts: Hlc::new(2_000_000, 0),
                }),
                NOW,
            );
        }
        for k in 0..100u64 {
            o.store.lock().unwrap().apply(
                Op::Upsert(UpsertOp {
                    id: format!("n{k}"),
                    value: Some(RawJson::parse(format!(r#"{{"db":{k}}}"#)).unwrap()),
                    ts: Hlc::new(2_000_000, 0),
                }),
                NOW,
            );
        }
        o.p.shutdown();
    }
    let proxy = Proxy::start(upstream_port(&url), false);
    let late = Case {
        kind: Kind::Pg(via_port(&url, proxy.port)),
        db: db.clone(),
        tmp: tempfile::tempdir().unwrap(),
    };
    let cfg = late.persist_config(10, 64 << 20);
    let Kind::Pg(late_url) = &late.kind else {
        unreachable!()
    };
    let mut backend = PgBackend::new(PgTarget::parse(late_url).unwrap(), &cfg);
    assert!(backend.load_now().is_err());
    let store = Arc::new(Mutex::new(Store::new(1000)));
    let p = Persistence::start_with(cfg, store.clone(), Box::new(backend), 0).unwrap();
    // Memory meanwhile: n0..n49 older than the database's, n50..n99 newer, m0..m49 new.
    for k in 0..150u64 {
        let (id, ts) = match k {
            0..50 => (format!("n{k}"), Hlc::new(1_000_000, 0)),
            50..100 => (format!("n{k}"), Hlc::new(3_000_000, 0)),
            _ => (format!("m{}", k - 100), Hlc::new(3_000_000, 0)),
        };
        store.lock().unwrap().apply(
            Op::Upsert(UpsertOp {
                id,
                value: Some(RawJson::parse(format!(r#"{{"mem":{k}}}"#)).unwrap()),
                ts,
            }),
            NOW,
        );
    }
    // Removes of nodes memory never saw: d3's is newer than the stored node, d4's older.
    for (id, ts) in [("d3", 3_000_000), ("d4", 1_000_000)] {
        store.lock().unwrap().remove(RemoveOp {
            id: id.into(),
            ts: Hlc::new(ts, 0),
        });
    }
    wait_until("degraded", || p.status.degraded());
    // Nothing was written: the database still holds exactly its 100 nodes.
    let before = pg::load_readonly(&PgTarget::parse(&url).unwrap(), &db, 1000).unwrap();
    assert_eq!(before.store.len(), 110);
    assert_eq!(p.status.records_persisted.load(Ordering::Relaxed), 0);
    proxy.up();
    wait_until("loaded and written", || !p.status.degraded());
    let after = pg::load_readonly(&PgTarget::parse(&url).unwrap(), &db, 1000).unwrap();
    assert_eq!(
        fingerprint(&after.store).0,
        fingerprint(&store.lock().unwrap()).0
    );
    let s = store.lock().unwrap();
    assert_eq!(s.len(), 159, "150 upserted, d0..d9 stored, d3 removed");
    assert!(s.get("d3").is_none());
    assert!(s.get("d4").is_some());
    assert!(s.get("n10").unwrap().to_json("n10").contains("\"db\":10"));
    assert!(s.get("n60").unwrap().to_json("n60").contains("\"mem\":60"));
    assert!(s.get("m5").is_some());
    drop(s);
    p.shutdown();
}

/// The real binary: /health says degraded (200) while the database is unreachable at
/// start, and ok once it answers; the daemon never stops serving.
#[test]
fn daemon_reports_degraded_until_the_database_answers() {
    let Some(url) = pg_url() else { return };
    let proxy = Proxy::start(upstream_port(&url), false);
    let case = Case::new(&Kind::Pg(via_port(&url, proxy.port)), "health");
    let mut d = case.daemon(&[]);
    let (code, body) = d.get("/health");
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("\"status\":\"degraded\""), "{body}");
    assert!(body.contains("\"storage\":\"postgres\""), "{body}");
    assert!(!body.contains(&password(&url)), "{body}");
    let (_, metrics) = d.get("/metrics");
    assert!(metrics.contains("genosdb_degraded 1"), "{metrics}");
    assert!(metrics.contains("genosdb_unwritten_bytes"), "{metrics}");
    assert!(!metrics.contains(&password(&url)));
    proxy.up();
    wait_until("healthy", || {
        d.get("/health").1.contains("\"status\":\"ok\"")
    });
    // At run time, with no writes at all, an outage shows too (the session's heartbeat).
    proxy.down();
    wait_until("degraded while idle", || {
        d.get("/health").1.contains("\"status\":\"degraded\"")
    });
    proxy.up();
    wait_until("healthy again", || {
        d.get("/health").1.contains("\"status\":\"ok\"")
    });
    assert_eq!(d.stop().code(), Some(0));
    assert!(d.lines.iter().all(|l| !l.contains(&password(&url))));
}

/// sslmode=require: the daemon's sessions are encrypted (the test server has TLS on).
#[test]
fn tls_with_sslmode_require() {
    let Some(url) = pg_url() else { return };
    let sep = if url.contains('?') { '&' } else { '?' };
    let tls_url = format!("{url}{sep}sslmode=require");
    let case = Case::new(&Kind::Pg(tls_url.clone()), "tls");
    let mut d = case.daemon(&[]);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let ssl: Vec<bool> = rt.block_on(async {
        let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(conn);
        client
            .query(
                "SELECT s.ssl FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid)
                 WHERE a.application_name LIKE 'genosdb-fallback%'",
                &[],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect()
    });
    assert!(!ssl.is_empty(), "the daemon's session is listed");
    assert!(ssl.iter().all(|s| *s), "{ssl:?}");
    assert_eq!(d.stop().code(), Some(0));
    // And without TLS at all.
    let plain = Case {
        kind: Kind::Pg(format!("{url}{sep}sslmode=disable")),
        db: case.db.clone(),
        tmp: tempfile::tempdir().unwrap(),
    };
    assert!(plain.export().is_empty());
}

fn sql(url: &str, query: &str, db: &str) -> u64 {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(conn);
        client.execute(query, &[&db]).await.unwrap()
    })
}

/// Rows that do not decode stop the start with exit 1 and stay as they are; the daemon
/// never "repairs" what it cannot read.
#[test]
fn undecodable_rows_stop_the_start_and_stay_untouched() {
    let Some(url) = pg_url() else { return };
    let case = Case::new(&Kind::Pg(url.clone()), "corrupt");
    case.import(&write_lines(
        case.tmp.path(),
        "in.jsonl",
        &node_lines(50, "c"),
    ));
    let changed = sql(
        &url,
        "UPDATE gdbf_journal SET bytes = overlay(bytes placing '\\xdeadbeef'::bytea from 12)
         WHERE db = $1",
        &case.db,
    );
    assert!(changed >= 1);
    let mut d = Daemon::start(
        &case.dir(),
        &[
            ("DB_NAME", case.db.as_str()),
            ("DATABASE_URL", url.as_str()),
        ],
    );
    assert_eq!(d.wait(Duration::from_secs(20)).code(), Some(1));
    assert!(
        d.lines.iter().any(|l| l.contains("do not decode")),
        "{}",
        d.lines.join("\n")
    );
    let out = case.run(&["export"], &[]);
    assert_eq!(out.status.code(), Some(1));
    // Still exactly the damaged rows: counting them by their damage finds them all.
    let still = sql(
        &url,
        "UPDATE gdbf_journal SET records = records
         WHERE db = $1 AND substring(bytes from 12 for 4) = '\\xdeadbeef'::bytea",
        &case.db,
    );
    assert_eq!(still, changed);
}

/// Migrations run at every start; running them again, also from two sessions at once,
/// changes nothing.
#[test]
fn migrations_are_idempotent() {
    let Some(url) = pg_url() else { return };
    let target = PgTarget::parse(&url).unwrap();
    let runs: Vec<_> = (0..4)
        .map(|_| {
            let target = target.clone();
            std::thread::spawn(move || {
                let mut c = pg::PgClient::connect(&target).unwrap();
                c.migrate().unwrap();
                c.migrate().unwrap();
            })
        })
        .collect();
    for r in runs {
        r.join().unwrap();
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let versions: Vec<i32> = rt.block_on(async {
        let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(conn);
        client
            .query("SELECT version FROM gdbf_schema ORDER BY version", &[])
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect()
    });
    assert_eq!(versions, (1..=pg::SCHEMA_VERSION).collect::<Vec<_>>());
}

/// Two writers of one DB_NAME in one process, as two daemons: both merge distinct ops
/// at once with tiny COMPACT_BYTES and folded rows deleted after 1.5 s, so that
/// compactions race each other and the appends. Nothing is lost, each reads the
/// other's ops, and the stored graph is the union.
#[test]
fn two_writers_compacting_at_once_lose_nothing() {
    let Some(url) = pg_url() else { return };
    let case = Case::new(&Kind::Pg(url.clone()), "race");
    let cfg = case.persist_config(10, 4 << 10);
    let open = || {
        let mut b = PgBackend::new(PgTarget::parse(&url).unwrap(), &cfg);
        b.set_retain(Duration::from_millis(1500));
        let loaded = b.load_now().unwrap();
        let store = Arc::new(Mutex::new(loaded.store));
        let p = Persistence::start_with(cfg.clone(), store.clone(), Box::new(b), 0).unwrap();
        (store, p)
    };
    let (sa, pa) = open();
    let (sb, pb) = open();
    std::thread::scope(|s| {
        for (store, tag) in [(&sa, "a"), (&sb, "b")] {
            s.spawn(move || {
                for i in 0..3_000u64 {
                    store.lock().unwrap().apply(
                        Op::Upsert(UpsertOp {
                            id: format!("{tag}{i}"),
                            value: Some(RawJson::parse(format!("{i}")).unwrap()),
                            ts: Hlc::new(1_000_000 + i, 0),
                        }),
                        NOW,
                    );
                    if i % 100 == 0 {
                        std::thread::sleep(Duration::from_millis(100));
                    }
                }
            });
        }
    });
    wait_until("both persisted and compacted", || {
        pa.status.records_persisted.load(Ordering::Relaxed) >= 3_000
            && pb.status.records_persisted.load(Ordering::Relaxed) >= 3_000
            && pa.status.compactions.load(Ordering::Relaxed)
                + pb.status.compactions.load(Ordering::Relaxed)
                >= 1
    });
    wait_until("each holds the other's ops", || {
        sa.lock().unwrap().len() == 6_000 && sb.lock().unwrap().len() == 6_000
    });
    pa.shutdown();
    pb.shutdown();
    let stored = case.stored();
    assert_eq!(stored.store.len(), 6_000);
    assert_eq!(
        fingerprint(&stored.store).0,
        fingerprint(&sa.lock().unwrap()).0
    );
}
