//! The signalling actor: one task that owns the room's signalling state (announces,
//! offers, answers, glare, bye), admits peers under MAX_PEERS and the per-source
//! shares, and starts a link task for every PeerConnection.

use super::link::LinkTask;
use super::overlay::Overlay;
use super::{
    LinkInfo, Links, PENDING_PER_CONNECTION, PENDING_PER_KEY, RoomConfig, RoomEvent, RoomStats,
    Writer, valid_peer_id,
};
use crate::rate::LogEvery;
use crate::rtc::cells;
use crate::rtc::frame;
use crate::rtc::nostr::{Inbound, RelayPool};
use crate::rtc::peer::{Peer, PeerEvent};
use crate::rtc::seal::SealKey;
use crate::rtc::topic;
use nostr_sdk::prelude::{
    Alphabet, Event, EventBuilder, Keys, Kind, SingleLetterTag, Tag, TagKind,
};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// Messages from link and dial tasks to the actor.
pub(super) enum Internal {
    /// A dial produced its offer (or failed).
    Dialed {
        peer: String,
        relay: usize,
        link: u64,
        result: Result<(Arc<Peer>, mpsc::Receiver<PeerEvent>, String), String>,
    },
    /// An answer was produced for a remote offer.
    Answered {
        peer: String,
        relay: usize,
        link: u64,
        result: Result<(Arc<Peer>, mpsc::Receiver<PeerEvent>, String), String>,
    },
    Opened {
        peer: String,
        link: u64,
    },
    Closed {
        peer: String,
        link: u64,
    },
}

/// Who sent a signal: the Nostr key that signed it and, on the daemon's own relay,
/// the relay connection that published it (relay index, connection id).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Source {
    pubkey: String,
    conn: Option<(usize, u64)>,
}

/// An answer being built (a PeerConnection exists).
pub(super) struct Answering {
    peer: String,
    source: Option<Source>,
    since: Instant,
}

pub(super) struct Pending {
    link: u64,
    relay: usize,
    peer: Option<Arc<Peer>>,
    since: Instant,
    /// The signal that made it (None: a dial of `cfg.dial`).
    source: Option<Source>,
    /// Our own offer (a dial), rather than an answer to theirs.
    ours: bool,
    /// Both descriptions are in place (always so for links we answered).
    answered: bool,
}

pub(super) struct Connected {
    link: u64,
    peer: Arc<Peer>,
    since: Instant,
    /// The Nostr key that made the link: only it speaks for this peer while linked.
    pubkey: Option<String>,
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
    /// Dials and answers not yet open, by peer.
    pub(super) pending: HashMap<String, Vec<Pending>>,
    pub(super) connected: HashMap<String, Connected>,
    /// Answers being built (a PeerConnection exists), by link: they count toward
    /// MAX_PEERS before they reach `pending`.
    pub(super) answering: HashMap<u64, Answering>,
    /// MAX_PEERS refusals are logged at most once per LIMIT_LOG_EVERY.
    pub(super) refusal_log: LogEvery,
    pub(super) types: HashMap<String, String>,
    pub(super) next_link: u64,
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
            let building =
                self.answering.len() + self.pending.values().map(Vec::len).sum::<usize>();
            self.stats
                .pending_links
                .store(building as u64, Ordering::Relaxed);
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

