//! Runs the real binary on 127.0.0.1 with port 0 and a temporary DATA_DIR.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

pub mod faulty_relay;
pub mod peer;
pub mod pg;
pub mod picky_relay;
pub mod provision;
pub mod rtc;
pub mod tmpfs;

pub const BIN: &str = env!("CARGO_BIN_EXE_genosdb-fallback");
pub const DB: &str = "test-db";

/// A command for the binary with a clean, loopback-only environment.
pub fn command(data_dir: &Path) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("DB_NAME", DB)
        .env("DATA_DIR", data_dir)
        .env("HOST", "127.0.0.1")
        .env("PORT", "0")
        .env("RELAY_URLS", "")
        .env("RTC_ENABLED", "false")
        .env("RUST_LOG", "info")
        .current_dir(
            data_dir
                .ancestors()
                .skip(1)
                .find(|p| p.is_dir())
                .unwrap_or(Path::new("/")),
        );
    cmd
}

pub fn run(data_dir: &Path, args: &[&str], envs: &[(&str, &str)]) -> Output {
    let mut cmd = command(data_dir);
    cmd.args(args);
    for (k, v) in envs {
        cmd.env(k, v);
    }
    cmd.output().expect("run the binary")
}

pub struct Daemon {
    pub child: Child,
    pub port: u16,
    pub log: mpsc::Receiver<String>,
    pub lines: Vec<String>,
}

impl Daemon {
    pub fn start(data_dir: &Path, envs: &[(&str, &str)]) -> Daemon {
        let mut cmd = command(data_dir);
        for (k, v) in envs {
            cmd.env(k, v);
        }
        let mut child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn daemon");
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut d = Daemon {
            child,
            port: 0,
            log: rx,
            lines: Vec::new(),
        };
        let line = d.wait_for_log("listening", Duration::from_secs(20));
        // `addr=127.0.0.1:N` in text logs, `"addr":"127.0.0.1:N"` with LOG_FORMAT=json.
        let addr = line
            .split("addr=")
            .nth(1)
            .and_then(|s| s.split_whitespace().next())
            .or_else(|| {
                let rest = line.split("\"addr\":\"").nth(1)?;
                rest.split('"').next()
            })
            .expect("addr in the listening line");
        d.port = addr.rsplit(':').next().unwrap().parse().unwrap();
        d
    }

    /// Starts and waits until the store is loaded.
    pub fn start_ready(data_dir: &Path, envs: &[(&str, &str)]) -> Daemon {
        let mut d = Self::start(data_dir, envs);
        d.wait_for_log(" ready", Duration::from_secs(60));
        d
    }

    pub fn wait_for_log(&mut self, needle: &str, timeout: Duration) -> String {
        if let Some(l) = self.lines.iter().find(|l| l.contains(needle)) {
            return l.clone();
        }
        let deadline = Instant::now() + timeout;
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.log.recv_timeout(left) {
                Ok(line) => {
                    self.lines.push(line.clone());
                    if line.contains(needle) {
                        return line;
                    }
                }
                Err(_) => break,
            }
        }
        panic!(
            "no log line with {needle:?}; got:\n{}",
            self.lines.join("\n")
        );
    }

    /// Every line logged so far.
    pub fn drain_log(&mut self) -> &[String] {
        while let Ok(l) = self.log.try_recv() {
            self.lines.push(l);
        }
        &self.lines
    }

    /// Fails the test if the daemon logged a panic (a task that panicked does not
    /// stop the process, so a test must look).
    pub fn assert_no_panic(&mut self) {
        let panics: Vec<String> = self
            .drain_log()
            .iter()
            .filter(|l| l.contains("panicked"))
            .cloned()
            .collect();
        assert!(
            panics.is_empty(),
            "the daemon panicked:\n{}",
            panics.join("\n")
        );
    }

    pub fn get(&self, path: &str) -> (u16, String) {
        http_get(self.port, path)
    }

    pub fn signal(&self, sig: i32) {
        unsafe {
            libc::kill(self.child.id() as i32, sig);
        }
    }

    pub fn wait(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                while let Ok(l) = self.log.recv_timeout(Duration::from_millis(200)) {
                    self.lines.push(l);
                }
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "daemon did not exit in {timeout:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn stop(&mut self) -> ExitStatus {
        self.signal(libc::SIGTERM);
        self.wait(Duration::from_secs(10))
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // A failing test shows what the daemon said; a passing one stays quiet.
        if std::thread::panicking() {
            while let Ok(l) = self.log.recv_timeout(Duration::from_millis(100)) {
                self.lines.push(l);
            }
            let from = self.lines.len().saturating_sub(200);
            eprintln!(
                "--- daemon on port {} (last {} lines) ---",
                self.port,
                self.lines.len() - from
            );
            for l in &self.lines[from..] {
                eprintln!("{l}");
            }
        }
    }
}

