//! The Security Manager (genosdb-data.md §10): verifying signed writes as browsers
//! do, signing what the daemon sends when it has a key, and SM_RULES governance.

mod date;
pub(crate) mod governance;
pub mod js;
pub mod key;
mod metrics;
pub mod policy;
pub(crate) mod query;
pub mod sig;

use crate::store::json::{self, RawObject};
use crate::store::{Hlc, Store};
use js::Js;
use policy::{Checked, Graph, Policy, Reason, Verdict};
use serde_json::value::RawValue;
use sig::Signer;
use std::borrow::Cow;
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// What the sync layer needs to know about the SM.
#[derive(Debug, Clone, Default)]
pub struct SmConfig {
    /// Verify incoming ops (SM_ENABLED).
    pub verify: Option<Policy>,
    /// Sign outgoing messages (SM_KEY).
    pub signer: Option<Signer>,
}

/// Counters for /metrics.
#[derive(Debug, Default)]
pub struct SmStats {
    pub accepted: AtomicU64,
    rejected: [AtomicU64; Reason::ALL.len()],
    pub signed: AtomicU64,
    pub governance_writes: AtomicU64,
    pub governance_failures: AtomicU64,
}

impl SmStats {
    pub fn reject(&self, reason: Reason) {
        let i = Reason::ALL.iter().position(|r| *r == reason).unwrap_or(0);
        self.rejected[i].fetch_add(1, Ordering::Relaxed);
    }

    /// Rejections by reason, for /metrics.
    pub fn rejected(&self) -> Vec<(&'static str, u64)> {
        Reason::ALL
            .iter()
            .zip(&self.rejected)
            .map(|(r, c)| (r.as_str(), c.load(Ordering::Relaxed)))
            .collect()
    }
}

/// One log line per signer per interval: a flood of bad ops cannot flood the log.
#[derive(Debug)]
pub struct LogLimiter {
    every: Duration,
    seen: Mutex<HashMap<String, (Instant, u64)>>,
}

const LIMITER_ENTRIES: usize = 4096;

impl LogLimiter {
    pub fn new(every: Duration) -> Self {
        Self {
            every,
            seen: Mutex::default(),
        }
    }

    /// `Some(suppressed since the last line)` when this signer may be logged now.
    pub fn allow(&self, key: &str, now: Instant) -> Option<u64> {
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        if seen.len() >= LIMITER_ENTRIES && !seen.contains_key(key) {
            let every = self.every;
            seen.retain(|_, (at, _)| now.duration_since(*at) < every);
            if seen.len() >= LIMITER_ENTRIES {
                return None;
            }
        }
        match seen.get_mut(key) {
            Some((at, suppressed)) if now.duration_since(*at) < self.every => {
                *suppressed += 1;
                None
            }
            Some((at, suppressed)) => {
                let n = *suppressed;
                *at = now;
                *suppressed = 0;
                Some(n)
            }
            None => {
                seen.insert(key.to_owned(), (now, 0));
                Some(0)
            }
        }
    }
}

/// The graph as the policy reads it.
impl Graph for Store {
    fn exists(&self, id: &str) -> bool {
        self.get(id).is_some()
    }

    fn value(&self, id: &str) -> Option<Js> {
        let value = self.get(id)?.value.as_ref()?;
        Js::parse(value.get()).ok()
    }
}

/// A dropped element, for the count and the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dropped {
    pub reason: Reason,
    pub signer: Option<String>,
    pub kind: String,
    /// What the op wrote, when it was an op: see [`Refused`].
    pub op: Option<OpKey>,
}

/// An op by what it wrote and when: `id` (or `source\0target` for a link) and its
/// timestamp. A replay of the same op carries the same key.
pub type OpKey = (String, Hlc);

/// Live ops the policy refused, remembered so the same op cannot come back inside
/// its author's delta or full state (browsers hydrate their oplog without
/// signatures, so such a replay cannot be verified; it is the laundering of §10.6).
/// Bounded: the oldest keys are forgotten first.
#[derive(Debug)]
pub struct Refused {
    keys: HashSet<OpKey>,
    order: VecDeque<OpKey>,
    capacity: usize,
}

impl Refused {
    pub fn new(capacity: usize) -> Self {
        Self {
            keys: HashSet::new(),
            order: VecDeque::new(),
            capacity,
        }
    }