    fn on_signal(&mut self, relay: usize, event: &Event, origin: Option<u64>) {
        self.stats.signals_in.fetch_add(1, Ordering::Relaxed);
        let content = event.content.as_str();
        let topic = event
            .tags
            .find(TagKind::SingleLetter(SingleLetterTag::lowercase(
                Alphabet::X,
            )))
            .and_then(|t| t.content());
        if !topic.is_some_and(|t| t == self.root_topic || t == self.self_topic) {
            return;
        }
        let Ok(m) = serde_json::from_str::<Value>(content) else {
            return;
        };
        let Some(x) = m
            .get("peerId")
            .and_then(Value::as_str)
            .filter(|x| valid_peer_id(x))
        else {
            return;
        };
        if x == self.self_id || self.ignores(&m) {
            return;
        }
        let x = x.to_owned();
        let source = Source {
            pubkey: event.pubkey.to_hex(),
            conn: origin.map(|o| (relay, o)),
        };
        if m.get("bye")
            .is_some_and(|b| !b.is_null() && b != &json!(false))
        {
            // The peer id is not signed by anything the peer owns: while `x` has a
            // link, only the Nostr key that made it may say goodbye for it.
            if self.owner_of(&x).is_some_and(|k| k != source.pubkey) {
                self.stats.impostor_signals.fetch_add(1, Ordering::Relaxed);
                return;
            }
            self.types.remove(&x);
            if let Some(o) = &self.overlay {
                o.mesh.lock().unwrap_or_else(|p| p.into_inner()).bye(&x);
            }
            return;
        }
        if let Some(o) = &self.overlay {
            let mut mesh = o.mesh.lock().unwrap_or_else(|p| p.into_inner());
            mesh.heard(&x, Instant::now());
            // §8.7: only peers the topology admits are dialled or answered.
            if !self.connected.contains_key(&x) && !mesh.admit(&x, Instant::now()) {
                return;
            }
        }
        let offer = m
            .get("offer")
            .and_then(|o| o.get("sdp"))
            .and_then(Value::as_str);
        let answer = m
            .get("answer")
            .and_then(|o| o.get("sdp"))
            .and_then(Value::as_str);
        // An answer only ever completes a dial of ours, which already counts. An offer
        // or an announce may make a new link: not past its sender's share, and, for a
        // new peer, not past MAX_PEERS; only an offer closes a link being built to make
        // room (announces are too cheap to forge).
        if answer.is_none() {
            if self.source_full(&source) {
                return;
            }
            if !self.has_link_to(&x) {
                let full = self.peers_in_use() >= self.cfg.limits.max_peers;
                let room = match offer {
                    Some(_) => self.make_room(&x),
                    None => self.has_room(),
                };
                if !room {
                    // An announce while only the links being built are at their share
                    // is not a refusal: the peer is dialled at a later announce, or
                    // dials us.
                    if full || offer.is_some() {
                        self.refuse_peer(&x);
                    }
                    return;
                }
            }
        }
        if let Some(t) = m.get("type").and_then(Value::as_str) {
            self.types.insert(x.clone(), t.chars().take(32).collect());
        }
        if let Some(c) = self.connected.get(&x) {
            // A connected peer only offers again after it restarted (a reloaded tab keeps
            // its id, with a new Nostr key): the new offer is answered, unless the link is
            // brand new, and replaces the old link once it opens. The peer id and a sealed
            // offer can be replayed by anyone: a replay never opens, so it never costs
            // the peer its link.
            if offer.is_none() || c.since.elapsed() < Duration::from_secs(2) {
                return;
            }
            tracing::info!(peer = %x, "peer offered again; its old link goes once the new one opens");
        }
        if let Some(sealed) = offer {
            let ours_wins = self.pending.get(&x).is_some_and(|p| {
                p.iter()
                    .any(|d| d.ours && d.relay == relay && d.peer.is_some())
            }) && self.self_id.as_str() > x.as_str();
            tracing::debug!(peer = %x, relay, ours_wins, "offer received");
            if ours_wins {
                return;
            }
            let Ok(sdp) = self.open(sealed) else { return };
            self.spawn_answer(x, relay, sdp, source);
        } else if let Some(sealed) = answer {
            let Some(dial) = self
                .pending
                .get_mut(&x)
                .and_then(|p| {
                    p.iter_mut().find(|d| {
                        d.ours
                            && !d.answered
                            && d.relay == relay
                            && d.peer.is_some()
                            && d.source.as_ref().is_none_or(|s| s.pubkey == source.pubkey)
                    })
                })
                .and_then(|d| {
                    d.answered = true;
                    d.peer.clone()
                })
            else {
                tracing::debug!(peer = %x, relay, "answer with no dial of ours waiting for it");
                return;
            };
            tracing::debug!(peer = %x, relay, "answer received");
            let Ok(sdp) = self.open(sealed) else { return };
            tokio::spawn(async move {
                if let Err(e) = dial.accept_answer(&sdp).await {
                    tracing::debug!(error = %e, "could not apply an answer");
                }
            });
        } else {
            self.maybe_dial(x, relay, Some(source));
        }
    }

