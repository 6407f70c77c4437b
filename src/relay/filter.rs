//! NIP-01 subscription filters, matched the way genossrv's relay matches them.

use super::event::Event;
use serde_json::Value;

/// `since` accepts events up to this much older than it (clock skew between peers).
pub const SINCE_SLACK_SECS: u64 = 60;
const MAX_VALUES: usize = 64;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    pub ids: Option<Vec<String>>,
    pub authors: Option<Vec<String>>,
    pub kinds: Option<Vec<u64>>,
    pub since: Option<u64>,
    pub until: Option<u64>,
    /// `#<letter>` filters: the tag name and the values one of which must be present.
    pub tags: Vec<(String, Vec<String>)>,
}

impl Filter {
    /// Reads a filter object; unknown members are ignored, malformed ones refused.
    pub fn parse(v: &Value) -> Option<Self> {
        let obj = v.as_object()?;
        let mut f = Filter::default();
        for (key, value) in obj {
            match key.as_str() {
                "ids" => f.ids = Some(strings(value)?),
                "authors" => f.authors = Some(strings(value)?),
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
                    f.tags.push((tag[1..].to_owned(), strings(value)?));
                }
                _ => {}
            }
        }
        Some(f)
    }

    pub fn matches(&self, ev: &Event) -> bool {
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
        self.tags
            .iter()
            .all(|(name, values)| ev.tag_values(name).any(|v| values.iter().any(|x| x == v)))
    }
}

fn strings(v: &Value) -> Option<Vec<String>> {
    let list = v.as_array()?;
    if list.len() > MAX_VALUES {
        return None;
    }
    list.iter().map(|s| s.as_str().map(str::to_owned)).collect()
}
