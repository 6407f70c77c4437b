//! The daemon under load: spawned by the load generator (with its own relay, a temp
//! DATA_DIR, FORWARD_OPS and a free port), or one already running, given by port and
//! pid. Its health and metrics over HTTP, its memory and CPU from /proc.

use anyhow::{Context, bail};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// How to start the daemon.
#[derive(Debug, Clone)]
pub struct Spawn {
    pub bin: PathBuf,
    pub db: String,
    pub data_dir: PathBuf,
    pub forward: bool,
    /// Extra `KEY=VALUE` settings, applied last.
    pub env: Vec<(String, String)>,
}

pub struct Daemon {
    child: Option<Child>,
    pub pid: Option<u32>,
    pub port: u16,
    /// Its log lines (stderr), kept for figures read from them.
    pub log: Arc<Mutex<Vec<String>>>,
}

/// The settings a spawned daemon gets: loopback only, its own relay, no STUN.
fn daemon_env(s: &Spawn) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = [
        ("DB_NAME", s.db.as_str()),
        ("HOST", "127.0.0.1"),
        ("PORT", "0"),
        ("RELAY", "1"),
        ("ICE_SERVERS", ""),
        ("RTC_ENABLED", "1"),
        ("RELAY_MAX_CONNECTIONS", "100000"),
        ("RELAY_MAX_PER_IP", "100000"),
        // The load is the point: every peer is let in, and `merge` may send faster
        // than the per-peer default allows a browser.
        ("MAX_PEERS", "100000"),
        ("PEER_MSG_RATE", "1000000"),
        ("PEER_MSG_BURST", "10000000"),
        ("FORWARD_OPS", if s.forward { "1" } else { "0" }),
        ("RUST_LOG", "info"),
        ("LOG_FORMAT", "text"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    env.push(("DATA_DIR".into(), s.data_dir.display().to_string()));
    env.extend(s.env.iter().cloned());
    env
}

fn command(s: &Spawn) -> Command {
    let mut cmd = Command::new(&s.bin);
    cmd.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .current_dir(&s.data_dir);
    for (k, v) in daemon_env(s) {
        cmd.env(k, v);
    }
    cmd
}

/// Runs `import FILE` with the daemon's settings (no daemon may be running on them).
pub fn import(s: &Spawn, file: &Path) -> anyhow::Result<()> {
    let out = command(s)
        .arg("import")
        .arg(file)
        .output()
        .with_context(|| format!("cannot run {}", s.bin.display()))?;
    if !out.status.success() {
        bail!(
            "import failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

impl Daemon {
    /// Starts the daemon and waits until it has bound its port and loaded its store.
    pub async fn spawn(s: &Spawn) -> anyhow::Result<Self> {
        std::fs::create_dir_all(&s.data_dir)?;
        let mut child = command(s)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("cannot start {}", s.bin.display()))?;
        let stderr = child.stderr.take().context("no stderr")?;
        let log: Arc<Mutex<Vec<String>>> = Arc::default();
        let lines = log.clone();
        let file = s.data_dir.join("daemon.log");
        std::thread::spawn(move || {
            let mut copy = std::fs::File::create(file).ok();
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(f) = copy.as_mut() {
                    use std::io::Write;
                    let _ = writeln!(f, "{line}");
                }
                // Keep the lines figures are read from; the file has everything.
                if line.contains("listening")
                    || line.contains("joined the sync room")
                    || line.contains(" ready")
                    || line.contains("store loaded")
                    || line.contains("full state sent")
                    || line.contains("ERROR")
                {
                    lines.lock().unwrap_or_else(|p| p.into_inner()).push(line);
                }
            }
        });
        let pid = child.id();
        let mut d = Self {
            child: Some(child),
            pid: Some(pid),
            port: 0,
            log,
        };
        let line = d.wait_log("listening", Duration::from_secs(30)).await?;
        d.port = line
            .split("addr=")
            .nth(1)
            .and_then(|s| s.split_whitespace().next())
            .and_then(|a| a.rsplit(':').next())
            .and_then(|p| p.parse().ok())
            .context("no port in the daemon's listening line")?;
        d.wait_log(" ready", Duration::from_secs(600)).await?;
        Ok(d)
    }

    /// A daemon already running on 127.0.0.1:`port` (pid for its RSS and CPU).
    pub fn attach(port: u16, pid: Option<u32>) -> Self {
        Self {
            child: None,
            pid,
            port,
            log: Arc::default(),
        }
    }

    /// The daemon's peer id in the sync room, from its log (spawned daemons only).
    pub fn peer_id(&self) -> Option<String> {
        let line = self.find_log("joined the sync room")?;
        let id = line.split("peer_id=").nth(1)?.split_whitespace().next()?;
        Some(id.trim_matches('"').to_owned())
    }

    pub fn relay_url(&self) -> String {
        format!("ws://127.0.0.1:{}", self.port)
    }

    /// Waits for a log line holding `needle` (spawned daemons only).
    pub async fn wait_log(&mut self, needle: &str, timeout: Duration) -> anyhow::Result<String> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(l) = self.find_log(needle) {
                return Ok(l);
            }
            if let Some(c) = self.child.as_mut()
                && let Some(status) = c.try_wait()?
            {
                bail!("the daemon exited ({status}) before logging {needle:?}");
            }
            if Instant::now() > deadline {
                bail!("the daemon did not log {needle:?} within {timeout:?}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn find_log(&self, needle: &str) -> Option<String> {
        self.log
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .rev()
            .find(|l| l.contains(needle))
            .cloned()
    }

    pub async fn health(&self) -> Option<serde_json::Value> {
        let body = http_get(self.port, "/health").await?;
        serde_json::from_str(&body).ok()
    }

    pub async fn peers(&self) -> Option<u64> {
        self.health().await?.get("peers")?.as_u64()
    }

    /// One value of /metrics, summed over its labels.
    pub async fn metric(&self, name: &str) -> Option<f64> {
        let body = http_get(self.port, "/metrics").await?;
        let mut sum = None;
        for line in body.lines().filter(|l| !l.starts_with('#')) {
            let (key, value) = line.rsplit_once(' ')?;
            let base = key.split('{').next().unwrap_or(key);
            if base == name {
                *sum.get_or_insert(0.0) += value.parse::<f64>().unwrap_or(0.0);
            }
        }
        sum
    }

    /// RSS and CPU time from /proc, or RSS from /metrics when the pid is unknown.
    pub async fn sample(&self) -> Option<Sample> {
        match self.pid {
            Some(pid) => Sample::read(pid),
            None => Some(Sample {
                rss_bytes: self.metric("genosdb_process_resident_bytes").await? as u64,
                cpu_secs: f64::NAN,
                at: Instant::now(),
            }),
        }
    }

    /// SIGTERM, then waits for the exit (SIGKILL after 15 s).
    pub async fn stop(mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(child.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(c) = self.child.as_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A process's memory and CPU at one instant.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    pub rss_bytes: u64,
    /// utime + stime, in seconds.
    pub cpu_secs: f64,
    pub at: Instant,
}

/// Clock ticks per second of /proc/<pid>/stat: 100 on every Linux this runs on.
const CLK_TCK: f64 = 100.0;

impl Sample {
    pub fn read(pid: u32) -> Option<Self> {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let rss_kb: u64 = status
            .lines()
            .find(|l| l.starts_with("VmRSS:"))?
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()?;
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // Fields after the command name, which may hold spaces: state is field 3.
        let after = stat.rsplit_once(')')?.1;
        let f: Vec<&str> = after.split_whitespace().collect();
        let utime: f64 = f.get(11)?.parse().ok()?;
        let stime: f64 = f.get(12)?.parse().ok()?;
        Some(Self {
            rss_bytes: rss_kb * 1024,
            cpu_secs: (utime + stime) / CLK_TCK,
            at: Instant::now(),
        })
    }

    /// CPU used between two samples, in percent of one core.
    pub fn cpu_pct_since(&self, earlier: &Sample) -> f64 {
        let wall = self.at.duration_since(earlier.at).as_secs_f64();
        if wall <= 0.0 {
            return f64::NAN;
        }
        (self.cpu_secs - earlier.cpu_secs) / wall * 100.0
    }
}

/// GET on 127.0.0.1 with HTTP/1.0; the body, or None.
pub async fn http_get(port: u16, path: &str) -> Option<String> {
    let fetch = async {
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .ok()?;
        s.write_all(format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").as_bytes())
            .await
            .ok()?;
        let mut raw = Vec::new();
        s.read_to_end(&mut raw).await.ok()?;
        let text = String::from_utf8(raw).ok()?;
        text.split_once("\r\n\r\n").map(|(_, b)| b.to_owned())
    };
    tokio::time::timeout(Duration::from_secs(10), fetch)
        .await
        .ok()
        .flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_its_own_memory_and_cpu() {
        let s = Sample::read(std::process::id()).unwrap();
        assert!(s.rss_bytes > 1 << 20);
        assert!(s.cpu_secs >= 0.0);
    }
}