    /// The Nostr key that made `x`'s link (connected, or being built), if any.
    fn owner_of(&self, x: &str) -> Option<&str> {
        if let Some(c) = self.connected.get(x) {
            return c.pubkey.as_deref();
        }
        let pending = self.pending.get(x).into_iter().flatten();
        pending
            .filter_map(|d| d.source.as_ref())
            .chain(
                self.answering
                    .values()
                    .filter(|a| a.peer == x)
                    .filter_map(|a| a.source.as_ref()),
            )
            .map(|s| s.pubkey.as_str())
            .next()
    }

    /// Links being built: (peer, link, source, since).
    fn building(&self) -> Vec<(&str, u64, Option<&Source>, Instant)> {
        let pending = self.pending.iter().flat_map(|(x, v)| {
            v.iter()
                .map(move |d| (x.as_str(), d.link, d.source.as_ref(), d.since))
        });
        let answering = self
            .answering
            .iter()
            .map(|(link, a)| (a.peer.as_str(), *link, a.source.as_ref(), a.since));
        pending.chain(answering).collect()
    }

    /// PENDING_PER_KEY and PENDING_PER_CONNECTION: true (and counted) when `source`
    /// already has as many links being built as it may.
    fn source_full(&mut self, source: &Source) -> bool {
        let building = self.building();
        let by_key = building
            .iter()
            .filter(|b| b.2.is_some_and(|s| s.pubkey == source.pubkey))
            .count();
        let by_conn = source.conn.map_or(0, |c| {
            building
                .iter()
                .filter(|b| b.2.is_some_and(|s| s.conn == Some(c)))
                .count()
        });
        let full = by_key >= PENDING_PER_KEY || by_conn >= PENDING_PER_CONNECTION;
        if full {
            self.stats
                .refused_pending_source
                .fetch_add(1, Ordering::Relaxed);
            if let Some(unlogged) = self.refusal_log.allow(Instant::now()) {
                tracing::warn!(
                    pubkey = %source.pubkey,
                    limit = if by_key >= PENDING_PER_KEY { "PENDING_PER_KEY" } else { "PENDING_PER_CONNECTION" },
                    unlogged,
                    "offer or announce ignored: its sender already has links being built"
                );
            }
        }
        full
    }

    /// Room for one more peer: under MAX_PEERS, and links being built under their
    /// share of it (half, or up to 4 when MAX_PEERS is small).
    fn has_room(&self) -> bool {
        let max = self.cfg.limits.max_peers;
        let building = self.answering.len() + self.pending.values().map(Vec::len).sum::<usize>();
        self.peers_in_use() < max && building < (max / 2).max(max.min(4))
    }

    /// Whether a new peer may have a link built: MAX_PEERS bounds links open and being
    /// built, and links being built at most half of it. When either is full, the
    /// oldest link being built of the sender with the most is closed to make room;
    /// open links are never closed for a newcomer.
    fn make_room(&mut self, newcomer: &str) -> bool {
        // Each round closes one link being built; there are never more rounds than that.
        for _ in 0..=self.answering.len() + self.pending.values().map(Vec::len).sum::<usize>() {
            if self.has_room() {
                return true;
            }
            let building = self.building();
            // The sender holding the most links being built; its oldest one.
            let mut counts: HashMap<&str, usize> = HashMap::new();
            for b in &building {
                *counts
                    .entry(b.2.map_or("", |s| s.pubkey.as_str()))
                    .or_default() += 1;
            }
            let victim = building
                .iter()
                .filter(|b| b.0 != newcomer)
                .max_by_key(|b| {
                    let n = counts[b.2.map_or("", |s| s.pubkey.as_str())];
                    (n, std::cmp::Reverse(b.3))
                })
                .map(|b| (b.0.to_owned(), b.1));
            let Some((x, link)) = victim else {
                return false;
            };
            self.stats.evicted_pending.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(peer = %x, link, "closing a link being built to make room");
            if self.answering.remove(&link).is_none() {
                self.forget_pending(&x, link);
            }
        }
        self.has_room()
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
            .filter(|x| !self.connected.contains_key(*x) && !self.pending.contains_key(*x))
            .cloned()
            .collect();
        for x in known {
            self.maybe_dial(x, relay, None);
        }
    }

