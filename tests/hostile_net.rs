//! Attacks on the daemon's network side (issue 17, items 1–4, 10, 11), each against the
//! real binary on 127.0.0.1, then a bound that fails without its fix: RSS growth,
//! events accepted, links held, connections closed. No timing is asserted.

mod common;

use common::{Daemon, data_dir, metric, nostr_keys, sign, unix_now};
use futures_util::{SinkExt, StreamExt};
use genosdb_fallback::rtc::topic;
use serde_json::{Value, json};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::Message;

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn connect(port: u16) -> Ws {
    tokio_tungstenite::connect_async(format!("ws://127.0.0.1:{port}/"))
        .await
        .unwrap()
        .0
}

async fn next(ws: &mut Ws, wait: Duration) -> Option<Value> {
    loop {
        match tokio::time::timeout(wait, ws.next()).await {
            Ok(Some(Ok(Message::Text(t)))) => return Some(serde_json::from_str(&t).unwrap()),
            Ok(Some(Ok(_))) => continue,
            _ => return None,
        }
    }
}

async fn send(ws: &mut Ws, v: String) {
    ws.send(Message::Text(v.into())).await.unwrap();
}

/// A WebSocket opened by hand on a blocking socket, to play clients that never read.
fn raw_ws(port: u16) -> TcpStream {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(
        s,
        "GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    .unwrap();
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        s.read_exact(&mut b).unwrap();
        head.push(b[0]);
    }
    assert!(head.starts_with(b"HTTP/1.1 101"), "{head:?}");
    s
}

/// A masked client frame.
fn frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mut f = vec![0x80 | opcode];
    let len = payload.len();
    if len < 126 {
        f.push(0x80 | len as u8);
    } else if len < 65536 {
        f.push(0x80 | 126);
        f.extend((len as u16).to_be_bytes());
    } else {
        f.push(0x80 | 127);
        f.extend((len as u64).to_be_bytes());
    }
    let mask = [0x11u8, 0x22, 0x33, 0x44];
    f.extend(mask);
    f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    f
}

/// Shrinks a socket's receive buffer, so that a client that never reads stops
/// taking data early and the daemon has to hold it.
fn small_receive_buffer(s: &TcpStream) {
    use std::os::fd::AsRawFd;
    let size: libc::c_int = 4096;
    // SAFETY: a valid socket, and a pointer to a c_int of the size given.
    let rc = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            (&size as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0);
}

fn rss(port: u16) -> u64 {
    metric(port, "process_resident_bytes")
}

fn limit(port: u16, label: &str) -> u64 {
    let (_, body) = common::http_get(port, "/metrics");
    body.lines()
        .find(|l| {
            l.starts_with(&format!(
                "genosdb_limit_exceeded_total{{limit=\"{label}\"}}"
            ))
        })
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0)
}

const MB: u64 = 1 << 20;

/// Item 1: a client that pings without end and never reads its pongs is closed, and
/// its pongs never pile up in memory.
#[test]
fn a_ping_flood_closes_the_flooder_and_holds_no_memory() {
    let tmp = tempfile::tempdir().unwrap();
    let d = Daemon::start_ready(&data_dir(&tmp), &[("RELAY", "1")]);
    let before = rss(d.port);
    let mut s = raw_ws(d.port);
    small_receive_buffer(&s);
    s.set_write_timeout(Some(Duration::from_secs(10))).unwrap();
    let ping = frame(0x9, &[b'p'; 125]);
    let batch: Vec<u8> = ping
        .iter()
        .copied()
        .cycle()
        .take(ping.len() * 1000)
        .collect();
    // 400,000 pings (52 MB) at most; the old relay took them all and kept every pong.
    let mut sent = 0u64;
    while sent < 400_000 {
        if s.write_all(&batch).is_err() {
            break;
        }
        sent += 1000;
    }
    let grown = rss(d.port).saturating_sub(before);
    eprintln!(
        "ping flood: {sent} pings sent before the close; RSS grew by {} KB",
        grown >> 10
    );
    assert!(
        sent < 400_000,
        "the flooder was never closed ({sent} pings)"
    );
    assert!(limit(d.port, "relay_messages_per_sec") >= 1);
    assert!(grown < 32 * MB, "RSS grew by {} MB", grown / MB);
    // Everyone else is still served.
    common::wait_until("the flooder's slot to be freed", || {
        common::health(d.port)["relay"]["connections"] == json!(0)
    });
}

