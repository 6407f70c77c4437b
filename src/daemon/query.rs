//! `genosdb-fallback query`: the console's read-only look at the graph, from a shell.
//! Against a stopped store (DATA_DIR or DATABASE_URL, read without writing), or with
//! `--url http://host:port` against a running daemon through ADMIN_TOKEN. Prints one
//! JSON object a line: nodes, or oplog entries.

use crate::config::{Config, QueryArgs};
use crate::http::console::look;
use anyhow::{Context, bail};
use std::io::{Read, Write};
use std::time::Duration;

enum Ask {
    Node(String),
    Oplog,
    Query(String),
}

fn ask(args: &QueryArgs) -> anyhow::Result<Ask> {
    Ok(match (&args.node, args.oplog, &args.query) {
        (Some(id), false, None) => Ask::Node(id.clone()),
        (None, true, None) => Ask::Oplog,
        (None, false, Some(q)) => Ask::Query(q.clone()),
        _ => bail!("give exactly one of QUERY, --node ID or --oplog"),
    })
}

pub fn run(cfg: &Config, args: &QueryArgs, out: impl Write) -> anyhow::Result<()> {
    let ask = ask(args)?;
    let lines = match &args.url {
        Some(url) => remote(cfg, url, &ask, args.limit)?,
        None => local(cfg, &ask, args.limit)?,
    };
    let mut out = std::io::BufWriter::new(out);
    for l in lines {
        match writeln!(out, "{l}") {
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => return Ok(()),
            r => r?,
        }
    }
    match out.flush() {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        r => r.map_err(Into::into),
    }
}

fn local(cfg: &Config, ask: &Ask, limit: usize) -> anyhow::Result<Vec<String>> {
    let loaded = super::storage::read(cfg)?;
    let store = loaded.store;
    Ok(match ask {
        Ask::Node(id) => look::node(&store, id).into_iter().collect(),
        Ask::Oplog => look::oplog(&store, limit),
        Ask::Query(q) => {
            let q = look::compile(q)?;
            let found = look::query(&store, &q, limit)?;
            if found.truncated {
                tracing::info!(
                    scanned = found.scanned,
                    "more nodes may match: raise --limit (at most 1000) or narrow the query"
                );
            }
            found.nodes
        }
    })
}

fn remote(cfg: &Config, url: &str, ask: &Ask, limit: usize) -> anyhow::Result<Vec<String>> {
    let token = &cfg.http.admin_token.0;
    if token.is_empty() {
        bail!("--url needs ADMIN_TOKEN: the daemon's token");
    }
    let Some(rest) = url.strip_prefix("http://") else {
        bail!("--url must be http://host:port (for a remote daemon, use an SSH tunnel)");
    };
    let host = rest.split('/').next().unwrap_or(rest);
    let (path, body, key) = match ask {
        Ask::Node(id) => ("/admin/node", serde_json::json!({ "id": id }), "node"),
        Ask::Oplog => (
            "/admin/oplog",
            serde_json::json!({ "limit": limit }),
            "oplog",
        ),
        Ask::Query(q) => {
            let query: serde_json::Value =
                serde_json::from_str(q).context("the query is not JSON")?;
            (
                "/admin/query",
                serde_json::json!({ "query": query, "limit": limit }),
                "nodes",
            )
        }
    };
    let body = body.to_string();
    let addr = std::net::ToSocketAddrs::to_socket_addrs(host)
        .with_context(|| format!("cannot resolve {host}"))?
        .next()
        .with_context(|| format!("cannot resolve {host}"))?;
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(10))
        .with_context(|| format!("cannot connect to {host}"))?;
    s.set_read_timeout(Some(Duration::from_secs(60)))?;
    write!(
        s,
        "POST {path} HTTP/1.0\r\nHost: {host}\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )?;
    let mut resp = Vec::new();
    s.take(64 << 20).read_to_end(&mut resp)?;
    let resp = String::from_utf8_lossy(&resp);
    let (head, text) = resp.split_once("\r\n\r\n").unwrap_or((&resp, ""));
    let code: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    if code != 200 {
        bail!("the daemon answered {code}: {}", text.trim());
    }
    let v: serde_json::Value = serde_json::from_str(text).context("the daemon's answer")?;
    Ok(match &v[key] {
        serde_json::Value::Array(items) => items.iter().map(|i| i.to_string()).collect(),
        serde_json::Value::Null => Vec::new(),
        one => vec![one.to_string()],
    })
}
