//! The Security Manager in the real daemon, with SM peers built from this crate (they
//! sign and verify as GenosDB browsers do) on a relay on 127.0.0.1.

mod common;

use common::peer::{TestPeer, wait_async};
use common::{DB, Daemon, data_dir, relay};
use genosdb_fallback::rtc::frame::Payload;
use genosdb_fallback::sm::SmConfig;
use genosdb_fallback::sm::key::parse_key;
use genosdb_fallback::sm::policy::Policy;
use genosdb_fallback::sync::CHANNEL;
use std::path::Path;
use std::time::Duration;

/// Hardhat's account 0: the room's superadmin.
const SA_MNEMONIC: &str = "test test test test test test test test test test test junk";
const SA: &str = "0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266";
/// The BIP39 "abandon … about" vector's account 0: a guest.
const GUEST_MNEMONIC: &str =
    "abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon about";
const GUEST: &str = "0x9858EfFD232B4033E47d90003D41EC34EcaEda94";
/// genossrv's key in sm.json: the daemon's own identity here.
const SRV_MNEMONIC: &str =
    "legal winner thank year wave sausage worth useful legal winner thank yellow";
const SRV: &str = "0x58A57ed9d8d624cBD12e2C467D34787555bB1b25";

fn sm_daemon(dir: &Path, relay_port: u16, extra: &[(&str, &str)]) -> Daemon {
    let relay = format!("ws://127.0.0.1:{relay_port}");
    let mut envs = vec![
        ("RTC_ENABLED", "true"),
        ("RELAY_URLS", relay.as_str()),
        ("ICE_SERVERS", ""),
        ("FLUSH_MS", "100"),
        ("SM_ENABLED", "true"),
        ("RUST_LOG", "info,genosdb_fallback::sync=debug"),
    ];
    envs.extend_from_slice(extra);
    Daemon::start_ready(dir, &envs)
}

/// A browser logged in with `mnemonic`, whose `superAdmins` are `admins`.
fn browser(relay_port: u16, mnemonic: Option<&str>, admins: &[&str]) -> TestPeer {
    TestPeer::join_sm(
        relay_port,
        DB,
        SmConfig {
            verify: Some(Policy::new(
                admins.iter().map(|a| a.to_string()).collect(),
                false,
            )),
            signer: mnemonic.map(|m| parse_key(m).unwrap()),
        },
    )
}

fn metric_line(d: &Daemon, prefix: &str) -> u64 {
    let (_, body) = d.get("/metrics");
    body.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.split_whitespace().last())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

#[test]
fn known_test_identities() {
    assert_eq!(parse_key(SA_MNEMONIC).unwrap().address(), SA);
    assert_eq!(parse_key(GUEST_MNEMONIC).unwrap().address(), GUEST);
    assert_eq!(parse_key(SRV_MNEMONIC).unwrap().address(), SRV);
}

