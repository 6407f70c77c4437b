//! The Postgres backend, selected by DATABASE_URL: the same snapshot and journal
//! records as the file backend, kept in tables so that a dyno whose disk is wiped at
//! every restart loses nothing, and so that several daemons can share one database
//! as equals (two dynos, or Heroku's preboot running the new dyno beside the old).
//!
//! Layout (every row carries its DB_NAME as `db`, so daemons with different DB_NAMEs
//! share one database without touching each other's rows):
//! - `gdbf_schema(version)`: the migrations applied, each once.
//! - `gdbf_store(db, format, next_seq, nodes, snapshot_bytes, updated_at)`: one row per
//!   DB_NAME that has a snapshot.
//! - `gdbf_snapshot(db, part, bytes)`: the snapshot, byte for byte the `<db>.bin` file
//!   format of [`codec`](super::codec), cut into parts of [`PART_BYTES`].
//! - `gdbf_journal(id, db, writer, seq, records, bytes, xid, created_at)`: one row per
//!   group commit of one daemon (`writer`, a name unique to the process), holding the
//!   framed records of its seqs `seq .. seq + records`. Persisting an op is one row
//!   insert per FLUSH_MS however large the graph is: O(1).
//!
//! Several writers are correct by construction: every record is an idempotent
//! last-write-wins merge, and loading applies each by the merge rules
//! ([`merge_effect`](super::merge_effect)), so the rows of several daemons give the
//! same graph in whatever order they are read. Each daemon appends its own rows, tails
//! the rows the others commit (by transaction id, so a row that commits late is not
//! skipped), and compacts under a transaction-scoped advisory lock, so only one
//! compacts at a time; a compaction marks exactly the rows it folded, and deletes
//! them once older than [`RETAIN`], so the others have read them first.

mod backend;
mod client;
mod target;

pub use backend::PgBackend;
pub use client::{PgClient, Tail};
pub use target::{EXPECTED_FORMS, PgTarget};

use super::codec::CodecError;
use super::error::{Loaded, StoreError};
use std::time::Duration;

pub const SCHEMA_VERSION: i32 = 2;
/// Snapshot bytes per `gdbf_snapshot` row.
pub const PART_BYTES: usize = 8 << 20;
/// A group commit that takes longer than this is abandoned and retried.
const APPEND_TIMEOUT: Duration = Duration::from_secs(10);
/// Loads and snapshot writes move the whole graph.
const BULK_TIMEOUT: Duration = Duration::from_secs(300);
/// How long a journal row stays after a compaction folded it: every daemon tails the
/// journal far more often, so it reads each row before the row goes. A daemon that
/// could not tail for a third of this reloads the whole store instead.
pub const RETAIN: Duration = Duration::from_secs(60);
/// Serialises migrations of concurrent daemons (an arbitrary constant key).
const MIGRATION_LOCK: i64 = 0x6764_6266_6d69_6772;
/// With `hashtext(db)`: the compaction lock of one DB_NAME.
const COMPACT_LOCK: i32 = 0x6764_6263;

const MIGRATION_1: &str = "
CREATE TABLE IF NOT EXISTS gdbf_store (
    db text PRIMARY KEY,
    format integer NOT NULL,
    next_seq bigint NOT NULL,
    nodes bigint NOT NULL,
    snapshot_bytes bigint NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS gdbf_snapshot (
    db text NOT NULL,
    part integer NOT NULL,
    bytes bytea NOT NULL,
    PRIMARY KEY (db, part)
);
CREATE TABLE IF NOT EXISTS gdbf_journal (
    db text NOT NULL,
    seq bigint NOT NULL,
    records integer NOT NULL,
    bytes bytea NOT NULL,
    PRIMARY KEY (db, seq)
);
ALTER TABLE gdbf_snapshot ALTER COLUMN bytes SET STORAGE EXTERNAL;
";

/// Several writers: rows get a server-wide id, their writer, and the transaction that
/// wrote them (what the tail follows), and whether the snapshot holds them already
/// (`folded`: kept for the other daemons' tails, skipped by loads). Rows of the
/// single-writer schema keep their
/// seqs under writer ''. Needs Postgres 13 (xid8).
const MIGRATION_2: &str = "
ALTER TABLE gdbf_journal ADD COLUMN id bigserial;
ALTER TABLE gdbf_journal ADD COLUMN writer text NOT NULL DEFAULT '';
ALTER TABLE gdbf_journal ADD COLUMN xid xid8 NOT NULL DEFAULT pg_current_xact_id();
ALTER TABLE gdbf_journal ADD COLUMN created_at timestamptz NOT NULL DEFAULT clock_timestamp();
ALTER TABLE gdbf_journal ADD COLUMN folded boolean NOT NULL DEFAULT false;
ALTER TABLE gdbf_journal DROP CONSTRAINT gdbf_journal_pkey;
ALTER TABLE gdbf_journal ADD PRIMARY KEY (id);
CREATE UNIQUE INDEX gdbf_journal_writer_seq ON gdbf_journal (db, writer, seq);
CREATE INDEX gdbf_journal_xid ON gdbf_journal (db, xid);
";

#[derive(Debug, thiserror::Error)]
pub enum PgError {
    #[error("postgres {target}: {detail}")]
    Db { target: String, detail: String },
    #[error("postgres {target}: no answer within {secs} s")]
    Timeout { target: String, secs: u64 },
    #[error("postgres {target}: unreachable ({detail}); next try in {retry_ms} ms")]
    Waiting {
        target: String,
        detail: String,
        retry_ms: u64,
    },
    #[error(
        "postgres {target}: schema version {found} is newer than this build's {SCHEMA_VERSION}; upgrade genosdb-fallback"
    )]
    NewerSchema { target: String, found: i32 },
    #[error(
        "postgres {target}: the rows of DB_NAME {db:?} do not decode: {source}; they are left untouched"
    )]
    Unreadable {
        target: String,
        db: String,
        #[source]
        source: CodecError,
    },
    #[error("postgres {target}: DB_NAME {db:?} already holds data; refusing to overwrite it")]
    NotEmpty { target: String, db: String },
    #[error("postgres: {0}")]
    Setup(String),
}

impl PgError {
    /// Whether waiting can cure it (the server, the network), as opposed to rows that
    /// do not decode or a newer schema.
    pub fn is_transient(&self) -> bool {
        !matches!(
            self,
            PgError::Unreadable { .. } | PgError::NewerSchema { .. }
        )
    }
}

impl From<PgError> for StoreError {
    fn from(e: PgError) -> Self {
        let transient = e.is_transient();
        StoreError::backend(e, transient)
    }
}

/// A name unique to this process: its journal rows' `writer`.
pub fn writer_id() -> String {
    let mut b = [0u8; 8];
    let _ = getrandom::fill(&mut b);
    format!("genosdb-fallback-{}", hex::encode(b))
}

/// A session with the schema migrated: what the subcommands write through.
pub fn open_session(target: &PgTarget) -> Result<PgClient, PgError> {
    let mut c = PgClient::connect(target)?;
    c.migrate()?;
    Ok(c)
}

/// Reads `db` (export, backup): one consistent transaction, nothing written.
pub fn load_readonly(target: &PgTarget, db: &str, oplog_size: usize) -> Result<Loaded, PgError> {
    PgClient::connect(target)?
        .load(db, oplog_size)
        .map(|(l, _, _)| l)
}
