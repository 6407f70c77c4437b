//! Replies to `sync` (§6.2, §6.3), split into messages that each fit what a peer can
//! receive. Browsers reassemble at most 100 frames (about 1.6 MB) per message and drop
//! anything larger without a word, so a big graph goes out as several `fullStateSync`
//! or `deltaSync` messages. Receivers merge full states node by node and apply delta
//! operations in order, so the split changes nothing they end up with.

use super::{Entry, Hlc, Store, json, write_opt_ts};

/// Room kept for the closing `},"removals":[],"timestamp":{…}}` of a message.
const TAIL_RESERVE: usize = 128;

/// How far a full state being served has got. Ids and removals are taken when it
/// starts, so the store is locked only while one message is written.
#[derive(Debug)]
pub struct FullStateCursor {
    ids: Vec<Box<str>>,
    next_id: usize,
    removals: Vec<(Box<str>, Hlc)>,
    next_removal: usize,
    emitted: bool,
}

impl FullStateCursor {
    pub fn is_done(&self) -> bool {
        self.emitted && self.next_id == self.ids.len() && self.next_removal == self.removals.len()
    }

    /// Nodes the full state covers (those still present when their message is written).
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// Where the next part starts, to write it again smaller with [`Self::rewind`].
    pub fn mark(&self) -> CursorMark {
        CursorMark(self.next_id, self.next_removal, self.emitted)
    }

    pub fn rewind(&mut self, mark: CursorMark) {
        (self.next_id, self.next_removal, self.emitted) = (mark.0, mark.1, mark.2);
    }
}

/// A position in a [`FullStateCursor`].
#[derive(Debug, Clone, Copy)]
pub struct CursorMark(usize, usize, bool);

/// Appends an item to the list being written (after a comma when `in_list` items are
/// already there) unless that pushes a message already holding `in_message` items past
/// `budget`. A message always takes at least one item, so every call progresses.
fn push_within(
    out: &mut String,
    in_list: usize,
    in_message: usize,
    budget: usize,
    write: impl FnOnce(&mut String),
) -> bool {
    let mark = out.len();
    if in_list > 0 {
        out.push(',');
    }
    write(out);
    if in_message > 0 && out.len().saturating_add(TAIL_RESERVE) > budget {
        out.truncate(mark);
        return false;
    }
    true
}

impl Store {
    /// Whether a delta (the whole oplog window, hydrated) carries every node we hold:
    /// each node has an upsert entry in the window. When it does not, a peer that
    /// holds only part of the graph cannot get the rest from a delta.
    pub fn delta_covers_graph(&self) -> bool {
        if self.nodes.len() > self.oplog.len() {
            return false;
        }
        let upserted: std::collections::HashSet<&str> = self
            .oplog
            .iter()
            .filter_map(|e| match &e.kind {
                super::EntryKind::Upsert { id } => Some(id.as_ref()),
                _ => None,
            })
            .collect();
        self.nodes.keys().all(|id| upserted.contains(id.as_ref()))
    }

    /// Starts serving the whole graph: every node, oldest timestamp first (the order
    /// genossrv's table gives them, the order they were written in), then the oplog's
    /// removals.
    pub fn full_state_cursor(&self) -> FullStateCursor {
        let mut by_ts: Vec<(Option<Hlc>, &Box<str>)> =
            self.nodes.iter().map(|(id, n)| (n.timestamp, id)).collect();
        by_ts.sort_unstable();
        FullStateCursor {
            ids: by_ts.into_iter().map(|(_, id)| id.clone()).collect(),
            next_id: 0,
            removals: self
                .oplog
                .removals()
                .map(|(id, ts)| (id.into(), ts))
                .collect(),
            next_removal: 0,
            emitted: false,
        }
    }

    /// The next `fullStateSync` message object of at most `budget` bytes (unless one
    /// node alone is larger), or `None` once the whole state has gone out. An empty
    /// graph still gets one message, `graphData: {}`.
    pub fn next_full_state(&self, cur: &mut FullStateCursor, budget: usize) -> Option<String> {
        if cur.is_done() {
            return None;
        }
        let mut out = String::from("{\"type\":\"fullStateSync\",\"graphData\":{");
        let mut items = 0;
        while let Some(id) = cur.ids.get(cur.next_id) {
            let Some(node) = self.nodes.get(id) else {
                cur.next_id += 1;
                continue;
            };
            let fits = push_within(&mut out, items, items, budget, |out| {
                json::write_str(out, id);
                out.push(':');
                node.write_json(id, out);
            });
            if !fits {
                break;
            }
            items += 1;
            cur.next_id += 1;
        }
        out.push_str("},\"removals\":[");
        let mut removals = 0;
        if cur.next_id == cur.ids.len() {
            while let Some((id, ts)) = cur.removals.get(cur.next_removal) {
                let fits = push_within(&mut out, removals, items + removals, budget, |out| {
                    Entry::write_plain(out, "remove", id, ts)
                });
                if !fits {
                    break;
                }
                removals += 1;
                cur.next_removal += 1;
            }
        }
        out.push_str("],\"timestamp\":");
        write_opt_ts(&mut out, self.global_ts);
        out.push('}');
        cur.emitted = true;
        Some(out)
    }

    /// The whole oplog window, hydrated with current values, as `deltaSync` message
    /// objects of at most `budget` bytes each, in oplog order.
    pub fn delta_messages(&self, budget: usize) -> Vec<String> {
        let head = "{\"type\":\"deltaSync\",\"operations\":[";
        let mut messages = Vec::new();
        let mut out = String::from(head);
        let mut items = 0;
        for entry in self.oplog.iter() {
            if !push_within(&mut out, items, items, budget, |out| {
                self.write_hydrated(out, entry)
            }) {
                messages.push(self.close_delta(out));
                out = String::from(head);
                self.write_hydrated(&mut out, entry);
                items = 1;
                continue;
            }
            items += 1;
        }
        messages.push(self.close_delta(out));
        messages
    }

