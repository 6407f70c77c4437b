//! The HTTP listener, bounded against clients that hold connections open.
//!
//! Every connection takes a slot: at most HTTP_MAX_CONNECTIONS at once (by default
//! half the process's file limit), so the daemon never runs out of file descriptors
//! and never spins on `accept`. The last slots are a reserve: a connection that gets
//! one may only make a plain request (`/health`, `/metrics`; a relay upgrade gets 503),
//! has [`RESERVE_HEADER_TIMEOUT`] to send it, and is closed after one answer, so
//! `/health` still answers while others hold every other slot. When every slot is
//! taken, the oldest connection that has not sent a whole request within
//! [`SILENT_GRACE`] is closed to make room (a client that only holds connections
//! open can hold none for long); when there is none, the newcomer is closed at once.
//! A request's headers must arrive within
//! HTTP_HEADER_TIMEOUT, which also closes an idle keep-alive connection, and a
//! connection that has not finished (nor upgraded) within [`MAX_LIFETIME`] is closed.
//!
//! The daemon's own relay client connects in process ([`LocalConnector`]): its
//! requests carry [`Origin::Local`], which nothing from the network can.

use crate::rate::LogEvery;
use axum::Router;
use axum::extract::ConnectInfo;
use hyper_util::rt::{TokioIo, TokioTimer};
use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// The header timeout of a connection in the reserve.
pub(crate) const RESERVE_HEADER_TIMEOUT: Duration = Duration::from_secs(2);
/// A connection that is still serving HTTP (not upgraded) after this long is closed:
/// a client that sends requests and never reads the answers cannot hold its slot.
pub(crate) const MAX_LIFETIME: Duration = Duration::from_secs(300);
/// The same, in the reserve.
const RESERVE_LIFETIME: Duration = Duration::from_secs(10);
/// A connection that has sent no whole request for this long may be closed to make
/// room for a newcomer when every slot is taken.
pub(crate) const SILENT_GRACE: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpLimits {
    pub max_connections: usize,
    pub header_timeout: Duration,
}

impl HttpLimits {
    /// Slots kept for plain requests: one in 16, at least 2.
    pub fn reserve(&self) -> usize {
        (self.max_connections / 16)
            .max(2)
            .min(self.max_connections / 2)
    }

    /// The default HTTP_MAX_CONNECTIONS: half the file limit (the rest is for the
    /// store, relays and WebRTC), from 16 to 16384.
    pub fn default_max_connections() -> usize {
        (open_files_limit() / 2).clamp(16, 16_384) as usize
    }
}

impl Default for HttpLimits {
    fn default() -> Self {
        Self {
            max_connections: Self::default_max_connections(),
            header_timeout: Duration::from_secs(10),
        }
    }
}

/// The soft RLIMIT_NOFILE, from /proc/self/limits (1024 where it cannot be read).
pub(crate) fn open_files_limit() -> u64 {
    std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("Max open files"))
                .and_then(|l| l.split_whitespace().nth(3).map(str::to_owned))
        })
        .and_then(|v| v.parse().ok())
        .unwrap_or(1024)
}

/// Counters for /metrics.
#[derive(Debug, Default)]
pub struct HttpStats {
    /// Open connections from the network (a gauge).
    pub(crate) connections: AtomicUsize,
    /// Connections closed at once because every slot was taken.
    pub(crate) refused: AtomicU64,
    /// Connections closed for not sending their headers in time (or idling too long).
    pub(crate) header_timeouts: AtomicU64,
    /// Connections closed at MAX_LIFETIME.
    pub(crate) lifetime_closed: AtomicU64,
    /// Relay upgrades refused on a reserve slot.
    pub(crate) reserve_upgrades_refused: AtomicU64,
    /// Silent connections closed to make room for a newcomer.
    pub(crate) evicted_silent: AtomicU64,
    pub(crate) accept_errors: AtomicU64,
    /// Open connections, for [`HttpStats::evict_silent`].
    open: std::sync::Mutex<HashMap<u64, Open>>,
    next: AtomicU64,
}

/// An open network connection: when it came, whether it has sent a whole request,
/// and how to close it.
#[derive(Debug)]
struct Open {
    since: Instant,
    requested: Arc<AtomicBool>,
    abort: tokio::task::AbortHandle,
}

