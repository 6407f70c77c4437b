//! Catch-up of graphs far over one browser message (issue 15), with the real daemon
//! binary and peers that receive the way a GenosDB browser does: at most 100 frames per
//! message, each full-state part merged node by node, and GenosDB's counter-reply (the
//! test peers run this crate's sync layer, which follows the browser's rules). Every
//! reader must end with exactly the daemon's graph, whatever the order of its join,
//! the writer's departure and the sync exchange, including a departed writer whose
//! link the daemon still holds, and a reader that stops acknowledging mid-transfer.

mod common;

use base64::Engine as _;
use common::peer::{TestPeer, export_of, wait_async_for};
use common::{DB, data_dir, export, metric, relay, superpeer};
use genosdb_fallback::store::Store;
use genosdb_fallback::sync::{PeerChange, SyncConfig, service};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// `n` nodes of `bytes` of random base64 each (barely compressible), imported with the
/// real `import` before the daemon starts.
fn import_random(tmp: &tempfile::TempDir, dir: &Path, n: usize, bytes: usize) {
    let mut lines = String::new();
    for i in 0..n {
        let mut raw = vec![0u8; bytes * 3 / 4 + 3];
        getrandom::fill(&mut raw).unwrap();
        let mut blob = base64::engine::general_purpose::STANDARD.encode(&raw);
        blob.truncate(bytes);
        lines.push_str(&format!(
            "{{\"id\":\"big{i:05}\",\"value\":{{\"i\":{i},\"blob\":\"{blob}\"}},\"edges\":[],\"timestamp\":{{\"physical\":{},\"logical\":0}}}}\n",
            1_700_000_000_000u64 + i as u64
        ));
    }
    let file = tmp.path().join("import.jsonl");
    std::fs::write(&file, &lines).unwrap();
    let out = common::run(dir, &["import", file.to_str().unwrap()], &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A peer on a runtime of its own thread that freezes on its first join until `frozen`
/// yields: its runtime blocks, so its WebRTC stack stops acknowledging anything, as a
/// browser whose network thread hangs. `before_join` prepares its store. Returns its
/// peer id once it joined.
fn peer_on_own_thread(
    relay_port: u16,
    store: Arc<Mutex<Store>>,
    before_join: impl FnOnce(&Arc<Mutex<Store>>) + Send + 'static,
    frozen: std::sync::mpsc::Receiver<()>,
) -> (String, std::thread::JoinHandle<()>) {
    let (joined_tx, joined_rx) = std::sync::mpsc::channel();
    let handle = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            before_join(&store);
            let cfg = common::peer::room_config(&format!("graph-sync-room-{DB}"));
            let (room, events) = common::peer::join_room(relay_port, cfg);
            let room = Arc::new(room);
            let id = room.self_id.clone();
            let first = AtomicBool::new(true);
            let _sync = service::start(
                room.clone(),
                events,
                store,
                SyncConfig::default(),
                move |_, change| {
                    if matches!(change, PeerChange::Joined { .. })
                        && first.swap(false, Ordering::AcqRel)
                    {
                        let _ = joined_tx.send(id.clone());
                        // Blocks the only thread of this runtime until thawed.
                        let _ = frozen.recv();
                    }
                },
            );
            std::future::pending::<()>().await;
        });
    });
    let id = joined_rx
        .recv_timeout(Duration::from_secs(30))
        .expect("the peer joined");
    (id, handle)
}

/// Polls a daemon counter until it reaches `at_least`.
async fn wait_metric(port: u16, name: &str, at_least: u64) {
    let what = format!("{name} >= {at_least}");
    let name = name.to_owned();
    tokio::task::spawn_blocking(move || {
        common::wait_until(&what, || metric(port, &name) >= at_least)
    })
    .await
    .unwrap();
}

/// The reader holds exactly the daemon's graph, node for node and value for value.
async fn holds_exactly(reader: &TestPeer, expected: &[String], limit: Duration) {
    let n = expected.len();
    wait_async_for(&format!("all {n} nodes"), limit, || {
        reader.store.lock().unwrap().len() >= n
    })
    .await;
    assert_eq!(
        reader.export(),
        expected,
        "the reader's graph differs from the daemon's"
    );
}

