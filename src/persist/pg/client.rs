//! One Postgres session and the statements the store runs on it: migrations, the
//! consistent load, the group-commit append, the tail of what other daemons append,
//! and the coordinated compaction.

use super::target::{CONNECT_TIMEOUT, PgTarget, tls};
use super::{
    APPEND_TIMEOUT, BULK_TIMEOUT, COMPACT_LOCK, MIGRATION_1, MIGRATION_2, MIGRATION_LOCK,
    PART_BYTES, PgError, SCHEMA_VERSION,
};
use crate::persist::codec::{self, CodecError};
use crate::persist::error::{CompactReport, Loaded};
use crate::persist::merge_effect;
use crate::store::{Effect, Store};
use std::time::{Duration, Instant};
use tokio_postgres::config::SslMode;
use tokio_postgres::{IsolationLevel, NoTls, Transaction};

/// Where a daemon's tail of the journal stands: the snapshot it last read in. Every
/// row visible there has been read. A row committed since has an id past `max_id`
/// (ids are taken at insert time, from a sequence), or was written by a transaction
/// still running then (`xip`) or begun since (from `xmax` on): exactly what the next
/// read asks for, however long any other transaction runs.
#[derive(Debug, Default, Clone)]
pub struct Tail {
    pub max_id: i64,
    pub xmax: u64,
    pub xip: Vec<String>,
}

/// The snapshot's horizon and the journal's highest id, in the snapshot's own words.
const HORIZON_SQL: &str = "SELECT pg_snapshot_xmax(pg_current_snapshot())::text,
        ARRAY(SELECT x::text FROM pg_snapshot_xip(pg_current_snapshot()) x),
        (SELECT coalesce(max(id), 0) FROM gdbf_journal WHERE db = $1)";

/// A journal row read back: its id and framed records.
struct Row {
    id: i64,
    records: i32,
    bytes: Vec<u8>,
}

/// One connection, driven by its own single-threaded runtime: the flusher, the
/// compactor and the subcommands are plain threads.
pub struct PgClient {
    rt: tokio::runtime::Runtime,
    client: tokio_postgres::Client,
    target: PgTarget,
}

enum ConnectError {
    Pg(tokio_postgres::Error),
    Setup(PgError),
    Timeout,
}

impl From<tokio_postgres::Error> for ConnectError {
    fn from(e: tokio_postgres::Error) -> Self {
        Self::Pg(e)
    }
}

impl From<PgError> for ConnectError {
    fn from(e: PgError) -> Self {
        Self::Setup(e)
    }
}

pub(super) enum PgOpError {
    Pg(tokio_postgres::Error),
    Other(PgError),
}

impl From<tokio_postgres::Error> for PgOpError {
    fn from(e: tokio_postgres::Error) -> Self {
        Self::Pg(e)
    }
}

pub(super) fn describe(e: &tokio_postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        return format!("{} {}: {}", db.severity(), db.code().code(), db.message());
    }
    let mut s = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(inner) = source {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        source = inner.source();
    }
    s
}

fn db_err(target: &PgTarget, e: &tokio_postgres::Error) -> PgError {
    PgError::Db {
        target: target.redacted().to_owned(),
        detail: describe(e),
    }
}

fn xid(text: &str) -> u64 {
    text.parse().unwrap_or(0)
}