/// A minimal HTTP/1.0 GET, so tests need no HTTP client crate.
pub fn http_get(port: u16, path: &str) -> (u16, String) {
    try_http_get(port, path).unwrap_or_else(|e| panic!("GET {path} on port {port}: {e}"))
}

/// [`http_get`], with the failure as a value (a daemon that is down, or was killed).
pub fn try_http_get(port: u16, path: &str) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")?;
    let mut resp = String::new();
    s.read_to_string(&mut resp)?;
    let code = resp
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = resp.split("\r\n\r\n").nth(1).unwrap_or("").to_owned();
    Ok((code, body))
}

pub fn data_dir(tmp: &tempfile::TempDir) -> PathBuf {
    let d = tmp.path().join("data");
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Polls `cond` until it holds; fails after 30 s. Used for progress, never for speed.
pub fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// A relay for a test's peers: a second daemon with RTC off and RELAY=1, which
/// outlives the daemon under test's restarts and stores nothing.
pub fn relay(tmp: &tempfile::TempDir) -> Daemon {
    let dir = tmp.path().join("relay");
    std::fs::create_dir_all(&dir).unwrap();
    Daemon::start_ready(&dir, &[("RELAY", "1"), ("DB_NAME", "relay-only")])
}

/// Every node as JSON lines, through the real `export` subcommand.
pub fn export(dir: &Path) -> Vec<String> {
    let out = run(dir, &["export"], &[]);
    assert!(
        out.status.success(),
        "export: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
}

/// The id of every node on disk, through the real `export`: a set, or a list.
pub fn stored_ids<C: FromIterator<String>>(dir: &Path) -> C {
    export(dir)
        .iter()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["id"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect()
}

/// A signed Nostr event as JSON, built with the `nostr` crate (tags as lists of
/// strings, any kind).
#[allow(dead_code)]
pub fn sign(
    keys: &nostr_sdk::Keys,
    created_at: u64,
    kind: u64,
    tags: Vec<Vec<String>>,
    content: &str,
) -> String {
    use nostr_sdk::prelude::{EventBuilder, JsonUtil, Kind, Tag, Timestamp};
    EventBuilder::new(Kind::Custom(kind as u16), content)
        .tags(tags.into_iter().map(|t| Tag::parse(t).unwrap()))
        .custom_created_at(Timestamp::from(created_at))
        .sign_with_keys(keys)
        .unwrap()
        .as_json()
}

pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// The daemon as a superpeer of the sync room, signalling only through `relay_urls`
/// (a comma list of loopback URLs), with no STUN. `envs` come last and win.
pub fn superpeer(dir: &Path, relay_urls: &str, envs: &[(&str, &str)]) -> Daemon {
    let mut all: Vec<(&str, &str)> = vec![
        ("RTC_ENABLED", "true"),
        ("RELAY_URLS", relay_urls),
        ("ICE_SERVERS", ""),
        // Shown only when a test fails (see Daemon's Drop).
        (
            "RUST_LOG",
            "info,genosdb_fallback::rtc=debug,genosdb_fallback::sync=debug",
        ),
    ];
    all.extend_from_slice(envs);
    Daemon::start_ready(dir, &all)
}

/// A counter or gauge from /metrics (`name` without the `genosdb_` prefix or the
/// `_total` suffix; labelled series are summed); 0 when absent or unreachable.
pub fn metric(port: u16, name: &str) -> u64 {
    let (_, body) = http_get(port, "/metrics");
    let wanted = [format!("genosdb_{name}"), format!("genosdb_{name}_total")];
    body.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let base = series.split('{').next()?;
            wanted
                .iter()
                .any(|w| w == base)
                .then(|| value.parse::<f64>().ok())?
        })
        .sum::<f64>() as u64
}

/// /health as JSON (Null when it is not JSON).
pub fn health(port: u16) -> serde_json::Value {
    let (_, body) = http_get(port, "/health");
    serde_json::from_str(&body).unwrap_or_default()
}

/// A deterministic Nostr key for tests: the scalar `n`.
#[allow(dead_code)]
pub fn nostr_keys(n: u8) -> nostr_sdk::Keys {
    let mut b = [0u8; 32];
    b[31] = n;
    nostr_sdk::Keys::new(nostr_sdk::SecretKey::from_slice(&b).unwrap())
}

/// A signalling event as GenosRTC sends it: the topic's kind, one `x` tag (§3).
#[allow(dead_code)]
pub fn signal_event(keys: &nostr_sdk::Keys, topic: &str, content: &str) -> nostr_sdk::Event {
    use nostr_sdk::prelude::{Alphabet, EventBuilder, Kind, SingleLetterTag, Tag, TagKind};
    let kind = genosdb_fallback::rtc::topic::kind_of(topic);
    EventBuilder::new(Kind::Custom(kind), content)
        .tag(Tag::custom(
            TagKind::SingleLetter(SingleLetterTag::lowercase(Alphabet::X)),
            [topic],
        ))
        .sign_with_keys(keys)
        .unwrap()
}
