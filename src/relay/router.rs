//! Which connections an event can interest, found by its `x` tags, and the bounded
//! mailboxes events wait in.
//!
//! GenosRTC subscribes by topic (`#x`), so an event is handed only to the connections
//! that subscribed to one of its `x` values, plus those with a subscription that names
//! no `x` (they may want anything). Each connection then checks its own filters. Waking
//! every connection for every event costs a thousand wake-ups per announce at a
//! thousand peers, which is what this avoids.
//!
//! Every event waiting for a connection, or being written to it, is charged to that
//! connection (at most `per_connection` bytes) and to the whole relay (at most
//! `total`): a client that does not read loses events, and the relay's memory stays
//! bounded however many such clients there are. The daemon's own connection is
//! charged to itself only, so strangers cannot starve it.

pub use super::event::Relayed;
use super::filter::Filter;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::mpsc;

/// Events a connection may have waiting: one that does not read loses the rest.
pub const MAILBOX: usize = 1024;

/// What an event costs a mailbox beyond its JSON and its tags' strings: the parsed
/// fields, the tags' index, and the `Arc`.
const EVENT_OVERHEAD: usize = 384;
/// What each tag costs beyond its strings (`nostr::Tag` holds its standardized form).
const TAG_OVERHEAD: usize = std::mem::size_of::<nostr_sdk::Tag>() + 16;

/// Bytes of events queued or being written, per connection and for the whole relay.
#[derive(Debug)]
pub struct Budget {
    pub per_connection: usize,
    pub total: usize,
    used: AtomicUsize,
}

impl Budget {
    pub fn new(per_connection: usize, total: usize) -> Self {
        Self {
            per_connection,
            total,
            used: AtomicUsize::new(0),
        }
    }

    /// Bytes charged to the relay's total right now.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    fn reserve(counter: &AtomicUsize, cost: usize, limit: usize) -> bool {
        counter
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |u| {
                (u + cost <= limit).then_some(u + cost)
            })
            .is_ok()
    }
}

impl Default for Budget {
    fn default() -> Self {
        Self::new(1 << 20, 64 << 20)
    }
}

/// What one event costs while it waits or is written.
pub fn cost(ev: &Relayed) -> usize {
    ev.raw.get().len()
        + TAG_OVERHEAD * ev.tags.len()
        + ev.content.len()
        + ev.tags
            .iter()
            .flat_map(|t| t.as_slice())
            .map(|s| 24 + s.len())
            .sum::<usize>()
        + EVENT_OVERHEAD
}

/// An event handed to a connection, with the id of the connection that published it.
/// Its bytes stay charged until it is dropped (after it has been written).
pub struct Delivery {
    pub event: Arc<Relayed>,
    pub from: u64,
    cost: usize,
    mine: Arc<AtomicUsize>,
    total: Option<Arc<Budget>>,
}

impl Drop for Delivery {
    fn drop(&mut self) {
        self.mine.fetch_sub(self.cost, Ordering::AcqRel);
        if let Some(t) = &self.total {
            t.used.fetch_sub(self.cost, Ordering::AcqRel);
        }
    }
}

/// A connection's end of its mailbox.
pub struct MailboxRx(mpsc::Receiver<Delivery>);

impl MailboxRx {
    pub async fn recv(&mut self) -> Option<Delivery> {
        self.0.recv().await
    }

    /// Test helper: a waiting delivery, if any.
    pub fn try_recv(&mut self) -> Option<Delivery> {
        self.0.try_recv().ok()
    }
}

/// What a connection's subscriptions listen to.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Interest {
    pub topics: Vec<String>,
    /// A subscription without an `#x` filter.
    pub everything: bool,
}

impl Interest {
    pub fn of<'a>(filters: impl IntoIterator<Item = &'a Filter>) -> Self {
        let mut interest = Self::default();
        for f in filters {
            match f.topics() {
                Some(values) => interest.topics.extend(values.map(str::to_owned)),
                None => interest.everything = true,
            }
        }
        interest.topics.sort();
        interest.topics.dedup();
        interest
    }
}

struct Mailbox {
    tx: mpsc::Sender<Delivery>,
    interest: Interest,
    /// Bytes waiting in this mailbox or being written.
    queued: Arc<AtomicUsize>,
    /// Charged to the relay's total too (every connection but the daemon's own).
    counted: bool,
}

#[derive(Default)]
struct Routes {
    next: u64,
    mailboxes: HashMap<u64, Mailbox>,
    by_topic: HashMap<String, HashSet<u64>>,
    everything: HashSet<u64>,
}

