//! GenosRTC's cellular mesh (genosrtc-transport.md §8), the pure part: the cell math,
//! sealing a roster into a topology, admission, and what to do with an envelope
//! (deliver, forward, answer a ping). Every peer computes the same topology from the
//! same roster; nothing about it travels on the wire.

use serde_json::{Value, json};
use std::collections::{HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

pub const DEFAULT_CELL_SIZE: usize = 10;
pub const SEEN_MAX: usize = 5000;
pub const TICK: Duration = Duration::from_millis(2000);
pub const QUIET: Duration = Duration::from_millis(2000);
pub const URGENT_CAP: Duration = Duration::from_millis(10_000);
pub const SHRINK_AFTER: Duration = Duration::from_millis(30_000);
pub const GRACE: Duration = Duration::from_millis(5000);
pub const CENSUS_WINDOW: Duration = Duration::from_secs(120);
pub const TTL_CAP: u32 = 150;
/// Envelopes larger than this are refused (a browser reassembles 100 frames of 16 KiB).
pub const MAX_ENVELOPE: usize = 2 << 20;

/// `hash32` over UTF-16 code units.
pub fn hash32(s: &str) -> u32 {
    s.encode_utf16()
        .fold(0u32, |h, c| (h ^ u32::from(c)).wrapping_mul(2_654_435_761))
}

pub fn cell_count(n: usize, cell_size: usize) -> usize {
    n.div_ceil(cell_size.max(1)).max(1)
}

pub fn cell_of(id: &str, cells: usize) -> usize {
    let mut best = (0, hash32(&format!("{id}:0")));
    for k in 1..cells {
        let h = hash32(&format!("{id}:{k}"));
        if h > best.1 {
            best = (k, h);
        }
    }
    best.0
}

/// Neighbour cells of `k`: ±1, ±2, ±4, … inside `0..cells`, in this order.
pub fn neighbors(k: usize, cells: usize) -> Vec<usize> {
    let mut out = Vec::new();
    let mut g = 1;
    while g < cells {
        if k >= g {
            out.push(k - g);
        }
        if k + g < cells {
            out.push(k + g);
        }
        g *= 2;
    }
    out
}

/// `"c"` + base-36 cell number.
pub fn channel_name(k: usize) -> String {
    const DIGITS: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut digits = Vec::new();
    let mut n = k;
    loop {
        digits.push(DIGITS[n % 36]);
        n /= 36;
        if n == 0 {
            break;
        }
    }
    digits.reverse();
    format!("c{}", String::from_utf8_lossy(&digits))
}

/// The cell a channel name means, if it is one.
pub fn channel_cell(name: &str) -> Option<usize> {
    let digits = name.strip_prefix('c')?;
    if digits.is_empty() || digits.len() > 6 {
        return None;
    }
    usize::from_str_radix(digits, 36).ok()
}

pub fn ttl(cells: usize) -> u32 {
    let bits = usize::BITS - cells.leading_zeros(); // ceil(log2(cells + 1))
    (bits * 2 + 3).min(TTL_CAP)
}

/// A topology: what one peer computed from one roster.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Seal {
    pub roster: Vec<String>,
    pub cells: usize,
    pub my_cell: usize,
    /// Members of each cell plus the bridges that serve it.
    pub audience: HashMap<usize, Vec<String>>,
    /// Cells this peer bridges to (besides its own).
    pub my_bridges: Vec<usize>,
    pub bridges: HashMap<usize, String>,
}

impl Seal {
    pub fn compute(
        self_id: &str,
        members: impl IntoIterator<Item = String>,
        cell_size: usize,
    ) -> Seal {
        let mut roster: Vec<String> = members.into_iter().collect();
        roster.push(self_id.to_owned());
        roster.sort();
        roster.dedup();
        let cells = cell_count(roster.len(), cell_size);
        let cell: HashMap<&str, usize> = roster
            .iter()
            .map(|m| (m.as_str(), cell_of(m, cells)))
            .collect();
        let mut bridges: HashMap<usize, String> = HashMap::new();
        let mut best: HashMap<usize, u32> = HashMap::new();
        for m in &roster {
            let k = cell[m.as_str()];
            let h = hash32(&format!("{m}@{k}"));
            if best.get(&k).is_none_or(|b| h > *b) {
                best.insert(k, h);
                bridges.insert(k, m.clone());
            }
        }
        let mut audience: HashMap<usize, Vec<String>> = HashMap::new();
        for m in &roster {
            audience
                .entry(cell[m.as_str()])
                .or_default()
                .push(m.clone());
        }
        let my_cell = cell[self_id];
        let mut duties: HashMap<String, Vec<usize>> = HashMap::new();
        let mut seen_cells = Vec::new();
        for m in &roster {
            let y = cell[m.as_str()];
            if seen_cells.contains(&y) {
                continue;
            }
            seen_cells.push(y);
            for nb in neighbors(y, cells).into_iter().filter(|nb| *nb > y) {
                for b in [bridges.get(&y), bridges.get(&nb)].into_iter().flatten() {
                    let other = if cell[b.as_str()] == y { nb } else { y };
                    let d = duties.entry(b.clone()).or_default();
                    if !d.contains(&other) {
                        d.push(other);
                    }
                    for c in [y, nb] {
                        let a = audience.entry(c).or_default();
                        if !a.contains(b) {
                            a.push(b.clone());
                        }
                    }
                }
            }
        }
        Seal {
            my_bridges: duties.remove(self_id).unwrap_or_default(),
            roster,
            cells,
            my_cell,
            audience,
            bridges,
        }
    }

