//! The sync protocol's decisions, without I/O (genosdb-data.md §6–§8): what a batch
//! from a peer does to the store, which replies it earns, and when each peer gets our
//! `sync`. The service in `service.rs` carries these decisions out.

use super::message::{Batch, Message};
use crate::store::{Hlc, Store, SyncReply};
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// When a newly joined peer gets our `sync`, counted from its join. genossrv's
/// schedule (§6.1); we stop early once the peer has sent its state (see [`Engine`]).
pub(crate) const SYNC_SCHEDULE: [Duration; 4] = [
    Duration::ZERO,
    Duration::from_millis(1500),
    Duration::from_millis(4000),
    Duration::from_millis(9000),
];

/// No counter-reply full state to a peer that got a full state from us this recently.
///
/// A full state bigger than one message goes out in parts, and a browser answers
/// every part after the first with its own full state (it holds ids that part lacks,
/// §7.5). Those answers, and any that are too big to reach us, would each ask for our
/// full state again. A peer that got every part of ours within the cooldown already
/// holds everything we would send, so we do not.
pub(crate) const COUNTER_REPLY_COOLDOWN: Duration = Duration::from_secs(30);

/// A peer whose own `sync` has not reached us this long after its join gets the reply
/// anyway. Every peer sends `sync` the moment its channel opens, yet real browsers'
/// first message is sometimes lost at that moment (the harness saw it with genossrv
/// and with us); the browser never asks again, and would otherwise leave empty-handed.
pub(crate) const UNASKED_REPLY_AFTER: Duration = Duration::from_millis(1500);

/// What one batch from a peer did, and what it asks of us.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Applied {
    /// Our answer to each `sync` in the batch, decided against the store at that point.
    pub requests: Vec<SyncReply>,
    /// The peer sent us its state (a `deltaSync` or a `fullStateSync`).
    pub answered: bool,
    /// A full state from the peer lacked ids we hold (§7.5).
    pub counter_reply: bool,
    /// A full state from the peer held every id we hold: the peer has the whole graph.
    pub holds_all: bool,
    /// The global timestamp the peer's last delta or full state carried.
    pub peer_ts: Option<Option<Hlc>>,
    /// Live ops, delta ops and adopted nodes that changed the store.
    pub merged: usize,
    pub unknown: usize,
    pub rejected: usize,
    /// The live ops (`upsert`, `link`, `remove` elements) that changed the store, as
    /// indices into the batch's messages: what FORWARD_OPS hands on.
    pub merged_ops: Vec<usize>,
}

/// Applies a batch, in order, through the store's merge rules (§7).
pub fn apply_batch(store: &mut Store, batch: Batch, now_ms: u64) -> Applied {
    let mut applied = Applied {
        rejected: batch.rejected.len(),
        ..Applied::default()
    };
    for (i, msg) in batch.messages.into_iter().enumerate() {
        match msg {
            Message::Sync(ts) => applied.requests.push(store.sync_reply(ts)),
            Message::Op(op) => {
                if store.apply(op, now_ms) {
                    applied.merged += 1;
                    applied.merged_ops.push(i);
                }
            }
            Message::Delta { ops, ts } => {
                applied.answered = true;
                applied.peer_ts = Some(ts);
                applied.merged += store.delta(ops, now_ms);
            }
            Message::Full(state) => {
                applied.answered = true;
                applied.peer_ts = Some(state.ts);
                let outcome = store.full_state(state);
                applied.merged += outcome.adopted + outcome.removed;
                applied.counter_reply |= outcome.counter_reply;
                applied.holds_all |= !outcome.counter_reply;
            }
            Message::Unknown(_) => applied.unknown += 1,
        }
    }
    applied
}

#[derive(Debug, Clone)]
struct PeerSync {
    joined: Instant,
    /// Entries of SYNC_SCHEDULE already sent.
    syncs_sent: usize,
    /// The peer has sent its state: the rest of the schedule would only make it send
    /// the same state again.
    answered: bool,
    last_full: Option<Instant>,
    /// The peer sent us a `sync`, or we replied as if it had.
    served: bool,
    /// The global timestamp of the peer's last delta or full state, if any came.
    their_ts: Option<Hlc>,
}

/// Per-peer sync state.
///
/// Differences from genossrv, each to cut traffic that changes nothing:
/// - our `sync` goes to the joining peer only, not to the whole room;
/// - replies go to the peer that asked, once (genossrv broadcasts each twice, 2.5 s
///   apart): the asker's channel is open and ordered, and every other peer asks for
///   itself when it joins;
/// - the sync schedule stops once the peer has sent its state. A peer with an empty
///   oplog sends nothing back, so it still gets every repeat, which covers a first
///   `sync` that reached it before it was listening.
#[derive(Debug, Default)]
pub(crate) struct Engine {
    peers: HashMap<String, PeerSync>,
}

