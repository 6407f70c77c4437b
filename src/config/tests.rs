//! The settings' rules: defaults, bounds, and secrets never shown.

use super::*;
use crate::http::serve::HttpLimits;
use crate::rtc::frame;
use crate::rtc::room::PeerLimits;
use std::path::PathBuf;
use std::time::Duration;

fn with(f: impl FnOnce(&mut RawSettings)) -> Result<Config, ConfigError> {
    let mut raw = RawSettings::default();
    f(&mut raw);
    raw.validate()
}

#[test]
fn host_is_an_address_or_a_name_that_resolves() {
    let host = |v: &str| with(|r| r.host = Some(v.into())).map(|c| c.http.host);
    assert_eq!(host("127.0.0.1").unwrap().to_string(), "127.0.0.1");
    assert_eq!(host("::").unwrap().to_string(), "::");
    assert!(host("localhost").unwrap().is_loopback());
    for no in ["", "local host", "localhost:80", "http://localhost"] {
        let e = host(no).unwrap_err();
        assert_eq!(e.var, "HOST", "{no:?}");
        assert!(e.expected.contains("host name that resolves"), "{no:?}");
    }
}

#[test]
fn defaults() {
    let c = with(|_| {}).unwrap();
    assert_eq!(c.db_name, "default");
    assert!(c.rtc.enabled);
    assert_eq!(c.rtc.relay_urls.len(), 8);
    assert_eq!(c.http.port, 3000);
    assert!(!c.sm.enabled);
    assert!(!c.relay.enabled);
    assert!(c.sm.super_admins.is_empty());
    assert_eq!(c.storage.data_dir, PathBuf::from("./data"));
    assert_eq!(c.storage.flush_every, Duration::from_millis(200));
    assert_eq!(c.storage.oplog_size, 1000);
    assert_eq!(c.log.format, LogFormat::Text);
    assert_eq!(c.sync_room(), "graph-sync-room-default");
}

#[test]
fn db_name_rules() {
    for ok in ["a", "my-app-db", "v1.2_x", &"x".repeat(128)] {
        assert!(with(|r| r.db_name = Some(ok.into())).is_ok(), "{ok}");
    }
    for no in [
        "",
        "../x",
        "a/b",
        ".hidden",
        "a b",
        "é",
        &"x".repeat(129),
        "a\\b",
    ] {
        let e = with(|r| r.db_name = Some(no.into())).unwrap_err();
        assert_eq!(e.var, "DB_NAME", "{no}");
    }
}

#[test]
fn booleans_any_case() {
    for (v, want) in [
        ("TRUE", true),
        ("yes", true),
        ("1", true),
        ("No", false),
        ("0", false),
    ] {
        assert_eq!(
            with(|r| r.rtc_enabled = Some(v.into()))
                .unwrap()
                .rtc
                .enabled,
            want
        );
    }
    let e = with(|r| r.sm_enabled = Some("maybe".into())).unwrap_err();
    assert_eq!(
        e.to_string(),
        "invalid SM_ENABLED \"maybe\": expected true, false, 1, 0, yes or no"
    );
}

#[test]
fn relay_urls_rules() {
    let c = with(|r| r.relay_urls = Some("ws://127.0.0.1:7000, wss://r.example/x".into())).unwrap();
    assert_eq!(
        c.rtc.relay_urls,
        ["ws://127.0.0.1:7000", "wss://r.example/x"]
    );
    assert!(
        with(|r| r.relay_urls = Some(String::new()))
            .unwrap()
            .rtc
            .relay_urls
            .is_empty()
    );
    for no in ["http://x", "ws://", "wss://a b", "relay.example"] {
        assert_eq!(
            with(|r| r.relay_urls = Some(no.into())).unwrap_err().var,
            "RELAY_URLS"
        );
    }
}

#[test]
fn own_relay_alone_unless_relay_urls_is_set() {
    assert!(
        with(|r| r.relay = Some("1".into()))
            .unwrap()
            .rtc
            .relay_urls
            .is_empty()
    );
    let both = with(|r| {
        r.relay = Some("1".into());
        r.relay_urls = Some("ws://127.0.0.1:7000".into());
    })
    .unwrap();
    assert_eq!(both.rtc.relay_urls, ["ws://127.0.0.1:7000"]);
}

