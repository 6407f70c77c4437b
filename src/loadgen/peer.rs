//! A load peer: one GenosRTC room member built from this crate's rtc code, linked to
//! superpeers only (a star around the daemon, never a full mesh), that writes live
//! ops at a given rate and measures how long other peers' ops took to reach it.
//!
//! Receivers do not merge what they get: a thousand stores merging every op would
//! make the load generator the bottleneck. Each `syncGraph` message is scanned for the
//! ids and send times of load ops (`"id":"lg-<run>-<writer>-<key>"`, `"value":{"s":<ns>}`,
//! written by [`op_json`] and forwarded byte for byte by the daemon), so every receiver
//! measures every op it gets; sync replies (`deltaSync`, `fullStateSync`) are skipped.

use super::stats::Histogram;
use crate::rtc::frame::Payload;
use crate::rtc::nostr::{PoolConfig, RelayPool};
use crate::rtc::peer::PeerConfig;
use crate::rtc::room::{PeerLimits, Room, RoomConfig, RoomEvent};
use crate::sync::service::CHANNEL;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::mpsc;

/// Nanoseconds since the Unix epoch (CLOCK_REALTIME): comparable across processes.
pub fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// Counters every peer of a process adds to.
#[derive(Debug, Default)]
pub struct Tally {
    pub sent: AtomicU64,
    pub send_failures: AtomicU64,
    /// Ops of other writers received.
    pub delivered: AtomicU64,
    /// Our own ops echoed back (not counted as delivered).
    pub echoed: AtomicU64,
    pub connects: AtomicU64,
    pub disconnects: AtomicU64,
    pub latency: Mutex<Histogram>,
}

impl Tally {
    pub fn reset(&self) {
        for c in [
            &self.sent,
            &self.send_failures,
            &self.delivered,
            &self.echoed,
        ] {
            c.store(0, Ordering::Relaxed);
        }
        *self.latency.lock().unwrap_or_else(|p| p.into_inner()) = Histogram::default();
    }
}

/// What a load peer needs to join.
#[derive(Debug, Clone)]
pub struct PeerSpec {
    /// Global index: writers are 0..writers; ops carry it.
    pub index: usize,
    pub relay_url: String,
    pub room: String,
    pub announce: Duration,
    pub run: String,
    /// The daemon's peer id, when known: dialled at once, as a browser dials the
    /// daemon on its announce. Otherwise the daemon dials us on ours, ten at a time.
    pub superpeer: Option<String>,
}

/// The room configuration of a load peer: browser-like, loopback only, superpeers only.
pub fn room_config(room: &str, announce: Duration, superpeer: Option<&str>) -> RoomConfig {
    let mut cfg = RoomConfig::new(room);
    cfg.dial = superpeer.map(str::to_owned).into_iter().collect();
    cfg.peer_type = None;
    cfg.only_superpeers = true;
    cfg.peer = PeerConfig {
        udp_addrs: vec!["127.0.0.1:0".into()],
        include_loopback: true,
        ..PeerConfig::default()
    };
    cfg.announce_every = announce;
    // A load peer takes whatever the daemon sends: a million-node full state is far
    // over the per-peer byte budget that protects the daemon from its peers.
    cfg.limits = PeerLimits {
        max_peers: 16,
        msg_rate: 1e12,
        msg_burst: 1e12,
        bytes_rate: 1e15,
        bytes_burst: 1e15,
    };
    cfg
}

/// Joins `room` through the relay at `url`, reconnecting quickly.
pub fn join(url: &str, cfg: RoomConfig) -> (Room, mpsc::Receiver<RoomEvent>) {
    let mut pool_cfg = PoolConfig::new(vec![url.to_owned()]);
    pool_cfg.backoff_base = Duration::from_millis(200);
    let (pool, inbound) = RelayPool::start(pool_cfg);
    Room::join(cfg, Arc::new(pool), inbound)
}

pub struct LoadPeer {
    pub spec: PeerSpec,
    pub room: Arc<Room>,
    /// The superpeer we are linked to, if any.
    daemon: Arc<Mutex<Option<String>>>,
    connected: Arc<AtomicBool>,
}

