//! Cells mode (genosrtc-transport.md §8) with the real daemon and Rust peers that speak
//! the overlay, on a relay on 127.0.0.1.

mod common;

use common::peer::{TestPeer, wait_async};
use common::{DB, Daemon, data_dir, relay};
use genosdb_fallback::rtc::cells::Seal;
use genosdb_fallback::rtc::frame::Payload;
use genosdb_fallback::store::Store;
use genosdb_fallback::sync::SyncConfig;
use std::collections::HashSet;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

const CELL_SIZE: usize = 4;

fn daemon(dir: &Path, relay_port: u16, cells: &[(&str, &str)]) -> Daemon {
    let relay = format!("ws://127.0.0.1:{relay_port}");
    let mut envs = vec![
        ("RTC_ENABLED", "true"),
        ("RELAY_URLS", relay.as_str()),
        ("ICE_SERVERS", ""),
        ("FLUSH_MS", "100"),
        ("RUST_LOG", "info,genosdb_fallback::rtc::room=debug"),
    ];
    envs.extend_from_slice(cells);
    Daemon::start_ready(dir, &envs)
}

fn cells_peer(relay_port: u16) -> TestPeer {
    TestPeer::join_configured(
        relay_port,
        DB,
        Arc::new(Mutex::new(Store::new(1000))),
        |c| c.cells = Some(CELL_SIZE),
        SyncConfig::default(),
    )
}

/// Waits until every peer holds a link to every other peer its topology admits, so
/// writes travel the whole overlay (links are dialled after each seal).
async fn linked(peers: &[TestPeer], d: &Daemon) {
    let daemon_id = health(d)["cells"]["peerId"].as_str().unwrap().to_owned();
    let roster: Vec<String> = peers
        .iter()
        .map(|p| p.room.self_id.clone())
        .chain(std::iter::once(daemon_id))
        .collect();
    wait_async("every admitted link is up", || {
        peers.iter().all(|p| {
            let seal = Seal::compute(&p.room.self_id, roster.clone(), CELL_SIZE);
            let links: HashSet<String> = p.room.peers().into_iter().collect();
            roster
                .iter()
                .filter(|x| **x != p.room.self_id && seal.allows(x))
                .all(|x| links.contains(x))
        })
    })
    .await;
}

fn health(d: &Daemon) -> serde_json::Value {
    serde_json::from_str(&d.get("/health").1).unwrap_or_default()
}

/// Twelve peers with cellSize 4 and the daemon (four cells): every write reaches the
/// daemon whichever cell its writer is in; a bridge that leaves is replaced at the
/// next seal and the daemon still gets everything; a fresh peer gets it all from the
/// daemon alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_gets_and_serves_every_write_of_a_cells_room() {
    let tmp = tempfile::tempdir().unwrap();
    let relay = relay(&tmp);
    let dir = data_dir(&tmp);
    let d = daemon(&dir, relay.port, &[("CELLS", "1"), ("CELL_SIZE", "4")]);

    let peers: Vec<TestPeer> = (0..12).map(|_| cells_peer(relay.port)).collect();
    // Everyone's topology holds all 13 members once the roster is quiet.
    wait_async("the daemon's seal holds the whole room", || {
        health(&d)["cells"]["roster"].as_u64() == Some(13)
    })
    .await;
    for p in &peers {
        wait_async("every peer sealed the whole room", || {
            p.room
                .cell_state()
                .is_some_and(|(_, cells, _, roster)| roster == 13 && cells == 4)
        })
        .await;
    }
    let h = health(&d);
    assert_eq!(h["cells"]["cells"], 4, "{h}");
    linked(&peers, &d).await;

    for (i, p) in peers.iter().enumerate() {
        p.sync.put(&format!("w{i}"), &i.to_string()).await.unwrap();
    }
    let want: HashSet<String> = (0..12).map(|i| format!("w{i}")).collect();
    for _ in 0..300 {
        if want.is_subset(&common::stored_ids::<HashSet<String>>(&dir)) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let have = common::stored_ids::<HashSet<String>>(&dir);
    let topology: Vec<_> = peers
        .iter()
        .map(|p| (p.room.cell_state(), p.room.peers().len()))
        .collect();
    assert!(
        want.is_subset(&have),
        "missing {:?}; peers (cell, cells, bridge, roster), links: {topology:?}; daemon {}",
        want.difference(&have).collect::<Vec<_>>(),
        health(&d)
    );
    // Some of them came through the overlay, forwarded by bridges.
    let metrics = d.get("/metrics").1;
    let delivered: u64 = metrics
        .lines()
        .find(|l| l.starts_with("genosdb_cell_deliveries_total"))
        .and_then(|l| l.split_whitespace().last()?.parse().ok())
        .unwrap_or(0);
    assert!(delivered > 0, "no envelope delivered: {metrics}");

    // A bridge (not the daemon) leaves; the others reseal without it.
    let bridge = peers
        .iter()
        .position(|p| p.room.cell_state().is_some_and(|(_, _, bridge, _)| bridge))
        .expect("a peer is a bridge");
    let mut peers = peers;
    let gone = peers.remove(bridge);
    let gone_id = gone.room.self_id.clone();
    gone.leave().await;
    wait_async("the room resealed without the bridge", || {
        health(&d)["cells"]["roster"].as_u64() == Some(12)
            && peers
                .iter()
                .all(|p| p.room.cell_state().is_some_and(|s| s.3 == 12))
    })
    .await;
    linked(&peers, &d).await;
    for (i, p) in peers.iter().enumerate() {
        p.sync.put(&format!("after{i}"), "1").await.unwrap();
    }
    let after: HashSet<String> = (0..11).map(|i| format!("after{i}")).collect();
    wait_async("the daemon still converges", || {
        after.is_subset(&common::stored_ids::<HashSet<String>>(&dir))
    })
    .await;
    for p in peers {
        p.leave().await;
    }

    // Only the daemon remains: a fresh cells peer gets every write from it.
    let fresh = cells_peer(relay.port);
    fresh
        .wait_store("every write from the daemon", |s| {
            want.iter()
                .chain(after.iter())
                .all(|id| s.get(id).is_some())
        })
        .await;
    assert!(fresh.room.cell_state().is_some());
    assert_ne!(fresh.room.self_id, gone_id);
    fresh.leave().await;
}

/// CELLS off while peers speak the overlay: one warning and `cellsMismatch` in /health.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cell_envelopes_without_cells_mode_are_reported() {
    let tmp = tempfile::tempdir().unwrap();
    let relay = relay(&tmp);
    let dir = data_dir(&tmp);
    let mut d = daemon(&dir, relay.port, &[]);
    let p = cells_peer(relay.port);
    p.wait_superpeers(1).await;
    assert!(!d.get("/health").1.contains("cellsMismatch"));
    let env = r#"{"t":"msg","id":"x:1:1","ttl":5,"data":{"_ch":"syncGraph","_d":[]},"origin":"x","originCell":"cell-0"}"#;
    p.room.send("c0", Payload::Text(env), None).unwrap();
    wait_async("cellsMismatch in /health", || {
        health(&d)["cellsMismatch"] == serde_json::json!(true)
    })
    .await;
    let line = d.wait_for_log("CELLS is off", Duration::from_secs(5));
    assert!(line.contains("CELLS=1"), "{line}");
    p.leave().await;
}
