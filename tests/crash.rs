//! SIGKILL at arbitrary moments while the real binary writes the store: every start
//! afterwards succeeds, nothing on disk is corrupt, and what survived is exactly a
//! prefix-consistent part of what was written.

mod common;

use common::{Daemon, data_dir, export, run};
use std::collections::HashSet;
use std::process::Stdio;

fn lines(n: usize) -> Vec<String> {
    (0..n)
        .map(|i| {
            format!(
                r#"{{"id":"k{i:06}","value":{{"i":{i},"pad":"{}"}},"edges":[],"timestamp":{{"physical":1795591854021,"logical":{i}}}}}"#,
                "z".repeat(i % 50)
            )
        })
        .collect()
}

#[test]
fn sigkill_during_writes_never_corrupts_the_store() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = data_dir(&tmp);
    let all = lines(60_000);
    let expected: HashSet<&String> = all.iter().collect();
    let file = tmp.path().join("in.jsonl");
    std::fs::write(&file, all.join("\n")).unwrap();
    let journal = dir.join(format!("{}.journal", common::DB));

    let mut survived_before = 0;
    let mut killed_mid_write = 0;
    for round in 0..8u64 {
        let mut child = common::command(&dir)
            .args(["import", file.to_str().unwrap()])
            // Small journals so that rotation and compaction are in flight too.
            .env("COMPACT_BYTES", "65536")
            .env("FLUSH_MS", "5")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        // Kill at a different point each round: after the journal has grown by some amount.
        let grow = 4_096 * (round + 1) * (round + 1);
        let start_len = std::fs::metadata(&journal).map(|m| m.len()).unwrap_or(0);
        common::wait_until("journal growth or exit", || {
            child.try_wait().unwrap().is_some()
                || std::fs::metadata(&journal).is_ok_and(|m| m.len() > start_len + grow)
        });
        if child.try_wait().unwrap().is_none() {
            killed_mid_write += 1;
        }
        let _ = child.kill();
        let _ = child.wait();

        let survived = export(&dir);
        for line in &survived {
            assert!(
                expected.contains(line),
                "round {round}: unexpected line {line}"
            );
        }
        assert!(
            survived.len() >= survived_before,
            "round {round}: data went backwards"
        );
        survived_before = survived.len();
    }

    assert!(
        killed_mid_write >= 4,
        "only {killed_mid_write} kills landed mid-write"
    );
    // The daemon starts on whatever the kills left, and a last import completes it.
    let mut d = Daemon::start_ready(&dir, &[]);
    assert_eq!(d.stop().code(), Some(0));
    let out = run(&dir, &["import", file.to_str().unwrap()], &[]);
    assert!(out.status.success());
    let mut survived = export(&dir);
    survived.sort();
    assert_eq!(survived, all);
}
