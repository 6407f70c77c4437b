//! A worker process: runs a share of the load peers and takes orders on stdin, one
//! JSON line each, answering on stdout. The parent re-executes its own binary as
//! `loadgen worker …`, so one tokio runtime never has to carry every peer.

use super::peer::{LoadPeer, PeerSpec, Tally, Writer};
use super::stats::SparseHistogram;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

#[derive(Debug, Clone, clap::Args)]
pub struct WorkerArgs {
    /// The relay to signal through.
    #[arg(long)]
    pub relay: String,
    #[arg(long)]
    pub room: String,
    /// Global index of this worker's first peer.
    #[arg(long)]
    pub first: usize,
    #[arg(long)]
    pub count: usize,
    /// Peers with a global index below this write.
    #[arg(long)]
    pub writers: usize,
    #[arg(long)]
    pub run: String,
    #[arg(long, default_value_t = 2500)]
    pub announce_ms: u64,
    #[arg(long, default_value_t = 200)]
    pub op_bytes: usize,
    #[arg(long, default_value_t = 100)]
    pub keys: u64,
    /// The daemon's peer id, dialled at once.
    #[arg(long)]
    pub superpeer: Option<String>,
    /// Milliseconds between two peers' joins.
    #[arg(long, default_value_t = 2)]
    pub join_every_ms: u64,
}

/// Orders from the parent.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum Order {
    /// Every writer sends `rate` ops/s from `start_ms` (Unix ms) for `secs`,
    /// `batch` ops per message.
    Load {
        start_ms: u64,
        secs: f64,
        rate: f64,
        batch: usize,
    },
    /// Answer with a [`Report`].
    Report,
    /// Zero the counters and the histogram.
    Reset,
    Quit,
}

/// A worker's state, as sent to the parent.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Report {
    pub peers: usize,
    pub connected: usize,
    pub writers: usize,
    pub sent: u64,
    pub send_failures: u64,
    pub delivered: u64,
    pub echoed: u64,
    pub connects: u64,
    pub disconnects: u64,
    pub latency: SparseHistogram,
}

/// What a worker prints: a status every 250 ms, and reports when asked.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "ev", rename_all = "snake_case")]
pub enum Event {
    Status { connected: usize, peers: usize },
    Report(Report),
}

pub async fn run(args: WorkerArgs) -> anyhow::Result<()> {
    let tally = Arc::new(Tally::default());
    let peers: Arc<Vec<LoadPeer>> = Arc::new(start_peers(&args, &tally).await);
    let status = tokio::spawn(print_status(peers.clone()));
    let mut lines = stdin_lines();
    let mut loads = Vec::new();
    while let Some(line) = lines.recv().await {
        let Ok(order) = serde_json::from_str::<Order>(&line) else {
            tracing::warn!(%line, "not an order");
            continue;
        };
        match order {
            Order::Load {
                start_ms,
                secs,
                rate,
                batch,
            } => {
                for p in peers.iter().filter(|p| p.spec.index < args.writers) {
                    let mut writer = Writer::new(&args.run, p.spec.index, args.keys, args.op_bytes);
                    let plan = Plan {
                        start_ms,
                        secs,
                        rate,
                        batch,
                        index: p.spec.index,
                        writers: args.writers,
                    };
                    let (peers, tally) = (peers.clone(), tally.clone());
                    let i = p.spec.index - args.first;
                    loads.push(tokio::spawn(async move {
                        plan.run(&peers[i], &mut writer, &tally).await
                    }));
                }
            }
            Order::Report => {
                loads.retain(|l: &tokio::task::JoinHandle<()>| !l.is_finished());
                let report = report(&args, &peers, &tally);
                emit(&Event::Report(report));
            }
            Order::Reset => tally.reset(),
            Order::Quit => break,
        }
    }
    status.abort();
    for l in loads {
        l.abort();
    }
    let leaving: Vec<_> = peers
        .iter()
        .map(|p| {
            let room = p.room.clone();
            tokio::spawn(async move { room.leave().await })
        })
        .collect();
    for l in leaving {
        let _ = tokio::time::timeout(Duration::from_secs(5), l).await;
    }
    Ok(())
}

