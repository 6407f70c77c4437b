//! The cells overlay's tests: the captured vectors, sealing, routing, hostile envelopes.

use super::*;
use serde_json::json;
use std::collections::{HashSet, VecDeque};
use std::time::Instant;

fn six() -> Vec<String> {
    (1..=6)
        .map(|d| format!("peer{}", d.to_string().repeat(16)))
        .collect()
}

#[test]
fn hash_and_cell_math_match_the_captured_vectors() {
    assert_eq!(hash32("a"), 4_077_198_353);
    assert_eq!(hash32("peer1111111111111111:0"), 2_635_311_224);
    assert_eq!(hash32("peer1111111111111111@2"), 2_615_144_096);
    for (c, t) in [
        (1, 5),
        (2, 7),
        (3, 7),
        (4, 9),
        (10, 11),
        (100, 17),
        (1000, 23),
    ] {
        assert_eq!(ttl(c), t, "ttl({c})");
    }
    assert_eq!(channel_name(0), "c0");
    assert_eq!(channel_name(10), "ca");
    assert_eq!(channel_name(36), "c10");
    assert_eq!(channel_cell("ca"), Some(10));
    assert_eq!(channel_cell("syncGraph"), None);
    assert_eq!(neighbors(0, 8), vec![1, 2, 4]);
    assert_eq!(neighbors(1, 8), vec![0, 2, 3, 5]);
    assert_eq!(neighbors(2, 8), vec![1, 3, 0, 4, 6]);
    assert_eq!(neighbors(3, 8), vec![2, 4, 1, 5, 7]);
    assert_eq!(cell_count(6, 2), 3);
    assert_eq!(cell_count(1, 10), 1);
}

/// The 6-peer room of §8.1 with cellSize 2: cells and bridges as the browsers sealed.
#[test]
fn six_peer_room_seals_as_the_browsers_did() {
    let roster = six();
    let seal = Seal::compute(&roster[0], roster.clone(), 2);
    assert_eq!(seal.cells, 3);
    let cell = |i: usize| cell_of(&roster[i], 3);
    assert_eq!(cell(2), 0);
    assert_eq!((cell(1), cell(5)), (1, 1));
    assert_eq!((cell(0), cell(3), cell(4)), (2, 2, 2));
    assert_eq!(seal.bridges[&0], roster[2]);
    assert_eq!(seal.bridges[&1], roster[5]);
    assert_eq!(seal.bridges[&2], roster[0]);
    // peer1 bridges cell 2 to its neighbours 1 and 0.
    assert!(seal.is_bridge());
    assert_eq!(seal.my_cell, 2);
    let mut duties = seal.my_bridges.clone();
    duties.sort();
    assert_eq!(duties, vec![0, 1]);
    // A non-bridge in cell 2 (peer4) admits its cell mates and neighbouring bridges.
    let p4 = Seal::compute(&roster[3], roster.clone(), 2);
    assert!(!p4.is_bridge());
    assert!(p4.allows(&roster[4]) && p4.allows(&roster[0]));
    assert!(p4.allows(&roster[5]), "cell 1's bridge");
    assert!(!p4.allows(&roster[1]), "a non-bridge of cell 1");
}

