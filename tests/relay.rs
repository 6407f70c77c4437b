//! The embedded relay (RELAY=1) in the real binary, spoken to over real WebSockets on
//! 127.0.0.1, with events signed by real BIP-340 keys.

mod common;

use common::sign;
use common::{Daemon, data_dir};
use futures_util::{SinkExt, StreamExt};
use genosdb_fallback::rtc::topic;
use nostr_sdk::Keys;
use serde_json::{Value, json};
use std::time::Duration;
use tokio_tungstenite::tungstenite::Message;

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

fn key(n: u8) -> Keys {
    common::nostr_keys(n)
}

fn now() -> u64 {
    common::unix_now()
}

struct Room {
    topic: String,
    kind: u64,
}

fn room(name: &str) -> Room {
    let topic = topic::root_topic(topic::APP_ID, name);
    let kind = topic::kind_of(&topic) as u64;
    Room { topic, kind }
}

fn announce(k: &Keys, room: &Room, created_at: u64, peer: &str) -> String {
    sign(
        k,
        created_at,
        room.kind,
        vec![vec!["x".into(), room.topic.clone()]],
        &json!({"peerId": peer}).to_string(),
    )
}

async fn connect(port: u16) -> Ws {
    tokio_tungstenite::connect_async(format!("ws://127.0.0.1:{port}/"))
        .await
        .unwrap()
        .0
}

async fn send(ws: &mut Ws, v: String) {
    ws.send(Message::Text(v.into())).await.unwrap();
}

/// The next text message, or None after `wait` of silence.
async fn next(ws: &mut Ws, wait: Duration) -> Option<Value> {
    loop {
        match tokio::time::timeout(wait, ws.next()).await {
            Ok(Some(Ok(Message::Text(t)))) => return Some(serde_json::from_str(&t).unwrap()),
            Ok(Some(Ok(_))) => continue,
            _ => return None,
        }
    }
}

async fn req(ws: &mut Ws, id: &str, filter: Value) {
    send(ws, json!(["REQ", id, filter]).to_string()).await;
    assert_eq!(
        next(ws, Duration::from_secs(5)).await.unwrap(),
        json!(["EOSE", id])
    );
}

async fn publish(ws: &mut Ws, event: &str) -> Value {
    send(ws, format!("[\"EVENT\",{event}]")).await;
    next(ws, Duration::from_secs(5)).await.unwrap()
}