    fn close_delta(&self, mut out: String) -> String {
        out.push_str("],\"timestamp\":");
        write_opt_ts(&mut out, self.global_ts);
        out.push('}');
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{RawJson, RemoveOp, UpsertOp};

    fn store_with(n: usize, value_len: usize) -> Store {
        let mut s = Store::new(10_000);
        for i in 0..n {
            let value = format!("{{\"v\":\"{}\"}}", "x".repeat(value_len));
            s.upsert(
                UpsertOp {
                    id: format!("n{i}"),
                    value: Some(RawJson::parse(value).unwrap()),
                    ts: Hlc::new(1000 + i as u64, 0),
                },
                u64::MAX / 2,
            );
        }
        s
    }

    fn parse(msg: &str) -> serde_json::Value {
        serde_json::from_str(msg).unwrap()
    }

    fn all_full_messages(s: &Store, budget: usize) -> Vec<String> {
        let mut cur = s.full_state_cursor();
        std::iter::from_fn(|| s.next_full_state(&mut cur, budget)).collect()
    }

    #[test]
    fn a_big_graph_is_split_within_the_budget_and_covers_every_node_once() {
        let mut s = store_with(300, 1000);
        for i in 0..20 {
            s.remove(RemoveOp {
                id: format!("n{i}"),
                ts: Hlc::new(5000 + i, 0),
            });
        }
        let budget = 64 * 1024;
        let messages = all_full_messages(&s, budget);
        assert!(messages.len() > 4, "{} messages", messages.len());
        let mut ids = Vec::new();
        let mut removals = Vec::new();
        for m in &messages {
            assert!(m.len() <= budget, "{} bytes", m.len());
            let v = parse(m);
            assert_eq!(v["timestamp"], parse(&s.global_ts().unwrap().to_json()));
            ids.extend(v["graphData"].as_object().unwrap().keys().cloned());
            removals.extend(v["removals"].as_array().unwrap().iter().cloned());
        }
        ids.sort();
        let mut expected: Vec<String> = s.nodes().keys().map(|k| k.to_string()).collect();
        expected.sort();
        assert_eq!(ids, expected);
        assert_eq!(removals.len(), 20);
    }

    #[test]
    fn one_message_when_it_fits_and_an_empty_graph_still_answers() {
        let s = store_with(10, 10);
        let one = all_full_messages(&s, 1 << 20);
        assert_eq!(one, vec![s.full_state_json()]);
        let empty = Store::new(10);
        let msgs = all_full_messages(&empty, 1 << 20);
        assert_eq!(msgs.len(), 1);
        assert_eq!(parse(&msgs[0])["graphData"], serde_json::json!({}));
    }

    #[test]
    fn a_node_larger_than_the_budget_goes_alone() {
        let s = store_with(3, 5000);
        let msgs = all_full_messages(&s, 1000);
        assert_eq!(msgs.len(), 3);
        for m in msgs {
            assert_eq!(parse(&m)["graphData"].as_object().unwrap().len(), 1);
        }
    }

    #[test]
    fn deltas_split_in_oplog_order() {
        let s = store_with(200, 500);
        let msgs = s.delta_messages(16 * 1024);
        assert!(msgs.len() > 3);
        let ops: Vec<serde_json::Value> = msgs
            .iter()
            .inspect(|m| assert!(m.len() <= 16 * 1024))
            .flat_map(|m| parse(m)["operations"].as_array().unwrap().clone())
            .collect();
        let whole = parse(&s.delta_json());
        assert_eq!(serde_json::Value::Array(ops), whole["operations"]);
    }

    #[test]
    fn nodes_removed_while_serving_are_skipped() {
        let mut s = store_with(50, 100);
        let mut cur = s.full_state_cursor();
        let first = s.next_full_state(&mut cur, 2000).unwrap();
        let sent_first = parse(&first)["graphData"].as_object().unwrap().len();
        let gone: Vec<String> = s
            .nodes()
            .keys()
            .map(|k| k.to_string())
            .filter(|k| {
                !parse(&first)["graphData"]
                    .as_object()
                    .unwrap()
                    .contains_key(k)
            })
            .take(5)
            .collect();
        for id in &gone {
            s.remove(RemoveOp {
                id: id.clone(),
                ts: Hlc::new(9000, 0),
            });
        }
        let mut rest = 0;
        while let Some(m) = s.next_full_state(&mut cur, 2000) {
            let v = parse(&m);
            for id in &gone {
                assert!(v["graphData"].get(id).is_none());
            }
            rest += v["graphData"].as_object().unwrap().len();
        }
        assert_eq!(sent_first + rest, 45);
        assert!(cur.is_done());
    }

    #[test]
    fn a_rewound_part_is_written_again_from_the_same_place() {
        let s = store_with(40, 100);
        let mut cur = s.full_state_cursor();
        let mark = cur.mark();
        let big = s.next_full_state(&mut cur, 1 << 20).unwrap();
        cur.rewind(mark);
        let mut smaller = Vec::new();
        while let Some(m) = s.next_full_state(&mut cur, 1500) {
            smaller.push(m);
        }
        assert!(smaller.len() > 1);
        let count = |m: &String| parse(m)["graphData"].as_object().unwrap().len();
        assert_eq!(smaller.iter().map(count).sum::<usize>(), count(&big));
    }
}
