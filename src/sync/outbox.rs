//! One queue per peer, drained by its own task, so a slow peer delays nobody else.
//! A full state is written and framed in parts a browser can reassemble, once per
//! store version, and the framed parts are cached for every peer that asks.

use super::forward::Forwarded;
use super::shared::{CHANNEL, CachedFull, FullCache, Shared, bump};
use crate::rtc::frame::{self, Payload};
use crate::rtc::room::Delivery;
use crate::store::{FullStateCursor, SyncReply};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// A full state whose unacknowledged bytes have not fallen for this long is stalled:
/// SCTP is waiting out its retransmission timer (at least 1 s, doubling) a second
/// time. The link is dropped, and the full state goes out again on the peer's next one.
const DELIVERY_STALL: Duration = Duration::from_millis(2500);

/// A full state whose text and frames take up to this many bytes is kept, framed, until the
/// graph changes, and sent as it is to every peer that asks: writing and compressing
/// it costs far more than sending it. A bigger one is written part by part as it goes.
const FULL_CACHE_BYTES: usize = 64 << 20;

impl Outgoing {
    /// The reply to a sync taken up at `asked`.
    pub(super) fn reply(reply: SyncReply, asked: Instant) -> Self {
        match reply {
            SyncReply::Full => Outgoing::Full(asked),
            SyncReply::Delta => Outgoing::Delta(asked),
        }
    }
}

pub(super) enum Outgoing {
    Text(Arc<str>),
    Forwarded(Arc<Forwarded>),
    /// Our full state, written part by part as the peer takes them, for a sync taken
    /// up at the instant given (a catch-up's time starts there).
    Full(Instant),
    /// Our whole oplog window, hydrated, for a sync taken up at the instant given.
    Delta(Instant),
}

/// One peer's queue, drained by its own task.
pub(super) struct Outbox {
    tx: mpsc::Sender<Outgoing>,
    /// A full state (or delta) is queued and not yet started: another request for one
    /// is already covered, because it is built when its turn comes.
    full_queued: Arc<AtomicBool>,
    delta_queued: Arc<AtomicBool>,
}

pub(super) struct QueueFull;

impl Outbox {
    pub(super) fn start(shared: Arc<Shared>, peer: String) -> Self {
        let (tx, rx) = mpsc::channel(shared.cfg.outbox_len);
        let outbox = Self {
            tx,
            full_queued: Arc::default(),
            delta_queued: Arc::default(),
        };
        let drain = Drain {
            shared,
            peer,
            full_queued: outbox.full_queued.clone(),
            delta_queued: outbox.delta_queued.clone(),
        };
        tokio::spawn(drain.run(rx));
        outbox
    }

    pub(super) fn push(&self, item: Outgoing) -> Result<(), QueueFull> {
        let covered = match &item {
            Outgoing::Full(_) => self.full_queued.swap(true, Ordering::AcqRel),
            Outgoing::Delta(_) => {
                self.full_queued.load(Ordering::Acquire)
                    || self.delta_queued.swap(true, Ordering::AcqRel)
            }
            Outgoing::Text(_) | Outgoing::Forwarded(_) => false,
        };
        if covered {
            return Ok(());
        }
        self.tx.try_send(item).map_err(|_| QueueFull)
    }
}

struct Drain {
    shared: Arc<Shared>,
    peer: String,
    full_queued: Arc<AtomicBool>,
    delta_queued: Arc<AtomicBool>,
}

impl Drain {
    async fn run(self, mut rx: mpsc::Receiver<Outgoing>) {
        while let Some(item) = rx.recv().await {
            let sent = match item {
                Outgoing::Text(text) => self.send_text(&text).await,
                Outgoing::Forwarded(f) => self.send_frames(&f.text, f.frames.clone()).await,
                Outgoing::Full(asked) => {
                    self.full_queued.store(false, Ordering::Release);
                    bump(&self.shared.stats.full_replies, 1);
                    self.send_full(asked).await
                }
                Outgoing::Delta(asked) => {
                    self.delta_queued.store(false, Ordering::Release);
                    bump(&self.shared.stats.delta_replies, 1);
                    let sent = self.send_delta().await;
                    if sent {
                        let stats = &self.shared.stats.catchups;
                        stats.served(&self.peer, false, asked.elapsed());
                    }
                    sent
                }
            };
            if !sent {
                break;
            }
        }
    }