impl PgClient {
    pub fn connect(target: &PgTarget) -> Result<Self, PgError> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| PgError::Setup(format!("runtime: {e}")))?;
        let config = target.config.clone();
        // Several hosts are tried one after the other, each within connect_timeout.
        let hosts = config.get_hosts().len().max(1) as u32;
        let timeout = config
            .get_connect_timeout()
            .copied()
            .unwrap_or(CONNECT_TIMEOUT)
            * (hosts + 1);
        let connected = rt.block_on(async {
            let fut = async {
                if config.get_ssl_mode() == SslMode::Disable {
                    let (client, conn) = config.connect(NoTls).await?;
                    tokio::spawn(async move {
                        if let Err(e) = conn.await {
                            tracing::debug!(error = %e, "postgres connection closed");
                        }
                    });
                    Ok(client)
                } else {
                    let tls = tls::connector(target.verify_certs).map_err(PgError::Setup)?;
                    let (client, conn) = config.connect(tls).await?;
                    tokio::spawn(async move {
                        if let Err(e) = conn.await {
                            tracing::debug!(error = %e, "postgres connection closed");
                        }
                    });
                    Ok(client)
                }
            };
            match tokio::time::timeout(timeout, fut).await {
                Ok(r) => r,
                Err(_) => Err(ConnectError::Timeout),
            }
        });
        let client = connected.map_err(|e| match e {
            ConnectError::Pg(e) => db_err(target, &e),
            ConnectError::Setup(e) => e,
            ConnectError::Timeout => PgError::Timeout {
                target: target.redacted().to_owned(),
                secs: timeout.as_secs(),
            },
        })?;
        let mut c = Self {
            rt,
            client,
            target: target.clone(),
        };
        c.keepalives();
        Ok(c)
    }

    pub fn is_closed(&self) -> bool {
        self.client.is_closed()
    }

    /// Asks the server to probe the session's TCP connection, so that a session whose
    /// daemon vanished is ended within a minute, not after TCP's hours.
    fn keepalives(&mut self) {
        let sql = "SET tcp_keepalives_idle = 15; SET tcp_keepalives_interval = 5; SET tcp_keepalives_count = 3";
        if let Err(e) = self.block(APPEND_TIMEOUT, async move |c| {
            c.batch_execute(sql).await?;
            Ok(())
        }) {
            tracing::debug!(error = %e, "a session setting was refused");
        }
    }

    /// A round trip: the session and the server still answer.
    pub fn ping(&mut self) -> Result<(), PgError> {
        self.block(APPEND_TIMEOUT, async move |c| {
            c.batch_execute("SELECT 1").await?;
            Ok(())
        })
    }

    pub(super) fn block<T>(
        &mut self,
        timeout: Duration,
        f: impl AsyncFnOnce(&mut tokio_postgres::Client) -> Result<T, PgOpError>,
    ) -> Result<T, PgError> {
        let client = &mut self.client;
        let result = self
            .rt
            .block_on(async { tokio::time::timeout(timeout, f(client)).await });
        match result {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(PgOpError::Pg(e))) => Err(db_err(&self.target, &e)),
            Ok(Err(PgOpError::Other(e))) => Err(e),
            Err(_) => Err(PgError::Timeout {
                target: self.target.redacted().to_owned(),
                secs: timeout.as_secs(),
            }),
        }
    }

    /// Creates or upgrades the tables. Idempotent, and serialised between daemons
    /// starting at once by a transaction-scoped advisory lock.
    pub fn migrate(&mut self) -> Result<(), PgError> {
        let target = self.target.redacted().to_owned();
        self.block(BULK_TIMEOUT, async move |c| {
            let tx = c.transaction().await?;
            tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
                .await?;
            tx.batch_execute(
                "CREATE TABLE IF NOT EXISTS gdbf_schema (
                    version integer PRIMARY KEY,
                    applied_at timestamptz NOT NULL DEFAULT now()
                )",
            )
            .await?;
            let row = tx
                .query_one("SELECT coalesce(max(version), 0) FROM gdbf_schema", &[])
                .await?;
            let found: i32 = row.get(0);
            if found > SCHEMA_VERSION {
                return Err(PgOpError::Other(PgError::NewerSchema { target, found }));
            }
            for (version, sql) in [(1, MIGRATION_1), (2, MIGRATION_2)] {
                if found < version {
                    tx.batch_execute(sql).await?;
                    tx.execute("INSERT INTO gdbf_schema (version) VALUES ($1)", &[&version])
                        .await?;
                    tracing::info!(version, "postgres schema migrated");
                }
            }
            tx.commit().await?;
            Ok(())
        })
    }

    /// Reads the snapshot and every journal row of `db` in one consistent transaction,
    /// and where a tail of the journal starts from there. Missing tables read as an
    /// empty store (nothing was ever written there). Also returns the journal's bytes.
    pub fn load(&mut self, db: &str, oplog_size: usize) -> Result<(Loaded, Tail, u64), PgError> {
        let dbname = db.to_owned();
        let (parts, rows, tail) = self.block(BULK_TIMEOUT, async move |c| {
            let tx = c
                .build_transaction()
                .isolation_level(IsolationLevel::RepeatableRead)
                .read_only(true)
                .start()
                .await?;
            let version: i32 = tx
                .query_one(
                    "SELECT CASE WHEN to_regclass('gdbf_journal') IS NULL THEN 0
                                 WHEN to_regclass('gdbf_schema') IS NULL THEN 1
                                 ELSE (SELECT coalesce(max(version), 1) FROM gdbf_schema) END",
                    &[],
                )
                .await?
                .get(0);
            if version == 0 {
                return Ok((Vec::new(), Vec::new(), Tail::default()));
            }
            let parts = snapshot_parts(&tx, &dbname).await?;
            // A store of the single-writer schema (read by export before a daemon of
            // this version migrated it) has no ids: its seqs order it.
            let rows_sql = if version >= 2 {
                "SELECT id, records, bytes FROM gdbf_journal WHERE db = $1 AND NOT folded ORDER BY id"
            } else {
                "SELECT seq, records, bytes FROM gdbf_journal WHERE db = $1 ORDER BY seq"
            };
            let rows = journal_rows(&tx, rows_sql, &dbname).await?;
            let tail = if version >= 2 {
                let h = tx.query_one(HORIZON_SQL, &[&dbname]).await?;
                Tail {
                    xmax: xid(h.get(0)),
                    xip: h.get(1),
                    max_id: h.get(2),
                }
            } else {
                Tail::default()
            };
            tx.commit().await?;
            Ok((parts, rows, tail))
        })?;
        let snapshot_bytes: usize = parts.iter().map(Vec::len).sum();
        let mut store = if parts.is_empty() {
            Store::new(oplog_size)
        } else {
            let joined = parts.concat();
            drop(parts);
            codec::decode_snapshot(&joined, oplog_size)
                .map_err(|e| self.unreadable(db, e))?
                .store
        };
        let mut records = 0;
        let mut journal_bytes = 0;
        for row in rows {
            journal_bytes += row.bytes.len() as u64;
            for effect in self.decode(db, &row)? {
                merge_effect(&mut store, effect);
                records += 1;
            }
        }
        let loaded = Loaded {
            store,
            next_seq: 0,
            snapshot_bytes: snapshot_bytes as u64,
            journal_records: records,
            torn_bytes: 0,
            live: None,
        };
        Ok((loaded, tail, journal_bytes))
    }

    fn unreadable(&self, db: &str, source: CodecError) -> PgError {
        PgError::Unreadable {
            target: self.target.redacted().to_owned(),
            db: db.to_owned(),
            source,
        }
    }

    /// The effects of one journal row; a row that does not decode whole is an error.
    fn decode(&self, db: &str, row: &Row) -> Result<Vec<Effect>, PgError> {
        let mut framed = Vec::with_capacity(codec::JOURNAL_HEADER_LEN + row.bytes.len());
        framed.extend_from_slice(&codec::journal_header(0));
        framed.extend_from_slice(&row.bytes);
        let scan = codec::scan_journal(&framed).map_err(|e| self.unreadable(db, e))?;
        if scan.torn_bytes > 0 || scan.records.len() as u64 != row.records as u64 {
            return Err(self.unreadable(
                db,
                CodecError::Corrupt(format!(
                    "journal row {} holds {} whole records and {} torn bytes, not {}",
                    row.id,
                    scan.records.len(),
                    scan.torn_bytes,
                    row.records
                )),
            ));
        }
        Ok(scan.records)
    }

    /// The rows other writers committed since `tail`, as effects, and the tail moved
    /// past them: the rows and the new horizon come from one repeatable-read snapshot.
    pub fn tail(
        &mut self,
        db: &str,
        writer: &str,
        tail: &Tail,
    ) -> Result<(Vec<Effect>, Tail), PgError> {
        let dbname = db.to_owned();
        let writer = writer.to_owned();
        let (max_id, xmax, xip) = (tail.max_id, tail.xmax.to_string(), tail.xip.clone());
        let (next, rows) = self.block(BULK_TIMEOUT, async move |c| {
            let tx = c
                .build_transaction()
                .isolation_level(IsolationLevel::RepeatableRead)
                .read_only(true)
                .start()
                .await?;
            let h = tx.query_one(HORIZON_SQL, &[&dbname]).await?;
            let next = Tail {
                xmax: xid(h.get(0)),
                xip: h.get(1),
                max_id: h.get(2),
            };
            let rows: Vec<Row> = tx
                .query(
                    "SELECT id, records, bytes FROM gdbf_journal
                     WHERE db = $1 AND writer <> $2
                       AND (id > $3 OR xid >= $4::text::xid8 OR xid = ANY($5::text[]::xid8[]))
                     ORDER BY id",
                    &[&dbname, &writer, &max_id, &xmax, &xip],
                )
                .await?
                .iter()
                .map(|r| Row {
                    id: r.get(0),
                    records: r.get(1),
                    bytes: r.get(2),
                })
                .collect();
            tx.commit().await?;
            Ok((next, rows))
        })?;
        let mut effects = Vec::new();
        for row in rows {
            effects.extend(self.decode(db, &row)?);
        }
        Ok((effects, next))
    }

    /// True when nothing at all is stored for `db`.
    pub fn is_empty(&mut self, db: &str) -> Result<bool, PgError> {
        let db = db.to_owned();
        self.block(APPEND_TIMEOUT, async move |c| {
            let row = c
                .query_one(
                    "SELECT NOT EXISTS (SELECT 1 FROM gdbf_journal WHERE db = $1)
                        AND NOT EXISTS (SELECT 1 FROM gdbf_snapshot WHERE db = $1)",
                    &[&db],
                )
                .await?;
            Ok(row.get(0))
        })
    }

    /// Deletes every row of `db` (the benchmark's clean-up).
    pub fn delete_all(&mut self, db: &str) -> Result<(), PgError> {
        let db = db.to_owned();
        self.block(BULK_TIMEOUT, async move |c| {
            for table in ["gdbf_journal", "gdbf_snapshot", "gdbf_store"] {
                c.execute(&format!("DELETE FROM {table} WHERE db = $1"), &[&db])
                    .await?;
            }
            Ok(())
        })
    }

    /// One group commit of `writer`: the framed records of its seqs `first_seq ..`, as
    /// one row in one statement. A retry after an answer was lost rewrites the same
    /// row: the queue only grows at its end, so the new row holds the old one's
    /// records and more.
    pub fn append(
        &mut self,
        db: &str,
        writer: &str,
        first_seq: u64,
        bytes: &[u8],
        records: u64,
    ) -> Result<(), PgError> {
        let db = db.to_owned();
        let writer = writer.to_owned();
        let seq = first_seq as i64;
        let records = i32::try_from(records).unwrap_or(i32::MAX);
        // A queue that grew during an outage goes out as one row: allow for its size.
        let timeout = APPEND_TIMEOUT + Duration::from_secs(bytes.len() as u64 >> 20);
        self.block(timeout, async move |c| {
            c.execute(
                "INSERT INTO gdbf_journal (db, writer, seq, records, bytes) VALUES ($1, $2, $3, $4, $5)
                 ON CONFLICT (db, writer, seq) DO UPDATE SET records = EXCLUDED.records,
                    bytes = EXCLUDED.bytes, xid = pg_current_xact_id(), created_at = clock_timestamp(),
                    folded = false",
                &[&db, &writer, &seq, &records, &bytes],
            )
            .await?;
            Ok(())
        })
    }

    /// Folds the journal of `db` (and `extra`, a graph from memory, when given) into a
    /// new snapshot, in one transaction holding the compaction lock of `db`: only one
    /// daemon compacts at a time. Every row not yet folded is locked, folded, and
    /// marked folded, by id, so a row another daemon appends meanwhile is never lost;
    /// folded rows are deleted once older than `retain`, so the others' tails read
    /// them first, and loads skip them (the snapshot holds them).
    /// Without `wait`, returns `None` at once when another daemon holds the lock.
    pub fn compact(
        &mut self,
        db: &str,
        oplog_size: usize,
        extra: Option<&Store>,
        wait: bool,
        retain: Duration,
    ) -> Result<Option<CompactReport>, PgError> {
        let started = Instant::now();
        let dbname = db.to_owned();
        let target = self.target.clone();
        let retain = retain.as_secs_f64();
        self.block(BULK_TIMEOUT, async move |c| {
            let tx = c.transaction().await?;
            let lock = if wait {
                "SELECT pg_advisory_xact_lock($1, hashtext($2)) IS NOT NULL"
            } else {
                "SELECT pg_try_advisory_xact_lock($1, hashtext($2))"
            };
            let got: bool = tx.query_one(lock, &[&COMPACT_LOCK, &dbname]).await?.get(0);
            if !got {
                return Ok(None);
            }
            let parts = snapshot_parts(&tx, &dbname).await?;
            let rows = journal_rows(
                &tx,
                "SELECT id, records, bytes
                 FROM gdbf_journal WHERE db = $1 AND NOT folded ORDER BY id FOR UPDATE",
                &dbname,
            )
            .await?;
            if extra.is_none() && rows.is_empty() {
                return Ok(None);
            }
            let unreadable = |source| {
                PgOpError::Other(PgError::Unreadable {
                    target: target.redacted().to_owned(),
                    db: dbname.clone(),
                    source,
                })
            };
            let mut store = if parts.is_empty() {
                Store::new(oplog_size)
            } else {
                codec::decode_snapshot(&parts.concat(), oplog_size)
                    .map_err(unreadable)?
                    .store
            };
            drop(parts);
            let ids = fold_rows(&mut store, &rows).map_err(unreadable)?;
            if let Some(memory) = extra {
                crate::persist::merge_into(&mut store, memory);
            }
            let bytes = codec::encode_snapshot(&store, 0);
            write_snapshot(&tx, &dbname, &bytes, store.len()).await?;
            mark_folded(&tx, &dbname, &ids, retain).await?;
            tx.commit().await?;
            Ok(Some(CompactReport {
                segments: ids.len(),
                nodes: store.len(),
                snapshot_bytes: bytes.len() as u64,
                took: started.elapsed(),
            }))
        })
    }
}