#[test]
fn an_envelope_reaches_every_cell_through_bridges() {
    // Twelve peers, cellSize 4: every peer's own seal, envelopes passed hop by hop.
    let roster: Vec<String> = (0..12)
        .map(|i| format!("p{i:02}xxxxxxxxxxxxxxxxx"))
        .collect();
    let now = Instant::now();
    let mut meshes: HashMap<String, Mesh> = roster
        .iter()
        .map(|id| {
            let mut m = Mesh::new(id, 4);
            for x in &roster {
                m.heard(x, now);
            }
            assert!(!m.tick(&[], now));
            assert!(m.tick(&[], now + QUIET));
            (id.clone(), m)
        })
        .collect();
    // Links: the admitted pairs, both ways.
    let links = |a: &str| -> Vec<String> {
        roster
            .iter()
            .filter(|b| *b != a && meshes_allows(a, b, &roster))
            .cloned()
            .collect()
    };
    fn meshes_allows(a: &str, b: &str, roster: &[String]) -> bool {
        let sa = Seal::compute(a, roster.to_vec(), 4);
        let sb = Seal::compute(b, roster.to_vec(), 4);
        sa.allows(b) && sb.allows(a)
    }
    for origin in &roster {
        let mut delivered: HashSet<String> = HashSet::new();
        let conn = links(origin);
        let mut queue: VecDeque<(String, Outbound)> = meshes
            .get_mut(origin)
            .unwrap()
            .send(json!({"_ch": "syncGraph", "_d": [origin]}), &conn)
            .into_iter()
            .map(|o| (origin.clone(), o))
            .collect();
        while let Some((_, out)) = queue.pop_front() {
            for to in &out.to {
                let conn = links(to);
                let h = meshes
                    .get_mut(to)
                    .unwrap()
                    .receive(&out.channel, &out.envelope, &conn, 0);
                if let Some((data, from)) = h.deliver {
                    assert_eq!(&from, origin);
                    assert_eq!(data["_d"][0], json!(origin));
                    delivered.insert(to.clone());
                }
                queue.extend(h.send.into_iter().map(|o| (to.clone(), o)));
            }
        }
        assert_eq!(
            delivered.len(),
            roster.len() - 1,
            "from {origin}: {delivered:?}"
        );
    }
}

#[test]
fn admission_starts_open_and_sealing_waits_for_a_quiet_roster() {
    let now = Instant::now();
    let mut m = Mesh::new("me", 2);
    assert!(m.admit("anyone", now), "nobody sealed yet");
    m.heard("a", now);
    m.heard("b", now);
    assert!(!m.tick(&[], now), "a new member waits for a quiet gap");
    assert!(m.tick(&[], now + QUIET), "then seals");
    assert_eq!(m.sealed.roster.len(), 3);
    assert!(!m.grace_over(now + QUIET));
    assert!(m.grace_over(now + QUIET + GRACE));
    // A bye is urgent; a quiet shrink waits SHRINK_AFTER.
    m.bye("a");
    assert!(!m.tick(&[], now + QUIET * 2));
    assert!(m.tick(&[], now + QUIET * 3));
    assert!(!m.sealed.roster.contains(&"a".to_string()));
    assert!(
        !m.admit("stranger", now + QUIET * 3 + GRACE),
        "never heard of"
    );
    // A newcomer that the next seal will admit is answered at once.
    let mut one_cell = Mesh::new("me", 10);
    one_cell.heard("a", now);
    one_cell.tick(&[], now);
    assert!(one_cell.tick(&[], now + QUIET));
    assert!(!one_cell.admit("newcomer", now + QUIET));
    one_cell.heard("newcomer", now + QUIET);
    assert!(one_cell.admit("newcomer", now + QUIET));
}

#[test]
fn hostile_envelopes_are_ignored() {
    let mut m = Mesh::new("me", 10);
    for bad in [
        "",
        "nope",
        "{}",
        r#"{"t":"msg"}"#,
        r#"{"id":5,"t":"msg"}"#,
        "[1,2]",
    ] {
        assert_eq!(m.receive("c0", bad, &[], 0), Handled::default(), "{bad}");
    }
    let ok = r#"{"t":"msg","id":"x:1:1","ttl":5,"data":{"_ch":"syncGraph","_d":[1]},"origin":"x","originCell":"cell-0"}"#;
    assert!(m.receive("c0", ok, &[], 0).deliver.is_some());
    assert!(
        m.receive("c0", ok, &[], 0).deliver.is_none(),
        "a duplicate id"
    );
    assert!(
        m.receive("c9", ok.replace("x:1:1", "x:1:2").as_str(), &[], 0)
            .deliver
            .is_none(),
        "not our cell"
    );
}
