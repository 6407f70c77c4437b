//! The measurements: each starts (or attaches to) the daemon, runs the peers in
//! worker processes, and adds its figures.

use super::daemon::{Daemon, Sample, Spawn};
use super::peer::{self, now_ns};
use super::stats::{Figures, Histogram};
use super::worker::{Event, Order, Report};
use super::{Load, Scenario, Target};
use crate::store::Store;
use crate::sync::{PeerChange, SyncConfig, service};
use anyhow::{Context, bail};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// Runs one scenario; its figures are printed as they come and returned.
pub async fn run(scenario: Scenario) -> anyhow::Result<Figures> {
    let mut f = Figures::default();
    let run = run_id();
    match scenario {
        Scenario::Connect { target, load } => {
            Session::start(&target, &load, &run, &mut f)
                .await?
                .close()
                .await;
        }
        Scenario::Fanout { target, load } => {
            let s = Session::start(&target, &load, &run, &mut f).await?;
            let r = load_phase(&s.daemon, &s.workers, &load, load.secs, None).await;
            s.close().await;
            r?.add_figures(&mut f, &load);
        }
        Scenario::Resources {
            target,
            load,
            idle_secs,
        } => {
            let s = Session::start(&target, &load, &run, &mut f).await?;
            idle_phase(&s.daemon, &mut f, idle_secs).await;
            let r = load_phase(&s.daemon, &s.workers, &load, load.secs, None).await;
            s.close().await;
            r?.add_figures(&mut f, &load);
        }
        Scenario::Soak {
            target,
            load,
            minutes,
            sample_secs,
        } => {
            let s = Session::start(&target, &load, &run, &mut f).await?;
            let every = Duration::from_secs_f64(sample_secs.max(0.5));
            let r = load_phase(&s.daemon, &s.workers, &load, minutes * 60.0, Some(every)).await;
            s.close().await;
            let r = r?;
            r.add_figures(&mut f, &load);
            r.add_soak_figures(&mut f);
        }
        Scenario::Catchup {
            target,
            sizes,
            node_bytes,
            timeout_secs,
        } => catchup(&target, &sizes, node_bytes, timeout_secs, &mut f).await?,
        Scenario::Merge {
            target,
            load,
            start_rate,
            step_secs,
            max_steps,
        } => {
            let s = Session::start(&target, &load, &run, &mut f).await?;
            let ramp = Ramp {
                start_rate,
                step_secs,
                max_steps,
            };
            let r = ramp.run(&s.daemon, &s.workers, &mut f, &load).await;
            s.close().await;
            r?;
        }
        Scenario::Worker(_) => bail!("the worker is not a scenario"),
    }
    Ok(f)
}

fn run_id() -> String {
    let mut b = [0u8; 4];
    let _ = getrandom::fill(&mut b);
    hex::encode(b)
}

fn temp_dir(run: &str) -> PathBuf {
    std::env::temp_dir().join(format!("loadgen-{}-{run}", std::process::id()))
}

/// The daemon binary: --daemon, or genosdb-fallback next to this binary.
fn daemon_bin(target: &Target) -> anyhow::Result<PathBuf> {
    if let Some(b) = &target.daemon {
        return Ok(b.clone());
    }
    let me = std::env::current_exe()?;
    let bin = me.with_file_name("genosdb-fallback");
    if !bin.exists() {
        bail!(
            "no daemon at {}; build it (cargo build --release --bins) or pass --daemon or --port",
            bin.display()
        );
    }
    Ok(bin)
}

fn spawn_settings(target: &Target, dir: &Path) -> anyhow::Result<Spawn> {
    Ok(Spawn {
        bin: daemon_bin(target)?,
        db: target.db.clone(),
        data_dir: dir.join("data"),
        forward: target.forward,
        env: target.daemon_env.clone(),
    })
}

/// The daemon and the peers, every peer linked.
struct Session {
    daemon: Daemon,
    workers: Workers,
    dir: PathBuf,
    /// Remove `dir` at the end.
    clean: bool,
}

