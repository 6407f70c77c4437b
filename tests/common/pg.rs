//! The Postgres server the tests use: PG_TEST_URL when set; otherwise, where the
//! Postgres binaries are installed (Debian's `postgresql` package), a throwaway server
//! that `.ci/pg-start` starts for this test process on 127.0.0.1 and a Unix socket,
//! and `.ci/pg-stop` removes once the process is gone. Without either, `None`, and
//! the test prints that it skipped.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::OnceLock;

pub struct PgServer {
    /// postgres://user:pass@127.0.0.1:port/db
    pub url: String,
    pub port: u16,
    /// A directory the server's Unix socket is in (`/tmp` always is, see .ci/pg-start).
    pub socket_dir: PathBuf,
}

static SERVER: OnceLock<Option<PgServer>> = OnceLock::new();

fn installed() -> bool {
    let debian = std::fs::read_dir("/usr/lib/postgresql")
        .map(|d| {
            d.filter_map(Result::ok)
                .any(|e| e.path().join("bin/pg_ctl").is_file())
        })
        .unwrap_or(false);
    let on_path = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join("pg_ctl").is_file()))
        .unwrap_or(false);
    debian || on_path
}

fn port_of(url: &str) -> u16 {
    url.rsplit('@')
        .next()
        .and_then(|r| r.split('/').next())
        .and_then(|hp| hp.rsplit(':').next())
        .and_then(|p| p.parse().ok())
        .unwrap_or(5432)
}

fn start() -> Option<PgServer> {
    if let Ok(url) = std::env::var("PG_TEST_URL")
        && !url.is_empty()
    {
        return Some(PgServer {
            port: port_of(&url),
            url,
            socket_dir: PathBuf::from("/tmp"),
        });
    }
    if !installed() {
        return None;
    }
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let mut b = [0u8; 4];
    getrandom::fill(&mut b).unwrap();
    let dir = std::env::temp_dir().join(format!(
        "gdbf-pg-test-{}-{:02x}{:02x}{:02x}{:02x}",
        std::process::id(),
        b[0],
        b[1],
        b[2],
        b[3]
    ));
    let out = Command::new("bash")
        .arg(root.join(".ci/pg-start"))
        .arg(&dir)
        .stderr(Stdio::inherit())
        .output()
        .expect("run .ci/pg-start");
    assert!(out.status.success(), ".ci/pg-start failed");
    let url = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    // Stops the server once this test process has exited, however it exits.
    let _ = Command::new("bash")
        .arg("-c")
        .arg(format!(
            "while kill -0 {} 2>/dev/null; do sleep 1; done; exec bash '{}' '{}'",
            std::process::id(),
            root.join(".ci/pg-stop").display(),
            dir.display()
        ))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn();
    Some(PgServer {
        port: port_of(&url),
        url,
        socket_dir: dir,
    })
}

/// The server, started at the first call; `None` (after saying so) when there is none.
pub fn server() -> Option<&'static PgServer> {
    let s = SERVER.get_or_init(start).as_ref();
    if s.is_none() {
        use std::io::Write;
        let _ = writeln!(
            std::io::stderr(),
            "SKIPPED: no PG_TEST_URL and no Postgres installed (apt-get install postgresql); the Postgres half of this test did not run"
        );
    }
    s
}

pub fn url() -> Option<String> {
    server().map(|s| s.url.clone())
}
