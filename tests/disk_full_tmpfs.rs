//! A real full filesystem under the real daemon: DATA_DIR on a 4 MiB tmpfs, filled to
//! the last page by a ballast file while peers write. The daemon must report
//! `degraded`, keep serving what it merged from memory, never cut the good bytes
//! already on disk, recover by itself when space returns, and after a restart hold
//! everything written before, during and after.
//!
//! Mounting needs root (CAP_SYS_ADMIN); without it the test says SKIPPED and returns:
//! tests/disk_full.rs covers the same logic in-process with RLIMIT_FSIZE. This file is
//! its own test binary because that test sets a process-wide limit the daemon spawned
//! here would inherit.

mod common;

use common::peer::{TestPeer, wait_async};
use common::tmpfs::Tmpfs;
use common::{DB, Daemon, data_dir, export, health, relay, superpeer};
use std::io::Write;
use std::path::Path;
use std::time::Duration;

const FS_BYTES: u64 = 4 << 20;

/// Fills the filesystem holding `path` until it refuses one more byte.
fn fill_until_full(path: &Path) -> u64 {
    let mut f = std::fs::File::create(path).unwrap();
    let mut written = 0u64;
    for chunk in [64 << 10, 4 << 10, 1] {
        let buf = vec![0x5a; chunk];
        loop {
            match f.write(&buf) {
                Ok(0) => break,
                Ok(n) => written += n as u64,
                Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => break,
                Err(e) => panic!("ballast: {e}"),
            }
        }
    }
    written
}

