//! The Postgres backend, selected by DATABASE_URL: the same snapshot and journal
//! records as the file backend, kept in three tables so that a dyno whose disk is
//! wiped at every restart loses nothing.
//!
//! Layout (every row carries its DB_NAME as `db`, so daemons with different DB_NAMEs
//! share one database without touching each other's rows):
//! - `gdbf_schema(version)`: the migrations applied, each once.
//! - `gdbf_store(db, format, next_seq, nodes, snapshot_bytes, updated_at)`: one row per
//!   DB_NAME that has a snapshot: the first journal seq it does not cover.
//! - `gdbf_snapshot(db, part, bytes)`: the snapshot, byte for byte the `<db>.bin` file
//!   format of [`codec`] (graph in zstd chunks, oplog, global timestamp), cut into parts
//!   of [`PART_BYTES`]. Loading is one ordered read of a few parts, decoded on every core.
//! - `gdbf_journal(db, seq, records, bytes)`: one row per group commit, holding the framed
//!   records of seqs `seq .. seq + records`. Persisting an op is one row insert per
//!   FLUSH_MS however large the graph is: O(1).
//!
//! Compaction folds journal rows into a new snapshot in one transaction, in its own
//! thread and connection, from the stored rows rather than the live graph.
//!
//! A daemon owns its DB_NAME through a session advisory lock
//! (`pg_try_advisory_lock(hashtext('genosdb-fallback'), hashtext(db))`), the
//! counterpart of the file backend's `<db>.lock`.

use super::codec::{self, CodecError};
use super::files::{CompactReport, Loaded, StoreError};
use super::{Backend, PersistConfig, PersistStatus};
use crate::rate::Backoff;
use crate::store::Store;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use tokio_postgres::config::{Host, SslMode};
use tokio_postgres::{IsolationLevel, NoTls};

pub const SCHEMA_VERSION: i32 = 1;
/// Snapshot bytes per `gdbf_snapshot` row.
pub const PART_BYTES: usize = 8 << 20;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// A group commit that takes longer than this is abandoned and retried.
const APPEND_TIMEOUT: Duration = Duration::from_secs(10);
/// Loads and snapshot writes move the whole graph.
const BULK_TIMEOUT: Duration = Duration::from_secs(300);
const BACKOFF_MIN: Duration = Duration::from_millis(250);
const BACKOFF_MAX: Duration = Duration::from_secs(10);
const COMPACT_RETRY: Duration = Duration::from_secs(30);
/// An idle owner session is checked this often, so that an unreachable database shows
/// as degraded without writes, and the session never sits idle long enough for the
/// server to end it.
const HEARTBEAT: Duration = Duration::from_secs(10);
/// The server ends the owner session after this long without a word from it, so the
/// advisory lock of a daemon that vanished without closing its connection (a host
/// that died) is free again for its successor within a minute, not after TCP's hours.
const IDLE_SESSION_TIMEOUT: &str = "60s";
/// Serialises migrations of concurrent daemons (an arbitrary constant key).
const MIGRATION_LOCK: i64 = 0x6764_6266_6d69_6772;

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
    #[error("postgres {target}: DB_NAME {db:?} is locked by another genosdb-fallback process")]
    Locked { target: String, db: String },
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
    #[error(
        "postgres {target}: journal row {seq} of DB_NAME {db:?} starts past {expected}, where the snapshot and earlier rows end; the rows are left untouched"
    )]
    Gap {
        target: String,
        db: String,
        seq: u64,
        expected: u64,
    },
    #[error(
        "postgres {target}: DB_NAME {db:?} was written by another process since this one loaded it (its journal reaches seq {stored}, this process wrote up to {ours}); not writing"
    )]
    Diverged {
        target: String,
        db: String,
        stored: u64,
        ours: u64,
    },
    #[error("postgres {target}: DB_NAME {db:?} already holds data; refusing to overwrite it")]
    NotEmpty { target: String, db: String },
    #[error("postgres: {0}")]
    Setup(String),
}

impl PgError {
    /// Whether waiting can cure it (the server, the network, a lock held by another
    /// process), as opposed to rows that do not decode or a newer schema.
    pub fn is_transient(&self) -> bool {
        !matches!(
            self,
            PgError::Unreadable { .. } | PgError::Gap { .. } | PgError::NewerSchema { .. }
        )
    }
}

