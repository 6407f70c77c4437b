//! The signalling actor: one task that owns the room's signalling state (announces,
//! offers, answers, glare, bye), admits peers under MAX_PEERS and the per-source
//! shares, and starts a link task for every PeerConnection. What a signal does is in
//! `signal.rs`; what dial, answer and link tasks report is handled here.

mod signal;

use super::link::LinkTask;
use super::overlay::Overlay;
use super::peers::{Connected, PeerTables, Pending, Source};
use super::{LinkInfo, Links, RoomConfig, RoomEvent, RoomStats, Writer};
use crate::rate::LogEvery;
use crate::rtc::cells;
use crate::rtc::frame;
use crate::rtc::nostr::{Inbound, RelayPool};
use crate::rtc::peer::{Peer, PeerEvent};
use crate::rtc::seal::SealKey;
use crate::rtc::topic;
use nostr_sdk::prelude::{Alphabet, EventBuilder, Keys, Kind, SingleLetterTag, Tag, TagKind};
use serde_json::{Value, json};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// What a dial or an answer produced: the connection, its events and our description.
type Made = Result<(Arc<Peer>, mpsc::Receiver<PeerEvent>, String), String>;

/// Messages from link and dial tasks to the actor.
pub(super) enum Internal {
    /// A dial produced its offer (or failed).
    Dialed {
        peer: String,
        relay: usize,
        link: u64,
        result: Made,
    },
    /// An answer was produced for a remote offer.
    Answered {
        peer: String,
        relay: usize,
        link: u64,
        result: Made,
    },
    Opened {
        peer: String,
        link: u64,
    },
    Closed {
        peer: String,
        link: u64,
    },
    /// An invited peer's time to dial us is over.
    DialDue {
        peer: String,
        relay: usize,
        source: Source,
    },
}

pub(super) struct Actor {
    pub(super) overlay: Option<Arc<Overlay>>,
    pub(super) cfg: RoomConfig,
    pub(super) seal: SealKey,
    pub(super) nostr_key: Keys,
    pub(super) self_id: String,
    pub(super) root_topic: String,
    pub(super) self_topic: String,
    pub(super) pool: Arc<RelayPool>,
    pub(super) events: mpsc::Sender<RoomEvent>,
    pub(super) internal: mpsc::Sender<Internal>,
    pub(super) links: Links,
    /// Every link's writer, connected or not.
    pub(super) writers: HashMap<u64, Writer>,
    pub(super) stats: Arc<RoomStats>,
    /// Links being answered, being built, and connected.
    pub(super) peers: PeerTables<Arc<Peer>>,
    /// MAX_PEERS refusals are logged at most once per LIMIT_LOG_EVERY.
    pub(super) refusal_log: LogEvery,
    pub(super) types: HashMap<String, String>,
    /// Peers asked to dial us whose `dial_wait` is not over (see `signal.rs`, `invite`).
    pub(super) invited: HashSet<String>,
}

impl Actor {
    pub(super) async fn run(
        mut self,
        mut inbound: mpsc::Receiver<Inbound>,
        mut internal: mpsc::Receiver<Internal>,
        mut leave: mpsc::Receiver<()>,
    ) {
        let mut announce = tokio::time::interval(self.cfg.announce_every);
        let mut reap = tokio::time::interval(Duration::from_secs(5));
        let mut cells_tick = tokio::time::interval(cells::TICK);
        loop {
            tokio::select! {
                _ = announce.tick() => {
                    self.announce(None);
                    self.dial_known(0);
                }
                _ = reap.tick() => self.reap_dials(),
                _ = cells_tick.tick(), if self.overlay.is_some() => self.reseal().await,
                msg = inbound.recv() => match msg {
                    Some(Inbound::Connected { relay }) => {
                        self.announce(Some(relay));
                        self.dial_known(relay);
                    }
                    Some(Inbound::Disconnected { .. }) => {}
                    Some(Inbound::Event { relay, event, origin, .. }) => self.on_signal(relay, &event, origin),
                    None => break,
                },
                Some(msg) = internal.recv() => self.on_internal(msg).await,
                _ = leave.recv() => {
                    self.leave().await;
                    return;
                }
            }
            self.stats
                .pending_links
                .store(self.peers.building() as u64, Ordering::Relaxed);
        }
    }

