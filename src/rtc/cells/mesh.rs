//! The overlay's running state: the census of peers heard, the seal schedule with
//! its grace, the seen set, and what to do with an envelope (deliver, forward,
//! answer a ping).

use super::*;
use serde_json::{Value, json};
use std::collections::{HashMap, HashSet, VecDeque};
use std::time::Instant;

/// One envelope sent to some peers on a cell channel.
#[derive(Debug, Clone, PartialEq)]
pub struct Outbound {
    pub channel: String,
    pub to: Vec<String>,
    pub envelope: String,
}

/// What a received envelope asks of us.
#[derive(Debug, Default, PartialEq)]
pub struct Handled {
    /// `(data, origin)` to hand to the application.
    pub deliver: Option<(Value, String)>,
    pub send: Vec<Outbound>,
}

/// The overlay's state: census, seals, the seen set. Time is passed in.
#[derive(Debug)]
pub struct Mesh {
    pub self_id: String,
    pub cell_size: usize,
    pub sealed: Seal,
    previous: Seal,
    grace_until: Option<Instant>,
    census: HashMap<String, Instant>,
    gone: HashSet<String>,
    change_first_seen: Option<Instant>,
    change_last_seen: Option<Instant>,
    candidate: Vec<String>,
    seen: HashSet<String>,
    seen_order: VecDeque<String>,
    seq: u32,
    pub epoch: u64,
}

impl Mesh {
    pub fn new(self_id: &str, cell_size: usize) -> Mesh {
        let cell_size = if cell_size >= 2 {
            cell_size
        } else {
            DEFAULT_CELL_SIZE
        };
        Mesh {
            self_id: self_id.to_owned(),
            cell_size,
            sealed: Seal::compute(self_id, [], cell_size),
            previous: Seal::default(),
            grace_until: None,
            census: HashMap::new(),
            gone: HashSet::new(),
            change_first_seen: None,
            change_last_seen: None,
            candidate: Vec::new(),
            seen: HashSet::new(),
            seen_order: VecDeque::new(),
            seq: 0,
            epoch: 1,
        }
    }

    /// A signalling message from `x`.
    pub fn heard(&mut self, x: &str, now: Instant) {
        self.gone.remove(x);
        self.census.insert(x.to_owned(), now);
    }

    /// `x` said bye.
    pub fn bye(&mut self, x: &str) {
        self.census.remove(x);
        self.gone.insert(x.to_owned());
    }

    /// §8.7: may we dial or answer `x`? Also yes when the next seal will admit it
    /// (a newcomer the roster will hold once it is quiet): ignoring its offers until
    /// then leaves both sides waiting on a dial the other ignored.
    pub fn admit(&self, x: &str, now: Instant) -> bool {
        (self.sealed.roster.len() < 2 && self.previous.roster.len() < 2)
            || self.sealed.allows(x)
            || (self.grace_until.is_some_and(|g| now < g) && self.previous.allows(x))
            || self.next_seal_admits(x, now)
    }

    fn next_seal_admits(&self, x: &str, now: Instant) -> bool {
        if !self.census.contains_key(x) || self.sealed.roster.iter().any(|m| m == x) {
            return false;
        }
        let members = self
            .census
            .iter()
            .filter(|(m, at)| now.duration_since(**at) < CENSUS_WINDOW && !self.gone.contains(*m))
            .map(|(m, _)| m.clone())
            .chain(std::iter::once(x.to_owned()));
        Seal::compute(&self.self_id, members, self.cell_size).allows(x)
    }

    /// Whether the grace after the last seal is over (then non-admitted links close).
    pub fn grace_over(&self, now: Instant) -> bool {
        self.grace_until.is_none_or(|g| now >= g)
    }

