//! Connects and disconnects Rust peers to a running daemon, over and over, and reports
//! the daemon's resident memory along the way (read from its /metrics). A failed or
//! closed peer must be cleaned up completely: the memory must level off.
//!
//! ```sh
//! # a daemon with its own relay, no STUN, on loopback:
//! RELAY=1 RTC_ENABLED=1 ICE_SERVERS= HOST=127.0.0.1 PORT=18080 DB_NAME=churn DATA_DIR=/tmp/churn \
//!   target/release/genosdb-fallback &
//! cargo run --release --example churn -- 18080 churn 1000
//! ```

use genosdb_fallback::rtc::nostr::{PoolConfig, RelayPool};
use genosdb_fallback::rtc::peer::PeerConfig;
use genosdb_fallback::rtc::room::{Room, RoomConfig, RoomEvent};
use std::io::{Read, Write};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn metric(port: u16, name: &str) -> Option<f64> {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    write!(s, "GET /metrics HTTP/1.0\r\n\r\n").ok()?;
    let mut body = String::new();
    s.read_to_string(&mut body).ok()?;
    body.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let port: u16 = args.get(1).and_then(|p| p.parse().ok()).unwrap_or(18080);
    let db = args.get(2).cloned().unwrap_or_else(|| "churn".into());
    let cycles: usize = args.get(3).and_then(|c| c.parse().ok()).unwrap_or(1000);
    let rss = |label: &str| {
        let bytes = metric(port, "genosdb_process_resident_bytes").unwrap_or(0.0);
        let peers = metric(port, "genosdb_peers").unwrap_or(-1.0);
        println!(
            "{{\"bench\":\"churn\",\"at\":\"{label}\",\"daemon_rss_mb\":{:.1},\"daemon_peers\":{peers}}}",
            bytes / 1e6
        );
        bytes
    };
    let start = rss("start");
    let t0 = Instant::now();
    let mut after_warmup = 0.0;
    for i in 1..=cycles {
        let mut pool_cfg = PoolConfig::new(vec![format!("ws://127.0.0.1:{port}")]);
        pool_cfg.backoff_base = Duration::from_millis(100);
        let (pool, inbound) = RelayPool::start(pool_cfg);
        let mut cfg = RoomConfig::new(&format!("graph-sync-room-{db}"));
        cfg.peer = PeerConfig {
            udp_addrs: vec!["127.0.0.1:0".into()],
            include_loopback: true,
            ..PeerConfig::default()
        };
        cfg.announce_every = Duration::from_millis(200);
        let (room, mut events) = Room::join(cfg, Arc::new(pool), inbound);
        let joined = tokio::time::timeout(Duration::from_secs(20), async {
            while let Some(ev) = events.recv().await {
                if matches!(ev, RoomEvent::Joined { .. }) {
                    return true;
                }
            }
            false
        })
        .await
        .unwrap_or(false);
        if !joined {
            eprintln!("cycle {i}: the daemon did not connect in 20 s");
        }
        room.leave().await;
        if i == 100 {
            // Let the daemon settle, then take the baseline after warm-up.
            tokio::time::sleep(Duration::from_secs(2)).await;
            after_warmup = rss("after 100");
        } else if i % 250 == 0 {
            rss(&format!("after {i}"));
        }
    }
    tokio::time::sleep(Duration::from_secs(5)).await;
    let end = rss(&format!("end ({cycles} cycles, +5 s)"));
    println!(
        "{{\"bench\":\"churn_summary\",\"cycles\":{cycles},\"secs\":{:.0},\"rss_start_mb\":{:.1},\"rss_after_100_mb\":{:.1},\"rss_end_mb\":{:.1},\"growth_after_warmup_kb_per_cycle\":{:.2}}}",
        t0.elapsed().as_secs_f64(),
        start / 1e6,
        after_warmup / 1e6,
        end / 1e6,
        (end - after_warmup) / 1e3 / (cycles.saturating_sub(100).max(1)) as f64
    );
}