impl Routes {
    fn unlink(&mut self, id: u64, interest: &Interest) {
        for topic in &interest.topics {
            if let Some(ids) = self.by_topic.get_mut(topic) {
                ids.remove(&id);
                if ids.is_empty() {
                    self.by_topic.remove(topic);
                }
            }
        }
        self.everything.remove(&id);
    }

    fn link(&mut self, id: u64, interest: &Interest) {
        for topic in &interest.topics {
            self.by_topic.entry(topic.clone()).or_default().insert(id);
        }
        if interest.everything {
            self.everything.insert(id);
        }
    }
}

/// Delivery counts of one event.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Routed {
    pub delivered: u64,
    /// Mailboxes that were full (by count or bytes), or the relay's total was.
    pub lost: u64,
    /// Of those, lost to the relay's total.
    pub over_total: u64,
}

pub struct Router {
    routes: Mutex<Routes>,
    budget: Arc<Budget>,
}

impl Default for Router {
    fn default() -> Self {
        Self::new(Arc::new(Budget::default()))
    }
}

impl Router {
    pub fn new(budget: Arc<Budget>) -> Self {
        Self {
            routes: Mutex::default(),
            budget,
        }
    }

    pub fn budget(&self) -> &Budget {
        &self.budget
    }

    /// A new connection, listening to nothing yet, and where its events arrive.
    /// `own` is the daemon's own connection: not charged to the relay's total.
    pub fn register(&self, own: bool) -> (u64, MailboxRx) {
        let (tx, rx) = mpsc::channel(MAILBOX);
        let mut r = self.lock();
        r.next += 1;
        let id = r.next;
        r.mailboxes.insert(
            id,
            Mailbox {
                tx,
                interest: Interest::default(),
                queued: Arc::default(),
                counted: !own,
            },
        );
        (id, MailboxRx(rx))
    }

    /// The connection's subscriptions changed.
    pub fn listen(&self, id: u64, interest: Interest) {
        let mut r = self.lock();
        let Some(old) = r.mailboxes.get(&id).map(|m| m.interest.clone()) else {
            return;
        };
        if old == interest {
            return;
        }
        r.unlink(id, &old);
        r.link(id, &interest);
        if let Some(m) = r.mailboxes.get_mut(&id) {
            m.interest = interest;
        }
    }

    pub fn remove(&self, id: u64) {
        let mut r = self.lock();
        if let Some(m) = r.mailboxes.remove(&id) {
            r.unlink(id, &m.interest);
        }
    }

