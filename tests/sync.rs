//! The harness's B scenarios with peers built from this crate: the real daemon binary
//! is the only place the data can come from. Each test has its own relay (a second
//! daemon with RTC off and RELAY=1), so the relay outlives the daemon's restarts and
//! stores nothing (ephemeral kinds only).

mod common;

use base64::Engine as _;
use common::peer::{TestPeer, value_of, wait_async};
use common::{DB, Daemon, data_dir, export, relay};
use genosdb_fallback::rtc::frame::{self, Payload};
use genosdb_fallback::store::Store;
use genosdb_fallback::sync::{PeerChange, SyncConfig, service};
use serde_json::json;
use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const FLUSH_MS: u64 = 200;

fn superpeer(dir: &Path, relay_port: u16) -> Daemon {
    let relay = format!("ws://127.0.0.1:{relay_port}");
    let flush = FLUSH_MS.to_string();
    Daemon::start_ready(
        dir,
        &[
            ("RTC_ENABLED", "true"),
            ("RELAY_URLS", &relay),
            ("ICE_SERVERS", ""),
            ("FLUSH_MS", &flush),
            // Shown only when a test fails (see Daemon's Drop).
            (
                "RUST_LOG",
                "info,genosdb_fallback::rtc=debug,genosdb_fallback::sync=debug",
            ),
        ],
    )
}

