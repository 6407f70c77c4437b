//! The real binary, end to end: config errors, HTTP, lifecycle, corrupt stores,
//! export/import/backup.

mod common;

use common::{Daemon, data_dir, export, run};
use std::time::Duration;

/// Node lines in the export format, sorted by id, with values that must survive byte
/// for byte: key order, float spelling, integers past 2^64, escapes, emoji, no value,
/// extra members, dangling edges.
fn sample_lines(n: usize) -> Vec<String> {
    (0..n)
        .map(|i| match i % 4 {
            0 => format!(
                r#"{{"id":"n{i:05}","value":{{"z":{i},"a":[1.50,123456789012345678901234],"s":"é😀\"q\n"}},"edges":["n{:05}","ghost"],"timestamp":{{"physical":{},"logical":{i}}}}}"#,
                i + 1,
                1_795_591_854_021u64 + i as u64
            ),
            1 => format!(
                r#"{{"id":"n{i:05}","value":"just text","edges":[],"timestamp":{{"physical":1795591854021,"logical":{i}}},"extra":{{"kept":true}}}}"#
            ),
            2 => format!(r#"{{"id":"n{i:05}","edges":[],"timestamp":{{"physical":1,"logical":{i}}}}}"#),
            _ => format!(
                r#"{{"id":"n{i:05}","value":null,"edges":[],"timestamp":{{"physical":1795591854021,"logical":{i}}}}}"#
            ),
        })
        .collect()
}

fn import(dir: &std::path::Path, lines: &[String]) {
    let file = dir.parent().unwrap().join("import.jsonl");
    std::fs::write(&file, lines.join("\n") + "\n").unwrap();
    let out = run(dir, &["import", file.to_str().unwrap()], &[]);
    assert!(
        out.status.success(),
        "import: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn bad_config_exits_2_naming_variable_value_and_form() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = data_dir(&tmp);
    for (var, value, form) in [
        ("DB_NAME", "../x", "letters, digits"),
        ("DB_NAME", "a/b", "letters, digits"),
        ("PORT", "99999", "port number"),
        ("OPLOG_SIZE", "10", "200"),
        ("RTC_ENABLED", "maybe", "true, false"),
        ("ROOM_PRESENCE", "sometimes", "true, false"),
        ("CELLS", "perhaps", "true, false"),
        ("CELL_SIZE", "1", "from 2 to 1000"),
        ("SM_ENABLED", "2", "true, false"),
        (
            "SUPER_ADMINS",
            "0xF39Fd6e51aad88F6F4ce6aB8827279cffFb92266",
            "EIP-55",
        ),
        ("RELAY_URLS", "http://relay.example", "ws://"),
        ("LOG_FORMAT", "xml", "text or json"),
        ("FLUSH_MS", "0", "milliseconds"),
        ("HOST", "localhost:80", "IP address"),
    ] {
        let out = run(&dir, &[], &[(var, value)]);
        assert_eq!(out.status.code(), Some(2), "{var}={value}");
        let err = String::from_utf8(out.stderr).unwrap();
        assert_eq!(err.lines().count(), 1, "{var}: one line, got {err:?}");
        assert!(
            err.contains(var) && err.contains(value) && err.contains(form),
            "{err}"
        );
    }
    // A bad empty DB_NAME, set explicitly.
    let out = run(&dir, &[], &[("DB_NAME", "")]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn sm_settings_exit_2_without_echoing_the_key() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = data_dir(&tmp);
    let secret = "alpha bravo charlie";
    let out = run(&dir, &[], &[("SM_KEY", secret)]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(
        err.contains("SM_KEY") && err.contains("BIP39") && !err.contains("bravo"),
        "{err}"
    );
    for (var, value, form) in [
        ("SM_STRICT", "perhaps", "true, false"),
        (
            "SM_RULES",
            r#"[{"if":{},"then":{"assignRole":"user"}}]"#,
            "SM_KEY",
        ),
    ] {
        let out = run(&dir, &[], &[(var, value)]);
        assert_eq!(out.status.code(), Some(2), "{var}");
        let err = String::from_utf8(out.stderr).unwrap();
        assert!(err.contains(var) && err.contains(form), "{err}");
    }
    let key = (
        "SM_KEY",
        "test test test test test test test test test test test junk",
    );
    let out = run(
        &dir,
        &[],
        &[
            key,
            ("SM_RULES", r#"[{"if":{},"then":{"assignRole":"emperor"}}]"#),
        ],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown role \"emperor\""));
    // sm-address prints the address browsers must list in superAdmins.
    let out = run(&dir, &["sm-address"], &[key]);
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8(out.stdout).unwrap().trim(),
        "0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266"
    );
    assert_eq!(run(&dir, &["sm-address"], &[]).status.code(), Some(2));
}

#[test]
fn dotenv_file_is_read_and_validated() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = data_dir(&tmp);
    // The binary runs in the data dir's parent, where it looks for .env.
    std::fs::write(tmp.path().join(".env"), "OPLOG_SIZE=5\n").unwrap();
    let mut cmd = common::command(&dir);
    cmd.env_remove("OPLOG_SIZE");
    let out = cmd.output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("OPLOG_SIZE"));
    // The process environment wins over .env.
    let out = run(&dir, &["export"], &[("OPLOG_SIZE", "300")]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn health_metrics_and_404() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = data_dir(&tmp);
    import(&dir, &sample_lines(8));
    let mut d = Daemon::start_ready(
        &dir,
        &[("RTC_ENABLED", "true"), ("RELAY_URLS", "ws://127.0.0.1:9")],
    );
    let (code, body) = d.get("/health");
    assert_eq!(code, 200);
    let h: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(h["status"], "ok");
    assert_eq!(h["dbName"], common::DB);
    assert_eq!(h["peers"], 0);
    assert!(h["uptime"].is_u64());
    assert_eq!(h["nodes"], 8);
    assert_eq!(h["oplog"], 8);
    assert_eq!(h["relays"]["total"], 1);
    assert_eq!(h["version"], env!("CARGO_PKG_VERSION"));
    let (code, metrics) = d.get("/metrics");
    assert_eq!(code, 200);
    assert!(metrics.contains("genosdb_nodes 8"), "{metrics}");
    assert!(metrics.contains("genosdb_ops_merged_total{type=\"upsert\"}"));
    assert!(metrics.contains("genosdb_flush_duration_seconds_bucket"));
    assert_eq!(d.get("/nope").0, 404);
    assert_eq!(d.stop().code(), Some(0));
}

#[test]
fn sigterm_and_sigint_flush_and_exit_0() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = data_dir(&tmp);
    let lines = sample_lines(500);
    import(&dir, &lines);
    for sig in [libc::SIGTERM, libc::SIGINT] {
        let mut d = Daemon::start_ready(&dir, &[]);
        assert_eq!(d.get("/health").0, 200);
        d.signal(sig);
        let status = d.wait(Duration::from_secs(10));
        assert_eq!(status.code(), Some(0), "{}", d.lines.join("\n"));
        assert!(d.lines.iter().any(|l| l.contains("journal flushed")));
    }
    assert_eq!(export(&dir), lines);
}

#[test]
fn export_import_backup_round_trip_byte_for_byte() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = data_dir(&tmp);
    let lines = sample_lines(403);
    import(&dir, &lines);
    assert_eq!(export(&dir), lines);

    // Backup while a daemon runs, then restore it into an empty DATA_DIR.
    let d = Daemon::start_ready(&dir, &[]);
    let backup = tmp.path().join("backup.bin");
    let out = run(&dir, &["backup", backup.to_str().unwrap()], &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    drop(d);
    let restored = tmp.path().join("restored");
    std::fs::create_dir_all(&restored).unwrap();
    std::fs::copy(&backup, restored.join(format!("{}.bin", common::DB))).unwrap();
    assert_eq!(export(&restored), lines);

    // Importing the same lines again changes nothing: equal timestamps keep the local node.
    import(&restored, &lines);
    assert_eq!(export(&restored), lines);
}

#[test]
fn corrupt_or_foreign_store_stops_start_and_stays_untouched() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = data_dir(&tmp);
    import(&dir, &sample_lines(50));
    let backup = tmp.path().join("good.bin");
    assert!(
        run(&dir, &["backup", backup.to_str().unwrap()], &[])
            .status
            .success()
    );
    let good = std::fs::read(&backup).unwrap();

    let snapshot = dir.join(format!("{}.bin", common::DB));
    for journal in std::fs::read_dir(&dir).unwrap() {
        let p = journal.unwrap().path();
        if p.to_string_lossy().contains(".journal") {
            std::fs::remove_file(p).unwrap();
        }
    }
    let mut flipped = good.clone();
    let mid = flipped.len() / 2;
    flipped[mid] ^= 0x01;
    let mut future = good.clone();
    future[8] = 7;
    for (bytes, why) in [
        (flipped, "checksum"),
        (good[..good.len() - 3].to_vec(), "header says"),
        (b"SQLite format 3\0 not ours".to_vec(), "bad magic"),
        (future, "version 7"),
    ] {
        std::fs::write(&snapshot, &bytes).unwrap();
        let mut d = Daemon::start(&dir, &[]);
        let status = d.wait(Duration::from_secs(20));
        assert_eq!(status.code(), Some(1), "{why}");
        let log = d.lines.join("\n");
        assert!(
            log.contains(why) && log.contains("test-db.bin"),
            "{why}: {log}"
        );
        assert_eq!(
            std::fs::read(&snapshot).unwrap(),
            bytes,
            "{why}: file changed"
        );
    }
    // The good file starts again.
    std::fs::write(&snapshot, &good).unwrap();
    let mut d = Daemon::start_ready(&dir, &[]);
    assert_eq!(d.stop().code(), Some(0));
}

