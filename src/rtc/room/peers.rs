//! The signalling actor's peer tables: links being answered, links being built
//! (dials and answers), and connected peers. Pure bookkeeping, generic over the
//! peer handle so its invariants are tested without WebRTC:
//!
//! - a peer id is a key of `pending` only while it has at least one link there;
//! - link numbers are never reused;
//! - MAX_PEERS counts a peer once, whether connected, being dialled or being answered.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

/// Who sent a signal: the Nostr key that signed it and, on the daemon's own relay,
/// the relay connection that published it (relay index, connection id).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Source {
    pub(super) pubkey: String,
    pub(super) conn: Option<(usize, u64)>,
}

/// An answer being built (a PeerConnection exists).
pub(super) struct Answering {
    pub(super) peer: String,
    pub(super) source: Option<Source>,
    pub(super) since: Instant,
}

/// A link being built: our dial, or our answer once it is made.
pub(super) struct Pending<P> {
    pub(super) link: u64,
    pub(super) relay: usize,
    pub(super) peer: Option<P>,
    pub(super) since: Instant,
    /// The signal that made it (None: a dial of `cfg.dial`).
    pub(super) source: Option<Source>,
    /// Our own offer (a dial), rather than an answer to theirs.
    pub(super) ours: bool,
    /// Both descriptions are in place (always so for links we answered).
    pub(super) answered: bool,
}

/// A peer whose data channel opened.
pub(super) struct Connected<P> {
    pub(super) link: u64,
    pub(super) peer: P,
    pub(super) since: Instant,
    /// The Nostr key that made the link: only it speaks for this peer while linked.
    pub(super) pubkey: Option<String>,
}

/// Every peer the actor links with, connected or not yet.
pub(super) struct PeerTables<P> {
    /// Dials and answers not yet open, by peer.
    pending: HashMap<String, Vec<Pending<P>>>,
    connected: HashMap<String, Connected<P>>,
    /// Answers being built (a PeerConnection exists), by link: they count toward
    /// MAX_PEERS before they reach `pending`.
    answering: HashMap<u64, Answering>,
    next_link: u64,
}

impl<P> Default for PeerTables<P> {
    fn default() -> Self {
        Self {
            pending: HashMap::new(),
            connected: HashMap::new(),
            answering: HashMap::new(),
            next_link: 0,
        }
    }
}

impl<P: Clone> PeerTables<P> {
    /// A link number never given before.
    pub(super) fn new_link(&mut self) -> u64 {
        self.next_link += 1;
        self.next_link
    }

    /// Links being built (answers in the making and pending links).
    pub(super) fn building(&self) -> usize {
        self.answering.len() + self.pending.values().map(Vec::len).sum::<usize>()
    }

    /// Pending links (dials, and answers once made).
    pub(super) fn pending_count(&self) -> usize {
        self.pending.values().map(Vec::len).sum()
    }

