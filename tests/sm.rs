//! The Security Manager against what real GenosDB 0.25.0 browsers and genossrv put on
//! the wire (tests/vectors/sm.json and the SM probes of rules.json).

use genosdb_fallback::sm::js::Js;
use genosdb_fallback::sm::policy::{self, Checked, Policy, Reason};
use genosdb_fallback::sm::{self, key, sig};
use genosdb_fallback::store::Store;
use genosdb_fallback::sync::engine;
use genosdb_fallback::sync::message;
use serde_json::Value;
use serde_json::value::RawValue;
use std::collections::BTreeMap;
use std::path::PathBuf;

const SA: &str = "0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266";
const U: &str = "0x9858EfFD232B4033E47d90003D41EC34EcaEda94";
const SRV: &str = "0x58A57ed9d8d624cBD12e2C467D34787555bB1b25";
const SRV_MNEMONIC: &str =
    "legal winner thank year wave sausage worth useful legal winner thank yellow";

fn load(name: &str) -> Value {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/vectors")
        .join(name);
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
}

/// Every distinct signed element in the SM capture, by signature.
fn signed_elements() -> BTreeMap<String, Value> {
    fn walk(v: &Value, out: &mut BTreeMap<String, Value>) {
        match v {
            Value::Object(m) => {
                if let Some(Value::String(s)) = m.get("signature") {
                    out.insert(s.clone(), v.clone());
                }
                m.values().for_each(|x| walk(x, out));
            }
            Value::Array(items) => items.iter().for_each(|x| walk(x, out)),
            _ => {}
        }
    }
    let mut out = BTreeMap::new();
    walk(&load("sm.json"), &mut out);
    out
}

fn verify_text(text: &str) -> Result<String, Reason> {
    policy::verify(Js::parse(text).unwrap())
        .map(|(addr, _)| addr)
        .map_err(|(r, _)| r)
}

#[test]
fn all_27_captured_signatures_verify() {
    let elements = signed_elements();
    assert_eq!(elements.len(), 27);
    let mut by_signer = BTreeMap::new();
    for element in elements.values() {
        let signer =
            verify_text(&element.to_string()).unwrap_or_else(|r| panic!("{element} failed: {r:?}"));
        assert_eq!(signer, element["originEthAddress"].as_str().unwrap());
        *by_signer.entry(signer).or_insert(0) += 1;
    }
    // Browser-signed (SA, U) and genossrv-signed (SRV) messages are all there.
    assert!(by_signer.contains_key(SA) && by_signer.contains_key(U) && by_signer.contains_key(SRV));
}

#[test]
fn tampered_copies_all_fail() {
    for element in signed_elements().values() {
        let text = element.to_string();
        let mut tampered = Vec::new();
        // A changed timestamp, a changed type, an added member, another signer claimed.
        let mut v = element.clone();
        v["timestamp"] = serde_json::json!({"physical": 1, "logical": 1});
        tampered.push(v.to_string());
        let mut v = element.clone();
        v["extra"] = Value::Bool(true);
        tampered.push(v.to_string());
        let mut v = element.clone();
        v["originUser"] = Value::String(SA.replace("f39F", "f39E"));
        tampered.push(v.to_string());
        let mut v = element.clone();
        v["originUser"] = Value::String(U.into());
        v["originEthAddress"] = Value::String(U.into());
        if element["originUser"] != U {
            tampered.push(v.to_string());
        }
        // One flipped bit in r, and a signature cut short.
        let sig = element["signature"].as_str().unwrap();
        let flipped = format!(
            "{}{}{}",
            &sig[..10],
            if &sig[10..11] == "0" { "1" } else { "0" },
            &sig[11..]
        );
        tampered.push(text.replace(sig, &flipped));
        tampered.push(text.replace(sig, &sig[..100]));
        for t in tampered {
            assert!(verify_text(&t).is_err(), "accepted: {t}");
        }
    }
}