const QUIET: Duration = Duration::from_millis(300);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relays_verified_events_to_the_first_matching_subscription() {
    let tmp = tempfile::tempdir().unwrap();
    let d = Daemon::start_ready(&data_dir(&tmp), &[("RELAY", "1")]);
    let r = room("graph-sync-room-relaytest");
    let other = room("graph-sync-room-elsewhere");
    let mut a = connect(d.port).await;
    let mut b = connect(d.port).await;
    let filter = json!({"kinds": [r.kind], "#x": [r.topic], "since": now()});
    req(&mut a, "a1", filter.clone()).await;
    req(&mut a, "a2", filter).await;
    req(
        &mut b,
        "b-other",
        json!({"kinds": [other.kind], "#x": [other.topic]}),
    )
    .await;

    let ev = announce(&key(3), &r, now(), "peerBBBBBBBBBBBBBBBB");
    let ev_json: Value = serde_json::from_str(&ev).unwrap();
    assert_eq!(
        publish(&mut b, &ev).await,
        json!(["OK", ev_json["id"], true, ""])
    );
    let got = next(&mut a, Duration::from_secs(5)).await.unwrap();
    assert_eq!(
        got,
        json!(["EVENT", "a1", ev_json]),
        "once, on the first matching subscription"
    );
    assert_eq!(next(&mut a, QUIET).await, None);
    assert_eq!(
        next(&mut b, QUIET).await,
        None,
        "b's subscription is for another room"
    );

    let (_, health) = d.get("/");
    let h: Value = serde_json::from_str(&health).unwrap();
    assert_eq!(h["relay"]["connections"], 2);
    assert_eq!(h["relay"]["events"], 1);
    assert_eq!(h["status"], "ok");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_and_foreign_events_are_refused_and_never_relayed() {
    let tmp = tempfile::tempdir().unwrap();
    let d = Daemon::start_ready(&data_dir(&tmp), &[("RELAY", "1")]);
    let r = room("graph-sync-room-forgery");
    let mut a = connect(d.port).await;
    let mut b = connect(d.port).await;
    req(&mut a, "a", json!({"kinds": [r.kind], "#x": [r.topic]})).await;

    let good: Value = serde_json::from_str(&announce(&key(5), &r, now(), "peerA")).unwrap();
    let mut tampered = good.clone();
    tampered["content"] = json!("{\"peerId\":\"mallory\"}");
    let mut wrong_sig = good.clone();
    wrong_sig["pubkey"] = serde_json::from_str::<Value>(&announce(&key(6), &r, now(), "x"))
        .unwrap()["pubkey"]
        .clone();
    let mut bad_hex = good.clone();
    bad_hex["sig"] = json!("zz");
    let regular_kind = sign(
        &key(5),
        now(),
        1,
        vec![vec!["x".into(), r.topic.clone()]],
        "hello",
    );
    for (ev, why) in [
        (tampered.to_string(), "invalid: id does not match"),
        (wrong_sig.to_string(), "invalid: id does not match"),
        (bad_hex.to_string(), "invalid: not a Nostr event"),
        (regular_kind, "blocked: only ephemeral"),
        ("{\"id\":1}".to_owned(), "invalid: not a Nostr event"),
    ] {
        let reply = publish(&mut b, &ev).await;
        assert_eq!(reply[0], "OK");
        assert_eq!(reply[2], false, "{why}");
        assert!(reply[3].as_str().unwrap().starts_with(why), "{reply}");
    }
    // A signature by another key over the right id.
    let mut stolen = good.clone();
    stolen["sig"] = serde_json::from_str::<Value>(&announce(&key(9), &r, now(), "peerA")).unwrap()
        ["sig"]
        .clone();
    let reply = publish(&mut b, &stolen.to_string()).await;
    assert_eq!(
        reply,
        json!(["OK", good["id"], false, "invalid: bad signature"])
    );

    assert_eq!(
        next(&mut a, QUIET).await,
        None,
        "nothing forged reaches subscribers"
    );
    assert_eq!(publish(&mut b, &good.to_string()).await[2], true);
    assert_eq!(next(&mut a, Duration::from_secs(5)).await.unwrap()[2], good);
    // Junk is ignored without a reply, as genossrv's relay does.
    for junk in ["not json", "{}", "[]", "[\"COUNT\",\"x\",{}]", "[42]"] {
        send(&mut b, junk.into()).await;
    }
    assert_eq!(next(&mut b, QUIET).await, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn since_has_sixty_seconds_of_slack_and_close_stops_delivery() {
    let tmp = tempfile::tempdir().unwrap();
    let d = Daemon::start_ready(&data_dir(&tmp), &[("RELAY", "1")]);
    let r = room("graph-sync-room-since");
    let mut a = connect(d.port).await;
    let mut b = connect(d.port).await;
    let t = now();
    req(
        &mut a,
        "s",
        json!({"kinds": [r.kind], "#x": [r.topic], "since": t}),
    )
    .await;
    let recent = announce(&key(4), &r, t - 50, "p1");
    let old = announce(&key(4), &r, t - 70, "p2");
    publish(&mut b, &old).await;
    publish(&mut b, &recent).await;
    let got = next(&mut a, Duration::from_secs(5)).await.unwrap();
    assert_eq!(got[2]["content"], json!({"peerId": "p1"}).to_string());
    assert_eq!(next(&mut a, QUIET).await, None);

    send(&mut a, json!(["CLOSE", "s"]).to_string()).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    publish(&mut b, &announce(&key(4), &r, t, "p3")).await;
    assert_eq!(next(&mut a, QUIET).await, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_refuse_the_offender_and_keep_serving_others() {
    let tmp = tempfile::tempdir().unwrap();
    let d = Daemon::start_ready(
        &data_dir(&tmp),
        &[("RELAY", "1"), ("RELAY_MAX_PER_IP", "2")],
    );
    let r = room("graph-sync-room-limits");
    let mut watcher = connect(d.port).await;
    req(
        &mut watcher,
        "w",
        json!({"kinds": [r.kind], "#x": [r.topic]}),
    )
    .await;

    // Subscriptions per connection.
    let mut subs = connect(d.port).await;
    for i in 0..32 {
        req(&mut subs, &format!("s{i}"), json!({"kinds": [1]})).await;
    }
    send(&mut subs, json!(["REQ", "s32", {"kinds": [1]}]).to_string()).await;
    assert_eq!(
        next(&mut subs, Duration::from_secs(5)).await.unwrap()[0],
        "CLOSED"
    );

    // Connections per IP: a third is refused with 503.
    match tokio_tungstenite::connect_async(format!("ws://127.0.0.1:{}/", d.port)).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => assert_eq!(resp.status(), 503),
        other => panic!("third connection was not refused: {:?}", other.map(|_| ())),
    }
    drop(subs);
    tokio::time::sleep(Duration::from_millis(200)).await;

    // Event rate: a flood gets its burst (60) plus 20/s, and the rest is refused.
    let mut flood = connect(d.port).await;
    let k = key(8);
    let started = std::time::Instant::now();
    for i in 0..100 {
        send(
            &mut flood,
            format!("[\"EVENT\",{}]", announce(&k, &r, now(), &format!("f{i}"))),
        )
        .await;
    }
    let mut refused = 0;
    for _ in 0..100 {
        let reply = next(&mut flood, Duration::from_secs(10)).await.unwrap();
        if reply[2] == false {
            assert_eq!(reply[3], "rate-limited: slow down");
            refused += 1;
        }
    }
    let accepted = 100 - refused;
    let allowed = 60.0 + 20.0 * started.elapsed().as_secs_f64();
    assert!(accepted >= 60, "the burst was not honoured: {accepted}");
    assert!(
        accepted as f64 <= allowed + 1.0,
        "{accepted} events passed where at most {allowed:.0} may"
    );
    // An oversized message closes only that connection.
    send(
        &mut flood,
        format!("[\"EVENT\",{{\"content\":\"{}\"}}]", "x".repeat(70_000)),
    )
    .await;
    assert_eq!(next(&mut flood, Duration::from_secs(5)).await, None);

    // The watcher saw the accepted part of the flood and still gets new events.
    let mut seen = 0;
    while next(&mut watcher, QUIET).await.is_some() {
        seen += 1;
    }
    assert_eq!(seen, 100 - refused);
    drop(flood);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut late = connect(d.port).await;
    let ev = announce(&key(2), &r, now(), "late");
    assert_eq!(publish(&mut late, &ev).await[2], true);
    assert!(next(&mut watcher, Duration::from_secs(5)).await.is_some());
}

#[test]
fn without_relay_the_upgrade_is_refused_and_root_is_health() {
    let tmp = tempfile::tempdir().unwrap();
    let d = Daemon::start_ready(&data_dir(&tmp), &[]);
    let (code, body) = d.get("/");
    assert_eq!(code, 200);
    assert!(body.contains("\"dbName\":\"test-db\""));
    assert!(!body.contains("\"relay\""));
    let rt = tokio::runtime::Runtime::new().unwrap();
    let refused = rt.block_on(tokio_tungstenite::connect_async(format!(
        "ws://127.0.0.1:{}/",
        d.port
    )));
    match refused {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => assert_eq!(resp.status(), 404),
        other => panic!("upgrade without RELAY=1: {:?}", other.map(|_| ())),
    }
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configured_relay_limits_are_enforced_and_counted() {
    let tmp = tempfile::tempdir().unwrap();
    let d = Daemon::start_ready(
        &data_dir(&tmp),
        &[
            ("RELAY", "1"),
            ("RELAY_MAX_SUBS", "3"),
            ("RELAY_EVENTS_PER_SEC", "1"),
            ("RELAY_EVENT_BURST", "5"),
            ("RELAY_MAX_MESSAGE_BYTES", "4096"),
        ],
    );
    let r = room("graph-sync-room-knobs");
    let mut watcher = connect(d.port).await;
    req(
        &mut watcher,
        "w",
        json!({"kinds": [r.kind], "#x": [r.topic]}),
    )
    .await;

    // RELAY_MAX_SUBS=3 (the default allows 32).
    let mut subs = connect(d.port).await;
    for i in 0..3 {
        req(&mut subs, &format!("s{i}"), json!({"kinds": [1]})).await;
    }
    send(&mut subs, json!(["REQ", "s3", {"kinds": [1]}]).to_string()).await;
    assert_eq!(
        next(&mut subs, Duration::from_secs(5)).await.unwrap(),
        json!(["CLOSED", "s3", "error: too many subscriptions"])
    );
    assert_eq!(exceeded(&d, "relay_max_subs"), 1);

    // RELAY_EVENT_BURST=5, RELAY_EVENTS_PER_SEC=1: 30 events at once cannot all pass
    // (the default burst of 60 would take them all).
    let mut flood = connect(d.port).await;
    for i in 0..30 {
        let ev = announce(&key(8), &r, now(), &format!("f{i}"));
        send(&mut flood, format!("[\"EVENT\",{ev}]")).await;
    }
    let mut accepted = 0;
    for _ in 0..30 {
        let reply = next(&mut flood, Duration::from_secs(10)).await.unwrap();
        accepted += usize::from(reply[2] == true);
    }
    assert!((5..30).contains(&accepted), "{accepted} of 30 accepted");
    assert_eq!(exceeded(&d, "relay_events_per_sec"), 30 - accepted as u64);

    // RELAY_MAX_MESSAGE_BYTES=4096: an 8 KB message closes that connection only.
    send(
        &mut flood,
        format!("[\"EVENT\",{{\"content\":\"{}\"}}]", "x".repeat(8000)),
    )
    .await;
    assert_eq!(next(&mut flood, Duration::from_secs(5)).await, None);
    common::wait_until("the oversized message counted", || {
        exceeded(&d, "relay_max_message_bytes") == 1
    });

    // Everyone else is still served.
    let mut seen = 0;
    while next(&mut watcher, QUIET).await.is_some() {
        seen += 1;
    }
    assert_eq!(seen, accepted);
    let mut late = connect(d.port).await;
    assert_eq!(
        publish(&mut late, &announce(&key(2), &r, now(), "late")).await[2],
        true
    );
    assert!(next(&mut watcher, Duration::from_secs(5)).await.is_some());
}