/// A validated DATABASE_URL. Its password never shows: Debug and [`PgTarget::redacted`]
/// print `***` in its place.
#[derive(Clone)]
pub struct PgTarget {
    config: tokio_postgres::Config,
    verify_certs: bool,
    redacted: String,
}

impl std::fmt::Debug for PgTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.redacted)
    }
}

/// `url` with the password (in the userinfo or a `password=` parameter) as `***`.
pub fn redact_url(url: &str) -> String {
    let mut out = url.to_owned();
    if let Some(scheme_end) = out.find("://") {
        let rest_start = scheme_end + 3;
        let authority_end = out[rest_start..]
            .find(['/', '?', '#'])
            .map_or(out.len(), |i| rest_start + i);
        if let Some(at) = out[rest_start..authority_end].rfind('@') {
            let userinfo = &out[rest_start..rest_start + at];
            if let Some(colon) = userinfo.find(':') {
                let from = rest_start + colon + 1;
                out.replace_range(from..rest_start + at, "***");
            }
        }
    }
    if let Some(q) = out.find('?') {
        let (head, query) = out.split_at(q + 1);
        let query: Vec<String> = query
            .split('&')
            .map(|kv| match kv.split_once('=') {
                Some((k, _)) if k.eq_ignore_ascii_case("password") => format!("{k}=***"),
                _ => kv.to_owned(),
            })
            .collect();
        out = format!("{head}{}", query.join("&"));
    }
    out
}

impl PgTarget {
    /// Parses `postgres://user:pass@host:port/db[?sslmode=…]`. `sslmode` is libpq's:
    /// `disable`, `prefer` (the default: TLS when the server offers it), `require`
    /// (TLS, certificate not checked, as libpq and Heroku do), `verify-ca` and
    /// `verify-full` (TLS with the certificate checked against the web PKI roots).
    pub fn parse(url: &str) -> Result<Self, String> {
        let url = url.trim();
        let redacted = redact_url(url);
        if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
            return Err("a postgres:// or postgresql:// URL".into());
        }
        let mut verify_certs = false;
        let rewritten = match url.split_once('?') {
            None => url.to_owned(),
            Some((base, query)) => {
                let mut params = Vec::new();
                for kv in query.split('&').filter(|kv| !kv.is_empty()) {
                    match kv.split_once('=') {
                        Some(("sslmode", "verify-ca" | "verify-full")) => {
                            verify_certs = true;
                            params.push("sslmode=require".to_owned());
                        }
                        Some(("sslmode", "allow")) => params.push("sslmode=prefer".to_owned()),
                        _ => params.push(kv.to_owned()),
                    }
                }
                if params.is_empty() {
                    base.to_owned()
                } else {
                    format!("{base}?{}", params.join("&"))
                }
            }
        };
        let mut config: tokio_postgres::Config = rewritten
            .parse()
            .map_err(|e: tokio_postgres::Error| format!("a valid URL ({e})"))?;
        if config.get_hosts().is_empty()
            || config
                .get_hosts()
                .iter()
                .any(|h| !matches!(h, Host::Tcp(h) if !h.is_empty()))
        {
            return Err("a host name or address after the @".into());
        }
        if config.get_user().is_none_or(str::is_empty) {
            return Err("a user name before the @".into());
        }
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(CONNECT_TIMEOUT);
        }
        config.keepalives_idle(Duration::from_secs(30));
        Ok(Self {
            config,
            verify_certs,
            redacted,
        })
    }

    pub fn redacted(&self) -> &str {
        &self.redacted
    }

    fn err(&self, e: &tokio_postgres::Error) -> PgError {
        PgError::Db {
            target: self.redacted.clone(),
            detail: describe(e),
        }
    }
}

