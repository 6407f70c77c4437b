//! DATABASE_URL as people write it (issue 18 §1, issue 17 items 7 and 8): every form
//! libpq documents reaches the same real server, and no password, in any form, shows
//! in logs, errors, /health or /.

mod common;

use common::{Daemon, wait_until};
use std::net::TcpListener;
use std::path::Path;

fn unique_db(what: &str) -> String {
    let mut b = [0u8; 6];
    getrandom::fill(&mut b).unwrap();
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!("t-{what}-{hex}")
}

fn password(url: &str) -> String {
    let creds = url.split("://").nth(1).unwrap().split('@').next().unwrap();
    creds.split_once(':').unwrap().1.to_owned()
}

fn sql(url: &str, query: &str) -> Vec<String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(conn);
        client
            .simple_query(query)
            .await
            .unwrap()
            .into_iter()
            .filter_map(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(r) => {
                    Some(r.get(0).unwrap_or("").to_owned())
                }
                _ => None,
            })
            .collect()
    })
}

fn node(id: &str) -> String {
    format!(
        r#"{{"id":"{id}","value":{{"v":1}},"edges":[],"timestamp":{{"physical":1795591854021,"logical":1}}}}"#
    )
}

/// `import` one node through `url`, then read it back through `url`: both work, and
/// nothing either prints holds `secret`.
fn round_trip(dir: &Path, url: &str, db: &str, id: &str, secret: &str) {
    let file = dir.parent().unwrap().join(format!("{id}.jsonl"));
    std::fs::write(&file, node(id)).unwrap();
    let envs = [("DATABASE_URL", url), ("DB_NAME", db)];
    let out = common::run(dir, &["import", file.to_str().unwrap()], &envs);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "import through {id}: {err}");
    assert!(!err.contains(secret), "{err}");
    let out = common::run(dir, &["export"], &envs);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "export through {id}: {err}");
    assert!(!err.contains(secret), "{err}");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(&format!("\"{id}\"")),
        "{id}"
    );
}

#[test]
fn every_libpq_form_reaches_the_server() {
    let Some(server) = common::pg::server() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let dir = common::data_dir(&tmp);
    let db = unique_db("forms");
    let url = &server.url;
    let pw = password(url);
    let port = server.port;
    let sock = server.socket_dir.display().to_string();
    let sock_enc = sock.replace('/', "%2F");
    let forms: Vec<(&str, String)> = vec![
        ("tcp", url.clone()),
        (
            "postgresql-scheme",
            url.replacen("postgres://", "postgresql://", 1),
        ),
        (
            "socket-param",
            format!("postgresql:///gdbf_test?host={sock}&port={port}&user=gdbf"),
        ),
        (
            "socket-encoded",
            format!("postgresql://gdbf@{sock_enc}:{port}/gdbf_test"),
        ),
        (
            "no-host",
            format!("postgresql:///gdbf_test?port={port}&user=gdbf"),
        ),
        (
            "several-hosts",
            format!(
                "postgres://gdbf:{pw}@127.0.0.1:1,127.0.0.1:{port}/gdbf_test?connect_timeout=2"
            ),
        ),
        (
            "params",
            format!("{url}?sslmode=require&application_name=gdbf-forms-app&connect_timeout=3"),
        ),
        (
            "key-value",
            format!(
                "host=127.0.0.1 port={port} user=gdbf password={pw} dbname=gdbf_test sslmode=disable"
            ),
        ),
        (
            "key-value-socket",
            format!("host={sock} port={port} user=gdbf dbname=gdbf_test"),
        ),
    ];
    for (name, form) in &forms {
        round_trip(&dir, form, &db, name, &pw);
    }
    // Every form wrote to the one database: the first reads what all wrote.
    let out = common::run(
        &dir,
        &["export"],
        &[("DATABASE_URL", url), ("DB_NAME", &db)],
    );
    let all = String::from_utf8_lossy(&out.stdout);
    assert_eq!(all.lines().count(), forms.len(), "{all}");
    // application_name reaches the server; a daemon keeps it.
    let mut d = Daemon::start_ready(
        &dir,
        &[
            ("DATABASE_URL", &forms[6].1),
            ("DB_NAME", &db),
            ("RUST_LOG", "info"),
        ],
    );
    let names = sql(
        url,
        "SELECT application_name FROM pg_stat_activity WHERE application_name = 'gdbf-forms-app'",
    );
    assert!(!names.is_empty());
    assert!(
        d.get("/health")
            .1
            .contains(&format!("\"nodes\":{}", forms.len()))
    );
    assert_eq!(d.stop().code(), Some(0));
}

