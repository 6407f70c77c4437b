//! Peers that break the frame layer on purpose, against the real daemon over real
//! WebRTC: half a message and then a stall, half a message and then gone without a
//! word, and frames that are garbage. The daemon must release what it held for them,
//! keep serving everyone else, keep /health answering, and never panic.

mod common;

use base64::Engine as _;
use common::faulty_relay::Rng;
use common::peer::{TestPeer, export_of, join_room, room_config, wait_async, wait_async_for};
use common::{DB, Daemon, data_dir, health, metric, relay, superpeer};
use genosdb_fallback::rtc::frame::{self, Payload};
use genosdb_fallback::rtc::room::{Room, RoomEvent};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::mpsc;

/// The daemon drops an incomplete message 30 s after its first frame, checked every
/// 5 s: this is how long a stalled half may be held.
const REASSEMBLY_LIMIT: Duration = Duration::from_secs(60);

/// A room member that speaks frames only: no sync layer, no store. It keeps reading
/// its events (so its links never back up) and answers pings, as any live peer does.
struct RawPeer {
    room: Arc<Room>,
    daemon: String,
}

impl RawPeer {
    async fn join(relay_port: u16) -> Self {
        let (room, events) = join_room(relay_port, room_config(&format!("graph-sync-room-{DB}")));
        let daemon = superpeer_of(events).await;
        Self {
            room: Arc::new(room),
            daemon,
        }
    }

    /// Sends raw frames to the daemon, in order, on its one ordered channel.
    async fn send(&self, frames: Vec<Vec<u8>>) {
        self.room
            .send_frames_to(&self.daemon, frames)
            .await
            .expect("the daemon is connected");
    }
}

/// Waits for the daemon to connect, then keeps draining the room's events.
async fn superpeer_of(mut events: mpsc::Receiver<RoomEvent>) -> String {
    let id = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            match events.recv().await {
                Some(RoomEvent::Joined { peer, kind }) if kind.as_deref() == Some("superpeer") => {
                    return peer;
                }
                Some(_) => {}
                None => panic!("the room closed"),
            }
        }
    })
    .await
    .expect("the daemon connected to the raw peer");
    tokio::spawn(async move { while events.recv().await.is_some() {} });
    id
}

/// A `syncGraph` message of about 10 frames that deflate cannot shrink: one upsert
/// with 200 KB of random base64 (150 KB once deflated).
fn big_sync_message(nonce: u8) -> Vec<Vec<u8>> {
    let mut blob = vec![0u8; 150_000];
    getrandom::fill(&mut blob).unwrap();
    let text = format!(
        r#"[{{"type":"upsert","id":"half","value":{{"blob":"{}"}},"timestamp":{{"physical":1795591854021,"logical":0}}}}]"#,
        base64::engine::general_purpose::STANDARD.encode(blob)
    );
    let frames = frame::encode("syncGraph", nonce, Payload::Json(&text), None).unwrap();
    assert!(frames.len() >= 10, "{} frames", frames.len());
    frames
}

