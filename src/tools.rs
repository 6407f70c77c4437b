//! The `export`, `backup`, `import` and `migrate` subcommands, on either backend.
//! `export` and `backup` read without the store's lock, so they work while a daemon
//! runs: from DATA_DIR the read retries until it sees one consistent state; from
//! Postgres it is one repeatable-read transaction.

use crate::config::{Config, StorageKind};
use crate::persist::codec;
use crate::persist::files;
use crate::persist::pg::{self, PgBackend, PgTarget};
use anyhow::Context;
use std::io::{BufWriter, Write};
use std::path::Path;

pub(crate) fn load(cfg: &Config) -> anyhow::Result<files::Loaded> {
    match &cfg.database {
        Some(target) => pg::load_readonly(target, &cfg.db_name, cfg.oplog_size)
            .context("cannot read the store from postgres"),
        None => {
            files::load_consistent(&cfg.layout(), cfg.oplog_size).context("cannot read the store")
        }
    }
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

/// Merges nodes from JSON lines (the `export` format) into the store, node by node
/// with the full-state rule: a node is taken when it is newer than what the store
/// holds. The whole file is validated before anything is merged. On files it needs
/// the store's lock, so it refuses to run beside a daemon; on Postgres it is one more
/// writer beside the daemons, as their equal.
pub fn import(cfg: &Config, input: impl std::io::BufRead) -> anyhow::Result<ImportReport> {
    let nodes = read_node_lines(input, cfg.max_value_bytes)?;
    let (lock, store, persistence) = match &cfg.database {
        None => {
            let (lock, loaded, writer) = files::open_for_daemon(&cfg.layout(), cfg.oplog_size)
                .context("cannot open the store")?;
            let store = std::sync::Arc::new(std::sync::Mutex::new(loaded.store));
            let p = crate::persist::Persistence::start(cfg.persist(), store.clone(), writer)?;
            (Some(lock), store, p)
        }
        Some(target) => {
            let mut backend = PgBackend::new(target.clone(), &cfg.persist());
            let loaded = backend
                .load_now()
                .context("cannot open the store in postgres")?;
            let next_seq = loaded.next_seq;
            let store = std::sync::Arc::new(std::sync::Mutex::new(loaded.store));
            let p = crate::persist::Persistence::start_with(
                cfg.persist(),
                store.clone(),
                Box::new(backend),
                next_seq,
                "postgres",
            )?;
            (None, store, p)
        }
    };
    let mut report = ImportReport {
        read: nodes.len(),
        adopted: 0,
    };
    let mut nodes = nodes.into_iter().peekable();
    while nodes.peek().is_some() {
        let batch: Vec<_> = nodes.by_ref().take(10_000).collect();
        let outcome =
            store
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .full_state(crate::store::FullState {
                    nodes: batch,
                    removals: Vec::new(),
                    ts: None,
                });
        report.adopted += outcome.adopted;
    }
    let status = persistence.status.clone();
    persistence.shutdown();
    drop(lock);
    if status.degraded() {
        anyhow::bail!(
            "the store could not be written: {}",
            status.last_error().unwrap_or_default()
        );
    }
    Ok(report)
}

/// What `migrate` moved.
#[derive(Debug, Clone, Copy)]
pub struct MigrateReport {
    pub nodes: usize,
    pub snapshot_bytes: u64,
    pub next_seq: u64,
}

/// Copies the store of DB_NAME from DATA_DIR into DATABASE_URL (`to` = postgres) or
/// back (`to` = files), as one snapshot in the file format, so the round trip is byte
/// for byte (`--to postgres` merges it with anything a daemon stored meanwhile, under
/// the compaction lock). DATA_DIR is locked as a daemon locks it; a target that
/// already holds anything for DB_NAME is refused.
pub fn migrate(cfg: &Config, to: StorageKind) -> anyhow::Result<MigrateReport> {
    let target: &PgTarget = cfg.database.as_ref().context(
        "migrate needs DATABASE_URL (postgres://user:pass@host:port/db) as well as DATA_DIR",
    )?;
    let layout = cfg.layout();
    let lock = files::DirLock::acquire(&layout).context("cannot lock DATA_DIR")?;
    let mut owner = pg::open_session(target).context("cannot open the store in postgres")?;
    let loaded = match to {
        StorageKind::Postgres => {
            if !owner.is_empty(&cfg.db_name)? {
                anyhow::bail!(pg::PgError::NotEmpty {
                    target: target.redacted().to_owned(),
                    db: cfg.db_name.clone(),
                });
            }
            files::load(&layout, cfg.oplog_size).context("cannot read DATA_DIR")?
        }
        StorageKind::Files => {
            let here = files::load(&layout, cfg.oplog_size).context("cannot read DATA_DIR")?;
            if here.next_seq > 0 || !here.store.is_empty() || here.snapshot_bytes > 0 {
                anyhow::bail!(
                    "{} already holds a store for {}; refusing to overwrite it",
                    layout.dir.display(),
                    cfg.db_name
                );
            }
            owner
                .load(&cfg.db_name, cfg.oplog_size)
                .context("cannot read the store from postgres")?
                .0
        }
    };
    let bytes = codec::encode_snapshot(&loaded.store, loaded.next_seq);
    match to {
        // Merged with anything a daemon wrote meanwhile, under the compaction lock.
        StorageKind::Postgres => {
            owner.compact(
                &cfg.db_name,
                cfg.oplog_size,
                Some(&loaded.store),
                true,
                pg::RETAIN,
            )?;
        }
        StorageKind::Files => {
            files::rewrite_from_memory(&layout, &bytes, loaded.next_seq)
                .context("cannot write DATA_DIR")?;
        }
    }
    drop(owner);
    drop(lock);
    Ok(MigrateReport {
        nodes: loaded.store.len(),
        snapshot_bytes: bytes.len() as u64,
        next_seq: loaded.next_seq,
    })
}

#[derive(Debug, Clone, Copy)]
pub struct ImportReport {
    pub read: usize,
    pub adopted: usize,
}

/// Reads and checks every line before anything is merged. A node is refused, and with
/// it the whole import, when the daemon would refuse it from a peer: a value longer
/// than MAX_VALUE_BYTES, or neither a value nor a timestamp (nothing to merge by); and
/// when it would not fit one journal record, which no reader could then read back.
fn read_node_lines(
    mut input: impl std::io::BufRead,
    max_value_bytes: usize,
) -> anyhow::Result<Vec<(String, crate::store::Node)>> {
    use crate::store::json::{RawObject, parse_string};
    use std::io::{BufRead, Read};
    let mut nodes = Vec::new();
    let mut record = Vec::new();
    let mut bytes = Vec::new();
    for i in 0.. {
        // A line longer than this cannot hold a node that fits one record: it is refused
        // before it is held whole in memory.
        let max_line = codec::MAX_RECORD_LEN * 2;
        bytes.clear();
        let read = (&mut input)
            .take(max_line as u64 + 1)
            .read_until(b'\n', &mut bytes)
            .with_context(|| format!("line {}", i + 1))?;
        if read == 0 {
            break;
        }
        if bytes.len() > max_line {
            anyhow::bail!(
                "line {} is longer than {max_line} bytes, too large for any node the store can keep; nothing was imported",
                i + 1
            );
        }
        let line =
            std::str::from_utf8(&bytes).with_context(|| format!("line {} is not UTF-8", i + 1))?;
        if line.trim().is_empty() {
            continue;
        }
        let raw: Box<serde_json::value::RawValue> = serde_json::from_str(line.trim_end())
            .with_context(|| format!("line {} is not JSON", i + 1))?;
        let id = RawObject::parse(&raw)
            .and_then(|o| o.get("id").and_then(parse_string))
            .with_context(|| format!("line {} has no string id", i + 1))?;
        let node = crate::store::Node::from_json(&raw)
            .with_context(|| format!("line {} is not a node", i + 1))?;
        let n = i + 1;
        let id_shown: String = id.chars().take(64).collect();
        if let Some(value) = &node.value
            && value.get().len() > max_value_bytes
        {
            anyhow::bail!(
                "line {n}: the value of node {id_shown:?} is {} bytes, over MAX_VALUE_BYTES ({max_value_bytes}); nothing was imported",
                value.get().len()
            );
        }
        if node.value.is_none() && node.timestamp.is_none() {
            anyhow::bail!(
                "line {n}: node {id_shown:?} has neither a value nor a timestamp; nothing was imported"
            );
        }
        let effect = crate::store::Effect::Adopt {
            id: id.as_str().into(),
            node,
        };
        record.clear();
        if let Err(e) = codec::encode_record(&effect, &mut record) {
            anyhow::bail!(
                "line {n}: node {id_shown:?} is too large to store: {e}; nothing was imported"
            );
        }
        let crate::store::Effect::Adopt { node, .. } = effect else {
            unreachable!("built as Adopt above")
        };
        nodes.push((id, node));
    }
    Ok(nodes)
}
