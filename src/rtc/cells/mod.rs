//! GenosRTC's cellular mesh (genosrtc-transport.md §8), the pure part: the cell math,
//! sealing a roster into a topology, admission, and what to do with an envelope
//! (deliver, forward, answer a ping). Every peer computes the same topology from the
//! same roster; nothing about it travels on the wire.

use std::collections::HashMap;
use std::time::Duration;

mod mesh;

pub use mesh::{Handled, Mesh, Outbound};

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

#[cfg(test)]
mod tests;
