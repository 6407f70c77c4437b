//! Load windows: every writer at a fixed rate (fanout, resources, soak) and the
//! doubling ramp that finds the merge rate (merge).

use super::mb;
use super::workers::Workers;
use crate::loadgen::Load;
use crate::loadgen::daemon::{Daemon, Sample};
use crate::loadgen::peer::now_ns;
use crate::loadgen::stats::{Figures, Histogram};
use crate::loadgen::worker::{Order, Report};
use std::time::{Duration, Instant};

/// What one load window measured.
pub(super) struct LoadResult {
    secs: f64,
    writers: usize,
    sent: u64,
    delivered: u64,
    expected: u64,
    echoed: u64,
    disconnects: u64,
    latency: Histogram,
    samples: Vec<Sample>,
    forwarded: Option<f64>,
}

/// Every writer at `load.rate` for `secs`; the daemon sampled every `every` (once a
/// second if not given); then waits until every op has arrived or nothing has moved
/// for 3 s.
pub(super) async fn load_phase(
    daemon: &Daemon,
    workers: &Workers,
    load: &Load,
    secs: f64,
    every: Option<Duration>,
) -> anyhow::Result<LoadResult> {
    workers.order(&Order::Reset).await;
    let forwarded_before = daemon.metric("genosdb_sync_forwarded_ops_total").await;
    let start_ms = now_ns() / 1_000_000 + 1000;
    workers
        .order(&Order::Load {
            start_ms,
            secs,
            rate: load.rate,
            batch: load.batch,
        })
        .await;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let sample_every = every.unwrap_or(Duration::from_secs(1));
    let end = Instant::now() + Duration::from_secs_f64(secs);
    let mut samples = Vec::new();
    let t0 = Instant::now();
    while Instant::now() < end {
        if let Some(s) = daemon.sample().await {
            if every.is_some() {
                println!(
                    "{{\"sample\":\"daemon\",\"t_s\":{:.1},\"rss_mb\":{:.1}}}",
                    t0.elapsed().as_secs_f64(),
                    mb(s.rss_bytes)
                );
            }
            samples.push(s);
        }
        let left = end.saturating_duration_since(Instant::now());
        tokio::time::sleep(sample_every.min(left.max(Duration::from_millis(10)))).await;
    }
    if let Some(s) = daemon.sample().await {
        samples.push(s);
    }
    let reports = drain(workers, load.peers).await?;
    let sum = |f: fn(&Report) -> u64| reports.iter().map(f).sum::<u64>();
    let sent = sum(|r| r.sent);
    let mut latency = Histogram::default();
    for r in &reports {
        latency.merge(&r.latency);
    }
    let forwarded_after = daemon.metric("genosdb_sync_forwarded_ops_total").await;
    Ok(LoadResult {
        secs,
        writers: load.writers(),
        sent,
        delivered: sum(|r| r.delivered),
        expected: sent * (load.peers as u64 - 1),
        echoed: sum(|r| r.echoed),
        disconnects: sum(|r| r.disconnects),
        latency,
        samples,
        forwarded: forwarded_after
            .zip(forwarded_before.or(Some(0.0)))
            .map(|(a, b)| a - b),
    })
}