    async fn send_text(&self, text: &str) -> bool {
        match self.shared.room.encode(CHANNEL, Payload::Json(text)) {
            Ok(frames) => self.send_frames(text, frames).await,
            Err(e) => {
                tracing::error!(peer = %self.peer, error = %e, "cannot frame a sync message");
                true
            }
        }
    }

    /// Sends one message: its frames to a connected peer, or in cells mode its text
    /// through the mesh to a peer we reach through bridges.
    async fn send_frames(&self, text: &str, frames: Vec<Vec<u8>>) -> bool {
        bump(&self.shared.stats.messages_out, 1);
        self.shared
            .room
            .send_message_to(&self.peer, CHANNEL, text, Some(frames))
            .await
            .is_ok()
    }

    /// The full state at the store's current version, framed (see [`full_cache`]).
    async fn cached_full(&self) -> Option<Arc<CachedFull>> {
        full_cache(&self.shared).await
    }

    /// Sends the cached full state, or writes and frames one part at a time off the
    /// runtime, with the store locked only while a part is written, and sends it as
    /// fast as the peer takes it; then waits until the peer acknowledged every byte.
    async fn send_full(&self, asked: Instant) -> bool {
        let started = Instant::now();
        let (parts, nodes) = match self.cached_full().await {
            Some(full) => {
                self.shared.owe_full(&self.peer);
                for (text, frames) in &full.parts {
                    let mut frames = frames.clone();
                    self.shared.room.restamp(CHANNEL, &mut frames);
                    bump(&self.shared.stats.full_parts, 1);
                    if !self.send_frames(text, frames).await {
                        return false;
                    }
                }
                (full.parts.len(), full.nodes)
            }
            None => match self.stream_full().await {
                Some(sent) => sent,
                None => return false,
            },
        };
        self.await_full_delivery(asked, started, nodes, parts).await
    }

    /// Writes, frames and sends one part at a time. Returns (parts, nodes), or `None`
    /// when the link went.
    async fn stream_full(&self) -> Option<(usize, usize)> {
        let shared = self.shared.clone();
        let Ok(mut cursor) =
            tokio::task::spawn_blocking(move || shared.store().full_state_cursor()).await
        else {
            return None;
        };
        self.shared.owe_full(&self.peer);
        let (mut parts, nodes) = (0, cursor.len());
        let mut budget = self.shared.cfg.full_part_budget;
        loop {
            let shared = self.shared.clone();
            let next = tokio::task::spawn_blocking(move || {
                let frames = next_full_part(&shared, &mut cursor, &mut budget);
                (frames, cursor, budget)
            })
            .await;
            let Ok((frames, back, fitted)) = next else {
                return None;
            };
            (cursor, budget) = (back, fitted);
            match frames {
                None => break,
                Some(Ok((text, frames))) => {
                    parts += 1;
                    bump(&self.shared.stats.full_parts, 1);
                    if !self.send_frames(&text, frames).await {
                        return None;
                    }
                }
                Some(Err(e)) => {
                    tracing::error!(peer = %self.peer, error = %e, "a full-state part cannot be framed; skipped")
                }
            }
        }
        Some((parts, nodes))
    }

    async fn await_full_delivery(
        &self,
        asked: Instant,
        started: Instant,
        nodes: usize,
        parts: usize,
    ) -> bool {
        let took_ms = started.elapsed().as_millis() as u64;
        match self
            .shared
            .room
            .wait_delivered(&self.peer, DELIVERY_STALL)
            .await
        {
            Delivery::Delivered => {
                self.shared.full_delivered(&self.peer);
                bump(&self.shared.stats.full_delivered, 1);
                let stats = &self.shared.stats.catchups;
                stats.served(&self.peer, true, asked.elapsed());
                let acked_ms = started.elapsed().as_millis() as u64;
                if nodes >= 10_000 {
                    tracing::info!(peer = %self.peer, nodes, parts, took_ms, acked_ms, "full state delivered");
                } else {
                    tracing::debug!(peer = %self.peer, nodes, parts, took_ms, acked_ms, "full state delivered");
                }
                true
            }
            Delivery::Gone => {
                tracing::info!(peer = %self.peer, nodes, parts, "the link closed before the peer had the whole full state; it is owed to its next link");
                false
            }
            Delivery::Stalled { unacknowledged } => {
                bump(&self.shared.stats.full_stalled, 1);
                tracing::warn!(peer = %self.peer, nodes, parts, unacknowledged, "full state delivery stalled; dropping the link, the full state is owed to the next one");
                self.shared.room.drop_peer(&self.peer);
                false
            }
        }
    }