#[test]
fn numbers_in_range() {
    assert_eq!(
        with(|r| r.oplog_size = Some("199".into())).unwrap_err().var,
        "OPLOG_SIZE"
    );
    assert_eq!(
        with(|r| r.oplog_size = Some("200".into()))
            .unwrap()
            .storage
            .oplog_size,
        200
    );
    assert_eq!(
        with(|r| r.port = Some("70000".into())).unwrap_err().var,
        "PORT"
    );
    assert_eq!(
        with(|r| r.port = Some("-1".into())).unwrap_err().var,
        "PORT"
    );
    assert_eq!(
        with(|r| r.flush_ms = Some("0".into())).unwrap_err().var,
        "FLUSH_MS"
    );
    assert_eq!(
        with(|r| r.flush_ms = Some("abc".into())).unwrap_err().var,
        "FLUSH_MS"
    );
}

#[test]
fn relay_memory_and_http_limits_default_sanely_and_are_checked() {
    let c = with(|_| {}).unwrap();
    let r = c.relay.limits;
    assert_eq!((r.queue_bytes, r.memory_bytes), (1 << 20, 64 << 20));
    assert_eq!((r.messages_per_sec, r.max_filter_bytes), (100.0, 16 << 10));
    assert!(c.http.limits.max_connections >= 16);
    assert_eq!(c.http.limits.header_timeout, Duration::from_secs(10));
    // Bigger relay messages raise the default queues with them.
    let c = with(|r| r.relay_max_message_bytes = Some((1 << 20).to_string())).unwrap();
    assert_eq!(c.relay.limits.queue_bytes, 16 << 20);
    assert_eq!(c.relay.limits.memory_bytes, 1 << 30);
    for (set, var) in [
        (
            (|r: &mut RawSettings| r.relay_queue_bytes = Some("135167".into()))
                as fn(&mut RawSettings),
            "RELAY_QUEUE_BYTES",
        ),
        (
            |r| {
                r.relay_queue_bytes = Some("200000".into());
                r.relay_memory_bytes = Some("100000".into());
            },
            "RELAY_MEMORY_BYTES",
        ),
        (
            |r| r.relay_messages_per_sec = Some("0".into()),
            "RELAY_MESSAGES_PER_SEC",
        ),
        (
            |r| r.relay_max_filter_bytes = Some("1023".into()),
            "RELAY_MAX_FILTER_BYTES",
        ),
        (
            |r| r.http_max_connections = Some("15".into()),
            "HTTP_MAX_CONNECTIONS",
        ),
        (
            |r| r.http_header_timeout = Some("1.5".into()),
            "HTTP_HEADER_TIMEOUT",
        ),
    ] {
        assert_eq!(with(set).unwrap_err().var, var);
    }
    let c = with(|r| {
        r.relay_queue_bytes = Some("135168".into());
        r.relay_memory_bytes = Some("135168".into());
        r.relay_messages_per_sec = Some("5".into());
        r.relay_max_filter_bytes = Some("1024".into());
        r.http_max_connections = Some("16".into());
        r.http_header_timeout = Some("2".into());
    })
    .unwrap();
    let r = c.relay.limits;
    assert_eq!((r.queue_bytes, r.memory_bytes), (135_168, 135_168));
    assert_eq!((r.messages_per_sec, r.max_filter_bytes), (5.0, 1024));
    assert_eq!(
        c.http.limits,
        HttpLimits {
            max_connections: 16,
            header_timeout: Duration::from_secs(2)
        }
    );
}