#[test]
fn corrupt_journal_record_mid_file_stops_start() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = data_dir(&tmp);
    import(&dir, &sample_lines(20));
    let journal = dir.join(format!("{}.journal", common::DB));
    let mut bytes = std::fs::read(&journal).unwrap();
    assert!(bytes.len() > 200);
    bytes[100] ^= 0xff;
    std::fs::write(&journal, &bytes).unwrap();
    let mut d = Daemon::start(&dir, &[]);
    assert_eq!(d.wait(Duration::from_secs(20)).code(), Some(1));
    assert!(d.lines.join("\n").contains("test-db.journal"));
    assert_eq!(std::fs::read(&journal).unwrap(), bytes);
}

#[test]
fn one_daemon_per_store() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = data_dir(&tmp);
    let mut first = Daemon::start_ready(&dir, &[]);
    let mut second = Daemon::start(&dir, &[]);
    assert_eq!(second.wait(Duration::from_secs(20)).code(), Some(1));
    assert!(second.lines.join("\n").contains("locked by another"));
    let file = tmp.path().join("x.jsonl");
    std::fs::write(&file, sample_lines(1).join("\n")).unwrap();
    let out = run(&dir, &["import", file.to_str().unwrap()], &[]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(first.stop().code(), Some(0));
}

#[test]
fn missing_data_dir_is_created() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("a/b/c");
    let mut d = Daemon::start_ready(&dir, &[]);
    assert!(dir.join(format!("{}.journal", common::DB)).exists());
    assert_eq!(d.stop().code(), Some(0));
}