/// Item 2: clients that subscribe and never read hold at most RELAY_QUEUE_BYTES each
/// and RELAY_MEMORY_BYTES together, however much is published to them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_that_never_read_hold_a_bounded_amount_of_memory() {
    let tmp = tempfile::tempdir().unwrap();
    let d = Daemon::start_ready(
        &data_dir(&tmp),
        &[
            ("RELAY", "1"),
            ("RELAY_EVENTS_PER_SEC", "1000"),
            ("RELAY_EVENT_BURST", "1000"),
            ("RELAY_QUEUE_BYTES", "262144"),
            ("RELAY_MEMORY_BYTES", "1048576"),
        ],
    );
    let t = topic::root_topic(topic::APP_ID, "never-read");
    let kind = topic::kind_of(&t) as u64;
    let req = json!(["REQ", "s", {"#x": [t]}]).to_string();
    let mut idle: Vec<TcpStream> = (0..8)
        .map(|_| {
            let mut s = raw_ws(d.port);
            small_receive_buffer(&s);
            s.write_all(&frame(0x1, req.as_bytes())).unwrap();
            s
        })
        .collect();
    // Their EOSE is all they would read; wait until the router has them.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = rss(d.port);
    let mut publisher = connect(d.port).await;
    let key = nostr_keys(3);
    let body = "x".repeat(30_000);
    let n = 500;
    for i in 0..n {
        let ev = sign(
            &key,
            unix_now(),
            kind,
            vec![vec!["x".into(), t.clone()]],
            &format!("{i}{body}"),
        );
        send(&mut publisher, format!("[\"EVENT\",{ev}]")).await;
    }
    let mut accepted = 0;
    while accepted < n {
        let ok = next(&mut publisher, Duration::from_secs(30))
            .await
            .expect("an OK for every event");
        assert_eq!(ok[2], json!(true), "{ok}");
        accepted += 1;
    }
    // 500 events of 30 KB for clients that never read: the old relay kept them all
    // (up to 1,024), each twice (30 MB).
    let grown = rss(d.port).saturating_sub(before);
    let queued = metric(d.port, "relay_queued_bytes");
    eprintln!(
        "never-readers: RSS grew by {} KB; {queued} bytes queued",
        grown >> 10
    );
    assert!(grown < 16 * MB, "RSS grew by {} MB", grown / MB);
    assert!(queued <= MB, "queued {queued} bytes");
    assert!(limit(d.port, "relay_memory_bytes") + limit(d.port, "relay_queue_bytes") > 0);
    idle.clear();
}

/// Item 3: republishing the daemon's own announce earns nothing: the connection stays
/// under RELAY_EVENTS_PER_SEC / RELAY_EVENT_BURST.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replaying_the_daemon_s_announce_does_not_lift_the_rate_limit() {
    let tmp = tempfile::tempdir().unwrap();
    let d = Daemon::start_ready(
        &data_dir(&tmp),
        &[("RELAY", "1"), ("RTC_ENABLED", "true"), ("ICE_SERVERS", "")],
    );
    let root = topic::root_topic(topic::APP_ID, &format!("graph-sync-room-{}", common::DB));
    let mut ws = connect(d.port).await;
    send(
        &mut ws,
        json!(["REQ", "r", {"kinds": [topic::kind_of(&root)], "#x": [root]}]).to_string(),
    )
    .await;
    let announce = loop {
        let m = next(&mut ws, Duration::from_secs(10))
            .await
            .expect("the daemon announces");
        if m[0] == "EVENT" {
            break m[2].clone();
        }
    };
    let t = topic::root_topic(topic::APP_ID, "elsewhere");
    let key = nostr_keys(5);
    let n = 300;
    // Signed first, so that they go out at once.
    let events: Vec<String> = (0..n)
        .map(|i| {
            sign(
                &key,
                unix_now(),
                topic::kind_of(&t) as u64,
                vec![vec!["x".into(), t.clone()]],
                &format!("{i}"),
            )
        })
        .collect();
    send(&mut ws, json!(["EVENT", announce]).to_string()).await;
    for ev in events {
        send(&mut ws, format!("[\"EVENT\",{ev}]")).await;
    }
    let (mut accepted, mut answered) = (0, 0);
    while answered < n + 1 {
        let m = next(&mut ws, Duration::from_secs(10))
            .await
            .expect("an OK for every event");
        if m[0] == "OK" {
            answered += 1;
            accepted += usize::from(m[2] == json!(true));
        }
    }
    eprintln!("replayed announce: {accepted} of {} events accepted", n + 1);
    // The burst is 60 and the rate 20/s; the old relay accepted all 301.
    assert!(accepted <= 150, "{accepted} of {} accepted", n + 1);
    assert!(limit(d.port, "relay_events_per_sec") >= 200);
}

