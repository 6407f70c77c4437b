//! The relay pool (the Nostr side of signalling) against our embedded relay in the real
//! binary and against misbehaving relays written here, all on 127.0.0.1.

mod common;

use common::{Daemon, data_dir};
use futures_util::{SinkExt, StreamExt};
use genosdb_fallback::rtc::nostr::{Inbound, PoolConfig, RelayPool, topic_filter};
use genosdb_fallback::rtc::topic;
use nostr_sdk::{Event, Keys};
use serde_json::{Value, json};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;

fn key(n: u8) -> Keys {
    common::nostr_keys(n)
}

fn announce(k: &Keys, room: &str, peer: &str) -> Event {
    let t = topic::root_topic(topic::APP_ID, room);
    common::signal_event(k, &t, &json!({"peerId": peer}).to_string())
}

fn fast(urls: Vec<String>) -> PoolConfig {
    let mut cfg = PoolConfig::new(urls);
    cfg.backoff_base = Duration::from_millis(100);
    cfg
}

async fn wait_for(
    rx: &mut mpsc::Receiver<Inbound>,
    what: &str,
    mut pick: impl FnMut(&Inbound) -> bool,
) -> Inbound {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(msg)) if pick(&msg) => return msg,
            Ok(Some(_)) => continue,
            _ => panic!("timed out waiting for {what}"),
        }
    }
}

fn is_connected(m: &Inbound) -> bool {
    matches!(m, Inbound::Connected { .. })
}

/// Publishes a fresh event every 250 ms until aborted, as a room's announce loop does.
fn announce_every<E: Fn() -> Event + Send + 'static>(
    pool: Arc<RelayPool>,
    make: E,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            pool.publish(&make(), None);
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    })
}