    /// Links being built: (peer, link, source, since).
    fn building_list(&self) -> Vec<(&str, u64, Option<&Source>, Instant)> {
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

    /// The Nostr key that made `x`'s link (connected, or being built), if any.
    pub(super) fn owner_of(&self, x: &str) -> Option<&str> {
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

    /// Links being built that `source` made: (by its key, by its relay connection).
    pub(super) fn source_load(&self, source: &Source) -> (usize, usize) {
        let building = self.building_list();
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
        (by_key, by_conn)
    }

    /// Whether `x` is connected or has a PeerConnection being built.
    pub(super) fn has_link_to(&self, x: &str) -> bool {
        self.connected.contains_key(x)
            || self.pending.contains_key(x)
            || self.answering.values().any(|a| a.peer == x)
    }

    /// Peers connected or with a PeerConnection being built: what MAX_PEERS bounds.
    pub(super) fn peers_in_use(&self) -> usize {
        let mut peers: HashSet<&str> = self.connected.keys().map(String::as_str).collect();
        peers.extend(self.pending.keys().map(String::as_str));
        peers.extend(self.answering.values().map(|a| a.peer.as_str()));
        peers.len()
    }

    /// Room for one more peer: under `max` peers, and links being built under their
    /// share of it (half, or up to 4 when `max` is small).
    pub(super) fn has_room(&self, max: usize) -> bool {
        self.peers_in_use() < max && self.building() < (max / 2).max(max.min(4))
    }

    /// The link being built to close for a newcomer: the oldest of the sender holding
    /// the most, never one of the newcomer's own. (peer, link).
    pub(super) fn eviction_victim(&self, newcomer: &str) -> Option<(String, u64)> {
        let building = self.building_list();
        let mut counts: HashMap<&str, usize> = HashMap::new();
        for b in &building {
            *counts
                .entry(b.2.map_or("", |s| s.pubkey.as_str()))
                .or_default() += 1;
        }
        building
            .iter()
            .filter(|b| b.0 != newcomer)
            .max_by_key(|b| {
                let n = counts[b.2.map_or("", |s| s.pubkey.as_str())];
                (n, std::cmp::Reverse(b.3))
            })
            .map(|b| (b.0.to_owned(), b.1))
    }

    /// Whether a dial of `x` on `relay` may start: none on that relay yet, fewer than
    /// two for `x`, and fewer than `max_total` pending in all.
    pub(super) fn may_dial(&self, x: &str, relay: usize, max_total: usize) -> bool {
        let dials = self.pending.get(x).map_or(0, Vec::len);
        let already = self
            .pending
            .get(x)
            .is_some_and(|p| p.iter().any(|d| d.relay == relay));
        !already && dials < 2 && self.pending_count() < max_total
    }

    /// Whether our offer to `x` on `relay` is out (for glare).
    pub(super) fn offered_on(&self, x: &str, relay: usize) -> bool {
        self.pending.get(x).is_some_and(|p| {
            p.iter()
                .any(|d| d.ours && d.relay == relay && d.peer.is_some())
        })
    }

    /// Whether a dial of ours to `x` already has its answer: `x` took our offer, so an
    /// offer of its own that crosses it is not answered (see `Actor::on_offer`).
    pub(super) fn dial_answered(&self, x: &str) -> bool {
        self.pending
            .get(x)
            .is_some_and(|p| p.iter().any(|d| d.ours && d.answered))
    }

    /// The dial an answer from `pubkey` on `relay` completes, marked answered: ours,
    /// not answered yet, on that relay, offered, and (if a signal made it) by that key.
    pub(super) fn take_answerable_dial(
        &mut self,
        x: &str,
        relay: usize,
        pubkey: &str,
    ) -> Option<P> {
        let d = self.pending.get_mut(x)?.iter_mut().find(|d| {
            d.ours
                && !d.answered
                && d.relay == relay
                && d.peer.is_some()
                && d.source.as_ref().is_none_or(|s| s.pubkey == pubkey)
        })?;
        d.answered = true;
        d.peer.clone()
    }

    pub(super) fn is_pending(&self, x: &str) -> bool {
        self.pending.contains_key(x)
    }

    /// Whether `link` is still one of `x`'s pending links.
    pub(super) fn has_pending_link(&self, x: &str, link: u64) -> bool {
        self.pending
            .get(x)
            .is_some_and(|p| p.iter().any(|d| d.link == link))
    }

    /// Gives a dial its PeerConnection once its offer is made.
    pub(super) fn set_dial_peer(&mut self, x: &str, link: u64, peer: P) {
        if let Some(d) = self
            .pending
            .get_mut(x)
            .and_then(|v| v.iter_mut().find(|d| d.link == link))
        {
            d.peer = Some(peer);
        }
    }

    pub(super) fn push_pending(&mut self, x: String, d: Pending<P>) {
        self.pending.entry(x).or_default().push(d);
    }

    pub(super) fn start_answering(&mut self, link: u64, a: Answering) {
        self.answering.insert(link, a);
    }

    /// Ends an answer in the making; None when it was closed to make room.
    pub(super) fn finish_answering(&mut self, link: u64) -> Option<Answering> {
        self.answering.remove(&link)
    }

    /// Removes one pending link, and `x`'s entry with its last one.
    pub(super) fn take_pending(&mut self, x: &str, link: u64) -> Option<Pending<P>> {
        let list = self.pending.get_mut(x)?;
        let i = list.iter().position(|d| d.link == link)?;
        let d = list.remove(i);
        if list.is_empty() {
            self.pending.remove(x);
        }
        Some(d)
    }

    /// Removes every pending link of `x`.
    pub(super) fn take_all_pending(&mut self, x: &str) -> Vec<Pending<P>> {
        self.pending.remove(x).unwrap_or_default()
    }

    pub(super) fn connect(&mut self, x: String, c: Connected<P>) {
        self.connected.insert(x, c);
    }

    pub(super) fn connected(&self, x: &str) -> Option<&Connected<P>> {
        self.connected.get(x)
    }

    pub(super) fn is_connected(&self, x: &str) -> bool {
        self.connected.contains_key(x)
    }

    pub(super) fn remove_connected(&mut self, x: &str) -> Option<Connected<P>> {
        self.connected.remove(x)
    }

    pub(super) fn connected_ids(&self) -> Vec<String> {
        self.connected.keys().cloned().collect()
    }

    pub(super) fn connected_peers(&self) -> impl Iterator<Item = &P> {
        self.connected.values().map(|c| &c.peer)
    }

    /// Pending links past their timeout at `now`: `dial` once answered, else `answer`.
    pub(super) fn stale(
        &self,
        now: Instant,
        dial: Duration,
        answer: Duration,
    ) -> Vec<(String, u64)> {
        self.pending
            .iter()
            .flat_map(|(x, v)| {
                v.iter()
                    .filter(|d| {
                        now.saturating_duration_since(d.since)
                            > if d.answered { dial } else { answer }
                    })
                    .map(move |d| (x.clone(), d.link))
            })
            .collect()
    }

    /// Empties the connected and pending tables, giving back every PeerConnection.
    pub(super) fn drain(&mut self) -> Vec<P> {
        self.connected
            .drain()
            .map(|(_, c)| c.peer)
            .chain(
                self.pending
                    .drain()
                    .flat_map(|(_, v)| v.into_iter().filter_map(|d| d.peer)),
            )
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type T = PeerTables<u32>;

    fn src(key: &str, conn: Option<(usize, u64)>) -> Source {
        Source {
            pubkey: key.into(),
            conn,
        }
    }

    fn dial(t: &mut T, x: &str, relay: usize, since: Instant, source: Option<Source>) -> u64 {
        let link = t.new_link();
        t.push_pending(
            x.into(),
            Pending {
                link,
                relay,
                peer: Some(link as u32),
                since,
                source,
                ours: true,
                answered: false,
            },
        );
        link
    }

    fn answering(t: &mut T, x: &str, since: Instant, source: Source) -> u64 {
        let link = t.new_link();
        t.start_answering(
            link,
            Answering {
                peer: x.into(),
                source: Some(source),
                since,
            },
        );
        link
    }

    fn connect(t: &mut T, x: &str, key: Option<&str>) -> u64 {
        let link = t.new_link();
        t.connect(
            x.into(),
            Connected {
                link,
                peer: link as u32,
                since: Instant::now(),
                pubkey: key.map(Into::into),
            },
        );
        link
    }

    #[test]
    fn links_are_never_reused() {
        let mut t = T::default();
        let a = t.new_link();
        let b = t.new_link();
        assert!(b > a);
    }

    #[test]
    fn a_peer_leaves_pending_with_its_last_link() {
        let mut t = T::default();
        let now = Instant::now();
        let l1 = dial(&mut t, "x", 0, now, None);
        let l2 = dial(&mut t, "x", 1, now, None);
        assert!(t.take_pending("x", l1).is_some());
        assert!(t.is_pending("x") && t.has_link_to("x"));
        assert!(t.take_pending("x", l1).is_none(), "taken twice");
        assert!(t.take_pending("x", l2).is_some());
        assert!(!t.is_pending("x") && !t.has_link_to("x"));
        assert_eq!(t.building(), 0);
    }

    #[test]
    fn a_dial_counts_as_answered_once_its_answer_is_taken() {
        let mut t = T::default();
        let now = Instant::now();
        dial(&mut t, "x", 0, now, Some(src("k", None)));
        assert!(t.offered_on("x", 0) && !t.dial_answered("x"));
        assert!(t.take_answerable_dial("x", 0, "someone-else").is_none());
        assert!(
            !t.dial_answered("x"),
            "an answer from another key does not count"
        );
        assert!(t.take_answerable_dial("x", 0, "k").is_some());
        assert!(t.dial_answered("x") && !t.dial_answered("y"));
    }

    #[test]
    fn max_peers_counts_a_peer_once() {
        let mut t = T::default();
        let now = Instant::now();
        connect(&mut t, "x", Some("k"));
        dial(&mut t, "x", 0, now, None);
        answering(&mut t, "x", now, src("k", None));
        answering(&mut t, "y", now, src("k2", None));
        assert_eq!(t.peers_in_use(), 2);
        assert_eq!(t.building(), 3);
        assert!(t.has_link_to("y") && !t.has_link_to("z"));
    }

    #[test]
    fn owner_is_the_connected_key_first() {
        let mut t = T::default();
        let now = Instant::now();
        dial(&mut t, "x", 0, now, Some(src("dialer", None)));
        assert_eq!(t.owner_of("x"), Some("dialer"));
        answering(&mut t, "y", now, src("answerer", None));
        assert_eq!(t.owner_of("y"), Some("answerer"));
        connect(&mut t, "x", Some("linked"));
        assert_eq!(t.owner_of("x"), Some("linked"));
        assert_eq!(t.owner_of("nobody"), None);
    }

    #[test]
    fn source_load_counts_by_key_and_connection() {
        let mut t = T::default();
        let now = Instant::now();
        dial(&mut t, "a", 0, now, Some(src("k", Some((0, 7)))));
        answering(&mut t, "b", now, src("k", Some((0, 8))));
        answering(&mut t, "c", now, src("other", Some((0, 7))));
        assert_eq!(t.source_load(&src("k", Some((0, 7)))), (2, 2));
        assert_eq!(t.source_load(&src("k", None)), (2, 0));
        assert_eq!(t.source_load(&src("new", Some((1, 7)))), (0, 0));
    }

    #[test]
    fn links_being_built_hold_at_most_their_share() {
        let mut t = T::default();
        let now = Instant::now();
        for i in 0..4 {
            answering(&mut t, &format!("p{i}"), now, src("k", None));
        }
        // max 8: share 4, so full; max 10: share 5, room.
        assert!(!t.has_room(8));
        assert!(t.has_room(10));
        // A small MAX_PEERS still allows up to 4 being built, never past MAX_PEERS.
        assert!(!t.has_room(4));
        let mut small = T::default();
        answering(&mut small, "a", now, src("k", None));
        assert!(small.has_room(2));
        answering(&mut small, "b", now, src("k", None));
        assert!(!small.has_room(2));
    }

    #[test]
    fn the_victim_is_the_oldest_of_the_busiest_sender() {
        let mut t = T::default();
        let t0 = Instant::now();
        let later = t0 + Duration::from_secs(1);
        answering(&mut t, "quiet", t0, src("one", None));
        let old = answering(&mut t, "s1", t0, src("busy", None));
        dial(&mut t, "s2", 0, later, Some(src("busy", None)));
        assert_eq!(t.eviction_victim("newcomer"), Some(("s1".into(), old)));
        // Never the newcomer's own link.
        let mut only = T::default();
        answering(&mut only, "n", t0, src("k", None));
        assert_eq!(only.eviction_victim("n"), None);
    }

    #[test]
    fn dials_are_bounded() {
        let mut t = T::default();
        let now = Instant::now();
        assert!(t.may_dial("x", 0, 10));
        dial(&mut t, "x", 0, now, None);
        assert!(!t.may_dial("x", 0, 10), "one per relay");
        assert!(t.may_dial("x", 1, 10));
        dial(&mut t, "x", 1, now, None);
        assert!(!t.may_dial("x", 2, 10), "two per peer");
        assert!(t.may_dial("y", 0, 3));
        assert!(!t.may_dial("y", 0, 2), "the total bound");
    }

    #[test]
    fn an_answer_completes_one_matching_dial_once() {
        let mut t = T::default();
        let now = Instant::now();
        let link = dial(&mut t, "x", 0, now, Some(src("k", None)));
        assert!(t.offered_on("x", 0) && !t.offered_on("x", 1));
        assert_eq!(t.take_answerable_dial("x", 1, "k"), None, "other relay");
        assert_eq!(
            t.take_answerable_dial("x", 0, "intruder"),
            None,
            "other key"
        );
        assert_eq!(t.take_answerable_dial("x", 0, "k"), Some(link as u32));
        assert_eq!(
            t.take_answerable_dial("x", 0, "k"),
            None,
            "answered already"
        );
        // A dial without its PeerConnection yet cannot be answered.
        let link = t.new_link();
        t.push_pending(
            "y".into(),
            Pending {
                link,
                relay: 0,
                peer: None,
                since: now,
                source: None,
                ours: true,
                answered: false,
            },
        );
        assert!(!t.offered_on("y", 0));
        assert_eq!(t.take_answerable_dial("y", 0, "any"), None);
        t.set_dial_peer("y", link, 99);
        assert_eq!(t.take_answerable_dial("y", 0, "any"), Some(99));
    }

    #[test]
    fn stale_links_use_their_own_timeout() {
        let mut t = T::default();
        let t0 = Instant::now();
        let waiting = dial(&mut t, "a", 0, t0, None);
        let answered = dial(&mut t, "b", 0, t0, None);
        assert!(t.take_answerable_dial("b", 0, "k").is_some());
        let (dial_to, answer_to) = (Duration::from_secs(60), Duration::from_secs(10));
        assert!(
            t.stale(t0 + Duration::from_secs(5), dial_to, answer_to)
                .is_empty()
        );
        let s = t.stale(t0 + Duration::from_secs(11), dial_to, answer_to);
        assert_eq!(s, vec![("a".to_string(), waiting)]);
        let mut s = t.stale(t0 + Duration::from_secs(61), dial_to, answer_to);
        s.sort();
        assert_eq!(s, vec![("a".into(), waiting), ("b".into(), answered)]);
    }

    #[test]
    fn drain_gives_back_every_peer_connection() {
        let mut t = T::default();
        let now = Instant::now();
        connect(&mut t, "x", None);
        dial(&mut t, "y", 0, now, None);
        dial(&mut t, "y", 1, now, None);
        let mut peers = t.drain();
        peers.sort();
        assert_eq!(peers.len(), 3);
        assert_eq!(t.peers_in_use(), 0);
        assert!(t.connected_ids().is_empty());
    }
}