impl HttpStats {
    /// Closes the oldest connection that has sent no whole request for SILENT_GRACE;
    /// false when there is none.
    fn evict_silent(&self) -> bool {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let victim = open
            .iter()
            .filter(|(_, o)| {
                !o.requested.load(Ordering::Relaxed) && o.since.elapsed() >= SILENT_GRACE
            })
            .min_by_key(|(_, o)| o.since)
            .map(|(id, _)| *id);
        let Some(id) = victim.and_then(|id| open.remove(&id).map(|o| (id, o))) else {
            return false;
        };
        id.1.abort.abort();
        self.evicted_silent.fetch_add(1, Ordering::Relaxed);
        true
    }
}

impl HttpStats {
    pub(crate) fn limits_exceeded(&self) -> [(&'static str, u64); 2] {
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        [
            (
                "http_max_connections",
                load(&self.refused)
                    + load(&self.reserve_upgrades_refused)
                    + load(&self.evicted_silent),
            ),
            (
                "http_header_timeout",
                load(&self.header_timeouts) + load(&self.lifetime_closed),
            ),
        ]
    }
}

impl crate::figures::Figures for HttpStats {
    fn figures(&self, out: &mut Vec<crate::figures::Figure>) {
        out.push(crate::figures::Figure::gauge(
            "http_connections",
            "Open HTTP connections from the network, relay connections included",
            self.connections.load(Ordering::Relaxed) as i64,
        ));
    }
}

/// Where a request came from; in every request's extensions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Origin {
    /// A TCP client. `reserved`: it holds a reserve slot (no upgrade).
    Network { reserved: bool },
    /// The daemon itself, in process.
    Local,
}

/// A network connection's slot, released when the last clone goes: the connection
/// task holds one, and an upgraded relay connection another.
#[derive(Debug, Clone)]
pub(crate) struct ConnSlot(#[allow(dead_code)] Arc<SlotGuard>);

#[derive(Debug)]
struct SlotGuard(Arc<HttpStats>, u64);

impl ConnSlot {
    /// Closes this connection now (a client too slow to read its event stream).
    pub(crate) fn close(&self) {
        let guard = &self.0;
        let open = guard.0.open.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(o) = open.get(&guard.1) {
            o.abort.abort();
        }
    }
}

impl Drop for SlotGuard {
    fn drop(&mut self) {
        self.0.connections.fetch_sub(1, Ordering::Relaxed);
        self.0
            .open
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.1);
    }
}

/// Accepts connections until `stopped` turns true.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    stats: Arc<HttpStats>,
    limits: HttpLimits,
    mut stopped: watch::Receiver<bool>,
) {
    let mut log = LogEvery::new(Duration::from_secs(10));
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = stopped.wait_for(|s| *s) => return,
        };
        let (tcp, addr) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of file descriptors (other parts of the daemon use them too):
                // wait a little rather than spin.
                stats.accept_errors.fetch_add(1, Ordering::Relaxed);
                if let Some(unlogged) = log.allow(Instant::now()) {
                    tracing::warn!(error = %e, unlogged, "accept failed");
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        match admit(&stats, &limits) {
            Some(open) => start_conn(&app, &stats, &limits, open, tcp, addr),
            None => {
                stats.refused.fetch_add(1, Ordering::Relaxed);
                if let Some(unlogged) = log.allow(Instant::now()) {
                    tracing::warn!(
                        %addr,
                        limit = "HTTP_MAX_CONNECTIONS",
                        value = limits.max_connections,
                        unlogged,
                        "connection refused: every HTTP slot is taken"
                    );
                }
                drop(tcp);
            }
        }
    }
}

/// Whether a newcomer gets a slot: `Some(connections open before it)`, after closing
/// a silent connection when every slot is taken; None when there is none to close.
fn admit(stats: &HttpStats, limits: &HttpLimits) -> Option<usize> {
    let mut open = stats.connections.load(Ordering::Relaxed);
    if open >= limits.max_connections && stats.evict_silent() {
        // The evicted connection gives its slot back as its task ends.
        open = limits.max_connections - 1;
    }
    (open < limits.max_connections).then_some(open)
}

