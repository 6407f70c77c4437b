//! The oplog of genosdb-data.md §4.3: a capped FIFO in processing order.
//!
//! It is the delta window served to returning peers, and its `remove` entries are the
//! only tombstones a GenosDB room has.

use super::hlc::Hlc;
use super::json::{self, RawJson};
use ahash::RandomState;
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, VecDeque};

/// Browsers keep 200 entries; a smaller window would force full states on them.
pub const MIN_OPLOG_SIZE: usize = 200;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum EntryKind {
    Upsert {
        id: Box<str>,
    },
    Remove {
        id: Box<str>,
    },
    /// A link entry is the whole received op, as browsers store it.
    Link {
        op: RawJson,
    },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub kind: EntryKind,
    pub ts: Hlc,
}

impl Entry {
    pub fn upsert(id: &str, ts: Hlc) -> Self {
        Self {
            kind: EntryKind::Upsert { id: id.into() },
            ts,
        }
    }

    pub fn remove(id: &str, ts: Hlc) -> Self {
        Self {
            kind: EntryKind::Remove { id: id.into() },
            ts,
        }
    }

    /// The `{type,id,timestamp}` form used for removals and stored upserts.
    pub fn write_plain(out: &mut String, kind: &str, id: &str, ts: &Hlc) {
        out.push_str("{\"type\":\"");
        out.push_str(kind);
        out.push_str("\",\"id\":");
        json::write_str(out, id);
        out.push_str(",\"timestamp\":");
        ts.write_json(out);
        out.push('}');
    }
}

#[derive(Clone, Copy, Debug)]
struct Tomb {
    newest: Hlc,
    count: u32,
}

#[derive(Clone, Debug)]
pub struct Oplog {
    entries: VecDeque<Entry>,
    cap: usize,
    tombs: HashMap<Box<str>, Tomb, RandomState>,
}

impl Oplog {
    pub fn new(cap: usize) -> Self {
        Self {
            entries: VecDeque::with_capacity(cap.min(4096)),
            cap: cap.max(1),
            tombs: HashMap::default(),
        }
    }

    pub fn from_entries(cap: usize, entries: Vec<Entry>) -> Self {
        let mut log = Self::new(cap);
        for e in entries {
            log.push(e);
        }
        log
    }

    pub fn push(&mut self, entry: Entry) {
        if let EntryKind::Remove { id } = &entry.kind {
            let tomb = self.tombs.entry(id.clone()).or_insert(Tomb {
                newest: entry.ts,
                count: 0,
            });
            tomb.count += 1;
            tomb.newest = tomb.newest.max(entry.ts);
        }
        self.entries.push_back(entry);
        while self.entries.len() > self.cap {
            if let Some(old) = self.entries.pop_front() {
                self.forget(old);
            }
        }
    }

    fn forget(&mut self, old: Entry) {
        let EntryKind::Remove { id } = old.kind else {
            return;
        };
        let Some(tomb) = self.tombs.get_mut(&id) else {
            return;
        };
        tomb.count -= 1;
        if tomb.count == 0 {
            self.tombs.remove(&id);
        } else if tomb.newest == old.ts {
            let newest = self
                .removals()
                .filter(|(rid, _)| *rid == id.as_ref())
                .map(|(_, ts)| ts)
                .max();
            if let (Some(t), Some(newest)) = (self.tombs.get_mut(&id), newest) {
                t.newest = newest;
            }
        }
    }

    /// The newest tombstone for `id` still inside the window.
    pub fn tombstone(&self, id: &str) -> Option<Hlc> {
        self.tombs.get(id).map(|t| t.newest)
    }

    pub fn oldest(&self) -> Option<&Entry> {
        self.entries.front()
    }

    pub fn iter(&self) -> impl Iterator<Item = &Entry> {
        self.entries.iter()
    }

    pub fn removals(&self) -> impl Iterator<Item = (&str, Hlc)> {
        self.entries.iter().filter_map(|e| match &e.kind {
            EntryKind::Remove { id } => Some((id.as_ref(), e.ts)),
            _ => None,
        })
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn cap(&self) -> usize {
        self.cap
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_and_in_insertion_order() {
        let mut log = Oplog::new(3);
        for i in 0..5u64 {
            log.push(Entry::upsert(&format!("n{i}"), Hlc::new(10 - i, 0)));
        }
        let ids: Vec<_> = log
            .iter()
            .map(|e| match &e.kind {
                EntryKind::Upsert { id } => id.to_string(),
                _ => unreachable!(),
            })
            .collect();
        assert_eq!(ids, ["n2", "n3", "n4"]);
        assert_eq!(log.oldest().unwrap().ts, Hlc::new(8, 0));
    }

    #[test]
    fn tombstones_follow_the_window() {
        let mut log = Oplog::new(3);
        log.push(Entry::remove("x", Hlc::new(5, 0)));
        log.push(Entry::remove("x", Hlc::new(3, 0)));
        assert_eq!(log.tombstone("x"), Some(Hlc::new(5, 0)));
        log.push(Entry::upsert("y", Hlc::new(1, 0)));
        log.push(Entry::upsert("y", Hlc::new(2, 0)));
        // The newer remove fell out of the window; the older one still guards.
        assert_eq!(log.tombstone("x"), Some(Hlc::new(3, 0)));
        log.push(Entry::upsert("y", Hlc::new(3, 0)));
        assert_eq!(log.tombstone("x"), None);
    }
}