    pub fn is_bridge(&self) -> bool {
        !self.my_bridges.is_empty()
    }

    /// §8.7 `allowed`: may this peer connect to `x` under this topology?
    pub fn allows(&self, x: &str) -> bool {
        if !self.roster.iter().any(|m| m == x) {
            return false;
        }
        let cx = cell_of(x, self.cells);
        cx == self.my_cell
            || self.my_bridges.contains(&cx)
            || (neighbors(self.my_cell, self.cells).contains(&cx)
                && self.bridges.get(&cx).is_some_and(|b| b == x))
    }

    /// Channels this peer listens on: its cell's, and its neighbours' when a bridge.
    pub fn channels(&self) -> Vec<String> {
        let mut out = vec![channel_name(self.my_cell)];
        if self.is_bridge() {
            out.extend(
                neighbors(self.my_cell, self.cells)
                    .into_iter()
                    .map(channel_name),
            );
        }
        out
    }
}

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

#[cfg(test)]
mod tests {
    use super::*;

    fn six() -> Vec<String> {
        (1..=6)
            .map(|d| format!("peer{}", d.to_string().repeat(16)))
            .collect()
    }

    #[test]
    fn hash_and_cell_math_match_the_captured_vectors() {
        assert_eq!(hash32("a"), 4_077_198_353);
        assert_eq!(hash32("peer1111111111111111:0"), 2_635_311_224);
        assert_eq!(hash32("peer1111111111111111@2"), 2_615_144_096);
        for (c, t) in [
            (1, 5),
            (2, 7),
            (3, 7),
            (4, 9),
            (10, 11),
            (100, 17),
            (1000, 23),
        ] {
            assert_eq!(ttl(c), t, "ttl({c})");
        }
        assert_eq!(channel_name(0), "c0");
        assert_eq!(channel_name(10), "ca");
        assert_eq!(channel_name(36), "c10");
        assert_eq!(channel_cell("ca"), Some(10));
        assert_eq!(channel_cell("syncGraph"), None);
        assert_eq!(neighbors(0, 8), vec![1, 2, 4]);
        assert_eq!(neighbors(1, 8), vec![0, 2, 3, 5]);
        assert_eq!(neighbors(2, 8), vec![1, 3, 0, 4, 6]);
        assert_eq!(neighbors(3, 8), vec![2, 4, 1, 5, 7]);
        assert_eq!(cell_count(6, 2), 3);
        assert_eq!(cell_count(1, 10), 1);
    }

    /// The 6-peer room of §8.1 with cellSize 2: cells and bridges as the browsers sealed.
    #[test]
    fn six_peer_room_seals_as_the_browsers_did() {
        let roster = six();
        let seal = Seal::compute(&roster[0], roster.clone(), 2);
        assert_eq!(seal.cells, 3);
        let cell = |i: usize| cell_of(&roster[i], 3);
        assert_eq!(cell(2), 0);
        assert_eq!((cell(1), cell(5)), (1, 1));
        assert_eq!((cell(0), cell(3), cell(4)), (2, 2, 2));
        assert_eq!(seal.bridges[&0], roster[2]);
        assert_eq!(seal.bridges[&1], roster[5]);
        assert_eq!(seal.bridges[&2], roster[0]);
        // peer1 bridges cell 2 to its neighbours 1 and 0.
        assert!(seal.is_bridge());
        assert_eq!(seal.my_cell, 2);
        let mut duties = seal.my_bridges.clone();
        duties.sort();
        assert_eq!(duties, vec![0, 1]);
        // A non-bridge in cell 2 (peer4) admits its cell mates and neighbouring bridges.
        let p4 = Seal::compute(&roster[3], roster.clone(), 2);
        assert!(!p4.is_bridge());
        assert!(p4.allows(&roster[4]) && p4.allows(&roster[0]));
        assert!(p4.allows(&roster[5]), "cell 1's bridge");
        assert!(!p4.allows(&roster[1]), "a non-bridge of cell 1");
    }

