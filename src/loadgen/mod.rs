//! The load generator (`loadgen` binary): Rust peers built from this crate's rtc code,
//! split across worker processes, against one daemon on loopback that signals through
//! its embedded relay. See docs/DEVELOPMENT.md, *Load generator*.

pub(crate) mod daemon;
pub mod peer;
pub mod scenarios;
pub mod stats;
pub mod worker;

use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;

#[derive(Parser, Debug)]
#[command(
    name = "loadgen",
    about = "Load generator for genosdb-fallback: Rust peers against one daemon on 127.0.0.1"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Scenario,
}

#[derive(Subcommand, Debug)]
pub enum Scenario {
    /// Time until N peers are linked to the daemon (peer side and daemon side).
    Connect {
        #[command(flatten)]
        target: Target,
        #[command(flatten)]
        load: Load,
    },
    /// Live fan-out latency writer → daemon → every other peer, p50/p99/max, and
    /// delivered against expected.
    Fanout {
        #[command(flatten)]
        target: Target,
        #[command(flatten)]
        load: Load,
    },
    /// The daemon's RSS and CPU with N peers idle, then under load.
    Resources {
        #[command(flatten)]
        target: Target,
        #[command(flatten)]
        load: Load,
        /// Length of the idle window, in seconds.
        #[arg(long, default_value_t = 10.0)]
        idle_secs: f64,
    },
    /// N peers at R ops/s for M minutes; the daemon's RSS sampled along the way.
    Soak {
        #[command(flatten)]
        target: Target,
        #[command(flatten)]
        load: Load,
        #[arg(long, default_value_t = 10.0)]
        minutes: f64,
        #[arg(long, default_value_t = 5.0)]
        sample_secs: f64,
    },
    /// A fresh peer catching up a daemon seeded with each size of graph.
    Catchup {
        #[command(flatten)]
        target: Target,
        /// Graph sizes, in nodes.
        #[arg(long, value_delimiter = ',', default_value = "10000,100000,1000000")]
        sizes: Vec<usize>,
        /// Bytes of text in each node's value.
        #[arg(long, default_value_t = 100)]
        node_bytes: usize,
        /// Longest wait for one catch-up, in seconds.
        #[arg(long, default_value_t = 600.0)]
        timeout_secs: f64,
    },
    /// Sustained merge rate: writers push ever faster until the daemon stops keeping up.
    Merge {
        #[command(flatten)]
        target: Target,
        #[command(flatten)]
        load: Load,
        /// Total offered ops/s of the first step; each step doubles it.
        #[arg(long, default_value_t = 500.0)]
        start_rate: f64,
        #[arg(long, default_value_t = 5.0)]
        step_secs: f64,
        #[arg(long, default_value_t = 10)]
        max_steps: usize,
    },
    /// (internal) A worker process running a share of the peers.
    #[command(hide = true)]
    Worker(worker::WorkerArgs),
}

/// Which daemon to load.
#[derive(Args, Debug, Clone)]
pub struct Target {
    /// The daemon binary to spawn (default: genosdb-fallback next to this binary). It
    /// gets RELAY=1, ICE_SERVERS=, HOST=127.0.0.1, PORT=0, a temp DATA_DIR, FORWARD_OPS.
    #[arg(long)]
    pub daemon: Option<PathBuf>,
    /// Load a daemon already running on 127.0.0.1:PORT instead (RELAY=1, FORWARD_OPS=1,
    /// RELAY_MAX_PER_IP above the peer count).
    #[arg(long, conflicts_with = "daemon")]
    pub port: Option<u16>,
    /// With --port: its pid, to read its RSS and CPU from /proc.
    #[arg(long, requires = "port")]
    pub pid: Option<u32>,
    /// With --port: the daemon's peer id (its `joined the sync room` log line), so
    /// peers dial it at once as browsers do; without it the daemon dials each peer on
    /// its announce, ten at a time.
    #[arg(long, requires = "port")]
    pub superpeer_id: Option<String>,
    /// The relay the peers signal through (default: the daemon's embedded relay). With
    /// another relay the daemon's RSS no longer includes the peers' relay connections.
    #[arg(long)]
    pub relay: Option<String>,
    /// Do not dial the daemon: wait for it to dial each peer on its announce.
    #[arg(long)]
    pub no_dial: bool,
    #[arg(long, default_value = "loadgen")]
    pub db: String,
    /// FORWARD_OPS of the spawned daemon.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub forward: bool,
    /// More settings for the spawned daemon, KEY=VALUE (repeatable), e.g. FORWARD_MS=20.
    #[arg(long = "daemon-env", value_parser = parse_kv)]
    pub daemon_env: Vec<(String, String)>,
    /// Keep the temp directory (the daemon's store and daemon.log).
    #[arg(long)]
    pub keep: bool,
}

/// How many peers, and what they write.
#[derive(Args, Debug, Clone)]
pub struct Load {
    #[arg(long, default_value_t = 100)]
    pub peers: usize,
    /// Worker processes the peers are split across.
    #[arg(long, default_value_t = 1)]
    pub procs: usize,
    /// Peers that write (default: all of them).
    #[arg(long)]
    pub writers: Option<usize>,
    /// Ops per second per writer.
    #[arg(long, default_value_t = 1.0)]
    pub rate: f64,
    /// Length of the load, in seconds.
    #[arg(long, default_value_t = 30.0)]
    pub secs: f64,
    /// Ops per message (browsers send one).
    #[arg(long, default_value_t = 1)]
    pub batch: usize,
    /// Approximate size of one op's JSON, in bytes.
    #[arg(long, default_value_t = 200)]
    pub op_bytes: usize,
    /// Distinct nodes each writer cycles over (bounds the graph on long runs).
    #[arg(long, default_value_t = 100)]
    pub keys: u64,
    #[arg(long, default_value_t = 2500)]
    pub announce_ms: u64,
    /// Longest wait for every peer to be linked, in seconds.
    #[arg(long, default_value_t = 300.0)]
    pub connect_timeout: f64,
}

impl Load {
    pub fn writers(&self) -> usize {
        self.writers.unwrap_or(self.peers).min(self.peers)
    }
}

fn parse_kv(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| format!("expected KEY=VALUE, got {s:?}"))
}