    fn publish(&self, topic: &str, content: Value, relay: Option<usize>) {
        let ev = EventBuilder::new(Kind::Custom(topic::kind_of(topic)), content.to_string())
            .tag(Tag::custom(
                TagKind::SingleLetter(SingleLetterTag::lowercase(Alphabet::X)),
                [topic],
            ))
            .sign_with_keys(&self.nostr_key);
        let Ok(ev) = ev else {
            tracing::warn!("could not sign a signalling event");
            return;
        };
        self.stats.signals_out.fetch_add(1, Ordering::Relaxed);
        self.pool.publish(&ev, relay);
    }

    fn announce(&self, relay: Option<usize>) {
        self.publish(
            &self.root_topic.clone(),
            json!({"peerId": self.self_id}),
            relay,
        );
    }

    /// Sends our sealed offer or answer to `x`'s own topic, on the relay the exchange
    /// started on.
    fn send_description(&self, x: &str, relay: usize, kind: &str, sdp: &str) {
        let mut content = json!({"peerId": self.self_id});
        content[kind] = json!({"type": kind, "sdp": self.seal.seal(sdp)});
        let content = self.with_type(content);
        let to = topic::self_topic(&self.cfg.app_id, &self.cfg.room_id, x);
        tracing::debug!(peer = %x, relay, kind, "sending our description");
        self.publish(&to, content, Some(relay));
    }

    fn with_type(&self, mut content: Value) -> Value {
        if let Some(t) = &self.cfg.peer_type {
            content["type"] = json!(t);
        }
        content
    }

    /// Dials each peer of `cfg.dial` that is neither linked nor being dialled, once
    /// the relay is open: an offer published before would be dropped, and the dial
    /// would wait out the answer timeout.
    fn dial_known(&mut self, relay: usize) {
        if self.cfg.dial.is_empty() || self.pool.connected() == 0 {
            return;
        }
        let known: Vec<String> = self
            .cfg
            .dial
            .iter()
            .filter(|x| !self.peers.is_connected(x) && !self.peers.is_pending(x))
            .cloned()
            .collect();
        for x in known {
            self.maybe_dial(x, relay, None);
        }
    }

    /// Cells mode: runs the re-seal schedule, and once the grace after a seal is over,
    /// closes links the topology no longer admits.
    async fn reseal(&mut self) {
        let Some(o) = self.overlay.clone() else {
            return;
        };
        let now = Instant::now();
        let connected = self.peers.connected_ids();
        let prune: Vec<String> = {
            let mut mesh = o.mesh.lock().unwrap_or_else(|p| p.into_inner());
            if mesh.tick(&connected, now) {
                self.stats.cell_seals.fetch_add(1, Ordering::Relaxed);
                let s = &mesh.sealed;
                tracing::debug!(
                    epoch = mesh.epoch,
                    cell = s.my_cell,
                    cells = s.cells,
                    bridge = s.is_bridge(),
                    roster = s.roster.len(),
                    "cells: sealed"
                );
            }
            if mesh.grace_over(now) {
                connected
                    .into_iter()
                    .filter(|x| !mesh.admit(x, now))
                    .collect()
            } else {
                Vec::new()
            }
        };
        for x in prune {
            self.stats.cell_pruned.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(peer = %x, "cells: closing a link the topology does not admit");
            if let Some(c) = self.peers.connected(&x) {
                let _ = c.peer.send(&frame::control(frame::LEAVE)).await;
            }
            self.drop_connected(&x);
            let _ = self.events.send(RoomEvent::Left { peer: x }).await;
        }
    }

