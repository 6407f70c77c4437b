//! The sync layer at run time: takes the room's events, applies what peers send
//! through the store, and sends each peer its syncs and replies through a queue of
//! its own, so a slow peer delays nobody else.

use super::engine::{self, Applied, Engine};
use super::local::{self, LocalError};
use super::memo::PeerMemo;
use super::message::{self, Batch, Message, ParseError};
use crate::persist::unix_ms;
use crate::rtc::frame::{self, Payload};
use crate::rtc::room::{Delivery, Room, RoomEvent};
use crate::sm::policy::{Policy, Reason};
use crate::sm::{self, LogLimiter, SmConfig, SmStats};
use crate::store::{FullStateCursor, Hlc, Op, Store, SyncReply};
use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};

/// Cells mode: peers reached through the mesh are forgotten after this much silence.
const MESH_PEER_IDLE: Duration = Duration::from_secs(120);
/// Cells mode: most peers reached through the mesh at once.
const MAX_MESH_PEERS: usize = 4096;

/// A full state whose unacknowledged bytes have not fallen for this long is stalled:
/// SCTP is waiting out its retransmission timer (at least 1 s, doubling) a second
/// time. The link is dropped, and the full state goes out again on the peer's next one.
pub const DELIVERY_STALL: Duration = Duration::from_millis(2500);

/// Peers owed a full state are remembered this long, and at most this many.
const OWED_FOR: Duration = Duration::from_secs(600);
const MAX_OWED: usize = 4096;

/// Peers known to hold the whole graph are remembered this long, and at most this
/// many; a peer forgotten gets a full state where a delta would not carry every node.
const COMPLETE_FOR: Duration = Duration::from_secs(24 * 3600);
const MAX_COMPLETE: usize = 16_384;

/// A full state whose text and frames take up to this many bytes is kept, framed, until the
/// graph changes, and sent as it is to every peer that asks: writing and compressing
/// it costs far more than sending it. A bigger one is written part by part as it goes.
const FULL_CACHE_BYTES: usize = 64 << 20;

/// Refused live ops remembered so their replays inside deltas are refused too.
const REFUSED_OPS_KEPT: usize = 65_536;

/// One log line per signer (or peer) per this long for refused SM elements.
const SM_LOG_EVERY: Duration = Duration::from_secs(10);

/// The GenosDB sync action.
pub const CHANNEL: &str = "syncGraph";

/// The largest delta message text we send. 1 MiB is 64 frames, well inside the 100
/// frames a browser reassembles (§3), even when compression does not help.
pub const DELTA_BUDGET: usize = 1 << 20;

/// The JSON size a full-state part is first written at; see `next_full_part`.
pub const FULL_PART_BUDGET: usize = 6 << 20;

/// Messages queued for one peer before it counts as too slow and is dropped. A full
/// state counts as one entry: its parts are written as the peer takes them.
pub const OUTBOX_LEN: usize = 256;

/// The largest message of forwarded ops (FORWARD_OPS): a tick that gathered more is
/// sent as several. 256 KiB of JSON deflates in about a millisecond.
pub const FORWARD_BUDGET: usize = 256 << 10;

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
            max_value_bytes: crate::config::DEFAULT_MAX_VALUE_BYTES,
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
}

fn bump(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}

/// Joins and leaves, for the peer count and the logs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerChange {
    Joined { peer: String, kind: Option<String> },
    Left { peer: String },
}

/// A write made by this process.
#[derive(Debug, Clone)]
pub enum LocalWrite {
    Put { id: String, value: String },
    Link { source: String, target: String },
    Remove { id: String },
}

#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error(transparent)]
    Local(#[from] LocalError),
    #[error("the sync layer has stopped")]
    Stopped,
}

/// Told the peer count after every join and leave.
type OnPeers = Box<dyn Fn(usize, &PeerChange) + Send>;

type WriteReply = oneshot::Sender<Result<Hlc, LocalError>>;