/// Reports once every op has arrived, or once delivery stopped moving for 3 s.
pub(super) async fn drain(workers: &Workers, peers: usize) -> anyhow::Result<Vec<Report>> {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last = (u64::MAX, Instant::now());
    loop {
        let reports = workers.reports().await?;
        let sent: u64 = reports.iter().map(|r| r.sent).sum();
        let delivered: u64 = reports.iter().map(|r| r.delivered).sum();
        let expected = sent * (peers as u64 - 1);
        if delivered >= expected || Instant::now() > deadline {
            return Ok(reports);
        }
        if delivered != last.0 {
            last = (delivered, Instant::now());
        } else if last.1.elapsed() > Duration::from_secs(3) {
            return Ok(reports);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

impl LoadResult {
    pub(super) fn add_figures(&self, f: &mut Figures, load: &Load) {
        f.context("writers", self.writers);
        f.context("rate", load.rate);
        f.context("secs", self.secs);
        f.add("fanout_p50_ms", self.latency.quantile_ms(0.5), "ms");
        f.add("fanout_p99_ms", self.latency.quantile_ms(0.99), "ms");
        f.add("fanout_max_ms", self.latency.max_ms(), "ms");
        f.add("ops_sent", self.sent as f64, "ops");
        f.add("ops_in_per_s", self.sent as f64 / self.secs, "ops/s");
        f.add("fanout_expected", self.expected as f64, "ops");
        f.add("fanout_delivered", self.delivered as f64, "ops");
        let pct = if self.expected == 0 {
            f64::NAN
        } else {
            self.delivered as f64 / self.expected as f64 * 100.0
        };
        f.add("fanout_delivered_pct", pct, "%");
        f.add("own_ops_echoed", self.echoed as f64, "ops");
        f.add("peer_disconnects", self.disconnects as f64, "peers");
        if let Some(n) = self.forwarded {
            f.add("daemon_forwarded_ops", n, "ops");
        }
        if let (Some(a), Some(b)) = (self.samples.first(), self.samples.last()) {
            let max = self.samples.iter().map(|s| s.rss_bytes).max().unwrap_or(0);
            f.add("daemon_rss_load_mb", mb(b.rss_bytes), "MB");
            f.add("daemon_rss_load_max_mb", mb(max), "MB");
            f.add("daemon_cpu_load_pct", b.cpu_pct_since(a), "%");
        }
    }

    pub(super) fn add_soak_figures(&self, f: &mut Figures) {
        let (Some(first), Some(last)) = (self.samples.first(), self.samples.last()) else {
            return;
        };
        let max = self.samples.iter().map(|s| s.rss_bytes).max().unwrap_or(0);
        // After a tenth of the run: the room has reached its steady state.
        let warm = &self.samples[self.samples.len() / 10];
        let drift = |a: &Sample| (last.rss_bytes as f64 / a.rss_bytes as f64 - 1.0) * 100.0;
        f.add("soak_rss_first_mb", mb(first.rss_bytes), "MB");
        f.add("soak_rss_last_mb", mb(last.rss_bytes), "MB");
        f.add("soak_rss_max_mb", mb(max), "MB");
        f.add("soak_rss_drift_pct", drift(first), "%");
        f.add("soak_rss_drift_after_warmup_pct", drift(warm), "%");
    }
}

/// Writers offered ever more ops/s, doubling each step; the daemon's merged counter
/// tells what it took. Stops once it takes under 90 % of what was offered, or no
/// more than the step before.
pub(super) struct Ramp {
    pub(super) start_rate: f64,
    pub(super) step_secs: f64,
    pub(super) max_steps: usize,
}

impl Ramp {
    pub(super) async fn run(
        &self,
        daemon: &Daemon,
        workers: &Workers,
        figures: &mut Figures,
        load: &Load,
    ) -> anyhow::Result<()> {
        let writers = load.writers().max(1);
        figures.context("writers", writers);
        let mut total_rate = self.start_rate;
        let mut best: f64 = 0.0;
        for step in 0..self.max_steps {
            let (offered, merged) = self
                .step(daemon, workers, load, total_rate / writers as f64)
                .await?;
            let rss = daemon.sample().await.map_or(f64::NAN, |c| mb(c.rss_bytes));
            println!(
                "{{\"sample\":\"merge_step\",\"step\":{step},\"asked_ops_s\":{total_rate:.0},\"offered_ops_s\":{offered:.0},\"merged_ops_s\":{merged:.0},\"rss_mb\":{rss:.1}}}"
            );
            let saturated = merged < 0.9 * offered || merged <= best * 1.05;
            best = best.max(merged);
            // Let this step's backlog clear before the next.
            tokio::time::sleep(Duration::from_secs(2)).await;
            if saturated {
                break;
            }
            total_rate *= 2.0;
        }
        figures.add("merge_ops_per_s", best, "ops/s");
        Ok(())
    }

    /// One step at `rate` per writer: (ops/s the writers sent, ops/s the daemon merged).
    pub(super) async fn step(
        &self,
        daemon: &Daemon,
        workers: &Workers,
        load: &Load,
        rate: f64,
    ) -> anyhow::Result<(f64, f64)> {
        workers.order(&Order::Reset).await;
        let start_ms = now_ns() / 1_000_000 + 500;
        workers
            .order(&Order::Load {
                start_ms,
                secs: self.step_secs,
                rate,
                batch: load.batch,
            })
            .await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        let merged = || daemon.metric("genosdb_sync_merged_total");
        let m0 = merged().await.unwrap_or(0.0);
        let t0 = Instant::now();
        tokio::time::sleep(Duration::from_secs_f64(self.step_secs)).await;
        let m1 = merged().await.unwrap_or(0.0);
        let merged = (m1 - m0) / t0.elapsed().as_secs_f64();
        let sent: u64 = workers.reports().await?.iter().map(|r| r.sent).sum();
        Ok((sent as f64 / self.step_secs, merged))
    }
}
