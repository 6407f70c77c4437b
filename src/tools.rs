//! The `export` and `backup` subcommands. Both read DATA_DIR without its lock, so they
//! work while a daemon runs: the read retries until it sees one consistent state.

use crate::config::Config;
use crate::persist::codec;
use crate::persist::files::{self, Layout};
use anyhow::Context;
use std::io::{BufWriter, Write};
use std::path::Path;

fn load(cfg: &Config) -> anyhow::Result<files::Loaded> {
    let layout = Layout::new(&cfg.data_dir, &cfg.db_name);
    files::load_consistent(&layout, cfg.oplog_size).context("cannot read the store")
}

/// Every node as one JSON line, sorted by id.
pub fn export(cfg: &Config, out: impl Write) -> anyhow::Result<usize> {
    let loaded = load(cfg)?;
    let store = loaded.store;
    let mut ids: Vec<&str> = store.nodes().keys().map(|k| k.as_ref()).collect();
    ids.sort_unstable();
    let mut out = BufWriter::new(out);
    let mut line = String::new();
    for id in &ids {
        line.clear();
        if let Some(node) = store.get(id) {
            node.write_json(id, &mut line);
        }
        line.push('\n');
        match out.write_all(line.as_bytes()) {
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => return Ok(0),
            r => r?,
        }
    }
    match out.flush() {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(ids.len()),
        r => r.map(|_| ids.len()).map_err(Into::into),
    }
}

/// One compacted snapshot of the whole store, written atomically to `file`.
pub fn backup(cfg: &Config, file: &Path) -> anyhow::Result<(usize, u64)> {
    let loaded = load(cfg)?;
    let bytes = codec::encode_snapshot(&loaded.store, loaded.next_seq);
    files::write_atomic(file, &bytes)
        .with_context(|| format!("cannot write {}", file.display()))?;
    Ok((loaded.store.len(), bytes.len() as u64))
}
