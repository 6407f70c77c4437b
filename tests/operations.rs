//! What an operator relies on: logging never takes the daemon down, and /health and
//! /metrics say when the daemon can reach no relay.

mod common;

use common::{Daemon, data_dir, health, metric, wait_until};
use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::time::Duration;

/// A loopback port that nothing listens on (bound, then released).
fn closed_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// `genosdb-fallback 2>&1 | head -1`: the reader of stderr goes away. Lines logged after
/// that are lost, and the daemon serves on and shuts down cleanly.
#[test]
fn a_closed_stderr_never_stops_the_daemon() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = data_dir(&tmp);
    let mut child = common::command(&dir)
        .env("RTC_ENABLED", "true")
        .env("RELAY_URLS", format!("ws://127.0.0.1:{}", closed_port()))
        .env("ICE_SERVERS", "")
        // Every failed retry of the relay is a debug line.
        .env("RUST_LOG", "debug")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut port = None;
    for line in lines.by_ref() {
        let line = line.unwrap();
        if let Some(addr) = line.split("addr=").nth(1) {
            let addr = addr.split_whitespace().next().unwrap();
            port = addr.rsplit(':').next().unwrap().parse::<u16>().ok();
        }
        if line.ends_with(" ready") {
            break;
        }
    }
    let port = port.expect("a listening line before ready");
    drop(lines); // closes the read end of the pipe

    // The relay's retries log into the closed pipe (the first one already failed).
    wait_until("two relay retries", || {
        metric(port, "relay_reconnects") >= 2
    });
    for _ in 0..20 {
        assert!(health(port)["status"].is_string(), "/health answers");
    }
    assert!(
        child.try_wait().unwrap().is_none(),
        "the daemon is still running"
    );
    // Shutting down logs too, and still exits 0 (a panic would be 101).
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(0), "{status}");
}

/// Every relay unreachable: after the grace period /health is degraded with a reason,
/// /metrics says so, and each relay logged one warning for its whole backoff cycle.
/// Once a relay answers, the daemon is ok again.
#[test]
fn cut_off_from_every_relay_is_degraded_until_one_answers() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = data_dir(&tmp);
    let (later, never) = (closed_port(), closed_port());
    let urls = format!("ws://127.0.0.1:{later},ws://127.0.0.1:{never}");
    let mut d = Daemon::start_ready(
        &dir,
        &[
            ("RTC_ENABLED", "true"),
            ("RELAY_URLS", &urls),
            ("ICE_SERVERS", ""),
        ],
    );
    let port = d.port;
    wait_until("/health degraded", || health(port)["status"] == "degraded");
    let h = health(port);
    let reason = h["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("0 of 2 connected"), "{h}");
    assert_eq!(h["relays"]["connected"], 0, "{h}");
    assert_eq!(metric(port, "relays_cut_off"), 1);
    assert_eq!(metric(port, "relays_connected"), 0);
    assert_eq!(metric(port, "relays"), 2);
    d.wait_for_log("degraded: cut off from every relay", Duration::from_secs(5));

    // Retries go on, quietly: one warning per relay for the whole cycle.
    wait_until("two retries of each relay", || {
        metric(port, "relay_reconnects") >= 4
    });
    let warnings = |d: &mut Daemon, url: &str| {
        d.drain_log()
            .iter()
            .filter(|l| l.contains(" WARN ") && l.contains("relay unreachable"))
            .filter(|l| l.contains(&format!("relay={url}")))
            .count()
    };
    for p in [later, never] {
        assert_eq!(warnings(&mut d, &format!("ws://127.0.0.1:{p}")), 1);
    }

    // A relay comes up on the first URL: connected, ok again.
    let relay_dir = tmp.path().join("relay");
    std::fs::create_dir_all(&relay_dir).unwrap();
    let later_port = later.to_string();
    let _relay = Daemon::start_ready(
        &relay_dir,
        &[
            ("RELAY", "1"),
            ("PORT", &later_port),
            ("DB_NAME", "relay-only"),
        ],
    );
    wait_until("/health ok again", || health(port)["status"] == "ok");
    let h = health(port);
    assert!(h.get("reason").is_none(), "{h}");
    assert_eq!(h["relays"]["connected"], 1, "{h}");
    assert_eq!(metric(port, "relays_cut_off"), 0);
    d.wait_for_log("no longer cut off", Duration::from_secs(5));
    d.assert_no_panic();
}

/// `HOST=localhost` binds the loopback address; `--help` shows defaults, and a
/// subcommand's help is its own, not the daemon's settings again.
#[test]
fn host_names_and_help() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = data_dir(&tmp);
    let mut d = Daemon::start_ready(&dir, &[("HOST", "localhost")]);
    let line = d.wait_for_log("listening", Duration::from_secs(5));
    assert!(line.contains("addr=127.0.0.1:"), "{line}");
    assert_eq!(health(d.port)["status"], "ok");
    drop(d);

    let help = common::run(&dir, &["--help"], &[]);
    let help = String::from_utf8(help.stdout).unwrap();
    assert!(help.contains("[default: 256] [env: MAX_PEERS"), "{help}");
    assert!(help.contains("[default: ./data] [env: DATA_DIR"), "{help}");
    let export = common::run(&dir, &["export", "--help"], &[]);
    let export = String::from_utf8(export.stdout).unwrap();
    assert!(
        export.contains("Usage: genosdb-fallback export"),
        "{export}"
    );
    assert!(!export.contains("--max-peers"), "{export}");
    assert!(export.lines().count() < 15, "{export}");
}

/// LOG_FORMAT=json: every field is a JSON string, number or boolean of its own, never a
/// Rust Debug rendering of a struct, a list or an Option; no secret appears.
#[test]
fn json_logs_carry_fields_not_debug_strings() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = data_dir(&tmp);
    let relay = format!("ws://127.0.0.1:{}", closed_port());
    let mut d = Daemon::start(
        &dir,
        &[
            ("LOG_FORMAT", "json"),
            ("RTC_ENABLED", "true"),
            ("CELLS", "true"),
            ("RELAY_URLS", &relay),
            ("ICE_SERVERS", "stun:127.0.0.1:3478"),
            ("TURN_URLS", "turn:127.0.0.1:3478"),
            ("TURN_USERNAME", "user"),
            ("TURN_CREDENTIAL", "turn-secret-7f3a"),
        ],
    );
    d.wait_for_log("joined the sync room", Duration::from_secs(10));
    let lines = d.drain_log().to_vec();
    let start = lines
        .iter()
        .find(|l| l.contains("starting genosdb-fallback"))
        .expect("the start line");
    let v: serde_json::Value = serde_json::from_str(start).unwrap();
    assert_eq!(v["fields"]["relays"], relay.as_str(), "{v}");
    assert_eq!(v["fields"]["stun"], "stun:127.0.0.1:3478", "{v}");
    assert_eq!(v["fields"]["cell_size"], 10, "{v}");
    for line in &lines {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        for (k, f) in v["fields"].as_object().unwrap() {
            assert!(!f.is_object() && !f.is_array(), "{k}: {line}");
            if let Some(text) = f.as_str() {
                for debug in ["{ ", "Some(", "None", "[\"", "Config"] {
                    assert!(!text.contains(debug), "{k} is a Debug string: {line}");
                }
            }
        }
        assert!(!line.contains("turn-secret-7f3a"), "{line}");
    }
}
