//! The link task: one per PeerConnection. It reassembles frames, answers pings at
//! once, runs the keepalive, charges the peer's budget, and writes through a bounded
//! queue.

use super::actor::Internal;
use super::overlay::Overlay;
use super::{
    EARLY_MESSAGES, LIMIT_LOG_EVERY, PeerLimits, RoomConfig, RoomEvent, RoomStats, SEND_STALL,
    Writer,
};
use crate::rate::{LogEvery, TokenBucket};
use crate::rtc::cells;
use crate::rtc::frame::{self, Reassembler};
use crate::rtc::peer::{Peer, PeerEvent};
use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;
use tokio::sync::mpsc;

/// Which of a peer's rates ran out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Rate {
    Messages,
    Bytes,
}

/// One link's allowance (PEER_MSG_RATE, PEER_BYTES_RATE), and its log of messages
/// over MAX_MESSAGE_BYTES.
struct PeerBudget {
    messages: TokenBucket,
    bytes: TokenBucket,
    oversize_log: LogEvery,
}

impl PeerBudget {
    fn new(l: &PeerLimits) -> Self {
        Self {
            messages: TokenBucket::new(l.msg_rate, l.msg_burst),
            bytes: TokenBucket::new(l.bytes_rate, l.bytes_burst),
            oversize_log: LogEvery::new(LIMIT_LOG_EVERY),
        }
    }

    /// A whole message: one message, and for a compressed one its inflated bytes (its
    /// frames were charged as they came).
    fn charge(&mut self, message: &frame::Message) -> Result<(), Rate> {
        if !self.messages.take() {
            return Err(Rate::Messages);
        }
        if message.flags & frame::DEFLATE != 0 && !self.bytes.take_n(message.data.len() as f64) {
            return Err(Rate::Bytes);
        }
        Ok(())
    }
}

pub(super) struct LinkTask {
    pub(super) peer_id: String,
    pub(super) link: u64,
    pub(super) peer: Arc<Peer>,
    pub(super) writer: Writer,
    pub(super) room_events: mpsc::Sender<RoomEvent>,
    pub(super) internal: mpsc::Sender<Internal>,
    pub(super) stats: Arc<RoomStats>,
    pub(super) cfg: RoomConfig,
    pub(super) overlay: Option<Arc<Overlay>>,
}

/// One link's share of [`RoomStats::partial_messages`], given back when the link ends
/// (however it ends: its reassembly buffer goes with it).
struct PartialGauge {
    stats: Arc<RoomStats>,
    held: u64,
}

impl PartialGauge {
    fn set(&mut self, now: usize) {
        let now = now as u64;
        let total = &self.stats.partial_messages;
        if now > self.held {
            total.fetch_add(now - self.held, Ordering::Relaxed);
        } else {
            total.fetch_sub(self.held - now, Ordering::Relaxed);
        }
        self.held = now;
    }
}

impl Drop for PartialGauge {
    fn drop(&mut self) {
        self.set(0);
    }
}

/// Warned once per process: cell envelopes arrive while CELLS is off.
static CELLS_MISMATCH_WARNED: AtomicBool = AtomicBool::new(false);

impl LinkTask {
    pub(super) async fn run(
        self,
        mut events: mpsc::Receiver<PeerEvent>,
        mut frames: mpsc::Receiver<Vec<u8>>,
    ) {
        let mut reasm = Reassembler::new(self.cfg.frames);
        let mut budget = PeerBudget::new(&self.cfg.limits);
        let mut partial = PartialGauge {
            stats: self.stats.clone(),
            held: 0,
        };
        let mut last_seen = Instant::now();
        let mut ping_sent: Option<Instant> = None;
        let mut tick = tokio::time::interval(self.cfg.keepalive_tick);
        let mut opened = false;
        let mut early = VecDeque::new();
        loop {
            tokio::select! {
                _ = self.writer.attach.notified() => {
                    if !self.deliver_early(&mut early).await {
                        break;
                    }
                }
                ev = events.recv() => match ev {
                    Some(PeerEvent::Open) => {
                        opened = true;
                        last_seen = Instant::now();
                        let _ = self.internal.send(Internal::Opened { peer: self.peer_id.clone(), link: self.link }).await;
                    }
                    Some(PeerEvent::Message(bytes)) => {
                        last_seen = Instant::now();
                        ping_sent = None;
                        self.stats.frames_in.fetch_add(1, Ordering::Relaxed);
                        self.stats.bytes_in.fetch_add(bytes.len() as u64, Ordering::Relaxed);
                        self.writer.info.bytes_in.fetch_add(bytes.len() as u64, Ordering::Relaxed);
                        if !budget.bytes.take_n(bytes.len() as f64) {
                            self.over_rate(Rate::Bytes);
                            break;
                        }
                        let keep = self.on_frame(&bytes, &mut reasm, &mut early, &mut budget).await;
                        partial.set(reasm.pending());
                        if !keep {
                            break;
                        }
                    }
                    Some(PeerEvent::Closed) | None => break,
                },
                f = frames.recv() => match f {
                    Some(f) => {
                        let sent = tokio::time::timeout(SEND_STALL, self.peer.send(&f)).await;
                        if !matches!(sent, Ok(Ok(()))) {
                            self.stats.dropped_slow.fetch_add(1, Ordering::Relaxed);
                            tracing::info!(peer = %self.peer_id, "send failed or stalled; dropping the peer");
                            break;
                        }
                    }
                    None => break,
                },
                _ = tick.tick() => {
                    if self.writer.dropped.load(Ordering::Relaxed) {
                        break;
                    }
                    if !opened {
                        continue;
                    }
                    reasm.expire(Instant::now());
                    partial.set(reasm.pending());
                    match ping_sent {
                        Some(at) if at.elapsed() > self.cfg.ping_timeout => {
                            tracing::info!(peer = %self.peer_id, "peer stopped answering pings; dropping it");
                            break;
                        }
                        None if last_seen.elapsed() > self.cfg.ping_after_idle => {
                            ping_sent = Some(Instant::now());
                            if self.peer.send(&frame::control(frame::PING)).await.is_err() {
                                break;
                            }
                        }
                        _ => {}
                    }
                }
            }
        }
        self.writer.attached.store(false, Ordering::Relaxed);
        self.peer.close().await;
        let _ = self
            .internal
            .send(Internal::Closed {
                peer: self.peer_id.clone(),
                link: self.link,
            })
            .await;
    }