impl LoadPeer {
    pub fn start(spec: PeerSpec, tally: Arc<Tally>) -> Self {
        let cfg = room_config(&spec.room, spec.announce, spec.superpeer.as_deref());
        let (room, events) = join(&spec.relay_url, cfg);
        let peer = Self {
            spec,
            room: Arc::new(room),
            daemon: Arc::default(),
            connected: Arc::default(),
        };
        let receiver = Receiver {
            me: writer_tag(&peer.spec.run, peer.spec.index),
            run: format!("\"id\":\"lg-{}-", peer.spec.run),
            daemon: peer.daemon.clone(),
            connected: peer.connected.clone(),
            tally,
        };
        tokio::spawn(receiver.run(events));
        peer
    }

    pub fn connected(&self) -> bool {
        self.connected.load(Ordering::Relaxed)
    }

    /// Sends `ops` load ops, `per_message` to a message (browsers send one), to every
    /// peer we are linked to, as a browser broadcasts its writes: with
    /// `only_superpeers` that is the daemon alone. Waits while a link's queue is full.
    /// Returns how many ops went out.
    pub async fn write(&self, writer: &mut Writer, ops: usize, per_message: usize) -> u64 {
        if !self.connected() {
            return 0;
        }
        let mut sent = 0;
        let mut left = ops;
        while left > 0 {
            let n = left.min(per_message.max(1));
            let text = writer.message(n);
            let Ok(frames) = self.room.encode(CHANNEL, Payload::Json(&text)) else {
                return sent;
            };
            let mut reached = false;
            for to in self.room.peers() {
                reached |= self.room.send_frames_to(&to, frames.clone()).await.is_ok();
            }
            if !reached {
                return sent;
            }
            sent += n as u64;
            left -= n;
        }
        sent
    }

    pub async fn leave(&self) {
        self.room.leave().await;
    }
}

/// `lg-<run>-<writer>-`: the prefix of a writer's op ids.
fn writer_tag(run: &str, index: usize) -> String {
    format!("lg-{run}-{index}-")
}

/// Makes one writer's ops: ids cycle over `keys` nodes, so a long run holds a bounded
/// graph; every op carries its send time.
pub struct Writer {
    tag: String,
    keys: u64,
    seq: u64,
    pad: String,
    last_ms: u64,
    logical: u64,
}

impl Writer {
    pub fn new(run: &str, index: usize, keys: u64, op_bytes: usize) -> Self {
        // The fixed part of an op is about 135 bytes; the rest is padding.
        let pad = "x".repeat(op_bytes.saturating_sub(135));
        Self {
            tag: writer_tag(run, index),
            keys: keys.max(1),
            seq: 0,
            pad,
            last_ms: 0,
            logical: 0,
        }
    }

    /// One `syncGraph` message holding `n` ops.
    pub fn message(&mut self, n: usize) -> String {
        let mut out = String::from("[");
        for i in 0..n {
            if i > 0 {
                out.push(',');
            }
            self.push_op(&mut out);
        }
        out.push(']');
        out
    }

    fn push_op(&mut self, out: &mut String) {
        let ns = now_ns();
        let ms = ns / 1_000_000;
        if ms > self.last_ms {
            (self.last_ms, self.logical) = (ms, 0);
        } else {
            self.logical += 1;
        }
        let key = self.seq % self.keys;
        self.seq += 1;
        out.push_str(&op_json(
            &format!("{}{key}", self.tag),
            ns,
            &self.pad,
            self.last_ms,
            self.logical,
        ));
    }
}

/// A live upsert as a browser sends it, its value carrying the send time in ns.
pub fn op_json(id: &str, send_ns: u64, pad: &str, physical: u64, logical: u64) -> String {
    let pad = if pad.is_empty() {
        String::new()
    } else {
        format!(",\"p\":\"{pad}\"")
    };
    format!(
        r#"{{"type":"upsert","id":"{id}","value":{{"s":{send_ns}{pad}}},"timestamp":{{"physical":{physical},"logical":{logical}}}}}"#
    )
}

struct Receiver {
    /// Our own id prefix: our ops coming back are not deliveries.
    me: String,
    /// `"id":"lg-<run>-`: what marks a load op of this run.
    run: String,
    daemon: Arc<Mutex<Option<String>>>,
    connected: Arc<AtomicBool>,
    tally: Arc<Tally>,
}

