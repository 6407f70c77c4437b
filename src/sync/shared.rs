//! What the service and every outbox task share: the room, the store, the settings,
//! the counters, and the memory of which peers hold the whole graph or are owed it.
//! Incoming messages are decoded and applied here ([`Shared::receive`]).

use super::admission::{drop_replays, oversized_filter, payload_text, strict_filter};
use super::engine::{self, Applied};
use super::memo::PeerMemo;
use super::message::{self, Batch, ParseError};
use crate::rtc::frame;
use crate::rtc::room::Room;
use crate::sm::policy::Reason;
use crate::sm::{self, LogLimiter, SmConfig, SmStats};
use crate::store::{Store, SyncReply};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Peers owed a full state are remembered this long, and at most this many.
const OWED_FOR: Duration = Duration::from_secs(600);
const MAX_OWED: usize = 4096;

/// Peers known to hold the whole graph are remembered this long, and at most this
/// many; a peer forgotten gets a full state where a delta would not carry every node.
const COMPLETE_FOR: Duration = Duration::from_secs(24 * 3600);
const MAX_COMPLETE: usize = 16_384;

/// Refused live ops remembered so their replays inside deltas are refused too.
const REFUSED_OPS_KEPT: usize = 65_536;

/// One log line per signer (or peer) per this long for refused SM elements.
const SM_LOG_EVERY: Duration = Duration::from_secs(10);

/// The default MAX_VALUE_BYTES: browsers write values of a few hundred KB.
pub const DEFAULT_MAX_VALUE_BYTES: usize = 1 << 20;

/// The GenosDB sync action.
pub const CHANNEL: &str = "syncGraph";

/// The largest delta message text we send. 1 MiB is 64 frames, well inside the 100
/// frames a browser reassembles (§3), even when compression does not help.
pub(super) const DELTA_BUDGET: usize = 1 << 20;

/// The JSON size a full-state part is first written at; see `next_full_part`.
pub(super) const FULL_PART_BUDGET: usize = 6 << 20;

/// Messages queued for one peer before it counts as too slow and is dropped. A full
/// state counts as one entry: its parts are written as the peer takes them.
pub(super) const OUTBOX_LEN: usize = 256;

#[derive(Debug, Clone)]
pub struct SyncConfig {
    pub delta_budget: usize,
    pub full_part_budget: usize,
    pub outbox_len: usize,
    /// Verification of incoming ops and signing of outgoing messages.
    pub sm: SmConfig,
    /// MAX_VALUE_BYTES: a value from a peer whose JSON is longer is refused.
    pub max_value_bytes: usize,
    /// FORWARD_OPS: live ops accepted from a connected peer go to every other
    /// connected peer, gathered for this long into one message. Full mesh only: in
    /// cells mode the overlay floods them already.
    pub forward: Option<Duration>,
}

impl Default for SyncConfig {
    fn default() -> Self {
        Self {
            delta_budget: DELTA_BUDGET,
            full_part_budget: FULL_PART_BUDGET,
            outbox_len: OUTBOX_LEN,
            sm: SmConfig::default(),
            max_value_bytes: DEFAULT_MAX_VALUE_BYTES,
            forward: None,
        }
    }
}

/// Counters for /metrics.
#[derive(Debug, Default)]
pub struct SyncStats {
    pub messages_in: AtomicU64,
    pub undecodable: AtomicU64,
    pub rejected: AtomicU64,
    pub unknown: AtomicU64,
    pub merged: AtomicU64,
    pub syncs_sent: AtomicU64,
    pub full_replies: AtomicU64,
    pub full_parts: AtomicU64,
    /// Full states written ahead of a catch-up, once the graph stood still (`warm`).
    pub full_prebuilt: AtomicU64,
    /// Full states the peer's SCTP acknowledged to the last byte.
    pub full_delivered: AtomicU64,
    /// Full states whose delivery stalled (the link was dropped, the full state owed).
    pub full_stalled: AtomicU64,
    /// Full states sent where the protocol asks for a delta: the delta would not carry
    /// every node and the peer was not known to hold them.
    pub full_for_delta: AtomicU64,
    pub delta_replies: AtomicU64,
    pub counter_replies: AtomicU64,
    pub unasked_replies: AtomicU64,
    pub messages_out: AtomicU64,
    pub slow_peers: AtomicU64,
    /// Ops and full-state nodes refused for a value over MAX_VALUE_BYTES.
    pub oversized_values: AtomicU64,
    pub forwarded_ops: AtomicU64,
    pub forwarded_messages: AtomicU64,
    /// Catch-ups served, each with its time.
    pub catchups: super::catchups::Catchups,
}

pub(super) fn bump(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}