/// The snapshot of `db`, its parts in order.
async fn snapshot_parts(
    tx: &Transaction<'_>,
    db: &str,
) -> Result<Vec<Vec<u8>>, tokio_postgres::Error> {
    let rows = tx
        .query(
            "SELECT bytes FROM gdbf_snapshot WHERE db = $1 ORDER BY part",
            &[&db],
        )
        .await?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// The journal rows `sql` selects (id, records, bytes) for `db` as `$1`.
async fn journal_rows(
    tx: &Transaction<'_>,
    sql: &str,
    db: &str,
) -> Result<Vec<Row>, tokio_postgres::Error> {
    let rows = tx.query(sql, &[&db]).await?;
    Ok(rows
        .iter()
        .map(|r| Row {
            id: r.get(0),
            records: r.get(1),
            bytes: r.get(2),
        })
        .collect())
}

/// Marks the rows folded into the snapshot: marked, not deleted, as the other
/// daemons' tails may not have read them yet. Folded rows older than `retain`
/// seconds go.
async fn mark_folded(
    tx: &Transaction<'_>,
    db: &str,
    ids: &[i64],
    retain: f64,
) -> Result<(), tokio_postgres::Error> {
    tx.execute(
        "UPDATE gdbf_journal SET folded = true WHERE id = ANY($1)",
        &[&ids],
    )
    .await?;
    tx.execute(
        "DELETE FROM gdbf_journal WHERE db = $1 AND folded
            AND created_at < now() - make_interval(secs => $2)",
        &[&db, &retain],
    )
    .await?;
    Ok(())
}

/// Applies journal rows to `store` by the merge rules; the ids folded, in order. A row
/// that does not decode whole refuses the lot.
fn fold_rows(store: &mut Store, rows: &[Row]) -> Result<Vec<i64>, CodecError> {
    let mut ids = Vec::with_capacity(rows.len());
    for row in rows {
        let mut framed = Vec::with_capacity(codec::JOURNAL_HEADER_LEN + row.bytes.len());
        framed.extend_from_slice(&codec::journal_header(0));
        framed.extend_from_slice(&row.bytes);
        let scan = codec::scan_journal(&framed)?;
        if scan.torn_bytes > 0 || scan.records.len() as u64 != row.records as u64 {
            return Err(CodecError::Corrupt(format!(
                "journal row {} does not decode whole",
                row.id
            )));
        }
        for effect in scan.records {
            merge_effect(store, effect);
        }
        ids.push(row.id);
    }
    Ok(ids)
}

/// Replaces the snapshot of `db` with `bytes` (of `nodes` nodes), inside `tx`.
async fn write_snapshot(
    tx: &tokio_postgres::Transaction<'_>,
    db: &str,
    bytes: &[u8],
    nodes: usize,
) -> Result<(), tokio_postgres::Error> {
    tx.execute("DELETE FROM gdbf_snapshot WHERE db = $1", &[&db])
        .await?;
    let insert = tx
        .prepare("INSERT INTO gdbf_snapshot (db, part, bytes) VALUES ($1, $2, $3)")
        .await?;
    for (i, part) in bytes.chunks(PART_BYTES).enumerate() {
        let i = i as i32;
        tx.execute(&insert, &[&db, &i, &part]).await?;
    }
    let nodes = nodes as i64;
    let size = bytes.len() as i64;
    tx.execute(
        "INSERT INTO gdbf_store (db, format, next_seq, nodes, snapshot_bytes)
         VALUES ($1, $2, 0, $3, $4)
         ON CONFLICT (db) DO UPDATE SET format = EXCLUDED.format,
            next_seq = 0, nodes = EXCLUDED.nodes,
            snapshot_bytes = EXCLUDED.snapshot_bytes, updated_at = now()",
        &[&db, &(codec::VERSION as i32), &nodes, &size],
    )
    .await?;
    Ok(())
}