const WRITER_NODES: usize = 50;

/// A writer on its own thread puts WRITER_NODES nodes of 1 KB, waits until the daemon
/// has them, and then either leaves with a goodbye or freezes (gone without one: the
/// daemon keeps its stale link until ICE or the keepalive notices).
/// With `hold`, it waits for it before leaving or freezing.
fn writer_session(
    relay_port: u16,
    daemon_port: u16,
    nodes_before: u64,
    freeze: bool,
    hold: Option<std::sync::mpsc::Receiver<()>>,
) -> std::sync::mpsc::Sender<()> {
    let (thaw_tx, thaw_rx) = std::sync::mpsc::channel::<()>();
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let w = TestPeer::join(relay_port, DB);
            w.wait_superpeers(1).await;
            let blob = "w".repeat(1024);
            for i in 0..WRITER_NODES {
                w.sync
                    .put(&format!("w{i:03}"), &format!(r#"{{"blob":"{blob}"}}"#))
                    .await
                    .unwrap();
            }
            let want = nodes_before + WRITER_NODES as u64;
            tokio::task::spawn_blocking(move || {
                common::wait_until("the daemon holds the writer's nodes", || {
                    common::health(daemon_port)["nodes"].as_u64().unwrap_or(0) >= want
                })
            })
            .await
            .unwrap();
            if let Some(hold) = hold {
                let _ = tokio::task::spawn_blocking(move || hold.recv()).await;
            }
            if freeze {
                let _ = done_tx.send(());
                // Blocks this runtime's only thread: the link goes stale, no goodbye.
                let _ = thaw_rx.recv();
            } else {
                w.leave().await;
                let _ = done_tx.send(());
            }
        });
    });
    done_rx
        .recv_timeout(Duration::from_secs(60))
        .expect("the writer's session ended");
    thaw_tx
}

/// The orders of join, writer departure and sync exchange a reader can meet.
#[derive(Debug, Clone, Copy)]
enum Order {
    /// The writer vanished (stale link still held), then the reader joined.
    StaleWriterThenReader,
    /// The writer left with a goodbye, then the reader joined.
    WriterLeftThenReader,
    /// The reader joined while the writer was still linked; the writer then vanished
    /// while the full state was on its way.
    ReaderThenWriterVanishes,
}