    async fn send_delta(&self) -> bool {
        let shared = self.shared.clone();
        let Ok(parts) = tokio::task::spawn_blocking(move || {
            let texts = shared.store().delta_messages(shared.cfg.delta_budget);
            texts
                .into_iter()
                .map(|t| {
                    let text = shared.wrap(&t);
                    shared
                        .room
                        .encode(CHANNEL, Payload::Json(&text))
                        .map(|frames| (text, frames))
                })
                .collect::<Vec<_>>()
        })
        .await
        else {
            return false;
        };
        for part in parts {
            match part {
                Ok((text, frames)) => {
                    if !self.send_frames(&text, frames).await {
                        return false;
                    }
                }
                Err(e) => {
                    tracing::error!(peer = %self.peer, error = %e, "a delta part cannot be framed; skipped")
                }
            }
        }
        true
    }
}

/// The full state at the store's current version, framed: the cached one, or one
/// written now and cached. `None` when the SM signs what we send (each message is
/// signed afresh), or when it is too big to keep.
pub(super) async fn full_cache(shared: &Arc<Shared>) -> Option<Arc<CachedFull>> {
    if shared.cfg.sm.signer.is_some() {
        return None;
    }
    let mut cache = shared.full_cache.lock().await;
    let version = shared.store().version();
    if cache.version() == Some(version) {
        return match &*cache {
            FullCache::Ready(c) => Some(c.clone()),
            _ => None,
        };
    }
    let shared = shared.clone();
    let built = tokio::task::spawn_blocking(move || {
        let (mut cursor, version) = {
            let store = shared.store();
            (store.full_state_cursor(), store.version())
        };
        let nodes = cursor.len();
        let mut budget = shared.cfg.full_part_budget;
        let (mut parts, mut bytes) = (Vec::new(), 0usize);
        while let Some(part) = next_full_part(&shared, &mut cursor, &mut budget) {
            match part {
                Ok((text, frames)) => {
                    bytes += text.len() + frames.iter().map(Vec::len).sum::<usize>();
                    if bytes > FULL_CACHE_BYTES {
                        return FullCache::TooBig(version);
                    }
                    parts.push((text, frames));
                }
                Err(e) => {
                    tracing::error!(error = %e, "a full-state part cannot be framed; skipped")
                }
            }
        }
        // Stamped with the version it started at: a change while it was written
        // makes the next peer write a new one.
        FullCache::Ready(Arc::new(CachedFull {
            version,
            nodes,
            parts,
        }))
    })
    .await
    .ok()?;
    *cache = built;
    match &*cache {
        FullCache::Ready(c) => Some(c.clone()),
        _ => None,
    }
}

/// Frames one full-state part may take: a browser reassembles at most 100 (§3).
const PART_FRAMES: usize = 96;

/// Parts are never cut smaller than this to make them fit.
const MIN_PART_BUDGET: usize = 64 << 10;

/// Writes and frames the next part. What limits a part is its compressed size, so a
/// part is first written at `budget` bytes of JSON and, if its frames are too many,
/// written again at the size its compression ratio allows; the budget found carries
/// over to the next part. Text nodes compress several times, so a graph of ten
/// thousand of them still goes out as one message, as genossrv sends it.
type Part = Result<(String, Vec<Vec<u8>>), frame::FrameError>;

fn next_full_part(
    shared: &Shared,
    cursor: &mut FullStateCursor,
    budget: &mut usize,
) -> Option<Part> {
    fit_part(
        cursor,
        budget,
        |cursor, budget| shared.store().next_full_state(cursor, budget),
        |text| {
            let message = shared.wrap(text);
            let frames = shared.room.encode(CHANNEL, Payload::Json(&message));
            (message, frames)
        },
    )
}

