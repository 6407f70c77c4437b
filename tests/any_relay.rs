//! Signalling through relays people run, not only our embedded one: `nostr_relay` 1.14
//! (a Python relay from PyPI that nobody here wrote; `.ci/run` installs it), and relays
//! that demand NIP-42 `AUTH` first, answer `CLOSED rate-limited:`, store and replay
//! events, or drop every connection every few seconds (tests/common/picky_relay.rs).
//! Each time the daemon and Rust peers must find each other, sync and converge.

mod common;

use common::peer::{TestPeer, export_of, wait_async_for};
use common::picky_relay::{PickyRelay, Quirks};
use common::{DB, data_dir, export, health, relay, superpeer};
use genosdb_fallback::rtc::room::RoomConfig;
use genosdb_fallback::store::Store;
use genosdb_fallback::sync::SyncConfig;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Only how long a failure takes to be reported.
const PATIENCE: Duration = Duration::from_secs(120);

fn peer(urls: &[String]) -> TestPeer {
    let store = Arc::new(Mutex::new(Store::new(1000)));
    let quick = |c: &mut RoomConfig| c.answer_timeout = Duration::from_secs(2);
    TestPeer::join_via(urls.to_vec(), DB, store, quick, SyncConfig::default())
}

/// Writer → daemon → a fresh reader, all signalling through `url`; then the daemon's
/// export (after SIGTERM) must equal the writer's graph.
/// `drops` counts the connections the relay closed: when it is given, the daemon's and
/// the writer's connections have been dropped (twice between them) before anyone links
/// or writes, so every step goes through reconnections.
async fn converge_through(url: &str, tmp: &tempfile::TempDir, drops: Option<&dyn Fn() -> u64>) {
    let dir = data_dir(tmp);
    let mut d = superpeer(&dir, url, &[("FLUSH_MS", "50")]);
    let urls = [url.to_owned()];
    let dropped_twice = async |what: &str| {
        if let Some(drops) = drops {
            let start = drops();
            wait_async_for(what, PATIENCE, || drops() >= start + 2).await;
        }
    };
    dropped_twice("the relay dropped the daemon").await;

    let w = peer(&urls);
    dropped_twice("the relay dropped the writer").await;
    wait_async_for("the writer linked to the daemon", PATIENCE, || {
        w.superpeers() >= 1
    })
    .await;
    // The link goes out before the last puts: the daemon's node count below then also
    // covers it (one ordered channel), and the writer never leaves with it in flight.
    for i in 0..20 {
        w.sync
            .put(&format!("n{i:02}"), &format!(r#"{{"i":{i}}}"#))
            .await
            .unwrap();
        if i == 1 {
            w.sync.link("n00", "n01").await.unwrap();
        }
    }
    let written = w.export();
    assert_eq!(written.len(), 20);
    wait_async_for("the daemon holds the writer's graph", PATIENCE, || {
        health(d.port)["nodes"].as_u64() == Some(written.len() as u64)
    })
    .await;
    w.leave().await;

    let r = peer(&urls);
    wait_async_for("the reader linked to the daemon", PATIENCE, || {
        r.superpeers() >= 1
    })
    .await;
    wait_async_for("the reader got the writer's graph", PATIENCE, || {
        export_of(&r.store.lock().unwrap()) == written
    })
    .await;
    r.leave().await;
    assert!(d.stop().success());
    assert_eq!(
        export(&dir),
        written,
        "the daemon's store is the writer's graph"
    );
}

async fn through_picky(quirks: Quirks) -> Arc<common::picky_relay::Counters> {
    let tmp = tempfile::tempdir().unwrap();
    let upstream = relay(&tmp);
    let picky = PickyRelay::start(upstream.port, quirks).await;
    let c = picky.counters.clone();
    let drops = move || c.get(&c.dropped);
    let drops: Option<&dyn Fn() -> u64> = quirks.drop_after.is_some().then_some(&drops);
    converge_through(&picky.url(), &tmp, drops).await;
    eprintln!("{quirks:?}: {}", picky.counters.summary());
    picky.counters.clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_that_demands_auth_first() {
    let c = through_picky(Quirks {
        auth_first: true,
        ..Quirks::default()
    })
    .await;
    // The daemon, the writer and the reader each answered the challenge.
    assert!(c.get(&c.authenticated) >= 3, "{}", c.summary());
    // Everything they published was signed by the key they authenticated with.
    assert_eq!(c.get(&c.foreign_key_events), 0, "{}", c.summary());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_that_answers_closed_rate_limited() {
    let c = through_picky(Quirks {
        rate_limit_first_req: true,
        ..Quirks::default()
    })
    .await;
    assert!(c.get(&c.rate_limited) >= 3, "{}", c.summary());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_that_stores_and_replays_events_to_new_subscriptions() {
    // Dropping every 4 s makes everyone subscribe again and again while the relay holds
    // their earlier announces, offers and answers.
    let c = through_picky(Quirks {
        replay: true,
        drop_after: Some(Duration::from_secs(4)),
        ..Quirks::default()
    })
    .await;
    assert!(c.get(&c.dropped) >= 2, "{}", c.summary());
    // A fresh `since` on every REQ: nothing from before a connection opened comes back.
    assert_eq!(c.get(&c.replayed_stale), 0, "{}", c.summary());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_that_drops_every_connection_every_few_seconds() {
    let c = through_picky(Quirks {
        drop_after: Some(Duration::from_secs(3)),
        ..Quirks::default()
    })
    .await;
    assert!(c.get(&c.dropped) >= 2, "{}", c.summary());
}

/// nostr_relay 1.14 (`NOSTR_RELAY_BIN`, or installed on first use into a venv by
/// `.ci/provision`), or None (skip) where python3 is missing outside CI.
fn nostr_relay_bin() -> Option<PathBuf> {
    let bin = common::provision::tool("NOSTR_RELAY_BIN", "nostr-relay")?;
    assert!(
        bin.is_file(),
        "NOSTR_RELAY_BIN={} is not a file",
        bin.display()
    );
    Some(bin)
}

struct PyRelay {
    child: Child,
    port: u16,
}

impl Drop for PyRelay {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `nostr-relay serve` on 127.0.0.1:0 and reads the port gunicorn chose.
fn start_nostr_relay(bin: &PathBuf, dir: &std::path::Path) -> PyRelay {
    let config = dir.join("nostr-relay.yaml");
    std::fs::write(
        &config,
        format!(
            "DEBUG: false\n\
             relay_name: ci relay\n\
             storage:\n  sqlalchemy.url: sqlite+aiosqlite:///{}\n  num_concurrent_reqs: 10\n  num_concurrent_adds: 2\n  validators:\n    - nostr_relay.validators.is_not_too_large\n    - nostr_relay.validators.is_signed\n\
             gunicorn:\n  bind: 127.0.0.1:0\n  workers: 1\n  loglevel: info\n  reload: false\n  control_socket_disable: true\n\
             authentication:\n  enabled: false\n\
             message_timeout: 1800\n\
             subscription_limit: 32\n\
             max_limit: 6000\n",
            dir.join("nostr.sqlite3").display()
        ),
    )
    .unwrap();
    let mut child = Command::new(bin)
        .args(["-c", config.to_str().unwrap(), "serve"])
        .current_dir(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("nostr-relay starts");
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut sent = false;
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if !sent && let Some(rest) = line.split("Listening at: http://127.0.0.1:").nth(1) {
                let port: String = rest.chars().take_while(char::is_ascii_digit).collect();
                sent = tx.send(port.parse::<u16>().ok()).is_ok();
            }
        }
    });
    let port = rx
        .recv_timeout(Duration::from_secs(60))
        .ok()
        .flatten()
        .expect("nostr-relay said where it listens");
    let r = PyRelay { child, port };
    // gunicorn announces the socket before its worker accepts WebSockets.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", r.port)).is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "nostr-relay never accepted"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    r
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_nostr_relay_from_pypi() {
    // Skips (with a line saying why) only where python3 is missing, and never under CI=true.
    let Some(bin) = nostr_relay_bin() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let py = start_nostr_relay(&bin, tmp.path());
    converge_through(&format!("ws://127.0.0.1:{}", py.port), &tmp, None).await;
}
