//! Security review: secrets never leave the process. The daemon runs with every secret
//! set (PASSWORD, SM_KEY, TURN_CREDENTIAL, the password in DATABASE_URL), at the most
//! verbose log level, while a peer actually uses the password to connect; then every
//! log line, /health, /metrics, / and `--help` are searched for each secret.

mod common;

use common::peer::TestPeer;
use common::{Daemon, data_dir};
use std::sync::{Arc, Mutex};

use genosdb_fallback::store::Store;

const PASSWORD: &str = "pw-Secret-7f3a9c";
const SM_KEY_HEX: &str = "0x4c0883a69102937d6231471b5dbb6204fe5129617082792ae468d01a3f362318";
const TURN_CREDENTIAL: &str = "turn-Secret-51b2e0";
const PG_PASSWORD: &str = "pg-Secret-90ad41";

fn assert_no_secret(what: &str, text: &str) {
    let key_bare = SM_KEY_HEX.trim_start_matches("0x");
    for secret in [PASSWORD, key_bare, TURN_CREDENTIAL, PG_PASSWORD] {
        assert!(
            !text.contains(secret),
            "{what} shows the secret {secret:?}:\n{text}"
        );
    }
}

fn secret_env(format: &'static str) -> Vec<(&'static str, &'static str)> {
    vec![
        ("RELAY", "1"),
        ("RTC_ENABLED", "true"),
        ("ICE_SERVERS", ""),
        ("PASSWORD", PASSWORD),
        ("SM_KEY", SM_KEY_HEX),
        // Loopback TURN: nothing listens there, and nothing else may be contacted.
        ("TURN_URLS", "turn:127.0.0.1:9"),
        ("TURN_USERNAME", "gdbf"),
        ("TURN_CREDENTIAL", TURN_CREDENTIAL),
        ("RUST_LOG", "trace"),
        ("LOG_FORMAT", format),
    ]
}