/// `next_full_part` without the room: `write` writes the next part's JSON at a budget,
/// `frame` wraps and frames it.
fn fit_part(
    cursor: &mut FullStateCursor,
    budget: &mut usize,
    mut write: impl FnMut(&mut FullStateCursor, usize) -> Option<String>,
    frame: impl Fn(&str) -> (String, Result<Vec<Vec<u8>>, frame::FrameError>),
) -> Option<Part> {
    loop {
        let mark = cursor.mark();
        let text = write(cursor, *budget)?;
        let (message, frames) = frame(&text);
        let count = match &frames {
            Ok(f) => f.len(),
            Err(frame::FrameError::TooLarge(n)) => *n,
            Err(_) => return Some(frames.map(|f| (message, f))),
        };
        if count <= PART_FRAMES || *budget <= MIN_PART_BUDGET {
            return Some(frames.map(|f| (message, f)));
        }
        cursor.rewind(mark);
        let fitted = text.len() as f64 * 0.9 * PART_FRAMES as f64 / count as f64;
        *budget = (fitted as usize).clamp(MIN_PART_BUDGET, *budget / 2);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Store;
    use crate::sync::shared::FULL_PART_BUDGET;
    use crate::sync::{Message, engine, message};

    /// A graph of `n` nodes whose values are `len` bytes of text, and each id's value.
    fn graph(
        n: usize,
        len: usize,
        compressible: bool,
        random: &mut impl FnMut() -> u64,
    ) -> (Store, std::collections::BTreeMap<String, String>) {
        let mut store = Store::new(1000);
        let mut expected = std::collections::BTreeMap::new();
        for i in 0..n {
            let text: String = if compressible {
                format!("node {i} lorem ipsum ")
                    .chars()
                    .cycle()
                    .take(len)
                    .collect()
            } else {
                const B64: &[u8] =
                    b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
                (0..len)
                    .map(|_| B64[(random() % 64) as usize] as char)
                    .collect()
            };
            let value = format!("\"{text}\"");
            let id = format!("n{i:05}");
            let ts = format!(
                r#"{{"physical":{},"logical":0}}"#,
                1_700_000_000_000u64 + i as u64
            );
            let op =
                format!(r#"[{{"type":"upsert","id":"{id}","value":{value},"timestamp":{ts}}}]"#);
            engine::apply_batch(
                &mut store,
                message::parse_json(&op).unwrap(),
                1_800_000_000_000,
            );
            expected.insert(id, value);
        }
        (store, expected)
    }

    /// Graph sizes and value sizes around the part boundaries: every part fits the
    /// 100 frames a browser reassembles, and the parts hold every node exactly once,
    /// value for value.
    #[test]
    fn full_state_parts_fit_a_browser_and_cover_every_node_once() {
        // (nodes, value bytes, compressible?)
        let table: &[(usize, usize, bool)] = &[
            (0, 0, false),
            (1, 10, false),
            (1, 900_000, false),
            (1, 1_700_000, false),
            (1_200, 1_024, false),
            (1_500, 1_024, false),
            (3_000, 1_024, false),
            (200, 16_369, false),
            (97, 16_384, false),
            (10_000, 40, true),
            (12_000, 120, true),
            (5, 400_000, false),
        ];
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut random = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for &(n, len, compressible) in table {
            let (store, expected) = graph(n, len, compressible, &mut random);
            let mut cursor = store.full_state_cursor();
            let mut budget = FULL_PART_BUDGET;
            let mut seen = std::collections::BTreeMap::new();
            let mut parts = 0;
            while let Some(part) = fit_part(
                &mut cursor,
                &mut budget,
                |c, b| store.next_full_state(c, b),
                |t| {
                    let m = format!("[{t}]");
                    let f = frame::encode(CHANNEL, 0, Payload::Json(&m), None);
                    (m, f)
                },
            ) {
                parts += 1;
                let (text, frames) = part.unwrap_or_else(|e| panic!("{n}x{len}: {e}"));
                assert!(
                    frames.len() <= frame::MAX_CHUNKS,
                    "{n}x{len}: {} frames",
                    frames.len()
                );
                let batch = message::parse_json(&text).unwrap();
                for m in batch.messages {
                    let Message::Full(full) = m else {
                        panic!("not a full state")
                    };
                    for (id, node) in full.nodes {
                        let v = node.value.map(|v| v.get().to_owned()).unwrap();
                        assert!(seen.insert(id.to_string(), v).is_none(), "{id} twice");
                    }
                }
            }
            assert!(
                parts >= 1,
                "{n}x{len}: even an empty graph gets one full state"
            );
            assert_eq!(seen, expected, "{n}x{len}");
        }
    }
}