/// Lines of stdin, read on a thread of their own; the stream ends with stdin.
fn stdin_lines() -> tokio::sync::mpsc::Receiver<String> {
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::stdin().lock().lines().map_while(Result::ok) {
            if tx.blocking_send(line).is_err() {
                break;
            }
        }
    });
    rx
}

async fn start_peers(args: &WorkerArgs, tally: &Arc<Tally>) -> Vec<LoadPeer> {
    let mut peers = Vec::with_capacity(args.count);
    for i in 0..args.count {
        let spec = PeerSpec {
            index: args.first + i,
            relay_url: args.relay.clone(),
            room: args.room.clone(),
            announce: Duration::from_millis(args.announce_ms),
            run: args.run.clone(),
            superpeer: args.superpeer.clone(),
        };
        peers.push(LoadPeer::start(spec, tally.clone()));
        if args.join_every_ms > 0 {
            tokio::time::sleep(Duration::from_millis(args.join_every_ms)).await;
        }
    }
    peers
}

async fn print_status(peers: Arc<Vec<LoadPeer>>) {
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    loop {
        tick.tick().await;
        let connected = peers.iter().filter(|p| p.connected()).count();
        emit(&Event::Status {
            connected,
            peers: peers.len(),
        });
    }
}

fn report(args: &WorkerArgs, peers: &[LoadPeer], tally: &Tally) -> Report {
    let load = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
    Report {
        peers: peers.len(),
        connected: peers.iter().filter(|p| p.connected()).count(),
        writers: peers.iter().filter(|p| p.spec.index < args.writers).count(),
        sent: load(&tally.sent),
        send_failures: load(&tally.send_failures),
        delivered: load(&tally.delivered),
        echoed: load(&tally.echoed),
        connects: load(&tally.connects),
        disconnects: load(&tally.disconnects),
        latency: tally
            .latency
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .sparse(),
    }
}

fn emit(ev: &Event) {
    use std::io::Write;
    if let Ok(line) = serde_json::to_string(ev) {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{line}");
        let _ = out.flush();
    }
}

/// One writer's schedule: `rate` ops/s, spread evenly over time and, at the start,
/// over writers, so a thousand writers at 1 op/s do not all send in the same instant.
struct Plan {
    start_ms: u64,
    secs: f64,
    rate: f64,
    batch: usize,
    index: usize,
    writers: usize,
}

impl Plan {
    async fn run(self, peer: &LoadPeer, writer: &mut Writer, tally: &Tally) {
        if self.rate <= 0.0 || self.secs <= 0.0 {
            return;
        }
        let period = 1.0 / self.rate;
        let offset = period * (self.index as f64 / self.writers.max(1) as f64);
        let start_ns = self.start_ms * 1_000_000 + (offset * 1e9) as u64;
        let end_ns = self.start_ms * 1_000_000 + (self.secs * 1e9) as u64;
        // Ticks of at least 10 ms: a fast writer sends what fell due since the last.
        let tick = Duration::from_secs_f64(period.clamp(0.01, 1.0));
        sleep_until_ns(start_ns).await;
        let mut due_sent: u64 = 0;
        loop {
            let now = super::peer::now_ns();
            if now >= end_ns {
                break;
            }
            let due = (((now - start_ns) as f64 / 1e9) * self.rate) as u64 + 1;
            if due > due_sent {
                let want = (due - due_sent) as usize;
                let sent = peer.write(writer, want, self.batch).await;
                due_sent += want as u64;
                tally.sent.fetch_add(sent, Ordering::Relaxed);
                tally
                    .send_failures
                    .fetch_add(want as u64 - sent, Ordering::Relaxed);
            }
            tokio::time::sleep(tick).await;
        }
    }
}

async fn sleep_until_ns(at_ns: u64) {
    let now = super::peer::now_ns();
    if at_ns > now {
        tokio::time::sleep(Duration::from_nanos(at_ns - now)).await;
    }
}
