//! Which connections an event can interest, found by its `x` tags.
//!
//! GenosRTC subscribes by topic (`#x`), so an event is handed only to the connections
//! that subscribed to one of its `x` values, plus those with a subscription that names
//! no `x` (they may want anything). Each connection then checks its own filters. Waking
//! every connection for every event costs a thousand wake-ups per announce at a
//! thousand peers, which is what this avoids.

use super::event::Event;
use super::filter::Filter;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use tokio::sync::mpsc;

/// Events a connection may have waiting: one that does not read loses the rest.
pub const MAILBOX: usize = 1024;

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
            match f.tags.iter().find(|(name, _)| name == "x") {
                Some((_, values)) => interest.topics.extend(values.iter().cloned()),
                None => interest.everything = true,
            }
        }
        interest.topics.sort();
        interest.topics.dedup();
        interest
    }
}

struct Mailbox {
    tx: mpsc::Sender<Arc<Event>>,
    interest: Interest,
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
    /// Mailboxes that were full.
    pub lost: u64,
}

#[derive(Default)]
pub struct Router {
    routes: Mutex<Routes>,
}

impl Router {
    /// A new connection, listening to nothing yet, and where its events arrive.
    pub fn register(&self) -> (u64, mpsc::Receiver<Arc<Event>>) {
        let (tx, rx) = mpsc::channel(MAILBOX);
        let mut r = self.lock();
        r.next += 1;
        let id = r.next;
        r.mailboxes.insert(
            id,
            Mailbox {
                tx,
                interest: Interest::default(),
            },
        );
        (id, rx)
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

    /// Hands `ev` to every connection it can interest, without waiting for any.
    pub fn route(&self, ev: &Arc<Event>) -> Routed {
        let r = self.lock();
        let mut targets: HashSet<u64> = r.everything.clone();
        for topic in ev.tag_values("x") {
            if let Some(ids) = r.by_topic.get(topic) {
                targets.extend(ids);
            }
        }
        let mut routed = Routed::default();
        for id in targets {
            let Some(m) = r.mailboxes.get(&id) else {
                continue;
            };
            match m.tx.try_send(ev.clone()) {
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
    use crate::relay::event::{Event, sign};
    use serde_json::json;

    fn event(topic: Option<&str>) -> Arc<Event> {
        let key = k256::schnorr::SigningKey::from_slice(&[7u8; 32]).unwrap();
        let tags: Vec<Vec<String>> = topic
            .map(|t| vec![vec!["x".to_owned(), t.to_owned()]])
            .unwrap_or_default();
        let raw = sign(&key, 1_800_000_000, 20_001, tags, "{}", &[0u8; 32]);
        Arc::new(Event::parse(&serde_json::value::RawValue::from_string(raw).unwrap()).unwrap())
    }

    fn filter(v: serde_json::Value) -> Filter {
        Filter::parse(&v).unwrap()
    }

    #[test]
    fn events_reach_their_topics_and_the_catch_alls_only() {
        let router = Router::default();
        let (a, mut ra) = router.register();
        let (b, mut rb) = router.register();
        let (c, mut rc) = router.register();
        router.listen(a, Interest::of(&[filter(json!({"#x": ["room"]}))]));
        router.listen(b, Interest::of(&[filter(json!({"#x": ["me", "room"]}))]));
        router.listen(c, Interest::of(&[filter(json!({"kinds": [20001]}))]));

        assert_eq!(router.route(&event(Some("room"))).delivered, 3);
        assert_eq!(router.route(&event(Some("me"))).delivered, 2);
        assert_eq!(router.route(&event(Some("elsewhere"))).delivered, 1);
        assert_eq!(router.route(&event(None)).delivered, 1);
        let count =
            |rx: &mut mpsc::Receiver<Arc<Event>>| std::iter::from_fn(|| rx.try_recv().ok()).count();
        assert_eq!((count(&mut ra), count(&mut rb), count(&mut rc)), (1, 2, 4));

        // New subscriptions re-route; a closed connection is forgotten.
        router.listen(a, Interest::of(&[filter(json!({"#x": ["other"]}))]));
        router.remove(c);
        assert_eq!(router.route(&event(Some("room"))).delivered, 1);
        assert_eq!(router.route(&event(Some("other"))).delivered, 1);
        assert_eq!(count(&mut ra), 1);
        assert_eq!(count(&mut rb), 1);
    }

    #[test]
    fn a_connection_that_does_not_read_loses_events_and_holds_nobody_back() {
        let router = Router::default();
        let (slow, _kept) = router.register();
        let (fast, mut rx) = router.register();
        for id in [slow, fast] {
            router.listen(id, Interest::of(&[filter(json!({"#x": ["t"]}))]));
        }
        let ev = event(Some("t"));
        let mut lost = 0;
        for _ in 0..MAILBOX + 10 {
            lost += router.route(&ev).lost;
            assert!(rx.try_recv().is_ok(), "the reader gets every event");
        }
        assert_eq!(lost, 10);
    }
}
