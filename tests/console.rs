//! The operator's console (issue 22): the page on `/` for browsers while JSON clients
//! keep `/` and `/health`; `/console/status` and `/events` show joins and no secret nor
//! graph content; `/admin/*` answers only with ADMIN_TOKEN, and rate-limits attempts;
//! a client that does not read `/events` is dropped.

mod common;

use common::peer::TestPeer;
use common::{Daemon, data_dir};
use genosdb_fallback::http::{AppState, console, router, serve};
use genosdb_fallback::store::Store;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const PASSWORD: &str = "pw-Console-3b81e2";
const SM_KEY_HEX: &str = "0x4c0883a69102937d6231471b5dbb6204fe5129617082792ae468d01a3f362318";
const TURN_CREDENTIAL: &str = "turn-Console-91c4d7";
const RELAY_PASSWORD: &str = "relaypw-Console-77aa10";
const ADMIN_TOKEN: &str = "admin-Console-0123456789abcdef";
/// A value only the graph holds: without the token it must never be served.
const GRAPH_MARKER: &str = "graph-content-5e1f0b";

fn assert_clean(what: &str, text: &str) {
    for secret in [
        PASSWORD,
        SM_KEY_HEX.trim_start_matches("0x"),
        TURN_CREDENTIAL,
        RELAY_PASSWORD,
        ADMIN_TOKEN,
        GRAPH_MARKER,
    ] {
        assert!(!text.contains(secret), "{what} shows {secret:?}:\n{text}");
    }
}

/// One HTTP/1.0 request with extra headers and a body; (status, headers, body).
fn request(
    port: u16,
    method: &str,
    path: &str,
    headers: &[&str],
    body: &str,
) -> (u16, String, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut req = format!("{method} {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n");
    for h in headers {
        req.push_str(h);
        req.push_str("\r\n");
    }
    if !body.is_empty() {
        req.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            body.len()
        ));
    }
    req.push_str("\r\n");
    req.push_str(body);
    s.write_all(req.as_bytes()).unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    let (head, body) = resp.split_once("\r\n\r\n").unwrap_or((&resp, ""));
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (code, head.to_ascii_lowercase(), body.to_owned())
}

/// Reads `/events` until `needle` shows up or `limit` passes; what it read.
fn read_events_until(port: u16, needle: &str, limit: Duration) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    write!(
        s,
        "GET /events HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n\r\n"
    )
    .unwrap();
    let deadline = Instant::now() + limit;
    let mut got = Vec::new();
    let mut buf = [0u8; 8192];
    while Instant::now() < deadline {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(_) => {}
        }
        if String::from_utf8_lossy(&got).contains(needle) {
            break;
        }
    }
    String::from_utf8_lossy(&got).into_owned()
}

