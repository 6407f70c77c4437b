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

/// What one link task keeps between events.
struct LinkState {
    reasm: Reassembler,
    budget: PeerBudget,
    partial: PartialGauge,
    last_seen: Instant,
    ping_sent: Option<Instant>,
    opened: bool,
    /// Messages that came before the link was attached.
    early: VecDeque<frame::Message>,
}

impl LinkTask {
    pub(super) async fn run(
        self,
        mut events: mpsc::Receiver<PeerEvent>,
        mut frames: mpsc::Receiver<Vec<u8>>,
    ) {
        let mut st = LinkState {
            reasm: Reassembler::new(self.cfg.frames),
            budget: PeerBudget::new(&self.cfg.limits),
            partial: PartialGauge {
                stats: self.stats.clone(),
                held: 0,
            },
            last_seen: Instant::now(),
            ping_sent: None,
            opened: false,
            early: VecDeque::new(),
        };
        let mut tick = tokio::time::interval(self.cfg.keepalive_tick);
        loop {
            let keep = tokio::select! {
                _ = self.writer.attach.notified() => self.deliver_early(&mut st.early).await,
                ev = events.recv() => self.on_event(&mut st, ev).await,
                f = frames.recv() => self.on_outgoing(f).await,
                _ = tick.tick() => self.on_tick(&mut st).await,
            };
            if !keep {
                break;
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

    /// An event of the PeerConnection; false when the link must end.
    async fn on_event(&self, st: &mut LinkState, ev: Option<PeerEvent>) -> bool {
        match ev {
            Some(PeerEvent::Open) => {
                st.opened = true;
                st.last_seen = Instant::now();
                let _ = self
                    .internal
                    .send(Internal::Opened {
                        peer: self.peer_id.clone(),
                        link: self.link,
                    })
                    .await;
                true
            }
            Some(PeerEvent::Message(bytes)) => {
                st.last_seen = Instant::now();
                st.ping_sent = None;
                let n = bytes.len() as u64;
                self.stats.frames_in.fetch_add(1, Ordering::Relaxed);
                self.stats.bytes_in.fetch_add(n, Ordering::Relaxed);
                self.writer.info.bytes_in.fetch_add(n, Ordering::Relaxed);
                if !st.budget.bytes.take_n(bytes.len() as f64) {
                    self.over_rate(Rate::Bytes);
                    return false;
                }
                let keep = self.on_frame(&bytes, st).await;
                st.partial.set(st.reasm.pending());
                keep
            }
            Some(PeerEvent::Closed) | None => false,
        }
    }

    /// A frame queued for the peer: handed to SCTP, or the peer goes when it stalls.
    async fn on_outgoing(&self, f: Option<Vec<u8>>) -> bool {
        let Some(f) = f else { return false };
        let sent = tokio::time::timeout(SEND_STALL, self.peer.send(&f)).await;
        if !matches!(sent, Ok(Ok(()))) {
            self.stats.dropped_slow.fetch_add(1, Ordering::Relaxed);
            tracing::info!(peer = %self.peer_id, "send failed or stalled; dropping the peer");
            return false;
        }
        true
    }

    /// The keepalive: expires stalled halves, pings an idle peer, drops a deaf one.
    async fn on_tick(&self, st: &mut LinkState) -> bool {
        if self.writer.dropped.load(Ordering::Relaxed) {
            return false;
        }
        if !st.opened {
            return true;
        }
        st.reasm.expire(Instant::now());
        st.partial.set(st.reasm.pending());
        match st.ping_sent {
            Some(at) if at.elapsed() > self.cfg.ping_timeout => {
                tracing::info!(peer = %self.peer_id, "peer stopped answering pings; dropping it");
                return false;
            }
            None if st.last_seen.elapsed() > self.cfg.ping_after_idle => {
                st.ping_sent = Some(Instant::now());
                if self.peer.send(&frame::control(frame::PING)).await.is_err() {
                    return false;
                }
            }
            _ => {}
        }
        true
    }

    /// Returns false when the link must end: `@_leave`, a peer over its rate, or a
    /// sync layer that stopped taking messages.
    async fn on_frame(&self, bytes: &[u8], st: &mut LinkState) -> bool {
        let Ok((header, _)) = frame::parse(bytes) else {
            self.stats.bad_frames.fetch_add(1, Ordering::Relaxed);
            return true;
        };
        if let Some(keep) = self.on_control(&header.channel, &mut st.budget).await {
            return keep;
        }
        let pushed = st.reasm.push(bytes, Instant::now());
        if let Ok(Some(message)) = &pushed
            && let Err(rate) = st.budget.charge(message)
        {
            self.over_rate(rate);
            return false;
        }
        match pushed {
            Ok(Some(message)) if cells::channel_cell(&message.channel).is_some() => {
                self.on_cell_message(&message).await
            }
            Ok(Some(message)) => {
                // A browser sends its `sync` the moment its side opens, which can be
                // before this link is attached: keep it until then.
                if st.early.len() < EARLY_MESSAGES {
                    st.early.push_back(message);
                } else {
                    tracing::debug!(peer = %self.peer_id, "too many messages before the link was attached");
                }
                self.deliver_early(&mut st.early).await
            }
            Ok(_) => true,
            Err(e) => {
                self.frame_refused(e, &mut st.budget);
                true
            }
        }
    }

    /// `@_ping`, `@_pong` and `@_leave`, each one message of the budget: Some(keep
    /// the link) when `channel` is one of them.
    async fn on_control(&self, channel: &str, budget: &mut PeerBudget) -> Option<bool> {
        let control = matches!(channel, frame::PING | frame::PONG | frame::LEAVE);
        if control && !budget.messages.take() {
            self.over_rate(Rate::Messages);
            return Some(false);
        }
        match channel {
            // Answered here, before any queue, so a busy sync layer never starves pings.
            frame::PING => {
                if self.cfg.answer_pings {
                    let _ = self.peer.send(&frame::control(frame::PONG)).await;
                }
                Some(true)
            }
            frame::PONG => Some(true),
            frame::LEAVE => Some(false),
            _ => None,
        }
    }

    /// An envelope on a cell channel: handed to the overlay, and what it carries for
    /// us passed on as a message from its origin.
    async fn on_cell_message(&self, message: &frame::Message) -> bool {
        let Some(overlay) = &self.overlay else {
            self.stats
                .cell_frames_unexpected
                .fetch_add(1, Ordering::Relaxed);
            if !CELLS_MISMATCH_WARNED.swap(true, Ordering::Relaxed) {
                tracing::warn!(peer = %self.peer_id, channel = %message.channel, "a peer speaks the cells overlay (rtc: {{cells: true}}) but CELLS is off: set CELLS=1 (and CELL_SIZE to the browsers' cellSize), or writes from other cells never reach the daemon");
            }
            return true;
        };
        let Some((origin, delivered)) = overlay.receive(message) else {
            return true;
        };
        let ev = RoomEvent::Message {
            peer: origin,
            message: delivered,
        };
        self.room_events.send_timeout(ev, SEND_STALL).await.is_ok()
    }

    /// A frame the reassembler refused: counted (and an oversized message logged).
    fn frame_refused(&self, e: frame::FrameError, budget: &mut PeerBudget) {
        match e {
            frame::FrameError::MessageBytes { channel, limit } => {
                self.stats
                    .dropped_message_bytes
                    .fetch_add(1, Ordering::Relaxed);
                if let Some(unlogged) = budget.oversize_log.allow(Instant::now()) {
                    tracing::warn!(peer = %self.peer_id, limit = "MAX_MESSAGE_BYTES", value = limit, %channel, unlogged, "message over MAX_MESSAGE_BYTES dropped");
                }
            }
            e => {
                self.stats.bad_frames.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(peer = %self.peer_id, error = %e, "bad frame");
            }
        }
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
