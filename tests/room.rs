//! Rooms built from this crate meet through the embedded relay of the real binary, on
//! 127.0.0.1: messages cross, glare converges to one link, passwords keep strangers
//! out, and a peer that goes silent is dropped.

mod common;

use common::{Daemon, data_dir};
use genosdb_fallback::rtc::frame::Payload;
use genosdb_fallback::rtc::nostr::{PoolConfig, RelayPool};
use genosdb_fallback::rtc::room::{RoomConfig, RoomEvent};
use std::time::Duration;
use tokio::sync::mpsc::Receiver;

/// Rooms here play superpeers, so that joins report the type.
fn config(room: &str, password: &str) -> RoomConfig {
    let mut cfg = common::peer::room_config(room);
    cfg.peer_type = Some("superpeer".into());
    cfg.password = password.into();
    cfg
}

use common::peer::join_room as join;

async fn next(rx: &mut Receiver<RoomEvent>, wait: Duration) -> Option<RoomEvent> {
    tokio::time::timeout(wait, rx.recv()).await.ok().flatten()
}

async fn joined(rx: &mut Receiver<RoomEvent>) -> (String, Option<String>) {
    loop {
        match next(rx, Duration::from_secs(30)).await {
            Some(RoomEvent::Joined { peer, kind }) => return (peer, kind),
            Some(_) => continue,
            None => panic!("no peer joined"),
        }
    }
}

/// Waits for a `Left` and returns who left.
async fn left(rx: &mut Receiver<RoomEvent>, what: &str) -> String {
    loop {
        match next(rx, Duration::from_secs(30)).await {
            Some(RoomEvent::Left { peer }) => return peer,
            Some(_) => continue,
            None => panic!("{what}"),
        }
    }
}

