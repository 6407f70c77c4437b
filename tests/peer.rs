//! Two WebRTC peers built from this crate, on loopback: GenosRTC frames of 1 B, 16 KiB
//! and 1 MiB cross the "data" channel both ways, and a close reaches the other side.

mod common;

use common::rtc::{next, receive_message, send_message};
use genosdb_fallback::rtc::peer::{Peer, PeerConfig, PeerEvent};
use std::time::{Duration, Instant};

fn loopback() -> PeerConfig {
    PeerConfig {
        udp_addrs: vec!["127.0.0.1:0".into()],
        include_loopback: true,
        ..PeerConfig::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_cross_a_real_data_channel_both_ways() {
    let cfg = loopback();
    let (offerer, mut a_rx, offer) = Peer::offer(&cfg).await.unwrap();
    assert!(
        offer.contains("a=candidate"),
        "a non-trickle offer carries its candidates"
    );
    assert!(!offer.contains("a=ice-options:trickle"));
    let (answerer, mut b_rx, answer) = Peer::answer(&cfg, &offer).await.unwrap();
    offerer.accept_answer(&answer).await.unwrap();
    assert!(matches!(next(&mut a_rx).await, PeerEvent::Open));
    assert!(matches!(next(&mut b_rx).await, PeerEvent::Open));

    for (i, size) in [1usize, 16 * 1024, 1 << 20].into_iter().enumerate() {
        let data: Vec<u8> = (0..size).map(|j| (j * 31 + i) as u8).collect();
        send_message(&offerer, i as u8, &data).await;
        assert_eq!(
            receive_message(&mut b_rx).await.data,
            data,
            "{size} B offerer→answerer"
        );
        send_message(&answerer, i as u8, &data).await;
        assert_eq!(
            receive_message(&mut a_rx).await.data,
            data,
            "{size} B answerer→offerer"
        );
    }

    answerer.close().await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        assert!(
            Instant::now() < deadline,
            "the close never reached the offerer"
        );
        if let PeerEvent::Closed = next(&mut a_rx).await {
            break;
        }
    }
    offerer.close().await;
}
