//! The load generator end to end: the real `loadgen` binary spawns the real daemon
//! (its own relay on 127.0.0.1, no STUN), runs its peers in two worker processes, and
//! reports what arrived. No timing is asserted; only counts.

use serde_json::Value;
use std::collections::HashMap;
use std::process::Command;

const LOADGEN: &str = env!("CARGO_BIN_EXE_loadgen");
const DAEMON: &str = env!("CARGO_BIN_EXE_genosdb-fallback");

/// Runs a fanout of 8 peers, 2 of them writing 5 ops/s for 3 s; the figures by name.
fn fanout(forward: bool) -> HashMap<String, f64> {
    let out = Command::new(LOADGEN)
        .args(["fanout", "--daemon", DAEMON, "--db", "loadgen-test"])
        .args(["--forward", if forward { "true" } else { "false" }])
        .args(["--peers", "8", "--procs", "2", "--writers", "2"])
        .args(["--rate", "5", "--secs", "3", "--announce-ms", "300"])
        .args(["--connect-timeout", "90"])
        .env("RUST_LOG", "warn")
        .output()
        .expect("run loadgen");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "loadgen failed: {}\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let figures: HashMap<String, f64> = stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter_map(|v| Some((v["figure"].as_str()?.to_owned(), v["value"].as_f64()?)))
        .collect();
    assert!(stdout.contains("fanout_p99_ms"), "no table:\n{stdout}");
    figures
}

#[test]
fn every_op_reaches_every_other_peer_through_the_forwarding_daemon() {
    let f = fanout(true);
    let sent = f["ops_sent"];
    assert!(sent >= 2.0, "{f:?}");
    assert_eq!(f["fanout_expected"], sent * 7.0, "{f:?}");
    assert_eq!(f["fanout_delivered"], f["fanout_expected"], "{f:?}");
    assert_eq!(f["daemon_forwarded_ops"], sent, "{f:?}");
    assert_eq!(f["peer_disconnects"], 0.0, "{f:?}");
}

#[test]
fn without_forward_ops_peers_in_a_star_get_nothing_of_each_other() {
    let f = fanout(false);
    assert!(f["ops_sent"] >= 2.0, "{f:?}");
    assert_eq!(f["fanout_delivered"], 0.0, "{f:?}");
    assert_eq!(f["daemon_forwarded_ops"], 0.0, "{f:?}");
}