    #[test]
    fn an_envelope_reaches_every_cell_through_bridges() {
        // Twelve peers, cellSize 4: every peer's own seal, envelopes passed hop by hop.
        let roster: Vec<String> = (0..12)
            .map(|i| format!("p{i:02}xxxxxxxxxxxxxxxxx"))
            .collect();
        let now = Instant::now();
        let mut meshes: HashMap<String, Mesh> = roster
            .iter()
            .map(|id| {
                let mut m = Mesh::new(id, 4);
                for x in &roster {
                    m.heard(x, now);
                }
                assert!(!m.tick(&[], now));
                assert!(m.tick(&[], now + QUIET));
                (id.clone(), m)
            })
            .collect();
        // Links: the admitted pairs, both ways.
        let links = |a: &str| -> Vec<String> {
            roster
                .iter()
                .filter(|b| *b != a && meshes_allows(a, b, &roster))
                .cloned()
                .collect()
        };
        fn meshes_allows(a: &str, b: &str, roster: &[String]) -> bool {
            let sa = Seal::compute(a, roster.to_vec(), 4);
            let sb = Seal::compute(b, roster.to_vec(), 4);
            sa.allows(b) && sb.allows(a)
        }
        for origin in &roster {
            let mut delivered: HashSet<String> = HashSet::new();
            let conn = links(origin);
            let mut queue: VecDeque<(String, Outbound)> = meshes
                .get_mut(origin)
                .unwrap()
                .send(json!({"_ch": "syncGraph", "_d": [origin]}), &conn)
                .into_iter()
                .map(|o| (origin.clone(), o))
                .collect();
            while let Some((_, out)) = queue.pop_front() {
                for to in &out.to {
                    let conn = links(to);
                    let h =
                        meshes
                            .get_mut(to)
                            .unwrap()
                            .receive(&out.channel, &out.envelope, &conn, 0);
                    if let Some((data, from)) = h.deliver {
                        assert_eq!(&from, origin);
                        assert_eq!(data["_d"][0], json!(origin));
                        delivered.insert(to.clone());
                    }
                    queue.extend(h.send.into_iter().map(|o| (to.clone(), o)));
                }
            }
            assert_eq!(
                delivered.len(),
                roster.len() - 1,
                "from {origin}: {delivered:?}"
            );
        }
    }

    #[test]
    fn admission_starts_open_and_sealing_waits_for_a_quiet_roster() {
        let now = Instant::now();
        let mut m = Mesh::new("me", 2);
        assert!(m.admit("anyone", now), "nobody sealed yet");
        m.heard("a", now);
        m.heard("b", now);
        assert!(!m.tick(&[], now), "a new member waits for a quiet gap");
        assert!(m.tick(&[], now + QUIET), "then seals");
        assert_eq!(m.sealed.roster.len(), 3);
        assert!(!m.grace_over(now + QUIET));
        assert!(m.grace_over(now + QUIET + GRACE));
        // A bye is urgent; a quiet shrink waits SHRINK_AFTER.
        m.bye("a");
        assert!(!m.tick(&[], now + QUIET * 2));
        assert!(m.tick(&[], now + QUIET * 3));
        assert!(!m.sealed.roster.contains(&"a".to_string()));
        assert!(
            !m.admit("stranger", now + QUIET * 3 + GRACE),
            "never heard of"
        );
        // A newcomer that the next seal will admit is answered at once.
        let mut one_cell = Mesh::new("me", 10);
        one_cell.heard("a", now);
        one_cell.tick(&[], now);
        assert!(one_cell.tick(&[], now + QUIET));
        assert!(!one_cell.admit("newcomer", now + QUIET));
        one_cell.heard("newcomer", now + QUIET);
        assert!(one_cell.admit("newcomer", now + QUIET));
    }

    #[test]
    fn hostile_envelopes_are_ignored() {
        let mut m = Mesh::new("me", 10);
        for bad in [
            "",
            "nope",
            "{}",
            r#"{"t":"msg"}"#,
            r#"{"id":5,"t":"msg"}"#,
            "[1,2]",
        ] {
            assert_eq!(m.receive("c0", bad, &[], 0), Handled::default(), "{bad}");
        }
        let ok = r#"{"t":"msg","id":"x:1:1","ttl":5,"data":{"_ch":"syncGraph","_d":[1]},"origin":"x","originCell":"cell-0"}"#;
        assert!(m.receive("c0", ok, &[], 0).deliver.is_some());
        assert!(
            m.receive("c0", ok, &[], 0).deliver.is_none(),
            "a duplicate id"
        );
        assert!(
            m.receive("c9", ok.replace("x:1:1", "x:1:2").as_str(), &[], 0)
                .deliver
                .is_none(),
            "not our cell"
        );
    }
}