fn without_uptime(text: &str) -> serde_json::Value {
    let mut v: serde_json::Value = serde_json::from_str(text).unwrap();
    v.as_object_mut().unwrap().remove("uptime");
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_shows_peers_and_events_and_nothing_secret() {
    let tmp = tempfile::tempdir().unwrap();
    let relay_urls = format!("ws://gdbf:{RELAY_PASSWORD}@127.0.0.1:9");
    let mut d = Daemon::start(
        &data_dir(&tmp),
        &[
            ("RELAY", "1"),
            ("RTC_ENABLED", "true"),
            ("RELAY_URLS", relay_urls.as_str()),
            ("ICE_SERVERS", ""),
            ("PASSWORD", PASSWORD),
            ("SM_KEY", SM_KEY_HEX),
            ("TURN_URLS", "turn:127.0.0.1:9"),
            ("TURN_USERNAME", "gdbf"),
            ("TURN_CREDENTIAL", TURN_CREDENTIAL),
            ("ADMIN_TOKEN", ADMIN_TOKEN),
            ("RUST_LOG", "debug"),
        ],
    );
    d.wait_for_log(" ready", Duration::from_secs(60));
    let port = d.port;

    // JSON clients: `/` is still the health JSON, as `/health` is.
    for accept in [None, Some("Accept: */*"), Some("Accept: application/json")] {
        let headers: Vec<&str> = accept.into_iter().collect();
        let (code, head, body) = request(port, "GET", "/", &headers, "");
        assert_eq!(code, 200);
        assert!(head.contains("content-type: application/json"), "{head}");
        // Counters may move between the two requests: ask until they agree.
        assert!(without_uptime(&body).get("dbName").is_some(), "{body}");
        common::wait_until("/ and /health say the same", || {
            let (_, _, root) = request(port, "GET", "/", &headers, "");
            let (_, health) = common::http_get(port, "/health");
            without_uptime(&root) == without_uptime(&health)
        });
    }
    // A browser gets the page: one file, no external request.
    let (code, head, page) = request(
        port,
        "GET",
        "/",
        &["Accept: text/html,application/xhtml+xml,*/*;q=0.8"],
        "",
    );
    assert_eq!(code, 200);
    assert!(head.contains("content-type: text/html"), "{head}");
    assert!(
        head.contains("content-security-policy: default-src 'none'"),
        "{head}"
    );
    assert!(page.contains("<canvas") && page.contains("new EventSource(\"/events\")"));
    for external in [
        "http://",
        "https://",
        "//cdn",
        "@import",
        "<link rel=\"stylesheet\"",
    ] {
        assert!(!page.contains(external), "the page refers to {external}");
    }
    assert_clean("the page", &page);

    let store = Arc::new(Mutex::new(Store::new(1000)));
    let peer = TestPeer::join_tweaked(port, common::DB, store, |cfg| {
        cfg.password = PASSWORD.into();
    });
    peer.wait_superpeers(1).await;
    let value = format!(r#"{{"secret":"{GRAPH_MARKER}"}}"#);
    peer.sync.put("console-probe", &value).await.unwrap();
    common::wait_until("the daemon merged the write", || {
        d.get("/metrics").1.contains("genosdb_sync_merged_total 1")
    });

    // The join reaches /events (the ring holds it for a late client).
    let id = peer.room.self_id.clone();
    let events = read_events_until(port, &id, Duration::from_secs(10));
    assert!(
        events.contains("content-type: text/event-stream"),
        "{events}"
    );
    assert!(events.contains(r#""kind":"join""#), "{events}");
    assert_clean("/events", &events);

    let (code, _, status) = request(port, "GET", "/console/status", &[], "");
    assert_eq!(code, 200);
    let st: serde_json::Value = serde_json::from_str(&status).unwrap();
    assert_eq!(st["peerCount"], 1, "{status}");
    assert_eq!(st["peers"][0]["id"], id.as_str(), "{status}");
    assert_eq!(st["admin"], true);
    assert!(st["health"]["nodes"].as_u64() >= Some(1), "{status}");
    let urls: Vec<&str> = st["relays"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|r| r["url"].as_str())
        .collect();
    assert!(
        urls.iter()
            .any(|u| u.contains("127.0.0.1:9") && u.contains("***")),
        "{urls:?}"
    );
    assert_clean("/console/status", &status);

    // A newcomer catches up from the daemon: the JSON the page reads lists its
    // catch-up with its time, the charts' event carries the times, /metrics counts it.
    let late = TestPeer::join_tweaked(
        port,
        common::DB,
        Arc::new(Mutex::new(Store::new(1000))),
        |cfg| cfg.password = PASSWORD.into(),
    );
    late.wait_superpeers(1).await;
    late.wait_store("the newcomer caught up", |s| {
        common::peer::value_of(s, "console-probe").is_some()
    })
    .await;
    let late_id = late.room.self_id.clone();
    let mut served = serde_json::Value::Null;
    common::wait_until("the newcomer's catch-up in /console/status", || {
        let st: serde_json::Value =
            serde_json::from_str(&request(port, "GET", "/console/status", &[], "").2).unwrap();
        served = st["catchups"]
            .as_array()
            .and_then(|a| a.iter().rev().find(|c| c["peer"] == late_id.as_str()))
            .cloned()
            .unwrap_or_default();
        !served.is_null()
    });
    assert!(served["ms"].is_u64(), "{served}");
    assert!(served["at"].is_u64(), "{served}");
    assert!(
        matches!(served["type"].as_str(), Some("full" | "delta")),
        "{served}"
    );
    let mut event = serde_json::Value::Null;
    common::wait_until("a catch-up event with its times", || {
        let st: serde_json::Value =
            serde_json::from_str(&request(port, "GET", "/console/status", &[], "").2).unwrap();
        event = st["events"]
            .as_array()
            .and_then(|a| a.iter().rev().find(|e| e["kind"] == "catchup"))
            .cloned()
            .unwrap_or_default();
        !event.is_null()
    });
    assert!(
        event["maxMs"].is_u64() && event["medianMs"].is_u64(),
        "{event}"
    );
    assert!(
        event["maxMs"].as_u64() >= event["medianMs"].as_u64(),
        "{event}"
    );
    let metrics = d.get("/metrics").1;
    let timed: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("genosdb_sync_catchup_duration_seconds_count "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    assert!(timed >= 1, "no catch-up timed on /metrics:\n{metrics}");
    // Joins are pushed where they happen, once each (the sampler does not add its own).
    let (_, _, status) = request(port, "GET", "/console/status", &[], "");
    let st: serde_json::Value = serde_json::from_str(&status).unwrap();
    for who in [id.as_str(), late_id.as_str()] {
        let joins = st["events"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["kind"] == "join" && e["peer"] == who)
            .count();
        assert_eq!(joins, 1, "{who} joined {joins} times in:\n{status}");
    }
    assert_clean("/console/status", &status);
    late.leave().await;

    // The graph: nothing without the token, the node with it.
    let body = r#"{"id":"console-probe"}"#;
    for headers in [
        vec![],
        vec!["Authorization: Bearer wrong-token-0000000000"],
        vec!["Authorization: Basic eDp5"],
    ] {
        let (code, _, text) = request(port, "POST", "/admin/node", &headers, body);
        assert_eq!(code, 401, "{text}");
        assert_clean("a refused admin answer", &text);
    }
    let auth = format!("Authorization: Bearer {ADMIN_TOKEN}");
    let (code, _, text) = request(port, "POST", "/admin/node", &[auth.as_str()], body);
    assert_eq!(code, 200, "{text}");
    assert!(text.contains(GRAPH_MARKER), "{text}");
    let q = r#"{"query":{"secret":{"$startsWith":"graph-content"}},"limit":5}"#;
    let (code, _, text) = request(port, "POST", "/admin/query", &[auth.as_str()], q);
    assert_eq!(code, 200, "{text}");
    let found: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(found["nodes"][0]["id"], "console-probe", "{text}");
    let (code, _, text) = request(
        port,
        "POST",
        "/admin/oplog",
        &[auth.as_str()],
        r#"{"limit":10}"#,
    );
    assert_eq!(code, 200, "{text}");
    assert!(text.contains(r#""id":"console-probe""#), "{text}");
    let (code, _, text) = request(
        port,
        "POST",
        "/admin/query",
        &[auth.as_str()],
        r#"{"query":{"$bogus":1}}"#,
    );
    assert_eq!(code, 400, "{text}");

    // The query subcommand, through the running daemon's token.
    let url = format!("http://127.0.0.1:{port}");
    let dir = data_dir(&tmp);
    let out = common::run(
        &dir,
        &["query", "--url", &url, r#"{"secret":{"$regex":"^graph"}}"#],
        &[("ADMIN_TOKEN", ADMIN_TOKEN)],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line: serde_json::Value = serde_json::from_str(stdout.lines().next().unwrap()).unwrap();
    assert_eq!(line["id"], "console-probe");
    let out = common::run(
        &dir,
        &["query", "--url", &url, "--node", "console-probe"],
        &[("ADMIN_TOKEN", "wrong-but-well-formed-token")],
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("401"));

    // Attempts are rate-limited: a burst of wrong tokens ends in 429s.
    let mut limited = 0;
    for _ in 0..40 {
        let (code, _, _) = request(
            port,
            "POST",
            "/admin/node",
            &["Authorization: Bearer nope-nope-nope-nope"],
            body,
        );
        assert!(code == 401 || code == 429, "{code}");
        limited += usize::from(code == 429);
    }
    assert!(
        limited > 0,
        "40 wrong tokens in a row were never rate-limited"
    );

    peer.leave().await;
    common::wait_until("the leave reaches the ring", || {
        request(port, "GET", "/console/status", &[], "")
            .2
            .contains(r#""kind":"leave""#)
    });
    assert_eq!(d.stop().code(), Some(0));
    let log = d.lines.join("\n");
    assert!(
        log.contains("admin request refused"),
        "no log line for a refused token"
    );
    assert_clean("the log", &log.replace(GRAPH_MARKER, ""));
}

#[test]
fn without_admin_token_the_graph_is_not_served() {
    let tmp = tempfile::tempdir().unwrap();
    let mut d = Daemon::start_ready(&data_dir(&tmp), &[("RTC_ENABLED", "false")]);
    let (code, _, text) = request(
        d.port,
        "POST",
        "/admin/node",
        &["Authorization: Bearer anything-at-all-0000"],
        r#"{"id":"x"}"#,
    );
    assert_eq!(code, 404, "{text}");
    let st: serde_json::Value =
        serde_json::from_str(&request(d.port, "GET", "/console/status", &[], "").2).unwrap();
    assert_eq!(st["admin"], false);
    d.stop();
}

#[test]
fn a_bad_admin_token_exits_2_without_echoing_it() {
    let tmp = tempfile::tempdir().unwrap();
    for bad in ["short-Tok3n", "has spaces in it, and more than sixteen"] {
        let out = common::run(&data_dir(&tmp), &[], &[("ADMIN_TOKEN", bad)]);
        assert_eq!(out.status.code(), Some(2));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("ADMIN_TOKEN"), "{err}");
        assert!(!err.contains(bad), "{err}");
    }
}

/// A client that asks for `/events` and never reads is dropped, its connection closed,
/// while what the daemon holds for it stays bounded (CLIENT_QUEUE events).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_events_client_is_dropped() {
    let state = AppState::new("console-slow", 0, None);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (_stop_tx, stop) = tokio::sync::watch::channel(false);
    tokio::spawn(serve::serve(
        listener,
        router(state.clone()),
        state.http.clone(),
        serve::HttpLimits::default(),
        stop,
    ));
    // A tiny receive buffer, so that the kernel holds little for the client.
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    let slow = sock
        .connect(std::net::SocketAddr::from(([127, 0, 0, 1], port)))
        .await
        .unwrap()
        .into_std()
        .unwrap();
    slow.set_nonblocking(false).unwrap();
    (&slow)
        .write_all(b"GET /events HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        .unwrap();
    common::wait_until("the client is subscribed", || {
        state.console.clients.load(Ordering::Relaxed) == 1
    });
    let filler = "x".repeat(2000);
    let deadline = Instant::now() + Duration::from_secs(30);
    while state.console.clients_dropped.load(Ordering::Relaxed) == 0 {
        assert!(
            Instant::now() < deadline,
            "the slow client was never dropped"
        );
        for _ in 0..200 {
            state
                .console
                .publish("test", serde_json::json!({ "filler": filler }));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(state.console.clients.load(Ordering::Relaxed), 0);
    // Its connection is closed: reading drains what the kernel held, then ends.
    let closed = tokio::task::spawn_blocking(move || {
        let mut s = slow;
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut buf = vec![0u8; 1 << 16];
        let mut total = 0usize;
        loop {
            match s.read(&mut buf) {
                Ok(0) => return Ok(total),
                Ok(n) => total += n,
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return Ok(total),
                Err(e) => return Err(e),
            }
        }
    })
    .await
    .unwrap();
    let total = closed.expect("the dropped client's connection stays open");
    // Everything it was sent fits in kernel buffers plus the client's queue.
    assert!(total < 8 << 20, "{total} bytes reached the slow client");
    // Others still get events.
    let fast = state.console.recent();
    assert_eq!(fast.len(), console::EVENT_RING);
}