#[test]
fn we_sign_exactly_as_genossrv_signed_its_sync() {
    let srv = key::parse_key(SRV_MNEMONIC).unwrap();
    let captured = signed_elements()
        .into_values()
        .find(|e| e["type"] == "sync" && e["originUser"] == SRV && e["timestamp"].is_null())
        .unwrap();
    let ours = sm::sign_element(&srv, r#"{"type":"sync","timestamp":null}"#).unwrap();
    assert_eq!(ours, captured.to_string());
    // And the full state genossrv sent with an empty graph (V2 + signature).
    let captured = signed_elements()
        .into_values()
        .find(|e| {
            e["type"] == "fullStateSync"
                && e["originUser"] == SRV
                && e["graphData"] == serde_json::json!({})
        })
        .unwrap();
    let ours = sm::sign_element(
        &srv,
        r#"{"type":"fullStateSync","graphData":{},"removals":[],"timestamp":null}"#,
    )
    .unwrap();
    assert_eq!(ours, captured.to_string());
}

/// §14 item 13: values a naive canonicalizer gets wrong still sign and verify, and the
/// canonical form is the browser's.
#[test]
fn awkward_values_sign_and_verify() {
    let signer = key::parse_key(SRV_MNEMONIC).unwrap();
    let element = r#"{"type":"upsert","id":"w","value":{"big":9007199254740993,"f":0.1,"e":1e21,"tiny":1e-7,"😀":1,"｡":2,"10":"x","2":"y","s":"\u2028\ud800/"},"timestamp":{"physical":1,"logical":1}}"#;
    let signed = sm::sign_element(&signer, element).unwrap();
    assert_eq!(verify_text(&signed).unwrap(), SRV);
    let mut body = Js::parse(element).unwrap();
    body.set("originUser", Js::str(SRV));
    assert_eq!(
        body.canonical(),
        format!(
            "{{\"id\":\"w\",\"originUser\":\"{SRV}\",\"timestamp\":{{\"logical\":1,\"physical\":1}},\"type\":\"upsert\",\"value\":{{\"2\":\"y\",\"10\":\"x\",\"big\":9007199254740992,\"e\":1e+21,\"f\":0.1,\"s\":\"\u{2028}\\ud800/\",\"tiny\":1e-7,\"😀\":1,\"｡\":2}}}}"
        )
    );
    // The same value spelled differently on the wire verifies too: the receiver
    // canonicalizes what it parsed.
    let respelled = signed
        .replace("1e21", "1000000000000000000000")
        .replace("0.1", "1e-1");
    assert_ne!(respelled, signed);
    assert_eq!(verify_text(&respelled).unwrap(), SRV);
}

fn node_json(store: &Store, id: &str) -> Value {
    match store.get(id) {
        None => Value::Null,
        Some(n) => {
            let mut text = String::new();
            n.write_json(id, &mut text);
            serde_json::from_str(&text).unwrap()
        }
    }
}

/// One batch through the SM path, as the sync service runs it.
fn receive(store: &mut Store, policy: &Policy, batch: &Value, now: u64) -> Vec<sm::Dropped> {
    let text = batch.to_string();
    let elements = message::elements(&text).unwrap();
    let checked: Vec<Checked> = sm::check_all(&elements);
    let filtered = sm::filter(policy, &elements, checked, store, now);
    let batch = message::parse_elements(filtered.kept.iter().map(|c| c.as_ref()));
    engine::apply_batch(store, batch, now);
    filtered.dropped
}

/// The SM probes of rules.json, replayed in order on one store with browser A's
/// `superAdmins: [SA]`: the daemon keeps exactly what the browser kept.
#[test]
fn rules_sm_probes_keep_what_the_browser_kept() {
    let probes = load("rules.json");
    let policy = Policy::new(vec![SA.into()], false);
    let mut store = Store::new(1000);
    let before_expiry = 1_795_592_380_000;
    let after_expiry = 1_795_592_400_000;
    let mut checked = 0;
    for probe in probes.as_array().unwrap() {
        let name = probe["name"].as_str().unwrap();
        if !name.starts_with("sm-") {
            continue;
        }
        let now = if name == "sm-expired-role-next-message" {
            after_expiry
        } else {
            before_expiry
        };
        let sent = &probe["sent"];
        let dropped = receive(&mut store, &policy, sent, now);
        let state = &probe["state"];
        let target = |i: usize| -> String {
            let el = &sent[i];
            match el["type"].as_str().unwrap() {
                "deltaSync" => el["operations"][0]["id"].as_str().unwrap().into(),
                "fullStateSync" => el["graphData"]
                    .as_object()
                    .unwrap()
                    .keys()
                    .next()
                    .unwrap()
                    .clone(),
                _ => el["id"].as_str().unwrap().into(),
            }
        };
        let id = target(0);
        let got = node_json(&store, &id);
        match name {
            // Expected state is the node's value for user nodes.
            "sm-self-registration-forced-guest"
            | "sm-assignRole-by-superadmin"
            | "sm-user-self-promotion-forced-back"
            | "sm-user-promotes-other-to-admin" => {
                let mut got_value = got["value"].clone();
                if let Some(o) = got_value.as_object_mut() {
                    // The store strips `priority` on the upsert path (§7.1).
                    o.remove("priority");
                }
                assert_eq!(got_value, *state, "{name}");
            }
            "sm-expired-role-is-guest" => {
                let mut v = got["value"].clone();
                v.as_object_mut().unwrap().remove("priority");
                assert_eq!(v, state[0], "{name}");
                assert_eq!(node_json(&store, &target(1)), state[1], "{name}");
            }
            "sm-user-remove-denied" => {
                assert_eq!(got, *state, "{name}");
                assert_eq!(dropped[0].reason, Reason::Denied);
            }
            _ => assert_eq!(got, *state, "{name}: dropped {dropped:?}"),
        }
        let expect_reason = match name {
            "sm-unsigned-upsert-dropped" => Some(Reason::MissingFields),
            "sm-guest-without-node-denied" => Some(Reason::Denied),
            "sm-user-grants-superadmin-blocked" => Some(Reason::SuperadminGrant),
            "sm-tampered-value-rejected" => Some(Reason::InvalidSignature),
            "sm-origin-mismatch-rejected" => Some(Reason::AddressMismatch),
            "sm-signed-deltaSync-bad-sig-dropped" => Some(Reason::InvalidSignature),
            "sm-expired-role-next-message" => Some(Reason::Denied),
            _ => None,
        };
        if let Some(reason) = expect_reason {
            assert_eq!(dropped.len(), 1, "{name}");
            assert_eq!(dropped[0].reason, reason, "{name}");
        }
        checked += 1;
    }
    assert_eq!(checked, 20);
}

/// §10.6: under SM_STRICT a laundered superadmin node is refused in deltas and full
/// states, and a live op cannot name an unlisted address superadmin either.
#[test]
fn strict_mode_refuses_laundered_superadmin_nodes() {
    let x = "0x0000000000000000000000000000000000000001";
    let policy = Policy::new(vec![SA.into()], true);
    assert!(policy.strict_refuses(&format!("user:{x}"), Some(r#"{"role":"superadmin"}"#)));
    assert!(!policy.strict_refuses(&format!("user:{SA}"), Some(r#"{"role":"superadmin"}"#)));
    assert!(!policy.strict_refuses(&format!("user:{x}"), Some(r#"{"role":"admin"}"#)));
    assert!(
        !Policy::new(vec![SA.into()], false)
            .strict_refuses(&format!("user:{x}"), Some(r#"{"role":"superadmin"}"#))
    );

    // A user names a listed superadmin's address in a node of another id: the
    // browser lets it through (its check reads value.ethAddress); strict does not.
    let user_key = key::parse_key(SRV_MNEMONIC).unwrap();
    let mut store = Store::new(100);
    let assign = format!(
        r#"{{"type":"upsert","id":"user:{SRV}","value":{{"ethAddress":"{SRV}","role":"user"}},"timestamp":{{"physical":1,"logical":1}}}}"#
    );
    let sa = key::parse_key("test test test test test test test test test test test junk").unwrap();
    let batch: Value =
        serde_json::from_str(&format!("[{}]", sm::sign_element(&sa, &assign).unwrap())).unwrap();
    assert!(receive(&mut store, &policy, &batch, 10).is_empty());
    let smuggle = format!(
        r#"{{"type":"upsert","id":"user:{x}","value":{{"ethAddress":"{SA}","role":"superadmin"}},"timestamp":{{"physical":2,"logical":2}}}}"#
    );
    let batch: Value = serde_json::from_str(&format!(
        "[{}]",
        sm::sign_element(&user_key, &smuggle).unwrap()
    ))
    .unwrap();
    let lenient = Policy::new(vec![SA.into()], false);
    let mut copy = Store::new(100);
    receive(
        &mut copy,
        &lenient,
        &serde_json::from_str(&format!("[{}]", sm::sign_element(&sa, &assign).unwrap())).unwrap(),
        10,
    );
    assert!(
        receive(&mut copy, &lenient, &batch, 10).is_empty(),
        "browsers accept it"
    );
    let dropped = receive(&mut store, &policy, &batch, 10);
    assert_eq!(dropped[0].reason, Reason::Strict);
    assert!(store.get(&format!("user:{x}")).is_none());
}

#[test]
fn hostile_elements_are_dropped_without_panicking() {
    let policy = Policy::new(vec![SA.into()], false);
    let mut store = Store::new(100);
    for bad in [
        r#"[{"type":"upsert","id":"a","value":1,"timestamp":{"physical":1,"logical":1},"originUser":5,"originEthAddress":5,"signature":"0x00"}]"#,
        r#"[{"type":"upsert","id":"a","value":1,"timestamp":{"physical":1,"logical":1},"originUser":"0xzz","originEthAddress":"0xzz","signature":"0x00"}]"#,
        r#"[{"type":"upsert","id":"a","value":1,"timestamp":{"physical":1,"logical":1},"originUser":"0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266","originEthAddress":"0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266","signature":{"r":1}}]"#,
        r#"[{"type":"upsert","id":"a","value":1,"timestamp":{"physical":1,"logical":1},"originUser":"0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266","originEthAddress":"0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266","signature":"0xnothex"}]"#,
        r#"[5, "x", [], {}]"#,
        r#"[null, {"type":"sync","timestamp":null}]"#,
    ] {
        let batch: Value = serde_json::from_str(bad).unwrap();
        let dropped = receive(&mut store, &policy, &batch, 10);
        assert!(!dropped.is_empty(), "{bad}");
    }
    assert!(store.is_empty());
    let elements_of = |text: &str| message::elements(text).map(|e| e.len());
    assert_eq!(elements_of(r#"{"type":"sync"}"#).unwrap(), 1);
    assert!(elements_of("nope").is_err());
    let _: &RawValue = serde_json::from_str("1").unwrap();
    // A signature over 1000 hex digits is refused before any curve math.
    let long = format!("0x{}", "ab".repeat(600));
    assert!(sig::recover(&[0u8; 32], &long).is_err());
}