/// Item 4: a connection's filters are bounded in bytes, and a relay full of the
/// largest filters allowed still delivers every event and answers /health.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filters_are_bounded_and_large_ones_slow_nobody() {
    let tmp = tempfile::tempdir().unwrap();
    let d = Daemon::start_ready(&data_dir(&tmp), &[("RELAY", "1")]);
    let values: Vec<String> = (0..64).map(|i| format!("{i:0>900}")).collect();
    // The issue's attack: 32 subscriptions of 64 values of 900 bytes on one
    // connection. The old relay took all 32 (1.8 MB of filters).
    let mut attacker = connect(d.port).await;
    for i in 0..32 {
        send(
            &mut attacker,
            json!(["REQ", format!("a{i}"), {"#p": values}]).to_string(),
        )
        .await;
    }
    let mut closed = 0;
    for _ in 0..32 {
        let m = next(&mut attacker, Duration::from_secs(5)).await.unwrap();
        closed += usize::from(m[0] == "CLOSED");
    }
    eprintln!("filters: {closed} of 32 oversized subscriptions refused");
    assert_eq!(closed, 32);
    // 30 connections with as much as they may hold, all catch-alls (no #x), while one
    // publisher sends events with 64 tags each and a well-behaved client waits for them.
    let t = topic::root_topic(topic::APP_ID, "amplified");
    let mut heavy = Vec::new();
    for _ in 0..30 {
        let mut ws = connect(d.port).await;
        let mut subs = 0;
        for i in 0..32 {
            send(
                &mut ws,
                json!(["REQ", format!("h{i}"), {"#p": &values[..4]}]).to_string(),
            )
            .await;
            let m = next(&mut ws, Duration::from_secs(5)).await.unwrap();
            subs += usize::from(m[0] == "EOSE");
        }
        assert_eq!(subs, 4, "16 KiB of filters hold 4 subscriptions of 3.6 KB");
        heavy.push(ws);
    }
    let mut good = connect(d.port).await;
    send(&mut good, json!(["REQ", "g", {"#x": [t]}]).to_string()).await;
    assert_eq!(
        next(&mut good, Duration::from_secs(5)).await.unwrap()[0],
        "EOSE"
    );
    let mut publisher = connect(d.port).await;
    let key = nostr_keys(7);
    let mut tags: Vec<Vec<String>> = (0..63)
        .map(|i| vec!["p".to_owned(), format!("{:0>900}", 100 + i)])
        .collect();
    tags.push(vec!["x".into(), t.clone()]);
    let n = 50;
    for i in 0..n {
        let ev = sign(
            &key,
            unix_now(),
            topic::kind_of(&t) as u64,
            tags.clone(),
            &format!("{i}"),
        );
        send(&mut publisher, format!("[\"EVENT\",{ev}]")).await;
        // The allowed rate (20/s): a pace, not a measurement.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut got = 0;
    while got < n {
        match next(&mut good, Duration::from_secs(20)).await {
            Some(m) if m[0] == "EVENT" => got += 1,
            Some(_) => {}
            None => break,
        }
    }
    assert_eq!(got, n, "the well-behaved client got every event");
    let answered = (0..10)
        .filter(|_| common::try_http_get(d.port, "/health").is_ok_and(|(c, _)| c == 200))
        .count();
    assert_eq!(answered, 10);
    assert!(limit(d.port, "relay_max_filter_bytes") >= 32 + 30 * 28);
    drop(heavy);
}