impl Engine {
    /// A peer joined (or rejoined on a new link): its schedule starts over.
    pub(crate) fn join(&mut self, peer: &str, now: Instant) {
        self.peers.insert(
            peer.to_owned(),
            PeerSync {
                joined: now,
                syncs_sent: 0,
                answered: false,
                last_full: None,
                served: false,
                their_ts: None,
            },
        );
    }

    pub(crate) fn leave(&mut self, peer: &str) {
        self.peers.remove(peer);
    }

    /// Peers whose next `sync` is due at `now`; each is counted as sent.
    pub(crate) fn due_syncs(&mut self, now: Instant) -> Vec<String> {
        let mut due = Vec::new();
        for (id, p) in &mut self.peers {
            let Some(next) = Self::next_for(p) else {
                continue;
            };
            if next <= now {
                // One sync even if several slots passed (a stalled loop must not burst).
                while Self::next_for(p).is_some_and(|t| t <= now) {
                    p.syncs_sent += 1;
                }
                due.push(id.clone());
            }
        }
        due
    }

    /// Peers whose own `sync` never came (see UNASKED_REPLY_AFTER), with the global
    /// timestamp their state carried, if any: the reply is decided as if they had
    /// sent `sync` with it. Each peer is returned once per join.
    pub(crate) fn unasked(&mut self, now: Instant) -> Vec<(String, Option<Hlc>)> {
        let mut due = Vec::new();
        for (id, p) in &mut self.peers {
            if !p.served && p.joined + UNASKED_REPLY_AFTER <= now {
                p.served = true;
                due.push((id.clone(), p.their_ts));
            }
        }
        due
    }

    /// Peers whose first exchange is still going on: they have not sent their state
    /// and their `sync` schedule has not run out. What we hold may still change a lot.
    pub(crate) fn unsettled(&self, now: Instant) -> usize {
        let window = SYNC_SCHEDULE.last().copied().unwrap_or_default() + UNASKED_REPLY_AFTER;
        self.peers
            .values()
            .filter(|p| !p.answered && now < p.joined + window)
            .count()
    }

    /// When the next `sync` or unasked reply falls due, if any is still scheduled.
    pub(crate) fn next_due(&self) -> Option<Instant> {
        let unasked = self
            .peers
            .values()
            .filter(|p| !p.served)
            .map(|p| p.joined + UNASKED_REPLY_AFTER);
        self.peers
            .values()
            .filter_map(Self::next_for)
            .chain(unasked)
            .min()
    }

    fn next_for(p: &PeerSync) -> Option<Instant> {
        if p.answered {
            return None;
        }
        SYNC_SCHEDULE.get(p.syncs_sent).map(|d| p.joined + *d)
    }

