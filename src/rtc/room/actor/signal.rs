//! What the actor does with a signal from the relays: a bye, an announce (dial), an
//! offer (answer, unless our own offer wins the glare) or an answer (completes our
//! dial), once the topology, the per-source shares and MAX_PEERS admit it.

use super::super::peers::{Answering, Source};
use super::super::{PENDING_PER_CONNECTION, PENDING_PER_KEY, valid_peer_id};
use super::{Actor, Internal};
use crate::rtc::peer::Peer;
use crate::rtc::topic;
use nostr_sdk::prelude::{Alphabet, Event, SingleLetterTag, TagKind};
use serde_json::{Value, json};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// The SDP of a signal's `offer` or `answer`, still sealed.
fn sealed_sdp<'a>(m: &'a Value, kind: &str) -> Option<&'a str> {
    m.get(kind)
        .and_then(|o| o.get("sdp"))
        .and_then(Value::as_str)
}

impl Actor {
    pub(super) fn on_signal(&mut self, relay: usize, event: &Event, origin: Option<u64>) {
        self.stats.signals_in.fetch_add(1, Ordering::Relaxed);
        let Some((x, m, to_us)) = self.parse_signal(event) else {
            return;
        };
        let source = Source {
            pubkey: event.pubkey.to_hex(),
            conn: origin.map(|o| (relay, o)),
        };
        if m.get("bye")
            .is_some_and(|b| !b.is_null() && b != &json!(false))
        {
            self.on_bye(&x, &source);
            return;
        }
        if !self.topology_admits(&x) {
            return;
        }
        let offer = sealed_sdp(&m, "offer");
        let answer = sealed_sdp(&m, "answer");
        if answer.is_none() && !self.admits(&x, offer.is_some(), &source) {
            return;
        }
        if let Some(t) = m.get("type").and_then(Value::as_str) {
            self.types.insert(x.clone(), t.chars().take(32).collect());
        }
        if let Some(c) = self.peers.connected(&x) {
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
            self.on_offer(x, relay, sealed, source);
        } else if let Some(sealed) = answer {
            self.on_answer(&x, relay, sealed, &source);
        } else if to_us || self.cfg.dial_wait.is_zero() || self.peers.has_link_to(&x) {
            // An announce on our own topic is a peer asking us to dial it (see `invite`).
            self.maybe_dial(x, relay, Some(source));
        } else {
            self.invite(x, relay, source);
        }
    }

    /// A peer heard on the room's topic with no link to us yet: an announce of ours on
    /// its own topic asks it to dial us, and we dial it ourselves only if it has not
    /// offered within `dial_wait`. GenosRTC dials on any announce, with an offer from
    /// its pool that began gathering when it joined, whereas answering our offer costs
    /// it a fresh ICE gathering (150–210 ms on loopback) before it can reply. Our own
    /// rooms dial at once on an announce on their own topic, so two daemons link
    /// after one invitation. At most MAX_PEERS invitations wait at once; past that, the
    /// peer is dialled at once as before.
    fn invite(&mut self, x: String, relay: usize, source: Source) {
        if self.invited.contains(&x) {
            return;
        }
        if self.invited.len() >= self.cfg.limits.max_peers {
            self.maybe_dial(x, relay, Some(source));
            return;
        }
        tracing::debug!(peer = %x, relay, "inviting the peer to dial us");
        self.invited.insert(x.clone());
        let to = topic::self_topic(&self.cfg.app_id, &self.cfg.room_id, &x);
        self.publish(&to, json!({"peerId": self.self_id}), Some(relay));
        let internal = self.internal.clone();
        let wait = self.cfg.dial_wait;
        tokio::spawn(async move {
            tokio::time::sleep(wait).await;
            let _ = internal
                .send(Internal::DialDue {
                    peer: x,
                    relay,
                    source,
                })
                .await;
        });
    }

    /// The invited peer had `dial_wait` to dial us: dialled now unless it did (or it
    /// may no longer be admitted).
    pub(super) fn on_dial_due(&mut self, x: String, relay: usize, source: Source) {
        self.invited.remove(&x);
        if self.peers.has_link_to(&x) {
            return;
        }
        if !self.topology_admits(&x) || !self.admits(&x, false, &source) {
            return;
        }
        tracing::debug!(peer = %x, relay, "the invited peer did not dial us");
        self.maybe_dial(x, relay, Some(source));
    }

    /// A signal on one of our topics from another peer we do not ignore: its peer id,
    /// its content, and whether it came on our own topic (rather than the room's).
    fn parse_signal(&self, event: &Event) -> Option<(String, Value, bool)> {
        let topic = event
            .tags
            .find(TagKind::SingleLetter(SingleLetterTag::lowercase(
                Alphabet::X,
            )))
            .and_then(|t| t.content());
        if !topic.is_some_and(|t| t == self.root_topic || t == self.self_topic) {
            return None;
        }
        let m = serde_json::from_str::<Value>(event.content.as_str()).ok()?;
        let x = m
            .get("peerId")
            .and_then(Value::as_str)
            .filter(|x| valid_peer_id(x))?;
        if x == self.self_id || self.ignores(&m) {
            return None;
        }
        Some((x.to_owned(), m, topic == Some(self.self_topic.as_str())))
    }

