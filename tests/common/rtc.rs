//! One of our WebRTC peers driven by hand: its next event, a whole GenosRTC message
//! reassembled from its frames, and a message sent as frames.

use genosdb_fallback::rtc::frame::{self, Payload, Reassembler};
use genosdb_fallback::rtc::peer::{Peer, PeerEvent};
use std::time::{Duration, Instant};
use tokio::sync::mpsc::Receiver;

pub async fn next(rx: &mut Receiver<PeerEvent>) -> PeerEvent {
    tokio::time::timeout(Duration::from_secs(20), rx.recv())
        .await
        .expect("a peer event in time")
        .expect("the event queue is open")
}

pub async fn receive_message(rx: &mut Receiver<PeerEvent>) -> frame::Message {
    let mut r = Reassembler::default();
    loop {
        match next(rx).await {
            PeerEvent::Message(bytes) => {
                if let Some(m) = r.push(&bytes, Instant::now()).unwrap() {
                    return m;
                }
            }
            PeerEvent::Open => continue,
            PeerEvent::Closed => panic!("closed while a message was expected"),
        }
    }
}

pub async fn send_message(peer: &Peer, nonce: u8, data: &[u8]) {
    for f in frame::encode("syncGraph", nonce, Payload::Binary(data), None).unwrap() {
        peer.send(&f).await.unwrap();
    }
}