async fn catch_up_in_order(order: Order) {
    let tmp = tempfile::tempdir().unwrap();
    let relay = relay(&tmp);
    let dir = data_dir(&tmp);
    // About 3.1 MB of barely compressible JSON: two parts or more.
    import_random(&tmp, &dir, 3000, 1024);
    let d = superpeer(&dir, &format!("ws://127.0.0.1:{}", relay.port), &[]);
    let port = d.port;
    let reader = match order {
        Order::StaleWriterThenReader | Order::WriterLeftThenReader => {
            let freeze = matches!(order, Order::StaleWriterThenReader);
            let thaw = writer_session(relay.port, port, 3000, freeze, None);
            let reader = TestPeer::join(relay.port, DB);
            // Keep the frozen writer's link stale until the reader is served.
            holds_exactly(&reader, &export(&dir), Duration::from_secs(60)).await;
            drop(thaw);
            reader
        }
        Order::ReaderThenWriterVanishes => {
            let (hold_tx, hold_rx) = std::sync::mpsc::channel::<()>();
            let relay_port = relay.port;
            let session = tokio::task::spawn_blocking(move || {
                writer_session(relay_port, port, 3000, true, Some(hold_rx))
            });
            tokio::task::spawn_blocking(move || {
                common::wait_until("the daemon holds the writer's nodes", || {
                    common::health(port)["nodes"].as_u64().unwrap_or(0) >= 3050
                })
            })
            .await
            .unwrap();
            let reader = TestPeer::join(relay.port, DB);
            reader.wait_superpeers(1).await;
            // The writer's runtime blocks from now on: its link goes stale mid-serve.
            hold_tx.send(()).unwrap();
            let thaw = session.await.unwrap();
            holds_exactly(&reader, &export(&dir), Duration::from_secs(60)).await;
            drop(thaw);
            reader
        }
    };
    wait_metric(port, "sync_full_delivered", 1).await;
    assert!(
        metric(port, "sync_full_parts") >= 2,
        "{order:?}: the full state went out in parts"
    );
    drop(reader);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fresh_reader_gets_every_node_while_a_vanished_writers_link_is_still_held() {
    catch_up_in_order(Order::StaleWriterThenReader).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fresh_reader_gets_every_node_after_the_writer_said_goodbye() {
    catch_up_in_order(Order::WriterLeftThenReader).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_gets_every_node_when_another_peer_vanishes_mid_serve() {
    catch_up_in_order(Order::ReaderThenWriterVanishes).await;
}

/// A reader stops acknowledging as soon as it joins (its runtime hangs). The daemon
/// sees its full state make no progress (or ICE consent fails first) and drops the
/// link; the full state, never acknowledged, is owed.
/// The reader had written a node offline, so when it links again its `sync` carries a
/// timestamp inside the daemon's oplog window: by the protocol that earns only a
/// delta, which holds the last OPLOG_SIZE ops and not the 2,000 imported nodes. The
/// owed full state is what brings them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_whose_full_state_stalled_gets_it_whole_on_its_next_link() {
    let tmp = tempfile::tempdir().unwrap();
    let relay = relay(&tmp);
    let dir = data_dir(&tmp);
    import_random(&tmp, &dir, 2000, 1024);
    let d = superpeer(
        &dir,
        &format!("ws://127.0.0.1:{}", relay.port),
        &[("OPLOG_SIZE", "200")],
    );
    let port = d.port;
    // Live writes fill the daemon's oplog window with ops newer than the import.
    writer_session(relay.port, port, 2000, false, None);

    let store = Arc::new(Mutex::new(Store::new(1000)));
    let (thaw_tx, thaw_rx) = std::sync::mpsc::channel::<()>();
    let (_id, _t) = peer_on_own_thread(
        relay.port,
        store.clone(),
        |s| {
            // Written offline, after every op the daemon holds.
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_millis() as u64;
            genosdb_fallback::sync::local::put(&mut s.lock().unwrap(), "mine", r#""offline""#, now)
                .unwrap();
        },
        thaw_rx,
    );
    // The daemon gives up on the link, whichever notices first: no progress on the
    // full state for DELIVERY_STALL (counted as stalled), or ICE consent. Either way the
    // full state was never acknowledged, so it is owed.
    wait_metric(port, "sync_full_replies", 2).await;
    tokio::task::spawn_blocking(move || {
        common::wait_until("the daemon let the frozen reader go", || {
            common::health(port)["peers"].as_u64() == Some(0)
        })
    })
    .await
    .unwrap();
    thaw_tx.send(()).unwrap();

    // The import, the writer's nodes and its own.
    let total = 2000 + WRITER_NODES + 1;
    wait_async_for(
        "the reader holds the whole graph",
        Duration::from_secs(60),
        || store.lock().unwrap().len() >= total,
    )
    .await;
    let held = export_of(&store.lock().unwrap());
    // The daemon got the reader's offline node too.
    tokio::task::spawn_blocking({
        let dir = dir.clone();
        move || {
            common::wait_until("the daemon holds the reader's node", || {
                export(&dir).len() == total
            })
        }
    })
    .await
    .unwrap();
    assert_eq!(held, export(&dir));
    assert!(metric(port, "sync_full_delivered") >= 1);
}

/// A peer that wrote offline (or got a live op from another peer) carries a timestamp
/// newer than anything the daemon holds, so by the protocol its `sync` earns a delta:
/// the oplog window only, not the older nodes it never had. The daemon has never seen
/// it hold the whole graph, so it sends a full state instead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_with_a_recent_timestamp_and_part_of_the_graph_gets_all_of_it() {
    let tmp = tempfile::tempdir().unwrap();
    let relay = relay(&tmp);
    let dir = data_dir(&tmp);
    import_random(&tmp, &dir, 1500, 512);
    let d = superpeer(
        &dir,
        &format!("ws://127.0.0.1:{}", relay.port),
        &[("OPLOG_SIZE", "200")],
    );
    let port = d.port;
    let store = Arc::new(Mutex::new(Store::new(1000)));
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    genosdb_fallback::sync::local::put(&mut store.lock().unwrap(), "mine", r#""offline""#, now)
        .unwrap();
    let reader = TestPeer::join_with(relay.port, DB, store);
    wait_async_for("all 1501 nodes", Duration::from_secs(60), || {
        reader.store.lock().unwrap().len() >= 1501
    })
    .await;
    tokio::task::spawn_blocking({
        let dir = dir.clone();
        move || {
            common::wait_until("the daemon holds the reader's node", || {
                export(&dir).len() == 1501
            })
        }
    })
    .await
    .unwrap();
    assert_eq!(reader.export(), export(&dir));
    assert!(metric(port, "sync_full_for_delta") >= 1);
}

/// The full state is framed once and reused while the graph stays the same; a write
/// in between must reach the next reader.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readers_get_the_graph_as_it_is_when_they_ask_not_as_it_was_cached() {
    let tmp = tempfile::tempdir().unwrap();
    let relay = relay(&tmp);
    let dir = data_dir(&tmp);
    import_random(&tmp, &dir, 1500, 512);
    let d = superpeer(&dir, &format!("ws://127.0.0.1:{}", relay.port), &[]);
    let port = d.port;
    for round in 0..3 {
        let reader = TestPeer::join(relay.port, DB);
        holds_exactly(&reader, &export(&dir), Duration::from_secs(60)).await;
        // A change after this reader was served; the next one must see it.
        reader
            .sync
            .put(&format!("round{round}"), r#""written between readers""#)
            .await
            .unwrap();
        let want = 1501 + round as u64;
        tokio::task::spawn_blocking(move || {
            common::wait_until("the daemon holds the write", || {
                common::health(port)["nodes"].as_u64() == Some(want)
            })
        })
        .await
        .unwrap();
        reader.leave().await;
    }
    let last = TestPeer::join(relay.port, DB);
    holds_exactly(&last, &export(&dir), Duration::from_secs(60)).await;
    assert!(last.value("round2").is_some());
    assert!(metric(port, "sync_full_replies") >= 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_full_state_is_written_ahead_once_the_graph_stands_still() {
    let tmp = tempfile::tempdir().unwrap();
    let relay = relay(&tmp);
    let dir = data_dir(&tmp);
    import_random(&tmp, &dir, 1500, 512);
    let d = superpeer(&dir, &format!("ws://127.0.0.1:{}", relay.port), &[]);
    let port = d.port;
    // No peer has asked for it yet: the graph stood still, so it was written ahead.
    wait_metric(port, "sync_full_prebuilt", 1).await;
    let writer = TestPeer::join(relay.port, DB);
    holds_exactly(&writer, &export(&dir), Duration::from_secs(60)).await;
    writer
        .sync
        .put("late", r#""written after the first write-ahead""#)
        .await
        .unwrap();
    tokio::task::spawn_blocking(move || {
        common::wait_until("the daemon holds the write", || {
            common::health(port)["nodes"].as_u64() == Some(1501)
        })
    })
    .await
    .unwrap();
    // The changed graph is written ahead again once it stands still.
    wait_metric(port, "sync_full_prebuilt", 2).await;
    writer.leave().await;
    // A fresh reader gets the graph as it is now, from what was written ahead.
    let reader = TestPeer::join(relay.port, DB);
    holds_exactly(&reader, &export(&dir), Duration::from_secs(60)).await;
    assert!(reader.value("late").is_some());
}
