//! NIP-01 subscription filters: the `nostr` crate's [`nostr_sdk::Filter`] and its
//! `match_event`, with what the relay adds around it:
//! - `since` has [`SINCE_SLACK_SECS`] of slack (clock skew between peers), as
//!   genossrv's relay gives;
//! - every list (`ids`, `authors`, `kinds`, each `#<letter>`) holds at most
//!   [`MAX_VALUES`] values, and what a connection's filters hold in total is bounded by
//!   the relay (RELAY_MAX_FILTER_BYTES, see [`Filter::size`]);
//! - `search` (NIP-50) is dropped: this relay does not search.
//!
//! Ids and authors are full 64-character hex, as NIP-01 now requires: a filter with a
//! prefix (the old NIP-01 form, which genossrv's relay matched) is refused as invalid.
//! GenosRTC never sends either. An event's `#<letter>` index is built once per event
//! (`Tags::indexes`) and shared by every filter that looks at it.

use super::event::{Relayed, X};
use nostr_sdk::prelude::{JsonUtil, MatchEventOptions, Timestamp};

/// `since` accepts events up to this much older than it (clock skew between peers).
pub const SINCE_SLACK_SECS: u64 = 60;
pub const MAX_VALUES: usize = 64;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter(pub nostr_sdk::Filter);

impl Filter {
    /// Reads a filter object; unknown members are ignored, malformed or oversized ones
    /// refused.
    pub fn parse(json: &str) -> Option<Self> {
        let mut f = nostr_sdk::Filter::from_json(json).ok()?;
        let over = |n: Option<usize>| n.is_some_and(|n| n > MAX_VALUES);
        if over(f.ids.as_ref().map(|s| s.len()))
            || over(f.authors.as_ref().map(|s| s.len()))
            || over(f.kinds.as_ref().map(|s| s.len()))
            || f.generic_tags.values().any(|v| v.len() > MAX_VALUES)
        {
            return None;
        }
        f.search = None;
        f.since = f
            .since
            .map(|s| Timestamp::from(s.as_secs().saturating_sub(SINCE_SLACK_SECS)));
        Some(Self(f))
    }

    pub fn matches(&self, ev: &Relayed) -> bool {
        self.0.match_event(&ev.event, MatchEventOptions::new())
    }

    /// The values of its `#x` list, if it has one.
    pub fn topics(&self) -> Option<impl Iterator<Item = &str>> {
        self.0
            .generic_tags
            .get(&X)
            .map(|v| v.iter().map(String::as_str))
    }

    /// What the filter holds, in bytes of its strings (32 per id or author, 8 per kind).
    pub fn size(&self) -> usize {
        let f = &self.0;
        32 * f.ids.as_ref().map_or(0, |s| s.len())
            + 32 * f.authors.as_ref().map_or(0, |s| s.len())
            + 8 * f.kinds.as_ref().map_or(0, |k| k.len())
            + f.generic_tags
                .values()
                .map(|v| 2 + v.iter().map(String::len).sum::<usize>())
                .sum::<usize>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nostr_sdk::prelude::{EventBuilder, Keys, Kind, SecretKey, Tag};
    use serde_json::json;

    fn relayed(tags: Vec<Vec<String>>, created_at: u64) -> Relayed {
        let keys = Keys::new(SecretKey::from_slice(&[9u8; 32]).unwrap());
        let ev = EventBuilder::new(Kind::Custom(20_001), "{}")
            .tags(tags.into_iter().map(|t| Tag::parse(t).unwrap()))
            .custom_created_at(Timestamp::from(created_at))
            .sign_with_keys(&keys)
            .unwrap();
        let raw = serde_json::value::RawValue::from_string(ev.as_json()).unwrap();
        Relayed::parse(&raw).unwrap()
    }

    fn tag(n: &str, v: &str) -> Vec<String> {
        vec![n.to_owned(), v.to_owned()]
    }

    #[test]
    fn tag_filters_match_by_name_and_value_and_are_sized() {
        let many: Vec<String> = (0..64).map(|i| format!("{i:0>900}")).collect();
        let f = Filter::parse(&json!({"#p": many, "#x": ["room"]}).to_string()).unwrap();
        assert_eq!(f.size(), 64 * 900 + 2 + 4 + 2);
        let hit = relayed(
            vec![tag("x", "room"), tag("p", &format!("{:0>900}", 63))],
            1,
        );
        let wrong_name = relayed(
            vec![tag("x", "room"), tag("q", &format!("{:0>900}", 63))],
            1,
        );
        let no_x = relayed(vec![tag("p", &format!("{:0>900}", 1))], 1);
        assert!(f.matches(&hit));
        assert!(!f.matches(&wrong_name));
        assert!(!f.matches(&no_x));
        // A tag without a value matches nothing.
        assert!(!f.matches(&relayed(vec![vec!["x".into()], tag("p", "0")], 1)));
    }

    #[test]
    fn lists_are_bounded_prefixes_refused_search_dropped_and_since_slack() {
        let too_many: Vec<u64> = (0..65).collect();
        assert!(Filter::parse(&json!({"kinds": too_many}).to_string()).is_none());
        assert!(Filter::parse(&json!({"authors": ["abcdef"]}).to_string()).is_none());
        assert!(Filter::parse("not json").is_none());
        let ev = relayed(Vec::new(), 1_800_000_000);
        let author = ev.pubkey.to_hex();
        let f = |v: serde_json::Value| Filter::parse(&v.to_string()).unwrap();
        assert!(f(json!({"authors": [author], "search": "nothing like it"})).matches(&ev));
        assert!(!f(json!({"authors": ["00".repeat(32)]})).matches(&ev));
        assert!(f(json!({"since": 1_800_000_000 + SINCE_SLACK_SECS})).matches(&ev));
        assert!(!f(json!({"since": 1_800_000_001 + SINCE_SLACK_SECS})).matches(&ev));
        assert!(f(json!({"#x": ["a"], "unknown": 1})).topics().is_some());
    }
}