    fn on_bye(&mut self, x: &str, source: &Source) {
        // The peer id is not signed by anything the peer owns: while `x` has a
        // link, only the Nostr key that made it may say goodbye for it.
        if self.peers.owner_of(x).is_some_and(|k| k != source.pubkey) {
            self.stats.impostor_signals.fetch_add(1, Ordering::Relaxed);
            return;
        }
        self.types.remove(x);
        if let Some(o) = &self.overlay {
            o.mesh.lock().unwrap_or_else(|p| p.into_inner()).bye(x);
        }
    }

    /// Cells mode: notes that `x` was heard; §8.7: only peers the topology admits are
    /// dialled or answered.
    fn topology_admits(&self, x: &str) -> bool {
        let Some(o) = &self.overlay else {
            return true;
        };
        let mut mesh = o.mesh.lock().unwrap_or_else(|p| p.into_inner());
        mesh.heard(x, Instant::now());
        self.peers.is_connected(x) || mesh.admit(x, Instant::now())
    }

    /// An offer or an announce may make a new link: not past its sender's share, and,
    /// for a new peer, not past MAX_PEERS; only an offer closes a link being built to
    /// make room (announces are too cheap to forge). An answer only ever completes a
    /// dial of ours, which already counts, so it is not asked.
    fn admits(&mut self, x: &str, offer: bool, source: &Source) -> bool {
        if self.source_full(source) {
            return false;
        }
        if self.peers.has_link_to(x) {
            return true;
        }
        let full = self.peers.peers_in_use() >= self.cfg.limits.max_peers;
        let room = if offer {
            self.make_room(x)
        } else {
            self.peers.has_room(self.cfg.limits.max_peers)
        };
        // An announce while only the links being built are at their share is not a
        // refusal: the peer is dialled at a later announce, or dials us.
        if !room && (full || offer) {
            self.refuse_peer(x);
        }
        room
    }

    /// An offer: answered, unless our own offer wins the glare: it was answered already
    /// (the peer took it, and its link is coming up), or it is out on that relay and our
    /// peer id is the greater (GenosRTC's rule). A browser that answers our offer may still
    /// send one from its pool, dialling because it heard our announce; answering that
    /// replaced a link just before it opened, and the browser's first message on it with it.
    fn on_offer(&mut self, x: String, relay: usize, sealed: &str, source: Source) {
        let answered = self.peers.dial_answered(&x);
        let ours_wins =
            answered || (self.peers.offered_on(&x, relay) && self.self_id.as_str() > x.as_str());
        tracing::debug!(peer = %x, relay, ours_wins, answered, "offer received");
        if ours_wins {
            return;
        }
        let Ok(sdp) = self.open(sealed) else { return };
        self.spawn_answer(x, relay, sdp, source);
    }

    /// An answer: applied to the dial of ours it completes, if one waits for it.
    fn on_answer(&mut self, x: &str, relay: usize, sealed: &str, source: &Source) {
        let Some(dial) = self.peers.take_answerable_dial(x, relay, &source.pubkey) else {
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
    }

    /// PENDING_PER_KEY and PENDING_PER_CONNECTION: true (and counted) when `source`
    /// already has as many links being built as it may.
    fn source_full(&mut self, source: &Source) -> bool {
        let (by_key, by_conn) = self.peers.source_load(source);
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

    /// Whether a new peer may have a link built: MAX_PEERS bounds links open and being
    /// built, and links being built at most half of it. When either is full, the
    /// oldest link being built of the sender with the most is closed to make room;
    /// open links are never closed for a newcomer.
    fn make_room(&mut self, newcomer: &str) -> bool {
        let max = self.cfg.limits.max_peers;
        // Each round closes one link being built; there are never more rounds than that.
        for _ in 0..=self.peers.building() {
            if self.peers.has_room(max) {
                return true;
            }
            let Some((x, link)) = self.peers.eviction_victim(newcomer) else {
                return false;
            };
            self.stats.evicted_pending.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(peer = %x, link, "closing a link being built to make room");
            if self.peers.finish_answering(link).is_none() {
                self.forget_pending(&x, link);
            }
        }
        self.peers.has_room(max)
    }

    /// With `only_superpeers`, everything but a superpeer's offer or answer and a bye.
    fn ignores(&self, m: &Value) -> bool {
        self.cfg.only_superpeers
            && m.get("bye").is_none()
            && m.get("type").and_then(Value::as_str) != Some("superpeer")
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

    fn spawn_answer(&mut self, x: String, relay: usize, offer_sdp: String, source: Source) {
        let link = self.peers.new_link();
        self.peers.start_answering(
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
}