impl Receiver {
    async fn run(self, mut events: mpsc::Receiver<RoomEvent>) {
        while let Some(ev) = events.recv().await {
            match ev {
                RoomEvent::Joined { peer, kind } if kind.as_deref() == Some("superpeer") => {
                    *self.daemon.lock().unwrap_or_else(|p| p.into_inner()) = Some(peer);
                    self.connected.store(true, Ordering::Relaxed);
                    self.tally.connects.fetch_add(1, Ordering::Relaxed);
                }
                RoomEvent::Left { peer } => {
                    let mut d = self.daemon.lock().unwrap_or_else(|p| p.into_inner());
                    if d.as_deref() == Some(peer.as_str()) {
                        *d = None;
                        self.connected.store(false, Ordering::Relaxed);
                        self.tally.disconnects.fetch_add(1, Ordering::Relaxed);
                    }
                }
                RoomEvent::Message { message, .. } if message.channel == CHANNEL => {
                    if let Ok(text) = std::str::from_utf8(&message.data) {
                        self.scan(text);
                    }
                }
                _ => {}
            }
        }
    }

    fn scan(&self, text: &str) {
        let head = text.get(..24).unwrap_or(text);
        if head.contains("\"deltaSync\"") || head.contains("\"fullStateSync\"") {
            return;
        }
        let now = now_ns();
        let found = scan_ops(text, &self.run, &self.me);
        if found.others.is_empty() && found.own == 0 {
            return;
        }
        self.tally
            .delivered
            .fetch_add(found.others.len() as u64, Ordering::Relaxed);
        self.tally.echoed.fetch_add(found.own, Ordering::Relaxed);
        let mut h = self.tally.latency.lock().unwrap_or_else(|p| p.into_inner());
        for sent in found.others {
            h.record(now.saturating_sub(sent) / 1000);
        }
    }
}

/// Load ops found in one message: send times of other writers' ops, and how many of
/// our own came back.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Found {
    pub others: Vec<u64>,
    pub own: u64,
}

/// Finds every load op of this run (`marker` is `"id":"lg-<run>-`) and its send time.
pub fn scan_ops(text: &str, marker: &str, me: &str) -> Found {
    let mut found = Found::default();
    let mut rest = text;
    while let Some(at) = rest.find(marker) {
        let id_start = at + "\"id\":\"".len();
        rest = &rest[id_start..];
        let own = rest.starts_with(me);
        let Some(s_at) = rest.find("\"s\":") else {
            break;
        };
        let digits: &str = &rest[s_at + 4..];
        let end = digits
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(digits.len());
        let Ok(sent) = digits[..end].parse::<u64>() else {
            continue;
        };
        rest = &digits[end..];
        if own {
            found.own += 1;
        } else {
            found.others.push(sent);
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_scanner_finds_every_op_and_tells_ours_apart() {
        let mut w1 = Writer::new("r1", 1, 10, 200);
        let mut w12 = Writer::new("r1", 12, 10, 0);
        let text = format!(
            "[{},{}]",
            w1.message(2).trim_matches(['[', ']']),
            w12.message(1).trim_matches(['[', ']'])
        );
        let found = scan_ops(&text, "\"id\":\"lg-r1-", &writer_tag("r1", 1));
        assert_eq!(found.own, 2);
        assert_eq!(found.others.len(), 1);
        assert!(found.others[0] > 1_700_000_000_000_000_000);
        // Writer 12 is not writer 1: the prefix carries the trailing dash.
        let as_12 = scan_ops(&text, "\"id\":\"lg-r1-", &writer_tag("r1", 12));
        assert_eq!((as_12.own, as_12.others.len()), (1, 2));
        // Another run's ops are not ours to count.
        assert_eq!(
            scan_ops(&text, "\"id\":\"lg-r2-", "lg-r2-1-"),
            Found::default()
        );
    }

    #[test]
    fn ops_parse_as_the_daemon_parses_them() {
        let mut w = Writer::new("r", 3, 2, 300);
        let text = w.message(3);
        let batch = crate::sync::message::parse_json(&text).unwrap();
        assert_eq!(batch.messages.len(), 3);
        assert!(batch.rejected.is_empty());
        let per_op = text.len() / 3;
        assert!((270..=330).contains(&per_op), "{per_op}");
        // Keys cycle: the third op overwrites the first node.
        assert_eq!(text.matches("\"id\":\"lg-r-3-0\"").count(), 2);
    }
}
