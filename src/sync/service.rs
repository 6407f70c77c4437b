//! The sync layer at run time: takes the room's events, applies what peers send
//! through the store, and sends each peer its syncs and replies through a queue of
//! its own, so a slow peer delays nobody else.

use super::engine::{Applied, Engine};
use super::forward::{FORWARD_BUDGET, Forwarded, Forwarder};
use super::local::{self, LocalError};
use super::outbox::{Outbox, Outgoing};
use super::shared::{Received, Shared, SyncConfig, SyncStats, bump};
use crate::persist::unix_ms;
use crate::rtc::frame::{self, Payload};
use crate::rtc::room::{Room, RoomEvent};
use crate::sm::SmStats;
use crate::store::{Hlc, Store, SyncReply};
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};

pub use super::shared::CHANNEL;

/// Cells mode: peers reached through the mesh are forgotten after this much silence.
const MESH_PEER_IDLE: Duration = Duration::from_secs(120);
/// Cells mode: most peers reached through the mesh at once.
const MAX_MESH_PEERS: usize = 4096;

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
        shared: Arc::new(Shared::new(
            room,
            store,
            cfg,
            stats.clone(),
            sm_stats.clone(),
        )),
        engine: Engine::default(),
        outboxes: HashMap::new(),
        on_peers: Box::new(on_peers),
        unsettled: unsettled.clone(),
        mesh_peers: HashMap::new(),
        forward: Forwarder::default(),
    };
    tokio::spawn(super::warm::run(Arc::downgrade(&service.shared)));
    tokio::spawn(service.run(events, writes));
    SyncHandle {
        writes: writes_tx,
        stats,
        sm_stats,
        unsettled,
    }
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
        let asked = Instant::now();
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
                self.enqueue(&peer, Outgoing::Full(asked));
            }
            Some(SyncReply::Delta) => self.enqueue(&peer, Outgoing::Delta(asked)),
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
            self.enqueue(&peer, Outgoing::reply(reply, Instant::now()));
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

/// A reply's kind as a log field.
fn reply_name(reply: Option<SyncReply>) -> &'static str {
    match reply {
        Some(SyncReply::Full) => "full",
        Some(SyncReply::Delta) => "delta",
        None => "none",
    }
}