/// What the service and every outbox task share.
pub(super) struct Shared {
    pub(super) room: Arc<Room>,
    store: Arc<Mutex<Store>>,
    pub(super) cfg: SyncConfig,
    pub(super) stats: Arc<SyncStats>,
    sm_stats: Arc<SmStats>,
    sm_log: LogLimiter,
    /// Values over MAX_VALUE_BYTES: one line per peer per SM_LOG_EVERY.
    value_log: LogLimiter,
    refused: Mutex<sm::Refused>,
    /// Peers owed a full state: one went out to them and was not acknowledged to the
    /// last byte (the link closed, or delivery stalled). Kept across their links: the
    /// next `sync` from them gets a full state even where a delta would do, because a
    /// delta covers only the oplog window and the missing nodes may be older.
    owed: Mutex<PeerMemo>,
    /// Peers known to hold the whole graph: our full state reached them to the last
    /// byte, or their own full state held every id we hold. Only these get a delta
    /// when the delta would not carry every node (see [`Shared::reply_to_sync`]).
    complete: Mutex<PeerMemo>,
    /// The full state last written, framed, for every peer that asks before the graph
    /// changes (see `Drain::cached_full` in outbox.rs). Locked while one is written, so peers that
    /// ask at once wait for it rather than each writing their own.
    pub(super) full_cache: tokio::sync::Mutex<FullCache>,
}

/// A full state written and framed once, at one store version.
pub(super) struct CachedFull {
    pub(super) version: u64,
    pub(super) nodes: usize,
    pub(super) parts: Vec<(String, Vec<Vec<u8>>)>,
}

#[derive(Default)]
pub(super) enum FullCache {
    #[default]
    Empty,
    Ready(Arc<CachedFull>),
    /// The full state at this version was over FULL_CACHE_BYTES: served streaming.
    TooBig(u64),
}

impl FullCache {
    /// The store version it was written at, if any.
    pub(super) fn version(&self) -> Option<u64> {
        match self {
            FullCache::Ready(c) => Some(c.version),
            FullCache::TooBig(v) => Some(*v),
            FullCache::Empty => None,
        }
    }
}

impl Shared {
    pub(super) fn new(
        room: Arc<Room>,
        store: Arc<Mutex<Store>>,
        cfg: SyncConfig,
        stats: Arc<SyncStats>,
        sm_stats: Arc<SmStats>,
    ) -> Self {
        Self {
            room,
            store,
            cfg,
            stats,
            sm_stats,
            sm_log: LogLimiter::new(SM_LOG_EVERY),
            value_log: LogLimiter::new(SM_LOG_EVERY),
            refused: Mutex::new(sm::Refused::new(REFUSED_OPS_KEPT)),
            owed: Mutex::new(PeerMemo::new(OWED_FOR, MAX_OWED)),
            complete: Mutex::new(PeerMemo::new(COMPLETE_FOR, MAX_COMPLETE)),
            full_cache: tokio::sync::Mutex::default(),
        }
    }

    fn owed(&self) -> MutexGuard<'_, PeerMemo> {
        self.owed.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn complete(&self) -> MutexGuard<'_, PeerMemo> {
        self.complete.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A full state is going out to `peer`: owed until it is acknowledged.
    pub(super) fn owe_full(&self, peer: &str) {
        self.owed().note(peer, Instant::now());
    }

    pub(super) fn full_delivered(&self, peer: &str) {
        self.owed().forget(peer);
        self.holds_all(peer);
    }

    /// `peer` holds every node we hold.
    pub(super) fn holds_all(&self, peer: &str) {
        self.complete().note(peer, Instant::now());
    }

    pub(super) fn owes_full(&self, peer: &str) -> bool {
        self.owed().holds(peer, Instant::now())
    }

    /// Upgrades a delta reply to a full state when the delta may leave `peer` short.
    ///
    /// A `sync` timestamp inside our oplog window earns a delta by the protocol (§8),
    /// but the timestamp only says what the peer saw last, not that it holds what came
    /// before: a fresh browser that got part of a full state from another peer which
    /// then vanished (or a live op from one) carries a recent timestamp and a partial
    /// graph. A delta is the oplog window only, so such a peer would never get the
    /// older nodes. It therefore gets a full state, unless the delta carries every node
    /// anyway, or the peer is known to hold the whole graph.
    pub(super) fn reply_to_sync(&self, peer: &str, reply: Option<SyncReply>) -> Option<SyncReply> {
        if reply != Some(SyncReply::Delta) {
            return reply;
        }
        if self.owes_full(peer) {
            tracing::debug!(%peer, "a full state is owed to this peer; sent instead of a delta");
            return Some(SyncReply::Full);
        }
        if self.complete().holds(peer, Instant::now()) || self.store().delta_covers_graph() {
            return reply;
        }
        tracing::debug!(%peer, "a delta would not carry every node and this peer is not known to hold them; a full state instead");
        bump(&self.stats.full_for_delta, 1);
        Some(SyncReply::Full)
    }