async fn secrets_stay_hidden_with_log_format(format: &'static str) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = data_dir(&tmp);
    let mut d = Daemon::start(&dir, &secret_env(format));
    let ready = match format {
        "json" => r#""message":"ready""#,
        _ => " ready",
    };
    d.wait_for_log(ready, std::time::Duration::from_secs(60));

    // A peer that seals and unseals with the password, so those paths run at trace level.
    let store = Arc::new(Mutex::new(Store::new(1000)));
    let peer = TestPeer::join_tweaked(d.port, common::DB, store, |cfg| {
        cfg.password = PASSWORD.into();
    });
    peer.wait_superpeers(1).await;
    peer.sync.put("secret-probe", r#"{"n":1}"#).await.unwrap();
    common::wait_until("the daemon merged the write", || {
        d.get("/metrics").1.contains("genosdb_sync_merged_total 1")
    });

    for path in ["/health", "/metrics", "/", "/console/status"] {
        let (code, body) = d.get(path);
        assert_eq!(code, 200, "{path}");
        assert_no_secret(path, &body);
    }
    assert!(d.get("/health").1.contains("\"signingAs\":\"0x"));

    peer.leave().await;
    assert_eq!(d.stop().code(), Some(0));
    let log = d.lines.join("\n");
    assert!(
        log.lines().count() > 50,
        "trace logging was on, yet the daemon said little:\n{log}"
    );
    assert!(
        log.contains("peer joined"),
        "the peer never connected:\n{log}"
    );
    assert_no_secret(&format!("the {format} log"), &log);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_never_reach_text_logs_health_or_metrics() {
    secrets_stay_hidden_with_log_format("text").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_never_reach_json_logs_health_or_metrics() {
    secrets_stay_hidden_with_log_format("json").await;
}

/// An unreachable database makes the daemon degraded; its error names the URL with the
/// password masked, in the log and in /health.
#[test]
fn the_database_password_is_masked_while_degraded() {
    let tmp = tempfile::tempdir().unwrap();
    let url = format!("postgres://gdbf:{PG_PASSWORD}@127.0.0.1:9/gdbf?sslmode=disable");
    let mut d = Daemon::start(
        &data_dir(&tmp),
        &[("DATABASE_URL", url.as_str()), ("RUST_LOG", "trace")],
    );
    common::wait_until("health reports degraded", || {
        d.get("/health").1.contains("\"degraded\"")
    });
    let (_, health) = d.get("/health");
    assert!(health.contains("***"), "{health}");
    assert_no_secret("/health", &health);
    assert_no_secret("/metrics", &d.get("/metrics").1);
    d.stop();
    assert_no_secret("the log", &d.lines.join("\n"));
}

/// clap prints environment values in `--help` unless told not to.
#[test]
fn help_never_prints_secret_environment_values() {
    let tmp = tempfile::tempdir().unwrap();
    let url = format!("postgres://gdbf:{PG_PASSWORD}@127.0.0.1:9/gdbf");
    let mut env = secret_env("text");
    env.push(("DATABASE_URL", url.as_str()));
    let out = common::run(&data_dir(&tmp), &["--help"], &env);
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(help.contains("TURN_CREDENTIAL"), "{help}");
    assert_no_secret("--help", &help);
    assert_no_secret("--help's stderr", &String::from_utf8_lossy(&out.stderr));
}

// ---- issue 17, item 9: .env errors and credentials inside URLs ----------------------

const MNEMONIC: &str =
    "legal winner thank year wave sausage worth useful legal winner thank yellow";

/// A `.env` that dotenvy cannot parse: the error names the file, the line and the
/// variable, exits 2, and shows no value: not the bad line, nor the rest of the file.
#[test]
fn dotenv_errors_name_the_variable_and_line_never_a_value() {
    let cases = [
        (
            format!("DB_NAME=x\nSM_KEY={MNEMONIC}\nRUST_LOG=info\n"),
            "line 2",
            "SM_KEY",
        ),
        (
            format!("# secrets\nPASSWORD=\"{PASSWORD}\\q\"\n"),
            "line 2",
            "PASSWORD",
        ),
        (
            format!(
                "DB_NAME=x\nTURN_CREDENTIAL=\"{TURN_CREDENTIAL}\nPASSWORD={PASSWORD}\nSM_KEY={SM_KEY_HEX}\n"
            ),
            "line 2",
            "TURN_CREDENTIAL",
        ),
        (format!("DB_NAME=x\n\n{MNEMONIC}\n"), "line 3", "NAME=value"),
    ];
    for (text, line, var) in cases {
        let tmp = tempfile::tempdir().unwrap();
        let dir = data_dir(&tmp);
        std::fs::write(tmp.path().join(".env"), &text).unwrap();
        let out = common::run(&dir, &[], &[]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{var}: {stderr}");
        assert!(stderr.contains(".env"), "{stderr}");
        assert!(stderr.contains(line), "wanted {line} in: {stderr}");
        assert!(stderr.contains(var), "wanted {var} in: {stderr}");
        assert_no_secret(".env error", &stderr);
        for word in ["winner", "sausage"] {
            assert!(!stderr.contains(word), "the mnemonic shows: {stderr}");
        }
        assert!(String::from_utf8_lossy(&out.stdout).is_empty());
    }
}

const RELAY_USER_SECRET: &str = "relayPass-3c9e1f";
const RELAY_TOKEN: &str = "relayToken-77d0a2";
const TURN_URL_SECRET: &str = "turnPass-0b4d6e";
const TURN_TOKEN: &str = "turnToken-a81c35";

fn assert_no_url_secret(what: &str, text: &str) {
    for secret in [RELAY_USER_SECRET, RELAY_TOKEN, TURN_URL_SECRET, TURN_TOKEN] {
        assert!(
            !text.contains(secret),
            "{what} shows the URL secret {secret:?}:\n{text}"
        );
    }
}

/// Relay and TURN URLs that carry credentials (user:pass@, ?token=) are shown masked
/// in the start-up log, the relay connection errors, /health, / and /metrics, while the
/// daemon runs at trace level and a peer connects through its own relay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_in_relay_and_turn_urls_never_show() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = data_dir(&tmp);
    // Nothing listens on port 9: the daemon keeps failing to connect, and logs it. The
    // third relay is real: tungstenite logs its whole request at trace level.
    let relay = common::relay(&tmp);
    let relays = format!(
        "ws://gdbf:{RELAY_USER_SECRET}@127.0.0.1:9/, ws://127.0.0.1:9/r?token={RELAY_TOKEN}, ws://gdbf:{RELAY_USER_SECRET}@127.0.0.1:{}/?token={RELAY_TOKEN}",
        relay.port
    );
    let mut env = secret_env("text");
    env.push(("RELAY_URLS", relays.as_str()));
    let mut d = Daemon::start(&dir, &env);
    d.wait_for_log(" ready", std::time::Duration::from_secs(60));
    d.wait_for_log("relay connect failed", std::time::Duration::from_secs(30));
    let connected = format!(
        "relay connected relay=ws://***@127.0.0.1:{}/?token=***",
        relay.port
    );
    d.wait_for_log(&connected, std::time::Duration::from_secs(30));

    let store = Arc::new(Mutex::new(Store::new(1000)));
    let peer = TestPeer::join_tweaked(d.port, common::DB, store, |cfg| {
        cfg.password = PASSWORD.into();
    });
    peer.wait_superpeers(1).await;
    for path in ["/health", "/metrics", "/", "/console/status"] {
        let (code, body) = d.get(path);
        assert_eq!(code, 200, "{path}");
        assert_no_url_secret(path, &body);
    }
    peer.leave().await;
    assert_eq!(d.stop().code(), Some(0));
    let log = d.lines.join("\n");
    assert!(log.contains("starting genosdb-fallback"), "{log}");
    assert!(
        log.contains("***@127.0.0.1:9"),
        "the relay is not named at all:\n{log}"
    );
    assert!(
        log.contains("Request:"),
        "tungstenite's request trace is missing:\n{log}"
    );
    assert_no_url_secret("the log", &log);
    assert_no_secret("the log", &log);

    // A refused list names the variable, with every URL in it masked. WebRTC refuses
    // a TURN URL with a query other than ?transport= (every peer link failed with
    // "invalid query"), and ignores credentials in it: both exit 2 at start.
    let bad_relays = format!("{relays}, http://not-a-relay");
    let turn_token = format!("turn:127.0.0.1:9?transport=udp&token={TURN_TOKEN}");
    let turn_user = format!("turn:u:{TURN_URL_SECRET}@127.0.0.1:9, stun:x");
    for (var, value, why) in [
        ("RELAY_URLS", bad_relays.as_str(), "ws:// or wss://"),
        ("TURN_URLS", turn_token.as_str(), "invalid query"),
        (
            "TURN_URLS",
            turn_user.as_str(),
            "TURN_CREDENTIAL, not in the URL",
        ),
    ] {
        let out = common::run(
            &dir,
            &[],
            &[
                (var, value),
                ("TURN_USERNAME", "u"),
                ("TURN_CREDENTIAL", "c"),
            ],
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{var}: {stderr}");
        assert!(stderr.contains(var) && stderr.contains(why), "{stderr}");
        assert!(stderr.contains("***"), "{stderr}");
        assert_no_url_secret(var, &stderr);
    }
}
