//! What a part's counters say on `/metrics`. Each stats type lists its own figures
//! next to its counters (`impl Figures for RoomStats` and so on); `http::metrics`
//! writes them out, in the order they are listed, with the `genosdb_` prefix. A figure
//! is a name, its HELP text, and its value, whose kind is the metric's TYPE.

use prometheus_client::metrics::histogram::Histogram;
use std::sync::atomic::{AtomicU64, Ordering};

/// One metric family: `name` without the prefix or the `_total` suffix.
#[derive(Debug, Clone)]
pub struct Figure {
    pub name: &'static str,
    pub help: &'static str,
    pub value: Value,
}

/// A figure's value; its variant is the metric's TYPE.
#[derive(Debug, Clone)]
pub enum Value {
    /// A count that only grows (`<name>_total`).
    Counter(u64),
    /// A level that goes up and down.
    Gauge(i64),
    /// Counters told apart by one label: `<name>_total{<label>="<value>"}`, one series
    /// per `(value, count)`.
    Counters(&'static str, Vec<(&'static str, u64)>),
    Histogram(Histogram),
}

impl Figure {
    pub fn counter(name: &'static str, help: &'static str, v: u64) -> Self {
        Self {
            name,
            help,
            value: Value::Counter(v),
        }
    }

    pub fn gauge(name: &'static str, help: &'static str, v: i64) -> Self {
        Self {
            name,
            help,
            value: Value::Gauge(v),
        }
    }

    /// A counter read from `a` now.
    pub fn count(name: &'static str, help: &'static str, a: &AtomicU64) -> Self {
        Self::counter(name, help, a.load(Ordering::Relaxed))
    }

    /// Counters by `label`.
    pub fn counters(
        name: &'static str,
        help: &'static str,
        label: &'static str,
        rows: Vec<(&'static str, u64)>,
    ) -> Self {
        Self {
            name,
            help,
            value: Value::Counters(label, rows),
        }
    }

    pub fn histogram(name: &'static str, help: &'static str, h: &Histogram) -> Self {
        Self {
            name,
            help,
            value: Value::Histogram(h.clone()),
        }
    }
}

/// A stats type that lists its own figures.
pub trait Figures {
    /// Appends this part's figures to `out`, in the order `/metrics` shows them.
    fn figures(&self, out: &mut Vec<Figure>);
}