#[test]
fn limits_default_generously_and_are_checked() {
    let c = with(|_| {}).unwrap();
    assert_eq!(c.rtc.peer_limits, PeerLimits::default());
    assert_eq!(c.rtc.peer_limits.max_peers, 256);
    assert_eq!(c.rtc.max_message_bytes, 16 << 20);
    assert_eq!(c.rtc.max_value_bytes, 1 << 20);
    assert!(
        c.rtc.peer_limits.bytes_burst >= (c.rtc.max_message_bytes + frame::MAX_WIRE_BYTES) as f64,
        "the default burst holds the largest message"
    );
    assert_eq!(c.relay.limits.max_message_bytes, 64 << 10);
    assert_eq!(c.relay.limits.max_subscriptions, 32);

    let c = with(|r| {
        r.max_peers = Some("2".into());
        r.peer_msg_rate = Some("5".into());
        r.peer_msg_burst = Some("10".into());
        r.peer_bytes_rate = Some("2048".into());
        r.max_message_bytes = Some("65536".into());
        r.peer_bytes_burst = Some("1703936".into());
        r.max_value_bytes = Some("100".into());
        r.relay_max_message_bytes = Some("4096".into());
        r.relay_events_per_sec = Some("1".into());
        r.relay_event_burst = Some("3".into());
        r.relay_max_subs = Some("2".into());
    })
    .unwrap();
    assert_eq!(
        c.rtc.peer_limits,
        PeerLimits {
            max_peers: 2,
            msg_rate: 5.0,
            msg_burst: 10.0,
            bytes_rate: 2048.0,
            bytes_burst: 1_703_936.0,
        }
    );
    assert_eq!(
        (c.rtc.max_message_bytes, c.rtc.max_value_bytes),
        (65_536, 100)
    );
    let r = c.relay.limits;
    assert_eq!((r.max_message_bytes, r.max_subscriptions), (4096, 2));
    assert_eq!((r.events_per_sec, r.event_burst), (1.0, 3.0));

    // A bigger MAX_MESSAGE_BYTES raises the default burst with it.
    let c = with(|r| r.max_message_bytes = Some((256 << 20).to_string())).unwrap();
    assert_eq!(
        c.rtc.peer_limits.bytes_burst,
        ((256 << 20) + frame::MAX_WIRE_BYTES) as f64
    );
    let e = with(|r| {
        r.max_message_bytes = Some("65536".into());
        r.peer_bytes_burst = Some("1703935".into());
    })
    .unwrap_err();
    assert_eq!(e.var, "PEER_BYTES_BURST");
    assert!(e.expected.contains("from 1703936"), "{e}");
}

#[test]
fn forward_ops_and_its_interval() {
    assert_eq!(with(|_| {}).unwrap().rtc.forward, None);
    let on = with(|r| r.forward_ops = Some("1".into())).unwrap();
    assert_eq!(
        on.rtc.forward,
        Some(Duration::from_millis(DEFAULT_FORWARD_MS))
    );
    let slow = with(|r| {
        r.forward_ops = Some("true".into());
        r.forward_ms = Some("100".into());
    })
    .unwrap();
    assert_eq!(slow.rtc.forward, Some(Duration::from_millis(100)));
    for no in ["2", "on", ""] {
        let e = with(|r| r.forward_ops = Some(no.into())).unwrap_err();
        assert_eq!(e.var, "FORWARD_OPS", "{no:?}");
    }
    for no in ["0", "1001", "x", "-5"] {
        let e = with(|r| r.forward_ms = Some(no.into())).unwrap_err();
        assert_eq!(e.var, "FORWARD_MS", "{no:?}");
    }
}

#[test]
fn super_admins_are_checksummed() {
    let c = with(|r| {
        r.super_admins = Some("0xf39fd6e51aad88f6f4ce6ab8827279cfffb92266 , 0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed".into())
    })
    .unwrap();
    assert_eq!(
        c.sm.super_admins,
        [
            "0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266",
            "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed"
        ]
    );
    let e = with(|r| r.super_admins = Some("0xF39Fd6e51aad88F6F4ce6aB8827279cffFb92266".into()))
        .unwrap_err();
    assert_eq!(e.var, "SUPER_ADMINS");
    assert!(e.expected.contains("EIP-55"));
}

#[test]
fn ice_and_turn() {
    let c = with(|_| {}).unwrap();
    assert_eq!(c.rtc.ice.stun.len(), 4);
    assert!(c.rtc.password.0.is_empty());
    let c = with(|r| r.password = Some("hunter2".into())).unwrap();
    assert!(
        !format!("{c:?}").contains("hunter2"),
        "the password never shows in Debug"
    );
    assert!(
        with(|r| r.ice_servers = Some(String::new()))
            .unwrap()
            .rtc
            .ice
            .stun
            .is_empty()
    );
    assert_eq!(
        with(|r| r.ice_servers = Some("http://x".into()))
            .unwrap_err()
            .var,
        "ICE_SERVERS"
    );
    let e = with(|r| r.turn_urls = Some("turn:t.example:3478".into())).unwrap_err();
    assert_eq!(e.var, "TURN_USERNAME");
    let c = with(|r| {
        r.turn_urls = Some("turn:t.example:3478".into());
        r.turn_username = Some("u".into());
        r.turn_credential = Some("s3cret-cred".into());
    })
    .unwrap();
    assert!(
        !format!("{c:?}").contains("s3cret-cred"),
        "credentials never show in Debug"
    );
    assert_eq!(
        with(|r| r.turn_urls = Some("stun:x".into()))
            .unwrap_err()
            .var,
        "TURN_URLS"
    );
}