fn describe(e: &tokio_postgres::Error) -> String {
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

mod tls {
    use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
    use rustls::crypto::CryptoProvider;
    use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
    use rustls::{DigitallySignedStruct, SignatureScheme};
    use std::sync::Arc;

    /// libpq's `sslmode=require`: the channel is encrypted and its handshake checked,
    /// but the certificate is not matched against a root (Heroku Postgres uses
    /// certificates no public root signs).
    #[derive(Debug)]
    struct EncryptOnly(Arc<CryptoProvider>);

    impl ServerCertVerifier for EncryptOnly {
        fn verify_server_cert(
            &self,
            _end_entity: &CertificateDer<'_>,
            _intermediates: &[CertificateDer<'_>],
            _server_name: &ServerName<'_>,
            _ocsp_response: &[u8],
            _now: UnixTime,
        ) -> Result<ServerCertVerified, rustls::Error> {
            Ok(ServerCertVerified::assertion())
        }

        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls12_signature(
                message,
                cert,
                dss,
                &self.0.signature_verification_algorithms,
            )
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls13_signature(
                message,
                cert,
                dss,
                &self.0.signature_verification_algorithms,
            )
        }

        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            self.0.signature_verification_algorithms.supported_schemes()
        }
    }

    pub fn connector(verify: bool) -> Result<tokio_postgres_rustls::MakeRustlsConnect, String> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS setup: {e}"))?;
        let config = if verify {
            let roots = rustls::RootCertStore {
                roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
            };
            builder.with_root_certificates(roots).with_no_client_auth()
        } else {
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(EncryptOnly(provider)))
                .with_no_client_auth()
        };
        Ok(tokio_postgres_rustls::MakeRustlsConnect::new(config))
    }
}

/// One connection, driven by its own single-threaded runtime: the flusher, the
/// compactor and the subcommands are plain threads.
pub struct PgClient {
    rt: tokio::runtime::Runtime,
    client: tokio_postgres::Client,
    target: PgTarget,
}

