//! Signalling through relays that misbehave: a proxy in front of a real relay drops,
//! duplicates, reorders and delays Nostr events (tests/common/faulty_relay.rs). The
//! daemon and Rust peers must still find each other, sync, and converge.

mod common;

use common::faulty_relay::{Faults, FaultyRelay, seed};
use common::peer::{TestPeer, export_of, wait_async_for};
use common::{DB, data_dir, export, health, relay, superpeer};
use genosdb_fallback::rtc::room::RoomConfig;
use genosdb_fallback::store::Store;
use genosdb_fallback::sync::SyncConfig;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Lossy signalling takes retries: each lost offer or answer costs a dial timeout
/// (10 s on the daemon, reaped every 5 s; while the daemon's own dial is pending, the
/// glare rule makes it ignore the peer's offers if its id is the greater). Connecting
/// took 0.5 to 60 s in 7 runs; this is only how long a failure takes to be reported.
const PATIENCE: Duration = Duration::from_secs(180);

/// Applied to each direction: an event crosses the relay twice (publisher → relay →
/// subscriber), so about 30 % of events are lost end to end, 30 % arrive twice (or
/// more), many out of order, and nearly all late.
const LOSSY: Faults = Faults {
    drop: 0.16,
    duplicate: 0.3,
    reorder: 0.3,
    max_delay: Duration::from_millis(300),
};

/// A browser-like peer that gives up on an unanswered offer after 2 s (browsers
/// re-dial on the next announce too), so lost signals cost little.
fn peer(urls: &[String]) -> TestPeer {
    let store = Arc::new(Mutex::new(Store::new(1000)));
    let quick = |c: &mut RoomConfig| c.answer_timeout = Duration::from_secs(2);
    TestPeer::join_via(urls.to_vec(), DB, store, quick, SyncConfig::default())
}

async fn wait_superpeer(p: &TestPeer) {
    wait_async_for("the daemon connected", PATIENCE, || p.superpeers() >= 1).await;
}

/// Writes 40 nodes, links, an update and a remove.
async fn write_graph(w: &TestPeer) {
    for i in 0..40 {
        w.sync
            .put(&format!("n{i:02}"), &format!(r#"{{"i":{i}}}"#))
            .await
            .unwrap();
    }
    w.sync.link("n00", "n01").await.unwrap();
    w.sync.link("n00", "n02").await.unwrap();
    w.sync
        .put("n03", r#"{"i":3,"updated":true}"#)
        .await
        .unwrap();
    w.sync.remove("n39").await.unwrap();
}

/// The daemon holds `expected` in memory: same node count as the writer.
async fn daemon_holds(port: u16, nodes: usize) {
    wait_async_for("the daemon holds the writer's graph", PATIENCE, || {
        health(port)["nodes"].as_u64() == Some(nodes as u64)
    })
    .await;
}

fn nonzero(c: &AtomicU64) -> bool {
    c.load(std::sync::atomic::Ordering::Relaxed) > 0
}

/// Writer → daemon → a fresh reader, all signalling through `urls`; then the daemon's
/// export (after SIGTERM) must equal the writer's graph.
async fn converge_through(urls: &[String], daemon_urls: &str, tmp: &tempfile::TempDir) {
    let dir = data_dir(tmp);
    let t0 = std::time::Instant::now();
    let mut d = superpeer(&dir, daemon_urls, &[("FLUSH_MS", "50")]);

    let w = peer(urls);
    wait_superpeer(&w).await;
    eprintln!("writer connected after {:?}", t0.elapsed());
    write_graph(&w).await;
    let written = w.export();
    assert_eq!(written.len(), 39);
    daemon_holds(d.port, written.len()).await;
    eprintln!("daemon holds after {:?}", t0.elapsed());
    w.leave().await;

    let r = peer(urls);
    wait_superpeer(&r).await;
    eprintln!("reader connected after {:?}", t0.elapsed());
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_connect_sync_and_converge_through_a_lossy_relay() {
    let tmp = tempfile::tempdir().unwrap();
    let relay = relay(&tmp);
    let proxy = FaultyRelay::start(relay.port, LOSSY, seed("lossy relay")).await;
    let urls = [proxy.url()];

    converge_through(&urls, &proxy.url(), &tmp).await;

    let c = &proxy.counters;
    eprintln!("lossy relay: {}", c.summary());
    // The proxy did mistreat the signalling: this test cannot pass on a clean relay.
    assert!(nonzero(&c.dropped), "{}", c.summary());
    assert!(nonzero(&c.duplicated), "{}", c.summary());
    assert!(nonzero(&c.reordered), "{}", c.summary());
    assert!(nonzero(&c.delayed), "{}", c.summary());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_black_hole_relay_beside_a_good_one_does_not_stop_anyone() {
    let tmp = tempfile::tempdir().unwrap();
    let good = relay(&tmp);
    let hole = FaultyRelay::start(good.port, Faults::BLACK_HOLE, seed("black hole")).await;
    // The black hole comes first: the daemon and the peers use relay 0 before relay 1.
    let urls = [hole.url(), format!("ws://127.0.0.1:{}", good.port)];

    converge_through(&urls, &urls.join(","), &tmp).await;

    let c = &hole.counters;
    eprintln!("black hole: {}", c.summary());
    assert!(nonzero(&c.dropped), "{}", c.summary());
    assert_eq!(
        c.get(&c.dropped),
        c.get(&c.events),
        "the black hole delivered an event"
    );
    assert!(
        c.get(&c.connections) >= 3,
        "the daemon and both peers were connected to the black hole: {}",
        c.summary()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_daemons_converge_through_a_lossy_relay() {
    let tmp = tempfile::tempdir().unwrap();
    let relay = relay(&tmp);
    let proxy = FaultyRelay::start(relay.port, LOSSY, seed("two daemons")).await;
    let urls = [proxy.url()];
    let (dir_a, dir_b) = (tmp.path().join("a"), tmp.path().join("b"));
    let mut a = superpeer(&dir_a, &proxy.url(), &[("FLUSH_MS", "50")]);

    let w = peer(&urls);
    wait_superpeer(&w).await;
    write_graph(&w).await;
    let written = w.export();
    daemon_holds(a.port, written.len()).await;
    w.leave().await;

    // B starts empty and can learn the graph from A alone, over lossy signalling.
    let mut b = superpeer(&dir_b, &proxy.url(), &[("FLUSH_MS", "50")]);
    daemon_holds(b.port, written.len()).await;
    assert!(a.stop().success());
    assert!(b.stop().success());
    assert_eq!(export(&dir_a), written);
    assert_eq!(export(&dir_b), written);
    let c = &proxy.counters;
    eprintln!("two daemons: {}", c.summary());
    assert!(
        nonzero(&c.dropped) && nonzero(&c.duplicated),
        "{}",
        c.summary()
    );
}
