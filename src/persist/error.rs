//! What every backend shares: the error a storage operation fails with, what a load
//! found, and what a compaction did. No backend's types live here, and no backend
//! imports another: a backend converts its own errors into [`StoreError::Backend`].

use super::codec::CodecError;
use crate::store::Store;
use std::io;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path}: {source}; the file is left untouched")]
    Unreadable {
        path: PathBuf,
        #[source]
        source: CodecError,
    },
    #[error(
        "{path}: starts at journal seq {base}, but the snapshot and earlier segments only reach {expected}; the files are left untouched"
    )]
    Gap {
        path: PathBuf,
        base: u64,
        expected: u64,
    },
    #[error("{0} is locked by another genosdb-fallback process")]
    Locked(PathBuf),
    #[error("the store kept changing while it was read; try again")]
    Unstable,
    /// A backend's own failure (Postgres), shown as the backend words it.
    #[error(transparent)]
    Backend(Box<BackendError>),
}

impl StoreError {
    /// Whether waiting can cure it (a server, the network, a full disk), as opposed to
    /// stored data that does not decode, which waiting never mends.
    pub fn is_transient(&self) -> bool {
        match self {
            StoreError::Io { .. } | StoreError::Locked(_) | StoreError::Unstable => true,
            StoreError::Unreadable { .. } | StoreError::Gap { .. } => false,
            StoreError::Backend(e) => e.transient,
        }
    }

    /// Wraps a backend's error; `transient` says whether a retry may succeed.
    pub fn backend(error: impl std::error::Error + Send + Sync + 'static, transient: bool) -> Self {
        StoreError::Backend(Box::new(BackendError {
            inner: Box::new(error),
            transient,
        }))
    }
}

/// A backend's error behind [`StoreError::Backend`]: displayed and chained exactly as
/// the backend's own error.
#[derive(Debug)]
pub struct BackendError {
    inner: Box<dyn std::error::Error + Send + Sync>,
    transient: bool,
}

impl BackendError {
    /// The backend's own error, to downcast.
    pub fn inner(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
        &*self.inner
    }
}

impl std::fmt::Display for BackendError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.inner.fmt(f)
    }
}

impl std::error::Error for BackendError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.inner.source()
    }
}

/// What a load found.
pub struct Loaded {
    pub store: Store,
    /// The seq the next journal record gets.
    pub next_seq: u64,
    pub snapshot_bytes: u64,
    pub journal_records: u64,
    pub torn_bytes: u64,
    /// The live segment: its base, and whether it holds anything (records or a tear).
    pub live: Option<(u64, bool)>,
}

/// What one compaction folded into the new snapshot.
#[derive(Debug, Clone)]
pub struct CompactReport {
    /// Journal segments (files) or rows (Postgres) folded.
    pub segments: usize,
    pub nodes: usize,
    pub snapshot_bytes: u64,
    pub took: Duration,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("db down")]
    struct Down(#[source] io::Error);

    #[test]
    fn a_backend_error_reads_as_its_own_and_keeps_its_transience() {
        let e = StoreError::backend(Down(io::Error::other("refused")), true);
        assert_eq!(e.to_string(), "db down");
        let source = std::error::Error::source(&e).map(ToString::to_string);
        assert_eq!(source.as_deref(), Some("refused"));
        assert!(e.is_transient());
        assert!(!StoreError::backend(Down(io::Error::other("x")), false).is_transient());
        assert!(
            !StoreError::Gap {
                path: "j".into(),
                base: 2,
                expected: 1
            }
            .is_transient()
        );
    }
}