async fn message(rx: &mut Receiver<RoomEvent>) -> (String, Vec<u8>) {
    loop {
        match next(rx, Duration::from_secs(30)).await {
            Some(RoomEvent::Message { peer, message }) => return (peer, message.data),
            Some(RoomEvent::Left { peer }) => panic!("{peer} left while a message was expected"),
            Some(_) => continue,
            None => panic!("no message"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_cross_and_simultaneous_dials_converge_to_one_link() {
    let tmp = tempfile::tempdir().unwrap();
    let d = Daemon::start_ready(&data_dir(&tmp), &[("RELAY", "1")]);
    // Both join at once: both hear the other's first announce and dial (glare).
    let (a, mut a_rx) = join(d.port, config("graph-sync-room-rooms", ""));
    let (b, mut b_rx) = join(d.port, config("graph-sync-room-rooms", ""));
    let (a_sees, kind) = joined(&mut a_rx).await;
    let (b_sees, _) = joined(&mut b_rx).await;
    assert_eq!(a_sees, b.self_id);
    assert_eq!(b_sees, a.self_id);
    assert_eq!(kind.as_deref(), Some("superpeer"));

    for size in [1usize, 16 * 1024, 1 << 20] {
        let data: Vec<u8> = (0..size).map(|i| (i * 7) as u8).collect();
        a.send("test", Payload::Binary(&data), None).unwrap();
        assert_eq!(
            message(&mut b_rx).await,
            (a.self_id.clone(), data.clone()),
            "{size} B a→b"
        );
        b.send("test", Payload::Binary(&data), Some(&a.self_id))
            .unwrap();
        assert_eq!(
            message(&mut a_rx).await,
            (b.self_id.clone(), data),
            "{size} B b→a"
        );
    }
    // One link each way, and no second join after the glare settled.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(a.peers(), vec![b.self_id.clone()]);
    assert_eq!(b.peers(), vec![a.self_id.clone()]);
    while let Some(ev) = next(&mut a_rx, Duration::from_millis(100)).await {
        assert!(
            !matches!(ev, RoomEvent::Joined { .. } | RoomEvent::Left { .. }),
            "{ev:?}"
        );
    }

    b.leave().await;
    assert_eq!(left(&mut a_rx, "a never saw b leave").await, b.self_id);
    assert!(a.peers().is_empty());
    a.leave().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_password_mismatch_never_connects() {
    let tmp = tempfile::tempdir().unwrap();
    let d = Daemon::start_ready(&data_dir(&tmp), &[("RELAY", "1")]);
    let (a, mut a_rx) = join(d.port, config("graph-sync-room-pw", "right"));
    let (b, mut b_rx) = join(d.port, config("graph-sync-room-pw", "wrong"));
    let (c, mut c_rx) = join(d.port, config("graph-sync-room-pw", "right"));
    // a and c share the password and meet; b hears them announce but can never connect.
    let (x, _) = joined(&mut a_rx).await;
    assert_eq!(x, c.self_id);
    joined(&mut c_rx).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    while let Some(ev) = next(&mut b_rx, Duration::from_millis(100)).await {
        assert!(
            !matches!(ev, RoomEvent::Joined { .. }),
            "b joined with the wrong password: {ev:?}"
        );
    }
    assert!(b.peers().is_empty());
    assert_eq!(a.peers(), vec![c.self_id.clone()]);
    // Offers did cross and fail to open. Which side counts it depends on the glare
    // rule: a peer whose own offer wins never opens the other's.
    let failures: u64 = [&a, &b, &c]
        .iter()
        .map(|r| {
            r.stats()
                .seal_failures
                .load(std::sync::atomic::Ordering::Relaxed)
        })
        .sum();
    assert!(failures > 0);
    for r in [a, b, c] {
        r.leave().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_joins_its_room_as_a_superpeer_through_its_own_relay() {
    let tmp = tempfile::tempdir().unwrap();
    let mut d = Daemon::start_ready(
        &data_dir(&tmp),
        &[
            ("RELAY", "1"),
            ("RTC_ENABLED", "true"),
            ("ICE_SERVERS", ""),
            ("PASSWORD", "pw-123"),
        ],
    );
    let (peer, mut rx) = join(
        d.port,
        config(&format!("graph-sync-room-{}", common::DB), "pw-123"),
    );
    let (daemon_id, kind) = joined(&mut rx).await;
    assert_eq!(kind.as_deref(), Some("superpeer"));
    d.wait_for_log("peer joined", Duration::from_secs(30));
    common::wait_until("health shows the peer", || {
        let (_, body) = d.get("/health");
        body.contains("\"peers\":1") && body.contains("\"relays\":{\"connected\":1,\"total\":1}")
    });
    let (_, metrics) = d.get("/metrics");
    assert!(metrics.contains("genosdb_signals_in_total"));

    // SIGTERM: the daemon says @_leave, so the peer sees it go at once.
    d.signal(libc::SIGTERM);
    assert_eq!(
        left(&mut rx, "the daemon's leave never arrived").await,
        daemon_id
    );
    assert_eq!(d.wait(Duration::from_secs(10)).code(), Some(0));
    let log = d.lines.join("\n");
    assert!(!log.contains("pw-123"), "the password must never be logged");
    peer.leave().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_room_presence_the_daemon_is_a_superpeer_in_the_app_room_too() {
    let tmp = tempfile::tempdir().unwrap();
    let mut d = Daemon::start_ready(
        &data_dir(&tmp),
        &[
            ("RELAY", "1"),
            ("RTC_ENABLED", "true"),
            ("ICE_SERVERS", ""),
            ("ROOM_PRESENCE", "1"),
        ],
    );
    // A browser's db.room: the app room, no type of its own.
    let app = common::peer::room_config(&format!("app-sync-{}", common::DB));
    let (peer, mut rx) = join(d.port, app);
    let (daemon_id, kind) = joined(&mut rx).await;
    assert_eq!(kind.as_deref(), Some("superpeer"));
    common::wait_until("health shows the presence peer", || {
        d.get("/health").1.contains("\"presencePeers\":1")
    });
    // Nobody is in the sync room: presence peers are not sync peers.
    assert!(d.get("/health").1.contains("\"peers\":0"));

    d.signal(libc::SIGTERM);
    assert_eq!(
        left(&mut rx, "the daemon never left the app room").await,
        daemon_id
    );
    assert_eq!(d.wait(Duration::from_secs(10)).code(), Some(0));
    peer.leave().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_stops_answering_pings_is_dropped() {
    let tmp = tempfile::tempdir().unwrap();
    let d = Daemon::start_ready(&data_dir(&tmp), &[("RELAY", "1")]);
    let mut watchful = config("graph-sync-room-deaf", "");
    watchful.keepalive_tick = Duration::from_millis(200);
    watchful.ping_after_idle = Duration::from_millis(500);
    watchful.ping_timeout = Duration::from_secs(1);
    let mut deaf = config("graph-sync-room-deaf", "");
    deaf.answer_pings = false;
    let (a, mut a_rx) = join(d.port, watchful);
    let (b, mut b_rx) = join(d.port, deaf);
    let (seen, _) = joined(&mut a_rx).await;
    assert_eq!(seen, b.self_id);
    joined(&mut b_rx).await;
    // b stays connected at the transport level but never answers; a drops it.
    assert_eq!(
        left(&mut a_rx, "the deaf peer was never dropped").await,
        b.self_id
    );
    a.leave().await;
    b.leave().await;
}

/// A reloaded browser keeps its peer id and offers again while our link to its old tab
/// still looks alive: the new offer replaces the old link.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_offer_from_a_connected_peer_replaces_its_link() {
    use genosdb_fallback::rtc::nostr::{Inbound, topic_filter};
    use genosdb_fallback::rtc::peer::{Peer, PeerEvent};
    use genosdb_fallback::rtc::seal::SealKey;
    use genosdb_fallback::rtc::topic;
    use serde_json::json;

    let tmp = tempfile::tempdir().unwrap();
    let d = Daemon::start_ready(&data_dir(&tmp), &[("RELAY", "1")]);
    let room = "graph-sync-room-reload";
    let (a, mut a_rx) = join(d.port, config(room, ""));
    let (b, mut b_rx) = join(d.port, config(room, ""));
    assert_eq!(joined(&mut a_rx).await.0, b.self_id);
    joined(&mut b_rx).await;
    tokio::time::sleep(Duration::from_millis(2500)).await;

    // "b reloaded": a new connection under b's id, signalled by hand.
    let mut pool_cfg = PoolConfig::new(vec![format!("ws://127.0.0.1:{}", d.port)]);
    pool_cfg.backoff_base = Duration::from_millis(100);
    let (pool, mut inbound) = RelayPool::start(pool_cfg);
    let b_topic = topic::self_topic(topic::APP_ID, room, &b.self_id);
    pool.subscribe("reload", topic_filter(topic::kind_of(&b_topic), &b_topic));
    loop {
        if let Some(Inbound::Connected { .. }) = inbound.recv().await {
            break;
        }
    }
    let peer_cfg = config(room, "").peer;
    let (reloaded, mut events, offer) = Peer::offer(&peer_cfg).await.unwrap();
    let seal = SealKey::derive("", topic::APP_ID, room);
    let a_topic = topic::self_topic(topic::APP_ID, room, &a.self_id);
    let content =
        json!({"peerId": b.self_id, "offer": {"type": "offer", "sdp": seal.seal(&offer)}});
    pool.publish(
        &common::signal_event(&common::nostr_keys(9), &a_topic, &content.to_string()),
        None,
    );
    let answer = loop {
        match tokio::time::timeout(Duration::from_secs(20), inbound.recv()).await {
            Ok(Some(Inbound::Event { event, .. })) => {
                let m: serde_json::Value = serde_json::from_str(&event.content).unwrap();
                if let Some(sdp) = m["answer"]["sdp"].as_str() {
                    break seal.open(sdp).unwrap();
                }
            }
            Ok(Some(_)) => continue,
            _ => panic!("a never answered the reloaded peer"),
        }
    };
    reloaded.accept_answer(&answer).await.unwrap();
    loop {
        match tokio::time::timeout(Duration::from_secs(20), events.recv()).await {
            Ok(Some(PeerEvent::Open)) => break,
            Ok(Some(_)) => continue,
            _ => panic!("the reloaded link never opened"),
        }
    }
    // a now holds the new link under b's id; the old one was closed, which b sees.
    assert_eq!(joined(&mut a_rx).await.0, b.self_id);
    assert_eq!(a.peers(), vec![b.self_id.clone()]);
    assert_eq!(
        left(&mut b_rx, "the replaced link was never closed").await,
        a.self_id
    );
    reloaded.close().await;
    a.leave().await;
    b.leave().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_superpeers_links_to_the_superpeer_and_never_to_other_peers() {
    let tmp = tempfile::tempdir().unwrap();
    let d = Daemon::start_ready(&data_dir(&tmp), &[("RELAY", "1")]);
    let room = "graph-sync-room-star";
    let (s, mut s_rx) = join(d.port, config(room, ""));
    let star = |cfg: &mut RoomConfig| cfg.only_superpeers = true;
    let mut a_cfg = common::peer::room_config(room);
    star(&mut a_cfg);
    let mut b_cfg = common::peer::room_config(room);
    star(&mut b_cfg);
    let (a, mut a_rx) = join(d.port, a_cfg);
    let (b, mut b_rx) = join(d.port, b_cfg);
    // A browser-like peer: it hears a's and b's announces and dials them.
    let (c, mut c_rx) = join(d.port, common::peer::room_config(room));
    assert_eq!(
        joined(&mut a_rx).await,
        (s.self_id.clone(), Some("superpeer".into()))
    );
    assert_eq!(
        joined(&mut b_rx).await,
        (s.self_id.clone(), Some("superpeer".into()))
    );
    assert_eq!(joined(&mut c_rx).await.0, s.self_id);
    let mut seen = Vec::new();
    while seen.len() < 3 {
        seen.push(joined(&mut s_rx).await.0);
    }
    // Many announce rounds (300 ms each) later, still one link each.
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(a.peers(), vec![s.self_id.clone()]);
    assert_eq!(b.peers(), vec![s.self_id.clone()]);
    assert_eq!(c.peers(), vec![s.self_id.clone()]);
    assert_eq!(s.peers().len(), 3);
}

/// A peer heard announcing on the room's topic is first invited to dial (an announce on
/// its own topic, no offer: GenosRTC dials on any announce, with an offer it began
/// gathering when it joined); one that offers is answered and linked without a dial of
/// ours, and one that does not is dialled once its wait is over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_heard_announcing_is_invited_to_dial_then_dialled_if_it_does_not() {
    use genosdb_fallback::rtc::nostr::{Inbound, topic_filter};
    use genosdb_fallback::rtc::peer::{Peer, PeerEvent};
    use genosdb_fallback::rtc::seal::SealKey;
    use genosdb_fallback::rtc::topic;
    use serde_json::{Value, json};

    let tmp = tempfile::tempdir().unwrap();
    let d = Daemon::start_ready(&data_dir(&tmp), &[("RELAY", "1")]);
    let room = "graph-sync-room-invite";
    // A wait far longer than the eager peer takes to offer, even on a loaded machine.
    let mut cfg = config(room, "");
    cfg.dial_wait = Duration::from_secs(3);
    let (a, mut a_rx) = join(d.port, cfg);
    let root = topic::root_topic(topic::APP_ID, room);
    let a_topic = topic::self_topic(topic::APP_ID, room, &a.self_id);
    let seal = SealKey::derive("", topic::APP_ID, room);

    // Two hand-signalled peers: each listens on its own topic, announces on the room's.
    let mut pool_cfg = PoolConfig::new(vec![format!("ws://127.0.0.1:{}", d.port)]);
    pool_cfg.backoff_base = Duration::from_millis(100);
    let (pool, mut inbound) = RelayPool::start(pool_cfg);
    let pool = std::sync::Arc::new(pool);
    let (silent, eager) = ("silentPeer0000000001", "eagerPeer00000000002");
    for (i, x) in [silent, eager].iter().enumerate() {
        let t = topic::self_topic(topic::APP_ID, room, x);
        pool.subscribe(&format!("self{i}"), topic_filter(topic::kind_of(&t), &t));
    }
    loop {
        if let Some(Inbound::Connected { .. }) = inbound.recv().await {
            break;
        }
    }
    // What `a` sends each of them, in order: "announce" or "offer".
    let mut got: Vec<(String, &str)> = Vec::new();
    let mut recv = async |got: &mut Vec<(String, &str)>| -> Value {
        loop {
            match tokio::time::timeout(Duration::from_secs(20), inbound.recv()).await {
                Ok(Some(Inbound::Event { event, .. })) => {
                    let m: Value = serde_json::from_str(&event.content).unwrap();
                    if m["peerId"] != json!(a.self_id) {
                        continue;
                    }
                    let to = [silent, eager]
                        .into_iter()
                        .find(|x| {
                            event.tags.iter().any(|t| {
                                t.content() == Some(&topic::self_topic(topic::APP_ID, room, x))
                            })
                        })
                        .unwrap()
                        .to_owned();
                    let kind = if m.get("offer").is_some() {
                        "offer"
                    } else if m.get("answer").is_some() {
                        "answer"
                    } else {
                        "announce"
                    };
                    got.push((to, kind));
                    return m;
                }
                Ok(Some(_)) => continue,
                _ => panic!("a sent nothing more; so far {got:?}"),
            }
        }
    };
    // A peer announces every 300 ms, as a browser does every 2.5 s, so one that went out
    // before `a` subscribed is not the only one.
    let announce = |x: &str| {
        let (pool, root) = (pool.clone(), root.clone());
        let content = json!({"peerId": x}).to_string();
        tokio::spawn(async move {
            let keys = common::nostr_keys(11);
            loop {
                pool.publish(&common::signal_event(&keys, &root, &content), None);
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        })
    };
    let keys = common::nostr_keys(11);

    // The silent peer never offers: invited first, then dialled.
    let announcing = announce(silent);
    recv(&mut got).await;
    recv(&mut got).await;
    assert_eq!(
        got,
        vec![
            (silent.to_owned(), "announce"),
            (silent.to_owned(), "offer")
        ],
        "an invitation, then a dial"
    );
    announcing.abort();

    // The eager peer offers on the invitation: answered, and the link opens.
    // Its offer is gathered before it announces, as GenosRTC's pool is.
    let (link, mut events, offer) = Peer::offer(&config(room, "").peer).await.unwrap();
    got.clear();
    let announcing = announce(eager);
    recv(&mut got).await;
    assert_eq!(got, vec![(eager.to_owned(), "announce")], "an invitation");
    let content = json!({"peerId": eager, "offer": {"type": "offer", "sdp": seal.seal(&offer)}});
    pool.publish(
        &common::signal_event(&keys, &a_topic, &content.to_string()),
        None,
    );
    let answer = loop {
        let m = recv(&mut got).await;
        if let Some(sdp) = m["answer"]["sdp"].as_str() {
            break seal.open(sdp).unwrap();
        }
    };
    link.accept_answer(&answer).await.unwrap();
    loop {
        match tokio::time::timeout(Duration::from_secs(20), events.recv()).await {
            Ok(Some(PeerEvent::Open)) => break,
            Ok(Some(_)) => continue,
            _ => panic!("the eager peer's link never opened"),
        }
    }
    assert_eq!(joined(&mut a_rx).await.0, eager);
    assert_eq!(
        got.iter()
            .filter(|(x, k)| x == eager && *k == "offer")
            .count(),
        0,
        "a never dialled the peer that offered: {got:?}"
    );
    announcing.abort();
    link.close().await;
    a.leave().await;
}
