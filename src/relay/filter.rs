//! NIP-01 subscription filters, matched the way genossrv's relay matches them.
//!
//! Matching costs the same whatever a filter's size: an event's tag values are hashed
//! once when it is published ([`Relayed`]), and each filter looks those hashes up in a
//! set of its own values' hashes (a string is compared only on a hit). `ids` and
//! `authors` prefixes are at most 64 characters (a full id). What a connection's
//! filters hold in total is bounded by the relay (RELAY_MAX_FILTER_BYTES, see
//! [`Filter::size`]).

use super::event::Event;
use serde_json::Value;
use std::collections::HashSet;
use std::sync::OnceLock;

/// The process's keyed hash of a tag value (keys drawn at random once).
pub fn value_hash(v: &str) -> u64 {
    static STATE: OnceLock<ahash::RandomState> = OnceLock::new();
    STATE.get_or_init(ahash::RandomState::new).hash_one(v)
}

/// An event as the relay hands it on: with each tag's value hashed once.
#[derive(Debug)]
pub struct Relayed {
    pub event: Event,
    /// [`value_hash`] of each tag's value (its second item), by tag.
    hashes: Vec<Option<u64>>,
}

impl Relayed {
    pub fn new(event: Event) -> Self {
        let hashes = event
            .tags
            .iter()
            .map(|t| t.get(1).map(|v| value_hash(v)))
            .collect();
        Self { event, hashes }
    }
}

impl std::ops::Deref for Relayed {
    type Target = Event;
    fn deref(&self) -> &Event {
        &self.event
    }
}

/// A `#<letter>` filter's values, and their hashes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TagValues {
    pub values: HashSet<String>,
    hashes: HashSet<u64>,
}

impl TagValues {
    fn new(values: Vec<String>) -> Self {
        Self {
            hashes: values.iter().map(|v| value_hash(v)).collect(),
            values: values.into_iter().collect(),
        }
    }

    /// Whether the tag `t`, whose value hashes to `h`, has one of these values.
    fn holds(&self, t: &[String], h: Option<u64>) -> bool {
        h.is_some_and(|h| self.hashes.contains(&h))
            && t.get(1).is_some_and(|v| self.values.contains(v))
    }
}

/// `since` accepts events up to this much older than it (clock skew between peers).
pub const SINCE_SLACK_SECS: u64 = 60;
const MAX_VALUES: usize = 64;
/// An `ids` or `authors` prefix longer than a full hex id can match nothing.
const MAX_PREFIX: usize = 64;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    pub ids: Option<Vec<String>>,
    pub authors: Option<Vec<String>>,
    pub kinds: Option<Vec<u64>>,
    pub since: Option<u64>,
    pub until: Option<u64>,
    /// `#<letter>` filters: the tag name and the values one of which must be present.
    pub tags: Vec<(String, TagValues)>,
}

impl Filter {
    /// Reads a filter object; unknown members are ignored, malformed ones refused.
    pub fn parse(v: &Value) -> Option<Self> {
        let obj = v.as_object()?;
        let mut f = Filter::default();
        for (key, value) in obj {
            match key.as_str() {
                "ids" => f.ids = Some(prefixes(value)?),
                "authors" => f.authors = Some(prefixes(value)?),
                "kinds" => {
                    let list = value.as_array()?;
                    if list.len() > MAX_VALUES {
                        return None;
                    }
                    f.kinds = Some(list.iter().map(Value::as_u64).collect::<Option<_>>()?);
                }
                "since" => f.since = value.as_u64(),
                "until" => f.until = value.as_u64(),
                tag if tag.len() == 2 && tag.starts_with('#') => {
                    f.tags
                        .push((tag[1..].to_owned(), TagValues::new(strings(value)?)));
                }
                _ => {}
            }
        }
        Some(f)
    }