/// Polls /health in the background; counts answers that were not 200 with a status.
struct HealthWatch {
    failures: Arc<AtomicU64>,
    checks: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl HealthWatch {
    fn start(port: u16) -> Self {
        let failures = Arc::new(AtomicU64::new(0));
        let checks = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (f, c, s) = (failures.clone(), checks.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                let ok = common::try_http_get(port, "/health")
                    .is_ok_and(|(code, body)| code == 200 && body.contains("\"status\":\"ok\""));
                c.fetch_add(1, Ordering::Relaxed);
                if !ok {
                    f.fetch_add(1, Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        Self {
            failures,
            checks,
            stop,
            thread: Some(thread),
        }
    }

    /// Stops and asserts every check answered.
    fn finish(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.take().unwrap().join().unwrap();
        let (f, c) = (
            self.failures.load(Ordering::Relaxed),
            self.checks.load(Ordering::Relaxed),
        );
        assert!(c > 10, "only {c} health checks ran");
        assert_eq!(f, 0, "{f} of {c} health checks failed");
    }
}

/// The daemon with a writer connected, for the hostile peer to disturb.
async fn setup(tmp: &tempfile::TempDir) -> (Daemon, Daemon, TestPeer) {
    let relay = relay(tmp);
    let d = superpeer(
        &data_dir(tmp),
        &format!("ws://127.0.0.1:{}", relay.port),
        &[("FLUSH_MS", "50")],
    );
    let w = TestPeer::join(relay.port, DB);
    w.wait_superpeers(1).await;
    (relay, d, w)
}

/// Writes `n` nodes named `{prefix}{i}` and waits until the daemon holds them all.
async fn write_and_wait(w: &TestPeer, d: &Daemon, prefix: &str, n: usize) {
    for i in 0..n {
        w.sync
            .put(&format!("{prefix}{i:03}"), &i.to_string())
            .await
            .unwrap();
    }
    let expected = w.store.lock().unwrap().len() as u64;
    let port = d.port;
    wait_async(&format!("the daemon holds the {prefix} writes"), || {
        health(port)["nodes"].as_u64() == Some(expected)
    })
    .await;
}

/// A fresh peer gets exactly the writer's graph from the daemon (the writer has left).
async fn fresh_reader_gets(relay_port: u16, expected: &[String]) {
    let r = TestPeer::join(relay_port, DB);
    r.wait_superpeers(1).await;
    r.wait_store("the writer's graph", |s| export_of(s) == expected)
        .await;
    r.leave().await;
}

async fn partial(port: u16) -> u64 {
    tokio::task::spawn_blocking(move || metric(port, "frames_partial"))
        .await
        .unwrap()
}

async fn wait_partial(port: u16, what: &str, limit: Duration, cond: impl Fn(u64) -> bool) {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let held = partial(port).await;
        if cond(held) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}: frames_partial={held}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_a_message_then_a_stall_is_expired_and_stalls_no_one() {
    let tmp = tempfile::tempdir().unwrap();
    let (relay, mut d, w) = setup(&tmp).await;
    let watch = HealthWatch::start(d.port);

    let stalled = RawPeer::join(relay.port).await;
    let frames = big_sync_message(0);
    stalled.send(frames[..3].to_vec()).await;
    wait_partial(d.port, "3 frames held", Duration::from_secs(30), |n| n >= 1).await;

    // Others write while the half message is held, and after it is gone.
    write_and_wait(&w, &d, "during", 50).await;
    wait_partial(d.port, "the half expired", REASSEMBLY_LIMIT, |n| n == 0).await;
    write_and_wait(&w, &d, "after", 50).await;
    // The stalled peer was not dropped for it: it is alive and answers pings.
    assert!(stalled.room.peers().contains(&stalled.daemon));
    let written = w.export();
    w.leave().await;
    fresh_reader_gets(relay.port, &written).await;
    // What was never completed was never merged.
    assert!(!written.iter().any(|l| l.contains("\"half\"")));
    assert!(health(d.port)["nodes"].as_u64() == Some(written.len() as u64));

    watch.finish();
    d.assert_no_panic();
    assert!(d.stop().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_a_message_then_gone_is_released_with_the_link() {
    let tmp = tempfile::tempdir().unwrap();
    let (relay, mut d, w) = setup(&tmp).await;
    let watch = HealthWatch::start(d.port);

    // The vanishing peer runs on a runtime of its own; dropping that runtime mid-message
    // is the network's view of a killed process: its sockets close and nothing more is
    // sent, no `@_leave`, no `bye`, no SCTP shutdown.
    let (sent_tx, sent_rx) = std::sync::mpsc::channel();
    let (vanish_tx, vanish_rx) = std::sync::mpsc::channel::<()>();
    let relay_port = relay.port;
    let vanisher = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let (id, daemon) = rt.block_on(async {
            let p = RawPeer::join(relay_port).await;
            p.send(big_sync_message(7)[..3].to_vec()).await;
            let id = p.room.self_id.clone();
            let daemon = p.daemon.clone();
            std::mem::forget(p);
            (id, daemon)
        });
        sent_tx.send((id, daemon)).unwrap();
        let _ = vanish_rx.recv();
        rt.shutdown_background();
    });
    let (gone, _) = tokio::task::spawn_blocking(move || sent_rx.recv().unwrap())
        .await
        .unwrap();
    wait_partial(d.port, "3 frames held", Duration::from_secs(30), |n| n >= 1).await;
    write_and_wait(&w, &d, "before", 30).await;

    vanish_tx.send(()).unwrap();
    tokio::task::spawn_blocking(move || vanisher.join().unwrap())
        .await
        .unwrap();
    let left = format!("peer left peer={gone}");
    let mut d = tokio::task::spawn_blocking(move || {
        d.wait_for_log(&left, Duration::from_secs(60));
        d
    })
    .await
    .unwrap();
    wait_partial(d.port, "the half released", REASSEMBLY_LIMIT, |n| n == 0).await;
    write_and_wait(&w, &d, "after", 30).await;
    let written = w.export();
    w.leave().await;
    fresh_reader_gets(relay.port, &written).await;

    watch.finish();
    d.assert_no_panic();
    assert!(d.stop().success());
}

/// A frame header for `channel` (NUL-padded name, nonce, flags, progress).
fn header(channel: &[u8], nonce: u8, flags: u8) -> Vec<u8> {
    let mut f = vec![0u8; frame::NAME_LEN];
    f[..channel.len()].copy_from_slice(channel);
    f.extend_from_slice(&[nonce, flags, 255]);
    f
}

fn with_payload(mut header: Vec<u8>, payload: &[u8]) -> Vec<u8> {
    header.extend_from_slice(payload);
    header
}

/// Frames no browser would send: too short, too long, undecodable, over the limits.
fn garbage(rng: &mut Rng) -> Vec<Vec<u8>> {
    use frame::{BINARY, DEFLATE, JSON, LAST, META};
    let sg = b"syncGraph";
    let mut out = vec![
        vec![1, 2, 3],
        vec![0; 14],
        // A NUL name and an invalid-UTF-8 one, complete and empty.
        header(b"", 0, LAST),
        header(&[0xff; 12], 0, LAST | JSON),
        // Deflate that does not inflate; a meta chunk that is not JSON.
        with_payload(
            header(sg, 1, LAST | JSON | DEFLATE),
            b"\x78\x9cnot zlib at all",
        ),
        with_payload(header(sg, 2, META | BINARY), b"{not json"),
        // Complete messages the sync layer must refuse.
        with_payload(header(sg, 3, LAST | JSON), b"not json"),
        with_payload(header(sg, 4, LAST | JSON), br#"[{"type":"upsert"}]"#),
        with_payload(
            header(sg, 5, LAST | JSON),
            br#"{"type":"sync","timestamp":"x"}"#,
        ),
        with_payload(header(sg, 6, LAST | BINARY), &[0xc1; 64]),
        // Longer than any frame may be.
        vec![0x41; frame::MAX_FRAME_LEN + 1],
    ];
    // 101 chunks of one message: over the 100-chunk limit.
    out.extend((0..101).map(|_| with_payload(header(sg, 9, JSON), b"x")));
    // Incomplete messages on 80 nonces: over the 64 held per peer.
    out.extend((10..90).map(|n| with_payload(header(sg, n, JSON), b"[")));
    // Random bytes of random lengths, some shorter than a header.
    out.extend((0..200).map(|_| {
        let len = rng.range(0, 400) as usize;
        (0..len).map(|_| rng.next_u64() as u8).collect()
    }));
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_frames_are_refused_and_everyone_else_is_served() {
    let tmp = tempfile::tempdir().unwrap();
    let (relay, mut d, w) = setup(&tmp).await;
    let watch = HealthWatch::start(d.port);
    let mut rng = Rng::new(common::faulty_relay::seed("garbage frames"));

    let hostile = RawPeer::join(relay.port).await;
    let bad_before = metric(d.port, "bad_frames");
    let frames = garbage(&mut rng);
    // One at a time: the data channel refuses some (empty ones) on our side already.
    for f in frames {
        let _ = hostile.room.send_frames_to(&hostile.daemon, vec![f]).await;
    }
    let port = d.port;
    wait_partial(
        port,
        "the garbage halves held",
        Duration::from_secs(30),
        |n| n >= 1,
    )
    .await;
    wait_async_for("the bad frames counted", Duration::from_secs(30), || {
        metric(port, "bad_frames") >= bad_before + 5
    })
    .await;
    // The writer's traffic still flows, and the daemon serves it.
    write_and_wait(&w, &d, "after", 50).await;
    let written = w.export();
    w.leave().await;
    fresh_reader_gets(relay.port, &written).await;
    assert!(metric(d.port, "sync_undecodable") >= 1);
    // Held halves from the garbage expire like any other.
    wait_partial(
        d.port,
        "the garbage halves expired",
        REASSEMBLY_LIMIT,
        |n| n == 0,
    )
    .await;

    eprintln!(
        "garbage frames: bad_frames={}",
        metric(port, "bad_frames") - bad_before
    );
    watch.finish();
    d.assert_no_panic();
    assert!(d.stop().success());
}
