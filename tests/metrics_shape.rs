//! The shape of `/metrics` and `/health` on a daemon with every part on (RTC, the
//! embedded relay, the presence room, SM_ENABLED and SM_KEY), and with RTC off: every family's name,
//! HELP and TYPE text, every series' labels, in order, and every `/health` key. Values
//! are left out (they move). `tests/golden/metrics.txt` holds what the daemon said
//! when the families were listed by hand; a change to a metric's name, help text or
//! type must change that file on purpose. `UPDATE_GOLDEN=1` rewrites it.

mod common;

use common::{Daemon, data_dir};
use std::time::Duration;

const GOLDEN: &str = "tests/golden/metrics.txt";
const SM_KEY_HEX: &str = "0x4c0883a69102937d6231471b5dbb6204fe5129617082792ae468d01a3f362318";

/// `/metrics` without values: comment lines whole, sample lines up to their value.
fn shape(metrics: &str) -> String {
    metrics
        .lines()
        .map(|l| match l.starts_with('#') {
            true => l.to_owned(),
            false => l
                .rsplit_once(' ')
                .map_or(l, |(series, _)| series)
                .to_owned(),
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The health keys and the metrics' shape of a daemon started with `envs`.
fn observe(envs: &[(&str, &str)]) -> String {
    let tmp = tempfile::tempdir().unwrap();
    let mut d = Daemon::start(&data_dir(&tmp), envs);
    d.wait_for_log(" ready", Duration::from_secs(60));
    let (code, metrics) = d.get("/metrics");
    assert_eq!(code, 200);
    let (code, health) = d.get("/health");
    assert_eq!(code, 200);
    let health: serde_json::Value = serde_json::from_str(&health).unwrap();
    let keys: Vec<&str> = health
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(d.stop().code(), Some(0));
    format!("# /health keys: {}\n{}\n", keys.join(" "), shape(&metrics))
}

#[test]
fn metrics_and_health_keep_their_shape() {
    let everything = observe(&[
        ("RELAY", "1"),
        ("RTC_ENABLED", "true"),
        ("RELAY_URLS", ""),
        ("ICE_SERVERS", ""),
        ("ROOM_PRESENCE", "1"),
        ("SM_ENABLED", "true"),
        ("SM_KEY", SM_KEY_HEX),
    ]);
    let store_only = observe(&[]);
    let got = format!("## everything on\n{everything}## RTC off\n{store_only}");
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(GOLDEN, &got).unwrap();
    }
    let want = std::fs::read_to_string(GOLDEN).unwrap();
    for (i, (g, w)) in got.lines().zip(want.lines()).enumerate() {
        assert_eq!(g, w, "line {} of {GOLDEN} differs", i + 1);
    }
    assert_eq!(got.lines().count(), want.lines().count(), "{got}");
}
