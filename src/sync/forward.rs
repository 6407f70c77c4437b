//! FORWARD_OPS: live ops accepted from one connected peer, gathered for a short
//! interval and handed on to every other connected peer in one message.

use std::time::{Duration, Instant};

/// The largest message of forwarded ops (FORWARD_OPS): a tick that gathered more is
/// sent as several. 256 KiB of JSON deflates in about a millisecond.
pub(super) const FORWARD_BUDGET: usize = 256 << 10;

/// FORWARD_OPS: live ops gathered since the last send, with who sent them.
#[derive(Default)]
pub(super) struct Forwarder {
    ops: Vec<String>,
    pub(super) bytes: usize,
    /// When the gathered ops go out.
    pub(super) due: Option<Instant>,
    /// When the last message went out: ops go out at once after a quiet interval, and
    /// at most once per interval under load.
    last_sent: Option<Instant>,
    /// The peer every gathered op came from, while there is only one: it is spared
    /// its own ops (sending them would be harmless, merges are idempotent).
    origin: Option<String>,
    mixed: bool,
}

impl Forwarder {
    pub(super) fn gather(&mut self, peer: &str, ops: Vec<String>, every: Duration) {
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
    pub(super) fn take(&mut self) -> (Vec<(String, usize)>, Option<String>) {
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

/// A message of forwarded ops, framed once for every peer it goes to.
pub(super) struct Forwarded {
    pub(super) text: String,
    pub(super) frames: Vec<Vec<u8>>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sync::message;

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