impl PgClient {
    pub fn connect(target: &PgTarget, application_name: &str) -> Result<Self, PgError> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| PgError::Setup(format!("runtime: {e}")))?;
        let mut config = target.config.clone();
        config.application_name(application_name);
        let redacted = target.redacted.clone();
        let timeout = config
            .get_connect_timeout()
            .copied()
            .unwrap_or(CONNECT_TIMEOUT)
            * 2;
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
            ConnectError::Pg(e) => target.err(&e),
            ConnectError::Setup(e) => e,
            ConnectError::Timeout => PgError::Timeout {
                target: redacted,
                secs: timeout.as_secs(),
            },
        })?;
        Ok(Self {
            rt,
            client,
            target: target.clone(),
        })
    }

    pub fn is_closed(&self) -> bool {
        self.client.is_closed()
    }

    /// Asks the server to end this session when it goes silent (see
    /// [`IDLE_SESSION_TIMEOUT`]) and to probe its TCP connection. Servers before
    /// Postgres 14 lack `idle_session_timeout`; each setting is tried on its own.
    fn session_timeouts(&mut self) {
        let settings = [
            format!("SET idle_session_timeout = '{IDLE_SESSION_TIMEOUT}'"),
            "SET tcp_keepalives_idle = 15".to_owned(),
            "SET tcp_keepalives_interval = 5".to_owned(),
            "SET tcp_keepalives_count = 3".to_owned(),
        ];
        for sql in settings {
            if let Err(e) = self.block(APPEND_TIMEOUT, async move |c| {
                c.batch_execute(&sql).await?;
                Ok(())
            }) {
                tracing::debug!(error = %e, "a session setting was refused");
            }
        }
    }

    /// A round trip: the session and the server still answer.
    pub fn ping(&mut self) -> Result<(), PgError> {
        self.block(APPEND_TIMEOUT, async move |c| {
            c.batch_execute("SELECT 1").await?;
            Ok(())
        })
    }

    fn block<T>(
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
            Ok(Err(PgOpError::Pg(e))) => Err(self.target.err(&e)),
            Ok(Err(PgOpError::Other(e))) => Err(e),
            Err(_) => Err(PgError::Timeout {
                target: self.target.redacted.clone(),
                secs: timeout.as_secs(),
            }),
        }
    }

    /// Creates the tables when missing. Idempotent, and serialised between daemons
    /// starting at once by a transaction-scoped advisory lock.
    pub fn migrate(&mut self) -> Result<(), PgError> {
        let target = self.target.redacted.clone();
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
            if found < 1 {
                tx.batch_execute(MIGRATION_1).await?;
                tx.execute("INSERT INTO gdbf_schema (version) VALUES (1)", &[])
                    .await?;
                tracing::info!(version = 1, "postgres schema created");
            }
            tx.commit().await?;
            Ok(())
        })
    }

    /// Takes the session advisory lock of `db`. A lock still held by an earlier session
    /// of this very process (a connection that died without the server noticing yet)
    /// is reclaimed by ending that session; anyone else's makes this fail.
    pub fn lock(&mut self, db: &str, application_name: &str) -> Result<(), PgError> {
        let target = self.target.redacted.clone();
        let db = db.to_owned();
        let app = application_name.to_owned();
        self.block(APPEND_TIMEOUT, async move |c| {
            let take = "SELECT pg_try_advisory_lock(hashtext('genosdb-fallback'), hashtext($1))";
            if c.query_one(take, &[&db]).await?.get::<_, bool>(0) {
                return Ok(());
            }
            let ended = c
                .query(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
                     WHERE application_name = $1 AND pid <> pg_backend_pid()",
                    &[&app],
                )
                .await?;
            if !ended.is_empty() {
                for _ in 0..50 {
                    if c.query_one(take, &[&db]).await?.get::<_, bool>(0) {
                        return Ok(());
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
            Err(PgOpError::Other(PgError::Locked { target, db }))
        })
    }

    /// Reads the snapshot and every journal row of `db` in one consistent transaction.
    /// Missing tables read as an empty store (nothing was ever written there).
    pub fn load(&mut self, db: &str, oplog_size: usize) -> Result<Loaded, PgError> {
        self.load_until(db, oplog_size, None).map(|(l, _)| l)
    }

    /// Like [`PgClient::load`], only journal rows below `bound`; also returns the bytes
    /// of the journal rows read.
    fn load_until(
        &mut self,
        db: &str,
        oplog_size: usize,
        bound: Option<u64>,
    ) -> Result<(Loaded, u64), PgError> {
        let dbname = db.to_owned();
        let (parts, rows) = self.block(BULK_TIMEOUT, async move |c| {
            let tx = c
                .build_transaction()
                .isolation_level(IsolationLevel::RepeatableRead)
                .read_only(true)
                .start()
                .await?;
            let exists: bool = tx
                .query_one("SELECT to_regclass('gdbf_journal') IS NOT NULL", &[])
                .await?
                .get(0);
            if !exists {
                return Ok((Vec::new(), Vec::new()));
            }
            let parts: Vec<Vec<u8>> = tx
                .query(
                    "SELECT bytes FROM gdbf_snapshot WHERE db = $1 ORDER BY part",
                    &[&dbname],
                )
                .await?
                .iter()
                .map(|r| r.get(0))
                .collect();
            let bound = bound.map_or(i64::MAX, |b| b as i64);
            let rows: Vec<(i64, i32, Vec<u8>)> = tx
                .query(
                    "SELECT seq, records, bytes FROM gdbf_journal
                     WHERE db = $1 AND seq < $2 ORDER BY seq",
                    &[&dbname, &bound],
                )
                .await?
                .iter()
                .map(|r| (r.get(0), r.get(1), r.get(2)))
                .collect();
            tx.commit().await?;
            Ok((parts, rows))
        })?;
        let target = self.target.redacted.clone();
        let unreadable = |source| PgError::Unreadable {
            target: target.clone(),
            db: db.to_owned(),
            source,
        };
        let snapshot_bytes: usize = parts.iter().map(Vec::len).sum();
        let (store, next_seq) = if parts.is_empty() {
            (Store::new(oplog_size), 0)
        } else {
            let joined = parts.concat();
            drop(parts);
            let snap = codec::decode_snapshot(&joined, oplog_size).map_err(unreadable)?;
            (snap.store, snap.next_seq)
        };
        let mut loaded = Loaded {
            store,
            next_seq,
            snapshot_bytes: snapshot_bytes as u64,
            journal_records: 0,
            torn_bytes: 0,
            live: None,
        };
        let mut journal_bytes = 0u64;
        for (seq, records, bytes) in rows {
            let seq = seq as u64;
            journal_bytes += bytes.len() as u64;
            if seq > loaded.next_seq {
                return Err(PgError::Gap {
                    target: target.clone(),
                    db: db.to_owned(),
                    seq,
                    expected: loaded.next_seq,
                });
            }
            let mut framed = Vec::with_capacity(codec::JOURNAL_HEADER_LEN + bytes.len());
            framed.extend_from_slice(&codec::journal_header(seq));
            framed.extend_from_slice(&bytes);
            let scan = codec::scan_journal(&framed).map_err(unreadable)?;
            if scan.torn_bytes > 0 || scan.records.len() as u64 != records as u64 {
                return Err(unreadable(CodecError::Corrupt(format!(
                    "journal row {seq} holds {} whole records and {} torn bytes, not {records}",
                    scan.records.len(),
                    scan.torn_bytes
                ))));
            }
            for (i, effect) in scan.records.into_iter().enumerate() {
                if seq + i as u64 == loaded.next_seq {
                    loaded.store.apply_effect(effect);
                    loaded.next_seq += 1;
                    loaded.journal_records += 1;
                }
            }
        }
        Ok((loaded, journal_bytes))
    }

    /// The first seq past everything stored for `db`.
    pub fn stored_end(&mut self, db: &str) -> Result<u64, PgError> {
        let db = db.to_owned();
        self.block(APPEND_TIMEOUT, async move |c| {
            let row = c
                .query_one(
                    "SELECT greatest(
                        (SELECT coalesce(max(seq + records), 0) FROM gdbf_journal WHERE db = $1),
                        (SELECT coalesce(max(next_seq), 0) FROM gdbf_store WHERE db = $1))",
                    &[&db],
                )
                .await?;
            Ok(row.get::<_, i64>(0) as u64)
        })
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

    /// One group commit: the framed records of seqs `first_seq ..`, as one row in one
    /// statement. A retry after an answer was lost rewrites the same row: the queue
    /// only grows at its end, so the new row holds the old one's records and more.
    pub fn append(
        &mut self,
        db: &str,
        first_seq: u64,
        bytes: &[u8],
        records: u64,
    ) -> Result<(), PgError> {
        let db = db.to_owned();
        let seq = first_seq as i64;
        let records = i32::try_from(records).unwrap_or(i32::MAX);
        // A queue that grew during an outage goes out as one row: allow for its size.
        let timeout = APPEND_TIMEOUT + Duration::from_secs(bytes.len() as u64 >> 20);
        self.block(timeout, async move |c| {
            c.execute(
                "INSERT INTO gdbf_journal (db, seq, records, bytes) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (db, seq) DO UPDATE SET records = EXCLUDED.records, bytes = EXCLUDED.bytes",
                &[&db, &seq, &records, &bytes],
            )
            .await?;
            Ok(())
        })
    }

    /// Replaces the snapshot of `db` with `snapshot` (covering seqs below `next_seq`)
    /// and deletes the journal rows it covers — every row when `all_rows` — in one
    /// transaction.
    pub fn write_snapshot(
        &mut self,
        db: &str,
        snapshot: &[u8],
        next_seq: u64,
        nodes: usize,
        all_rows: bool,
    ) -> Result<(), PgError> {
        let db = db.to_owned();
        let next = next_seq as i64;
        let nodes = nodes as i64;
        let size = snapshot.len() as i64;
        self.block(BULK_TIMEOUT, async move |c| {
            let tx = c.transaction().await?;
            tx.execute("DELETE FROM gdbf_snapshot WHERE db = $1", &[&db])
                .await?;
            let insert = tx
                .prepare("INSERT INTO gdbf_snapshot (db, part, bytes) VALUES ($1, $2, $3)")
                .await?;
            for (i, part) in snapshot.chunks(PART_BYTES).enumerate() {
                let i = i as i32;
                tx.execute(&insert, &[&db, &i, &part]).await?;
            }
            tx.execute(
                "INSERT INTO gdbf_store (db, format, next_seq, nodes, snapshot_bytes)
                 VALUES ($1, $2, $3, $4, $5)
                 ON CONFLICT (db) DO UPDATE SET format = EXCLUDED.format,
                    next_seq = EXCLUDED.next_seq, nodes = EXCLUDED.nodes,
                    snapshot_bytes = EXCLUDED.snapshot_bytes, updated_at = now()",
                &[&db, &(codec::VERSION as i32), &next, &nodes, &size],
            )
            .await?;
            if all_rows {
                tx.execute("DELETE FROM gdbf_journal WHERE db = $1", &[&db])
                    .await?;
            } else {
                tx.execute(
                    "DELETE FROM gdbf_journal WHERE db = $1 AND seq + records <= $2",
                    &[&db, &next],
                )
                .await?;
            }
            tx.commit().await?;
            Ok(())
        })
    }
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

enum PgOpError {
    Pg(tokio_postgres::Error),
    Other(PgError),
}

impl From<tokio_postgres::Error> for PgOpError {
    fn from(e: tokio_postgres::Error) -> Self {
        Self::Pg(e)
    }
}

/// A name unique to this process, so that its own stale sessions can be told apart.
fn application_name() -> String {
    let mut b = [0u8; 8];
    let _ = getrandom::fill(&mut b);
    format!("genosdb-fallback-{}", hex::encode(b))
}

/// Opens a session that owns `db`: connect, session timeouts, migrate, lock.
pub fn open_owner(target: &PgTarget, db: &str, app: &str) -> Result<PgClient, PgError> {
    let mut c = PgClient::connect(target, app)?;
    c.session_timeouts();
    c.migrate()?;
    c.lock(db, app)?;
    Ok(c)
}

/// Reads `db` without owning it (export, backup): one consistent transaction.
pub fn load_readonly(target: &PgTarget, db: &str, oplog_size: usize) -> Result<Loaded, PgError> {
    PgClient::connect(target, &application_name())?.load(db, oplog_size)
}

/// Folds the journal rows of `db` below `bound` into a new snapshot. Reads and writes
/// on its own connection; `cancel` is checked between phases.
fn compact(
    target: &PgTarget,
    db: &str,
    oplog_size: usize,
    bound: u64,
    cancel: &AtomicBool,
) -> Result<Option<CompactReport>, StoreError> {
    let started = Instant::now();
    let mut c = PgClient::connect(target, &application_name())?;
    let (loaded, journal_bytes) = c.load_until(db, oplog_size, Some(bound))?;
    if journal_bytes == 0 || cancel.load(Ordering::Relaxed) {
        return Ok(None);
    }
    let bytes = codec::encode_snapshot(&loaded.store, loaded.next_seq);
    if cancel.load(Ordering::Relaxed) {
        return Ok(None);
    }
    c.write_snapshot(db, &bytes, loaded.next_seq, loaded.store.len(), false)?;
    Ok(Some(CompactReport {
        segments: loaded.journal_records as usize,
        nodes: loaded.store.len(),
        snapshot_bytes: bytes.len() as u64,
        took: started.elapsed(),
    }))
}

/// The flusher's Postgres backend. While the database does not answer, every call
/// fails at once until the next retry is due (backoff from 250 ms doubling to 10 s),
/// and the flusher keeps the records queued.
pub struct PgBackend {
    target: PgTarget,
    db: String,
    app: String,
    oplog_size: usize,
    compact_bytes: u64,
    client: Option<PgClient>,
    /// Memory holds what the database holds; until then nothing is written.
    loaded: bool,
    /// The first seq past every row this process has tried to write.
    attempted_end: u64,
    backoff: Backoff,
    next_try: Option<Instant>,
    last_error: String,
    journal_bytes: u64,
    compactor: Option<JoinHandle<Result<Option<CompactReport>, StoreError>>>,
    cancel: Arc<AtomicBool>,
    last_compact_fail: Option<Instant>,
    /// The last time the owner session answered.
    last_answer: Instant,
}

impl PgBackend {
    pub fn new(target: PgTarget, cfg: &PersistConfig) -> Self {
        Self {
            target,
            db: cfg.layout.db.clone(),
            app: application_name(),
            oplog_size: cfg.oplog_size,
            compact_bytes: cfg.compact_bytes,
            client: None,
            loaded: false,
            attempted_end: 0,
            backoff: Backoff::new(BACKOFF_MIN, BACKOFF_MAX),
            next_try: None,
            last_error: String::new(),
            journal_bytes: 0,
            compactor: None,
            cancel: Arc::new(AtomicBool::new(false)),
            last_compact_fail: None,
            last_answer: Instant::now(),
        }
    }

    /// The owning session, opened (connect, migrate, lock, check) when needed.
    fn client(&mut self) -> Result<&mut PgClient, PgError> {
        if self.client.as_ref().is_some_and(PgClient::is_closed) {
            tracing::warn!(database = %self.target.redacted, "postgres connection lost; reconnecting");
            self.client = None;
        }
        if self.client.is_none() {
            if let Some(at) = self.next_try
                && let Some(left) = at.checked_duration_since(Instant::now())
            {
                return Err(PgError::Waiting {
                    target: self.target.redacted.clone(),
                    detail: self.last_error.clone(),
                    retry_ms: left.as_millis() as u64,
                });
            }
            let opened = open_owner(&self.target, &self.db, &self.app).and_then(|mut c| {
                if self.loaded {
                    let stored = c.stored_end(&self.db)?;
                    if stored > self.attempted_end {
                        return Err(PgError::Diverged {
                            target: self.target.redacted.clone(),
                            db: self.db.clone(),
                            stored,
                            ours: self.attempted_end,
                        });
                    }
                }
                Ok(c)
            });
            match opened {
                Ok(c) => {
                    if self.next_try.is_some() {
                        tracing::info!(database = %self.target.redacted, "postgres reachable again");
                    }
                    self.next_try = None;
                    self.backoff.reset();
                    self.client = Some(c);
                }
                Err(e) => {
                    self.failed(&e);
                    return Err(e);
                }
            }
        }
        match self.client.as_mut() {
            Some(c) => Ok(c),
            None => Err(PgError::Setup("no connection".into())),
        }
    }

    /// Drops the session after a failure and schedules the next try.
    fn failed(&mut self, e: &PgError) {
        self.client = None;
        self.last_error = e.to_string();
        self.next_try = Some(Instant::now() + self.backoff.next_delay());
    }

    fn with_client<T>(
        &mut self,
        f: impl FnOnce(&mut PgClient, &str) -> Result<T, PgError>,
    ) -> Result<T, StoreError> {
        let db = self.db.clone();
        let result = self.client().and_then(|c| f(c, &db));
        match &result {
            Ok(_) => self.last_answer = Instant::now(),
            Err(e) if self.client.is_some() => self.failed(e),
            Err(_) => {}
        }
        result.map_err(StoreError::from)
    }

    /// Loads `db` now; on success the backend writes from then on.
    pub fn load_now(&mut self) -> Result<Loaded, StoreError> {
        let oplog_size = self.oplog_size;
        let (loaded, journal_bytes) =
            self.with_client(|c, db| c.load_until(db, oplog_size, None))?;
        self.loaded = true;
        self.attempted_end = loaded.next_seq;
        self.journal_bytes = journal_bytes;
        Ok(loaded)
    }

    fn reap_compactor(&mut self, status: &PersistStatus) {
        if !self.compactor.as_ref().is_some_and(|c| c.is_finished()) {
            return;
        }
        let Some(handle) = self.compactor.take() else {
            return;
        };
        match handle.join() {
            Ok(Ok(Some(r))) => {
                self.last_compact_fail = None;
                status.compactions.fetch_add(1, Ordering::Relaxed);
                tracing::info!(
                    records = r.segments,
                    nodes = r.nodes,
                    snapshot_bytes = r.snapshot_bytes,
                    took_ms = r.took.as_millis() as u64,
                    "compacted the postgres journal into a new snapshot"
                );
            }
            Ok(Ok(None)) => {}
            Ok(Err(e)) => {
                self.last_compact_fail = Some(Instant::now());
                self.journal_bytes = self.journal_bytes.max(self.compact_bytes);
                tracing::error!(error = %e, "postgres compaction failed; the journal rows are kept");
            }
            Err(_) => {
                self.last_compact_fail = Some(Instant::now());
                tracing::error!("the compactor thread panicked; the journal rows are kept");
            }
        }
    }
}

impl Backend for PgBackend {
    fn needs_load(&self) -> bool {
        !self.loaded
    }

    fn load(&mut self, _oplog_size: usize) -> Result<Loaded, StoreError> {
        self.load_now()
    }

    fn append(&mut self, first_seq: u64, bytes: &[u8], records: u64) -> Result<(), StoreError> {
        self.attempted_end = self.attempted_end.max(first_seq + records);
        self.with_client(|c, db| c.append(db, first_seq, bytes, records))?;
        self.journal_bytes += bytes.len() as u64;
        Ok(())
    }

    fn rewrite(&mut self, snapshot: &[u8], next_seq: u64, nodes: usize) -> Result<(), StoreError> {
        self.cancel.store(true, Ordering::Relaxed);
        if let Some(c) = self.compactor.take() {
            let _ = c.join();
        }
        self.cancel.store(false, Ordering::Relaxed);
        self.with_client(|c, db| c.write_snapshot(db, snapshot, next_seq, nodes, true))?;
        self.attempted_end = next_seq;
        self.journal_bytes = 0;
        Ok(())
    }

    fn maintain(&mut self, next_seq: u64, idle: bool, status: &PersistStatus) {
        self.reap_compactor(status);
        // Without writes nothing else would notice the database going or coming back.
        if idle && (self.client.is_none() || self.last_answer.elapsed() >= HEARTBEAT) {
            let was_down = self.client.is_none();
            match self.with_client(|c, _| c.ping()) {
                Ok(()) if was_down || status.degraded() => {
                    if status.degraded() {
                        tracing::info!("postgres answers again; nothing was waiting");
                    }
                    status.recovered();
                }
                Ok(()) => {}
                Err(e) => {
                    if !status.degraded() {
                        tracing::error!(error = %e, "postgres does not answer; retrying");
                    }
                    status.failed(&e);
                }
            }
        }
        let due = self.journal_bytes >= self.compact_bytes
            && self.compactor.is_none()
            && self
                .last_compact_fail
                .is_none_or(|t| t.elapsed() >= COMPACT_RETRY);
        if !due {
            return;
        }
        let target = self.target.clone();
        let db = self.db.clone();
        let oplog_size = self.oplog_size;
        let cancel = self.cancel.clone();
        let spawned = std::thread::Builder::new()
            .name("pg-compactor".into())
            .spawn(move || compact(&target, &db, oplog_size, next_seq, &cancel));
        match spawned {
            Ok(h) => {
                self.compactor = Some(h);
                self.journal_bytes = 0;
            }
            Err(e) => tracing::error!(error = %e, "could not start the compactor thread"),
        }
    }

    fn stop(&mut self) {
        self.cancel.store(true, Ordering::Relaxed);
        if let Some(c) = self.compactor.take() {
            let _ = c.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            redact_url("postgres://u:s3cret@h.example:5432/d?sslmode=require"),
            "postgres://u:***@h.example:5432/d?sslmode=require"
        );
        assert_eq!(
            redact_url("postgres://u@h/d?password=s3cret&sslmode=disable"),
            "postgres://u@h/d?password=***&sslmode=disable"
        );
        assert_eq!(redact_url("postgres://h/d"), "postgres://h/d");
        assert_eq!(
            redact_url("postgresql://u:p@ss:w@rd@h/d"),
            "postgresql://u:***@h/d"
        );
    }

    #[test]
    fn urls_are_checked() {
        let t = PgTarget::parse("postgres://u:s3cret@127.0.0.1:5433/d?sslmode=require").unwrap();
        assert!(!format!("{t:?}").contains("s3cret"));
        assert!(!t.verify_certs);
        let t = PgTarget::parse("postgresql://u:p@db.example/d?sslmode=verify-full").unwrap();
        assert!(t.verify_certs);
        for bad in [
            "mysql://u:p@h/d",
            "postgres://",
            "postgres://u:p@/d",
            "postgres://u:p@h/d?sslmode=bogus",
            "postgres://:p@h/d",
        ] {
            assert!(PgTarget::parse(bad).is_err(), "{bad}");
        }
    }
}