/// A superadmin's write is kept and served to a fresh browser by the daemon alone; a
/// guest's unauthorized write is refused, counted, and never served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_keeps_and_serves_only_what_sm_browsers_accept() {
    let tmp = tempfile::tempdir().unwrap();
    let relay = relay(&tmp);
    let dir = data_dir(&tmp);
    let d = sm_daemon(&dir, relay.port, &[("SUPER_ADMINS", SA)]);

    let admin = browser(relay.port, Some(SA_MNEMONIC), &[SA]);
    admin.wait_superpeers(1).await;
    admin
        .sync
        .put(
            &format!("user:{SA}"),
            &format!(r#"{{"ethAddress":"{SA}","role":"superadmin"}}"#),
        )
        .await
        .unwrap();
    admin
        .sync
        .put("p1", r#"{"title":"signed by SA","n":1}"#)
        .await
        .unwrap();
    wait_async("p1 stored", || {
        common::stored_ids::<Vec<String>>(&dir).contains(&"p1".to_string())
    })
    .await;
    admin.leave().await;

    let guest = browser(relay.port, Some(GUEST_MNEMONIC), &[SA]);
    guest.wait_superpeers(1).await;
    // As a browser logs in after loading the room: the first exchange is done.
    guest
        .wait_store("p1 from the daemon", |s| s.get("p1").is_some())
        .await;
    // Self-registration asks for admin and is stored as guest; the guest's data write
    // is refused, live and when its delta replays it.
    guest
        .sync
        .put(
            &format!("user:{GUEST}"),
            &format!(r#"{{"ethAddress":"{GUEST}","role":"admin"}}"#),
        )
        .await
        .unwrap();
    guest
        .sync
        .put("g1", r#"{"title":"guest write"}"#)
        .await
        .unwrap();
    wait_async("the guest's write refused", || {
        metric_line(&d, r#"genosdb_sm_rejected_total{reason="denied"}"#) >= 1
    })
    .await;
    // The guest replays its refused write inside a delta, as its oplog holds it
    // unsigned: the daemon refuses the replay too.
    let delta = format!("[{}]", guest.store.lock().unwrap().delta_json());
    assert!(delta.contains("\"g1\""));
    guest
        .room
        .send(CHANNEL, Payload::Json(&delta), None)
        .unwrap();
    wait_async("the replayed write refused", || {
        metric_line(&d, r#"genosdb_sm_rejected_total{reason="laundered"}"#) >= 1
    })
    .await;
    guest.leave().await;
    wait_async("the guest's registration stored", || {
        common::stored_ids::<Vec<String>>(&dir).contains(&format!("user:{GUEST}"))
    })
    .await;
    assert!(
        !common::stored_ids::<Vec<String>>(&dir).contains(&"g1".to_string()),
        "the daemon stored a refused write"
    );

    // Only the daemon is online now: a fresh superadmin browser gets p1 from it.
    let fresh = browser(relay.port, Some(SA_MNEMONIC), &[SA]);
    fresh.wait_superpeers(1).await;
    fresh
        .wait_store("p1 from the daemon", |s| s.get("p1").is_some())
        .await;
    fresh
        .wait_store("the guest registered as guest", |s| {
            common::peer::value_of(s, &format!("user:{GUEST}"))
                .is_some_and(|v| v.contains(r#""role":"guest""#))
        })
        .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        fresh.store.lock().unwrap().get("g1").is_none(),
        "a refused write was served"
    );
    fresh.leave().await;
    assert!(metric_line(&d, "genosdb_sm_accepted_total") >= 3);
}

/// With SM_KEY and SM_RULES the daemon promotes a guest that meets a rule while no
/// superadmin is online, signs the assignment, and browsers that list the daemon as a
/// superadmin accept it live.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sm_rules_promote_a_guest_with_a_signed_assignment_browsers_accept() {
    let tmp = tempfile::tempdir().unwrap();
    let relay = relay(&tmp);
    let dir = data_dir(&tmp);
    let admins = format!("{SA},{SRV}");
    let mut d = sm_daemon(
        &dir,
        relay.port,
        &[
            ("SUPER_ADMINS", admins.as_str()),
            ("SM_KEY", SRV_MNEMONIC),
            (
                "SM_RULES",
                r#"[{"if":{"role":"guest"},"then":{"assignRole":"user"}}]"#,
            ),
        ],
    );
    let line = d.wait_for_log("signing as", Duration::from_secs(5));
    assert!(line.contains(SRV), "{line}");
    let (_, health) = d.get("/health");
    assert!(
        health.contains(&format!(r#""signingAs":"{SRV}""#)),
        "{health}"
    );

    let guest = browser(relay.port, Some(GUEST_MNEMONIC), &[SA, SRV]);
    guest.wait_superpeers(1).await;
    guest
        .sync
        .put(
            &format!("user:{GUEST}"),
            &format!(r#"{{"ethAddress":"{GUEST}","role":"guest"}}"#),
        )
        .await
        .unwrap();
    // The guest verifies what the daemon sends: the promotion must be signed by SRV.
    guest
        .wait_store("the signed promotion, live", |s| {
            common::peer::value_of(s, &format!("user:{GUEST}"))
                .is_some_and(|v| v.contains(r#""role":"user""#) && v.contains(SRV))
        })
        .await;
    guest.leave().await;
    assert_eq!(metric_line(&d, "genosdb_sm_governance_writes_total"), 1);
    assert!(metric_line(&d, "genosdb_sm_signed_total") >= 2);
    // A later round does not write the same role again.
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(metric_line(&d, "genosdb_sm_governance_writes_total"), 1);
    // The key never reaches the log.
    d.signal(libc::SIGTERM);
    d.wait(Duration::from_secs(10));
    let all = d.lines.join("\n");
    assert!(!all.contains("legal winner"), "the mnemonic was logged");
}