impl Session {
    /// Starts or attaches to the daemon, starts the peers, and measures how long they
    /// take to link.
    async fn start(
        target: &Target,
        load: &Load,
        run: &str,
        figures: &mut Figures,
    ) -> anyhow::Result<Self> {
        if load.peers < 2 || load.procs == 0 {
            bail!("--peers must be at least 2 and --procs at least 1");
        }
        let dir = temp_dir(run);
        let daemon = match target.port {
            Some(port) => Daemon::attach(port, target.pid),
            None => Daemon::spawn(&spawn_settings(target, &dir)?).await?,
        };
        figures.context("peers", load.peers);
        figures.context("procs", load.procs);
        if target.port.is_none() {
            figures.context("forward", target.forward);
        }
        let before = daemon.sample().await;
        let superpeer = match target.no_dial {
            true => None,
            false => target.superpeer_id.clone().or_else(|| daemon.peer_id()),
        };
        figures.context("dial", superpeer.is_some());
        let relay = target.relay.clone().unwrap_or_else(|| daemon.relay_url());
        let workers = Workers::start(&relay, superpeer, target, load, run).await?;
        let session = Self {
            daemon,
            workers,
            dir,
            clean: target.port.is_none() && !target.keep,
        };
        if target.keep {
            eprintln!("loadgen: keeping {}", session.dir.display());
        }
        match connect_phase(&session.daemon, &session.workers, load, figures, before).await {
            Ok(()) => Ok(session),
            Err(e) => {
                session.close().await;
                Err(e)
            }
        }
    }