fn subscribe(pool: &RelayPool, room: &str) {
    let t = topic::root_topic(topic::APP_ID, room);
    pool.subscribe("root", topic_filter(topic::kind_of(&t), &t));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verified_events_cross_the_embedded_relay() {
    let tmp = tempfile::tempdir().unwrap();
    let d = Daemon::start_ready(&data_dir(&tmp), &[("RELAY", "1")]);
    let url = format!("ws://127.0.0.1:{}", d.port);
    let (a, mut a_rx) = RelayPool::start(fast(vec![url.clone()]));
    let (b, mut b_rx) = RelayPool::start(fast(vec![url]));
    subscribe(&a, "graph-sync-room-signal");
    wait_for(&mut a_rx, "a connected", is_connected).await;
    wait_for(&mut b_rx, "b connected", is_connected).await;
    assert_eq!(a.connected(), 1);
    // a's Connected means its socket is open, not that the relay has its REQ yet: a
    // peer re-announces every 2.5 s, so the test repeats too until a hears one.
    let b = Arc::new(b);
    let repeat = announce_every(b.clone(), || {
        announce(&key(3), "graph-sync-room-signal", "peerB")
    });
    let got = wait_for(&mut a_rx, "the announce", |m| {
        matches!(m, Inbound::Event { .. })
    })
    .await;
    repeat.abort();
    match got {
        Inbound::Event {
            relay, sub, event, ..
        } => {
            assert_eq!((relay, sub.as_str()), (0, "root"));
            assert_eq!(event.content, r#"{"peerId":"peerB"}"#);
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_restart_reconnects_and_resubscribes() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = data_dir(&tmp);
    let mut d = Daemon::start_ready(&dir, &[("RELAY", "1")]);
    let port = d.port;
    let url = format!("ws://127.0.0.1:{port}");
    let (a, mut a_rx) = RelayPool::start(fast(vec![url.clone()]));
    let (b, mut b_rx) = RelayPool::start(fast(vec![url]));
    subscribe(&a, "graph-sync-room-restart");
    wait_for(&mut a_rx, "a connected", is_connected).await;
    wait_for(&mut b_rx, "b connected", is_connected).await;

    d.signal(libc::SIGKILL);
    d.wait(Duration::from_secs(10));
    wait_for(&mut a_rx, "a sees the drop", |m| {
        matches!(m, Inbound::Disconnected { .. })
    })
    .await;
    let _d2 = Daemon::start_ready(&dir, &[("RELAY", "1"), ("PORT", &port.to_string())]);
    wait_for(&mut a_rx, "a reconnected", is_connected).await;
    wait_for(&mut b_rx, "b reconnected", is_connected).await;
    assert!(a.status(0).unwrap().reconnects.load(Ordering::Relaxed) >= 1);

    // The subscription was sent again: a's new connection hears b.
    let b = Arc::new(b);
    let repeat = announce_every(b.clone(), || {
        announce(&key(4), "graph-sync-room-restart", "afterRestart")
    });
    let got = wait_for(&mut a_rx, "an event after the restart", |m| {
        matches!(m, Inbound::Event { .. })
    })
    .await;
    repeat.abort();
    match got {
        Inbound::Event { event, .. } => assert!(event.content.contains("afterRestart")),
        other => panic!("{other:?}"),
    }
}

/// A hostile relay written here: it answers every REQ with a forged event and then a
/// valid one, and (if asked) every EVENT with a proof-of-work demand.
async fn fake_relay(pow: bool) -> (String, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("ws://{}", listener.local_addr().unwrap());
    let events_seen = Arc::new(AtomicUsize::new(0));
    let seen = events_seen.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let seen = seen.clone();
            tokio::spawn(async move {
                let mut ws = tokio_tungstenite::accept_async(stream).await.unwrap();
                while let Some(Ok(msg)) = ws.next().await {
                    // nostr-sdk pings; tungstenite answers pings by itself.
                    let Message::Text(t) = msg else { continue };
                    let v: Value = serde_json::from_str(&t).unwrap();
                    match v[0].as_str() {
                        Some("REQ") => {
                            let sub = v[1].clone();
                            let good = serde_json::to_value(announce(
                                &key(7),
                                "graph-sync-room-fake",
                                "honest",
                            ))
                            .unwrap();
                            let mut forged = good.clone();
                            forged["content"] = json!(r#"{"peerId":"forged"}"#);
                            let mut bad_sig = good.clone();
                            bad_sig["sig"] = json!("00".repeat(64));
                            for ev in [forged, bad_sig, json!({"junk": true}), good] {
                                ws.send(Message::Text(
                                    json!(["EVENT", sub, ev]).to_string().into(),
                                ))
                                .await
                                .unwrap();
                            }
                        }
                        Some("EVENT") => {
                            seen.fetch_add(1, Ordering::Relaxed);
                            if pow {
                                let id = v[1]["id"].clone();
                                ws.send(Message::Text(
                                    json!(["OK", id, false, "pow: 20 bits needed"])
                                        .to_string()
                                        .into(),
                                ))
                                .await
                                .unwrap();
                            }
                        }
                        _ => {}
                    }
                }
            });
        }
    });
    (url, events_seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_relay_events_are_rejected() {
    let (url, _) = fake_relay(false).await;
    let (a, mut a_rx) = RelayPool::start(fast(vec![url]));
    subscribe(&a, "graph-sync-room-fake");
    match wait_for(&mut a_rx, "an event", |m| {
        matches!(m, Inbound::Event { .. })
    })
    .await
    {
        // The relay sent the forged events first: the first one handed on is honest.
        Inbound::Event { event, .. } => assert_eq!(event.content, r#"{"peerId":"honest"}"#),
        other => panic!("{other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_demanding_proof_of_work_is_dropped_and_others_go_on() {
    let tmp = tempfile::tempdir().unwrap();
    let d = Daemon::start_ready(&data_dir(&tmp), &[("RELAY", "1")]);
    let live = format!("ws://127.0.0.1:{}", d.port);
    let (pow_url, events_seen) = fake_relay(true).await;
    // A dead relay, a proof-of-work relay and a live one.
    let dead = "ws://127.0.0.1:9".to_owned();
    let (p, mut p_rx) = RelayPool::start(fast(vec![dead, pow_url, live.clone()]));
    let (watcher, mut w_rx) = RelayPool::start(fast(vec![live.clone()]));
    subscribe(&watcher, "graph-sync-room-pow");
    wait_for(&mut w_rx, "watcher connected", is_connected).await;
    // Both connect, in whichever order.
    let mut up = [false; 3];
    while !(up[1] && up[2]) {
        if let Inbound::Connected { relay } =
            wait_for(&mut p_rx, "pow and live relays connected", is_connected).await
        {
            up[relay] = true;
        }
    }

    // The watcher's Connected means its socket is open, not that the relay has its REQ
    // yet: a third client announces until the watcher hears it, so "first" below cannot
    // reach the relay before the watcher listens (it did once in CI).
    let (probe, mut probe_rx) = RelayPool::start(fast(vec![live.clone()]));
    wait_for(&mut probe_rx, "probe connected", is_connected).await;
    let repeat = announce_every(Arc::new(probe), || {
        announce(&key(6), "graph-sync-room-pow", "warmup")
    });
    wait_for(
        &mut w_rx,
        "the watcher's subscription",
        |m| matches!(m, Inbound::Event { event, .. } if event.content.contains("warmup")),
    )
    .await;
    repeat.abort();

    p.publish(&announce(&key(5), "graph-sync-room-pow", "first"), None);
    wait_for(&mut p_rx, "the pow relay dropped", |m| {
        matches!(m, Inbound::Disconnected { relay: 1 })
    })
    .await;
    assert!(p.status(1).unwrap().pow_blocked.load(Ordering::Relaxed));
    p.publish(&announce(&key(5), "graph-sync-room-pow", "second"), None);
    p.publish(&announce(&key(5), "graph-sync-room-pow", "third"), None);

    let mut heard = Vec::new();
    while heard.len() < 3 {
        if let Inbound::Event { event, .. } =
            wait_for(&mut w_rx, "events through the live relay", |m| {
                matches!(m, Inbound::Event { .. })
            })
            .await
            && !event.content.contains("warmup")
        {
            heard.push(event.content);
        }
    }
    assert!(heard[2].contains("third"));
    assert_eq!(
        events_seen.load(Ordering::Relaxed),
        1,
        "nothing more reaches a pow relay"
    );
    assert!(
        !p.status(0).unwrap().connected.load(Ordering::Relaxed),
        "the dead relay stays down"
    );
}

/// Events received on `rx` until it has been quiet for `quiet`.
async fn count_events(rx: &mut mpsc::Receiver<Inbound>, quiet: Duration) -> usize {
    let mut n = 0;
    while let Ok(Some(m)) = tokio::time::timeout(quiet, rx.recv()).await {
        n += usize::from(matches!(m, Inbound::Event { .. }));
    }
    n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_event_budget_spares_replies_and_unmetered_relays() {
    let tmp = tempfile::tempdir().unwrap();
    let d = Daemon::start_ready(&data_dir(&tmp), &[("RELAY", "1")]);
    let url = format!("ws://127.0.0.1:{}", d.port);
    let tight = |unmetered: bool| {
        let mut cfg = fast(vec![url.clone()]);
        (cfg.events_per_sec, cfg.event_burst) = (0.001, 3.0);
        if unmetered {
            cfg.unmetered = vec![url.clone()];
        }
        cfg
    };
    let room = "graph-sync-room-budget";
    let (metered, mut m_rx) = RelayPool::start(tight(false));
    let (free, mut f_rx) = RelayPool::start(tight(true));
    let (publisher, mut p_rx) = RelayPool::start(fast(vec![url.clone()]));
    wait_for(&mut m_rx, "metered connected", is_connected).await;
    wait_for(&mut f_rx, "unmetered connected", is_connected).await;
    wait_for(&mut p_rx, "publisher connected", is_connected).await;
    // The metered pool's own publishes earn it six OK replies, more than its burst:
    // they must not use up its budget for events.
    for i in 0..6 {
        metered.publish(&announce(&key(20), room, &format!("me{i}")), None);
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    subscribe(&metered, room);
    subscribe(&free, room);
    let publisher = Arc::new(publisher);
    let n = Arc::new(AtomicUsize::new(0));
    let count = n.clone();
    let repeat = announce_every(publisher.clone(), move || {
        let i = count.fetch_add(1, Ordering::Relaxed);
        announce(&key(21), room, &format!("peer{i}"))
    });
    for i in 0..10 {
        wait_for(&mut f_rx, &format!("unmetered event {i}"), |m| {
            matches!(m, Inbound::Event { .. })
        })
        .await;
    }
    repeat.abort();
    let metered_got = count_events(&mut m_rx, Duration::from_millis(500)).await;
    assert!(
        (1..=3).contains(&metered_got),
        "the metered pool handed on {metered_got} of {} events",
        n.load(Ordering::Relaxed)
    );
}
