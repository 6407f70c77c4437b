//! The daemon's WebRTC peer against werift, the pure-JS stack of genossrv and of GenosDB apps
//! on Node or Bun: the SCTP association forms whichever side offers, and a 1 MiB GenosRTC
//! message crosses the link and comes back.
//!
//! rtc (our stack) picked the SCTP initiator by DTLS role and werift picks it by ICE role, so
//! before the patches in `patches/` both sides sent INIT (werift offering) or neither did (us
//! offering). The werift side is `tests/werift/peer.mjs`, driven over stdin/stdout.
//!
//! Needs node and werift 0.25.2: `WERIFT_DIR` names a directory whose `node_modules` holds
//! werift (`.ci/provision werift` installs it on first use). Without Node.js the test is skipped, except under `CI=true`,
//! where it fails.

mod common;

use genosdb_fallback::rtc::frame::{self, Payload, Reassembler};
use genosdb_fallback::rtc::peer::{Peer, PeerConfig, PeerEvent};
use serde_json::{Value, json};
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::mpsc;

fn loopback() -> PeerConfig {
    PeerConfig {
        udp_addrs: vec!["127.0.0.1:0".into()],
        include_loopback: true,
        ..PeerConfig::default()
    }
}

/// The directory holding `node_modules/werift` (`WERIFT_DIR`, or installed on first use by
/// `.ci/provision`), or None (skip) where Node.js is missing outside CI.
fn werift_dir() -> Option<PathBuf> {
    let d = common::provision::tool("WERIFT_DIR", "werift")?;
    assert!(
        d.join("node_modules/werift/package.json").is_file(),
        "WERIFT_DIR={} has no node_modules/werift",
        d.display()
    );
    Some(d)
}

/// A running werift peer: its stdin, and the JSON lines it prints.
struct Werift {
    child: Child,
    stdin: ChildStdin,
    lines: mpsc::Receiver<Value>,
}

impl Werift {
    fn spawn(dir: &PathBuf) -> Self {
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/werift/peer.mjs");
        let mut child = Command::new(std::env::var("NODE").unwrap_or_else(|_| "node".into()))
            .arg(script)
            .env("WERIFT_DIR", dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("node runs (set NODE to its path)");
        let stdin = child.stdin.take().unwrap();
        let mut stdout = BufReader::new(child.stdout.take().unwrap()).lines();
        let (tx, lines) = mpsc::channel(1024);
        tokio::spawn(async move {
            while let Ok(Some(line)) = stdout.next_line().await {
                let v: Value = serde_json::from_str(&line).unwrap_or(json!({ "raw": line }));
                if tx.send(v).await.is_err() {
                    return;
                }
            }
        });
        Self {
            child,
            stdin,
            lines,
        }
    }

    async fn say(&mut self, v: Value) {
        let mut line = v.to_string();
        line.push('\n');
        self.stdin.write_all(line.as_bytes()).await.unwrap();
    }

    /// The next line with `key`, failing on an `error` line.
    async fn expect(&mut self, key: &str) -> Value {
        loop {
            let v = tokio::time::timeout(Duration::from_secs(30), self.lines.recv())
                .await
                .unwrap_or_else(|_| panic!("werift printed no {key:?} in time"))
                .expect("the werift peer exited");
            assert!(v.get("error").is_none(), "werift: {v}");
            if v.get(key).is_some() {
                return v;
            }
        }
    }
}

async fn next(rx: &mut mpsc::Receiver<PeerEvent>) -> PeerEvent {
    tokio::time::timeout(Duration::from_secs(30), rx.recv())
        .await
        .expect("a peer event in time (did the SCTP association form?)")
        .expect("the event queue is open")
}

/// Sends a 1 MiB message in GenosRTC frames and checks that werift echoes it intact.
async fn round_trip(peer: &Peer, rx: &mut mpsc::Receiver<PeerEvent>, nonce: u8) {
    // Incompressible enough that it travels as ~65 full frames, not one deflated frame.
    let mut x = 0x9e37_79b9u32.wrapping_add(nonce as u32);
    let data: Vec<u8> = (0..1 << 20)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect();
    let frames = frame::encode("syncGraph", nonce, Payload::Binary(&data), None).unwrap();
    assert!(frames.len() > 60, "{} frames", frames.len());
    for f in &frames {
        peer.send(f).await.unwrap();
    }
    let mut r = Reassembler::default();
    let back = loop {
        match next(rx).await {
            PeerEvent::Message(bytes) => {
                if let Some(m) = r.push(&bytes, Instant::now()).unwrap() {
                    break m;
                }
            }
            PeerEvent::Open => continue,
            PeerEvent::Closed => panic!("the link closed mid-message"),
        }
    };
    assert_eq!(back.channel, "syncGraph");
    assert!(back.data == data, "the 1 MiB message came back altered");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn links_with_werift_when_werift_offers() {
    let Some(dir) = werift_dir() else { return };
    let mut w = Werift::spawn(&dir);
    w.say(json!({ "offer": true })).await;
    let offer = w.expect("sdp").await;
    assert_eq!(offer["type"], "offer");
    let (peer, mut rx, answer) = Peer::answer(&loopback(), offer["sdp"].as_str().unwrap())
        .await
        .unwrap();
    w.say(json!({ "answer": answer })).await;
    assert!(matches!(next(&mut rx).await, PeerEvent::Open));
    w.expect("open").await;
    round_trip(&peer, &mut rx, 1).await;
    peer.close().await;
    let _ = w.child.kill().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn links_with_werift_when_we_offer() {
    let Some(dir) = werift_dir() else { return };
    let mut w = Werift::spawn(&dir);
    let (peer, mut rx, offer) = Peer::offer(&loopback()).await.unwrap();
    w.say(json!({ "offer": offer })).await;
    let answer = w.expect("sdp").await;
    assert_eq!(answer["type"], "answer");
    peer.accept_answer(answer["sdp"].as_str().unwrap())
        .await
        .unwrap();
    assert!(matches!(next(&mut rx).await, PeerEvent::Open));
    w.expect("open").await;
    round_trip(&peer, &mut rx, 2).await;
    peer.close().await;
    let _ = w.child.kill().await;
}