    async fn close(self) {
        self.workers.quit().await;
        self.daemon.stop().await;
        if self.clean {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

async fn connect_phase(
    daemon: &Daemon,
    workers: &Workers,
    load: &Load,
    figures: &mut Figures,
    before: Option<Sample>,
) -> anyhow::Result<()> {
    let started = workers.started;
    let deadline = started + Duration::from_secs_f64(load.connect_timeout);
    let (mut peer_side, mut daemon_side) = (None, None);
    let mut last_print = Instant::now();
    while peer_side.is_none() || daemon_side.is_none() {
        let connected = workers.connected();
        if peer_side.is_none() && connected >= load.peers {
            peer_side = Some(started.elapsed());
        }
        if daemon_side.is_none()
            && daemon
                .peers()
                .await
                .is_some_and(|n| n as usize >= load.peers)
        {
            daemon_side = Some(started.elapsed());
        }
        if Instant::now() > deadline {
            bail!(
                "only {connected} of {} peers connected within {} s (the daemon counts {:?})",
                load.peers,
                load.connect_timeout,
                daemon.peers().await
            );
        }
        if last_print.elapsed() > Duration::from_secs(5) {
            eprintln!(
                "loadgen: {connected}/{} peers linked after {:.0} s",
                load.peers,
                started.elapsed().as_secs_f64()
            );
            last_print = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let secs = |d: Option<Duration>| d.map_or(f64::NAN, |d| d.as_secs_f64());
    figures.add("connect_peers_s", secs(peer_side), "s");
    figures.add("connect_daemon_s", secs(daemon_side), "s");
    // Let the first sync exchanges settle before anything is measured.
    tokio::time::sleep(Duration::from_secs(3)).await;
    if let Some(now) = daemon.sample().await {
        figures.add("daemon_rss_connected_mb", mb(now.rss_bytes), "MB");
        if let Some(b) = before {
            let per_peer = (now.rss_bytes as f64 - b.rss_bytes as f64) / load.peers as f64;
            figures.add("daemon_rss_per_peer_kb", per_peer / 1024.0, "KiB");
        }
    }
    Ok(())
}

fn mb(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

async fn idle_phase(daemon: &Daemon, figures: &mut Figures, secs: f64) {
    let first = daemon.sample().await;
    tokio::time::sleep(Duration::from_secs_f64(secs)).await;
    let last = daemon.sample().await;
    if let (Some(a), Some(b)) = (first, last) {
        figures.add("daemon_rss_idle_mb", mb(b.rss_bytes), "MB");
        figures.add("daemon_cpu_idle_pct", b.cpu_pct_since(&a), "%");
    }
    // What the embedded relay holds for clients that read slowly: part of that RSS.
    if let Some(q) = daemon.metric("genosdb_relay_queued_bytes").await {
        figures.add("relay_queued_idle_mb", q / (1024.0 * 1024.0), "MB");
    }
}

/// What one load window measured.
struct LoadResult {
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
async fn load_phase(
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
async fn drain(workers: &Workers, peers: usize) -> anyhow::Result<Vec<Report>> {
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
    fn add_figures(&self, f: &mut Figures, load: &Load) {
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

    fn add_soak_figures(&self, f: &mut Figures) {
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
struct Ramp {
    start_rate: f64,
    step_secs: f64,
    max_steps: usize,
}

impl Ramp {
    async fn run(
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
    async fn step(
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

/// The worker processes: orders go to their stdin, their stdout is read on a thread
/// per worker.
struct Workers {
    procs: Vec<Mutex<WorkerProc>>,
    connected: Arc<Vec<AtomicUsize>>,
    reports: tokio::sync::Mutex<mpsc::Receiver<(usize, Report)>>,
    started: Instant,
}

struct WorkerProc {
    child: Child,
    stdin: Option<ChildStdin>,
}

impl Workers {
    async fn start(
        relay: &str,
        superpeer: Option<String>,
        target: &Target,
        load: &Load,
        run: &str,
    ) -> anyhow::Result<Self> {
        let me = std::env::current_exe()?;
        let connected: Arc<Vec<AtomicUsize>> =
            Arc::new((0..load.procs).map(|_| AtomicUsize::new(0)).collect());
        let (tx, rx) = mpsc::channel(load.procs * 4);
        let mut procs = Vec::new();
        let per = load.peers.div_ceil(load.procs);
        let started = Instant::now();
        for i in 0..load.procs {
            let first = i * per;
            let count = per.min(load.peers.saturating_sub(first));
            let mut cmd = Command::new(&me);
            cmd.arg("worker");
            if let Some(id) = &superpeer {
                cmd.args(["--superpeer", id]);
            }
            let mut child = cmd
                .args(["--relay", relay])
                .args(["--room", &format!("graph-sync-room-{}", target.db)])
                .args(["--first", &first.to_string()])
                .args(["--count", &count.to_string()])
                .args(["--writers", &load.writers().to_string()])
                .args(["--run", run])
                .args(["--announce-ms", &load.announce_ms.to_string()])
                .args(["--op-bytes", &load.op_bytes.to_string()])
                .args(["--keys", &load.keys.to_string()])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .spawn()
                .context("cannot start a worker process")?;
            let stdout = child.stdout.take().context("worker stdout")?;
            let stdin = child.stdin.take();
            let (connected, tx) = (connected.clone(), tx.clone());
            std::thread::spawn(move || {
                use std::io::BufRead;
                for line in std::io::BufReader::new(stdout)
                    .lines()
                    .map_while(Result::ok)
                {
                    match serde_json::from_str::<Event>(&line) {
                        Ok(Event::Status { connected: c, .. }) => {
                            connected[i].store(c, Ordering::Relaxed)
                        }
                        Ok(Event::Report(r)) => {
                            let _ = tx.blocking_send((i, r));
                        }
                        Err(_) => eprintln!("worker {i}: {line}"),
                    }
                }
            });
            procs.push(Mutex::new(WorkerProc { child, stdin }));
        }
        Ok(Self {
            procs,
            connected,
            reports: tokio::sync::Mutex::new(rx),
            started,
        })
    }

    fn connected(&self) -> usize {
        self.connected
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .sum()
    }

    /// Sends an order to every worker (a line on a pipe: it never blocks for long).
    async fn order(&self, order: &Order) {
        let line = format!("{}\n", serde_json::to_string(order).unwrap_or_default());
        for p in &self.procs {
            let mut w = p.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(stdin) = w.stdin.as_mut() {
                let _ = stdin.write_all(line.as_bytes());
                let _ = stdin.flush();
            }
        }
    }

    /// One report from every worker.
    async fn reports(&self) -> anyhow::Result<Vec<Report>> {
        let mut rx = self.reports.lock().await;
        while rx.try_recv().is_ok() {}
        self.order(&Order::Report).await;
        let mut got: Vec<Option<Report>> = vec![None; self.procs.len()];
        let deadline = Instant::now() + Duration::from_secs(30);
        while got.iter().any(Option::is_none) {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, rx.recv()).await {
                Ok(Some((i, r))) => got[i] = Some(r),
                _ => bail!("a worker did not report within 30 s"),
            }
        }
        Ok(got.into_iter().flatten().collect())
    }

    /// Asks every worker to leave and waits for them (killed after 15 s).
    async fn quit(&self) {
        self.order(&Order::Quit).await;
        for p in &self.procs {
            p.lock().unwrap_or_else(|e| e.into_inner()).stdin.take();
        }
        let deadline = Instant::now() + Duration::from_secs(15);
        for p in &self.procs {
            loop {
                let done = {
                    let mut w = p.lock().unwrap_or_else(|e| e.into_inner());
                    match w.child.try_wait() {
                        Ok(None) if Instant::now() < deadline => false,
                        Ok(None) => {
                            let _ = w.child.kill();
                            let _ = w.child.wait();
                            true
                        }
                        _ => true,
                    }
                };
                if done {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        for p in &self.procs {
            let mut w = p.lock().unwrap_or_else(|e| e.into_inner());
            if let Ok(None) = w.child.try_wait() {
                let _ = w.child.kill();
                let _ = w.child.wait();
            }
        }
    }
}

/// For each size: a daemon seeded with that many nodes (through `import`), its RSS,
/// and a fresh peer built from this crate's sync layer joining and getting them all.
async fn catchup(
    target: &Target,
    sizes: &[usize],
    node_bytes: usize,
    timeout_secs: f64,
    figures: &mut Figures,
) -> anyhow::Result<()> {
    if target.port.is_some() {
        bail!("catchup seeds its own daemons: give --daemon (or nothing), not --port");
    }
    let run = run_id();
    let dir = temp_dir(&run);
    let empty = {
        let settings = spawn_settings(target, &dir.join("empty"))?;
        let d = Daemon::spawn(&settings).await?;
        tokio::time::sleep(Duration::from_secs(1)).await;
        let s = d.sample().await;
        d.stop().await;
        s.map_or(0, |s| s.rss_bytes)
    };
    figures.add("daemon_rss_empty_mb", mb(empty), "MB");
    let mut outcome = Ok(());
    for &nodes in sizes {
        figures.context("nodes", nodes);
        let sub = dir.join(format!("n{nodes}"));
        let result = catchup_one(
            target,
            &sub,
            nodes,
            node_bytes,
            timeout_secs,
            empty,
            figures,
        )
        .await;
        if let Err(e) = result {
            eprintln!("loadgen: catch-up of {nodes} nodes failed: {e:#}");
            outcome = Err(e);
            break;
        }
        let _ = std::fs::remove_dir_all(&sub);
    }
    if !target.keep {
        let _ = std::fs::remove_dir_all(&dir);
    }
    outcome
}

async fn catchup_one(
    target: &Target,
    dir: &Path,
    nodes: usize,
    node_bytes: usize,
    timeout_secs: f64,
    empty_rss: u64,
    figures: &mut Figures,
) -> anyhow::Result<()> {
    let settings = spawn_settings(target, dir)?;
    std::fs::create_dir_all(&settings.data_dir)?;
    let seed = dir.join("seed.jsonl");
    let t = Instant::now();
    write_seed(&seed, nodes, node_bytes)?;
    super::daemon::import(&settings, &seed)?;
    let _ = std::fs::remove_file(&seed);
    eprintln!(
        "loadgen: seeded {nodes} nodes in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    let daemon = Daemon::spawn(&settings).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    if let Some(s) = daemon.sample().await {
        figures.add("daemon_rss_seeded_mb", mb(s.rss_bytes), "MB");
        let per = (s.rss_bytes as f64 - empty_rss as f64) / nodes as f64;
        figures.add("daemon_bytes_per_node", per, "B");
    }
    let result = fresh_peer_catches_up(&daemon, &target.db, nodes, timeout_secs).await;
    if let Ok((connect, catchup)) = &result {
        figures.add("catchup_connect_s", connect.as_secs_f64(), "s");
        figures.add("catchup_s", catchup.as_secs_f64(), "s");
        if let Some(line) = daemon.find_log("full state sent") {
            let field = |k: &str| -> Option<f64> {
                line.split(&format!("{k}="))
                    .nth(1)?
                    .split_whitespace()
                    .next()?
                    .parse()
                    .ok()
            };
            if let Some(ms) = field("took_ms") {
                figures.add("catchup_daemon_ms", ms, "ms");
            }
            if let Some(parts) = field("parts") {
                figures.add("catchup_parts", parts, "msgs");
            }
        }
    }
    daemon.stop().await;
    result.map(|_| ())
}

/// A fresh peer (a store and the sync layer of this crate, linked to superpeers
/// only) joins; returns the time to link and, from the link, to hold every node.
async fn fresh_peer_catches_up(
    daemon: &Daemon,
    db: &str,
    nodes: usize,
    timeout_secs: f64,
) -> anyhow::Result<(Duration, Duration)> {
    let cfg = peer::room_config(
        &format!("graph-sync-room-{db}"),
        Duration::from_millis(500),
        daemon.peer_id().as_deref(),
    );
    let t0 = Instant::now();
    let (room, events) = peer::join(&daemon.relay_url(), cfg);
    let room = Arc::new(room);
    let store = Arc::new(Mutex::new(Store::new(1000)));
    let linked: Arc<Mutex<Option<Instant>>> = Arc::default();
    let mark = linked.clone();
    let _sync = service::start(
        room.clone(),
        events,
        store.clone(),
        SyncConfig::default(),
        move |_, change| {
            if let PeerChange::Joined { kind, .. } = change
                && kind.as_deref() == Some("superpeer")
            {
                mark.lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .get_or_insert(Instant::now());
            }
        },
    );
    let deadline = t0 + Duration::from_secs_f64(timeout_secs);
    let result = loop {
        let held = store.lock().unwrap_or_else(|p| p.into_inner()).len();
        if held >= nodes {
            let done = Instant::now();
            let at = linked
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .unwrap_or(t0);
            break Ok((at - t0, done - at));
        }
        if Instant::now() > deadline {
            break Err(anyhow::anyhow!(
                "the fresh peer held {held} of {nodes} nodes after {timeout_secs} s"
            ));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    room.leave().await;
    result
}

/// `nodes` JSON lines in the export format, each value holding `node_bytes` of
/// pseudo-random hex text (it deflates about as well as real text, unlike a repeated
/// letter, so the full state is split into parts as real data would be).
fn write_seed(path: &Path, nodes: usize, node_bytes: usize) -> anyhow::Result<()> {
    let mut out = std::io::BufWriter::new(std::fs::File::create(path)?);
    let base = now_ns() / 1_000_000 - 3_600_000;
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut text = String::with_capacity(node_bytes);
    for i in 0..nodes {
        text.clear();
        while text.len() < node_bytes {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            text.push_str(&format!("{x:016x}"));
        }
        text.truncate(node_bytes);
        writeln!(
            out,
            r#"{{"id":"node-{i:07}","value":{{"i":{i},"text":"{text}"}},"edges":[],"timestamp":{{"physical":{},"logical":{}}}}}"#,
            base + (i / 1000) as u64,
            i % 1000
        )?;
    }
    out.flush()?;
    Ok(())
}