/// Spawns the daemon with RLIMIT_NOFILE at `nofile`.
fn daemon_with_nofile(dir: &std::path::Path, nofile: u64, envs: &[(&str, &str)]) -> Daemon {
    use std::io::BufRead;
    use std::os::unix::process::CommandExt;
    let mut cmd = common::command(dir);
    for (k, v) in envs {
        cmd.env(k, v);
    }
    // SAFETY: setrlimit is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            let lim = libc::rlimit {
                rlim_cur: nofile,
                rlim_max: nofile,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut d = Daemon {
        child,
        port: 0,
        log: rx,
        lines: Vec::new(),
    };
    let line = d.wait_for_log("listening", Duration::from_secs(20));
    let addr = line
        .split("addr=")
        .nth(1)
        .unwrap()
        .split_whitespace()
        .next();
    d.port = addr.unwrap().rsplit(':').next().unwrap().parse().unwrap();
    d.wait_for_log(" ready", Duration::from_secs(60));
    d
}

/// Item 11: 500 half-open connections under a 512-file limit. Each is closed within
/// the header timeout, /health keeps answering, the relay takes upgrades, and the
/// daemon never runs out of file descriptors.
#[test]
fn slowloris_connections_are_closed_and_health_keeps_answering() {
    let tmp = tempfile::tempdir().unwrap();
    let mut d = daemon_with_nofile(
        &data_dir(&tmp),
        512,
        &[("RELAY", "1"), ("HTTP_HEADER_TIMEOUT", "3")],
    );
    let mut half_open = Vec::new();
    for _ in 0..500 {
        let Ok(mut s) = TcpStream::connect(("127.0.0.1", d.port)) else {
            continue;
        };
        let _ = s.write_all(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: 1");
        half_open.push(s);
    }
    assert!(half_open.len() >= 400, "only {} connected", half_open.len());
    // Every slot is taken: a newcomer closes the oldest connection that has sent no
    // request for a second (or gets a reserve slot, which frees within 2 s).
    // The attacker keeps opening more (100 a second) while /health is asked 5 times,
    // once each.
    std::thread::sleep(Duration::from_millis(1100));
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let port = d.port;
    let churn = std::thread::spawn({
        let stop = stop.clone();
        move || {
            let mut held = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                for _ in 0..10 {
                    if let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) {
                        let _ = s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n");
                        held.push(s);
                    }
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            held.len()
        }
    });
    let mut answered = 0;
    for _ in 0..5 {
        answered +=
            usize::from(common::try_http_get(d.port, "/health").is_ok_and(|(c, _)| c == 200));
        std::thread::sleep(Duration::from_millis(300));
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let churned = churn.join().unwrap();
    assert_eq!(answered, 5, "/health answered {answered} of 5");
    // Every half-open connection is closed by the daemon: at once when every slot is
    // taken, or at the header timeout.
    let mut closed = 0;
    for s in &mut half_open {
        s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
        let mut buf = [0u8; 512];
        loop {
            match s.read(&mut buf) {
                Ok(0) => {
                    closed += 1;
                    break;
                }
                Ok(_) => continue,
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                    closed += 1;
                    break;
                }
                Err(_) => break,
            }
        }
    }
    eprintln!(
        "slowloris: {} half-open connections, {closed} closed by the daemon; /health {answered}/5 while {churned} more were opened",
        half_open.len()
    );
    assert_eq!(closed, half_open.len(), "connections left open");
    assert!(limit(d.port, "http_header_timeout") > 0);
    assert!(limit(d.port, "http_max_connections") > 0);
    // The relay still takes upgrades.
    let mut ws = raw_ws(d.port);
    ws.write_all(&frame(0x1, br#"["REQ","s",{"kinds":[20001]}]"#))
        .unwrap();
    let mut eose = [0u8; 64];
    let n = ws.read(&mut eose).unwrap();
    assert!(String::from_utf8_lossy(&eose[..n]).contains("EOSE"));
    let lines = d.drain_log().to_vec();
    assert!(
        !lines.iter().any(|l| l.contains("Too many open files")),
        "ran out of file descriptors"
    );
}

/// Polls `cond` for up to 30 s (progress, never speed).
async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Publishes `events` on a new connection and waits for their OKs.
async fn publish_all(port: u16, events: Vec<String>) -> Ws {
    let mut ws = connect(port).await;
    let n = events.len();
    for ev in events {
        send(&mut ws, format!("[\"EVENT\",{ev}]")).await;
    }
    let mut oks = 0;
    while oks < n {
        let m = next(&mut ws, Duration::from_secs(10)).await.expect("OKs");
        if m[0] == "OK" {
            assert_eq!(m[2], json!(true), "{m}");
            oks += 1;
        }
    }
    ws
}

/// Item 10: one real sealed offer, replayed under many peer ids and keys, from one
/// relay connection and then from ten, never fills MAX_PEERS: a real peer still
/// gets in, and the replays hold only a few links being built.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replayed_offers_cannot_fill_max_peers() {
    use genosdb_fallback::rtc::peer::Peer;
    use genosdb_fallback::rtc::room::{PENDING_PER_CONNECTION, RoomEvent};
    use genosdb_fallback::rtc::seal::SealKey;

    let tmp = tempfile::tempdir().unwrap();
    let d = Daemon::start_ready(
        &data_dir(&tmp),
        &[
            ("RELAY", "1"),
            ("RTC_ENABLED", "true"),
            ("ICE_SERVERS", ""),
            ("MAX_PEERS", "30"),
        ],
    );
    let room = format!("graph-sync-room-{}", common::DB);
    let root = topic::root_topic(topic::APP_ID, &room);
    let mut watcher = connect(d.port).await;
    send(
        &mut watcher,
        json!(["REQ", "r", {"kinds": [topic::kind_of(&root)], "#x": [root]}]).to_string(),
    )
    .await;
    let daemon_id = loop {
        let m = next(&mut watcher, Duration::from_secs(10))
            .await
            .expect("the daemon announces");
        if m[0] == "EVENT" {
            let c: Value = serde_json::from_str(m[2]["content"].as_str().unwrap()).unwrap();
            break c["peerId"].as_str().unwrap().to_owned();
        }
    };
    // A real peer's offer, sealed as GenosRTC seals it.
    let peer_cfg = common::peer::room_config(&room).peer;
    let (real_pc, _real_events, offer) = Peer::offer(&peer_cfg).await.unwrap();
    let sealed = SealKey::derive("", topic::APP_ID, &room).seal(&offer);
    let to = topic::self_topic(topic::APP_ID, &room, &daemon_id);
    let replay = |i: usize| {
        let content =
            json!({"peerId": format!("replay{i:0>14}"), "offer": {"type": "offer", "sdp": sealed}});
        sign(
            &nostr_keys(10 + i as u8),
            unix_now(),
            topic::kind_of(&to) as u64,
            vec![vec!["x".into(), to.clone()]],
            &content.to_string(),
        )
    };

    // 40 replays from one connection, each under its own key and peer id. The old
    // daemon built a link for each, until MAX_PEERS was full.
    let _one = publish_all(d.port, (0..40).map(replay).collect()).await;
    // The daemon handles signals in order: once it has seen this, it has seen them.
    let seen = |n: u64| metric(d.port, "signals_in") >= n;
    let before = metric(d.port, "signals_in");
    let _mark = publish_all(d.port, vec![replay(99)]).await;
    eventually("the replays to be handled", || seen(before + 1)).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let building = metric(d.port, "links_being_built");
    let refused = limit(d.port, "pending_per_source");

    // 40 more from ten connections (four each): past half of MAX_PEERS, the oldest
    // link being built makes room.
    let mut many = Vec::new();
    for c in 0..10 {
        many.push(publish_all(d.port, (40 + 4 * c..44 + 4 * c).map(replay).collect()).await);
    }
    tokio::time::sleep(Duration::from_secs(2)).await;

    // A real peer still gets in.
    let (b, mut b_rx) = common::peer::join_room(d.port, common::peer::room_config(&room));
    let joined = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            match b_rx.recv().await {
                Some(RoomEvent::Joined { peer, .. }) if peer == daemon_id => return true,
                Some(_) => continue,
                None => return false,
            }
        }
    })
    .await;
    assert_eq!(joined, Ok(true), "the real peer was refused");
    eventually("/health to count the real peer", || {
        common::health(d.port)["peers"].as_u64() >= Some(1)
    })
    .await;
    eprintln!(
        "replayed offers: {building} links being built after 40 replays from one connection, {refused} refused; {} evicted after the second wave",
        limit(d.port, "pending_links")
    );
    assert!(
        building <= PENDING_PER_CONNECTION as u64 + 1,
        "{building} links being built for one connection's replays"
    );
    assert!(refused >= 36, "{refused} replays refused");
    assert!(limit(d.port, "pending_links") >= 1, "nothing was evicted");
    assert!(metric(d.port, "links_being_built") <= 15);
    real_pc.close().await;
    b.leave().await;
}