    pub(super) fn store(&self) -> MutexGuard<'_, Store> {
        self.store.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// One outgoing message holding `element`, signed when the daemon has SM_KEY.
    pub(super) fn wrap(&self, element: &str) -> String {
        let Some(signer) = &self.cfg.sm.signer else {
            return format!("[{element}]");
        };
        match sm::sign_element(signer, element) {
            Ok(signed) => {
                bump(&self.sm_stats.signed, 1);
                format!("[{signed}]")
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot sign an outgoing element; sent unsigned");
                format!("[{element}]")
            }
        }
    }

    /// Decodes a message and applies it: through the Security Manager's policy when
    /// SM_ENABLED, with signatures checked before the store is locked.
    pub(super) fn receive(
        &self,
        peer: &str,
        message: &frame::Message,
        now: u64,
    ) -> Result<Received, ParseError> {
        let text = payload_text(message)?;
        let elements = message::elements(&text)?;
        let Some(policy) = &self.cfg.sm.verify else {
            let mut batch = message::parse_elements(elements.iter().copied());
            self.refuse_oversized(peer, &mut batch);
            let origins = std::mem::take(&mut batch.origins);
            let applied = engine::apply_batch(&mut self.store(), batch, now);
            let forward = self.to_forward(&applied, &origins, |i| elements[i].get());
            return Ok(Received { applied, forward });
        };
        let checked = sm::check_all(&elements);
        let mut store = self.store();
        let filtered = sm::filter(policy, &elements, checked, &store, now);
        let mut batch = message::parse_elements(filtered.kept.iter().map(|c| c.as_ref()));
        let replays = {
            let mut refused = self.refused.lock().unwrap_or_else(|p| p.into_inner());
            for op in filtered.dropped.iter().filter_map(|d| d.op.clone()) {
                refused.insert(op);
            }
            drop_replays(&refused, &mut batch)
        };
        let strict = strict_filter(policy, &mut batch);
        self.refuse_oversized(peer, &mut batch);
        let laundered = replays + strict;
        let origins = std::mem::take(&mut batch.origins);
        let applied = engine::apply_batch(&mut store, batch, now);
        drop(store);
        let forward = self.to_forward(&applied, &origins, |i| filtered.kept[i].get());
        bump(&self.sm_stats.accepted, filtered.kept.len() as u64);
        (0..replays).for_each(|_| self.sm_stats.reject(Reason::Laundered));
        (0..strict).for_each(|_| self.sm_stats.reject(Reason::Strict));
        for d in &filtered.dropped {
            self.sm_stats.reject(d.reason);
            let who = d.signer.as_deref().unwrap_or(peer);
            if let Some(suppressed) = self.sm_log.allow(who, Instant::now()) {
                tracing::warn!(
                    %peer,
                    signer = d.signer.as_deref().unwrap_or("-"),
                    kind = %d.kind,
                    reason = d.reason.as_str(),
                    suppressed,
                    "SM: refused an element"
                );
            }
        }
        if laundered > 0 && self.sm_log.allow(peer, Instant::now()).is_some() {
            tracing::warn!(
                %peer,
                ops = laundered,
                "SM: refused ops inside a delta or full state (a replay of a refused live op, or under SM_STRICT a user node naming an unlisted superadmin)"
            );
        }
        Ok(Received { applied, forward })
    }

    /// FORWARD_OPS: the exact text (signature included) of each live op that changed
    /// the store. An op that changed nothing is not handed on, so two forwarding
    /// daemons never bounce an op between them.
    fn to_forward<'a>(
        &self,
        applied: &Applied,
        origins: &[usize],
        element: impl Fn(usize) -> &'a str,
    ) -> Vec<String> {
        if self.cfg.forward.is_none() || self.room.cells() {
            return Vec::new();
        }
        applied
            .merged_ops
            .iter()
            .filter_map(|&m| origins.get(m))
            .map(|&e| element(e).to_owned())
            .collect()
    }
}

/// What a message from a peer did, and the live ops to forward.
pub(super) struct Received {
    pub(super) applied: Applied,
    pub(super) forward: Vec<String>,
}

impl Shared {
    /// MAX_VALUE_BYTES: drops each op and full-state node with a larger value from
    /// the batch (the rest still applies); counted, and logged once per peer per 10 s.
    fn refuse_oversized(&self, peer: &str, batch: &mut Batch) {
        let max = self.cfg.max_value_bytes;
        let refused = oversized_filter(max, batch);
        if refused == 0 {
            return;
        }
        bump(&self.stats.oversized_values, refused as u64);
        if let Some(unlogged) = self.value_log.allow(peer, Instant::now()) {
            tracing::warn!(
                %peer,
                limit = "MAX_VALUE_BYTES",
                value = max,
                refused,
                unlogged,
                "refused values over MAX_VALUE_BYTES"
            );
        }
    }
}
