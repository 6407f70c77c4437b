//! The console page in a real headless Chromium (Debian's `chromium`, driven by
//! `playwright-core`; `.ci/run` installs both) against the daemon with Rust peers: it
//! shows the right peer count, a join shows up within 2 s (the issue's bar), the peers'
//! catch-ups are charted with their time, it logs no
//! console error and makes no request off 127.0.0.1. Skipped when chromium is missing
//! (playwright-core installs itself on first use), except under `CI=true`. With SCREENSHOT=<path> it saves
//! the page (docs/console.png comes from here).

mod common;

use common::peer::TestPeer;
use common::{Daemon, data_dir};
use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Command, Stdio};

/// Debian's chromium and playwright-core (`PLAYWRIGHT_DIR`, or installed on first use by
/// `.ci/provision playwright`), or None (skip) outside CI when either is missing.
fn tools() -> Option<(PathBuf, PathBuf)> {
    let ci = std::env::var("CI").is_ok_and(|v| v == "true");
    let chromium = PathBuf::from(std::env::var("CHROMIUM").unwrap_or("/usr/bin/chromium".into()));
    if !chromium.is_file() {
        assert!(
            !ci,
            "CI=true but {} is missing: .ci/run installs it",
            chromium.display()
        );
        eprintln!(
            "SKIPPED: needs {} (apt-get install chromium)",
            chromium.display()
        );
        return None;
    }
    let dir = common::provision::tool("PLAYWRIGHT_DIR", "playwright")?;
    assert!(
        dir.join("node_modules/playwright-core/package.json")
            .is_file(),
        "PLAYWRIGHT_DIR={} has no node_modules/playwright-core",
        dir.display()
    );
    Some((chromium, dir))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_shows_peers_and_joins_live_in_chromium() {
    let Some((chromium, pw)) = tools() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let mut d = Daemon::start(
        &data_dir(&tmp),
        &[("RELAY", "1"), ("RTC_ENABLED", "true"), ("ICE_SERVERS", "")],
    );
    d.wait_for_log(" ready", std::time::Duration::from_secs(60));
    let mut peers = Vec::new();
    for _ in 0..2 {
        let p = TestPeer::join(d.port, common::DB);
        p.wait_superpeers(1).await;
        peers.push(p);
    }
    peers[0].sync.put("shown", r#"{"n":1}"#).await.unwrap();

    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/console/browser.mjs");
    let mut child = Command::new("node")
        .arg(&script)
        .arg(format!("http://127.0.0.1:{}/", d.port))
        .env("PLAYWRIGHT_DIR", &pw)
        .env("CHROMIUM", &chromium)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("node");
    let mut stdin = child.stdin.take().unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut next = move || -> serde_json::Value {
        let l = lines.next().expect("browser.mjs ended").unwrap();
        serde_json::from_str(&l).unwrap_or_else(|_| panic!("not JSON: {l}"))
    };

    writeln!(stdin, "expect 2").unwrap();
    let r = next();
    assert_eq!(r["ok"], true, "the page did not show 2 peers: {r}");

    let third = TestPeer::join(d.port, common::DB);
    third.wait_superpeers(1).await;
    writeln!(stdin, "expect 3 {}", third.room.self_id).unwrap();
    let r = next();
    assert_eq!(r["ok"], true, "the join did not show within 2 s: {r}");
    eprintln!("join shown after {} ms", r["ms"]);
    // The peers' catch-ups are charted with their time.
    writeln!(stdin, "catchup").unwrap();
    let r = next();
    assert_eq!(r["ok"], true, "no catch-up with its time on the page: {r}");
    eprintln!("catch-up shown: {}", r["shown"]);

    let gone = peers.pop().unwrap();
    gone.leave().await;
    writeln!(stdin, "expect 2").unwrap();
    let r = next();
    assert_eq!(r["ok"], true, "the leave did not show: {r}");

    if std::env::var_os("SCREENSHOT").is_some() {
        // Some traffic, so that the charts have points to draw (two 10 s samples).
        for i in 0..50 {
            third
                .sync
                .put(&format!("n{i}"), r#"{"v":1}"#)
                .await
                .unwrap();
            tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        }
    }
    writeln!(stdin, "quit").unwrap();
    drop(stdin);
    let summary = next();
    assert_eq!(summary["external"], serde_json::json!([]), "{summary}");
    assert_eq!(summary["errors"], serde_json::json!([]), "{summary}");
    assert!(summary["requests"].as_u64() >= Some(2), "{summary}");
    assert!(child.wait().unwrap().success());
    third.leave().await;
    for p in peers {
        p.leave().await;
    }
    d.stop();
}
