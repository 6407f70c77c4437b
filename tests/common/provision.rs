//! Third-party tools that some tests run: werift on Node.js and nostr_relay on Python.
//!
//! A test takes the tool from its variable (`WERIFT_DIR`, `NOSTR_RELAY_BIN`, which `.ci/run`
//! sets), or else installs it on first use through `.ci/provision` into a cache directory
//! named after its pins, so the README's `cargo test --locked` runs these tests too on any
//! machine with node and npm, or python3. Only when that runtime is missing does the test
//! skip, with one line naming what to install; under `CI=true` that is a failure.

use std::path::PathBuf;
use std::process::Command;

/// The path `.ci/provision <what>` prints, or None (skip) when it cannot install outside CI.
/// `var` set wins and is returned as is: the caller checks what it names.
pub fn tool(var: &str, what: &str) -> Option<PathBuf> {
    if let Some(v) = std::env::var_os(var) {
        return Some(PathBuf::from(v));
    }
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let out = Command::new("bash")
        .arg(root.join(".ci/provision"))
        .arg(what)
        .current_dir(&root)
        .output();
    let why = match out {
        Ok(o) if o.status.success() => {
            let stdout = String::from_utf8_lossy(&o.stdout);
            if let Some(line) = stdout.lines().last().filter(|l| !l.is_empty()) {
                return Some(PathBuf::from(line));
            }
            "it printed nothing".to_string()
        }
        Ok(o) => String::from_utf8_lossy(&o.stderr).trim().to_string(),
        Err(e) => format!("bash: {e}"),
    };
    let ci = std::env::var("CI").is_ok_and(|v| v == "true");
    assert!(!ci, "CI=true and .ci/provision {what} failed: {why}");
    eprintln!("SKIPPED: .ci/provision {what} failed ({why}); set {var} to skip the install");
    None
}
