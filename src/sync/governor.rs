//! SM_RULES at run time: the daemon as the always-on superadmin. Rounds start once
//! the first sync exchanges have settled (15 s after start, as genossrv waits, and
//! never while a peer's first exchange is still going on), then run every 4 s; each
//! writes a signed role assignment only for users whose resolved role changes.

use super::service::SyncHandle;
use crate::persist::unix_ms;
use crate::sm::SmStats;
use crate::sm::governance::{self, Rule};
use crate::sm::js::Js;
use crate::sm::policy::Graph;
use crate::store::Store;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const SETTLE: Duration = Duration::from_secs(15);
pub const EVERY: Duration = Duration::from_secs(4);

pub struct Governor {
    pub rules: Vec<Rule>,
    /// The daemon's own address: it signs the assignments.
    pub address: String,
    /// SUPER_ADMINS plus our own address: never ruled on.
    pub immune: Vec<String>,
    pub settle: Duration,
    pub every: Duration,
}

impl Governor {
    pub fn new(rules: Vec<Rule>, address: String, super_admins: &[String]) -> Self {
        let mut immune = super_admins.to_vec();
        immune.push(address.clone());
        Self {
            rules,
            address,
            immune,
            settle: SETTLE,
            every: EVERY,
        }
    }

    pub fn start(self, store: Arc<Mutex<Store>>, sync: SyncHandle, stats: Arc<SmStats>) {
        tokio::spawn(self.run(store, sync, stats));
    }

    async fn run(self, store: Arc<Mutex<Store>>, sync: SyncHandle, stats: Arc<SmStats>) {
        tracing::info!(
            rules = self.rules.len(),
            every_ms = self.every.as_millis() as u64,
            "SM governance: active"
        );
        tokio::time::sleep(self.settle).await;
        let mut tick = tokio::time::interval(self.every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_error_log: Option<Instant> = None;
        loop {
            tick.tick().await;
            if sync.unsettled.load(Ordering::Relaxed) > 0 {
                tracing::debug!("SM governance: a peer's first sync is still going on; waiting");
                continue;
            }
            let (changes, failed) = {
                let store = store.lock().unwrap_or_else(|p| p.into_inner());
                let users = user_nodes(&store);
                let immune = |a: &str| self.immune.iter().any(|i| i.eq_ignore_ascii_case(a));
                governance::plan(&self.rules, &users, &immune, unix_ms())
            };
            if !failed.is_empty()
                && last_error_log.is_none_or(|t| t.elapsed() > Duration::from_secs(60))
            {
                last_error_log = Some(Instant::now());
                for (rule, error) in &failed {
                    tracing::warn!(rule, %error, "SM governance: rule evaluation failed; skipped this round");
                }
            }
            for change in changes {
                let id = format!("user:{}", change.address);
                let value = {
                    let store = store.lock().unwrap_or_else(|p| p.into_inner());
                    governance::assignment_value(
                        store.value(&id).as_ref(),
                        &change.address,
                        &change.role,
                        &self.address,
                    )
                };
                let from = change
                    .current
                    .as_ref()
                    .map(|c| String::from_utf16_lossy(&c.to_js_string()))
                    .unwrap_or_else(|| "undefined".into());
                match sync.put(&id, &value).await {
                    Ok(_) => {
                        stats.governance_writes.fetch_add(1, Ordering::Relaxed);
                        tracing::info!(user = %change.address, from = %from, to = %change.role, "SM governance: role assigned");
                    }
                    Err(e) => {
                        stats.governance_failures.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(user = %change.address, error = %e, "SM governance: assignment failed");
                    }
                }
            }
        }
    }
}

/// The `user:` nodes as the query engine sees them: `{id, value, edges, timestamp}`.
fn user_nodes(store: &Store) -> Vec<Js> {
    store
        .nodes()
        .iter()
        .filter(|(id, _)| id.starts_with("user:"))
        .filter_map(|(id, node)| Js::parse(&node.to_json(id)).ok())
        .collect()
}