    pub fn matches(&self, ev: &Relayed) -> bool {
        if let Some(kinds) = &self.kinds
            && !kinds.contains(&ev.kind)
        {
            return false;
        }
        if let Some(since) = self.since
            && ev.created_at + SINCE_SLACK_SECS < since
        {
            return false;
        }
        if let Some(until) = self.until
            && ev.created_at > until
        {
            return false;
        }
        if let Some(ids) = &self.ids
            && !ids.iter().any(|i| ev.id.starts_with(i.as_str()))
        {
            return false;
        }
        if let Some(authors) = &self.authors
            && !authors.iter().any(|a| ev.pubkey.starts_with(a.as_str()))
        {
            return false;
        }
        self.tags.iter().all(|(name, values)| {
            ev.tags
                .iter()
                .zip(&ev.hashes)
                .any(|(t, h)| t.first().is_some_and(|n| n == name) && values.holds(t, *h))
        })
    }

    /// What the filter holds, in bytes of its strings (and 8 per kind).
    pub fn size(&self) -> usize {
        let list = |l: &Option<Vec<String>>| l.iter().flatten().map(String::len).sum::<usize>();
        list(&self.ids)
            + list(&self.authors)
            + self.kinds.as_ref().map_or(0, |k| 8 * k.len())
            + self
                .tags
                .iter()
                .map(|(n, v)| n.len() + v.values.iter().map(String::len).sum::<usize>())
                .sum::<usize>()
    }
}

fn prefixes(v: &Value) -> Option<Vec<String>> {
    let list = strings(v)?;
    list.iter().all(|p| p.len() <= MAX_PREFIX).then_some(list)
}

fn strings(v: &Value) -> Option<Vec<String>> {
    let list = v.as_array()?;
    if list.len() > MAX_VALUES {
        return None;
    }
    list.iter().map(|s| s.as_str().map(str::to_owned)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::relay::event::sign;
    use serde_json::json;

    fn relayed(tags: Vec<Vec<String>>) -> Relayed {
        let key = k256::schnorr::SigningKey::from_slice(&[9u8; 32]).unwrap();
        let raw = sign(&key, 1_800_000_000, 20_001, tags, "{}", &[0u8; 32]);
        Relayed::new(Event::parse(&serde_json::value::RawValue::from_string(raw).unwrap()).unwrap())
    }

    fn tag(n: &str, v: &str) -> Vec<String> {
        vec![n.to_owned(), v.to_owned()]
    }

    #[test]
    fn tag_filters_match_by_value_whatever_their_size() {
        let many: Vec<String> = (0..64).map(|i| format!("{i:0>900}")).collect();
        let f = Filter::parse(&json!({"#p": many, "#x": ["room"]})).unwrap();
        assert_eq!(f.size(), 64 * 900 + 4 + 2);
        let hit = relayed(vec![tag("x", "room"), tag("p", &format!("{:0>900}", 63))]);
        let wrong_name = relayed(vec![tag("x", "room"), tag("q", &format!("{:0>900}", 63))]);
        let no_x = relayed(vec![tag("p", &format!("{:0>900}", 1))]);
        assert!(f.matches(&hit));
        assert!(!f.matches(&wrong_name));
        assert!(!f.matches(&no_x));
        // A tag without a value matches nothing.
        assert!(!f.matches(&relayed(vec![vec!["x".into()], tag("p", "0")])));
    }

    #[test]
    fn id_and_author_prefixes_are_at_most_a_full_id() {
        let long = "a".repeat(65);
        assert!(Filter::parse(&json!({"ids": [long]})).is_none());
        assert!(Filter::parse(&json!({"authors": [long]})).is_none());
        let ev = relayed(Vec::new());
        let prefix = &ev.pubkey[..10];
        assert!(
            Filter::parse(&json!({"authors": [prefix]}))
                .unwrap()
                .matches(&ev)
        );
        assert!(
            !Filter::parse(&json!({"authors": ["00"]}))
                .unwrap()
                .matches(&ev)
                || ev.pubkey.starts_with("00")
        );
    }
}