/// The handle the daemon, tests and tools hold.
#[derive(Clone)]
pub struct SyncHandle {
    writes: mpsc::Sender<(LocalWrite, WriteReply)>,
    pub stats: Arc<SyncStats>,
    pub sm_stats: Arc<SmStats>,
    /// Peers whose first sync exchange is still going on.
    pub unsettled: Arc<AtomicUsize>,
}

impl SyncHandle {
    /// Applies a write locally and broadcasts it to every connected peer.
    pub async fn write(&self, write: LocalWrite) -> Result<Hlc, WriteError> {
        let (tx, rx) = oneshot::channel();
        self.writes
            .send((write, tx))
            .await
            .map_err(|_| WriteError::Stopped)?;
        Ok(rx.await.map_err(|_| WriteError::Stopped)??)
    }

    pub async fn put(&self, id: &str, value: &str) -> Result<Hlc, WriteError> {
        self.write(LocalWrite::Put {
            id: id.into(),
            value: value.into(),
        })
        .await
    }

    pub async fn link(&self, source: &str, target: &str) -> Result<Hlc, WriteError> {
        self.write(LocalWrite::Link {
            source: source.into(),
            target: target.into(),
        })
        .await
    }

    pub async fn remove(&self, id: &str) -> Result<Hlc, WriteError> {
        self.write(LocalWrite::Remove { id: id.into() }).await
    }
}

/// Starts the sync layer on a joined room. It runs until the room's events end.
pub fn start(
    room: Arc<Room>,
    events: mpsc::Receiver<RoomEvent>,
    store: Arc<Mutex<Store>>,
    cfg: SyncConfig,
    on_peers: impl Fn(usize, &PeerChange) + Send + 'static,
) -> SyncHandle {
    let stats = Arc::new(SyncStats::default());
    let sm_stats = Arc::new(SmStats::default());
    let unsettled = Arc::new(AtomicUsize::new(0));
    let (writes_tx, writes) = mpsc::channel(64);
    let service = Service {
        shared: Arc::new(Shared {
            room,
            store,
            cfg,
            stats: stats.clone(),
            sm_stats: sm_stats.clone(),
            sm_log: LogLimiter::new(SM_LOG_EVERY),
            value_log: LogLimiter::new(SM_LOG_EVERY),
            refused: Mutex::new(sm::Refused::new(REFUSED_OPS_KEPT)),
            owed: Mutex::new(PeerMemo::new(OWED_FOR, MAX_OWED)),
            complete: Mutex::new(PeerMemo::new(COMPLETE_FOR, MAX_COMPLETE)),
            full_cache: tokio::sync::Mutex::default(),
        }),
        engine: Engine::default(),
        outboxes: HashMap::new(),
        on_peers: Box::new(on_peers),
        unsettled: unsettled.clone(),
        mesh_peers: HashMap::new(),
        forward: Forwarder::default(),
    };
    tokio::spawn(service.run(events, writes));
    SyncHandle {
        writes: writes_tx,
        stats,
        sm_stats,
        unsettled,
    }
}

/// What the service and every outbox task share.
struct Shared {
    room: Arc<Room>,
    store: Arc<Mutex<Store>>,
    cfg: SyncConfig,
    stats: Arc<SyncStats>,
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
    /// changes (see [`Drain::cached_full`]). Locked while one is written, so peers that
    /// ask at once wait for it rather than each writing their own.
    full_cache: tokio::sync::Mutex<FullCache>,
}

/// A full state written and framed once, at one store version.
struct CachedFull {
    version: u64,
    nodes: usize,
    parts: Vec<(String, Vec<Vec<u8>>)>,
}

#[derive(Default)]
enum FullCache {
    #[default]
    Empty,
    Ready(Arc<CachedFull>),
    /// The full state at this version was over FULL_CACHE_BYTES: served streaming.
    TooBig(u64),
}

impl Shared {
    fn owed(&self) -> MutexGuard<'_, PeerMemo> {
        self.owed.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn complete(&self) -> MutexGuard<'_, PeerMemo> {
        self.complete.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A full state is going out to `peer`: owed until it is acknowledged.
    fn owe_full(&self, peer: &str) {
        self.owed().note(peer, Instant::now());
    }