    /// Returns false when the link must end: `@_leave`, a peer over its rate, or a
    /// sync layer that stopped taking messages.
    async fn on_frame(
        &self,
        bytes: &[u8],
        reasm: &mut Reassembler,
        early: &mut VecDeque<frame::Message>,
        budget: &mut PeerBudget,
    ) -> bool {
        let Ok((header, _)) = frame::parse(bytes) else {
            self.stats.bad_frames.fetch_add(1, Ordering::Relaxed);
            return true;
        };
        let control = matches!(
            header.channel.as_str(),
            frame::PING | frame::PONG | frame::LEAVE
        );
        if control && !budget.messages.take() {
            self.over_rate(Rate::Messages);
            return false;
        }
        match header.channel.as_str() {
            // Answered here, before any queue, so a busy sync layer never starves pings.
            frame::PING => {
                if self.cfg.answer_pings {
                    let _ = self.peer.send(&frame::control(frame::PONG)).await;
                }
                return true;
            }
            frame::PONG => return true,
            frame::LEAVE => return false,
            _ => {}
        }
        let pushed = reasm.push(bytes, Instant::now());
        if let Ok(Some(message)) = &pushed
            && let Err(rate) = budget.charge(message)
        {
            self.over_rate(rate);
            return false;
        }
        match pushed {
            Ok(Some(message)) if cells::channel_cell(&message.channel).is_some() => {
                let Some(overlay) = &self.overlay else {
                    self.stats
                        .cell_frames_unexpected
                        .fetch_add(1, Ordering::Relaxed);
                    if !CELLS_MISMATCH_WARNED.swap(true, Ordering::Relaxed) {
                        tracing::warn!(peer = %self.peer_id, channel = %message.channel, "a peer speaks the cells overlay (rtc: {{cells: true}}) but CELLS is off: set CELLS=1 (and CELL_SIZE to the browsers' cellSize), or writes from other cells never reach the daemon");
                    }
                    return true;
                };
                if let Some((origin, delivered)) = overlay.receive(&message) {
                    let ev = RoomEvent::Message {
                        peer: origin,
                        message: delivered,
                    };
                    if self.room_events.send_timeout(ev, SEND_STALL).await.is_err() {
                        return false;
                    }
                }
            }
            Ok(Some(message)) => {
                // A browser sends its `sync` the moment its side opens, which can be
                // before this link is attached: keep it until then.
                if early.len() < EARLY_MESSAGES {
                    early.push_back(message);
                } else {
                    tracing::debug!(peer = %self.peer_id, "too many messages before the link was attached");
                }
                return self.deliver_early(early).await;
            }
            Ok(_) => {}
            Err(frame::FrameError::MessageBytes { channel, limit }) => {
                self.stats
                    .dropped_message_bytes
                    .fetch_add(1, Ordering::Relaxed);
                if let Some(unlogged) = budget.oversize_log.allow(Instant::now()) {
                    tracing::warn!(peer = %self.peer_id, limit = "MAX_MESSAGE_BYTES", value = limit, %channel, unlogged, "message over MAX_MESSAGE_BYTES dropped");
                }
            }
            Err(e) => {
                self.stats.bad_frames.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(peer = %self.peer_id, error = %e, "bad frame");
            }
        }
        true
    }

    /// The peer sent more than PEER_MSG_RATE or PEER_BYTES_RATE allow: counted and
    /// logged once; the caller ends the link. It may come back, with a fresh budget.
    fn over_rate(&self, rate: Rate) {
        let l = &self.cfg.limits;
        let (counter, limit, value, burst) = match rate {
            Rate::Messages => (
                &self.stats.dropped_msg_rate,
                "PEER_MSG_RATE",
                l.msg_rate,
                l.msg_burst,
            ),
            Rate::Bytes => (
                &self.stats.dropped_bytes_rate,
                "PEER_BYTES_RATE",
                l.bytes_rate,
                l.bytes_burst,
            ),
        };
        counter.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(peer = %self.peer_id, limit, value, burst, "peer over its rate limit; dropping it");
    }

    /// Hands on every kept message once the link is attached, in arrival order. Waiting
    /// slows only this link; a message is never dropped: if the sync layer stays
    /// blocked, the peer goes, and resyncs when it returns.
    async fn deliver_early(&self, early: &mut VecDeque<frame::Message>) -> bool {
        if !self.writer.attached.load(Ordering::Acquire) {
            tracing::debug!(peer = %self.peer_id, link = self.link, kept = early.len(), "message kept until the link is attached");
            return true;
        }
        while let Some(message) = early.pop_front() {
            let ev = RoomEvent::Message {
                peer: self.peer_id.clone(),
                message,
            };
            if self.room_events.send_timeout(ev, SEND_STALL).await.is_err() {
                tracing::warn!(peer = %self.peer_id, "the sync layer is not taking messages; dropping the peer");
                return false;
            }
        }
        true
    }
}