/// Serves an admitted connection in its own task, registered so that it can be
/// found and closed; `open` connections were there before it (past the reserve's
/// threshold it gets a reserve slot).
fn start_conn(
    app: &Router,
    stats: &Arc<HttpStats>,
    limits: &HttpLimits,
    open: usize,
    tcp: TcpStream,
    addr: SocketAddr,
) {
    stats.connections.fetch_add(1, Ordering::Relaxed);
    let id = stats.next.fetch_add(1, Ordering::Relaxed);
    let slot = ConnSlot(Arc::new(SlotGuard(stats.clone(), id)));
    let requested = Arc::new(AtomicBool::new(false));
    let reserved = open >= limits.max_connections - limits.reserve();
    let _ = tcp.set_nodelay(true);
    let (header_timeout, lifetime) = if reserved {
        (
            limits.header_timeout.min(RESERVE_HEADER_TIMEOUT),
            RESERVE_LIFETIME,
        )
    } else {
        (limits.header_timeout, MAX_LIFETIME)
    };
    let conn = Conn {
        app: app.clone(),
        origin: Origin::Network { reserved },
        addr,
        slot: Some(slot),
        requested: Some(requested.clone()),
        header_timeout,
        keep_alive: !reserved,
    };
    // Registered before it runs, so that it can be found and closed.
    let mut registry = stats.open.lock().unwrap_or_else(|p| p.into_inner());
    let task_stats = stats.clone();
    let task = tokio::spawn(async move {
        let stats = task_stats;
        match tokio::time::timeout(lifetime, conn.run(TokioIo::new(tcp))).await {
            Ok(Err(e)) if e.is_timeout() => {
                stats.header_timeouts.fetch_add(1, Ordering::Relaxed);
            }
            Ok(_) => {}
            Err(_) => {
                stats.lifetime_closed.fetch_add(1, Ordering::Relaxed);
            }
        }
    });
    registry.insert(
        id,
        Open {
            since: Instant::now(),
            requested,
            abort: task.abort_handle(),
        },
    );
}

/// One HTTP connection and what its requests are tagged with.
struct Conn {
    app: Router,
    origin: Origin,
    addr: SocketAddr,
    slot: Option<ConnSlot>,
    /// Set at its first whole request.
    requested: Option<Arc<AtomicBool>>,
    header_timeout: Duration,
    keep_alive: bool,
}

impl Conn {
    async fn run<I>(self, io: TokioIo<I>) -> Result<(), hyper::Error>
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let Conn {
            app,
            origin,
            addr,
            slot,
            requested,
            header_timeout,
            keep_alive,
        } = self;
        let service = hyper::service::service_fn(move |mut req: hyper::Request<_>| {
            if let Some(r) = &requested {
                r.store(true, Ordering::Relaxed);
            }
            let ext = req.extensions_mut();
            ext.insert(ConnectInfo(addr));
            ext.insert(origin);
            if let Some(s) = &slot {
                ext.insert(s.clone());
            }
            let mut app = app.clone();
            async move { tower_service::Service::call(&mut app, req).await }
        });
        hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(header_timeout)
            .keep_alive(keep_alive)
            .serve_connection(io, service)
            .with_upgrades()
            .await
    }
}

/// Opens in-process connections to the daemon's own HTTP server (its relay).
#[derive(Clone)]
pub(crate) struct LocalConnector {
    app: Router,
}

impl std::fmt::Debug for LocalConnector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LocalConnector")
    }
}

impl LocalConnector {
    pub(crate) fn new(app: Router) -> Self {
        Self { app }
    }

    /// A new connection; its server side runs on the current runtime.
    pub(crate) fn connect(&self) -> tokio::io::DuplexStream {
        let (client, server) = tokio::io::duplex(64 << 10);
        let conn = Conn {
            app: self.app.clone(),
            origin: Origin::Local,
            addr: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
            slot: None,
            requested: None,
            header_timeout: Duration::from_secs(10),
            keep_alive: true,
        };
        tokio::spawn(async move {
            let _ = conn.run(TokioIo::new(server)).await;
        });
        client
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_newcomer_gets_a_slot_only_below_the_limit() {
        let stats = HttpStats::default();
        let limits = HttpLimits {
            max_connections: 4,
            header_timeout: Duration::from_secs(1),
        };
        assert_eq!(limits.reserve(), 2);
        assert_eq!(admit(&stats, &limits), Some(0));
        stats.connections.store(3, Ordering::Relaxed);
        assert_eq!(admit(&stats, &limits), Some(3));
        // Full, and no silent connection to close.
        stats.connections.store(4, Ordering::Relaxed);
        assert_eq!(admit(&stats, &limits), None);
        assert_eq!(stats.evicted_silent.load(Ordering::Relaxed), 0);
    }
}
