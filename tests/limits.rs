//! Resource limits in the real binary, with Rust peers over real WebRTC through a relay
//! on 127.0.0.1: a peer over a limit is dropped or its message or op refused, counted in
//! `genosdb_limit_exceeded_total{limit}`, logged, and every other peer is still served.

mod common;

use common::peer::{TestPeer, value_of, wait_async};
use common::{DB, Daemon, data_dir, relay};
use genosdb_fallback::rtc::frame::Payload;
use std::path::Path;
use std::time::{Duration, Instant};

fn superpeer(dir: &Path, relay_port: u16, limits: &[(&str, &str)]) -> Daemon {
    let relay = format!("ws://127.0.0.1:{relay_port}");
    let mut envs = vec![
        ("RTC_ENABLED", "true"),
        ("RELAY_URLS", relay.as_str()),
        ("ICE_SERVERS", ""),
        ("FLUSH_MS", "100"),
        (
            "RUST_LOG",
            "info,genosdb_fallback::rtc=debug,genosdb_fallback::sync=debug",
        ),
    ];
    envs.extend_from_slice(limits);
    Daemon::start_ready(dir, &envs)
}

/// `genosdb_limit_exceeded_total{limit="<limit>"}`, 0 when absent.
fn exceeded(d: &Daemon, limit: &str) -> u64 {
    let (_, body) = d.get("/metrics");
    let prefix = format!("genosdb_limit_exceeded_total{{limit=\"{limit}\"}} ");
    body.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

fn health_peers(port: u16) -> u64 {
    let (_, body) = common::http_get(port, "/health");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
    v["peers"].as_u64().unwrap_or(0)
}

/// Waits until the daemon has `ids` on disk.
async fn stored(dir: &Path, ids: &[&str]) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let d = dir.to_owned();
        let have = tokio::task::spawn_blocking(move || common::stored_ids::<Vec<String>>(&d))
            .await
            .unwrap();
        if ids.iter().all(|id| have.iter().any(|h| h == id)) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {ids:?} on disk: {have:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn wait_log(d: Daemon, needle: String) -> (Daemon, String) {
    tokio::task::spawn_blocking(move || {
        let mut d = d;
        let line = d.wait_for_log(&needle, Duration::from_secs(30));
        (d, line)
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flooding_peers_are_dropped_and_everyone_else_is_still_served() {
    let tmp = tempfile::tempdir().unwrap();
    let relay = relay(&tmp);
    let dir = data_dir(&tmp);
    let d = superpeer(
        &dir,
        relay.port,
        &[
            ("PEER_MSG_RATE", "20"),
            ("PEER_MSG_BURST", "60"),
            ("PEER_BYTES_RATE", "1024"),
            ("MAX_MESSAGE_BYTES", "65536"),
            ("PEER_BYTES_BURST", "1703936"),
        ],
    );
    let writer = TestPeer::join(relay.port, DB);
    let flooder = TestPeer::join(relay.port, DB);
    writer.wait_superpeers(1).await;
    flooder.wait_superpeers(1).await;

    // Messages: 400 at once, where the daemon takes 60 and then 20 a second.
    for i in 0..400 {
        flooder
            .room
            .send("flood", Payload::Json(&format!("[{i}]")), None)
            .unwrap();
    }
    writer
        .sync
        .put("during", r#""the msg flood""#)
        .await
        .unwrap();
    let (d, line) = wait_log(
        d,
        format!(
            "peer over its rate limit; dropping it peer={}",
            flooder.room.self_id
        ),
    )
    .await;
    assert!(line.contains("PEER_MSG_RATE"), "{line}");
    assert!(exceeded(&d, "peer_msg_rate") >= 1);

    // Bytes: 40 incompressible messages of 60 KB (2.4 MB) against a burst of 1.7 MB.
    let bytes_flooder = TestPeer::join(relay.port, DB);
    bytes_flooder.wait_superpeers(1).await;
    let mut blob = vec![0u8; 60_000];
    getrandom::fill(&mut blob).unwrap();
    for _ in 0..40 {
        bytes_flooder
            .room
            .send("flood", Payload::Binary(&blob), None)
            .unwrap();
    }
    writer
        .sync
        .put("after", r#""the bytes flood""#)
        .await
        .unwrap();
    let (d, line) = wait_log(
        d,
        format!(
            "peer over its rate limit; dropping it peer={}",
            bytes_flooder.room.self_id
        ),
    )
    .await;
    assert!(line.contains("PEER_BYTES_RATE"), "{line}");
    assert!(exceeded(&d, "peer_bytes_rate") >= 1);

    // The writer was never dropped; what it wrote is stored and, once every other peer
    // is gone, served to a newcomer by the daemon alone.
    stored(&dir, &["during", "after"]).await;
    assert!(
        !d.lines
            .iter()
            .any(|l| l.contains("over its rate limit") && l.contains(&writer.room.self_id)),
        "the writer was dropped"
    );
    writer.leave().await;
    flooder.leave().await;
    bytes_flooder.leave().await;
    let reader = TestPeer::join(relay.port, DB);
    reader
        .wait_store("both writes from the daemon", |s| {
            value_of(s, "during").is_some() && value_of(s, "after").is_some()
        })
        .await;
    drop(d);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_peers_refuses_extra_peers_until_one_leaves() {
    let tmp = tempfile::tempdir().unwrap();
    let relay = relay(&tmp);
    let dir = data_dir(&tmp);
    let d = superpeer(&dir, relay.port, &[("MAX_PEERS", "2")]);
    let a = TestPeer::join(relay.port, DB);
    let b = TestPeer::join(relay.port, DB);
    a.wait_superpeers(1).await;
    b.wait_superpeers(1).await;

    let c = TestPeer::join(relay.port, DB);
    wait_async("a refusal counted", || exceeded(&d, "max_peers") >= 1).await;
    // It keeps announcing and dialling; for the next seconds it stays out.
    let port = d.port;
    let watch_until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < watch_until {
        let peers = tokio::task::spawn_blocking(move || health_peers(port))
            .await
            .unwrap();
        assert!(peers <= 2, "{peers} peers connected with MAX_PEERS=2");
        assert_eq!(c.superpeers(), 0, "the third peer got in");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (d, line) = wait_log(d, "peer refused: MAX_PEERS".into()).await;
    assert!(line.contains(&c.room.self_id), "{line}");

    // One leaves: the third gets its place, and the count still holds after more churn.
    a.leave().await;
    c.wait_superpeers(1).await;
    b.leave().await;
    let e = TestPeer::join(relay.port, DB);
    e.wait_superpeers(1).await;
    let port = d.port;
    assert!(
        tokio::task::spawn_blocking(move || health_peers(port))
            .await
            .unwrap()
            <= 2
    );
    drop(d);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_values_and_messages_are_refused_and_the_rest_applies() {
    let tmp = tempfile::tempdir().unwrap();
    let relay = relay(&tmp);
    let dir = data_dir(&tmp);
    let d = superpeer(
        &dir,
        relay.port,
        &[("MAX_VALUE_BYTES", "1000"), ("MAX_MESSAGE_BYTES", "65536")],
    );
    let p = TestPeer::join(relay.port, DB);
    p.wait_superpeers(1).await;

    let ts = |n: u64| format!(r#"{{"physical":{},"logical":0}}"#, 1_700_000_000_000 + n);
    let big = format!("\"{}\"", "v".repeat(2000));
    let batch = format!(
        r#"[{{"type":"upsert","id":"too-big","value":{big},"timestamp":{}}},{{"type":"upsert","id":"small","value":"fits","timestamp":{}}}]"#,
        ts(1),
        ts(2)
    );
    p.room
        .send("syncGraph", Payload::Json(&batch), None)
        .unwrap();
    stored(&dir, &["small"]).await;
    assert!(!common::stored_ids::<Vec<String>>(&dir).contains(&"too-big".to_owned()));
    assert_eq!(exceeded(&d, "max_value_bytes"), 1);
    // Inside a full state, node by node.
    let full = format!(
        r#"[{{"type":"fullStateSync","graphData":{{"f-big":{{"value":{big},"edges":[],"timestamp":{}}},"f-small":{{"value":1,"edges":[],"timestamp":{}}}}},"removals":[],"timestamp":null}}]"#,
        ts(3),
        ts(4)
    );
    p.room
        .send("syncGraph", Payload::Json(&full), None)
        .unwrap();
    stored(&dir, &["small", "f-small"]).await;
    assert!(!common::stored_ids::<Vec<String>>(&dir).contains(&"f-big".to_owned()));
    assert_eq!(exceeded(&d, "max_value_bytes"), 2);

    // A 100 KB message: dropped whole, counted; the peer stays and is still heard.
    let mut blob = vec![0u8; 100_000];
    getrandom::fill(&mut blob).unwrap();
    p.room
        .send("syncGraph", Payload::Binary(&blob), None)
        .unwrap();
    wait_async("the oversized message counted", || {
        exceeded(&d, "max_message_bytes") >= 1
    })
    .await;
    p.sync.put("later", r#""still heard""#).await.unwrap();
    stored(&dir, &["small", "later"]).await;
    assert_eq!(
        exceeded(&d, "peer_msg_rate") + exceeded(&d, "peer_bytes_rate"),
        0
    );

    // Nothing refused is served to a newcomer.
    let reader = TestPeer::join(relay.port, DB);
    reader
        .wait_store("what was kept", |s| {
            value_of(s, "small").is_some() && value_of(s, "later").is_some()
        })
        .await;
    assert!(reader.value("too-big").is_none() && reader.value("f-big").is_none());
    let (_d, line) = wait_log(d, "message over MAX_MESSAGE_BYTES dropped".into()).await;
    assert!(line.contains(&p.room.self_id), "{line}");
}