    fn full_delivered(&self, peer: &str) {
        self.owed().forget(peer);
        self.holds_all(peer);
    }

    /// `peer` holds every node we hold.
    fn holds_all(&self, peer: &str) {
        self.complete().note(peer, Instant::now());
    }

    fn owes_full(&self, peer: &str) -> bool {
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
    fn reply_to_sync(&self, peer: &str, reply: Option<SyncReply>) -> Option<SyncReply> {
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

    fn store(&self) -> MutexGuard<'_, Store> {
        self.store.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// One outgoing message holding `element`, signed when the daemon has SM_KEY.
    fn wrap(&self, element: &str) -> String {
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
    fn receive(
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
struct Received {
    applied: Applied,
    forward: Vec<String>,
}

/// FORWARD_OPS: live ops gathered since the last send, with who sent them.
#[derive(Default)]
struct Forwarder {
    ops: Vec<String>,
    bytes: usize,
    /// When the gathered ops go out.
    due: Option<Instant>,
    /// When the last message went out: ops go out at once after a quiet interval, and
    /// at most once per interval under load.
    last_sent: Option<Instant>,
    /// The peer every gathered op came from, while there is only one: it is spared
    /// its own ops (sending them would be harmless, merges are idempotent).
    origin: Option<String>,
    mixed: bool,
}

impl Forwarder {
    fn gather(&mut self, peer: &str, ops: Vec<String>, every: Duration) {
        if ops.is_empty() {
            return;
        }
        if self.ops.is_empty() {
            let now = Instant::now();
            self.due = Some(self.last_sent.map_or(now, |at| (at + every).max(now)));
            self.origin = Some(peer.to_owned());
            self.mixed = false;
        } else if self.origin.as_deref() != Some(peer) {
            self.mixed = true;
        }
        self.bytes += ops.iter().map(|o| o.len() + 1).sum::<usize>();
        self.ops.extend(ops);
    }

    /// The gathered ops as messages of at most FORWARD_BUDGET bytes (one op larger
    /// than that goes alone), and the peer to spare, if any.
    /// Each message comes with the number of ops it holds.
    fn take(&mut self) -> (Vec<(String, usize)>, Option<String>) {
        if self.ops.is_empty() {
            self.due = None;
            return (Vec::new(), None);
        }
        let origin = if self.mixed { None } else { self.origin.take() };
        let mut messages = Vec::new();
        let (mut text, mut n) = (String::new(), 0);
        for op in self.ops.drain(..) {
            if n > 0 && text.len() + op.len() + 2 > FORWARD_BUDGET {
                text.push(']');
                messages.push((std::mem::take(&mut text), n));
                n = 0;
            }
            text.push(if n == 0 { '[' } else { ',' });
            text.push_str(&op);
            n += 1;
        }
        if n > 0 {
            text.push(']');
            messages.push((text, n));
        }
        self.bytes = 0;
        self.due = None;
        self.last_sent = Some(Instant::now());
        self.origin = None;
        self.mixed = false;
        (messages, origin)
    }
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

/// Drops ops and full-state nodes whose value's JSON text is longer than `max` bytes;
/// returns how many.
fn oversized_filter(max: usize, batch: &mut Batch) -> usize {
    let too_big =
        |v: &Option<crate::store::RawJson>| v.as_ref().is_some_and(|v| v.get().len() > max);
    let mut refused = 0;
    let mut keep = |bad: bool| {
        refused += usize::from(bad);
        !bad
    };
    // `origins` stays parallel to `messages`: forwarding finds each op's element by it.
    let mut kept = Vec::with_capacity(batch.messages.len());
    for msg in &mut batch.messages {
        kept.push(match msg {
            Message::Op(Op::Upsert(u)) => keep(too_big(&u.value)),
            Message::Full(full) => {
                full.nodes.retain(|(_, node)| keep(too_big(&node.value)));
                true
            }
            Message::Delta { ops, .. } => {
                ops.retain(|op| match op {
                    Op::Upsert(u) => keep(too_big(&u.value)),
                    _ => true,
                });
                true
            }
            _ => true,
        });
    }
    let mut flags = kept.iter();
    batch.messages.retain(|_| *flags.next().unwrap_or(&true));
    if batch.origins.len() == kept.len() {
        let mut flags = kept.iter();
        batch.origins.retain(|_| *flags.next().unwrap_or(&true));
    }
    refused
}

/// The payload as JSON text; MessagePack is converted (§6.5).
fn payload_text(message: &frame::Message) -> Result<Cow<'_, str>, ParseError> {
    if message.is_binary() {
        Ok(Cow::Owned(message::msgpack_to_json(&message.data)?))
    } else if message.is_json() {
        std::str::from_utf8(&message.data)
            .map(Cow::Borrowed)
            .map_err(|_| ParseError::Utf8)
    } else {
        // A JS string: a browser's handler finds no `type` in it and ignores it.
        Err(ParseError::Shape)
    }
}

/// Drops, from deltas and full states, exact replays of live ops the policy refused.
fn drop_replays(refused: &sm::Refused, batch: &mut Batch) -> usize {
    if refused.is_empty() {
        return 0;
    }
    let mut dropped = 0;
    for msg in &mut batch.messages {
        match msg {
            Message::Full(full) => full.nodes.retain(|(id, node)| {
                let bad = node.timestamp.is_some_and(|ts| refused.contains(id, ts));
                dropped += usize::from(bad);
                !bad
            }),
            Message::Delta { ops, .. } => ops.retain(|op| {
                let bad = match op {
                    Op::Upsert(u) => refused.contains(&u.id, u.ts),
                    Op::Remove(r) => refused.contains(&r.id, r.ts),
                    Op::Link(l) => refused.contains(&sm::link_key(&l.source, &l.target), l.ts),
                };
                dropped += usize::from(bad);
                !bad
            }),
            _ => {}
        }
    }
    dropped
}

/// SM_STRICT: drops laundered superadmin `user:` nodes from deltas and full states.
fn strict_filter(policy: &Policy, batch: &mut Batch) -> usize {
    if !policy.strict {
        return 0;
    }
    let mut refused = 0;
    for msg in &mut batch.messages {
        match msg {
            Message::Full(full) => full.nodes.retain(|(id, node)| {
                let bad = policy.strict_refuses(id, node.value.as_ref().map(|v| v.get()));
                refused += usize::from(bad);
                !bad
            }),
            Message::Delta { ops, .. } => ops.retain(|op| {
                let bad = matches!(op, Op::Upsert(u)
                    if policy.strict_refuses(&u.id, u.value.as_ref().map(|v| v.get())));
                refused += usize::from(bad);
                !bad
            }),
            _ => {}
        }
    }
    refused
}

struct Service {
    shared: Arc<Shared>,
    engine: Engine,
    outboxes: HashMap<String, Outbox>,
    on_peers: OnPeers,
    unsettled: Arc<AtomicUsize>,
    /// Cells mode: peers reached through the mesh, with when we last heard them.
    mesh_peers: HashMap<String, Instant>,
    forward: Forwarder,
}

impl Service {
    async fn run(
        mut self,
        mut events: mpsc::Receiver<RoomEvent>,
        mut writes: mpsc::Receiver<(LocalWrite, WriteReply)>,
    ) {
        let mut writes_open = true;
        // Keeps `unsettled` current while nothing else happens.
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let due = self.engine.next_due();
            tokio::select! {
                ev = events.recv() => match ev {
                    Some(ev) => self.on_event(ev).await,
                    None => break,
                },
                w = writes.recv(), if writes_open => match w {
                    Some((write, reply)) => self.on_write(write, reply),
                    None => writes_open = false,
                },
                _ = sleep_until(due), if due.is_some() => {
                    self.send_due_syncs();
                    self.reply_unasked();
                }
                _ = sleep_until(self.forward.due), if self.forward.due.is_some() => {
                    self.send_forwarded();
                }
                _ = tick.tick() => self.expire_mesh_peers(),
            }
            self.unsettled
                .store(self.engine.unsettled(Instant::now()), Ordering::Relaxed);
        }
    }

    async fn on_event(&mut self, ev: RoomEvent) {
        match ev {
            RoomEvent::Joined { peer, kind } => {
                self.mesh_peers.remove(&peer);
                let outbox = Outbox::start(self.shared.clone(), peer.clone());
                self.outboxes.insert(peer.clone(), outbox);
                self.engine.join(&peer, Instant::now());
                self.peers_changed(PeerChange::Joined { peer, kind });
                self.send_due_syncs();
            }
            RoomEvent::Left { peer } => {
                self.forget(&peer);
                self.peers_changed(PeerChange::Left { peer });
            }
            RoomEvent::Message { peer, message } if message.channel == CHANNEL => {
                if !self.outboxes.contains_key(&peer) && self.shared.room.cells() {
                    self.reach_through_mesh(&peer);
                }
                if let Some(seen) = self.mesh_peers.get_mut(&peer) {
                    *seen = Instant::now();
                }
                self.on_message(peer, message).await
            }
            // Other actions (cells overlay, app channels) are not ours.
            RoomEvent::Message { .. } => {}
        }
    }

    /// Cells mode: a peer we hear through bridges, not connected to us. It gets a
    /// queue and a sync schedule like a connected one; what we send it travels
    /// through the mesh addressed to it. Forgotten after MESH_PEER_IDLE of silence.
    fn reach_through_mesh(&mut self, peer: &str) {
        if self.mesh_peers.len() >= MAX_MESH_PEERS {
            let oldest = self
                .mesh_peers
                .iter()
                .min_by_key(|(_, at)| **at)
                .map(|(p, _)| p.clone());
            if let Some(p) = oldest {
                self.mesh_peers.remove(&p);
                self.forget(&p);
            }
        }
        tracing::debug!(%peer, "cells: a peer reached through the mesh");
        self.mesh_peers.insert(peer.to_owned(), Instant::now());
        let outbox = Outbox::start(self.shared.clone(), peer.to_owned());
        self.outboxes.insert(peer.to_owned(), outbox);
        self.engine.join(peer, Instant::now());
    }

    fn expire_mesh_peers(&mut self) {
        let idle: Vec<String> = self
            .mesh_peers
            .iter()
            .filter(|(_, at)| at.elapsed() > MESH_PEER_IDLE)
            .map(|(p, _)| p.clone())
            .collect();
        for p in idle {
            self.mesh_peers.remove(&p);
            self.forget(&p);
        }
    }

    fn peers_changed(&self, change: PeerChange) {
        let peers = self.shared.room.peers().len();
        match &change {
            PeerChange::Joined { peer, kind } => {
                tracing::info!(%peer, kind = kind.as_deref().unwrap_or("browser"), peers, "peer joined")
            }
            PeerChange::Left { peer } => tracing::info!(%peer, peers, "peer left"),
        }
        (self.on_peers)(peers, &change);
    }

    fn forget(&mut self, peer: &str) {
        self.outboxes.remove(peer);
        self.engine.leave(peer);
    }

    async fn on_message(&mut self, peer: String, message: frame::Message) {
        let shared = self.shared.clone();
        bump(&shared.stats.messages_in, 1);
        let from = peer.clone();
        let applied =
            tokio::task::spawn_blocking(move || shared.receive(&from, &message, unix_ms())).await;
        let applied = match applied {
            Ok(Ok(Received { applied, forward })) => {
                if let Some(every) = self.shared.cfg.forward
                    && !self.mesh_peers.contains_key(&peer)
                {
                    self.forward.gather(&peer, forward, every);
                    if self.forward.bytes >= FORWARD_BUDGET {
                        self.send_forwarded();
                    }
                }
                applied
            }
            Ok(Err(e)) => {
                bump(&self.shared.stats.undecodable, 1);
                tracing::debug!(%peer, error = %e, "undecodable sync message");
                return;
            }
            Err(e) => {
                tracing::error!(%peer, error = %e, "applying a sync message failed");
                return;
            }
        };
        self.count(&peer, &applied);
        if applied.holds_all {
            self.shared.holds_all(&peer);
        }
        let reply = self.engine.replies(&peer, &applied, Instant::now());
        let reply = self.shared.reply_to_sync(&peer, reply);
        tracing::debug!(
            %peer,
            requests = applied.requests.len(),
            merged = applied.merged,
            answered = applied.answered,
            counter = applied.counter_reply,
            reply = reply_name(reply),
            "sync message"
        );
        match reply {
            Some(SyncReply::Full) => {
                if applied.requests.is_empty() {
                    bump(&self.shared.stats.counter_replies, 1);
                }
                self.enqueue(&peer, Outgoing::Full);
            }
            Some(SyncReply::Delta) => self.enqueue(&peer, Outgoing::Delta),
            None => {}
        }
    }

    fn count(&self, peer: &str, applied: &Applied) {
        let stats = &self.shared.stats;
        bump(&stats.merged, applied.merged as u64);
        bump(&stats.rejected, applied.rejected as u64);
        bump(&stats.unknown, applied.unknown as u64);
        if applied.rejected > 0 {
            tracing::debug!(%peer, rejected = applied.rejected, "refused malformed sync elements");
        }
    }

    fn on_write(&mut self, write: LocalWrite, reply: WriteReply) {
        let now = unix_ms();
        let result = {
            let mut store = self.shared.store();
            match &write {
                LocalWrite::Put { id, value } => local::put(&mut store, id, value, now),
                LocalWrite::Link { source, target } => local::link(&mut store, source, target, now),
                LocalWrite::Remove { id } => local::remove(&mut store, id, now),
            }
        };
        let result = result.map(|op| {
            let text: Arc<str> = self.shared.wrap(&op.json).into();
            if self.shared.room.cells() {
                // Through the overlay, so every cell gets it (§8.4).
                if let Err(e) = self.shared.room.mesh_send(CHANNEL, &text, None) {
                    tracing::warn!(error = %e, "cannot send a write through the cells overlay");
                }
            } else {
                let peers: Vec<String> = self.outboxes.keys().cloned().collect();
                for peer in peers {
                    self.enqueue(&peer, Outgoing::Text(text.clone()));
                }
            }
            op.ts
        });
        let _ = reply.send(result);
    }

    /// FORWARD_OPS: the ops gathered since the last tick, framed once and queued for
    /// every connected peer but their only origin. A peer whose queue is full is
    /// dropped, as for any other message.
    fn send_forwarded(&mut self) {
        let (messages, spared) = self.forward.take();
        for (text, ops) in messages {
            let frames = match self.shared.room.encode(CHANNEL, Payload::Json(&text)) {
                Ok(frames) => frames,
                Err(e) => {
                    tracing::error!(error = %e, "cannot frame forwarded ops; dropped");
                    continue;
                }
            };
            bump(&self.shared.stats.forwarded_ops, ops as u64);
            bump(&self.shared.stats.forwarded_messages, 1);
            let forwarded = Arc::new(Forwarded { text, frames });
            let peers: Vec<String> = self
                .outboxes
                .keys()
                .filter(|p| spared.as_deref() != Some(p.as_str()))
                .filter(|p| !self.mesh_peers.contains_key(*p))
                .cloned()
                .collect();
            for peer in peers {
                self.enqueue(&peer, Outgoing::Forwarded(forwarded.clone()));
            }
        }
    }

    fn send_due_syncs(&mut self) {
        let due = self.engine.due_syncs(Instant::now());
        if due.is_empty() {
            return;
        }
        let sync = self.shared.store().sync_json();
        let text: Arc<str> = self.shared.wrap(&sync).into();
        for peer in due {
            bump(&self.shared.stats.syncs_sent, 1);
            self.enqueue(&peer, Outgoing::Text(text.clone()));
        }
    }

    fn reply_unasked(&mut self) {
        for (peer, their_ts) in self.engine.unasked(Instant::now()) {
            let mut reply = self.shared.store().sync_reply(their_ts);
            if self.shared.owes_full(&peer) {
                reply = SyncReply::Full;
            }
            tracing::debug!(%peer, reply = reply_name(Some(reply)), "the peer's sync never came; replying anyway");
            bump(&self.shared.stats.unasked_replies, 1);
            self.enqueue(&peer, reply.into());
        }
    }

    /// Queues a message for one peer; a peer whose queue is full is dropped, and it
    /// resyncs when it comes back.
    fn enqueue(&mut self, peer: &str, item: Outgoing) {
        let Some(outbox) = self.outboxes.get(peer) else {
            tracing::debug!(%peer, "no queue for this peer (it left); reply dropped");
            return;
        };
        if outbox.push(item).is_err() {
            bump(&self.shared.stats.slow_peers, 1);
            tracing::warn!(%peer, "peer's sync queue is full; dropping it");
            self.shared.room.drop_peer(peer);
            self.forget(peer);
        }
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

impl From<SyncReply> for Outgoing {
    fn from(reply: SyncReply) -> Self {
        match reply {
            SyncReply::Full => Outgoing::Full,
            SyncReply::Delta => Outgoing::Delta,
        }
    }
}

/// A message of forwarded ops, framed once for every peer it goes to.
struct Forwarded {
    text: String,
    frames: Vec<Vec<u8>>,
}

enum Outgoing {
    Text(Arc<str>),
    Forwarded(Arc<Forwarded>),
    /// Our full state, written part by part as the peer takes them.
    Full,
    /// Our whole oplog window, hydrated.
    Delta,
}

/// One peer's queue, drained by its own task.
struct Outbox {
    tx: mpsc::Sender<Outgoing>,
    /// A full state (or delta) is queued and not yet started: another request for one
    /// is already covered, because it is built when its turn comes.
    full_queued: Arc<AtomicBool>,
    delta_queued: Arc<AtomicBool>,
}

struct QueueFull;

impl Outbox {
    fn start(shared: Arc<Shared>, peer: String) -> Self {
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

    fn push(&self, item: Outgoing) -> Result<(), QueueFull> {
        let covered = match &item {
            Outgoing::Full => self.full_queued.swap(true, Ordering::AcqRel),
            Outgoing::Delta => {
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
                Outgoing::Full => {
                    self.full_queued.store(false, Ordering::Release);
                    bump(&self.shared.stats.full_replies, 1);
                    self.send_full().await
                }
                Outgoing::Delta => {
                    self.delta_queued.store(false, Ordering::Release);
                    bump(&self.shared.stats.delta_replies, 1);
                    self.send_delta().await
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

    /// The full state at the store's current version, framed: the cached one, or one
    /// written now and cached. `None` when the SM signs what we send (each message is
    /// signed afresh), or when it is too big to keep.
    async fn cached_full(&self) -> Option<Arc<CachedFull>> {
        if self.shared.cfg.sm.signer.is_some() {
            return None;
        }
        let mut cache = self.shared.full_cache.lock().await;
        let version = self.shared.store().version();
        match &*cache {
            FullCache::Ready(c) if c.version == version => return Some(c.clone()),
            FullCache::TooBig(v) if *v == version => return None,
            _ => {}
        }
        let shared = self.shared.clone();
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

    /// Sends the cached full state, or writes and frames one part at a time off the
    /// runtime, with the store locked only while a part is written, and sends it as
    /// fast as the peer takes it; then waits until the peer acknowledged every byte.
    async fn send_full(&self) -> bool {
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
        self.await_full_delivery(started, nodes, parts).await
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

    async fn await_full_delivery(&self, started: Instant, nodes: usize, parts: usize) -> bool {
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

/// A reply's kind as a log field.
fn reply_name(reply: Option<SyncReply>) -> &'static str {
    match reply {
        Some(SyncReply::Full) => "full",
        Some(SyncReply::Delta) => "delta",
        None => "none",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_over_the_limit_are_refused_one_by_one() {
        let big = format!("\"{}\"", "x".repeat(98));
        let ts = r#"{"physical":1700000000000,"logical":0}"#;
        let text = format!(
            r#"[{{"type":"upsert","id":"big","value":{big},"timestamp":{ts}}},
               {{"type":"upsert","id":"small","value":"ok","timestamp":{ts}}},
               {{"type":"deltaSync","operations":[
                  {{"type":"upsert","id":"d-big","value":{big},"timestamp":{ts}}},
                  {{"type":"upsert","id":"d-small","value":1,"timestamp":{ts}}},
                  {{"type":"remove","id":"gone","timestamp":{ts}}}],"timestamp":null}},
               {{"type":"fullStateSync","graphData":{{
                  "f-big":{{"value":{big},"edges":[],"timestamp":{ts}}},
                  "f-small":{{"value":2,"edges":[],"timestamp":{ts}}}}},"timestamp":null}}]"#
        );
        let mut batch = message::parse_json(&text).unwrap();
        assert_eq!(
            oversized_filter(100, &mut batch),
            0,
            "100 bytes of JSON fit 100"
        );
        assert_eq!(oversized_filter(101, &mut batch), 0);
        assert_eq!(oversized_filter(99, &mut batch), 3);
        let mut store = Store::new(1000);
        engine::apply_batch(&mut store, batch, 1_700_000_000_000);
        let mut ids: Vec<&str> = store.nodes().keys().map(|k| k.as_ref()).collect();
        ids.sort();
        assert_eq!(ids, ["d-small", "f-small", "small"]);
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
                let op = format!(
                    r#"[{{"type":"upsert","id":"{id}","value":{value},"timestamp":{ts}}}]"#
                );
                engine::apply_batch(
                    &mut store,
                    message::parse_json(&op).unwrap(),
                    1_800_000_000_000,
                );
                expected.insert(id, value);
            }
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

    fn op(id: &str, pad: usize) -> String {
        format!(
            r#"{{"type":"upsert","id":"{id}","value":"{}","timestamp":{{"physical":1,"logical":0}}}}"#,
            "x".repeat(pad)
        )
    }

    #[test]
    fn forwarded_ops_from_one_peer_spare_it_and_form_one_message() {
        let mut f = Forwarder::default();
        let every = Duration::from_millis(50);
        f.gather("a", vec![op("1", 0), op("2", 0)], every);
        f.gather("a", vec![op("3", 0)], every);
        // Nothing went out before: the first ops go at once.
        assert!(f.due.is_some_and(|d| d <= Instant::now()));
        let (messages, spared) = f.take();
        assert_eq!(spared.as_deref(), Some("a"));
        assert_eq!(messages.len(), 1);
        let (text, n) = &messages[0];
        assert_eq!(*n, 3);
        assert_eq!(message::parse_json(text).unwrap().messages.len(), 3);
        assert!(f.due.is_none() && f.ops.is_empty());
        assert_eq!(f.take().0.len(), 0);
        // Right after a message, the next waits for the interval.
        f.gather("b", vec![op("4", 0)], every);
        assert!(f.due.is_some_and(|d| d > Instant::now() + every / 2));
    }

    #[test]
    fn ops_from_several_peers_spare_nobody_and_big_ticks_are_split() {
        let mut f = Forwarder::default();
        let every = Duration::from_millis(50);
        let big = FORWARD_BUDGET / 3;
        f.gather("a", vec![op("1", big), op("2", big)], every);
        f.gather("b", vec![op("3", big), op("4", 10)], every);
        f.gather("c", Vec::new(), every);
        let (messages, spared) = f.take();
        assert_eq!(spared, None);
        assert_eq!(messages.iter().map(|(_, n)| n).sum::<usize>(), 4);
        assert_eq!(messages.len(), 2);
        for (text, n) in &messages {
            assert!(text.len() <= FORWARD_BUDGET);
            assert_eq!(message::parse_json(text).unwrap().messages.len(), *n);
        }
    }
}
