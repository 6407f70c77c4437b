//! The measurements: each starts (or attaches to) the daemon, runs the peers in
//! worker processes, and adds its figures.

mod catchup;
mod load;
mod workers;

use super::daemon::{Daemon, Sample, Spawn};
use super::stats::Figures;
use super::{Load, Scenario, Target};
use anyhow::bail;
use catchup::catchup;
use load::{Ramp, load_phase};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use workers::Workers;

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