    /// With `only_superpeers`, everything but a superpeer's offer or answer and a bye.
    fn ignores(&self, m: &Value) -> bool {
        self.cfg.only_superpeers
            && m.get("bye").is_none()
            && m.get("type").and_then(Value::as_str) != Some("superpeer")
    }

    /// Cells mode: runs the re-seal schedule, and once the grace after a seal is over,
    /// closes links the topology no longer admits.
    async fn reseal(&mut self) {
        let Some(o) = self.overlay.clone() else {
            return;
        };
        let now = Instant::now();
        let connected: Vec<String> = self.connected.keys().cloned().collect();
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
            if let Some(c) = self.connected.get(&x) {
                let _ = c.peer.send(&frame::control(frame::LEAVE)).await;
            }
            self.drop_connected(&x);
            let _ = self.events.send(RoomEvent::Left { peer: x }).await;
        }
    }

    /// Whether `x` is connected or has a PeerConnection being built.
    fn has_link_to(&self, x: &str) -> bool {
        self.connected.contains_key(x)
            || self.pending.contains_key(x)
            || self.answering.values().any(|a| a.peer == x)
    }

    /// Peers connected or with a PeerConnection being built: what MAX_PEERS bounds.
    fn peers_in_use(&self) -> usize {
        let mut peers: std::collections::HashSet<&str> =
            self.connected.keys().map(String::as_str).collect();
        peers.extend(self.pending.keys().map(String::as_str));
        peers.extend(self.answering.values().map(|a| a.peer.as_str()));
        peers.len()
    }

    /// MAX_PEERS: `x` is neither answered nor dialled. Logged at most once per 10 s.
    fn refuse_peer(&mut self, x: &str) {
        self.stats.refused_max_peers.fetch_add(1, Ordering::Relaxed);
        if let Some(unlogged) = self.refusal_log.allow(Instant::now()) {
            tracing::warn!(
                peer = %x,
                limit = "MAX_PEERS",
                value = self.cfg.limits.max_peers,
                unlogged,
                "peer refused: MAX_PEERS peers are linked or being linked"
            );
        }
    }

    fn open(&self, sealed: &str) -> Result<String, ()> {
        self.seal.open(sealed).map_err(|e| {
            self.stats.seal_failures.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(error = %e, "could not open a sealed SDP (another password?)");
        })
    }

    fn maybe_dial(&mut self, x: String, relay: usize, source: Option<Source>) {
        let dials = self.pending.get(&x).map_or(0, Vec::len);
        let already = self
            .pending
            .get(&x)
            .is_some_and(|p| p.iter().any(|d| d.relay == relay));
        let total: usize = self.pending.values().map(Vec::len).sum();
        if already || dials >= 2 || total >= self.cfg.max_pending_dials {
            return;
        }
        tracing::debug!(peer = %x, relay, "dialing");
        let link = self.new_link();
        self.pending.entry(x.clone()).or_default().push(Pending {
            link,
            relay,
            peer: None,
            since: Instant::now(),
            source,
            ours: true,
            answered: false,
        });
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

    fn spawn_answer(&mut self, x: String, relay: usize, offer_sdp: String, source: Source) {
        let link = self.new_link();
        self.answering.insert(
            link,
            Answering {
                peer: x.clone(),
                source: Some(source),
                since: Instant::now(),
            },
        );
        let cfg = self.cfg.peer.clone();
        let internal = self.internal.clone();
        tokio::spawn(async move {
            let result = Peer::answer(&cfg, &offer_sdp)
                .await
                .map(|(p, rx, sdp)| (Arc::new(p), rx, sdp))
                .map_err(|e| e.to_string());
            let _ = internal
                .send(Internal::Answered {
                    peer: x,
                    relay,
                    link,
                    result,
                })
                .await;
        });
    }

    fn new_link(&mut self) -> u64 {
        self.next_link += 1;
        self.next_link
    }

    async fn on_internal(&mut self, msg: Internal) {
        match msg {
            Internal::Dialed {
                peer: x,
                relay,
                link,
                result,
            } => {
                let still_wanted = self
                    .pending
                    .get(&x)
                    .is_some_and(|p| p.iter().any(|d| d.link == link));
                let (p, rx, sdp) = match result {
                    Ok(r) if still_wanted && !self.connected.contains_key(&x) => r,
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
                if let Some(d) = self
                    .pending
                    .get_mut(&x)
                    .and_then(|v| v.iter_mut().find(|d| d.link == link))
                {
                    d.peer = Some(p.clone());
                }
                self.start_link(x.clone(), link, p, rx);
                self.send_description(&x, relay, "offer", &sdp);
            }
            Internal::Answered {
                peer: x,
                relay,
                link,
                result,
            } => {
                let building = self.answering.remove(&link);
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
                self.pending.entry(x.clone()).or_default().push(Pending {
                    link,
                    relay,
                    peer: Some(p.clone()),
                    since: building.since,
                    source: building.source,
                    ours: false,
                    answered: true,
                });
                self.start_link(x.clone(), link, p, rx);
                self.send_description(&x, relay, "answer", &sdp);
            }
            Internal::Opened { peer: x, link } => {
                let Some(d) = self.take_pending(&x, link) else {
                    return;
                };
                let Some(p) = d.peer else { return };
                let offered_by = if d.ours { "us" } else { "peer" };
                tracing::debug!(peer = %x, link, offered_by, "data channel open");
                if self.connected.contains_key(&x) {
                    self.drop_connected(&x);
                }
                // The most recently opened link wins; every other attempt is closed.
                for other in self.pending.remove(&x).unwrap_or_default() {
                    self.detach(&x, other.link);
                    if let Some(op) = other.peer {
                        tokio::spawn(async move { op.close().await });
                    }
                }
                self.connected.insert(
                    x.clone(),
                    Connected {
                        link,
                        peer: p,
                        since: Instant::now(),
                        pubkey: d.source.map(|s| s.pubkey),
                    },
                );
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
                // Only now may the link hand on messages: the sync layer must see the
                // join before anything the peer sent, which its first frames often are.
                if let Some(w) = writer {
                    w.attached.store(true, Ordering::Release);
                    w.attach.notify_one();
                }
            }
            Internal::Closed { peer: x, link } => {
                if self.connected.get(&x).is_some_and(|c| c.link == link) {
                    self.drop_connected(&x);
                    let _ = self.events.send(RoomEvent::Left { peer: x }).await;
                } else {
                    self.forget_pending(&x, link);
                }
            }
        }
    }

    fn take_pending(&mut self, x: &str, link: u64) -> Option<Pending> {
        let list = self.pending.get_mut(x)?;
        let i = list.iter().position(|d| d.link == link)?;
        let d = list.remove(i);
        if list.is_empty() {
            self.pending.remove(x);
        }
        Some(d)
    }

    fn forget_pending(&mut self, x: &str, link: u64) {
        if let Some(d) = self.take_pending(x, link) {
            self.detach(x, link);
            if let Some(p) = d.peer {
                tokio::spawn(async move { p.close().await });
            }
        }
    }

    fn drop_connected(&mut self, x: &str) {
        if let Some(c) = self.connected.remove(x) {
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
        let stale: Vec<(String, u64)> = self
            .pending
            .iter()
            .flat_map(|(x, v)| {
                v.iter()
                    .filter(|d| d.since.elapsed() > if d.answered { dial } else { answer })
                    .map(move |d| (x.clone(), d.link))
            })
            .collect();
        for (x, link) in stale {
            self.forget_pending(&x, link);
        }
    }

    async fn leave(&mut self) {
        for c in self.connected.values() {
            let _ = c.peer.send(&frame::control(frame::LEAVE)).await;
        }
        self.publish(
            &self.root_topic.clone(),
            json!({"peerId": self.self_id, "bye": 1}),
            None,
        );
        // GenosRTC lingers 99 ms after @_leave before closing.
        tokio::time::sleep(Duration::from_millis(150)).await;
        self.links.lock().unwrap_or_else(|p| p.into_inner()).clear();
        let peers: Vec<Arc<Peer>> = self
            .connected
            .drain()
            .map(|(_, c)| c.peer)
            .chain(
                self.pending
                    .drain()
                    .flat_map(|(_, v)| v.into_iter().filter_map(|d| d.peer)),
            )
            .collect();
        for p in peers {
            p.close().await;
        }
    }
}