#[test]
fn database_url_rules() {
    assert!(with(|_| {}).unwrap().storage.database.is_none());
    assert!(
        with(|r| r.database_url = Some(String::new()))
            .unwrap()
            .storage
            .database
            .is_none()
    );
    let c = with(|r| {
        r.database_url = Some("postgres://u:hunter2@db.example:5432/d?sslmode=require".into())
    })
    .unwrap();
    assert!(c.storage.database.is_some());
    assert!(!format!("{c:?}").contains("hunter2"));
    let e = with(|r| r.database_url = Some("mysql://u:hunter2@h/d".into())).unwrap_err();
    assert_eq!(e.var, "DATABASE_URL");
    assert!(!e.to_string().contains("hunter2"), "{e}");
    assert!(e.expected.contains("postgres://user:pass@host:port/db"));
    assert!(!e.to_string().contains("mysql"), "{e}");
}

#[test]
fn log_settings() {
    assert_eq!(
        with(|r| r.log_format = Some("JSON".into()))
            .unwrap()
            .log
            .format,
        LogFormat::Json
    );
    assert_eq!(
        with(|r| r.log_format = Some("xml".into())).unwrap_err().var,
        "LOG_FORMAT"
    );
    assert_eq!(
        with(|r| r.rust_log = Some("[[[".into())).unwrap_err().var,
        "RUST_LOG"
    );
}

#[test]
fn sm_settings() {
    let mnemonic = "test test test test test test test test test test test junk";
    let c = with(|r| {
        r.sm_key = Some(mnemonic.into());
        r.sm_strict = Some("1".into());
        r.sm_rules = Some(r#"[{"if":{"points":{"$gte":10}},"then":{"assignRole":"user"}}]"#.into());
    })
    .unwrap();
    assert!(c.sm.strict);
    assert_eq!(c.sm.rules.len(), 1);
    assert_eq!(
        c.sm.signer.as_ref().unwrap().address(),
        "0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266"
    );
    assert!(
        !format!("{c:?}").contains("junk"),
        "SM_KEY never shows in Debug"
    );

    let e = with(|r| r.sm_key = Some("correct horse battery staple".into())).unwrap_err();
    assert_eq!(e.var, "SM_KEY");
    assert!(!e.to_string().contains("horse"), "{e}");
    assert!(e.to_string().contains("BIP39"), "{e}");
    let e = with(|r| r.sm_key = Some("0x12".into())).unwrap_err();
    assert!(
        e.to_string().contains("<hidden>") && !e.to_string().contains("0x12"),
        "{e}"
    );

    let e = with(|r| r.sm_rules = Some(r#"[{"if":{},"then":{"assignRole":"user"}}]"#.into()))
        .unwrap_err();
    assert_eq!(e.var, "SM_RULES");
    assert!(e.to_string().contains("together with SM_KEY"), "{e}");
    for (rules, needle) in [
        (
            r#"[{"if":{},"then":{"assignRole":"wizard"}}]"#,
            "unknown role",
        ),
        (
            r#"[{"if":{"a":{"$regex":"("}},"then":{"assignRole":"user"}}]"#,
            "$regex",
        ),
        ("[oops", "not JSON"),
        ("/no/such/rules.json", "cannot read"),
    ] {
        let e = with(|r| {
            r.sm_key = Some(mnemonic.into());
            r.sm_rules = Some(rules.into());
        })
        .unwrap_err();
        assert_eq!(e.var, "SM_RULES");
        assert!(e.to_string().contains(needle), "{rules}: {e}");
    }
    assert_eq!(
        with(|r| r.sm_strict = Some("sometimes".into()))
            .unwrap_err()
            .var,
        "SM_STRICT"
    );
}