    fn maybe_dial(&mut self, x: String, relay: usize, source: Option<Source>) {
        if !self.peers.may_dial(&x, relay, self.cfg.max_pending_dials) {
            return;
        }
        tracing::debug!(peer = %x, relay, "dialing");
        let link = self.peers.new_link();
        self.peers.push_pending(
            x.clone(),
            Pending {
                link,
                relay,
                peer: None,
                since: Instant::now(),
                source,
                ours: true,
                answered: false,
            },
        );
        let cfg = self.cfg.peer.clone();
        let internal = self.internal.clone();
        tokio::spawn(async move {
            let result = Peer::offer(&cfg)
                .await
                .map(|(p, rx, sdp)| (Arc::new(p), rx, sdp))
                .map_err(|e| e.to_string());
            let _ = internal
                .send(Internal::Dialed {
                    peer: x,
                    relay,
                    link,
                    result,
                })
                .await;
        });
    }

    async fn on_internal(&mut self, msg: Internal) {
        match msg {
            Internal::Dialed {
                peer,
                relay,
                link,
                result,
            } => self.on_dialed(peer, relay, link, result).await,
            Internal::Answered {
                peer,
                relay,
                link,
                result,
            } => self.on_answered(peer, relay, link, result),
            Internal::Opened { peer, link } => self.on_opened(peer, link).await,
            Internal::DialDue {
                peer,
                relay,
                source,
            } => self.on_dial_due(peer, relay, source),
            Internal::Closed { peer: x, link } => {
                if self.peers.connected(&x).is_some_and(|c| c.link == link) {
                    self.drop_connected(&x);
                    let _ = self.events.send(RoomEvent::Left { peer: x }).await;
                } else {
                    self.forget_pending(&x, link);
                }
            }
        }
    }

    /// Our offer is made: sent, unless the dial was given up or the peer linked meanwhile.
    async fn on_dialed(&mut self, x: String, relay: usize, link: u64, result: Made) {
        let still_wanted = self.peers.has_pending_link(&x, link);
        let (p, rx, sdp) = match result {
            Ok(r) if still_wanted && !self.peers.is_connected(&x) => r,
            Ok((p, _, _)) => {
                p.close().await;
                self.forget_pending(&x, link);
                return;
            }
            Err(e) => {
                tracing::warn!(peer = %x, error = %e, "could not create an offer");
                self.forget_pending(&x, link);
                return;
            }
        };
        self.peers.set_dial_peer(&x, link, p.clone());
        self.start_link(x.clone(), link, p, rx);
        self.send_description(&x, relay, "offer", &sdp);
    }

    /// Our answer is made: sent, unless its link was closed to make room meanwhile.
    fn on_answered(&mut self, x: String, relay: usize, link: u64, result: Made) {
        let building = self.peers.finish_answering(link);
        let (p, rx, sdp) = match result {
            Ok(r) => r,
            Err(e) => {
                tracing::debug!(peer = %x, error = %e, "could not answer an offer");
                return;
            }
        };
        let Some(building) = building else {
            // Closed to make room while it was being built.
            tokio::spawn(async move { p.close().await });
            return;
        };
        self.peers.push_pending(
            x.clone(),
            Pending {
                link,
                relay,
                peer: Some(p.clone()),
                since: building.since,
                source: building.source,
                ours: false,
                answered: true,
            },
        );
        self.start_link(x.clone(), link, p, rx);
        self.send_description(&x, relay, "answer", &sdp);
    }

    /// A data channel opened: its link becomes the peer's one, every other goes.
    async fn on_opened(&mut self, x: String, link: u64) {
        let Some(d) = self.peers.take_pending(&x, link) else {
            return;
        };
        let Some(p) = d.peer else { return };
        let offered_by = if d.ours { "us" } else { "peer" };
        tracing::debug!(peer = %x, link, offered_by, "data channel open");
        if self.peers.is_connected(&x) {
            self.drop_connected(&x);
        }
        // The most recently opened link wins; every other attempt is closed.
        for other in self.peers.take_all_pending(&x) {
            self.detach(&x, other.link);
            if let Some(op) = other.peer {
                tokio::spawn(async move { op.close().await });
            }
        }
        self.peers.connect(
            x.clone(),
            Connected {
                link,
                peer: p,
                since: Instant::now(),
                pubkey: d.source.map(|s| s.pubkey),
            },
        );
        self.attach(x, link).await;
    }