    /// Hands `ev`, published by connection `from`, to every connection it can
    /// interest, without waiting for any. A mailbox over its count or bytes, or a relay
    /// over its total, loses the event.
    pub fn route(&self, ev: &Arc<Relayed>, from: u64) -> Routed {
        let cost = cost(ev);
        let r = self.lock();
        let mut targets: HashSet<u64> = r.everything.clone();
        for topic in ev.topics() {
            if let Some(ids) = r.by_topic.get(topic) {
                targets.extend(ids);
            }
        }
        let mut routed = Routed::default();
        for id in targets {
            let Some(m) = r.mailboxes.get(&id) else {
                continue;
            };
            if !Budget::reserve(&m.queued, cost, self.budget.per_connection) {
                routed.lost += 1;
                continue;
            }
            let total = m.counted.then(|| self.budget.clone());
            if let Some(t) = &total
                && !Budget::reserve(&t.used, cost, t.total)
            {
                m.queued.fetch_sub(cost, Ordering::AcqRel);
                routed.lost += 1;
                routed.over_total += 1;
                continue;
            }
            // From here on, dropping the delivery (sent or not) gives the bytes back.
            let d = Delivery {
                event: ev.clone(),
                from,
                cost,
                mine: m.queued.clone(),
                total,
            };
            match m.tx.try_send(d) {
                Ok(()) => routed.delivered += 1,
                Err(mpsc::error::TrySendError::Full(_)) => routed.lost += 1,
                Err(mpsc::error::TrySendError::Closed(_)) => {}
            }
        }
        routed
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Routes> {
        self.routes.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl std::fmt::Debug for Router {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let r = self.lock();
        f.debug_struct("Router")
            .field("connections", &r.mailboxes.len())
            .field("topics", &r.by_topic.len())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nostr_sdk::prelude::{EventBuilder, JsonUtil, Keys, Kind, SecretKey, Tag};
    use serde_json::json;

    fn event(topic: Option<&str>) -> Arc<Relayed> {
        let keys = Keys::new(SecretKey::from_slice(&[7u8; 32]).unwrap());
        let tags = topic.map(|t| Tag::parse(["x", t]).unwrap());
        let ev = EventBuilder::new(Kind::Custom(20_001), "{}")
            .tags(tags)
            .sign_with_keys(&keys)
            .unwrap();
        let raw = serde_json::value::RawValue::from_string(ev.as_json()).unwrap();
        Arc::new(Relayed::parse(&raw).unwrap())
    }

    fn filter(v: serde_json::Value) -> Filter {
        Filter::parse(&v.to_string()).unwrap()
    }

    impl Router {
        fn route_test(&self, ev: &Arc<Relayed>) -> Routed {
            self.route(ev, 0)
        }
    }

    #[test]
    fn queued_bytes_are_bounded_per_connection_and_in_total_and_given_back() {
        let one = cost(&event(Some("t")));
        let budget = Arc::new(Budget::new(3 * one, 5 * one));
        let router = Router::new(budget.clone());
        let (a, mut ra) = router.register(false);
        let (b, _rb) = router.register(false);
        let (own, mut ro) = router.register(true);
        for id in [a, b, own] {
            router.listen(id, Interest::of(&[filter(json!({"#x": ["t"]}))]));
        }
        let ev = event(Some("t"));
        let mut lost = 0;
        for _ in 0..10 {
            lost += router.route_test(&ev).lost;
        }
        // a and b hold 3 each at most, and 5 together; the daemon's own holds 3 too.
        assert_eq!(budget.used(), 5 * one);
        assert_eq!(lost, 30 - 5 - 3);
        let got: Vec<Delivery> = std::iter::from_fn(|| ra.try_recv()).collect();
        assert!(!got.is_empty());
        assert_eq!(std::iter::from_fn(|| ro.try_recv()).count(), 3);
        // Bytes being written stay charged until the delivery is dropped.
        let held = got.len() * one;
        assert_eq!(budget.used(), 5 * one);
        drop(got);
        assert_eq!(budget.used(), 5 * one - held);
        // A connection that goes away gives back what it had waiting.
        router.remove(b);
        drop(_rb);
        assert_eq!(budget.used(), 0);
    }

    #[test]
    fn events_reach_their_topics_and_the_catch_alls_only() {
        let router = Router::default();
        let (a, mut ra) = router.register(false);
        let (b, mut rb) = router.register(false);
        let (c, mut rc) = router.register(false);
        router.listen(a, Interest::of(&[filter(json!({"#x": ["room"]}))]));
        router.listen(b, Interest::of(&[filter(json!({"#x": ["me", "room"]}))]));
        router.listen(c, Interest::of(&[filter(json!({"kinds": [20001]}))]));

        assert_eq!(router.route_test(&event(Some("room"))).delivered, 3);
        assert_eq!(router.route_test(&event(Some("me"))).delivered, 2);
        assert_eq!(router.route_test(&event(Some("elsewhere"))).delivered, 1);
        assert_eq!(router.route_test(&event(None)).delivered, 1);
        let count = |rx: &mut MailboxRx| std::iter::from_fn(|| rx.try_recv()).count();
        assert_eq!((count(&mut ra), count(&mut rb), count(&mut rc)), (1, 2, 4));

        // New subscriptions re-route; a closed connection is forgotten.
        router.listen(a, Interest::of(&[filter(json!({"#x": ["other"]}))]));
        router.remove(c);
        assert_eq!(router.route_test(&event(Some("room"))).delivered, 1);
        assert_eq!(router.route_test(&event(Some("other"))).delivered, 1);
        assert_eq!(count(&mut ra), 1);
        assert_eq!(count(&mut rb), 1);
    }

    #[test]
    fn a_connection_that_does_not_read_loses_events_and_holds_nobody_back() {
        // Bytes to spare: the mailbox's count is what this bounds.
        let one = cost(&event(Some("t")));
        let router = Router::new(Arc::new(Budget::new(2 * MAILBOX * one, 4 * MAILBOX * one)));
        let (slow, _kept) = router.register(false);
        let (fast, mut rx) = router.register(false);
        for id in [slow, fast] {
            router.listen(id, Interest::of(&[filter(json!({"#x": ["t"]}))]));
        }
        let ev = event(Some("t"));
        let mut lost = 0;
        for _ in 0..MAILBOX + 10 {
            lost += router.route_test(&ev).lost;
            assert!(rx.try_recv().is_some(), "the reader gets every event");
        }
        assert_eq!(lost, 10);
        assert!(one < 2048, "a one-tag event costs {one} bytes");
    }
}