/// `n` nodes `{prefix}{i}` with values of about `pad` bytes.
async fn write(w: &TestPeer, prefix: &str, n: usize, pad: usize) {
    for i in 0..n {
        let value = format!(r#"{{"i":{i},"pad":"{}"}}"#, "p".repeat(pad));
        w.sync
            .put(&format!("{prefix}{i:04}"), &value)
            .await
            .unwrap();
    }
}

fn status(port: u16) -> String {
    health(port)["status"].as_str().unwrap_or("").to_owned()
}

async fn wait_status(port: u16, want: &str) {
    wait_async(&format!("/health status {want}"), || status(port) == want).await;
}

async fn wait_nodes(port: u16, n: usize) {
    wait_async(&format!("the daemon holds {n} nodes"), || {
        health(port)["nodes"].as_u64() == Some(n as u64)
    })
    .await;
}

/// The good store's bytes: the journal, and the snapshot if there is one.
fn good_bytes(dir: &Path) -> (Vec<u8>, Option<Vec<u8>>) {
    let journal = std::fs::read(dir.join(format!("{DB}.journal"))).unwrap();
    let snapshot = std::fs::read(dir.join(format!("{DB}.bin"))).ok();
    (journal, snapshot)
}

/// The durable bytes are all still there: the journal only grew, the snapshot is intact.
fn assert_not_truncated(dir: &Path, good: &(Vec<u8>, Option<Vec<u8>>)) {
    let now = good_bytes(dir);
    assert!(
        now.0.len() >= good.0.len() && now.0[..good.0.len()] == good.0[..],
        "the journal's good prefix changed: {} bytes before, {} now",
        good.0.len(),
        now.0.len()
    );
    assert_eq!(now.1, good.1, "the snapshot changed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_filesystem_degrades_serves_from_memory_keeps_good_data_and_recovers() {
    full_disk(None).await;
}

/// The same with 4 KiB journal segments: rotations and compactions (which need room for
/// a new segment and a new snapshot) run into the full disk too. Files are renamed by
/// rotation, so "never truncated" is checked as what they hold: every good node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_filesystem_during_rotations_and_compactions_loses_nothing() {
    full_disk(Some("4096")).await;
}

async fn full_disk(compact_bytes: Option<&str>) {
    let tmp = tempfile::tempdir().unwrap();
    let mnt = tmp.path().join("fs");
    std::fs::create_dir_all(&mnt).unwrap();
    let _fs = match Tmpfs::mount(&mnt, FS_BYTES) {
        Ok(fs) => fs,
        Err(why) => {
            eprintln!("SKIPPED: {why}; tests/disk_full.rs (RLIMIT_FSIZE) covers the logic");
            return;
        }
    };
    let dir = mnt.join("data");
    std::fs::create_dir_all(&dir).unwrap();
    let relay = relay(&tmp);
    let relay_url = format!("ws://127.0.0.1:{}", relay.port);
    let mut envs = vec![("FLUSH_MS", "50")];
    envs.extend(compact_bytes.map(|c| ("COMPACT_BYTES", c)));
    let start = || superpeer(&dir, &relay_url, &envs);
    let mut d = start();

    // Before: written and durable.
    let w = TestPeer::join(relay.port, DB);
    w.wait_superpeers(1).await;
    write(&w, "before", 100, 200).await;
    let before = w.export();
    let probe = dir.clone();
    wait_async("the first writes on disk", || export(&probe) == before).await;
    // Only without rotation do the files keep their names for a byte-wise check.
    let good = compact_bytes.is_none().then(|| good_bytes(&dir));

    // The disk fills up; writes go on until the journal is refused.
    let ballast = mnt.join("ballast");
    let filled = fill_until_full(&ballast);
    assert!(
        filled > FS_BYTES / 2,
        "the ballast took only {filled} bytes"
    );
    if compact_bytes.is_some() {
        // Leave 64 KiB: the daemon fills them itself, with segments and snapshots.
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(&ballast)
            .unwrap();
        f.set_len(filled - (64 << 10)).unwrap();
    }
    let mut during = 0;
    while status(d.port) != "degraded" {
        write(&w, &format!("during{during:03}-"), 10, 1000).await;
        during += 1;
        assert!(
            during < 200,
            "2,000 writes of 1 KB and the daemon is not degraded"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    write(&w, "during-more", 50, 1000).await;
    let all_so_far = w.export();
    wait_nodes(d.port, all_so_far.len()).await;
    let h = health(d.port);
    eprintln!("while full: {h}");
    // With rotations, the daemon's own compaction may free space now and then; without,
    // only the ballast's removal does.
    if let Some(good) = &good {
        assert_eq!(h["status"], "degraded", "{h}");
        assert!(h["unwritten"].as_u64().unwrap_or(0) > 0, "{h}");
        assert!(h["error"].as_str().unwrap().contains("journal"), "{h}");
        assert_not_truncated(&dir, good);
    }
    // What is on disk still loads whole, while the daemon runs on a full disk.
    let on_disk = export(&dir);
    assert!(before.iter().all(|l| on_disk.contains(l)));

    // Served from memory: the writer leaves, and a fresh peer gets everything.
    let kept = w.leave().await;
    let r = TestPeer::join(relay.port, DB);
    r.wait_store("everything, from the daemon's memory", |s| {
        common::peer::export_of(s) == all_so_far
    })
    .await;
    r.leave().await;
    if let Some(good) = &good {
        assert_eq!(status(d.port), "degraded");
        assert_not_truncated(&dir, good);
    }
    let on_disk = export(&dir);
    assert!(before.iter().all(|l| on_disk.contains(l)));

    // Space returns: the daemon recovers on its own and writes what it kept.
    std::fs::remove_file(&ballast).unwrap();
    wait_status(d.port, "ok").await;
    let probe = dir.clone();
    let expected = all_so_far.clone();
    wait_async("the kept records on disk", || export(&probe) == expected).await;

    // After: a returning writer adds more, then a restart holds all of it.
    let w = TestPeer::join_with(relay.port, DB, kept);
    w.wait_superpeers(1).await;
    write(&w, "after", 50, 200).await;
    let everything = w.export();
    wait_nodes(d.port, everything.len()).await;
    w.leave().await;
    assert!(d.stop().success());
    let d = start();
    assert_eq!(
        health(d.port)["nodes"].as_u64(),
        Some(everything.len() as u64)
    );
    stop(d);
    assert_eq!(export(&dir), everything);
    eprintln!(
        "disk full (COMPACT_BYTES {compact_bytes:?}): {} nodes before, {} written while full, {} after; all present after a restart",
        before.len(),
        all_so_far.len() - before.len(),
        everything.len() - all_so_far.len()
    );
}

fn stop(mut d: Daemon) {
    assert!(d.stop().success());
}

#[test]
fn the_ballast_fills_a_tmpfs_to_the_last_byte() {
    let tmp = tempfile::tempdir().unwrap();
    let mnt = data_dir(&tmp);
    let Ok(_fs) = Tmpfs::mount(&mnt, 1 << 20) else {
        eprintln!("SKIPPED: cannot mount a tmpfs here");
        return;
    };
    fill_until_full(&mnt.join("ballast"));
    let err = std::fs::write(mnt.join("one-more"), b"x").unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::ENOSPC));
}