/// 17.7: a password holding `/`, `?` and `#` shows nowhere: not in the start-up log,
/// not in the error log, not in the `error` field of the unauthenticated /health and /.
#[test]
fn passwords_with_url_characters_never_show() {
    let Some(server) = common::pg::server() else {
        return;
    };
    let secret = "PG/SECRET7?x#y";
    let role = unique_db("role").replace('-', "_");
    sql(
        &server.url,
        &format!("CREATE ROLE {role} LOGIN SUPERUSER PASSWORD '{secret}'"),
    );
    let tmp = tempfile::tempdir().unwrap();
    let dir = common::data_dir(&tmp);
    let db = unique_db("secret");
    let port = server.port;
    let good = format!("postgres://{role}:{secret}@127.0.0.1:{port}/gdbf_test");
    let leaks = |text: &str| ["SECRET7", "PG/", "x#y"].iter().any(|s| text.contains(s));

    // Up: start-up log, /health, /.
    let mut d = Daemon::start_ready(&dir, &[("DATABASE_URL", &good), ("DB_NAME", &db)]);
    for path in ["/health", "/"] {
        let (_, body) = d.get(path);
        assert!(!leaks(&body), "{path}: {body}");
    }
    assert!(d.get("/health").1.contains("\"status\":\"ok\""));
    assert_eq!(d.stop().code(), Some(0));
    assert!(d.lines.iter().all(|l| !leaks(l)), "{}", d.lines.join("\n"));

    // Down (nothing listens there): the error log, and the error field of /health and /.
    let free = TcpListener::bind("127.0.0.1:0").unwrap();
    let down_port = free.local_addr().unwrap().port();
    drop(free);
    let down =
        format!("postgres://{role}:{secret}@127.0.0.1:{down_port}/gdbf_test?connect_timeout=1");
    let mut d = Daemon::start_ready(&dir, &[("DATABASE_URL", &down), ("DB_NAME", &db)]);
    wait_until("degraded", || {
        d.get("/health").1.contains("\"status\":\"degraded\"")
    });
    for path in ["/health", "/"] {
        let (_, body) = d.get(path);
        assert!(body.contains("postgres"), "{path}: {body}");
        assert!(!leaks(&body), "{path}: {body}");
    }
    assert_eq!(d.stop().code(), Some(0));
    assert!(d.lines.iter().all(|l| !leaks(l)), "{}", d.lines.join("\n"));

    // A wrong password: the server's refusal is logged, the password is not.
    let wrong = format!("postgres://{role}:PG/WRONG7?x#y@127.0.0.1:{port}/gdbf_test");
    let out = common::run(
        &dir,
        &["export"],
        &[("DATABASE_URL", &wrong), ("DB_NAME", &db)],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("password authentication failed"), "{err}");
    assert!(!err.contains("WRONG7") && !leaks(&err), "{err}");

    // 17.8: a value that is no URL (key/value with a bad value, a one-slash typo).
    for bad in [
        format!("host=127.0.0.1 user={role} password={secret} sslmode=sometimes"),
        format!("postgres:/{role}:{secret}@127.0.0.1/gdbf_test"),
    ] {
        let out = common::run(&dir, &[], &[("DATABASE_URL", &bad)]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{err}");
        assert!(err.contains("DATABASE_URL"), "{err}");
        assert!(!leaks(&err), "{err}");
    }
}
