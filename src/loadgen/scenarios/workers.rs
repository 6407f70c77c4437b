//! The worker processes that run the peers, driven over their stdin and stdout.

use crate::loadgen::worker::{Event, Order, Report};
use crate::loadgen::{Load, Target};
use anyhow::{Context, bail};
use std::io::Write;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// The worker processes: orders go to their stdin, their stdout is read on a thread
/// per worker.
pub(super) struct Workers {
    procs: Vec<Mutex<WorkerProc>>,
    connected: Arc<Vec<AtomicUsize>>,
    reports: tokio::sync::Mutex<mpsc::Receiver<(usize, Report)>>,
    pub(super) started: Instant,
}

pub(super) struct WorkerProc {
    child: Child,
    stdin: Option<ChildStdin>,
}

impl Workers {
    pub(super) async fn start(
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

    pub(super) fn connected(&self) -> usize {
        self.connected
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .sum()
    }

    /// Sends an order to every worker (a line on a pipe: it never blocks for long).
    pub(super) async fn order(&self, order: &Order) {
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
    pub(super) async fn reports(&self) -> anyhow::Result<Vec<Report>> {
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
    pub(super) async fn quit(&self) {
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