    pub fn insert(&mut self, key: OpKey) {
        if self.capacity == 0 || !self.keys.insert(key.clone()) {
            return;
        }
        self.order.push_back(key);
        while self.order.len() > self.capacity {
            if let Some(old) = self.order.pop_front() {
                self.keys.remove(&old);
            }
        }
    }

    pub fn contains(&self, id: &str, ts: Hlc) -> bool {
        !self.keys.is_empty() && self.keys.contains(&(id.to_owned(), ts))
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

/// The key a link is remembered under.
pub fn link_key(source: &str, target: &str) -> String {
    format!("{source}\0{target}")
}

/// A batch after the policy: the elements to parse, and what was dropped.
#[derive(Debug, Default)]
pub struct Filtered<'a> {
    pub kept: Vec<Cow<'a, RawValue>>,
    pub dropped: Vec<Dropped>,
}

/// Verifies signatures; needs no lock. One entry per element.
pub fn check_all(elements: &[&RawValue]) -> Vec<Checked> {
    elements.iter().map(|e| policy::check(e)).collect()
}

/// Applies the policy to a batch against the graph as it was before the batch.
pub fn filter<'a>(
    policy: &Policy,
    elements: &[&'a RawValue],
    checked: Vec<Checked>,
    store: &Store,
    now_ms: u64,
) -> Filtered<'a> {
    let mut out = Filtered::default();
    let mut clock = store.clock().clone();
    let mut now_ts = || clock.now(now_ms).to_json();
    for (raw, checked) in elements.iter().zip(checked) {
        match policy.decide(raw, checked, store, now_ms, &mut now_ts) {
            Verdict::Keep => out.kept.push(Cow::Borrowed(*raw)),
            Verdict::Rewrite(text) => match RawValue::from_string(text) {
                Ok(v) => out.kept.push(Cow::Owned(v)),
                Err(_) => out.dropped.push(dropped(raw, Reason::VerifyError, None)),
            },
            Verdict::Drop { reason, signer } => out.dropped.push(dropped(raw, reason, signer)),
            Verdict::Abort => {
                // The browser's middleware throws and its whole batch is lost.
                let n = out.kept.len();
                out.kept.clear();
                out.dropped.push(dropped(raw, Reason::BatchAborted, None));
                tracing::debug!(lost = n, "SM: an element aborts its whole batch");
                return out;
            }
        }
    }
    out
}

fn dropped(raw: &RawValue, reason: Reason, signer: Option<String>) -> Dropped {
    let obj = RawObject::parse(raw);
    let field = |k: &str| obj.as_ref()?.get(k).and_then(json::parse_string);
    let kind = field("type").unwrap_or_default();
    let ts = obj
        .as_ref()
        .and_then(|o| o.get("timestamp"))
        .and_then(|t| json::parse_hlc(t).ok().flatten());
    let target = match kind.as_str() {
        "upsert" | "remove" => field("id"),
        "link" => field("sourceId")
            .zip(field("targetId"))
            .map(|(s, t)| link_key(&s, &t)),
        _ => None,
    };
    Dropped {
        reason,
        signer,
        kind,
        op: target.zip(ts),
    }
}

/// Signs one outgoing element (a JSON object we wrote) as §10.2 does: the canonical
/// form of the element plus `originUser` is signed, and the three fields are
/// appended. An element that already carries them goes out unchanged.
pub fn sign_element(signer: &Signer, element: &str) -> Result<String, js::JsonError> {
    let mut body = Js::parse(element)?;
    let signed_already = ["signature", "originEthAddress", "originUser"]
        .iter()
        .all(|f| body.get(f).is_some_and(Js::truthy));
    if signed_already {
        return Ok(element.to_owned());
    }
    body.set("originUser", Js::str(signer.address()));
    let signature = signer.sign(body.canonical().as_bytes());
    let trimmed = element.trim_end();
    let Some(open) = trimmed.strip_suffix('}') else {
        return Err(js::JsonError::Syntax(0));
    };
    let mut out = String::with_capacity(element.len() + 240);
    out.push_str(open);
    if !open.trim_end().ends_with('{') {
        out.push(',');
    }
    let a = signer.address();
    out.push_str(&format!(
        r#""originUser":"{a}","originEthAddress":"{a}","signature":"{signature}"}}"#
    ));
    Ok(out)
}