    /// Publishes the connected link's writer, says Joined, then lets the link hand on
    /// messages: the sync layer must see the join before anything the peer sent, which
    /// its first frames often are.
    async fn attach(&mut self, x: String, link: u64) {
        let writer = self.writers.get(&link).cloned();
        if let Some(w) = &writer {
            self.links
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(x.clone(), w.clone());
        }
        let kind = self.types.get(&x).cloned();
        if let (Some(w), Some(k)) = (&writer, &kind) {
            let _ = w.info.kind.set(k.clone());
        }
        let _ = self.events.send(RoomEvent::Joined { peer: x, kind }).await;
        if let Some(w) = writer {
            w.attached.store(true, Ordering::Release);
            w.attach.notify_one();
        }
    }

    fn forget_pending(&mut self, x: &str, link: u64) {
        if let Some(d) = self.peers.take_pending(x, link) {
            self.detach(x, link);
            if let Some(p) = d.peer {
                tokio::spawn(async move { p.close().await });
            }
        }
    }

    fn drop_connected(&mut self, x: &str) {
        if let Some(c) = self.peers.remove_connected(x) {
            self.detach(x, c.link);
            tokio::spawn(async move { c.peer.close().await });
        }
    }

    /// Forgets a link's writer and, if it was the peer's connected one, the peer.
    fn detach(&mut self, x: &str, link: u64) {
        let Some(w) = self.writers.remove(&link) else {
            return;
        };
        w.attached.store(false, Ordering::Relaxed);
        let mut links = self.links.lock().unwrap_or_else(|p| p.into_inner());
        if links.get(x).is_some_and(|cur| cur.same(&w)) {
            links.remove(x);
        }
    }

    fn start_link(
        &mut self,
        x: String,
        link: u64,
        peer: Arc<Peer>,
        events: mpsc::Receiver<PeerEvent>,
    ) {
        let (tx, rx) = mpsc::channel(self.cfg.send_queue);
        let writer = Writer {
            frames: tx,
            attached: Arc::new(AtomicBool::new(false)),
            attach: Arc::default(),
            dropped: Arc::new(AtomicBool::new(false)),
            peer: peer.clone(),
            info: Arc::new(LinkInfo {
                since: std::time::SystemTime::now(),
                kind: std::sync::OnceLock::new(),
                bytes_in: AtomicU64::new(0),
                bytes_out: AtomicU64::new(0),
            }),
        };
        self.writers.insert(link, writer.clone());
        let task = LinkTask {
            peer_id: x,
            link,
            peer,
            writer,
            room_events: self.events.clone(),
            internal: self.internal.clone(),
            stats: self.stats.clone(),
            cfg: self.cfg.clone(),
            overlay: self.overlay.clone(),
        };
        tokio::spawn(task.run(events, rx));
    }

    fn reap_dials(&mut self) {
        let (dial, answer) = (self.cfg.dial_timeout, self.cfg.answer_timeout);
        for (x, link) in self.peers.stale(Instant::now(), dial, answer) {
            self.forget_pending(&x, link);
        }
    }

    async fn leave(&mut self) {
        for p in self.peers.connected_peers() {
            let _ = p.send(&frame::control(frame::LEAVE)).await;
        }
        self.publish(
            &self.root_topic.clone(),
            json!({"peerId": self.self_id, "bye": 1}),
            None,
        );
        // GenosRTC lingers 99 ms after @_leave before closing.
        tokio::time::sleep(Duration::from_millis(150)).await;
        self.links.lock().unwrap_or_else(|p| p.into_inner()).clear();
        for p in self.peers.drain() {
            p.close().await;
        }
    }
}