    fn candidate_roster(&self, connected: &[String], now: Instant) -> Vec<String> {
        let mut r: Vec<String> = self
            .census
            .iter()
            .filter(|(x, at)| now.duration_since(**at) < CENSUS_WINDOW && !self.gone.contains(*x))
            .map(|(x, _)| x.clone())
            .chain(
                connected
                    .iter()
                    .filter(|x| !self.gone.contains(*x))
                    .cloned(),
            )
            .collect();
        r.push(self.self_id.clone());
        r.sort();
        r.dedup();
        r
    }

    /// The re-seal schedule (§8.2), run every TICK and on joins and leaves. Returns
    /// true when a new topology was sealed.
    pub fn tick(&mut self, connected: &[String], now: Instant) -> bool {
        self.census
            .retain(|_, at| now.duration_since(*at) < CENSUS_WINDOW);
        let candidate = self.candidate_roster(connected, now);
        if candidate == self.sealed.roster {
            self.change_first_seen = None;
            self.candidate = candidate;
            return false;
        }
        if candidate != self.candidate {
            self.change_last_seen = Some(now);
            self.candidate = candidate.clone();
        }
        let first = *self.change_first_seen.get_or_insert(now);
        let last = self.change_last_seen.unwrap_or(now);
        let sealed = &self.sealed;
        let urgent = candidate.iter().any(|m| !sealed.roster.contains(m))
            || sealed.bridges.values().any(|b| !candidate.contains(b))
            || sealed.roster.iter().any(|m| self.gone.contains(m));
        let due = if urgent {
            now.duration_since(last) >= QUIET || now.duration_since(first) >= URGENT_CAP
        } else {
            now.duration_since(first) >= SHRINK_AFTER
        };
        if !due {
            return false;
        }
        self.previous = std::mem::replace(
            &mut self.sealed,
            Seal::compute(&self.self_id, candidate, self.cell_size),
        );
        self.grace_until = Some(now + GRACE);
        self.change_first_seen = None;
        self.epoch += 1;
        true
    }

    fn new_id(&mut self) -> String {
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        self.seq = self.seq.wrapping_add(1);
        format!(
            "{}:{}:{}",
            self.self_id,
            base36(now_ms),
            base36(u64::from(self.seq & 0xffff))
        )
    }

    fn mark_seen(&mut self, id: &str) -> bool {
        if self.seen.contains(id) {
            return false;
        }
        self.seen.insert(id.to_owned());
        self.seen_order.push_back(id.to_owned());
        while self.seen_order.len() > SEEN_MAX {
            if let Some(old) = self.seen_order.pop_front() {
                self.seen.remove(&old);
            }
        }
        true
    }

    fn audience(&self, cell: usize, connected: &HashSet<&str>) -> Vec<String> {
        self.sealed
            .audience
            .get(&cell)
            .map(|a| {
                a.iter()
                    .filter(|m| *m != &self.self_id && connected.contains(m.as_str()))
                    .cloned()
                    .collect()
            })
            .unwrap_or_default()
    }

    /// `mesh.send(data)`: an envelope to our cell, then handled as if received there
    /// (so a bridge forwards it to its neighbour cells).
    pub fn send(&mut self, data: Value, connected: &[String]) -> Vec<Outbound> {
        let connected: HashSet<&str> = connected.iter().map(String::as_str).collect();
        let env = json!({
            "t": "msg",
            "id": self.new_id(),
            "ttl": ttl(self.sealed.cells),
            "data": data,
            "origin": self.self_id,
            "originCell": format!("cell-{}", self.sealed.my_cell),
        });
        let channel = channel_name(self.sealed.my_cell);
        let mut out = vec![Outbound {
            channel: channel.clone(),
            to: self.audience(self.sealed.my_cell, &connected),
            envelope: env.to_string(),
        }];
        let id = env["id"].as_str().unwrap_or_default().to_owned();
        self.mark_seen(&id);
        out.extend(self.forwards(&env, &channel, &connected));
        out.retain(|o| !o.to.is_empty());
        out
    }