#[test]
fn bad_import_merges_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = data_dir(&tmp);
    let mut lines = sample_lines(5);
    lines.push(r#"{"id":"bad","edges":[1]}"#.into());
    let file = tmp.path().join("bad.jsonl");
    std::fs::write(&file, lines.join("\n")).unwrap();
    let out = run(&dir, &["import", file.to_str().unwrap()], &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("line 6"));
    assert!(export(&dir).is_empty());
}

#[test]
fn cli_flags_mirror_env_and_win_over_it() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = data_dir(&tmp);
    let out = run(
        &dir,
        &["--oplog-size", "10", "export"],
        &[("OPLOG_SIZE", "500")],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("OPLOG_SIZE \"10\""));
    let out = run(
        &dir,
        &["export", "--oplog-size", "500"],
        &[("OPLOG_SIZE", "10")],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = run(&dir, &["--help"], &[]);
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--db-name",
        "--rtc-enabled",
        "--relay-urls",
        "--port",
        "--sm-enabled",
        "--super-admins",
        "--data-dir",
        "--flush-ms",
        "--oplog-size",
        "--log-format",
    ] {
        assert!(help.contains(flag), "{flag} missing from --help");
    }
}

#[test]
fn limit_settings_exit_2_naming_variable_and_form() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = data_dir(&tmp);
    for (envs, var, value, form) in [
        (vec![], "MAX_PEERS", "0", "from 1 to 100000"),
        (vec![], "PEER_MSG_RATE", "fast", "messages per second"),
        (vec![], "PEER_MSG_BURST", "0", "whole number of messages"),
        (vec![], "PEER_BYTES_RATE", "1000", "from 1024"),
        (
            vec![],
            "PEER_BYTES_BURST",
            "1048576",
            "MAX_MESSAGE_BYTES plus 100 frames",
        ),
        (
            vec![("MAX_MESSAGE_BYTES", "65536")],
            "PEER_BYTES_BURST",
            "1703935",
            "from 1703936",
        ),
        (vec![], "MAX_MESSAGE_BYTES", "1024", "from 65536"),
        (vec![], "MAX_VALUE_BYTES", "-5", "byte count"),
        (vec![], "RELAY_MAX_MESSAGE_BYTES", "100", "from 4096"),
        (vec![], "RELAY_EVENTS_PER_SEC", "0", "events per second"),
        (vec![], "RELAY_EVENT_BURST", "1e3", "whole number of events"),
        (vec![], "RELAY_MAX_SUBS", "5000", "from 1 to 1024"),
        (vec![], "RELAY_MESSAGES_PER_SEC", "0", "messages per second"),
        (vec![], "RELAY_QUEUE_BYTES", "1000", "from 135168"),
        (
            vec![("RELAY_QUEUE_BYTES", "200000")],
            "RELAY_MEMORY_BYTES",
            "199999",
            "from 200000",
        ),
        (vec![], "RELAY_MAX_FILTER_BYTES", "big", "from 1024"),
        (vec![], "HTTP_MAX_CONNECTIONS", "8", "from 16"),
        (vec![], "HTTP_HEADER_TIMEOUT", "0", "seconds from 1"),
    ] {
        let mut all = envs.clone();
        all.push((var, value));
        let out = run(&dir, &[], &all);
        assert_eq!(out.status.code(), Some(2), "{var}={value}");
        let err = String::from_utf8(out.stderr).unwrap();
        assert_eq!(err.lines().count(), 1, "{var}: one line, got {err:?}");
        assert!(
            err.contains(&format!("invalid {var} \"{value}\"")) && err.contains(form),
            "{err}"
        );
    }
    // The same burst is fine once it holds the largest message.
    let out = run(
        &dir,
        &["export"],
        &[
            ("MAX_MESSAGE_BYTES", "65536"),
            ("PEER_BYTES_BURST", "1703936"),
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The daemon restarts itself once so that mimalloc commits memory lazily (main.rs),
/// and leaves an operator's own choice alone.
#[test]
fn the_allocator_commits_memory_lazily_unless_the_operator_chose() {
    let environ = |d: &Daemon| {
        std::fs::read(format!("/proc/{}/environ", d.child.id()))
            .unwrap()
            .split(|b| *b == 0)
            .map(|kv| String::from_utf8_lossy(kv).into_owned())
            .collect::<Vec<_>>()
    };
    let tmp = tempfile::tempdir().unwrap();
    let mut d = Daemon::start_ready(&data_dir(&tmp), &[]);
    assert!(environ(&d).contains(&"MIMALLOC_ARENA_EAGER_COMMIT=0".to_owned()));
    assert_eq!(
        d.get("/health").0,
        200,
        "the restarted process is the daemon"
    );
    assert_eq!(d.stop().code(), Some(0));

    let mut d = Daemon::start_ready(&data_dir(&tmp), &[("MIMALLOC_ARENA_EAGER_COMMIT", "1")]);
    assert!(environ(&d).contains(&"MIMALLOC_ARENA_EAGER_COMMIT=1".to_owned()));
    assert_eq!(d.stop().code(), Some(0));
}
