//! Latency histogram and figures, shared by the load generator's parent and workers.

use serde::{Deserialize, Serialize};

/// Buckets per natural-log unit of microseconds: about 2.5 % resolution.
const PER_LN: f64 = 40.0;
const BUCKETS: usize = 1024;

/// A log-scale histogram of latencies in microseconds, cheap to merge across processes.
#[derive(Debug, Clone)]
pub struct Histogram {
    counts: Vec<u64>,
    total: u64,
    max_us: u64,
}

impl Default for Histogram {
    fn default() -> Self {
        Self {
            counts: vec![0; BUCKETS],
            total: 0,
            max_us: 0,
        }
    }
}

/// A histogram as it travels between processes: only its non-empty buckets.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SparseHistogram {
    pub buckets: Vec<(u32, u64)>,
    pub max_us: u64,
}

impl Histogram {
    fn bucket(us: u64) -> usize {
        (((us as f64) + 1.0).ln() * PER_LN).min((BUCKETS - 1) as f64) as usize
    }

    /// The middle of a bucket, in microseconds.
    fn value(bucket: usize) -> f64 {
        ((bucket as f64 + 0.5) / PER_LN).exp() - 1.0
    }

    pub fn record(&mut self, us: u64) {
        self.counts[Self::bucket(us)] += 1;
        self.total += 1;
        self.max_us = self.max_us.max(us);
    }

    pub fn count(&self) -> u64 {
        self.total
    }

    pub fn max_ms(&self) -> f64 {
        self.max_us as f64 / 1000.0
    }

    /// The `q` quantile (0..=1) in milliseconds; 0 when empty.
    pub fn quantile_ms(&self, q: f64) -> f64 {
        if self.total == 0 {
            return 0.0;
        }
        let rank = ((self.total as f64) * q).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (i, c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return (Self::value(i) / 1000.0).min(self.max_ms());
            }
        }
        self.max_ms()
    }

    pub fn sparse(&self) -> SparseHistogram {
        SparseHistogram {
            buckets: self
                .counts
                .iter()
                .enumerate()
                .filter(|(_, c)| **c > 0)
                .map(|(i, c)| (i as u32, *c))
                .collect(),
            max_us: self.max_us,
        }
    }

    pub fn merge(&mut self, other: &SparseHistogram) {
        for &(i, c) in &other.buckets {
            if let Some(slot) = self.counts.get_mut(i as usize) {
                *slot += c;
                self.total += c;
            }
        }
        self.max_us = self.max_us.max(other.max_us);
    }
}

/// One measured figure: printed as a JSON line and as a row of the final table.
#[derive(Debug, Clone)]
pub struct Figure {
    pub name: String,
    pub value: f64,
    pub unit: &'static str,
    /// Context (peers, writers, rate, …), printed with it.
    pub context: serde_json::Map<String, serde_json::Value>,
}

/// Figures in the order they were measured.
#[derive(Debug, Default)]
pub struct Figures {
    pub list: Vec<Figure>,
    context: serde_json::Map<String, serde_json::Value>,
}

impl Figures {
    /// Sets a context field carried by every figure added from now on.
    pub fn context(&mut self, key: &str, value: impl Into<serde_json::Value>) {
        self.context.insert(key.to_owned(), value.into());
    }

    /// Records a figure and prints its JSON line at once.
    pub fn add(&mut self, name: &str, value: f64, unit: &'static str) {
        let value = if value.is_finite() { value } else { 0.0 };
        let mut line = serde_json::Map::new();
        line.insert("figure".into(), name.into());
        line.insert("value".into(), round(value).into());
        line.insert("unit".into(), unit.into());
        line.extend(self.context.clone());
        println!("{}", serde_json::Value::Object(line));
        self.list.push(Figure {
            name: name.to_owned(),
            value,
            unit,
            context: self.context.clone(),
        });
    }

    /// The final table.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let w = self.list.iter().map(|f| f.name.len()).max().unwrap_or(6);
        out.push_str(&format!(
            "{:<w$}  {:>14}  {:<6}  context\n",
            "figure", "value", "unit"
        ));
        out.push_str(&format!("{}\n", "-".repeat(w + 40)));
        for f in &self.list {
            let ctx: Vec<String> = f
                .context
                .iter()
                .map(|(k, v)| format!("{k}={}", v.to_string().trim_matches('"')))
                .collect();
            out.push_str(&format!(
                "{:<w$}  {:>14}  {:<6}  {}\n",
                f.name,
                format_value(f.value),
                f.unit,
                ctx.join(" ")
            ));
        }
        out
    }
}

fn round(v: f64) -> f64 {
    if v.abs() >= 100.0 {
        v.round()
    } else {
        (v * 1000.0).round() / 1000.0
    }
}

fn format_value(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        format!("{:.3}", round(v))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_are_within_the_bucket_resolution() {
        let mut h = Histogram::default();
        for ms in 1..=100u64 {
            h.record(ms * 1000);
        }
        let p50 = h.quantile_ms(0.5);
        let p99 = h.quantile_ms(0.99);
        assert!((p50 - 50.0).abs() / 50.0 < 0.03, "{p50}");
        assert!((p99 - 99.0).abs() / 99.0 < 0.03, "{p99}");
        assert_eq!(h.max_ms(), 100.0);
    }

    #[test]
    fn merging_sparse_forms_adds_counts() {
        let mut a = Histogram::default();
        let mut b = Histogram::default();
        a.record(1_000);
        b.record(9_000);
        b.record(9_000);
        a.merge(&b.sparse());
        assert_eq!(a.count(), 3);
        assert_eq!(a.max_ms(), 9.0);
        assert!(a.quantile_ms(0.5) > 8.0);
        assert_eq!(Histogram::default().quantile_ms(0.99), 0.0);
    }
}
