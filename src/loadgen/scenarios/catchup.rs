//! Catch-up: daemons seeded with ever larger graphs and a fresh peer that joins
//! each and must hold every node.

use super::{mb, run_id, spawn_settings, temp_dir};
use crate::loadgen::Target;
use crate::loadgen::daemon::Daemon;
use crate::loadgen::peer::{self, now_ns};
use crate::loadgen::stats::Figures;
use crate::store::Store;
use crate::sync::{PeerChange, SyncConfig, service};
use anyhow::bail;
use std::io::Write;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// For each size: a daemon seeded with that many nodes (through `import`), its RSS,
/// and a fresh peer built from this crate's sync layer joining and getting them all.
pub(super) async fn catchup(
    target: &Target,
    sizes: &[usize],
    node_bytes: usize,
    timeout_secs: f64,
    figures: &mut Figures,
) -> anyhow::Result<()> {
    if target.port.is_some() {
        bail!("catchup seeds its own daemons: give --daemon (or nothing), not --port");
    }
    let run = run_id();
    let dir = temp_dir(&run);
    let empty = {
        let settings = spawn_settings(target, &dir.join("empty"))?;
        let d = Daemon::spawn(&settings).await?;
        tokio::time::sleep(Duration::from_secs(1)).await;
        let s = d.sample().await;
        d.stop().await;
        s.map_or(0, |s| s.rss_bytes)
    };
    figures.add("daemon_rss_empty_mb", mb(empty), "MB");
    let mut outcome = Ok(());
    for &nodes in sizes {
        figures.context("nodes", nodes);
        let sub = dir.join(format!("n{nodes}"));
        let result = catchup_one(
            target,
            &sub,
            nodes,
            node_bytes,
            timeout_secs,
            empty,
            figures,
        )
        .await;
        if let Err(e) = result {
            eprintln!("loadgen: catch-up of {nodes} nodes failed: {e:#}");
            outcome = Err(e);
            break;
        }
        let _ = std::fs::remove_dir_all(&sub);
    }
    if !target.keep {
        let _ = std::fs::remove_dir_all(&dir);
    }
    outcome
}

pub(super) async fn catchup_one(
    target: &Target,
    dir: &Path,
    nodes: usize,
    node_bytes: usize,
    timeout_secs: f64,
    empty_rss: u64,
    figures: &mut Figures,
) -> anyhow::Result<()> {
    let settings = spawn_settings(target, dir)?;
    std::fs::create_dir_all(&settings.data_dir)?;
    let seed = dir.join("seed.jsonl");
    let t = Instant::now();
    write_seed(&seed, nodes, node_bytes)?;
    crate::loadgen::daemon::import(&settings, &seed)?;
    let _ = std::fs::remove_file(&seed);
    eprintln!(
        "loadgen: seeded {nodes} nodes in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    let daemon = Daemon::spawn(&settings).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    if let Some(s) = daemon.sample().await {
        figures.add("daemon_rss_seeded_mb", mb(s.rss_bytes), "MB");
        let per = (s.rss_bytes as f64 - empty_rss as f64) / nodes as f64;
        figures.add("daemon_bytes_per_node", per, "B");
    }
    let result = fresh_peer_catches_up(&daemon, &target.db, nodes, timeout_secs).await;
    if let Ok((connect, catchup)) = &result {
        figures.add("catchup_connect_s", connect.as_secs_f64(), "s");
        figures.add("catchup_s", catchup.as_secs_f64(), "s");
        if let Some(line) = daemon.find_log("full state sent") {
            let field = |k: &str| -> Option<f64> {
                line.split(&format!("{k}="))
                    .nth(1)?
                    .split_whitespace()
                    .next()?
                    .parse()
                    .ok()
            };
            if let Some(ms) = field("took_ms") {
                figures.add("catchup_daemon_ms", ms, "ms");
            }
            if let Some(parts) = field("parts") {
                figures.add("catchup_parts", parts, "msgs");
            }
        }
    }
    daemon.stop().await;
    result.map(|_| ())
}

/// A fresh peer (a store and the sync layer of this crate, linked to superpeers
/// only) joins; returns the time to link and, from the link, to hold every node.
pub(super) async fn fresh_peer_catches_up(
    daemon: &Daemon,
    db: &str,
    nodes: usize,
    timeout_secs: f64,
) -> anyhow::Result<(Duration, Duration)> {
    let cfg = peer::room_config(
        &format!("graph-sync-room-{db}"),
        Duration::from_millis(500),
        daemon.peer_id().as_deref(),
    );
    let t0 = Instant::now();
    let (room, events) = peer::join(&daemon.relay_url(), cfg);
    let room = Arc::new(room);
    let store = Arc::new(Mutex::new(Store::new(1000)));
    let linked: Arc<Mutex<Option<Instant>>> = Arc::default();
    let mark = linked.clone();
    let _sync = service::start(
        room.clone(),
        events,
        store.clone(),
        SyncConfig::default(),
        move |_, change| {
            if let PeerChange::Joined { kind, .. } = change
                && kind.as_deref() == Some("superpeer")
            {
                mark.lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .get_or_insert(Instant::now());
            }
        },
    );
    let deadline = t0 + Duration::from_secs_f64(timeout_secs);
    let result = loop {
        let held = store.lock().unwrap_or_else(|p| p.into_inner()).len();
        if held >= nodes {
            let done = Instant::now();
            let at = linked
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .unwrap_or(t0);
            break Ok((at - t0, done - at));
        }
        if Instant::now() > deadline {
            break Err(anyhow::anyhow!(
                "the fresh peer held {held} of {nodes} nodes after {timeout_secs} s"
            ));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    room.leave().await;
    result
}

/// `nodes` JSON lines in the export format, each value holding `node_bytes` of
/// pseudo-random hex text (it deflates about as well as real text, unlike a repeated
/// letter, so the full state is split into parts as real data would be).
pub(super) fn write_seed(path: &Path, nodes: usize, node_bytes: usize) -> anyhow::Result<()> {
    let mut out = std::io::BufWriter::new(std::fs::File::create(path)?);
    let base = now_ns() / 1_000_000 - 3_600_000;
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut text = String::with_capacity(node_bytes);
    for i in 0..nodes {
        text.clear();
        while text.len() < node_bytes {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            text.push_str(&format!("{x:016x}"));
        }
        text.truncate(node_bytes);
        writeln!(
            out,
            r#"{{"id":"node-{i:07}","value":{{"i":{i},"text":"{text}"}},"edges":[],"timestamp":{{"physical":{},"logical":{}}}}}"#,
            base + (i / 1000) as u64,
            i % 1000
        )?;
    }
    out.flush()?;
    Ok(())
}