    /// §8.5: an envelope received on cell channel `channel`.
    pub fn receive(
        &mut self,
        channel: &str,
        text: &str,
        connected: &[String],
        now_ms: u64,
    ) -> Handled {
        let mut handled = Handled::default();
        let mine = channel_name(self.sealed.my_cell);
        let bridged = self.sealed.is_bridge()
            && self
                .sealed
                .my_bridges
                .iter()
                .any(|k| channel_name(*k) == channel);
        if channel != mine && !bridged {
            return handled;
        }
        if text.len() > MAX_ENVELOPE {
            return handled;
        }
        let Ok(env) = serde_json::from_str::<Value>(text) else {
            return handled;
        };
        let (Some(id), Some(t)) = (
            env.get("id").and_then(Value::as_str),
            env.get("t").and_then(Value::as_str),
        ) else {
            return handled;
        };
        if id.len() > 256 || !self.mark_seen(id) {
            return handled;
        }
        let connected_set: HashSet<&str> = connected.iter().map(String::as_str).collect();
        let origin = env
            .get("origin")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        let data = env.get("data").cloned().unwrap_or(Value::Null);
        match t {
            "ping"
                if data.get("pingId").is_some()
                    && data.get("target").and_then(Value::as_str)
                        == Some(self.self_id.as_str())
                    && origin != self.self_id =>
            {
                let pong = json!({
                    "t": "pong",
                    "id": self.new_id(),
                    "ttl": ttl(self.sealed.cells),
                    "data": {"pingId": data["pingId"], "receivedAt": now_ms},
                    "origin": self.self_id,
                    "originCell": format!("cell-{}", self.sealed.my_cell),
                });
                let to = if connected_set.contains(origin.as_str()) {
                    vec![origin.clone()]
                } else {
                    self.audience(self.sealed.my_cell, &connected_set)
                };
                handled.send.push(Outbound {
                    channel: mine.clone(),
                    to,
                    envelope: pong.to_string(),
                });
            }
            "msg" if origin != self.self_id && !origin.is_empty() => {
                handled.deliver = Some((data, origin));
            }
            _ => {}
        }
        handled
            .send
            .extend(self.forwards(&env, channel, &connected_set));
        handled.send.retain(|o| !o.to.is_empty());
        handled
    }

    fn forwards(&self, env: &Value, channel: &str, connected: &HashSet<&str>) -> Vec<Outbound> {
        let ttl_in = env.get("ttl").and_then(Value::as_i64).unwrap_or(0);
        if !self.sealed.is_bridge() || ttl_in <= 0 {
            return Vec::new();
        }
        let mut fwd = env.clone();
        fwd["ttl"] = json!(ttl_in - 1);
        if fwd
            .get("origin")
            .and_then(Value::as_str)
            .is_none_or(str::is_empty)
        {
            fwd["origin"] = json!(self.self_id);
        }
        if fwd.get("originCell").is_none() {
            fwd["originCell"] = json!(format!("cell-{}", self.sealed.my_cell));
        }
        let text = fwd.to_string();
        let mine = channel_name(self.sealed.my_cell);
        let nbs = neighbors(self.sealed.my_cell, self.sealed.cells);
        let mut out = Vec::new();
        if channel != mine {
            out.push(Outbound {
                channel: mine.clone(),
                to: self.audience(self.sealed.my_cell, connected),
                envelope: text.clone(),
            });
        }
        for n in nbs {
            let ch = channel_name(n);
            if ch != channel {
                out.push(Outbound {
                    channel: ch,
                    to: self.audience(n, connected),
                    envelope: text.clone(),
                });
            }
        }
        out
    }
}

fn base36(mut n: u64) -> String {
    const DIGITS: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut out = Vec::new();
    loop {
        out.push(DIGITS[(n % 36) as usize]);
        n /= 36;
        if n == 0 {
            break;
        }
    }
    out.reverse();
    String::from_utf8_lossy(&out).into_owned()
}