    /// The replies a batch from `peer` earns: at most one full state or one delta.
    pub(crate) fn replies(
        &mut self,
        peer: &str,
        applied: &Applied,
        now: Instant,
    ) -> Option<SyncReply> {
        let p = self.peers.get_mut(peer)?;
        if applied.answered {
            p.answered = true;
        }
        if let Some(ts) = applied.peer_ts {
            p.their_ts = ts;
        }
        if !applied.requests.is_empty() {
            p.served = true;
        }
        let asked = if applied.requests.contains(&SyncReply::Full) {
            Some(SyncReply::Full)
        } else {
            applied.requests.first().copied()
        };
        let reply = match asked {
            Some(r) => Some(r),
            None if applied.counter_reply
                && p.last_full
                    .is_none_or(|t| now.duration_since(t) >= COUNTER_REPLY_COOLDOWN) =>
            {
                Some(SyncReply::Full)
            }
            None => None,
        };
        if reply == Some(SyncReply::Full) {
            p.last_full = Some(now);
        }
        reply
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sync::message::parse_json;

    fn at(base: Instant, ms: u64) -> Instant {
        base + Duration::from_millis(ms)
    }

    #[test]
    fn a_silent_peer_gets_the_whole_schedule_and_no_burst() {
        let t0 = Instant::now();
        let mut e = Engine::default();
        e.join("p", t0);
        assert_eq!(e.due_syncs(t0), vec!["p"]);
        assert!(e.due_syncs(at(t0, 1499)).is_empty());
        assert_eq!(e.next_due(), Some(at(t0, 1500)));
        assert_eq!(e.unasked(at(t0, 1499)), vec![]);
        assert_eq!(e.unasked(at(t0, 1500)), vec![("p".to_owned(), None)]);
        assert_eq!(e.unasked(at(t0, 5000)), vec![], "once per join");
        assert_eq!(e.due_syncs(at(t0, 1500)), vec!["p"]);
        // A loop that wakes late sends one sync for the two slots it missed.
        assert_eq!(e.due_syncs(at(t0, 9500)), vec!["p"]);
        assert_eq!(e.next_due(), None);
        assert!(e.due_syncs(at(t0, 60_000)).is_empty());
    }

    #[test]
    fn the_schedule_stops_once_the_peer_sent_its_state() {
        let t0 = Instant::now();
        let mut e = Engine::default();
        e.join("p", t0);
        e.due_syncs(t0);
        let answered = Applied {
            answered: true,
            ..Applied::default()
        };
        assert_eq!(e.replies("p", &answered, at(t0, 100)), None);
        assert_eq!(
            e.next_due(),
            Some(at(t0, 1500)),
            "only the unasked reply is left"
        );
        // Rejoining starts over.
        e.join("p", at(t0, 200));
        assert_eq!(e.due_syncs(at(t0, 200)), vec!["p"]);
    }

    #[test]
    fn a_peer_that_asked_gets_no_unasked_reply_and_one_that_did_not_is_judged_by_its_state() {
        let t0 = Instant::now();
        let mut e = Engine::default();
        e.join("asked", t0);
        e.join("silent", t0);
        let ask = Applied {
            requests: vec![SyncReply::Delta],
            ..Applied::default()
        };
        e.replies("asked", &ask, t0);
        let ts = Hlc::new(77, 1);
        let state = Applied {
            answered: true,
            peer_ts: Some(Some(ts)),
            ..Applied::default()
        };
        e.replies("silent", &state, t0);
        assert_eq!(
            e.unasked(at(t0, 3000)),
            vec![("silent".to_owned(), Some(ts))]
        );
    }

    #[test]
    fn one_reply_per_batch_and_full_wins() {
        let mut e = Engine::default();
        let t0 = Instant::now();
        e.join("p", t0);
        let both = Applied {
            requests: vec![SyncReply::Delta, SyncReply::Full, SyncReply::Delta],
            ..Applied::default()
        };
        assert_eq!(e.replies("p", &both, t0), Some(SyncReply::Full));
        let delta = Applied {
            requests: vec![SyncReply::Delta],
            ..Applied::default()
        };
        assert_eq!(e.replies("p", &delta, t0), Some(SyncReply::Delta));
        assert_eq!(e.replies("stranger", &delta, t0), None);
    }

    #[test]
    fn counter_replies_wait_out_the_cooldown_but_requests_do_not() {
        let mut e = Engine::default();
        let t0 = Instant::now();
        e.join("p", t0);
        let counter = Applied {
            counter_reply: true,
            answered: true,
            ..Applied::default()
        };
        assert_eq!(e.replies("p", &counter, t0), Some(SyncReply::Full));
        assert_eq!(e.replies("p", &counter, at(t0, 1000)), None);
        let ask = Applied {
            requests: vec![SyncReply::Full],
            ..Applied::default()
        };
        assert_eq!(e.replies("p", &ask, at(t0, 2000)), Some(SyncReply::Full));
        let later = at(t0, 2000) + COUNTER_REPLY_COOLDOWN;
        assert_eq!(e.replies("p", &counter, later), Some(SyncReply::Full));
    }

    #[test]
    fn a_batch_applies_in_order_and_reports_what_it_asks() {
        let mut s = Store::new(100);
        let batch = parse_json(
            r#"[{"type":"sync","timestamp":null},
                {"type":"upsert","id":"a","value":1,"timestamp":{"physical":10,"logical":0}},
                {"type":"deltaSync","operations":[{"type":"upsert","id":"b","value":2,"timestamp":{"physical":11,"logical":0}}],"timestamp":null},
                {"type":"fullStateSync","graphData":{"c":{"id":"c","value":3,"edges":[],"timestamp":{"physical":12,"logical":0}}},"removals":[],"timestamp":null},
                {"type":"bogus"}, 7]"#,
        )
        .unwrap();
        let applied = apply_batch(&mut s, batch, 1_000_000);
        assert_eq!(applied.requests, vec![SyncReply::Full]);
        assert!(applied.answered);
        assert_eq!(applied.merged, 3);
        assert!(
            applied.counter_reply,
            "we hold a and b, which the full state lacks"
        );
        assert_eq!(applied.unknown, 1);
        assert_eq!(applied.rejected, 1);
        assert_eq!(s.len(), 3);
    }
}