/// A counter from /metrics, 0 before the first scrape has it.
fn metric(d: &Daemon, name: &str) -> u64 {
    let (_, body) = d.get("/metrics");
    body.lines()
        .find(|l| l.starts_with(&format!("genosdb_{name}")))
        .and_then(|l| l.split_whitespace().last())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn health_nodes(d: &Daemon) -> u64 {
    let (_, body) = d.get("/health");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
    v["nodes"].as_u64().unwrap_or(0)
}

/// The daemon's graph as written to disk, read with the real `export` while it runs.
fn on_disk(dir: &Path) -> HashMap<String, serde_json::Value> {
    export(dir)
        .iter()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .map(|n| (n["id"].as_str().unwrap().to_owned(), n))
        .collect()
}

/// Waits until the daemon's stored graph satisfies `cond`: what it merged, journaled.
async fn holds(dir: &Path, what: &str, cond: impl Fn(&HashMap<String, serde_json::Value>) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let dir = dir.to_owned();
        let graph = tokio::task::spawn_blocking(move || on_disk(&dir))
            .await
            .unwrap();
        if cond(&graph) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for the daemon to hold {what}: {graph:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn value_is(g: &HashMap<String, serde_json::Value>, id: &str, value: serde_json::Value) -> bool {
    g.get(id).is_some_and(|n| n["value"] == value)
}

/// The writer session of scenario B: greeting, link, remove, LWW update. 9 ops.
async fn write_session(w: &TestPeer) {
    w.sync
        .put("greeting", r#"{"message":"Good morning"}"#)
        .await
        .unwrap();
    w.sync.put("parent", r#"{"name":"parent"}"#).await.unwrap();
    w.sync.put("child", r#"{"name":"child"}"#).await.unwrap();
    w.sync.link("parent", "child").await.unwrap();
    w.sync.put("victim", r#"{"name":"victim"}"#).await.unwrap();
    w.sync.put("keeper", r#"{"name":"keeper"}"#).await.unwrap();
    w.sync.remove("victim").await.unwrap();
    w.sync.put("counter", r#"{"v":1}"#).await.unwrap();
    w.sync.put("counter", r#"{"v":2}"#).await.unwrap();
}

fn session_visible(s: &Store) -> bool {
    value_of(s, "greeting").as_deref() == Some(r#"{"message":"Good morning"}"#)
        && s.get("parent").is_some_and(|n| n.has_edge("child"))
        && s.get("keeper").is_some()
        && value_of(s, "counter").as_deref() == Some(r#"{"v":2}"#)
}

/// A fresh peer, with every writer gone, gets the whole session from the daemon.
async fn fresh_reader_sees_session(relay_port: u16) {
    let r = TestPeer::join(relay_port, DB);
    r.wait_superpeers(1).await;
    r.wait_store("the writer's session", session_visible).await;
    {
        let s = r.store.lock().unwrap();
        assert!(s.get("victim").is_none(), "the removed node came back");
        assert_eq!(s.get("parent").unwrap().edges.len(), 1);
    }
    r.leave().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fresh_peer_gets_what_a_departed_writer_wrote_before_and_after_a_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let relay = relay(&tmp);
    let dir = data_dir(&tmp);
    let mut d = superpeer(&dir, relay.port);

    let w = TestPeer::join(relay.port, DB);
    w.wait_superpeers(1).await;
    write_session(&w).await;
    holds(&dir, "the writer's session", |g| {
        value_is(g, "greeting", json!({"message": "Good morning"}))
            && value_is(g, "counter", json!({"v": 2}))
            && g.get("parent")
                .is_some_and(|n| n["edges"] == json!(["child"]))
            && g.contains_key("keeper")
            && !g.contains_key("victim")
    })
    .await;
    w.leave().await;

    fresh_reader_sees_session(relay.port).await; // B1
    assert!(d.stop().success());
    let d = superpeer(&dir, relay.port);
    fresh_reader_sees_session(relay.port).await; // B2
    assert!(metric(&d, "sync_full_replies") >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_absorbs_a_write_made_while_it_was_down() {
    let tmp = tempfile::tempdir().unwrap();
    let relay = relay(&tmp);
    let dir = data_dir(&tmp);
    let mut d = superpeer(&dir, relay.port);
    let w = TestPeer::join(relay.port, DB);
    w.wait_superpeers(1).await;
    w.sync.put("before", r#""seen live""#).await.unwrap();
    holds(&dir, "the live write", |g| g.contains_key("before")).await;
    w.leave().await;
    assert!(d.stop().success());

    // A peer writes alone; the daemon comes back, syncs from it, and the peer leaves.
    let lone = TestPeer::join(relay.port, DB);
    lone.sync
        .put("offline", r#""written alone""#)
        .await
        .unwrap();
    let d = superpeer(&dir, relay.port);
    lone.wait_superpeers(1).await;
    wait_async("the daemon took the lone write", || health_nodes(&d) >= 2).await;
    lone.leave().await;

    let r = TestPeer::join(relay.port, DB);
    r.wait_store("both writes", |s| {
        value_of(s, "offline").as_deref() == Some(r#""written alone""#)
            && value_of(s, "before").as_deref() == Some(r#""seen live""#)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_returning_peer_catches_up_with_what_it_missed() {
    let tmp = tempfile::tempdir().unwrap();
    let relay = relay(&tmp);
    let dir = data_dir(&tmp);
    let d = superpeer(&dir, relay.port);

    let first = TestPeer::join(relay.port, DB);
    first.wait_superpeers(1).await;
    first.sync.put("counter", r#"{"v":2}"#).await.unwrap();
    holds(&dir, "v:2", |g| value_is(g, "counter", json!({"v": 2}))).await;
    let kept = first.leave().await;

    let other = TestPeer::join(relay.port, DB);
    other
        .wait_store("the counter", |s| value_of(s, "counter").is_some())
        .await;
    other
        .sync
        .put("added", r#""while you were away""#)
        .await
        .unwrap();
    other.sync.put("counter", r#"{"v":3}"#).await.unwrap();
    holds(&dir, "v:3 and the new node", |g| {
        value_is(g, "counter", json!({"v": 3})) && g.contains_key("added")
    })
    .await;
    other.leave().await;

    // The same store comes back (a browser reopening its profile) and asks for a delta.
    let back = TestPeer::join_with(relay.port, DB, kept);
    back.wait_store("the new node and the newer value", |s| {
        value_of(s, "added").is_some() && value_of(s, "counter").as_deref() == Some(r#"{"v":3}"#)
    })
    .await;
    assert!(
        metric(&d, "sync_delta_replies") >= 1,
        "a returning peer gets a delta"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_daemons_converge_with_each_other_and_with_peers() {
    let tmp = tempfile::tempdir().unwrap();
    let relay = relay(&tmp);
    let (dir_a, dir_b) = (tmp.path().join("a"), tmp.path().join("b"));
    let mut a = superpeer(&dir_a, relay.port);

    let w = TestPeer::join(relay.port, DB);
    w.wait_superpeers(1).await;
    w.sync.put("x", r#""only A saw this""#).await.unwrap();
    holds(&dir_a, "x", |g| g.contains_key("x")).await;
    w.leave().await;

    // B starts empty and learns x from A alone.
    let mut b = superpeer(&dir_b, relay.port);
    wait_async("B learned x from A", || health_nodes(&b) >= 1).await;
    assert!(a.stop().success());

    let w = TestPeer::join(relay.port, DB);
    w.wait_superpeers(1).await;
    w.sync.put("y", r#""only B saw this""#).await.unwrap();
    holds(&dir_b, "y", |g| g.contains_key("y")).await;
    w.leave().await;

    // A comes back and learns y from B.
    let mut a = superpeer(&dir_a, relay.port);
    wait_async("A learned y from B", || health_nodes(&a) >= 2).await;

    let r = TestPeer::join(relay.port, DB);
    r.wait_superpeers(2).await;
    r.wait_store("x and y", |s| s.get("x").is_some() && s.get("y").is_some())
        .await;
    r.leave().await;
    assert!(a.stop().success());
    assert!(b.stop().success());
    assert_eq!(export(&dir_a), export(&dir_b));
    assert_eq!(export(&dir_a).len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_state_over_the_browser_frame_limit_arrives_in_parts() {
    let tmp = tempfile::tempdir().unwrap();
    let relay = relay(&tmp);
    let dir = data_dir(&tmp);
    let expected = import_big_graph(&tmp, &dir);

    let d = superpeer(&dir, relay.port);
    let r = TestPeer::join(relay.port, DB);
    r.wait_store("all 3,000 nodes", |s| s.len() == 3000).await;
    {
        let s = r.store.lock().unwrap();
        for (id, value) in &expected {
            assert_eq!(value_of(&s, id).as_ref(), Some(value), "{id}");
        }
        // As one message it could never have reached a browser (100 frames at most).
        let whole = format!("[{}]", s.full_state_json());
        assert!(matches!(
            frame::encode("syncGraph", 0, Payload::Json(&whole), None),
            Err(frame::FrameError::TooLarge(_))
        ));
    }
    assert!(
        metric(&d, "sync_full_parts") >= 2,
        "the full state went out in parts"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ops_older_than_flush_ms_survive_a_sigkill_mid_stream() {
    let tmp = tempfile::tempdir().unwrap();
    let relay = relay(&tmp);
    let dir = data_dir(&tmp);
    let d = superpeer(&dir, relay.port);
    let w = TestPeer::join(relay.port, DB);
    w.wait_superpeers(1).await;

    // Stream writes while sampling how many the daemon holds; ops arrive in order on
    // one channel, so a count n at time t means ops 0..n had been received by t.
    let stream = tokio::spawn(async move {
        for i in 0..100_000u32 {
            if w.sync
                .put(&format!("s{i:06}"), &i.to_string())
                .await
                .is_err()
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        w
    });
    let port = d.port;
    let mut samples: Vec<(Instant, u64)> = Vec::new();
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(3) || samples.last().is_none_or(|s| s.1 < 200) {
        let n = tokio::task::spawn_blocking(move || {
            let (_, body) = common::http_get(port, "/health");
            serde_json::from_str::<serde_json::Value>(&body).unwrap()["nodes"]
                .as_u64()
                .unwrap_or(0)
        })
        .await
        .unwrap();
        samples.push((Instant::now(), n));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut d = d;
    d.signal(libc::SIGKILL);
    let killed = Instant::now();
    d.wait(Duration::from_secs(10));
    stream.abort();

    let safe = samples
        .iter()
        .rev()
        .find(|(t, _)| killed.duration_since(*t) > Duration::from_millis(FLUSH_MS))
        .map(|s| s.1)
        .unwrap();
    assert!(
        safe > 100,
        "the stream was too slow to test anything: {safe}"
    );
    // Restart without RTC: nothing may come back from a peer, only from the disk.
    let restarted = Daemon::start_ready(&dir, &[]);
    assert!(health_nodes(&restarted) >= safe);
    drop(restarted);
    let ids: std::collections::HashSet<String> = common::stored_ids(&dir);
    for i in 0..safe {
        assert!(
            ids.contains(&format!("s{i:06}")),
            "op {i} of {safe} was lost"
        );
    }
}

/// Imports 3,000 nodes with 1 KB of random base64 each: about 3.4 MB that barely
/// compresses, over the 100 frames of one browser message. Returns (id, value) pairs.
fn import_big_graph(tmp: &tempfile::TempDir, dir: &Path) -> Vec<(String, String)> {
    let mut lines = String::new();
    let mut expected = Vec::new();
    for i in 0..3000u32 {
        let mut bytes = [0u8; 768];
        getrandom::fill(&mut bytes).unwrap();
        let value = format!(
            "{{\"blob\":\"{}\"}}",
            base64::engine::general_purpose::STANDARD.encode(bytes)
        );
        lines.push_str(&format!(
            "{{\"id\":\"big{i}\",\"value\":{value},\"edges\":[],\"timestamp\":{{\"physical\":{},\"logical\":0}}}}\n",
            1_700_000_000_000u64 + i as u64
        ));
        expected.push((format!("big{i}"), value));
    }
    let file = tmp.path().join("big.jsonl");
    std::fs::write(&file, &lines).unwrap();
    let out = common::run(dir, &["import", file.to_str().unwrap()], &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    expected
}

/// A peer whose whole process froze right after it joined: its runtime runs on its own
/// thread and blocks there, so its WebRTC stack stops acknowledging anything.
fn frozen_peer(relay_port: u16) -> (String, std::sync::mpsc::Sender<()>) {
    let (joined_tx, joined_rx) = std::sync::mpsc::channel();
    let (thaw_tx, thaw_rx) = std::sync::mpsc::channel::<()>();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let cfg = common::peer::room_config(&format!("graph-sync-room-{DB}"));
            let (room, events) = common::peer::join_room(relay_port, cfg);
            let room = Arc::new(room);
            let id = room.self_id.clone();
            let _sync = service::start(
                room,
                events,
                Arc::new(Mutex::new(Store::new(1000))),
                SyncConfig::default(),
                move |_, change| {
                    if matches!(change, PeerChange::Joined { .. }) {
                        let _ = joined_tx.send(id.clone());
                        // Freeze: this blocks the only thread of this runtime.
                        let _ = thaw_rx.recv();
                    }
                },
            );
            std::future::pending::<()>().await;
        });
    });
    let id = joined_rx
        .recv_timeout(Duration::from_secs(30))
        .expect("the frozen peer joined");
    (id, thaw_tx)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_peer_is_dropped_and_stalls_no_one() {
    let tmp = tempfile::tempdir().unwrap();
    let relay = relay(&tmp);
    let dir = data_dir(&tmp);
    import_big_graph(&tmp, &dir);
    let mut d = superpeer(&dir, relay.port);

    // It never asks; the daemon sends it the full state anyway (the unasked reply),
    // and those sends stall once SEND_WINDOW_BYTES are unacknowledged.
    let (frozen, _thaw) = tokio::task::spawn_blocking(move || frozen_peer(relay.port))
        .await
        .unwrap();
    let reader = TestPeer::join(relay.port, DB);
    reader
        .wait_store("all 3,000 nodes", |s| s.len() == 3000)
        .await;
    let writer = TestPeer::join(relay.port, DB);
    writer.wait_superpeers(1).await;
    writer.sync.put("live", r#""still flowing""#).await.unwrap();
    holds(&dir, "the live write", |g| g.contains_key("live")).await;

    let left = format!("peer left peer={frozen}");
    // Whichever notices first drops it: the stalled full state (no progress for
    // DELIVERY_STALL), the stalled sends (10 s), the keepalive, or ICE consent.
    tokio::task::spawn_blocking(move || d.wait_for_log(&left, Duration::from_secs(60)))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compressible_graph_over_a_mebibyte_goes_out_as_one_message() {
    let tmp = tempfile::tempdir().unwrap();
    let relay = relay(&tmp);
    let dir = data_dir(&tmp);
    // 10,000 short text nodes: about 1.3 MB of JSON that compresses well under 100 frames.
    let lines: String = (0..10_000u64)
        .map(|i| {
            format!(
                "{{\"id\":\"t{i}\",\"value\":{{\"kind\":\"bulk\",\"i\":{i},\"text\":\"node {i} lorem ipsum dolor sit amet\"}},\"edges\":[],\"timestamp\":{{\"physical\":{},\"logical\":0}}}}\n",
                1_700_000_000_000 + i
            )
        })
        .collect();
    assert!(lines.len() > 1 << 20);
    let file = tmp.path().join("text.jsonl");
    std::fs::write(&file, &lines).unwrap();
    let out = common::run(&dir, &["import", file.to_str().unwrap()], &[]);
    assert!(out.status.success());

    let d = superpeer(&dir, relay.port);
    let r = TestPeer::join(relay.port, DB);
    r.wait_store("all 10,000 nodes", |s| s.len() == 10_000)
        .await;
    assert_eq!(metric(&d, "sync_full_replies"), 1);
    assert_eq!(metric(&d, "sync_full_parts"), 1);
}
